//! [`LossScaler`] on the device (`kernels/loss_scale.cu`): the scaler's state lives in a small
//! device buffer and every step's scaling runs in kernels, so an fp16 step reads nothing on the
//! host and can be queued or captured as one graph. Per step:
//!
//! 1. [`DeviceLossScaler::begin`]: the backward seed is the scale read on the device (the loss
//!    times the scale, differentiated), the step's overflow is cleared and the optimizer's skip
//!    flag starts as the [`NonFiniteGuard`](crate::distill::step::NonFiniteGuard) flag;
//! 2. [`DeviceLossScaler::unscale`]: every gradient checked for an infinity or NaN (which sets
//!    the overflow and the skip flag) and multiplied by `1 / scale`, in one launch for up to
//!    [`UNSCALE_MAX_TENSORS`] gradients;
//! 3. the optimizer's update, given [`DeviceLossScaler::skip_flag`] (SGD's `step_unless`);
//! 4. [`DeviceLossScaler::update`]: [`LossScaler::update_with`]'s rule on the device.
//!
//! The host [`LossScaler`] is the specification (and the cpu device's path): the results are
//! the same bit for bit. [`DeviceLossScaler::read`] reads the state back, for the run state.

use super::{LossScaler, BACKOFF_FACTOR, GROWTH_FACTOR, GROWTH_INTERVAL, MAX_GROWTH_INTERVAL};
use crate::device::{Device, Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::tensor::Tensor;
use std::sync::Arc;

/// Where the scale is in the state buffer.
const SCALE_AT: usize = 0;
/// Where the good-step count is (a float holding an integer below 2^24).
const GOOD_STEPS_AT: usize = 1;
/// Where the current step's overflow is (1: its update was skipped for non-finite gradients).
const OVERFLOW_AT: usize = 2;
/// Floats in the state buffer.
pub const STATE_LEN: usize = 3;

/// Most gradients one `loss_scale_unscale_f32` launch covers: [`UnscaleParams`] stays within the
/// 4 KiB of kernel parameters. Mirrors `LOSS_SCALE_MAX_TENSORS` in `kernels/loss_scale.cu`.
pub const UNSCALE_MAX_TENSORS: usize = 128;

/// Mirrors `LossScaleBeginParams` in `kernels/loss_scale.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BeginParams {
    /// Elements of the loss and its seed.
    pub n: i32,
}

/// One gradient of an unscale launch; mirrors `LossScaleTensor` in `kernels/loss_scale.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct UnscaleTensor {
    /// Address of the gradient (unscaled in place).
    pub grad: u64,
    /// Index of its first element in the launch's concatenated index space.
    pub start: i32,
    /// Its elements (> 0).
    pub n: i32,
}

/// Mirrors `LossScaleUnscaleParams` in `kernels/loss_scale.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct UnscaleParams {
    /// Elements of all `count` gradients together.
    pub total: i32,
    /// Descriptors in use.
    pub count: i32,
    /// Address of the scaler's state.
    pub state: u64,
    /// Address of the optimizer's skip flag.
    pub skip: u64,
    /// The gradients (the first `count`), by ascending `start`.
    pub tensors: [UnscaleTensor; UNSCALE_MAX_TENSORS],
}

/// Mirrors `LossScaleUpdateParams` in `kernels/loss_scale.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct UpdateParams {
    /// Good steps before the scale grows (an integer at most [`MAX_GROWTH_INTERVAL`]).
    pub growth_interval: f32,
    /// [`GROWTH_FACTOR`].
    pub growth_factor: f32,
    /// [`BACKOFF_FACTOR`].
    pub backoff_factor: f32,
    /// Keeps the size a multiple of 8.
    pub pad: i32,
}

/// The scaler's state on a kernel device, and the skip flag its steps give the optimizer. Both
/// buffers are allocated once, so a captured step writes them in place at every replay.
pub struct DeviceLossScaler {
    state: Tensor,
    skip: Tensor,
    growth_interval: u32,
}

impl DeviceLossScaler {
    /// `scaler`'s state uploaded to `device` (cuda or emu), with PyTorch's growth interval.
    pub fn new(scaler: &LossScaler, device: &Device) -> Result<DeviceLossScaler> {
        DeviceLossScaler::with_growth_interval(scaler, GROWTH_INTERVAL, device)
    }

