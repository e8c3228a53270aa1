//! Polino et al.'s ConvForwardNet (quantized distillation, and the LMA codebase's copy): convs
//! (padding (k-1)/2, stride 1, bias), max-pooling after chosen layer indices, linear layers and
//! an output layer `out_layer`.
//!
//! - QD variant: `conv|linear → ReLU → BN → [pool] → [dropout]`, logits = ReLU(out_layer(h))
//!   (BN after the activation and ReLU on the logits are the original code's quirks).
//! - LMA variant: `conv|linear → BN → activation → [pool] → [dropout]`, logits without ReLU;
//!   activations registered as `activations.{i}`.
//!
//! Registration: `out_layer` FIRST, then `conv_layers.*`, `linear_layers.*`,
//! `batchNormalizationLayers.*` (index = layer index, convs first), `activations.*`. Weights are
//! xavier_uniform(gain 1), biases PyTorch default, BN weight U(0,1) (QD, PyTorch 0.3) or 1 (LMA).

use super::builder::Builder;
use super::layers::{self, ActKind, Activation, BatchNorm, Conv2d, ConvSpec, Linear};
use super::{Args, Input, Model};
use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::nn::init::Init;
use crate::nn::ParamStore;
use crate::ops::elementwise::relu;
use crate::rng::Rng;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which codebase's layer order and quirks a ConvForwardNet follows (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Quantized distillation: layer → ReLU → BN, ReLU on the logits, BN weight U(0, 1).
    Qd,
    /// LMA: layer → BN → activation, plain logits, BN weight 1.
    Lma,
}

/// The shape of a ConvForwardNet: layers, pooling, dropout, normalization and activation.
#[derive(Clone, Debug)]
pub struct Config {
    /// Input image width in pixels (32 for named specs); inputs are `[3, height, width]`.
    pub width: usize,
    /// Input image height in pixels (32 for named specs).
    pub height: usize,
    /// `(filters, kh, kw)` per conv layer.
    pub conv: Vec<(usize, usize, usize)>,
    /// `(layer index, kh, kw)`: MaxPool2d after that layer.
    pub pools: Vec<(usize, usize, usize)>,
    /// Units of each hidden linear layer, in order (the output layer `out_layer` not included).
    pub linear: Vec<usize>,
    /// `(layer index, rate)`: dropout after that layer (after its pool).
    pub dropout: Vec<(usize, f32)>,
    /// Whether each conv and hidden linear layer is followed by a BatchNorm (true for named specs).
    pub batch_norm: bool,
    /// Whether those BatchNorms have a learned weight and bias (true for named specs).
    pub affine: bool,
    /// QD or LMA layer order.
    pub variant: Variant,
    /// The activation after each layer; always ReLU in the QD variant.
    pub activation: ActKind,
}

/// A named spec of the QD codebase: conv filters, kernel size, pool positions, linear units.
type NamedSpec = (Vec<usize>, usize, Vec<usize>, Vec<usize>);

fn named_spec(spec: &str) -> Option<NamedSpec> {
    Some(match spec {
        "teacher" => (
            vec![76, 76, 126, 126, 148, 148, 148, 148],
            3,
            vec![1, 3, 7],
            vec![1200, 1200],
        ),
        "spec0" | "smaller" => (vec![75, 50, 50, 25], 5, vec![1, 3], vec![500]),
        "spec1" => (vec![50, 25, 25, 10], 5, vec![1, 3], vec![400]),
        "spec2" => (vec![25, 10, 10, 5], 5, vec![1, 3], vec![300]),
        "deeper" => (
            [vec![76; 3], vec![126; 3], vec![148; 5]].concat(),
            3,
            vec![2, 5, 10],
            vec![1000; 3],
        ),
        _ => return None,
    })
}

impl Config {
    /// `cfn-<spec>` (QD variant) or `cfn-<spec>-<activation>` (LMA variant); specs teacher,
    /// spec0 (= smaller), spec1, spec2, deeper; activations relu, prelu, swish, `aplu<bins>`,
    /// `lma<bins>` (bins default 8).
    pub fn from_name(name: &str) -> Result<Config> {
        let bad = |why: &str| {
            Error::Config(format!(
                "architecture `{name}`: {why}; ConvForwardNets are named cfn-<spec> (QD variant) or \
                 cfn-<spec>-<activation> (LMA variant), spec = teacher|spec0|smaller|spec1|spec2|deeper, \
                 activation = relu|prelu|swish|aplu<bins>|lma<bins>, e.g. cfn-spec0-lma8"
            ))
        };
        let rest = name
            .strip_prefix("cfn-")
            .ok_or_else(|| bad("missing the spec"))?;
        let (spec, act) = match rest.split_once('-') {
            Some((s, a)) => (s, Some(a)),
            None => (rest, None),
        };
        let (filters, k, pools, linear) =
            named_spec(spec).ok_or_else(|| bad(&format!("unknown spec `{spec}`")))?;
        let (variant, activation) = match act {
            None => (Variant::Qd, ActKind::Relu),
            Some(a) => (Variant::Lma, ActKind::parse(a, 8).map_err(|e| bad(&e))?),
        };
        Ok(Config {
            width: 32,
            height: 32,
            conv: filters.into_iter().map(|f| (f, k, k)).collect(),
            pools: pools.into_iter().map(|p| (p, 2, 2)).collect(),
            linear,
            dropout: Vec::new(),
            batch_norm: true,
            affine: true,
            variant,
            activation,
        })
    }

