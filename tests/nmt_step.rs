//! The translation training step's statistics (`nmt::step::train_step`) on a tiny QD model,
//! against host computations from the step's own forward values: NLL over the non-`<blank>`
//! targets, the KD sum, the correct-argmax count (never counting `<blank>` targets), the total
//! gradient norm and clip coefficient, the update SGD applied, and the Noam rate of an Adam step.

use lit_engine::models::nmt_lstm::{QdNmt, QdNmtConfig};
use lit_engine::nmt::batches::{Batch, Example};
use lit_engine::nmt::model::NmtModel;
use lit_engine::nmt::quantize::{QdBatchQuantizer, TranslationQuantization};
use lit_engine::nmt::step::{
    train_step, train_step_quantized, NmtOptimizer, StepConfig, StepNumbers, StepView,
};
use lit_engine::nn::ParamStore;
use lit_engine::ops::token_loss::TokenLoss;
use lit_engine::optim::adam::Adam;
use lit_engine::optim::Sgd;
use lit_engine::rng::Rng;
use lit_engine::testing::kernel_devices;
use lit_engine::train::schedule::NoamSchedule;
use lit_engine::{Device, Result, Tensor};

const V: usize = 8;

fn example(src: &[i32], tgt: &[i32]) -> Example {
    Example {
        src: src.to_vec(),
        tgt: tgt.to_vec(),
        line: 0,
        first_word_chars: (1, 1),
    }
}

/// Three sentences of different target lengths: 5 + 3 + 2 = 10 non-`<blank>` targets (words and
/// `</s>`) among 15 target positions.
fn batch() -> Batch {
    let ex = [
        example(&[4, 5, 6], &[4, 5, 6, 7]),
        example(&[5, 6], &[6, 4]),
        example(&[6], &[7]),
    ];
    Batch::new(&ex, &[0, 1, 2]).unwrap()
}

/// A tiny model; `favourite` gets a generator bias of 20, so it is every position's argmax.
fn model(dev: &Device, favourite: usize) -> (NmtModel, ParamStore) {
    let cfg = QdNmtConfig {
        src_vocab: 7,
        tgt_vocab: V,
        word_vec_size: 3,
        rnn_size: 4,
        layers: 1,
        dropout: 0.0,
    };
    let mut store = ParamStore::new();
    let m = QdNmt::new(&mut store, cfg, dev, &mut Rng::new(7)).unwrap();
    let mut bias = vec![0.0f32; V];
    bias[favourite] = 20.0;
    store
        .set(
            "generator.0.bias",
            Tensor::from_vec(&[V], bias, dev).unwrap(),
        )
        .unwrap();
    (NmtModel::QdLstm(m), store)
}

/// What the test reads from the step between backward and update.
#[derive(Default)]
struct Seen {
    logp: Vec<f32>,
    grads: Vec<(String, Vec<f32>)>,
    before: Vec<(String, Vec<f32>)>,
}

fn run(
    dev: &Device,
    favourite: usize,
    opt: &mut NmtOptimizer,
    cfg: StepConfig,
    teacher: Option<&Tensor>,
    watch: bool,
) -> (StepNumbers, Seen, ParamStore) {
    let (m, mut store) = model(dev, favourite);
    let mut seen = Seen::default();
    let mut observe = |v: &StepView| -> Result<()> {
        seen.logp = v.graph.value(v.forward.logp()).to_vec()?;
        for (name, p) in v.store.iter() {
            seen.grads
                .push((name.to_string(), p.grad.as_ref().unwrap().to_vec()?));
            seen.before.push((name.to_string(), p.value.to_vec()?));
        }
        Ok(())
    };
    let b = batch();
    let stats = train_step(
        &m,
        &mut store,
        opt,
        &cfg,
        &b,
        teacher,
        &mut Rng::new(3),
        if watch { Some(&mut observe) } else { None },
    )
    .unwrap();
    (stats.read().unwrap(), seen, store)
}