    /// [`DeviceLossScaler::new`] growing after `growth_interval` good steps (1 to
    /// [`MAX_GROWTH_INTERVAL`]); `scaler` must have fewer good steps than that.
    pub fn with_growth_interval(
        scaler: &LossScaler,
        growth_interval: u32,
        device: &Device,
    ) -> Result<DeviceLossScaler> {
        if device.is_cpu() {
            return Err(Error::Device(
                "DeviceLossScaler: the cpu device scales losses on the host (LossScaler)".into(),
            ));
        }
        if !(1..=MAX_GROWTH_INTERVAL).contains(&growth_interval) {
            return Err(Error::Config(format!(
                "loss scaling: growth interval {growth_interval} is not within 1..={MAX_GROWTH_INTERVAL}"
            )));
        }
        if scaler.good_steps >= growth_interval {
            return Err(Error::Checkpoint(format!(
                "loss scaling: {} good steps in the saved state, the growth interval is \
                 {growth_interval}; the state does not belong to this run",
                scaler.good_steps
            )));
        }
        let mut state = vec![0.0; STATE_LEN];
        state[SCALE_AT] = scaler.scale;
        // Exact: fewer than MAX_GROWTH_INTERVAL = 2^24.
        state[GOOD_STEPS_AT] = scaler.good_steps as f32;
        Ok(DeviceLossScaler {
            state: Tensor::from_vec(&[STATE_LEN], state, device)?,
            skip: Tensor::zeros(&[1], device)?,
            growth_interval,
        })
    }

    /// The device holding the state.
    pub fn device(&self) -> &Device {
        self.state.device()
    }

    /// The state, read from the device (waits for the queued steps).
    pub fn read(&self) -> Result<LossScaler> {
        decode(&self.state.to_vec()?)
    }

    /// The state buffer: scale, good steps, the last step's overflow (see [`decode`]).
    pub fn state(&self) -> &Tensor {
        &self.state
    }

    /// The flag the step's update must be skipped by (an optimizer's `skip` argument): set
    /// when the guard's flag was set at [`DeviceLossScaler::begin`] or a gradient overflowed.
    pub fn skip_flag(&self) -> &Tensor {
        &self.skip
    }

    /// Start a step whose loss is `loss`: returns the backward seed (the scale, in `loss`'s
    /// shape); clears the step's overflow and sets the skip flag to `guard` (one float, the
    /// `NonFiniteGuard` flag). Call after the guard has observed the loss.
    pub fn begin(&mut self, loss: &Tensor, guard: &Tensor) -> Result<Tensor> {
        let g = self.gpu_for(&[loss, guard], "begin")?;
        let n = loss.numel();
        let params = BeginParams {
            n: i32::try_from(n).map_err(|_| Error::op_arg("loss scaling", "loss too large"))?,
        };
        let mut seed = Tensor::zeros(loss.shape(), self.device())?;
        let mut args = KernelArgs::new();
        args.ptr(g.addr_mut(self.state.try_buffer_mut()?))
            .ptr(g.addr(guard.buffer()))
            .ptr(g.addr_mut(seed.try_buffer_mut()?))
            .ptr(g.addr_mut(self.skip.try_buffer_mut()?))
            .value(&params);
        g.launch(
            "loss_scale_begin_f32",
            LaunchCfg::for_elements(n),
            &mut args,
        )?;
        Ok(seed)
    }

