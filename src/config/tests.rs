//! Parsing and validation of whole configs: the seed config, the shipped ones, and the errors
//! of bad ones.

use super::*;

/// The LIT seed config from DESIGN.md, verbatim.
const SEED: &str = r#"
models:
  dataset: amazon_review_full
  training_architecture: vdcnn9-maxpool
  training_checkpoint:
  base_architecture: vdcnn17-maxpool
  base_model_path: ./models/teachers/vdcnn17.pth
sequence:
  lit:        {epochs: 15, lr: 0.01,  milestones: [3,6,9,12,15]}
  full_model: {epochs: 10, lr: 0.001, milestones: [3, 6, 9]}
params: {logdir: ./runs/lit_vdcnn9-maxpool, save_directory: ./models/lit_vdcnn9-maxpool,
         save_model_name: lit_vdcnn9_maxpool.pth, evaluate: False, save_every: 1}
hyperparameters: {alpha: 0.95, beta: 0.05, temperature: 6.0, batch_size: 128, data_loading_workers: 10,
                  momentum: 0.9, weight_decay: 0.0001, n_random_images: 0}
"#;

#[test]
fn seed_lit_config_parses_unchanged_and_validates() {
    let c = Config::parse(SEED, "seed.yml").unwrap();
    c.validate().unwrap();
    assert_eq!(c.models.dataset, "amazon_review_full");
    assert!(c.models.training_checkpoint.is_none());
    assert_eq!(
        c.models.base_model_path.as_deref(),
        Some(Path::new("./models/teachers/vdcnn17.pth"))
    );
    let stages: Vec<&str> = c.sequence.stages().iter().map(|(n, _)| n.name()).collect();
    assert_eq!(stages, vec!["lit", "full_model"]);
    let lit = c.sequence.lit.as_ref().unwrap();
    assert_eq!(
        (
            lit.schedule.epochs,
            lit.schedule.lr,
            &lit.schedule.milestones[..]
        ),
        (15, 0.01, &[3, 6, 9, 12, 15][..])
    );
    assert!(!c.params.evaluate);
    assert_eq!(
        c.params.checkpoint_path(),
        Path::new("./models/lit_vdcnn9-maxpool/lit_vdcnn9_maxpool.safetensors")
    );
    let h = &c.hyperparameters;
    assert_eq!(
        (h.alpha, h.beta, h.temperature),
        (Some(0.95), Some(0.05), Some(6.0))
    );
    assert_eq!(
        (h.batch_size, h.data_loading_workers, h.n_random_images),
        (128, Some(10), Some(0))
    );
}

#[test]
fn quickstart_config_in_the_repo_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/quickstart.yml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.models.dataset, "mnist");
    assert!(c.sequence.train.is_some());
}

/// Every config shipped in configs/ (and its subfolders) loads, campaigns included: a renamed key
/// or architecture must not leave a user with a broken example.
#[test]
fn every_shipped_config_loads() {
    fn yml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                yml_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "yml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    yml_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("configs"),
        &mut files,
    );
    assert!(files.len() >= 30, "found only {} configs", files.len());
    for f in &files {
        // Campaign files (`lit-engine sweep`) load as campaigns, which loads their base configs.
        let text = std::fs::read_to_string(f).unwrap();
        // Translation configs (`task: translation`) load as those.
        let loaded = if text.lines().any(|l| l.starts_with("bases:")) {
            crate::sweep::Campaign::load(f).map(|_| ())
        } else if crate::nmt::config::is_translation(&text) {
            crate::nmt::config::TranslationConfig::load(f).map(|_| ())
        } else {
            Config::load(f).map(|_| ())
        };
        if let Err(e) = loaded {
            panic!("{}: {e}", f.display());
        }
    }
}

