//! SGD with PyTorch semantics (dampening 0), fused kernels in `kernels/optim.cu`:
//!
//! `g = grad + wd*w`; momentum buffer `b = g` on the parameter's first step, else `b = mu*b + g`;
//! plain `w -= lr*b`, Nesterov `w -= lr*(g + mu*b)`; momentum 0: `w -= lr*g` and no buffer.
//! A parameter with no gradient, a frozen parameter and a buffer are skipped entirely (no decay,
//! no buffer update), exactly as PyTorch skips parameters whose `.grad` is None.
//!
//! On cuda and emu, [`Sgd::step`] updates every parameter in one launch of `sgd_multi_step_f32`
//! (up to [`SGD_MULTI_MAX_TENSORS`] parameters a launch). Its descriptors (addresses and sizes)
//! travel by value in the launch's parameter struct: gradients are fresh tensors every step, so a
//! device-side table would change every step, and uploading it from pageable memory would stall
//! the stream; kernel parameters are copied by the driver with the launch, so no table is ever
//! uploaded, cached or invalidated. [`Sgd::step_per_tensor`] keeps the one-launch-per-parameter
//! path (`sgd_step_f32`); both kernels call one element update, so their results are identical.
//!
//! [`adam`]: PyTorch 1.0.1 Adam (the translation Transformers' optimizer); [`checkpoint`]: the
//! state a run commits; [`clip`]: global gradient-norm clipping; [`select`]: which parameters a
//! step touches.

pub mod adam;
pub mod checkpoint;
pub mod clip;
pub mod select;

pub use adam::{adam_step_cpu, Adam, AdamScalars, AdamState};
pub use checkpoint::OptimizerCheckpoint;
pub use clip::{clip_grad_norm, clip_grad_norm_cpu};

use crate::device::{Device, Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::Real;
use crate::tensor::Tensor;
use select::{check_device, stepped_params, Stepped};
use std::collections::HashMap;

/// Mirrors `SgdParams` in `kernels/optim.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SgdParams {
    /// Elements of the parameter.
    pub n: i32,
    /// Learning rate.
    pub lr: f32,
    /// Momentum (0: plain SGD, no buffer).
    pub momentum: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// 1 for Nesterov momentum.
    pub nesterov: i32,
    /// 1 on the parameter's first step (the buffer starts as the gradient).
    pub first_step: i32,
}

/// Most parameters one `sgd_multi_step_f32` launch updates: [`SgdMultiParams`] then stays within
/// the 4 KiB of kernel parameters every CUDA version accepts. Mirrors `SGD_MULTI_MAX_TENSORS` in
/// `kernels/optim.cu`.
pub const SGD_MULTI_MAX_TENSORS: usize = 96;

/// One parameter of a multi-tensor step; mirrors `SgdTensor` in `kernels/optim.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SgdTensor {
    /// Address of the weights (updated in place).
    pub w: u64,
    /// Address of the gradient.
    pub grad: u64,
    /// Address of the momentum buffer (0 when momentum is 0).
    pub buf: u64,
    /// Index of the first element in the launch's concatenated index space.
    pub start: i32,
    /// Elements of the parameter (> 0).
    pub n: i32,
    /// 1 on the parameter's first step.
    pub first_step: i32,
    /// Keeps the size a multiple of 8 (no padding).
    pub pad: i32,
}

/// Mirrors `SgdMultiParams` in `kernels/optim.cu`: shared hyperparameters, then `count`
/// descriptors by ascending `start`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SgdMultiParams {
    /// Elements of all `count` parameters together.
    pub total: i32,
    /// Descriptors in use.
    pub count: i32,
    /// Learning rate.
    pub lr: f32,
    /// Momentum (0: plain SGD, no buffer).
    pub momentum: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// 1 for Nesterov momentum.
    pub nesterov: i32,
    /// Keeps the descriptors 8-byte aligned.
    pub pad: [i32; 2],
    /// Address of a device flag that skips the whole update when nonzero (0: never skipped).
    pub skip: u64,
    /// The parameters (the first `count`).
    pub tensors: [SgdTensor; SGD_MULTI_MAX_TENSORS],
}

