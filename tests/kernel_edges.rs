//! Kernel paths the per-op tests leave out: the stride-1 input-gradient kernels for more than 16
//! input channels (`conv2d_implicit_o32_flip_f32`, `conv2d_implicit_flip_f32`), the wrap iteration
//! of every grid-stride loop (emulators that launch at most `GRID_CAP` blocks for grid-stride
//! launches, so each block handles several rows), and the quantizers on exact ties.
//!
//! Every kernel-device check runs the emulator in forward and reverse thread order.

use lit_engine::device::EmuOrder;
use lit_engine::distill::quantize::{
    point_gradients, quantize_to_points, quantize_to_points_cpu, quantize_uniform,
    quantize_uniform_cpu,
};
use lit_engine::nn::ParamStore;
use lit_engine::ops::activation as act;
use lit_engine::ops::batchnorm::{self as bn, RunningStats};
use lit_engine::ops::conv::{conv2d_backward, conv2d_backward_direct, ConvGeometry};
use lit_engine::ops::kd::{self, KdLoss};
use lit_engine::ops::lma::{self, LmaConfig};
use lit_engine::ops::{
    autocast, dropout, elementwise, embedding, loss, pool, reduce, shape, softmax,
};
use lit_engine::precision::Precision;
use lit_engine::testing::{
    assert_close, assert_devices_agree, check_close, kernel_devices, random_f32, to_f64,
};
use lit_engine::train::optim::Sgd;
use lit_engine::{Device, IndexTensor, Result, Tensor};

// ---------- input gradient of stride-1 convs with more than 16 input channels ----------

/// x shape, weight shape, padding (stride 1, padding below the kernel: the flip path).
type FlipCase = ([usize; 4], [usize; 4], (usize, usize));

/// The input gradient is a conv over dy with C output channels: 17..=32 take the 32-row tile
/// (`conv2d_implicit_o32_flip_f32`, 128 columns), more take the 64-row one
/// (`conv2d_implicit_flip_f32`, 64 columns). Odd maps, partial row, column and 16-deep k tiles.
fn flip_cases() -> Vec<FlipCase> {
    vec![
        // o32_flip: C = 32 fills the rows; 189 columns = one full and one partial 128 tile; K = 45.
        ([3, 32, 9, 7], [5, 32, 3, 3], (1, 1)),
        // o32_flip: C = 20 (12 empty rows), 3x2 window, 198 columns, K = 42.
        ([2, 20, 9, 11], [7, 20, 3, 2], (1, 0)),
        // flip: C = 48 (a partial 64-row tile), 70 columns (64 + 6), K = 54.
        ([2, 48, 5, 7], [6, 48, 3, 3], (1, 1)),
        // flip: C = 70 (two row tiles, the second with 6 rows), 5x5 window, 30 columns, K = 75.
        ([1, 70, 6, 5], [3, 70, 5, 5], (2, 2)),
        // flip: C = 64 exactly, 1x3 window with padding 0 in height, K = 48 (three full k steps).
        ([2, 64, 3, 11], [16, 64, 1, 3], (0, 1)),
        // flip: a 1x1 conv (window area 1), C = 40, O = 24.
        ([2, 40, 5, 3], [24, 40, 1, 1], (0, 0)),
    ]
}

