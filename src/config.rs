//! The YAML experiment config: an extension of the LIT seed config (sections `models`, `sequence`,
//! `params`, `hyperparameters`), which parses unchanged. Every accepted key is documented in
//! `configs/README.md`. Unknown keys are errors that name the file, line and key and suggest the
//! closest valid key; values are checked by [`Config::validate`] with their key path.

use crate::device::DeviceRequest;
use crate::error::{Error, Result};
use crate::limits;
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
    /// The file the config was read from (not a key): errors found after loading name its line.
    #[serde(skip)]
    pub source: Option<ConfigSource>,
}

/// The path and text of a loaded config file.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub text: String,
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
    /// Activation of a ConvForwardNet student (`relu | lma | prelu | swish | aplu`, optionally
    /// with a bin count such as `lma8`): `cfn-spec0` becomes `cfn-spec0-lma8`.
    #[serde(default)]
    pub student_activation: Option<String>,
}

/// The stages of an experiment. Present stages run in the order of [`Sequence::stages`]:
/// `teacher`, `train`, `takd`, `kd`, `lit`, `full_model`, `quantized_distillation`,
/// `differentiable_quantization`, `post_training_quantization`; each one continues from the
/// student the previous one left.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sequence {
    /// Train the teacher (`models.base_architecture`) from scratch; saved to `base_model_path`.
    #[serde(default)]
    pub teacher: Option<Stage>,
    /// Plain supervised training from scratch (or from `models.training_checkpoint`).
    #[serde(default)]
    pub train: Option<Stage>,
    /// TAKD chain: teacher → `chain` assistants → student, each by KD from the previous one.
    #[serde(default)]
    pub takd: Option<Stage>,
    /// Knowledge distillation from the teacher.
    #[serde(default)]
    pub kd: Option<Stage>,
    /// LIT section-wise training.
    #[serde(default)]
    pub lit: Option<Stage>,
    /// End-to-end KD fine-tuning of the whole student (after `lit`).
    #[serde(default)]
    pub full_model: Option<Stage>,
    /// Polino et al.'s quantized distillation.
    #[serde(default)]
    pub quantized_distillation: Option<Stage>,
    /// Polino et al.'s differentiable quantization (learned quantization points).
    #[serde(default)]
    pub differentiable_quantization: Option<Stage>,
    /// Baseline: quantize the student as it is and evaluate it.
    #[serde(default)]
    pub post_training_quantization: Option<PtqStage>,
}

/// What a stage does; one per key of `sequence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    Teacher,
    Train,
    Takd,
    Kd,
    Lit,
    FullModel,
    QuantizedDistillation,
    DifferentiableQuantization,
}

impl StageKind {
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Teacher => "teacher",
            StageKind::Train => "train",
            StageKind::Takd => "takd",
            StageKind::Kd => "kd",
            StageKind::Lit => "lit",
            StageKind::FullModel => "full_model",
            StageKind::QuantizedDistillation => "quantized_distillation",
            StageKind::DifferentiableQuantization => "differentiable_quantization",
        }
    }
    /// Stages that need a teacher (`models.base_architecture` + weights or a `teacher` stage).
    /// Differentiable quantization falls back to the full-precision student as its teacher.
    pub fn needs_teacher(self) -> bool {
        !matches!(
            self,
            StageKind::Teacher | StageKind::Train | StageKind::DifferentiableQuantization
        )
    }
    /// Keys of [`Stage`] beyond the common ones that this kind accepts.
    fn own_keys(self) -> &'static [&'static str] {
        match self {
            StageKind::Teacher | StageKind::Train => &[],
            StageKind::Kd | StageKind::FullModel => &["kd_variant", "temperature", "weight"],
            StageKind::Takd => &["kd_variant", "temperature", "weight", "chain"],
            StageKind::Lit => &[
                "kd_variant",
                "temperature",
                "weight",
                "beta",
                "divide_by_2",
                "freeze_stem_head",
                "sections",
            ],
            StageKind::QuantizedDistillation => &[
                "kd_variant",
                "temperature",
                "weight",
                "bits",
                "bucket_size",
                "quantize_first_and_last_layer",
                "quantized_layers",
            ],
            StageKind::DifferentiableQuantization => &[
                "kd_variant",
                "temperature",
                "weight",
                "bits",
                "bucket_size",
                "quantize_first_and_last_layer",
                "quantized_layers",
                "min_bits",
                "max_bits",
                "allocation_batches",
            ],
        }
    }
}

