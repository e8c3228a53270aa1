//! The translation experiment config (`task: translation` at the top level), read by
//! `lit-engine train` when it finds that key; the CNN [`Config`](crate::config::Config) is not
//! involved. Its sections mirror the CNN ones where they mean the same thing:
//!
//! - `data`: the corpus folder under the data root and the seed's preprocessing (vocabulary
//!   sizes, minimum frequency, maximum sentence length 50, no lowercasing; SPEC §1);
//! - `models`: the student (and the teacher of a `teacher`, `word_kd`, `seq_kd` or
//!   `quantized_distillation` stage), family `qd_lstm` or `transformer`;
//! - `sequence`: the stages, run in the order `teacher`, `train`, `word_kd`, `seq_kd`,
//!   `quantized_distillation`, `post_training_quantization`, each with its
//!   epochs, optimizer (SGD + OpenNMT halving as QD, or Adam + Noam as LMA) and batch size;
//! - `params`: where checkpoints, vocabularies, the run state and `metrics.jsonl` go;
//! - `hyperparameters`: seed and dropout.
//!
//! Unknown keys are errors naming the file, line and key with the closest valid key; values are
//! range-checked with their key path, and every size from the file is bounded.

use crate::config::{closest, locate_key};
use crate::error::{Error, Result};
use crate::limits::{self, MAX_BATCH, MAX_VOCAB_SIZE};
use crate::nmt::data::LengthFilter;
use crate::nmt::vocab::VocabOptions;
use serde::{Deserialize, Serialize};
use stages::validate_stage;
use std::path::{Path, PathBuf};

mod model_spec;
mod stages;
pub use model_spec::{ModelSizes, ModelSpec, SEED_FFN_HIDDEN, SEED_HEADS, TRANSFORMER_ACTIVATIONS};

/// The value of the top-level `task` key of a translation config.
pub const TASK: &str = "translation";

/// Most epochs of one stage.
pub const MAX_EPOCHS: usize = 100_000;
/// Most LSTM layers of a QD model.
pub const MAX_LAYERS: usize = 64;

/// A whole translation config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslationConfig {
    /// Always `translation`: what `lit-engine train` dispatches on.
    pub task: String,
    /// The corpus and its preprocessing.
    pub data: DataSection,
    /// The student and the teacher.
    pub models: ModelsSection,
    /// The stages to run.
    pub sequence: SequenceSection,
    /// Output locations.
    #[serde(default)]
    pub params: ParamsSection,
    /// Seed and dropout.
    #[serde(default)]
    pub hyperparameters: HyperSection,
    /// `auto | cpu | cuda | emu`; `--device` and `LIT_DEVICE` take precedence.
    #[serde(default)]
    pub device: Option<String>,
}

/// `data`: where the corpus is and how it is read (SPEC-TRANSLATION §1).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Folder under the data root with `{train,valid,test}.{src,tgt}` (e.g. `text/bible-es-en`).
    pub corpus: PathBuf,
    /// Source file suffix (`es`).
    #[serde(default = "default_src")]
    pub src: String,
    /// Target file suffix (`en`).
    #[serde(default = "default_tgt")]
    pub tgt: String,
    /// Most source words in the vocabulary (specials on top; the seed: 50 000).
    #[serde(default = "default_vocab_size")]
    pub src_vocab_size: usize,
    /// Most target words in the vocabulary.
    #[serde(default = "default_vocab_size")]
    pub tgt_vocab_size: usize,
    /// Fewest occurrences of a kept word (0 and 1 keep all; the seed: 0).
    #[serde(default)]
    pub min_frequency: usize,
    /// Longest kept training/validation sentence in words, each side (the seed: 50).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Lowercase every word (the seed does not).
    #[serde(default)]
    pub lowercase: bool,
    /// Short runs: a seeded subset of this many training pairs (after the length filter).
    #[serde(default)]
    pub max_train_pairs: Option<usize>,
    /// Short runs: the first this many validation and test pairs (after the length filter).
    #[serde(default)]
    pub max_eval_pairs: Option<usize>,
    /// Suffixes of further test references scored with `test.<tgt>` (the Bible's `en-kjv`).
    #[serde(default)]
    pub extra_references: Vec<String>,
}

