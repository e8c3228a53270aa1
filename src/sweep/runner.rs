//! Running a campaign: its trials one after another or `parallel` at a time (threads), each
//! through [`Trainer`] in its own folder, resumed from its committed run state when it has one.
//! The campaign state is committed after every change; a failing trial is recorded and the
//! campaign goes on; a time budget stops every running trial cleanly (state saved) through the
//! trainer's stop machinery ([`interrupt::with_stop_check`]).

use super::campaign::{Campaign, Trial, TrialBudget};
use super::duration::format_duration;
use super::state::{CampaignState, TrialRecord, TrialStatus};
use crate::device::Device;
use crate::durable::write_atomic;
use crate::error::{Error, Result};
use crate::train::interrupt;
use crate::train::run_state::RunState;
use crate::train::Trainer;
use std::cell::Cell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The time a campaign's budgets are measured on: the wall clock, or a test's own clock.
pub trait Clock: Send + Sync {
    /// Time since the campaign run started.
    fn elapsed(&self) -> Duration;
}

/// The wall clock, from when it was made.
pub struct WallClock(Instant);

impl WallClock {
    /// A clock starting now.
    pub fn start() -> WallClock {
        WallClock(Instant::now())
    }
}

impl Clock for WallClock {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// How to run a campaign.
#[derive(Clone, Default)]
pub struct SweepOptions {
    /// The device of every trial (default: as `Trainer` picks: `LIT_DEVICE`, the config's
    /// `device`, else a GPU when there is one).
    pub device: Option<Device>,
    /// The data root (default: `LIT_DATA_DIR`, else `./data`).
    pub data_root: Option<PathBuf>,
    /// Stop every trial (state saved) and start no new one once this much time is spent, less
    /// `reserve`.
    pub time_budget: Option<Duration>,
    /// Time kept back from `time_budget` for the last batch, evaluation and save (default: a
    /// tenth of the budget, between 1 s and 60 s).
    pub reserve: Option<Duration>,
    /// Trials run side by side (threads; 0 or 1: one at a time). On the CPU they share the
    /// cores.
    pub parallel: usize,
    /// Run failed trials again (default: they stay failed).
    pub retry_failed: bool,
    /// The clock of the budgets (default: the wall clock).
    pub clock: Option<Arc<dyn Clock>>,
}

/// Why a campaign run ended before every trial finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// `time_budget` was reached.
    TimeBudget,
    /// A signal (Ctrl-C, SIGTERM) arrived.
    Signal(i32),
}

/// What a campaign run leaves.
#[derive(Clone, Debug)]
pub struct SweepOutcome {
    /// The campaign state, as committed last.
    pub state: CampaignState,
    /// Set when the run stopped before the campaign finished.
    pub stopped: Option<Stopped>,
}

impl SweepOutcome {
    /// Whether trials remain to run (stopped, interrupted or never started).
    pub fn unfinished(&self) -> usize {
        self.state
            .trials
            .iter()
            .filter(|r| r.status.needs_run(false))
            .count()
    }
}

/// Why a trial's run was stopped by its stop check.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cause {
    CampaignBudget,
    TrialTime,
    TrialFlops,
}

/// What the workers share.
struct Shared<'a> {
    campaign: &'a Campaign,
    trials: Vec<Trial>,
    opts: &'a SweepOptions,
    clock: Arc<dyn Clock>,
    deadline: Option<Duration>,
    state: Mutex<CampaignState>,
    queue: Mutex<VecDeque<usize>>,
    running: Mutex<Vec<String>>,
    finished_walls: Mutex<Vec<f64>>,
    stopped: Mutex<Option<Stopped>>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker that panicked leaves consistent data (every update is one assignment).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run `campaign`: every trial that needs it, as `opts` says. Returns when every trial is done
