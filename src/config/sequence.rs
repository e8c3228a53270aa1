//! The `sequence` section: which stages run, in what order, and [`Stage`], the one view of a
//! stage of any kind that the trainer works with.

use super::checks::bad;
use super::keys::{Distill, Quantization, Schedule};
use super::stage::{
    DifferentiableQuantizationStage, KdStage, LitStage, PtqStage, QuantizedDistillationStage,
    TakdStage,
};
use super::{Hyperparameters, Models};
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// The stages of an experiment, one optional key per kind (the key is the kind). Present stages
/// run in the order of [`Sequence::stages`]: `teacher`, `train`, `takd`, `kd`, `lit`,
/// `full_model`, `quantized_distillation`, `differentiable_quantization`, then
/// `post_training_quantization`; each one continues from the student the previous one left.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sequence {
    /// Train the teacher (`models.base_architecture`) from scratch; saved to `base_model_path`.
    #[serde(default)]
    pub teacher: Option<Schedule>,
    /// Plain supervised training from scratch (or from `models.training_checkpoint`).
    #[serde(default)]
    pub train: Option<Schedule>,
    /// TAKD chain: teacher → `chain` assistants → student, each by KD from the previous one.
    #[serde(default)]
    pub takd: Option<TakdStage>,
    /// Knowledge distillation from the teacher.
    #[serde(default)]
    pub kd: Option<KdStage>,
    /// LIT section-wise training.
    #[serde(default)]
    pub lit: Option<LitStage>,
    /// End-to-end KD fine-tuning of the whole student (after `lit`).
    #[serde(default)]
    pub full_model: Option<KdStage>,
    /// Polino et al.'s quantized distillation.
    #[serde(default)]
    pub quantized_distillation: Option<QuantizedDistillationStage>,
    /// Polino et al.'s differentiable quantization (learned quantization points).
    #[serde(default)]
    pub differentiable_quantization: Option<DifferentiableQuantizationStage>,
    /// Baseline: quantize the student as it is and evaluate it.
    #[serde(default)]
    pub post_training_quantization: Option<PtqStage>,
}

/// What a training stage does; one per key of `sequence` (post-training quantization trains
/// nothing and is not one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// `sequence.teacher`.
    Teacher,
    /// `sequence.train`.
    Train,
    /// `sequence.takd`.
    Takd,
    /// `sequence.kd`.
    Kd,
    /// `sequence.lit`.
    Lit,
    /// `sequence.full_model`.
    FullModel,
    /// `sequence.quantized_distillation`.
    QuantizedDistillation,
    /// `sequence.differentiable_quantization`.
    DifferentiableQuantization,
}

impl StageKind {
    /// Every kind, in run order.
    pub const ALL: [StageKind; 8] = [
        StageKind::Teacher,
        StageKind::Train,
        StageKind::Takd,
        StageKind::Kd,
        StageKind::Lit,
        StageKind::FullModel,
        StageKind::QuantizedDistillation,
        StageKind::DifferentiableQuantization,
    ];

    /// The kind's key under `sequence`.
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
}

/// A training stage of any kind, with its keys. It dereferences to its [`Schedule`] (every kind
/// has one), so `stage.lr` and `stage.epochs` read the common keys; the method keys are read
/// with the accessors below, which give `None` for a kind that does not take the key.
#[derive(Clone, Debug)]
pub enum Stage {
    /// `sequence.teacher`.
    Teacher(Schedule),
    /// `sequence.train`.
    Train(Schedule),
    /// `sequence.takd`.
    Takd(TakdStage),
    /// `sequence.kd`.
    Kd(KdStage),
    /// `sequence.lit`.
    Lit(LitStage),
    /// `sequence.full_model`.
    FullModel(KdStage),
    /// `sequence.quantized_distillation`.
    QuantizedDistillation(QuantizedDistillationStage),
    /// `sequence.differentiable_quantization`.
    DifferentiableQuantization(DifferentiableQuantizationStage),
}

impl std::ops::Deref for Stage {
    type Target = Schedule;
    fn deref(&self) -> &Schedule {
        self.schedule()
    }
}

