//! TAKD plain CNNs `plane2` … `plane10`, described by token lists: `C<n>` = Conv2d 3x3 p1 (with
//! bias) + BatchNorm2d + ReLU, `MP` = MaxPool2d(2, 2), `FC<n>` = Linear (+ ReLU except after the
//! last). Convs and pools form the `conv_layers` Sequential (every module takes an index: conv j,
//! BN j+1, ReLU j+2, pool one), FCs the `fc_layers` Sequential (`fc_layers.0`, `fc_layers.2`, …).
//! PyTorch default init throughout.

use super::builder::Builder;
use super::layers::{self, BatchNorm, Conv2d, ConvBn, ConvSpec, Linear};
use super::{Input, Model};
use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::nn::init::Init;
use crate::nn::ParamStore;
use crate::ops::elementwise::relu;

/// The TAKD book entry for `plane<depth>`: the CIFAR-100 book when `num_classes == 100`, else the
/// CIFAR-10 book with `num_classes` outputs.
pub fn book(depth: usize, num_classes: usize) -> Result<Vec<String>> {
    let c10: &str = match depth {
        2 => "C16 MP C16 MP",
        4 => "C16 C16 MP C32 C32 MP",
        6 => "C16 C16 MP C32 C32 MP C64 C64 MP",
        8 => "C16 C16 MP C32 C32 MP C64 C64 MP C128 C128 MP FC64",
        10 => "C32 C32 MP C64 C64 MP C128 C128 MP C256 C256 C256 C256 MP FC128",
        _ => "",
    };
    let c100: &str = match depth {
        2 => "C32 MP C32 MP",
        4 => "C32 C32 MP C64 C64 MP",
        // No third pool in the CIFAR-100 book: 8*8*128 = 8192 classifier inputs.
        6 => "C32 C32 MP C64 C64 MP C128 C128",
        8 => "C32 C32 MP C64 C64 MP C128 C128 MP C256 C256 MP FC64",
        10 => "C32 C32 MP C64 C64 MP C128 C128 MP C256 C256 C256 C256 MP FC512",
        _ => "",
    };
    let body = if num_classes == 100 { c100 } else { c10 };
    if body.is_empty() {
        return Err(Error::Config(format!(
            "`plane{depth}`: plain CNNs exist for depths 2, 4, 6, 8 and 10"
        )));
    }
    let mut tokens: Vec<String> = body.split(' ').map(str::to_string).collect();
    tokens.push(format!("FC{num_classes}"));
    Ok(tokens)
}

enum Stage {
    Conv(ConvBn),
    Pool,
}

/// A TAKD plain CNN on 3x32x32 images, built from its token list.
pub struct Plane {
    name: String,
    num_classes: usize,
    features: Vec<Stage>,
    classifier: Vec<Linear>,
}

impl Plane {
    /// Register the layers `tokens` describe (`C<n>`, `MP`, `FC<n>`; see the module docs) under
    /// `name`; an error for an unknown token, a `C`/`MP` after an `FC`, too many `MP`s for 32x32,
    /// or a last `FC` whose width is not `num_classes`.
    pub fn new(
        b: &mut Builder,
        name: &str,
        tokens: &[String],
        num_classes: usize,
    ) -> Result<Plane> {
        let bad = |why: String| Error::Config(format!("plane model `{name}` {tokens:?}: {why}"));
        let (mut channels, mut size) = (3usize, 32usize);
        let (mut conv_index, mut fc_index) = (0usize, 0usize);
        let mut features = Vec::new();
        let mut classifier: Vec<Linear> = Vec::new();
        for tok in tokens {
            if tok == "MP" {
                if !classifier.is_empty() {
                    return Err(bad("`MP` after an `FC` token".into()));
                }
                if size < 2 {
                    return Err(bad("too many `MP` tokens for a 32x32 input".into()));
                }
                features.push(Stage::Pool);
                size /= 2;
                conv_index += 1;
            } else if let Some(n) = tok.strip_prefix("FC").and_then(|n| n.parse::<usize>().ok()) {
                let in_features = classifier
                    .last()
                    .map_or(channels * size * size, |l| l.out_features);
                let fc_name = format!("fc_layers.{fc_index}");
                classifier.push(Linear::build(
                    b,
                    &fc_name,
                    in_features,
                    n,
                    Init::PytorchDefault,
                )?);
                fc_index += 2;
            } else if let Some(n) = tok.strip_prefix('C').and_then(|n| n.parse::<usize>().ok()) {
                if !classifier.is_empty() {
                    return Err(bad(format!("`{tok}` after an `FC` token")));
                }
                let spec = ConvSpec {
                    in_channels: channels,
                    out_channels: n,
                    kernel: (3, 3),
                    stride: 1,
                    padding: (1, 1),
                    bias: true,
                    weight_init: Init::PytorchDefault,
                    bias_init: Init::PytorchDefault,
                };
                let conv = Conv2d::build(b, &format!("conv_layers.{conv_index}"), spec)?;
                let bn = BatchNorm::standard(b, &format!("conv_layers.{}", conv_index + 1), n)?;
                features.push(Stage::Conv(ConvBn { conv, bn }));
                channels = n;
                conv_index += 3;
            } else {
                return Err(bad(format!(
                    "unknown token `{tok}` (tokens: C<n>, MP, FC<n>)"
                )));
            }
        }
        match classifier.last() {
            Some(l) if l.out_features == num_classes => {}
            Some(l) => {
                return Err(bad(format!(
                    "the last FC has {} outputs but num_classes is {num_classes}",
                    l.out_features
                )))
            }
            None => return Err(bad("needs at least one FC token".into())),
        }
        Ok(Plane {
            name: name.to_string(),
            num_classes,
            features,
            classifier,
        })
    }
}

impl Model for Plane {
    fn architecture(&self) -> &str {
        &self.name
    }
    fn input_shape(&self) -> Vec<usize> {
        vec![3, 32, 32]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn forward(&self, g: &mut Graph, store: &mut ParamStore, x: Input, train: bool) -> Result<Var> {
        let mut h = x.float(&self.name)?;
        for stage in &self.features {
            h = match stage {
                Stage::Conv(conv_bn) => conv_bn.forward(g, store, h, None, true, train)?,
                Stage::Pool => layers::max_pool2d(g, h, 2, 2, 0)?,
            };
        }
        h = layers::flatten(g, h)?;
        for (i, fc) in self.classifier.iter().enumerate() {
            h = fc.traced_forward(g, store, h)?;
            if i + 1 < self.classifier.len() {
                h = relu(g, h)?;
            }
        }
        Ok(h)
    }
}