/// or failed, or when the time budget or a signal stopped the run (then `stopped` says which;
/// running the campaign again continues it).
pub fn run_campaign(campaign: &Campaign, opts: &SweepOptions) -> Result<SweepOutcome> {
    let trials = campaign.trials()?;
    std::fs::create_dir_all(&campaign.output).map_err(|e| Error::io(&campaign.output, e))?;
    let state = CampaignState::for_campaign(campaign, &trials)?;
    state.save(&campaign.output)?;
    let queue = (0..trials.len())
        .filter(|&i| state.trials[i].status.needs_run(opts.retry_failed))
        .collect();
    let deadline = opts.time_budget.map(|b| {
        let reserve = opts
            .reserve
            .unwrap_or_else(|| (b / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)));
        b.saturating_sub(reserve)
    });
    let shared = Shared {
        campaign,
        trials,
        opts,
        clock: opts
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(WallClock::start())),
        deadline,
        state: Mutex::new(state),
        queue: Mutex::new(queue),
        running: Mutex::new(Vec::new()),
        finished_walls: Mutex::new(Vec::new()),
        stopped: Mutex::new(None),
        started: Instant::now(),
    };
    let workers = opts.parallel.clamp(1, crate::limits::MAX_PARALLEL_TRIALS);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers).map(|_| s.spawn(|| worker(&shared))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::External("a sweep worker panicked".into())))
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;
    shared.progress("finished");
    let stopped = *lock(&shared.stopped);
    let state = lock(&shared.state).clone();
    Ok(SweepOutcome { state, stopped })
}

fn worker(shared: &Shared) -> Result<()> {
    loop {
        if lock(&shared.stopped).is_some() {
            return Ok(());
        }
        if shared.budget_spent() {
            *lock(&shared.stopped) = Some(Stopped::TimeBudget);
            return Ok(());
        }
        let Some(i) = lock(&shared.queue).pop_front() else {
            return Ok(());
        };
        run_trial(shared, i)?;
    }
}

impl Shared<'_> {
    fn budget_spent(&self) -> bool {
        self.deadline.is_some_and(|d| self.clock.elapsed() >= d)
    }

    /// Change trial `i`'s record and commit the state.
    fn update(&self, i: usize, f: impl FnOnce(&mut TrialRecord)) -> Result<()> {
        let mut state = lock(&self.state);
        f(&mut state.trials[i]);
        state.save(&self.campaign.output)
    }

    /// The campaign-level progress line: trials done of total, the running ones, elapsed and ETA.
    fn progress(&self, what: &str) {
        let (done, failed, total) = lock(&self.state).counts();
        let running = lock(&self.running).clone();
        let walls = lock(&self.finished_walls).clone();
        let elapsed = self.started.elapsed();
        let left = total - done - failed;
        let eta = match (walls.is_empty(), left) {
            (_, 0) => String::new(),
            (true, _) => ", ETA after the first trial".into(),
            (false, _) => {
                let mean = walls.iter().sum::<f64>() / walls.len() as f64;
                let workers = self.opts.parallel.max(1).min(left) as f64;
                let eta = Duration::from_secs_f64((mean * left as f64 / workers).max(0.0));
                format!(", ETA {}", format_duration(eta))
            }
        };
        let running = match running.as_slice() {
            [] => String::new(),
            [one] => format!(", running {one}"),
            [one, rest @ ..] => format!(", running {one} (+{} more)", rest.len()),
        };
        println!(
            "sweep {}: {what}: {done}/{total} trials done{}{running}, {} elapsed{eta}",
            self.campaign.name,
            if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            },
            format_duration(elapsed),
        );
    }
}

