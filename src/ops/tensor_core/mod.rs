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
//! On the `cpu` device, and for a conv beyond the kernels' 32-bit indices or grid
//! (`launch::conv_fits`), every entry point rounds copies of the operands
//! ([`round_operands`]) and runs the existing fp32 op (the numerics the issue asks of
//! `precision: bf16` on cpu). [`cpu`] holds the references the kernel tests compare with: the
//! same rounding, f64 accumulation.
//!
//! # How dispatch calls this
//! [`wired`] decides: on a kernel device under a rounding precision, the autograd ops run the
//! entry points here on the unrounded values (the kernels round while staging, so no rounded
//! copy is made or kept for the backward); under fp32, and on the cpu device, they keep the
//! fp32 ops (cpu: on operands `ops::autocast` rounded), so `fp32` stays bit-exact.
//! * `matmul::{gemm_op, linear}` (forward and both gradient GEMMs) → [`gemm()`]; the Linear bias
//!   rides on `beta = 1` as in the fp32 path, its gradient stays the fp32 column sum;
//! * `conv::{conv2d, conv1d}` → [`conv2d_forward`] and [`conv2d_backward`] (input gradient
//!   [`conv2d_backward_data`], weight gradient [`conv2d_backward_weight`], bias gradient the
//!   fp32 `channel_sum(dy)` as before);
//! * the eval conv + BatchNorm (+ residual, ReLU) of frozen teachers → [`conv2d_bn_eval_forward`]:
//!   the tensor-core conv, then the separate fused BatchNorm-eval kernel (the fp32 path applies
//!   the same arithmetic in the conv's epilogue; the tensor-core kernels have no such epilogue,
//!   and a conv at tensor-core speed plus one memory-bound pass beats the fp32 SIMT conv).
//!
//! The raw-address GEMMs inside the fp32 conv (`matmul::gemm_launch`, the col2im input gradient)
//! are not wired: under a rounding precision those convs run [`conv2d_backward_data`] instead.

pub mod cpu;
mod launch;
#[cfg(test)]
mod wired_tests;

#[cfg(test)]
mod tests;

pub use launch::gemm_launch;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::autocast::round_operands;
use crate::ops::batchnorm::batchnorm_eval_forward_act;
use crate::ops::conv::{self, BnEval, ConvGeometry};
use crate::ops::matmul::{self, GemmParams};
use crate::ops::reduce::channel_sum;
use crate::precision::Precision;
use crate::tensor::{same_device, Tensor};

/// The gradients `(dx, dw, db)` of a conv, each present only when asked for.
pub type ConvGrads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// The precision a conv or GEMM under `precision` on `device` runs the tensor-core kernels with:
/// `Some` on kernel devices (cuda, emu) when the precision rounds operands; `None` under fp32
/// (the exact fp32 kernels) and on the cpu device (rounded copies, then the fp32 ops).
pub fn wired(device: &Device, precision: Precision) -> Option<Precision> {
    (precision.rounds_operands() && !device.is_cpu()).then_some(precision)
}

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
            let (a, b) = (round_operands(a, precision)?, round_operands(b, precision)?);
            matmul::gemm_into(c, &a, trans_a, &b, trans_b, alpha, beta)
        }
        // The kernel's limits (grid y and batch below 65536) are gemm_f32's: nothing to fall back to.
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
        Device::Gpu(gpu) if launch::conv_fits(&g) => {
            launch::conv_forward(gpu, precision, &g, x, w, b)
        }
        _ => {
            let (x, w) = (round_operands(x, precision)?, round_operands(w, precision)?);
            conv::conv2d_forward(&x, &w, b, stride, padding)
        }
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
        Device::Gpu(gpu) if launch::conv_fits(&g) => {
            launch::conv_backward_data(gpu, precision, &g, w, dy)
        }
        _ => {
            // The fp32 op reads x only for the weight gradient, which is not asked for.
            let x = Tensor::zeros(x_shape, w.device())?;
            let (w, dy) = (
                round_operands(w, precision)?,
                round_operands(dy, precision)?,
            );
            let (dx, _, _) =
                conv::conv2d_backward(&x, &w, &dy, stride, padding, (true, false, false))?;
            dx.ok_or_else(|| Error::Device("conv2d backward returned no dx".into()))
        }
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
        Device::Gpu(gpu) if launch::conv_fits(&g) => {
            launch::conv_backward_weight(gpu, precision, &g, x, dy, slice)
        }
        _ => {
            let w = Tensor::zeros(w_shape, x.device())?;
            let (x, dy) = (
                round_operands(x, precision)?,
                round_operands(dy, precision)?,
            );
            let (_, dw, _) =
                conv::conv2d_backward(&x, &w, &dy, stride, padding, (false, true, false))?;
            dw.ok_or_else(|| Error::Device("conv2d backward returned no dw".into()))
        }
    }
}

/// The gradients of [`conv2d_forward`] as `conv::conv2d_backward` returns them, each only when
/// its flag in `need` is set: `dx` and `dw` with `precision`'s operands, `db` the fp32 column
/// sum of the unrounded `dy` (as the fp32 path).
pub fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    stride: (usize, usize),
    padding: (usize, usize),
    (need_dx, need_dw, need_db): (bool, bool, bool),
    precision: Precision,
) -> Result<ConvGrads> {
    let dx = need_dx
        .then(|| conv2d_backward_data(x.shape(), w, dy, stride, padding, precision))
        .transpose()?;
    let dw = need_dw
        .then(|| conv2d_backward_weight(x, w.shape(), dy, stride, padding, precision))
        .transpose()?;
    let db = need_db.then(|| channel_sum(dy)).transpose()?;
    Ok((dx, dw, db))
}

/// `conv::conv2d_bn_eval_forward` with `precision`'s conv operands: [`conv2d_forward`], then the
/// BatchNorm-eval (+ residual, ReLU) as its own fused kernel, which applies the same fp32
/// arithmetic the fp32 conv applies in its epilogue.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_bn_eval_forward(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    padding: (usize, usize),
    bn: BnEval,
    residual: Option<&Tensor>,
    relu: bool,
    precision: Precision,
) -> Result<Tensor> {
    let y = conv2d_forward(x, w, None, stride, padding, precision)?;
    batchnorm_eval_forward_act(&y, bn.affine, bn.running, bn.eps, relu, residual)
}
