//! Global gradient-norm clipping as PyTorch 0.3.1 `clip_grad_norm(params, max_norm)` (the QD
//! translation runs clip at 5 before every SGD step, SPEC-TRANSLATION §3.4 and §7):
//!
//! ```text
//! norm_p = ‖g_p‖₂ (a float32, as the tensor's norm came back to Python)
//! N = sqrt(Σ_p norm_p²)  (Python floats: f64, parameters in order)
//! coef = max_norm / (N + 1e-6);  if coef < 1: g_p ← g_p · float(coef) for every p
//! ```
//!
//! Each tensor's sum of squares is accumulated in f64. On cuda and emu nothing is read back:
//! `grad_sq_partials_f32` writes partial sums per tensor, `clip_coef_f32` (one thread) turns them
//! into `[N, coef]` on the device, and `clip_scale_f32` scales the gradients reading `coef` there,
//! so the optimizer launches that follow see clipped gradients in stream order (an extra pass over
//! the gradients rather than a coefficient inside the optimizer kernels: SGD's kernels and
//! numerics stay exactly as they are).

use super::select::{check_device, launch_groups, stepped_params, Stepped};
use crate::device::{Buffer, Device, Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::partials::PARTIAL_THREADS;
use crate::tensor::Tensor;

/// Most tensors per launch of the multi-tensor clip kernels. Mirrors `CLIP_MAX_TENSORS` in
/// `kernels/clip.cu`.
pub const CLIP_MAX_TENSORS: usize = 128;

/// Most partial sums per tensor (a tensor's blocks in `grad_sq_partials_f32`).
const MAX_BLOCKS_PER_TENSOR: usize = 64;

/// One gradient of a multi-tensor clip launch; mirrors `GradTensor` in `kernels/clip.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GradTensor {
    /// Address of the gradient.
    pub grad: u64,
    /// Index of its first element in the launch's concatenation.
    pub start: i32,
    /// Elements (> 0).
    pub n: i32,
    /// Its row of partial sums (its index among all clipped tensors).
    pub slot: i32,
    /// Keeps the size a multiple of 8.
    pub pad: i32,
}

/// Mirrors `GradMultiParams` in `kernels/clip.cu`, the parameters of `grad_sq_partials_f32` and
/// `clip_scale_f32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GradMultiParams {
    /// Elements of the `count` tensors together.
    pub total: i32,
    /// Descriptors in use.
    pub count: i32,
    /// Partial sums per tensor.
    pub blocks: i32,
    /// Keeps `coef` 8-byte aligned.
    pub pad: i32,
    /// Address of `[norm, coef]` (read by `clip_scale_f32`).
    pub coef: u64,
    /// The gradients (the first `count`).
    pub tensors: [GradTensor; CLIP_MAX_TENSORS],
}

/// Mirrors `ClipCoefParams` in `kernels/clip.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ClipCoefParams {
    /// Rows of partial sums (all clipped tensors).
    pub tensors: i32,
    /// Partial sums per tensor.
    pub blocks: i32,
    /// The clip threshold.
    pub max_norm: f64,
}

/// The CPU reference: scales `grads` in place and returns `(norm, coef)`, both as f32 (coef is
/// what multiplied the gradients, when it is below 1).
pub fn clip_grad_norm_cpu(grads: &mut [&mut [f32]], max_norm: f64) -> (f32, f32) {
    let mut total = 0.0f64;
    for g in grads.iter() {
        let s: f64 = g.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let param_norm = s.sqrt() as f32 as f64;
        total += param_norm * param_norm;
    }
    let norm = total.sqrt();
    let coef = (max_norm / (norm + 1e-6)) as f32;
    if coef < 1.0 {
        for g in grads.iter_mut() {
            for v in g.iter_mut() {
                *v *= coef;
            }
        }
    }
    (norm as f32, coef)
}

/// Clip the gradients of every trainable parameter of `store` that has one (all on one device)
/// to a total norm of `max_norm`; returns `[norm, coef]` on that device (coef < 1: the gradients
/// were multiplied by it). On cuda and emu the host reads nothing. No gradient: `[0, max_norm/1e-6]`
/// on cpu.
pub fn clip_grad_norm(store: &mut ParamStore, max_norm: f64) -> Result<Tensor> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::op_arg(
            "clip_grad_norm",
            format!("max_norm must be a finite number > 0, got {max_norm}"),
        ));
    }
    let mut params = stepped_params("clip_grad_norm", store)?;
    let Some(device) = params.first().map(|p| p.w.device().clone()) else {
        let coef = (max_norm / 1e-6) as f32;
        return Tensor::from_vec(&[2], vec![0.0, coef], &Device::Cpu);
    };
    for p in &params {
        check_device("clip_grad_norm", p.name, "parameter", p.w.device(), &device)?;
    }
    match &device {
        Device::Cpu => {
            let mut grads = params
                .iter_mut()
                .map(|p| p.grad.host_data_mut())
                .collect::<Result<Vec<_>>>()?;
            let (norm, coef) = clip_grad_norm_cpu(&mut grads, max_norm);
            Tensor::from_vec(&[2], vec![norm, coef], &device)
        }
        Device::Gpu(g) => {
            let out = clip_on_device(g, &mut params, max_norm)?;
            Tensor::from_buffer(&[2], out, &device)
        }
    }
}

/// The three launches of a kernel-device clip; returns the `[norm, coef]` buffer.
fn clip_on_device(g: &Gpu, params: &mut [Stepped], max_norm: f64) -> Result<Buffer<f32>> {
    let sizes: Vec<usize> = params.iter().map(|p| p.w.numel()).collect();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let blocks = largest
        .div_ceil(PARTIAL_THREADS as usize * 8)
        .clamp(1, MAX_BLOCKS_PER_TENSOR);
    let mut partials = g.zeros::<f64>(params.len() * blocks)?;
    let mut out = g.zeros::<f32>(2)?;
    let groups = launch_groups(&sizes, CLIP_MAX_TENSORS);
    let mut launches = Vec::with_capacity(groups.len());
    for group in &groups {
        let mut p = GradMultiParams {
            total: 0,
            count: group.len() as i32,
            blocks: blocks as i32,
            pad: 0,
            coef: g.addr(&out),
            tensors: [GradTensor::default(); CLIP_MAX_TENSORS],
        };
        for (t, &i) in p.tensors.iter_mut().zip(group) {
            let n = sizes[i] as i32;
            *t = GradTensor {
                grad: g.addr_mut(params[i].grad.try_buffer_mut()?),
                start: p.total,
                n,
                slot: i as i32,
                pad: 0,
            };
            p.total += n;
        }
        let cfg = LaunchCfg::new(
            (blocks as u32, group.len() as u32, 1),
            (PARTIAL_THREADS, 1, 1),
        );
        let mut args = KernelArgs::new();
        args.value(&p).ptr(g.addr_mut(&mut partials));
        g.launch("grad_sq_partials_f32", cfg, &mut args)?;
        launches.push(p);
    }
    let mut args = KernelArgs::new();
    args.ptr(g.addr(&partials)).ptr(g.addr_mut(&mut out));
    args.value(&ClipCoefParams {
        tensors: params.len() as i32,
        blocks: blocks as i32,
        max_norm,
    });
    g.launch(
        "clip_coef_f32",
        LaunchCfg::new((1, 1, 1), (1, 1, 1)),
        &mut args,
    )?;
    for p in &launches {
        let cfg = LaunchCfg::for_elements(p.total as usize);
        g.launch("clip_scale_f32", cfg, KernelArgs::new().value(p))?;
    }
    Ok(out)
}
