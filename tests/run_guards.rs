//! What a run refuses before it starts (a folder in use, outputs over inputs, an empty training
//! split), what `--resume` accepts of a changed config, and non-finite state: never saved, the
//! teacher blamed when it is the teacher, `eval` failing on it.

mod cli_support;

use cli_support::{error_line, ok, repo_data, stderr};
use lit_engine::data::idx;
use std::path::{Path, PathBuf};
use std::process::Output;

fn work_dir(name: &str) -> PathBuf {
    cli_support::work_dir("run-guards", name)
}

fn lit(args: &[&str]) -> Output {
    cli_support::lit(args, &[])
}

fn train_in(cfg: &Path, data: &Path, extra: &[&str]) -> Output {
    cli_support::train_in(cfg, data, extra, &[])
}

fn train(cfg: &Path, extra: &[&str]) -> Output {
    train_in(cfg, &repo_data(), extra)
}

/// `sequence` and `params` in YAML flow style, the rest fixed.
fn config(dir: &Path, sequence: &str, params: &str, hyper: &str) -> PathBuf {
    let text = format!(
        "models:\n  dataset: mnist\n  training_architecture: mlp-784-16-10\n  base_architecture: mlp-784-24-10\n  \
         base_model_path: {d}/teacher.safetensors\n\
         sequence:\n{sequence}\
         params: {{save_directory: {d}/out, save_model_name: s.safetensors, logdir: {d}/logs{params}}}\n\
         hyperparameters: {{batch_size: 64, seed: 2, max_train_batches: 3, max_eval_batches: 2{hyper}}}\n",
        d = dir.display()
    );
    let p = dir.join("c.yml");
    std::fs::write(&p, text).unwrap();
    p
}

const TWO_STAGES: &str =
    "  teacher: {epochs: 2, lr: 0.1}\n  kd: {epochs: 2, lr: 0.05, temperature: 4.0}\n";

#[test]
fn resume_applies_rate_and_length_changes_and_refuses_another_experiment() {
    let dir = work_dir("config_change");
    let cfg = config(&dir, TWO_STAGES, "", "");
    ok(&train(&cfg, &["--epochs", "1"]));

    // Another batch size or temperature is another experiment: refused with the diff.
    for (from, to, key) in [
        (
            "batch_size: 64",
            "batch_size: 32",
            "hyperparameters.batch_size: 64 -> 32",
        ),
        (
            "temperature: 4.0",
            "temperature: 2.0",
            "sequence.kd.temperature: 4.0 -> 2.0",
        ),
        (
            "mlp-784-16-10",
            "mlp-784-20-10",
            "models.training_architecture",
        ),
    ] {
        let text = std::fs::read_to_string(&cfg).unwrap();
        let changed = dir.join("changed.yml");
        std::fs::write(&changed, text.replace(from, to)).unwrap();
        let o = train(&changed, &["--resume"]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains(key) && err.contains("--allow-config-change"),
            "{key}: {err}"
        );
    }

    // Rate and length are applied, and said.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("lr: 0.05", "lr: 0.02");
    std::fs::write(&cfg, text).unwrap();
    let out = ok(&train(&cfg, &["--resume"]));
    assert!(
        out.contains(
            "config changed since the run started: sequence.kd.lr: 0.05 -> 0.02 (applied)"
        ) && out.contains("sequence.teacher.epochs: 1 -> 2 (applied)"),
        "{out}"
    );
    let lines = std::fs::read_to_string(dir.join("logs/metrics.jsonl")).unwrap();
    let kd: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|m| m["stage"] == "kd")
        .collect();
    assert_eq!(kd.len(), 2, "{lines}");
    assert_eq!(kd[1]["lr"], 0.02, "{lines}");
}

#[test]
fn a_changed_config_resumes_with_allow_config_change() {
    let dir = work_dir("config_allow");
    let cfg = config(&dir, TWO_STAGES, "", "");
    ok(&train(&cfg, &["--epochs", "1"]));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("temperature: 4.0", "temperature: 2.0");
    std::fs::write(&cfg, text).unwrap();
    let out = ok(&train(&cfg, &["--resume", "--allow-config-change"]));
    assert!(
        out.contains("sequence.kd.temperature: 4.0 -> 2.0 (applied (--allow-config-change))"),
        "{out}"
    );
}

