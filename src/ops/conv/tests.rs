//! The conv tests: the CPU lowerings against the direct loops (f64 and f32, every lowering, many
//! chunkings), finite differences, the kernels against the CPU on every geometry, and the
//! tensor-level and autograd entry points.

use super::cpu::{backward_chunked, forward_chunked};
use super::geometry::{Lowering, Window};
use super::gpu::{
    backward_data_gpu, backward_weight_gpu, backward_weight_gpu_sliced, forward_gpu,
    forward_gpu_epilogue, gpu_chunk, weight_grad_kernel, weight_grad_slices, GpuEpilogue, WG_STEP,
    WG_TILE_K,
};
use super::*;
use crate::autograd::Graph;
use crate::device::Device;
use crate::ops::batchnorm::{batchnorm_eval_forward_act, RunningStats};
use crate::ops::reduce::channel_sum_cpu;
use crate::tensor::Tensor;
use crate::testing::{assert_devices_agree, assert_gradient, dot, random_f32, random_f64};

/// The eval-BatchNorm epilogues tested: (affine, residual, relu).
const BN_EPILOGUE_VARIANTS: [(bool, bool, bool); 4] = [
    (true, false, false),
    (true, false, true),
    (true, true, true),
    (false, true, false),
];

/// The fused eval conv + BatchNorm (+ residual) (+ ReLU) gives bit for bit what the separate
/// ops give, on every lowering (implicit GEMM, shifted, im2col, pointwise, strided), and the
/// kernel devices (which fuse it into the conv kernel) agree with it.
#[test]
fn conv_bn_eval_epilogue_equals_the_separate_ops() {
    let dev = Device::Cpu;
    let t = |shape: &[usize], seed: u64, dev: &Device| {
        Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
    };
    // Plus batches of several chunks (implicit GEMM and im2col), so image indices cross chunks.
    let mut cases = geometries();
    cases.push(([9, 6, 16, 16], [5, 6, 3, 3], (1, 1), (1, 1)));
    cases.push(([20, 3, 8, 8], [4, 3, 3, 3], (1, 1), (1, 1)));
    for (i, (xs, ws, stride, padding)) in cases.into_iter().enumerate() {
        let o = ws[0];
        let (x, w) = (t(&xs, 70 + i as u64, &dev), t(&ws, 90 + i as u64, &dev));
        let running = RunningStats {
            mean: t(&[o], 3, &dev),
            var: Tensor::from_vec(&[o], (0..o).map(|k| 0.5 + k as f32 * 0.3).collect(), &dev)
                .unwrap(),
            num_batches_tracked: None,
        };
        let (gamma, beta) = (t(&[o], 5, &dev), t(&[o], 6, &dev));
        let plain = conv2d_forward(&x, &w, None, stride, padding).unwrap();
        let res = t(plain.shape(), 7, &dev);
        for (affine, residual, relu) in BN_EPILOGUE_VARIANTS {
            let bn = BnEval {
                affine: affine.then_some((&gamma, &beta)),
                running: &running,
                eps: 1e-5,
            };
            let r = residual.then_some(&res);
            let fused = conv2d_bn_eval_forward(&x, &w, stride, padding, bn, r, relu).unwrap();
            let want =
                batchnorm_eval_forward_act(&plain, bn.affine, &running, 1e-5, relu, r).unwrap();
            assert_eq!(
                fused.to_vec().unwrap(),
                want.to_vec().unwrap(),
                "{xs:?} {ws:?} affine={affine} residual={residual} relu={relu}"
            );
        }
    }
    let (xs, ws) = ([3, 6, 5, 16], [5, 6, 3, 3]);
    assert_devices_agree("conv+bn eval fused", 1e-4, 1e-5, |dev| {
        let (x, w) = (t(&xs, 1, dev), t(&ws, 2, dev));
        let running = RunningStats {
            mean: t(&[5], 3, dev),
            var: Tensor::full(&[5], 0.7, dev)?,
            num_batches_tracked: None,
        };
        let (gamma, beta) = (t(&[5], 4, dev), t(&[5], 5, dev));
        let res = t(&[3, 5, 5, 16], 6, dev);
        let bn = BnEval {
            affine: Some((&gamma, &beta)),
            running: &running,
            eps: 1e-5,
        };
        Ok(vec![conv2d_bn_eval_forward(
            &x,
            &w,
            (1, 1),
            (1, 1),
            bn,
            Some(&res),
            true,
        )?])
    });
}

