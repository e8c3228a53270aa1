//! The stages' keys: their validation, batch sizes, and where the quantization stages read and
//! write their students.

use super::{bad, BatchUnit, StageKind, StageSection, TranslationConfig, MAX_EPOCHS};
use crate::error::{Error, Result};
use crate::limits::{MAX_BATCH, MAX_BATCH_TOKENS};
use crate::nmt::batches::BatchSize;
use std::path::PathBuf;

impl TranslationConfig {
    /// `<save_directory>/<base stem>-<qd|ptq><bits>.safetensors`.
    pub(super) fn quantized_name(&self, kind: StageKind, base: &str) -> PathBuf {
        let tag = match kind {
            StageKind::QuantizedDistillation => "qd",
            _ => "ptq",
        };
        let bits = self
            .stages()
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, s)| s.bits);
        let stem = base.trim_end_matches(".safetensors");
        let name = format!("{stem}-{tag}{}.safetensors", bits.unwrap_or(0));
        self.params.save_directory.join(name)
    }

    /// The student that `post_training_quantization` quantizes: its `checkpoint` key when given,
    /// else the checkpoint of the last student stage before it in this run, else the `word_kd` one.
    pub fn ptq_source(&self) -> PathBuf {
        let own = self
            .sequence
            .post_training_quantization
            .as_ref()
            .and_then(|s| s.checkpoint.clone());
        if let Some(path) = own {
            return path;
        }
        let stages = self.stages();
        let earlier = stages
            .iter()
            .rev()
            .find(|(k, _)| !matches!(k, StageKind::Teacher | StageKind::PostTrainingQuantization));
        match earlier {
            Some((k, _)) => self.checkpoint_of(*k),
            None => self.params.save_directory.join(&self.params.word_kd_name),
        }
    }
}

pub(super) fn validate_stage(key: &str, s: &StageSection, kind: StageKind) -> Result<()> {
    let at = |k: &str| format!("{key}.{k}");
    let quantizes = matches!(
        kind,
        StageKind::QuantizedDistillation | StageKind::PostTrainingQuantization
    );
    match (quantizes, s.bits) {
        (true, None) => return bad(&at("bits"), "is required (2, 4 or 8 in the seed)"),
        (false, Some(_)) => return bad(&at("bits"), "only applies to quantization stages"),
        _ => {}
    }
    if let Some(b) = s.bits {
        crate::nmt::quantize::TranslationQuantization::new(b, Some(s.bucket_size))
            .map_err(|e| Error::Config(format!("{} {e}", at("bits"))))?;
    }
    if s.beam_size == 0 || s.beam_size > crate::nmt::search::MAX_BEAM {
        let max = crate::nmt::search::MAX_BEAM;
        return bad(
            &at("beam_size"),
            format!("must be in 1..={max} (got {})", s.beam_size),
        );
    }
    for (k, v, max) in [
        (
            "distill_beam_size",
            s.distill_beam_size,
            crate::nmt::search::MAX_BEAM,
        ),
        ("distill_batch_size", s.distill_batch_size, MAX_BATCH),
    ] {
        match v {
            Some(_) if kind != StageKind::SeqKd => {
                return bad(&at(k), "only applies to seq_kd");
            }
            Some(n) if n == 0 || n > max => {
                return bad(&at(k), format!("must be in 1..={max} (got {n})"));
            }
            _ => {}
        }
    }
    let no_epochs = kind == StageKind::PostTrainingQuantization;
    if !no_epochs && s.checkpoint.is_some() {
        return bad(
            &at("checkpoint"),
            "only applies to post_training_quantization",
        );
    }
    if no_epochs && s.epochs != 0 {
        return bad(
            &at("epochs"),
            "must be 0 or absent (the stage does not train)",
        );
    }
    if !no_epochs && (s.epochs == 0 || s.epochs > MAX_EPOCHS) {
        return bad(
            &at("epochs"),
            format!("must be in 1..={MAX_EPOCHS} (got {})", s.epochs),
        );
    }
    if !(s.lr.is_finite() && s.lr > 0.0) {
        return bad(
            &at("lr"),
            format!("must be a finite number > 0 (got {})", s.lr),
        );
    }
    if !(s.max_grad_norm.is_finite() && s.max_grad_norm >= 0.0) {
        return bad(
            &at("max_grad_norm"),
            format!("must be a finite number >= 0 (got {})", s.max_grad_norm),
        );
    }
    if !(s.lr_decay.is_finite() && s.lr_decay > 0.0 && s.lr_decay <= 1.0) {
        return bad(
            &at("lr_decay"),
            format!("must be in (0, 1] (got {})", s.lr_decay),
        );
    }
    if s.start_decay_at == 0 {
        return bad(&at("start_decay_at"), "must be >= 1 (a 1-based epoch)");
    }
    if s.warmup_steps == 0 || s.warmup_steps > 1 << 40 {
        return bad(
            &at("warmup_steps"),
            format!("must be in 1..=2^40 (got {})", s.warmup_steps),
        );
    }
    for (k, v) in [
        ("batch_size", Some(s.batch_size)),
        ("eval_batch_size", s.eval_batch_size),
    ] {
        let Some(v) = v else { continue };
        let max = match s.batch_unit {
            BatchUnit::Sentences => MAX_BATCH,
            _ => MAX_BATCH_TOKENS,
        };
        if v == 0 || v > max {
            return bad(&at(k), format!("must be in 1..={max} (got {v})"));
        }
    }
    Ok(())
}

impl StageSection {
    /// The training batch size.
    pub fn train_batch(&self) -> BatchSize {
        self.batch_size_of(self.batch_size)
    }

    /// The validation and test batch size.
    pub fn eval_batch(&self) -> BatchSize {
        self.batch_size_of(self.eval_batch_size.unwrap_or(self.batch_size))
    }

    fn batch_size_of(&self, n: usize) -> BatchSize {
        match self.batch_unit {
            BatchUnit::Sentences => BatchSize::Sentences(n),
            BatchUnit::Tokens => BatchSize::Tokens(n),
            BatchUnit::LmaChars => BatchSize::LmaFirstWordChars(n),
        }
    }
}
