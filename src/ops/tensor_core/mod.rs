//! Tensor-core GEMM and convolutions for the rounded precisions (`tf32`, `bf16`, `fp16`; issue 13):
//! the operands are rounded as [`Precision::round`] says while the kernels stage them into shared
//! memory, products accumulate in fp32. Kernels: `kernels/gemm_tc.cu` (`gemm_tc_{tf32,bf16,f16}`)
//! and `kernels/conv_tc.cu` (`conv2d_tc_{forward,data_grad,weight_grad}_{tf32,bf16,f16}`), both on
//! the WMMA block GEMM of `kernels/wmma_tile.cuh` (64x64 tiles, 4 warps, the design in its
//! header). The emulator runs the same sources through its `mma.h`.
//!
//! * [`gemm()`] / [`gemm_launch`]: `C = alpha·op(A)·op(B) + beta·C`, [`GemmParams`]' contract
//!   (transposes, batch, `beta = 0` never reads C) — what `ops::matmul` launches today.
//! * [`conv2d_forward`] (+ bias), [`conv2d_backward_data`], [`conv2d_backward_weight`]: implicit
//!   GEMMs over NCHW `x`, OIHW `w`, any stride and zero padding (dilation 1, groups 1, as
//!   [`ConvGeometry`]).
//!
//! On the `cpu` device every entry point rounds copies of the operands and runs the existing
//! fp32 op (the numerics the issue asks of `precision: bf16` on cpu). [`cpu`] holds the
//! references the kernel tests compare with: the same rounding, f64 accumulation.
//!
//! # How dispatch will call this (not wired yet)
//! The precision plumbing in `ops::matmul` / `ops::conv` is another change. Once the graph's
//! [`Precision`] reaches them, the dispatch is: `if precision.rounds_operands()` call the entry
//! point here with it, else keep today's fp32 path (so `fp32` stays bit-exact):
//! * `matmul::gemm_into(c, a, ta, b, tb, alpha, beta)` → [`gemm()`]`(c, a, ta, b, tb, alpha, beta, p)`;
//!   raw-address callers of `matmul::gemm_launch` → [`gemm_launch`] with the same [`GemmParams`];
//! * `conv::conv2d_forward(x, w, b, s, pad)` → [`conv2d_forward`]`(x, w, b, s, pad, p)`;
//! * `conv::conv2d_backward(x, w, dy, s, pad, (dx, dw, db))` → [`conv2d_backward_data`] and
//!   [`conv2d_backward_weight`] for the first two, `channel_sum(dy)` for the bias as today.
//!   The BatchNorm-eval epilogue of `conv2d_bn_eval_forward` has no tensor-core kernel yet: run
//!   [`conv2d_forward`] and the separate BatchNorm there.

pub mod cpu;
mod launch;

#[cfg(test)]
mod tests;

pub use launch::gemm_launch;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::conv::{self, ConvGeometry};
use crate::ops::matmul::{self, GemmParams};
use crate::precision::Precision;
use crate::tensor::{same_device, Tensor};

/// The kernel-name suffix of a rounded precision; fp32 has no tensor-core kernel here (it keeps
/// the exact fp32 kernels).
pub fn kernel_suffix(precision: Precision) -> Result<&'static str> {
    match precision {
        Precision::Tf32 => Ok("tf32"),
        Precision::Bf16 => Ok("bf16"),
        Precision::Fp16 => Ok("f16"),
        Precision::Fp32 => Err(Error::OpArg {
            op: "tensor_core".into(),
            msg: "precision fp32 has no tensor-core kernel: use the fp32 ops (ops::matmul, \
                  ops::conv)"
                .into(),
        }),
    }
}

/// A copy of `t` (a cpu tensor) with every element rounded as `precision` says.
fn rounded(t: &Tensor, precision: Precision) -> Result<Tensor> {
    let mut v = t.to_vec()?;
    precision.round_slice(&mut v);
    Tensor::from_vec(t.shape(), v, t.device())
}

/// `(batch, m, n, k)` of `c = op(a)·op(b)`; every operand `[rows, cols]` or `[batch, rows, cols]`.
fn gemm_dims(
    a: &Tensor,
    trans_a: bool,
    b: &Tensor,
    trans_b: bool,
    c: &Tensor,
) -> Result<(usize, usize, usize, usize)> {
    let split = |t: &Tensor| match *t.shape() {
        [r, cols] => Some((None, r, cols)),
        [z, r, cols] => Some((Some(z), r, cols)),
        _ => None,
    };
    let bad = || {
        Error::Shape(format!(
            "tensor-core gemm: a {:?}{} and b {:?}{} do not give c {:?} (op(a) m x k, op(b) k x n, \
             c m x n, all 2-D or all batched 3-D)",
            a.shape(),
            if trans_a { "ᵀ" } else { "" },
            b.shape(),
            if trans_b { "ᵀ" } else { "" },
            c.shape()
        ))
    };
    let ((za, ar, ac), (zb, br, bc), (zc, cr, cc)) = match (split(a), split(b), split(c)) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => return Err(bad()),
    };
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != k2 || za != zb || za != zc || (cr, cc) != (m, n) {
        return Err(bad());
    }
    Ok((za.unwrap_or(1), m, n, k))
}

