//! BatchNorm: f64 finite differences of the train and eval backward, the PyTorch running-statistics
//! rule through the layer, accuracy of the statistics on offset inputs, every kernel device against
//! cpu (odd shapes, partial blocks, both thread orders, statistics split into several chunks per
//! channel, fused ReLU / residual), how the chunks are chosen, and the errors.

use lit_engine::device::Device;
use lit_engine::nn::batchnorm::BatchNorm;
use lit_engine::nn::ParamStore;
use lit_engine::ops::batchnorm::cpu::{
    backward_cpu, forward_cpu, CpuBackward, CpuForward, CpuGrads, CpuStats, Epilogue,
};
use lit_engine::ops::batchnorm::{
    affine_pair, backward, batch_norm, bn_split, forward, invstd, Activation, BatchNormArgs,
    BnShape, BnSplit, Mode, RunningStats, SavedStats, BN_MIN_CHUNK, BN_TARGET_BLOCKS,
};
use lit_engine::testing::{
    assert_devices_agree, assert_gradient, dot, kernel_devices, random_f32, random_f64,
};
use lit_engine::{Error, Graph, Tensor};

fn tensor(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
}

/// Tensor-level arguments of a train forward (no activation or residual).
fn train<'a>(
    affine: Option<(&'a Tensor, &'a Tensor)>,
    running: Option<&'a RunningStats>,
    momentum: f32,
) -> BatchNormArgs<'a, &'a Tensor> {
    BatchNormArgs {
        affine,
        running,
        momentum,
        ..Default::default()
    }
}

/// The f64 CPU spec's forward (no residual or ReLU) with batch (`running` none) or running
/// statistics; the train statistics' (mean, invstd).
fn forward_f64(
    x: &[f64],
    affine: Option<(&[f64], &[f64])>,
    running: Option<(&[f64], &[f64])>,
    y: &mut [f64],
    s: BnShape,
) -> Option<(Vec<f64>, Vec<f64>)> {
    let args = CpuForward {
        stats: match running {
            Some((mean, var)) => CpuStats::Running { mean, var },
            None => CpuStats::Batch,
        },
        affine,
        epilogue: Epilogue {
            residual: None,
            relu: false,
        },
        eps: 1e-5,
    };
    forward_cpu(x, &args, y, s).map(|t| (t.mean, t.invstd))
}

/// The f64 CPU spec's backward without a fused ReLU: (dx, dgamma, dbeta).
fn backward_f64(
    x: &[f64],
    dy: &[f64],
    gamma: Option<&[f64]>,
    (mean, invstd): (&[f64], &[f64]),
    s: BnShape,
    mode: Mode,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = s.channels;
    let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
    let inp = CpuBackward {
        x,
        dy,
        relu: None,
        gamma,
        mean,
        invstd,
        mode,
    };
    let out = CpuGrads {
        dx: &mut dx,
        dresidual: None,
        dgamma: &mut dgamma,
        dbeta: &mut dbeta,
    };
    backward_cpu(&inp, out, s);
    (dx, dgamma, dbeta)
}

fn positive(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    let v = random_f32(seed, shape.iter().product())
        .into_iter()
        .map(|x| 0.5 + x.abs())
        .collect();
    Tensor::from_vec(shape, v, dev).unwrap()
}

