//! One training epoch and one perplexity evaluation of a translation model.

use super::optimizer::StageOptimizer;
use crate::autograd::Graph;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nmt::batches::{eval_batches, train_batches, Batch, BatchSize, Example};
use crate::nmt::bleu::perplexity;
use crate::nmt::model::NmtModel;
use crate::nmt::quantize::QdBatchQuantizer;
use crate::nmt::step::{train_step_quantized, StepConfig};
use crate::nmt::vocab::PAD_ID;
use crate::nn::ParamStore;
use crate::ops::token_loss::{token_loss_forward, TokenLoss};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// A model with its weights.
pub struct Model {
    /// The layers.
    pub net: NmtModel,
    /// The weights.
    pub store: ParamStore,
}

/// The summed statistics of an epoch or an evaluation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Σ NLL over the non-padding targets.
    pub nll: f64,
    /// Σ of the stage's loss × B (the seed's "loss" statistic: the combined loss under KD).
    pub loss: f64,
    /// Non-padding target tokens (words and `</s>`).
    pub tokens: u64,
    /// Of those, the ones the model's argmax predicts (training only).
    pub correct: u64,
    /// Batches (optimizer steps when training).
    pub batches: usize,
}

impl Totals {
    /// `exp(min(nll/tokens, 100))`.
    pub fn ppl(&self) -> Result<f64> {
        perplexity(self.nll, self.tokens)
    }
}

fn lengths(batch: &Batch) -> Vec<usize> {
    batch.src_lengths.iter().map(|&n| n as usize).collect()
}

/// The teacher's `logp` `[T−1, B, V]` of `batch` in eval mode (no dropout, no tape).
fn teacher_logp(teacher: &mut Model, batch: &Batch, dev: &Device) -> Result<Tensor> {
    let mut g = Graph::no_grad(dev);
    let out = teacher.net.forward(
        &mut g,
        &mut teacher.store,
        &batch.src_tensor(dev)?,
        &lengths(batch),
        &batch.decoder_input(dev)?,
        false,
        &mut Rng::new(0),
    )?;
    Ok(g.value(out.logp()).clone())
}

/// What one training step needs besides the batch.
pub struct StepSetup<'a> {
    /// The step's loss and clipping.
    pub step: StepConfig,
    /// The teacher of word-level KD.
    pub teacher: Option<&'a mut Model>,
    /// Quantized distillation: forward and backward at the quantized weights.
    pub quantizer: Option<QdBatchQuantizer>,
}

/// Train one epoch over `examples` in the seed's batch order (drawn from `shuffle_rng`).
/// `stop` is polled before each batch; a `Some(signal)` ends the epoch with
/// [`Error::Interrupted`].
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    model: &mut Model,
    examples: &[Example],
    size: BatchSize,
    setup: &mut StepSetup,
    opt: &mut StageOptimizer,
    shuffle_rng: &mut Rng,
    dropout_rng: &mut Rng,
    dev: &Device,
    stop: &dyn Fn() -> Option<i32>,
) -> Result<Totals> {
    let mut totals = Totals::default();
    for ids in train_batches(examples, size, shuffle_rng)? {
        if let Some(signal) = stop() {
            return Err(Error::Interrupted {
                signal,
                message: "stopped inside an epoch".into(),
            });
        }
        let batch = Batch::new(examples, &ids)?;
        let t_logp = match setup.teacher.as_deref_mut() {
            Some(t) => Some(teacher_logp(t, &batch, dev)?),
            None => None,
        };
        let stats = train_step_quantized(
            &model.net,
            &mut model.store,
            &mut opt.inner,
            &setup.step,
            &batch,
            t_logp.as_ref(),
            dropout_rng,
            None,
            setup.quantizer.as_mut(),
        )?
        .read()?;
        if !stats.loss_sum.is_finite() {
            return Err(Error::Numeric(format!(
                "the training loss is {} at step {} of the epoch",
                stats.loss_sum,
                totals.batches + 1
            )));
        }
        totals.nll += stats.nll_sum;
        totals.loss += stats.loss_sum;
        totals.tokens += stats.target_words as u64;
        totals.correct += stats.correct as u64;
        totals.batches += 1;
    }
    Ok(totals)
}

/// Plain-NLL totals of `model` on `examples` in eval mode (the seed's validation: sorted
/// batches, no dropout, no KD).
pub fn evaluate(
    model: &mut Model,
    examples: &[Example],
    size: BatchSize,
    dev: &Device,
) -> Result<Totals> {
    let mut totals = Totals::default();
    let loss = TokenLoss::nll(PAD_ID);
    for ids in eval_batches(examples, size, true)? {
        let batch = Batch::new(examples, &ids)?;
        let mut g = Graph::no_grad(dev);
        let out = model.net.forward(
            &mut g,
            &mut model.store,
            &batch.src_tensor(dev)?,
            &lengths(&batch),
            &batch.decoder_input(dev)?,
            false,
            &mut Rng::new(0),
        )?;
        let sums = token_loss_forward(g.value(out.logp()), &batch.targets(dev)?, None, &loss)?
            .sums
            .to_vec()?;
        totals.nll += sums[0] as f64;
        totals.loss += sums[0] as f64;
        totals.tokens += batch.target_tokens() as u64;
        totals.batches += 1;
    }
    Ok(totals)
}