    /// Check and unscale every gradient of `store` in place (all of them, as
    /// [`LossScaler::unscale`]); an infinity or NaN sets the overflow and the skip flag.
    pub fn unscale(&mut self, store: &mut ParamStore) -> Result<()> {
        let g = self.gpu_for(&[], "unscale")?;
        let mut p = self.unscale_params(&g)?;
        for (name, param) in store.iter_mut() {
            let Some(grad) = &mut param.grad else {
                continue;
            };
            if grad.device() != self.state.device() {
                return Err(Error::Device(format!(
                    "loss scaling: the gradient of `{name}` is on {}, the scaler on {}",
                    grad.device().name(),
                    self.state.device().name()
                )));
            }
            let n = grad.numel();
            if n == 0 {
                continue;
            }
            let n = i32::try_from(n).map_err(|_| {
                Error::op_arg(
                    "loss scaling",
                    format!("the gradient of `{name}` has {n} elements, above 2^31 - 1"),
                )
            })?;
            let full = p.count as usize == UNSCALE_MAX_TENSORS || p.total.checked_add(n).is_none();
            if full {
                launch_unscale(&g, &p)?;
                p = self.unscale_params(&g)?;
            }
            p.tensors[p.count as usize] = UnscaleTensor {
                grad: g.addr_mut(grad.try_buffer_mut()?),
                start: p.total,
                n,
            };
            p.count += 1;
            p.total += n;
        }
        if p.count > 0 {
            launch_unscale(&g, &p)?;
        }
        Ok(())
    }

    /// After the step's update: [`LossScaler::update_with`] on the device, with the step's
    /// overflow; nothing changes once `guard` (the `NonFiniteGuard` flag) is set.
    pub fn update(&mut self, guard: &Tensor) -> Result<()> {
        let g = self.gpu_for(&[guard], "update")?;
        let params = UpdateParams {
            // Exact: at most MAX_GROWTH_INTERVAL = 2^24.
            growth_interval: self.growth_interval as f32,
            growth_factor: GROWTH_FACTOR,
            backoff_factor: BACKOFF_FACTOR,
            pad: 0,
        };
        let mut args = KernelArgs::new();
        args.ptr(g.addr_mut(self.state.try_buffer_mut()?))
            .ptr(g.addr(guard.buffer()))
            .value(&params);
        g.launch(
            "loss_scale_update_f32",
            LaunchCfg::new((1, 1, 1), (1, 1, 1)),
            &mut args,
        )
    }

    /// A device copy of the state after the step, for its outcome ([`step_overflowed`]).
    pub fn snapshot(&self) -> Result<Tensor> {
        let device = self.device();
        Tensor::from_buffer(&[STATE_LEN], device.copy(self.state.buffer())?, device)
    }

    /// The kernel device, after checking that `others` are one-float flags or tensors on it.
    fn gpu_for(&self, others: &[&Tensor], what: &str) -> Result<Arc<Gpu>> {
        let Device::Gpu(g) = self.state.device() else {
            return Err(Error::Device(format!(
                "loss scaling {what}: the state is on the cpu device"
            )));
        };
        if let Some(t) = others.iter().find(|t| t.device() != self.state.device()) {
            return Err(Error::Device(format!(
                "loss scaling {what}: a tensor is on {}, the scaler on {}",
                t.device().name(),
                self.state.device().name()
            )));
        }
        Ok(g.clone())
    }

    fn unscale_params(&mut self, g: &Gpu) -> Result<UnscaleParams> {
        Ok(UnscaleParams {
            total: 0,
            count: 0,
            state: g.addr_mut(self.state.try_buffer_mut()?),
            skip: g.addr_mut(self.skip.try_buffer_mut()?),
            tensors: [UnscaleTensor::default(); UNSCALE_MAX_TENSORS],
        })
    }
}

fn launch_unscale(g: &Gpu, p: &UnscaleParams) -> Result<()> {
    let cfg = LaunchCfg::for_elements(p.total as usize);
    g.launch("loss_scale_unscale_f32", cfg, KernelArgs::new().value(p))
}

/// The scaler of a state buffer's values ([`DeviceLossScaler::state`], a snapshot).
pub fn decode(state: &[f32]) -> Result<LossScaler> {
    let &[scale, good_steps, _] = state else {
        return Err(Error::Shape(format!(
            "loss scaling: a state holds {STATE_LEN} values, got {}",
            state.len()
        )));
    };
    if !(good_steps >= 0.0 && good_steps <= MAX_GROWTH_INTERVAL as f32) {
        return Err(Error::Device(format!(
            "loss scaling: the device state holds {good_steps} good steps"
        )));
    }
    Ok(LossScaler {
        scale,
        good_steps: good_steps as u32,
    })
}

/// Whether the step a state snapshot was taken after skipped its update for overflow.
pub fn step_overflowed(state: &[f32]) -> bool {
    state.get(OVERFLOW_AT).is_some_and(|&o| o != 0.0)
}
