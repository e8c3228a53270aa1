//! The YAML experiment config: an extension of the LIT seed config (sections `models`, `sequence`,
//! `params`, `hyperparameters`), which parses unchanged. Every accepted key is documented in
//! `configs/README.md`. Unknown keys are errors that name the file, line and key and suggest the
//! closest valid key; values are checked by [`Config::validate`] with their key path.

use crate::device::DeviceRequest;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub models: Models,
    #[serde(default)]
    pub sequence: Sequence,
    #[serde(default)]
    pub params: Params,
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    /// `auto | cpu | cuda | emu`; `--device` and `LIT_DEVICE` take precedence.
    #[serde(default)]
    pub device: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    pub dataset: String,
    /// The model being trained (the student when distilling), e.g. `mlp-784-256-10`.
    pub training_architecture: String,
    /// Start from these weights (safetensors) instead of a fresh initialisation.
    #[serde(default)]
    pub training_checkpoint: Option<PathBuf>,
    /// The teacher of distillation stages.
    #[serde(default)]
    pub base_architecture: Option<String>,
    #[serde(default)]
    pub base_model_path: Option<PathBuf>,
}

/// The stages of an experiment. They run in this order: `train`, then `lit`, then `full_model`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sequence {
    /// Plain supervised training from scratch (or from `models.training_checkpoint`).
    #[serde(default)]
    pub train: Option<Stage>,
    /// LIT section-wise training (parsed; not implemented yet).
    #[serde(default)]
    pub lit: Option<Stage>,
    /// End-to-end fine-tuning after `lit` (parsed; not implemented yet).
    #[serde(default)]
    pub full_model: Option<Stage>,
}

impl Sequence {
    /// Present stages in run order, with their names.
    pub fn stages(&self) -> Vec<(&'static str, &Stage)> {
        [
            ("train", &self.train),
            ("lit", &self.lit),
            ("full_model", &self.full_model),
        ]
        .into_iter()
        .filter_map(|(n, s)| s.as_ref().map(|s| (n, s)))
        .collect()
    }
    fn stages_mut(&mut self) -> impl Iterator<Item = &mut Stage> {
        [&mut self.train, &mut self.lit, &mut self.full_model]
            .into_iter()
            .flatten()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub epochs: usize,
    pub lr: f64,
    /// Epochs (1-based counts of finished epochs) after which the learning rate is multiplied by `gamma`.
    #[serde(default)]
    pub milestones: Vec<usize>,
    #[serde(default = "default_gamma")]
    pub gamma: f64,
}

impl Stage {
    /// Learning rate of epoch `epoch` (0-based), as PyTorch's `MultiStepLR` stepped once per epoch.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let passed = self.milestones.iter().filter(|&&m| m <= epoch).count();
        self.lr * self.gamma.powi(passed as i32)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Metrics (`metrics.jsonl`) go here; defaults to `save_directory`.
    #[serde(default)]
    pub logdir: Option<PathBuf>,
    #[serde(default = "default_save_directory")]
    pub save_directory: PathBuf,
    /// File name of the checkpoint; a `.pth` name is saved as `.safetensors` beside it.
    #[serde(default = "default_save_model_name")]
    pub save_model_name: String,
    /// Only evaluate `models.training_checkpoint` on the test split; train nothing.
    #[serde(default)]
    pub evaluate: bool,
    /// Save a checkpoint every this many epochs (and always after the last one).
    #[serde(default = "default_save_every")]
    pub save_every: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            logdir: None,
            save_directory: default_save_directory(),
            save_model_name: default_save_model_name(),
            evaluate: false,
            save_every: default_save_every(),
        }
    }
}

impl Params {
    /// The checkpoint path: `save_directory/save_model_name`, with `.pth` mapped to `.safetensors`.
    pub fn checkpoint_path(&self) -> PathBuf {
        let p = self.save_directory.join(&self.save_model_name);
        match p.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => p,
            _ => p.with_extension("safetensors"),
        }
    }
    pub fn metrics_dir(&self) -> &Path {
        self.logdir.as_deref().unwrap_or(&self.save_directory)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hyperparameters {
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// Seeds initialisation and shuffling.
    #[serde(default)]
    pub seed: u64,
    /// Quick runs: at most this many training batches per epoch.
    #[serde(default)]
    pub max_train_batches: Option<usize>,
    /// Quick runs: at most this many test batches per evaluation.
    #[serde(default)]
    pub max_eval_batches: Option<usize>,
    /// Distillation weights and temperature (LIT/KD stages).
    #[serde(default)]
    pub alpha: Option<f64>,
    #[serde(default)]
    pub beta: Option<f64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Accepted for compatibility with the seed config; data loading is in-process.
    #[serde(default)]
    pub data_loading_workers: Option<usize>,
    /// LIT's random-image augmentation count (parsed; not used yet).
    #[serde(default)]
    pub n_random_images: Option<usize>,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Hyperparameters {
            batch_size: default_batch_size(),
            momentum: default_momentum(),
            weight_decay: default_weight_decay(),
            nesterov: false,
            seed: 0,
            max_train_batches: None,
            max_eval_batches: None,
            alpha: None,
            beta: None,
            temperature: None,
            data_loading_workers: None,
            n_random_images: None,
        }
    }
}

