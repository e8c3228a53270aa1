//! Quantization of the translation models (SPEC-TRANSLATION §3.5): quantized distillation's
//! per-batch straight-through quantization, the final quantization of a QD run, and the
//! post-training ("PM") baseline, all with the project's one uniform quantizer
//! ([`QuantSpec`] over [`crate::distill::quantize::quantize_uniform`]: bucketed, 2^bits levels).
//!
//! Seed behaviours kept on purpose (SPEC §8):
//! - **B6**: `quantize_first_and_last_layer: false` keeps parameter index 0 (the *encoder
//!   embedding*) and the last index (the *generator bias*, not its weight) in full precision
//!   during training — the registration order of [`QuantSpec`]'s selection is the seed's
//!   `parameters()` order, so this is the seed's rule applied literally; and the final
//!   quantization after the last epoch quantizes every parameter anyway.
//! - **B9**: the seed's quantization counter starts at 0, so the first batch of a QD run is
//!   trained at full precision ([`TranslationQuantization::quantize_first_batch`] = false).

use crate::distill::qd::{packed_size, QuantSpec, SizeReport};
use crate::distill::quantize::MAX_BITS;
use crate::distill::step::restore;
use crate::error::{Error, Result};
use crate::limits::MAX_MODEL_ELEMENTS;
use crate::nn::ParamStore;

/// The seed's bucket size for translation (`bucket_size=256`).
pub const DEFAULT_BUCKET_SIZE: usize = 256;

/// How a translation student is quantized (the `quantized_distillation` stage's settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslationQuantization {
    /// Bits per weight (the seed ran 2, 4 and 8).
    pub bits: u32,
    /// Elements per bucket; `None`: one bucket per tensor (WMT13's PM baseline).
    pub bucket_size: Option<usize>,
    /// Seed default false: skip parameter 0 (encoder embedding) and the last (generator bias)
    /// while training (B6). The final quantization ignores it.
    pub quantize_first_and_last_layer: bool,
    /// Seed default false: the run's first batch is trained unquantized (B9).
    pub quantize_first_batch: bool,
}

impl TranslationQuantization {
    /// The seed's settings for `bits` (bucket 256, B6 selection, B9 first batch); `bits` and the
    /// bucket are checked here so a bad config fails before training.
    pub fn new(bits: u32, bucket_size: Option<usize>) -> Result<TranslationQuantization> {
        let q = TranslationQuantization {
            bits,
            bucket_size,
            quantize_first_and_last_layer: false,
            quantize_first_batch: false,
        };
        q.check()?;
        Ok(q)
    }

    fn check(&self) -> Result<()> {
        if !(1..=MAX_BITS).contains(&self.bits) {
            return Err(Error::Config(format!(
                "quantization: bits must be in 1..={MAX_BITS}, got {}",
                self.bits
            )));
        }
        if let Some(b) = self.bucket_size {
            if b == 0 || b > MAX_MODEL_ELEMENTS {
                return Err(Error::Config(format!(
                    "quantization: bucket_size must be in 1..={MAX_MODEL_ELEMENTS}, got {b}"
                )));
            }
        }
        Ok(())
    }

    /// The parameters quantized at every training batch (B6 selection when
    /// `quantize_first_and_last_layer` is false).
    pub fn training_spec(&self, store: &ParamStore) -> Result<QuantSpec> {
        self.check()?;
        QuantSpec::new(
            store,
            self.bits,
            self.bucket_size,
            Some(self.quantize_first_and_last_layer),
            None,
            "quantized_distillation",
        )
    }

    /// Every parameter: the final quantization of a QD run and the PM baseline (§3.5).
    pub fn all_parameters_spec(&self, store: &ParamStore) -> Result<QuantSpec> {
        self.check()?;
        QuantSpec::new(
            store,
            self.bits,
            self.bucket_size,
            Some(true),
            None,
            "quantization",
        )
    }
}

/// Quantized distillation's per-batch wrapper (§3.1, §3.5): quantize the selected parameters in
/// place, let the caller run forward and backward there, put the full-precision values back
/// (gradients untouched); the caller then clips and steps on the full-precision weights with the
/// quantized-point gradient (straight-through).
#[derive(Clone, Debug)]
pub struct QdBatchQuantizer {
    spec: QuantSpec,
    quantize_first_batch: bool,
    batches: u64,
}

impl QdBatchQuantizer {
    /// A fresh QD run over `store`'s parameters.
    pub fn new(store: &ParamStore, q: &TranslationQuantization) -> Result<QdBatchQuantizer> {
        Self::resume(store, q, 0)
    }

    /// A QD run that already trained `batches_done` batches (so a resumed run does not repeat
    /// the unquantized first batch of B9).
    pub fn resume(
        store: &ParamStore,
        q: &TranslationQuantization,
        batches_done: u64,
    ) -> Result<QdBatchQuantizer> {
        Ok(QdBatchQuantizer {
            spec: q.training_spec(store)?,
            quantize_first_batch: q.quantize_first_batch,
            batches: batches_done,
        })
    }

    /// The parameters quantized at each batch.
    pub fn spec(&self) -> &QuantSpec {
        &self.spec
    }

    /// Batches run through [`Self::run`] (plus the resumed count).
    pub fn batches_done(&self) -> u64 {
        self.batches
    }

    /// Whether the next batch runs at the quantized point (false only for the run's first batch,
    /// B9, unless `quantize_first_batch`).
    pub fn quantizes_next(&self) -> bool {
        self.batches > 0 || self.quantize_first_batch
    }

    /// Run `forward_backward` (which must leave the gradients in `store`, and must not step the
    /// optimizer) at the quantized point, then restore the full-precision values — also when it
    /// fails, so an error never leaves quantized weights behind.
    pub fn run<T>(
        &mut self,
        store: &mut ParamStore,
        forward_backward: impl FnOnce(&mut ParamStore) -> Result<T>,
    ) -> Result<T> {
        let saved = if self.quantizes_next() {
            self.spec.quantize_in_place(store)?
        } else {
            Vec::new()
        };
        let out = forward_backward(store);
        restore(store, saved)?;
        self.batches += 1;
        out
    }
}

/// A quantized model and its size.
#[derive(Debug)]
pub struct QuantizedModel {
    /// The parameters (every one quantized), the deployable model.
    pub store: ParamStore,
    /// What was quantized with which settings.
    pub spec: QuantSpec,
    /// Packed size next to the f32 size.
    pub size: SizeReport,
}

/// Quantize every parameter of a trained store (ignoring `quantize_first_and_last_layer`): the
/// model a QD run saves after its last epoch, and the PM baseline of a trained model (§3.5).
pub fn quantize_all(
    store: &ParamStore,
    bits: u32,
    bucket_size: Option<usize>,
) -> Result<QuantizedModel> {
    let q = TranslationQuantization::new(bits, bucket_size)?;
    let spec = q.all_parameters_spec(store)?;
    let quantized = spec.quantized_copy(store)?;
    let size = quantized_size(store, &spec);
    Ok(QuantizedModel {
        store: quantized,
        spec,
        size,
    })
}

/// Bytes of `store` with `spec`'s parameters packed at `spec.bits` (levels + one f32 scale and
/// offset per bucket) and everything else in f32, next to the all-f32 size.
pub fn quantized_size(store: &ParamStore, spec: &QuantSpec) -> SizeReport {
    packed_size(store, &spec.bits_of(), spec.bucket, false)
}
