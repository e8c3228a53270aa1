//! Channel bias add and reductions: `add_bias` (`x [N, C, *rest] + b[C]`, for linear and conv
//! layers), `sum_rows` (column sums of `[N, C]`), `sum_all` and `mean_all`. Kernels: `kernels/reduce.cu`.
//!
//! Sums are accumulated in f64 (CPU) or in double per thread followed by a fixed shared-memory tree
//! (kernels), in an order that depends only on the shape — results are reproducible run to run.

use crate::autograd::{Graph, Var};
use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::Real;
use crate::tensor::{same_device, Tensor};

/// Mirrors `ChannelParams` in `kernels/reduce.cu`: a tensor viewed as `[outer, channels, inner]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ChannelParams {
    /// Product of the dimensions before the channel.
    pub outer: i32,
    /// Channels.
    pub channels: i32,
    /// Product of the dimensions after the channel.
    pub inner: i32,
}

/// Mirrors `SumParams` in `kernels/reduce.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SumParams {
    /// Number of elements.
    pub n: i32,
    /// Factor applied to the sum.
    pub scale: f32,
}

/// Threads of `sum_blocks_f32` and the most blocks its first pass uses.
const SUM_THREADS: usize = 256;
const SUM_MAX_BLOCKS: usize = 128;
/// Elements each thread of the first pass should get before another block is worth it.
const SUM_PER_THREAD: usize = 8;

// ---------- CPU reference ----------

/// `y[o, c, i] = x[o, c, i] + b[c]`.
pub fn add_bias_cpu<T: Real>(x: &[T], b: &[T], y: &mut [T], channels: usize, inner: usize) {
    if inner == 0 {
        return;
    }
    for (plane, (xs, ys)) in x
        .chunks_exact(inner)
        .zip(y.chunks_exact_mut(inner))
        .enumerate()
    {
        let bias = b[plane % channels];
        for (y, &x) in ys.iter_mut().zip(xs) {
            *y = x + bias;
        }
    }
}

/// `y[o, c, i] = b[c]`.
pub fn broadcast_channels_cpu<T: Real>(b: &[T], y: &mut [T], channels: usize, inner: usize) {
    if inner == 0 {
        return;
    }
    for (plane, ys) in y.chunks_exact_mut(inner).enumerate() {
        ys.fill(b[plane % channels]);
    }
}

/// `y[c] = sum over o, i of x[o, c, i]`, accumulated in f64.
pub fn channel_sum_cpu<T: Real>(x: &[T], y: &mut [T], outer: usize, channels: usize, inner: usize) {
    let mut acc = vec![0.0f64; channels];
    for o in 0..outer {
        for (c, acc) in acc.iter_mut().enumerate() {
            let start = (o * channels + c) * inner;
            *acc += x[start..start + inner]
                .iter()
                .map(|v| v.to_f64())
                .sum::<f64>();
        }
    }
    for (y, a) in y.iter_mut().zip(acc) {
        *y = T::from_f64(a);
    }
}

/// Sum of all elements, accumulated in f64.
pub fn sum_all_cpu<T: Real>(x: &[T]) -> T {
    T::from_f64(x.iter().map(|v| v.to_f64()).sum())
}

/// Mean of all elements (NaN for an empty slice, like PyTorch).
pub fn mean_all_cpu<T: Real>(x: &[T]) -> T {
    T::from_f64(x.iter().map(|v| v.to_f64()).sum::<f64>() / x.len() as f64)
}

// ---------- device dispatch ----------

fn to_i32(op: &str, shape: &[usize], v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Shape(format!(
            "{op}: tensor of shape {shape:?} is beyond the kernels' 32-bit index range"
        ))
    })
}

/// `x [N, C, *rest]` as `(outer, channels, inner)` kernel parameters.
fn channel_params(op: &str, shape: &[usize]) -> Result<ChannelParams> {
    if shape.len() < 2 {
        return Err(Error::Shape(format!(
            "{op}: expected a tensor [N, C, ...] of at least 2 dimensions, got {shape:?}"
        )));
    }
    let inner: usize = shape[2..].iter().product();
    to_i32(op, shape, shape.iter().product())?;
    Ok(ChannelParams {
        outer: to_i32(op, shape, shape[0])?,
        channels: to_i32(op, shape, shape[1])?,
        inner: to_i32(op, shape, inner)?,
    })
}

