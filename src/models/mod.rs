//! Models of the four seed codebases, built from an architecture name (`models.training_architecture`
//! in a config) or from a golden-case descriptor `{family, name, args}`.
//!
//! A model owns no tensors: its parameters live in a [`ParamStore`] under their PyTorch
//! `state_dict` names, in PyTorch's registration order, and `forward` records ops on a [`Graph`].
//! A *meta* build ([`describe`], [`count_parameters`]) lists names and shapes without allocating.
//!
//! Architecture names:
//!
//! | name | model |
//! |---|---|
//! | `mlp-784-256-10` | MLP (`fc1`, `fc2`, …) |
//! | `resnet20` … `resnet110` | LIT CIFAR ResNet (option-A shortcut, head `linear`) |
//! | `takd-resnet8` … `takd-resnet110` (alias `resnet8-b` …) | TAKD ResNet_Cifar (1x1 conv + BN shortcut, head `fc`) |
//! | `plane2` … `plane10` | TAKD plain CNN (CIFAR-100 book when num_classes = 100, else CIFAR-10 book) |
//! | `wrn-16-4` (`wrn-<depth>-<k>`) | QD/LMA pre-activation Wide ResNet, dropout 0 |
//! | `cfn-teacher`, `cfn-spec0` (= `cfn-smaller`), `cfn-spec1`, `cfn-spec2`, `cfn-deeper` | Polino ConvForwardNet, QD variant |
//! | `cfn-spec0-lma8`, `cfn-spec0-relu`, `cfn-spec1-swish`, `cfn-spec2-aplu8`, `cfn-spec0-prelu` | ConvForwardNet, LMA variant with that activation (bins after lma/aplu, default 8) |
//! | `vdcnn9-maxpool` … `vdcnn49-maxpool` | LIT VDCNN (token ids `[N, 1014]`) |
//!
//! Sections (LIT): `forward = head(section_{n-1}(… section_0(stem(x))))`; the stem output is
//! feature 0 and section `i` maps feature `i` to feature `i + 1`, so a student's section can be
//! fed the teacher's feature.

pub mod builder;
pub mod convnet;
pub mod info;
pub mod layers;
pub mod mlp;
pub mod nmt_lstm;
pub mod nmt_transformer;
pub mod plane;
pub mod resnet_cifar;
pub mod vdcnn;
pub mod wrn;

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::ParamStore;
use crate::rng::Rng;
use crate::tensor::IndexTensor;
use builder::{Builder, MetaEntry};
use serde_json::Value;

/// A model input: images/features as a graph value, or token ids (VDCNN).
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Images `[N, C, H, W]` or features `[N, F]` on the graph.
    Float(Var),
    /// Token ids `[N, L]` (not differentiable, so not on the graph).
    Ids(&'a IndexTensor),
}

impl<'a> Input<'a> {
    /// A loader batch on the tape `g`: floats become a graph constant, token ids are passed by
    /// reference.
    pub fn from_batch(g: &mut Graph, x: &'a crate::data::Batch) -> Self {
        match x {
            crate::data::Batch::Float(t) => Input::Float(g.constant(t.clone())),
            crate::data::Batch::Ids(t) => Input::Ids(t),
        }
    }

    /// The float input, or an error naming `model` when it was given token ids.
    pub fn float(self, model: &str) -> Result<Var> {
        match self {
            Input::Float(v) => Ok(v),
            Input::Ids(_) => Err(Error::Shape(format!(
                "`{model}` takes float inputs (images or features), not token ids"
            ))),
        }
    }
    /// The token ids, or an error naming `model` when it was given floats.
    pub fn ids(self, model: &str) -> Result<&'a IndexTensor> {
        match self {
            Input::Ids(t) => Ok(t),
            Input::Float(_) => Err(Error::Shape(format!(
                "`{model}` takes token ids (an index tensor), not float inputs"
            ))),
        }
    }
}

/// A built network: its forward pass (whole, or stem / sections / head for LIT), what input it
/// takes and how many classes it predicts. Parameters live in the [`ParamStore`] passed in.
pub trait Model {
    /// The architecture name it was built from.
    fn architecture(&self) -> &str;
    /// Shape of one example (`[3, 32, 32]` images, `[784]` features, `[1014]` token ids).
    fn input_shape(&self) -> Vec<usize>;
    /// Elements per example.
    fn input_features(&self) -> usize {
        self.input_shape().iter().product()
    }
    /// True when the input is token ids ([`Input::Ids`]) rather than floats.
    fn takes_ids(&self) -> bool {
        false
    }
    /// Number of logits per example (the width of `forward`'s output).
    fn num_classes(&self) -> usize;
    /// Random draws the model made in training (dropout masks), for a resumed run to continue
    /// the same sequence; 0 for models that draw nothing.
    fn rng_calls(&self) -> u64 {
        0
    }
    /// Restore the count [`Model::rng_calls`] reported, so dropout continues where a checkpointed
    /// run left off; models that draw nothing ignore it.
    fn set_rng_calls(&self, _calls: u64) {}

