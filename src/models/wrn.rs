//! Wide ResNet WRN-d-k of the QD/LMA codebases: pre-activation blocks, n = (d-4)/6 blocks per
//! stage, widths 16k/32k/64k. Stem `conv1` (3x3, with bias), `layer1..3`, head `bn1` (momentum
//! 0.9) → ReLU → average over the 8x8 map → `linear`. Convs: xavier_uniform(gain sqrt 2), bias 0.
//!
//! Sections: feature 0 = conv1 output, section i = `layer{i+1}`, head = bn1/ReLU/pool/linear.

use super::builder::Builder;
use super::layers::{self, BatchNorm, Conv2d, ConvSpec, Linear};
use super::{Input, Model};
use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::init::Init;
use crate::nn::ParamStore;
use crate::ops::elementwise::{add, relu};
use crate::rng::Rng;
use std::sync::atomic::{AtomicU64, Ordering};

const CONV_INIT: Init = Init::XavierUniform(std::f32::consts::SQRT_2);
const BIAS_INIT: Init = Init::Constant(0.0);

fn conv(
    b: &mut Builder,
    name: &str,
    i: usize,
    o: usize,
    k: usize,
    stride: usize,
) -> Result<Conv2d> {
    let spec = ConvSpec {
        bias: true,
        bias_init: BIAS_INIT,
        ..ConvSpec::same_size(i, o, k, stride, CONV_INIT)
    };
    Conv2d::build(b, name, spec)
}

struct Block {
    bn1: BatchNorm,
    conv1: Conv2d,
    bn2: BatchNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Block {
    fn new(
        b: &mut Builder,
        name: &str,
        in_planes: usize,
        planes: usize,
        stride: usize,
    ) -> Result<Block> {
        let k = |n: &str| layers::key(name, n);
        let bn1 = BatchNorm::standard(b, &k("bn1"), in_planes)?;
        let conv1 = conv(b, &k("conv1"), in_planes, planes, 3, 1)?;
        let bn2 = BatchNorm::standard(b, &k("bn2"), planes)?;
        let conv2 = conv(b, &k("conv2"), planes, planes, 3, stride)?;
        let shortcut = if stride != 1 || in_planes != planes {
            Some(conv(b, &k("shortcut.0"), in_planes, planes, 1, stride)?)
        } else {
            None
        };
        Ok(Block {
            bn1,
            conv1,
            bn2,
            conv2,
            shortcut,
        })
    }
}

/// A QD/LMA Wide ResNet WRN-`depth`-`widen` on 3x32x32 images; sectioned (stem, three stages,
/// head).
pub struct Wrn {
    name: String,
    num_classes: usize,
    dropout: f32,
    conv1: Conv2d,
    stages: Vec<Vec<Block>>,
    bn1: BatchNorm,
    linear: Linear,
    /// Dropout masks come from `Rng::new(seed + call number)`: reproducible, and `forward` stays `&self`.
    dropout_seed: u64,
    dropout_calls: AtomicU64,
}

impl Wrn {
    /// Register a WRN-`depth`-`widen` with `dropout` (probability of zeroing, in training only)
    /// inside each block; an error unless depth = 6n + 4 (n >= 1) and widen, classes > 0.
    pub fn new(
        b: &mut Builder,
        name: &str,
        depth: usize,
        widen: usize,
        dropout: f32,
        num_classes: usize,
    ) -> Result<Wrn> {
        if depth < 10 || !(depth - 4).is_multiple_of(6) || widen == 0 || num_classes == 0 {
            return Err(Error::Config(format!(
                "`{name}`: a Wide ResNet needs depth = 6n+4 with n >= 1 (10, 16, 22, 28, …) and \
                 positive widen factor and classes; got depth {depth}, widen {widen}, \
                 {num_classes} classes"
            )));
        }
        limits::at_most(&format!("`{name}`: the depth"), depth, limits::MAX_DEPTH)?;
        limits::at_most(
            &format!("`{name}`: the widen factor"),
            widen,
            limits::MAX_LAYER_WIDTH,
        )?;
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::Config(format!(
                "`{name}`: dropout rate {dropout} must be in [0, 1)"
            )));
        }
        let n = (depth - 4) / 6;
        let conv1 = conv(b, "conv1", 3, 16, 3, 1)?;
        let mut in_planes = 16;
        let mut stages = Vec::new();
        for (s, width) in [16, 32, 64].into_iter().enumerate() {
            let planes = width * widen;
            let mut blocks = Vec::new();
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let block =
                    Block::new(b, &format!("layer{}.{i}", s + 1), in_planes, planes, stride)?;
                blocks.push(block);
                in_planes = planes;
            }
            stages.push(blocks);
        }
        let bn1 = BatchNorm::build(b, "bn1", in_planes, 0.9, true, Init::Constant(1.0))?;
        let linear = Linear::build(b, "linear", in_planes, num_classes, Init::PytorchDefault)?;
        Ok(Wrn {
            name: name.to_string(),
            num_classes,
            dropout,
            conv1,
            stages,
            bn1,
            linear,
            dropout_seed: b.seed(),
            dropout_calls: AtomicU64::new(0),
        })
    }

    fn block_forward(
        &self,
        blk: &Block,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
    ) -> Result<Var> {
        let h = blk.bn1.traced_forward(g, store, x, train, false, None)?;
        let h = relu(g, h)?;
        let mut h = blk.conv1.traced_forward(g, store, h)?;
        if train && self.dropout > 0.0 {
            let call = self.dropout_calls.fetch_add(1, Ordering::Relaxed);
            let mut rng = Rng::new(self.dropout_seed.wrapping_add(call));
            h = layers::dropout(g, h, self.dropout, &mut rng)?;
        }
        let h = blk.bn2.traced_forward(g, store, h, train, false, None)?;
        let h = relu(g, h)?;
        let h = blk.conv2.traced_forward(g, store, h)?;
        let s = match &blk.shortcut {
            Some(c) => c.traced_forward(g, store, x)?,
            None => x,
        };
        add(g, h, s)
    }
}

impl Model for Wrn {
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
    fn stem(&self, g: &mut Graph, store: &mut ParamStore, x: Input, _train: bool) -> Result<Var> {
        let x = x.float(&self.name)?;
        self.conv1.traced_forward(g, store, x)
    }
    fn forward_section(
        &self,
        i: usize,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
    ) -> Result<Var> {
        let mut h = x;
        for blk in super::section(&self.stages, i, &self.name)? {
            h = self.block_forward(blk, g, store, h, train)?;
        }
        Ok(h)
    }
    fn head(&self, g: &mut Graph, store: &mut ParamStore, x: Var, train: bool) -> Result<Var> {
        let h = self.bn1.traced_forward(g, store, x, train, false, None)?;
        let h = relu(g, h)?;
        let h = layers::global_avg_pool(g, h)?;
        self.linear.traced_forward(g, store, h)
    }
}
