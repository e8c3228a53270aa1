//! `models.student` / `models.teacher`: the architecture keys of each translation model family
//! and their checks.

use super::{bad, default_layers, MAX_LAYERS};
use crate::config::closest;
use crate::error::Result;
use crate::limits::{self, MAX_LAYER_WIDTH};
use serde::{Deserialize, Serialize};

/// The architecture of one model. Each family has its own width keys, and the other family's
/// keys are errors: `qd_lstm` takes `word_vec_size` and `rnn_size` (E ≠ H is allowed);
/// `transformer` takes `d`, the one width the seed uses for embeddings, attention and layers
/// (its `rnn_size` = `word_vec_size`), plus `activation` and `ffn_hidden`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `qd_lstm`: QD's attention LSTM (SPEC §2); `transformer`: LMA's Transformer (§5).
    pub family: String,
    /// qd_lstm: E, the word vector size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_vec_size: Option<usize>,
    /// qd_lstm: H, the LSTM width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rnn_size: Option<usize>,
    /// L, encoder and decoder layers (each).
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// transformer: d, the model width (divisible by the 8 heads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<usize>,
    /// transformer: the FFN activation, `relu`, `lma`, `prelu` or `swish`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    /// transformer: the FFN's inner width (default 2048, which the seed hard-codes for every
    /// model size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn_hidden: Option<usize>,
    /// transformer: attention heads; only 8, which the seed hard-codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
}

/// The FFN activations of the `transformer` family (the seed's `-stud_act`; `aplu` crashes there).
pub const TRANSFORMER_ACTIVATIONS: [&str; 4] = ["relu", "lma", "prelu", "swish"];
/// The FFN inner width the seed uses for every Transformer (SPEC §5.1).
pub const SEED_FFN_HIDDEN: usize = 2048;
/// The attention heads of the seed's Transformer.
pub const SEED_HEADS: usize = 8;

/// A model family's sizes, checked (see [`ModelSpec::sizes`]).
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSizes {
    /// QD's LSTM: E, H, L.
    QdLstm {
        /// E.
        word_vec_size: usize,
        /// H.
        rnn_size: usize,
        /// L.
        layers: usize,
    },
    /// LMA's Transformer.
    Transformer {
        /// d.
        d: usize,
        /// Encoder and decoder layers each.
        layers: usize,
        /// The FFN activation.
        activation: String,
        /// The FFN inner width.
        ffn_hidden: usize,
    },
}

impl ModelSpec {
    /// The family's sizes with defaults filled in, after the checks of the config (errors
    /// name `<key>.<field>`).
    pub fn sizes(&self, key: &str) -> Result<ModelSizes> {
        let at = |k: &str| format!("{key}.{k}");
        let range = |k: &str, v: usize, max: usize| -> Result<usize> {
            if v == 0 || v > max {
                return bad(&at(k), format!("must be in 1..={max} (got {v})"));
            }
            Ok(v)
        };
        let required = |k: &str, v: Option<usize>| -> Result<usize> {
            v.map_or_else(
                || {
                    bad(
                        &at(k),
                        format!("is required for the `{}` family", self.family),
                    )
                },
                Ok,
            )
        };
        let refuse = |keys: &[(&str, bool)], instead: &str| -> Result<()> {
            match keys.iter().find(|(_, given)| *given) {
                Some((k, _)) => bad(
                    &at(k),
                    format!("is not a key of the `{}` family ({instead})", self.family),
                ),
                None => Ok(()),
            }
        };
        match self.family.as_str() {
            "qd_lstm" => {
                refuse(
                    &[
                        ("d", self.d.is_some()),
                        ("activation", self.activation.is_some()),
                        ("ffn_hidden", self.ffn_hidden.is_some()),
                        ("heads", self.heads.is_some()),
                    ],
                    "its widths are word_vec_size and rnn_size",
                )?;
                Ok(ModelSizes::QdLstm {
                    word_vec_size: range(
                        "word_vec_size",
                        required("word_vec_size", self.word_vec_size)?,
                        MAX_LAYER_WIDTH,
                    )?,
                    rnn_size: range(
                        "rnn_size",
                        required("rnn_size", self.rnn_size)?,
                        MAX_LAYER_WIDTH,
                    )?,
                    layers: range("layers", self.layers, MAX_LAYERS)?,
                })
            }
            "transformer" => {
                refuse(
                    &[
                        ("word_vec_size", self.word_vec_size.is_some()),
                        ("rnn_size", self.rnn_size.is_some()),
                    ],
                    "its one width d is the seed's word_vec_size = rnn_size",
                )?;
                let d = range("d", required("d", self.d)?, MAX_LAYER_WIDTH)?;
                if !d.is_multiple_of(SEED_HEADS) {
                    return bad(
                        &at("d"),
                        format!("must be divisible by the {SEED_HEADS} heads (got {d})"),
                    );
                }
                if let Some(h) = self.heads.filter(|&h| h != SEED_HEADS) {
                    return bad(
                        &at("heads"),
                        format!(
                            "must be {SEED_HEADS}: the seed's attention hard-codes {SEED_HEADS}                              heads (got {h})"
                        ),
                    );
                }
                let activation = match &self.activation {
                    Some(a) if TRANSFORMER_ACTIVATIONS.contains(&a.as_str()) => a.clone(),
                    other => {
                        let hint = other
                            .as_deref()
                            .and_then(|a| closest(a, &TRANSFORMER_ACTIVATIONS))
                            .map_or(String::new(), |b| format!(" (did you mean `{b}`?)"));
                        return bad(
                            &at("activation"),
                            format!(
                                "must be one of {} (got {}){hint}",
                                TRANSFORMER_ACTIVATIONS.join(", "),
                                other
                                    .as_deref()
                                    .map_or("nothing".into(), |a| format!("`{a}`"))
                            ),
                        );
                    }
                };
                Ok(ModelSizes::Transformer {
                    d,
                    layers: range("layers", self.layers, limits::MAX_DEPTH)?,
                    activation,
                    ffn_hidden: range(
                        "ffn_hidden",
                        self.ffn_hidden.unwrap_or(SEED_FFN_HIDDEN),
                        MAX_LAYER_WIDTH,
                    )?,
                })
            }
            other => {
                let hint = closest(other, &["qd_lstm", "transformer"])
                    .map_or(String::new(), |b| format!(" (did you mean `{b}`?)"));
                bad(
                    &at("family"),
                    format!(
                        "`{other}` is not a translation model family: expected qd_lstm or \
                         transformer{hint}"
                    ),
                )
            }
        }
    }
}
