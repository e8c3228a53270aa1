//! Unit tests of the fused variants: finite differences of the CPU spec, bit equality with the
//! separate ops, the recomputed ReLU mask and the AVX-512 sums.

use super::cpu::{backward_cpu, forward_cpu, CpuBackward, CpuForward, CpuGrads, CpuStats};
use super::cpu::{Epilogue, ReluMask, TrainStats};
use super::sums::{backward_sums_masked, lane_sum2, lane_sum2_masked, PlaneMask};
use super::*;
use crate::ops::elementwise::{add_forward, relu_backward, relu_forward};
use crate::testing::{assert_devices_agree, assert_gradient, dot, random_f32, random_f64};

fn tensor(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
}

/// The f64 train forward `relu(bn(x) + residual?)` of the CPU spec.
fn train_relu_f64(
    x: &[f64],
    residual: Option<&[f64]>,
    affine: Option<(&[f64], &[f64])>,
    y: &mut [f64],
    s: BnShape,
) -> TrainStats<f64> {
    let args = CpuForward {
        stats: CpuStats::Batch,
        affine,
        epilogue: Epilogue {
            residual,
            relu: true,
        },
        eps: 1e-5,
    };
    forward_cpu(x, &args, y, s).expect("train mode")
}

/// Gradients of `sum(relu(bn(x)) * w)` (train mode) against central differences.
fn check_fused_relu_gradients(shape: &[usize], affine: bool) {
    let s = BnShape::of(shape).unwrap();
    let c = s.channels;
    let x = random_f64(11, shape.iter().product());
    let (gamma, beta, w) = (
        random_f64(12, c),
        random_f64(13, c),
        random_f64(14, x.len()),
    );
    let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| {
        let mut y = vec![0.0; x.len()];
        train_relu_f64(x, None, affine.then_some((gamma, beta)), &mut y, s);
        dot(&y, &w)
    };
    let mut y = vec![0.0; x.len()];
    let aff = affine.then_some((&gamma[..], &beta[..]));
    let stats = train_relu_f64(&x, None, aff, &mut y, s);
    assert!(y.iter().any(|&v| v == 0.0) && y.iter().any(|&v| v > 0.0));
    let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
    let inp = CpuBackward {
        x: &x,
        dy: &w,
        relu: Some(ReluMask::Output(&y)),
        gamma: affine.then_some(&gamma[..]),
        mean: &stats.mean,
        invstd: &stats.invstd,
        mode: Mode::Train,
    };
    let out = CpuGrads {
        dx: &mut dx,
        dresidual: None,
        dgamma: &mut dgamma,
        dbeta: &mut dbeta,
    };
    backward_cpu(&inp, out, s);
    let what = format!("bn+relu train {shape:?} affine={affine}");
    let loss_x = |v: &[f64]| loss(v, &gamma, &beta);
    assert_gradient(&format!("{what} dx"), &loss_x, &x, &dx, 1e-6);
    if affine {
        let loss_gamma = |v: &[f64]| loss(&x, v, &beta);
        assert_gradient(
            &format!("{what} dgamma"),
            &loss_gamma,
            &gamma,
            &dgamma,
            1e-6,
        );
        let loss_beta = |v: &[f64]| loss(&x, &gamma, v);
        assert_gradient(&format!("{what} dbeta"), &loss_beta, &beta, &dbeta, 1e-6);
    }
}

#[test]
fn fused_relu_backward_matches_finite_differences() {
    check_fused_relu_gradients(&[3, 4, 5], true);
    check_fused_relu_gradients(&[2, 3, 2, 3], true);
    check_fused_relu_gradients(&[6, 3], true);
    check_fused_relu_gradients(&[3, 2, 4], false);
}

/// Tensor-level arguments: `mode`, the activation, affine, residual and running statistics.
fn args<'a>(
    mode: Mode,
    relu: bool,
    affine: Option<(&'a Tensor, &'a Tensor)>,
    residual: Option<&'a Tensor>,
    running: Option<&'a RunningStats>,
) -> BatchNormArgs<'a, &'a Tensor> {
    BatchNormArgs {
        mode,
        activation: Activation::relu_if(relu),
        affine,
        residual,
        running,
        ..Default::default()
    }
}

