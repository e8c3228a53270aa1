//! Attention masks of the early-OpenNMT Transformer (SPEC-TRANSLATION §5.7): `[B, Lq, Lk]`, true =
//! blocked. Encoder self-attention and decoder context attention block the source `<blank>`
//! positions; decoder self-attention also blocks the future (`k > q`). Built on the host (the token
//! ids come from the host batch) and turned into an additive bias of 0 / −inf per head.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::limits;
use crate::tensor::{IndexTensor, Tensor};

/// Which (query, key) pairs of each batch element may not attend: `[batch, queries, keys]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttentionMask {
    /// Batch size B.
    pub batch: usize,
    /// Query positions Lq.
    pub queries: usize,
    /// Key positions Lk.
    pub keys: usize,
    /// Row-major `[B, Lq, Lk]`, true = blocked (the seed's `masked_fill(mask, -inf)`).
    pub blocked: Vec<bool>,
}

impl AttentionMask {
    /// A mask from its blocked flags, checked against `[batch, queries, keys]`.
    pub fn new(batch: usize, queries: usize, keys: usize, blocked: Vec<bool>) -> Result<Self> {
        let n = checked_len(&[batch, queries, keys])?;
        if blocked.len() != n {
            return Err(Error::Shape(format!(
                "attention mask: {} flags for [{batch}, {queries}, {keys}]",
                blocked.len()
            )));
        }
        Ok(AttentionMask {
            batch,
            queries,
            keys,
            blocked,
        })
    }

    /// A mask from an integer tensor `[B, Lq, Lk]` (non-zero = blocked), as the golden cases store it.
    pub fn from_index(mask: &IndexTensor) -> Result<Self> {
        let &[b, q, k] = mask.shape() else {
            return Err(Error::Shape(format!(
                "attention mask: expected [B, Lq, Lk], got {:?}",
                mask.shape()
            )));
        };
        let flags = mask.to_vec()?.into_iter().map(|v| v != 0).collect();
        Self::new(b, q, k, flags)
    }

    /// Blocks the key positions holding `pad` for every query: `M[b, q, k] = (ids[k, b] == pad)`.
    /// `ids` is time-major `[keys, batch]` (the batch tensors' layout, SPEC-TRANSLATION §1.4).
    pub fn padding(
        ids: &[i32],
        keys: usize,
        batch: usize,
        pad: i32,
        queries: usize,
    ) -> Result<Self> {
        Self::build(ids, keys, batch, pad, queries, false)
    }

    /// The decoder self-attention mask: padding of `ids` (time-major `[len, batch]`) OR the
    /// future, `M[b, q, k] = (ids[k, b] == pad) || k > q`.
    pub fn causal_padding(ids: &[i32], len: usize, batch: usize, pad: i32) -> Result<Self> {
        Self::build(ids, len, batch, pad, len, true)
    }

    fn build(
        ids: &[i32],
        keys: usize,
        batch: usize,
        pad: i32,
        queries: usize,
        causal: bool,
    ) -> Result<Self> {
        if ids.len() != checked_len(&[keys, batch])? {
            return Err(Error::Shape(format!(
                "attention mask: {} ids for a time-major [{keys}, {batch}] batch",
                ids.len()
            )));
        }
        let n = checked_len(&[batch, queries, keys])?;
        let mut blocked = Vec::with_capacity(n);
        for b in 0..batch {
            for q in 0..queries {
                blocked.extend((0..keys).map(|k| ids[k * batch + b] == pad || (causal && k > q)));
            }
        }
        Self::new(batch, queries, keys, blocked)
    }

    /// The additive score bias `[heads·B, Lq, Lk]` (0 = attend, −inf = blocked) in head-major order
    /// (slice `h·B + b` is head h of batch element b), the order of the attention's score slices.
    pub fn head_bias(&self, heads: usize, device: &Device) -> Result<Tensor> {
        let per_head = self.blocked.len();
        let n = checked_len(&[heads, per_head])?;
        let mut bias = Vec::with_capacity(n);
        for _ in 0..heads {
            bias.extend(
                self.blocked
                    .iter()
                    .map(|&b| if b { f32::NEG_INFINITY } else { 0.0 }),
            );
        }
        Tensor::from_vec(&[heads * self.batch, self.queries, self.keys], bias, device)
    }
}

/// The element count of `shape`, bounded before anything is allocated.
fn checked_len(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= limits::MAX_MODEL_ELEMENTS)
        .ok_or_else(|| {
            Error::Shape(format!(
                "attention mask: {shape:?} is beyond {} elements",
                limits::MAX_MODEL_ELEMENTS
            ))
        })
}
