//! The layers the model zoo is made of, as the models see them: each one registers its PyTorch
//! `state_dict` entries through a [`Builder`] (so a meta build can list and count them) and runs
//! its forward with the engine's ops. Layers hold only names and configuration.

use super::builder::Builder;
use super::info::traced;
use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::init::Init;
use crate::nn::{self, ParamStore};
use crate::ops;
use crate::rng::Rng;
use crate::tensor::IndexTensor;

/// `<prefix>.<name>`.
pub fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}.{name}")
}

/// Conv1d or Conv2d (cross-correlation, zero padding, dilation 1, groups 1).
#[derive(Clone, Debug)]
pub struct Conv {
    pub name: String,
    pub in_channels: usize,
    pub out_channels: usize,
    /// `[k]` for 1-D, `[kh, kw]` for 2-D.
    pub kernel: Vec<usize>,
    pub stride: usize,
    /// Per spatial axis, same length as `kernel`.
    pub padding: Vec<usize>,
    pub bias: bool,
}

impl Conv {
    /// Register `<name>.weight [out, in, *kernel]` (+ `<name>.bias [out]`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: &mut Builder,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: &[usize],
        stride: usize,
        padding: &[usize],
        bias: bool,
        weight_init: Init,
        bias_init: Init,
    ) -> Result<Conv> {
        if in_channels == 0 || out_channels == 0 || kernel.contains(&0) || stride == 0 {
            return Err(Error::Config(format!(
                "conv `{name}`: channels ({in_channels} -> {out_channels}), kernel {kernel:?} and \
                 stride {stride} must be positive"
            )));
        }
        let k: usize = kernel.iter().product();
        let (fan_in, fan_out) = (in_channels * k, out_channels * k);
        let mut shape = vec![out_channels, in_channels];
        shape.extend_from_slice(kernel);
        b.param(&key(name, "weight"), &shape, weight_init, fan_in, fan_out)?;
        if bias {
            b.param(
                &key(name, "bias"),
                &[out_channels],
                bias_init,
                fan_in,
                fan_out,
            )?;
        }
        Ok(Conv {
            name: name.to_string(),
            in_channels,
            out_channels,
            kernel: kernel.to_vec(),
            stride,
            padding: padding.to_vec(),
            bias,
        })
    }

    /// Output length along one axis for input length `len`.
    pub fn out_len(&self, axis: usize, len: usize) -> usize {
        (len + 2 * self.padding[axis]).saturating_sub(self.kernel[axis]) / self.stride + 1
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
        traced(g, &self.prefix, "Linear", |g| self.forward(g, store, x))
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

/// An activation module `<name>` applied to `dim` channels/units.
#[derive(Clone, Debug)]
pub struct Activation {
    pub name: String,
    pub kind: ActKind,
    pub dim: usize,
}

impl Activation {
    pub fn new(b: &mut Builder, name: &str, kind: ActKind, dim: usize) -> Result<Activation> {
        match kind {
            ActKind::Relu => {}
            ActKind::Prelu => b.param(&key(name, "alpha"), &[], Init::Constant(0.25), 1, 1)?,
            ActKind::Swish => b.param(&key(name, "betas"), &[dim], Init::Constant(1.0), 1, 1)?,
            ActKind::Aplu(bins) => {
                let s = bins - 2;
                b.param(&key(name, "alphas"), &[dim, s], Init::Constant(0.0), 1, 1)?;
                b.param(&key(name, "betas"), &[dim, s], Init::Constant(0.0), 1, 1)?;
            }
            ActKind::Lma(bins) => {
                b.param(&key(name, "alphas"), &[bins], Init::Constant(0.0), 1, 1)?;
                b.param(&key(name, "betas"), &[bins], Init::Constant(0.0), 1, 1)?;
                b.state(&key(name, "mv_mean"), &[], 0.0)?;
                b.state(&key(name, "mv_std"), &[], 0.0)?;
            }
        }
        Ok(Activation {
            name: name.to_string(),
            kind,
            dim,
        })
    }

    /// LMA updates its running statistics in `store` on every call, train or eval.
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
    ) -> Result<Var> {
        use nn::activation::Activation as A;
        let k = |leaf: &str| key(&self.name, leaf);
        let layer = match self.kind {
            ActKind::Relu => A::Relu,
            ActKind::Prelu => A::Prelu { alpha: k("alpha") },
            ActKind::Swish => A::Swish { betas: k("betas") },
            ActKind::Aplu(_) => A::Aplu {
                alphas: k("alphas"),
                betas: k("betas"),
            },
            ActKind::Lma(num_bins) => A::Lma {
                num_bins,
                alphas: k("alphas"),
                betas: k("betas"),
                mv_mean: k("mv_mean"),
                mv_std: k("mv_std"),
            },
        };
        let kind = match self.kind {
            ActKind::Relu => "ReLU",
            ActKind::Prelu => "PReLU",
            ActKind::Swish => "Swish",
            ActKind::Aplu(_) => "APLU",
            ActKind::Lma(_) => "LMA",
        };
        traced(g, &self.name, kind, |g| layer.forward(g, store, x, train))
    }
}

