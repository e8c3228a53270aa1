//! The layers the model zoo is made of, as the models see them: each one registers its PyTorch
//! `state_dict` entries through a [`Builder`] (so a meta build can list and count them) and runs
//! its forward with the engine's ops. Layers hold only names and configuration.

use super::builder::Builder;
use super::info::{traced, traced_with_input, ConvWindow};
use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::activation::ActivationParams;
use crate::nn::conv::KernelSize;
use crate::nn::init::{self, Init};
use crate::nn::{self, ParamStore};
use crate::ops;
use crate::ops::autocast::autocast;
use crate::rng::Rng;
use crate::tensor::IndexTensor;

/// `<prefix>.<name>`.
pub fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}.{name}")
}

/// Conv2d: the [`nn`] layer (cross-correlation, zero padding, dilation 1, groups 1),
/// registered through a [`Builder`] by [`Conv2d::build`].
pub use crate::nn::conv::Conv2d;

/// Conv1d: the [`nn`] layer, registered through a [`Builder`] by [`Conv1d::build`].
pub use crate::nn::conv::Conv1d;

/// What a conv layer is made of besides its name (channels, kernel, stride, padding, bias,
/// inits).
pub use crate::nn::conv::ConvSpec;

/// Register `<name>.weight [out, in, *kernel]` (+ `<name>.bias [out]`) of `spec` through `b`.
fn register_conv<K: KernelSize>(b: &mut Builder, name: &str, spec: &ConvSpec<K>) -> Result<()> {
    let shape = spec.weight_shape(name)?;
    let (fan_in, fan_out) = init::fans(&shape);
    b.param(
        &key(name, "weight"),
        &shape,
        spec.weight_init,
        fan_in,
        fan_out,
    )?;
    if spec.bias {
        let bias_shape = [spec.out_channels];
        b.param(
            &key(name, "bias"),
            &bias_shape,
            spec.bias_init,
            fan_in,
            fan_out,
        )?;
    }
    Ok(())
}

impl Conv2d {
    /// The layer `spec` describes, its entries registered through `b` under `name`.
    pub fn build(b: &mut Builder, name: &str, spec: ConvSpec<(usize, usize)>) -> Result<Conv2d> {
        register_conv(b, name, &spec)?;
        Ok(Conv2d::of(name, spec))
    }

    /// [`Conv2d::forward`] reported to the model trace: `x [N, in, H, W]` → `[N, out, OH, OW]`.
    pub fn traced_forward(&self, g: &mut Graph, store: &mut ParamStore, x: Var) -> Result<Var> {
        let window = ConvWindow {
            kernel: vec![self.kernel.0, self.kernel.1],
            stride: vec![self.stride.0, self.stride.1],
            padding: vec![self.padding.0, self.padding.1],
        };
        traced_with_input(g, (&self.prefix, "Conv2d"), x, Some(window), |g| {
            self.forward(g, store, x, false)
        })
    }
}

impl Conv1d {
    /// The layer `spec` describes, its entries registered through `b` under `name`.
    pub fn build(b: &mut Builder, name: &str, spec: ConvSpec<usize>) -> Result<Conv1d> {
        register_conv(b, name, &spec)?;
        Ok(Conv1d::of(name, spec))
    }

    /// [`Conv1d::forward`] reported to the model trace: `x [N, in, L]` → `[N, out, OL]`.
    pub fn traced_forward(&self, g: &mut Graph, store: &mut ParamStore, x: Var) -> Result<Var> {
        let window = ConvWindow {
            kernel: vec![self.kernel],
            stride: vec![self.stride],
            padding: vec![self.padding],
        };
        traced_with_input(g, (&self.prefix, "Conv1d"), x, Some(window), |g| {
            self.forward(g, store, x, false)
        })
    }
}