/// `models`: the student, and the teacher of `teacher` / `word_kd` stages.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSection {
    /// The model trained by `train` and `word_kd`.
    #[serde(default)]
    pub student: Option<ModelSpec>,
    /// The model trained by `teacher` and read by `word_kd`.
    #[serde(default)]
    pub teacher: Option<ModelSpec>,
    /// The teacher's weights (default: `params.save_directory/params.teacher_name`); vocabulary
    /// files beside it must equal this run's.
    #[serde(default)]
    pub teacher_checkpoint: Option<PathBuf>,
}

/// The optimizer of a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// QD: plain SGD, clip, halving after `start_decay_at` or a perplexity rise.
    Sgd,
    /// LMA: Adam (0.9, 0.98, 1e-9) with the Noam rate every step.
    Adam,
}

/// What a stage's `batch_size` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchUnit {
    /// Sentences (QD: 64).
    Sentences,
    /// Padded tokens of the larger of the source and target tensors.
    Tokens,
    /// LMA's `max_tok_len` exactly (first-word characters, bug L1; LMA: 3192).
    LmaChars,
}

/// One stage of the sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    /// Epochs of the stage (none for `post_training_quantization`).
    #[serde(default)]
    pub epochs: usize,
    /// `sgd` (default) or `adam`.
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerKind,
    /// SGD: the rate (1.0); Adam: the Noam factor (1.0).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Global gradient-norm clip (QD: 5; 0 turns it off, as LMA).
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// SGD: the factor of each decay (0.5).
    #[serde(default = "default_lr_decay")]
    pub lr_decay: f64,
    /// SGD: the 1-based epoch from which the rate decays regardless of perplexity (8).
    #[serde(default = "default_start_decay_at")]
    pub start_decay_at: usize,
    /// Adam: Noam warm-up steps (8000).
    #[serde(default = "default_warmup")]
    pub warmup_steps: u64,
    /// Training batch capacity (64 sentences).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// What `batch_size` counts.
    #[serde(default = "default_batch_unit")]
    pub batch_unit: BatchUnit,
    /// Validation/test batch capacity in the same unit (default: `batch_size`).
    #[serde(default)]
    pub eval_batch_size: Option<usize>,
    /// Score the stage's final model by test BLEU (default true).
    #[serde(default = "default_true")]
    pub bleu: bool,
    /// Beam size of the test translation (the seed's 5).
    #[serde(default = "default_beam")]
    pub beam_size: usize,
    /// Quantization stages: bits per weight.
    #[serde(default)]
    pub bits: Option<u32>,
    /// Quantization stages: elements per bucket (the seed's 256).
    #[serde(default = "default_bucket")]
    pub bucket_size: usize,
    /// `quantized_distillation`: also quantize parameter 0 and the last while training (B6).
    #[serde(default)]
    pub quantize_first_and_last_layer: bool,
    /// `post_training_quantization` alone in a run: the student checkpoint to quantize.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// `seq_kd`: the beam of the teacher's translation of the training source (the seed's 5).
    #[serde(default)]
    pub distill_beam_size: Option<usize>,
    /// `seq_kd`: sentences the teacher decodes together (default the seed's: QD 1, LMA 10; QD
    /// applies no source mask, so a larger batch changes its outputs, SPEC §4.1).
    #[serde(default)]
    pub distill_batch_size: Option<usize>,
}

