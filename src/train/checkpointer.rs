//! Every file a run writes about its model, in one place: the best checkpoint of the student
//! (and its packed low-bit export), the committed run state (with its `-last` copies, one unit:
//! see `run_state`), and the final weights of a teacher or TAKD assistant. Each write is
//! durable on its own (`crate::durable`); the order of the writes is part of the contract the
//! fault-injection tests (`tests/run_safety.rs`) check.

use super::guards::check_finite;
use super::resume::{ResumeState, Resumed};
use super::run_state::{RunState, Snapshot};
use crate::checkpoint;
use crate::config::Params;
use crate::distill::export::save_packed;
use crate::distill::method::Method;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::optim::Sgd;
use std::path::{Path, PathBuf};

/// The outputs of a run and what its committed state holds.
pub struct Checkpointer {
    /// `<save_model_name>`: the best epoch of the last student stage, deployable.
    best_path: PathBuf,
    /// `<stem>-last.safetensors`: the user-facing copy of the committed state's weights.
    last_path: PathBuf,
    /// `<stem>-packed.safetensors`: the packed export of a quantized best student.
    packed_path: PathBuf,
    state: RunState,
    /// What the committed state holds, for messages ("generation 3 … (epoch 2/4 of `kd`)").
    committed: Option<String>,
}

impl Checkpointer {
    /// The checkpoints of `params`, with the run state beside the `-last` copy. Generations
    /// other than the committed one (left by a run that died mid-commit) are removed.
    pub fn open(params: &Params) -> Checkpointer {
        let last_path = params.checkpoint_with_suffix("-last");
        let state = RunState::open(&last_path);
        state.remove_other_generations();
        Checkpointer {
            best_path: params.checkpoint_path(),
            last_path,
            packed_path: params.checkpoint_with_suffix("-packed"),
            state,
            committed: None,
        }
    }

    /// The run state (read by `--resume`, and where the event file's name is recorded).
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// Continue from `resumed` (described as `description`): the user-facing copies are
    /// published again, in case a kill came between the commit and their publication.
    pub fn resume_from(&mut self, resumed: &Resumed, description: String) -> Result<()> {
        self.state.publish(resumed.generation)?;
        self.committed = Some(description);
        Ok(())
    }

    /// Commit `store`, the optimizer, and the sidecar `info` with the `resume` record as the
    /// next generation of the run state, after checking that every parameter is finite; `at`
    /// says where the run is. Returns a sentence saying what was saved and how to continue.
    pub fn commit(
        &mut self,
        store: &ParamStore,
        optimizer: &Sgd,
        mut info: serde_json::Value,
        resume: ResumeState,
        at: &str,
    ) -> Result<String> {
        if let Err(param) = check_finite(store) {
            return Err(Error::Numeric(format!(
                "parameter `{param}` is non-finite at {at}; not saved, {}",
                self.kept_state()
            )));
        }
        info["resume"] = serde_json::to_value(resume)
            .map_err(|e| Error::Encode(format!("resume state: {e}")))?;
        let generation = self.state.commit(Snapshot {
            store,
            optimizer,
            info,
        })?;
        let what = format!("generation {generation} of the run state ({at})");
        self.committed = Some(what.clone());
        Ok(format!(
            "saved {what} in {}; continue with --resume",
            self.state.dir().display()
        ))
    }

    /// Save the student as the new best: its packed export first (quantized methods), then the
    /// deployable checkpoint, so that both hold the same student whenever the best changes.
    pub fn save_best(
        &self,
        store: &ParamStore,
        method: &dyn Method,
        info: serde_json::Value,
    ) -> Result<()> {
        if let Some(specs) = method.pack_specs() {
            save_packed(&self.packed_path, store, &specs, info.clone())?;
        }
        match method.deployable(store)? {
            Some(q) => checkpoint::save(&self.best_path, &q, info),
            None => checkpoint::save(&self.best_path, store, info),
        }
    }

    /// Save an intermediate model (teacher, TAKD assistant) at the end of its step.
    pub fn save_model(
        &self,
        path: &Path,
        store: &ParamStore,
        info: serde_json::Value,
    ) -> Result<()> {
        checkpoint::save(path, store, info)
    }

    /// The packed export and its size on disk.
    pub fn packed_file(&self) -> Result<(PathBuf, u64)> {
        let bytes = std::fs::metadata(&self.packed_path)
            .map_err(|e| Error::io(&self.packed_path, e))?
            .len();
        Ok((self.packed_path.clone(), bytes))
    }

    /// The best checkpoint's path.
    pub fn best_path(&self) -> &Path {
        &self.best_path
    }

    /// The best checkpoint and, once a state was committed, the `-last` copy.
    pub fn into_outputs(self) -> (PathBuf, Option<PathBuf>) {
        let last = self.committed.is_some().then_some(self.last_path);
        (self.best_path, last)
    }

    /// Which finite state a stopped run keeps, for error messages.
    pub fn kept_state(&self) -> String {
        match &self.committed {
            Some(what) => format!(
                "the last finite state is {what} in {} (continue with --resume after lowering \
                 the rate; best so far: {})",
                self.state.dir().display(),
                self.best_path.display()
            ),
            None => "no run state was committed yet".to_string(),
        }
    }
}
