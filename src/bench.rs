//! `lit-engine bench`: whole training steps timed on one device, printed as JSON lines in the
//! same shape as `benches/pytorch_steps.py`, so the two can be run back to back on one machine
//! and compared as a ratio (`--compare-pytorch` does both).
//!
//! * `step`: one SGD step (forward, cross-entropy, backward, SGD momentum 0.9, wd 1e-4) of a model;
//! * `kd`:   a teacher forward (eval, no tape) + a student KD step (`kd_lit`, T = 6, alpha = 0.95);
//! * `forward`: the teacher forward alone (eval, no tape): the inference cost inside a KD step.
//!
//! On cuda and emu a result also counts kernel launches per step ([`crate::device::Gpu::launches`]):
//! the number a CUDA graph of the step would replace by one.
//!
//! The PyTorch script times each bench in many configurations (layout, eager or `torch.compile`
//! modes, precision) and names each in its JSON lines; [`best_pytorch_config`] picks the one a
//! lit-engine time of a given precision is compared with.

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
use crate::train::step_graph::{capture_store_step, store_addresses, store_unchanged, StepOutputs};
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
    /// Capture the step once after the warm-up and time its replays (one graph launch per step;
    /// cuda and emu). The step reads nothing back, so it captures as it is.
    pub graph: bool,
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
    /// Kernel launches per measured step (cuda and emu; `None` on cpu).
    pub launches_per_step: Option<f64>,
    /// With [`BenchSpec::graph`]: the kernels one graph launch replays.
    pub graph_kernels: Option<usize>,
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

/// What `spec` times, as the result and the PyTorch script name it (`resnet20_step`,
/// `kd_resnet56_to_resnet20_step`, `resnet56_forward_eval`).
pub fn bench_name(spec: &BenchSpec) -> String {
    match &spec.teacher {
        Some(t) if spec.forward_only => format!("{t}_forward_eval"),
        Some(t) => format!("kd_{t}_to_{}_step", spec.student),
        None => format!("{}_step", spec.student),
    }
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
    let mut teacher = teacher;
    let mut times = Vec::new();
    let mut launches_before = None;
    let mut graph = None;
    for i in 0..spec.warmup + spec.steps {
        if i == spec.warmup {
            device.take_kernel_times()?; // the warm-up's launches are not reported
            if spec.graph {
                let gpu = device.gpu().ok_or_else(|| {
                    Error::Config("bench: --graph needs a cuda or emu device".into())
                })?;
                let outputs = StepOutputs::values(match spec.forward_only {
                    true => vec![],
                    false => vec![Tensor::zeros(&[], device)?],
                });
                let teacher_at = teacher.as_ref().map(|(_, ts)| store_addresses(gpu, ts));
                let captured = capture_store_step(gpu, &mut store, outputs, |store| {
                    let t = teacher.as_mut().map(|(t, ts)| (&**t, ts));
                    let loss =
                        one_step(spec, device, t, student.as_ref(), store, &mut opt, &x, &y)?;
                    Ok(StepOutputs::values(loss.into_iter().collect()))
                })?;
                if let (Some(before), Some((_, ts))) = (&teacher_at, &teacher) {
                    if !store_unchanged(gpu, ts, before) {
                        return Err(Error::Device(
                            "bench --graph: the teacher's forward replaced entries of its store, \
                             which a captured step cannot do"
                                .into(),
                        ));
                    }
                }
                graph = Some((gpu.clone(), captured));
            }
            launches_before = device.launches();
        }
        let t0 = Instant::now();
        match &graph {
            Some((gpu, g)) => g.launch(gpu)?,
            None => {
                let t = teacher.as_mut().map(|(t, ts)| (&**t, ts));
                one_step(
                    spec,
                    device,
                    t,
                    student.as_ref(),
                    &mut store,
                    &mut opt,
                    &x,
                    &y,
                )?;
            }
        }
        device.synchronize()?;
        if i >= spec.warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let name = bench_name(spec);
    let launches_per_step = match (launches_before, device.launches()) {
        (Some(before), Some(after)) => Some((after - before) as f64 / spec.steps as f64),
        _ => None,
    };
    Ok(BenchResult {
        name,
        times_ms: times,
        kernel_times: device.take_kernel_times()?,
        launches_per_step,
        graph_kernels: graph.as_ref().map(|(_, g)| g.kernels()),
    })
}

/// One timed step: the teacher's forward (KD and forward benches), then unless `forward_only`
/// the student's training step. Reads nothing back; returns the student's loss.
#[allow(clippy::too_many_arguments)]
fn one_step(
    spec: &BenchSpec,
    device: &Device,
    teacher: Option<(&dyn Model, &mut ParamStore)>,
    student: &dyn Model,
    store: &mut ParamStore,
    opt: &mut Sgd,
    x: &Tensor,
    y: &IndexTensor,
) -> Result<Option<Tensor>> {
    let kd = KdLoss::Lit {
        temperature: 6.0,
        alpha: 0.95,
    };
    let teacher_logits = match teacher {
        Some((t, tstore)) => {
            let mut tg = Graph::no_grad(device).with_precision(spec.precision);
            let xv = tg.constant(x.clone());
            let logits = t.forward(&mut tg, tstore, Input::Float(xv), false)?;
            Some(tg.value(logits).clone())
        }
        None => None,
    };
    if spec.forward_only {
        return Ok(None);
    }
    let mut g = Graph::new(device).with_precision(spec.precision);
    let xv = g.constant(x.clone());
    let logits = student.forward(&mut g, store, Input::Float(xv), true)?;
    let loss = match &teacher_logits {
        Some(t) => ops::kd::kd_loss(&mut g, logits, t, y, kd)?.loss,
        None => ops::loss::cross_entropy(&mut g, logits, y, ops::loss::Reduction::Mean)?,
    };
    let value = g.value(loss).clone();
    g.backward(loss)?;
    g.accumulate_param_grads(store)?;
    drop(g);
    opt.step(store)?;
    store.zero_grads();
    Ok(Some(value))
}

/// One timing line of `benches/pytorch_steps.py`.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchTiming {
    /// The benchmark, named as lit-engine names it (`resnet20_step`, …).
    pub bench: String,
    /// The configuration, `<mode>/<layout>/<precision>` (`compile/channels_last/bf16`).
    pub config: String,
    /// `fp32` (TF32 off), `tf32` (PyTorch's default on Ampere+ GPUs), `bf16` or `fp16` (autocast).
    pub precision: String,
    /// Best step time, ms.
    pub ms: f64,
}

