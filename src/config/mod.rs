//! The YAML experiment config: an extension of the LIT seed config (sections `models`, `sequence`,
//! `params`, `hyperparameters`), which parses unchanged. Every accepted key is documented in
//! `configs/README.md`.
//!
//! Layout: this module holds [`Config`] and its plain sections; [`keys`] the key groups that
//! several stage kinds share; [`stage`] one struct per stage kind with its `validate`;
//! [`sequence`] the `sequence` section and [`Stage`], the trainer's view of any stage;
//! [`diagnostics`] the file/line/suggestion side of errors. Unknown or misplaced keys are
//! rejected when the file is parsed, with the file, line and key and the closest valid key;
//! values are checked by [`Config::validate`] with their key path.

#[macro_use]
pub mod keys;
mod checks;
pub mod diagnostics;
pub mod sequence;
pub mod stage;
#[cfg(test)]
mod tests;

pub use diagnostics::{closest, edit_distance, key_paths, locate_entry, locate_key};
pub use keys::{Distill, Quantization, Schedule, ScheduleKind};
pub use sequence::{Sequence, Stage, StageKind};
pub use stage::{
    DifferentiableQuantizationStage, KdStage, LitStage, PtqStage, QuantizedDistillationStage,
    TakdStage,
};

use crate::device::DeviceRequest;
use crate::error::{Error, Result};
use crate::limits;
use crate::precision::Precision;
use checks::bad;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A whole experiment config, one field per top-level section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The data set and the architectures.
    pub models: Models,
    /// The stages to run.
    #[serde(default)]
    pub sequence: Sequence,
    /// Where results go and how often.
    #[serde(default)]
    pub params: Params,
    /// Batching, optimizer, seed and distillation defaults of every stage.
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    /// `auto | cpu | cuda | emu`; `--device` and `LIT_DEVICE` take precedence.
    #[serde(default)]
    pub device: Option<String>,
    /// Conv / GEMM operand precision, `fp32 | tf32 | bf16 | fp16` (default fp32; see
    /// [`Precision`]); `--precision` takes precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// The file the config was read from (not a key): errors found after loading name its line.
    #[serde(skip)]
    pub source: Option<ConfigSource>,
}

/// The path and text of a loaded config file.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    /// The file.
    pub path: PathBuf,
    /// Its text, searched for the line of a key.
    pub text: String,
}

/// The `models` section: what is trained on what.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    /// The data set (`mnist`, `cifar10`, `amazon_review_full`, …).
    pub dataset: String,
    /// The model being trained (the student when distilling), e.g. `mlp-784-256-10`.
    pub training_architecture: String,
    /// Start from these weights (safetensors) instead of a fresh initialisation.
    #[serde(default)]
    pub training_checkpoint: Option<PathBuf>,
    /// The teacher of distillation stages.
    #[serde(default)]
    pub base_architecture: Option<String>,
    /// The teacher's weights (a `teacher` stage writes them here).
    #[serde(default)]
    pub base_model_path: Option<PathBuf>,
    /// Activation of a ConvForwardNet student (`relu | lma | prelu | swish | aplu`, optionally
    /// with a bin count such as `lma8`): `cfn-spec0` becomes `cfn-spec0-lma8`.
    #[serde(default)]
    pub student_activation: Option<String>,
}

/// The `params` section: where checkpoints and metrics go.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Metrics (`metrics.jsonl`) go here; defaults to `save_directory`.
    #[serde(default)]
    pub logdir: Option<PathBuf>,
    /// Checkpoints, the run state and the report go here.
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
    /// Where teacher logits are cached when the teacher's inputs are deterministic (no
    /// augmentation): unset or `true`, `<save_directory>/teacher_cache`; a path, that folder
    /// (share one between runs, seeds and students); `false`, no cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_cache: Option<TeacherCacheSetting>,
    /// On cuda and emu, capture each epoch's training step as one graph and replay it (the
    /// same results as running it kernel by kernel); `false` runs every kernel from the host.
    #[serde(default = "default_step_graph")]
    pub step_graph: bool,
}

/// `params.teacher_cache`: on/off, or the folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TeacherCacheSetting {
    /// `true`: the default folder; `false`: no cache.
    On(bool),
    /// This folder.
    Dir(PathBuf),
}