#[test]
fn input_gradient_flip_kernels_above_16_channels_match_cpu() {
    for (i, (xs, ws, p)) in flip_cases().into_iter().enumerate() {
        let g = ConvGeometry::new(&xs, &ws, (1, 1), p).unwrap();
        let what = format!("input gradient x {xs:?} w {ws:?} s (1, 1) p {p:?}");
        let seed = 900 + 10 * i as u64;
        let (nx, nw, ny) = (
            xs.iter().product(),
            ws.iter().product(),
            g.out_shape().iter().product(),
        );
        // The cpu device against the direct loops in f64, so the reference is not only the fast
        // cpu path (Winograd, implicit GEMM) agreeing with itself.
        let (w, dy) = (random_f32(seed + 1, nw), random_f32(seed + 2, ny));
        let mut want = vec![0.0f64; nx];
        let x64 = vec![0.0f64; nx];
        conv2d_backward_direct(&g, &x64, &to_f64(&w), &to_f64(&dy), Some(&mut want), None);
        let dx_cpu = {
            let dev = Device::Cpu;
            let x = Tensor::zeros(&xs, &dev).unwrap();
            let (wt, dyt) = (
                Tensor::from_slice(&ws, &w, &dev).unwrap(),
                Tensor::from_slice(&g.out_shape(), &dy, &dev).unwrap(),
            );
            let dx = conv2d_backward(&x, &wt, &dyt, (1, 1), p, (true, false, false)).unwrap();
            dx.0.unwrap().to_vec().unwrap()
        };
        let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        assert_close(
            &format!("{what} cpu vs direct"),
            &dx_cpu,
            &want32,
            1e-5,
            1e-6,
        );
        assert_devices_agree(&what, 1e-5, 1e-6, |dev| {
            // dx does not depend on x; x only gives the shape.
            let x = Tensor::zeros(&xs, dev)?;
            let wt = Tensor::from_slice(&ws, &w, dev)?;
            let dyt = Tensor::from_slice(&g.out_shape(), &dy, dev)?;
            let dx = conv2d_backward(&x, &wt, &dyt, (1, 1), p, (true, false, false))?.0;
            Ok(vec![dx.expect("dx was asked for")])
        });
    }
}

// ---------- grid-stride loops past one pass of the grid ----------

/// Blocks in x of a grid-stride launch on the wrap emulators: every case below has more rows
/// (or elements) than `GRID_CAP` blocks cover in one pass, most with a partial last pass.
const GRID_CAP: u32 = 2;

fn wrap_emus() -> Vec<Device> {
    [EmuOrder::Forward, EmuOrder::Reverse]
        .into_iter()
        .map(|o| Device::emu_with_grid_stride_cap(o, GRID_CAP).expect("emu device"))
        .collect()
}