    /// From a golden descriptor's `args` (`conv_forward_net` family).
    pub fn from_args(a: &Args) -> Result<Config> {
        let triple = |key: &str, v: Vec<usize>| -> Result<(usize, usize, usize)> {
            match v[..] {
                [x, y, z] => Ok((x, y, z)),
                _ => Err(a.bad(key, "a list of 3-element lists")),
            }
        };
        let conv = a
            .usize_lists("spec_conv_layers")?
            .into_iter()
            .map(|v| triple("spec_conv_layers", v))
            .collect::<Result<Vec<_>>>()?;
        let pools = a
            .usize_lists("spec_max_pooling")?
            .into_iter()
            .map(|v| triple("spec_max_pooling", v))
            .collect::<Result<Vec<_>>>()?;
        let dropout = match a.get("spec_dropout_rates") {
            None => Vec::new(),
            Some(_) => a
                .array("spec_dropout_rates")?
                .iter()
                .map(|row| {
                    let r = row.as_array().filter(|r| r.len() == 2);
                    match r.map(|r| (r[0].as_u64(), r[1].as_f64())) {
                        Some((Some(pos), Some(rate))) => Ok((pos as usize, rate as f32)),
                        _ => {
                            Err(a.bad("spec_dropout_rates", "a list of [layer index, rate] pairs"))
                        }
                    }
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let variant = match a.str_or("variant", "qd")? {
            "qd" => Variant::Qd,
            "lma" => Variant::Lma,
            _ => return Err(a.bad("variant", "`qd` or `lma`")),
        };
        let bins = a.usize_or("numBins", 8)?;
        let activation = ActKind::parse(a.str_or("activation", "relu")?, bins)
            .map_err(|e| Error::Config(format!("model descriptor `conv_forward_net`: {e}")))?;
        if variant == Variant::Qd && activation != ActKind::Relu {
            return Err(a.bad("activation", "`relu` for the QD variant"));
        }
        Ok(Config {
            width: a.usize_or("width", 32)?,
            height: a.usize_or("height", 32)?,
            conv,
            pools,
            linear: a.usize_list("spec_linear")?,
            dropout,
            batch_norm: a.bool_or("useBatchNorm", true)?,
            affine: a.bool_or("useAffineTransformInBatchNorm", true)?,
            variant,
            activation,
        })
    }
}

/// A ConvForwardNet built from a [`Config`]; not sectioned.
pub struct ConvForwardNet {
    name: String,
    cfg: Config,
    num_classes: usize,
    out_layer: Linear,
    convs: Vec<Conv2d>,
    linears: Vec<Linear>,
    /// One per layer (convs first) when BatchNorm is on.
    bns: Vec<BatchNorm>,
    /// One per layer in the LMA variant.
    acts: Vec<Activation>,
    dropout_seed: u64,
    dropout_calls: AtomicU64,
}

impl ConvForwardNet {
    /// Register the layers `cfg` describes under `name`; an error when a pool does not follow a
    /// conv or has a non-square kernel, a dropout index or rate is out of range, the input pools
    /// down to nothing, or a conv kernel is even.
    pub fn new(
        b: &mut Builder,
        name: &str,
        cfg: &Config,
        num_classes: usize,
    ) -> Result<ConvForwardNet> {
        let bad = |why: String| Error::Config(format!("ConvForwardNet `{name}`: {why}"));
        let num_layers = cfg.conv.len() + cfg.linear.len();
        for &(pos, kh, kw) in &cfg.pools {
            if pos >= cfg.conv.len() || kh != kw || kh == 0 {
                return Err(bad(format!(
                    "max-pooling ({pos}, {kh}, {kw}) must follow a conv layer (index < {}) with a \
                     square kernel",
                    cfg.conv.len()
                )));
            }
        }
        for &(pos, rate) in &cfg.dropout {
            if pos >= num_layers || !(0.0..1.0).contains(&rate) {
                return Err(bad(format!(
                    "dropout ({pos}, {rate}) needs a layer index < {num_layers} and a rate in [0, 1)"
                )));
            }
        }
        // Spatial size after the convs (size-preserving) and pools.
        let (mut h, mut w) = (cfg.height, cfg.width);
        for &(_, k, _) in &cfg.pools {
            h /= k;
            w /= k;
        }
        let last_filters = cfg.conv.last().map_or(3, |c| c.0);
        let flat = last_filters * h * w;
        if flat == 0 {
            return Err(bad(format!(
                "the {}x{} input pools down to nothing",
                cfg.height, cfg.width
            )));
        }
        let xavier = Init::XavierUniform(1.0);
        let out_in = cfg.linear.last().copied().unwrap_or(flat);
        let out_layer = Linear::build(b, "out_layer", out_in, num_classes, xavier)?;

        let mut convs = Vec::new();
        let mut channels = 3;
        for (i, &(f, kh, kw)) in cfg.conv.iter().enumerate() {
            if kh % 2 == 0 || kw % 2 == 0 {
                return Err(bad(format!(
                    "conv kernel {kh}x{kw} must be odd to keep the size (padding (k-1)/2)"
                )));
            }
            let spec = ConvSpec {
                in_channels: channels,
                out_channels: f,
                kernel: (kh, kw),
                stride: 1,
                padding: ((kh - 1) / 2, (kw - 1) / 2),
                bias: true,
                weight_init: xavier,
                bias_init: Init::PytorchDefault,
            };
            convs.push(Conv2d::build(b, &format!("conv_layers.{i}"), spec)?);
            channels = f;
        }
        let mut linears = Vec::new();
        let mut features = flat;
        for (i, &units) in cfg.linear.iter().enumerate() {
            linears.push(Linear::build(
                b,
                &format!("linear_layers.{i}"),
                features,
                units,
                xavier,
            )?);
            features = units;
        }
        let widths: Vec<usize> = cfg
            .conv
            .iter()
            .map(|c| c.0)
            .chain(cfg.linear.iter().copied())
            .collect();
        let bn_weight = match cfg.variant {
            Variant::Qd => Init::Uniform(0.0, 1.0),
            Variant::Lma => Init::Constant(1.0),
        };
        let mut bns = Vec::new();
        if cfg.batch_norm {
            for (i, &c) in widths.iter().enumerate() {
                let n = format!("batchNormalizationLayers.{i}");
                bns.push(BatchNorm::build(b, &n, c, 0.1, cfg.affine, bn_weight)?);
            }
        }
        let mut acts = Vec::new();
        if cfg.variant == Variant::Lma {
            for (i, &c) in widths.iter().enumerate() {
                let n = format!("activations.{i}");
                acts.push(Activation::build(b, &n, cfg.activation, c)?);
            }
        }
        Ok(ConvForwardNet {
            name: name.to_string(),
            cfg: cfg.clone(),
            num_classes,
            out_layer,
            convs,
            linears,
            bns,
            acts,
            dropout_seed: b.seed(),
            dropout_calls: AtomicU64::new(0),
        })
    }

    /// Activation, BN, pool and dropout of layer `i` (in the variant's order).
    fn after_layer(
        &self,
        i: usize,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
    ) -> Result<Var> {
        let mut h = x;
        match self.cfg.variant {
            Variant::Qd => {
                h = relu(g, h)?;
                if let Some(bn) = self.bns.get(i) {
                    h = bn.traced_forward(g, store, h, train, false, None)?;
                }
            }
            Variant::Lma => {
                if let Some(bn) = self.bns.get(i) {
                    h = bn.traced_forward(g, store, h, train, false, None)?;
                }
                h = self.acts[i].traced_forward(g, store, h, train)?;
            }
        }
        if let Some(&(_, k, _)) = self.cfg.pools.iter().find(|p| p.0 == i) {
            h = layers::max_pool2d(g, h, k, k, 0)?;
        }
        if let Some(&(_, rate)) = self.cfg.dropout.iter().find(|d| d.0 == i) {
            if train && rate > 0.0 {
                let call = self.dropout_calls.fetch_add(1, Ordering::Relaxed);
                let mut rng = Rng::new(self.dropout_seed.wrapping_add(call));
                h = layers::dropout(g, h, rate, &mut rng)?;
            }
        }
        Ok(h)
    }
}

impl Model for ConvForwardNet {
    fn rng_calls(&self) -> u64 {
        self.dropout_calls.load(Ordering::Relaxed)
    }
    fn set_rng_calls(&self, calls: u64) {
        self.dropout_calls.store(calls, Ordering::Relaxed);
    }
    fn architecture(&self) -> &str {
        &self.name
    }
    fn input_shape(&self) -> Vec<usize> {
        vec![3, self.cfg.height, self.cfg.width]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn forward(&self, g: &mut Graph, store: &mut ParamStore, x: Input, train: bool) -> Result<Var> {
        let mut h = x.float(&self.name)?;
        for (i, conv) in self.convs.iter().enumerate() {
            h = conv.traced_forward(g, store, h)?;
            h = self.after_layer(i, g, store, h, train)?;
        }
        h = layers::flatten(g, h)?;
        for (j, lin) in self.linears.iter().enumerate() {
            h = lin.traced_forward(g, store, h)?;
            h = self.after_layer(self.convs.len() + j, g, store, h, train)?;
        }
        let logits = self.out_layer.traced_forward(g, store, h)?;
        match self.cfg.variant {
            Variant::Qd => relu(g, logits),
            Variant::Lma => Ok(logits),
        }
    }
}
