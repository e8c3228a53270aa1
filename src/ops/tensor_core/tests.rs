//! Every tensor-core kernel against its reference ([`super::cpu`]: operands rounded as the
//! tensor cores see them, f64 sums) on every kernel device (emu in both thread orders; cuda when
//! present, required with `LIT_REQUIRE_GPU=1`), for tf32, bf16 and fp16, on shapes that leave
//! partial tiles everywhere; the cpu device's path against the same references; and proof that
//! the comparison would catch a kernel that skipped the rounding.
//!
//! Tolerance: with identical operands, the products are exact in fp32 (at most 11 + 11 significant
//! bits) and a kernel differs from the f64 reference only by its fp32 summation. Recursive
//! summation of `depth` terms in any order errs by at most `depth·u·Σ|terms|` (u = 2^-24 when
//! each add rounds to nearest; 2^-23 allowing the truncating adds tensor cores may use), plus the
//! epilogue's few roundings: `(depth + 4)·2^-23·Σ|terms|` per output element, Σ|terms| from the
//! references' magnitude twins. Operand rounding errors are ~2^-11 (tf32) to 2^-8 (bf16) relative
//! per term: far above this, which the `differ_measurably` test checks.

use super::*;
use crate::device::EmuOrder;
use crate::testing::{kernel_devices, random_f32};

const ROUNDED: [Precision; 3] = [Precision::Tf32, Precision::Bf16, Precision::Fp16];

fn emu(order: EmuOrder) -> Device {
    Device::emu_with_order(order).expect("emu device")
}

/// The largest `|got - want| / tolerance` over the elements (≤ 1: within tolerance), with the
/// tolerance of `depth` fp32 accumulations (module docs); the first index where it peaks.
fn excess(got: &[f32], want: &[f64], magnitude: &[f64], depth: usize) -> (f64, usize) {
    assert_eq!(got.len(), want.len(), "output length");
    let u = f64::powi(2.0, -23);
    let mut worst = (0.0, 0);
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(magnitude).enumerate() {
        let tol = (depth as f64 + 4.0) * u * m + f64::MIN_POSITIVE;
        let e = if g.is_nan() {
            f64::INFINITY
        } else {
            (g as f64 - w).abs() / tol
        };
        if e > worst.0 {
            worst = (e, i);
        }
    }
    worst
}

#[track_caller]
pub(super) fn assert_within(
    what: &str,
    got: &[f32],
    want: &[f64],
    magnitude: &[f64],
    depth: usize,
) {
    let (e, i) = excess(got, want, magnitude, depth);
    assert!(
        e <= 1.0,
        "{what}: element {i} = {} but the reference says {} (Σ|terms| {}, depth {depth}): {e:.1}x \
         the fp32-accumulation tolerance",
        got[i],
        want[i],
        magnitude[i]
    );
}

// ---------- GEMM ----------

/// One GEMM case: `(batch, m, n, k)`, transposes, `(alpha, beta)`.
type GemmCase = ((usize, usize, usize, usize), bool, bool, (f32, f32));

fn gemm_cases() -> Vec<GemmCase> {
    let mut cases = Vec::new();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        cases.push(((1, 37, 70, 45), ta, tb, (1.0, 0.0)));
        cases.push(((2, 17, 5, 66), ta, tb, (0.5, 1.5)));
    }
    cases.push(((1, 1, 1, 1), false, false, (1.0, 0.0)));
    cases.push(((1, 65, 64, 16), false, true, (1.0, 1.0)));
    cases
}

/// Stored shape of an operand that is `rows x cols` after its optional transpose.
fn stored(batch: usize, rows: usize, cols: usize, trans: bool) -> Vec<usize> {
    let (r, c) = if trans { (cols, rows) } else { (rows, cols) };
    if batch == 1 {
        vec![r, c]
    } else {
        vec![batch, r, c]
    }
}

/// `(kernel output, C before)` of `case` on `dev`; C starts NaN when `beta == 0` (not read).
fn run_gemm(dev: &Device, precision: Precision, case: GemmCase, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let ((batch, m, n, k), ta, tb, (alpha, beta)) = case;
    let (sa, sb, sc) = (
        stored(batch, m, k, ta),
        stored(batch, k, n, tb),
        stored(batch, m, n, false),
    );
    let a = Tensor::from_vec(&sa, random_f32(seed, batch * m * k), dev).unwrap();
    let b = Tensor::from_vec(&sb, random_f32(seed + 1, batch * k * n), dev).unwrap();
    let c0 = match beta {
        0.0 => vec![f32::NAN; batch * m * n],
        _ => random_f32(seed + 2, batch * m * n),
    };
    let mut c = Tensor::from_vec(&sc, c0.clone(), dev).unwrap();
    gemm(&mut c, &a, ta, &b, tb, alpha, beta, precision).unwrap();
    (c.to_vec().unwrap(), c0)
}

