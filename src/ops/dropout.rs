//! Dropout (elements) and Dropout2d (whole channels of `[N, C, *rest]`): in train mode each element
//! (channel) is zeroed with probability `p` and the kept ones are scaled by `1/(1-p)`; identity in
//! eval mode and for `p = 0`. The mask is drawn on the host from [`Rng`] (reproducible across
//! devices) and uploaded. Kernel: `kernels/dropout.cu`.

use crate::autograd::{Graph, Var};
use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::Real;
use crate::rng::Rng;
use crate::tensor::{same_device, Tensor};

/// Mirrors `DropoutParams` in `kernels/dropout.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DropoutParams {
    /// Elements of x.
    pub n: i32,
    /// Consecutive elements sharing one mask entry (`mask[i / inner]`).
    pub inner: i32,
}

/// `entries` mask values: 0 with probability `p`, else `1/(1-p)` (all 0 for `p = 1`).
pub fn dropout_mask(entries: usize, p: f32, rng: &mut Rng) -> Vec<f32> {
    let keep = 1.0 / (1.0 - p as f64);
    (0..entries)
        .map(|_| {
            if rng.uniform() < p as f64 {
                0.0
            } else {
                keep as f32
            }
        })
        .collect()
}

/// `y[i] = x[i] * mask[i / inner]`.
pub fn dropout_apply_cpu<T: Real>(x: &[T], mask: &[T], y: &mut [T], inner: usize) {
    for ((ys, xs), &m) in y.chunks_mut(inner).zip(x.chunks(inner)).zip(mask) {
        for (y, &x) in ys.iter_mut().zip(xs) {
            *y = x * m;
        }
    }
}

/// `x * mask` with one mask entry per `inner` consecutive elements (also the backward, on `dy`).
pub fn dropout_apply(x: &Tensor, mask: &Tensor, inner: usize) -> Result<Tensor> {
    same_device("dropout", x, mask)?;
    if inner == 0 || mask.numel() * inner != x.numel() {
        return Err(Error::Shape(format!(
            "dropout: mask of {} entries x {inner} does not cover x {:?}",
            mask.numel(),
            x.shape()
        )));
    }
    let n = i32::try_from(x.numel()).map_err(|_| {
        Error::Shape(format!(
            "dropout: x {:?} is beyond the kernels' 32-bit index range",
            x.shape()
        ))
    })?;
    let dev = x.device();
    match dev {
        Device::Cpu => {
            let mut y = vec![0.0f32; x.numel()];
            dropout_apply_cpu(x.host_data()?, mask.host_data()?, &mut y, inner);
            Tensor::from_vec(x.shape(), y, dev)
        }
        Device::Gpu(g) => {
            let mut y = g.zeros::<f32>(x.numel())?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer()))
                .ptr(g.addr(mask.buffer()))
                .ptr(g.addr_mut(&mut y))
                .value(&DropoutParams {
                    n,
                    inner: inner as i32,
                });
            if n > 0 {
                g.launch(
                    "dropout_apply_f32",
                    LaunchCfg::for_elements(x.numel()),
                    &mut args,
                )?;
            }
            Tensor::from_buffer(x.shape(), y, dev)
        }
    }
}

fn check_p(p: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::op_arg(
            "dropout",
            format!("dropout probability {p} must be between 0 and 1"),
        ));
    }
    Ok(())
}

fn masked(g: &mut Graph, x: Var, mask: Vec<f32>, inner: usize) -> Result<Var> {
    let mask = Tensor::from_vec(&[mask.len()], mask, g.value(x).device())?;
    let y = dropout_apply(g.value(x), &mask, inner)?;
    Ok(g.op(y, &[x], move |dy| {
        Ok(vec![Some(dropout_apply(dy, &mask, inner)?)])
    }))
}

/// Elementwise dropout. Returns `x` itself in eval mode or for `p = 0`.
pub fn dropout(g: &mut Graph, x: Var, p: f32, train: bool, rng: &mut Rng) -> Result<Var> {
    check_p(p)?;
    if !train || p == 0.0 {
        return Ok(x);
    }
    let mask = dropout_mask(g.value(x).numel(), p, rng);
    masked(g, x, mask, 1)
}

/// Channel dropout of `x [N, C, *rest]`: one mask entry per `(n, c)`. Returns `x` itself in eval
/// mode or for `p = 0`.
pub fn dropout2d(g: &mut Graph, x: Var, p: f32, train: bool, rng: &mut Rng) -> Result<Var> {
    check_p(p)?;
    let shape = g.value(x).shape().to_vec();
    if shape.len() < 3 {
        return Err(Error::Shape(format!(
            "dropout2d: expected x [N, C, H, W] (or [N, C, L]), got {shape:?}"
        )));
    }
    if !train || p == 0.0 {
        return Ok(x);
    }
    let inner: usize = shape[2..].iter().product();
    if inner == 0 {
        return Ok(x);
    }
    let mask = dropout_mask(shape[0] * shape[1], p, rng);
    masked(g, x, mask, inner)
}