impl Stage {
    /// The stage's kind.
    pub fn kind(&self) -> StageKind {
        match self {
            Stage::Teacher(_) => StageKind::Teacher,
            Stage::Train(_) => StageKind::Train,
            Stage::Takd(_) => StageKind::Takd,
            Stage::Kd(_) => StageKind::Kd,
            Stage::Lit(_) => StageKind::Lit,
            Stage::FullModel(_) => StageKind::FullModel,
            Stage::QuantizedDistillation(_) => StageKind::QuantizedDistillation,
            Stage::DifferentiableQuantization(_) => StageKind::DifferentiableQuantization,
        }
    }

    /// The common keys.
    pub fn schedule(&self) -> &Schedule {
        match self {
            Stage::Teacher(s) | Stage::Train(s) => s,
            Stage::Takd(s) => &s.schedule,
            Stage::Kd(s) | Stage::FullModel(s) => &s.schedule,
            Stage::Lit(s) => &s.schedule,
            Stage::QuantizedDistillation(s) => &s.schedule,
            Stage::DifferentiableQuantization(s) => &s.schedule,
        }
    }

    /// The KD loss keys (`None`: `teacher` and `train`, which do not distil).
    pub fn distill(&self) -> Option<&Distill> {
        match self {
            Stage::Teacher(_) | Stage::Train(_) => None,
            Stage::Takd(s) => Some(&s.distill),
            Stage::Kd(s) | Stage::FullModel(s) => Some(&s.distill),
            Stage::Lit(s) => Some(&s.distill),
            Stage::QuantizedDistillation(s) => Some(&s.distill),
            Stage::DifferentiableQuantization(s) => Some(&s.distill),
        }
    }

    /// The quantization keys (the quantizing kinds only).
    pub fn quantization(&self) -> Option<&Quantization> {
        match self {
            Stage::QuantizedDistillation(s) => Some(&s.quantization),
            Stage::DifferentiableQuantization(s) => Some(&s.quantization),
            _ => None,
        }
    }

    fn lit(&self) -> Option<&LitStage> {
        match self {
            Stage::Lit(s) => Some(s),
            _ => None,
        }
    }

    fn differentiable(&self) -> Option<&DifferentiableQuantizationStage> {
        match self {
            Stage::DifferentiableQuantization(s) => Some(s),
            _ => None,
        }
    }

    /// `kd_variant` ([`Distill::kd_variant`]).
    pub fn kd_variant(&self) -> Option<&str> {
        self.distill()?.kd_variant.as_deref()
    }
    /// `temperature` ([`Distill::temperature`]).
    pub fn temperature(&self) -> Option<f64> {
        self.distill()?.temperature
    }
    /// `weight` ([`Distill::weight`]).
    pub fn weight(&self) -> Option<f64> {
        self.distill()?.weight
    }
    /// LIT's `beta` ([`LitStage::beta`]).
    pub fn beta(&self) -> Option<f64> {
        self.lit()?.beta
    }
    /// LIT's `divide_by_2` ([`LitStage::divide_by_2`]).
    pub fn divide_by_2(&self) -> Option<bool> {
        self.lit()?.divide_by_2
    }
    /// LIT's `freeze_stem_head` ([`LitStage::freeze_stem_head`]).
    pub fn freeze_stem_head(&self) -> Option<bool> {
        self.lit()?.freeze_stem_head
    }
    /// LIT's `sections` ([`LitStage::sections`]).
    pub fn sections(&self) -> Option<&[usize]> {
        self.lit()?.sections.as_deref()
    }
    /// TAKD's `chain` ([`TakdStage::chain`]).
    pub fn chain(&self) -> Option<&[String]> {
        match self {
            Stage::Takd(s) => s.chain.as_deref(),
            _ => None,
        }
    }
    /// The bits per weight of a quantizing stage.
    pub fn bits(&self) -> Option<u32> {
        match self {
            Stage::QuantizedDistillation(s) => s.bits,
            Stage::DifferentiableQuantization(s) => s.bits,
            _ => None,
        }
    }
    /// `bucket_size` ([`Quantization::bucket_size`]).
    pub fn bucket_size(&self) -> Option<usize> {
        self.quantization()?.bucket_size
    }
    /// `quantize_first_and_last_layer` ([`Quantization::quantize_first_and_last_layer`]).
    pub fn quantize_first_and_last_layer(&self) -> Option<bool> {
        self.quantization()?.quantize_first_and_last_layer
    }
    /// `quantized_layers` ([`Quantization::quantized_layers`]).
    pub fn quantized_layers(&self) -> Option<&[String]> {
        self.quantization()?.quantized_layers.as_deref()
    }
    /// `min_bits` ([`DifferentiableQuantizationStage::min_bits`]).
    pub fn min_bits(&self) -> Option<u32> {
        self.differentiable()?.min_bits
    }
    /// `max_bits` ([`DifferentiableQuantizationStage::max_bits`]).
    pub fn max_bits(&self) -> Option<u32> {
        self.differentiable()?.max_bits
    }
    /// `allocation_batches` ([`DifferentiableQuantizationStage::allocation_batches`]).
    pub fn allocation_batches(&self) -> Option<usize> {
        self.differentiable()?.allocation_batches
    }

