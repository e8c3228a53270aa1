//! Multi-head attention of the early-OpenNMT Transformer (`onmt/modules/MultiHeadedAttn.py`,
//! SPEC-TRANSLATION §5.4), composed from existing ops:
//! ```text
//! K = key·W_kᵀ, V = value·W_vᵀ, Q = query·W_qᵀ                 (no biases)
//! S = Q_h K_hᵀ / √d_h;  S[mask] = −inf;  A = softmax over keys  (per head h)
//! O = concat_h A_h V_h                                          (NO output projection)
//! out = LN(query + O),  top_attn = A of head 0                  (onmt LayerNorm, post-norm)
//! ```
//! Heads are split by one permutation `[B·L, H, d_h] → [H, B·L, d_h]`, so the score slices run in
//! head-major order (slice `h·B + b`) and head 0 is the first `B` slices. The masked −inf is added
//! before the softmax divides by its temperature √d_h, which is the seed's `S / √d_h` then
//! `masked_fill`, to the bit. Dropout (attention probabilities and residual branch, p = 0.1 in the
//! seed) applies in training only.

use super::mask::AttentionMask;
use super::SublayerDropout;
use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::linear::Linear;
use crate::nn::ParamStore;
use crate::ops::elementwise::add;
use crate::ops::layer_norm::{layer_norm_onmt, ONMT_LAYER_NORM_EPS};
use crate::ops::matmul::{gemm_op, linear};
use crate::ops::shape::{permute3, permute3_cpu, reshape, PermuteParams};
use crate::ops::softmax::softmax;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// The seed's head count (hard-coded 8 for every model size, SPEC-TRANSLATION L5).
pub const ONMT_HEADS: usize = 8;

/// The graph values of one attention block's parameters.
#[derive(Clone, Copy, Debug)]
pub struct MhaWeights {
    /// `linear_keys.weight [d, d]`.
    pub w_k: Var,
    /// `linear_values.weight [d, d]`.
    pub w_v: Var,
    /// `linear_query.weight [d, d]`.
    pub w_q: Var,
    /// `layer_norm.a_2 [d]`.
    pub a_2: Var,
    /// `layer_norm.b_2 [d]`.
    pub b_2: Var,
}

/// `(out [B, Lq, d], top_attn [B, Lq, Lk])`: attention of `query [B, Lq, d]` over
/// `key`/`value [B, Lk, d]` with `heads` heads (d divisible by heads), `mask` `[B, Lq, Lk]`.
/// `top_attn` is head 0's attention (a constant: the seed returns it without a gradient path
/// that training uses). A fully blocked query row gives NaN, as in the seed.
#[allow(clippy::too_many_arguments)]
pub fn multi_head_attention(
    g: &mut Graph,
    key: Var,
    value: Var,
    query: Var,
    mask: &AttentionMask,
    w: &MhaWeights,
    heads: usize,
    mut dropout: Option<&mut SublayerDropout<'_>>,
) -> Result<(Var, Var)> {
    let dims = Dims::of(g, key, value, query, mask, heads)?;
    let Dims { b, lk, lq, d, dh } = dims;
    // [B·L, d] → [B·L, H, d_h] → [H, B·L, d_h] = [H·B, L, d_h]
    let project = |g: &mut Graph, x: Var, weight: Var, len: usize| -> Result<Var> {
        let x2 = reshape(g, x, &[b * len, d])?;
        let y = linear(g, x2, weight, None)?;
        let y3 = reshape(g, y, &[b * len, heads, dh])?;
        let split = permute3(g, y3, [1, 0, 2])?;
        reshape(g, split, &[heads * b, len, dh])
    };
    let k = project(g, key, w.w_k, lk)?;
    let v = project(g, value, w.w_v, lk)?;
    let q = project(g, query, w.w_q, lq)?;

    let scores = gemm_op(g, q, false, k, true)?; // [H·B, Lq, Lk]
    let bias = g.constant(mask.head_bias(heads, g.device())?);
    let masked = add(g, scores, bias)?;
    let attn = softmax(g, masked, (dh as f32).sqrt())?;
    let top_attn = g.constant(head0(g.value(attn), b * lq * lk, [b, lq, lk])?);

    let attn = SublayerDropout::maybe(&mut dropout, g, attn)?;
    let context = gemm_op(g, attn, false, v, false)?; // [H·B, Lq, d_h]
    let context = reshape(g, context, &[heads, b * lq, dh])?;
    let merged = permute3(g, context, [1, 0, 2])?; // [B·Lq, H, d_h]: head-major concat
    let merged = reshape(g, merged, &[b, lq, d])?;
    let merged = SublayerDropout::maybe(&mut dropout, g, merged)?;
    let residual = add(g, query, merged)?;
    let out = layer_norm_onmt(g, residual, w.a_2, w.b_2, ONMT_LAYER_NORM_EPS)?;
    Ok((out, top_attn))
}

