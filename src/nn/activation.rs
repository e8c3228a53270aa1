//! `Activation`: the activation layers of the seeds, built from a name — `relu`, `prelu` (one scalar
//! alpha), `swish` (betas `[dim]`), `aplu` (alphas, betas `[dim, num_bins-2]`), `lma` (alphas, betas
//! `[num_bins]` and the running `mv_mean`/`mv_std` state outside the state_dict).
//!
//! Parameter names follow the seeds' modules: `<prefix>.alpha`, `<prefix>.betas`, `<prefix>.alphas`;
//! LMA state `<prefix>.mv_mean`, `<prefix>.mv_std` (`ParamStore::add_state`).

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::init::{init_tensor, Init};
use crate::nn::ParamStore;
use crate::ops::activation::{aplu, prelu, swish};
use crate::ops::elementwise::relu;
use crate::ops::lma::{lma, LmaConfig, LmaStats};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Hyper-parameters an activation may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivationSpec {
    /// Swish / APLU: the size of the `view(-1, dim)` rows (the layer's features or channels).
    pub dim: Option<usize>,
    /// APLU: S = num_bins - 2 hinges; LMA: K segments. The seeds default to 8.
    pub num_bins: usize,
}

impl Default for ActivationSpec {
    fn default() -> Self {
        ActivationSpec {
            dim: None,
            num_bins: 8,
        }
    }
}

/// Initial PReLU slope (PyTorch's `nn.PReLU` default).
pub const PRELU_INIT: f32 = 0.25;

/// APLU's initial hinge slopes `alphas ~ U(-0.5, 0.5)` (SPEC-NOTES §6: the seed's intent; zeros
/// would make APLU equal ReLU at step 0).
pub const APLU_ALPHAS_INIT: Init = Init::Uniform(-0.5, 0.5);

/// APLU's initial hinge positions `betas ~ N(0, 0.5²)` (SPEC-NOTES §6), drawn after the alphas.
pub const APLU_BETAS_INIT: Init = Init::NormalStd(0.5);

/// One activation layer: its module name and which activation it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Activation {
    /// Module name (`activations.0`), the prefix of its parameter names.
    pub prefix: String,
    /// The activation and the names of its parameters.
    pub params: ActivationParams,
}

/// Which activation a layer is, with the full names of its parameters (and LMA state).
#[derive(Clone, Debug, PartialEq)]
pub enum ActivationParams {
    /// `max(x, 0)`, no parameters.
    Relu,
    /// One scalar slope `alpha`.
    Prelu {
        /// Full name of the slope parameter.
        alpha: String,
    },
    /// `betas [dim]`.
    Swish {
        /// Full name of the per-channel `beta` parameter.
        betas: String,
    },
    /// `alphas`, `betas [dim, num_bins-2]`.
    Aplu {
        /// Full name of the hinge slopes `[dim, num_bins-2]`.
        alphas: String,
        /// Full name of the hinge positions `[dim, num_bins-2]`.
        betas: String,
    },
    /// `alphas`, `betas [num_bins]` and the running `mv_mean`/`mv_std` state.
    Lma {
        /// Number of linear segments.
        num_bins: usize,
        /// Full name of the per-segment slopes.
        alphas: String,
        /// Full name of the per-segment offsets `[num_bins]`.
        betas: String,
        /// Full name of the running input mean (extra state, not in the `state_dict`).
        mv_mean: String,
        /// Full name of the running input standard deviation (extra state).
        mv_std: String,
    },
}

fn name(prefix: &str, leaf: &str) -> String {
    if prefix.is_empty() {
        leaf.to_string()
    } else {
        format!("{prefix}.{leaf}")
    }
}

