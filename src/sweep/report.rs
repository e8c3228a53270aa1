//! `lit-engine sweep report`: the campaign's results table from its state file and the trials'
//! own metric logs (`metrics.jsonl`, read by [`read_epochs`]): per base and grid point, the mean
//! ± standard deviation over seeds of the final and best test accuracy of the last stage, every
//! seed's values, best and last epoch, wall / CPU / GPU time and the reference number. Markdown,
//! JSON and a learning-curve SVG ([`super::svg`]).

use super::state::{CampaignState, TrialRecord, TrialStatus};
use crate::durable::write_atomic;
use crate::error::{Error, Result};
use crate::train::metrics_log::{read_epochs, EpochMetrics};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One trial's numbers, from its metric log (accuracies in percent).
#[derive(Clone, Debug, Serialize)]
pub struct SeedResult {
    /// The trial's folder name.
    pub trial: String,
    /// Its seed.
    pub seed: u64,
    /// Its status in the campaign state.
    pub status: TrialStatus,
    /// Test accuracy of the last epoch of the last stage.
    pub final_test_acc: Option<f64>,
    /// Best test accuracy over the epochs of the last stage.
    pub best_test_acc: Option<f64>,
    /// The epoch (1-based, of the last stage) of the best test accuracy.
    pub best_epoch: Option<usize>,
    /// The last epoch logged (of the last stage).
    pub last_epoch: Option<usize>,
    /// The stage the numbers are of.
    pub stage: Option<String>,
    /// Test accuracy per epoch of the last stage.
    pub curve: Vec<f64>,
    /// Wall-clock seconds over all sessions.
    pub wall_seconds: f64,
    /// CPU seconds over all sessions.
    pub cpu_seconds: f64,
    /// Seconds on a GPU over all sessions.
    pub gpu_seconds: f64,
    /// The error of a failed trial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Mean and sample standard deviation (0 for one value).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MeanStd {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1).
    pub std: f64,
    /// Values.
    pub n: usize,
}

impl MeanStd {
    /// Over `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<MeanStd> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = match n {
            1 => 0.0,
            _ => values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64,
        };
        Some(MeanStd {
            mean,
            std: var.sqrt(),
            n,
        })
    }
}

/// One row of the table: a base and a grid point, over its seeds.
#[derive(Clone, Debug, Serialize)]
pub struct GroupResult {
    /// `base` or `base lr=0.1 temperature=4`.
    pub label: String,
    /// The base config's name.
    pub base: String,
    /// The grid point: key path → value.
    pub point: Vec<(String, String)>,
    /// Final test accuracy over the seeds that logged epochs.
    pub final_test_acc: Option<MeanStd>,
    /// Best test accuracy over the seeds that logged epochs.
    pub best_test_acc: Option<MeanStd>,
    /// Reference numbers (percent) the campaign states for this base.
    pub reference: BTreeMap<String, f64>,
    /// Each seed.
    pub seeds: Vec<SeedResult>,
}

/// A campaign's results.
#[derive(Clone, Debug, Serialize)]
pub struct CampaignReport {
    /// The campaign's name.
    pub name: String,
    /// Its output folder.
    pub output: PathBuf,
    /// Trials done / failed / total.
    pub done: usize,
    /// Failed trials.
    pub failed: usize,
    /// All trials.
    pub total: usize,
    /// One entry per base and grid point, in campaign order.
    pub groups: Vec<GroupResult>,
}

/// The numbers of trial `r` (in `output`) from its metric log; a trial without a log has none.
fn seed_result(output: &Path, r: &TrialRecord) -> Result<SeedResult> {
    let log = output.join(&r.name).join("metrics.jsonl");
    let epochs: Vec<EpochMetrics> = if log.exists() {
        read_epochs(&log)?
    } else {
        Vec::new()
    };
    let last_step = epochs.iter().map(|m| m.step).max();
    let stage: Vec<&EpochMetrics> = epochs
        .iter()
        .filter(|m| Some(m.step) == last_step)
        .collect();
    let curve: Vec<f64> = stage.iter().map(|m| 100.0 * m.test_acc).collect();
    // The first epoch of the highest accuracy, as the trainer keeps its best checkpoint.
    let best = stage.iter().fold(None::<&EpochMetrics>, |b, m| match b {
        Some(b) if b.test_acc >= m.test_acc => Some(b),
        _ => Some(m),
    });
    Ok(SeedResult {
        trial: r.name.clone(),
        seed: r.seed,
        status: r.status,
        final_test_acc: curve.last().copied(),
        best_test_acc: best.map(|m| 100.0 * m.test_acc),
        best_epoch: best.map(|m| m.epoch),
        last_epoch: stage.last().map(|m| m.epoch),
        stage: stage.last().map(|m| m.stage.clone()),
        curve,
        wall_seconds: r.wall_seconds,
        cpu_seconds: r.cpu_seconds,
        gpu_seconds: r.gpu_seconds,
        error: r.error.clone(),
    })
}

