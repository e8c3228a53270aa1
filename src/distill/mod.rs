//! The distillation methods as training steps over one mini-batch: knowledge distillation
//! ([`kd`]), LIT's blockwise intermediate-representation training ([`lit`]), TAKD chains
//! ([`takd`]) and Polino et al.'s quantized distillation, differentiable quantization and the
//! post-training quantization baseline ([`qd`], on the uniform quantizer of [`quantize`]), and
//! the packed low-bit export of quantized students ([`export`]).
//! The trainer (`train::trainer`) runs the epochs, evaluation and checkpoints around them; the
//! KD losses themselves are ops (`ops::kd`).

pub mod export;
pub mod kd;
pub mod lit;
pub mod qd;
pub mod quantize;
pub mod takd;

use crate::autograd::Graph;
use crate::data;
use crate::models::Input;
use crate::tensor::IndexTensor;

/// What one training step reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepOutcome {
    /// The minimised loss (batch mean).
    pub loss: f32,
    /// Correctly classified examples of the batch (by the logits the step computed).
    pub correct: usize,
    pub examples: usize,
}

/// A mini-batch: the inputs (floats or token ids) and the labels, on one device.
pub struct Batch {
    pub x: data::Batch,
    pub y: IndexTensor,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.y.numel()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The batch's input for a model (floats as a graph constant, ids by reference).
pub fn model_input<'a>(g: &mut Graph, batch: &'a Batch) -> Input<'a> {
    batch.x.input(g)
}