/// `y = x + b` with `b [C]` broadcast over `x [N, C, *rest]`.
pub fn add_bias_forward(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = "add_bias";
    same_device(op, x, b)?;
    let p = channel_params(op, x.shape())?;
    if b.shape() != [p.channels as usize] {
        return Err(Error::Shape(format!(
            "{op}: bias {:?} does not fit x {:?} (expected [{}], one value per channel = dim 1)",
            b.shape(),
            x.shape(),
            p.channels
        )));
    }
    match x.device() {
        Device::Cpu => {
            let mut y = vec![0.0f32; x.numel()];
            add_bias_cpu(
                x.host_data()?,
                b.host_data()?,
                &mut y,
                p.channels as usize,
                p.inner as usize,
            );
            Tensor::from_vec(x.shape(), y, x.device())
        }
        Device::Gpu(g) => {
            let mut y = g.zeros::<f32>(x.numel())?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer()))
                .ptr(g.addr(b.buffer()))
                .ptr(g.addr_mut(&mut y))
                .value(&p);
            g.launch(
                "add_bias_f32",
                LaunchCfg::for_elements(x.numel()),
                &mut args,
            )?;
            Tensor::from_buffer(x.shape(), y, x.device())
        }
    }
}

/// A tensor of `shape` (`[N, C, *rest]`) whose every `[n, c, ...]` entry is `b[c]`.
pub fn broadcast_channels(b: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let op = "broadcast_channels";
    let p = channel_params(op, shape)?;
    b.expect_shape(op, &[p.channels as usize])?;
    let n: usize = shape.iter().product();
    match b.device() {
        Device::Cpu => {
            let mut y = vec![0.0f32; n];
            broadcast_channels_cpu(
                b.host_data()?,
                &mut y,
                p.channels as usize,
                p.inner as usize,
            );
            Tensor::from_vec(shape, y, b.device())
        }
        Device::Gpu(g) => {
            let mut y = g.zeros::<f32>(n)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(b.buffer()))
                .ptr(g.addr_mut(&mut y))
                .value(&p);
            g.launch(
                "broadcast_channels_f32",
                LaunchCfg::for_elements(n),
                &mut args,
            )?;
            Tensor::from_buffer(shape, y, b.device())
        }
    }
}

/// `[rows, C]` copies of `b [C]` (the backward of `sum_rows`, the start of a biased linear).
pub fn broadcast_rows(b: &Tensor, rows: usize) -> Result<Tensor> {
    if b.dims() != 1 {
        return Err(Error::Shape(format!(
            "broadcast_rows: expected a 1-D tensor [C], got {:?}",
            b.shape()
        )));
    }
    broadcast_channels(b, &[rows, b.shape()[0]])
}

/// `y[c] = sum over n and rest of x[n, c, *rest]` (the bias gradient of `add_bias`).
pub fn channel_sum(x: &Tensor) -> Result<Tensor> {
    let op = "channel_sum";
    let p = channel_params(op, x.shape())?;
    let c = p.channels as usize;
    match x.device() {
        Device::Cpu => {
            let mut y = vec![0.0f32; c];
            channel_sum_cpu(
                x.host_data()?,
                &mut y,
                p.outer as usize,
                c,
                p.inner as usize,
            );
            Tensor::from_vec(&[c], y, x.device())
        }
        Device::Gpu(g) => {
            let mut y = g.zeros::<f32>(c)?;
            if c > 0 {
                let mut args = KernelArgs::new();
                args.ptr(g.addr(x.buffer()))
                    .ptr(g.addr_mut(&mut y))
                    .value(&p);
                let cfg = if p.inner == 1 {
                    // Rows of a [N, C] matrix: 32 columns per block, 8 row lanes, coalesced reads.
                    LaunchCfg::new((c.div_ceil(32) as u32, 1, 1), (32, 8, 1))
                } else {
                    // One block per channel; fewer threads when a channel has few elements.
                    let per = p.outer as usize * p.inner as usize;
                    let threads = per.next_power_of_two().clamp(32, 256) as u32;
                    LaunchCfg::new((c as u32, 1, 1), (threads, 1, 1))
                };
                let kernel = if p.inner == 1 {
                    "column_sum_f32"
                } else {
                    "channel_sum_f32"
                };
                g.launch(kernel, cfg, &mut args)?;
            }
            Tensor::from_buffer(&[c], y, x.device())
        }
    }
}

/// Column sums of `x [N, C]` → `[C]`.
pub fn sum_rows_forward(x: &Tensor) -> Result<Tensor> {
    if x.dims() != 2 {
        return Err(Error::Shape(format!(
            "sum_rows: expected a 2-D tensor [N, C], got {:?}",
            x.shape()
        )));
    }
    channel_sum(x)
}

