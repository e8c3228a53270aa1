//! End-to-end runs of every distillation method through the `lit-engine` binary on tiny data:
//! LIT (teacher stage + blockwise stage on a tiny CIFAR-10 binary set), quantized distillation
//! with the post-training baseline, KD, a TAKD chain, exact resume, and config errors.

mod cli_support;

use cli_support::{repo_data, tiny_cifar};
use std::path::{Path, PathBuf};
use std::process::Output;

fn work_dir(name: &str) -> PathBuf {
    cli_support::work_dir("cli-methods", name)
}

fn lit(args: &[&str]) -> Output {
    cli_support::lit(args, &[])
}

fn train(cfg: &Path, data: &Path, extra: &[&str]) -> (String, String) {
    let o = cli_support::train_in(cfg, data, extra, &[]);
    let out = cli_support::ok(&o);
    (out, cli_support::stderr(&o))
}

fn failure(cfg: &Path) -> String {
    let o = lit(&[
        "train",
        cfg.to_str().unwrap(),
        "--data-dir",
        repo_data().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "expected a failure:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `name` of a safetensors file as f32 values.
fn tensor(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(name).unwrap();
    v.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn tiny_lit_config_trains_a_teacher_then_runs_lit_with_a_copied_frozen_stem() {
    let dir = work_dir("lit");
    tiny_cifar(&dir.join("data"), 40, 20);
    let cfg = write(
        &dir,
        "lit.yml",
        &format!(
            "models:\n  dataset: cifar10\n  training_architecture: resnet20\n  training_checkpoint:\n  \
             base_architecture: resnet20\n  base_model_path: {d}/teacher/r20.pth\n\
             sequence:\n  teacher: {{epochs: 1, lr: 0.05}}\n  lit: {{epochs: 1, lr: 0.01, milestones: [1]}}\n\
             params: {{logdir: {d}/runs, save_directory: {d}/out, save_model_name: lit.pth, evaluate: False, save_every: 1}}\n\
             hyperparameters: {{alpha: 0.95, beta: 0.75, temperature: 6.0, batch_size: 10, data_loading_workers: 10,\n  \
             momentum: 0.9, weight_decay: 0.0001, n_random_images: 0}}\n",
            d = dir.display()
        ),
    );
    let (out, _) = train(&cfg, &dir.join("data"), &[]);
    assert!(out.contains("== lit: resnet20"), "{out}");
    let teacher = dir.join("teacher/r20.safetensors");
    assert!(teacher.is_file(), "{out}");
    let m = metrics(&dir.join("runs/metrics.jsonl"));
    let stages: Vec<&str> = m.iter().map(|l| l["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, vec!["teacher", "lit"]);
    assert!(m[1]["teacher_acc"].as_f64().is_some());
    assert!(m[1]["train_loss"].as_f64().unwrap().is_finite());
    // ResNet LIT: the stem and head are the teacher's and stay frozen; the sections train.
    let student = dir.join("out/lit-last.safetensors");
    assert_eq!(
        tensor(&student, "conv1.weight"),
        tensor(&teacher, "conv1.weight")
    );
    assert_eq!(
        tensor(&student, "linear.weight"),
        tensor(&teacher, "linear.weight")
    );
    assert_ne!(
        tensor(&student, "layer1.0.conv1.weight"),
        tensor(&teacher, "layer1.0.conv1.weight")
    );
    assert!(dir.join("out/lit.safetensors").is_file());
    assert!(std::fs::read_dir(dir.join("runs")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("tfevents")));
}

fn mnist_config(dir: &Path, sequence: &str, extra_hyper: &str) -> String {
    format!(
        "models:\n  dataset: mnist\n  training_architecture: mlp-784-32-10\n  base_architecture: mlp-784-64-10\n  \
         base_model_path: {d}/teacher.safetensors\n\
         sequence:\n{sequence}\
         params: {{save_directory: {d}/out, save_model_name: s.safetensors, logdir: {d}/logs}}\n\
         hyperparameters: {{batch_size: 64, seed: 5, max_train_batches: 30, max_eval_batches: 10{extra_hyper}}}\n",
        d = dir.display()
    )
}

#[test]
fn tiny_quantized_distillation_config_quantizes_the_best_checkpoint_and_reports_its_size() {
    let dir = work_dir("qd");
    let cfg = write(
        &dir,
        "qd.yml",
        &mnist_config(
            &dir,
            "  teacher: {epochs: 1, lr: 0.1}\n  \
             quantized_distillation: {epochs: 3, lr: 0.05, bits: 2, bucket_size: 64, nesterov: true, \
             weight_decay: 0.00022, schedule: plateau}\n  \
             post_training_quantization: {bits: [2, 8], bucket_size: 64}\n",
            "",
        ),
    );
    let (out, _) = train(&cfg, &repo_data(), &[]);
    assert!(out.contains("quantized student size:"), "{out}");
    // The packed export holds the student of the best checkpoint, not the last epoch's. With this
    // seed the best of the 3 epochs is epoch 2, so the two differ and the check can fail.
    let best = dir.join("out/s.safetensors");
    let packed = dir.join("out/s-packed.safetensors");
    let best_side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/s.json")).unwrap()).unwrap();
    let best_epoch = best_side["epoch"].as_u64().unwrap();
    assert_eq!(best_epoch, 2, "the run this test was written for: {out}");
    assert!(
        out.contains(&format!("the student of the best epoch {best_epoch} of 3")),
        "{out}"
    );
    let mut reloaded = lit_engine::nn::ParamStore::new();
    lit_engine::models::build(
        "mlp-784-32-10",
        10,
        &mut reloaded,
        &lit_engine::Device::Cpu,
        &mut lit_engine::rng::Rng::new(0),
    )
    .unwrap();
    let packed_info = lit_engine::distill::export::load_packed(&packed, &mut reloaded).unwrap();
    assert_eq!(packed_info.info["epoch"].as_u64(), Some(best_epoch));
    for (name, p) in reloaded.iter() {
        assert_eq!(p.value.to_vec().unwrap(), tensor(&best, name), "{name}");
    }
    let shadow_last = tensor(&dir.join("out/s-last.safetensors"), "fc2.weight");
    let (last_quantized, _, _, _) =
        lit_engine::distill::quantize::quantize_uniform_cpu(&shadow_last, 2, Some(64));
    assert_ne!(
        reloaded.get("fc2.weight").unwrap().value.to_vec().unwrap(),
        last_quantized,
        "the last epoch's student is not the best one here"
    );
    let bytes = std::fs::read(&packed).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // 320 weights of 2 bits: 80 bytes of packed levels.
    assert_eq!(st.tensor("fc2.weight.levels").unwrap().data().len(), 80);
    assert!(out.contains("(2-bit)"), "{out}");
    // fc1.weight is named_parameters index 0: kept in full precision by the exclusion rule;
    // fc1.bias and fc2.weight are quantized to 2 bits: at most 4 values per 64-element bucket.
    let w = tensor(&best, "fc2.weight");
    for bucket in w.chunks(64) {
        let mut levels: Vec<u32> = bucket.iter().map(|v| v.to_bits()).collect();
        levels.sort();
        levels.dedup();
        assert!(levels.len() <= 4, "{} distinct values", levels.len());
    }
    let first = tensor(&best, "fc1.weight");
    let mut distinct: Vec<u32> = first[..64].iter().map(|v| v.to_bits()).collect();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 4, "fc1.weight must stay full precision");
    // The resumable state keeps the full-precision shadow weights.
    let shadow = tensor(&dir.join("out/s-last.safetensors"), "fc2.weight");
    let mut d: Vec<u32> = shadow[..64].iter().map(|v| v.to_bits()).collect();
    d.sort();
    d.dedup();
    assert!(d.len() > 4);
    let m = metrics(&dir.join("logs/metrics.jsonl"));
    let qd: Vec<&serde_json::Value> = m
        .iter()
        .filter(|l| l["stage"] == "quantized_distillation")
        .collect();
    assert_eq!(qd.len(), 3);
    assert!(qd[1]["test_acc"].as_f64().unwrap() > 0.5, "{qd:?}");
    let ptq: Vec<&serde_json::Value> = m
        .iter()
        .filter(|l| l["stage"] == "post_training_quantization")
        .collect();
    assert_eq!(ptq.len(), 2);
    assert!(ptq[0]["packed_bytes"].as_u64() < ptq[1]["packed_bytes"].as_u64());
}

#[test]
fn differentiable_quantization_learns_points_without_a_separate_teacher() {
    let dir = work_dir("dq");
    let cfg = write(
        &dir,
        "dq.yml",
        &format!(
            "models: {{dataset: mnist, training_architecture: mlp-784-32-10}}\n\
             sequence:\n  train: {{epochs: 1, lr: 0.1}}\n  \
             differentiable_quantization: {{epochs: 1, lr: 0.001, bits: 2, bucket_size: 64, \
             quantize_first_and_last_layer: true, allocation_batches: 3}}\n\
             params: {{save_directory: {d}/out, save_model_name: dq.safetensors, logdir: {d}/logs}}\n\
             hyperparameters: {{batch_size: 64, seed: 2, max_train_batches: 20, max_eval_batches: 5}}\n",
            d = dir.display()
        ),
    );
    let (out, _) = train(&cfg, &repo_data(), &[]);
    assert!(
        out.contains("bits per layer (from gradient norms):"),
        "{out}"
    );
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/dq-last.json")).unwrap()).unwrap();
    let layers = side["resume"]["dq"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4, "{layers:?}");
    // The average budget holds: sum(bits * size) <= 2 * sum(size).
    let sizes = [784 * 32, 32, 32 * 10, 10];
    let used: u64 = layers
        .iter()
        .zip(sizes)
        .map(|(l, n)| l["bits"].as_u64().unwrap() * n)
        .sum();
    assert!(used <= 2 * sizes.iter().sum::<u64>(), "{layers:?}");
    // Learned points moved away from the uniform grid and stay sorted in [0, 1].
    let moved = layers.iter().any(|l| {
        let p: Vec<f64> = l["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let s = p.len() as f64 - 1.0;
        assert!(p.windows(2).all(|w| w[0] <= w[1]) && p.iter().all(|v| (0.0..=1.0).contains(v)));
        p.iter()
            .enumerate()
            .any(|(j, v)| (v - j as f64 / s).abs() > 1e-6)
    });
    assert!(moved, "{layers:?}");
    // The best checkpoint holds weights on the learned points: at most 2^bits values per bucket.
    let bits = layers[2]["bits"].as_u64().unwrap();
    let best = dir.join("out/dq.safetensors");
    let w = tensor(&best, "fc2.weight");
    for bucket in w.chunks(64) {
        let mut v: Vec<u32> = bucket.iter().map(|x| x.to_bits()).collect();
        v.sort();
        v.dedup();
        assert!(v.len() <= 1 << bits, "{} values at {bits} bits", v.len());
    }
    // The mixed-bit student is packed with its point tables and reloads to the best checkpoint
    // (one epoch: its points are the ones in the resumable state).
    let packed = dir.join("out/dq-packed.safetensors");
    let file_bytes = std::fs::metadata(&packed).unwrap().len();
    assert!(
        out.contains(&format!(
            "packed student on disk: {} ({file_bytes} bytes)",
            packed.display()
        )),
        "{out}"
    );
    let mut reloaded = lit_engine::nn::ParamStore::new();
    lit_engine::models::build(
        "mlp-784-32-10",
        10,
        &mut reloaded,
        &lit_engine::Device::Cpu,
        &mut lit_engine::rng::Rng::new(0),
    )
    .unwrap();
    let info = lit_engine::distill::export::load_packed(&packed, &mut reloaded).unwrap();
    for (name, p) in reloaded.iter() {
        assert_eq!(p.value.to_vec().unwrap(), tensor(&best, name), "{name}");
    }
    assert_eq!(info.specs.len(), layers.len());
    for (spec, layer) in info.specs.iter().zip(layers) {
        assert_eq!(spec.name, layer["name"].as_str().unwrap());
        assert_eq!(spec.bits as u64, layer["bits"].as_u64().unwrap());
        let points: Vec<f32> = layer["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(spec.points.as_ref(), Some(&points), "{}", spec.name);
    }
    // fc1.weight (25088 weights) dominates: about bits/32 of the float size.
    let packed_levels = std::fs::read(&packed).unwrap();
    let st = safetensors::SafeTensors::deserialize(&packed_levels).unwrap();
    let fc1_bits = layers[0]["bits"].as_u64().unwrap() as usize;
    assert_eq!(
        st.tensor("fc1.weight.levels").unwrap().data().len(),
        (784 * 32 * fc1_bits).div_ceil(8)
    );
}

#[test]
fn kd_config_distils_from_a_trained_teacher() {
    let dir = work_dir("kd");
    let cfg = write(
        &dir,
        "kd.yml",
        &mnist_config(
            &dir,
            "  teacher: {epochs: 1, lr: 0.1}\n  kd: {epochs: 1, lr: 0.05, kd_variant: takd, temperature: 4, weight: 0.7}\n",
            "",
        ),
    );
    let (out, _) = train(&cfg, &repo_data(), &[]);
    assert!(out.contains("== kd: mlp-784-32-10"), "{out}");
    let m = metrics(&dir.join("logs/metrics.jsonl"));
    assert_eq!(m.len(), 2);
    assert_eq!(m[1]["stage"], "kd");
    assert!(m[1]["teacher_acc"].as_f64().unwrap() > 0.6, "{m:?}");
    assert!(m[1]["test_acc"].as_f64().unwrap() > 0.6, "{m:?}");
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/s.json")).unwrap()).unwrap();
    assert_eq!(side["stage"], "kd");
}

#[test]
fn takd_chain_trains_each_assistant_from_the_previous_checkpoint() {
    let dir = work_dir("takd");
    let cfg = write(
        &dir,
        "takd.yml",
        &mnist_config(
            &dir,
            "  teacher: {epochs: 1, lr: 0.1}\n  takd: {epochs: 1, lr: 0.05, chain: [mlp-784-48-10, mlp-784-40-10]}\n",
            "",
        ),
    );
    let (out, _) = train(&cfg, &repo_data(), &[]);
    let ta1 = dir.join("out/s-ta1-mlp-784-48-10.safetensors");
    let ta2 = dir.join("out/s-ta2-mlp-784-40-10.safetensors");
    assert!(ta1.is_file() && ta2.is_file(), "{out}");
    for want in [
        "== takd: mlp-784-48-10 (38170 parameters) from teacher mlp-784-64-10",
        "== takd: mlp-784-40-10 (31810 parameters) from teacher mlp-784-48-10",
        "== takd: mlp-784-32-10 (25450 parameters) from teacher mlp-784-40-10",
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
    let models: Vec<String> = metrics(&dir.join("logs/metrics.jsonl"))
        .iter()
        .map(|m| m["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        models,
        vec![
            "mlp-784-64-10",
            "mlp-784-48-10",
            "mlp-784-40-10",
            "mlp-784-32-10"
        ]
    );
    assert!(out.contains("assistant"), "{out}");
}

/// Two epochs straight equal one epoch, then `--resume` for the second: same losses (CPU),
/// which needs the weights, momentum buffers, shuffle RNG and schedule to be restored.
#[test]
fn resume_continues_exactly_where_the_run_stopped() {
    let seq = "  teacher: {epochs: 1, lr: 0.1}\n  \
               kd: {epochs: 2, lr: 0.05, schedule: plateau, plateau_patience: 1}\n";
    let straight = work_dir("resume_straight");
    let cfg = write(&straight, "c.yml", &mnist_config(&straight, seq, ""));
    train(&cfg, &repo_data(), &[]);
    let a = metrics(&straight.join("logs/metrics.jsonl"));

    let split = work_dir("resume_split");
    let cfg = write(&split, "c.yml", &mnist_config(&split, seq, ""));
    // `--epochs 1` stops each stage after one epoch; the resumed run asks for the config's two.
    train(&cfg, &repo_data(), &["--epochs", "1"]);
    let (out, _) = train(&cfg, &repo_data(), &["--resume"]);
    assert!(out.contains("resuming from"), "{out}");
    let b = metrics(&split.join("logs/metrics.jsonl"));
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3, "{b:?}");
    for (x, y) in a.iter().zip(&b) {
        for k in [
            "stage",
            "epoch",
            "train_loss",
            "test_loss",
            "test_acc",
            "lr",
        ] {
            assert_eq!(x[k], y[k], "{k}: {x} vs {y}");
        }
    }
}

#[test]
fn config_errors_name_the_key_line_and_fix() {
    let dir = work_dir("errors");
    let base = "models: {dataset: mnist, training_architecture: mlp-784-32-10, base_architecture: mlp-784-64-10, base_model_path: t.pth}\n";
    let case = |name: &str, text: &str| failure(&write(&dir, name, text));

    let msg = case(
        "typo.yml",
        &format!("{base}sequence:\n  kd: {{epochs: 1, lr: 0.1, temprature: 3}}\n"),
    );
    assert!(
        msg.contains("line 3")
            && msg.contains("`sequence.kd.temprature`")
            && msg.contains("did you mean `temperature`?"),
        "{msg}"
    );
    let msg = case(
        "wrongkind.yml",
        &format!("{base}sequence:\n  kd: {{epochs: 1, lr: 0.1, bits: 4}}\n"),
    );
    assert!(
        msg.contains("line 3")
            && msg.contains("sequence.kd.bits is not a key of a `kd` stage")
            && msg.contains("quantized_distillation"),
        "{msg}"
    );
    let msg = case(
        "type.yml",
        &format!("{base}sequence:\n  lit:\n    epochs: 1\n    lr: fast\n"),
    );
    assert!(
        msg.contains("line 5") && msg.contains("sequence.lit.lr"),
        "{msg}"
    );
    let msg = case(
        "missing.yml",
        &format!("{base}sequence:\n  quantized_distillation: {{epochs: 1, lr: 0.1}}\n"),
    );
    assert!(
        msg.contains("sequence.quantized_distillation.bits is required"),
        "{msg}"
    );
    let msg = case(
        "noteacher.yml",
        "models: {dataset: mnist, training_architecture: mlp-784-32-10}\nsequence:\n  kd: {epochs: 1, lr: 0.1}\n",
    );
    assert!(
        msg.contains("models.base_architecture is required by the `kd` stage"),
        "{msg}"
    );
    let msg = case(
        "arch.yml",
        &format!("{base}sequence:\n  takd: {{epochs: 1, lr: 0.1, chain: [alexnet]}}\n"),
    );
    assert!(
        msg.contains("sequence.takd.chain")
            && msg.contains("unknown architecture `alexnet`")
            && msg.contains("resnet20|32|44|56|110"),
        "{msg}"
    );
    let msg = case(
        "dataset.yml",
        "models: {dataset: imagenet, training_architecture: mlp-784-10}\nsequence:\n  train: {epochs: 1, lr: 0.1}\n",
    );
    assert!(
        msg.contains("models.dataset") && msg.contains("cifar10") && msg.contains("fashion_mnist"),
        "{msg}"
    );
    let msg = case(
        "act.yml",
        "models: {dataset: cifar10, training_architecture: resnet20, student_activation: lma}\nsequence:\n  train: {epochs: 1, lr: 0.1}\n",
    );
    assert!(
        msg.contains("line 1") && msg.contains("models.student_activation"),
        "{msg}"
    );

    // A teacher given as .pth with only the pickle present: the error says how to convert it.
    let pth = dir.join("only.pth");
    std::fs::write(&pth, b"not really a pickle").unwrap();
    let msg = case(
        "pth.yml",
        &format!(
            "models: {{dataset: mnist, training_architecture: mlp-784-32-10, base_architecture: mlp-784-64-10, base_model_path: {}}}\n\
             sequence:\n  kd: {{epochs: 1, lr: 0.1}}\nhyperparameters: {{max_train_batches: 1, max_eval_batches: 1}}\n",
            pth.display()
        ),
    );
    assert!(
        msg.contains("safetensors.torch.save_file(torch.load(") && msg.contains("only.safetensors"),
        "{msg}"
    );
}

/// Errors found after the YAML is parsed (architectures, the TAKD chain, weights files, layer
/// selections, a model that does not fit the data) name the file and the line of their key — for
/// a chain, the line of the entry itself.
#[test]
fn post_load_config_errors_name_the_line_of_their_key() {
    let dir = work_dir("errors-after-load");
    let case = |name: &str, text: &str| failure(&write(&dir, name, text));
    let models = |dataset: &str, arch: &str| {
        format!(
            "models:\n  dataset: {dataset}\n  training_architecture: {arch}\n  \
             base_architecture: mlp-784-64-10\n  base_model_path: {}/absent.pth\n",
            dir.display()
        )
    };
    let limits = format!(
        "params:\n  save_directory: {d}/out\n  logdir: {d}/logs\n\
         hyperparameters: {{max_train_batches: 2, max_eval_batches: 1}}\n",
        d = dir.display()
    );
    let expect = |msg: &str, file: &str, line: usize, key: &str| {
        assert!(
            msg.contains(&format!("{file} line {line}: {key}")),
            "want `{file} line {line}: {key}` in: {msg}"
        );
    };

    // (file, dataset, student, sequence and what follows, line, key): each error names its key's line.
    let cases: [(&str, &str, &str, String, usize, &str); 7] = [
        // A TAKD chain in block style: the unknown entry's own line.
        (
            "chain.yml",
            "mnist",
            "mlp-784-32-10",
            "sequence:\n  takd:\n    epochs: 1\n    lr: 0.1\n    chain:\n      - mlp-784-48-10\n      \
             - alexnet\n"
                .into(),
            12,
            "sequence.takd.chain[1]",
        ),
        // Flow style: the line of the list.
        (
            "chainflow.yml",
            "mnist",
            "mlp-784-32-10",
            "sequence:\n  takd:\n    epochs: 1\n    lr: 0.1\n\n    chain: [mlp-784-48-10, vgg]\n".into(),
            11,
            "sequence.takd.chain[1]",
        ),
        (
            "dataset.yml",
            "imagenet",
            "mlp-784-32-10",
            "sequence:\n  kd: {epochs: 1, lr: 0.1}\n".into(),
            2,
            "models.dataset",
        ),
        (
            "arch.yml",
            "mnist",
            "mlp-784-32",
            "sequence:\n  kd: {epochs: 1, lr: 0.1}\n".into(),
            3,
            "models.training_architecture",
        ),
        // A model that does not fit the data (a CIFAR ResNet on 28x28 MNIST), found when it is built.
        (
            "fit.yml",
            "mnist",
            "resnet20",
            format!("sequence:\n  train: {{epochs: 1, lr: 0.1}}\n{limits}"),
            3,
            "models.training_architecture",
        ),
        // The teacher's weights file, looked for before the data are loaded.
        (
            "weights.yml",
            "mnist",
            "mlp-784-32-10",
            format!("sequence:\n  kd: {{epochs: 1, lr: 0.1}}\n{limits}"),
            5,
            "models.base_model_path",
        ),
        // A layer selection that selects nothing, found once the student is built.
        (
            "layers.yml",
            "mnist",
            "mlp-784-32-10",
            format!(
                "sequence:\n  teacher: {{epochs: 1, lr: 0.1}}\n  quantized_distillation:\n    \
                 epochs: 1\n    lr: 0.1\n    bits: 4\n    quantized_layers: [conv9.]\n{limits}"
            ),
            12,
            "sequence.quantized_distillation.quantized_layers",
        ),
    ];
    for (file, dataset, student, rest, line, key) in cases {
        let msg = case(file, &format!("{}{rest}", models(dataset, student)));
        expect(&msg, file, line, key);
        match file {
            "chain.yml" => assert!(msg.contains("unknown architecture `alexnet`"), "{msg}"),
            "weights.yml" => assert!(msg.contains("absent.safetensors not found"), "{msg}"),
            _ => {}
        }
    }
}

/// LIT's `n_random_images` is read by its training code but never used: any value trains, with
/// one warning line on stderr when it is not 0.
#[test]
fn n_random_images_trains_with_one_warning() {
    let dir = work_dir("random-images");
    let cfg = write(
        &dir,
        "r.yml",
        &mnist_config(
            &dir,
            "  train: {epochs: 1, lr: 0.1}\n",
            ", n_random_images: 3",
        ),
    );
    let (out, err) = train(&cfg, &repo_data(), &[]);
    assert!(out.contains("final test accuracy"), "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("hyperparameters.n_random_images = 3 is ignored")
            && warnings[0].contains("neither does lit-engine"),
        "{err}"
    );
}