/// BatchNorm1d / BatchNorm2d: the [`nn`] layer, registered through a [`Builder`] in PyTorch's
/// order `weight, bias, running_mean, running_var, num_batches_tracked` (`num_batches_tracked` is
/// an f32 scalar holding an integer).
pub use crate::nn::batchnorm::BatchNorm;

impl BatchNorm {
    /// [`BatchNorm::config`] (eps 1e-5) with its entries registered through `b`, the weight drawn
    /// from `weight_init`.
    pub fn build(
        b: &mut Builder,
        name: &str,
        channels: usize,
        momentum: f32,
        affine: bool,
        weight_init: Init,
    ) -> Result<BatchNorm> {
        let bn = BatchNorm::config(name, channels, affine, momentum, 1e-5)?;
        if affine {
            b.param(&bn.entry("weight"), &[channels], weight_init, 0, 0)?;
            b.param(&bn.entry("bias"), &[channels], Init::Constant(0.0), 0, 0)?;
        }
        b.buffer(&bn.entry("running_mean"), &[channels], 0.0)?;
        b.buffer(&bn.entry("running_var"), &[channels], 1.0)?;
        b.buffer(&bn.entry("num_batches_tracked"), &[], 0.0)?;
        Ok(bn)
    }

    /// BatchNorm with PyTorch's defaults (momentum 0.1, affine, weight 1, bias 0).
    pub fn standard(b: &mut Builder, name: &str, channels: usize) -> Result<BatchNorm> {
        BatchNorm::build(b, name, channels, 0.1, true, Init::Constant(1.0))
    }

    /// [`BatchNorm::forward_act`] reported to the model trace: BatchNorm, then (fused) the
    /// residual add and ReLU.
    pub fn traced_forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
        relu: bool,
        residual: Option<Var>,
    ) -> Result<Var> {
        let kind = if g.value(x).dims() == 4 {
            "BatchNorm2d"
        } else {
            "BatchNorm1d"
        };
        traced(g, &self.prefix, kind, |g| {
            self.forward_act(g, store, x, train, relu, residual)
        })
    }
}

/// Linear `y = x Wᵀ + b`: the [`nn`] layer, registered through a [`Builder`].
pub use crate::nn::linear::Linear;

impl Linear {
    /// Register `<name>.weight [out, in]` drawn from `weight_init` and `<name>.bias [out]` with
    /// PyTorch's default.
    pub fn build(
        b: &mut Builder,
        name: &str,
        in_features: usize,
        out_features: usize,
        weight_init: Init,
    ) -> Result<Linear> {
        if in_features == 0 || out_features == 0 {
            return Err(Error::Config(format!(
                "linear `{name}`: in_features ({in_features}) and out_features ({out_features}) \
                 must be positive"
            )));
        }
        let (fi, fo) = (in_features, out_features);
        b.param(&key(name, "weight"), &[fo, fi], weight_init, fi, fo)?;
        b.param(&key(name, "bias"), &[fo], Init::PytorchDefault, fi, fo)?;
        Ok(Linear {
            prefix: name.to_string(),
            in_features,
            out_features,
            bias: true,
        })
    }

    /// [`Linear::forward`] reported to the model trace.
    pub fn traced_forward(&self, g: &mut Graph, store: &ParamStore, x: Var) -> Result<Var> {
        traced_with_input(g, (&self.prefix, "Linear"), x, None, |g| {
            self.forward(g, store, x)
        })
    }
}

/// Embedding `weight [num, dim]`, `N(0, 1)` init, no padding row: the [`nn`] layer, registered
/// through a [`Builder`].
pub use crate::nn::embedding::Embedding;

impl Embedding {
    /// Register `<name>.weight [num_embeddings, dim]` drawn from `N(0, 1)`.
    pub fn build(b: &mut Builder, name: &str, num_embeddings: usize, dim: usize) -> Result<Self> {
        if num_embeddings == 0 || dim == 0 {
            return Err(Error::Config(format!(
                "embedding `{name}`: vocabulary size ({num_embeddings}) and dimension ({dim}) \
                 must be positive"
            )));
        }
        b.param(
            &key(name, "weight"),
            &[num_embeddings, dim],
            Init::NormalStd(1.0),
            dim,
            num_embeddings,
        )?;
        Ok(Embedding {
            prefix: name.to_string(),
            num: num_embeddings,
            dim,
        })
    }