    /// Number of LIT sections (0: the model is not sectioned).
    fn num_sections(&self) -> usize {
        0
    }
    /// Module path of each section (`layer1`, `sections.section_0`, …): its parameters are the
    /// store entries under `<name>.`.
    fn section_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// Feature 0 (the stem output).
    fn stem(&self, _g: &mut Graph, _s: &mut ParamStore, _x: Input, _train: bool) -> Result<Var> {
        Err(not_sectioned(self.architecture()))
    }
    /// Section `i` (0-based): feature `i` → feature `i + 1`.
    fn forward_section(
        &self,
        _i: usize,
        _g: &mut Graph,
        _s: &mut ParamStore,
        _x: Var,
        _train: bool,
    ) -> Result<Var> {
        Err(not_sectioned(self.architecture()))
    }
    /// Last feature → logits.
    fn head(&self, _g: &mut Graph, _s: &mut ParamStore, _x: Var, _train: bool) -> Result<Var> {
        Err(not_sectioned(self.architecture()))
    }
    /// Logits `[batch, num_classes]`. `train` selects training behaviour (dropout, BN batch
    /// statistics and running-stat updates). Sectioned models: stem → sections → head.
    fn forward(&self, g: &mut Graph, store: &mut ParamStore, x: Input, train: bool) -> Result<Var> {
        let mut h = self.stem(g, store, x, train)?;
        for i in 0..self.num_sections() {
            h = self.forward_section(i, g, store, h, train)?;
        }
        self.head(g, store, h, train)
    }
}

/// The error of a section call on a model that has none.
fn not_sectioned(architecture: &str) -> Error {
    Error::Config(format!(
        "`{architecture}` has no sections (sectioned models: resnet*, takd-resnet*, wrn-*, vdcnn*)"
    ))
}

/// `sections[i]`, or an error naming the model when `i` is out of range.
pub(crate) fn section<'s, T>(sections: &'s [T], i: usize, model: &str) -> Result<&'s T> {
    sections.get(i).ok_or_else(|| {
        Error::Config(format!(
            "`{model}` has {} sections; there is no section {i}",
            sections.len()
        ))
    })
}

/// The architecture families `build` knows, as shown to users.
pub const ARCHITECTURES: &[&str] = &[
    "mlp-<in>-<hidden>…-<out> (e.g. mlp-784-256-10)",
    "resnet20|32|44|56|110 (LIT, option-A shortcut)",
    "takd-resnet8|14|20|26|32|44|56|110 (TAKD, 1x1-conv shortcut; alias resnet<d>-b)",
    "plane2|4|6|8|10 (TAKD plain CNN)",
    "wrn-<depth>-<k> (e.g. wrn-16-4; depth = 6n+4)",
    "cfn-teacher|spec0|smaller|spec1|spec2|deeper (ConvForwardNet, QD variant)",
    "cfn-<spec>-relu|prelu|swish|aplu<bins>|lma<bins> (ConvForwardNet, LMA variant, e.g. cfn-spec0-lma8)",
    "vdcnn9|17|29|49-maxpool (VDCNN on token ids)",
];

/// A parsed architecture: what to build, independent of where the parameters go.
#[derive(Clone, Debug)]
enum Arch {
    Mlp(Vec<usize>),
    ResNet {
        depth: usize,
        shortcut: resnet_cifar::Shortcut,
    },
    Plane {
        layers: Vec<String>,
    },
    Wrn {
        depth: usize,
        widen: usize,
        dropout: f32,
    },
    ConvNet(convnet::Config),
    Vdcnn(vdcnn::Config),
}

fn unknown(name: &str) -> Error {
    Error::Config(format!(
        "unknown architecture `{name}`; this build knows: {}",
        ARCHITECTURES.join(", ")
    ))
}

