//! The post-training quantization baseline (`sequence.post_training_quantization`): the trained
//! student (or `models.training_checkpoint`) quantized once per bit width, uniformly, and
//! evaluated; no training.

use super::context::RunContext;
use super::setup::{build_model, resolve_weights, Built};
use crate::checkpoint;
use crate::config::PtqStage;
use crate::distill::qd::{self, QuantSpec};
use crate::error::{Error, Result};
use serde::Serialize;

/// One post-training-quantization measurement.
#[derive(Clone, Debug, Serialize)]
pub struct PtqResult {
    /// Always `post_training_quantization` (the metrics line's stage).
    pub stage: &'static str,
    /// Bits per quantized weight.
    pub bits: u32,
    /// Test accuracy (fraction) of the quantized model.
    pub test_acc: f64,
    /// Test loss of the quantized model.
    pub test_loss: f64,
    /// Bytes of the packed model.
    pub packed_bytes: usize,
    /// Bytes of the model in f32.
    pub full_precision_bytes: usize,
}

/// Quantize `student` (else the config's training checkpoint) at each bit width of `p` and
/// evaluate it; returns the student and one result per bit width (also written to the metrics).
pub(super) fn post_training_quantization(
    run: &mut RunContext,
    p: &PtqStage,
    student: Option<Built>,
) -> Result<(Built, Vec<PtqResult>)> {
    let cfg = run.cfg;
    let mut b = match student {
        Some(b) => b,
        None => {
            let mut b = build_model(cfg, run.data.kind, run.data.train.example_len(), run.device)?;
            let ckpt = cfg.models.training_checkpoint.as_ref().ok_or_else(|| {
                Error::Config(
                    "sequence.post_training_quantization needs a trained student: a training \
                     stage before it or models.training_checkpoint"
                        .into(),
                )
            })?;
            let path = resolve_weights(ckpt, "models.training_checkpoint")?;
            checkpoint::load_into(&path, &mut b.store)?;
            b
        }
    };
    let fp = run.eval(b.model.as_ref(), &mut b.store)?;
    println!(
        "post-training quantization of {}: full precision test acc {:.2}%",
        b.model.architecture(),
        100.0 * fp.accuracy
    );
    let mut results = Vec::new();
    for &bits in &p.bits {
        let spec = QuantSpec::new(
            &b.store,
            bits,
            p.quantization.bucket_size,
            p.quantization.quantize_first_and_last_layer,
            p.quantization.quantized_layers.as_deref(),
            "sequence.post_training_quantization.quantized_layers",
        )?;
        let mut q = spec.quantized_copy(&b.store)?;
        let e = run.eval(b.model.as_ref(), &mut q)?;
        let size = qd::packed_size(&q, &spec.bits_of(), spec.bucket, false);
        println!(
            "  {bits} bits: test acc {:.2}%  test loss {:.4}  packed {} bytes (full precision {})",
            100.0 * e.accuracy,
            e.loss,
            size.packed_bytes,
            size.full_precision_bytes
        );
        let r = PtqResult {
            stage: "post_training_quantization",
            bits,
            test_acc: e.accuracy,
            test_loss: e.loss,
            packed_bytes: size.packed_bytes,
            full_precision_bytes: size.full_precision_bytes,
        };
        run.metrics.write(&r)?;
        results.push(r);
    }
    Ok((b, results))
}