/// The fused op gives bit for bit what `relu` after `batch_norm` gives, forward and backward,
/// in train and eval mode.
#[test]
fn fused_relu_equals_the_composition_on_cpu() {
    let dev = Device::Cpu;
    let shape = [3, 5, 7, 3];
    let x = tensor(&shape, 21, &dev);
    let (gamma, beta) = (tensor(&[5], 22, &dev), tensor(&[5], 23, &dev));
    let dy = tensor(&shape, 24, &dev);
    let running = RunningStats {
        mean: tensor(&[5], 25, &dev),
        var: Tensor::from_vec(&[5], vec![0.5, 1.0, 2.0, 0.7, 1.3], &dev).unwrap(),
        num_batches_tracked: None,
    };
    let aff = Some((&gamma, &beta));
    let r = Some(&running);
    let fused = forward(&x, &args(Mode::Train, true, aff, None, r)).unwrap();
    let plain = forward(&x, &args(Mode::Train, false, aff, None, r)).unwrap();
    let y = relu_forward(&plain.y).unwrap();
    assert_eq!(fused.y.to_vec().unwrap(), y.to_vec().unwrap());
    let saved_eval = SavedStats::of_running(&running, 1e-5).unwrap();
    for (mode, saved) in [
        (Mode::Train, plain.saved.as_ref().unwrap()),
        (Mode::Eval, &saved_eval),
    ] {
        let got = backward(&x, &dy, &y, &args(mode, true, aff, None, r), saved, false).unwrap();
        let masked = relu_backward(&y, &dy).unwrap();
        let plain_args = args(mode, false, aff, None, r);
        let want = backward(&x, &masked, &y, &plain_args, saved, false).unwrap();
        for (g, w) in [
            (got.dx, want.dx),
            (got.dgamma, want.dgamma),
            (got.dbeta, want.dbeta),
        ] {
            assert_eq!(g.to_vec().unwrap(), w.to_vec().unwrap(), "{mode:?}");
        }
    }
}

/// The CPU backward with the ReLU mask recomputed from `x` (what training uses, no residual)
/// is bit for bit the backward that reads the fused forward's output, affine or not.
#[test]
fn recomputed_relu_mask_equals_the_saved_output() {
    let dev = Device::Cpu;
    let shape = [4, 6, 5, 5];
    let x = tensor(&shape, 31, &dev);
    let (gamma, beta) = (tensor(&[6], 32, &dev), tensor(&[6], 33, &dev));
    let dy = tensor(&shape, 34, &dev);
    for affine in [true, false] {
        let aff = affine.then_some((&gamma, &beta));
        let a = args(Mode::Train, true, aff, None, None);
        let f = forward(&x, &a).unwrap();
        let y = f.y.to_vec().unwrap();
        let zeros = y.iter().filter(|&&v| v == 0.0).count();
        assert!(zeros > 0 && zeros < y.len(), "the mask must matter");
        let saved = f.saved.as_ref().unwrap();
        let run = |recompute| {
            let g = backward_with(&x, &dy, &f.y, &a, saved, false, recompute).unwrap();
            [g.dx, g.dgamma, g.dbeta].map(|t| t.to_vec().unwrap())
        };
        let saved = run(false);
        let recomputed = run(true);
        assert_eq!(saved, recomputed, "affine={affine}");
    }
}

/// The AVX-512 backward sums are the generic lane sums bit for bit (masked and not, with
/// ragged tails), so which path runs never changes a result.
#[test]
fn backward_sums_equal_the_generic_lane_sums() {
    for n in [0usize, 5, 8, 37, 1000, 4099] {
        let (x, g) = (random_f32(71, n), random_f32(72, n));
        let y: Vec<f32> = random_f32(73, n).iter().map(|v| v.max(0.0)).collect();
        let (m, is) = (0.1234f32, 1.789f32);
        let sum = |x: f32, g: f32| {
            let xhat = (x - m) * is;
            (g as f64, g as f64 * xhat as f64)
        };
        let plain = lane_sum2(&x, &g, sum);
        let masked = lane_sum2_masked(&x, &g, |i| y[i], sum);
        assert_eq!(backward_sums_masked(&x, &g, None, m, is), plain, "n={n}");
        let output = Some(PlaneMask::Output(&y[..]));
        assert_eq!(backward_sums_masked(&x, &g, output, m, is), masked, "n={n}");
        // The mask recomputed from x: the lane sums masked by that forward output.
        let (scale, shift) = (0.9f32, -0.05f32);
        let y_of_x: Vec<f32> = x.iter().map(|&x| (x - m) * scale + shift).collect();
        let recompute = Some(PlaneMask::Recompute { scale, shift });
        let want = lane_sum2_masked(&x, &g, |i| y_of_x[i], sum);
        assert_eq!(
            backward_sums_masked(&x, &g, recompute, m, is),
            want,
            "n={n}"
        );
        if n > 8 {
            assert_ne!(plain, masked, "the mask must matter (n={n})");
        }
    }
}

