//! `Linear`: PyTorch's `nn.Linear` — `y = x·Wᵀ + b`, weight `[out, in]`, bias `[out]`.

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::matmul::linear;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// A fully connected layer; its weight and bias live in the [`ParamStore`] under `prefix`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Parameter name prefix (`fc` → `fc.weight`, `fc.bias`; empty → `weight`, `bias`).
    pub prefix: String,
    /// Values per input row (the weight's second dimension).
    pub in_features: usize,
    /// Values per output row (the weight's first dimension).
    pub out_features: usize,
    /// Whether a bias `[out]` is registered and added.
    pub bias: bool,
}

/// `<prefix>.<name>`, or `<name>` alone when the prefix is empty.
fn param_name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl Linear {
    /// Register `<prefix>.weight [out, in]` (and `<prefix>.bias [out]`) in `store`, initialised
    /// like PyTorch: both uniform in `±1/sqrt(in)` (kaiming_uniform with a = sqrt(5) for the weight),
    /// weight drawn first.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Linear> {
        if in_features == 0 || out_features == 0 {
            return Err(Error::op_arg("Linear::new", format!(
                "linear layer `{prefix}`: in_features ({in_features}) and out_features ({out_features}) must be positive"
            )));
        }
        let bound = 1.0 / (in_features as f32).sqrt();
        let w = rng.uniform_vec(out_features * in_features, -bound, bound);
        store.add_param(
            &param_name(prefix, "weight"),
            Tensor::from_vec(&[out_features, in_features], w, device)?,
        )?;
        if bias {
            let b = rng.uniform_vec(out_features, -bound, bound);
            store.add_param(
                &param_name(prefix, "bias"),
                Tensor::from_vec(&[out_features], b, device)?,
            )?;
        }
        Ok(Linear {
            prefix: prefix.to_string(),
            in_features,
            out_features,
            bias,
        })
    }

    /// The store name of the weight `[out, in]`.
    pub fn weight_name(&self) -> String {
        param_name(&self.prefix, "weight")
    }

    /// The store name of the bias `[out]`; `None` for a layer without bias.
    pub fn bias_name(&self) -> Option<String> {
        self.bias.then(|| param_name(&self.prefix, "bias"))
    }

    /// `x [N, in]` → `[N, out]`.
    pub fn forward(&self, g: &mut Graph, store: &ParamStore, x: Var) -> Result<Var> {
        let w = g.param(store, &self.weight_name())?;
        let b = match self.bias_name() {
            Some(name) => Some(g.param(store, &name)?),
            None => None,
        };
        linear(g, x, w, b)
    }
}