/// `(reference, magnitude)` of `case` for `precision` (the operands `run_gemm` draws).
fn gemm_reference(precision: Precision, case: GemmCase, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let ((batch, m, n, k), ta, tb, (alpha, beta)) = case;
    let p = GemmParams::dense(m, n, k, ta, tb)
        .unwrap()
        .with_scale(alpha, beta);
    let (a, b) = (
        random_f32(seed, batch * m * k),
        random_f32(seed + 1, batch * k * n),
    );
    let c = match beta {
        0.0 => vec![0.0; batch * m * n],
        _ => random_f32(seed + 2, batch * m * n),
    };
    let ops = (&a[..], &b[..], &c[..]);
    (
        cpu::gemm(precision, &p, batch, ops, false),
        cpu::gemm(precision, &p, batch, ops, true),
    )
}

#[test]
fn gemm_matches_the_rounded_reference_on_kernel_devices() {
    for precision in ROUNDED {
        for (i, case) in gemm_cases().into_iter().enumerate() {
            let seed = 100 + 10 * i as u64;
            let (want, magnitude) = gemm_reference(precision, case, seed);
            for dev in kernel_devices() {
                let (got, _) = run_gemm(&dev, precision, case, seed);
                let what = format!("gemm {precision} {case:?} on {dev:?}");
                assert_within(&what, &got, &want, &magnitude, case.0 .3);
            }
        }
    }
}

#[test]
fn gemm_on_cpu_rounds_like_the_kernels() {
    for precision in ROUNDED {
        let case = ((2, 17, 5, 66), true, false, (0.5, 1.5));
        let (want, magnitude) = gemm_reference(precision, case, 7);
        let (got, _) = run_gemm(&Device::Cpu, precision, case, 7);
        assert_within(
            &format!("cpu gemm {precision}"),
            &got,
            &want,
            &magnitude,
            66,
        );
    }
}

/// How far (in tolerances) a rounded kernel must sit from the fp32-operand reference. A kernel
/// that forgot to round would sit within 1 of it, and so fail its rounded reference by as much as
/// these outputs do; 3 keeps a clear margin (the weakest case, the tf32 weight gradient summing 162
/// terms, measures ~5 for tf32 and fp16 (both keep 10 mantissa bits), ~50 for bf16).
const ROUNDING_SEEN: f64 = 3.0;

/// A kernel that used fp32 operands (forgot to round) would pass against the fp32 reference and
/// fail against the rounded one: the rounded kernels' outputs sit several tolerances away from it.
#[test]
fn gemm_rounding_differs_measurably_from_fp32() {
    let case = ((1, 37, 70, 45), false, false, (1.0, 0.0));
    let (fp32, magnitude) = gemm_reference(Precision::Fp32, case, 3);
    for precision in ROUNDED {
        let (got, _) = run_gemm(&emu(EmuOrder::Forward), precision, case, 3);
        let (e, _) = excess(&got, &fp32, &magnitude, 45);
        assert!(
            e > ROUNDING_SEEN,
            "gemm {precision}: only {e:.1}x the tolerance from fp32 operands"
        );
        eprintln!("gemm {precision}: {e:.1}x the tolerance from fp32 operands");
    }
}

#[test]
fn fp32_and_bad_shapes_are_errors() {
    let dev = emu(EmuOrder::Forward);
    let a = Tensor::zeros(&[3, 4], &dev).unwrap();
    let b = Tensor::zeros(&[5, 6], &dev).unwrap();
    let mut c = Tensor::zeros(&[3, 6], &dev).unwrap();
    let r = gemm(&mut c, &a, false, &b, false, 1.0, 0.0, Precision::Fp32);
    assert!(matches!(r, Err(Error::OpArg { .. })), "{r:?}");
    let r = gemm(&mut c, &a, false, &b, false, 1.0, 0.0, Precision::Bf16);
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
    let x = Tensor::zeros(&[1, 2, 5, 5], &dev).unwrap();
    let w = Tensor::zeros(&[3, 2, 3, 3], &dev).unwrap();
    let bad_dy = Tensor::zeros(&[1, 3, 4, 4], &dev).unwrap();
    let r = conv2d_backward_weight(&x, w.shape(), &bad_dy, (1, 1), (1, 1), Precision::Tf32);
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
    let r = conv2d_forward(&x, &w, None, (1, 1), (1, 1), Precision::Fp32);
    assert!(matches!(r, Err(Error::OpArg { .. })), "{r:?}");
}

// ---------- convolutions ----------

/// `(x shape, w shape, stride, padding)`.
type ConvCase = ([usize; 4], [usize; 4], (usize, usize), (usize, usize));

fn conv_cases() -> Vec<ConvCase> {
    vec![
        ([2, 3, 9, 9], [5, 3, 3, 3], (1, 1), (1, 1)),
        ([2, 3, 9, 9], [5, 3, 3, 3], (2, 2), (1, 1)),
        ([2, 3, 9, 9], [4, 3, 1, 1], (1, 1), (0, 0)),
        ([1, 3, 7, 9], [3, 3, 3, 3], (2, 1), (0, 1)),
        ([2, 5, 6, 7], [70, 5, 1, 1], (2, 2), (0, 0)),
        ([1, 70, 5, 4], [3, 70, 3, 3], (1, 1), (1, 1)),
        // One output pixel: the weight gradient's single slice writes dw directly.
        ([1, 2, 4, 4], [3, 2, 3, 3], (2, 2), (0, 0)),
    ]
}