/// Train-mode gradients of `sum(bn(x) * w)` against central differences, for `x`, gamma and beta.
fn check_train_gradients(shape: &[usize], affine: bool) {
    let s = BnShape::of(shape).unwrap();
    let c = s.channels;
    let x = random_f64(1, shape.iter().product());
    let gamma = random_f64(2, c);
    let beta = random_f64(3, c);
    let w = random_f64(4, x.len());
    let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| {
        let mut y = vec![0.0; x.len()];
        let aff = affine.then_some((gamma, beta));
        forward_f64(x, aff, None, &mut y, s);
        dot(&y, &w)
    };
    let mut y = vec![0.0; x.len()];
    let aff = affine.then_some((&gamma[..], &beta[..]));
    let (mean, invstd) = forward_f64(&x, aff, None, &mut y, s).expect("train mode");
    let gamma_in = affine.then_some(&gamma[..]);
    let (dx, dgamma, dbeta) = backward_f64(&x, &w, gamma_in, (&mean, &invstd), s, Mode::Train);
    assert_eq!(c, dgamma.len());
    let what = format!("bn train {shape:?} affine={affine}");
    assert_gradient(
        &format!("{what} dx"),
        &|v| loss(v, &gamma, &beta),
        &x,
        &dx,
        1e-6,
    );
    if affine {
        assert_gradient(
            &format!("{what} dgamma"),
            &|v| loss(&x, v, &beta),
            &gamma,
            &dgamma,
            1e-6,
        );
        assert_gradient(
            &format!("{what} dbeta"),
            &|v| loss(&x, &gamma, v),
            &beta,
            &dbeta,
            1e-6,
        );
    }
}

#[test]
fn train_backward_matches_finite_differences() {
    check_train_gradients(&[3, 4, 5], true); // [N, C, L]
    check_train_gradients(&[2, 3, 2, 3], true); // [N, C, H, W]
    check_train_gradients(&[6, 3], true); // [N, F]
    check_train_gradients(&[3, 2, 4], false);
}

#[test]
fn eval_backward_matches_finite_differences() {
    let shape = [3, 4, 5];
    let s = BnShape::of(&shape).unwrap();
    let x = random_f64(5, 60);
    let gamma = random_f64(6, 4);
    let beta = random_f64(7, 4);
    let rm = random_f64(8, 4);
    let rv: Vec<f64> = random_f64(9, 4).iter().map(|v| 0.5 + v.abs()).collect();
    let w = random_f64(10, 60);
    let eps = 1e-5;
    let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| {
        let mut y = vec![0.0; 60];
        forward_f64(x, Some((gamma, beta)), Some((&rm, &rv)), &mut y, s);
        dot(&y, &w)
    };
    let is: Vec<f64> = rv.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let (dx, dgamma, dbeta) = backward_f64(&x, &w, Some(&gamma), (&rm, &is), s, Mode::Eval);
    assert_gradient("bn eval dx", &|v| loss(v, &gamma, &beta), &x, &dx, 1e-6);
    assert_gradient(
        "bn eval dgamma",
        &|v| loss(&x, v, &beta),
        &gamma,
        &dgamma,
        1e-6,
    );
    assert_gradient(
        "bn eval dbeta",
        &|v| loss(&x, &gamma, v),
        &beta,
        &dbeta,
        1e-6,
    );
}

/// Running statistics after `steps` train forwards, in f64 from the PyTorch rule.
fn expected_running(x: &[f32], s: BnShape, momentum: f64, steps: usize) -> (Vec<f64>, Vec<f64>) {
    let n = s.per_channel() as f64;
    let (mut rm, mut rv) = (vec![0.0; s.channels], vec![1.0; s.channels]);
    for _ in 0..steps {
        for c in 0..s.channels {
            let vals: Vec<f64> = (0..s.outer)
                .flat_map(|o| {
                    let start = (o * s.channels + c) * s.inner;
                    x[start..start + s.inner].iter().map(|&v| v as f64)
                })
                .collect();
            let mean = vals.iter().sum::<f64>() / n;
            let unbiased = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
            rm[c] = (1.0 - momentum) * rm[c] + momentum * mean;
            rv[c] = (1.0 - momentum) * rv[c] + momentum * unbiased;
        }
    }
    (rm, rv)
}

