//! One translation training step, as the seeds' trainers run it (SPEC-TRANSLATION §3.4, §6.2):
//!
//! ```text
//! zero grads → forward on tgt[:-1] → TokenLoss vs tgt[1:] (nll, or word KD 0.3/0.7 against the
//! teacher's logp) → backward → [clip the total norm (QD: 5)] → SGD(lr) | Adam(Noam lr at step+1)
//! ```
//!
//! The statistics stay on the device ([`StepStats`]); [`StepStats::read`] brings them to the
//! host when the caller wants them (a log line), so a step queues without waiting.

use super::batches::Batch;
use super::model::{NmtForward, NmtModel};
use super::quantize::QdBatchQuantizer;
use super::vocab::PAD_ID;
use crate::autograd::Graph;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::loss::count_correct;
use crate::ops::token_loss::{token_loss, TokenLoss};
use crate::optim::adam::Adam;
use crate::optim::clip::clip_grad_norm;
use crate::optim::Sgd;
use crate::rng::Rng;
use crate::tensor::{IndexTensor, Tensor};
use crate::train::schedule::NoamSchedule;

/// The optimizer of a translation run.
#[derive(Debug)]
pub enum NmtOptimizer {
    /// QD: plain SGD at the schedule's rate.
    Sgd(Sgd),
    /// LMA: torch-1.0.1 Adam, its rate set by the Noam schedule before every step.
    AdamNoam {
        /// The optimizer and its moments.
        adam: Adam,
        /// Counts the steps taken (the next step is `noam.step + 1`).
        noam: NoamSchedule,
    },
}

impl NmtOptimizer {
    /// One update of every trainable parameter with a gradient; returns the rate it used.
    fn step(&mut self, store: &mut ParamStore) -> Result<f64> {
        match self {
            NmtOptimizer::Sgd(sgd) => {
                sgd.step(store)?;
                Ok(sgd.lr as f64)
            }
            NmtOptimizer::AdamNoam { adam, noam } => {
                let lr = noam.advance();
                adam.set_lr(lr);
                adam.step(store)?;
                Ok(lr)
            }
        }
    }
}

/// What a step optimises, besides the optimizer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepConfig {
    /// NLL or word-level KD (the KD needs the teacher's log-probabilities).
    pub loss: TokenLoss,
    /// Clip the gradients' total norm to this before the update (QD: 5; LMA: none).
    pub max_grad_norm: Option<f64>,
    /// Record per-element layer observations (LMA segment indices) for checks; off in training.
    pub detail: bool,
}

/// What the step saw after the backward pass, before clipping and the update (for checks such
/// as the golden `nmt_step` protocol).
pub struct StepView<'a> {
    /// The step's tape: forward values, layer statistics.
    pub graph: &'a Graph,
    /// The forward's outputs.
    pub forward: &'a NmtForward,
    /// The parameters with their unclipped gradients.
    pub store: &'a ParamStore,
}

/// Called by [`train_step`] between the backward pass and the update.
pub type StepObserver<'a> = &'a mut dyn FnMut(&StepView) -> Result<()>;

/// A step's statistics, on the model's device.
#[derive(Debug)]
pub struct StepStats {
    /// `[nll_sum, kl_sum, loss]` (see [`crate::ops::token_loss`]).
    pub sums: Tensor,
    /// `[total norm, clip coefficient]` before clipping, when clipping is on.
    pub clip: Option<Tensor>,
    /// Non-`<blank>` targets whose argmax is right, `[1]`.
    pub correct: IndexTensor,
    /// Non-`<blank>` targets (words and `</s>`).
    pub target_words: usize,
    /// Sentences (the loss normaliser B).
    pub sentences: usize,
    /// The learning rate of the update.
    pub lr: f64,
    /// The loss weights, to turn the sums into the loss sum.
    pub loss: TokenLoss,
}

/// [`StepStats`] on the host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepNumbers {
    /// `nll_weight·nll_sum + kl_weight·kl_sum` (the loss before the division by B).
    pub loss_sum: f64,
    /// NLL over the non-`<blank>` targets.
    pub nll_sum: f64,
    /// KL to the teacher over all positions (0 without a teacher).
    pub kl_sum: f64,
    /// The loss that was back-propagated (`loss_sum / B`).
    pub loss: f64,
    /// See [`StepStats::target_words`].
    pub target_words: usize,
    /// See [`StepStats::correct`].
    pub correct: usize,
    /// The total gradient norm before clipping (when clipping is on).
    pub grad_norm: Option<f64>,
    /// The factor the gradients were multiplied by (1 when not clipped).
    pub clip_coef: Option<f64>,
    /// See [`StepStats::lr`].
    pub lr: f64,
}

