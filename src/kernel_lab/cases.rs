//! The lab's cases: one kernel pass (forward, input gradient, weight gradient, …) of one op
//! shape. A case makes its operands (seeded by its name), runs on a device through the engine's
//! public op functions, says how much work it does, how close to the reference it must come, and
//! describes itself to the PyTorch script.

use super::shapes::{OpShape, ShapeUse, QUANT_BITS, QUANT_BUCKET};
use crate::device::Device;
use crate::distill::quantize::quantize_uniform;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::batchnorm::{self, BatchNormArgs, Mode, RunningStats};
use crate::ops::conv::{self, ConvGeometry};
use crate::ops::flops::dot_product_flops;
use crate::ops::kd::{kd_backward, kd_forward, KdLoss};
use crate::ops::lma::{lma_backward, lma_forward, LmaConfig};
use crate::ops::matmul::{
    linear_backward_cpu, linear_backward_with, linear_forward_cpu, linear_forward_with,
};
use crate::ops::softmax::softmax_forward;
use crate::precision::Precision;
use crate::rng::Rng;
use crate::tensor::{IndexTensor, Tensor};
use crate::train::optim::Sgd;
use serde_json::json;

/// The softmax / KD temperature and KD weight of the cases (the seed config's).
const TEMPERATURE: f32 = 6.0;
const KD_ALPHA: f32 = 0.95;
/// The SGD hyperparameters of the step cases (the CIFAR recipes').
const SGD_LR: f32 = 0.1;
const SGD_MOMENTUM: f32 = 0.9;
const SGD_WEIGHT_DECAY: f32 = 5e-4;

/// Which pass of an op a case times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Convolution forward.
    ConvFwd,
    /// Convolution input gradient.
    ConvDx,
    /// Convolution weight gradient.
    ConvDw,
    /// BatchNorm train-mode forward (batch statistics, running statistics updated).
    BnFwd,
    /// BatchNorm train-mode backward.
    BnBwd,
    /// Linear forward (GEMM + bias).
    LinearFwd,
    /// Linear input gradient (GEMM).
    LinearDx,
    /// Linear weight gradient (GEMM).
    LinearDw,
    /// LMA forward (train: batch statistics).
    LmaFwd,
    /// LMA backward (input and segment-parameter gradients).
    LmaBwd,
    /// Softmax at the KD temperature.
    Softmax,
    /// The KD loss forward (LIT's: soft KL + hard cross-entropy).
    KdFwd,
    /// The KD loss gradient with respect to the student logits.
    KdBwd,
    /// Uniform 4-bit quantization in buckets of 256.
    Quantize,
    /// One SGD step (momentum, weight decay) over every parameter of a model.
    SgdStep,
}

impl Kernel {
    /// The name stem of its cases (`conv2d_fwd`, `bn_train_bwd`, …); conv stems say 1d or 2d.
    pub fn label(self, shape: &OpShape) -> &'static str {
        let conv1d = matches!(shape, OpShape::Conv { x, .. } if x.len() == 3);
        match self {
            Kernel::ConvFwd if conv1d => "conv1d_fwd",
            Kernel::ConvDx if conv1d => "conv1d_dx",
            Kernel::ConvDw if conv1d => "conv1d_dw",
            Kernel::ConvFwd => "conv2d_fwd",
            Kernel::ConvDx => "conv2d_dx",
            Kernel::ConvDw => "conv2d_dw",
            Kernel::BnFwd => "bn_train_fwd",
            Kernel::BnBwd => "bn_train_bwd",
            Kernel::LinearFwd => "linear_fwd",
            Kernel::LinearDx => "linear_dx",
            Kernel::LinearDw => "linear_dw",
            Kernel::LmaFwd => "lma_fwd",
            Kernel::LmaBwd => "lma_bwd",
            Kernel::Softmax => "softmax",
            Kernel::KdFwd => "kd_fwd",
            Kernel::KdBwd => "kd_bwd",
            Kernel::Quantize => "quantize",
            Kernel::SgdStep => "sgd_step",
        }
    }

    /// The passes the lab times for a shape.
    fn of(shape: &OpShape) -> &'static [Kernel] {
        match shape {
            OpShape::Conv { .. } => &[Kernel::ConvFwd, Kernel::ConvDx, Kernel::ConvDw],
            OpShape::BatchNorm { .. } => &[Kernel::BnFwd, Kernel::BnBwd],
            OpShape::Linear { .. } => &[Kernel::LinearFwd, Kernel::LinearDx, Kernel::LinearDw],
            OpShape::Lma { .. } => &[Kernel::LmaFwd, Kernel::LmaBwd],
            OpShape::Logits { .. } => &[Kernel::Softmax, Kernel::KdFwd, Kernel::KdBwd],
            OpShape::Quantize { .. } => &[Kernel::Quantize],
            OpShape::Sgd { .. } => &[Kernel::SgdStep],
        }
    }
}