/// The CPU reference of one parameter's step, with the kernel's parameters (`p.n` is not used).
/// `buf` is `None` exactly when momentum is 0.
pub fn sgd_step_cpu<T: Real>(w: &mut [T], grad: &[T], buf: Option<&mut [T]>, p: &SgdParams) {
    let real = |v: f32| T::from_f64(v as f64);
    let (lr, momentum, weight_decay) = (real(p.lr), real(p.momentum), real(p.weight_decay));
    match buf {
        None => {
            for (w, &gr) in w.iter_mut().zip(grad) {
                let g = gr + weight_decay * *w;
                *w -= lr * g;
            }
        }
        Some(buf) => {
            for ((w, &gr), b) in w.iter_mut().zip(grad).zip(buf.iter_mut()) {
                let g = gr + weight_decay * *w;
                *b = if p.first_step != 0 {
                    g
                } else {
                    momentum * *b + g
                };
                let step = if p.nesterov != 0 {
                    g + momentum * *b
                } else {
                    *b
                };
                *w -= lr * step;
            }
        }
    }
}

/// SGD over a [`ParamStore`], with one momentum buffer per parameter.
#[derive(Debug)]
pub struct Sgd {
    /// Learning rate (set per epoch by the schedule).
    pub lr: f32,
    /// Momentum (0: none).
    pub momentum: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    buffers: HashMap<String, Tensor>,
}