    /// [`Embedding::forward`] reported to the model trace: `ids [N, L]` → `[N, L, dim]`.
    pub fn traced_forward(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        ids: &IndexTensor,
    ) -> Result<Var> {
        traced(g, &self.prefix, "Embedding", |g| {
            self.forward(g, store, ids)
        })
    }
}

/// Activation kinds of the LMA codebase's ConvForwardNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    /// `max(x, 0)`.
    Relu,
    /// One scalar slope per layer.
    Prelu,
    /// `betas[dim]`.
    Swish,
    /// `alphas[dim, bins-2]`, `betas[dim, bins-2]`.
    Aplu(usize),
    /// `alphas[bins]`, `betas[bins]`, running `mv_mean`/`mv_std` state.
    Lma(usize),
}

impl ActKind {
    /// `relu`, `prelu`, `swish`, `aplu[<bins>]`, `lma[<bins>]` (`default_bins` when absent).
    pub fn parse(s: &str, default_bins: usize) -> std::result::Result<ActKind, String> {
        let bins = |rest: &str| -> std::result::Result<usize, String> {
            if rest.is_empty() {
                return Ok(default_bins);
            }
            rest.parse::<usize>()
                .map_err(|_| format!("`{s}`: `{rest}` is not a number of bins"))
        };
        let kind = match s {
            "relu" => ActKind::Relu,
            "prelu" => ActKind::Prelu,
            "swish" => ActKind::Swish,
            _ if s.starts_with("aplu") => ActKind::Aplu(bins(&s[4..])?),
            _ if s.starts_with("lma") => ActKind::Lma(bins(&s[3..])?),
            _ => {
                return Err(format!(
                    "unknown activation `{s}` (relu, prelu, swish, aplu<bins>, lma<bins>)"
                ))
            }
        };
        match kind {
            ActKind::Aplu(b) if b < 3 => Err(format!("`{s}`: APLU needs at least 3 bins")),
            ActKind::Lma(b) if b < 2 => Err(format!("`{s}`: LMA needs at least 2 bins")),
            ActKind::Aplu(b) | ActKind::Lma(b) if b > limits::MAX_ACTIVATION_BINS => Err(format!(
                "`{s}`: {b} bins, above the limit of {}",
                limits::MAX_ACTIVATION_BINS
            )),
            k => Ok(k),
        }
    }
}

/// An activation module: the [`nn`] layer, registered through a [`Builder`] by
/// [`Activation::build`].
pub use crate::nn::activation::Activation;

