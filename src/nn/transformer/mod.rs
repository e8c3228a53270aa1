//! Layers of LMA's early-OpenNMT-py Transformer (SPEC-TRANSLATION §5): embeddings with a padding
//! row and the non-standard sinusoidal position encoding, multi-head attention with its masks (no
//! output projection, post-norm onmt LayerNorm), the position-wise feed-forward block with a
//! pluggable activation, and the encoder and decoder layers. Tensors are batch-major `[B, L, d]`
//! inside the layers.

pub mod attention;
pub mod decoder;
pub mod embeddings;
pub mod encoder;
pub mod feed_forward;
pub mod mask;
pub mod position;

use crate::autograd::{Graph, Var};
use crate::error::Result;
use crate::ops::dropout::dropout;
use crate::rng::Rng;

/// The seed's dropout probability (embeddings, attention probabilities, residual branches).
pub const ONMT_DROPOUT: f32 = 0.1;

/// Dropout of a sub-layer (embeddings, attention probabilities, residual branches): active only in
/// training mode.
pub struct SublayerDropout<'a> {
    /// Drop probability (the seed: [`ONMT_DROPOUT`]).
    pub p: f32,
    /// Training mode: dropout is active only then.
    pub train: bool,
    /// The generator of the masks.
    pub rng: &'a mut Rng,
}

impl SublayerDropout<'_> {
    /// `x` through the dropout when one is given, else `x` itself.
    pub fn maybe(d: &mut Option<&mut SublayerDropout<'_>>, g: &mut Graph, x: Var) -> Result<Var> {
        match d {
            Some(d) => dropout(g, x, d.p, d.train, d.rng),
            None => Ok(x),
        }
    }
}

/// Registers `<prefix>.layer_norm.a_2` (ones) and `.b_2` (zeros): the onmt LayerNorm that ends
/// both the attention and the feed-forward sublayers.
pub(crate) fn register_layer_norm(
    store: &mut crate::nn::ParamStore,
    prefix: &str,
    dim: usize,
    device: &crate::device::Device,
) -> crate::error::Result<()> {
    store.add_param(
        &format!("{prefix}.layer_norm.a_2"),
        crate::tensor::Tensor::full(&[dim], 1.0, device)?,
    )?;
    store.add_param(
        &format!("{prefix}.layer_norm.b_2"),
        crate::tensor::Tensor::zeros(&[dim], device)?,
    )?;
    Ok(())
}
