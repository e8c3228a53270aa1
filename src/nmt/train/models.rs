//! The trainer's models of each `models.*.family`: QD's attention LSTM and LMA's Transformer,
//! built from their checked [`ModelSpec`] through [`NmtModel::from_descriptor`] (the golden
//! descriptors' one constructor).
//!
//! LMA's running statistics (`<ffn>.act.mv_mean` / `.mv_std`) are store state entries: the
//! stage checkpoints and the run state keep them in their sidecars and load them back, so a
//! resumed or reloaded LMA model continues from its statistics. The seed's `state_dict` omits
//! them and its evaluation restarts them at 0 (SPEC §8 L3); we persist them on purpose.

use super::epoch::Model;
use crate::device::Device;
use crate::error::Result;
use crate::nmt::config::{ModelSizes, ModelSpec, SEED_HEADS};
use crate::nmt::model::NmtModel;
use crate::nn::ParamStore;
use crate::rng::Rng;
use serde_json::json;

/// The golden-style descriptor (`family`, complete `args`) of `spec` over vocabularies of
/// `(source, target)` sizes.
pub fn descriptor(
    spec: &ModelSpec,
    (src_vocab, tgt_vocab): (usize, usize),
    dropout: f32,
) -> Result<serde_json::Value> {
    Ok(match spec.sizes("model")? {
        ModelSizes::QdLstm {
            word_vec_size,
            rnn_size,
            layers,
        } => json!({
            "family": "qd_lstm_nmt",
            "args": {
                "src_vocab": src_vocab,
                "tgt_vocab": tgt_vocab,
                "word_vec_size": word_vec_size,
                "rnn_size": rnn_size,
                "layers": layers,
                "dropout": dropout,
            }
        }),
        ModelSizes::Transformer {
            d,
            layers,
            activation,
            ffn_hidden,
        } => json!({
            "family": "lma_transformer_nmt",
            "args": {
                "src_vocab": src_vocab,
                "tgt_vocab": tgt_vocab,
                "d": d,
                "layers": layers,
                "d_ff": ffn_hidden,
                "heads": SEED_HEADS,
                "activation": activation,
                "dropout": dropout,
            }
        }),
    })
}

/// A fresh model of `spec` over vocabularies of `(source, target)` sizes, initialised from
/// `rng` as the seed initialises that family.
pub fn build_model_sized(
    spec: &ModelSpec,
    vocabs: (usize, usize),
    dropout: f32,
    dev: &Device,
    rng: &mut Rng,
) -> Result<Model> {
    let descriptor = descriptor(spec, vocabs, dropout)?;
    let mut store = ParamStore::new();
    let net = NmtModel::from_descriptor(&descriptor, &mut store, dev, rng)?;
    Ok(Model { net, store })
}
