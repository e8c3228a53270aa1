//! Adam exactly as PyTorch 1.0.1 executed it (`torch/optim/adam.py`, amsgrad off), the optimizer
//! of the LMA translation Transformers (SPEC-TRANSLATION §6.2: β 0.9/0.98, eps 1e-9, no decay):
//!
//! ```text
//! g = grad + wd·w                                  (only when wd ≠ 0; the gradient is not modified)
//! m = β1·m + (1−β1)·g ;  v = β2·v + (1−β2)·g·g      (state `exp_avg`, `exp_avg_sq`; zeros at step 0)
//! t = step + 1 ;  step_size = lr·√(1−β2^t)/(1−β1^t) (host, in f64, as the Python scalars)
//! w = w − step_size·(m / (√v + eps))               (eps on √v, NOT on the bias-corrected √v̂)
//! ```
//!
//! Today's PyTorch divides by `√v/√(1−β2^t) + eps` instead; with eps small against √v the two agree,
//! where √v is near eps (a first step with tiny gradients) they differ by up to ~45 %.
//! Every element operation rounds to f32 as one THC pointwise kernel did (`mul_`, `add_`,
//! `addcmul_`, `sqrt`, `add_`, `addcdiv_`), with the Python scalars converted to f32.
//!
//! On cuda and emu one launch of `adam_multi_step_f32` (`kernels/adam.cu`) updates up to
//! [`ADAM_MULTI_MAX_TENSORS`] parameters; the descriptors travel by value in the launch, as SGD's.

use super::select::{check_device, launch_groups, stepped_params, Stepped};
use crate::device::{Device, Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::Real;
use crate::tensor::Tensor;
use std::collections::HashMap;

/// Most parameters one `adam_multi_step_f32` launch updates ([`AdamMultiParams`] then stays within
/// 4 KiB of kernel parameters; 64: an array length bytemuck derives `Pod` for). Mirrors `ADAM_MULTI_MAX_TENSORS` in `kernels/adam.cu`.
pub const ADAM_MULTI_MAX_TENSORS: usize = 64;

/// One parameter of a multi-tensor Adam step; mirrors `AdamTensor` in `kernels/adam.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamTensor {
    /// Address of the weights (updated in place).
    pub w: u64,
    /// Address of the gradient (read only).
    pub grad: u64,
    /// Address of the first moment `exp_avg` (updated in place).
    pub exp_avg: u64,
    /// Address of the second moment `exp_avg_sq` (updated in place).
    pub exp_avg_sq: u64,
    /// Index of the first element in the launch's concatenated index space.
    pub start: i32,
    /// Elements of the parameter (> 0).
    pub n: i32,
    /// `lr·√(1−β2^t)/(1−β1^t)` of this parameter's step `t`, rounded to f32.
    pub step_size: f32,
    /// Keeps the size a multiple of 8 (no padding).
    pub pad: i32,
}

/// The kernel's scalars (each Python scalar of the 1.0.1 update, rounded to f32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamScalars {
    /// β1.
    pub beta1: f32,
    /// β2.
    pub beta2: f32,
    /// `1 − β1` computed in f64.
    pub one_minus_beta1: f32,
    /// `1 − β2` computed in f64.
    pub one_minus_beta2: f32,
    /// Added to `√v`.
    pub eps: f32,
    /// L2 weight decay (0: none).
    pub weight_decay: f32,
}

/// Mirrors `AdamMultiParams` in `kernels/adam.cu`: the scalars, then `count` descriptors by
/// ascending `start`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamMultiParams {
    /// Elements of all `count` parameters together.
    pub total: i32,
    /// Descriptors in use.
    pub count: i32,
    /// The update's scalars.
    pub scalars: AdamScalars,
    /// The parameters (the first `count`).
    pub tensors: [AdamTensor; ADAM_MULTI_MAX_TENSORS],
}