impl Activation {
    /// Build the activation `kind` and register its parameters (and LMA state) under `prefix`.
    /// Initial values (SPEC-NOTES §6): PReLU alpha 0.25; Swish betas 1; APLU alphas
    /// [`APLU_ALPHAS_INIT`] then betas [`APLU_BETAS_INIT`], drawn from `rng` in that order, each
    /// row-major (the only activation that draws); LMA alphas, betas, mv_mean, mv_std 0.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        kind: &str,
        spec: ActivationSpec,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Activation> {
        let need_dim = |what: &str| {
            spec.dim.filter(|&d| d > 0).ok_or_else(|| {
                Error::Config(format!(
                    "activation `{what}` at `{prefix}` needs a positive `dim` (its feature count)"
                ))
            })
        };
        let kind_lc = kind.trim().to_ascii_lowercase();
        let params = match kind_lc.as_str() {
            "relu" => ActivationParams::Relu,
            "prelu" => {
                let alpha = name(prefix, "alpha");
                store.add_param(&alpha, Tensor::scalar(PRELU_INIT, device)?)?;
                ActivationParams::Prelu { alpha }
            }
            "swish" => {
                let dim = need_dim("swish")?;
                let betas = name(prefix, "betas");
                store.add_param(&betas, Tensor::full(&[dim], 1.0, device)?)?;
                ActivationParams::Swish { betas }
            }
            "aplu" => {
                let dim = need_dim("aplu")?;
                if spec.num_bins < 3 {
                    return Err(Error::Config(format!(
                        "activation `aplu` at `{prefix}`: num_bins must be at least 3 (S = num_bins-2 hinges), got {}",
                        spec.num_bins
                    )));
                }
                let shape = [dim, spec.num_bins - 2];
                let (alphas, betas) = (name(prefix, "alphas"), name(prefix, "betas"));
                let draw = |init, rng: &mut Rng| init_tensor(init, &shape, 1, 1, device, rng);
                store.add_param(&alphas, draw(APLU_ALPHAS_INIT, rng)?)?;
                store.add_param(&betas, draw(APLU_BETAS_INIT, rng)?)?;
                ActivationParams::Aplu { alphas, betas }
            }
            "lma" => {
                let k = spec.num_bins;
                if k == 0 {
                    return Err(Error::Config(format!(
                        "activation `lma` at `{prefix}`: num_bins must be at least 1"
                    )));
                }
                let (alphas, betas) = (name(prefix, "alphas"), name(prefix, "betas"));
                let (mv_mean, mv_std) = (name(prefix, "mv_mean"), name(prefix, "mv_std"));
                store.add_param(&alphas, Tensor::zeros(&[k], device)?)?;
                store.add_param(&betas, Tensor::zeros(&[k], device)?)?;
                store.add_state(&mv_mean, Tensor::scalar(0.0, device)?)?;
                store.add_state(&mv_std, Tensor::scalar(0.0, device)?)?;
                ActivationParams::Lma {
                    num_bins: k,
                    alphas,
                    betas,
                    mv_mean,
                    mv_std,
                }
            }
            _ => {
                return Err(Error::Config(format!(
                    "unknown activation `{kind}` at `{prefix}`: expected one of relu, prelu, swish, aplu, lma"
                )))
            }
        };
        Ok(Activation {
            prefix: prefix.to_string(),
            params,
        })
    }

    /// Apply the activation. LMA updates its running statistics in `store` on every call (train
    /// and eval, as the seed does).
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
    ) -> Result<Var> {
        Ok(self.forward_with_stats(g, store, x, train)?.0)
    }

    /// [`Activation::forward`], also returning LMA's statistics of this call (batch mean/std and
    /// the updated running ones); `None` for the other activations.
    pub fn forward_with_stats(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
    ) -> Result<(Var, Option<LmaStats>)> {
        match &self.params {
            ActivationParams::Relu => Ok((relu(g, x)?, None)),
            ActivationParams::Prelu { alpha } => {
                let a = g.param(store, alpha)?;
                Ok((prelu(g, x, a)?, None))
            }
            ActivationParams::Swish { betas } => {
                let b = g.param(store, betas)?;
                Ok((swish(g, x, b)?, None))
            }
            ActivationParams::Aplu { alphas, betas } => {
                let (a, b) = (g.param(store, alphas)?, g.param(store, betas)?);
                Ok((aplu(g, x, a, b)?, None))
            }
            ActivationParams::Lma {
                num_bins,
                alphas,
                betas,
                mv_mean,
                mv_std,
            } => {
                let (a, b) = (g.param(store, alphas)?, g.param(store, betas)?);
                let m = store.get(mv_mean)?.value.clone();
                let s = store.get(mv_std)?.value.clone();
                let cfg = LmaConfig::new(*num_bins, train);
                let (y, aux) = lma(g, x, a, b, &m, &s, cfg)?;
                store.set(mv_mean, aux.stats.mv_mean.reshape(m.shape())?)?;
                store.set(mv_std, aux.stats.mv_std.reshape(s.shape())?)?;
                // Batch statistics of this call, visible to logs and golden checks as
                // `lma_batch_mean.<module>` / `lma_batch_std.<module>`.
                let module = mv_mean.strip_suffix(".mv_mean").unwrap_or(mv_mean);
                g.record_stat(
                    format!("lma_batch_mean.{module}"),
                    aux.stats.batch_mean.clone(),
                );
                g.record_stat(
                    format!("lma_batch_std.{module}"),
                    aux.stats.batch_std.clone(),
                );
                if g.records_detail() {
                    let shape = aux.segment_index.shape().to_vec();
                    let idx = aux.segment_index.to_vec()?.into_iter().map(|k| k as f32);
                    let idx = Tensor::from_vec(&shape, idx.collect(), g.device())?;
                    g.record_stat(format!("lma_segment_index.{module}"), idx);
                }
                Ok((y, Some(aux.stats)))
            }
        }
    }

    /// Names of the trainable parameters, in registration order.
    pub fn param_names(&self) -> Vec<&str> {
        match &self.params {
            ActivationParams::Relu => vec![],
            ActivationParams::Prelu { alpha } => vec![alpha],
            ActivationParams::Swish { betas } => vec![betas],
            ActivationParams::Aplu { alphas, betas }
            | ActivationParams::Lma { alphas, betas, .. } => {
                vec![alphas, betas]
            }
        }
    }
}