/// What a case's speed is measured in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Work {
    /// Floating-point operations (2 per multiply-add): reported as TFLOP/s against the GEMM peak.
    Flops(u64),
    /// Bytes that must move at least once (each input read, each output written): reported as
    /// GB/s against the copy bandwidth.
    Bytes(u64),
}

/// One kernel pass of one op shape.
#[derive(Clone, Debug)]
pub struct Case {
    /// Unique name: the stem and the shape (`conv2d_fwd_n128_c16_32x32_o16_k3_s1_p1`).
    pub name: String,
    /// Which pass.
    pub kernel: Kernel,
    /// The operand shapes.
    pub shape: OpShape,
    /// Which models run it, and how often per forward.
    pub used_by: Vec<(String, usize)>,
}

/// `a x b x c`, or one value when every axis agrees (`k3` for a 3x3 kernel).
fn axes(v: &[usize]) -> String {
    if v.windows(2).all(|w| w[0] == w[1]) {
        v.first().map_or(String::new(), |d| d.to_string())
    } else {
        dims(v)
    }
}

fn dims(v: &[usize]) -> String {
    let parts: Vec<String> = v.iter().map(|d| d.to_string()).collect();
    parts.join("x")
}

/// `n<N>_c<C>[_<rest>]` of an activation shape.
fn activation_name(x: &[usize]) -> String {
    let mut s = format!("n{}_c{}", x[0], x.get(1).copied().unwrap_or(1));
    if x.len() > 2 {
        s += &format!("_{}", dims(&x[2..]));
    }
    s
}

fn shape_name(shape: &OpShape) -> String {
    match shape {
        OpShape::Conv {
            x,
            w,
            stride,
            padding,
        } => {
            let spatial = if x.len() == 3 {
                format!("l{}", x[2])
            } else {
                dims(&x[2..])
            };
            format!(
                "n{}_c{}_{spatial}_o{}_k{}_s{}_p{}",
                x[0],
                x[1],
                w[0],
                axes(&w[2..]),
                axes(stride),
                axes(padding)
            )
        }
        OpShape::BatchNorm { x } => activation_name(x),
        OpShape::Linear {
            rows,
            in_features,
            out_features,
        } => format!("n{rows}_i{in_features}_o{out_features}"),
        OpShape::Lma { x, bins } => format!("{}_b{bins}", activation_name(x)),
        OpShape::Logits { rows, classes } => format!("n{rows}_c{classes}"),
        OpShape::Quantize { shape } => format!("u{QUANT_BITS}_b{QUANT_BUCKET}_{}", dims(shape)),
        OpShape::Sgd { model, .. } => model.clone(),
    }
}

