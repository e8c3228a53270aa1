//! One training epoch and one perplexity evaluation of a translation model.

use super::optimizer::StageOptimizer;
use crate::autograd::Graph;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::models::nmt_lstm::QdNmt;
use crate::nmt::batches::{eval_batches, train_batches, Batch, BatchSize, Example};
use crate::nmt::bleu::perplexity;
use crate::nmt::vocab::PAD_ID;
use crate::nn::ParamStore;
use crate::ops::token_loss::{token_loss, token_loss_forward, TokenLoss};
use crate::optim::clip_grad_norm;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// A model with its weights.
pub struct Model {
    /// The layers.
    pub net: QdNmt,
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
fn teacher_logp(teacher: &Model, batch: &Batch, dev: &Device) -> Result<Tensor> {
    let mut g = Graph::no_grad(dev);
    let out = teacher.net.forward(
        &mut g,
        &teacher.store,
        &batch.src_tensor(dev)?,
        &lengths(batch),
        &batch.decoder_input(dev)?,
        false,
        &mut Rng::new(0),
    )?;
    Ok(g.value(out.logp).clone())
}

/// What one training step needs besides the batch.
pub struct StepSetup<'a> {
    /// The stage's loss (NLL or word-level KD).
    pub loss: TokenLoss,
    /// The teacher of word-level KD.
    pub teacher: Option<&'a Model>,
    /// Global gradient-norm clip (0: none).
    pub max_grad_norm: f64,
}

/// One step: forward (train mode) → token loss → backward → clip → optimizer. Returns
/// `[nll_sum, kl_sum, loss]`.
fn train_step(
    model: &mut Model,
    batch: &Batch,
    setup: &StepSetup,
    opt: &mut StageOptimizer,
    dropout_rng: &mut Rng,
    dev: &Device,
) -> Result<Vec<f32>> {
    let t_logp = match setup.teacher {
        Some(t) => Some(teacher_logp(t, batch, dev)?),
        None => None,
    };
    model.store.zero_grads();
    let mut g = Graph::new(dev);
    let out = model.net.forward(
        &mut g,
        &model.store,
        &batch.src_tensor(dev)?,
        &lengths(batch),
        &batch.decoder_input(dev)?,
        true,
        dropout_rng,
    )?;
    let targets = batch.targets(dev)?;
    let (loss, sums) = token_loss(&mut g, out.logp, &targets, t_logp.as_ref(), setup.loss)?;
    g.backward(loss)?;
    g.accumulate_param_grads(&mut model.store)?;
    g.release_tape();
    if setup.max_grad_norm > 0.0 {
        clip_grad_norm(&mut model.store, setup.max_grad_norm)?;
    }
    opt.step(&mut model.store)?;
    sums.to_vec()
}

/// Train one epoch over `examples` in the seed's batch order (drawn from `shuffle_rng`).
/// `stop` is polled before each batch; a `Some(signal)` ends the epoch with
/// [`Error::Interrupted`].
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    model: &mut Model,
    examples: &[Example],
    size: BatchSize,
    setup: &StepSetup,
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
        let sums = train_step(model, &batch, setup, opt, dropout_rng, dev)?;
        let loss = sums[2] as f64 * batch.batch_size() as f64;
        if !loss.is_finite() {
            return Err(Error::Numeric(format!(
                "the training loss is {loss} at step {} of the epoch",
                totals.batches + 1
            )));
        }
        totals.nll += sums[0] as f64;
        totals.loss += loss;
        totals.tokens += batch.target_tokens() as u64;
        totals.batches += 1;
    }
    Ok(totals)
}

/// Plain-NLL totals of `model` on `examples` in eval mode (the seed's validation: sorted
/// batches, no dropout, no KD).
pub fn evaluate(
    model: &Model,
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
            &model.store,
            &batch.src_tensor(dev)?,
            &lengths(&batch),
            &batch.decoder_input(dev)?,
            false,
            &mut Rng::new(0),
        )?;
        let sums = token_loss_forward(g.value(out.logp), &batch.targets(dev)?, None, &loss)?
            .sums
            .to_vec()?;
        totals.nll += sums[0] as f64;
        totals.loss += sums[0] as f64;
        totals.tokens += batch.target_tokens() as u64;
        totals.batches += 1;
    }
    Ok(totals)
}
