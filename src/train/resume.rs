//! What `--resume` restores, and how the config it is given is checked against the one the run
//! started with: changes of rate, schedule and length are applied (and said); changes that make
//! it another experiment (data set, architectures, batch size, method parameters…) are refused
//! with a readable diff unless `--allow-config-change` is given.

use crate::config::{Config, Stage};
use crate::distill::loss_scale::LossScaler;
use crate::distill::qd::DqState;
use crate::error::{Error, Result};
use crate::train::metrics_log::EpochMetrics;
use crate::train::plan::PlanStep;
use crate::train::run_state::RunState;
use crate::train::schedule::LrSchedule;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

/// The resumable position of a run, stored in the committed sidecar under `resume`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResumeState {
    /// The plan step the run is in.
    pub step: usize,
    /// Complete epochs of step `step`.
    pub epochs_done: usize,
    /// The architecture of that step (checked on resume).
    pub architecture: String,
    /// The shuffle generator after the last complete epoch.
    pub shuffle_rng: [u64; 2],
    /// The learning-rate schedule, with its plateau state.
    pub schedule: LrSchedule,
    /// The best test accuracy of the step so far.
    pub best_acc: Option<f64>,
    /// The epoch (1-based) of `best_acc`: the one the best checkpoint and the packed export hold.
    #[serde(default)]
    pub best_epoch: Option<usize>,
    /// Differentiable quantization's learned points.
    pub dq: Option<DqState>,
    /// Set when the run stopped inside epoch `epochs_done` (on a signal).
    #[serde(default)]
    pub partial: Option<PartialEpoch>,
    /// Random draws the model made so far (dropout), so a resumed run draws the same masks.
    #[serde(default)]
    pub model_rng_calls: u64,
    /// fp16's loss scaler (scale and good-step count), so a resumed run scales as it would have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<LossScaler>,
}

/// The position inside an epoch: batches done, the shuffle generator at the epoch's start (to
/// rebuild the same order), and the epoch's running sums.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// Batches of the epoch already trained.
    pub batches_done: usize,
    /// The shuffle generator at the epoch's start.
    pub epoch_rng: [u64; 2],
    /// Sum of batch losses × examples so far.
    pub loss_sum: f64,
    /// Correct examples so far.
    pub correct: usize,
    /// Examples so far.
    pub seen: usize,
    /// fp16: steps of the epoch so far whose update was skipped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: usize,
    /// Seconds spent in the epoch so far.
    pub seconds: f64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Keys of a stage whose change a resumed run applies.
const APPLIED_STAGE_KEYS: [&str; 7] = [
    "lr",
    "epochs",
    "milestones",
    "gamma",
    "schedule",
    "plateau_patience",
    "plateau_factor",
];

/// Keys elsewhere whose change does not alter the experiment.
const APPLIED_KEYS: [&str; 9] = [
    "params.save_every",
    "params.teacher_cache",
    "params.step_graph",
    "params.logdir",
    "hyperparameters.data_loading_workers",
    "hyperparameters.max_eval_batches",
    "hyperparameters.max_test_examples",
    "device",
    "params.evaluate",
];

/// One changed config value: its dotted key, before and after.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Dotted key path.
    pub key: String,
    /// The value the run started with.
    pub before: Value,
    /// The value now.
    pub after: Value,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Value| match v {
            Value::Null => "(unset)".to_string(),
            other => other.to_string(),
        };
        write!(
            f,
            "{}: {} -> {}",
            self.key,
            show(&self.before),
            show(&self.after)
        )
    }
}