    /// The kind's own checks, with `sequence.<kind>` as the key path.
    pub fn validate(&self, h: &Hyperparameters) -> Result<()> {
        let at = format!("sequence.{}", self.kind().name());
        match self {
            Stage::Teacher(s) | Stage::Train(s) => s.validate(&at, h),
            Stage::Takd(s) => s.validate(&at, h),
            Stage::Kd(s) | Stage::FullModel(s) => s.validate(&at, h),
            Stage::Lit(s) => s.validate(&at, h),
            Stage::QuantizedDistillation(s) => s.validate(&at, h),
            Stage::DifferentiableQuantization(s) => s.validate(&at, h),
        }
    }
}

impl Sequence {
    /// Present training stages in run order (post-training quantization is separate).
    pub fn stages(&self) -> Vec<(StageKind, Stage)> {
        let present = [
            self.teacher.clone().map(Stage::Teacher),
            self.train.clone().map(Stage::Train),
            self.takd.clone().map(Stage::Takd),
            self.kd.clone().map(Stage::Kd),
            self.lit.clone().map(Stage::Lit),
            self.full_model.clone().map(Stage::FullModel),
            self.quantized_distillation
                .clone()
                .map(Stage::QuantizedDistillation),
            self.differentiable_quantization
                .clone()
                .map(Stage::DifferentiableQuantization),
        ];
        present
            .into_iter()
            .flatten()
            .map(|s| (s.kind(), s))
            .collect()
    }

    /// The schedule of every present training stage.
    pub(super) fn schedules_mut(&mut self) -> impl Iterator<Item = &mut Schedule> {
        [
            self.teacher.as_mut(),
            self.train.as_mut(),
            self.takd.as_mut().map(|s| &mut s.schedule),
            self.kd.as_mut().map(|s| &mut s.schedule),
            self.lit.as_mut().map(|s| &mut s.schedule),
            self.full_model.as_mut().map(|s| &mut s.schedule),
            self.quantized_distillation
                .as_mut()
                .map(|s| &mut s.schedule),
            self.differentiable_quantization
                .as_mut()
                .map(|s| &mut s.schedule),
        ]
        .into_iter()
        .flatten()
    }

    /// No stage at all, not even post-training quantization.
    pub fn is_empty(&self) -> bool {
        self.stages().is_empty() && self.post_training_quantization.is_none()
    }

    /// Every stage's own checks, then what the stages need from `models` (a teacher).
    pub fn validate(&self, models: &Models, h: &Hyperparameters) -> Result<()> {
        let has_teacher_stage = self.teacher.is_some();
        for (kind, stage) in self.stages() {
            stage.validate(h)?;
            let name = kind.name();
            if kind.needs_teacher() && models.base_architecture.is_none() {
                return bad(
                    "models.base_architecture",
                    format!("is required by the `{name}` stage (the teacher's architecture)"),
                );
            }
            if kind.needs_teacher() && !has_teacher_stage && models.base_model_path.is_none() {
                return bad(
                    "models.base_model_path",
                    format!(
                        "is required by the `{name}` stage (the teacher's weights), unless a \
                         `sequence.teacher` stage trains the teacher first"
                    ),
                );
            }
        }
        if has_teacher_stage && models.base_architecture.is_none() {
            return bad(
                "models.base_architecture",
                "is required by the `teacher` stage",
            );
        }
        match &self.post_training_quantization {
            Some(p) => p.validate("sequence.post_training_quantization"),
            None => Ok(()),
        }
    }
}