/// x shape, weight shape, stride, padding.
type Geometry = ([usize; 4], [usize; 4], (usize, usize), (usize, usize));

/// Covering 1x1, 3x3 s1/s2, 5x5 p2, odd and non-square sizes, padding beyond k-1 (input
/// gradient via col2im) and 1-D (height 1).
fn geometries() -> Vec<Geometry> {
    vec![
        ([2, 3, 5, 4], [4, 3, 1, 1], (1, 1), (0, 0)),
        ([2, 3, 7, 6], [2, 3, 1, 1], (2, 2), (0, 0)),
        ([2, 3, 6, 5], [4, 3, 3, 3], (1, 1), (1, 1)),
        ([2, 2, 7, 8], [3, 2, 3, 3], (2, 2), (1, 1)),
        ([1, 2, 7, 6], [3, 2, 5, 5], (1, 1), (2, 2)),
        ([3, 3, 5, 7], [2, 3, 3, 2], (2, 1), (0, 1)),
        ([2, 2, 4, 5], [3, 2, 1, 1], (1, 1), (1, 1)),
        ([2, 1, 9, 9], [2, 1, 3, 3], (3, 3), (2, 0)),
        ([2, 4, 1, 11], [3, 4, 1, 3], (1, 1), (0, 1)),
        ([2, 3, 1, 10], [2, 3, 1, 3], (1, 2), (0, 1)),
        ([2, 3, 1, 7], [5, 3, 1, 1], (1, 1), (0, 0)),
        // Wide enough for the shifted lowering (padding columns <= 15% of the output width, kw·c >= 16).
        ([2, 6, 5, 16], [6, 6, 3, 3], (1, 1), (1, 1)),
        ([1, 3, 4, 16], [4, 3, 3, 3], (1, 1), (1, 1)),
        ([1, 9, 4, 17], [10, 9, 3, 3], (1, 1), (1, 1)),
        ([1, 4, 3, 30], [4, 4, 5, 5], (1, 1), (2, 2)),
        ([2, 6, 4, 18], [6, 6, 2, 3], (1, 1), (0, 1)),
        ([2, 6, 1, 21], [6, 6, 1, 3], (1, 1), (0, 1)),
        // 8x8 maps (im2col).
        ([2, 16, 8, 8], [8, 16, 3, 3], (1, 1), (1, 1)),
    ]
}

#[test]
fn geometries_cover_every_lowering() {
    let lowerings: Vec<(Lowering, Lowering)> = geometries()
        .into_iter()
        .map(|(xs, ws, s, p)| {
            let g = geometry(xs, ws, s, p);
            (Window::of(&g).lowering, Window::data_grad(&g).lowering)
        })
        .collect();
    for want in [Lowering::Pointwise, Lowering::Shifted, Lowering::Im2col] {
        assert!(lowerings.iter().any(|l| l.0 == want), "forward {want:?}");
        assert!(
            lowerings.iter().any(|l| l.1 == want),
            "input gradient {want:?}"
        );
    }
}

#[test]
fn fast_cpu_path_in_f32_matches_direct_loops() {
    // f32 takes the AVX transposes (f64 the scalar ones).
    for (xs, ws, s, p) in geometries() {
        let g = geometry(xs, ws, s, p);
        let x = random_f32(1, xs.iter().product());
        let w = random_f32(2, ws.iter().product());
        let dy = random_f32(4, g.out_shape().iter().product());
        let what = format!("f32 x {xs:?} w {ws:?} s {s:?} p {p:?}");
        let mut want = vec![0.0f32; dy.len()];
        conv2d_forward_direct(&g, &x, &w, None, &mut want);
        let (mut want_dx, mut want_dw) = (vec![0.0f32; x.len()], vec![0.0f32; w.len()]);
        conv2d_backward_direct(&g, &x, &w, &dy, Some(&mut want_dx), Some(&mut want_dw));
        let mut y = vec![f32::NAN; dy.len()];
        conv2d_forward_cpu(&g, &x, &w, None, &mut y);
        let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![f32::NAN; w.len()]);
        conv2d_backward_cpu(&g, &x, &w, &dy, Some(&mut dx), Some(&mut dw), None);
        crate::testing::assert_close(&format!("{what} y"), &y, &want, 1e-6, 1e-7);
        crate::testing::assert_close(&format!("{what} dx"), &dx, &want_dx, 1e-6, 1e-7);
        crate::testing::assert_close(&format!("{what} dw"), &dw, &want_dw, 1e-6, 1e-7);
    }
}

