//! `lit-engine sweep` on the CPU with tiny MLP campaigns on the committed MNIST subset: a campaign
//! stopped by its time budget (a deterministic clock that ticks once per look, i.e. once per
//! training batch) or killed with SIGKILL, then resumed, ends with exactly the results of an
//! uninterrupted one; a failing trial is recorded while the others complete; the report's
//! numbers are the trials' logs; bad campaign files fail with file, line and key.

mod cli_support;

use cli_support::{command, error_line, metrics_without_seconds, ok, repo_data, stdout, tensors};
use lit_engine::sweep::{run_campaign, Campaign, CampaignReport, Clock, SweepOptions, TrialStatus};
use lit_engine::Device;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Two bases (scratch; KD from a teacher trained in the trial) × two momenta × two seeds: 8 trials
/// of 10 batches per epoch.
fn campaign_text(extra: &str) -> String {
    format!(
        "name: tiny\noutput: out\n\
         bases:\n  - name: scratch\n    inline:\n      models: {{dataset: mnist, training_architecture: mlp-784-16-10}}\n      \
         sequence: {{train: {{epochs: 3, lr: 0.1, milestones: [2]}}}}\n      \
         hyperparameters: {{batch_size: 32, max_train_examples: 320, max_test_examples: 200}}\n  \
         - name: kd\n    inline:\n      models: {{dataset: mnist, training_architecture: mlp-784-16-10, base_architecture: mlp-784-32-10}}\n      \
         sequence: {{teacher: {{epochs: 1, lr: 0.1}}, kd: {{epochs: 2, lr: 0.1, temperature: 4}}}}\n      \
         hyperparameters: {{batch_size: 32, max_train_examples: 320, max_test_examples: 200}}\n\
         grid:\n  hyperparameters.momentum: [0.9, 0.5]\n\
         seeds: [3, 4]\n{extra}"
    )
}

fn write_campaign(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("campaign.yml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A clock that advances one second each time it is read: the runner reads it once per training
/// batch (and a few times per trial), so a budget of N seconds stops after a fixed amount of work.
struct TickClock(AtomicU64);

impl Clock for TickClock {
    fn elapsed(&self) -> Duration {
        Duration::from_secs(self.0.fetch_add(1, Ordering::SeqCst))
    }
}

fn options(budget: Option<u64>) -> SweepOptions {
    SweepOptions {
        device: Some(Device::Cpu),
        data_root: Some(repo_data()),
        time_budget: budget.map(Duration::from_secs),
        reserve: Some(Duration::ZERO),
        clock: Some(Arc::new(TickClock(AtomicU64::new(0)))),
        ..SweepOptions::default()
    }
}

/// Every trial's metrics (without timings) and its best and last weights.
type Results = Vec<(
    String,
    Vec<serde_json::Value>,
    Vec<(String, Vec<u8>)>,
    Vec<(String, Vec<u8>)>,
)>;

fn results(out: &Path) -> Results {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 8, "{names:?}");
    names
        .into_iter()
        .map(|n| {
            let d = out.join(&n);
            (
                n,
                metrics_without_seconds(&d.join("metrics.jsonl")),
                tensors(&d.join("model.safetensors")),
                tensors(&d.join("model-last.safetensors")),
            )
        })
        .collect()
}

fn uninterrupted(group: &str) -> PathBuf {
    let dir = cli_support::work_dir(group, "whole");
    let c = Campaign::load(&write_campaign(&dir, &campaign_text(""))).unwrap();
    let outcome = run_campaign(&c, &options(None)).unwrap();
    assert_eq!(outcome.stopped, None);
    assert_eq!(outcome.state.counts(), (8, 0, 8));
    dir.join("out")
}

#[test]
fn a_campaign_stopped_by_its_time_budget_and_resumed_equals_an_uninterrupted_one() {
    let whole = uninterrupted("sweep-budget");
    let dir = cli_support::work_dir("sweep-budget", "stopped");
    let c = Campaign::load(&write_campaign(&dir, &campaign_text(""))).unwrap();
    // 25 ticks: fewer than one trial's batches, so trials are stopped mid-epoch and resumed.
    let mut sessions = 0;
    loop {
        sessions += 1;
        assert!(
            sessions <= 40,
            "the campaign does not progress across sessions"
        );
        let outcome = run_campaign(&c, &options(Some(25))).unwrap();
        if outcome.stopped.is_none() {
            assert_eq!(outcome.state.counts(), (8, 0, 8));
            let resumed = outcome
                .state
                .trials
                .iter()
                .filter(|t| t.sessions > 1)
                .count();
            assert!(resumed >= 4, "{:?}", outcome.state.trials);
            break;
        }
        let running = outcome.state.trials.iter();
        assert!(running.clone().all(|t| t.status != TrialStatus::Running));
        assert!(running.clone().any(|t| t.status == TrialStatus::Stopped));
    }
    assert!(sessions > 4, "{sessions} sessions");
    assert_eq!(results(&dir.join("out")), results(&whole));
}

/// `lit-engine sweep` on the tiny campaign in `dir`.
fn sweep_cli(campaign: &Path) -> std::process::Command {
    let mut cmd = command();
    cmd.args(["sweep", campaign.to_str().unwrap(), "--data-dir"])
        .arg(repo_data());
    cmd
}

#[test]
fn a_campaign_killed_mid_trial_and_resumed_equals_an_uninterrupted_one() {
    let whole = uninterrupted("sweep-kill");
    let dir = cli_support::work_dir("sweep-kill", "killed");
    let campaign = write_campaign(&dir, &campaign_text(""));
    let mut child = sweep_cli(&campaign)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The second trial's first commit: it is inside its first epochs.
    let commit = dir.join("out/scratch_momentum=0.9_seed4/model-last.state/COMMIT");
    let t0 = std::time::Instant::now();
    while !commit.exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no commit");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/campaign.json")).unwrap())
            .unwrap();
    let trial = state["trials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "scratch_momentum=0.9_seed4")
        .unwrap();
    assert_eq!(trial["status"], "running", "{state:#}");

    let resumed = ok(&sweep_cli(&campaign).output().unwrap());
    assert!(
        resumed
            .contains("sweep tiny: resuming: 1/8 trials done, running scratch_momentum=0.9_seed4"),
        "{resumed}"
    );
    assert!(resumed.contains("resuming from"), "{resumed}");
    assert_eq!(results(&dir.join("out")), results(&whole));
}

