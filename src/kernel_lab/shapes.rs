//! The op shapes the seed models run, read off a traced forward of each model
//! ([`trace_calls`]) rather than typed in: every distinct conv, BatchNorm, Linear and LMA call,
//! the logits the softmax / KD loss see, the weights the quantizer rounds and the parameter list
//! an SGD step walks. Shapes are traced at batch 1 and scaled to the requested batch.

use crate::error::{Error, Result};
use crate::models::info::{trace_calls, LayerCall};
use std::collections::HashMap;

/// A model whose shapes the lab covers.
#[derive(Clone, Copy, Debug)]
pub struct SeedModel {
    /// Architecture name (`models::build`).
    pub arch: &'static str,
    /// Classes of its output layer.
    pub classes: usize,
    /// Whether its weights get quantize cases (the quantized-distillation students).
    pub quantized: bool,
    /// Whether it gets a whole-model SGD step case.
    pub sgd: bool,
}

/// The seed models: the CIFAR ResNets (20/56 are the KD pair; 110 the deepest teacher), a wide
/// ResNet, a plain net, Polino's conv net with LMA activations and the seed config's VDCNN.
pub const SEED_MODELS: &[SeedModel] = &[
    seed("resnet20", 10, true, true),
    seed("resnet56", 10, false, true),
    seed("resnet110", 10, false, false),
    seed("wrn-16-4", 10, false, true),
    seed("plane4", 10, false, false),
    seed("cfn-spec0-lma8", 10, true, false),
    seed("vdcnn9-maxpool", 5, false, false),
];

const fn seed(arch: &'static str, classes: usize, quantized: bool, sgd: bool) -> SeedModel {
    SeedModel {
        arch,
        classes,
        quantized,
        sgd,
    }
}

/// Bits and bucket size of the quantize cases (Polino et al.'s 4-bit, 256-value buckets).
pub const QUANT_BITS: u32 = 4;
/// Values per quantization bucket.
pub const QUANT_BUCKET: usize = 256;

/// One op's operand shapes (batch included).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpShape {
    /// `x [N, C, *spatial]` (one or two spatial axes), weight `[O, C, *kernel]`, no bias.
    Conv {
        /// Input shape.
        x: Vec<usize>,
        /// Weight shape.
        w: Vec<usize>,
        /// Stride per spatial axis.
        stride: Vec<usize>,
        /// Zero padding per spatial axis.
        padding: Vec<usize>,
    },
    /// BatchNorm (train mode, affine) over `x [N, C, *rest]`.
    BatchNorm {
        /// Input shape.
        x: Vec<usize>,
    },
    /// `y [rows, out] = x [rows, in] · wᵀ + b`.
    Linear {
        /// Rows (the batch).
        rows: usize,
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
    },
    /// The LMA activation over `x` with `bins` segments.
    Lma {
        /// Input shape.
        x: Vec<usize>,
        /// Segments.
        bins: usize,
    },
    /// Logits `[rows, classes]`: softmax and the KD loss.
    Logits {
        /// Rows (the batch).
        rows: usize,
        /// Classes.
        classes: usize,
    },
    /// Uniform quantization of one weight tensor.
    Quantize {
        /// The weight's shape.
        shape: Vec<usize>,
    },
    /// One SGD step (momentum, weight decay) over every parameter of `model`.
    Sgd {
        /// The architecture whose parameters these are.
        model: String,
        /// Each parameter's shape, in registration order.
        params: Vec<Vec<usize>>,
    },
}

/// A shape and the models that run it (`(architecture, calls per forward)`).
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeUse {
    /// The op's shapes.
    pub shape: OpShape,
    /// Which models run it and how often per forward pass.
    pub used_by: Vec<(String, usize)>,
}

/// `shape` with its batch dimension (the first) replaced by `batch`.
fn with_batch(shape: &[usize], batch: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    if let Some(n) = s.first_mut() {
        *n = batch;
    }
    s
}