fn geometry(xs: [usize; 4], ws: [usize; 4], s: (usize, usize), p: (usize, usize)) -> ConvGeometry {
    ConvGeometry::new(&xs, &ws, s, p).unwrap()
}

fn assert_near(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-11 * (1.0 + b.abs()),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

#[test]
fn fast_cpu_path_matches_direct_loops() {
    for (xs, ws, s, p) in geometries() {
        let g = geometry(xs, ws, s, p);
        let x = random_f64(1, xs.iter().product());
        let w = random_f64(2, ws.iter().product());
        let b = random_f64(3, g.o);
        let dy = random_f64(4, g.out_shape().iter().product());
        let what = format!("x {xs:?} w {ws:?} s {s:?} p {p:?}");
        let mut want_y = vec![0.0; dy.len()];
        conv2d_forward_direct(&g, &x, &w, Some(&b), &mut want_y);
        let (mut want_dx, mut want_dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        conv2d_backward_direct(&g, &x, &w, &dy, Some(&mut want_dx), Some(&mut want_dw));
        let mut want_db = vec![0.0; g.o];
        channel_sum_cpu(&dy, &mut want_db, g.n, g.o, g.pixels_out());
        // Default chunking, and one/two images per chunk (several chunks per weight-gradient group).
        for per in [None, Some(1), Some(2)] {
            let mut y = vec![f64::NAN; dy.len()];
            let (mut dx, mut dw, mut db) = (
                vec![f64::NAN; x.len()],
                vec![f64::NAN; w.len()],
                vec![f64::NAN; g.o],
            );
            match per {
                None => {
                    conv2d_forward_cpu(&g, &x, &w, Some(&b), &mut y);
                    conv2d_backward_cpu(
                        &g,
                        &x,
                        &w,
                        &dy,
                        Some(&mut dx),
                        Some(&mut dw),
                        Some(&mut db),
                    );
                }
                Some(per) => {
                    forward_chunked(&g, &x, &w, Some(&b), &mut y, per);
                    backward_chunked(&g, &x, &w, &dy, Some(&mut dx), Some(&mut dw), Some(per));
                    db.copy_from_slice(&want_db);
                }
            }
            assert_near(&format!("{what} {per:?} y"), &y, &want_y);
            assert_near(&format!("{what} {per:?} dx"), &dx, &want_dx);
            assert_near(&format!("{what} {per:?} dw"), &dw, &want_dw);
            assert_near(&format!("{what} {per:?} db"), &db, &want_db);
        }
        // Each gradient alone (the other skipped) gives the same values.
        let mut dw_only = vec![f64::NAN; w.len()];
        conv2d_backward_cpu(&g, &x, &w, &dy, None, Some(&mut dw_only), None);
        assert_near(&format!("{what} dw alone"), &dw_only, &want_dw);
        let mut dx_only = vec![f64::NAN; x.len()];
        conv2d_backward_cpu(&g, &x, &w, &dy, Some(&mut dx_only), None, None);
        assert_near(&format!("{what} dx alone"), &dx_only, &want_dx);
    }
}

#[test]
fn weight_gradient_sums_many_chunks_in_groups() {
    // 40 images, one per chunk: 40 chunks in 14 groups of 3 (the last one short).
    let (xs, ws) = ([40, 2, 4, 3], [3, 2, 3, 3]);
    let g = geometry(xs, ws, (1, 1), (1, 1));
    let x = random_f64(5, xs.iter().product());
    let w = random_f64(6, ws.iter().product());
    let dy = random_f64(7, g.out_shape().iter().product());
    let (mut want_dx, mut want_dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    conv2d_backward_direct(&g, &x, &w, &dy, Some(&mut want_dx), Some(&mut want_dw));
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    backward_chunked(&g, &x, &w, &dy, Some(&mut dx), Some(&mut dw), Some(1));
    assert_near("dw", &dw, &want_dw);
    assert_near("dx", &dx, &want_dx);
}

#[test]
fn implicit_weight_gradient_sums_multi_image_chunks_in_groups() {
    // f32 on a shifted window: the weight gradient read straight from CHW (AVX-512 CPUs);
    // 41 images, 3 per chunk: 14 chunks in 14 groups, the last chunk short.
    let (xs, ws) = ([41, 6, 4, 16], [5, 6, 3, 3]);
    let g = geometry(xs, ws, (1, 1), (1, 1));
    assert_eq!(Window::of(&g).lowering, Lowering::Shifted);
    let x = random_f32(5, xs.iter().product());
    let w = random_f32(6, ws.iter().product());
    let dy = random_f32(7, g.out_shape().iter().product());
    let (mut want_dx, mut want_dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    conv2d_backward_direct(&g, &x, &w, &dy, Some(&mut want_dx), Some(&mut want_dw));
    let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![f32::NAN; w.len()]);
    backward_chunked(&g, &x, &w, &dy, Some(&mut dx), Some(&mut dw), Some(3));
    crate::testing::assert_close("dw", &dw, &want_dw, 1e-5, 1e-6);
    crate::testing::assert_close("dx", &dx, &want_dx, 1e-5, 1e-6);
    let mut dw_only = vec![f32::NAN; w.len()];
    backward_chunked(&g, &x, &w, &dy, None, Some(&mut dw_only), Some(3));
    assert_eq!(dw_only, dw, "dw alone equals dw with dx");
}

/// Finite differences of `sum(conv(x, w, b) * r)` against the fast backward, in f64.
fn check_gradients(xs: [usize; 4], ws: [usize; 4], s: (usize, usize), p: (usize, usize)) {
    let g = geometry(xs, ws, s, p);
    let x = random_f64(11, xs.iter().product());
    let w = random_f64(12, ws.iter().product());
    let b = random_f64(13, g.o);
    let r = random_f64(14, g.out_shape().iter().product());
    let loss = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; r.len()];
        conv2d_forward_cpu(&g, x, w, Some(b), &mut y);
        dot(&y, &r)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; g.o]);
    conv2d_backward_cpu(&g, &x, &w, &r, Some(&mut dx), Some(&mut dw), Some(&mut db));
    let what = format!("x {xs:?} w {ws:?} s {s:?} p {p:?}");
    assert_gradient(&format!("{what} dx"), &|v| loss(v, &w, &b), &x, &dx, 1e-6);
    assert_gradient(&format!("{what} dw"), &|v| loss(&x, v, &b), &w, &dw, 1e-6);
    assert_gradient(&format!("{what} db"), &|v| loss(&x, &w, v), &b, &db, 1e-6);
}