#[test]
fn a_failing_trial_is_recorded_and_the_others_complete() {
    let dir = cli_support::work_dir("sweep-fail", "c");
    // A KD base whose pre-trained teacher does not exist fails when it runs.
    let text = format!(
        "name: failing\noutput: out\n\
         bases:\n  - name: broken\n    inline:\n      models: {{dataset: mnist, training_architecture: mlp-784-16-10, \
         base_architecture: mlp-784-32-10, base_model_path: {d}/missing.safetensors}}\n      \
         sequence: {{kd: {{epochs: 1, lr: 0.1}}}}\n      hyperparameters: {{batch_size: 32, max_train_examples: 320, max_test_examples: 200}}\n  \
         - name: fine\n    inline:\n      models: {{dataset: mnist, training_architecture: mlp-784-16-10}}\n      \
         sequence: {{train: {{epochs: 1, lr: 0.1}}}}\n      hyperparameters: {{batch_size: 32, max_train_examples: 320, max_test_examples: 200}}\n\
         seeds: [1, 2]\n",
        d = dir.display()
    );
    let campaign = write_campaign(&dir, &text);
    let out = sweep_cli(&campaign).output().unwrap();
    let line = error_line(&out);
    assert!(line.contains("2 of 4 trials failed"), "{line}");
    let report = stdout(&out);
    assert!(
        report.contains("fine_seed2 done: 2/4 trials done, 2 failed"),
        "{report}"
    );
    let c = Campaign::load(&campaign).unwrap();
    let state = lit_engine::sweep::CampaignState::read(&c.output)
        .unwrap()
        .unwrap();
    for t in &state.trials {
        match t.base.as_str() {
            "broken" => {
                assert_eq!(t.status, TrialStatus::Failed);
                let e = t.error.as_deref().unwrap();
                assert!(e.contains("missing.safetensors"), "{e}");
            }
            _ => assert_eq!(t.status, TrialStatus::Done, "{t:?}"),
        }
    }
    // Run again: the failed trials stay failed (not rerun) unless --retry-failed.
    let again = sweep_cli(&campaign).output().unwrap();
    assert!(!stdout(&again).contains("starting"), "{}", stdout(&again));
    let retried = sweep_cli(&campaign).arg("--retry-failed").output().unwrap();
    assert!(stdout(&retried).contains("starting: 2/4 trials done, 1 failed, running broken_seed1"));
}

#[test]
fn the_report_numbers_are_the_trials_logs() {
    let out = uninterrupted("sweep-report");
    let report = CampaignReport::read(&out).unwrap();
    assert_eq!(report.groups.len(), 4);
    for g in &report.groups {
        let mut finals = Vec::new();
        for s in &g.seeds {
            // Read independently of the report's reader: the last stage's rows.
            let text = std::fs::read_to_string(out.join(&s.trial).join("metrics.jsonl")).unwrap();
            let rows: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let last_step = rows
                .iter()
                .map(|r| r["step"].as_u64().unwrap())
                .max()
                .unwrap();
            let stage: Vec<&serde_json::Value> = rows
                .iter()
                .filter(|r| r["step"].as_u64() == Some(last_step))
                .collect();
            let acc: Vec<f64> = stage
                .iter()
                .map(|r| 100.0 * r["test_acc"].as_f64().unwrap())
                .collect();
            let best = acc.iter().copied().fold(f64::MIN, f64::max);
            let best_epoch = 1 + acc.iter().position(|&a| a == best).unwrap();
            assert_eq!(s.curve, acc);
            assert_eq!(s.final_test_acc, acc.last().copied());
            assert_eq!(s.best_test_acc, Some(best));
            assert_eq!(s.best_epoch, Some(best_epoch));
            assert_eq!(s.last_epoch, Some(acc.len()));
            finals.push(*acc.last().unwrap());
        }
        let mean = (finals[0] + finals[1]) / 2.0;
        let std = ((finals[0] - mean).powi(2) + (finals[1] - mean).powi(2)).sqrt();
        let got = g.final_test_acc.unwrap();
        assert!(
            (got.mean - mean).abs() < 1e-9 && (got.std - std).abs() < 1e-9,
            "{got:?}"
        );
        assert!(report
            .markdown()
            .contains(&format!("{:.2} ± {:.2}", mean, std)));
    }
    let json: serde_json::Value = serde_json::from_str(&report.json().unwrap()).unwrap();
    assert_eq!(json["groups"].as_array().unwrap().len(), 4);
    let files = report.write().unwrap();
    let svg = std::fs::read_to_string(&files[2]).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 4, "{svg}");
}