/// Gradients of `sum(relu(bn(x) + r) * w)` (train mode) w.r.t. x, r, gamma and beta against
/// central differences.
#[test]
fn fused_add_relu_backward_matches_finite_differences() {
    for shape in [vec![3usize, 4, 5], vec![2, 3, 2, 3]] {
        let s = BnShape::of(&shape).unwrap();
        let (c, n) = (s.channels, shape.iter().product::<usize>());
        let (x, r) = (random_f64(41, n), random_f64(42, n));
        let (gamma, beta, w) = (random_f64(43, c), random_f64(44, c), random_f64(45, n));
        let loss = |x: &[f64], r: &[f64], gamma: &[f64], beta: &[f64]| {
            let mut y = vec![0.0; n];
            train_relu_f64(x, Some(r), Some((gamma, beta)), &mut y, s);
            dot(&y, &w)
        };
        let mut y = vec![0.0; n];
        let stats = train_relu_f64(&x, Some(&r), Some((&gamma, &beta)), &mut y, s);
        assert!(y.iter().any(|&v| v == 0.0) && y.iter().any(|&v| v > 0.0));
        let (mut dx, mut dr) = (vec![0.0; n], vec![0.0; n]);
        let (mut dgamma, mut dbeta) = (vec![0.0; c], vec![0.0; c]);
        let inp = CpuBackward {
            x: &x,
            dy: &w,
            relu: Some(ReluMask::Output(&y)),
            gamma: Some(&gamma),
            mean: &stats.mean,
            invstd: &stats.invstd,
            mode: Mode::Train,
        };
        let out = CpuGrads {
            dx: &mut dx,
            dresidual: Some(&mut dr),
            dgamma: &mut dgamma,
            dbeta: &mut dbeta,
        };
        backward_cpu(&inp, out, s);
        let what = format!("bn+add+relu train {shape:?}");
        let (g, b) = (&gamma[..], &beta[..]);
        assert_gradient(
            &format!("{what} dx"),
            &|v: &[f64]| loss(v, &r, g, b),
            &x,
            &dx,
            1e-6,
        );
        assert_gradient(
            &format!("{what} dr"),
            &|v: &[f64]| loss(&x, v, g, b),
            &r,
            &dr,
            1e-6,
        );
        let loss_gamma = |v: &[f64]| loss(&x, &r, v, b);
        assert_gradient(
            &format!("{what} dgamma"),
            &loss_gamma,
            &gamma,
            &dgamma,
            1e-6,
        );
        let loss_beta = |v: &[f64]| loss(&x, &r, g, v);
        assert_gradient(&format!("{what} dbeta"), &loss_beta, &beta, &dbeta, 1e-6);
    }
}