/// Run (or resume) trial `i` and record how it ended.
fn run_trial(shared: &Shared, i: usize) -> Result<()> {
    let trial = &shared.trials[i];
    let cfg = &trial.config;
    std::fs::create_dir_all(&trial.dir).map_err(|e| Error::io(&trial.dir, e))?;
    write_atomic(&trial.dir.join("config.yml"), trial.config_text.as_bytes())?;
    let resume = RunState::open(&cfg.params.checkpoint_with_suffix("-last"))
        .committed()
        .is_some();
    let device_name = shared.opts.device.as_ref().map(Device::name);
    shared.update(i, |r| {
        r.status = TrialStatus::Running;
        r.sessions += 1;
        r.error = None;
        r.stop_reason = None;
        r.device = device_name.clone();
    })?;
    lock(&shared.running).push(trial.name.clone());
    shared.progress(if resume { "resuming" } else { "starting" });

    let prior = lock(&shared.state).trials[i].clone();
    let cause = Rc::new(Cell::new(None));
    let check = stop_check(shared, &prior, cause.clone());
    let clock_start = shared.clock.elapsed();
    let (wall_start, cpu_start) = (Instant::now(), crate::cpu_time::process_cpu_seconds());
    let mut trainer = Trainer::new(cfg.clone()).resume(resume);
    if let Some(d) = &shared.opts.device {
        trainer = trainer.device(d.clone());
    }
    if let Some(root) = &shared.opts.data_root {
        trainer = trainer.data_root(root.clone());
    }
    let (result, macs) =
        crate::ops::flops::count_macs(|| interrupt::with_stop_check(check, || trainer.run()));
    let wall = wall_start.elapsed().as_secs_f64();
    let cpu = crate::cpu_time::process_cpu_seconds()
        .zip(cpu_start)
        .map_or(0.0, |(b, a)| b - a);
    let on_gpu = shared.opts.device.as_ref().is_some_and(Device::is_cuda);
    let clock_used = shared.clock.elapsed().saturating_sub(clock_start);

    let (status, stop_reason, error) = match result {
        Ok(_) => (TrialStatus::Done, None, None),
        Err(Error::Interrupted { signal, message }) => match cause.get() {
            Some(Cause::CampaignBudget) => (
                TrialStatus::Stopped,
                Some(format!("campaign time budget: {message}")),
                None,
            ),
            Some(Cause::TrialTime) => (
                TrialStatus::Done,
                Some(format!("trial time budget reached: {message}")),
                None,
            ),
            Some(Cause::TrialFlops) => (
                TrialStatus::Done,
                Some(format!("trial FLOP budget reached: {message}")),
                None,
            ),
            None => {
                *lock(&shared.stopped) = Some(Stopped::Signal(signal));
                (TrialStatus::Stopped, Some(message), None)
            }
        },
        Err(e) => (TrialStatus::Failed, None, Some(e.one_line())),
    };
    if status == TrialStatus::Stopped && lock(&shared.stopped).is_none() {
        *lock(&shared.stopped) = Some(Stopped::TimeBudget);
    }
    shared.update(i, |r| {
        r.status = status;
        r.stop_reason = stop_reason;
        r.error = error;
        r.wall_seconds += wall;
        r.cpu_seconds += cpu;
        r.gpu_seconds += if on_gpu { wall } else { 0.0 };
        r.budget_seconds += clock_used.as_secs_f64();
        r.forward_macs = r.forward_macs.saturating_add(macs);
    })?;
    lock(&shared.running).retain(|n| *n != trial.name);
    if status == TrialStatus::Done || status == TrialStatus::Failed {
        lock(&shared.finished_walls).push(wall);
    }
    let what = match status {
        TrialStatus::Failed => format!("{} failed", trial.name),
        TrialStatus::Stopped => format!("{} stopped (state saved)", trial.name),
        _ => format!("{} done", trial.name),
    };
    shared.progress(&what);
    Ok(())
}

/// The check polled between the trial's batches: the campaign's deadline and the trial's own
/// budgets (what it spent in earlier sessions counts).
fn stop_check(
    shared: &Shared,
    prior: &TrialRecord,
    cause: Rc<Cell<Option<Cause>>>,
) -> impl Fn() -> Option<i32> + 'static {
    let clock = shared.clock.clone();
    let deadline = shared.deadline;
    let TrialBudget { time, flops } = shared.campaign.trial_budget;
    let start = clock.elapsed();
    let spent_before = Duration::from_secs_f64(prior.budget_seconds.max(0.0));
    let macs_before = prior.forward_macs;
    move || {
        let now = clock.elapsed();
        let hit = if deadline.is_some_and(|d| now >= d) {
            Some(Cause::CampaignBudget)
        } else if time.is_some_and(|t| spent_before + now.saturating_sub(start) >= t) {
            Some(Cause::TrialTime)
        } else if flops.is_some_and(|f| {
            let macs = macs_before + crate::ops::flops::macs_so_far().unwrap_or(0);
            2.0 * macs as f64 >= f
        }) {
            Some(Cause::TrialFlops)
        } else {
            None
        };
        cause.set(hit);
        hit.map(|_| interrupt::SIGTERM)
    }
}