#[test]
fn layer_updates_running_stats_in_train_mode_only() {
    for dev in std::iter::once(Device::Cpu).chain(kernel_devices()) {
        for momentum in [0.1f32, 0.9] {
            let mut store = ParamStore::new();
            let bn = BatchNorm::new(&mut store, "bn", 3, true, momentum, 1e-5, &dev).unwrap();
            assert_eq!(
                store.names(),
                [
                    "bn.weight",
                    "bn.bias",
                    "bn.running_mean",
                    "bn.running_var",
                    "bn.num_batches_tracked"
                ]
            );
            let x = tensor(&[4, 3, 5], 20, &dev);
            for _ in 0..2 {
                let mut g = Graph::new(&dev);
                let xv = g.constant(x.clone());
                bn.forward(&mut g, &mut store, xv, true).unwrap();
            }
            let get =
                |store: &ParamStore, name: &str| store.get(name).unwrap().value.to_vec().unwrap();
            assert_eq!(
                get(&store, "bn.num_batches_tracked"),
                [2.0],
                "{}",
                dev.name()
            );
            let s = BnShape::of(&[4, 3, 5]).unwrap();
            let (rm, rv) = expected_running(&x.to_vec().unwrap(), s, momentum as f64, 2);
            for (what, got, want) in [
                ("running_mean", get(&store, "bn.running_mean"), rm),
                ("running_var", get(&store, "bn.running_var"), rv),
            ] {
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (*a as f64 - b).abs() < 1e-6,
                        "{what} momentum {momentum} on {}: {got:?} vs {want:?}",
                        dev.name()
                    );
                }
            }
            // Eval: normalises with the stored statistics and leaves them alone.
            let before = (
                get(&store, "bn.running_mean"),
                get(&store, "bn.running_var"),
            );
            let mut g = Graph::no_grad(&dev);
            let xv = g.constant(x.clone());
            let y = bn.forward(&mut g, &mut store, xv, false).unwrap();
            assert_eq!(
                (
                    get(&store, "bn.running_mean"),
                    get(&store, "bn.running_var")
                ),
                before
            );
            assert_eq!(get(&store, "bn.num_batches_tracked"), [2.0]);
            let xs = x.to_vec().unwrap();
            let ys = g.value(y).to_vec().unwrap();
            for (k, (xv, yv)) in xs.iter().zip(&ys).enumerate() {
                let c = (k / 5) % 3;
                let want = (xv - before.0[c]) / (before.1[c] + 1e-5).sqrt();
                assert!((yv - want).abs() < 1e-5, "eval y[{k}] {yv} vs {want}");
            }
        }
    }
}

#[test]
fn statistics_stay_accurate_for_inputs_far_from_zero() {
    // Values 1000 + 0.01*N(0,1): a one-pass f32 E[x^2]-E[x]^2 loses the variance entirely.
    let shape = [8, 2, 33];
    let n: usize = shape.iter().product();
    let xs: Vec<f32> = random_f32(30, n)
        .iter()
        .map(|v| 1000.0 + 0.01 * v)
        .collect();
    let s = BnShape::of(&shape).unwrap();
    let (_, rv_want) = expected_running(&xs, s, 1.0, 1);
    for dev in std::iter::once(Device::Cpu).chain(kernel_devices()) {
        let x = Tensor::from_vec(&shape, xs.clone(), &dev).unwrap();
        let running = RunningStats {
            mean: Tensor::zeros(&[2], &dev).unwrap(),
            var: Tensor::full(&[2], 1.0, &dev).unwrap(),
            num_batches_tracked: None,
        };
        // Also split into chunks of 53 values (boundaries inside the 33-value rows): the chunks'
        // (mean, M2) must combine without losing the variance either.
        for chunks in [None, Some(5)] {
            let args = BatchNormArgs {
                chunks,
                ..train(None, Some(&running), 1.0)
            };
            let f = forward(&x, &args).unwrap();
            let rv = f.running.unwrap().var.to_vec().unwrap();
            for (a, b) in rv.iter().zip(&rv_want) {
                // f32 inputs near 1000 are quantised to ~6e-5, so compare with the f64 statistics
                // of the very same f32 values.
                assert!(
                    ((*a as f64) - b).abs() / b < 1e-5,
                    "unbiased var on {} with chunks {chunks:?}: {a} vs {b}",
                    dev.name()
                );
            }
        }
    }
}