fn default_gamma() -> f64 {
    0.1
}
fn default_save_directory() -> PathBuf {
    PathBuf::from("./models")
}
fn default_save_model_name() -> String {
    "model.safetensors".into()
}
fn default_save_every() -> usize {
    1
}
fn default_batch_size() -> usize {
    128
}
fn default_momentum() -> f64 {
    0.9
}
fn default_weight_decay() -> f64 {
    1e-4
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg = Config::parse(&text, &path.display().to_string())?;
        cfg.validate().map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })?;
        Ok(cfg)
    }

    /// Parse YAML (no value checks). `origin` names the source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        serde_norway::from_str(text).map_err(|e| Error::Config(describe_yaml_error(&e, origin)))
    }

    /// Range checks, with the key path in each message.
    pub fn validate(&self) -> Result<()> {
        fn bad(key: &str, msg: String) -> Result<()> {
            Err(Error::Config(format!("{key} {msg}")))
        }
        if self.models.dataset.trim().is_empty() {
            return bad("models.dataset", "must not be empty".into());
        }
        if self.models.training_architecture.trim().is_empty() {
            return bad("models.training_architecture", "must not be empty".into());
        }
        let stages = self.sequence.stages();
        if stages.is_empty() && !self.params.evaluate {
            return bad(
                "sequence",
                "has no stage: add e.g. `train: {epochs: 5, lr: 0.1}`".into(),
            );
        }
        for (name, s) in stages {
            let key = |k: &str| format!("sequence.{name}.{k}");
            if s.epochs == 0 {
                return bad(&key("epochs"), "must be > 0 (got 0)".into());
            }
            if !(s.lr.is_finite() && s.lr > 0.0) {
                return bad(
                    &key("lr"),
                    format!("must be a finite number > 0 (got {})", s.lr),
                );
            }
            if !(s.gamma.is_finite() && s.gamma > 0.0) {
                return bad(
                    &key("gamma"),
                    format!("must be a finite number > 0 (got {})", s.gamma),
                );
            }
            if let Some(m) = s.milestones.iter().find(|&&m| m == 0) {
                return bad(&key("milestones"), format!("must be epochs >= 1 (got {m})"));
            }
            if s.milestones.windows(2).any(|w| w[0] > w[1]) {
                return bad(
                    &key("milestones"),
                    format!("must be in increasing order (got {:?})", s.milestones),
                );
            }
        }
        let h = &self.hyperparameters;
        if h.batch_size == 0 {
            return bad("hyperparameters.batch_size", "must be > 0 (got 0)".into());
        }
        if !(h.momentum.is_finite() && (0.0..1.0).contains(&h.momentum)) {
            return bad(
                "hyperparameters.momentum",
                format!("must be in [0, 1) (got {})", h.momentum),
            );
        }
        if !(h.weight_decay.is_finite() && h.weight_decay >= 0.0) {
            return bad(
                "hyperparameters.weight_decay",
                format!("must be >= 0 (got {})", h.weight_decay),
            );
        }
        if h.nesterov && h.momentum == 0.0 {
            return bad("hyperparameters.nesterov", "needs momentum > 0".into());
        }
        for (k, v) in [
            ("max_train_batches", h.max_train_batches),
            ("max_eval_batches", h.max_eval_batches),
        ] {
            if v == Some(0) {
                return bad(
                    &format!("hyperparameters.{k}"),
                    "must be > 0 when given (got 0)".into(),
                );
            }
        }
        if let Some(t) = h.temperature {
            if !(t.is_finite() && t > 0.0) {
                return bad(
                    "hyperparameters.temperature",
                    format!("must be > 0 (got {t})"),
                );
            }
        }
        if self.params.save_every == 0 {
            return bad("params.save_every", "must be > 0 (got 0)".into());
        }
        if self.params.save_model_name.trim().is_empty() {
            return bad("params.save_model_name", "must not be empty".into());
        }
        if self.params.evaluate && self.models.training_checkpoint.is_none() {
            return bad(
                "params.evaluate",
                "is true but models.training_checkpoint is not set".into(),
            );
        }
        if let Some(d) = &self.device {
            d.parse::<DeviceRequest>().map_err(|_| {
                Error::Config(format!(
                    "device `{d}` is not a device: expected one of auto, cpu, cuda, emu"
                ))
            })?;
        }
        Ok(())
    }

    /// The device the config asks for (`None`: not set).
    pub fn device_request(&self) -> Result<Option<DeviceRequest>> {
        self.device.as_deref().map(str::parse).transpose()
    }

    /// `--epochs N`: override the epoch count of every stage.
    pub fn override_epochs(&mut self, epochs: usize) -> Result<()> {
        if epochs == 0 {
            return Err(Error::Config("--epochs must be > 0".into()));
        }
        for s in self.sequence.stages_mut() {
            s.epochs = epochs;
        }
        Ok(())
    }
}

