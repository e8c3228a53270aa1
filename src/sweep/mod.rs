//! Campaigns (`lit-engine sweep`): a grid of experiments over base configs, config keys and
//! seeds, each trial in its own folder, resumable at every level (finished trials are skipped,
//! an interrupted trial resumes from its last committed run state, a failed one is recorded and
//! the campaign goes on), with time budgets that stop cleanly and a results report.
//!
//! ```no_run
//! use lit_engine::sweep::{run_campaign, Campaign, CampaignReport, SweepOptions};
//!
//! let campaign = Campaign::load("configs/sweep_example.yml".as_ref())?;
//! let outcome = run_campaign(&campaign, &SweepOptions::default())?;
//! println!("{} trials left", outcome.unfinished());
//! print!("{}", CampaignReport::read(&campaign.output)?.markdown());
//! # Ok::<(), lit_engine::Error>(())
//! ```
//!
//! The parts: [`campaign`] reads the file and expands the trials, [`state`] is the campaign's
//! committed state, [`runner`] runs the trials, [`report`] and [`svg`] summarise them.

pub mod campaign;
pub mod duration;
pub mod report;
pub mod runner;
pub mod state;
pub mod svg;

pub use campaign::{Base, Campaign, GridKey, Trial, TrialBudget};
pub use duration::parse_duration;
pub use report::{CampaignReport, GroupResult, MeanStd, SeedResult};
pub use runner::{run_campaign, Clock, Stopped, SweepOptions, SweepOutcome, WallClock};
pub use state::{CampaignState, TrialRecord, TrialStatus, STATE_FILE};
