//! SGD with PyTorch semantics (dampening 0), one fused kernel per parameter (`kernels/optim.cu`):
//!
//! `g = grad + wd*w`; momentum buffer `b = g` on the parameter's first step, else `b = mu*b + g`;
//! plain `w -= lr*b`, Nesterov `w -= lr*(g + mu*b)`; momentum 0: `w -= lr*g` and no buffer.
//! A parameter with no gradient, a frozen parameter and a buffer are skipped entirely (no decay,
//! no buffer update), exactly as PyTorch skips parameters whose `.grad` is None.

use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::nn::{EntryKind, ParamStore};
use crate::ops::Real;
use crate::tensor::Tensor;
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

    /// One step over every trainable parameter of `store` that has a gradient. Gradients are left
    /// in place for the caller to zero.
    pub fn step(&mut self, store: &mut ParamStore) -> Result<()> {
        let use_momentum = self.momentum != 0.0;
        for (name, p) in store.iter_mut() {
            if p.kind == EntryKind::Buffer || !p.trainable {
                continue;
            }
            let Some(grad) = &p.grad else { continue };
            grad.expect_shape(&format!("SGD: gradient of `{name}`"), p.value.shape())?;
            if grad.device() != p.value.device() {
                return Err(Error::Device(format!(
                    "SGD: gradient of `{name}` is on {}, the parameter on {}",
                    grad.device().name(),
                    p.value.device().name()
                )));
            }
            let dev = p.value.device().clone();
            let first_step = !self.buffers.contains_key(name);
            let mut buf = if !use_momentum {
                None
            } else if first_step {
                Some(Tensor::zeros(p.value.shape(), &dev)?)
            } else {
                let b = self.buffers.remove(name).expect("buffer present");
                if b.shape() != p.value.shape() {
                    return Err(Error::Checkpoint(format!(
                        "SGD: momentum buffer of `{name}` has shape {:?}, the parameter {:?}; \
                         the optimizer state does not belong to this model",
                        b.shape(),
                        p.value.shape()
                    )));
                }
                Some(b.to_device(&dev)?)
            };
            self.update(&dev, &mut p.value, grad, buf.as_mut(), first_step)?;
            if let Some(b) = buf {
                self.buffers.insert(name.to_string(), b);
            }
        }
        Ok(())
    }

    fn update(
        &self,
        dev: &Device,
        w: &mut Tensor,
        grad: &Tensor,
        buf: Option<&mut Tensor>,
        first_step: bool,
    ) -> Result<()> {
        let params = SgdParams {
            n: w.numel() as i32,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov as i32,
            first_step: first_step as i32,
        };
        match dev {
            Device::Cpu => {
                let gr = grad.host_data()?;
                let ws = w.host_data_mut()?;
                let bs = match buf {
                    Some(b) => Some(b.host_data_mut()?),
                    None => None,
                };
                sgd_step_cpu(ws, gr, bs, &params);
                Ok(())
            }
            Device::Gpu(g) => {
                let mut args = KernelArgs::new();
                args.ptr(g.addr_mut(w.try_buffer_mut()?))
                    .ptr(g.addr(grad.buffer()));
                // With momentum 0 the kernel never touches the buffer: pass a null pointer.
                let buf_addr = match buf {
                    Some(b) => g.addr_mut(b.try_buffer_mut()?),
                    None => 0,
                };
                args.ptr(buf_addr).value(&params);
                g.launch(
                    "sgd_step_f32",
                    LaunchCfg::for_elements(w.numel()),
                    &mut args,
                )
            }
        }
    }
}
