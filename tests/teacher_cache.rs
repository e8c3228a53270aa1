//! Teacher-output caching (`params.teacher_cache`): a KD run that takes its teacher's logits
//! from the cache equals one that runs the teacher every step, bit for bit; the cache is keyed by
//! the teacher file's content, the data, the normalisation, the input shape, the precision and the
//! device; a bad cache file is recomputed with a warning; augmentation turns the cache off.

mod cli_support;

use cli_support::{ok, repo_data, stderr, tensors, train_in};
use lit_engine::data::{Dataset, Split};
use lit_engine::distill::kd::Teacher;
use lit_engine::distill::teacher_cache::{uncachable_reason, CacheKey, KeyParts};
use lit_engine::distill::{Batch, Compute};
use lit_engine::models;
use lit_engine::nn::ParamStore;
use lit_engine::rng::Rng;
use lit_engine::testing::{kernel_devices, random_f32};
use lit_engine::{Device, IndexTensor, Precision, Tensor};
use std::path::{Path, PathBuf};

/// A teacher's eval logits of `x` (`[n, …]`) passed through in batches of `sizes` (in order).
fn logits_in_batches(
    teacher: &mut Teacher,
    x: &[f32],
    shape: &[usize],
    sizes: &[usize],
    at: Compute,
) -> Vec<u32> {
    let per: usize = shape.iter().product();
    let mut out = Vec::new();
    let mut start = 0;
    for &b in sizes {
        let mut s = vec![b];
        s.extend_from_slice(shape);
        let t =
            Tensor::from_vec(&s, x[start * per..(start + b) * per].to_vec(), at.device).unwrap();
        let batch = Batch {
            x: lit_engine::data::Batch::Float(t),
            y: IndexTensor::from_vec(&[b], vec![0; b], at.device).unwrap(),
            indices: None,
        };
        let l = teacher.logits(&batch, at).unwrap().to_vec().unwrap();
        out.extend(l.iter().map(|v| v.to_bits()));
        start += b;
    }
    out
}

#[test]
fn a_teachers_logits_for_an_example_do_not_depend_on_the_rest_of_its_batch() {
    // What the cache relies on: rows computed in one batch composition serve any other.
    let mut devices = vec![Device::Cpu];
    devices.extend(kernel_devices());
    let cases: [(&str, &[usize]); 4] = [
        ("mlp-784-24-10", &[784]),
        ("plane4", &[3, 32, 32]),
        ("takd-resnet8", &[3, 32, 32]),
        ("wrn-10-1", &[3, 32, 32]),
    ];
    for dev in &devices {
        for (arch, shape) in cases {
            let mut store = ParamStore::new();
            let model = models::build(arch, 10, &mut store, dev, &mut Rng::new(2)).unwrap();
            let mut teacher = Teacher::new(model, store);
            let n = 11;
            let x = random_f32(8, n * shape.iter().product::<usize>());
            let precisions: &[Precision] = if dev.is_cpu() {
                &[Precision::Fp32, Precision::Bf16]
            } else {
                &[Precision::Fp32]
            };
            for &precision in precisions {
                let at = Compute {
                    device: dev,
                    precision,
                };
                let whole = logits_in_batches(&mut teacher, &x, shape, &[n], at);
                for sizes in [&[4, 7][..], &[1; 11][..], &[10, 1][..]] {
                    assert_eq!(
                        logits_in_batches(&mut teacher, &x, shape, sizes, at),
                        whole,
                        "{arch} on {} at {precision:?}, batches {sizes:?}",
                        dev.name()
                    );
                }
            }
        }
    }
}

fn tiny_set(pixels: Vec<u8>, labels: Vec<i32>) -> Dataset {
    Dataset::images("mnist", Split::Train, 10, [1, 2, 2], pixels, labels)
        .unwrap()
        .with_normalization(&[0.5], &[0.25])
        .unwrap()
}

