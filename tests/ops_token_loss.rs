//! Token-level translation losses: hand-derived sums (KL over padded positions, NLL without them),
//! finite differences (on the log-probs, and through log-softmax against the spec's closed form),
//! and kernel devices against cpu.

use lit_engine::ops::softmax::{log_softmax_backward_cpu, log_softmax_forward_cpu};
use lit_engine::ops::token_loss::{
    combine, token_loss_backward, token_loss_backward_cpu, token_loss_forward, token_loss_sums_cpu,
    TokenLoss,
};
use lit_engine::testing::{assert_devices_agree, assert_gradient, random_f32, random_f64};
use lit_engine::{Device, Tensor};

const PAD: i32 = 1;

fn log_softmax(x: &[f64], cols: usize) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    log_softmax_forward_cpu(x, cols, 1.0, &mut y);
    y
}

#[test]
fn sums_count_padding_in_the_kl_only() {
    // T = 1, B = 2, V = 2: sentence 0 targets class 0, sentence 1 is padding.
    let logp = [0.25f64.ln(), 0.75f64.ln(), 0.5f64.ln(), 0.5f64.ln()];
    let teacher = [0.5f64.ln(), 0.5f64.ln(), 0.9f64.ln(), 0.1f64.ln()];
    let (nll, kl) = token_loss_sums_cpu(&logp, &[0, PAD], Some(&teacher), 2, PAD);
    assert!((nll - 4f64.ln()).abs() < 1e-12, "{nll}");
    let kl0 = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
    let kl1 = 0.9 * (0.9f64 / 0.5).ln() + 0.1 * (0.1f64 / 0.5).ln();
    assert!((kl - (kl0 + kl1)).abs() < 1e-12, "{kl}");
    let kd = TokenLoss::word_kd(PAD);
    let want = (0.3f32 as f64 * nll + 0.7f32 as f64 * kl) / 2.0;
    assert_eq!(combine(&kd, (nll, kl), 2), want);
    // p = 0 (teacher log-prob -inf) adds nothing, even against a student log-prob of -inf.
    let (_, kl) = token_loss_sums_cpu(
        &[f64::NEG_INFINITY, 0.0],
        &[1],
        Some(&[f64::NEG_INFINITY, 0.0]),
        2,
        PAD,
    );
    assert_eq!(kl, 0.0);
}

/// Shapes, targets (with padding and a pad index inside the vocabulary) and log-probs.
fn problem(t: usize, b: usize, v: usize) -> (Vec<i32>, Vec<f64>, Vec<f64>) {
    let targets: Vec<i32> = (0..t * b)
        .map(|i| {
            if i % 4 == 3 {
                PAD
            } else {
                ((i * 7 + 2) % v) as i32
            }
        })
        .collect();
    let student = log_softmax(&random_f64(5, t * b * v), v);
    let teacher = log_softmax(&random_f64(6, t * b * v), v);
    (targets, student, teacher)
}

#[test]
fn backward_matches_finite_differences_on_the_log_probs() {
    let (t, b, v) = (3, 2, 5);
    let (targets, student, teacher) = problem(t, b, v);
    for loss in [TokenLoss::nll(PAD), TokenLoss::word_kd(PAD)] {
        let teach = (loss.kl_weight != 0.0).then_some(&teacher[..]);
        let f = |x: &[f64]| combine(&loss, token_loss_sums_cpu(x, &targets, teach, v, PAD), b);
        let mut dx = vec![0.0; student.len()];
        token_loss_backward_cpu(&targets, teach, v, &loss, b, 1.0, &mut dx);
        assert_gradient("token loss d/dlogp", &f, &student, &dx, 1e-6);
    }
}