#[test]
fn bad_campaign_files_fail_with_file_line_and_key() {
    let dir = cli_support::work_dir("sweep-bad", "c");
    let cases: [(&str, String, &str); 7] = [
        (
            "an unknown key in an inline base",
            campaign_text("").replace("kd: {epochs: 2", "kd: {epoch: 2"),
            "line 12: base `kd` (inline): unknown key `sequence.kd.epoch` (did you mean `epochs`?)",
        ),
        (
            "typo in a grid key",
            campaign_text("").replace("hyperparameters.momentum:", "hyperparameters.momentun:"),
            "line 15: grid key `hyperparameters.momentun`: is not a config key (did you mean `hyperparameters.momentum`?)",
        ),
        (
            "a grid value the config refuses",
            campaign_text("").replace("[0.9, 0.5]", "[0.9, 1.5]"),
            "line 15: grid key `hyperparameters.momentum`: value 1.5 in base `scratch`: hyperparameters.momentum",
        ),
        (
            "a grid key of a stage a base lacks",
            campaign_text("").replace("hyperparameters.momentum:", "sequence.kd.temperature:"),
            "line 15: grid key `sequence.kd.temperature`: base `scratch` has no `sequence.kd` stage",
        ),
        (
            "an unknown top-level key",
            campaign_text("").replace("seeds:", "seed:"),
            "line 16: unknown key `seed` (did you mean `seeds`?)",
        ),
        (
            "an unknown architecture in a base",
            campaign_text("").replace("mlp-784-32-10", "mlp-784-x-10"),
            "line 11: base `kd` (inline): models.base_architecture: architecture `mlp-784-x-10`",
        ),
        (
            "too many grid values",
            campaign_text("").replace(
                "[0.9, 0.5]",
                &format!("[{}]", vec!["0.5"; 1001].join(", ")),
            ),
            "grid key `hyperparameters.momentum`: has 1001 values, above the limit of 1000",
        ),
    ];
    for (what, text, want) in cases {
        let campaign = write_campaign(&dir, &text);
        let line = error_line(&sweep_cli(&campaign).output().unwrap());
        assert!(
            line.contains(&campaign.display().to_string()),
            "{what}: {line}"
        );
        assert!(line.contains(want), "{what}: {line}");
        assert!(!dir.join("out").exists(), "{what}: ran before failing");
    }
}

#[test]
fn trials_side_by_side_give_the_results_of_trials_in_turn() {
    let whole = uninterrupted("sweep-parallel");
    let dir = cli_support::work_dir("sweep-parallel", "parallel");
    let c = Campaign::load(&write_campaign(&dir, &campaign_text(""))).unwrap();
    let opts = SweepOptions {
        parallel: 3,
        clock: None,
        ..options(None)
    };
    assert_eq!(run_campaign(&c, &opts).unwrap().state.counts(), (8, 0, 8));
    assert_eq!(results(&dir.join("out")), results(&whole));
}

#[test]
fn a_trial_time_budget_gives_every_trial_the_same_time_and_counts_as_done() {
    let dir = cli_support::work_dir("sweep-trial-budget", "c");
    // 14 ticks a trial: the scratch trials stop in their second epoch (10 batches an epoch).
    let c = Campaign::load(&write_campaign(
        &dir,
        &campaign_text("trial_budget: {time: 14s}\n"),
    ))
    .unwrap();
    let outcome = run_campaign(&c, &options(None)).unwrap();
    assert_eq!(outcome.stopped, None);
    for t in &outcome.state.trials {
        assert_eq!(t.status, TrialStatus::Done, "{t:?}");
        let reason = t.stop_reason.as_deref().unwrap_or_default();
        assert!(reason.starts_with("trial time budget reached"), "{t:?}");
        assert_eq!(t.budget_seconds, 14.0, "{t:?}");
    }
    let report = CampaignReport::read(&c.output).unwrap();
    let scratch = &report.groups[0].seeds[0];
    assert_eq!(scratch.last_epoch, Some(1), "{scratch:?}");
}
