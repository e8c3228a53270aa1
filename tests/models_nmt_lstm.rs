//! The QD translation model's forward (`models::nmt_lstm`): the seed-probed example of
//! SPEC-TRANSLATION §2.6 (hash-filled parameters), and the forward expectations of the golden
//! `nmt_step` QD cases (encoder output and final state, decoder output, attention, log-probs) on
//! cpu and the emulator. The step itself (losses, clipping, SGD) is not covered here.

mod nmt_support;
use lit_engine::golden::locate::case_or_skip;
use lit_engine::golden::nmt_step::golden_batch;
use lit_engine::golden::{Case, Data, Produced};
use lit_engine::models::nmt_lstm::{QdNmt, QdNmtConfig};
use lit_engine::nn::ParamStore;
use lit_engine::rng::Rng;
use lit_engine::testing::{kernel_devices, spec_hash_fill as hash_fill};
use lit_engine::{Device, Graph, Tensor};
use nmt_support::{ids, within};

#[test]
fn spec_example_forward_matches_the_seed() {
    let mut devices = vec![Device::Cpu];
    devices.extend(kernel_devices());
    for dev in devices {
        let cfg = QdNmtConfig {
            src_vocab: 9,
            tgt_vocab: 10,
            word_vec_size: 4,
            rnn_size: 3,
            layers: 2,
            dropout: 0.3,
        };
        let mut store = ParamStore::new();
        let model = QdNmt::new(&mut store, cfg, &dev, &mut Rng::new(1)).unwrap();
        assert_eq!(store.len(), 22, "tensor count of a 2-layer model (§2.2)");
        let names = store.names();
        for (t, name) in names.iter().enumerate() {
            let shape = store.get(name).unwrap().value.shape().to_vec();
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|k| hash_fill(t, k)).collect();
            store
                .set(name, Tensor::from_vec(&shape, v, &dev).unwrap())
                .unwrap();
        }
        let src = ids(&[3, 2], &[4, 5, 6, 7, 8, 1], &dev);
        let tgt = [2, 2, 4, 5, 6, 3, 3, 1];
        let tgt_in = ids(&[3, 2], &tgt[..6], &dev);
        let mut g = Graph::no_grad(&dev);
        let out = model
            .forward(
                &mut g,
                &store,
                &src,
                &[3, 2],
                &tgt_in,
                false,
                &mut Rng::new(2),
            )
            .unwrap();
        let dec = g.value(out.dec_out).to_vec().unwrap();
        let what = |s: &str| format!("{s} on {}", dev.name());
        within(
            &what("out[0,0]"),
            &dec[0..3],
            &[0.0172410, -0.0498869, -0.0185057],
            2e-7,
        );
        within(
            &what("out[2,1]"),
            &dec[15..18],
            &[-0.0416806, -0.0588077, 0.0823176],
            2e-7,
        );
        let attn = g.value(out.attn).to_vec().unwrap();
        let want_attn = [0.332108, 0.333472, 0.334419, 0.333545, 0.334658, 0.331797];
        within(&what("attn[0]"), &attn[0..6], &want_attn, 2e-6);
        let logp = g.value(out.logp).to_vec().unwrap();
        let want_logp = [
            -2.781358, -2.630271, -2.281373, -2.238957, -2.042177, -1.925522, -2.614751, -2.137630,
            -2.584406, -2.161373,
        ];
        within(&what("logp[0,0]"), &logp[0..10], &want_logp, 2e-6);
        // NLL over the non-<blank> targets tgt[1:].
        let nll: f64 = tgt[2..]
            .iter()
            .enumerate()
            .filter(|(_, &y)| y != 1)
            .map(|(p, &y)| -(logp[p * 10 + y as usize] as f64))
            .sum();
        assert!((nll - 11.030874).abs() < 2e-5, "{} nll {nll}", dev.name());
    }
}

fn usize_arg(case: &Case, key: &str) -> usize {
    case.json["model"]["args"][key].as_u64().unwrap() as usize
}

/// The forward expectations of one golden QD `nmt_step` case on `dev`; the failures.
fn golden_forward(case: &Case, dev: &Device) -> Vec<String> {
    let cfg = QdNmtConfig {
        src_vocab: usize_arg(case, "src_vocab"),
        tgt_vocab: usize_arg(case, "tgt_vocab"),
        word_vec_size: usize_arg(case, "word_vec_size"),
        rnn_size: usize_arg(case, "rnn_size"),
        layers: usize_arg(case, "layers"),
        dropout: case.json["model"]["args"]["dropout"].as_f64().unwrap() as f32,
    };
    let mut store = ParamStore::new();
    let model = QdNmt::new(&mut store, cfg, dev, &mut Rng::new(1)).unwrap();
    for name in store.names() {
        let t = case.f32_tensor(&format!("param.{name}"), dev).unwrap();
        store.set(&name, t).unwrap();
    }
    let batch = golden_batch(case).unwrap();
    let src = batch.src_tensor(dev).unwrap();
    let tgt_in = batch.decoder_input(dev).unwrap();
    let lengths: Vec<usize> = batch.src_lengths.iter().map(|&n| n as usize).collect();
    let mut g = Graph::new(dev);
    let train = case.json["mode"].as_str() == Some("train");
    let out = model
        .forward(
            &mut g,
            &store,
            &src,
            &lengths,
            &tgt_in,
            train,
            &mut Rng::new(2),
        )
        .unwrap();
    let data = |t: &Tensor| Data::F32 {
        shape: t.shape().to_vec(),
        values: t.to_vec().unwrap(),
    };
    let mut produced = Produced::new();
    for (name, v) in [
        ("expect.enc_out", out.enc_out),
        ("expect.dec_out", out.dec_out),
        ("expect.attn", out.attn),
        ("expect.logp", out.logp),
    ] {
        produced.insert(name.into(), data(g.value(v)));
    }
    for (name, layers) in [
        ("expect.enc_final_h", &out.enc_final.h),
        ("expect.enc_final_c", &out.enc_final.c),
    ] {
        let values: Vec<f32> = layers
            .iter()
            .flat_map(|&v| g.value(v).to_vec().unwrap())
            .collect();
        let shape = [cfg.layers, batch.batch_size(), cfg.rnn_size];
        produced.insert(
            name.into(),
            data(&Tensor::from_vec(&shape, values, &Device::Cpu).unwrap()),
        );
    }
    case.compare(&produced)
}

#[test]
fn golden_qd_cases_forward_matches_pytorch() {
    for name in [
        "nmt_qd_l1_e6_h10_v9x15_b2_nll",
        "nmt_qd_l2_e10_h14_v21x17_b3_kd",
        "nmt_qd_l2_e7_h16_v27x23_b4_nll_clip",
    ] {
        let Some(path) = case_or_skip(name) else {
            continue;
        };
        let case = Case::load(&path).unwrap();
        let mut devices = vec![Device::Cpu];
        devices.extend(kernel_devices());
        for dev in devices {
            let failures = golden_forward(&case, &dev);
            assert!(
                failures.is_empty(),
                "{name} on {}: {failures:?}",
                dev.name()
            );
        }
    }
}