impl Conv {
    /// `x [N, in, *spatial]` → `[N, out, *spatial']`.
    pub fn forward(&self, g: &mut Graph, store: &mut ParamStore, x: Var) -> Result<Var> {
        let kind = if self.kernel.len() == 1 {
            "Conv1d"
        } else {
            "Conv2d"
        };
        traced(g, &self.name, kind, |g| self.forward_untraced(g, store, x))
    }

    fn forward_untraced(&self, g: &mut Graph, store: &mut ParamStore, x: Var) -> Result<Var> {
        match (&self.kernel[..], &self.padding[..]) {
            (&[k], &[p]) => nn::conv::Conv1d {
                prefix: self.name.clone(),
                in_channels: self.in_channels,
                out_channels: self.out_channels,
                kernel: k,
                stride: self.stride,
                padding: p,
                bias: self.bias,
            }
            .forward(g, store, x, false),
            (&[kh, kw], &[ph, pw]) => nn::conv::Conv2d {
                prefix: self.name.clone(),
                in_channels: self.in_channels,
                out_channels: self.out_channels,
                kernel: (kh, kw),
                stride: (self.stride, self.stride),
                padding: (ph, pw),
                bias: self.bias,
            }
            .forward(g, store, x, false),
            _ => Err(Error::Other(format!(
                "conv `{}`: kernel {:?} / padding {:?} must both be 1-D or 2-D",
                self.name, self.kernel, self.padding
            ))),
        }
    }
}

/// `relu?(bn(conv(x)) + residual?)`: the conv → BatchNorm → (residual add) → (ReLU) sequence of
/// the CIFAR ResNets and plain nets. In a forward that keeps no tape and does not train (a frozen
/// teacher, evaluation), a bias-free 2-D conv runs as one fused op with the BatchNorm's running
/// statistics applied as the conv writes its output (same values as the layers one by one);
/// otherwise the layers run one by one (BatchNorm, add and ReLU fused with each other).
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_act(
    g: &mut Graph,
    store: &mut ParamStore,
    conv: &Conv,
    bn: &BatchNorm,
    x: Var,
    residual: Option<Var>,
    relu: bool,
    train: bool,
) -> Result<Var> {
    let fusable = !train
        && !g.is_recording()
        && !super::info::is_tracing()
        && !conv.bias
        && conv.kernel.len() == 2
        && bn.channels == conv.out_channels;
    if fusable {
        return conv_bn_eval_fused(g, store, conv, bn, x, residual, relu);
    }
    let h = conv.forward(g, store, x)?;
    bn.traced_forward(g, store, h, train, relu, residual)
}

fn conv_bn_eval_fused(
    g: &mut Graph,
    store: &ParamStore,
    conv: &Conv,
    bn: &BatchNorm,
    x: Var,
    residual: Option<Var>,
    relu: bool,
) -> Result<Var> {
    let get = |name: &str, entry: &str| -> Result<crate::tensor::Tensor> {
        Ok(store.get(&key(name, entry))?.value.clone())
    };
    let w = get(&conv.name, "weight")?;
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
    let (stride, padding) = (
        (conv.stride, conv.stride),
        (conv.padding[0], conv.padding[1]),
    );
    let xv = g.value(x);
    let rv = residual.map(|r| g.value(r));
    let y = ops::conv::conv2d_bn_eval_forward(xv, &w, stride, padding, params, rv, relu).map_err(
        |e| match e {
            Error::Shape(m) => Error::Shape(format!("conv `{}` + `{}`: {m}", conv.name, bn.prefix)),
            e => e,
        },
    )?;
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
