//! The autograd wrappers: `conv2d` and `conv1d` on the tape, each gradient computed only for the
//! inputs that require one (the input gradient of data images is never needed). Under the
//! graph's precision other than fp32, both passes read rounded operands: on kernel devices the
//! tensor-core kernels (`ops::tensor_core`) round them as they stage them; on the cpu device the
//! fp32 ops run on rounded copies (`ops::autocast`).

use super::dispatch::{lift_1d_backward, lift_1d_forward};
use super::{conv2d_backward, conv2d_forward};
use crate::autograd::{Graph, Var};
use crate::error::Result;
use crate::ops::autocast::{autocast, operand};
use crate::ops::tensor_core::{self, ConvGrads};
use crate::precision::Precision;
use crate::tensor::Tensor;

/// `conv2d(x [N, C, H, W], weight [O, C, kh, kw], bias [O]?)` with stride and zero padding.
pub fn conv2d(
    g: &mut Graph,
    x: Var,
    weight: Var,
    bias: Option<Var>,
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Var> {
    record(
        g,
        (x, weight, bias),
        move |x, w, b, tc| forward_2d(x, w, b, (stride, padding), tc),
        move |x, w, dy, need, tc| backward_2d(x, w, dy, (stride, padding), need, tc),
    )
}

/// `conv1d(x [N, C, L], weight [O, C, k], bias [O]?)` with stride and zero padding.
pub fn conv1d(
    g: &mut Graph,
    x: Var,
    weight: Var,
    bias: Option<Var>,
    stride: usize,
    padding: usize,
) -> Result<Var> {
    record(
        g,
        (x, weight, bias),
        move |x, w, b, tc| {
            lift_1d_forward(x, w, stride, padding, |x, w, s, p| {
                forward_2d(x, w, b, (s, p), tc)
            })
        },
        move |x, w, dy, need, tc| {
            lift_1d_backward(x, w, dy, stride, padding, |x, w, dy, s, p| {
                backward_2d(x, w, dy, (s, p), need, tc)
            })
        },
    )
}

/// Stride and padding of a 2-D conv.
pub(crate) type Window = ((usize, usize), (usize, usize));

/// The forward by the tensor-core entry point of `tc` (`ops::tensor_core`: the kernels on kernel
/// devices, rounded copies + the fp32 op on cpu), or the fp32 op when `None`.
pub(crate) fn forward_2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    (stride, padding): Window,
    tc: Option<Precision>,
) -> Result<Tensor> {
    match tc {
        Some(p) => tensor_core::conv2d_forward(x, w, b, stride, padding, p),
        None => conv2d_forward(x, w, b, stride, padding),
    }
}

/// The gradients by the tensor-core entry point of `tc`, or the fp32 op when `None`.
pub(crate) fn backward_2d(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    (stride, padding): Window,
    need: (bool, bool, bool),
    tc: Option<Precision>,
) -> Result<ConvGrads> {
    match tc {
        Some(p) => tensor_core::conv2d_backward(x, w, dy, stride, padding, need, p),
        None => conv2d_backward(x, w, dy, stride, padding, need),
    }
}

/// Runs `forward` on the values of `x`, `weight` and `bias`, counts its dot products, and records
/// it with `backward(x, w, dy, need)` for the gradients the inputs require. Both get the
/// tensor-core precision ([`tensor_core::wired`]) or `None`. Under a rounding precision without
/// tensor cores (the cpu device) `x` and `weight` are rounded for the forward and kept rounded for
/// the backward, whose input and weight gradients also read a rounded `dy`; the bias gradient sums
/// the fp32 `dy`. The tensor-core kernels do the same rounding as they stage the operands.
fn record(
    g: &mut Graph,
    (x, weight, bias): (Var, Var, Option<Var>),
    forward: impl FnOnce(&Tensor, &Tensor, Option<&Tensor>, Option<Precision>) -> Result<Tensor>,
    backward: impl Fn(&Tensor, &Tensor, &Tensor, (bool, bool, bool), Option<Precision>) -> Result<ConvGrads>
        + 'static,
) -> Result<Var> {
    let precision = g.precision();
    let tc = tensor_core::wired(g.value(x).device(), precision);
    let xv = operand(g.value(x), precision, tc)?;
    let wv = operand(g.value(weight), precision, tc)?;
    let y = forward(&xv, &wv, bias.map(|b| g.value(b)), tc)?;
    crate::ops::flops::add_dot_products(y.numel(), wv.numel() / wv.shape()[0]);
    let need = (
        g.requires_grad(x),
        g.requires_grad(weight),
        bias.is_some_and(|b| g.requires_grad(b)),
    );
    let inputs: Vec<Var> = [x, weight].into_iter().chain(bias).collect();
    let has_bias = bias.is_some();
    Ok(g.op(y, &inputs, move |dy| {
        let (dx, dw, db) = if tc.is_none() && precision.rounds_operands() {
            let dy_rounded = autocast(dy, precision)?;
            let (dx, dw, _) = backward(&xv, &wv, &dy_rounded, (need.0, need.1, false), None)?;
            let (_, _, db) = backward(&xv, &wv, dy, (false, false, need.2), None)?;
            (dx, dw, db)
        } else {
            backward(&xv, &wv, dy, need, tc)?
        };
        let mut grads = vec![dx, dw];
        if has_bias {
            grads.push(db);
        }
        Ok(grads)
    }))
}
