//! Runs that survive what happens overnight: a kill (`LIT_FAULT=checkpoint-write:N` aborts the
//! process at the N-th write or rename of a checkpoint) or a full disk (`checkpoint-fail:N`) at
//! every point, a stop on a signal at any batch, then `--resume`; the final weights and metrics
//! must equal an uninterrupted run's, bit for bit. Plus the guards on outputs, the resume config
//! check, and non-finite state.

mod cli_support;

use cli_support::{ok as assert_ok, repo_data, stderr, stdout, tensors};
use lit_engine::train::tensorboard::read_events;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn work_dir(name: &str) -> PathBuf {
    cli_support::work_dir("run-safety", name)
}

/// A teacher stage then a KD stage with a plateau schedule (state that must survive a resume),
/// a commit after every epoch.
fn config(dir: &Path, extra_params: &str, extra_hyper: &str) -> PathBuf {
    let text = format!(
        "models:\n  dataset: mnist\n  training_architecture: mlp-784-16-10\n  base_architecture: mlp-784-24-10\n  \
         base_model_path: {d}/teacher.safetensors\n\
         sequence:\n  teacher: {{epochs: 2, lr: 0.1}}\n  \
         kd: {{epochs: 2, lr: 0.05, schedule: plateau, plateau_patience: 1}}\n\
         params: {{save_directory: {d}/out, save_model_name: s.safetensors, logdir: {d}/logs, save_every: 1{extra_params}}}\n\
         hyperparameters: {{batch_size: 64, seed: 11, max_train_batches: 4, max_eval_batches: 2{extra_hyper}}}\n",
        d = dir.display()
    );
    let p = dir.join("c.yml");
    std::fs::write(&p, text).unwrap();
    p
}

fn train(cfg: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    cli_support::train_in(cfg, &repo_data(), extra, env)
}

/// metrics.jsonl without the wall-clock field.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    cli_support::metrics_without_seconds(&dir.join("logs/metrics.jsonl"))
}

/// What an uninterrupted run leaves, for comparison.
struct Outcome {
    student_last: Vec<(String, Vec<u8>)>,
    student_best: Vec<(String, Vec<u8>)>,
    teacher: Vec<(String, Vec<u8>)>,
    metrics: Vec<serde_json::Value>,
}

fn outcome(dir: &Path) -> Outcome {
    Outcome {
        student_last: tensors(&dir.join("out/s-last.safetensors")),
        student_best: tensors(&dir.join("out/s.safetensors")),
        teacher: tensors(&dir.join("teacher.safetensors")),
        metrics: metrics(dir),
    }
}

fn assert_same(dir: &Path, want: &Outcome, what: &str) {
    let got = outcome(dir);
    assert!(
        got.student_last == want.student_last,
        "{what}: last weights differ"
    );
    assert!(
        got.student_best == want.student_best,
        "{what}: best weights differ"
    );
    assert!(
        got.teacher == want.teacher,
        "{what}: teacher weights differ"
    );
    assert_eq!(got.metrics, want.metrics, "{what}: metrics differ");
    // The event file of the run shows every epoch once.
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/s-last.json")).unwrap()).unwrap();
    let events = dir.join("logs").join(side["events_file"].as_str().unwrap());
    let mut seen = BTreeSet::new();
    for e in read_events(&events).unwrap() {
        for (tag, _) in e.scalars {
            assert!(
                seen.insert((tag.clone(), e.step)),
                "{what}: {tag} at step {} twice",
                e.step
            );
        }
    }
    assert_eq!(seen.len(), want.metrics.len() * 5 + 2, "{what}: {seen:?}");
    // One event file: a run that died before its first commit does not leave its own behind.
    let event_files = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("tfevents"))
        .count();
    assert_eq!(event_files, 1, "{what}: event files in logs");
    // A finished run leaves no temp file beside its outputs.
    for d in [
        dir.join("out"),
        dir.join("out/s-last.state"),
        dir.join("logs"),
    ] {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(".tmp-"),
                "{what}: {name} left in {}",
                d.display()
            );
        }
    }
}

fn reference(name: &str) -> Outcome {
    let dir = work_dir(name);
    let cfg = config(&dir, "", "");
    assert_ok(&train(&cfg, &[], &[]));
    outcome(&dir)
}

/// Resume the run to completion; a run killed before its first commit has no state to resume
/// and starts over.
fn finish(cfg: &Path, what: &str) {
    let o = train(cfg, &["--resume"], &[]);
    if o.status.success() {
        assert!(stdout(&o).contains("resuming from generation"), "{what}");
        return;
    }
    let err = stderr(&o);
    assert!(
        err.contains("there is no committed run state"),
        "{what}: resume failed:\n{err}"
    );
    assert_ok(&train(cfg, &[], &[]));
}

#[test]
fn a_kill_at_any_checkpoint_write_then_resume_gives_the_uninterrupted_run() {
    let want = reference("kill_reference");
    let mut points = 0;
    for n in 1.. {
        let dir = work_dir("kill");
        let cfg = config(&dir, "", "");
        let spec = format!("checkpoint-write:{n}");
        let o = train(&cfg, &[], &[("LIT_FAULT", &spec)]);
        if o.status.success() {
            break; // past the last fault point of the run
        }
        assert!(
            stderr(&o).contains(&format!("fault point {n} ")),
            "{}",
            stderr(&o)
        );
        finish(&cfg, &spec);
        assert_same(&dir, &want, &spec);
        points = n;
    }
    // 4 epochs: each commits 3 files + COMMIT + 2 published copies; the best checkpoint and the
    // teacher add theirs. Far fewer points would mean the hook lost track of the writes.
    assert!(points >= 40, "only {points} fault points");
}