impl Sequence {
    /// Present training stages in run order (post-training quantization is separate).
    pub fn stages(&self) -> Vec<(StageKind, &Stage)> {
        use StageKind::*;
        [
            (Teacher, &self.teacher),
            (Train, &self.train),
            (Takd, &self.takd),
            (Kd, &self.kd),
            (Lit, &self.lit),
            (FullModel, &self.full_model),
            (QuantizedDistillation, &self.quantized_distillation),
            (
                DifferentiableQuantization,
                &self.differentiable_quantization,
            ),
        ]
        .into_iter()
        .filter_map(|(n, s)| s.as_ref().map(|s| (n, s)))
        .collect()
    }
    fn stages_mut(&mut self) -> impl Iterator<Item = &mut Stage> {
        [
            &mut self.teacher,
            &mut self.train,
            &mut self.takd,
            &mut self.kd,
            &mut self.lit,
            &mut self.full_model,
            &mut self.quantized_distillation,
            &mut self.differentiable_quantization,
        ]
        .into_iter()
        .flatten()
    }
    pub fn is_empty(&self) -> bool {
        self.stages().is_empty() && self.post_training_quantization.is_none()
    }
}

/// How the learning rate moves during a stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// `lr · gamma^(milestones passed)` (PyTorch `MultiStepLR`, stepped once per epoch).
    #[default]
    Multistep,
    /// Multiply by `plateau_factor` when the test accuracy has not improved for
    /// `plateau_patience` epochs (Polino et al.'s halving).
    Plateau,
}

/// One training stage. Common keys: `epochs`, `lr`, the schedule and optimizer overrides; the
/// method keys are accepted only by the kinds that use them (see [`StageKind::own_keys`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub epochs: usize,
    pub lr: f64,
    /// Epochs (1-based counts of finished epochs) after which the learning rate is multiplied by `gamma`.
    #[serde(default)]
    pub milestones: Vec<usize>,
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    #[serde(default)]
    pub schedule: ScheduleKind,
    #[serde(default = "default_patience")]
    pub plateau_patience: usize,
    #[serde(default = "default_plateau_factor")]
    pub plateau_factor: f64,
    /// Optimizer overrides of `hyperparameters.{momentum, nesterov, weight_decay}`.
    #[serde(default)]
    pub momentum: Option<f64>,
    #[serde(default)]
    pub nesterov: Option<bool>,
    #[serde(default)]
    pub weight_decay: Option<f64>,

    /// KD loss of distillation stages: `lit | qd | lma | takd` (SPEC-NOTES §7).
    #[serde(default)]
    pub kd_variant: Option<String>,
    /// Overrides `hyperparameters.temperature`.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// The KD weight of `kd_variant` (lit: alpha on the hard term; qd/lma: w_soft; takd: lambda).
    #[serde(default)]
    pub weight: Option<f64>,

    /// LIT: loss = beta·KD + (1−beta)·Σ MSE (overrides `hyperparameters.beta`).
    #[serde(default)]
    pub beta: Option<f64>,
    /// LIT: halve the total loss (default: true for ResNets, false otherwise; SPEC-NOTES §9).
    #[serde(default)]
    pub divide_by_2: Option<bool>,
    /// LIT: copy the stem and head from the teacher and freeze them (default: true for ResNets).
    #[serde(default)]
    pub freeze_stem_head: Option<bool>,
    /// LIT: the sections (1-based) trained by intermediate regression; default all.
    #[serde(default)]
    pub sections: Option<Vec<usize>>,

    /// TAKD: the assistants' architectures, from the teacher's side to the student's.
    #[serde(default)]
    pub chain: Option<Vec<String>>,

    /// Quantization: bits per weight (differentiable quantization: the average budget).
    #[serde(default)]
    pub bits: Option<u32>,
    /// Elements per quantization bucket (absent: one bucket per tensor).
    #[serde(default)]
    pub bucket_size: Option<usize>,
    /// Polino's exclusion rule: when false, `named_parameters()` index 0 and the last index are
    /// not quantized.
    #[serde(default)]
    pub quantize_first_and_last_layer: Option<bool>,
    /// Only parameters whose name starts with one of these prefixes are quantized (default all).
    #[serde(default)]
    pub quantized_layers: Option<Vec<String>>,
    /// Differentiable quantization: bounds of the per-layer bit allocation.
    #[serde(default)]
    pub min_bits: Option<u32>,
    #[serde(default)]
    pub max_bits: Option<u32>,
    /// Differentiable quantization: batches whose gradient norms decide the bit allocation.
    #[serde(default)]
    pub allocation_batches: Option<usize>,
}