fn running(c: usize, seed: u64, dev: &Device, count: bool) -> RunningStats {
    RunningStats {
        mean: tensor(&[c], seed, dev),
        var: positive(&[c], seed + 1, dev),
        num_batches_tracked: count.then(|| Tensor::scalar(5.0, dev).unwrap()),
    }
}

#[test]
fn kernels_match_cpu_in_train_mode() {
    // Per-channel counts 315 (partial last pass of 256 threads), 6, 7 (inner = 1), 1 * 40.
    for (shape, affine) in [
        (vec![5, 3, 7, 9], true),
        (vec![2, 5, 3], true),
        (vec![7, 33], true),
        (vec![3, 4, 2, 5], false),
        (vec![40, 3, 1], true),
    ] {
        let c = shape[1];
        assert_devices_agree(
            &format!("bn train {shape:?} affine={affine}"),
            1e-5,
            1e-6,
            |dev| {
                let x = tensor(&shape, 40, dev);
                let (gamma, beta) = (positive(&[c], 41, dev), tensor(&[c], 42, dev));
                let aff = affine.then_some((&gamma, &beta));
                let r = running(c, 43, dev, true);
                let args = train(aff, Some(&r), 0.1);
                let f = forward(&x, &args)?;
                let dy = tensor(&shape, 44, dev);
                let saved = f.saved.unwrap();
                let grads = backward(&x, &dy, &f.y, &args, &saved, false)?;
                let r = f.running.unwrap();
                Ok(vec![
                    f.y,
                    saved.mean,
                    saved.invstd,
                    r.mean,
                    r.var,
                    r.num_batches_tracked.unwrap(),
                    grads.dx,
                    grads.dgamma,
                    grads.dbeta,
                ])
            },
        );
    }
}

/// The split of each channel's `n` values: chunks cover `[0, n)` exactly, none is empty, and a
/// forced count is honoured up to that rounding.
fn check_split(s: BnShape, split: BnSplit) {
    let n = s.per_channel();
    assert!(
        split.chunks >= 1 && split.chunk_len >= 1,
        "{s:?}: {split:?}"
    );
    assert!(
        split.chunks * split.chunk_len >= n,
        "{s:?}: {split:?} misses values"
    );
    assert!(
        (split.chunks - 1) * split.chunk_len < n.max(1),
        "{s:?}: {split:?} has an empty chunk"
    );
}