#[test]
fn gradients_match_finite_differences_2d() {
    check_gradients([2, 3, 4, 5], [2, 3, 1, 1], (1, 1), (0, 0));
    check_gradients([2, 2, 5, 5], [3, 2, 3, 3], (1, 1), (1, 1));
    check_gradients([2, 2, 7, 6], [3, 2, 3, 3], (2, 2), (1, 1));
    check_gradients([1, 2, 6, 7], [2, 2, 5, 5], (1, 1), (2, 2));
    check_gradients([2, 3, 5, 7], [2, 3, 3, 2], (2, 1), (0, 1));
    check_gradients([2, 6, 3, 16], [6, 6, 3, 3], (1, 1), (1, 1));
}

#[test]
fn gradients_match_finite_differences_1d() {
    // Through the public conv1d shapes: [N, C, L] as [N, C, 1, L].
    check_gradients([2, 3, 1, 9], [4, 3, 1, 3], (1, 1), (0, 1));
    check_gradients([2, 3, 1, 9], [2, 3, 1, 3], (1, 2), (0, 1));
    check_gradients([2, 3, 1, 6], [2, 3, 1, 1], (1, 1), (0, 0));
    check_gradients([2, 6, 1, 20], [6, 6, 1, 3], (1, 1), (0, 1));
}

type Case = ([usize; 4], [usize; 4], (usize, usize), (usize, usize), bool);

