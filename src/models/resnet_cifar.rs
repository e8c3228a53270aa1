//! CIFAR ResNets (6n+2 layers, three stages of 16/32/64 channels on 32x32 images).
//!
//! Two variants from the seed codebases, which differ in shortcut, head name, init and
//! registration order:
//! - LIT (`resnet<d>`): "option A" shortcut (subsample + zero channels, no parameters), head
//!   `linear`, `conv1.weight` registered LAST (the LIT module assigns it after everything else).
//! - TAKD (`takd-resnet<d>`, alias `resnet<d>-b`): "option B" shortcut `downsample.0` (1x1 conv) +
//!   `downsample.1` (BatchNorm), head AvgPool2d(8) → `fc`, natural registration order.
//!
//! Sections (for LIT): feature 0 = relu(bn1(conv1 x)); section i (0-based) is `layer{i+1}`;
//! head = global average over the 8x8 map → linear/fc.

use super::builder::Builder;
use super::layers::{self, BatchNorm, Conv2d, ConvBn, ConvSpec, Linear};
use super::{Input, Model};
use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::nn::init::Init;
use crate::nn::ParamStore;

/// How a block that halves the map and doubles the channels adds its input back; also selects
/// the variant (LIT for option A, TAKD for option B).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortcut {
    /// LIT: `x[:, :, ::2, ::2]` padded with zero channels; no parameters.
    OptionA,
    /// TAKD: 1x1 conv (stride s, no bias) + BatchNorm.
    OptionB,
}

/// Depths LIT's codebase defines (`resnet<d>`, option A).
pub const LIT_DEPTHS: &[usize] = &[20, 32, 44, 56, 110];
/// Depths TAKD's codebase defines (`takd-resnet<d>`, option B).
pub const TAKD_DEPTHS: &[usize] = &[8, 14, 20, 26, 32, 44, 56, 110];

struct Block {
    conv1: ConvBn,
    conv2: ConvBn,
    /// Option A: zero channels added on each side; option B: the downsample conv + BN.
    shortcut: Option<BlockShortcut>,
}

enum BlockShortcut {
    PadChannels(usize),
    Downsample(ConvBn),
}

impl Block {
    fn new(
        b: &mut Builder,
        name: &str,
        in_planes: usize,
        planes: usize,
        stride: usize,
        shortcut: Shortcut,
    ) -> Result<Block> {
        // TAKD initialises with N(0, sqrt(2/(k*k*out))), LIT with kaiming_normal(fan_out): the same.
        let init = Init::KaimingNormalFanOut;
        let conv = |b: &mut Builder, n: &str, i, o, s| {
            Conv2d::build(
                b,
                &layers::key(name, n),
                ConvSpec::same_size(i, o, 3, s, init),
            )
        };
        let conv1 = conv(b, "conv1", in_planes, planes, stride)?;
        let bn1 = BatchNorm::standard(b, &layers::key(name, "bn1"), planes)?;
        let conv2 = conv(b, "conv2", planes, planes, 1)?;
        let bn2 = BatchNorm::standard(b, &layers::key(name, "bn2"), planes)?;
        let needs_shortcut = stride != 1 || in_planes != planes;
        let shortcut = match (needs_shortcut, shortcut) {
            (false, _) => None,
            (true, Shortcut::OptionA) => Some(BlockShortcut::PadChannels(planes / 4)),
            (true, Shortcut::OptionB) => {
                let ds = layers::key(name, "downsample");
                let spec = ConvSpec::same_size(in_planes, planes, 1, stride, init);
                let conv = Conv2d::build(b, &layers::key(&ds, "0"), spec)?;
                let bn = BatchNorm::standard(b, &layers::key(&ds, "1"), planes)?;
                Some(BlockShortcut::Downsample(ConvBn { conv, bn }))
            }
        };
        Ok(Block {
            conv1: ConvBn {
                conv: conv1,
                bn: bn1,
            },
            conv2: ConvBn {
                conv: conv2,
                bn: bn2,
            },
            shortcut,
        })
    }

    fn forward(&self, g: &mut Graph, store: &mut ParamStore, x: Var, train: bool) -> Result<Var> {
        let h = self.conv1.forward(g, store, x, None, true, train)?;
        let s = match &self.shortcut {
            None => x,
            Some(BlockShortcut::PadChannels(p)) => layers::option_a_shortcut(g, x, *p)?,
            Some(BlockShortcut::Downsample(c)) => c.forward(g, store, x, None, false, train)?,
        };
        self.conv2.forward(g, store, h, Some(s), true, train)
    }
}