#[test]
fn backward_through_log_softmax_is_the_spec_closed_form() {
    let (t, b, v) = (3, 2, 5);
    let (targets, _, teacher) = problem(t, b, v);
    let logits = random_f64(9, t * b * v);
    let loss = TokenLoss::word_kd(PAD);
    let f = |z: &[f64]| {
        let x = log_softmax(z, v);
        combine(
            &loss,
            token_loss_sums_cpu(&x, &targets, Some(&teacher), v, PAD),
            b,
        )
    };
    let x = log_softmax(&logits, v);
    let mut dx = vec![0.0; x.len()];
    token_loss_backward_cpu(&targets, Some(&teacher), v, &loss, b, 1.0, &mut dx);
    let mut dz = vec![0.0; x.len()];
    log_softmax_backward_cpu(&x, &dx, v, 1.0, &mut dz);
    assert_gradient("token loss d/dlogits", &f, &logits, &dz, 1e-6);
    // (1/B)·[0.3·[y≠pad]·(p_S − onehot(y)) + 0.7·(p_S − p_T)] (SPEC-TRANSLATION §3.3).
    let (nw, kw) = (loss.nll_weight as f64, loss.kl_weight as f64);
    for (i, &d) in dz.iter().enumerate() {
        let (row, col) = (i / v, i % v);
        let (ps, pt) = (x[i].exp(), teacher[i].exp());
        let y = targets[row];
        let nll = if y == PAD {
            0.0
        } else {
            ps - (y as usize == col) as i32 as f64
        };
        let want = (nw * nll + kw * (ps - pt)) / b as f64;
        assert!((d - want).abs() < 1e-12, "[{i}] {d} vs {want}");
    }
}

/// Forward sums and loss, and the backward, of a problem with odd sizes on `dev`.
fn run(
    dev: &Device,
    loss: TokenLoss,
    t: usize,
    b: usize,
    v: usize,
) -> lit_engine::Result<Vec<Tensor>> {
    let n = t * b * v;
    let mut student = vec![0.0f32; n];
    log_softmax_forward_cpu(&random_f32(21, n), v, 1.0, &mut student);
    let mut teacher = vec![0.0f32; n];
    log_softmax_forward_cpu(&random_f32(22, n), v, 1.0, &mut teacher);
    teacher[n - 1] = f32::NEG_INFINITY; // a zero teacher probability
    let targets: Vec<i32> = (0..t * b)
        .map(|i| {
            if i % 3 == 2 {
                PAD
            } else {
                ((i * 5 + 4) % v) as i32
            }
        })
        .collect();
    let x = Tensor::from_vec(&[t, b, v], student, dev)?;
    let y = Tensor::from_vec(&[t, b], targets, dev)?;
    let tl = Tensor::from_vec(&[t, b, v], teacher, dev)?;
    let out = token_loss_forward(&x, &y, Some(&tl), &loss)?;
    let dloss = Tensor::scalar(0.75, dev)?;
    let dx = token_loss_backward(&x, &y, Some(&tl), &loss, &dloss)?;
    Ok(vec![out.loss, out.sums, dx])
}

#[test]
fn kernel_devices_agree_with_cpu() {
    for loss in [TokenLoss::nll(PAD), TokenLoss::word_kd(PAD)] {
        // One row wider than a block, one vocabulary below a warp.
        for (t, b, v) in [(5, 3, 37), (2, 3, 300), (1, 1, 3)] {
            assert_devices_agree("token_loss", 1e-6, 1e-7, |dev| run(dev, loss, t, b, v));
        }
    }
}

#[test]
fn kd_needs_a_teacher_and_shapes_are_checked() {
    let dev = Device::Cpu;
    let x = Tensor::zeros(&[2, 1, 3], &dev).unwrap();
    let y = Tensor::from_vec(&[2, 1], vec![0, 2], &dev).unwrap();
    assert!(token_loss_forward(&x, &y, None, &TokenLoss::word_kd(PAD)).is_err());
    assert!(token_loss_forward(&x, &y, None, &TokenLoss::nll(PAD)).is_ok());
    let bad = Tensor::from_vec(&[1, 2], vec![0, 2], &dev).unwrap();
    assert!(token_loss_forward(&x, &bad, None, &TokenLoss::nll(PAD)).is_err());
    let flat = Tensor::zeros(&[2, 3], &dev).unwrap();
    assert!(token_loss_forward(&flat, &y, None, &TokenLoss::nll(PAD)).is_err());
}