/// Digits after `prefix` (and before an optional `suffix`) of `name`.
fn number_between(name: &str, prefix: &str, suffix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

fn parse_name(name: &str, num_classes: usize) -> Result<Arch> {
    use resnet_cifar::Shortcut;
    if name.starts_with("mlp") {
        let sizes = mlp::parse_sizes(name)?;
        let out = *sizes.last().expect("parse_sizes gives at least two sizes");
        if out != num_classes {
            return Err(Error::Config(format!(
                "architecture `{name}` predicts {out} classes but {num_classes} are needed"
            )));
        }
        return Ok(Arch::Mlp(sizes));
    }
    if let Some(depth) =
        number_between(name, "takd-resnet", "").or_else(|| number_between(name, "resnet", "-b"))
    {
        return Ok(Arch::ResNet {
            depth,
            shortcut: Shortcut::OptionB,
        });
    }
    if let Some(depth) = number_between(name, "resnet", "") {
        return Ok(Arch::ResNet {
            depth,
            shortcut: Shortcut::OptionA,
        });
    }
    if let Some(depth) = number_between(name, "plane", "") {
        return Ok(Arch::Plane {
            layers: plane::book(depth, num_classes)?,
        });
    }
    if let Some(rest) = name.strip_prefix("wrn-") {
        let parts: Vec<&str> = rest.split('-').collect();
        if let [d, k] = parts[..] {
            if let (Ok(depth), Ok(widen)) = (d.parse(), k.parse()) {
                return Ok(Arch::Wrn {
                    depth,
                    widen,
                    dropout: 0.0,
                });
            }
        }
        return Err(Error::Config(format!(
            "architecture `{name}`: a Wide ResNet is named wrn-<depth>-<widen factor>, e.g. wrn-16-4"
        )));
    }
    if name.starts_with("cfn-") {
        return Ok(Arch::ConvNet(convnet::Config::from_name(name)?));
    }
    if let Some(depth) = number_between(name, "vdcnn", "-maxpool") {
        return Ok(Arch::Vdcnn(vdcnn::Config::standard(depth)));
    }
    Err(unknown(name))
}

/// Build `arch` into `b`. A store build is preceded by a meta build, so that a model over the
/// size limits is refused before any of its tensors is allocated.
fn construct(
    name: &str,
    arch: &Arch,
    num_classes: usize,
    b: &mut Builder,
) -> Result<Box<dyn Model>> {
    limits::at_most(
        &format!("architecture `{name}`: the number of classes"),
        num_classes,
        limits::MAX_CLASSES,
    )?;
    if !b.is_meta() {
        let mut meta = Builder::meta();
        construct_into(name, arch, num_classes, &mut meta)?;
        if b.on_host() {
            limits::check_model_fits(name, meta.elements())?;
        }
    }
    construct_into(name, arch, num_classes, b)
}

fn construct_into(
    name: &str,
    arch: &Arch,
    num_classes: usize,
    b: &mut Builder,
) -> Result<Box<dyn Model>> {
    b.set_model(name);
    Ok(match arch {
        Arch::Mlp(sizes) => Box::new(mlp::Mlp::new(b, name, sizes)?),
        Arch::ResNet { depth, shortcut } => Box::new(resnet_cifar::ResNetCifar::new(
            b,
            name,
            *depth,
            num_classes,
            *shortcut,
        )?),
        Arch::Plane { layers } => Box::new(plane::Plane::new(b, name, layers, num_classes)?),
        Arch::Wrn {
            depth,
            widen,
            dropout,
        } => Box::new(wrn::Wrn::new(
            b,
            name,
            *depth,
            *widen,
            *dropout,
            num_classes,
        )?),
        Arch::ConvNet(cfg) => Box::new(convnet::ConvForwardNet::new(b, name, cfg, num_classes)?),
        Arch::Vdcnn(cfg) => Box::new(vdcnn::Vdcnn::new(b, name, cfg, num_classes)?),
    })
}

/// Build `name` for `num_classes` classes, registering its parameters in `store` (initialised on
/// `device` from `rng`, with the init scheme of the model's codebase).
pub fn build(
    name: &str,
    num_classes: usize,
    store: &mut ParamStore,
    device: &Device,
    rng: &mut Rng,
) -> Result<Box<dyn Model>> {
    let name = name.trim();
    let arch = parse_name(name, num_classes)?;
    construct(
        name,
        &arch,
        num_classes,
        &mut Builder::new(store, device, rng),
    )
}

/// The state_dict (and LMA state) entries `name` would register, without allocating them.
pub fn describe(name: &str, num_classes: usize) -> Result<Vec<MetaEntry>> {
    let name = name.trim();
    let arch = parse_name(name, num_classes)?;
    let mut b = Builder::meta();
    construct(name, &arch, num_classes, &mut b)?;
    Ok(b.into_meta())
}

/// Number of trained parameters of `name`, as PyTorch's `sum(p.numel() for p in m.parameters())`.
pub fn count_parameters(name: &str, num_classes: usize) -> Result<usize> {
    Ok(builder::count_params(&describe(name, num_classes)?))
}

/// Read the golden-case descriptor `{family, name, args}`.
fn parse_descriptor(model: &Value) -> Result<(String, Arch, usize)> {
    let bad = |what: String| Error::Config(format!("model descriptor: {what}; got {model}"));
    let family = model
        .get("family")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing string field `family`".into()))?;
    let name = model
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(family)
        .to_string();
    let args = model
        .get("args")
        .ok_or_else(|| bad("missing object field `args`".into()))?;
    let a = Args { family, args };
    let num_classes = a.usize("num_classes")?;
    use resnet_cifar::Shortcut;
    let arch = match family {
        "lit_resnet" => Arch::ResNet {
            depth: a.usize("depth")?,
            shortcut: Shortcut::OptionA,
        },
        "takd_resnet" => Arch::ResNet {
            depth: a.usize("depth")?,
            shortcut: Shortcut::OptionB,
        },
        "plane" => Arch::Plane {
            layers: a
                .array("layers")?
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| a.bad("layers", "a list of token strings"))
                })
                .collect::<Result<_>>()?,
        },
        "wrn" => Arch::Wrn {
            depth: a.usize("depth")?,
            widen: a.usize("widen_factor")?,
            dropout: a.f64_or("dropout_rate", 0.0)? as f32,
        },
        "conv_forward_net" => Arch::ConvNet(convnet::Config::from_args(&a)?),
        "vdcnn" => Arch::Vdcnn(vdcnn::Config::from_args(&a)?),
        "mlp" => Arch::Mlp(a.usize_list("sizes")?),
        other => {
            return Err(bad(format!(
                "unknown family `{other}` (known: lit_resnet, takd_resnet, plane, wrn, \
                 conv_forward_net, vdcnn, mlp)"
            )))
        }
    };
    Ok((name, arch, num_classes))
}

