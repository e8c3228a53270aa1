//! The end of every training step, one place for all methods: the loss, the count of correct
//! predictions and, when the loss is finite, the backward pass, the accumulation of the
//! gradients into the store and the method's update (an SGD step on the weights, or
//! differentiable quantization's step on its points); then the gradients are cleared. A
//! non-finite loss changes nothing (the trainer stops the run on it, with the last finite state
//! kept).
//!
//! On cuda and emu, with a [`NonFiniteGuard`] in the step's [`StepEnv`], the step never waits
//! for the device: the loss and the correct count stay in device scalars (a [`PendingStep`] the
//! trainer resolves a few steps later), the guard's device flag records a non-finite loss, the
//! backward pass always runs, and the update kernels read the flag and change nothing once it is
//! set (it stays set: every later update is skipped too, until the host has seen it). Without a
//! guard (cpu, or a caller that wants it) the step reads its loss first, as it always did.
//!
//! Under fp16 the step's [`LossScaler`] takes part: the backward pass starts from `scale · loss`,
//! the gradients are unscaled before the update, and a step with non-finite gradients skips its
//! update and backs the scale off (`loss_scale`). With a guard that holds a
//! [`DeviceLossScaler`] ([`NonFiniteGuard::attach_loss_scaler`]) all of it runs on the device
//! too, and the step's [`StepEnv::scaler`] is not touched: the device state is the scaler's,
//! read back with [`sync_loss_scaler`] when the run state is committed. Without one (cpu, or a
//! guard with no scaler attached) the step reads its loss and scales on the host.

use super::loss_scale::device::{step_overflowed, DeviceLossScaler};
use super::loss_scale::LossScaler;
use super::{Batch, Compute, StepOutcome};
use crate::autograd::{Graph, Var};
use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::loss::{accuracy, count_correct};
use crate::tensor::{IndexTensor, Tensor};

/// Full-precision values to put back into the store before the update: the quantized methods
/// run forward and backward at the quantized point, and the update applies those gradients to
/// the full-precision (shadow) weights. Empty for methods that run at the weights themselves.
pub type ShadowWeights = Vec<(String, Tensor)>;

/// What a training step runs with: where its graphs compute, under fp16 the run's loss scaler
/// (`None` for every other precision), and on cuda/emu the guard that lets the step run
/// without reading the device (`None`: the step reads its loss right away).
pub struct StepEnv<'a> {
    /// Device and precision of the step's graphs.
    pub at: Compute<'a>,
    /// fp16's dynamic loss scaling on the host (not used when the guard holds a
    /// [`DeviceLossScaler`]: see the module documentation).
    pub scaler: Option<&'a mut LossScaler>,
    /// The device-side record of non-finite losses (see the module documentation).
    pub guard: Option<&'a mut NonFiniteGuard>,
}

/// Mirrors `FlagParams` in `kernels/optim.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FlagParams {
    /// Elements to check.
    pub n: i32,
}

/// A one-element device flag, set (sticky) by the first non-finite loss a step observes; the
/// update kernels read it and skip their update while it is set. Under fp16 it may also hold the
/// loss scaler's device state.
pub struct NonFiniteGuard {
    flag: Tensor,
    scaler: Option<DeviceLossScaler>,
}

impl NonFiniteGuard {
    /// A cleared guard on `device`; `None` on cpu, which has no queue to keep the host out of.
    pub fn new(device: &Device) -> Result<Option<NonFiniteGuard>> {
        if device.is_cpu() {
            return Ok(None);
        }
        let flag = Tensor::zeros(&[1], device)?;
        Ok(Some(NonFiniteGuard { flag, scaler: None }))
    }

    /// [`NonFiniteGuard::new`], holding `scaler`'s state on the device when there is one (an
    /// upload: create it before capturing a step).
    pub fn with_loss_scaler(
        device: &Device,
        scaler: Option<&LossScaler>,
    ) -> Result<Option<NonFiniteGuard>> {
        let mut guard = NonFiniteGuard::new(device)?;
        if let (Some(g), Some(s)) = (guard.as_mut(), scaler) {
            g.attach_loss_scaler(DeviceLossScaler::new(s, device)?)?;
        }
        Ok(guard)
    }

    /// Scale the losses of the steps this guard takes part in on the device, with `scaler`'s
    /// state (replacing any scaler attached before).
    pub fn attach_loss_scaler(&mut self, scaler: DeviceLossScaler) -> Result<()> {
        if scaler.device() != self.flag.device() {
            return Err(Error::Device(format!(
                "NonFiniteGuard: the loss scaler is on {}, the flag on {}",
                scaler.device().name(),
                self.flag.device().name()
            )));
        }
        self.scaler = Some(scaler);
        Ok(())
    }