/// The tensors of `case` on `dev`: `x`, `w`, `bias`, `dy` (seeded by `seed`).
fn conv_tensors(dev: &Device, case: ConvCase, seed: u64) -> (ConvGeometry, [Tensor; 4]) {
    let (xs, ws, stride, padding) = case;
    let g = ConvGeometry::new(&xs, &ws, stride, padding).unwrap();
    let t = |shape: &[usize], s: u64| {
        let n = shape.iter().product();
        Tensor::from_vec(shape, random_f32(seed + s, n), dev).unwrap()
    };
    let tensors = [t(&xs, 0), t(&ws, 1), t(&[g.o], 2), t(&g.out_shape(), 3)];
    (g, tensors)
}

/// `[forward, input gradient, weight gradient, weight gradient in 32-column slices]` on `dev`.
fn run_conv(dev: &Device, precision: Precision, case: ConvCase, seed: u64) -> Vec<Vec<f32>> {
    let (_, [x, w, b, dy]) = conv_tensors(dev, case, seed);
    let (_, _, stride, padding) = case;
    let y = conv2d_forward(&x, &w, Some(&b), stride, padding, precision).unwrap();
    let dx = conv2d_backward_data(x.shape(), &w, &dy, stride, padding, precision).unwrap();
    let dw = conv2d_backward_weight(&x, w.shape(), &dy, stride, padding, precision).unwrap();
    let geometry = (stride, padding);
    let sliced = match dev {
        Device::Cpu => dw.clone(),
        _ => conv2d_backward_weight_sliced(&x, w.shape(), &dy, geometry, precision, Some(32))
            .unwrap(),
    };
    [y, dx, dw, sliced]
        .iter()
        .map(|t| t.to_vec().unwrap())
        .collect()
}

/// `[(reference, magnitude, depth)]` in [`run_conv`]'s order.
fn conv_references(
    precision: Precision,
    case: ConvCase,
    seed: u64,
) -> Vec<(Vec<f64>, Vec<f64>, usize)> {
    let (g, [x, w, b, dy]) = conv_tensors(&Device::Cpu, case, seed);
    let [x, w, b, dy] = [x, w, b, dy].map(|t| t.to_vec().unwrap());
    let forward = |abs| cpu::conv2d_forward(precision, &g, (&x, &w, Some(&b)), abs);
    let data = |abs| cpu::conv2d_backward_data(precision, &g, (&w, &dy), abs);
    let weight = |abs| cpu::conv2d_backward_weight(precision, &g, (&x, &dy), abs);
    let weight_depth = g.n * g.pixels_out();
    vec![
        (forward(false), forward(true), g.k()),
        (data(false), data(true), g.o * g.kh * g.kw),
        (weight(false), weight(true), weight_depth),
        (weight(false), weight(true), weight_depth),
    ]
}

const PASSES: [&str; 4] = [
    "forward",
    "input grad",
    "weight grad",
    "weight grad (sliced)",
];

#[test]
fn convolutions_match_the_rounded_reference_on_kernel_devices() {
    for precision in ROUNDED {
        for (i, case) in conv_cases().into_iter().enumerate() {
            let seed = 300 + 10 * i as u64;
            let want = conv_references(precision, case, seed);
            for dev in kernel_devices() {
                let got = run_conv(&dev, precision, case, seed);
                for ((pass, got), (want, magnitude, depth)) in PASSES.iter().zip(&got).zip(&want) {
                    let what = format!("conv {pass} {precision} {case:?} on {dev:?}");
                    assert_within(&what, got, want, magnitude, *depth);
                }
            }
        }
    }
}

#[test]
fn convolutions_on_cpu_round_like_the_kernels() {
    let case = conv_cases()[1];
    for precision in ROUNDED {
        let want = conv_references(precision, case, 9);
        let got = run_conv(&Device::Cpu, precision, case, 9);
        for ((pass, got), (want, magnitude, depth)) in PASSES.iter().zip(&got).zip(&want) {
            let what = format!("cpu conv {pass} {precision}");
            assert_within(&what, got, want, magnitude, *depth);
        }
    }
}

#[test]
fn conv_rounding_differs_measurably_from_fp32() {
    let case = conv_cases()[0];
    let fp32 = conv_references(Precision::Fp32, case, 5);
    for precision in ROUNDED {
        let got = run_conv(&emu(EmuOrder::Reverse), precision, case, 5);
        for ((pass, got), (want, magnitude, depth)) in PASSES.iter().zip(&got).zip(&fp32) {
            let (e, _) = excess(got, want, magnitude, *depth);
            assert!(
                e > ROUNDING_SEEN,
                "conv {pass} {precision}: only {e:.1}x the tolerance from fp32 operands"
            );
            eprintln!("conv {pass} {precision}: {e:.1}x the tolerance from fp32 operands");
        }
    }
}