/// Build the model of a golden case's `model` object `{family, name, args}`.
pub fn build_from_descriptor(
    model: &Value,
    store: &mut ParamStore,
    device: &Device,
    rng: &mut Rng,
) -> Result<Box<dyn Model>> {
    let (name, arch, num_classes) = parse_descriptor(model)?;
    construct(
        &name,
        &arch,
        num_classes,
        &mut Builder::new(store, device, rng),
    )
}

/// The entries a descriptor's model registers, without allocating them.
pub fn describe_descriptor(model: &Value) -> Result<Vec<MetaEntry>> {
    let (name, arch, num_classes) = parse_descriptor(model)?;
    let mut b = Builder::meta();
    construct(&name, &arch, num_classes, &mut b)?;
    Ok(b.into_meta())
}

/// Typed access to a descriptor's `args`, with errors naming the family and key.
pub struct Args<'a> {
    family: &'a str,
    args: &'a Value,
}

impl<'a> Args<'a> {
    fn bad(&self, key: &str, want: &str) -> Error {
        Error::Config(format!(
            "model descriptor `{}`: args.{key} must be {want}, got {}",
            self.family,
            self.args
                .get(key)
                .map_or("nothing".to_string(), |v| v.to_string())
        ))
    }
    /// The raw value of `key`; `None` when it is missing or `null`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.args.get(key).filter(|v| !v.is_null())
    }
    /// A required non-negative integer; an error when missing or of another type.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| self.bad(key, "a non-negative integer"))
    }
    /// A non-negative integer, `default` when missing or `null`; an error when of another type.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.usize(key),
        }
    }
    /// A number, `default` when missing or `null`; an error when of another type.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.bad(key, "a number")),
        }
    }
    /// A boolean, `default` when missing or `null`; an error when of another type.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(key, "true or false")),
        }
    }
    /// A string, `default` when missing or `null`; an error when of another type.
    pub fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.bad(key, "a string")),
        }
    }
    /// A required list; an error when missing or not a list.
    pub fn array(&self, key: &str) -> Result<&'a Vec<Value>> {
        self.get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| self.bad(key, "a list"))
    }
    /// A required list of non-negative integers; an error when missing or any element is not one.
    pub fn usize_list(&self, key: &str) -> Result<Vec<usize>> {
        self.array(key)?
            .iter()
            .map(|v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| self.bad(key, "a list of non-negative integers"))
            })
            .collect()
    }
    /// A list of integer tuples (`[[F, kh, kw], …]`).
    pub fn usize_lists(&self, key: &str) -> Result<Vec<Vec<usize>>> {
        self.array(key)?
            .iter()
            .map(|row| {
                row.as_array()
                    .and_then(|r| {
                        r.iter()
                            .map(|v| v.as_u64().map(|n| n as usize))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| self.bad(key, "a list of integer lists"))
            })
            .collect()
    }
}