/// The first `n` elements of `attn` (head 0's slices) as `shape`, by a strided gather (the
/// `permute3` kernel with input strides of a contiguous block).
fn head0(attn: &Tensor, n: usize, shape: [usize; 3]) -> Result<Tensor> {
    let p = PermuteParams {
        d0: shape[0] as i32,
        d1: shape[1] as i32,
        d2: shape[2] as i32,
        s0: (shape[1] * shape[2]) as i32,
        s1: shape[2] as i32,
        s2: 1,
    };
    debug_assert_eq!(n, shape.iter().product::<usize>());
    crate::ops::map_with_params(attn, &shape, "permute3_f32", &p, |xs, ys| {
        permute3_cpu(&xs[..n], ys, &p)
    })
}

/// Checked sizes of one attention call.
struct Dims {
    b: usize,
    lk: usize,
    lq: usize,
    d: usize,
    dh: usize,
}

impl Dims {
    fn of(
        g: &Graph,
        key: Var,
        value: Var,
        query: Var,
        mask: &AttentionMask,
        heads: usize,
    ) -> Result<Dims> {
        let what = "multi_head_attention";
        let &[b, lq, d] = g.value(query).shape() else {
            return Err(Error::Shape(format!(
                "{what}: query must be [B, Lq, d], got {:?}",
                g.value(query).shape()
            )));
        };
        let &[_, lk, _] = g.value(key).shape() else {
            return Err(Error::Shape(format!(
                "{what}: key must be [B, Lk, d], got {:?}",
                g.value(key).shape()
            )));
        };
        g.value(key)
            .expect_shape(&format!("{what}: key"), &[b, lk, d])?;
        g.value(value)
            .expect_shape(&format!("{what}: value"), &[b, lk, d])?;
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(Error::op_arg(
                what,
                format!("model dim {d} is not divisible by {heads} heads"),
            ));
        }
        if (mask.batch, mask.queries, mask.keys) != (b, lq, lk) {
            return Err(Error::Shape(format!(
                "{what}: mask [{}, {}, {}] for scores [{b}, {lq}, {lk}]",
                mask.batch, mask.queries, mask.keys
            )));
        }
        crate::ops::partials::check_i32(what, &[heads, b, lq.max(lk), lq.max(lk).max(d)])?;
        Ok(Dims {
            b,
            lk,
            lq,
            d,
            dh: d / heads,
        })
    }
}

/// The attention block with its parameters in a [`ParamStore`] under the seed's names:
/// `<prefix>.linear_keys.weight`, `.linear_values.weight`, `.linear_query.weight` (`[d, d]`, no
/// bias, U(±1/√d)) and `<prefix>.layer_norm.a_2` / `.b_2` (`[d]`, ones / zeros).
#[derive(Clone, Debug)]
pub struct MultiHeadedAttention {
    /// Parameter name prefix (e.g. `encoder.transformer.0.self_attn`).
    pub prefix: String,
    /// Model dimension d.
    pub dim: usize,
    /// Number of heads (the seed: [`ONMT_HEADS`]).
    pub heads: usize,
    keys: Linear,
    values: Linear,
    query: Linear,
}

impl MultiHeadedAttention {
    /// Registers the block's parameters in the seed's order (keys, values, query, a_2, b_2).
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        dim: usize,
        heads: usize,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(Error::op_arg(
                "MultiHeadedAttention::new",
                format!("`{prefix}`: model dim {dim} is not divisible by {heads} heads"),
            ));
        }
        let mut linear = |name: &str, rng: &mut Rng| {
            Linear::new(
                store,
                &format!("{prefix}.{name}"),
                dim,
                dim,
                false,
                device,
                rng,
            )
        };
        let keys = linear("linear_keys", rng)?;
        let values = linear("linear_values", rng)?;
        let query = linear("linear_query", rng)?;
        super::register_layer_norm(store, prefix, dim, device)?;
        Ok(MultiHeadedAttention {
            prefix: prefix.to_string(),
            dim,
            heads,
            keys,
            values,
            query,
        })
    }

    /// The block's parameters as graph values.
    pub fn weights(&self, g: &mut Graph, store: &ParamStore) -> Result<MhaWeights> {
        Ok(MhaWeights {
            w_k: g.param(store, &self.keys.weight_name())?,
            w_v: g.param(store, &self.values.weight_name())?,
            w_q: g.param(store, &self.query.weight_name())?,
            a_2: g.param(store, &format!("{}.layer_norm.a_2", self.prefix))?,
            b_2: g.param(store, &format!("{}.layer_norm.b_2", self.prefix))?,
        })
    }

    /// `(LN(query + attention), top_attn)`; see [`multi_head_attention`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        key: Var,
        value: Var,
        query: Var,
        mask: &AttentionMask,
        dropout: Option<&mut SublayerDropout<'_>>,
    ) -> Result<(Var, Var)> {
        let w = self.weights(g, store)?;
        multi_head_attention(g, key, value, query, mask, &w, self.heads, dropout)
    }
}