#[test]
fn a_kill_during_a_resume_leaves_a_state_that_still_resumes_to_the_same_run() {
    let want = reference("resume_kill_reference");
    // The first points of a resumed run rewrite metrics.jsonl and the event file, then publish
    // the committed copies; then come its own commits.
    for m in 1..=10 {
        let dir = work_dir("resume_kill");
        let cfg = config(&dir, "", "");
        let o = train(&cfg, &[], &[("LIT_FAULT", "checkpoint-write:20")]);
        assert!(!o.status.success());
        let spec = format!("checkpoint-write:{m}");
        let o = train(&cfg, &["--resume"], &[("LIT_FAULT", &spec)]);
        assert!(
            !o.status.success(),
            "{spec}: the resume should have been killed"
        );
        finish(&cfg, &spec);
        assert_same(&dir, &want, &format!("resume killed at {spec}"));
    }
}

#[test]
fn a_failed_write_at_any_point_stops_cleanly_and_resumes_to_the_same_run() {
    let want = reference("fail_reference");
    for n in 1.. {
        let dir = work_dir("fail");
        let cfg = config(&dir, "", "");
        let spec = format!("checkpoint-fail:{n}");
        let o = train(&cfg, &[], &[("LIT_FAULT", &spec)]);
        if o.status.success() {
            assert!(n > 40, "only {n} fault points");
            break;
        }
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{spec}: {err}");
        assert!(
            err.contains("injected fault") && !err.contains("panicked"),
            "{spec}: {err}"
        );
        // No temp file is left beside the outputs.
        for d in [dir.join("out"), dir.clone()] {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.contains(".tmp-"),
                    "{spec}: {name} left in {}",
                    d.display()
                );
            }
        }
        finish(&cfg, &spec);
        assert_same(&dir, &want, &spec);
    }
}

#[test]
fn a_stop_at_any_batch_saves_a_state_that_resumes_to_the_same_run() {
    let want = reference("stop_reference");
    // 4 batches an epoch, 4 epochs: before batch 1, inside epochs, at an epoch's first batch and
    // at the second stage's first and last batches.
    for k in [1, 2, 5, 8, 9, 11, 16] {
        let dir = work_dir("stop");
        let cfg = config(&dir, "", "");
        let spec = format!("interrupt-at-batch:{k}");
        let o = train(&cfg, &[], &[("LIT_FAULT", &spec)]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(130), "{spec}: {err}");
        assert!(
            err.contains("stopped by a signal") && err.contains("--resume`"),
            "{spec}: {err}"
        );
        let resumed = train(&cfg, &["--resume"], &[]);
        assert_ok(&resumed);
        assert!(stdout(&resumed).contains("batches of epoch"), "{spec}");
        assert_same(&dir, &want, &spec);
    }
}

/// A run with a wider teacher and whole epochs, so that a signal lands inside an epoch.
#[cfg(unix)]
fn long_config(dir: &Path) -> PathBuf {
    let cfg = config(dir, "", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("mlp-784-24-10", "mlp-784-256-256-10")
        .replace("max_train_batches: 4", "max_train_batches: 150");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Start a long run, send `signals` once its first epoch is reported; its exit code and stderr.
#[cfg(unix)]
fn signal_during_run(cfg: &Path, signals: &[&str]) -> (Option<i32>, String) {
    use std::io::{BufRead, Read};
    let data = repo_data();
    let mut child = cli_support::command()
        .args([
            "train",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "run ended early");
        if line.starts_with("epoch 1/2") {
            break;
        }
    }
    for signal in signals {
        let kill = Command::new("kill")
            .args([*signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    (child.wait().unwrap().code(), err)
}

#[cfg(unix)]
#[test]
fn sigterm_stops_at_a_batch_with_exit_143_and_the_run_resumes_exactly() {
    let straight = work_dir("signal_reference");
    assert_ok(&train(&long_config(&straight), &[], &[]));
    let want = tensors(&straight.join("out/s-last.safetensors"));

    let dir = work_dir("sigterm");
    let cfg = long_config(&dir);
    let (code, err) = signal_during_run(&cfg, &["-TERM"]);
    assert_eq!(code, Some(143), "{err}");
    assert!(err.contains("stopped by a signal at epoch "), "{err}");
    assert_ok(&train(&cfg, &["--resume"], &[]));
    assert!(
        tensors(&dir.join("out/s-last.safetensors")) == want,
        "weights after SIGTERM + resume differ from the straight run"
    );
    assert_eq!(metrics(&dir), metrics(&straight));

    // A second Ctrl-C exits at once; what is committed still resumes to the same run.
    let dir = work_dir("sigint_twice");
    let cfg = long_config(&dir);
    let (code, err) = signal_during_run(&cfg, &["-INT", "-INT"]);
    assert_eq!(code, Some(130), "{err}");
    // The signals may land before the first commit: then there is nothing to resume.
    finish(&cfg, "two SIGINTs");
    assert!(
        tensors(&dir.join("out/s-last.safetensors")) == want,
        "weights after two SIGINTs + resume differ from the straight run"
    );
    assert_eq!(metrics(&dir), metrics(&straight));
}
