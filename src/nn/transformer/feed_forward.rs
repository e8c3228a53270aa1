//! The position-wise feed-forward block (`onmt/modules/Transformer.py`, SPEC-TRANSLATION §5.6):
//! `FFN(y) = LN(y + dropout(W_2 · act(W_1 y + b_1) + b_2))`, no dropout between act and W_2. The
//! activation is pluggable (relu, prelu, swish, lma) and acts on the whole `[B·L, hidden]` tensor
//! of the call, padding positions included — LMA's mean/std are over all of it.

use super::attention::ONMT_HEADS;
use super::SublayerDropout;
use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::activation::{Activation, ActivationSpec};
use crate::nn::linear::Linear;
use crate::nn::ParamStore;
use crate::ops::elementwise::add;
use crate::ops::layer_norm::{layer_norm_onmt, ONMT_LAYER_NORM_EPS};
use crate::ops::shape::reshape;
use crate::rng::Rng;

/// The seed's inner width (2048 for every model size, SPEC-TRANSLATION L5).
pub const ONMT_FFN_HIDDEN: usize = 2048;

/// The seed's activation hyper-parameters: 8 bins (LMA), and Swish's `dim` = the head count 8.
pub const ONMT_ACTIVATION_SPEC: ActivationSpec = ActivationSpec {
    dim: Some(ONMT_HEADS),
    num_bins: 8,
};

/// One feed-forward block; parameters `<prefix>.w_1.weight/.bias`, `.w_2.weight/.bias`,
/// `.layer_norm.a_2/.b_2`, then the activation's under `<prefix>.act` (the seed's order).
#[derive(Clone, Debug)]
pub struct PositionwiseFeedForward {
    /// Parameter name prefix (e.g. `encoder.transformer.0.feed_forward`).
    pub prefix: String,
    /// Model dimension d.
    pub dim: usize,
    /// `w_1`: d → hidden, with bias.
    pub w_1: Linear,
    /// `w_2`: hidden → d, with bias.
    pub w_2: Linear,
    /// The activation between them.
    pub act: Activation,
}

impl PositionwiseFeedForward {
    /// Registers the block with activation `act` (relu, prelu, swish, lma; the seed's `aplu`
    /// crashes at construction and is refused here too).
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        dim: usize,
        hidden: usize,
        act: &str,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Self> {
        if act.trim().eq_ignore_ascii_case("aplu") {
            return Err(Error::Config(format!(
                "`{prefix}`: the seed's Transformer cannot build an APLU activation (SPEC-TRANSLATION L6)"
            )));
        }
        let w_1 = Linear::new(
            store,
            &format!("{prefix}.w_1"),
            dim,
            hidden,
            true,
            device,
            rng,
        )?;
        let w_2 = Linear::new(
            store,
            &format!("{prefix}.w_2"),
            hidden,
            dim,
            true,
            device,
            rng,
        )?;
        super::register_layer_norm(store, prefix, dim, device)?;
        let spec = ONMT_ACTIVATION_SPEC;
        let act = Activation::new(store, &format!("{prefix}.act"), act, spec, device, rng)?;
        Ok(PositionwiseFeedForward {
            prefix: prefix.to_string(),
            dim,
            w_1,
            w_2,
            act,
        })
    }

    /// `y [B, L, d]` → `[B, L, d]`. LMA updates its running statistics in `store` (train and eval).
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        y: Var,
        train: bool,
        mut dropout: Option<&mut SublayerDropout<'_>>,
    ) -> Result<Var> {
        let shape = g.value(y).shape().to_vec();
        if shape.last() != Some(&self.dim) {
            return Err(Error::Shape(format!(
                "`{}`: input {shape:?}, expected [.., {}]",
                self.prefix, self.dim
            )));
        }
        let rows = g.value(y).numel() / self.dim;
        let y2 = reshape(g, y, &[rows, self.dim])?;
        let h = self.w_1.forward(g, store, y2)?;
        let h = self.act.forward(g, store, h, train)?;
        let o = self.w_2.forward(g, store, h)?;
        let o = SublayerDropout::maybe(&mut dropout, g, o)?;
        let r = add(g, y2, o)?;
        let a_2 = g.param(store, &format!("{}.layer_norm.a_2", self.prefix))?;
        let b_2 = g.param(store, &format!("{}.layer_norm.b_2", self.prefix))?;
        let out = layer_norm_onmt(g, r, a_2, b_2, ONMT_LAYER_NORM_EPS)?;
        reshape(g, out, &shape)
    }
}