/// Turn a serde/YAML error into `origin line L: message`, with a suggestion for unknown keys.
fn describe_yaml_error(e: &serde_norway::Error, origin: &str) -> String {
    let full = e.to_string();
    // serde_norway appends " at line L column C"; we print the location in front instead.
    let msg = match (e.location(), full.rfind(" at line ")) {
        (Some(_), Some(i)) => full[..i].to_string(),
        _ => full.clone(),
    };
    let location = match e.location() {
        Some(l) => format!("{origin} line {}", l.line()),
        None => origin.to_string(),
    };
    match explain_unknown_field(&msg) {
        Some(better) => format!("{location}: {better}"),
        None => format!("{location}: {msg}"),
    }
}

/// serde's "[path: ]unknown field `x`, expected one of `a`, `b`" rewritten with a suggestion.
fn explain_unknown_field(msg: &str) -> Option<String> {
    let i = msg.find("unknown field `")?;
    let section = msg[..i].trim_end().trim_end_matches(':');
    let rest = &msg[i + "unknown field `".len()..];
    let end = rest.find('`')?;
    let key = &rest[..end];
    let valid: Vec<&str> = rest[end + 1..].split('`').skip(1).step_by(2).collect();
    let full_key = if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    };
    let place = if section.is_empty() {
        "at the top level".to_string()
    } else {
        format!("in `{section}`")
    };
    let mut out = format!("unknown key `{full_key}`");
    if let Some(best) = closest(key, &valid) {
        out += &format!(" (did you mean `{best}`?)");
    } else if let Some(home) = key_paths()
        .into_iter()
        .find(|p| p.rsplit('.').next() == Some(key))
    {
        out += &format!(" (did you mean `{home}`? it belongs in another section)");
    }
    out += &format!("; keys accepted {place}: {}", valid.join(", "));
    Some(out)
}

/// Every key path of the schema (`hyperparameters.batch_size`, …), from a config with every
/// optional section present, so the list cannot drift from the structs.
pub fn key_paths() -> Vec<String> {
    let stage = Stage {
        epochs: 1,
        lr: 0.1,
        milestones: vec![],
        gamma: 0.1,
    };
    let full = Config {
        models: Models {
            dataset: String::new(),
            training_architecture: String::new(),
            training_checkpoint: None,
            base_architecture: None,
            base_model_path: None,
        },
        sequence: Sequence {
            train: Some(stage.clone()),
            lit: Some(stage.clone()),
            full_model: Some(stage),
        },
        params: Params::default(),
        hyperparameters: Hyperparameters::default(),
        device: None,
    };
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, child) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&path, child, out);
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(&full).unwrap_or_default(),
        &mut out,
    );
    out
}

/// Levenshtein distance (bytes; config keys are ASCII).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word_l = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&word_l, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
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
        let stages: Vec<&str> = c.sequence.stages().iter().map(|(n, _)| *n).collect();
        assert_eq!(stages, vec!["lit", "full_model"]);
        let lit = c.sequence.lit.as_ref().unwrap();
        assert_eq!(
            (lit.epochs, lit.lr, &lit.milestones[..]),
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
    fn multistep_schedule_matches_pytorch_multisteplr() {
        let s = Stage {
            epochs: 5,
            lr: 0.1,
            milestones: vec![3],
            gamma: 0.1,
        };
        let lrs: Vec<f64> = (0..5).map(|e| s.lr_at(e)).collect();
        for (got, want) in lrs.iter().zip([0.1, 0.1, 0.1, 0.01, 0.01]) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
    }

    #[test]
    fn key_paths_cover_every_section() {
        let paths = key_paths();
        for want in [
            "models.dataset",
            "sequence.train.milestones",
            "params.logdir",
            "hyperparameters.seed",
            "device",
        ] {
            assert!(
                paths.iter().any(|p| p == want),
                "{want} missing from {paths:?}"
            );
        }
        assert!(paths.len() > 25, "{paths:?}");
    }

    #[test]
    fn closest_key_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            closest("lerning_rate", &["lr", "learning_rate"]),
            Some("learning_rate")
        );
        assert_eq!(closest("xyz", &["dataset", "models"]), None);
    }
}