impl StepStats {
    /// Read the statistics to the host (a sync on cuda).
    pub fn read(&self) -> Result<StepNumbers> {
        let s = self.sums.to_vec()?;
        let (nll_sum, kl_sum) = (s[0] as f64, s[1] as f64);
        let clip = self.clip.as_ref().map(Tensor::to_vec).transpose()?;
        Ok(StepNumbers {
            loss_sum: self.loss.nll_weight as f64 * nll_sum + self.loss.kl_weight as f64 * kl_sum,
            nll_sum,
            kl_sum,
            loss: s[2] as f64,
            target_words: self.target_words,
            correct: self.correct.to_vec()?[0].max(0) as usize,
            grad_norm: clip.as_ref().map(|c| c[0] as f64),
            clip_coef: clip.as_ref().map(|c| c[1].min(1.0) as f64),
            lr: self.lr,
        })
    }
}

/// One training step of `model` on `batch`: see the module doc. `teacher_logp` `[T−1, B, V]` is
/// required by a KD loss. `observe`, when given, sees the step after the backward pass.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &NmtModel,
    store: &mut ParamStore,
    optimizer: &mut NmtOptimizer,
    config: &StepConfig,
    batch: &Batch,
    teacher_logp: Option<&Tensor>,
    rng: &mut Rng,
    observe: Option<StepObserver>,
) -> Result<StepStats> {
    train_step_quantized(
        model,
        store,
        optimizer,
        config,
        batch,
        teacher_logp,
        rng,
        observe,
        None,
    )
}

/// [`train_step`] for quantized distillation (SPEC-TRANSLATION §3.5): with a `quantizer`, the
/// forward and backward run at the quantized weights, the full-precision weights come back, and
/// the clip and update apply the quantized-point gradient to them (straight-through).
#[allow(clippy::too_many_arguments)]
pub fn train_step_quantized(
    model: &NmtModel,
    store: &mut ParamStore,
    optimizer: &mut NmtOptimizer,
    config: &StepConfig,
    batch: &Batch,
    teacher_logp: Option<&Tensor>,
    rng: &mut Rng,
    observe: Option<StepObserver>,
    quantizer: Option<&mut QdBatchQuantizer>,
) -> Result<StepStats> {
    let device = store
        .iter()
        .next()
        .map(|(_, p)| p.value.device().clone())
        .ok_or_else(|| Error::op_arg("train_step", "the model has no parameters"))?;
    let src = batch.src_tensor(&device)?;
    let tgt_in = batch.decoder_input(&device)?;
    let targets = batch.targets(&device)?;
    let lengths: Vec<usize> = batch
        .src_lengths
        .iter()
        .map(|&n| n.max(0) as usize)
        .collect();
    // `<blank>` targets become -1, which never counts as correct.
    let words: Vec<i32> = batch.tgt[batch.batch_size()..]
        .iter()
        .map(|&y| if y == PAD_ID { -1 } else { y })
        .collect();
    let words = IndexTensor::from_vec(&[words.len()], words, &device)?;

    store.zero_grads();
    let forward_backward = |store: &mut ParamStore| -> Result<(Tensor, IndexTensor)> {
        let mut g = Graph::new(&device);
        if config.detail {
            g = g.with_detail();
        }
        let forward = model.forward(&mut g, store, &src, &lengths, &tgt_in, true, rng)?;
        let logp = forward.logp();
        let (loss, sums) = token_loss(&mut g, logp, &targets, teacher_logp, config.loss)?;
        let flat = g.value(logp).reshape(&[words.numel(), model.tgt_vocab()])?;
        let correct = count_correct(&flat, &words)?;
        g.backward(loss)?;
        g.accumulate_param_grads(store)?;
        if let Some(observe) = observe {
            observe(&StepView {
                graph: &g,
                forward: &forward,
                store,
            })?;
        }
        Ok((sums, correct))
    };
    let (sums, correct) = match quantizer {
        Some(q) => q.run(store, forward_backward)?,
        None => forward_backward(store)?,
    };
    let clip = config
        .max_grad_norm
        .map(|max| clip_grad_norm(store, max))
        .transpose()?;
    let lr = optimizer.step(store)?;
    Ok(StepStats {
        sums,
        clip,
        correct,
        target_words: batch.target_tokens(),
        sentences: batch.batch_size(),
        lr,
        loss: config.loss,
    })
}