/// The op a traced layer call runs, at `batch`; `None` for layers the lab does not time
/// (pooling, reshapes, embeddings, ReLU/PReLU/…).
fn layer_shape(
    call: &LayerCall,
    params: &HashMap<&str, &[usize]>,
    batch: usize,
) -> Result<Option<OpShape>> {
    let missing = |what: &str| {
        Error::Config(format!(
            "kernel lab: the trace of `{}` ({}) has no {what}",
            call.path, call.kind
        ))
    };
    let input = || {
        call.input_shape
            .as_deref()
            .ok_or_else(|| missing("input shape"))
    };
    Ok(match call.kind.as_str() {
        "Conv1d" | "Conv2d" => {
            let window = call.conv.as_ref().ok_or_else(|| missing("conv window"))?;
            let x = with_batch(input()?, batch);
            let mut w = vec![call.output_shape[1], x[1]];
            w.extend(&window.kernel);
            Some(OpShape::Conv {
                x,
                w,
                stride: window.stride.clone(),
                padding: window.padding.clone(),
            })
        }
        "BatchNorm1d" | "BatchNorm2d" => Some(OpShape::BatchNorm {
            x: with_batch(&call.output_shape, batch),
        }),
        "Linear" => {
            let (x, y) = (input()?, &call.output_shape);
            match (x, y.as_slice()) {
                ([_, i], [_, o]) => Some(OpShape::Linear {
                    rows: batch,
                    in_features: *i,
                    out_features: *o,
                }),
                _ => return Err(missing("2-D input and output")),
            }
        }
        "LMA" => {
            let alphas = format!("{}.alphas", call.path);
            let bins = params
                .get(alphas.as_str())
                .and_then(|s| s.first())
                .ok_or_else(|| missing("`alphas` parameter"))?;
            Some(OpShape::Lma {
                x: with_batch(&call.output_shape, batch),
                bins: *bins,
            })
        }
        _ => None,
    })
}

/// Collects shapes in first-seen order and counts their uses per model.
#[derive(Default)]
struct Collector {
    uses: Vec<ShapeUse>,
    index: HashMap<OpShape, usize>,
}

impl Collector {
    fn add(&mut self, shape: OpShape, model: &str) {
        let i = *self.index.entry(shape.clone()).or_insert_with(|| {
            self.uses.push(ShapeUse {
                shape,
                used_by: Vec::new(),
            });
            self.uses.len() - 1
        });
        let used_by = &mut self.uses[i].used_by;
        match used_by.iter_mut().find(|(m, _)| m == model) {
            Some((_, n)) => *n += 1,
            None => used_by.push((model.to_string(), 1)),
        }
    }
}

/// Every distinct op shape of `models` at `batch`, in the order the models first run them.
pub fn seed_shapes(models: &[SeedModel], batch: usize) -> Result<Vec<ShapeUse>> {
    let mut c = Collector::default();
    for m in models {
        let trace = trace_calls(m.arch, m.classes)?;
        let params: HashMap<&str, &[usize]> = trace
            .params
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        for call in &trace.calls {
            if let Some(shape) = layer_shape(call, &params, batch)? {
                c.add(shape, m.arch);
            }
        }
        c.add(
            OpShape::Logits {
                rows: batch,
                classes: m.classes,
            },
            m.arch,
        );
        if m.quantized {
            for (_, shape) in trace.params.iter().filter(|(_, s)| s.len() >= 2) {
                c.add(
                    OpShape::Quantize {
                        shape: shape.clone(),
                    },
                    m.arch,
                );
            }
        }
        if m.sgd {
            let params = trace.params.iter().map(|(_, s)| s.clone()).collect();
            c.add(
                OpShape::Sgd {
                    model: m.arch.to_string(),
                    params,
                },
                m.arch,
            );
        }
    }
    Ok(c.uses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet20_shapes_come_from_its_trace() {
        let uses = seed_shapes(&[seed("resnet20", 10, true, true)], 128).unwrap();
        let convs: Vec<&ShapeUse> = uses
            .iter()
            .filter(|u| matches!(u.shape, OpShape::Conv { .. }))
            .collect();
        // stem, 3 same-size 3x3 convs (16/32/64 channels), 2 stride-2 transitions: 6 shapes.
        assert_eq!(convs.len(), 6, "{convs:#?}");
        let stem = &convs[0];
        assert_eq!(
            stem.shape,
            OpShape::Conv {
                x: vec![128, 3, 32, 32],
                w: vec![16, 3, 3, 3],
                stride: vec![1, 1],
                padding: vec![1, 1],
            }
        );
        // 19 convs per forward in all.
        let calls: usize = convs.iter().map(|u| u.used_by[0].1).sum();
        assert_eq!(calls, 19);
        assert!(uses.iter().any(|u| u.shape
            == OpShape::Linear {
                rows: 128,
                in_features: 64,
                out_features: 10
            }));
        // 19 conv weights, 19 BatchNorm weight/bias pairs, the classifier's weight and bias.
        assert!(uses
            .iter()
            .any(|u| matches!(&u.shape, OpShape::Sgd { params, .. } if params.len() == 59)));
    }
}
