//! What the end-to-end tests share: the committed data, a fresh work folder per test, and the
//! `lit-engine` binary run on the CPU with a clean environment.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The MNIST subset committed in `data/`.
pub fn repo_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// An empty folder `<target tmp>/<group>/<name>` (emptied if it exists).
pub fn work_dir(group: &str, name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(group)
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `lit-engine` on the CPU, with no device, data or fault variables inherited.
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lit-engine"));
    cmd.env("LIT_DEVICE", "cpu")
        .env_remove("LIT_REQUIRE_GPU")
        .env_remove("LIT_DATA_DIR")
        .env_remove("LIT_FAULT");
    cmd
}

/// Run `lit-engine args` with extra environment `env`.
pub fn lit(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lit-engine")
}

/// `lit-engine train cfg --data-dir data extra…`.
pub fn train_in(cfg: &Path, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "train",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    lit(&args, env)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert success; returns stdout.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// The one `error:` line of a failed run (which must not have panicked).
pub fn error_line(o: &Output) -> String {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected a failure:\n{}\n{err}",
        stdout(o)
    );
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

/// The rows of a `metrics.jsonl`, without their timings (`seconds`).
pub fn metrics_without_seconds(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

/// Every tensor of a safetensors file, by name, as raw bytes (bit-exact comparison).
pub fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

/// A tiny CIFAR-10 binary set: each class a colour with noise, so a few steps learn something.
pub fn tiny_cifar(root: &Path, train_n: usize, test_n: usize) {
    let dir = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let make = |n: usize, salt: usize| -> Vec<u8> {
        let labels: Vec<i32> = (0..n).map(|i| (i % 10) as i32).collect();
        let mut pixels = Vec::with_capacity(n * 3072);
        for (i, &l) in labels.iter().enumerate() {
            for c in 0..3 {
                for p in 0..1024 {
                    let base = (l as usize * 25 + c * 60) % 256;
                    let noise = (i * 31 + p * 7 + c * 13 + salt) % 41;
                    pixels.push(((base + noise) % 256) as u8);
                }
            }
        }
        lit_engine::data::cifar::encode_cifar10(&pixels, &labels)
    };
    let per_file = train_n / 5;
    for k in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{k}.bin")), make(per_file, k)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), make(test_n, 99)).unwrap();
}