fn close(what: &str, got: f64, want: f64, rel: f64) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1e-6),
        "{what}: {got} vs {want}"
    );
}

#[test]
fn step_statistics_match_the_forward_values() {
    let mut devices = vec![Device::Cpu];
    devices.extend(kernel_devices());
    let b = batch();
    let targets = &b.tgt[b.batch_size()..];
    for dev in &devices {
        let on = |s: &str| format!("{s} on {}", dev.name());
        // NLL, clipped hard: everything about the sums, the count and the clip.
        for favourite in [1usize, 3] {
            let sgd = Sgd::new(100.0, 0.0, 0.0, false).unwrap();
            let mut opt = NmtOptimizer::Sgd(sgd);
            let cfg = StepConfig {
                loss: TokenLoss::nll(1),
                max_grad_norm: Some(1e-3),
                detail: false,
            };
            let (n, seen, store) = run(dev, favourite, &mut opt, cfg, None, true);
            assert_eq!(n.target_words, 10, "{}", on("target words"));
            let nll: f64 = targets
                .iter()
                .enumerate()
                .filter(|(_, &y)| y != 1)
                .map(|(r, &y)| -(seen.logp[r * V + y as usize] as f64))
                .sum();
            close(&on("nll_sum"), n.nll_sum, nll, 1e-5);
            close(&on("loss_sum"), n.loss_sum, nll, 1e-5);
            close(&on("loss"), n.loss, nll / 3.0, 1e-5);
            assert_eq!(n.kl_sum, 0.0, "{}", on("kl without a teacher"));
            // Favourite 1 (<blank>) is never a counted target; favourite 3 (</s>) ends each of
            // the 3 sentences once.
            let want_correct = if favourite == 1 { 0 } else { 3 };
            assert_eq!(n.correct, want_correct, "{}", on("correct"));
            let norm: f64 = seen
                .grads
                .iter()
                .map(|(_, g)| g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>())
                .sum::<f64>()
                .sqrt();
            close(&on("grad_norm"), n.grad_norm.unwrap(), norm, 1e-5);
            let coef = 1e-3 / (norm + 1e-6);
            close(&on("clip_coef"), n.clip_coef.unwrap(), coef, 1e-5);
            assert_eq!(n.lr, 100.0);
            // The update used the clipped gradient: w1 − w0 = −lr·coef·g (norm lr·1e-3 = 0.1).
            let (mut err, mut size) = (0.0f64, 0.0f64);
            for ((name, g), (_, w0)) in seen.grads.iter().zip(&seen.before) {
                let w1 = store.get(name).unwrap().value.to_vec().unwrap();
                for ((&a, &b), &gv) in w1.iter().zip(w0).zip(g) {
                    let want = -100.0 * coef * gv as f64;
                    err += (a as f64 - b as f64 - want).powi(2);
                    size += want * want;
                }
            }
            assert!(err.sqrt() <= 1e-4 * size.sqrt(), "{}", on("update"));
        }
        // Word KD against a uniform teacher, Adam + Noam: the KD sum and the rate of step 1.
        let teacher = Tensor::full(&[5, 3, V], -(V as f32).ln(), dev).unwrap();
        let mut opt = NmtOptimizer::AdamNoam {
            adam: Adam::lma(0.0).unwrap(),
            noam: NoamSchedule::lma(4),
        };
        let cfg = StepConfig {
            loss: TokenLoss::word_kd(1),
            max_grad_norm: None,
            detail: false,
        };
        let (n, seen, store) = run(dev, 3, &mut opt, cfg, Some(&teacher), true);
        let p = 1.0 / V as f64;
        let kl: f64 = seen.logp.iter().map(|&l| p * (p.ln() - l as f64)).sum();
        close(&on("kl_sum"), n.kl_sum, kl, 1e-5);
        close(
            &on("kd loss_sum"),
            n.loss_sum,
            0.3 * n.nll_sum + 0.7 * kl,
            1e-5,
        );
        close(&on("kd loss"), n.loss, n.loss_sum / 3.0, 1e-5);
        assert_eq!((n.grad_norm, n.clip_coef), (None, None));
        close(&on("noam lr"), n.lr, NoamSchedule::lma(4).lr_at(1), 1e-12);
        let NmtOptimizer::AdamNoam { noam, .. } = &opt else {
            unreachable!()
        };
        assert_eq!(noam.step, 1, "{}", on("noam step counter"));
        // Without an observer (the trainer's call) the step is the same.
        let mut opt = NmtOptimizer::AdamNoam {
            adam: Adam::lma(0.0).unwrap(),
            noam: NoamSchedule::lma(4),
        };
        let (again, _, store_again) = run(dev, 3, &mut opt, cfg, Some(&teacher), false);
        assert_eq!(again, n, "{}", on("unobserved step"));
        for (name, p) in store.iter() {
            let q = store_again.get(name).unwrap();
            assert_eq!(
                p.value.to_vec().unwrap(),
                q.value.to_vec().unwrap(),
                "{name}"
            );
        }
    }
}