/// `c = alpha·op(a)·op(b) + beta·c` with `precision`'s operands (`a` `[m,k]`, or `[k,m]` with
/// `trans_a`; `b` `[k,n]` or `[n,k]`; `c` `[m,n]`; all three may carry a leading batch dimension),
/// by `gemm_tc_*` on kernel devices.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    c: &mut Tensor,
    a: &Tensor,
    trans_a: bool,
    b: &Tensor,
    trans_b: bool,
    alpha: f32,
    beta: f32,
    precision: Precision,
) -> Result<()> {
    kernel_suffix(precision)?;
    same_device("tensor-core gemm", a, b)?;
    same_device("tensor-core gemm", a, c)?;
    let (batch, m, n, k) = gemm_dims(a, trans_a, b, trans_b, c)?;
    match c.device().clone() {
        Device::Cpu => {
            let (a, b) = (rounded(a, precision)?, rounded(b, precision)?);
            matmul::gemm_into(c, &a, trans_a, &b, trans_b, alpha, beta)
        }
        Device::Gpu(g) => {
            let p = GemmParams::dense(m, n, k, trans_a, trans_b)?.with_scale(alpha, beta);
            let (pa, pb) = (g.addr(a.buffer()), g.addr(b.buffer()));
            let pc = g.addr_mut(c.try_buffer_mut()?);
            gemm_launch(&g, precision, pa, pb, pc, &p, batch)
        }
    }
}

/// `y = conv2d(x, w) (+ b)` with `precision`'s operands: `x [N, C, H, W]`, `w [O, C, kh, kw]`,
/// `b [O]` (added in fp32, unrounded), stride and zero padding as [`ConvGeometry`].
pub fn conv2d_forward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: (usize, usize),
    padding: (usize, usize),
    precision: Precision,
) -> Result<Tensor> {
    kernel_suffix(precision)?;
    same_device("tensor-core conv2d", x, w)?;
    let g = ConvGeometry::new(x.shape(), w.shape(), stride, padding)?;
    if let Some(b) = b {
        same_device("tensor-core conv2d", x, b)?;
        b.expect_shape("tensor-core conv2d: bias", &[g.o])?;
    }
    match x.device() {
        Device::Cpu => {
            let (x, w) = (rounded(x, precision)?, rounded(w, precision)?);
            conv::conv2d_forward(&x, &w, b, stride, padding)
        }
        Device::Gpu(gpu) => launch::conv_forward(gpu, precision, &g, x, w, b),
    }
}

/// The input gradient `dx [N, C, H, W]` (`x_shape`) of `y = conv2d(x, w)` from `dy`, with
/// `precision`'s operands (`w` and `dy` rounded).
pub fn conv2d_backward_data(
    x_shape: &[usize],
    w: &Tensor,
    dy: &Tensor,
    stride: (usize, usize),
    padding: (usize, usize),
    precision: Precision,
) -> Result<Tensor> {
    kernel_suffix(precision)?;
    same_device("tensor-core conv2d backward", w, dy)?;
    let g = ConvGeometry::new(x_shape, w.shape(), stride, padding)?;
    dy.expect_shape("tensor-core conv2d backward: dy", &g.out_shape())?;
    match w.device() {
        Device::Cpu => {
            // The cpu op reads x only for the weight gradient, which is not asked for.
            let x = Tensor::zeros(x_shape, w.device())?;
            let (w, dy) = (rounded(w, precision)?, rounded(dy, precision)?);
            let (dx, _, _) =
                conv::conv2d_backward(&x, &w, &dy, stride, padding, (true, false, false))?;
            dx.ok_or_else(|| Error::Device("conv2d backward returned no dx".into()))
        }
        Device::Gpu(gpu) => launch::conv_backward_data(gpu, precision, &g, w, dy),
    }
}

/// The weight gradient `dw [O, C, kh, kw]` (`w_shape`) of `y = conv2d(x, w)` from `dy`, with
/// `precision`'s operands (`x` and `dy` rounded).
pub fn conv2d_backward_weight(
    x: &Tensor,
    w_shape: &[usize],
    dy: &Tensor,
    stride: (usize, usize),
    padding: (usize, usize),
    precision: Precision,
) -> Result<Tensor> {
    conv2d_backward_weight_sliced(x, w_shape, dy, (stride, padding), precision, None)
}

/// [`conv2d_backward_weight`] with the reduction split into slices of `slice` columns when given
/// (tests: many slices and their partial sums on small shapes).
pub(crate) fn conv2d_backward_weight_sliced(
    x: &Tensor,
    w_shape: &[usize],
    dy: &Tensor,
    (stride, padding): ((usize, usize), (usize, usize)),
    precision: Precision,
    slice: Option<usize>,
) -> Result<Tensor> {
    kernel_suffix(precision)?;
    same_device("tensor-core conv2d backward", x, dy)?;
    let g = ConvGeometry::new(x.shape(), w_shape, stride, padding)?;
    dy.expect_shape("tensor-core conv2d backward: dy", &g.out_shape())?;
    match x.device() {
        Device::Cpu => {
            let w = Tensor::zeros(w_shape, x.device())?;
            let (x, dy) = (rounded(x, precision)?, rounded(dy, precision)?);
            let (_, dw, _) =
                conv::conv2d_backward(&x, &w, &dy, stride, padding, (false, true, false))?;
            dw.ok_or_else(|| Error::Device("conv2d backward returned no dw".into()))
        }
        Device::Gpu(gpu) => launch::conv_backward_weight(gpu, precision, &g, x, dy, slice),
    }
}
