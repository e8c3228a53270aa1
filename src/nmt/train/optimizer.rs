//! A stage's optimizer with its learning-rate schedule: QD's SGD with the OpenNMT epoch
//! halving (SPEC §3.4), or LMA's Adam with the Noam rate set before every step (§6.2).

use crate::error::{Error, Result};
use crate::nmt::config::{OptimizerKind, StageSection};
use crate::nmt::step::NmtOptimizer;
use crate::optim::{Adam, OptimizerCheckpoint, Sgd};
use crate::train::schedule::{NoamSchedule, OnmtDecay};
use serde::{Deserialize, Serialize};

/// The optimizer of a stage: the step's [`NmtOptimizer`] (Adam carries its Noam schedule) and,
/// for SGD, the epoch halving rule.
pub struct StageOptimizer {
    /// What [`crate::nmt::step::train_step`] updates with.
    pub inner: NmtOptimizer,
    decay: Option<OnmtDecay>,
}

/// The schedule's state, kept in the run state so that a resumed run continues it exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleState {
    /// SGD's halving rule.
    OnmtDecay(OnmtDecay),
    /// Adam's Noam rate.
    Noam(NoamSchedule),
}

impl StageOptimizer {
    /// The optimizer of `stage` at its first step, for a model of width `model_size`.
    pub fn new(stage: &StageSection, model_size: usize) -> Result<Self> {
        Ok(match stage.optimizer {
            OptimizerKind::Sgd => StageOptimizer {
                inner: NmtOptimizer::Sgd(Sgd::new(stage.lr as f32, 0.0, 0.0, false)?),
                decay: Some(OnmtDecay::new(
                    stage.lr,
                    stage.lr_decay,
                    stage.start_decay_at,
                )),
            },
            OptimizerKind::Adam => StageOptimizer {
                inner: NmtOptimizer::AdamNoam {
                    adam: Adam::lma(stage.lr)?,
                    noam: NoamSchedule {
                        factor: stage.lr,
                        model_size,
                        warmup: stage.warmup_steps,
                        step: 0,
                    },
                },
                decay: None,
            },
        })
    }

    /// The rate of the coming epoch (SGD) or of the next step (Adam).
    pub fn lr(&self) -> f64 {
        match (&self.inner, &self.decay) {
            (_, Some(decay)) => decay.lr,
            (NmtOptimizer::AdamNoam { noam, .. }, None) => noam.lr_at(noam.step + 1),
            (NmtOptimizer::Sgd(sgd), None) => sgd.lr as f64,
        }
    }

    /// After the validation of epoch `epoch` (1-based) with perplexity `ppl`: SGD's halving
    /// rule sets the next epoch's rate; Noam ignores it (as LMA's step overwrote it).
    pub fn end_epoch(&mut self, epoch: usize, ppl: f64) {
        if let (NmtOptimizer::Sgd(sgd), Some(decay)) = (&mut self.inner, &mut self.decay) {
            sgd.set_lr(decay.observe(epoch, ppl) as f32);
        }
    }

    /// The optimizer's tensors, for the run state.
    pub fn checkpoint(&self) -> &dyn OptimizerCheckpoint {
        match &self.inner {
            NmtOptimizer::Sgd(sgd) => sgd,
            NmtOptimizer::AdamNoam { adam, .. } => adam,
        }
    }

    /// The same, to restore.
    pub fn checkpoint_mut(&mut self) -> &mut dyn OptimizerCheckpoint {
        match &mut self.inner {
            NmtOptimizer::Sgd(sgd) => sgd,
            NmtOptimizer::AdamNoam { adam, .. } => adam,
        }
    }

    /// The schedule's state.
    pub fn schedule(&self) -> Result<ScheduleState> {
        match (&self.inner, &self.decay) {
            (_, Some(d)) => Ok(ScheduleState::OnmtDecay(d.clone())),
            (NmtOptimizer::AdamNoam { noam, .. }, None) => Ok(ScheduleState::Noam(noam.clone())),
            (NmtOptimizer::Sgd(_), None) => Err(Error::Checkpoint("SGD without a schedule".into())),
        }
    }

    /// Continue `state` (from a run state); a schedule of the other optimizer is an error.
    pub fn restore_schedule(&mut self, state: ScheduleState) -> Result<()> {
        match (&mut self.inner, &mut self.decay, state) {
            (NmtOptimizer::Sgd(sgd), Some(d), ScheduleState::OnmtDecay(s)) => {
                sgd.set_lr(s.lr as f32);
                *d = s;
            }
            (NmtOptimizer::AdamNoam { noam, .. }, None, ScheduleState::Noam(s)) => *noam = s,
            _ => {
                return Err(Error::Checkpoint(
                    "the run state's schedule is of another optimizer than the config's".into(),
                ))
            }
        }
        Ok(())
    }
}
