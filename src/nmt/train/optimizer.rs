//! A stage's optimizer with its learning-rate schedule: QD's SGD with the OpenNMT epoch
//! halving (SPEC §3.4), or LMA's Adam with the Noam rate set before every step (§6.2).

use crate::error::Result;
use crate::nmt::config::{OptimizerKind, StageSection};
use crate::nn::ParamStore;
use crate::optim::{Adam, OptimizerCheckpoint, Sgd};
use crate::train::schedule::{NoamSchedule, OnmtDecay};
use serde::{Deserialize, Serialize};

/// The optimizer of a stage.
pub enum StageOptimizer {
    /// Plain SGD (no momentum, no decay) and its epoch schedule.
    Sgd(Sgd, OnmtDecay),
    /// Adam (0.9, 0.98, 1e-9) and its per-step schedule.
    Adam(Adam, NoamSchedule),
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
    /// The optimizer of `stage` at its first step, for a model of width `rnn_size`.
    pub fn new(stage: &StageSection, rnn_size: usize) -> Result<Self> {
        Ok(match stage.optimizer {
            OptimizerKind::Sgd => StageOptimizer::Sgd(
                Sgd::new(stage.lr as f32, 0.0, 0.0, false)?,
                OnmtDecay::new(stage.lr, stage.lr_decay, stage.start_decay_at),
            ),
            OptimizerKind::Adam => StageOptimizer::Adam(
                Adam::lma(stage.lr)?,
                NoamSchedule {
                    factor: stage.lr,
                    model_size: rnn_size,
                    warmup: stage.warmup_steps,
                    step: 0,
                },
            ),
        })
    }

    /// One update of `store` with its gradients (Adam: the Noam rate of this step first).
    pub fn step(&mut self, store: &mut ParamStore) -> Result<()> {
        match self {
            StageOptimizer::Sgd(sgd, _) => sgd.step(store),
            StageOptimizer::Adam(adam, noam) => {
                adam.set_lr(noam.advance());
                adam.step(store)
            }
        }
    }

    /// The rate of the coming epoch (SGD) or of the last step (Adam).
    pub fn lr(&self) -> f64 {
        match self {
            StageOptimizer::Sgd(_, decay) => decay.lr,
            StageOptimizer::Adam(_, noam) => noam.lr_at(noam.step.max(1)),
        }
    }

    /// After the validation of epoch `epoch` (1-based) with perplexity `ppl`: SGD's halving
    /// rule sets the next epoch's rate; Noam ignores it (as LMA's step overwrote it).
    pub fn end_epoch(&mut self, epoch: usize, ppl: f64) {
        if let StageOptimizer::Sgd(sgd, decay) = self {
            let lr = decay.observe(epoch, ppl);
            sgd.set_lr(lr as f32);
        }
    }

    /// The optimizer's tensors, for the run state.
    pub fn checkpoint(&self) -> &dyn OptimizerCheckpoint {
        match self {
            StageOptimizer::Sgd(sgd, _) => sgd,
            StageOptimizer::Adam(adam, _) => adam,
        }
    }

    /// The same, to restore.
    pub fn checkpoint_mut(&mut self) -> &mut dyn OptimizerCheckpoint {
        match self {
            StageOptimizer::Sgd(sgd, _) => sgd,
            StageOptimizer::Adam(adam, _) => adam,
        }
    }

    /// The schedule's state.
    pub fn schedule(&self) -> ScheduleState {
        match self {
            StageOptimizer::Sgd(_, d) => ScheduleState::OnmtDecay(d.clone()),
            StageOptimizer::Adam(_, n) => ScheduleState::Noam(n.clone()),
        }
    }

    /// Continue `state` (from a run state); a schedule of the other optimizer is an error.
    pub fn restore_schedule(&mut self, state: ScheduleState) -> Result<()> {
        match (self, state) {
            (StageOptimizer::Sgd(sgd, d), ScheduleState::OnmtDecay(s)) => {
                sgd.set_lr(s.lr as f32);
                *d = s;
            }
            (StageOptimizer::Adam(_, n), ScheduleState::Noam(s)) => *n = s,
            _ => {
                return Err(crate::error::Error::Checkpoint(
                    "the run state's schedule is of another optimizer than the config's".into(),
                ))
            }
        }
        Ok(())
    }
}