#[test]
fn chunks_are_chosen_from_the_sizes_and_can_be_forced() {
    // ResNet-20 at batch 128: the first stage has enough work for a few blocks per SM (33 chunks
    // of 3972); later stages and small batches are held back by BN_MIN_CHUNK (16 and 4 chunks of
    // 2048), as no chunk is ever shorter than that when the split is chosen from the sizes.
    for (shape, min_blocks) in [
        ([128, 16, 32, 32], BN_TARGET_BLOCKS),
        ([128, 32, 16, 16], BN_TARGET_BLOCKS - 16),
        ([128, 64, 8, 8], 256),
        ([8, 16, 32, 32], 64),
    ] {
        let s = BnShape::of(&shape).unwrap();
        let split = bn_split(s, None);
        check_split(s, split);
        let blocks = s.channels * split.chunks;
        assert!(
            blocks >= min_blocks,
            "{shape:?}: {split:?} gives {blocks} blocks"
        );
        assert!(split.chunk_len >= BN_MIN_CHUNK, "{shape:?}: {split:?}");
    }
    // Small shapes, 1-d BatchNorm and many channels: one chunk per channel.
    for shape in [vec![5, 3, 7, 9], vec![128, 256], vec![128, 1024, 4, 4]] {
        let s = BnShape::of(&shape).unwrap();
        assert_eq!(bn_split(s, None).chunks, 1, "{shape:?}");
    }
    // One channel with a lot of values: many chunks, each still long.
    let s = BnShape::of(&[128, 1, 128, 128]).unwrap();
    let split = bn_split(s, None);
    check_split(s, split);
    assert!(split.chunks >= BN_TARGET_BLOCKS && split.chunk_len >= BN_MIN_CHUNK);
    // Forced: rounded so that no chunk is empty.
    for (n, want, chunks, chunk_len) in [
        (315, 4, 4, 79),
        (7, 3, 3, 3),
        (10, 6, 5, 2),
        (6, 6, 6, 1),
        (7, 1000, 7, 1),
        (40, 0, 1, 40),
    ] {
        let s = BnShape {
            outer: n,
            channels: 2,
            inner: 1,
        };
        assert_eq!(
            bn_split(s, Some(want)),
            BnSplit { chunks, chunk_len },
            "n={n}, {want} chunks asked"
        );
    }
    for n in 1..200 {
        for want in 1..12 {
            let s = BnShape {
                outer: 1,
                channels: 1,
                inner: n,
            };
            let split = bn_split(s, Some(want));
            check_split(s, split);
            assert!(split.chunks <= want, "n={n}: {split:?}");
        }
    }
}

/// Train forward and backward of every fused variant with each channel's statistics split into
/// several chunks, on every kernel device against cpu: y, the saved and running statistics, the
/// batch counter, dx, dgamma, dbeta and the residual's gradient; then the eval backward through
/// the same kernels.
#[test]
fn multi_chunk_kernels_match_cpu() {
    // (shape, affine, chunks asked): per-channel counts 315 in 4 chunks of 79 (boundaries inside
    // 63-value images, partial blocks of 128 threads); 630 in 2 chunks of 315 (more values than
    // the 256 threads, a boundary mid-image); 7 in chunks 3, 3, 1 (inner = 1); 40 in 6 chunks of
    // 6 and one of 4; 30 (fewer values than one block) in 5 chunks, without affine; 6 chunks of
    // a single value each.
    for (shape, affine, chunks) in [
        (vec![5, 3, 7, 9], true, 4),
        (vec![7, 2, 9, 10], true, 2),
        (vec![7, 33], true, 3),
        (vec![40, 3, 1], true, 7),
        (vec![3, 4, 2, 5], false, 5),
        (vec![2, 5, 3], true, 6),
    ] {
        let c = shape[1];
        for (relu, with_residual) in [(false, false), (true, false), (true, true), (false, true)] {
            let what = format!(
                "bn {shape:?} affine={affine} chunks={chunks} relu={relu} residual={with_residual}"
            );
            assert_devices_agree(&what, 1e-5, 1e-6, |dev| {
                let x = tensor(&shape, 80, dev);
                let (gamma, beta) = (positive(&[c], 81, dev), tensor(&[c], 82, dev));
                let aff = affine.then_some((&gamma, &beta));
                let residual = tensor(&shape, 83, dev);
                let residual = with_residual.then_some(&residual);
                let r = running(c, 84, dev, true);
                let args = BatchNormArgs {
                    activation: Activation::relu_if(relu),
                    residual,
                    chunks: Some(chunks),
                    ..train(aff, Some(&r), 0.1)
                };
                let f = forward(&x, &args)?;
                let dy = tensor(&shape, 85, dev);
                let saved = f.saved.unwrap();
                let grads = backward(&x, &dy, &f.y, &args, &saved, with_residual)?;
                assert_eq!(grads.dresidual.is_some(), with_residual);
                // Eval backward (running statistics are constants) through the same kernels
                // (no residual gradient asked for).
                let eval_args = BatchNormArgs {
                    mode: Mode::Eval,
                    ..args
                };
                let eval_saved = SavedStats::of_running(&r, 1e-5)?;
                let eval = backward(&x, &dy, &f.y, &eval_args, &eval_saved, false)?;
                let running = f.running.unwrap();
                let mut out = vec![
                    f.y,
                    saved.mean,
                    saved.invstd,
                    running.mean,
                    running.var,
                    running.num_batches_tracked.unwrap(),
                    grads.dx,
                    grads.dgamma,
                    grads.dbeta,
                ];
                out.extend(grads.dresidual);
                out.extend([eval.dx, eval.dgamma, eval.dbeta]);
                Ok(out)
            });
        }
    }
}

