//! The tensor-level entry points: shapes checked, then the CPU lowerings (`cpu`) on host
//! tensors or the kernels (`gpu`) on kernel devices. 1-D convolutions are 2-D ones of height 1.

use super::cpu::{conv2d_backward_cpu, conv2d_forward_cpu, conv2d_forward_epilogue_cpu};
use super::epilogue::ChannelEpilogue;
use super::gpu::{backward_gpu, forward_gpu, forward_gpu_epilogue, gpu_forward_chunk, GpuEpilogue};
use super::ConvGeometry;
use crate::device::{host_vec_written, Device};
use crate::error::{Error, Result};
use crate::ops::batchnorm::{invstd_cpu, RunningStats};
use crate::ops::reduce::channel_sum;
use crate::ops::tensor_core::ConvGrads;
use crate::tensor::{same_device, Tensor};

/// A host tensor's values (`what` names it in the error).
fn host<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32]> {
    t.host()
        .ok_or_else(|| Error::Device(format!("conv2d: {what} is not in host memory")))
}

/// The bias, if any, has one value per output channel.
fn check_bias(g: &ConvGeometry, b: Option<&Tensor>) -> Result<()> {
    match b {
        Some(b) if b.shape() != [g.o] => Err(Error::Shape(format!(
            "conv2d: bias {:?} does not fit {} output channels (expected [{}])",
            b.shape(),
            g.o,
            g.o
        ))),
        _ => Ok(()),
    }
}

/// `y = conv2d(x, w) + b` with stride `(sh, sw)` and zero padding `(ph, pw)`.
pub fn conv2d_forward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Tensor> {
    same_device("conv2d", x, w)?;
    if let Some(b) = b {
        same_device("conv2d", x, b)?;
    }
    let g = ConvGeometry::new(x.shape(), w.shape(), stride, padding)?;
    check_bias(&g, b)?;
    let out_shape = g.out_shape();
    match x.device() {
        Device::Cpu => {
            let bias = b.map(|b| host(b, "bias")).transpose()?;
            let (xs, ws) = (host(x, "x")?, host(w, "weight")?);
            // SAFETY: conv2d_forward_cpu overwrites all of y (the tests pass NaN-filled outputs).
            let y = unsafe {
                host_vec_written(out_shape.iter().product(), |y| {
                    conv2d_forward_cpu(&g, xs, ws, bias, y)
                })
            };
            Tensor::from_vec(&out_shape, y, x.device())
        }
        Device::Gpu(gpu) => forward_gpu(gpu, &g, x, w, b, gpu_forward_chunk(&g)),
    }
}

/// The eval-mode BatchNorm after a conv, for [`conv2d_bn_eval_forward`].
#[derive(Clone, Copy)]
pub struct BnEval<'a> {
    /// `(weight, bias)` when affine.
    pub affine: Option<(&'a Tensor, &'a Tensor)>,
    /// The running mean and variance it normalises with.
    pub running: &'a RunningStats,
    /// Added to the variance before its square root.
    pub eps: f32,
}

/// `relu?(batch_norm_eval(conv2d(x, w)) + residual?)` with no conv bias, for forwards that keep
/// no tape (frozen teachers, evaluation). The BatchNorm, residual and ReLU are applied as the
/// conv writes its output (CPU: [`ChannelEpilogue`]; kernel devices: `conv2d_implicit_*`'s
/// epilogue): the same values as the separate ops, one pass over the activations instead of two.
pub fn conv2d_bn_eval_forward(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    padding: (usize, usize),
    bn: BnEval,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    same_device("conv2d", x, w)?;
    let g = ConvGeometry::new(x.shape(), w.shape(), stride, padding)?;
    let out_shape = g.out_shape();
    let per_channel = [g.o];
    let mut vectors = vec![("running_mean", bn.running.mean.clone())];
    vectors.push(("running_var", bn.running.var.clone()));
    if let Some((gamma, beta)) = bn.affine {
        vectors.push(("weight", gamma.clone()));
        vectors.push(("bias", beta.clone()));
    }
    for (what, t) in &vectors {
        same_device("conv2d_bn_eval", x, t)?;
        t.expect_shape(&format!("conv2d_bn_eval: batch norm {what}"), &per_channel)?;
    }
    if let Some(r) = residual {
        same_device("conv2d_bn_eval", x, r)?;
        r.expect_shape("conv2d_bn_eval: residual", &out_shape)?;
    }
    if let Device::Gpu(gpu) = x.device() {
        let epilogue = GpuEpilogue::bn_eval(gpu, bn, residual, relu);
        return forward_gpu_epilogue(gpu, &g, x, w, &epilogue, gpu_forward_chunk(&g));
    }
    let invstd = invstd_cpu(host(&bn.running.var, "running_var")?, bn.eps);
    let (scale, shift): (Vec<f32>, Vec<f32>) = match bn.affine {
        Some((gamma, beta)) => {
            let (gamma, beta) = (host(gamma, "weight")?, host(beta, "bias")?);
            (0..g.o).map(|o| (gamma[o] * invstd[o], beta[o])).unzip()
        }
        None => (invstd.clone(), vec![0.0; g.o]),
    };
    let epilogue = ChannelEpilogue {
        mean: host(&bn.running.mean, "running_mean")?,
        scale: &scale,
        shift: &shift,
        residual: residual.map(|r| host(r, "residual")).transpose()?,
        relu,
    };
    let (xs, ws) = (host(x, "x")?, host(w, "weight")?);
    // SAFETY: the conv overwrites all of y, and the epilogue maps each element in place.
    let y = unsafe {
        host_vec_written(out_shape.iter().product(), |y| {
            conv2d_forward_epilogue_cpu(&g, xs, ws, y, &epilogue)
        })
    };
    Tensor::from_vec(&out_shape, y, x.device())
}