/// [`assert_devices_agree`] on the wrap emulators: `f` on cpu, then on each; every output must
/// agree with cpu within `rel`/`abs` (0 and 0: bit for bit). Lists every output that does not.
#[track_caller]
fn assert_wrapped_agree(
    what: &str,
    rel: f64,
    abs: f64,
    f: impl Fn(&Device) -> Result<Vec<Tensor>>,
) {
    let want = f(&Device::Cpu).unwrap_or_else(|e| panic!("{what} on cpu: {e}"));
    let mut failures = Vec::new();
    for dev in wrap_emus() {
        let got = f(&dev).unwrap_or_else(|e| panic!("{what} on {}: {e}", dev.name()));
        assert_eq!(got.len(), want.len(), "{what}: number of outputs");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.shape(), w.shape(), "{what} output {i}: shape");
            let (g, w) = (g.to_vec().unwrap(), w.to_vec().unwrap());
            if let Err(e) = check_close(&g, &w, rel, abs) {
                failures.push(format!("output {i} on {}: {e}", dev.name()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{what} (grid cap {GRID_CAP}) vs cpu:\n{}",
        failures.join("\n")
    );
}

fn index_as_f32(t: &IndexTensor) -> Result<Tensor> {
    let v: Vec<f32> = t.to_vec()?.iter().map(|&j| j as f32).collect();
    Tensor::from_vec(t.shape(), v, &Device::Cpu)
}

/// 5 buckets of 300 (more elements than the block's 256 threads) and a short last one, over 2
/// blocks: block 0 quantizes buckets 0, 2, 4 and reuses its shared min/max scratch each time.
const WRAP_BUCKETS: (usize, Option<usize>) = (5 * 300 - 17, Some(300));

#[test]
fn quantize_uniform_wraps_over_more_buckets_than_blocks() {
    let (n, bucket) = WRAP_BUCKETS;
    let v = random_f32(41, n);
    for bits in [2u32, 5] {
        assert_wrapped_agree(&format!("quantize_uniform {bits} bits"), 0.0, 0.0, |dev| {
            let q = quantize_uniform(&Tensor::from_slice(&[n], &v, dev)?, bits, bucket)?;
            Ok(vec![q.values, q.alpha, q.beta, index_as_f32(&q.levels)?])
        });
    }
}

#[test]
fn quantize_points_wraps_over_more_buckets_than_blocks() {
    let (n, bucket) = WRAP_BUCKETS;
    let v = random_f32(42, n);
    let points = [0.0f32, 0.1, 0.35, 0.5, 0.8, 1.0];
    assert_wrapped_agree("quantize_to_points", 0.0, 0.0, |dev| {
        let x = Tensor::from_slice(&[n], &v, dev)?;
        let q = quantize_to_points(&x, &Tensor::from_slice(&[6], &points, dev)?, bucket)?;
        Ok(vec![q.values, q.alpha, q.beta, index_as_f32(&q.levels)?])
    });
}

/// 5000 elements are 3 chunks of the point-gradient first pass: 2 blocks take 2 passes. 600
/// points: each of the 256 threads sums several points, and `sum_partials_f64` adds 600 columns
/// (more than 2 blocks of 256 threads).
#[test]
fn point_gradients_wrap_over_more_chunks_than_blocks() {
    let n = 5000;
    let (v, dy) = (random_f32(43, n), random_f32(44, n));
    let many: Vec<f32> = (0..600).map(|j| j as f32 / 599.0).collect();
    for points in [vec![0.0f32, 0.2, 0.3, 0.7, 1.0], many] {
        let (_, alpha, _, index) = quantize_to_points_cpu(&v, &points, Some(64));
        let what = format!("point_gradients, {} points", points.len());
        assert_wrapped_agree(&what, 1e-6, 1e-7, |dev| {
            let g = Tensor::from_slice(&[n], &dy, dev)?;
            let idx = IndexTensor::from_slice(&[n], &index, dev)?;
            let a = Tensor::from_slice(&[alpha.len()], &alpha, dev)?;
            Ok(vec![point_gradients(&g, &idx, &a, Some(64), points.len())?])
        });
    }
}

/// The one-block-per-row kernels on 7 and 300 rows over 2 blocks (the block reductions' shared
/// scratch is reused by the next row), 13 columns (a partial warp) and 300 (more than a block's
/// threads). 300 rows are also more than the one-block reductions over rows have threads (128
/// in `kd_reduce_f64`, 256 in `cross_entropy_reduce_f32`).
/// `check(what, rows, cols, x, dy, labels)`; x and dy are random, labels in range.
fn for_wrapped_rows(check: impl Fn(&str, usize, usize, &[f32], &[f32], &[i32])) {
    for (rows, cols) in [(7usize, 13usize), (7, 300), (300, 13)] {
        let n = rows * cols;
        let (x, dy) = (random_f32(50, n), random_f32(51, n));
        let labels: Vec<i32> = (0..rows).map(|i| ((i * 5 + 2) % cols) as i32).collect();
        check(&format!("[{rows}, {cols}]"), rows, cols, &x, &dy, &labels);
    }
}

#[test]
fn softmax_forward_wraps_over_more_rows_than_blocks() {
    for_wrapped_rows(|what, rows, cols, x, _, _| {
        assert_wrapped_agree(&format!("softmax {what}"), 1e-5, 1e-7, |dev| {
            let xt = Tensor::from_slice(&[rows, cols], x, dev)?;
            Ok(vec![softmax::softmax_forward(&xt, 2.0)?])
        });
    });
}

#[test]
fn log_softmax_forward_wraps_over_more_rows_than_blocks() {
    for_wrapped_rows(|what, rows, cols, x, _, _| {
        assert_wrapped_agree(&format!("log_softmax {what}"), 1e-5, 1e-7, |dev| {
            let xt = Tensor::from_slice(&[rows, cols], x, dev)?;
            Ok(vec![softmax::log_softmax_forward(&xt, 0.5)?])
        });
    });
}

/// The backward kernels get the cpu forward's output, so each test reaches one kernel.
#[test]
fn softmax_backward_wraps_over_more_rows_than_blocks() {
    for_wrapped_rows(|what, rows, cols, x, dy, _| {
        let mut y = vec![0.0f32; x.len()];
        softmax::softmax_forward_cpu(x, cols, 2.0, &mut y);
        assert_wrapped_agree(&format!("softmax backward {what}"), 1e-5, 1e-7, |dev| {
            let (yt, dyt) = (
                Tensor::from_slice(&[rows, cols], &y, dev)?,
                Tensor::from_slice(&[rows, cols], dy, dev)?,
            );
            Ok(vec![softmax::softmax_backward(&yt, &dyt, 2.0)?])
        });
    });
}

#[test]
fn log_softmax_backward_wraps_over_more_rows_than_blocks() {
    for_wrapped_rows(|what, rows, cols, x, dy, _| {
        let mut y = vec![0.0f32; x.len()];
        softmax::log_softmax_forward_cpu(x, cols, 0.5, &mut y);
        assert_wrapped_agree(&format!("log_softmax backward {what}"), 1e-5, 1e-7, |dev| {
            let (yt, dyt) = (
                Tensor::from_slice(&[rows, cols], &y, dev)?,
                Tensor::from_slice(&[rows, cols], dy, dev)?,
            );
            Ok(vec![softmax::log_softmax_backward(&yt, &dyt, 0.5)?])
        });
    });
}

#[test]
fn cross_entropy_rows_wrap_over_more_rows_than_blocks() {
    for_wrapped_rows(|what, rows, cols, x, _, labels| {
        assert_wrapped_agree(&format!("cross_entropy {what}"), 1e-5, 1e-7, |dev| {
            let xt = Tensor::from_slice(&[rows, cols], x, dev)?;
            let y = IndexTensor::from_slice(&[rows], labels, dev)?;
            let out = loss::cross_entropy_forward(&xt, &y, loss::Reduction::Mean)?;
            Ok(vec![out.loss, out.row_logsumexp])
        });
    });
}

/// `kd_rows_f64` (one block per row), then `kd_backward_f32` (grid-stride over elements).
#[test]
fn kd_rows_wrap_over_more_rows_than_blocks() {
    let kd_loss = KdLoss::Lit {
        temperature: 6.0,
        alpha: 0.95,
    };
    for_wrapped_rows(|what, rows, cols, x, dy, labels| {
        assert_wrapped_agree(&format!("kd {what}"), 1e-6, 1e-9, |dev| {
            let s = Tensor::from_slice(&[rows, cols], x, dev)?;
            let t = Tensor::from_slice(&[rows, cols], dy, dev)?;
            let y = IndexTensor::from_slice(&[rows], labels, dev)?;
            let f = kd::kd_forward(&s, &t, &y, &kd_loss)?;
            let ds = kd::kd_backward(&s, &t, &y, &kd_loss, &f, &Tensor::scalar(1.5, dev)?)?;
            let [(_, c1), (_, c2)] = f.components.clone();
            Ok(vec![f.loss, c1, c2, ds])
        });
    });
}

/// k-max pooling runs one thread per row in blocks of 64: 200 rows need 2 passes of 2 blocks.
#[test]
fn kmax_pool_wraps_over_more_rows_than_threads() {
    let (rows, len, k) = (200usize, 9usize, 3usize);
    let x = random_f32(60, rows * len);
    assert_wrapped_agree("kmax_pool", 0.0, 0.0, |dev| {
        let (y, idx) = pool::kmax_pool_forward(&Tensor::from_slice(&[rows, len], &x, dev)?, k)?;
        Ok(vec![y, index_as_f32(&idx)?])
    });
}

// `LaunchCfg::for_elements` kernels (the `GRID_STRIDE` loop of kernels/common.cuh): more than
// GRID_CAP * 256 = 512 elements (or channels, planes, rows) per launch, so every thread wraps.

fn rand(shape: &[usize], seed: u64, dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev)
}

#[test]
fn elementwise_kernels_wrap_past_one_grid_pass() {
    let shape = [5usize, 131];
    assert_wrapped_agree("elementwise [5, 131]", 1e-6, 1e-7, |dev| {
        let (a, b) = (rand(&shape, 70, dev)?, rand(&shape, 71, dev)?);
        let mut acc = rand(&shape, 72, dev)?;
        elementwise::axpy_inplace(&mut acc, 0.3, &a)?;
        Ok(vec![
            elementwise::relu_forward(&a)?,
            elementwise::relu_backward(&a, &b)?,
            elementwise::add_forward(&a, &b)?,
            elementwise::sub_forward(&a, &b)?,
            elementwise::mul_forward(&a, &b)?,
            elementwise::scale_forward(&a, 1.7)?,
            acc,
        ])
    });
}

#[test]
fn round_operands_wraps_past_one_grid_pass() {
    let shape = [5usize, 131];
    assert_wrapped_agree("round_operands [5, 131]", 0.0, 0.0, |dev| {
        let a = rand(&shape, 73, dev)?;
        Precision::ALL
            .into_iter()
            .map(|p| autocast::round_operands(&a, p))
            .collect()
    });
}

#[test]
fn prelu_swish_aplu_kernels_wrap_past_one_grid_pass() {
    // APLU's 131 x 4 = 524 parameter columns: sum_partials_f64 wraps as well.
    let (shape, dim, hinges) = ([5usize, 131], 131usize, 4usize);
    assert_wrapped_agree("prelu, swish, aplu [5, 131]", 1e-5, 1e-6, |dev| {
        let (x, dy) = (rand(&shape, 73, dev)?, rand(&shape, 74, dev)?);
        let alpha = Tensor::scalar(0.37, dev)?;
        let betas = rand(&[dim], 75, dev)?;
        let (a, b) = (
            rand(&[dim, hinges], 76, dev)?,
            rand(&[dim, hinges], 77, dev)?,
        );
        let (pdx, pda) = act::prelu_backward(&x, &alpha, &dy)?;
        let (sdx, sdb) = act::swish_backward(&x, &betas, &dy)?;
        let (adx, ada, adb) = act::aplu_backward(&x, &a, &b, &dy)?;
        Ok(vec![
            act::prelu_forward(&x, &alpha)?,
            pdx,
            pda,
            act::swish_forward(&x, &betas)?,
            sdx,
            sdb,
            act::aplu_forward(&x, &a, &b)?,
            adx,
            ada,
            adb,
        ])
    });
}

#[test]
fn lma_kernels_wrap_past_one_grid_pass() {
    assert_wrapped_agree("lma [655]", 1e-6, 1e-7, |dev| {
        let (x, dy) = (rand(&[655], 78, dev)?, rand(&[655], 79, dev)?);
        let (a, b) = (rand(&[5], 80, dev)?, rand(&[5], 81, dev)?);
        let (mm, ms) = (Tensor::scalar(0.1, dev)?, Tensor::scalar(0.8, dev)?);
        let out = lma::lma_forward(&x, &a, &b, &mm, &ms, LmaConfig::new(5, true))?;
        let (dx, da, db) = lma::lma_backward(&x, &a, &out.segment_index, &dy)?;
        Ok(vec![out.y, dx, da, db])
    });
}

#[test]
fn bias_broadcast_and_fill_kernels_wrap_past_one_grid_pass() {
    let shape = [3usize, 7, 5, 7];
    assert_wrapped_agree("bias, broadcast, fill [3, 7, 5, 7]", 1e-6, 1e-7, |dev| {
        let (x, b) = (rand(&shape, 82, dev)?, rand(&[7], 83, dev)?);
        Ok(vec![
            reduce::add_bias_forward(&x, &b)?,
            reduce::broadcast_channels(&b, &shape)?,
            reduce::fill_scaled(&Tensor::scalar(2.5, dev)?, &shape, 0.5)?,
        ])
    });
}

#[test]
fn permute_and_option_a_kernels_wrap_past_one_grid_pass() {
    // Option A: 3 x 10 x 5 x 6 = 900 outputs, so the wrap reaches data channels, not only the
    // zero padding of the last image (which an unwritten, zeroed output would match).
    assert_wrapped_agree(
        "permute3 [9, 11, 7], option A [3, 6, 9, 11]",
        0.0,
        0.0,
        |dev| {
            let x = rand(&[9, 11, 7], 84, dev)?;
            let x4 = rand(&[3, 6, 9, 11], 85, dev)?;
            let y = shape::option_a_shortcut_forward(&x4, 2)?;
            let dy = rand(y.shape(), 86, dev)?;
            Ok(vec![
                shape::permute3_forward(&x, [2, 0, 1])?,
                shape::option_a_shortcut_backward(&dy, &[3, 6, 9, 11], 2)?,
                y,
            ])
        },
    );
}

#[test]
fn dropout_and_embedding_kernels_wrap_past_one_grid_pass() {
    assert_wrapped_agree("dropout apply, embedding", 0.0, 0.0, |dev| {
        let x = rand(&[4, 6, 5, 5], 87, dev)?;
        let mask: Vec<f32> = (0..24)
            .map(|i| if i % 3 == 2 { 2.0 } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(&[24], mask, dev)?;
        let ids: Vec<i32> = (0..37).map(|i| (i * 7 % 11) as i32).collect();
        let ids = IndexTensor::from_slice(&[37], &ids, dev)?;
        Ok(vec![
            dropout::dropout_apply(&x, &mask, 25)?,
            embedding::embedding_forward(&rand(&[11, 45], 88, dev)?, &ids)?,
        ])
    });
}

#[test]
fn max_and_avg_pool_kernels_wrap_past_one_grid_pass() {
    // 600 output and 1980 input elements.
    let (shape, w) = ([4usize, 5, 9, 11], pool::Pool2d::square(3, 2, 1));
    assert_wrapped_agree("max/avg pool2d [4, 5, 9, 11]", 1e-6, 1e-7, |dev| {
        let x = rand(&shape, 89, dev)?;
        let (y, arg) = pool::max_pool2d_forward(&x, w)?;
        let dy = rand(y.shape(), 90, dev)?;
        let dx = pool::max_pool2d_backward(&dy, &arg, &shape, w)?;
        let ay = pool::avg_pool2d_forward(&x, w, false)?;
        let adx = pool::avg_pool2d_backward(&dy, &shape, w, false)?;
        Ok(vec![y, index_as_f32(&arg)?, dx, ay, adx])
    });
}

/// 600 planes.
#[test]
fn global_avg_pool_kernels_wrap_past_one_grid_pass() {
    let planes = [30usize, 20, 2, 3];
    assert_wrapped_agree("global_avg_pool [30, 20, 2, 3]", 1e-6, 1e-7, |dev| {
        let y = pool::global_avg_pool_forward(&rand(&planes, 91, dev)?)?;
        let dy = rand(y.shape(), 92, dev)?;
        Ok(vec![y, pool::global_avg_pool_backward(&dy, &planes)?])
    });
}

#[test]
fn kmax_pool_backward_wraps_past_one_grid_pass() {
    // k-max backward: 200 rows x 3 picks; the indices come from the cpu forward.
    let (rows, len, k) = (200usize, 9usize, 3usize);
    let (_, idx) =
        pool::kmax_pool_forward(&rand(&[rows, len], 93, &Device::Cpu).unwrap(), k).unwrap();
    let idx = idx.to_vec().unwrap();
    assert_wrapped_agree("kmax_pool backward", 0.0, 0.0, |dev| {
        let dy = rand(&[rows, k], 94, dev)?;
        let idx = IndexTensor::from_slice(&[rows, k], &idx, dev)?;
        Ok(vec![pool::kmax_pool_backward(&dy, &idx, &[rows, len])?])
    });
}

/// 600 channels: the per-channel finalize loops wrap too.
#[test]
fn batchnorm_kernels_wrap_past_one_grid_pass() {
    let (shape, c) = ([3usize, 600, 1], 600usize);
    assert_wrapped_agree("batchnorm [3, 600, 1]", 1e-5, 1e-6, |dev| {
        let x = rand(&shape, 95, dev)?;
        let dy = rand(&shape, 96, dev)?;
        let (gamma, beta) = (rand(&[c], 97, dev)?, rand(&[c], 98, dev)?);
        let running = || -> Result<RunningStats> {
            let var: Vec<f32> = random_f32(99, c).iter().map(|v| 0.5 + v.abs()).collect();
            Ok(RunningStats {
                mean: rand(&[c], 100, dev)?,
                var: Tensor::from_vec(&[c], var, dev)?,
                num_batches_tracked: Some(Tensor::scalar(5.0, dev)?),
            })
        };
        let running_in = running()?;
        let args = bn::BatchNormArgs {
            affine: Some((&gamma, &beta)),
            running: Some(&running_in),
            ..Default::default()
        };
        let f = bn::forward(&x, &args)?;
        let saved = f.saved.expect("train mode saves its statistics");
        let grads = bn::backward(&x, &dy, &f.y, &args, &saved, false)?;
        let (dx, dgamma, dbeta) = (grads.dx, grads.dgamma, grads.dbeta);
        let r = running()?;
        let eval_args = bn::BatchNormArgs {
            mode: bn::Mode::Eval,
            running: Some(&r),
            ..args
        };
        let eval = bn::forward(&x, &eval_args)?.y;
        let invstd = bn::invstd(&r.var, 1e-5)?;
        let rs = f.running.expect("running statistics were given");
        Ok(vec![
            f.y,
            saved.mean,
            saved.invstd,
            rs.mean,
            rs.var,
            dx,
            dgamma,
            dbeta,
            eval,
            invstd,
        ])
    });
}

#[test]
fn loss_backward_kernels_wrap_past_one_grid_pass() {
    let (rows, cols) = (7usize, 300usize);
    let labels: Vec<i32> = (0..rows as i32).map(|i| i * 41 % cols as i32).collect();
    let x = random_f32(101, rows * cols);
    let mut lse = vec![0.0f32; rows];
    loss::cross_entropy_forward_cpu(&x, &labels, cols, loss::Reduction::Mean, &mut lse);
    assert_wrapped_agree(
        "cross_entropy backward, mse backward [7, 300]",
        1e-5,
        1e-7,
        |dev| {
            let xt = Tensor::from_slice(&[rows, cols], &x, dev)?;
            let y = IndexTensor::from_slice(&[rows], &labels, dev)?;
            let lset = Tensor::from_slice(&[rows], &lse, dev)?;
            let dl = Tensor::scalar(1.5, dev)?;
            let target = rand(&[rows, cols], 102, dev)?;
            Ok(vec![
                loss::cross_entropy_backward(&xt, &y, &lset, &dl, loss::Reduction::Mean)?,
                kd::mse_backward(&xt, &target, &dl)?,
            ])
        },
    );
}

#[test]
fn col2im_and_weight_gradient_sum_wrap_past_one_grid_pass() {
    // Stride 2: dx by GEMM + col2im over 2 * 5 * 81 = 810 elements; dw's 12 * 45 = 540
    // elements summed over the slices by conv_sum_partials_f32.
    let (xs, ws) = ([2usize, 5, 9, 9], [12usize, 5, 3, 3]);
    let g = ConvGeometry::new(&xs, &ws, (2, 2), (1, 1)).unwrap();
    assert_wrapped_agree("conv2d backward stride 2", 1e-5, 1e-6, |dev| {
        let (x, w, dy) = (
            rand(&xs, 103, dev)?,
            rand(&ws, 104, dev)?,
            rand(&g.out_shape(), 105, dev)?,
        );
        let (dx, dw, _) = conv2d_backward(&x, &w, &dy, (2, 2), (1, 1), (true, true, false))?;
        Ok(vec![dx.unwrap(), dw.unwrap()])
    });
}

#[test]
fn sgd_step_wraps_past_one_grid_pass() {
    assert_wrapped_agree("sgd step [655]", 1e-6, 1e-7, |dev| {
        let mut store = ParamStore::new();
        store.add_param("w", rand(&[655], 106, dev)?)?;
        store.accumulate_grad("w", rand(&[655], 107, dev)?)?;
        let mut opt = Sgd::new(0.1, 0.9, 5e-4, true)?;
        opt.step(&mut store)?;
        store.accumulate_grad("w", rand(&[655], 108, dev)?)?;
        opt.step(&mut store)?;
        Ok(vec![store.get("w").unwrap().value.clone()])
    });
}

// ---------- exact ties ----------

/// Spec (SPEC-NOTES §8): `level = round_half_to_even(r)`. Inputs whose `r` is exactly k + 1/2
/// (checked below), on every kernel device, against levels written down from the rule.
#[test]
fn uniform_quantizer_kernels_round_exact_ties_half_to_even() {
    // (input, bits, levels): 1 bit, alpha 1: r = 0.5 -> 0. 3 bits (7 steps), alpha 7: r = v.
    let cases: [(&[f32], u32, &[i32]); 2] = [
        (&[0.0, 0.5, 1.0], 1, &[0, 0, 1]),
        (
            &[0.0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.0],
            3,
            &[0, 0, 2, 2, 4, 4, 6, 6, 7],
        ),
    ];
    for (v, bits, levels) in cases {
        let steps = ((1u32 << bits) - 1) as f32;
        let (beta, alpha) = (v[0], v[v.len() - 1] - v[0]);
        for &x in &v[1..v.len() - 1] {
            let r = (x - beta) / alpha * steps;
            assert_eq!(r.fract(), 0.5, "input {x} must be an exact tie, r = {r}");
        }
        assert_eq!(
            quantize_uniform_cpu(v, bits, None).3,
            levels,
            "cpu {bits} bits"
        );
        for dev in kernel_devices() {
            let q = quantize_uniform(
                &Tensor::from_slice(&[v.len()], v, &dev).unwrap(),
                bits,
                None,
            )
            .unwrap();
            let what = format!("{bits} bits on {}", dev.name());
            assert_eq!(q.levels.to_vec().unwrap(), levels, "levels, {what}");
            let want: Vec<f32> = levels
                .iter()
                .map(|&l| (l as f32 / steps) * alpha + beta)
                .collect();
            assert_eq!(q.values.to_vec().unwrap(), want, "values, {what}");
        }
    }
}

/// Rule of the point quantizer (src/distill/quantize.rs, kernels/quant.cu): the nearest point,
/// ties to the LOWER point. u = 3/8, 3/4 (bucket 0) and the same in a bucket scaled by 4 and
/// shifted by -2 (bucket 1) sit exactly between two points; 0.5 sits on one.
#[test]
fn point_quantizer_kernels_send_exact_ties_to_the_lower_point() {
    let points = [0.0f32, 0.25, 0.5, 1.0];
    // Bucket 0: beta 0, alpha 1, u = v. Bucket 1: beta -2, alpha 4, u = (v + 2) / 4.
    let v = [0.0f32, 0.375, 0.5, 0.75, 1.0, -2.0, -0.5, 0.0, 1.0, 2.0];
    let u = [0.0f32, 0.375, 0.5, 0.75, 1.0, 0.0, 0.375, 0.5, 0.75, 1.0];
    // Lower of (0.25, 0.5) is 1, lower of (0.5, 1) is 2.
    let index = [0, 1, 2, 2, 3, 0, 1, 2, 2, 3];
    let (scale, shift) = ([1.0f32, 4.0], [0.0f32, -2.0]);
    let want: Vec<f32> = (0..v.len())
        .map(|i| points[index[i]] * scale[i / 5] + shift[i / 5])
        .collect();
    for (i, &x) in v.iter().enumerate() {
        assert_eq!(
            (x - shift[i / 5]) / scale[i / 5],
            u[i],
            "u of element {i} is exact"
        );
    }
    let index: Vec<i32> = index.iter().map(|&j| j as i32).collect();
    assert_eq!(quantize_to_points_cpu(&v, &points, Some(5)).3, index, "cpu");
    for dev in kernel_devices() {
        let x = Tensor::from_slice(&[v.len()], &v, &dev).unwrap();
        let p = Tensor::from_slice(&[points.len()], &points, &dev).unwrap();
        let q = quantize_to_points(&x, &p, Some(5)).unwrap();
        let what = format!("on {}", dev.name());
        assert_eq!(q.levels.to_vec().unwrap(), index, "point index, {what}");
        assert_eq!(q.values.to_vec().unwrap(), want, "values, {what}");
    }
}