/// `sequence`: the stages, always run in this order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceSection {
    /// Train `models.teacher` with plain NLL and save it to the teacher checkpoint.
    #[serde(default)]
    pub teacher: Option<StageSection>,
    /// Train `models.student` from scratch with plain NLL.
    #[serde(default)]
    pub train: Option<StageSection>,
    /// Train `models.student` with word-level KD (0.3·NLL + 0.7·KL) from the teacher.
    #[serde(default)]
    pub word_kd: Option<StageSection>,
    /// Sequence-level KD: the teacher translates the training source (beam search, the
    /// `distill-data` step), and `models.student` is trained with plain NLL on its outputs.
    #[serde(default)]
    pub seq_kd: Option<StageSection>,
    /// Word-level KD at quantized weights (SPEC §3.5); saves the quantized student.
    #[serde(default)]
    pub quantized_distillation: Option<StageSection>,
    /// Quantize the student as the previous stage left it (or its checkpoint); no training.
    #[serde(default)]
    pub post_training_quantization: Option<StageSection>,
}

/// Which stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// `teacher`.
    Teacher,
    /// `train`.
    Train,
    /// `word_kd`.
    WordKd,
    /// `seq_kd`.
    SeqKd,
    /// `quantized_distillation`.
    QuantizedDistillation,
    /// `post_training_quantization`.
    PostTrainingQuantization,
}

impl StageKind {
    /// The key of the stage in `sequence`.
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Teacher => "teacher",
            StageKind::Train => "train",
            StageKind::WordKd => "word_kd",
            StageKind::SeqKd => "seq_kd",
            StageKind::QuantizedDistillation => "quantized_distillation",
            StageKind::PostTrainingQuantization => "post_training_quantization",
        }
    }

    /// Whether the stage trains with word-level KD from the teacher.
    pub fn distills(self) -> bool {
        matches!(self, StageKind::WordKd | StageKind::QuantizedDistillation)
    }

    /// Whether the stage reads the teacher (word-level KD, or its translations for `seq_kd`).
    pub fn needs_teacher(self) -> bool {
        self.distills() || self == StageKind::SeqKd
    }
}

/// `params`: output files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamsSection {
    /// Checkpoints, vocabularies, the run state and `metrics.jsonl` go here.
    #[serde(default = "default_save_directory")]
    pub save_directory: PathBuf,
    /// The teacher stage's checkpoint file name.
    #[serde(default = "default_teacher_name")]
    pub teacher_name: String,
    /// The `train` stage's checkpoint file name.
    #[serde(default = "default_train_name")]
    pub train_name: String,
    /// The `word_kd` stage's checkpoint file name.
    #[serde(default = "default_word_kd_name")]
    pub word_kd_name: String,
    /// The `seq_kd` stage's checkpoint file name.
    #[serde(default = "default_seq_kd_name")]
    pub seq_kd_name: String,
}

/// `hyperparameters`: shared by every stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HyperSection {
    /// Seeds initialisation, the training subset, batch order and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Dropout between LSTM layers and on the attention output (the seed: 0.3).
    #[serde(default = "default_dropout")]
    pub dropout: f32,
}

impl Default for ParamsSection {
    fn default() -> Self {
        ParamsSection {
            save_directory: default_save_directory(),
            teacher_name: default_teacher_name(),
            train_name: default_train_name(),
            word_kd_name: default_word_kd_name(),
            seq_kd_name: default_seq_kd_name(),
        }
    }
}

impl Default for HyperSection {
    fn default() -> Self {
        HyperSection {
            seed: 0,
            dropout: default_dropout(),
        }
    }
}

fn default_src() -> String {
    "es".into()
}
fn default_tgt() -> String {
    "en".into()
}
fn default_vocab_size() -> usize {
    50_000
}
fn default_max_length() -> usize {
    50
}
fn default_layers() -> usize {
    1
}
fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Sgd
}
fn default_lr() -> f64 {
    1.0
}
fn default_clip() -> f64 {
    5.0
}
fn default_lr_decay() -> f64 {
    0.5
}
fn default_start_decay_at() -> usize {
    8
}
fn default_warmup() -> u64 {
    8000
}
fn default_batch_size() -> usize {
    64
}
fn default_batch_unit() -> BatchUnit {
    BatchUnit::Sentences
}
fn default_save_directory() -> PathBuf {
    PathBuf::from("./models/translation")
}
fn default_teacher_name() -> String {
    "teacher.safetensors".into()
}
fn default_train_name() -> String {
    "student.safetensors".into()
}
fn default_word_kd_name() -> String {
    "student_word_kd.safetensors".into()
}
fn default_seq_kd_name() -> String {
    "student_seq_kd.safetensors".into()
}
fn default_true() -> bool {
    true
}
fn default_beam() -> usize {
    5
}
fn default_bucket() -> usize {
    crate::nmt::quantize::DEFAULT_BUCKET_SIZE
}
fn default_dropout() -> f32 {
    0.3
}

