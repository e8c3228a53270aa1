//! Optimizer state in the committed run state (`optimizer.safetensors` of a generation): every
//! optimizer lists its state as named f32 tensors and restores itself from them.
//! SGD: one entry per momentum buffer, named by its parameter (the format of earlier runs).
//! Adam: PyTorch's state names, `exp_avg.<param>`, `exp_avg_sq.<param>` and `step.<param>`
//! (the step count as a one-element f32, exact below 2^24 steps).

use super::adam::{Adam, AdamState};
use super::Sgd;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::tensor::Tensor;
use std::collections::BTreeMap;

/// One state tensor: its name, shape and values.
pub type StateEntry = (String, Vec<usize>, Vec<f32>);

/// Optimizer state a checkpoint stores and a resumed run restores.
pub trait OptimizerCheckpoint {
    /// Every state tensor, sorted by name, copied to the host.
    fn state_entries(&self) -> Result<Vec<StateEntry>>;
    /// Restore the state from `entries` (a file's contents): each must belong to a parameter of
    /// `store` and have its shape; tensors are made on `device`. Errors are
    /// [`Error::Checkpoint`] naming the entry.
    fn restore(
        &mut self,
        entries: Vec<StateEntry>,
        store: &ParamStore,
        device: &Device,
    ) -> Result<()>;
}

/// Fails unless `param` is a parameter of `store` of shape `shape`; `what` names the entry.
fn check_param(store: &ParamStore, param: &str, shape: &[usize], what: &str) -> Result<()> {
    match store.get(param) {
        Ok(p) if p.value.shape() == shape => Ok(()),
        _ => Err(Error::Checkpoint(format!(
            "{what} {shape:?} matches no parameter of the model"
        ))),
    }
}

impl OptimizerCheckpoint for Sgd {
    fn state_entries(&self) -> Result<Vec<StateEntry>> {
        self.momentum_buffers()
            .map(|(n, t)| Ok((n.to_string(), t.shape().to_vec(), t.to_vec()?)))
            .collect()
    }

    fn restore(
        &mut self,
        entries: Vec<StateEntry>,
        store: &ParamStore,
        device: &Device,
    ) -> Result<()> {
        for (name, shape, values) in entries {
            check_param(store, &name, &shape, &format!("momentum buffer `{name}`"))?;
            self.set_momentum_buffer(&name, Tensor::from_vec(&shape, values, device)?);
        }
        Ok(())
    }
}

/// Largest step count an f32 entry holds exactly.
const MAX_EXACT_STEP: u64 = 1 << 24;

impl OptimizerCheckpoint for Adam {
    fn state_entries(&self) -> Result<Vec<StateEntry>> {
        let mut out = Vec::new();
        for (name, s) in self.states() {
            if s.step > MAX_EXACT_STEP {
                return Err(Error::Checkpoint(format!(
                    "Adam: step {} of `{name}` is beyond what the checkpoint stores exactly (2^24)",
                    s.step
                )));
            }
            for (what, t) in [("exp_avg", &s.exp_avg), ("exp_avg_sq", &s.exp_avg_sq)] {
                out.push((format!("{what}.{name}"), t.shape().to_vec(), t.to_vec()?));
            }
            out.push((format!("step.{name}"), vec![1], vec![s.step as f32]));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn restore(
        &mut self,
        entries: Vec<StateEntry>,
        store: &ParamStore,
        device: &Device,
    ) -> Result<()> {
        type Parts = (Option<u64>, Option<Tensor>, Option<Tensor>);
        let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
        for (name, shape, values) in entries {
            let (kind, param) = name.split_once('.').unwrap_or(("", &name));
            let slot = parts.entry(param.to_string()).or_default();
            let what = format!("Adam state `{name}`");
            match kind {
                "step" => {
                    let step = match values[..] {
                        [v] if v >= 0.0 && v.fract() == 0.0 && shape == [1] => v as u64,
                        _ => {
                            return Err(Error::Checkpoint(format!(
                                "{what}: expected one whole number >= 0, got {values:?}"
                            )))
                        }
                    };
                    store.get(param).map_err(|_| {
                        Error::Checkpoint(format!("{what} matches no parameter of the model"))
                    })?;
                    slot.0 = Some(step);
                }
                "exp_avg" | "exp_avg_sq" => {
                    check_param(store, param, &shape, &what)?;
                    let t = Tensor::from_vec(&shape, values, device)?;
                    if kind == "exp_avg" {
                        slot.1 = Some(t);
                    } else {
                        slot.2 = Some(t);
                    }
                }
                _ => {
                    return Err(Error::Checkpoint(format!(
                        "{what}: not a step, exp_avg or exp_avg_sq entry"
                    )))
                }
            }
        }
        for (param, p) in parts {
            let (Some(step), Some(exp_avg), Some(exp_avg_sq)) = p else {
                return Err(Error::Checkpoint(format!(
                    "Adam state of `{param}`: step, exp_avg and exp_avg_sq must all be present"
                )));
            };
            self.set_state(
                &param,
                AdamState {
                    step,
                    exp_avg,
                    exp_avg_sq,
                },
            );
        }
        Ok(())
    }
}