#[test]
fn unknown_key_names_line_key_and_closest_valid_key() {
    let text = "models:\n  dataset: mnist\n  training_architecture: mlp-784-10\nhyperparameters:\n  batch_sise: 64\n";
    let msg = Config::parse(text, "my.yml").unwrap_err().to_string();
    assert!(msg.contains("my.yml line 5"), "{msg}");
    assert!(msg.contains("`hyperparameters.batch_sise`"), "{msg}");
    assert!(msg.contains("did you mean `batch_size`?"), "{msg}");

    let text = "models: {dataset: mnist, training_architecture: m}\nparams: {batch_size: 3}\n";
    let msg = Config::parse(text, "x.yml").unwrap_err().to_string();
    assert!(
        msg.contains("did you mean `hyperparameters.batch_size`?"),
        "{msg}"
    );

    let msg = Config::parse("modles: {}\n", "x.yml")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unknown key `modles`") && msg.contains("did you mean `models`?"),
        "{msg}"
    );

    let msg = Config::parse(
        "models: {dataset: mnist, training_architecture: m}\nzzz: 1\n",
        "x.yml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("unknown key `zzz`") && !msg.contains("did you mean"),
        "{msg}"
    );
}

#[test]
fn wrong_types_and_missing_keys_name_the_key_path() {
    let msg = Config::parse("models: {dataset: mnist, training_architecture: m}\nsequence:\n  train: {epochs: five, lr: 0.1}\n", "x.yml")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("x.yml line 3") && msg.contains("sequence.train.epochs"),
        "{msg}"
    );
    let msg = Config::parse("models: {dataset: mnist}\n", "x.yml")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("missing field `training_architecture`"),
        "{msg}"
    );
}

#[test]
fn validation_names_the_key_path() {
    let base = "models: {dataset: mnist, training_architecture: mlp-784-10}\n";
    let check = |extra: &str, want: &str| {
        let c = Config::parse(&format!("{base}{extra}"), "x.yml").unwrap();
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains(want), "{extra}: {msg}");
    };
    check(
        "sequence: {train: {epochs: 0, lr: 0.1}}",
        "sequence.train.epochs must be > 0",
    );
    check(
        "sequence: {train: {epochs: 1, lr: -0.1}}",
        "sequence.train.lr must be a finite number > 0",
    );
    check(
        "sequence: {train: {epochs: 1, lr: 0.1, milestones: [3, 2]}}",
        "sequence.train.milestones",
    );
    check(
        "sequence: {train: {epochs: 1, lr: 0.1}}\nhyperparameters: {batch_size: 0}",
        "hyperparameters.batch_size must be > 0",
    );
    check(
        "sequence: {train: {epochs: 1, lr: 0.1}}\nhyperparameters: {momentum: 1.5}",
        "hyperparameters.momentum",
    );
    check(
        "sequence: {train: {epochs: 1, lr: 0.1}}\ndevice: tpu",
        "device `tpu`",
    );
    check("sequence: {}", "sequence has no stage");
}

