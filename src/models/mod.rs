//! Models built from an architecture name (`models.training_architecture` in a config).
//!
//! A model owns no tensors: its parameters live in a [`ParamStore`] under their PyTorch
//! `state_dict` names, and `forward` records ops on a [`Graph`].

pub mod mlp;

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::rng::Rng;

pub trait Model {
    /// The architecture name it was built from.
    fn architecture(&self) -> &str;
    /// Features per input example (inputs are `[batch, input_features]`).
    fn input_features(&self) -> usize;
    fn num_classes(&self) -> usize;
    /// Logits `[batch, num_classes]`. `train` selects training behaviour (dropout, BN batch stats).
    fn forward(&self, g: &mut Graph, store: &ParamStore, x: Var, train: bool) -> Result<Var>;
}

/// The architecture families `build` knows, as shown to users.
pub const ARCHITECTURES: &[&str] = &["mlp-<in>-<hidden>…-<out> (e.g. mlp-784-256-10)"];

/// Build `name`, registering its parameters in `store` (initialised on `device` from `rng`).
pub fn build(
    name: &str,
    store: &mut ParamStore,
    device: &Device,
    rng: &mut Rng,
) -> Result<Box<dyn Model>> {
    let name = name.trim();
    if name.starts_with("mlp") {
        return Ok(Box::new(mlp::Mlp::from_name(name, store, device, rng)?));
    }
    Err(Error::Config(format!(
        "unknown architecture `{name}`; this build knows: {}",
        ARCHITECTURES.join(", ")
    )))
}
