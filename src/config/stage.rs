//! One struct per stage kind, each with the keys its kind takes (a key of another kind is an
//! unknown key, rejected when the file is parsed) and its own `validate`. `teacher` and `train`
//! stages are a plain [`Schedule`]; `kd` and `full_model` share [`KdStage`].
//!
//! Every `validate` takes `at`, the stage's key path (`sequence.kd`), and names the failing key
//! below it first in its message.

use super::checks::{self, bad};
use super::keys::{Distill, Quantization, Schedule};
use super::Hyperparameters;
use crate::error::Result;
use serde::{Deserialize, Serialize};

schedule_keys! { distill_keys! { stage_struct! {
    /// A `kd` stage (knowledge distillation from the teacher) or a `full_model` stage
    /// (end-to-end KD fine-tuning of the whole student after `lit`).
    KdStage {}
} } }

schedule_keys! { distill_keys! { stage_struct! {
    /// A `takd` stage: teacher → `chain` assistants → student, each by KD from the previous one.
    TakdStage {
        /// The assistants' architectures, from the teacher's side to the student's (required).
        #[serde(default)]
        chain: Option<Vec<String>>,
    }
} } }

schedule_keys! { distill_keys! { stage_struct! {
    /// A `lit` stage: section-wise training by intermediate regression on the teacher.
    LitStage {
        /// loss = beta·KD + (1−beta)·Σ MSE (overrides `hyperparameters.beta`).
        #[serde(default)]
        beta: Option<f64>,
        /// Halve the total loss (default: true for ResNets, false otherwise; SPEC-NOTES §9).
        #[serde(default)]
        divide_by_2: Option<bool>,
        /// Copy the stem and head from the teacher and freeze them (default: true for ResNets).
        #[serde(default)]
        freeze_stem_head: Option<bool>,
        /// The sections (1-based) trained by intermediate regression; default all.
        #[serde(default)]
        sections: Option<Vec<usize>>,
    }
} } }

schedule_keys! { distill_keys! { quantization_keys! { stage_struct! {
    /// A `quantized_distillation` stage (Polino et al.).
    QuantizedDistillationStage {
        /// Bits per weight (required).
        #[serde(default)]
        bits: Option<u32>,
    }
} } } }

schedule_keys! { distill_keys! { quantization_keys! { stage_struct! {
    /// A `differentiable_quantization` stage (Polino et al.: learned quantization points and a
    /// per-layer bit allocation).
    DifferentiableQuantizationStage {
        /// The average bits per weight of the allocation (required).
        #[serde(default)]
        bits: Option<u32>,
        /// Lower bound of a layer's bits.
        #[serde(default)]
        min_bits: Option<u32>,
        /// Upper bound of a layer's bits.
        #[serde(default)]
        max_bits: Option<u32>,
        /// Batches whose gradient norms decide the bit allocation.
        #[serde(default)]
        allocation_batches: Option<usize>,
    }
} } } }

quantization_keys! { stage_struct! {
    /// The `post_training_quantization` baseline: no training, one evaluation per bit width.
    PtqStage {
        /// The bit widths to evaluate.
        bits: Vec<u32>,
    }
} }

/// `at.key`.
fn key(at: &str, key: &str) -> String {
    format!("{at}.{key}")
}

impl Schedule {
    /// Length, rate, schedule and optimizer overrides; `h` gives the momentum a `nesterov`
    /// override needs.
    pub fn validate(&self, at: &str, h: &Hyperparameters) -> Result<()> {
        if self.epochs == 0 {
            return bad(&key(at, "epochs"), "must be > 0 (got 0)");
        }
        checks::positive(&key(at, "lr"), Some(self.lr))?;
        checks::positive(&key(at, "gamma"), Some(self.gamma))?;
        let factor = self.plateau_factor;
        if !(factor.is_finite() && factor > 0.0 && factor < 1.0) {
            return bad(
                &key(at, "plateau_factor"),
                format!("must be in (0, 1) (got {factor})"),
            );
        }
        if self.plateau_patience == 0 {
            return bad(&key(at, "plateau_patience"), "must be > 0 (got 0)");
        }
        if let Some(m) = self.milestones.iter().find(|&&m| m == 0) {
            return bad(
                &key(at, "milestones"),
                format!("must be epochs >= 1 (got {m})"),
            );
        }
        if self.milestones.windows(2).any(|w| w[0] > w[1]) {
            return bad(
                &key(at, "milestones"),
                format!("must be in increasing order (got {:?})", self.milestones),
            );
        }
        checks::momentum(&key(at, "momentum"), self.momentum)?;
        checks::weight_decay(&key(at, "weight_decay"), self.weight_decay)?;
        if self.nesterov == Some(true) && self.momentum.unwrap_or(h.momentum) == 0.0 {
            return bad(&key(at, "nesterov"), "needs momentum > 0");
        }
        Ok(())
    }
}

