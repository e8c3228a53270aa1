//! The end of every training step, one place for all methods: read the loss, count the correct
//! predictions, and, when the loss is finite, back-propagate it, accumulate the gradients into
//! the store and apply the method's update (an SGD step on the weights, or differentiable
//! quantization's step on its points); then clear the gradients. A non-finite loss changes
//! nothing (the trainer stops the run on it, with the last finite state kept).
//!
//! Under fp16 the step's [`LossScaler`] takes part: the backward pass starts from
//! `scale · loss`, the gradients are unscaled before the update, and a step with non-finite
//! gradients skips its update and backs the scale off (`loss_scale`).

use super::loss_scale::LossScaler;
use super::{Batch, Compute, StepOutcome};
use crate::autograd::{Graph, Var};
use crate::error::Result;
use crate::nn::ParamStore;
use crate::ops::loss::accuracy;
use crate::tensor::Tensor;

/// Full-precision values to put back into the store before the update: the quantized methods
/// run forward and backward at the quantized point, and the update applies those gradients to
/// the full-precision (shadow) weights. Empty for methods that run at the weights themselves.
pub type ShadowWeights = Vec<(String, Tensor)>;

/// What a training step runs with: where its graphs compute and, under fp16, the run's loss
/// scaler (`None` for every other precision).
pub struct StepEnv<'a> {
    /// Device and precision of the step's graphs.
    pub at: Compute<'a>,
    /// fp16's dynamic loss scaling.
    pub scaler: Option<&'a mut LossScaler>,
}

/// Finish a step whose forward pass recorded `loss` and the student's `logits` on `g`: see the
/// module documentation. `shadow` is restored whether or not the loss was finite; `update`
/// runs only for a finite loss (and, with a `scaler`, finite gradients), after the restore.
#[allow(clippy::too_many_arguments)]
pub fn finish_step(
    g: &mut Graph,
    loss: Var,
    logits: Var,
    batch: &Batch,
    store: &mut ParamStore,
    shadow: ShadowWeights,
    scaler: Option<&mut LossScaler>,
    update: impl FnOnce(&mut ParamStore) -> Result<()>,
) -> Result<StepOutcome> {
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
    restore(store, shadow)?;
    let mut skipped = false;
    if finite {
        if let Some(s) = scaler {
            skipped = !s.unscale(store)?;
            s.update(!skipped);
        }
        if !skipped {
            update(store)?;
        }
    }
    store.zero_grads();
    Ok(StepOutcome {
        loss: value,
        correct,
        examples: batch.len(),
        skipped,
    })
}

/// Put full-precision values back.
pub fn restore(store: &mut ParamStore, saved: ShadowWeights) -> Result<()> {
    for (name, value) in saved {
        store.get_mut(&name)?.value = value;
    }
    Ok(())
}