#[test]
fn precision_is_read_and_an_unknown_one_names_the_key_and_its_line() {
    let text = |p: &str| {
        format!(
            "models: {{dataset: mnist, training_architecture: mlp-784-10}}\n\
             sequence:\n  train: {{epochs: 1, lr: 0.1}}\nprecision: {p}\n"
        )
    };
    for p in crate::precision::Precision::ALL {
        let c = Config::parse(&text(p.name()), "p.yml").unwrap();
        c.validate().unwrap();
        assert_eq!(c.precision().unwrap(), p);
    }
    let unset = Config::parse(SEED, "seed.yml").unwrap();
    assert_eq!(
        unset.precision().unwrap(),
        crate::precision::Precision::Fp32
    );
    let dir = std::env::temp_dir().join(format!("lit-precision-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.yml");
    std::fs::write(&path, text("fp8")).unwrap();
    let msg = Config::load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("p.yml line 4")
            && msg.contains("precision `fp8` is not a precision")
            && msg.contains("fp32, tf32, bf16, fp16"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn n_random_images_is_accepted_with_one_warning_when_not_zero() {
    let cfg = |n: &str| {
        let text = format!(
            "models: {{dataset: mnist, training_architecture: mlp-784-10}}\n\
             sequence:\n  train: {{epochs: 1, lr: 0.1}}\n\
             hyperparameters: {{n_random_images: {n}}}\n"
        );
        let c = Config::parse(&text, "r.yml").unwrap();
        c.validate().unwrap();
        c
    };
    let w = cfg("5000").warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("hyperparameters.n_random_images = 5000 is ignored")
            && w[0].contains("neither does lit-engine"),
        "{w:?}"
    );
    assert!(cfg("0").warnings().is_empty());
    let seed = Config::parse(SEED, "seed.yml").unwrap();
    assert!(seed.warnings().is_empty());
}

/// The keys each stage kind takes: the common schedule keys plus its method keys (the table of
/// configs/README.md), read from the structs themselves.
#[test]
fn each_stage_kind_takes_exactly_its_keys() {
    let common = [
        "epochs",
        "lr",
        "milestones",
        "gamma",
        "schedule",
        "plateau_patience",
        "plateau_factor",
        "momentum",
        "nesterov",
        "weight_decay",
    ];
    let kd = ["kd_variant", "temperature", "weight"];
    let quant = [
        "bits",
        "bucket_size",
        "quantize_first_and_last_layer",
        "quantized_layers",
    ];
    let own: [(&str, Vec<&str>); 8] = [
        ("teacher", vec![]),
        ("train", vec![]),
        ("kd", kd.to_vec()),
        ("full_model", kd.to_vec()),
        ("takd", [&kd[..], &["chain"]].concat()),
        (
            "lit",
            [
                &kd[..],
                &["beta", "divide_by_2", "freeze_stem_head", "sections"],
            ]
            .concat(),
        ),
        ("quantized_distillation", [&kd[..], &quant[..]].concat()),
        (
            "differentiable_quantization",
            [
                &kd[..],
                &quant[..],
                &["min_bits", "max_bits", "allocation_batches"],
            ]
            .concat(),
        ),
    ];
    let paths = key_paths();
    let keys_of = |kind: &str| {
        let prefix = format!("sequence.{kind}.");
        let mut keys: Vec<String> = paths
            .iter()
            .filter_map(|p| p.strip_prefix(&prefix).map(str::to_string))
            .collect();
        keys.sort();
        keys
    };
    for (kind, own) in own {
        let mut want: Vec<String> = common.iter().chain(&own).map(|k| k.to_string()).collect();
        want.sort();
        assert_eq!(keys_of(kind), want, "{kind}");
    }
    let mut ptq = keys_of("post_training_quantization");
    ptq.sort();
    assert_eq!(ptq, quant.map(String::from).to_vec());
}

/// A key of another stage kind is an error of the parse, with its line, the kinds that take it
/// and the keys this kind takes.
#[test]
fn a_key_of_another_stage_kind_is_rejected_when_parsed() {
    let text = "models: {dataset: mnist, training_architecture: m}\nsequence:\n  kd:\n    epochs: 1\n    lr: 0.1\n    bits: 4\n";
    let msg = Config::parse(text, "x.yml").unwrap_err().to_string();
    assert!(
        msg.contains("x.yml line 6: sequence.kd.bits is not a key of a `kd` stage")
            && msg.contains(
                "(it belongs to: quantized_distillation, differentiable_quantization, \
                 post_training_quantization)"
            )
            && msg.contains("keys accepted in `sequence.kd`: epochs, lr"),
        "{msg}"
    );
    let text = "models: {dataset: mnist, training_architecture: m}\nsequence:\n  train: {epochs: 1, lr: 0.1, chain: [a]}\n";
    let msg = Config::parse(text, "x.yml").unwrap_err().to_string();
    assert!(
        msg.contains("x.yml line 3: sequence.train.chain is not a key of a `train` stage (it belongs to: takd)"),
        "{msg}"
    );
}