/// Shapes for the kernels: odd sizes, partial GEMM tiles (K or P above 64), with and without bias.
fn device_cases() -> Vec<Case> {
    vec![
        ([2, 3, 7, 5], [4, 3, 3, 3], (1, 1), (1, 1), true),
        ([3, 5, 9, 8], [6, 5, 3, 3], (2, 2), (1, 1), false),
        ([2, 3, 6, 7], [5, 3, 1, 1], (1, 1), (0, 0), true),
        ([2, 4, 7, 7], [3, 4, 1, 1], (2, 2), (0, 0), false),
        ([1, 2, 9, 10], [3, 2, 5, 5], (1, 1), (2, 2), true),
        ([2, 2, 5, 6], [3, 2, 3, 2], (2, 1), (0, 2), true),
        ([2, 16, 1, 13], [7, 16, 1, 3], (1, 1), (0, 1), false),
        ([2, 6, 3, 16], [6, 6, 3, 3], (1, 1), (1, 1), true),
        // The implicit GEMM's partial tiles: O = 70 and 66 (two row tiles), 189 and 96
        // (image, pixel) columns, K = 63 and 30 over several 16-deep steps.
        ([3, 7, 9, 7], [70, 7, 3, 3], (1, 1), (1, 1), true),
        ([2, 5, 11, 9], [66, 5, 3, 2], (2, 1), (1, 0), false),
        // The 16- and 32-row tiles past their columns: O = 9 over 286 (two 256-column
        // tiles), O = 20 over 144 (two 128-column tiles).
        ([2, 3, 13, 11], [9, 3, 3, 3], (1, 1), (1, 1), true),
        ([2, 5, 9, 8], [20, 5, 3, 3], (1, 1), (1, 1), false),
    ]
}

/// Every geometry of [`geometries`] and of [`device_cases`] (the partial-tile cases).
fn kernel_geometries() -> Vec<Geometry> {
    let mut cases = geometries();
    cases.extend(
        device_cases()
            .into_iter()
            .map(|(x, w, s, p, _)| (x, w, s, p)),
    );
    cases
}

/// The input gradient against the CPU on every geometry and the partial-tile cases (stride 1:
/// the implicit GEMM over dy; otherwise GEMM + col2im), in one launch and one image per launch.
#[test]
fn input_gradient_kernels_match_cpu_on_every_geometry() {
    for (i, (xs, ws, s, p)) in kernel_geometries().into_iter().enumerate() {
        let g = geometry(xs, ws, s, p);
        let what = format!("input gradient x {xs:?} w {ws:?} s {s:?} p {p:?}");
        let seed = 300 + 10 * i as u64;
        assert_devices_agree(&what, 1e-5, 1e-6, |dev| {
            let t = |shape: &[usize], k: u64| {
                Tensor::from_vec(shape, random_f32(seed + k, shape.iter().product()), dev)
            };
            let (x, w, dy) = (t(&xs, 0)?, t(&ws, 1)?, t(&g.out_shape(), 2)?);
            let dx = conv2d_backward(&x, &w, &dy, s, p, (true, false, false))?.0;
            let chunked = match dev {
                Device::Cpu => dx.clone().unwrap(),
                Device::Gpu(gpu) => backward_data_gpu(gpu, &g, &w, &dy, 1)?,
            };
            Ok(vec![dx.unwrap(), chunked])
        });
    }
}

/// The forward kernels (`conv2d_implicit_*`, all three tiles) against the CPU on every geometry, plus its
/// partial-tile cases: plain, with bias, and each eval BatchNorm (+ residual) (+ ReLU)
/// epilogue — in one launch, and in launches of two images (residual and output offsets).
#[test]
fn implicit_forward_and_epilogues_match_cpu_on_every_geometry() {
    for (i, (xs, ws, s, p)) in kernel_geometries().into_iter().enumerate() {
        let o = ws[0];
        let g = geometry(xs, ws, s, p);
        let what = format!("implicit conv x {xs:?} w {ws:?} s {s:?} p {p:?}");
        let seed = 100 + 10 * i as u64;
        assert_devices_agree(&what, 1e-5, 1e-6, |dev| {
            let t = |shape: &[usize], k: u64| {
                Tensor::from_vec(shape, random_f32(seed + k, shape.iter().product()), dev)
            };
            let (x, w, b) = (t(&xs, 0)?, t(&ws, 1)?, t(&[o], 2)?);
            let running = RunningStats {
                mean: t(&[o], 3)?,
                var: Tensor::from_vec(&[o], (0..o).map(|k| 0.5 + k as f32 * 0.3).collect(), dev)?,
                num_batches_tracked: None,
            };
            let (gamma, beta, res) = (t(&[o], 4)?, t(&[o], 5)?, t(&g.out_shape(), 6)?);
            let mut out = vec![
                conv2d_forward(&x, &w, None, s, p)?,
                conv2d_forward(&x, &w, Some(&b), s, p)?,
            ];
            for (affine, residual, relu) in BN_EPILOGUE_VARIANTS {
                let bn = BnEval {
                    affine: affine.then_some((&gamma, &beta)),
                    running: &running,
                    eps: 1e-5,
                };
                let r = residual.then_some(&res);
                out.push(conv2d_bn_eval_forward(&x, &w, s, p, bn, r, relu)?);
                // Launches of two images: the cpu repeats its answer.
                out.push(match dev {
                    Device::Cpu => conv2d_bn_eval_forward(&x, &w, s, p, bn, r, relu)?,
                    Device::Gpu(gpu) => {
                        let e = GpuEpilogue::bn_eval(gpu, bn, r, relu);
                        forward_gpu_epilogue(gpu, &g, &x, &w, &e, 2)?
                    }
                });
            }
            Ok(out)
        });
    }
}

