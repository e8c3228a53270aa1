//! `lit-engine train` with step graphs (`src/train/graphed_steps.rs`): on emu, a run whose
//! training steps are captured once per epoch and replayed writes exactly the metrics and
//! checkpoints of the same run with `params.step_graph: false` (every kernel launched from the
//! host), for plain training with BatchNorm (and a short last batch, which runs eagerly), and
//! KD and quantized distillation, each with the whole step in the graph and with cached teacher
//! logits filled in before each replay.

mod cli_support;

use cli_support::{metrics_without_seconds, ok, repo_data, tensors, tiny_cifar, train_in};
use std::path::Path;

/// A run's stdout, metrics (without timings) and checkpoints (every tensor's bytes).
type RunFiles = (String, Vec<serde_json::Value>, Vec<Vec<(String, Vec<u8>)>>);

/// Run `config` (with `params.step_graph` set to `graph`) on emu in a fresh folder; its stdout,
/// metrics and every checkpoint's tensors.
fn run(name: &str, config: &dyn Fn(&Path) -> String, data: Option<&Path>, graph: bool) -> RunFiles {
    let dir = cli_support::work_dir("graphed-training", &format!("{name}_{graph}"));
    let cfg = dir.join("c.yml");
    let text = config(&dir).replace("step_graph: GRAPH", &format!("step_graph: {graph}"));
    std::fs::write(&cfg, text).unwrap();
    let data = data.map(Path::to_path_buf).unwrap_or_else(repo_data);
    let out = ok(&train_in(&cfg, &data, &["--device", "emu"], &[]));
    let metrics = metrics_without_seconds(&dir.join("logs/metrics.jsonl"));
    let mut files: Vec<_> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{name}: no checkpoint\n{out}");
    (out, metrics, files.iter().map(|p| tensors(p)).collect())
}

/// The graphed and the eager run of `config` agree bit for bit; the graphed run's stdout.
fn graphs_change_nothing(
    name: &str,
    config: &dyn Fn(&Path) -> String,
    data: Option<&Path>,
) -> String {
    let (out, metrics, checkpoints) = run(name, config, data, true);
    let (eager_out, eager_metrics, eager_checkpoints) = run(name, config, data, false);
    assert!(
        !eager_out.contains("step graph: one launch"),
        "{name}: graphs ran with step_graph: false\n{eager_out}"
    );
    assert_eq!(metrics, eager_metrics, "{name}: metrics");
    assert_eq!(checkpoints, eager_checkpoints, "{name}: checkpoints");
    out
}

#[test]
fn graphed_resnet_training_with_a_short_last_batch_equals_eager_training() {
    let data = cli_support::work_dir("graphed-training", "cifar_data");
    // 45 images in batches of 10: four replays and an eager short batch per epoch.
    tiny_cifar(&data, 45, 20);
    let config = |d: &Path| {
        format!(
            "models: {{dataset: cifar10, training_architecture: takd-resnet8}}\n\
             sequence:\n  train: {{epochs: 2, lr: 0.05}}\n\
             params: {{save_directory: {d}/out, save_model_name: s.safetensors, logdir: {d}/logs, step_graph: GRAPH}}\n\
             hyperparameters: {{batch_size: 10, seed: 3, momentum: 0.9, weight_decay: 0.0005}}\n",
            d = d.display()
        )
    };
    let out = graphs_change_nothing("resnet", &config, Some(&data));
    assert!(
        out.contains("step graph: one launch per training step"),
        "{out}"
    );
}

#[test]
fn graphed_kd_and_quantized_distillation_equal_eager_runs_with_and_without_the_teacher_cache() {
    let methods = [
        ("kd", "kd: {epochs: 2, lr: 0.05, kd_variant: takd, temperature: 4, weight: 0.7}"),
        (
            "qd",
            "quantized_distillation: {epochs: 2, lr: 0.05, bits: 2, bucket_size: 64, nesterov: true}",
        ),
    ];
    for (name, stage) in methods {
        for cache in [true, false] {
            let config = move |d: &Path| {
                format!(
                    "models: {{dataset: mnist, training_architecture: mlp-784-32-10, base_architecture: mlp-784-48-10, \
                     base_model_path: {d}/teacher.safetensors}}\n\
                     sequence:\n  teacher: {{epochs: 1, lr: 0.1}}\n  {stage}\n\
                     params: {{save_directory: {d}/out, save_model_name: s.safetensors, logdir: {d}/logs, \
                     teacher_cache: {cache}, step_graph: GRAPH}}\n\
                     hyperparameters: {{batch_size: 32, seed: 4, momentum: 0.9, max_train_batches: 5, max_eval_batches: 2}}\n",
                    d = d.display()
                )
            };
            let out = graphs_change_nothing(&format!("{name}_cache_{cache}"), &config, None);
            // The teacher stage and the distillation stage each capture their step.
            assert_eq!(
                out.matches("step graph: one launch per training step")
                    .count(),
                2,
                "{name}, cache {cache}: one announcement per stage\n{out}"
            );
            assert!(
                !out.contains("step graph off"),
                "{name}, cache {cache}\n{out}"
            );
        }
    }
}

#[test]
fn graphed_fp16_training_with_its_loss_scaler_on_the_device_equals_eager_fp16() {
    // Batches of one overflow fp16 at the initial scale ((p - 1) * 65536 rounds to -inf): those
    // steps are skipped and the scale backs off, inside the graph as outside it.
    for batch in [32, 1] {
        let config = move |d: &Path| {
            format!(
                "models: {{dataset: mnist, training_architecture: mlp-784-32-10}}\n\
                 sequence:\n  train: {{epochs: 2, lr: 0.1}}\n\
                 params: {{save_directory: {d}/out, save_model_name: s.safetensors, logdir: {d}/logs, step_graph: GRAPH}}\n\
                 hyperparameters: {{batch_size: {batch}, seed: 6, momentum: 0.9, max_train_batches: 6, max_eval_batches: 2}}\n\
                 precision: fp16\n",
                d = d.display()
            )
        };
        let out = graphs_change_nothing(&format!("fp16_batch{batch}"), &config, None);
        assert!(
            out.contains("step graph: one launch per training step"),
            "{out}"
        );
        let no_overflow = out.contains("(fp16: 0 steps skipped, loss scale 65536)");
        assert_eq!(no_overflow, batch == 32, "batch {batch}\n{out}");
    }
}
