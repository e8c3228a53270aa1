//! `lit-engine bench`: whole training steps timed on one device, printed as JSON lines in the
//! same shape as `benches/pytorch_steps.py`, so the two can be run back to back on one machine
//! and compared as a ratio (`--compare-pytorch` does both).
//!
//! * `step`: one SGD step (forward, cross-entropy, backward, SGD momentum 0.9, wd 1e-4) of a model;
//! * `kd`:   a teacher forward (eval, no tape) + a student KD step (`kd_lit`, T = 6, alpha = 0.95);
//! * `forward`: the teacher forward alone (eval, no tape): the inference cost inside a KD step.

use crate::autograd::Graph;
use crate::device::cuda::KernelTime;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::limits;
use crate::models::{self, Input, Model};
use crate::nn::ParamStore;
use crate::ops;
use crate::ops::kd::KdLoss;
use crate::precision::Precision;
use crate::rng::Rng;
use crate::tensor::{IndexTensor, Tensor};
use crate::train::optim::Sgd;
use std::time::Instant;

/// What to time.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// Architecture of the model whose training step is timed (the student of a KD step).
    pub student: String,
    /// `Some` for a KD step.
    pub teacher: Option<String>,
    /// Examples per step.
    pub batch: usize,
    /// Classes of the synthetic labels (the models' output width).
    pub num_classes: usize,
    /// Untimed steps run first (kernel compilation, allocator warm-up).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Time only the teacher's forward (eval, no tape); needs `teacher`.
    pub forward_only: bool,
    /// Conv / GEMM operand precision of every forward and backward (no loss scaling: the
    /// timed step is the arithmetic, not the scaler's bookkeeping).
    pub precision: Precision,
}

/// Times of the measured steps, in milliseconds.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// What was timed (`resnet20 step`, `resnet56 -> resnet20 kd step`, …).
    pub name: String,
    /// Wall time of each measured step, in order.
    pub times_ms: Vec<f64>,
    /// GPU time per kernel over the measured steps (`LIT_KERNEL_TIMES=1` on cuda).
    pub kernel_times: Option<Vec<KernelTime>>,
}

impl BenchResult {
    /// The fastest step.
    pub fn best_ms(&self) -> f64 {
        self.times_ms.iter().copied().fold(f64::INFINITY, f64::min)
    }
    /// The median step (the upper middle one for an even count).
    pub fn median_ms(&self) -> f64 {
        let mut v = self.times_ms.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}

fn random_batch(
    model: &dyn Model,
    batch: usize,
    classes: usize,
    device: &Device,
) -> Result<(Tensor, IndexTensor)> {
    if model.takes_ids() {
        return Err(Error::Config(format!(
            "bench: `{}` takes token ids; benchmark an image model",
            model.architecture()
        )));
    }
    let mut rng = Rng::new(7);
    let mut shape = vec![batch];
    shape.extend(model.input_shape());
    let n: usize = shape.iter().product();
    let x = Tensor::from_vec(&shape, rng.normal_vec(n, 1.0), device)?;
    let y: Vec<i32> = (0..batch).map(|_| rng.below(classes) as i32).collect();
    Ok((x, IndexTensor::from_vec(&[batch], y, device)?))
}

fn build(
    name: &str,
    classes: usize,
    device: &Device,
    seed: u64,
) -> Result<(Box<dyn Model>, ParamStore)> {
    let mut store = ParamStore::new();
    let model = models::build(name, classes, &mut store, device, &mut Rng::new(seed))?;
    Ok((model, store))
}

/// Run the benchmark described by `spec` on `device`.
pub fn run(spec: &BenchSpec, device: &Device) -> Result<BenchResult> {
    if spec.steps == 0 || spec.batch == 0 {
        return Err(Error::Config(
            "bench: --steps and --batch must be > 0".into(),
        ));
    }
    limits::at_most("bench: --batch", spec.batch, limits::MAX_BATCH)?;
    let (student, mut store) = build(&spec.student, spec.num_classes, device, 1)?;
    let teacher = match &spec.teacher {
        Some(t) => Some(build(t, spec.num_classes, device, 2)?),
        None => None,
    };
    let (x, y) = random_batch(student.as_ref(), spec.batch, spec.num_classes, device)?;
    let mut opt = Sgd::new(0.1, 0.9, 1e-4, false)?;
    let kd = KdLoss::Lit {
        temperature: 6.0,
        alpha: 0.95,
    };
    let mut teacher = teacher;
    let mut times = Vec::new();
    for i in 0..spec.warmup + spec.steps {
        if i == spec.warmup {
            device.take_kernel_times()?; // the warm-up's launches are not reported
        }
        let t0 = Instant::now();
        let teacher_logits = match &mut teacher {
            Some((t, tstore)) => {
                let mut tg = Graph::no_grad(device).with_precision(spec.precision);
                let xv = tg.constant(x.clone());
                let logits = t.forward(&mut tg, tstore, Input::Float(xv), false)?;
                Some(tg.value(logits).clone())
            }
            None => None,
        };
        if spec.forward_only {
            device.synchronize()?;
            if i >= spec.warmup {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            continue;
        }
        let mut g = Graph::new(device).with_precision(spec.precision);
        let xv = g.constant(x.clone());
        let logits = student.forward(&mut g, &mut store, Input::Float(xv), true)?;
        let loss = match &teacher_logits {
            Some(t) => ops::kd::kd_loss(&mut g, logits, t, &y, kd)?.loss,
            None => ops::loss::cross_entropy(&mut g, logits, &y, ops::loss::Reduction::Mean)?,
        };
        g.backward(loss)?;
        g.accumulate_param_grads(&mut store)?;
        drop(g);
        opt.step(&mut store)?;
        store.zero_grads();
        device.synchronize()?;
        if i >= spec.warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let name = match &spec.teacher {
        Some(t) if spec.forward_only => format!("{t}_forward_eval"),
        Some(t) => format!("kd_{t}_to_{}_step", spec.student),
        None => format!("{}_step", spec.student),
    };
    Ok(BenchResult {
        name,
        times_ms: times,
        kernel_times: device.take_kernel_times()?,
    })
}