/// Every pass of every shape, in the order of the shapes.
pub fn expand(uses: &[ShapeUse]) -> Vec<Case> {
    let mut cases = Vec::new();
    for u in uses {
        for &kernel in Kernel::of(&u.shape) {
            cases.push(Case {
                name: format!("{}_{}", kernel.label(&u.shape), shape_name(&u.shape)),
                kernel,
                shape: u.shape.clone(),
                used_by: u.used_by.clone(),
            });
        }
    }
    cases
}

/// A conv shape as the 2-D geometry the engine runs (1-D: height 1).
fn geometry(shape: &OpShape) -> Result<ConvGeometry> {
    let OpShape::Conv {
        x,
        w,
        stride,
        padding,
    } = shape
    else {
        return Err(Error::Config("kernel lab: not a conv case".into()));
    };
    match (x.as_slice(), w.as_slice()) {
        ([n, c, l], [o, wc, k]) => ConvGeometry::new(
            &[*n, *c, 1, *l],
            &[*o, *wc, 1, *k],
            (1, stride[0]),
            (0, padding[0]),
        ),
        _ => ConvGeometry::new(x, w, (stride[0], stride[1]), (padding[0], padding[1])),
    }
}

impl Case {
    /// FLOPs of the conv and GEMM passes, bytes of the memory-bound ones.
    pub fn work(&self) -> Result<Work> {
        let f = |n: usize| 4 * n as u64;
        Ok(match &self.shape {
            OpShape::Conv { .. } => {
                let g = geometry(&self.shape)?;
                Work::Flops(dot_product_flops(
                    g.n * g.o * g.oh * g.ow,
                    g.c * g.kh * g.kw,
                ))
            }
            OpShape::Linear {
                rows,
                in_features,
                out_features,
            } => Work::Flops(dot_product_flops(rows * out_features, *in_features)),
            OpShape::BatchNorm { x } | OpShape::Lma { x, .. } => {
                let n: usize = x.iter().product();
                Work::Bytes(match self.kernel {
                    Kernel::BnFwd => f(2 * n),  // x in, y out
                    Kernel::BnBwd => f(3 * n),  // x, dy in, dx out
                    Kernel::LmaFwd => f(3 * n), // x in, y and segment index out
                    _ => f(4 * n),              // x, segment index, dy in, dx out
                })
            }
            OpShape::Logits { rows, classes } => {
                let n = rows * classes;
                Work::Bytes(match self.kernel {
                    Kernel::Softmax => f(2 * n),
                    Kernel::KdFwd => f(2 * n + rows),
                    _ => f(3 * n + rows),
                })
            }
            // v in; values and levels out.
            OpShape::Quantize { shape } => Work::Bytes(f(3 * shape.iter().product::<usize>())),
            // w, grad, momentum in; w, momentum out.
            OpShape::Sgd { params, .. } => Work::Bytes(f(5 * params
                .iter()
                .map(|p| p.iter().product::<usize>())
                .sum::<usize>())),
        })
    }

    /// Largest relative L2 error from the reference that still passes.
    pub fn tolerance(&self) -> f64 {
        match self.kernel {
            // A value that lands on a rounding boundary may take the neighbouring level.
            Kernel::Quantize => 1e-3,
            Kernel::SgdStep => 1e-5,
            _ => 1e-4,
        }
    }

    /// Whether a reduced precision rounds this case's operands (the conv and GEMM passes).
    pub fn rounds_operands(&self) -> bool {
        matches!(self.shape, OpShape::Conv { .. } | OpShape::Linear { .. })
    }