impl Stage {
    /// Learning rate of epoch `epoch` (0-based) under the multistep schedule, as PyTorch's
    /// `MultiStepLR` stepped once per epoch.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let passed = self.milestones.iter().filter(|&&m| m <= epoch).count();
        self.lr * self.gamma.powi(passed as i32)
    }

    /// Names of the method keys set in this stage.
    fn set_method_keys(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut check = |set: bool, k: &'static str| {
            if set {
                v.push(k)
            }
        };
        check(self.kd_variant.is_some(), "kd_variant");
        check(self.temperature.is_some(), "temperature");
        check(self.weight.is_some(), "weight");
        check(self.beta.is_some(), "beta");
        check(self.divide_by_2.is_some(), "divide_by_2");
        check(self.freeze_stem_head.is_some(), "freeze_stem_head");
        check(self.sections.is_some(), "sections");
        check(self.chain.is_some(), "chain");
        check(self.bits.is_some(), "bits");
        check(self.bucket_size.is_some(), "bucket_size");
        check(
            self.quantize_first_and_last_layer.is_some(),
            "quantize_first_and_last_layer",
        );
        check(self.quantized_layers.is_some(), "quantized_layers");
        check(self.min_bits.is_some(), "min_bits");
        check(self.max_bits.is_some(), "max_bits");
        check(self.allocation_batches.is_some(), "allocation_batches");
        v
    }
}

