//! softmax(x / T) and log_softmax(x / T) over the last dimension (rows of `[rows, C]`, any leading
//! shape). Kernels: `kernels/softmax.cu` (one block per row, warp-shuffle reductions).
//!
//! Backward (with `y` the op's output):
//! softmax `dx = y * (dy - sum(dy * y)) / T`; log_softmax `dx = (dy - softmax * sum(dy)) / T`.

use crate::autograd::{Graph, Var};
use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::Real;
use crate::tensor::{same_device, Tensor};

/// Mirrors `SoftmaxParams` in `kernels/softmax.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SoftmaxParams {
    /// Rows.
    pub rows: i32,
    /// Columns (the softmax axis).
    pub cols: i32,
    /// Temperature: the softmax of `x / temperature`.
    pub temperature: f32,
}

// ---------- CPU reference (row sums accumulated in f64) ----------

/// Max of `x / t` and `sum(exp(x / t - max))` of one row.
fn row_stats<T: Real>(xr: &[T], t: T) -> (T, T) {
    let m = xr.iter().fold(T::NEG_INFINITY, |m, &v| m.max(v / t));
    let s: f64 = xr.iter().map(|&v| (v / t - m).exp().to_f64()).sum();
    (m, T::from_f64(s))
}

/// Row-wise `softmax(x / t)` for rows of `cols`.
pub fn softmax_forward_cpu<T: Real>(x: &[T], cols: usize, t: T, y: &mut [T]) {
    for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
        let (m, s) = row_stats(xr, t);
        for (y, &x) in yr.iter_mut().zip(xr) {
            *y = (x / t - m).exp() / s;
        }
    }
}

/// Row-wise `log_softmax(x / t)` for rows of `cols`.
pub fn log_softmax_forward_cpu<T: Real>(x: &[T], cols: usize, t: T, y: &mut [T]) {
    for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
        let (m, s) = row_stats(xr, t);
        let log_s = s.ln();
        for (y, &x) in yr.iter_mut().zip(xr) {
            *y = (x / t - m) - log_s;
        }
    }
}

/// `y` is the softmax output.
pub fn softmax_backward_cpu<T: Real>(y: &[T], dy: &[T], cols: usize, t: T, dx: &mut [T]) {
    let rows = y
        .chunks_exact(cols)
        .zip(dy.chunks_exact(cols))
        .zip(dx.chunks_exact_mut(cols));
    for ((yr, dyr), dxr) in rows {
        let d = T::from_f64(yr.iter().zip(dyr).map(|(&y, &dy)| (dy * y).to_f64()).sum());
        for ((dx, &y), &dy) in dxr.iter_mut().zip(yr).zip(dyr) {
            *dx = y * (dy - d) / t;
        }
    }
}

/// `y` is the log_softmax output.
pub fn log_softmax_backward_cpu<T: Real>(y: &[T], dy: &[T], cols: usize, t: T, dx: &mut [T]) {
    let rows = y
        .chunks_exact(cols)
        .zip(dy.chunks_exact(cols))
        .zip(dx.chunks_exact_mut(cols));
    for ((yr, dyr), dxr) in rows {
        let s = T::from_f64(dyr.iter().map(|&dy| dy.to_f64()).sum());
        for ((dx, &y), &dy) in dxr.iter_mut().zip(yr).zip(dyr) {
            *dx = (dy - y.exp() * s) / t;
        }
    }
}

// ---------- device dispatch ----------

/// `(rows, cols)` of a tensor seen as rows of its last dimension.
pub(crate) fn rows_cols(what: &str, x: &Tensor) -> Result<(usize, usize)> {
    let Some(&cols) = x.shape().last() else {
        return Err(Error::Shape(format!(
            "{what}: needs at least one dimension, got a scalar"
        )));
    };
    if cols == 0 {
        return Err(Error::Shape(format!(
            "{what}: the last dimension is empty (shape {:?})",
            x.shape()
        )));
    }
    Ok((x.numel() / cols, cols))
}

pub(crate) fn check_temperature(what: &str, t: f32) -> Result<()> {
    if !(t.is_finite() && t > 0.0) {
        return Err(Error::op_arg(
            "softmax",
            format!("{what}: temperature must be a positive number, got {t}"),
        ));
    }
    Ok(())
}