impl CampaignReport {
    /// The report of the campaign whose output folder is `output`.
    pub fn read(output: &Path) -> Result<CampaignReport> {
        let state = CampaignState::read(output)?.ok_or_else(|| {
            Error::Config(format!(
                "{}: no campaign state ({}); run the campaign first",
                output.display(),
                super::state::STATE_FILE
            ))
        })?;
        let mut groups: Vec<GroupResult> = Vec::new();
        for r in &state.trials {
            let seed = seed_result(output, r)?;
            let label = std::iter::once(r.base.clone())
                .chain(
                    r.point
                        .iter()
                        .map(|(k, v)| format!("{}={v}", super::campaign::short_key(k))),
                )
                .collect::<Vec<_>>()
                .join(" ");
            match groups
                .iter_mut()
                .find(|g| g.base == r.base && g.point == r.point)
            {
                Some(g) => g.seeds.push(seed),
                None => groups.push(GroupResult {
                    label,
                    base: r.base.clone(),
                    point: r.point.clone(),
                    final_test_acc: None,
                    best_test_acc: None,
                    reference: state.references.get(&r.base).cloned().unwrap_or_default(),
                    seeds: vec![seed],
                }),
            }
        }
        for g in &mut groups {
            // Only finished trials enter the statistics; unfinished ones are listed.
            let done: Vec<&SeedResult> = g
                .seeds
                .iter()
                .filter(|s| s.status == TrialStatus::Done)
                .collect();
            g.final_test_acc = MeanStd::of(
                &done
                    .iter()
                    .filter_map(|s| s.final_test_acc)
                    .collect::<Vec<_>>(),
            );
            g.best_test_acc = MeanStd::of(
                &done
                    .iter()
                    .filter_map(|s| s.best_test_acc)
                    .collect::<Vec<_>>(),
            );
        }
        let (done, failed, total) = state.counts();
        Ok(CampaignReport {
            name: state.name,
            output: output.to_path_buf(),
            done,
            failed,
            total,
            groups,
        })
    }

    /// The table as markdown.
    pub fn markdown(&self) -> String {
        let ms = |m: Option<MeanStd>| {
            m.map_or("–".into(), |m| format!("{:.2} ± {:.2}", m.mean, m.std))
        };
        let opt = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}"));
        let mut out = format!(
            "## Campaign `{}`\n\n{}/{} trials done{}. Accuracies in percent (test split, last \
             stage); mean ± sample std over the finished seeds.\n\n",
            self.name,
            self.done,
            self.total,
            if self.failed > 0 {
                format!(", {} failed", self.failed)
            } else {
                String::new()
            }
        );
        out += "| method | seeds | final acc | best acc | reference | final per seed | best per seed (epoch) | last epoch | wall s | CPU s | GPU s |\n";
        out += "|---|---|---|---|---|---|---|---|---|---|---|\n";
        for g in &self.groups {
            let done = g
                .seeds
                .iter()
                .filter(|s| s.status == TrialStatus::Done)
                .count();
            let per_seed = |f: &dyn Fn(&SeedResult) -> String| {
                g.seeds
                    .iter()
                    .map(|s| format!("{}: {}", s.seed, f(s)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mark = |s: &SeedResult| match s.status {
                TrialStatus::Done => "",
                TrialStatus::Failed => " (failed)",
                _ => " (unfinished)",
            };
            let reference = g
                .reference
                .iter()
                .map(|(k, v)| format!("{v:.2} ({})", k.trim_end_matches("_test_acc")))
                .collect::<Vec<_>>()
                .join(", ");
            let sum = |f: fn(&SeedResult) -> f64| g.seeds.iter().map(f).sum::<f64>();
            out += &format!(
                "| {} | {done}/{} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} |\n",
                g.label,
                g.seeds.len(),
                ms(g.final_test_acc),
                ms(g.best_test_acc),
                if reference.is_empty() {
                    "–".into()
                } else {
                    reference
                },
                per_seed(&|s| format!("{}{}", opt(s.final_test_acc), mark(s))),
                per_seed(&|s| format!(
                    "{} ({})",
                    opt(s.best_test_acc),
                    s.best_epoch.map_or("–".into(), |e| e.to_string())
                )),
                per_seed(&|s| s.last_epoch.map_or("–".into(), |e| e.to_string())),
                sum(|s| s.wall_seconds),
                sum(|s| s.cpu_seconds),
                sum(|s| s.gpu_seconds),
            );
        }
        let failed: Vec<&SeedResult> = self
            .groups
            .iter()
            .flat_map(|g| &g.seeds)
            .filter(|s| s.error.is_some())
            .collect();
        if !failed.is_empty() {
            out += "\nFailed trials:\n";
            for s in failed {
                out += &format!("- `{}`: {}\n", s.trial, s.error.as_deref().unwrap_or(""));
            }
        }
        out += "\nTimes are totals over the seeds and sessions; with `--parallel` > 1 the CPU \
                seconds of trials running side by side overlap.\n";
        out
    }

    /// The report as JSON.
    pub fn json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Encode(format!("report: {e}")))
    }

    /// Write `report.md`, `report.json` and `curves.svg` into the output folder; returns their
    /// paths.
    pub fn write(&self) -> Result<Vec<PathBuf>> {
        let files = [
            ("report.md", self.markdown()),
            ("report.json", self.json()?),
            ("curves.svg", super::svg::learning_curves(self)),
        ];
        let mut out = Vec::new();
        for (name, text) in files {
            let path = self.output.join(name);
            write_atomic(&path, text.as_bytes())?;
            out.push(path);
        }
        Ok(out)
    }
}