#[test]
fn kernels_match_cpu_in_eval_mode() {
    for (shape, affine) in [
        (vec![5, 3, 7, 9], true),
        (vec![7, 33], true),
        (vec![3, 4, 2, 5], false),
    ] {
        let c = shape[1];
        assert_devices_agree(
            &format!("bn eval {shape:?} affine={affine}"),
            1e-5,
            1e-6,
            |dev| {
                let x = tensor(&shape, 50, dev);
                let (gamma, beta) = (positive(&[c], 51, dev), tensor(&[c], 52, dev));
                let aff = affine.then_some((&gamma, &beta));
                let r = running(c, 53, dev, false);
                let args = BatchNormArgs {
                    mode: Mode::Eval,
                    ..train(aff, Some(&r), 0.1)
                };
                let y = forward(&x, &args)?.y;
                let dy = tensor(&shape, 54, dev);
                let is = invstd(&r.var, 1e-5)?;
                let saved = SavedStats {
                    mean: r.mean.clone(),
                    invstd: is.clone(),
                };
                let grads = backward(&x, &dy, &y, &args, &saved, false)?;
                Ok(vec![y, is, grads.dx, grads.dgamma, grads.dbeta])
            },
        );
    }
}

#[test]
fn autograd_matches_direct_calls_and_skips_absent_affine() {
    let dev = Device::Cpu;
    let shape = [4, 3, 6];
    let x = tensor(&shape, 60, &dev);
    let (gamma, beta) = (positive(&[3], 61, &dev), tensor(&[3], 62, &dev));
    let r = running(3, 63, &dev, true);
    let dy = tensor(&shape, 64, &dev);
    let mut g = Graph::new(&dev);
    let (xv, wv, bv) = (
        g.leaf(x.clone()),
        g.leaf(gamma.clone()),
        g.leaf(beta.clone()),
    );
    let tape_args = BatchNormArgs {
        affine: Some((wv, bv)),
        running: Some(&r),
        ..Default::default()
    };
    let (y, updated) = batch_norm(&mut g, xv, &tape_args).unwrap();
    assert_eq!(
        updated
            .unwrap()
            .num_batches_tracked
            .unwrap()
            .item()
            .unwrap(),
        6.0
    );
    g.backward_with(y, Some(dy.clone())).unwrap();
    let args = train(Some((&gamma, &beta)), None, 0.1);
    let f = forward(&x, &args).unwrap();
    assert!(f.running.is_none());
    let saved = f.saved.as_ref().unwrap();
    let grads = backward(&x, &dy, &f.y, &args, saved, false).unwrap();
    let (dx, dgamma, dbeta) = (grads.dx, grads.dgamma, grads.dbeta);
    assert_eq!(g.value(y).to_vec().unwrap(), f.y.to_vec().unwrap());
    assert_eq!(g.grad(xv).unwrap().to_vec().unwrap(), dx.to_vec().unwrap());
    assert_eq!(
        g.grad(wv).unwrap().to_vec().unwrap(),
        dgamma.to_vec().unwrap()
    );
    assert_eq!(
        g.grad(bv).unwrap().to_vec().unwrap(),
        dbeta.to_vec().unwrap()
    );
    // Eval mode returns no running statistics; weight without bias is refused.
    let mut g = Graph::new(&dev);
    let xv = g.leaf(x.clone());
    let eval_args = BatchNormArgs {
        mode: Mode::Eval,
        running: Some(&r),
        ..Default::default()
    };
    let (_, none) = batch_norm(&mut g, xv, &eval_args).unwrap();
    assert!(none.is_none());
    let wv = g.leaf(gamma);
    assert!(affine_pair(Some(wv), None).is_err());
}

