//! The translation models behind one type, so the training step, the trainer and the golden
//! `nmt_step` protocol do not care which family they hold: QD's attention LSTM
//! ([`crate::models::nmt_lstm`], SPEC-TRANSLATION §2) and LMA's Transformer
//! ([`crate::models::nmt_transformer`], §5). Each family keeps its own forward outputs;
//! [`NmtForward::logp`] is what the losses need.

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::limits::{at_most, check_model_fits, MAX_DEPTH, MAX_LAYER_WIDTH, MAX_VOCAB_SIZE};
use crate::models::nmt_lstm::{QdNmt, QdNmtConfig, QdNmtOutput};
use crate::models::nmt_transformer::{
    parameter_count, NmtTransformer, NmtTransformerConfig, NmtTransformerOutput,
};
use crate::nn::ParamStore;
use crate::rng::Rng;
use crate::tensor::IndexTensor;
use serde_json::Value;

/// A translation model (layer descriptions; the tensors live in a [`ParamStore`]).
#[derive(Clone, Debug)]
pub enum NmtModel {
    /// QD's LSTM encoder-decoder with input feeding and general attention.
    QdLstm(QdNmt),
    /// LMA's post-norm Transformer with a replaceable FFN activation.
    Transformer(NmtTransformer),
}

/// What one teacher-forced forward produced, per family.
#[derive(Clone, Debug)]
pub enum NmtForward {
    /// See [`QdNmtOutput`].
    QdLstm(QdNmtOutput),
    /// See [`NmtTransformerOutput`].
    Transformer(NmtTransformerOutput),
}

impl NmtForward {
    /// `log_softmax` of the generator, `[T−1, B, V_tgt]`.
    pub fn logp(&self) -> Var {
        match self {
            NmtForward::QdLstm(o) => o.logp,
            NmtForward::Transformer(o) => o.logp,
        }
    }
}

impl NmtModel {
    /// Build a model from a golden-style descriptor (`family` and complete `args`), registering
    /// its parameters in `store` with the seed's initialisation. Sizes are bounded by
    /// [`crate::limits`].
    pub fn from_descriptor(
        model: &Value,
        store: &mut ParamStore,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<NmtModel> {
        let family = model["family"].as_str().unwrap_or("");
        let args = &model["args"];
        let size = |key: &str, limit: usize| -> Result<usize> {
            let v = args[key].as_u64().ok_or_else(|| {
                Error::Config(format!(
                    "translation model `{family}`: args.{key} must be a non-negative integer, got {}",
                    args[key]
                ))
            })?;
            at_most(&format!("{family} args.{key}"), v as usize, limit)
        };
        match family {
            "qd_lstm_nmt" => {
                let config = QdNmtConfig {
                    src_vocab: size("src_vocab", MAX_VOCAB_SIZE)?,
                    tgt_vocab: size("tgt_vocab", MAX_VOCAB_SIZE)?,
                    word_vec_size: size("word_vec_size", MAX_LAYER_WIDTH)?,
                    rnn_size: size("rnn_size", MAX_LAYER_WIDTH)?,
                    layers: size("layers", MAX_DEPTH)?,
                    dropout: args["dropout"].as_f64().unwrap_or(0.0) as f32,
                };
                check_model_fits(family, qd_elements(&config))?;
                Ok(NmtModel::QdLstm(QdNmt::new(store, config, device, rng)?))
            }
            "lma_transformer_nmt" => {
                let config = NmtTransformerConfig::from_args(args)?;
                check_model_fits(family, parameter_count(&config).unwrap_or(usize::MAX))?;
                let m = NmtTransformer::new(store, config, device, rng)?;
                Ok(NmtModel::Transformer(m))
            }
            other => Err(Error::Config(format!(
                "translation model family `{other}` is not implemented (known: qd_lstm_nmt, \
                 lma_transformer_nmt)"
            ))),
        }
    }

    /// The `model.family` name of the golden descriptors.
    pub fn family(&self) -> &'static str {
        match self {
            NmtModel::QdLstm(_) => "qd_lstm_nmt",
            NmtModel::Transformer(_) => "lma_transformer_nmt",
        }
    }

    /// Target vocabulary size (the last dimension of `logp`).
    pub fn tgt_vocab(&self) -> usize {
        match self {
            NmtModel::QdLstm(m) => m.config.tgt_vocab,
            NmtModel::Transformer(m) => m.config.tgt_vocab,
        }
    }

    /// The model width the Noam schedule scales by (`rnn_size`; d for the Transformer).
    pub fn model_size(&self) -> usize {
        match self {
            NmtModel::QdLstm(m) => m.config.rnn_size,
            NmtModel::Transformer(m) => m.config.d,
        }
    }

    /// Teacher-forced forward: `src [S, B]` (`<blank>`-padded, columns by descending length),
    /// `src_lengths [B]`, decoder input `tgt_in [T−1, B]` (`tgt[:-1]`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        src: &IndexTensor,
        src_lengths: &[usize],
        tgt_in: &IndexTensor,
        train: bool,
        rng: &mut Rng,
    ) -> Result<NmtForward> {
        match self {
            NmtModel::QdLstm(m) => {
                let out = m.forward(g, store, src, src_lengths, tgt_in, train, rng)?;
                Ok(NmtForward::QdLstm(out))
            }
            NmtModel::Transformer(m) => {
                let out = m.forward(g, store, src, src_lengths, tgt_in, train, rng)?;
                Ok(NmtForward::Transformer(out))
            }
        }
    }
}

/// Parameter values of a QD model (saturating: a size past `usize` is refused as too large).
fn qd_elements(c: &QdNmtConfig) -> usize {
    let (e, h, l) = (c.word_vec_size, c.rnn_size, c.layers);
    let lstm = |input: usize| {
        let first = 4usize.saturating_mul(h).saturating_mul(input + h + 2);
        let rest = 4usize.saturating_mul(h).saturating_mul(2 * h + 2);
        first.saturating_add(rest.saturating_mul(l.saturating_sub(1)))
    };
    [
        (c.src_vocab + c.tgt_vocab).saturating_mul(e),
        lstm(e),
        lstm(e.saturating_add(h)),
        3usize.saturating_mul(h).saturating_mul(h),
        c.tgt_vocab.saturating_mul(h + 1),
    ]
    .iter()
    .fold(0usize, |a, &b| a.saturating_add(b))
}
