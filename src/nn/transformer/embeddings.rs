//! The Transformer's embeddings (`onmt/modules/Embeddings.py`, SPEC-TRANSLATION §5.3 / §5.8):
//! `W[x]` with the `<blank>` row zero and without gradient (PyTorch `padding_idx`), NO √d scaling,
//! plus LMA's position table, then dropout.

use super::position::add_position_encoding;
use super::SublayerDropout;
use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::embedding::Embedding;
use crate::nn::ParamStore;
use crate::ops::embedding::embedding_padded;
use crate::rng::Rng;
use crate::tensor::IndexTensor;

/// Word embeddings with a padding row and the position encoding; the table is
/// `<prefix>.make_embedding.emb_luts.0.weight [vocab, d]`.
#[derive(Clone, Debug)]
pub struct TransformerEmbeddings {
    /// The lookup table (N(0, 1), padding row 0).
    pub table: Embedding,
    /// The `<blank>` id: its row is 0 and gets no gradient.
    pub padding_idx: usize,
}

impl TransformerEmbeddings {
    /// Registers the table (N(0, 1) from `rng`, then the padding row set to 0).
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        vocab: usize,
        dim: usize,
        padding_idx: usize,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Self> {
        if padding_idx >= vocab {
            return Err(Error::op_arg(
                "TransformerEmbeddings::new",
                format!("`{prefix}`: padding_idx {padding_idx} outside a vocabulary of {vocab}"),
            ));
        }
        let name = format!("{prefix}.make_embedding.emb_luts.0");
        let table = Embedding::new(store, &name, vocab, dim, device, rng)?;
        let w = &mut store.get_mut(&table.weight_name())?.value;
        let mut values = w.to_vec()?;
        values[padding_idx * dim..(padding_idx + 1) * dim].fill(0.0);
        *w = crate::tensor::Tensor::from_vec(&[vocab, dim], values, device)?;
        Ok(TransformerEmbeddings { table, padding_idx })
    }

    /// `ids [B, L]` (batch-major) → `W[ids] + PE[0..L]`, dropped out in training: `[B, L, d]`.
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        ids: &IndexTensor,
        mut dropout: Option<&mut SublayerDropout<'_>>,
    ) -> Result<Var> {
        if ids.dims() != 2 {
            return Err(Error::Shape(format!(
                "transformer embeddings: ids must be [B, L], got {:?}",
                ids.shape()
            )));
        }
        let w = g.param(store, &self.table.weight_name())?;
        let emb = embedding_padded(g, w, ids, self.padding_idx)?;
        let emb = add_position_encoding(g, emb)?;
        SublayerDropout::maybe(&mut dropout, g, emb)
    }
}