#[test]
fn errors_name_the_layer_and_the_shapes() {
    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    let bn = BatchNorm::new(&mut store, "layer1.0.bn1", 4, true, 0.1, 1e-5, &dev).unwrap();
    let mut g = Graph::new(&dev);
    let x = g.constant(tensor(&[2, 3, 5], 70, &dev));
    match bn.forward(&mut g, &mut store, x, true) {
        Err(Error::Shape(msg)) => assert!(
            msg.contains("layer1.0.bn1") && msg.contains("[2, 3, 5]"),
            "{msg}"
        ),
        other => panic!("expected a shape error, got {other:?}"),
    }
    // One value per channel cannot be normalised in train mode (PyTorch refuses it too).
    let one = tensor(&[1, 4], 71, &dev);
    match forward(&one, &train(None, None, 0.1)) {
        Err(Error::Shape(msg)) => assert!(msg.contains("more than 1 value"), "{msg}"),
        other => panic!("expected a shape error, got {:?}", other.map(|_| ())),
    }
    let r = running(3, 72, &dev, false);
    let eval_args = BatchNormArgs {
        mode: Mode::Eval,
        ..train(None, Some(&r), 0.1)
    };
    match forward(&tensor(&[2, 4], 73, &dev), &eval_args).map(|f| f.y) {
        Err(Error::Shape(msg)) => assert!(msg.contains("running_mean"), "{msg}"),
        other => panic!("expected a shape error, got {other:?}"),
    }
    assert!(BatchNorm::new(&mut store, "bad", 4, true, 1.5, 1e-5, &dev).is_err());
}

#[test]
fn golden_runner_compares_the_counter_as_an_integer() {
    use lit_engine::golden::{locate, run_case, Case, Data, Outcome};
    let Some(path) = locate::case_or_skip("op_bn2d_train") else {
        return;
    };
    let mut case = Case::load(&path).unwrap();
    assert!(matches!(run_case(&case, &Device::Cpu), Outcome::Passed));
    let Some(Data::I64 { values, .. }) = case
        .tensors
        .get_mut("expect.buffer_after.num_batches_tracked")
    else {
        panic!("the case has an I64 counter expectation")
    };
    values[0] += 1;
    match run_case(&case, &Device::Cpu) {
        Outcome::Failed(msgs) => assert!(
            msgs.iter().any(|m| m.contains("num_batches_tracked")),
            "{msgs:?}"
        ),
        _ => panic!("a wrong counter must fail the case"),
    }
}

/// A train forward and its backward are two launches each on a kernel device (statistics whose
/// last block per channel finalizes, then the elementwise pass), with several chunks per channel.
#[test]
fn train_forward_and_backward_launch_twice_each() {
    let dev = Device::emu_with_order(lit_engine::device::EmuOrder::Reverse).unwrap();
    let (x, dy) = (
        tensor(&[3, 4, 5, 7], 81, &dev),
        tensor(&[3, 4, 5, 7], 82, &dev),
    );
    let args = BatchNormArgs::<&Tensor> {
        chunks: Some(3),
        ..Default::default()
    };
    let before = dev.launches().unwrap();
    let f = forward(&x, &args).unwrap();
    assert_eq!(dev.launches().unwrap() - before, 2, "train forward");
    let saved = f.saved.clone().unwrap();
    backward(&x, &dy, &f.y, &args, &saved, false).unwrap();
    assert_eq!(
        dev.launches().unwrap() - before,
        4,
        "train forward + backward"
    );
}