/// The weight-gradient kernels (`conv2d_weight_grad_o16/o32/_f32`) against the CPU on every
/// geometry and device case, plus O = 20 and 40 (the 32- and 64-row tiles): in one launch
/// (the default slicing), in launches of one and two images, and with 3 blocks' worth of
/// slices per launch (slices of several 16-column steps, the last one partial).
#[test]
fn weight_gradient_kernels_match_cpu_on_every_geometry() {
    let mut cases = kernel_geometries();
    cases.push(([3, 5, 6, 7], [20, 5, 3, 3], (1, 1), (1, 1)));
    cases.push(([2, 3, 7, 9], [40, 3, 2, 3], (2, 1), (1, 1)));
    let mut long_uneven = 0;
    for (i, (xs, ws, s, p)) in cases.into_iter().enumerate() {
        let g = geometry(xs, ws, s, p);
        let (_, tile_o, _) = weight_grad_kernel(g.o);
        let tiles = g.o.div_ceil(tile_o) * g.k().div_ceil(WG_TILE_K);
        let cols = g.n * g.pixels_out();
        let (slice, slices) = weight_grad_slices(tiles, cols, 65_535, 3);
        assert!(slice % WG_STEP == 0 && (slices - 1) * slice < cols && slices * slice >= cols);
        if slices > 1 && slice > WG_STEP && !cols.is_multiple_of(slice) {
            long_uneven += 1;
        }
        let what = format!("weight gradient x {xs:?} w {ws:?} s {s:?} p {p:?}");
        let seed = 500 + 10 * i as u64;
        assert_devices_agree(&what, 1e-5, 1e-6, |dev| {
            let t = |shape: &[usize], k: u64| {
                Tensor::from_vec(shape, random_f32(seed + k, shape.iter().product()), dev)
            };
            let (x, w, dy) = (t(&xs, 0)?, t(&ws, 1)?, t(&g.out_shape(), 2)?);
            let dw = conv2d_backward(&x, &w, &dy, s, p, (false, true, false))?.1;
            let dw = dw.unwrap();
            Ok(match dev {
                Device::Cpu => vec![dw.clone(), dw.clone(), dw.clone(), dw],
                Device::Gpu(gpu) => vec![
                    dw,
                    backward_weight_gpu(gpu, &g, &x, &dy, 1)?,
                    backward_weight_gpu(gpu, &g, &x, &dy, 2)?,
                    backward_weight_gpu_sliced(gpu, &g, &x, &dy, g.n, 3)?,
                ],
            })
        });
    }
    assert!(
        long_uneven >= 5,
        "{long_uneven} cases with long, uneven slices"
    );
}

#[test]
fn kernels_match_cpu() {
    for (xs, ws, s, p, bias) in device_cases() {
        let what = format!("conv2d x {xs:?} w {ws:?} s {s:?} p {p:?} bias {bias}");
        let o = ws[0];
        let g = geometry(xs, ws, s, p);
        let dy = random_f32(24, g.out_shape().iter().product());
        assert_devices_agree(&what, 1e-5, 1e-6, |dev| {
            let x = Tensor::from_vec(&xs, random_f32(21, xs.iter().product()), dev)?;
            let w = Tensor::from_vec(&ws, random_f32(22, ws.iter().product()), dev)?;
            let b = Tensor::from_vec(&[o], random_f32(23, o), dev)?;
            let dy = Tensor::from_slice(&g.out_shape(), &dy, dev)?;
            let y = conv2d_forward(&x, &w, bias.then_some(&b), s, p)?;
            let (dx, dw, db) = conv2d_backward(&x, &w, &dy, s, p, (true, true, bias))?;
            let mut out = vec![y, dx.unwrap(), dw.unwrap()];
            out.extend(db);
            Ok(out)
        });
    }
}