#[test]
fn a_second_run_on_a_folder_is_refused_and_a_dead_runs_lock_is_taken_over() {
    let dir = work_dir("lock");
    let cfg = config(&dir, "  teacher: {epochs: 1, lr: 0.1}\n", "", "");
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let lock_path = dir.join("out/.lit-engine.lock");
    std::fs::write(&lock_path, "4242").unwrap();
    let held = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .unwrap();
    held.lock().unwrap();
    let line = error_line(&train(&cfg, &[]));
    assert!(
        line.contains("in use by another lit-engine run (process 4242)"),
        "{line}"
    );
    drop(held);
    // The lock file of a run that died (its OS lock is gone with it) does not stop the next.
    let o = train(&cfg, &[]);
    ok(&o);
    assert!(stderr(&o).contains("no longer alive (process 4242)"));
}

#[test]
fn outputs_that_would_destroy_inputs_are_refused_before_any_work() {
    let dir = work_dir("outputs");
    // A teacher to protect.
    let cfg = config(&dir, "  teacher: {epochs: 1, lr: 0.1}\n", "", "");
    ok(&train(&cfg, &[]));
    let teacher = dir.join("teacher.safetensors");
    let before = std::fs::read(&teacher).unwrap();

    let kd = "  kd: {epochs: 1, lr: 0.05}\n";
    let over_teacher = format!(
        "models:\n  dataset: mnist\n  training_architecture: mlp-784-16-10\n  base_architecture: mlp-784-24-10\n  \
         base_model_path: {d}/teacher.pth\n\
         sequence:\n{kd}\
         params: {{save_directory: {d}, save_model_name: teacher.pth}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("over.yml"), over_teacher).unwrap();
    let line = error_line(&train(&dir.join("over.yml"), &[]));
    assert!(line.contains("over the weights of its teacher"), "{line}");
    assert_eq!(std::fs::read(&teacher).unwrap(), before);

    let cfg = config(&dir, kd, "", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "save_model_name: s.safetensors",
            "save_model_name: ../up.safetensors",
        ),
    )
    .unwrap();
    let line = error_line(&train(&cfg, &[]));
    assert!(line.contains("must be a plain file name"), "{line}");

    let cfg = config(&dir, kd, "", "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(dir.join("a-file"), b"x").unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            &format!("{}/out", dir.display()),
            &format!("{}/a-file", dir.display()),
        ),
    )
    .unwrap();
    let line = error_line(&train(&cfg, &[]));
    assert!(line.contains("is not a folder"), "{line}");

    // `data subset-idx` onto its own source.
    let src = dir.join("mnist-copy");
    std::fs::create_dir_all(&src).unwrap();
    for f in std::fs::read_dir(repo_data().join("mnist"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(f.path(), src.join(f.file_name())).unwrap();
    }
    let s = src.to_str().unwrap();
    let line = error_line(&lit(&[
        "data",
        "subset-idx",
        "--from",
        s,
        "--to",
        s,
        "--train",
        "5",
        "--test",
        "5",
    ]));
    assert!(line.contains("is the source folder"), "{line}");
}

#[test]
fn stray_temp_files_of_dead_runs_are_removed() {
    let dir = work_dir("stray");
    let cfg = config(&dir, "  teacher: {epochs: 1, lr: 0.1}\n", "", "");
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let stray = dir.join("out/.s.safetensors.tmp-999999");
    std::fs::write(&stray, b"half a checkpoint").unwrap();
    let o = train(&cfg, &[]);
    ok(&o);
    assert!(!stray.exists());
    assert!(stderr(&o).contains("left by a run that died mid-write"));
}