/// A CIFAR ResNet of either variant on 3x32x32 images; sectioned (stem, three stages, head).
pub struct ResNetCifar {
    name: String,
    shortcut: Shortcut,
    num_classes: usize,
    /// `conv1` and `bn1`.
    stem: ConvBn,
    stages: Vec<Vec<Block>>,
    head: Linear,
}

impl ResNetCifar {
    /// Register a ResNet of `depth` layers under `name`; an error when `depth` is not one the
    /// variant's codebase defines ([`LIT_DEPTHS`], [`TAKD_DEPTHS`]) or `num_classes` is 0.
    pub fn new(
        b: &mut Builder,
        name: &str,
        depth: usize,
        num_classes: usize,
        shortcut: Shortcut,
    ) -> Result<ResNetCifar> {
        let depths = match shortcut {
            Shortcut::OptionA => LIT_DEPTHS,
            Shortcut::OptionB => TAKD_DEPTHS,
        };
        if !depths.contains(&depth) {
            return Err(Error::Config(format!(
                "`{name}`: depth {depth} is not one of this ResNet's depths {depths:?}"
            )));
        }
        if num_classes == 0 {
            return Err(Error::Config(format!(
                "`{name}`: num_classes must be positive"
            )));
        }
        let n = (depth - 2) / 6;
        let init = Init::KaimingNormalFanOut;
        let stem =
            |b: &mut Builder| Conv2d::build(b, "conv1", ConvSpec::same_size(3, 16, 3, 1, init));
        // LIT registers conv1 after every other module; TAKD first.
        let mut conv1 = match shortcut {
            Shortcut::OptionB => Some(stem(b)?),
            Shortcut::OptionA => None,
        };
        let bn1 = BatchNorm::standard(b, "bn1", 16)?;
        let mut stages = Vec::new();
        let mut in_planes = 16;
        for (s, planes) in [16, 32, 64].into_iter().enumerate() {
            let mut blocks = Vec::new();
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let block_name = format!("layer{}.{i}", s + 1);
                blocks.push(Block::new(
                    b,
                    &block_name,
                    in_planes,
                    planes,
                    stride,
                    shortcut,
                )?);
                in_planes = planes;
            }
            stages.push(blocks);
        }
        let head_name = match shortcut {
            Shortcut::OptionA => "linear",
            Shortcut::OptionB => "fc",
        };
        let head = Linear::build(b, head_name, 64, num_classes, Init::PytorchDefault)?;
        if conv1.is_none() {
            conv1 = Some(stem(b)?);
        }
        Ok(ResNetCifar {
            name: name.to_string(),
            shortcut,
            num_classes,
            stem: ConvBn {
                conv: conv1.expect("registered above"),
                bn: bn1,
            },
            stages,
            head,
        })
    }

    /// The shortcut kind, i.e. which variant this is.
    pub fn shortcut(&self) -> Shortcut {
        self.shortcut
    }
}

impl Model for ResNetCifar {
    fn architecture(&self) -> &str {
        &self.name
    }
    fn input_shape(&self) -> Vec<usize> {
        vec![3, 32, 32]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn num_sections(&self) -> usize {
        self.stages.len()
    }
    fn section_names(&self) -> Vec<String> {
        (1..=self.stages.len())
            .map(|i| format!("layer{i}"))
            .collect()
    }
    fn stem(&self, g: &mut Graph, store: &mut ParamStore, x: Input, train: bool) -> Result<Var> {
        let x = x.float(&self.name)?;
        self.stem.forward(g, store, x, None, true, train)
    }
    fn forward_section(
        &self,
        i: usize,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
    ) -> Result<Var> {
        let blocks = super::section(&self.stages, i, &self.name)?;
        let mut h = x;
        for block in blocks {
            h = block.forward(g, store, h, train)?;
        }
        Ok(h)
    }
    fn head(&self, g: &mut Graph, store: &mut ParamStore, x: Var, _train: bool) -> Result<Var> {
        // AvgPool2d(8) on the 8x8 map and F.avg_pool2d over the whole map are the same mean.
        let h = layers::global_avg_pool(g, x)?;
        self.head.traced_forward(g, store, h)
    }
}