    /// The case as `benches/pytorch_kernels.py` reads it (one JSON object).
    pub fn spec(&self, precision: Precision) -> serde_json::Value {
        let mut v = match &self.shape {
            OpShape::Conv {
                x,
                w,
                stride,
                padding,
            } => json!({"x": x, "w": w, "stride": stride, "padding": padding}),
            OpShape::BatchNorm { x } => json!({"x": x}),
            OpShape::Linear {
                rows,
                in_features,
                out_features,
            } => json!({"rows": rows, "in": in_features, "out": out_features}),
            OpShape::Lma { x, bins } => json!({"x": x, "bins": bins}),
            OpShape::Logits { rows, classes } => json!({"rows": rows, "classes": classes,
                "temperature": TEMPERATURE, "alpha": KD_ALPHA}),
            OpShape::Quantize { shape } => {
                json!({"shape": shape, "bits": QUANT_BITS, "bucket": QUANT_BUCKET})
            }
            OpShape::Sgd { params, .. } => json!({"params": params, "lr": SGD_LR,
                "momentum": SGD_MOMENTUM, "weight_decay": SGD_WEIGHT_DECAY}),
        };
        v["case"] = self.name.clone().into();
        v["kernel"] = self.kernel.label(&self.shape).into();
        v["precision"] = precision.name().into();
        v
    }
}

/// A case's inputs on the host: float tensors `(shape, values)` and, for the KD cases, labels.
#[derive(Clone, Debug)]
pub struct Operands {
    /// Float operands in the order the case's op takes them.
    pub tensors: Vec<(Vec<usize>, Vec<f32>)>,
    /// Class labels (KD cases).
    pub labels: Vec<i32>,
}

impl Operands {
    /// The operands as the tensor cores of `precision` see them: a conv's `x`, `w`, `dy` and a
    /// Linear's `x`, `w`, `dy` rounded (the Linear bias stays fp32, as the ops add it); the other
    /// cases' operands are left as they are.
    pub fn rounded(&self, case: &Case, precision: Precision) -> Operands {
        let mut out = self.clone();
        if case.rounds_operands() {
            let linear = matches!(case.shape, OpShape::Linear { .. });
            for (i, (_, v)) in out.tensors.iter_mut().enumerate() {
                if !(linear && i == LINEAR_BIAS) {
                    precision.round_slice(v);
                }
            }
        }
        out
    }
}

/// Where [`operands`] puts a Linear case's bias.
const LINEAR_BIAS: usize = 2;

/// FNV-1a of the name: each case its own reproducible operands.
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The case's operands, drawn from its seed.
pub fn operands(case: &Case) -> Result<Operands> {
    let mut rng = Rng::new(seed_of(&case.name));
    let mut tensors = Vec::new();
    let mut normal = |shape: &[usize], rng: &mut Rng| {
        let n = shape.iter().product();
        tensors.push((shape.to_vec(), rng.normal_vec(n, 1.0)));
    };
    let mut labels = Vec::new();
    match &case.shape {
        OpShape::Conv { x, w, .. } => {
            let g = geometry(&case.shape)?;
            normal(x, &mut rng);
            normal(w, &mut rng);
            let mut y = vec![g.n, g.o];
            y.extend(if x.len() == 3 {
                vec![g.ow]
            } else {
                vec![g.oh, g.ow]
            });
            normal(&y, &mut rng);
        }
        OpShape::BatchNorm { x } => {
            let c = x[1];
            normal(x, &mut rng); // x
            normal(&[c], &mut rng); // gamma
            normal(&[c], &mut rng); // beta
            normal(x, &mut rng); // dy
        }
        OpShape::Linear {
            rows,
            in_features,
            out_features,
        } => {
            normal(&[*rows, *in_features], &mut rng);
            normal(&[*out_features, *in_features], &mut rng);
            normal(&[*out_features], &mut rng);
            normal(&[*rows, *out_features], &mut rng);
        }
        OpShape::Lma { x, bins } => {
            normal(x, &mut rng);
            normal(&[*bins], &mut rng); // alphas
            normal(&[*bins], &mut rng); // betas
            normal(x, &mut rng); // dy
        }
        OpShape::Logits { rows, classes } => {
            normal(&[*rows, *classes], &mut rng); // student
            normal(&[*rows, *classes], &mut rng); // teacher
            labels = (0..*rows).map(|_| rng.below(*classes) as i32).collect();
        }
        OpShape::Quantize { shape } => normal(shape, &mut rng),
        OpShape::Sgd { params, .. } => {
            for p in params {
                normal(p, &mut rng); // weight
                normal(p, &mut rng); // gradient
            }
        }
    }
    Ok(Operands { tensors, labels })
}

