//! One decoder layer of the early-OpenNMT Transformer (`onmt/modules/Transformer.py:160-192`,
//! SPEC-TRANSLATION §5.7): masked self-attention (target padding OR the future), context
//! attention over the encoder output with the source padding mask — the encoder output's K/V are
//! projected by this layer's own `context_attn` weights — then the feed-forward block.

use super::attention::{MultiHeadedAttention, ONMT_HEADS};
use super::feed_forward::PositionwiseFeedForward;
use super::mask::AttentionMask;
use super::SublayerDropout;
use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::Result;
use crate::nn::ParamStore;
use crate::rng::Rng;

/// `<prefix>.self_attn.*`, `<prefix>.context_attn.*`, `<prefix>.feed_forward.*` (the seed's order;
/// e.g. `decoder.transformer_layers.0`).
#[derive(Clone, Debug)]
pub struct TransformerDecoderLayer {
    /// Masked self-attention with [`ONMT_HEADS`] heads.
    pub self_attn: MultiHeadedAttention,
    /// Attention over the encoder output.
    pub context_attn: MultiHeadedAttention,
    /// The feed-forward block.
    pub feed_forward: PositionwiseFeedForward,
}

impl TransformerDecoderLayer {
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
        let attn = |name: &str, store: &mut ParamStore, rng: &mut Rng| {
            let p = format!("{prefix}.{name}");
            MultiHeadedAttention::new(store, &p, dim, ONMT_HEADS, device, rng)
        };
        let self_attn = attn("self_attn", store, rng)?;
        let context_attn = attn("context_attn", store, rng)?;
        let ffn_prefix = format!("{prefix}.feed_forward");
        let feed_forward =
            PositionwiseFeedForward::new(store, &ffn_prefix, dim, hidden, act, device, rng)?;
        Ok(TransformerDecoderLayer {
            self_attn,
            context_attn,
            feed_forward,
        })
    }

    /// `x [B, T, d]` over `memory [B, S, d]` → `(out [B, T, d], context attention of head 0
    /// [B, T, S])`. `self_mask` is `[B, T, T]` (see [`AttentionMask::causal_padding`]),
    /// `src_mask` `[B, T, S]` (see [`AttentionMask::padding`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        memory: Var,
        self_mask: &AttentionMask,
        src_mask: &AttentionMask,
        train: bool,
        mut dropout: Option<&mut SublayerDropout<'_>>,
    ) -> Result<(Var, Var)> {
        let (query, _) =
            self.self_attn
                .forward(g, store, x, x, x, self_mask, dropout.as_deref_mut())?;
        let (mid, attn) = self.context_attn.forward(
            g,
            store,
            memory,
            memory,
            query,
            src_mask,
            dropout.as_deref_mut(),
        )?;
        let out = self.feed_forward.forward(g, store, mid, train, dropout)?;
        Ok((out, attn))
    }
}
