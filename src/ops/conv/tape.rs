//! The autograd wrappers: `conv2d` and `conv1d` on the tape, each gradient computed only for the
//! inputs that require one (the input gradient of data images is never needed). Under the
//! graph's precision other than fp32, both passes run on rounded operands (`ops::autocast`).

use super::{conv1d_backward, conv1d_forward, conv2d_backward, conv2d_forward};
use crate::autograd::{Graph, Var};
use crate::error::Result;
use crate::ops::autocast::autocast;
use crate::tensor::Tensor;

/// The gradients `(dx, dw, db)` of a conv, each present only when asked for.
type ConvGrads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

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
        |x, w, b| conv2d_forward(x, w, b, stride, padding),
        move |x, w, dy, need| conv2d_backward(x, w, dy, stride, padding, need),
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
        |x, w, b| conv1d_forward(x, w, b, stride, padding),
        move |x, w, dy, need| conv1d_backward(x, w, dy, stride, padding, need),
    )
}

/// Runs `forward` on the values of `x`, `weight` and `bias`, counts its dot products, and records
/// it with `backward(x, w, dy, need)` for the gradients the inputs require. Under a rounding
/// precision `x` and `weight` are rounded for the forward and kept rounded for the backward,
/// whose input and weight gradients also read a rounded `dy`; the bias gradient sums the fp32 `dy`.
fn record(
    g: &mut Graph,
    (x, weight, bias): (Var, Var, Option<Var>),
    forward: impl FnOnce(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>,
    backward: impl Fn(&Tensor, &Tensor, &Tensor, (bool, bool, bool)) -> Result<ConvGrads> + 'static,
) -> Result<Var> {
    let precision = g.precision();
    let xv = autocast(g.value(x), precision)?;
    let wv = autocast(g.value(weight), precision)?;
    let y = forward(&xv, &wv, bias.map(|b| g.value(b)))?;
    crate::ops::flops::add_dot_products(y.numel(), wv.numel() / wv.shape()[0]);
    let need = (
        g.requires_grad(x),
        g.requires_grad(weight),
        bias.is_some_and(|b| g.requires_grad(b)),
    );
    let inputs: Vec<Var> = [x, weight].into_iter().chain(bias).collect();
    let has_bias = bias.is_some();
    Ok(g.op(y, &inputs, move |dy| {
        let (dx, dw, db) = if precision.rounds_operands() {
            let (dx, dw, _) =
                backward(&xv, &wv, &autocast(dy, precision)?, (need.0, need.1, false))?;
            let (_, _, db) = backward(&xv, &wv, dy, (false, false, need.2))?;
            (dx, dw, db)
        } else {
            backward(&xv, &wv, dy, need)?
        };
        let mut grads = vec![dx, dw];
        if has_bias {
            grads.push(db);
        }
        Ok(grads)
    }))
}