#[test]
fn the_key_changes_with_teacher_content_data_normalisation_shape_precision_and_device() {
    let dir = cli_support::work_dir("teacher-cache", "key");
    let file = dir.join("t.safetensors");
    std::fs::write(&file, b"weights v1").unwrap();
    let data = tiny_set(vec![1, 2, 3, 4, 5, 6, 7, 8], vec![3, 4]);
    let cpu = Device::Cpu;
    let emu = kernel_devices().remove(0);
    let key = |file: &Path, data: &Dataset, shape: &[usize], precision, device| {
        CacheKey::new(&KeyParts {
            teacher_architecture: "mlp-4-10",
            teacher_file: file,
            data,
            input_shape: shape,
            precision,
            device,
        })
        .unwrap()
    };
    let base = key(&file, &data, &[4], Precision::Fp32, &cpu);
    assert_eq!(
        base,
        key(&file, &data, &[4], Precision::Fp32, &cpu),
        "not deterministic"
    );
    // The same content under another name is the same teacher.
    let copy = dir.join("copy.safetensors");
    std::fs::copy(&file, &copy).unwrap();
    assert_eq!(base, key(&copy, &data, &[4], Precision::Fp32, &cpu));
    let mut changed = vec![
        (
            "data pixels",
            key(
                &file,
                &tiny_set(vec![1, 2, 3, 4, 5, 6, 7, 9], vec![3, 4]),
                &[4],
                Precision::Fp32,
                &cpu,
            ),
        ),
        (
            "labels",
            key(
                &file,
                &tiny_set(vec![1, 2, 3, 4, 5, 6, 7, 8], vec![3, 5]),
                &[4],
                Precision::Fp32,
                &cpu,
            ),
        ),
        (
            "normalisation",
            key(
                &file,
                &data.clone().with_normalization(&[0.5], &[0.3]).unwrap(),
                &[4],
                Precision::Fp32,
                &cpu,
            ),
        ),
        (
            "input shape",
            key(&file, &data, &[1, 2, 2], Precision::Fp32, &cpu),
        ),
        ("precision", key(&file, &data, &[4], Precision::Bf16, &cpu)),
        ("device", key(&file, &data, &[4], Precision::Fp32, &emu)),
    ];
    std::fs::write(&file, b"weights v2").unwrap();
    changed.push((
        "teacher file content",
        key(&file, &data, &[4], Precision::Fp32, &cpu),
    ));
    for (what, k) in changed {
        assert_ne!(k, base, "{what} changed but the key did not");
        assert_ne!(k.file_name(), base.file_name(), "{what}: same file");
    }
}

/// A folder with a trained MLP teacher (`teacher.safetensors`) on the committed MNIST subset.
fn with_teacher(name: &str) -> PathBuf {
    let dir = cli_support::work_dir("teacher-cache", name);
    write_config(&dir, "t.yml", "teacher: {epochs: 1, lr: 0.1}", "", "false");
    ok(&train_in(&dir.join("t.yml"), &repo_data(), &[], &[]));
    dir
}

/// Write config `file` in `dir`: `sequence` as given, extra hyperparameters, `teacher_cache`.
fn write_config(dir: &Path, file: &str, sequence: &str, hyper: &str, cache: &str) {
    let d = dir.display();
    let out = file.trim_end_matches(".yml");
    let examples = if hyper.contains("max_train_examples") {
        ""
    } else {
        ", max_train_examples: 300"
    };
    std::fs::write(
        dir.join(file),
        format!(
            "models: {{dataset: mnist, training_architecture: mlp-784-16-10, \
             base_architecture: mlp-784-24-10, base_model_path: {d}/teacher.safetensors}}\n\
             sequence: {{{sequence}}}\n\
             params: {{save_directory: {d}/{out}, save_model_name: s.safetensors, \
             logdir: {d}/{out}/logs, teacher_cache: {cache}}}\n\
             hyperparameters: {{batch_size: 64, seed: 5, max_eval_batches: 2{examples}{hyper}}}\n"
        ),
    )
    .unwrap();
}

/// What a run leaves: its weights (by name), its metrics (timings left out), stdout + stderr.
type RunResult = (Vec<(String, Vec<u8>)>, Vec<serde_json::Value>, String);