/// Every leaf that differs between two JSON trees, by dotted key, in key order.
pub fn differences(before: &Value, after: &Value) -> Vec<Change> {
    fn walk(prefix: &str, a: &Value, b: &Value, out: &mut Vec<Change>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(
                        &key,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(Change {
                key: prefix.to_string(),
                before: a.clone(),
                after: b.clone(),
            }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", before, after, &mut out);
    out
}

/// Whether a resumed run can take this change without becoming another experiment.
pub fn is_applied(key: &str) -> bool {
    if APPLIED_KEYS.contains(&key) {
        return true;
    }
    let parts: Vec<&str> = key.split('.').collect();
    parts.len() == 3 && parts[0] == "sequence" && APPLIED_STAGE_KEYS.contains(&parts[2])
}

/// Check the config of a resume against the one the run started with (`started`, from the
/// committed sidecar). Returns the applied changes (to be printed); refuses the others unless
/// `allow` is set, in which case they are returned too.
pub fn check_config(started: &Value, now: &Value, allow: bool) -> Result<Vec<Change>> {
    let changes = differences(started, now);
    let refused: Vec<&Change> = changes.iter().filter(|c| !is_applied(&c.key)).collect();
    if !refused.is_empty() && !allow {
        let list: Vec<String> = refused.iter().map(|c| format!("  {c}")).collect();
        return Err(Error::Config(format!(
            "--resume: the config differs from the one the run started with, in keys that make \
             it another experiment:\n{}\nresume with the original config, start a new run (another \
             params.save_directory), or pass --allow-config-change to resume anyway",
            list.join("\n")
        )));
    }
    Ok(changes)
}

/// The schedule of a resumed stage: the committed one, or, when the stage's rate or schedule
/// keys changed, one built from the new values and replayed over the epochs done (so a plateau
/// schedule sees the same accuracies it would have seen from the start).
pub fn schedule_for(
    stage: &Stage,
    committed: &LrSchedule,
    history: &[EpochMetrics],
    step: usize,
) -> LrSchedule {
    let fresh = LrSchedule::new(stage);
    let same_config = fresh.kind == committed.kind
        && fresh.base_lr == committed.base_lr
        && fresh.milestones == committed.milestones
        && fresh.gamma == committed.gamma
        && fresh.patience == committed.patience
        && fresh.factor == committed.factor;
    if same_config {
        return committed.clone();
    }
    let mut s = fresh;
    for m in history.iter().filter(|m| m.step == step) {
        s.observe(m.test_acc);
    }
    s
}

/// A committed state to resume from, checked against the config and the plan.
pub struct Resumed {
    /// The committed generation.
    pub generation: u64,
    /// Where the run stands.
    pub state: ResumeState,
    /// The committed weights.
    pub weights: PathBuf,
    /// The committed momentum buffers.
    pub optimizer: PathBuf,
    /// The metrics of every epoch so far.
    pub history: Vec<EpochMetrics>,
    /// The TensorBoard file the run writes (rewritten from `history`).
    pub events_file: Option<String>,
}

impl Resumed {
    /// Where the state stands, in words ("generation 3: epoch 2/4 of `kd`").
    pub fn describe(&self, steps: &[PlanStep]) -> String {
        let r = &self.state;
        let within = match &r.partial {
            Some(p) => format!(
                " and {} batches of epoch {}",
                p.batches_done,
                r.epochs_done + 1
            ),
            None => String::new(),
        };
        format!(
            "generation {} of the run state: step {} (`{}`), {} epochs done{within}",
            self.generation,
            r.step + 1,
            steps.get(r.step).map_or("?", |s| s.kind.name()),
            r.epochs_done
        )
    }
}

/// Read the committed state for `--resume` and check it against `cfg` and its plan (refused on an
/// experiment-changing difference unless `allow_config_change`).
pub fn read_resumed(
    cfg: &Config,
    state: &RunState,
    steps: &[PlanStep],
    allow_config_change: bool,
) -> Result<Resumed> {
    let committed = state.load()?;
    let side = &committed.sidecar;
    let bad = |what: &str, e: serde_json::Error| {
        Error::Checkpoint(format!(
            "{}: no valid `{what}` record ({e})",
            state.dir().display()
        ))
    };
    let r: ResumeState =
        serde_json::from_value(side["resume"].clone()).map_err(|e| bad("resume", e))?;
    let history: Vec<EpochMetrics> =
        serde_json::from_value(side["history"].clone()).map_err(|e| bad("history", e))?;
    let now = serde_json::to_value(cfg).map_err(|e| Error::Encode(format!("config: {e}")))?;
    for change in check_config(&side["config"], &now, allow_config_change)? {
        let how = if is_applied(&change.key) {
            "applied"
        } else {
            "applied (--allow-config-change)"
        };
        println!("config changed since the run started: {change} ({how})");
    }
    if r.step >= steps.len() || steps[r.step].architecture != r.architecture {
        return Err(Error::Checkpoint(format!(
            "{}: its run position (step {}, `{}`) does not match this config's plan; \
             resume with the config that wrote it",
            state.dir().display(),
            r.step + 1,
            r.architecture
        )));
    }
    Ok(Resumed {
        generation: committed.generation,
        state: r,
        weights: committed.weights,
        optimizer: committed.optimizer,
        history,
        events_file: side["events_file"].as_str().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_name_each_changed_leaf() {
        let a =
            json!({"models": {"dataset": "mnist"}, "sequence": {"kd": {"lr": 0.1, "epochs": 2}}});
        let b = json!({"models": {"dataset": "mnist"}, "sequence": {"kd": {"lr": 0.01, "epochs": 2}, "lit": null}});
        let d = differences(&a, &b);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].to_string(), "sequence.kd.lr: 0.1 -> 0.01");
    }

    #[test]
    fn rate_and_length_are_applied_data_and_models_are_refused() {
        let a = json!({"models": {"dataset": "mnist"}, "hyperparameters": {"batch_size": 64},
                       "sequence": {"kd": {"lr": 0.1, "epochs": 2, "temperature": 4.0}}});
        let ok = json!({"models": {"dataset": "mnist"}, "hyperparameters": {"batch_size": 64},
                        "sequence": {"kd": {"lr": 0.05, "epochs": 5, "temperature": 4.0}}});
        assert_eq!(check_config(&a, &ok, false).unwrap().len(), 2);
        for bad in [
            json!({"models": {"dataset": "fashion-mnist"}, "hyperparameters": {"batch_size": 64},
                   "sequence": {"kd": {"lr": 0.1, "epochs": 2, "temperature": 4.0}}}),
            json!({"models": {"dataset": "mnist"}, "hyperparameters": {"batch_size": 128},
                   "sequence": {"kd": {"lr": 0.1, "epochs": 2, "temperature": 4.0}}}),
            json!({"models": {"dataset": "mnist"}, "hyperparameters": {"batch_size": 64},
                   "sequence": {"kd": {"lr": 0.1, "epochs": 2, "temperature": 6.0}}}),
        ] {
            let msg = check_config(&a, &bad, false).err().unwrap().to_string();
            assert!(msg.contains("--allow-config-change"), "{msg}");
            assert_eq!(check_config(&a, &bad, true).unwrap().len(), 1);
        }
    }
}
