//! onmt `GlobalAttention` with `attn_type = "general"` (Luong), one decoder step
//! (SPEC-TRANSLATION §2.3): `q = W_in·h_t`; `score[b, s] = q[b]·memory[b, s]`;
//! `align = softmax_s(score)`; `c = Σ_s align_s·memory_s`; `out = tanh(W_out·[c ; h_t])` (context
//! first, no biases). Names `<prefix>.linear_in.weight [H, H]`, `<prefix>.linear_out.weight
//! [H, 2H]`.
//!
//! By default NO mask, as the seed (bug B1): padded source rows of the memory bank are 0, score 0
//! and still take softmax mass. Passing the source lengths masks positions `s ≥ len_b` (−inf
//! scores), PyTorch's `applyMask`.

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::lstm::check_lengths;
use crate::nn::ParamStore;
use crate::ops::concat::concat_last;
use crate::ops::elementwise::{add, tanh};
use crate::ops::matmul::{gemm_op, linear};
use crate::ops::shape::reshape;
use crate::ops::softmax::softmax;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// The attention layer; its two weights live in the [`ParamStore`] under `prefix`.
#[derive(Clone, Debug)]
pub struct GlobalAttention {
    /// Parameter name prefix (`decoder.attn`).
    pub prefix: String,
    /// H, the width of queries and memory rows.
    pub dim: usize,
}

/// What one attention step produces.
#[derive(Clone, Copy, Debug)]
pub struct Attended {
    /// `tanh(W_out·[c ; h_t])` `[B, H]`.
    pub out: Var,
    /// The attention weights `[B, S]`.
    pub align: Var,
}

impl GlobalAttention {
    /// Register `linear_in.weight [dim, dim]` then `linear_out.weight [dim, 2·dim]`, U(±init).
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        dim: usize,
        init: f32,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<GlobalAttention> {
        if dim == 0 {
            return Err(Error::Config(format!(
                "GlobalAttention `{prefix}`: dim must be positive"
            )));
        }
        let layer = GlobalAttention {
            prefix: prefix.to_string(),
            dim,
        };
        for (name, cols) in [
            (layer.linear_in_name(), dim),
            (layer.linear_out_name(), 2 * dim),
        ] {
            let w = rng.uniform_vec(dim * cols, -init, init);
            store.add_param(&name, Tensor::from_vec(&[dim, cols], w, device)?)?;
        }
        Ok(layer)
    }

    /// Store name of `W_in [H, H]`.
    pub fn linear_in_name(&self) -> String {
        format!("{}.linear_in.weight", self.prefix)
    }

    /// Store name of `W_out [H, 2H]`.
    pub fn linear_out_name(&self) -> String {
        format!("{}.linear_out.weight", self.prefix)
    }

    /// One step: `query [B, H]` against `memory [B, S, H]`; `lengths` masks padded positions
    /// (None: no mask, as the seed).
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        query: Var,
        memory: Var,
        lengths: Option<&[usize]>,
    ) -> Result<Attended> {
        let w_in = g.param(store, &self.linear_in_name())?;
        let w_out = g.param(store, &self.linear_out_name())?;
        attend_general(g, query, memory, w_in, w_out, lengths)
    }
}

/// [`GlobalAttention::forward`] on tape values: `w_in [H, H]`, `w_out [H, 2H]`.
pub fn attend_general(
    g: &mut Graph,
    query: Var,
    memory: Var,
    w_in: Var,
    w_out: Var,
    lengths: Option<&[usize]>,
) -> Result<Attended> {
    let (batch, steps, dim) = match (g.value(query).shape(), g.value(memory).shape()) {
        (&[b, h], &[b2, s, h2]) if b == b2 && h == h2 && s > 0 => (b, s, h),
        (q, m) => {
            return Err(Error::Shape(format!(
            "global attention: query {q:?} and memory {m:?} (expected [B, H] and [B, S, H], S > 0)"
        )))
        }
    };
    let q = linear(g, query, w_in, None)?;
    let q = reshape(g, q, &[batch, dim, 1])?;
    let score = gemm_op(g, memory, false, q, false)?; // [B, S, 1]
    let mut score = reshape(g, score, &[batch, steps])?;
    if let Some(lengths) = lengths {
        let bias = mask_bias(lengths, batch, steps)?;
        let bias = g.constant(Tensor::from_vec(&[batch, steps], bias, g.device())?);
        score = add(g, score, bias)?;
    }
    let align = softmax(g, score, 1.0)?;
    let a = reshape(g, align, &[batch, 1, steps])?;
    let context = gemm_op(g, a, false, memory, false)?; // [B, 1, H]
    let context = reshape(g, context, &[batch, dim])?;
    let cat = concat_last(g, &[context, query])?;
    let pre = linear(g, cat, w_out, None)?;
    let out = tanh(g, pre)?;
    Ok(Attended { out, align })
}

/// `0` where `s < lengths[b]`, `−inf` elsewhere (`[B, S]`, row-major).
fn mask_bias(lengths: &[usize], batch: usize, steps: usize) -> Result<Vec<f32>> {
    check_lengths("global attention", lengths, batch, steps)?;
    Ok((0..batch * steps)
        .map(|e| {
            if e % steps < lengths[e / steps] {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect())
}