/// Train-mode, affine BatchNorm arguments (PyTorch's eps and momentum).
fn bn_args<'a>(
    gamma: &'a Tensor,
    beta: &'a Tensor,
    running: Option<&'a RunningStats>,
) -> BatchNormArgs<'a, &'a Tensor> {
    BatchNormArgs {
        mode: Mode::Train,
        affine: Some((gamma, beta)),
        running,
        ..BatchNormArgs::default()
    }
}

/// Runs the case once more and returns its outputs.
pub type Runner = Box<dyn FnMut() -> Result<Vec<Tensor>>>;

/// The case on `dev` under `precision`: operands uploaded, anything a backward needs from its
/// forward computed (untimed), and a [`Runner`] that runs just the timed pass. Conv and Linear
/// passes under a rounding precision take the path training takes (`ops::tensor_core`: the
/// tensor-core kernels on kernel devices; on cpu the rounding of the operands, then the fp32 op).
pub fn prepare(case: &Case, ops: &Operands, dev: &Device, precision: Precision) -> Result<Runner> {
    let rounding = precision.rounds_operands().then_some(precision);
    let t: Vec<Tensor> = ops
        .tensors
        .iter()
        .map(|(s, v)| Tensor::from_slice(s, v, dev))
        .collect::<Result<_>>()?;
    match &case.shape {
        OpShape::Conv {
            x, stride, padding, ..
        } => conv_runner(case.kernel, &t, x.len() == 3, (stride, padding), rounding),
        OpShape::BatchNorm { x } => batchnorm_runner(case.kernel, &t, x[1], dev),
        OpShape::Linear { .. } => linear_runner(case.kernel, &t, rounding),
        OpShape::Lma { bins, .. } => lma_runner(case.kernel, &t, *bins, dev),
        OpShape::Logits { rows, .. } => logits_runner(case.kernel, &t, *rows, ops, dev),
        OpShape::Quantize { .. } => {
            let v = t[0].clone();
            Ok(Box::new(move || {
                Ok(vec![
                    quantize_uniform(&v, QUANT_BITS, Some(QUANT_BUCKET))?.values,
                ])
            }))
        }
        OpShape::Sgd { .. } => sgd_runner(&t),
    }
}

/// Conv forward, input gradient or weight gradient (conv1d for 3-d inputs), by the tensor-core
/// entry points of `rounding` when given.
fn conv_runner(
    k: Kernel,
    t: &[Tensor],
    conv1d: bool,
    (stride, padding): (&[usize], &[usize]),
    rounding: Option<Precision>,
) -> Result<Runner> {
    let arg = |i: usize| t[i].clone();
    let (xt, wt, dy) = (arg(0), arg(1), arg(2));
    let need = match k {
        Kernel::ConvFwd => None,
        Kernel::ConvDx => Some((true, false, false)),
        _ => Some((false, true, false)),
    };
    let (stride, padding) = (stride.to_vec(), padding.to_vec());
    Ok(Box::new(move || {
        let forward = |x: &Tensor, w: &Tensor, s, p| conv::forward_2d(x, w, None, (s, p), rounding);
        let out = match (need, conv1d) {
            (None, true) => vec![conv::lift_1d_forward(
                &xt, &wt, stride[0], padding[0], forward,
            )?],
            (None, false) => vec![forward(
                &xt,
                &wt,
                (stride[0], stride[1]),
                (padding[0], padding[1]),
            )?],
            (Some(need), _) => {
                let backward = |x: &Tensor, w: &Tensor, dy: &Tensor, s, p| {
                    conv::backward_2d(x, w, dy, (s, p), need, rounding)
                };
                let (dx, dw, _) = match conv1d {
                    true => conv::lift_1d_backward(&xt, &wt, &dy, stride[0], padding[0], backward)?,
                    false => backward(
                        &xt,
                        &wt,
                        &dy,
                        (stride[0], stride[1]),
                        (padding[0], padding[1]),
                    )?,
                };
                dx.into_iter().chain(dw).collect()
            }
        };
        Ok(out)
    }))
}

