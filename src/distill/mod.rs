//! The distillation methods as training steps over one mini-batch: knowledge distillation
//! ([`kd`]), LIT's blockwise intermediate-representation training ([`lit`]), TAKD chains
//! ([`takd`]) and Polino et al.'s quantized distillation, differentiable quantization and the
//! post-training quantization baseline ([`qd`], on the uniform quantizer of [`quantize`]), and
//! the packed low-bit export of quantized students ([`export`]). [`method`] turns a stage of
//! the config into one [`method::Method`]; every method ends its step with
//! [`step::finish_step`]. The KD losses themselves are ops (`ops::kd`).
//!
//! Layering: `distill` sits below `train`. The trainer (`train`) runs the epochs, evaluation
//! and checkpoints around these steps and imports `distill`; `distill` never imports `train`.
//! What both need lives below both: the optimizer ([`crate::optim`]), the checkpoint format
//! ([`crate::checkpoint`]) and durable writes ([`crate::durable`]).

pub mod export;
pub mod kd;
pub mod lit;
pub mod loss_scale;
pub mod method;
pub mod qd;
pub mod quantize;
pub mod step;
pub mod takd;
pub mod teacher_cache;

use crate::autograd::Graph;
use crate::data;
use crate::device::Device;
use crate::models::Input;
use crate::precision::Precision;
use crate::tensor::IndexTensor;

/// What one training step reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepOutcome {
    /// The minimised loss (batch mean).
    pub loss: f32,
    /// Correctly classified examples of the batch (by the logits the step computed).
    pub correct: usize,
    /// Examples in the batch.
    pub examples: usize,
    /// The update was skipped: fp16 loss scaling found non-finite gradients (and backed off).
    pub skipped: bool,
}

/// Where a step's graphs compute: the device and the run's conv / GEMM precision (teacher and
/// evaluation passes use the same precision as the student's, as under autocast).
#[derive(Clone, Copy)]
pub struct Compute<'a> {
    /// The device of every tensor of the step.
    pub device: &'a Device,
    /// How conv / GEMM operands are rounded.
    pub precision: Precision,
}

impl<'a> Compute<'a> {
    /// Plain fp32 on `device`.
    pub fn fp32(device: &'a Device) -> Self {
        Compute {
            device,
            precision: Precision::Fp32,
        }
    }
    /// A recording graph (a training step's tape).
    pub fn graph(self) -> Graph {
        Graph::new(self.device).with_precision(self.precision)
    }
    /// A graph that keeps no tape (teacher passes, evaluation).
    pub fn no_grad(self) -> Graph {
        Graph::no_grad(self.device).with_precision(self.precision)
    }
}

/// A mini-batch: the inputs (floats or token ids) and the labels, on one device.
pub struct Batch {
    /// The inputs.
    pub x: data::Batch,
    /// The class labels, one per example.
    pub y: IndexTensor,
    /// The training-set index of each example, when the batch is a training batch (a cached
    /// teacher looks its logits up by them).
    pub indices: Option<Vec<usize>>,
}

impl Batch {
    /// Examples in the batch.
    pub fn len(&self) -> usize {
        self.y.numel()
    }
    /// True for a batch without examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The batch's input for a model on the tape `g`: floats become a graph constant, token ids are
/// passed by reference.
pub fn model_input<'a>(g: &mut Graph, batch: &'a Batch) -> Input<'a> {
    Input::from_batch(g, &batch.x)
}