#[test]
fn gpu_chunk_sizes_respect_the_memory_caps() {
    let g = geometry([1000, 3, 40, 40], [4, 3, 3, 3], (1, 1), (1, 1));
    assert_eq!(gpu_chunk(&g), (1 << 25) / (27 * 1600));
    let g = geometry([5, 1024, 4, 4], [2048, 1024, 3, 3], (1, 1), (1, 1));
    assert_eq!(
        gpu_chunk(&g),
        1,
        "2048x9216 weight partials allow one image per chunk"
    );
}

#[test]
fn kernels_in_several_chunks_match_cpu() {
    for (xs, ws, s, p, bias) in device_cases().into_iter().take(4) {
        let what = format!("chunked conv2d x {xs:?} w {ws:?} s {s:?} p {p:?}");
        let o = ws[0];
        let g = geometry(xs, ws, s, p);
        assert_devices_agree(&what, 1e-5, 1e-6, |dev| {
            let x = Tensor::from_vec(&xs, random_f32(51, xs.iter().product()), dev)?;
            let w = Tensor::from_vec(&ws, random_f32(52, ws.iter().product()), dev)?;
            let b = Tensor::from_vec(&[o], random_f32(53, o), dev)?;
            let dy = random_f32(54, g.out_shape().iter().product());
            let dy = Tensor::from_vec(&g.out_shape(), dy, dev)?;
            let b = bias.then_some(&b);
            match dev {
                Device::Cpu => {
                    let y = conv2d_forward(&x, &w, b, s, p)?;
                    let (dx, dw, _) = conv2d_backward(&x, &w, &dy, s, p, (true, true, false))?;
                    Ok(vec![y, dx.unwrap(), dw.unwrap()])
                }
                Device::Gpu(gpu) => Ok(vec![
                    forward_gpu(gpu, &g, &x, &w, b, 1)?,
                    backward_data_gpu(gpu, &g, &w, &dy, 1)?,
                    backward_weight_gpu(gpu, &g, &x, &dy, 1)?,
                ]),
            }
        });
    }
}

#[test]
fn autograd_skips_the_data_gradient_and_matches_tensor_backward() {
    let dev = Device::Cpu;
    let (xs, ws) = ([2, 3, 6, 6], [4, 3, 3, 3]);
    let x = Tensor::from_vec(&xs, random_f32(31, 216), &dev).unwrap();
    let w = Tensor::from_vec(&ws, random_f32(32, 108), &dev).unwrap();
    let b = Tensor::from_vec(&[4], random_f32(33, 4), &dev).unwrap();
    let mut g = Graph::new(&dev);
    let (xv, wv, bv) = (g.constant(x.clone()), g.leaf(w.clone()), g.leaf(b.clone()));
    let y = conv2d(&mut g, xv, wv, Some(bv), (2, 2), (1, 1)).unwrap();
    let seed = Tensor::from_vec(&[2, 4, 3, 3], random_f32(34, 72), &dev).unwrap();
    g.backward_with(y, Some(seed.clone())).unwrap();
    assert!(g.grad(xv).is_none(), "no gradient for a constant input");
    let (dx, dw, db) = conv2d_backward(&x, &w, &seed, (2, 2), (1, 1), (false, true, true)).unwrap();
    assert!(dx.is_none());
    assert_eq!(
        g.grad(wv).unwrap().to_vec().unwrap(),
        dw.unwrap().to_vec().unwrap()
    );
    assert_eq!(
        g.grad(bv).unwrap().to_vec().unwrap(),
        db.unwrap().to_vec().unwrap()
    );
}

