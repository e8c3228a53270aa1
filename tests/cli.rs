//! End-to-end tests of the `lit-engine` binary: tiny training runs on the committed MNIST subset,
//! and the one-line errors a user sees for common mistakes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// A fresh folder for one test.
fn work_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small config whose outputs go into `dir`.
fn tiny_config(dir: &Path, arch: &str, extra_hyper: &str) -> String {
    format!(
        "models: {{dataset: mnist, training_architecture: {arch}}}\n\
         sequence:\n  train: {{epochs: 1, lr: 0.1}}\n\
         params: {{save_directory: {d}/ckpt, save_model_name: tiny.safetensors, logdir: {d}/logs}}\n\
         hyperparameters: {{batch_size: 64, seed: 3{extra_hyper}}}\n",
        d = dir.display()
    )
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("config.yml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Run the binary with a clean device environment plus `env`.
fn lit(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lit-engine"));
    cmd.args(args)
        .env_remove("LIT_DEVICE")
        .env_remove("LIT_REQUIRE_GPU")
        .env_remove("LIT_DATA_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lit-engine")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The failure contract: non-zero exit, exactly one line on stderr starting with `error: `, no panic.
fn assert_one_line_error(o: &Output) -> String {
    let (out, err) = text(o);
    assert!(
        !o.status.success(),
        "expected failure; stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "panic in stderr:\n{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

/// `test acc 87.5%` on the last epoch line.
fn last_test_acc(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with("epoch "))
        .expect("an epoch line");
    let acc = line
        .split("test acc ")
        .nth(1)
        .expect("test acc on the epoch line");
    acc.split('%')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("a number")
}

#[test]
fn cpu_train_writes_checkpoint_sidecar_metrics_and_eval_agrees() {
    let dir = work_dir("cpu_train");
    let cfg = write_config(
        &dir,
        &tiny_config(
            &dir,
            "mlp-784-32-10",
            ", max_train_batches: 40, max_eval_batches: 8",
        ),
    );
    let data = repo_data();
    let o = lit(
        &[
            "train",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("LIT_DEVICE", "cpu")],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("epoch 1/1  loss "), "{out}");
    let acc = last_test_acc(&out);
    // 40 steps of 64 examples: far above chance (10%) if training works.
    assert!(acc > 70.0, "test accuracy {acc}% after 40 steps:\n{out}");
    assert!(out.contains("final test accuracy"), "{out}");

    let ckpt = dir.join("ckpt/tiny.safetensors");
    assert!(ckpt.is_file(), "no checkpoint at {}", ckpt.display());
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("ckpt/tiny.json")).unwrap()).unwrap();
    assert_eq!(side["epoch"], 1);
    assert_eq!(
        side["keys"],
        serde_json::json!(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"])
    );
    assert_eq!(
        side["config"]["models"]["training_architecture"],
        "mlp-784-32-10"
    );
    let metrics = std::fs::read_to_string(dir.join("logs/metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert!(
        (lines[0]["test_acc"].as_f64().unwrap() * 100.0 - acc).abs() < 0.051,
        "{metrics} vs {acc}"
    );

    // `eval` reloads the checkpoint and must reproduce the reported test accuracy.
    let o = lit(
        &[
            "eval",
            ckpt.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("LIT_DEVICE", "cpu")],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    let eval_acc: f64 = out
        .split("test acc ")
        .nth(1)
        .unwrap()
        .split('%')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (eval_acc - acc).abs() < 0.051,
        "eval {eval_acc}% vs training's {acc}%"
    );
}

#[test]
fn emu_device_runs_a_few_batches_through_the_cli_and_matches_cpu() {
    let data = repo_data();
    let run_on = |device: &str| {
        let dir = work_dir(&format!("emu_vs_cpu_{device}"));
        let cfg = write_config(
            &dir,
            &tiny_config(
                &dir,
                "mlp-784-16-10",
                ", max_train_batches: 3, max_eval_batches: 1",
            ),
        );
        let o = lit(
            &[
                "train",
                cfg.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
            ],
            &[("LIT_DEVICE", device)],
        );
        let (out, err) = text(&o);
        assert!(
            o.status.success(),
            "{device}: stdout:\n{out}\nstderr:\n{err}"
        );
        assert!(dir.join("ckpt/tiny.safetensors").is_file());
        out
    };
    let emu = run_on("emu");
    assert!(emu.contains("device emu"), "{emu}");
    let cpu = run_on("cpu");
    // Same seed, same data order: the kernels must reproduce the CPU run's numbers.
    let loss = |out: &str| -> f64 {
        let line = out
            .lines()
            .find(|l| l.starts_with("epoch 1/1"))
            .expect("epoch line");
        line.split("loss ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        (loss(&emu) - loss(&cpu)).abs() <= 2e-3,
        "emu:\n{emu}\ncpu:\n{cpu}"
    );
    assert!(
        (last_test_acc(&emu) - last_test_acc(&cpu)).abs() <= 1.6,
        "emu:\n{emu}\ncpu:\n{cpu}"
    );
}

#[test]
fn cuda_request_without_a_gpu_is_a_one_line_error() {
    let dir = work_dir("cuda");
    let cfg = write_config(
        &dir,
        &tiny_config(
            &dir,
            "mlp-784-16-10",
            ", max_train_batches: 2, max_eval_batches: 1",
        ),
    );
    let data = repo_data();
    let args = [
        "train",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let o = lit(&args, &[("LIT_DEVICE", "cuda")]);
    if lit_engine::Device::cuda().is_ok() {
        // A GPU machine: the same request must then train.
        assert!(o.status.success(), "{:?}", text(&o));
        return;
    }
    let line = assert_one_line_error(&o);
    assert!(line.contains("device") || line.contains("cuda"), "{line}");
    // And LIT_REQUIRE_GPU=1 refuses the silent cpu fallback of `auto`.
    let line = assert_one_line_error(&lit(&args, &[("LIT_REQUIRE_GPU", "1")]));
    assert!(line.contains("LIT_REQUIRE_GPU"), "{line}");
}

#[test]
fn unknown_config_key_is_named_with_the_closest_valid_key() {
    let dir = work_dir("unknown_key");
    let cfg = write_config(
        &dir,
        &tiny_config(&dir, "mlp-784-16-10", "").replace("seed: 3", "bach_size: 3"),
    );
    let line = assert_one_line_error(&lit(&["train", cfg.to_str().unwrap()], &[]));
    assert!(line.contains("config.yml line 5"), "{line}");
    assert!(
        line.contains("unknown key `hyperparameters.bach_size`"),
        "{line}"
    );
    assert!(line.contains("did you mean `batch_size`?"), "{line}");
}

#[test]
fn bad_values_name_the_key_path() {
    let dir = work_dir("bad_value");
    let cfg = write_config(
        &dir,
        &tiny_config(&dir, "mlp-784-16-10", "").replace("epochs: 1", "epochs: 0"),
    );
    let line = assert_one_line_error(&lit(&["train", cfg.to_str().unwrap()], &[]));
    assert!(line.contains("sequence.train.epochs must be > 0"), "{line}");

    let cfg = write_config(&dir, &tiny_config(&dir, "resnet-9000", ""));
    let line = assert_one_line_error(&lit(
        &[
            "train",
            cfg.to_str().unwrap(),
            "--data-dir",
            repo_data().to_str().unwrap(),
        ],
        &[("LIT_DEVICE", "cpu")],
    ));
    assert!(
        line.contains("models.training_architecture") && line.contains("mlp-"),
        "{line}"
    );
}

#[test]
fn missing_data_dir_is_named_in_the_error() {
    let dir = work_dir("missing_data");
    let cfg = write_config(&dir, &tiny_config(&dir, "mlp-784-16-10", ""));
    let nowhere = dir.join("no-such-data");
    let line = assert_one_line_error(&lit(
        &[
            "train",
            cfg.to_str().unwrap(),
            "--data-dir",
            nowhere.to_str().unwrap(),
        ],
        &[("LIT_DEVICE", "cpu")],
    ));
    assert!(
        line.contains(&nowhere.join("mnist").display().to_string()),
        "{line}"
    );
    assert!(line.contains("LIT_DATA_DIR"), "{line}");

    // The environment variable is honoured too.
    let line = assert_one_line_error(&lit(
        &["train", cfg.to_str().unwrap()],
        &[
            ("LIT_DEVICE", "cpu"),
            ("LIT_DATA_DIR", nowhere.to_str().unwrap()),
        ],
    ));
    assert!(line.contains(&nowhere.display().to_string()), "{line}");
}

#[test]
fn diverging_loss_stops_with_a_clear_error_and_no_checkpoint() {
    let dir = work_dir("diverge");
    let cfg = write_config(
        &dir,
        &tiny_config(
            &dir,
            "mlp-784-16-10",
            ", max_train_batches: 20, max_eval_batches: 1",
        )
        .replace("lr: 0.1", "lr: 1.0e30"),
    );
    let data = repo_data();
    let o = lit(
        &[
            "train",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("LIT_DEVICE", "cpu")],
    );
    let line = assert_one_line_error(&o);
    assert!(
        line.contains("loss became") && line.contains("sequence.train.lr"),
        "{line}"
    );
    assert!(!dir.join("ckpt/tiny.safetensors").exists());
}

#[test]
fn seed_lit_config_without_its_teacher_names_the_missing_weights() {
    let dir = work_dir("seed");
    let cfg = write_config(
        &dir,
        "models:\n  dataset: mnist\n  training_architecture: mlp-784-10\n  base_architecture: mlp-784-32-10\n  \
         base_model_path: ./models/teachers/missing.pth\n\
         sequence:\n  lit: {epochs: 15, lr: 0.01, milestones: [3,6,9,12,15]}\n",
    );
    // With the data, and with none at all: the teacher is checked before any data are read.
    for data in [repo_data(), dir.join("no-data-here")] {
        let args = [
            "train",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        let line = assert_one_line_error(&lit(&args, &[("LIT_DEVICE", "cpu")]));
        assert!(
            line.contains("models.base_model_path")
                && line.contains("missing.safetensors not found"),
            "{line}"
        );
    }
}

#[test]
fn divergence_after_a_good_epoch_keeps_that_epochs_checkpoint() {
    let dir = work_dir("diverge_late");
    // Epoch 1 trains normally; the milestone then multiplies lr by 1e30 for epoch 2.
    let cfg = write_config(
        &dir,
        &tiny_config(
            &dir,
            "mlp-784-16-10",
            ", max_train_batches: 10, max_eval_batches: 2",
        )
        .replace("lr: 0.1}", "lr: 0.1, milestones: [1], gamma: 1.0e30}"),
    );
    let data = repo_data();
    // `--epochs 2` overrides the config's single epoch.
    let o = lit(
        &[
            "train",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--epochs",
            "2",
        ],
        &[("LIT_DEVICE", "cpu")],
    );
    let line = assert_one_line_error(&o);
    assert!(
        line.contains("at epoch 2")
            && line.contains("the last finite state is generation 1 of the run state (epoch 1/2"),
        "{line}"
    );
    assert!(text(&o).0.contains("epoch 1/2  loss"), "{:?}", text(&o));
    let ckpt = dir.join("ckpt/tiny.safetensors");
    assert!(line.contains(&ckpt.display().to_string()), "{line}");
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("ckpt/tiny.json")).unwrap()).unwrap();
    assert_eq!(side["epoch"], 1);
    let metrics = std::fs::read_to_string(dir.join("logs/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1, "{metrics}");
}

/// `lit-engine bench`: each benchmark prints one JSON line with its timings (tiny batch here);
/// bad requests are one-line errors.
#[test]
fn bench_prints_json_timings_and_rejects_bad_requests() {
    let cpu = [("LIT_DEVICE", "cpu")];
    let tiny = [
        "--student",
        "resnet20",
        "--teacher",
        "resnet20",
        "--batch",
        "2",
    ];
    let o = lit(
        &[
            &["bench", "all"][..],
            &tiny,
            &["--steps", "2", "--warmup", "0"],
        ]
        .concat(),
        &cpu,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let names: Vec<&str> = lines.iter().map(|v| v["bench"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "resnet20_step",
            "kd_resnet20_to_resnet20_step",
            "resnet20_forward_eval"
        ]
    );
    for v in &lines {
        let (best, median) = (
            v["best_ms"].as_f64().unwrap(),
            v["median_ms"].as_f64().unwrap(),
        );
        assert!(best > 0.0 && best <= median, "{v}");
        assert_eq!(v["batch"], 2);
    }
    for (args, want) in [
        (
            vec!["bench", "sideways"],
            "expected step, kd, forward or all",
        ),
        (
            vec!["bench", "step", "--steps", "0"],
            "--steps and --batch must be > 0",
        ),
        (
            vec!["bench", "step", "--student", "vdcnn9-maxpool"],
            "takes token ids",
        ),
    ] {
        let line = assert_one_line_error(&lit(&args, &cpu));
        assert!(line.contains(want), "{args:?}: {line}");
    }
}