#[test]
fn an_empty_training_split_is_an_error() {
    let dir = work_dir("empty");
    let data = dir.join("data");
    let mnist = data.join("mnist");
    std::fs::create_dir_all(&mnist).unwrap();
    let empty = idx::IdxImages {
        count: 0,
        rows: 28,
        cols: 28,
        pixels: Vec::new(),
    };
    let one = idx::IdxImages {
        count: 1,
        rows: 28,
        cols: 28,
        pixels: vec![0; 784],
    };
    for (prefix, images, labels) in [("train", &empty, &[][..]), ("t10k", &one, &[3u8][..])] {
        idx::write_gz(
            &mnist.join(format!("{prefix}-images-idx3-ubyte.gz")),
            &idx::encode_images(images),
        )
        .unwrap();
        idx::write_gz(
            &mnist.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            &idx::encode_labels(labels),
        )
        .unwrap();
    }
    let cfg = config(&dir, "  train: {epochs: 1, lr: 0.1}\n", "", "");
    let line = error_line(&train_in(&cfg, &data, &[]));
    assert!(line.contains("empty"), "{line}");
}

/// Set the last f32 of a safetensors file to NaN (the last tensor's last element).
fn poison(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_teacher_with_non_finite_weights_is_blamed_by_file() {
    let dir = work_dir("nan_teacher");
    let cfg = config(&dir, "  teacher: {epochs: 1, lr: 0.1}\n", "", "");
    ok(&train(&cfg, &[]));
    let teacher = dir.join("teacher.safetensors");
    poison(&teacher);
    let cfg = config(&dir, "  kd: {epochs: 1, lr: 0.05}\n", "", "");
    let line = error_line(&train(&cfg, &[]));
    assert!(
        line.contains(&teacher.display().to_string())
            && line.contains("teacher file is broken")
            && !line.contains("smaller"),
        "{line}"
    );
}

#[test]
fn eval_fails_on_non_finite_weights() {
    let dir = work_dir("nan_eval");
    let cfg = config(&dir, "  train: {epochs: 1, lr: 0.1}\n", "", "");
    ok(&train(&cfg, &[]));
    let ckpt = dir.join("out/s.safetensors");
    let data = repo_data();
    let eval = |c: &Path| {
        lit(&[
            "eval",
            c.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
    };
    ok(&eval(&ckpt));
    poison(&ckpt);
    let line = error_line(&eval(&ckpt));
    assert!(line.contains("non-finite"), "{line}");
}

#[test]
fn divergence_after_a_resume_names_the_last_finite_state() {
    let dir = work_dir("diverge_resumed");
    let cfg = config(&dir, "  train: {epochs: 3, lr: 0.1}\n", "", "");
    ok(&train(&cfg, &["--epochs", "1"]));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("lr: 0.1", "lr: 1.0e30");
    std::fs::write(&cfg, text).unwrap();
    let line = error_line(&train(&cfg, &["--resume"]));
    assert!(
        line.contains("the last finite state is generation 1 of the run state"),
        "{line}"
    );
    // Nothing non-finite was committed: the state still resumes, and its weights are finite.
    let bytes = std::fs::read(dir.join("out/s-last.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, t) in st.tensors() {
        if t.dtype() == safetensors::Dtype::F32 {
            assert!(
                t.data()
                    .chunks_exact(4)
                    .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
                "{name}"
            );
        }
    }
}

#[test]
fn a_model_whose_training_state_exceeds_the_memory_is_refused_before_allocation() {
    let dir = work_dir("memory");
    let cfg = config(&dir, "  train: {epochs: 1, lr: 0.1}\n", "", "");
    let megabyte = [("LIT_AVAILABLE_MEMORY", "1000000")];
    // 12 730 values: 150 KB of weights, gradients and momentum fit in 1 MB.
    ok(&cli_support::train_in(&cfg, &repo_data(), &[], &megabyte));
    // 795 010 values: 9.5 MB do not.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("mlp-784-16-10", "mlp-784-1000-10");
    std::fs::write(&cfg, text).unwrap();
    let line = error_line(&cli_support::train_in(&cfg, &repo_data(), &[], &megabyte));
    assert!(
        line.contains("mlp-784-1000-10")
            && line.contains("795010 parameter and buffer values")
            && line.contains("available"),
        "{line}"
    );
}