/// The post-training quantization baseline: no training, one evaluation per bit width.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PtqStage {
    pub bits: Vec<u32>,
    #[serde(default)]
    pub bucket_size: Option<usize>,
    #[serde(default)]
    pub quantize_first_and_last_layer: Option<bool>,
    #[serde(default)]
    pub quantized_layers: Option<Vec<String>>,
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
    /// Save the resumable `-last` checkpoint every this many epochs (and after each stage).
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
    /// The best checkpoint: `save_directory/save_model_name`, with `.pth` mapped to `.safetensors`.
    pub fn checkpoint_path(&self) -> PathBuf {
        let p = self.save_directory.join(&self.save_model_name);
        match p.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => p,
            _ => p.with_extension("safetensors"),
        }
    }
    /// `<save_directory>/<stem><suffix>.safetensors`, e.g. the `-last` checkpoint.
    pub fn checkpoint_with_suffix(&self, suffix: &str) -> PathBuf {
        let best = self.checkpoint_path();
        let stem = best
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        best.with_file_name(format!("{stem}{suffix}.safetensors"))
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
    /// Short runs: a class-stratified subset (seeded) of this many training examples.
    #[serde(default)]
    pub max_train_examples: Option<usize>,
    /// Short runs: a class-stratified subset (seeded) of this many test examples.
    #[serde(default)]
    pub max_test_examples: Option<usize>,
    /// Random crop (padding 4) and horizontal flip of training images.
    #[serde(default)]
    pub augment: bool,
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
    /// Read by LIT's training code but never used there (the VDCNN `trainlit.py` ignores it);
    /// accepted with any value and ignored here too, with a warning when it is not 0.
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
            max_train_examples: None,
            max_test_examples: None,
            augment: false,
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
fn default_patience() -> usize {
    1
}
fn default_plateau_factor() -> f64 {
    0.5
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
    /// Read, parse and validate a config file. Validation errors name the file and, when the key
    /// is written in the file, its line.
    pub fn load(path: &Path) -> Result<Config> {
        let bytes = limits::read_file_at_most(path, limits::MAX_CONFIG_BYTES, "config file")?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        let mut cfg = Config::parse(&text, &path.display().to_string())?;
        cfg.source = Some(ConfigSource {
            path: path.to_path_buf(),
            text,
        });
        cfg.validate().map_err(|e| cfg.locate(e))?;
        Ok(cfg)
    }

    /// A config error found after parsing, whose message starts with its key path
    /// (`sequence.takd.chain[1]: …`, `models.dataset must …`), with the file and the line where
    /// that key (or, for `chain[i]`, that list entry) is written in front. Other errors, and
    /// configs not read from a file, pass through unchanged.
    pub fn locate(&self, e: Error) -> Error {
        let (Error::Config(m), Some(src)) = (&e, &self.source) else {
            return e;
        };
        let file = src.path.display().to_string();
        if m.starts_with(&file) {
            return e;
        }
        let key = m
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches(':');
        // A key path has a dot (`device` is the one top-level key that is a value).
        let is_key = key.contains('.') || key == "device";
        let line = if !is_key {
            None
        } else {
            match key.strip_suffix(']').and_then(|k| k.split_once('[')) {
                Some((list, i)) => i
                    .parse::<usize>()
                    .ok()
                    .zip(self.list_entries(list))
                    .and_then(|(i, entries)| locate_entry(&src.text, list, entries, i))
                    .or_else(|| locate_key(&src.text, list)),
                None => locate_key(&src.text, key),
            }
        };
        match line {
            Some(line) => Error::Config(format!("{file} line {line}: {m}")),
            None => Error::Config(format!("{file}: {m}")),
        }
    }

    /// The entries of a list-valued key (the TAKD chain).
    fn list_entries(&self, key: &str) -> Option<&[String]> {
        match key {
            "sequence.takd.chain" => self.sequence.takd.as_ref()?.chain.as_deref(),
            _ => None,
        }
    }

    /// Parse YAML (no value checks). `origin` names the source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        limits::check_yaml(text, origin)?;
        serde_norway::from_str(text).map_err(|e| Error::Config(describe_yaml_error(&e, origin)))
    }

    /// Range checks, with the key path first in each message.
    pub fn validate(&self) -> Result<()> {
        fn bad(key: &str, msg: String) -> Result<()> {
            Err(Error::Config(format!("{key} {msg}")))
        }
        fn positive(key: &str, v: Option<f64>) -> Result<()> {
            match v {
                Some(v) if !(v.is_finite() && v > 0.0) => {
                    bad(key, format!("must be a finite number > 0 (got {v})"))
                }
                _ => Ok(()),
            }
        }
        fn unit(key: &str, v: Option<f64>) -> Result<()> {
            match v {
                Some(v) if !(0.0..=1.0).contains(&v) => {
                    bad(key, format!("must be in [0, 1] (got {v})"))
                }
                _ => Ok(()),
            }
        }
        fn bits_ok(key: &str, b: Option<u32>) -> Result<()> {
            match b {
                Some(b) if !(1..=16).contains(&b) => {
                    bad(key, format!("must be in 1..=16 (got {b})"))
                }
                _ => Ok(()),
            }
        }
        if self.models.dataset.trim().is_empty() {
            return bad("models.dataset", "must not be empty".into());
        }
        if self.models.training_architecture.trim().is_empty() {
            return bad("models.training_architecture", "must not be empty".into());
        }
        if let Some(a) = &self.models.student_activation {
            if crate::config::student_architecture_with(&self.models.training_architecture, a)
                .is_err()
            {
                return bad(
                    "models.student_activation",
                    format!(
                        "`{a}` needs a ConvForwardNet student (`cfn-<spec>`) and one of relu, \
                         lma, prelu, swish, aplu (optionally with bins, e.g. lma8); \
                         training_architecture is `{}`",
                        self.models.training_architecture
                    ),
                );
            }
        }
        if self.sequence.is_empty() && !self.params.evaluate {
            return bad(
                "sequence",
                "has no stage: add e.g. `train: {epochs: 5, lr: 0.1}`".into(),
            );
        }
        let has_teacher_stage = self.sequence.teacher.is_some();
        for (kind, s) in self.sequence.stages() {
            let name = kind.name();
            let key = |k: &str| format!("sequence.{name}.{k}");
            for k in s.set_method_keys() {
                if !kind.own_keys().contains(&k) {
                    let homes: Vec<&str> = self
                        .sequence
                        .all_kinds()
                        .into_iter()
                        .filter(|o| o.own_keys().contains(&k))
                        .map(StageKind::name)
                        .collect();
                    return bad(
                        &key(k),
                        format!(
                            "is not a key of a `{name}` stage (it belongs to: {})",
                            homes.join(", ")
                        ),
                    );
                }
            }
            if s.epochs == 0 {
                return bad(&key("epochs"), "must be > 0 (got 0)".into());
            }
            positive(&key("lr"), Some(s.lr))?;
            positive(&key("gamma"), Some(s.gamma))?;
            if !(s.plateau_factor.is_finite() && s.plateau_factor > 0.0 && s.plateau_factor < 1.0) {
                return bad(
                    &key("plateau_factor"),
                    format!("must be in (0, 1) (got {})", s.plateau_factor),
                );
            }
            if s.plateau_patience == 0 {
                return bad(&key("plateau_patience"), "must be > 0 (got 0)".into());
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
            if let Some(m) = s.momentum {
                if !(m.is_finite() && (0.0..1.0).contains(&m)) {
                    return bad(&key("momentum"), format!("must be in [0, 1) (got {m})"));
                }
            }
            if let Some(w) = s.weight_decay {
                if !(w.is_finite() && w >= 0.0) {
                    return bad(&key("weight_decay"), format!("must be >= 0 (got {w})"));
                }
            }
            if s.nesterov == Some(true)
                && s.momentum.unwrap_or(self.hyperparameters.momentum) == 0.0
            {
                return bad(&key("nesterov"), "needs momentum > 0".into());
            }
            if let Some(v) = &s.kd_variant {
                if crate::ops::kd::KdLoss::from_name(v, 1.0, 0.5).is_err() {
                    return bad(
                        &key("kd_variant"),
                        format!("`{v}` is not a KD loss: expected one of lit, qd, lma, takd"),
                    );
                }
            }
            positive(&key("temperature"), s.temperature)?;
            unit(&key("weight"), s.weight)?;
            unit(&key("beta"), s.beta)?;
            bits_ok(&key("bits"), s.bits)?;
            bits_ok(&key("min_bits"), s.min_bits)?;
            bits_ok(&key("max_bits"), s.max_bits)?;
            if s.bucket_size == Some(0) {
                return bad(&key("bucket_size"), "must be > 0 (got 0)".into());
            }
            if s.allocation_batches == Some(0) {
                return bad(&key("allocation_batches"), "must be > 0 (got 0)".into());
            }
            if matches!(
                kind,
                StageKind::QuantizedDistillation | StageKind::DifferentiableQuantization
            ) && s.bits.is_none()
            {
                return bad(
                    &key("bits"),
                    "is required (bits per weight, e.g. `bits: 4`)".into(),
                );
            }
            if let (Some(lo), Some(hi)) = (s.min_bits, s.max_bits) {
                if lo > hi {
                    return bad(
                        &key("min_bits"),
                        format!("must be <= max_bits (got {lo} > {hi})"),
                    );
                }
            }
            if let Some(sec) = &s.sections {
                if sec.is_empty() || sec.contains(&0) {
                    return bad(
                        &key("sections"),
                        format!(
                            "must be a non-empty list of 1-based section numbers (got {sec:?})"
                        ),
                    );
                }
            }
            if kind == StageKind::Takd {
                match &s.chain {
                    Some(c) if !c.is_empty() && c.iter().all(|a| !a.trim().is_empty()) => {}
                    _ => return bad(
                        &key("chain"),
                        "is required: the assistants' architectures, e.g. `chain: [takd-resnet20]`"
                            .into(),
                    ),
                }
            }
            if kind.needs_teacher() && self.models.base_architecture.is_none() {
                return bad(
                    "models.base_architecture",
                    format!("is required by the `{name}` stage (the teacher's architecture)"),
                );
            }
            if kind.needs_teacher() && !has_teacher_stage && self.models.base_model_path.is_none() {
                return bad(
                    "models.base_model_path",
                    format!(
                        "is required by the `{name}` stage (the teacher's weights), unless a \
                         `sequence.teacher` stage trains the teacher first"
                    ),
                );
            }
        }
        if has_teacher_stage && self.models.base_architecture.is_none() {
            return bad(
                "models.base_architecture",
                "is required by the `teacher` stage".into(),
            );
        }
        if let Some(p) = &self.sequence.post_training_quantization {
            let key = "sequence.post_training_quantization";
            if p.bits.is_empty() {
                return bad(
                    &format!("{key}.bits"),
                    "must list at least one bit width".into(),
                );
            }
            for &b in &p.bits {
                bits_ok(&format!("{key}.bits"), Some(b))?;
            }
            if p.bucket_size == Some(0) {
                return bad(&format!("{key}.bucket_size"), "must be > 0 (got 0)".into());
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
            ("max_train_examples", h.max_train_examples),
            ("max_test_examples", h.max_test_examples),
        ] {
            if v == Some(0) {
                return bad(
                    &format!("hyperparameters.{k}"),
                    "must be > 0 when given (got 0)".into(),
                );
            }
        }
        positive("hyperparameters.temperature", h.temperature)?;
        unit("hyperparameters.alpha", h.alpha)?;
        unit("hyperparameters.beta", h.beta)?;
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
            if d.parse::<DeviceRequest>().is_err() {
                return bad(
                    "device",
                    format!("`{d}` is not a device: expected one of auto, cpu, cuda, emu"),
                );
            }
        }
        Ok(())
    }

    /// Settings that are accepted but have no effect, one line each.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(n) = self.hyperparameters.n_random_images.filter(|&n| n > 0) {
            out.push(format!(
                "hyperparameters.n_random_images = {n} is ignored: LIT's training code reads it \
                 but never uses it, and neither does lit-engine"
            ));
        }
        out
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

    /// The student architecture: `training_architecture` with `student_activation` applied.
    pub fn student_architecture(&self) -> Result<String> {
        match &self.models.student_activation {
            None => Ok(self.models.training_architecture.trim().to_string()),
            Some(a) => student_architecture_with(&self.models.training_architecture, a),
        }
    }
}