/// Run a KD config; its weights and metrics (timings left out) and its stdout + stderr.
fn kd_run(dir: &Path, file: &str, cache: &str, extra: &[&str]) -> RunResult {
    write_config(
        dir,
        file,
        "kd: {epochs: 3, lr: 0.05, milestones: [2]}",
        "",
        cache,
    );
    let o = train_in(&dir.join(file), &repo_data(), extra, &[]);
    let log = format!("{}{}", ok(&o), stderr(&o));
    let out = dir.join(file.trim_end_matches(".yml"));
    let m = cli_support::metrics_without_seconds(&out.join("logs/metrics.jsonl"));
    (tensors(&out.join("s.safetensors")), m, log)
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_kd_run_from_the_cache_equals_the_live_teacher_and_a_bad_file_is_recomputed() {
    let dir = with_teacher("hit");
    let cache = dir.join("shared-cache");
    let c = cache.display().to_string();
    let (live_w, live_m, log) = kd_run(&dir, "live.yml", "false", &[]);
    assert!(
        log.contains("teacher cache: off (params.teacher_cache: false)"),
        "{log}"
    );
    assert!(!cache.exists());

    // Epoch 1 fills the cache from the live passes, epochs 2-3 read it.
    let (w, m, log) = kd_run(&dir, "fill.yml", &c, &[]);
    assert!(
        log.contains("teacher cache: filling") && log.contains("teacher cache: wrote"),
        "{log}"
    );
    assert_eq!(
        (&w, &m),
        (&live_w, &live_m),
        "filling run differs from the live one"
    );
    let files = cache_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");

    // A second run (another student seed would do the same) reads every row from the file.
    let (w, m, log) = kd_run(&dir, "reuse.yml", &c, &[]);
    assert!(
        log.contains("teacher cache: using") && !log.contains("wrote"),
        "{log}"
    );
    assert_eq!(
        (&w, &m),
        (&live_w, &live_m),
        "cached run differs from the live one"
    );

    // Corrupt (one flipped bit) and truncated files: a warning, recomputed, rewritten.
    let good = std::fs::read(&files[0]).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 1;
    for bad in [flipped, good[..good.len() - 7].to_vec()] {
        std::fs::write(&files[0], &bad).unwrap();
        let (w, m, log) = kd_run(&dir, "bad.yml", &c, &[]);
        assert!(log.contains("warning: ignoring the teacher cache"), "{log}");
        assert!(
            log.contains("teacher cache: filling") && log.contains("wrote"),
            "{log}"
        );
        assert_eq!((&w, &m), (&live_w, &live_m));
        assert_eq!(
            std::fs::read(&files[0]).unwrap(),
            good,
            "rewritten file differs"
        );
    }
}

#[test]
fn a_new_teacher_file_or_data_set_gets_its_own_cache_and_augmentation_turns_it_off() {
    let dir = with_teacher("invalidate");
    let cache = dir.join("cache");
    let c = cache.display().to_string();
    kd_run(&dir, "a.yml", &c, &[]);
    assert_eq!(cache_files(&cache).len(), 1);

    // Another teacher under the same file name: not the old logits.
    write_config(
        &dir,
        "t2.yml",
        "teacher: {epochs: 1, lr: 0.07}",
        "",
        "false",
    );
    ok(&train_in(&dir.join("t2.yml"), &repo_data(), &[], &[]));
    let (live_w, live_m, _) = kd_run(&dir, "live2.yml", "false", &[]);
    let (w, m, log) = kd_run(&dir, "b.yml", &c, &[]);
    assert!(log.contains("teacher cache: filling"), "{log}");
    assert_eq!((&w, &m), (&live_w, &live_m));
    assert_eq!(cache_files(&cache).len(), 2);

    // Another data set (fewer examples): its own file.
    write_config(
        &dir,
        "c.yml",
        "kd: {epochs: 2, lr: 0.05}",
        ", max_train_examples: 200",
        &c,
    );
    let o = train_in(&dir.join("c.yml"), &repo_data(), &[], &[]);
    assert!(
        ok(&o).contains("teacher cache: filling"),
        "{}",
        stdout_of(&o)
    );
    assert_eq!(cache_files(&cache).len(), 3);

    // Augmentation: the teacher's inputs change every epoch; no cache, said in the log.
    let aug = dir.join("aug-cache");
    write_config(
        &dir,
        "d.yml",
        "kd: {epochs: 1, lr: 0.05}",
        ", augment: true",
        &aug.display().to_string(),
    );
    let o = train_in(&dir.join("d.yml"), &repo_data(), &[], &[]);
    let log = ok(&o);
    assert!(log.contains("teacher cache: off (augmentation"), "{log}");
    assert!(!aug.exists());
}

fn stdout_of(o: &std::process::Output) -> String {
    cli_support::stdout(o)
}

#[test]
fn a_teacher_whose_output_depends_on_its_call_history_is_not_cached() {
    // LMA's running mean/std change on every call, train or eval: its logits are not a function
    // of the example alone.
    let reason = |arch: &str| {
        let mut store = ParamStore::new();
        models::build(arch, 10, &mut store, &Device::Cpu, &mut Rng::new(1)).unwrap();
        uncachable_reason(&store)
    };
    let why = reason("cfn-spec2-lma8").expect("an LMA teacher was cached");
    assert!(why.contains("mv_mean"), "{why}");
    assert_eq!(reason("cfn-spec2-aplu8"), None);
    assert_eq!(reason("takd-resnet8"), None);
}