impl Activation {
    /// The activation `kind` applied to `dim` channels/units, its parameters (and LMA state)
    /// registered through `b` under `name`: PReLU alpha 0.25, Swish betas 1, APLU alphas
    /// `U(-0.5, 0.5)` then betas `N(0, 0.5²)` from the model's rng (row-major, alphas first), LMA
    /// alphas, betas, `mv_mean`/`mv_std` 0 (SPEC-NOTES §6).
    pub fn build(b: &mut Builder, name: &str, kind: ActKind, dim: usize) -> Result<Activation> {
        let k = |leaf: &str| key(name, leaf);
        let zeros = Init::Constant(0.0);
        let params = match kind {
            ActKind::Relu => ActivationParams::Relu,
            ActKind::Prelu => {
                let alpha = k("alpha");
                b.param(
                    &alpha,
                    &[],
                    Init::Constant(nn::activation::PRELU_INIT),
                    1,
                    1,
                )?;
                ActivationParams::Prelu { alpha }
            }
            ActKind::Swish => {
                let betas = k("betas");
                b.param(&betas, &[dim], Init::Constant(1.0), 1, 1)?;
                ActivationParams::Swish { betas }
            }
            ActKind::Aplu(bins) => {
                let (alphas, betas) = (k("alphas"), k("betas"));
                let shape = [dim, bins - 2];
                b.param(&alphas, &shape, nn::activation::APLU_ALPHAS_INIT, 1, 1)?;
                b.param(&betas, &shape, nn::activation::APLU_BETAS_INIT, 1, 1)?;
                ActivationParams::Aplu { alphas, betas }
            }
            ActKind::Lma(num_bins) => {
                let (alphas, betas) = (k("alphas"), k("betas"));
                let (mv_mean, mv_std) = (k("mv_mean"), k("mv_std"));
                b.param(&alphas, &[num_bins], zeros, 1, 1)?;
                b.param(&betas, &[num_bins], zeros, 1, 1)?;
                b.state(&mv_mean, &[], 0.0)?;
                b.state(&mv_std, &[], 0.0)?;
                ActivationParams::Lma {
                    num_bins,
                    alphas,
                    betas,
                    mv_mean,
                    mv_std,
                }
            }
        };
        Ok(Activation {
            prefix: name.to_string(),
            params,
        })
    }

    /// [`Activation::forward`] reported to the model trace. LMA updates its running statistics
    /// in `store` on every call, train or eval.
    pub fn traced_forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
    ) -> Result<Var> {
        let kind = match self.params {
            ActivationParams::Relu => "ReLU",
            ActivationParams::Prelu { .. } => "PReLU",
            ActivationParams::Swish { .. } => "Swish",
            ActivationParams::Aplu { .. } => "APLU",
            ActivationParams::Lma { .. } => "LMA",
        };
        traced(g, &self.prefix, kind, |g| self.forward(g, store, x, train))
    }
}

/// A 2-D conv followed by a BatchNorm: the conv → BatchNorm → (residual add) → (ReLU) sequence
/// of the CIFAR ResNets and plain nets.
#[derive(Clone, Debug)]
pub struct ConvBn {
    /// The conv.
    pub conv: Conv2d,
    /// The BatchNorm over the conv's output channels.
    pub bn: BatchNorm,
}

impl ConvBn {
    /// `relu?(bn(conv(x)) + residual?)`. In a forward that keeps no tape and does not train (a
    /// frozen teacher, evaluation), a bias-free conv runs as one fused op with the BatchNorm's
    /// running statistics applied as the conv writes its output (same values as the layers one
    /// by one); otherwise the layers run one by one (BatchNorm, add and ReLU fused with each
    /// other).
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        residual: Option<Var>,
        relu: bool,
        train: bool,
    ) -> Result<Var> {
        let (conv, bn) = (&self.conv, &self.bn);
        let fusable = !train
            && !g.is_recording()
            && !super::info::is_tracing()
            && !conv.bias
            && bn.channels == conv.out_channels;
        if fusable {
            return conv_bn_eval_fused(g, store, conv, bn, x, residual, relu);
        }
        let h = conv.traced_forward(g, store, x)?;
        bn.traced_forward(g, store, h, train, relu, residual)
    }
}