impl Sequence {
    fn all_kinds(&self) -> Vec<StageKind> {
        use StageKind::*;
        vec![
            Teacher,
            Train,
            Takd,
            Kd,
            Lit,
            FullModel,
            QuantizedDistillation,
            DifferentiableQuantization,
        ]
    }
}

/// `cfn-<spec>` (or `cfn-<spec>-<act>`) with its activation replaced by `activation`.
pub fn student_architecture_with(arch: &str, activation: &str) -> Result<String> {
    let arch = arch.trim();
    let act = activation.trim().to_ascii_lowercase();
    let family_ok = ["relu", "lma", "prelu", "swish", "aplu"].iter().any(|f| {
        act.strip_prefix(f)
            .is_some_and(|r| r.chars().all(|c| c.is_ascii_digit()))
    });
    let spec = arch
        .strip_prefix("cfn-")
        .map(|r| r.split('-').next().unwrap_or(r));
    match (spec, family_ok) {
        (Some(spec), true) if !spec.is_empty() => Ok(format!("cfn-{spec}-{act}")),
        _ => Err(Error::Config(format!(
            "student_activation `{activation}` cannot be applied to `{arch}`"
        ))),
    }
}

/// The 1-based line where the dotted `key` (e.g. `sequence.lit.epochs`) is written in `text`:
/// each component is searched as `name:` after the previous one. `None` when a component is not
/// written (a default value).
pub fn locate_key(text: &str, key: &str) -> Option<usize> {
    locate_key_offset(text, key).map(|pos| line_of(text, pos))
}