/// Gradients of [`conv2d_forward`]: `(dx, dw, db)`, each computed only when its flag in `need` is
/// set (the input gradient of data images is never needed).
pub fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    stride: (usize, usize),
    padding: (usize, usize),
    need: (bool, bool, bool),
) -> Result<ConvGrads> {
    same_device("conv2d backward", x, w)?;
    same_device("conv2d backward", x, dy)?;
    let g = ConvGeometry::new(x.shape(), w.shape(), stride, padding)?;
    dy.expect_shape("conv2d backward: dy", &g.out_shape())?;
    let (need_dx, need_dw, need_db) = need;
    let db = if need_db {
        Some(channel_sum(dy)?)
    } else {
        None
    };
    let (dx, dw) = match x.device() {
        Device::Cpu => backward_host(&g, (x, w, dy), (need_dx, need_dw))?,
        Device::Gpu(gpu) => backward_gpu(gpu, &g, (x, w, dy), (need_dx, need_dw))?,
    };
    Ok((dx, dw, db))
}

/// The input and weight gradients of [`conv2d_backward`] on the CPU, each only when asked for.
fn backward_host(
    g: &ConvGeometry,
    (x, w, dy): (&Tensor, &Tensor, &Tensor),
    (need_dx, need_dw): (bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (xs, ws, dys) = (host(x, "x")?, host(w, "weight")?, host(dy, "dy")?);
    let run = |dx: Option<&mut [f32]>, dw: Option<&mut [f32]>| {
        conv2d_backward_cpu(g, xs, ws, dys, dx, dw, None)
    };
    let (nx, nw) = (x.numel(), w.numel());
    // SAFETY: conv2d_backward_cpu overwrites every element of the dx and dw it is given
    // (the tests pass NaN-filled gradients).
    let (dx, dw) = unsafe {
        match (need_dx, need_dw) {
            (true, true) => {
                let mut dw = None;
                let dx = host_vec_written(nx, |dx| {
                    dw = Some(host_vec_written(nw, |dw| run(Some(dx), Some(dw))));
                });
                (Some(dx), dw)
            }
            (true, false) => (Some(host_vec_written(nx, |dx| run(Some(dx), None))), None),
            (false, true) => (None, Some(host_vec_written(nw, |dw| run(None, Some(dw))))),
            (false, false) => (None, None),
        }
    };
    let dx = dx
        .map(|v| Tensor::from_vec(x.shape(), v, x.device()))
        .transpose()?;
    let dw = dw
        .map(|v| Tensor::from_vec(w.shape(), v, x.device()))
        .transpose()?;
    Ok((dx, dw))
}

/// `[N, C, L]` → `[N, C, 1, L]` (and `[O, C, k]` → `[O, C, 1, k]`).
fn as_2d(t: &Tensor, what: &str) -> Result<Tensor> {
    match *t.shape() {
        [a, b, l] => t.reshape(&[a, b, 1, l]),
        _ => Err(Error::Shape(format!(
            "conv1d: {what} {:?} must be 3-D ([N, C, L] / [O, C, k])",
            t.shape()
        ))),
    }
}

/// A conv1d forward as the 2-D `conv2d(x, w, stride, padding)` on height-1 views.
pub(crate) fn lift_1d_forward(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    conv2d: impl FnOnce(&Tensor, &Tensor, (usize, usize), (usize, usize)) -> Result<Tensor>,
) -> Result<Tensor> {
    let y = conv2d(
        &as_2d(x, "x")?,
        &as_2d(w, "weight")?,
        (1, stride),
        (0, padding),
    )?;
    let s = y.shape().to_vec();
    y.reshape(&[s[0], s[1], s[3]])
}

/// Conv1d gradients as the 2-D `backward(x, w, dy, stride, padding)` on height-1 views.
pub(crate) fn lift_1d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    stride: usize,
    padding: usize,
    backward: impl FnOnce(
        &Tensor,
        &Tensor,
        &Tensor,
        (usize, usize),
        (usize, usize),
    ) -> Result<ConvGrads>,
) -> Result<ConvGrads> {
    let dy2 = as_2d(dy, "dy")?;
    let (x2, w2) = (as_2d(x, "x")?, as_2d(w, "weight")?);
    let (dx, dw, db) = backward(&x2, &w2, &dy2, (1, stride), (0, padding))?;
    let dx = dx.map(|t| t.reshape(x.shape())).transpose()?;
    let dw = dw.map(|t| t.reshape(w.shape())).transpose()?;
    Ok((dx, dw, db))
}

/// `conv1d(x [N, C, L], weight [O, C, k], bias [O]?)`: a 2-D convolution with height 1.
pub fn conv1d_forward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    lift_1d_forward(x, w, stride, padding, |x, w, s, p| {
        conv2d_forward(x, w, b, s, p)
    })
}

/// Gradients of [`conv1d_forward`], like [`conv2d_backward`].
pub fn conv1d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    stride: usize,
    padding: usize,
    need: (bool, bool, bool),
) -> Result<ConvGrads> {
    lift_1d_backward(x, w, dy, stride, padding, |x, w, dy, s, p| {
        conv2d_backward(x, w, dy, s, p, need)
    })
}