#[test]
fn conv1d_is_conv2d_of_height_one() {
    let dev = Device::Cpu;
    let x = Tensor::from_vec(&[2, 3, 10], random_f32(41, 60), &dev).unwrap();
    let w = Tensor::from_vec(&[4, 3, 3], random_f32(42, 36), &dev).unwrap();
    let b = Tensor::from_vec(&[4], random_f32(43, 4), &dev).unwrap();
    let y = conv1d_forward(&x, &w, Some(&b), 2, 1).unwrap();
    assert_eq!(y.shape(), [2, 4, 5]);
    let g = geometry([2, 3, 1, 10], [4, 3, 1, 3], (1, 2), (0, 1));
    let mut want = vec![0.0f32; 40];
    let (xh, wh, bh) = (
        x.to_vec().unwrap(),
        w.to_vec().unwrap(),
        b.to_vec().unwrap(),
    );
    conv2d_forward_direct(&g, &xh, &wh, Some(&bh), &mut want);
    crate::testing::assert_close("conv1d", &y.to_vec().unwrap(), &want, 1e-6, 1e-7);
    let dy = Tensor::from_vec(&[2, 4, 5], random_f32(44, 40), &dev).unwrap();
    let (dx, dw, db) = conv1d_backward(&x, &w, &dy, 2, 1, (true, true, true)).unwrap();
    assert_eq!(dx.unwrap().shape(), [2, 3, 10]);
    assert_eq!(dw.unwrap().shape(), [4, 3, 3]);
    assert_eq!(db.unwrap().shape(), [4]);
}

#[test]
fn bad_shapes_are_errors() {
    let dev = Device::Cpu;
    let t = |s: &[usize]| Tensor::zeros(s, &dev).unwrap();
    let x = t(&[1, 3, 5, 5]);
    assert!(conv2d_forward(&x, &t(&[2, 4, 3, 3]), None, (1, 1), (0, 0)).is_err());
    assert!(conv2d_forward(&x, &t(&[2, 3, 7, 7]), None, (1, 1), (0, 0)).is_err());
    assert!(conv2d_forward(&x, &t(&[2, 3, 3, 3]), None, (0, 1), (0, 0)).is_err());
    assert!(conv2d_forward(&x, &t(&[2, 3, 3, 3]), Some(&t(&[3])), (1, 1), (0, 0)).is_err());
    assert!(conv2d_forward(&t(&[3, 5, 5]), &t(&[2, 3, 3, 3]), None, (1, 1), (0, 0)).is_err());
    assert!(conv1d_forward(&x, &t(&[2, 3, 3]), None, 1, 0).is_err());
    let dy = t(&[1, 2, 4, 4]);
    assert!(conv2d_backward(
        &x,
        &t(&[2, 3, 3, 3]),
        &dy,
        (1, 1),
        (0, 0),
        (true, true, true)
    )
    .is_err());
}

/// The launch structs mirror `kernels/conv.cu`'s field for field (its static_asserts pin the same
/// sizes): 8-byte device addresses, then the parameters, 4-byte fields, with no padding anywhere.
#[test]
fn launch_structs_match_the_kernels_layout() {
    use super::gpu::{Col2imArgs, ImplicitArgs, SumPartialsArgs, WeightGradArgs};
    use std::mem::{offset_of, size_of};
    // 16 four-byte fields, in the order of the .cu struct.
    assert_eq!(size_of::<ConvParams>(), 64);
    assert_eq!(offset_of!(ConvParams, o), 12 * 4);
    assert_eq!(offset_of!(ConvParams, eps), 14 * 4);
    assert_eq!(offset_of!(ConvParams, slice), 15 * 4);
    // parts, len, accumulate and the pad that makes it a multiple of 8.
    assert_eq!(size_of::<PartialSumParams>(), 16);
    // (size, offset of the parameters) of each, in the order of the .cu file.
    let got = [
        (size_of::<Col2imArgs>(), offset_of!(Col2imArgs, p)),
        (size_of::<SumPartialsArgs>(), offset_of!(SumPartialsArgs, p)),
        (size_of::<ImplicitArgs>(), offset_of!(ImplicitArgs, p)),
        (size_of::<WeightGradArgs>(), offset_of!(WeightGradArgs, p)),
    ];
    // Their (pointers, parameter bytes): the parameters follow the 8-byte pointers directly.
    let want =
        [(2, 64), (2, 16), (9, 64), (3, 64)].map(|(ptrs, params)| (8 * ptrs + params, 8 * ptrs));
    assert_eq!(got, want);
}
