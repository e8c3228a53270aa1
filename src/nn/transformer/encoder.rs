//! One encoder layer of the early-OpenNMT Transformer (SPEC-TRANSLATION §5.7): self-attention
//! over the source with the source padding mask, then the feed-forward block. No final LayerNorm
//! after the stack.

use super::attention::{MultiHeadedAttention, ONMT_HEADS};
use super::feed_forward::PositionwiseFeedForward;
use super::mask::AttentionMask;
use super::SublayerDropout;
use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::Result;
use crate::nn::ParamStore;
use crate::rng::Rng;

/// `<prefix>.self_attn.*` then `<prefix>.feed_forward.*` (e.g. `encoder.transformer.0`).
#[derive(Clone, Debug)]
pub struct TransformerEncoderLayer {
    /// Self-attention with [`ONMT_HEADS`] heads.
    pub self_attn: MultiHeadedAttention,
    /// The feed-forward block.
    pub feed_forward: PositionwiseFeedForward,
}

impl TransformerEncoderLayer {
    /// Registers the layer's parameters in the seed's order.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        dim: usize,
        hidden: usize,
        act: &str,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Self> {
        let attn_prefix = format!("{prefix}.self_attn");
        let self_attn =
            MultiHeadedAttention::new(store, &attn_prefix, dim, ONMT_HEADS, device, rng)?;
        let ffn_prefix = format!("{prefix}.feed_forward");
        let feed_forward =
            PositionwiseFeedForward::new(store, &ffn_prefix, dim, hidden, act, device, rng)?;
        Ok(TransformerEncoderLayer {
            self_attn,
            feed_forward,
        })
    }

    /// `x [B, S, d]` with the source padding mask `[B, S, S]` → `[B, S, d]`.
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        mask: &AttentionMask,
        train: bool,
        mut dropout: Option<&mut SublayerDropout<'_>>,
    ) -> Result<Var> {
        let attn_drop = dropout.as_deref_mut();
        let (mid, _) = self.self_attn.forward(g, store, x, x, x, mask, attn_drop)?;
        self.feed_forward.forward(g, store, mid, train, dropout)
    }
}
