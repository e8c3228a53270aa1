//! The trainer with queued (asynchronous) steps: on emu, where steps no longer read the device
//! and outcomes are resolved a few steps late, a run whose loss becomes non-finite stops with
//! the message the cpu device (synchronous steps) gives, naming the same epoch and batch, and
//! leaves the kept files exactly as they were.

mod cli_support;

use cli_support::{error_line, ok, repo_data, train_in};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn config(dir: &Path, lr: &str) -> PathBuf {
    let text = format!(
        "models: {{dataset: mnist, training_architecture: mlp-784-16-10}}\n\
         sequence:\n  train: {{epochs: 3, lr: {lr}}}\n\
         params: {{save_directory: {d}/out, save_model_name: s.safetensors, logdir: {d}/logs}}\n\
         hyperparameters: {{batch_size: 64, seed: 2, max_train_batches: 6, max_eval_batches: 2}}\n",
        d = dir.display()
    );
    let p = dir.join("c.yml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// A run diverging at `lr` after one good epoch at 0.1, on `device`: the error line (the run's
/// folder replaced by `DIR`).
fn diverge(device: &str, lr: &str) -> String {
    let dir = cli_support::work_dir("async-trainer", &format!("diverge_{device}_{lr}"));
    let cfg = config(&dir, "0.1");
    let data = repo_data();
    ok(&train_in(
        &cfg,
        &data,
        &["--epochs", "1", "--device", device],
        &[],
    ));
    let kept = files(&dir.join("out"));
    config(&dir, lr);
    let line = error_line(&train_in(
        &cfg,
        &data,
        &["--resume", "--device", device],
        &[],
    ));
    assert_eq!(
        files(&dir.join("out")),
        kept,
        "{device}: the kept files changed"
    );
    line.replace(&dir.display().to_string(), "DIR")
}

#[test]
fn a_non_finite_loss_stops_queued_steps_as_synchronous_ones() {
    // 1e30 diverges in the first batches, 1e5 a few batches later (past the queue's depth).
    for lr in ["1.0e30", "1.0e5"] {
        let cpu = diverge("cpu", lr);
        let emu = diverge("emu", lr);
        assert!(
            cpu.contains("loss became")
                && cpu.contains("at epoch 2 batch")
                && cpu.contains("the last finite state is generation 1"),
            "{cpu}"
        );
        assert_eq!(emu, cpu, "lr {lr}");
    }
}