impl Sgd {
    /// Fails (as PyTorch does) on a negative or non-finite value, or Nesterov without momentum.
    pub fn new(lr: f32, momentum: f32, weight_decay: f32, nesterov: bool) -> Result<Self> {
        for (name, v) in [
            ("lr", lr),
            ("momentum", momentum),
            ("weight_decay", weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!(
                    "SGD: {name} must be a finite number >= 0, got {v}"
                )));
            }
        }
        if nesterov && momentum == 0.0 {
            return Err(Error::Config(
                "SGD: nesterov needs a momentum > 0 (got momentum 0)".into(),
            ));
        }
        Ok(Sgd {
            lr,
            momentum,
            weight_decay,
            nesterov,
            buffers: HashMap::new(),
        })
    }

    /// Set the learning rate of the next steps.
    pub fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    /// Momentum buffers by parameter name, sorted by name (for checkpoints).
    pub fn momentum_buffers(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        let mut v: Vec<(&str, &Tensor)> =
            self.buffers.iter().map(|(k, t)| (k.as_str(), t)).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.into_iter()
    }

    /// The momentum buffer of parameter `name`, once it has taken a step.
    pub fn momentum_buffer(&self, name: &str) -> Option<&Tensor> {
        self.buffers.get(name)
    }

    /// Restore a buffer (from a checkpoint): the parameter's next step is then not its first.
    /// Shape and device are checked against the parameter at the next [`Sgd::step`].
    pub fn set_momentum_buffer(&mut self, name: &str, buffer: Tensor) {
        self.buffers.insert(name.to_string(), buffer);
    }

    /// Drop the momentum buffer of `name`: its next step is its first again.
    pub fn forget_momentum_buffer(&mut self, name: &str) {
        self.buffers.remove(name);
    }

    /// One step over every trainable parameter of `store` that has a gradient. Gradients are left
    /// in place for the caller to zero. On cuda and emu, one launch updates up to
    /// [`SGD_MULTI_MAX_TENSORS`] parameters.
    pub fn step(&mut self, store: &mut ParamStore) -> Result<()> {
        self.step_with(store, Launches::MultiTensor, None)
    }

    /// [`Sgd::step`] with one `sgd_step_f32` launch per parameter: the same results, kept as the
    /// reference the multi-tensor kernel is checked and benchmarked against.
    pub fn step_per_tensor(&mut self, store: &mut ParamStore) -> Result<()> {
        self.step_with(store, Launches::PerTensor, None)
    }

    /// [`Sgd::step`], except that nothing changes (weights and momentum values) when `skip`, a
    /// one-element flag on the parameters' device, is nonzero. On cuda and emu the kernels read
    /// the flag, so the host never waits for it (a step can be queued before its loss is known);
    /// on cpu it is read directly. A parameter without a buffer still gets a zero one.
    /// `None`: exactly [`Sgd::step`].
    pub fn step_unless(&mut self, store: &mut ParamStore, skip: Option<&Tensor>) -> Result<()> {
        self.step_with(store, Launches::MultiTensor, skip)
    }

    /// [`Sgd::step_unless`] with one launch per parameter (as [`Sgd::step_per_tensor`]).
    pub fn step_per_tensor_unless(
        &mut self,
        store: &mut ParamStore,
        skip: Option<&Tensor>,
    ) -> Result<()> {
        self.step_with(store, Launches::PerTensor, skip)
    }

    fn step_with(
        &mut self,
        store: &mut ParamStore,
        launches: Launches,
        skip: Option<&Tensor>,
    ) -> Result<()> {
        if let Some(flag) = skip {
            if flag.numel() != 1 {
                return Err(Error::Shape(format!(
                    "SGD: the skip flag must hold one value, got shape {:?}",
                    flag.shape()
                )));
            }
            // cpu has nothing to queue: read the flag now, before any buffer is made.
            if flag.device().is_cpu() && flag.to_vec()?[0] != 0.0 {
                return Ok(());
            }
        }
        let mut updates = self.updates(store, skip)?;
        let result = self.apply(&mut updates, launches, skip);
        // The buffers go back even when a launch failed, so no optimizer state is dropped.
        for u in updates {
            if let Some(b) = u.buf {
                self.buffers.insert(u.name.to_string(), b);
            }
        }
        result
    }

    /// The parameters this step updates, with their momentum buffers taken out of the map.
    /// Everything is checked before any buffer is taken or any weight changes.
    fn updates<'s>(
        &mut self,
        store: &'s mut ParamStore,
        skip: Option<&Tensor>,
    ) -> Result<Vec<Update<'s>>> {
        let mut updates = Vec::new();
        for Stepped { name, w, grad } in stepped_params("SGD", store)? {
            if let Some(flag) = skip {
                check_device("SGD", name, "skip flag", flag.device(), w.device())?;
            }
            if let Some(b) = self.buffers.get(name) {
                if b.shape() != w.shape() {
                    return Err(Error::Checkpoint(format!(
                        "SGD: momentum buffer of `{name}` has shape {:?}, the parameter {:?}; \
                         the optimizer state does not belong to this model",
                        b.shape(),
                        w.shape()
                    )));
                }
            }
            updates.push(Update {
                name,
                w,
                grad,
                buf: None,
                first_step: !self.buffers.contains_key(name),
            });
        }
        if self.momentum != 0.0 {
            // Fallible work first (moves, new buffers), while the map still holds every buffer.
            let mut fresh = Vec::with_capacity(updates.len());
            for u in &updates {
                let dev = u.w.device();
                fresh.push(match self.buffers.get(u.name) {
                    Some(b) if b.device() != dev => Some(b.to_device(dev)?),
                    Some(_) => None,
                    None => Some(Tensor::zeros(u.w.shape(), dev)?),
                });
            }
            for (u, fresh) in updates.iter_mut().zip(fresh) {
                u.buf = fresh.or_else(|| self.buffers.remove(u.name));
            }
        }
        Ok(updates)
    }

    fn params(&self, n: usize, first_step: bool) -> SgdParams {
        SgdParams {
            n: n as i32,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov as i32,
            first_step: first_step as i32,
        }
    }

    /// Runs the updates: cpu ones through the reference, kernel-device ones as `launches` says.
    /// `skip`: the flag the kernels read (a set flag on cpu never gets here).
    fn apply(
        &self,
        updates: &mut [Update],
        launches: Launches,
        skip: Option<&Tensor>,
    ) -> Result<()> {
        let skip_addr = match skip.map(|f| (f, f.device())) {
            Some((flag, Device::Gpu(g))) => g.addr(flag.buffer()),
            _ => 0,
        };
        let mut batch: Vec<&mut Update> = Vec::new();
        for u in updates.iter_mut() {
            let Device::Gpu(g) = u.w.device().clone() else {
                self.update_cpu(u)?;
                continue;
            };
            match launches {
                Launches::PerTensor => self.update_one(&g, u, skip_addr)?,
                // An empty parameter has nothing to update (its buffer is empty too).
                Launches::MultiTensor if u.w.numel() == 0 => {}
                Launches::MultiTensor => {
                    let elements: usize = batch.iter().map(|b| b.w.numel()).sum();
                    let full = batch.len() == SGD_MULTI_MAX_TENSORS
                        || elements + u.w.numel() > i32::MAX as usize
                        || batch.first().is_some_and(|b| b.w.device() != u.w.device());
                    if full {
                        self.update_many(&mut batch, skip_addr)?;
                        batch.clear();
                    }
                    batch.push(u);
                }
            }
        }
        if !batch.is_empty() {
            self.update_many(&mut batch, skip_addr)?;
        }
        Ok(())
    }

    fn update_cpu(&self, u: &mut Update) -> Result<()> {
        let params = self.params(u.w.numel(), u.first_step);
        let gr = u.grad.host_data()?;
        let ws = u.w.host_data_mut()?;
        let bs = match &mut u.buf {
            Some(b) => Some(b.host_data_mut()?),
            None => None,
        };
        sgd_step_cpu(ws, gr, bs, &params);
        Ok(())
    }

    /// One `sgd_step_f32` launch for one parameter (`skip`: the flag's address, or 0).
    fn update_one(&self, g: &Gpu, u: &mut Update, skip: u64) -> Result<()> {
        let n = u.w.numel();
        let (w, grad, buf) = addresses(g, u)?;
        let mut args = KernelArgs::new();
        args.ptr(w)
            .ptr(grad)
            .ptr(buf)
            .ptr(skip)
            .value(&self.params(n, u.first_step));
        g.launch("sgd_step_f32", LaunchCfg::for_elements(n), &mut args)
    }

    /// One `sgd_multi_step_f32` launch for `batch` (same device, at most
    /// [`SGD_MULTI_MAX_TENSORS`] parameters, fewer than 2^31 elements in all); `skip` as in
    /// [`Sgd::update_one`].
    fn update_many(&self, batch: &mut [&mut Update], skip: u64) -> Result<()> {
        let Some(Device::Gpu(g)) = batch.first().map(|u| u.w.device().clone()) else {
            return Ok(());
        };
        let mut p = SgdMultiParams {
            total: 0,
            count: batch.len() as i32,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov as i32,
            pad: [0; 2],
            skip,
            tensors: [SgdTensor::default(); SGD_MULTI_MAX_TENSORS],
        };
        for (t, u) in p.tensors.iter_mut().zip(batch.iter_mut()) {
            let (w, grad, buf) = addresses(&g, u)?;
            let n = u.w.numel() as i32;
            *t = SgdTensor {
                w,
                grad,
                buf,
                start: p.total,
                n,
                first_step: u.first_step as i32,
                pad: 0,
            };
            p.total += n;
        }
        let cfg = LaunchCfg::for_elements(p.total as usize);
        g.launch("sgd_multi_step_f32", cfg, KernelArgs::new().value(&p))
    }
}

/// Which kernels a kernel-device step launches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Launches {
    MultiTensor,
    PerTensor,
}

/// One parameter's update in a step.
struct Update<'s> {
    name: &'s str,
    w: &'s mut Tensor,
    grad: &'s Tensor,
    /// The momentum buffer (`None` when momentum is 0).
    buf: Option<Tensor>,
    first_step: bool,
}

/// Kernel addresses of an update's weights, gradient and buffer (0 when there is none).
fn addresses(g: &Gpu, u: &mut Update) -> Result<(u64, u64, u64)> {
    let w = g.addr_mut(u.w.try_buffer_mut()?);
    // With momentum 0 the kernels never touch the buffer: a null pointer.
    let buf = match &mut u.buf {
        Some(b) => g.addr_mut(b.try_buffer_mut()?),
        None => 0,
    };
    Ok((w, g.addr(u.grad.buffer()), buf))
}