/// The error `<key> <msg>` (the key path first, so that [`TranslationConfig::load`] can add
/// the line).
fn bad<T>(key: &str, msg: impl std::fmt::Display) -> Result<T> {
    Err(Error::Config(format!("{key} {msg}")))
}

/// Whether the YAML text `text` says `task: translation` at its top level. Text that is not
/// YAML is not a translation config (the CNN loader then reports what is wrong with it).
pub fn is_translation(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Peek {
        task: Option<String>,
    }
    limits::check_yaml(text, "config").is_ok()
        && serde_norway::from_str::<Peek>(text)
            .ok()
            .and_then(|p| p.task)
            .is_some_and(|t| t.trim() == TASK)
}

/// Whether the config file at `path` is a translation config (see [`is_translation`]).
pub fn is_translation_file(path: &Path) -> Result<bool> {
    let bytes = limits::read_file_at_most(path, limits::MAX_CONFIG_BYTES, "config file")?;
    Ok(std::str::from_utf8(&bytes).is_ok_and(is_translation))
}

/// serde's "[path: ]unknown field `x`, expected one of `a`, …" as "unknown key `path.x` (did
/// you mean `y`?); keys accepted in `path`: …"; other messages unchanged.
fn explain(msg: &str) -> String {
    let Some(i) = msg.find("unknown field `") else {
        return msg.to_string();
    };
    let section = msg[..i].trim_end().trim_end_matches(':');
    let rest = &msg[i + "unknown field `".len()..];
    let Some(end) = rest.find('`') else {
        return msg.to_string();
    };
    let key = &rest[..end];
    let valid: Vec<&str> = rest[end + 1..].split('`').skip(1).step_by(2).collect();
    let (full, place) = if section.is_empty() {
        (key.to_string(), "at the top level".to_string())
    } else {
        (format!("{section}.{key}"), format!("in `{section}`"))
    };
    let hint = closest(key, &valid).map_or(String::new(), |b| format!(" (did you mean `{b}`?)"));
    format!(
        "unknown key `{full}`{hint}; keys accepted {place}: {}",
        valid.join(", ")
    )
}

