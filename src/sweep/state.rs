//! The campaign state: one JSON file (`campaign.json` in the campaign's output folder), written
//! atomically after every change of a trial's status, so a kill at any point leaves the last
//! complete state. It also describes every trial (base, grid point, seed, reference), so that
//! `lit-engine sweep report` needs nothing but the output folder.

use super::campaign::{Campaign, Trial};
use crate::durable::write_atomic;
use crate::error::{Error, Result};
use crate::limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The state file's name in the campaign's output folder.
pub const STATE_FILE: &str = "campaign.json";

/// Where a trial stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialStatus {
    /// Not started.
    #[default]
    Pending,
    /// Started and not finished: running now, or its process died (resumed from its last
    /// committed run state next time).
    Running,
    /// Stopped cleanly (time budget, signal) with its state saved; resumed next time.
    Stopped,
    /// Finished (all epochs, or its trial budget).
    Done,
    /// Failed with `error`; skipped unless the campaign is rerun with `--retry-failed`.
    Failed,
}

impl TrialStatus {
    /// Whether a run of the campaign still has work for the trial.
    pub fn needs_run(self, retry_failed: bool) -> bool {
        match self {
            TrialStatus::Done => false,
            TrialStatus::Failed => retry_failed,
            _ => true,
        }
    }
}

/// One trial's entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrialRecord {
    /// Its folder's name (under the output folder).
    pub name: String,
    /// Its base config's name.
    pub base: String,
    /// Its grid point: key path → value as in the name.
    pub point: Vec<(String, String)>,
    /// Its seed.
    pub seed: u64,
    /// Where it stands.
    pub status: TrialStatus,
    /// Why it stopped early (trial budget reached, campaign time budget, signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// The error it failed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Sessions (runs of the campaign) it ran in.
    pub sessions: u32,
    /// Wall-clock seconds, over all sessions.
    pub wall_seconds: f64,
    /// Process CPU seconds while it ran, over all sessions (with `--parallel` > 1, the whole
    /// process's: trials running side by side share them).
    pub cpu_seconds: f64,
    /// Wall-clock seconds it held a GPU (CUDA device), over all sessions.
    pub gpu_seconds: f64,
    /// Seconds of the campaign clock it used, over all sessions (what `trial_budget.time`
    /// counts; the wall clock outside tests).
    pub budget_seconds: f64,
    /// Forward multiply-adds counted on its thread, over all sessions (`trial_budget.flops`).
    pub forward_macs: u64,
    /// The device of its last session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// The whole campaign state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CampaignState {
    /// The campaign's name.
    pub name: String,
    /// The campaign file it was last run from.
    pub campaign_file: PathBuf,
    /// Reference numbers by base name (percent).
    pub references: BTreeMap<String, BTreeMap<String, f64>>,
    /// The trials, in campaign order.
    pub trials: Vec<TrialRecord>,
}

impl CampaignState {
    /// The state in `output` (`campaign.json`); `None` when there is none yet.
    pub fn read(output: &Path) -> Result<Option<CampaignState>> {
        let path = output.join(STATE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bytes =
            limits::read_file_at_most(&path, limits::MAX_CAMPAIGN_STATE_BYTES, "campaign state")?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::data(&path, format!("not a campaign state ({e})")))
    }

    /// The state of `campaign` for `trials`: what `campaign.json` recorded for each trial (by
    /// name), new trials pending. Trials no longer in the campaign are dropped from the state
    /// (their folders stay).
    pub fn for_campaign(campaign: &Campaign, trials: &[Trial]) -> Result<CampaignState> {
        let old = CampaignState::read(&campaign.output)?.unwrap_or_default();
        let records = trials
            .iter()
            .map(|t| {
                let mut r = old
                    .trials
                    .iter()
                    .find(|r| r.name == t.name)
                    .cloned()
                    .unwrap_or_default();
                r.name = t.name.clone();
                r.base = t.base.clone();
                r.point = t.point.clone();
                r.seed = t.seed;
                r
            })
            .collect();
        Ok(CampaignState {
            name: campaign.name.clone(),
            campaign_file: campaign.file.clone(),
            references: campaign
                .bases
                .iter()
                .filter(|b| !b.reference.is_empty())
                .map(|b| (b.name.clone(), b.reference.clone()))
                .collect(),
            trials: records,
        })
    }

    /// Commit the state to `output/campaign.json` atomically.
    pub fn save(&self, output: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Encode(format!("campaign state: {e}")))?;
        write_atomic(&output.join(STATE_FILE), text.as_bytes())
    }

    /// Trials done, failed, and the total.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |s| self.trials.iter().filter(|r| r.status == s).count();
        (
            count(TrialStatus::Done),
            count(TrialStatus::Failed),
            self.trials.len(),
        )
    }
}