fn line_of(text: &str, pos: usize) -> usize {
    text[..pos].matches('\n').count() + 1
}

/// Byte offset of the last component of `key` (see [`locate_key`]).
fn locate_key_offset(text: &str, key: &str) -> Option<usize> {
    let mut pos = 0;
    for part in key.split('.') {
        let mut found = None;
        let mut from = pos;
        while let Some(i) = text[from..].find(part) {
            let at = from + i;
            let before_ok = at == 0 || {
                let c = text.as_bytes()[at - 1];
                !(c.is_ascii_alphanumeric() || c == b'_')
            };
            let rest = text[at + part.len()..].trim_start_matches([' ', '\t']);
            if before_ok && rest.starts_with(':') {
                found = Some(at);
                break;
            }
            from = at + part.len();
        }
        pos = found?;
    }
    Some(pos)
}

/// The line of `entries[index]` in the list under `key`, in flow (`[a, b]`) or block (`- a`
/// lines) style: its occurrence as a whole word after the key, after as many occurrences as
/// there are equal entries before it.
pub fn locate_entry(text: &str, key: &str, entries: &[String], index: usize) -> Option<usize> {
    let entry = entries.get(index)?.trim();
    if entry.is_empty() {
        return None;
    }
    let start = locate_key_offset(text, key)?;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.';
    let bytes = text.as_bytes();
    let mut from = start + key.rsplit('.').next().unwrap_or(key).len();
    let mut skip = entries[..index]
        .iter()
        .filter(|e| e.trim() == entry)
        .count();
    while let Some(i) = text[from..].find(entry) {
        let at = from + i;
        let end = at + entry.len();
        let whole = !word(bytes[at - 1]) && (end == bytes.len() || !word(bytes[end]));
        if whole {
            if skip == 0 {
                return Some(line_of(text, at));
            }
            skip -= 1;
        }
        from = end;
    }
    None
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
        gamma: 0.1,
        ..Stage::default()
    };
    let some = || Some(stage.clone());
    let full = Config {
        models: Models {
            dataset: String::new(),
            training_architecture: String::new(),
            training_checkpoint: None,
            base_architecture: None,
            base_model_path: None,
            student_activation: None,
        },
        sequence: Sequence {
            teacher: some(),
            train: some(),
            takd: some(),
            kd: some(),
            lit: some(),
            full_model: some(),
            quantized_distillation: some(),
            differentiable_quantization: some(),
            post_training_quantization: Some(PtqStage {
                bits: vec![4],
                bucket_size: None,
                quantize_first_and_last_layer: None,
                quantized_layers: None,
            }),
        },
        params: Params::default(),
        hyperparameters: Hyperparameters::default(),
        device: None,
        source: None,
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
        let stages: Vec<&str> = c.sequence.stages().iter().map(|(n, _)| n.name()).collect();
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

    /// Every config shipped in configs/ (and its subfolders) loads: a renamed key or architecture
    /// must not leave a user with a broken example.
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
            if let Err(e) = Config::load(f) {
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
    fn multistep_schedule_matches_pytorch_multisteplr() {
        let s = Stage {
            epochs: 5,
            lr: 0.1,
            milestones: vec![3],
            gamma: 0.1,
            ..Stage::default()
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

    #[test]
    fn list_entries_are_located_on_their_own_line() {
        let text =
            "sequence:\n  takd:\n    chain:\n      - a-1\n      - b\n      - a-1\n    lr: 1\n";
        let chain: Vec<String> = ["a-1", "b", "a-1"].map(String::from).to_vec();
        let at = |i| locate_entry(text, "sequence.takd.chain", &chain, i);
        assert_eq!((at(0), at(1), at(2)), (Some(4), Some(5), Some(6)));
        // `a` is not a whole word of `a-1`; an entry that is not written is not found.
        let other: Vec<String> = vec!["a".into()];
        assert_eq!(locate_entry(text, "sequence.takd.chain", &other, 0), None);
        assert_eq!(locate_entry(text, "sequence.takd.chain", &chain, 3), None);
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