/// BatchNorm train forward (with running statistics) or backward, over `channels` channels.
fn batchnorm_runner(k: Kernel, t: &[Tensor], channels: usize, dev: &Device) -> Result<Runner> {
    let arg = |i: usize| t[i].clone();
    let (xt, gamma, beta, dy) = (arg(0), arg(1), arg(2), arg(3));
    let running = RunningStats {
        mean: Tensor::zeros(&[channels], dev)?,
        var: Tensor::full(&[channels], 1.0, dev)?,
        num_batches_tracked: None,
    };
    if k == Kernel::BnFwd {
        return Ok(Box::new(move || {
            let f = batchnorm::forward(&xt, &bn_args(&gamma, &beta, Some(&running)))?;
            let mut out = vec![f.y];
            out.extend(f.running.map(|r| [r.mean, r.var]).into_iter().flatten());
            Ok(out)
        }));
    }
    let f = batchnorm::forward(&xt, &bn_args(&gamma, &beta, None))?;
    let saved = f
        .saved
        .ok_or_else(|| Error::Device("kernel lab: a train BatchNorm saved no statistics".into()))?;
    let y = f.y;
    Ok(Box::new(move || {
        let args = bn_args(&gamma, &beta, None);
        let g = batchnorm::backward(&xt, &dy, &y, &args, &saved, false)?;
        Ok(vec![g.dx, g.dgamma, g.dbeta])
    }))
}

/// Linear forward, input gradient or weight gradient, by the tensor-core entry point of
/// `rounding` when given.
fn linear_runner(k: Kernel, t: &[Tensor], rounding: Option<Precision>) -> Result<Runner> {
    let (xt, wt, bt, dy) = (t[0].clone(), t[1].clone(), t[2].clone(), t[3].clone());
    Ok(Box::new(move || {
        let backward = |need| linear_backward_with(&xt, &wt, &dy, need, rounding);
        Ok(match k {
            Kernel::LinearFwd => vec![linear_forward_with(&xt, &wt, Some(&bt), rounding)?],
            Kernel::LinearDx => backward((true, false, false))?.0.into_iter().collect(),
            _ => backward((false, true, false))?.1.into_iter().collect(),
        })
    }))
}

/// LMA forward or backward with `bins` segments.
fn lma_runner(k: Kernel, t: &[Tensor], bins: usize, dev: &Device) -> Result<Runner> {
    let (xt, alphas, betas, dy) = (t[0].clone(), t[1].clone(), t[2].clone(), t[3].clone());
    let (mv_mean, mv_std) = (Tensor::scalar(0.0, dev)?, Tensor::scalar(1.0, dev)?);
    let cfg = LmaConfig::new(bins, true);
    if k == Kernel::LmaFwd {
        return Ok(Box::new(move || {
            let f = lma_forward(&xt, &alphas, &betas, &mv_mean, &mv_std, cfg)?;
            Ok(vec![f.y])
        }));
    }
    let idx = lma_forward(&xt, &alphas, &betas, &mv_mean, &mv_std, cfg)?.segment_index;
    Ok(Box::new(move || {
        let (dx, da, db) = lma_backward(&xt, &alphas, &idx, &dy)?;
        Ok(vec![dx, da, db])
    }))
}

