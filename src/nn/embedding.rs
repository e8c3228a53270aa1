//! `Embedding`: PyTorch's `nn.Embedding` without a padding row — `weight [num, dim]`, initialised
//! N(0, 1), and `forward(ids)` = `weight[ids]`.

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::embedding::embedding;
use crate::rng::Rng;
use crate::tensor::{IndexTensor, Tensor};

/// A lookup table of `num` learned vectors of `dim` values; the weight lives in the [`ParamStore`].
#[derive(Clone, Debug)]
pub struct Embedding {
    /// Name prefix (`character_embedding` → `character_embedding.weight`; empty → `weight`).
    pub prefix: String,
    /// Rows of the table: ids must lie in `[0, num)`.
    pub num: usize,
    /// Values per row (the last dimension of the output).
    pub dim: usize,
}

impl Embedding {
    /// Register `<prefix>.weight [num, dim]` in `store`, drawn from N(0, 1); an error when `num`
    /// or `dim` is 0.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        num: usize,
        dim: usize,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Embedding> {
        if num == 0 || dim == 0 {
            return Err(Error::op_arg("Embedding::new", format!(
                "embedding `{prefix}`: num_embeddings ({num}) and embedding_dim ({dim}) must be positive"
            )));
        }
        let e = Embedding {
            prefix: prefix.to_string(),
            num,
            dim,
        };
        let w = rng.normal_vec(num * dim, 1.0);
        store.add_param(&e.weight_name(), Tensor::from_vec(&[num, dim], w, device)?)?;
        Ok(e)
    }

    /// The store name of the weight (`<prefix>.weight`, or `weight` for an empty prefix).
    pub fn weight_name(&self) -> String {
        if self.prefix.is_empty() {
            "weight".into()
        } else {
            format!("{}.weight", self.prefix)
        }
    }

    /// `ids [*]` → `[*, dim]`; an id outside `[0, num)` is an error naming it.
    pub fn forward(&self, g: &mut Graph, store: &ParamStore, ids: &IndexTensor) -> Result<Var> {
        let w = g.param(store, &self.weight_name())?;
        embedding(g, w, ids)
    }
}