impl Default for Params {
    fn default() -> Self {
        Params {
            logdir: None,
            save_directory: default_save_directory(),
            save_model_name: default_save_model_name(),
            evaluate: false,
            save_every: default_save_every(),
            teacher_cache: None,
            step_graph: default_step_graph(),
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
    /// The folder of the teacher-output cache (`params.teacher_cache`), `None` when it is off.
    pub fn teacher_cache_dir(&self) -> Option<PathBuf> {
        match &self.teacher_cache {
            None | Some(TeacherCacheSetting::On(true)) => {
                Some(self.save_directory.join("teacher_cache"))
            }
            Some(TeacherCacheSetting::On(false)) => None,
            Some(TeacherCacheSetting::Dir(dir)) => Some(dir.clone()),
        }
    }
    /// Where the metrics go: `logdir`, else `save_directory`.
    pub fn metrics_dir(&self) -> &Path {
        self.logdir.as_deref().unwrap_or(&self.save_directory)
    }
}

/// The `hyperparameters` section: settings shared by every stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hyperparameters {
    /// Examples per training and evaluation batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// SGD momentum (a stage's `momentum` overrides it).
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// SGD weight decay (a stage's `weight_decay` overrides it).
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Nesterov momentum (a stage's `nesterov` overrides it).
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
    /// The KD weight of the `lit` KD variant (a stage's `weight` overrides it).
    #[serde(default)]
    pub alpha: Option<f64>,
    /// LIT's `beta` (a `lit` stage's `beta` overrides it).
    #[serde(default)]
    pub beta: Option<f64>,
    /// The KD temperature (a stage's `temperature` overrides it).
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

fn default_save_directory() -> PathBuf {
    PathBuf::from("./models")
}
fn default_save_model_name() -> String {
    "model.safetensors".into()
}
fn default_save_every() -> usize {
    1
}
fn default_step_graph() -> bool {
    true
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

    /// Parse YAML (no value checks; unknown and misplaced keys are errors). `origin` names the
    /// source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        limits::check_yaml(text, origin)?;
        serde_norway::from_str(text)
            .map_err(|e| Error::Config(diagnostics::describe_yaml_error(&e, origin)))
    }

    /// Range checks, section by section, with the key path first in each message.
    pub fn validate(&self) -> Result<()> {
        self.models.validate()?;
        if self.sequence.is_empty() && !self.params.evaluate {
            return bad(
                "sequence",
                "has no stage: add e.g. `train: {epochs: 5, lr: 0.1}`",
            );
        }
        self.sequence
            .validate(&self.models, &self.hyperparameters)?;
        self.hyperparameters.validate()?;
        self.params.validate(&self.models)?;
        if let Some(p) = &self.precision {
            if p.parse::<Precision>().is_err() {
                return bad(
                    "precision",
                    format!("`{p}` is not a precision: expected one of fp32, tf32, bf16, fp16"),
                );
            }
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

    /// The precision of conv / GEMM operands (`precision`, default fp32).
    pub fn precision(&self) -> Result<Precision> {
        self.precision
            .as_deref()
            .map_or(Ok(Precision::Fp32), str::parse)
    }

    /// `--precision`: override the config's `precision` (an fp32 flag leaves an unset key
    /// unset, so that a resume does not see a changed experiment).
    pub fn override_precision(&mut self, precision: Precision) -> Result<()> {
        if precision != self.precision()? || self.precision.is_some() {
            self.precision = Some(precision.name().to_string());
        }
        Ok(())
    }

    /// `--epochs N`: override the epoch count of every stage.
    pub fn override_epochs(&mut self, epochs: usize) -> Result<()> {
        if epochs == 0 {
            return Err(Error::Config("--epochs must be > 0".into()));
        }
        for s in self.sequence.schedules_mut() {
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

impl Models {
    /// A data set, a student architecture, and an activation that fits it.
    pub fn validate(&self) -> Result<()> {
        if self.dataset.trim().is_empty() {
            return bad("models.dataset", "must not be empty");
        }
        if self.training_architecture.trim().is_empty() {
            return bad("models.training_architecture", "must not be empty");
        }
        if let Some(a) = &self.student_activation {
            if student_architecture_with(&self.training_architecture, a).is_err() {
                return bad(
                    "models.student_activation",
                    format!(
                        "`{a}` needs a ConvForwardNet student (`cfn-<spec>`) and one of relu, \
                         lma, prelu, swish, aplu (optionally with bins, e.g. lma8); \
                         training_architecture is `{}`",
                        self.training_architecture
                    ),
                );
            }
        }
        Ok(())
    }
}

impl Hyperparameters {
    /// Batch size, optimizer, subset limits and distillation weights.
    pub fn validate(&self) -> Result<()> {
        const AT: &str = "hyperparameters";
        if self.batch_size == 0 {
            return bad("hyperparameters.batch_size", "must be > 0 (got 0)");
        }
        checks::momentum("hyperparameters.momentum", Some(self.momentum))?;
        checks::weight_decay("hyperparameters.weight_decay", Some(self.weight_decay))?;
        if self.nesterov && self.momentum == 0.0 {
            return bad("hyperparameters.nesterov", "needs momentum > 0");
        }
        for (k, v) in [
            ("max_train_batches", self.max_train_batches),
            ("max_eval_batches", self.max_eval_batches),
            ("max_train_examples", self.max_train_examples),
            ("max_test_examples", self.max_test_examples),
        ] {
            checks::nonzero(&format!("{AT}.{k}"), v, " when given")?;
        }
        checks::positive("hyperparameters.temperature", self.temperature)?;
        checks::unit("hyperparameters.alpha", self.alpha)?;
        checks::unit("hyperparameters.beta", self.beta)
    }
}

impl Params {
    /// Save cadence and file name; `evaluate` needs `models.training_checkpoint`.
    pub fn validate(&self, models: &Models) -> Result<()> {
        if self.save_every == 0 {
            return bad("params.save_every", "must be > 0 (got 0)");
        }
        if self.save_model_name.trim().is_empty() {
            return bad("params.save_model_name", "must not be empty");
        }
        if self.evaluate && models.training_checkpoint.is_none() {
            return bad(
                "params.evaluate",
                "is true but models.training_checkpoint is not set",
            );
        }
        Ok(())
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
