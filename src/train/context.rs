//! What a run shares between its steps: the config, the device, the data, the metrics written
//! so far, the checkpoints, and the teachers met on the way (for the final report).

use super::checkpointer::Checkpointer;
use super::evaluate::{evaluate, Evaluation};
use super::metrics_log::{EpochMetrics, MetricsLog};
use super::plan::PlanStep;
use super::resume::ResumeState;
use super::setup::Splits;
use crate::config::Config;
use crate::device::Device;
use crate::distill::Compute;
use crate::error::Result;
use crate::models::Model;
use crate::nn::ParamStore;
use crate::optim::Sgd;
use crate::precision::Precision;

/// Everything a run shares between its steps.
pub(super) struct RunContext<'a> {
    pub cfg: &'a Config,
    pub device: &'a Device,
    /// The run's conv / GEMM precision (`precision`).
    pub precision: Precision,
    pub data: Splits,
    pub metrics: MetricsLog,
    /// One entry per finished epoch, of every step, in order.
    pub history: Vec<EpochMetrics>,
    pub checkpoints: Checkpointer,
    /// Teachers evaluated during the run: (architecture, parameters, test accuracy).
    pub teachers: Vec<(String, usize, f64)>,
}

impl<'a> RunContext<'a> {
    /// The device and precision every graph of the run computes with.
    pub fn compute(&self) -> Compute<'a> {
        Compute {
            device: self.device,
            precision: self.precision,
        }
    }

    /// Loss and accuracy of a model on the test split.
    pub fn eval(&self, model: &dyn Model, store: &mut ParamStore) -> Result<Evaluation> {
        let h = &self.cfg.hyperparameters;
        evaluate(
            model,
            store,
            &self.data.test,
            h.batch_size,
            h.max_eval_batches,
            self.compute(),
        )
    }

    /// The JSON sidecar of a checkpoint of `arch` written by `step` after `epoch`.
    pub fn sidecar_info(&self, step: &PlanStep, arch: &str, epoch: usize) -> serde_json::Value {
        serde_json::json!({
            "lit_engine_version": env!("CARGO_PKG_VERSION"),
            "architecture": arch,
            "dataset": self.cfg.models.dataset,
            "stage": step.kind.name(),
            "epoch": epoch,
            "seed": self.cfg.hyperparameters.seed,
            "device": self.device.name(),
            "metrics": self.history.last(),
            "config": self.cfg,
            "history": self.history,
            "events_file": self.metrics.events_file_name(),
        })
    }

    /// Commit the run state after `epoch` epochs of `step` (see [`Checkpointer::commit`]).
    #[allow(clippy::too_many_arguments)]
    pub fn commit_state(
        &mut self,
        step: &PlanStep,
        model: &dyn Model,
        store: &ParamStore,
        opt: &Sgd,
        resume: ResumeState,
        epoch: usize,
        at: &str,
    ) -> Result<String> {
        let info = self.sidecar_info(step, model.architecture(), epoch);
        self.checkpoints.commit(store, opt, info, resume, at)
    }
}