    /// The loss scaler's device state, when one is attached.
    pub fn loss_scaler(&self) -> Option<&DeviceLossScaler> {
        self.scaler.as_ref()
    }

    /// The flag (nonzero once a non-finite loss was seen), for an update's `skip` argument.
    pub fn flag(&self) -> &Tensor {
        &self.flag
    }

    /// Set the flag on the device when any value of `loss` is not finite (no host read).
    pub fn observe(&mut self, loss: &Tensor) -> Result<()> {
        let Device::Gpu(g) = loss.device().clone() else {
            return Err(Error::Device(
                "NonFiniteGuard::observe: the loss is on the cpu device".into(),
            ));
        };
        if self.flag.device() != loss.device() {
            return Err(Error::Device(format!(
                "NonFiniteGuard::observe: the loss is on {}, the flag on {}",
                loss.device().name(),
                self.flag.device().name()
            )));
        }
        let n = loss.numel();
        let params = FlagParams {
            n: i32::try_from(n).map_err(|_| Error::op_arg("NonFiniteGuard", "loss too large"))?,
        };
        let mut args = KernelArgs::new();
        args.ptr(g.addr(loss.buffer()))
            .ptr(g.addr_mut(self.flag.try_buffer_mut()?))
            .value(&params);
        g.launch("flag_non_finite_f32", LaunchCfg::for_elements(n), &mut args)
    }

    /// Whether a non-finite loss was seen (reads the device).
    pub fn is_set(&self) -> Result<bool> {
        Ok(self.flag.item()? != 0.0)
    }
}

/// Copy the device loss scaler's state of `guard` into `host` (reads the device: call when the
/// run state is committed, not per step); nothing to do without a guard or a device scaler.
pub fn sync_loss_scaler(
    guard: Option<&NonFiniteGuard>,
    host: &mut Option<LossScaler>,
) -> Result<()> {
    if let Some(scaler) = guard.and_then(NonFiniteGuard::loss_scaler) {
        *host = Some(scaler.read()?);
    }
    Ok(())
}

/// A step's outcome, possibly still on the device: [`PendingStep::resolve`] reads it (today's
/// [`StepOutcome`]). The trainer resolves a step a few steps after queueing it.
pub struct PendingStep(Pending);

enum Pending {
    Resolved(StepOutcome),
    OnDevice {
        loss: Tensor,
        correct: IndexTensor,
        examples: usize,
        /// The device loss scaler's state after the step (fp16), for `skipped`.
        scaler: Option<Tensor>,
    },
}

impl PendingStep {
    /// An outcome already on the host.
    pub fn resolved(outcome: StepOutcome) -> PendingStep {
        PendingStep(Pending::Resolved(outcome))
    }

    /// An outcome still on the device: the loss and the count of correct predictions.
    /// An outcome still on the device: the loss, the count of correct predictions and, under
    /// fp16, the device loss scaler's state after the step.
    pub fn on_device(
        loss: Tensor,
        correct: IndexTensor,
        scaler: Option<Tensor>,
        examples: usize,
    ) -> PendingStep {
        PendingStep(Pending::OnDevice {
            loss,
            correct,
            examples,
            scaler,
        })
    }

    /// The device tensors of an outcome still on the device (`None` once on the host): the
    /// loss, the correct count and the loss scaler's state (fp16).
    pub fn device_outcome(&self) -> Option<(&Tensor, &IndexTensor, Option<&Tensor>)> {
        match &self.0 {
            Pending::OnDevice {
                loss,
                correct,
                scaler,
                ..
            } => Some((loss, correct, scaler.as_ref())),
            Pending::Resolved(_) => None,
        }
    }

    /// True when [`PendingStep::resolve`] reads nothing from the device.
    pub fn is_resolved(&self) -> bool {
        matches!(self.0, Pending::Resolved(_))
    }

    /// The outcome, read from the device if it is still there (waits for the step to finish).
    pub fn resolve(self) -> Result<StepOutcome> {
        match self.0 {
            Pending::Resolved(out) => Ok(out),
            Pending::OnDevice {
                loss,
                correct,
                examples,
                scaler,
            } => Ok(StepOutcome {
                loss: loss.item()?,
                correct: correct_value(&correct)?,
                examples,
                skipped: match scaler {
                    Some(state) => step_overflowed(&state.to_vec()?),
                    None => false,
                },
            }),
        }
    }
}

/// The count of a one-element count tensor (a negative count would be a kernel bug: 0).
fn correct_value(count: &IndexTensor) -> Result<usize> {
    let v = count.to_vec()?;
    Ok(v.first().map_or(0, |&c| usize::try_from(c).unwrap_or(0)))
}

