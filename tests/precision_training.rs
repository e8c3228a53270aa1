//! Precision modes end to end on the cpu device: a short MLP run under each precision learns and
//! ends close to, but not at, the fp32 weights; fp16's loss scaling skips overflowing steps and
//! its state survives a stop and `--resume` bit for bit; bad precisions are one-line errors
//! naming the key or flag.

mod cli_support;

use cli_support::{error_line, ok, repo_data, tensors, train_in};
use std::path::{Path, PathBuf};

fn work_dir(name: &str) -> PathBuf {
    cli_support::work_dir("precision", name)
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("c.yml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The metrics of a run, without the timings.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    cli_support::metrics_without_seconds(&dir.join("logs/metrics.jsonl"))
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// ‖a - b‖ / ‖b‖ over every tensor of two checkpoints.
fn relative_distance(a: &[(String, Vec<u8>)], b: &[(String, Vec<u8>)]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        for (x, y) in floats(ta).iter().zip(floats(tb)) {
            diff += (*x as f64 - y as f64).powi(2);
            norm += (y as f64).powi(2);
        }
    }
    (diff / norm).sqrt()
}

fn mlp_config(dir: &Path) -> String {
    format!(
        "models: {{dataset: mnist, training_architecture: mlp-784-64-10}}\n\
         sequence:\n  train: {{epochs: 2, lr: 0.05}}\n\
         params: {{save_directory: {d}/out, save_model_name: s.safetensors, logdir: {d}/logs}}\n\
         hyperparameters: {{batch_size: 64, seed: 5, max_train_batches: 10, max_eval_batches: 8}}\n",
        d = dir.display()
    )
}

#[test]
fn each_precision_learns_and_ends_near_the_fp32_weights() {
    let run = |p: &str| {
        let dir = work_dir(&format!("mlp_{p}"));
        let cfg = write(&dir, &mlp_config(&dir));
        let out = ok(&train_in(&cfg, &repo_data(), &["--precision", p], &[]));
        (dir, out)
    };
    let (fp32_dir, fp32_out) = run("fp32");
    assert!(!fp32_out.contains(", precision"), "{fp32_out}");
    let fp32 = tensors(&fp32_dir.join("out/s-last.safetensors"));
    let mut distance = std::collections::HashMap::new();
    for p in ["tf32", "bf16", "fp16"] {
        let (dir, out) = run(p);
        assert!(out.contains(&format!(", precision {p}")), "{out}");
        let m = metrics(&dir);
        let loss = |i: usize| m[i]["train_loss"].as_f64().unwrap();
        assert!(loss(1) < loss(0), "{p}: train loss did not fall: {m:?}");
        let acc = m[1]["test_acc"].as_f64().unwrap();
        assert!(acc > 0.7, "{p}: test accuracy {acc}");
        // Only fp16 carries the loss-scaling fields.
        assert_eq!(
            m[1].get("loss_scale").is_some(),
            p == "fp16",
            "{p}: {:?}",
            m[1]
        );
        let d = relative_distance(&tensors(&dir.join("out/s-last.safetensors")), &fp32);
        println!("{p}: relative weight distance to fp32 {d:.2e}");
        // 20 SGD steps amplify the rounding (measured: tf32 and fp16 2.3e-3, bf16 1.4e-2).
        assert!(
            d > 0.0 && d < 0.03,
            "{p}: relative weight distance to fp32 {d}"
        );
        distance.insert(p, d);
    }
    // bf16 keeps 7 mantissa bits, tf32 and fp16 keep 10: bf16 strays farther.
    assert!(distance["bf16"] > distance["tf32"], "{distance:?}");
    assert!(distance["bf16"] > distance["fp16"], "{distance:?}");
}

/// A KD stage with a small batch and a hot temperature: its scaled soft-target gradients
/// overflow fp16 at the initial scale, so fp16 training skips steps and backs off.
fn fp16_kd_config(dir: &Path) -> String {
    format!(
        "models: {{dataset: mnist, training_architecture: mlp-784-16-10, base_architecture: mlp-784-24-10, \
         base_model_path: {d}/teacher.safetensors}}\n\
         sequence:\n  teacher: {{epochs: 1, lr: 0.1}}\n  \
         kd: {{epochs: 2, lr: 0.05, kd_variant: lit, temperature: 8, weight: 0.0}}\n\
         params: {{save_directory: {d}/out, save_model_name: s.safetensors, logdir: {d}/logs}}\n\
         hyperparameters: {{batch_size: 4, seed: 11, max_train_batches: 30, max_eval_batches: 2}}\n\
         precision: fp16\n",
        d = dir.display()
    )
}

#[test]
fn fp16_skips_overflowing_steps_and_a_stopped_run_resumes_bit_for_bit() {
    let straight = work_dir("fp16_straight");
    let cfg = write(&straight, &fp16_kd_config(&straight));
    let out = ok(&train_in(&cfg, &repo_data(), &[], &[]));
    let want = metrics(&straight);
    let skipped: Vec<u64> = want
        .iter()
        .map(|m| m["skipped_steps"].as_u64().unwrap())
        .collect();
    // The teacher epoch, then the two KD epochs: the first KD epoch backs the scale off.
    assert!(skipped[1] > 0, "{skipped:?}\n{out}");
    let scale = want[1]["loss_scale"].as_f64().unwrap();
    assert!(scale < 65536.0, "{want:?}");
    assert!(out.contains("steps skipped, loss scale"), "{out}");

    // Stop inside the second KD epoch (batches 1-30 teacher, 31-60 first KD epoch), after
    // the scale has moved, then resume.
    let split = work_dir("fp16_split");
    let cfg = write(&split, &fp16_kd_config(&split));
    let o = train_in(
        &cfg,
        &repo_data(),
        &[],
        &[("LIT_FAULT", "interrupt-at-batch:70")],
    );
    assert_eq!(o.status.code(), Some(130), "{}", cli_support::stderr(&o));
    ok(&train_in(&cfg, &repo_data(), &["--resume"], &[]));
    assert_eq!(metrics(&split), want);
    for f in ["out/s-last.safetensors", "out/s.safetensors"] {
        assert!(
            tensors(&split.join(f)) == tensors(&straight.join(f)),
            "{f}: resumed weights differ from the uninterrupted run's"
        );
    }
}

#[test]
fn an_unknown_precision_is_a_one_line_error_naming_the_key_or_flag() {
    let dir = work_dir("errors");
    let cfg = write(&dir, &format!("{}precision: fp8\n", mlp_config(&dir)));
    let line = error_line(&train_in(&cfg, &repo_data(), &[], &[]));
    assert!(
        line.contains("line 6") && line.contains("precision `fp8` is not a precision"),
        "{line}"
    );
    let cfg = write(&dir, &mlp_config(&dir));
    let line = error_line(&train_in(&cfg, &repo_data(), &["--precision", "half"], &[]));
    assert!(
        line.contains("--precision") && line.contains("half"),
        "{line}"
    );
    let bench = |p: &str| {
        let mut args: Vec<&str> =
            "bench step --student mlp-784-16-10 --batch 2 --steps 1 --warmup 0"
                .split(' ')
                .collect();
        args.extend(["--precision", p]);
        cli_support::lit(&args, &[])
    };
    let line = error_line(&bench("fp8"));
    assert!(
        line.contains("--precision") && line.contains("fp8"),
        "{line}"
    );
    let json: serde_json::Value = serde_json::from_str(ok(&bench("bf16")).trim()).unwrap();
    assert_eq!(json["precision"], "bf16", "{json}");
}

/// Teacher passes (eval mode, no tape: conv + BatchNorm fused) run at the run's precision, and
/// agree with the same precision's taped (unfused) eval forward.
#[test]
fn teacher_forward_runs_at_the_precision_fused_or_not() {
    use lit_engine::distill::kd::Teacher;
    use lit_engine::distill::{Batch, Compute};
    use lit_engine::models::{self, Input};
    use lit_engine::nn::ParamStore;
    use lit_engine::rng::Rng;
    use lit_engine::testing::{check_close, random_f32};
    use lit_engine::{Device, IndexTensor, Precision, Tensor};

    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    let model = models::build("takd-resnet8", 10, &mut store, &dev, &mut Rng::new(3)).unwrap();
    let x = Tensor::from_vec(&[2, 3, 32, 32], random_f32(4, 2 * 3 * 32 * 32), &dev).unwrap();
    let batch = Batch {
        x: lit_engine::data::Batch::Float(x.clone()),
        y: IndexTensor::from_vec(&[2], vec![1, 2], &dev).unwrap(),
        indices: None,
    };
    let mut teacher = Teacher::new(model, store);
    let at = |precision| Compute {
        device: &dev,
        precision,
    };
    let fp32 = teacher
        .logits(&batch, at(Precision::Fp32))
        .unwrap()
        .to_vec()
        .unwrap();
    for p in [Precision::Tf32, Precision::Bf16, Precision::Fp16] {
        let fused = teacher.logits(&batch, at(p)).unwrap().to_vec().unwrap();
        let mut g = at(p).graph();
        let xv = g.constant(x.clone());
        let y = teacher
            .model
            .forward(&mut g, &mut teacher.store, Input::Float(xv), false)
            .unwrap();
        let taped = g.value(y).to_vec().unwrap();
        check_close(&fused, &taped, 1e-5, 1e-6).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(
            check_close(&fused, &fp32, 1e-5, 1e-6).is_err(),
            "{p}: teacher ran in fp32"
        );
    }
}