/// The fused op gives bit for bit what `relu(batch_norm(x) + r)` as three ops gives, forward
/// and backward, in train and eval mode.
#[test]
fn fused_add_relu_equals_the_composition_on_cpu() {
    let dev = Device::Cpu;
    let shape = [3, 5, 7, 3];
    let (x, r) = (tensor(&shape, 51, &dev), tensor(&shape, 52, &dev));
    let (gamma, beta) = (tensor(&[5], 53, &dev), tensor(&[5], 54, &dev));
    let dy = tensor(&shape, 55, &dev);
    let running = RunningStats {
        mean: tensor(&[5], 56, &dev),
        var: Tensor::from_vec(&[5], vec![0.5, 1.0, 2.0, 0.7, 1.3], &dev).unwrap(),
        num_batches_tracked: None,
    };
    let (aff, run) = (Some((&gamma, &beta)), Some(&running));
    let fused = forward(&x, &args(Mode::Train, true, aff, Some(&r), run)).unwrap();
    let plain = forward(&x, &args(Mode::Train, false, aff, None, run)).unwrap();
    let y = relu_forward(&add_forward(&plain.y, &r).unwrap()).unwrap();
    assert_eq!(fused.y.to_vec().unwrap(), y.to_vec().unwrap());
    let eval_fused = forward(&x, &args(Mode::Eval, true, aff, Some(&r), run));
    let eval_plain = forward(&x, &args(Mode::Eval, false, aff, None, run)).unwrap();
    let eval_y = relu_forward(&add_forward(&eval_plain.y, &r).unwrap()).unwrap();
    assert_eq!(
        eval_fused.unwrap().y.to_vec().unwrap(),
        eval_y.to_vec().unwrap()
    );
    let saved_eval = SavedStats::of_running(&running, 1e-5).unwrap();
    for (mode, saved) in [
        (Mode::Train, plain.saved.as_ref().unwrap()),
        (Mode::Eval, &saved_eval),
    ] {
        let fused_args = args(mode, true, aff, Some(&r), run);
        let got = backward(&x, &dy, &y, &fused_args, saved, true).unwrap();
        let masked = relu_backward(&y, &dy).unwrap();
        let plain_args = args(mode, false, aff, None, run);
        let want = backward(&x, &masked, &y, &plain_args, saved, false).unwrap();
        assert_eq!(
            got.dresidual.unwrap().to_vec().unwrap(),
            masked.to_vec().unwrap(),
            "{mode:?}"
        );
        for (g, w) in [
            (got.dx, want.dx),
            (got.dgamma, want.dgamma),
            (got.dbeta, want.dbeta),
        ] {
            assert_eq!(g.to_vec().unwrap(), w.to_vec().unwrap(), "{mode:?}");
        }
    }
}

#[test]
fn fused_add_relu_kernel_devices_match_cpu() {
    for shape in [vec![5, 3, 7, 9], vec![7, 4]] {
        let c = shape[1];
        assert_devices_agree(&format!("bn+add+relu {shape:?}"), 1e-5, 1e-6, |dev| {
            let (x, r) = (tensor(&shape, 61, dev), tensor(&shape, 62, dev));
            let (gamma, beta) = (tensor(&[c], 63, dev), tensor(&[c], 64, dev));
            let aff = Some((&gamma, &beta));
            let train = args(Mode::Train, true, aff, Some(&r), None);
            let f = forward(&x, &train)?;
            let dy = tensor(&shape, 65, dev);
            let saved = f.saved.as_ref().expect("train mode");
            let grads = backward(&x, &dy, &f.y, &train, saved, true)?;
            let running = RunningStats {
                mean: tensor(&[c], 66, dev),
                var: Tensor::full(&[c], 0.8, dev)?,
                num_batches_tracked: None,
            };
            let eval = forward(&x, &args(Mode::Eval, true, aff, Some(&r), Some(&running)))?;
            let dres = grads.dresidual.expect("asked for");
            Ok(vec![f.y, grads.dx, dres, grads.dgamma, grads.dbeta, eval.y])
        });
    }
}

#[test]
fn fused_relu_kernel_devices_match_cpu() {
    // Per-channel counts 315 (partial block) and 7 (inner = 1).
    for shape in [vec![5, 3, 7, 9], vec![7, 4]] {
        let c = shape[1];
        assert_devices_agree(&format!("bn+relu {shape:?}"), 1e-5, 1e-6, |dev| {
            let x = tensor(&shape, 31, dev);
            let (gamma, beta) = (tensor(&[c], 32, dev), tensor(&[c], 33, dev));
            let train = args(Mode::Train, true, Some((&gamma, &beta)), None, None);
            let f = forward(&x, &train)?;
            let dy = tensor(&shape, 34, dev);
            let saved = f.saved.as_ref().expect("train mode");
            let g = backward(&x, &dy, &f.y, &train, saved, false)?;
            Ok(vec![f.y, g.dx, g.dgamma, g.dbeta])
        });
    }
}