impl TranslationConfig {
    /// Parse YAML (no value checks); `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<TranslationConfig> {
        limits::check_yaml(text, origin)?;
        serde_norway::from_str(text).map_err(|e| {
            let full = e.to_string();
            let msg = match (e.location(), full.rfind(" at line ")) {
                (Some(_), Some(i)) => &full[..i],
                _ => &full,
            };
            let at = e.location().map_or(origin.to_string(), |l| {
                format!("{origin} line {}", l.line())
            });
            Error::Config(format!("{at}: {}", explain(msg)))
        })
    }

    /// Read, parse and validate the file at `path`; errors name the file and, when the key is
    /// written there, its line.
    pub fn load(path: &Path) -> Result<TranslationConfig> {
        let bytes = limits::read_file_at_most(path, limits::MAX_CONFIG_BYTES, "config file")?;
        let origin = path.display().to_string();
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Config(format!("{origin}: not UTF-8 text")))?;
        let cfg = TranslationConfig::parse(&text, &origin)?;
        cfg.validate().map_err(|e| match e {
            Error::Config(m) => {
                let key = m.split_whitespace().next().unwrap_or("");
                match locate_key(&text, key) {
                    Some(line) => Error::Config(format!("{origin} line {line}: {m}")),
                    None => Error::Config(format!("{origin}: {m}")),
                }
            }
            other => other,
        })?;
        Ok(cfg)
    }

    /// The stages in the order they run.
    pub fn stages(&self) -> Vec<(StageKind, &StageSection)> {
        let s = &self.sequence;
        [
            (StageKind::Teacher, &s.teacher),
            (StageKind::Train, &s.train),
            (StageKind::WordKd, &s.word_kd),
            (StageKind::SeqKd, &s.seq_kd),
            (StageKind::QuantizedDistillation, &s.quantized_distillation),
            (
                StageKind::PostTrainingQuantization,
                &s.post_training_quantization,
            ),
        ]
        .into_iter()
        .filter_map(|(k, st)| st.as_ref().map(|st| (k, st)))
        .collect()
    }

    /// `--epochs N`: every stage runs N epochs.
    pub fn override_epochs(&mut self, epochs: usize) -> Result<()> {
        if epochs == 0 || epochs > MAX_EPOCHS {
            return bad(
                "--epochs",
                format!("must be in 1..={MAX_EPOCHS} (got {epochs})"),
            );
        }
        let s = &mut self.sequence;
        for st in [
            &mut s.teacher,
            &mut s.train,
            &mut s.word_kd,
            &mut s.seq_kd,
            &mut s.quantized_distillation,
        ]
        .into_iter()
        .flatten()
        {
            st.epochs = epochs;
        }
        Ok(())
    }

    /// The model a stage trains.
    pub fn model_of(&self, kind: StageKind) -> Option<&ModelSpec> {
        match kind {
            StageKind::Teacher => self.models.teacher.as_ref(),
            _ => self.models.student.as_ref(),
        }
    }

    /// The checkpoint a stage writes.
    pub fn checkpoint_of(&self, kind: StageKind) -> PathBuf {
        match kind {
            StageKind::Teacher => self.teacher_checkpoint(),
            StageKind::Train => self.params.save_directory.join(&self.params.train_name),
            StageKind::WordKd => self.params.save_directory.join(&self.params.word_kd_name),
            StageKind::SeqKd => self.params.save_directory.join(&self.params.seq_kd_name),
            StageKind::QuantizedDistillation => {
                self.quantized_name(kind, &self.params.word_kd_name)
            }
            StageKind::PostTrainingQuantization => {
                let source = self.ptq_source();
                let name = source
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("student");
                self.quantized_name(kind, name)
            }
        }
    }

    /// Where the teacher's weights are written and read.
    pub fn teacher_checkpoint(&self) -> PathBuf {
        self.models
            .teacher_checkpoint
            .clone()
            .unwrap_or_else(|| self.params.save_directory.join(&self.params.teacher_name))
    }

    /// The corpus's length filter.
    pub fn length_filter(&self) -> LengthFilter {
        LengthFilter {
            max_src: self.data.max_length,
            max_tgt: self.data.max_length,
        }
    }

    /// Vocabulary options of the source and the target.
    pub fn vocab_options(&self) -> (VocabOptions, VocabOptions) {
        let o = |max_size| VocabOptions {
            max_size,
            min_freq: self.data.min_frequency,
        };
        (o(self.data.src_vocab_size), o(self.data.tgt_vocab_size))
    }

    /// Range checks, each error starting with its key path.
    pub fn validate(&self) -> Result<()> {
        if self.task.trim() != TASK {
            return bad("task", format!("must be `{TASK}` (got `{}`)", self.task));
        }
        self.validate_data()?;
        let stages = self.stages();
        if stages.is_empty() {
            return bad(
                "sequence",
                "has no stage: add `teacher`, `train`, `word_kd`, `seq_kd`, \
                 `quantized_distillation` or `post_training_quantization`",
            );
        }
        for (kind, st) in &stages {
            let key = format!("sequence.{}", kind.name());
            validate_stage(&key, st, *kind)?;
            let (model_key, model) = match kind {
                StageKind::Teacher => ("models.teacher", &self.models.teacher),
                _ => ("models.student", &self.models.student),
            };
            match model {
                Some(m) => validate_model(model_key, m)?,
                None => return bad(&key, format!("needs `{model_key}`")),
            }
        }
        for (kind, _) in stages.iter().filter(|(k, _)| k.needs_teacher()) {
            match &self.models.teacher {
                Some(t) => validate_model("models.teacher", t)?,
                None => {
                    return bad(
                        &format!("sequence.{}", kind.name()),
                        "needs `models.teacher`",
                    )
                }
            }
        }
        let d = self.hyperparameters.dropout;
        if !(0.0..1.0).contains(&d) {
            return bad(
                "hyperparameters.dropout",
                format!("must be in [0, 1) (got {d})"),
            );
        }
        let p = &self.params;
        for (k, name) in [
            ("teacher_name", &p.teacher_name),
            ("train_name", &p.train_name),
            ("word_kd_name", &p.word_kd_name),
            ("seq_kd_name", &p.seq_kd_name),
        ] {
            let ok = !name.trim().is_empty()
                && Path::new(name).file_name() == Some(std::ffi::OsStr::new(name))
                && name.ends_with(".safetensors");
            if !ok {
                return bad(
                    &format!("params.{k}"),
                    format!("must be a file name ending in .safetensors (got `{name}`)"),
                );
            }
        }
        let students = [
            ("train_name", &p.train_name, self.sequence.train.is_some()),
            (
                "word_kd_name",
                &p.word_kd_name,
                self.sequence.word_kd.is_some(),
            ),
            (
                "seq_kd_name",
                &p.seq_kd_name,
                self.sequence.seq_kd.is_some(),
            ),
        ];
        for (i, (ka, a, used_a)) in students.iter().enumerate() {
            for (kb, b, used_b) in &students[i + 1..] {
                if a == b && *used_a && *used_b {
                    return bad(
                        &format!("params.{kb}"),
                        format!("must differ from params.{ka} (both stages save a student)"),
                    );
                }
            }
        }
        if let Some(dev) = &self.device {
            if dev.parse::<crate::device::DeviceRequest>().is_err() {
                return bad(
                    "device",
                    format!("`{dev}` is not a device: expected one of auto, cpu, cuda, emu"),
                );
            }
        }
        Ok(())
    }

    fn validate_data(&self) -> Result<()> {
        let d = &self.data;
        if d.corpus.as_os_str().is_empty() {
            return bad("data.corpus", "must not be empty");
        }
        let extra = d
            .extra_references
            .iter()
            .map(|s| ("data.extra_references", s));
        for (k, side) in [("data.src", &d.src), ("data.tgt", &d.tgt)]
            .into_iter()
            .chain(extra)
        {
            let ok = !side.is_empty()
                && side
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return bad(
                    k,
                    format!("must be a file suffix such as `en` (got `{side}`)"),
                );
            }
        }
        for (k, n) in [
            ("data.src_vocab_size", d.src_vocab_size),
            ("data.tgt_vocab_size", d.tgt_vocab_size),
        ] {
            if n == 0 || n > MAX_VOCAB_SIZE - 4 {
                return bad(
                    k,
                    format!("must be in 1..={} (got {n})", MAX_VOCAB_SIZE - 4),
                );
            }
        }
        if d.max_length == 0 || d.max_length > MAX_BATCH {
            return bad(
                "data.max_length",
                format!("must be in 1..={MAX_BATCH} (got {})", d.max_length),
            );
        }
        for (k, v) in [
            ("data.max_train_pairs", d.max_train_pairs),
            ("data.max_eval_pairs", d.max_eval_pairs),
        ] {
            if v == Some(0) {
                return bad(k, "must be > 0 when given");
            }
        }
        Ok(())
    }
}

fn validate_model(key: &str, m: &ModelSpec) -> Result<()> {
    m.sizes(key).map(|_| ())
}

#[cfg(test)]
mod tests;