/// Softmax, KD loss forward or KD backward over `rows` logit rows.
fn logits_runner(
    k: Kernel,
    t: &[Tensor],
    rows: usize,
    ops: &Operands,
    dev: &Device,
) -> Result<Runner> {
    let (s, teacher) = (t[0].clone(), t[1].clone());
    let labels = IndexTensor::from_vec(&[rows], ops.labels.clone(), dev)?;
    let loss = KdLoss::Lit {
        temperature: TEMPERATURE as f64,
        alpha: KD_ALPHA as f64,
    };
    Ok(match k {
        Kernel::Softmax => Box::new(move || Ok(vec![softmax_forward(&s, TEMPERATURE)?])),
        Kernel::KdFwd => Box::new(move || Ok(vec![kd_forward(&s, &teacher, &labels, &loss)?.loss])),
        _ => {
            let fwd = kd_forward(&s, &teacher, &labels, &loss)?;
            let dloss = Tensor::scalar(1.0, dev)?;
            Box::new(move || {
                Ok(vec![kd_backward(
                    &s, &teacher, &labels, &loss, &fwd, &dloss,
                )?])
            })
        }
    })
}

/// One SGD step over the (weight, gradient) pairs in `t`.
fn sgd_runner(t: &[Tensor]) -> Result<Runner> {
    let mut store = ParamStore::new();
    let mut names = Vec::new();
    for (i, pair) in t.chunks(2).enumerate() {
        let name = format!("p{i}");
        store.add_param(&name, pair[0].clone())?;
        store.accumulate_grad(&name, pair[1].clone())?;
        names.push(name);
    }
    let mut opt = Sgd::new(SGD_LR, SGD_MOMENTUM, SGD_WEIGHT_DECAY, false)?;
    Ok(Box::new(move || {
        opt.step(&mut store)?;
        names
            .iter()
            .map(|n| Ok(store.get(n)?.value.clone()))
            .collect()
    }))
}

/// The case computed in f64 by the engine's generic CPU code, for the conv and GEMM passes whose
/// f32 cpu device takes other paths (AVX-512, implicit GEMM, Winograd); `None` for the others,
/// whose cpu device is itself the plain reference.
pub fn reference_f64(case: &Case, ops: &Operands) -> Result<Option<Vec<f64>>> {
    let v: Vec<Vec<f64>> = ops
        .tensors
        .iter()
        .map(|(_, v)| v.iter().map(|&x| x as f64).collect())
        .collect();
    Ok(match &case.shape {
        OpShape::Conv { .. } => {
            let g = geometry(&case.shape)?;
            let (x, w, dy) = (&v[0], &v[1], &v[2]);
            Some(match case.kernel {
                Kernel::ConvFwd => {
                    let mut y = vec![0.0; dy.len()];
                    conv::conv2d_forward_cpu(&g, x, w, None, &mut y);
                    y
                }
                Kernel::ConvDx => {
                    let mut dx = vec![0.0; x.len()];
                    conv::conv2d_backward_cpu(&g, x, w, dy, Some(&mut dx), None, None);
                    dx
                }
                _ => {
                    let mut dw = vec![0.0; w.len()];
                    conv::conv2d_backward_cpu(&g, x, w, dy, None, Some(&mut dw), None);
                    dw
                }
            })
        }
        OpShape::Linear {
            rows,
            in_features,
            out_features,
        } => {
            let (r, i, o) = (*rows, *in_features, *out_features);
            let (x, w, b, dy) = (&v[0], &v[1], &v[2], &v[3]);
            Some(match case.kernel {
                Kernel::LinearFwd => {
                    let mut y = vec![0.0; r * o];
                    linear_forward_cpu(x, w, Some(b), &mut y, r, i, o);
                    y
                }
                Kernel::LinearDx => {
                    let mut dx = vec![0.0; r * i];
                    linear_backward_cpu(x, w, dy, Some(&mut dx), None, None, r, i, o);
                    dx
                }
                _ => {
                    let mut dw = vec![0.0; o * i];
                    linear_backward_cpu(x, w, dy, None, Some(&mut dw), None, r, i, o);
                    dw
                }
            })
        }
        _ => None,
    })
}