/// The timing lines in the script's output. Other lines, and lines of an older script that did
/// not name its configuration and precision, are left out.
pub fn parse_pytorch_timings(stdout: &str) -> Vec<TorchTiming> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(TorchTiming {
                bench: v["bench"].as_str()?.to_string(),
                config: v["config"].as_str()?.to_string(),
                precision: v["precision"].as_str()?.to_string(),
                ms: v["ms"].as_f64().filter(|ms| ms.is_finite() && *ms > 0.0)?,
            })
        })
        .collect()
}

/// The fastest PyTorch configuration of `bench` in exactly `precision`: the reference a
/// lit-engine time at that precision is compared with. An fp32 run is compared only with fp32
/// configurations (TF32 off, eager or compiled), never with PyTorch's TF32 default, which counts
/// as `tf32`. `None` when no configuration of that precision was timed.
pub fn best_pytorch_config<'a>(
    timings: &'a [TorchTiming],
    bench: &str,
    precision: Precision,
) -> Option<&'a TorchTiming> {
    timings
        .iter()
        .filter(|t| t.bench == bench && t.precision == precision.name())
        .min_by(|a, b| a.ms.total_cmp(&b.ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = r#"{"bench": "resnet20_step", "config": "eager/nchw/fp32", "precision": "fp32", "ms": 9.5}
{"bench": "resnet20_step", "config": "eager/nchw/tf32", "precision": "tf32", "ms": 5.1}
{"bench": "resnet20_step", "config": "compile/channels_last/fp32", "precision": "fp32", "ms": 7.25}
{"bench": "resnet20_step", "config": "reduce-overhead/channels_last/bf16", "precision": "bf16", "ms": 2.0}
{"bench": "resnet20_step", "config": "eager/channels_last/bf16", "precision": "bf16", "ms": 3.5}
{"bench": "kd_resnet56_to_resnet20_step", "config": "eager/nchw/fp32", "precision": "fp32", "ms": 1.0}
pytorch_steps.py: skipping max-autotune/*/fp16: CUDA-only
{"bench": "resnet20_step", "layout": "nchw", "ms": 0.5}
{"bench": "resnet20_step", "config": "eager/nchw/fp16", "precision": "fp16", "ms": null}"#;

    #[test]
    fn parsing_keeps_named_timings_only() {
        let t = parse_pytorch_timings(OUTPUT);
        assert_eq!(t.len(), 6, "{t:?}");
        assert_eq!(
            t[2],
            TorchTiming {
                bench: "resnet20_step".into(),
                config: "compile/channels_last/fp32".into(),
                precision: "fp32".into(),
                ms: 7.25,
            }
        );
    }

    #[test]
    fn the_best_configuration_is_the_fastest_of_the_same_bench_and_precision() {
        let t = parse_pytorch_timings(OUTPUT);
        let best = |bench, p| best_pytorch_config(&t, bench, p).map(|b| b.config.as_str());
        // fp32 never takes PyTorch's faster TF32 default, nor another bench's time.
        assert_eq!(
            best("resnet20_step", Precision::Fp32),
            Some("compile/channels_last/fp32")
        );
        assert_eq!(
            best("resnet20_step", Precision::Tf32),
            Some("eager/nchw/tf32")
        );
        assert_eq!(
            best("resnet20_step", Precision::Bf16),
            Some("reduce-overhead/channels_last/bf16")
        );
        assert_eq!(best("resnet20_step", Precision::Fp16), None);
        assert_eq!(
            best("kd_resnet56_to_resnet20_step", Precision::Fp32),
            Some("eager/nchw/fp32")
        );
        assert_eq!(best("resnet56_forward_eval", Precision::Fp32), None);
    }
}