/// The CPU reference of one parameter's step, with the kernel's rounding: `step_size` as in
/// [`AdamTensor::step_size`].
pub fn adam_step_cpu<T: Real>(
    w: &mut [T],
    grad: &[T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    s: &AdamScalars,
    step_size: f32,
) {
    let real = |v: f32| T::from_f64(v as f64);
    let (b1, b2, omb1, omb2) = (
        real(s.beta1),
        real(s.beta2),
        real(s.one_minus_beta1),
        real(s.one_minus_beta2),
    );
    let (eps, wd, step_size) = (real(s.eps), real(s.weight_decay), real(step_size));
    for (((w, &gr), m), v) in w
        .iter_mut()
        .zip(grad)
        .zip(exp_avg.iter_mut())
        .zip(exp_avg_sq.iter_mut())
    {
        let g = if s.weight_decay != 0.0 {
            gr + wd * *w
        } else {
            gr
        };
        *m = *m * b1 + omb1 * g;
        *v = *v * b2 + omb2 * g * g;
        let denom = T::from_f64(v.to_f64().sqrt()) + eps;
        *w -= step_size * (*m / denom);
    }
}

/// The Adam state of one parameter, under PyTorch's state names.
#[derive(Debug)]
pub struct AdamState {
    /// Steps taken (`state['step']`); the next step is `step + 1`.
    pub step: u64,
    /// First moment (`state['exp_avg']`).
    pub exp_avg: Tensor,
    /// Second moment (`state['exp_avg_sq']`).
    pub exp_avg_sq: Tensor,
}

/// Adam over a [`ParamStore`] with PyTorch 1.0.1's update and one [`AdamState`] per parameter.
#[derive(Debug)]
pub struct Adam {
    /// Learning rate of the next step (the Noam schedule sets it before every step).
    pub lr: f64,
    /// β1, β2.
    pub betas: (f64, f64),
    /// Added to `√v`.
    pub eps: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    state: HashMap<String, AdamState>,
}

impl Adam {
    /// Fails (as PyTorch does) on a negative or non-finite lr/eps/weight decay or a β outside [0, 1).
    pub fn new(lr: f64, betas: (f64, f64), eps: f64, weight_decay: f64) -> Result<Self> {
        for (name, v) in [("lr", lr), ("eps", eps), ("weight_decay", weight_decay)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!(
                    "Adam: {name} must be a finite number >= 0, got {v}"
                )));
            }
        }
        for (i, b) in [betas.0, betas.1].into_iter().enumerate() {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::Config(format!(
                    "Adam: beta{} must be in [0, 1), got {b}",
                    i + 1
                )));
            }
        }
        Ok(Adam {
            lr,
            betas,
            eps,
            weight_decay,
            state: HashMap::new(),
        })
    }

    /// The LMA translation students' optimizer: β 0.9/0.98, eps 1e-9, no decay (SPEC §6.2).
    pub fn lma(lr: f64) -> Result<Self> {
        Adam::new(lr, (0.9, 0.98), 1e-9, 0.0)
    }

    /// Set the learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The kernel scalars of this optimizer.
    pub fn scalars(&self) -> AdamScalars {
        AdamScalars {
            beta1: self.betas.0 as f32,
            beta2: self.betas.1 as f32,
            one_minus_beta1: (1.0 - self.betas.0) as f32,
            one_minus_beta2: (1.0 - self.betas.1) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
        }
    }

    /// `lr·√(1−β2^t)/(1−β1^t)` in f64, evaluated in Python's order, rounded to f32.
    pub fn step_size(&self, t: u64) -> f32 {
        let t = t.min(i32::MAX as u64) as i32;
        let bias_correction1 = 1.0 - self.betas.0.powi(t);
        let bias_correction2 = 1.0 - self.betas.1.powi(t);
        (self.lr * bias_correction2.sqrt() / bias_correction1) as f32
    }

    /// The state of parameter `name`, once it has taken a step (or was restored).
    pub fn state(&self, name: &str) -> Option<&AdamState> {
        self.state.get(name)
    }

    /// Every parameter's state, sorted by name (for checkpoints).
    pub fn states(&self) -> impl Iterator<Item = (&str, &AdamState)> {
        let mut v: Vec<(&str, &AdamState)> =
            self.state.iter().map(|(k, s)| (k.as_str(), s)).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.into_iter()
    }

    /// Restore a parameter's state (a checkpoint, or given initial moments): its next step is
    /// `state.step + 1`. Shapes and devices are checked against the parameter at the next step.
    pub fn set_state(&mut self, name: &str, state: AdamState) {
        self.state.insert(name.to_string(), state);
    }

    /// One step over every trainable parameter of `store` that has a gradient; every parameter
    /// must be on one device. Gradients are left in place for the caller to zero.
    pub fn step(&mut self, store: &mut ParamStore) -> Result<()> {
        let mut params = stepped_params("Adam", store)?;
        let Some(device) = params.first().map(|p| p.w.device().clone()) else {
            return Ok(());
        };
        // Everything is checked, and every missing state made, before any weight changes.
        for p in &params {
            check_device("Adam", p.name, "parameter", p.w.device(), &device)?;
            self.check_state(p)?;
        }
        let mut fresh = Vec::with_capacity(params.len());
        for p in &params {
            fresh.push(match self.state.get(p.name) {
                None => Some(AdamState {
                    step: 0,
                    exp_avg: Tensor::zeros(p.w.shape(), &device)?,
                    exp_avg_sq: Tensor::zeros(p.w.shape(), &device)?,
                }),
                Some(s) if s.exp_avg.device() != &device || s.exp_avg_sq.device() != &device => {
                    Some(AdamState {
                        step: s.step,
                        exp_avg: s.exp_avg.to_device(&device)?,
                        exp_avg_sq: s.exp_avg_sq.to_device(&device)?,
                    })
                }
                Some(_) => None,
            });
        }
        let mut states: Vec<AdamState> = params
            .iter()
            .zip(fresh)
            .map(|(p, f)| f.or_else(|| self.state.remove(p.name)))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::op_arg("Adam", "a parameter's state went missing"))?;
        let result = self.apply(&device, &mut params, &mut states);
        // The states go back even when a launch failed, so no optimizer state is dropped.
        for (p, s) in params.iter().zip(states) {
            self.state.insert(p.name.to_string(), s);
        }
        result
    }

    /// Fails when the stored state of `p` does not have its shape.
    fn check_state(&self, p: &Stepped) -> Result<()> {
        let Some(s) = self.state.get(p.name) else {
            return Ok(());
        };
        for (what, t) in [("exp_avg", &s.exp_avg), ("exp_avg_sq", &s.exp_avg_sq)] {
            if t.shape() != p.w.shape() {
                return Err(Error::Checkpoint(format!(
                    "Adam: {what} of `{}` has shape {:?}, the parameter {:?}; the optimizer \
                     state does not belong to this model",
                    p.name,
                    t.shape(),
                    p.w.shape()
                )));
            }
        }
        Ok(())
    }

    /// Advances every state's step and updates the weights: on cpu through the reference, on a
    /// kernel device in multi-tensor launches.
    fn apply(
        &self,
        device: &Device,
        params: &mut [Stepped],
        states: &mut [AdamState],
    ) -> Result<()> {
        for s in states.iter_mut() {
            s.step += 1;
        }
        let scalars = self.scalars();
        let Device::Gpu(g) = device else {
            for (p, s) in params.iter_mut().zip(states.iter_mut()) {
                let step_size = self.step_size(s.step);
                adam_step_cpu(
                    p.w.host_data_mut()?,
                    p.grad.host_data()?,
                    s.exp_avg.host_data_mut()?,
                    s.exp_avg_sq.host_data_mut()?,
                    &scalars,
                    step_size,
                );
            }
            return Ok(());
        };
        let sizes: Vec<usize> = params.iter().map(|p| p.w.numel()).collect();
        for group in launch_groups(&sizes, ADAM_MULTI_MAX_TENSORS) {
            let mut launch = AdamMultiParams {
                total: 0,
                count: group.len() as i32,
                scalars,
                tensors: [AdamTensor::default(); ADAM_MULTI_MAX_TENSORS],
            };
            for (t, &i) in launch.tensors.iter_mut().zip(&group) {
                *t = self.descriptor(g, &mut params[i], &mut states[i], launch.total)?;
                launch.total += t.n;
            }
            let cfg = LaunchCfg::for_elements(launch.total as usize);
            g.launch("adam_multi_step_f32", cfg, KernelArgs::new().value(&launch))?;
        }
        Ok(())
    }

    /// The kernel descriptor of one parameter whose elements start at `start`.
    fn descriptor(
        &self,
        g: &Gpu,
        p: &mut Stepped,
        s: &mut AdamState,
        start: i32,
    ) -> Result<AdamTensor> {
        Ok(AdamTensor {
            w: g.addr_mut(p.w.try_buffer_mut()?),
            grad: g.addr(p.grad.buffer()),
            exp_avg: g.addr_mut(s.exp_avg.try_buffer_mut()?),
            exp_avg_sq: g.addr_mut(s.exp_avg_sq.try_buffer_mut()?),
            start,
            n: p.w.numel() as i32,
            step_size: self.step_size(s.step),
            pad: 0,
        })
    }
}
