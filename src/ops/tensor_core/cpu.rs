//! The references the tensor-core kernels are tested against: every operand rounded exactly as
//! the tensor cores see it ([`Precision::round`]), then the plain specification (`gemm_cpu`,
//! `conv2d_*_direct`) in f64, so the only difference a correct kernel shows is its fp32
//! accumulation order. Each also has a magnitude twin (`|operands|`, no cancellation) that the
//! tests scale their tolerance by.

use crate::ops::conv::{conv2d_backward_direct, conv2d_forward_direct, ConvGeometry};
use crate::ops::matmul::{gemm_cpu, GemmParams};
use crate::precision::Precision;

/// `v` as the tensor cores see it in `precision`, widened to f64 (`abs`: its magnitude).
pub fn operands(precision: Precision, v: &[f32], abs: bool) -> Vec<f64> {
    v.iter()
        .map(|&x| {
            let r = precision.round(x) as f64;
            if abs {
                r.abs()
            } else {
                r
            }
        })
        .collect()
}

/// `alpha·op(a)·op(b) + beta·c` for `batch` GEMMs of `p` with rounded `a`, `b` (`c`, `alpha`,
/// `beta` exact, as the kernel's fp32 epilogue takes them). `abs`: every term's magnitude.
pub fn gemm(
    precision: Precision,
    p: &GemmParams,
    batch: usize,
    (a, b, c): (&[f32], &[f32], &[f32]),
    abs: bool,
) -> Vec<f64> {
    let (a, b) = (operands(precision, a, abs), operands(precision, b, abs));
    let mut out = operands(Precision::Fp32, c, abs);
    let mut p = *p;
    if abs {
        (p.alpha, p.beta) = (p.alpha.abs(), p.beta.abs());
    }
    gemm_cpu(&p, batch, &a, &b, &mut out);
    out
}

/// `conv2d(x, w) + bias` with rounded `x`, `w` (the bias exact). `abs`: every term's magnitude.
pub fn conv2d_forward(
    precision: Precision,
    g: &ConvGeometry,
    (x, w, bias): (&[f32], &[f32], Option<&[f32]>),
    abs: bool,
) -> Vec<f64> {
    let (x, w) = (operands(precision, x, abs), operands(precision, w, abs));
    let bias = bias.map(|b| operands(Precision::Fp32, b, abs));
    let mut y = vec![0.0; g.n * g.o * g.pixels_out()];
    conv2d_forward_direct(g, &x, &w, bias.as_deref(), &mut y);
    y
}

/// The input gradient of `conv2d(x, w)` for `dy`, with rounded `w`, `dy`. `abs`: magnitudes.
pub fn conv2d_backward_data(
    precision: Precision,
    g: &ConvGeometry,
    (w, dy): (&[f32], &[f32]),
    abs: bool,
) -> Vec<f64> {
    let (w, dy) = (operands(precision, w, abs), operands(precision, dy, abs));
    let x = vec![0.0; g.n * g.c * g.pixels_in()];
    let mut dx = vec![0.0; x.len()];
    conv2d_backward_direct(g, &x, &w, &dy, Some(&mut dx), None);
    dx
}

/// The weight gradient of `conv2d(x, w)` for `dy`, with rounded `x`, `dy`. `abs`: magnitudes.
pub fn conv2d_backward_weight(
    precision: Precision,
    g: &ConvGeometry,
    (x, dy): (&[f32], &[f32]),
    abs: bool,
) -> Vec<f64> {
    let (x, dy) = (operands(precision, x, abs), operands(precision, dy, abs));
    let w = vec![0.0; g.o * g.k()];
    let mut dw = vec![0.0; w.len()];
    conv2d_backward_direct(g, &x, &w, &dy, None, Some(&mut dw));
    dw
}