/// `scale · sum(x)` as a 0-dim tensor.
fn scaled_sum(op: &str, x: &Tensor, scale_by_count: bool) -> Result<Tensor> {
    let n = x.numel();
    let scale = if scale_by_count { 1.0 / n as f64 } else { 1.0 };
    match x.device() {
        Device::Cpu => {
            let xs = x.host_data()?;
            let s = if scale_by_count {
                mean_all_cpu(xs)
            } else {
                sum_all_cpu(xs)
            };
            Tensor::scalar(s, x.device())
        }
        Device::Gpu(g) => {
            let n32 = to_i32(op, x.shape(), n)?;
            let mut out = g.zeros::<f32>(1)?;
            let blocks = n
                .div_ceil(SUM_THREADS * SUM_PER_THREAD)
                .clamp(1, SUM_MAX_BLOCKS);
            let block = (SUM_THREADS as u32, 1, 1);
            let mut args = KernelArgs::new();
            if blocks == 1 {
                args.ptr(g.addr(x.buffer())).ptr(g.addr_mut(&mut out));
                args.value(&SumParams {
                    n: n32,
                    scale: scale as f32,
                });
                g.launch(
                    "sum_blocks_f32",
                    LaunchCfg::new((1, 1, 1), block),
                    &mut args,
                )?;
            } else {
                // Pass 1: one partial per block; pass 2: one block sums the partials in a fixed order.
                let mut partial = g.zeros::<f32>(blocks)?;
                args.ptr(g.addr(x.buffer())).ptr(g.addr_mut(&mut partial));
                args.value(&SumParams { n: n32, scale: 1.0 });
                g.launch(
                    "sum_blocks_f32",
                    LaunchCfg::new((blocks as u32, 1, 1), block),
                    &mut args,
                )?;
                let mut args = KernelArgs::new();
                args.ptr(g.addr(&partial)).ptr(g.addr_mut(&mut out));
                args.value(&SumParams {
                    n: blocks as i32,
                    scale: scale as f32,
                });
                g.launch(
                    "sum_blocks_f32",
                    LaunchCfg::new((1, 1, 1), block),
                    &mut args,
                )?;
            }
            Tensor::from_buffer(&[], out, x.device())
        }
    }
}

/// Sum of all elements → 0-dim tensor.
pub fn sum_all_forward(x: &Tensor) -> Result<Tensor> {
    scaled_sum("sum_all", x, false)
}

/// Mean of all elements → 0-dim tensor (NaN for an empty tensor, like PyTorch).
pub fn mean_all_forward(x: &Tensor) -> Result<Tensor> {
    scaled_sum("mean_all", x, true)
}

/// A tensor of `shape` filled with `scale · s` for a one-element `s` (backward of `sum_all`/`mean_all`).
pub fn fill_scaled(s: &Tensor, shape: &[usize], scale: f32) -> Result<Tensor> {
    let op = "fill_scaled";
    if s.numel() != 1 {
        return Err(Error::Shape(format!(
            "{op}: expected a one-element tensor, got {:?}",
            s.shape()
        )));
    }
    let n: usize = shape.iter().product();
    match s.device() {
        Device::Cpu => {
            let v = s.host_data()?[0] * scale;
            Tensor::from_vec(shape, vec![v; n], s.device())
        }
        Device::Gpu(g) => {
            let mut y = g.zeros::<f32>(n)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(s.buffer())).ptr(g.addr_mut(&mut y));
            args.value(&SumParams {
                n: to_i32(op, shape, n)?,
                scale,
            });
            g.launch("fill_scaled_f32", LaunchCfg::for_elements(n), &mut args)?;
            Tensor::from_buffer(shape, y, s.device())
        }
    }
}

// ---------- autograd ----------

/// `x [N, C, *rest] + b [C]`; backward `dx = dy`, `db = sums of dy over N and rest`.
pub fn add_bias(g: &mut Graph, x: Var, b: Var) -> Result<Var> {
    let y = add_bias_forward(g.value(x), g.value(b))?;
    let need = (g.requires_grad(x), g.requires_grad(b));
    Ok(g.op(y, &[x, b], move |dy| {
        let dx = if need.0 { Some(dy.clone()) } else { None };
        let db = if need.1 { Some(channel_sum(dy)?) } else { None };
        Ok(vec![dx, db])
    }))
}

/// Column sums of `x [N, C]` → `[C]`.
pub fn sum_rows(g: &mut Graph, x: Var) -> Result<Var> {
    let y = sum_rows_forward(g.value(x))?;
    let rows = g.value(x).shape()[0];
    Ok(g.op(y, &[x], move |dy| Ok(vec![Some(broadcast_rows(dy, rows)?)])))
}

/// Sum of all elements → scalar.
pub fn sum_all(g: &mut Graph, x: Var) -> Result<Var> {
    let xv = g.value(x);
    let (y, shape) = (sum_all_forward(xv)?, xv.shape().to_vec());
    Ok(g.op(y, &[x], move |dy| {
        Ok(vec![Some(fill_scaled(dy, &shape, 1.0)?)])
    }))
}

/// Mean of all elements → scalar.
pub fn mean_all(g: &mut Graph, x: Var) -> Result<Var> {
    let xv = g.value(x);
    let (y, shape) = (mean_all_forward(xv)?, xv.shape().to_vec());
    let scale = 1.0 / xv.numel() as f32;
    Ok(g.op(y, &[x], move |dy| {
        Ok(vec![Some(fill_scaled(dy, &shape, scale)?)])
    }))
}
