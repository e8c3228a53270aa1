//! The end of every training step, one place for all methods: read the loss, count the correct
//! predictions, and, when the loss is finite, back-propagate it, accumulate the gradients into
//! the store and apply the method's update (an SGD step on the weights, or differentiable
//! quantization's step on its points); then clear the gradients. A non-finite loss changes
//! nothing (the trainer stops the run on it, with the last finite state kept).

use super::{Batch, StepOutcome};
use crate::autograd::{Graph, Var};
use crate::error::Result;
use crate::nn::ParamStore;
use crate::ops::loss::accuracy;
use crate::tensor::Tensor;

/// Full-precision values to put back into the store before the update: the quantized methods
/// run forward and backward at the quantized point, and the update applies those gradients to
/// the full-precision (shadow) weights. Empty for methods that run at the weights themselves.
pub type ShadowWeights = Vec<(String, Tensor)>;

/// Finish a step whose forward pass recorded `loss` and the student's `logits` on `g`: see the
/// module documentation. `shadow` is restored whether or not the loss was finite; `update`
/// runs only for a finite loss, after the restore.
pub fn finish_step(
    g: &mut Graph,
    loss: Var,
    logits: Var,
    batch: &Batch,
    store: &mut ParamStore,
    shadow: ShadowWeights,
    update: impl FnOnce(&mut ParamStore) -> Result<()>,
) -> Result<StepOutcome> {
    let value = g.value(loss).item()?;
    let correct = accuracy(g.value(logits), &batch.y)?;
    let finite = value.is_finite();
    if finite {
        g.backward(loss)?;
        g.accumulate_param_grads(store)?;
    }
    restore(store, shadow)?;
    if finite {
        update(store)?;
    }
    store.zero_grads();
    Ok(StepOutcome {
        loss: value,
        correct,
        examples: batch.len(),
    })
}

/// Put full-precision values back.
pub fn restore(store: &mut ParamStore, saved: ShadowWeights) -> Result<()> {
    for (name, value) in saved {
        store.get_mut(&name)?.value = value;
    }
    Ok(())
}