impl Distill {
    /// A known KD loss, a temperature > 0 and a weight in [0, 1].
    pub fn validate(&self, at: &str) -> Result<()> {
        if let Some(v) = &self.kd_variant {
            if crate::ops::kd::KdLoss::from_name(v, 1.0, 0.5).is_err() {
                return bad(
                    &key(at, "kd_variant"),
                    format!("`{v}` is not a KD loss: expected one of lit, qd, lma, takd"),
                );
            }
        }
        checks::positive(&key(at, "temperature"), self.temperature)?;
        checks::unit(&key(at, "weight"), self.weight)
    }
}

impl Quantization {
    /// Buckets of at least one element.
    pub fn validate(&self, at: &str) -> Result<()> {
        checks::nonzero(&key(at, "bucket_size"), self.bucket_size, "")
    }
}

impl KdStage {
    /// The schedule and the KD loss.
    pub fn validate(&self, at: &str, h: &Hyperparameters) -> Result<()> {
        self.schedule.validate(at, h)?;
        self.distill.validate(at)
    }
}

impl TakdStage {
    /// The schedule, the KD loss, and a chain of at least one named assistant.
    pub fn validate(&self, at: &str, h: &Hyperparameters) -> Result<()> {
        self.schedule.validate(at, h)?;
        self.distill.validate(at)?;
        match &self.chain {
            Some(c) if !c.is_empty() && c.iter().all(|a| !a.trim().is_empty()) => Ok(()),
            _ => bad(
                &key(at, "chain"),
                "is required: the assistants' architectures, e.g. `chain: [takd-resnet20]`",
            ),
        }
    }
}

impl LitStage {
    /// The schedule, the KD loss, `beta` in [0, 1] and 1-based section numbers.
    pub fn validate(&self, at: &str, h: &Hyperparameters) -> Result<()> {
        self.schedule.validate(at, h)?;
        self.distill.validate(at)?;
        checks::unit(&key(at, "beta"), self.beta)?;
        match &self.sections {
            Some(sec) if sec.is_empty() || sec.contains(&0) => bad(
                &key(at, "sections"),
                format!("must be a non-empty list of 1-based section numbers (got {sec:?})"),
            ),
            _ => Ok(()),
        }
    }
}

/// `bits` is given (its range is checked with the other bit widths).
fn required_bits(at: &str, bits: Option<u32>) -> Result<()> {
    match bits {
        None => bad(
            &key(at, "bits"),
            "is required (bits per weight, e.g. `bits: 4`)",
        ),
        Some(_) => Ok(()),
    }
}

impl QuantizedDistillationStage {
    /// The schedule, the KD loss, the bits and the buckets.
    pub fn validate(&self, at: &str, h: &Hyperparameters) -> Result<()> {
        self.schedule.validate(at, h)?;
        self.distill.validate(at)?;
        checks::bits(&key(at, "bits"), self.bits)?;
        self.quantization.validate(at)?;
        required_bits(at, self.bits)
    }
}

impl DifferentiableQuantizationStage {
    /// The schedule, the KD loss, the bits and their bounds, the buckets and the allocation.
    pub fn validate(&self, at: &str, h: &Hyperparameters) -> Result<()> {
        self.schedule.validate(at, h)?;
        self.distill.validate(at)?;
        checks::bits(&key(at, "bits"), self.bits)?;
        checks::bits(&key(at, "min_bits"), self.min_bits)?;
        checks::bits(&key(at, "max_bits"), self.max_bits)?;
        self.quantization.validate(at)?;
        checks::nonzero(&key(at, "allocation_batches"), self.allocation_batches, "")?;
        required_bits(at, self.bits)?;
        if let (Some(lo), Some(hi)) = (self.min_bits, self.max_bits) {
            if lo > hi {
                return bad(
                    &key(at, "min_bits"),
                    format!("must be <= max_bits (got {lo} > {hi})"),
                );
            }
        }
        Ok(())
    }
}

impl PtqStage {
    /// At least one bit width, each valid, and buckets of at least one element.
    pub fn validate(&self, at: &str) -> Result<()> {
        if self.bits.is_empty() {
            return bad(&key(at, "bits"), "must list at least one bit width");
        }
        for &b in &self.bits {
            checks::bits(&key(at, "bits"), Some(b))?;
        }
        self.quantization.validate(at)
    }
}
