//! A run from Rust through `train::Trainer` is the run `lit-engine train` makes: same weights,
//! bit for bit, and the same metrics.

mod cli_support;

use cli_support::{ok, repo_data, tensors, train_in};
use lit_engine::train::Trainer;
use lit_engine::Device;
use std::path::Path;

/// A teacher, then KD into the student, on the committed MNIST subset.
fn config_text(dir: &Path) -> String {
    format!(
        "models:\n  dataset: mnist\n  training_architecture: mlp-784-16-10\n  \
         base_architecture: mlp-784-24-10\n  base_model_path: {d}/teacher.safetensors\n\
         sequence:\n  teacher: {{epochs: 1, lr: 0.1}}\n  kd: {{epochs: 2, lr: 0.05}}\n\
         params: {{save_directory: {d}/out, save_model_name: s.safetensors, logdir: {d}/logs}}\n\
         hyperparameters: {{batch_size: 64, seed: 5, max_train_batches: 3, max_eval_batches: 2}}\n",
        d = dir.display()
    )
}

#[test]
fn a_trainer_run_equals_the_command_line_run() {
    let cli_dir = cli_support::work_dir("trainer-api", "cli");
    let cfg = cli_dir.join("c.yml");
    std::fs::write(&cfg, config_text(&cli_dir)).unwrap();
    ok(&train_in(&cfg, &repo_data(), &[], &[]));

    let api_dir = cli_support::work_dir("trainer-api", "api");
    let summary = Trainer::parse(&config_text(&api_dir), "trainer_api")
        .unwrap()
        .device(Device::Cpu)
        .data_root(repo_data())
        .run()
        .unwrap();

    assert_eq!(
        summary.checkpoint.as_deref(),
        Some(api_dir.join("out/s.safetensors").as_path())
    );
    assert_eq!(summary.epochs.len(), 3);
    for file in [
        "out/s.safetensors",
        "out/s-last.safetensors",
        "teacher.safetensors",
    ] {
        assert_eq!(
            tensors(&api_dir.join(file)),
            tensors(&cli_dir.join(file)),
            "{file}"
        );
    }
    let strip = |dir: &Path| cli_support::metrics_without_seconds(&dir.join("logs/metrics.jsonl"));
    assert_eq!(strip(&api_dir), strip(&cli_dir));

    // A config file's path works as well as its text.
    let from_file = Trainer::load(&cfg).unwrap();
    assert_eq!(from_file.config().models.dataset, "mnist");
}