/// Threads per block for one block per row: whole warps, at most 256.
pub(crate) fn row_launch(rows: usize, cols: usize) -> LaunchCfg {
    let threads = cols.div_ceil(32).clamp(1, 8) as u32 * 32;
    let blocks = rows.clamp(1, 65535) as u32;
    LaunchCfg::new((blocks, 1, 1), (threads, 1, 1)).grid_stride()
}

/// Run a row kernel `kernel(inputs..., out, SoftmaxParams)` or its CPU reference.
fn row_op(
    what: &str,
    kernel: &str,
    inputs: &[&Tensor],
    temperature: f32,
    cpu: impl FnOnce(&[&[f32]], usize, &mut [f32]),
) -> Result<Tensor> {
    check_temperature(what, temperature)?;
    let x = inputs[0];
    for t in &inputs[1..] {
        same_device(what, x, t)?;
        t.expect_shape(what, x.shape())?;
    }
    let (rows, cols) = rows_cols(what, x)?;
    match x.device() {
        Device::Cpu => {
            let ins = inputs
                .iter()
                .map(|t| t.host_data())
                .collect::<Result<Vec<&[f32]>>>()?;
            let mut y = vec![0.0f32; x.numel()];
            cpu(&ins, cols, &mut y);
            Tensor::from_vec(x.shape(), y, x.device())
        }
        Device::Gpu(g) => {
            let mut y = g.zeros::<f32>(x.numel())?;
            if rows > 0 {
                let mut args = KernelArgs::new();
                for t in inputs {
                    args.ptr(g.addr(t.buffer()));
                }
                let params = SoftmaxParams {
                    rows: rows as i32,
                    cols: cols as i32,
                    temperature,
                };
                args.ptr(g.addr_mut(&mut y)).value(&params);
                g.launch(kernel, row_launch(rows, cols), &mut args)?;
            }
            Tensor::from_buffer(x.shape(), y, x.device())
        }
    }
}

/// Row-wise softmax of `x / temperature` over the last dimension, on the tensor's device.
pub fn softmax_forward(x: &Tensor, temperature: f32) -> Result<Tensor> {
    row_op(
        "softmax",
        "softmax_forward_f32",
        &[x],
        temperature,
        |i, c, y| softmax_forward_cpu(i[0], c, temperature, y),
    )
}

/// Row-wise log-softmax of `x / temperature` over the last dimension, on the tensor's device.
pub fn log_softmax_forward(x: &Tensor, temperature: f32) -> Result<Tensor> {
    row_op(
        "log_softmax",
        "log_softmax_forward_f32",
        &[x],
        temperature,
        |i, c, y| log_softmax_forward_cpu(i[0], c, temperature, y),
    )
}

/// `y` is the output of [`softmax_forward`].
pub fn softmax_backward(y: &Tensor, dy: &Tensor, temperature: f32) -> Result<Tensor> {
    row_op(
        "softmax backward",
        "softmax_backward_f32",
        &[y, dy],
        temperature,
        |i, c, dx| softmax_backward_cpu(i[0], i[1], c, temperature, dx),
    )
}

/// `y` is the output of [`log_softmax_forward`].
pub fn log_softmax_backward(y: &Tensor, dy: &Tensor, temperature: f32) -> Result<Tensor> {
    row_op(
        "log_softmax backward",
        "log_softmax_backward_f32",
        &[y, dy],
        temperature,
        |i, c, dx| log_softmax_backward_cpu(i[0], i[1], c, temperature, dx),
    )
}

// ---------- autograd ----------

/// softmax(x / temperature) over the last dimension.
pub fn softmax(g: &mut Graph, x: Var, temperature: f32) -> Result<Var> {
    let y = softmax_forward(g.value(x), temperature)?;
    let saved = y.clone();
    Ok(g.op(y, &[x], move |dy| {
        Ok(vec![Some(softmax_backward(&saved, dy, temperature)?)])
    }))
}

/// log_softmax(x / temperature) over the last dimension.
pub fn log_softmax(g: &mut Graph, x: Var, temperature: f32) -> Result<Var> {
    let y = log_softmax_forward(g.value(x), temperature)?;
    let saved = y.clone();
    Ok(g.op(y, &[x], move |dy| {
        Ok(vec![Some(log_softmax_backward(&saved, dy, temperature)?)])
    }))
}