/// The update a method applies after the backward pass: given the store (gradients in place)
/// and, in a step that does not wait for its loss, the flag that must skip it on the device.
pub trait Update: FnOnce(&mut ParamStore, Option<&Tensor>) -> Result<()> {}
impl<F: FnOnce(&mut ParamStore, Option<&Tensor>) -> Result<()>> Update for F {}

/// Finish a step whose forward pass recorded `loss` and the student's `logits` on `g`: see the
/// module documentation. `shadow` is restored whether or not the loss was finite; `update`
/// runs after the restore, only for a finite loss (and, with a scaler, finite gradients) or,
/// with a guard, always, with the guard's flag to skip it on the device.
#[allow(clippy::too_many_arguments)]
pub fn finish_step(
    g: &mut Graph,
    loss: Var,
    logits: Var,
    batch: &Batch,
    store: &mut ParamStore,
    shadow: ShadowWeights,
    env: &mut StepEnv,
    update: impl Update,
) -> Result<PendingStep> {
    match (env.guard.as_deref_mut(), env.scaler.as_deref_mut()) {
        (Some(guard), None) => finish_queued(g, loss, logits, batch, store, shadow, guard, update),
        (Some(guard), Some(_)) if guard.scaler.is_some() => {
            finish_queued(g, loss, logits, batch, store, shadow, guard, update)
        }
        (_, scaler) => finish_now(g, loss, logits, batch, store, shadow, scaler, update),
    }
}

/// [`finish_step`] with no host read: everything (the loss scaling too, when the guard holds a
/// scaler) is queued on the device.
#[allow(clippy::too_many_arguments)]
fn finish_queued(
    g: &mut Graph,
    loss: Var,
    logits: Var,
    batch: &Batch,
    store: &mut ParamStore,
    shadow: ShadowWeights,
    guard: &mut NonFiniteGuard,
    update: impl Update,
) -> Result<PendingStep> {
    let value = g.value(loss).clone();
    guard.observe(&value)?;
    let correct = count_correct(g.value(logits), &batch.y)?;
    // A non-finite loss gives non-finite gradients; the flag keeps them out of every weight.
    let backward = match guard.scaler.as_mut() {
        Some(scaler) => scaler
            .begin(&value, &guard.flag)
            .and_then(|seed| g.backward_with(loss, Some(seed))),
        None => g.backward(loss),
    }
    .and_then(|()| g.accumulate_param_grads(store));
    g.release_tape();
    restore(store, shadow)?;
    backward?;
    let scaler = match guard.scaler.as_mut() {
        Some(scaler) => {
            scaler.unscale(store)?;
            update(store, Some(scaler.skip_flag()))?;
            scaler.update(&guard.flag)?;
            Some(scaler.snapshot()?)
        }
        None => {
            update(store, Some(&guard.flag))?;
            None
        }
    };
    store.zero_grads();
    Ok(PendingStep::on_device(value, correct, scaler, batch.len()))
}

/// [`finish_step`] reading the loss first (cpu, no guard, or fp16 scaled on the host).
#[allow(clippy::too_many_arguments)]
fn finish_now(
    g: &mut Graph,
    loss: Var,
    logits: Var,
    batch: &Batch,
    store: &mut ParamStore,
    shadow: ShadowWeights,
    scaler: Option<&mut LossScaler>,
    update: impl Update,
) -> Result<PendingStep> {
    let value = g.value(loss).item()?;
    let correct = accuracy(g.value(logits), &batch.y)?;
    let finite = value.is_finite();
    if finite {
        match &scaler {
            // d(scale · loss): the backward seeded with the scale instead of 1.
            Some(s) => {
                let seed = Tensor::full(g.value(loss).shape(), s.scale, g.device())?;
                g.backward_with(loss, Some(seed))?;
            }
            None => g.backward(loss)?,
        }
        g.accumulate_param_grads(store)?;
    }
    g.release_tape();
    restore(store, shadow)?;
    let mut skipped = false;
    if finite {
        if let Some(s) = scaler {
            skipped = !s.unscale(store)?;
            s.update(!skipped);
        }
        if !skipped {
            update(store, None)?;
        }
    }
    store.zero_grads();
    Ok(PendingStep::resolved(StepOutcome {
        loss: value,
        correct,
        examples: batch.len(),
        skipped,
    }))
}

/// Put full-precision values back.
pub fn restore(store: &mut ParamStore, saved: ShadowWeights) -> Result<()> {
    for (name, value) in saved {
        store.get_mut(&name)?.value = value;
    }
    Ok(())
}