fn conv_bn_eval_fused(
    g: &mut Graph,
    store: &ParamStore,
    conv: &Conv2d,
    bn: &BatchNorm,
    x: Var,
    residual: Option<Var>,
    relu: bool,
) -> Result<Var> {
    let get = |name: &str, entry: &str| -> Result<crate::tensor::Tensor> {
        Ok(store.get(&key(name, entry))?.value.clone())
    };
    let w = store.get(&conv.weight_name())?.value.clone();
    let running = ops::batchnorm::RunningStats {
        mean: get(&bn.prefix, "running_mean")?,
        var: get(&bn.prefix, "running_var")?,
        num_batches_tracked: None,
    };
    let affine = match bn.affine {
        true => Some((get(&bn.prefix, "weight")?, get(&bn.prefix, "bias")?)),
        false => None,
    };
    let params = ops::conv::BnEval {
        affine: affine.as_ref().map(|(w, b)| (w, b)),
        running: &running,
        eps: bn.eps,
    };
    let (stride, padding) = (conv.stride, conv.padding);
    // The conv's operands rounded as the precision says; BatchNorm, residual and ReLU stay fp32.
    // With tensor cores (`ops::tensor_core`) the BatchNorm runs after the conv, as its own kernel.
    let precision = g.precision();
    let xv = g.value(x);
    let rv = residual.map(|r| g.value(r));
    let fused = match ops::tensor_core::wired(xv.device(), precision) {
        Some(p) => {
            ops::tensor_core::conv2d_bn_eval_forward(xv, &w, stride, padding, params, rv, relu, p)
        }
        None => {
            let (w, xv) = (autocast(&w, precision)?, autocast(xv, precision)?);
            ops::conv::conv2d_bn_eval_forward(&xv, &w, stride, padding, params, rv, relu)
        }
    };
    let y = fused.map_err(|e| match e {
        Error::Shape(m) => Error::Shape(format!("conv `{}` + `{}`: {m}", conv.prefix, bn.prefix)),
        e => e,
    })?;
    ops::flops::add_dot_products(y.numel(), w.numel() / w.shape()[0]);
    Ok(g.constant(y))
}

/// LIT's option-A shortcut: `x[:, :, ::2, ::2]` with `pad` zero channels before and after.
pub fn option_a_shortcut(g: &mut Graph, x: Var, pad: usize) -> Result<Var> {
    traced(g, "", "Shortcut(option A)", |g| {
        ops::shape::option_a_shortcut(g, x, pad)
    })
}

/// Mean over every spatial position: `[N, C, H, W]` → `[N, C]`.
pub fn global_avg_pool(g: &mut Graph, x: Var) -> Result<Var> {
    traced(g, "", "GlobalAvgPool", |g| ops::pool::global_avg_pool(g, x))
}

/// Square max pooling over `[N, C, H, W]` (`kernel`, `stride`, `padding` in pixels), traced for
/// the model report.
pub fn max_pool2d(
    g: &mut Graph,
    x: Var,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Var> {
    let window = ops::pool::Pool2d::square(kernel, stride, padding);
    traced(g, "", "MaxPool2d", |g| ops::pool::max_pool2d(g, x, window))
}

/// Max pooling over `[N, C, L]` (`kernel`, `stride`, `padding` in positions), traced for the
/// model report.
pub fn max_pool1d(
    g: &mut Graph,
    x: Var,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Var> {
    traced(g, "", "MaxPool1d", |g| {
        ops::pool::max_pool1d(g, x, kernel, stride, padding)
    })
}

/// The `k` largest values of each row of `[N, C, L]`, in their original order.
pub fn kmax_pool(g: &mut Graph, x: Var, k: usize) -> Result<Var> {
    traced(g, "", "KMaxPool", |g| ops::pool::kmax_pool(g, x, k))
}

/// `[N, …]` → `[N, prod(…)]`.
pub fn flatten(g: &mut Graph, x: Var) -> Result<Var> {
    traced(g, "", "Flatten", |g| ops::shape::flatten(g, x))
}

/// `[N, A, B]` → `[N, B, A]`.
pub fn swap_last_two(g: &mut Graph, x: Var) -> Result<Var> {
    traced(g, "", "Transpose", |g| ops::shape::transpose_last2(g, x))
}

/// Element dropout with rate `p` (callers apply it in train mode only).
pub fn dropout(g: &mut Graph, x: Var, p: f32, rng: &mut Rng) -> Result<Var> {
    traced(g, "", "Dropout", |g| {
        ops::dropout::dropout(g, x, p, true, rng)
    })
}