fn values(store: &ParamStore) -> Vec<(String, Vec<f32>)> {
    store
        .iter()
        .map(|(n, p)| (n.to_string(), p.value.to_vec().unwrap()))
        .collect()
}

fn sgd_lr1() -> NmtOptimizer {
    NmtOptimizer::Sgd(Sgd::new(1.0, 0.0, 0.0, false).unwrap())
}

/// Quantized distillation's step: the full-precision weights move by exactly the update that
/// the quantized weights would get from their own gradient (straight-through), and that update
/// is not the unquantized one.
#[test]
fn quantized_step_applies_the_quantized_point_gradient_to_the_full_precision_weights() {
    let dev = Device::Cpu;
    let cfg = StepConfig {
        loss: TokenLoss::nll(1),
        max_grad_norm: None,
        detail: false,
    };
    let q = TranslationQuantization::new(2, Some(256)).unwrap();
    let (m, mut store) = model(&dev, 4);
    let before = values(&store);
    // Past the run's unquantized first batch (seed bug B9).
    let mut quantizer = QdBatchQuantizer::resume(&store, &q, 1).unwrap();
    assert!(quantizer.quantizes_next());
    train_step_quantized(
        &m,
        &mut store,
        &mut sgd_lr1(),
        &cfg,
        &batch(),
        None,
        &mut Rng::new(3),
        None,
        Some(&mut quantizer),
    )
    .unwrap();
    let after = values(&store);

    // Reference: an ordinary step of the quantized weights.
    let (_, fresh) = model(&dev, 4);
    let mut quantized = quantizer.spec().quantized_copy(&fresh).unwrap();
    let q_before = values(&quantized);
    let step = |s: &mut ParamStore| {
        train_step(
            &m,
            s,
            &mut sgd_lr1(),
            &cfg,
            &batch(),
            None,
            &mut Rng::new(3),
            None,
        )
        .unwrap()
    };
    step(&mut quantized);
    let q_after = values(&quantized);
    // And the unquantized step, which must differ.
    let (_, mut plain) = model(&dev, 4);
    step(&mut plain);
    let plain_after = values(&plain);

    let mut differs_from_plain = 0.0f32;
    for (i, (name, w0)) in before.iter().enumerate() {
        for (k, &w) in w0.iter().enumerate() {
            let moved = after[i].1[k] - w;
            let q_moved = q_after[i].1[k] - q_before[i].1[k];
            assert!(
                (moved - q_moved).abs() <= 1e-5,
                "{name}[{k}]: moved {moved}, the quantized weights moved {q_moved}"
            );
            differs_from_plain =
                differs_from_plain.max((after[i].1[k] - plain_after[i].1[k]).abs());
        }
    }
    assert!(
        differs_from_plain > 1e-3,
        "the quantized step equals the unquantized one (max difference {differs_from_plain})"
    );
}
