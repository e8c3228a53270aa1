//! `lit-engine info <arch>`: the layers of a model (module path, kind, output shape), parameters
//! per layer and in total, multiply-adds per forward pass of one example, and size in bytes.
//!
//! Shapes and multiply-adds come from running one forward pass on a single example on the CPU
//! (eval mode) with two thread-local recorders switched on: the layer tracer below, which the
//! layers of `models::layers` report to, and the multiply-add counter of `ops::flops`, which the
//! conv/linear/GEMM ops bump. Both cost one thread-local read per call when off.
//!
//! Convention (as in most papers and `ptflops`/`thop`): MACs = multiply-adds of convolutions and
//! linear layers, one per weight use; bias, BatchNorm, activations and pooling are not counted.
//! FLOPs = 2 × MACs. ResNet-20 on a 32×32 image: 40.55M MACs.

use super::Input;
use crate::autograd::{Graph, Var};
use crate::checkpoint::is_batch_counter;
use crate::device::Device;
use crate::error::Result;
use crate::nn::{EntryKind, ParamStore};
use crate::ops::flops;
use crate::rng::Rng;
use crate::tensor::{IndexTensor, Tensor};
use crate::units::{human_bytes, human_count};
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// One layer as the tracer saw it run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerInfo {
    /// Module path (`layer1.0.conv1`); empty for parameter-free functional steps (pooling…).
    pub path: String,
    /// PyTorch-style module kind (`Conv2d`, `BatchNorm2d`, `Linear`, `MaxPool1d`, …).
    pub kind: String,
    /// Output shape for one example (batch dimension dropped).
    pub output_shape: Vec<usize>,
    /// Trained parameters registered under `<path>.` (counted at the layer's first call).
    pub parameters: usize,
    /// Multiply-adds of this layer for one example.
    pub macs: u64,
}

/// What `lit-engine info` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelInfo {
    /// The architecture name the model was built from.
    pub architecture: String,
    /// Logits per example.
    pub num_classes: usize,
    /// Shape of one input example.
    pub input_shape: Vec<usize>,
    /// Every traced layer, in the order the forward pass ran them.
    pub layers: Vec<LayerInfo>,
    /// Trained parameters in total (= `models::count_parameters`).
    pub parameters: usize,
    /// Values in state_dict buffers (BatchNorm running statistics and counters).
    pub buffer_values: usize,
    /// Multiply-adds of one forward pass on one example (every op, traced layer or not).
    pub macs: u64,
    /// Bytes of the safetensors state_dict payload: f32 parameters and buffers, I64 counters.
    pub state_dict_bytes: u64,
}

impl ModelInfo {
    /// `2 × MACs`.
    pub fn flops(&self) -> u64 {
        2 * self.macs
    }

    /// Bytes of the parameters as f32.
    pub fn parameter_bytes(&self) -> u64 {
        4 * self.parameters as u64
    }

    /// Aligned text: one line per layer, then the totals.
    pub fn render(&self) -> String {
        let header = ["layer", "kind", "output", "params", "MACs"];
        let rows: Vec<[String; 5]> = self
            .layers
            .iter()
            .map(|l| {
                let shape: Vec<String> = l.output_shape.iter().map(|d| d.to_string()).collect();
                [
                    if l.path.is_empty() {
                        "-".into()
                    } else {
                        l.path.clone()
                    },
                    l.kind.clone(),
                    shape.join("x"),
                    if l.parameters == 0 {
                        "-".into()
                    } else {
                        l.parameters.to_string()
                    },
                    if l.macs == 0 {
                        "-".into()
                    } else {
                        l.macs.to_string()
                    },
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        // Text columns left-aligned, numbers right-aligned.
        let line = |r: &[String]| -> String {
            let cells: Vec<String> = r
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i >= 3 {
                        format!("{c:>w$}")
                    } else {
                        format!("{c:<w$}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string() + "\n"
        };
        let shape: Vec<String> = self.input_shape.iter().map(|d| d.to_string()).collect();
        let mut out = format!(
            "{} ({} classes), input {} per example\n\n",
            self.architecture,
            self.num_classes,
            shape.join("x")
        );
        out += &line(&header.map(String::from));
        for r in &rows {
            out += &line(r);
        }
        out += &format!(
            "\nparameters      {} ({})\n",
            self.parameters,
            human_count(self.parameters as u64)
        );
        out += &format!(
            "size            {} as f32 ({} bytes); state_dict {} with {} buffer values\n",
            human_bytes(self.parameter_bytes()),
            self.parameter_bytes(),
            human_bytes(self.state_dict_bytes),
            self.buffer_values
        );
        out += &format!(
            "multiply-adds   {} ({}) per example (conv + linear weights)\n",
            self.macs,
            human_count(self.macs)
        );
        out += &format!(
            "FLOPs           {} ({}) per example (2 x multiply-adds)\n",
            self.flops(),
            human_count(self.flops())
        );
        out
    }

    /// The fields above as a JSON object, plus `flops` (2 x `macs`); what `info --json` prints.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("model info is plain data");
        v["flops"] = self.flops().into();
        v
    }
}

// ---------- the layer tracer ----------

struct Traced {
    path: String,
    kind: String,
    input_shape: Option<Vec<usize>>,
    conv: Option<ConvWindow>,
    output_shape: Vec<usize>,
    macs: u64,
}

/// The window of a traced conv layer, per spatial axis (one entry for Conv1d, two for Conv2d).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvWindow {
    /// Kernel size.
    pub kernel: Vec<usize>,
    /// Stride.
    pub stride: Vec<usize>,
    /// Zero padding on each side.
    pub padding: Vec<usize>,
}

/// One layer call of a traced forward, with the shapes an op-level benchmark needs
/// ([`trace_calls`]); batch dimension included.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerCall {
    /// Module path (`layer1.0.conv1`); empty for parameter-free steps.
    pub path: String,
    /// PyTorch-style module kind (`Conv2d`, `BatchNorm2d`, `Linear`, `LMA`, …).
    pub kind: String,
    /// Shape of the layer's input, for the layers that report it (conv, linear).
    pub input_shape: Option<Vec<usize>>,
    /// The conv window, for conv layers.
    pub conv: Option<ConvWindow>,
    /// Shape of the layer's output.
    pub output_shape: Vec<usize>,
}

thread_local! {
    static TRACING: Cell<bool> = const { Cell::new(false) };
    static TRACE: RefCell<Vec<Traced>> = const { RefCell::new(Vec::new()) };
}

/// Whether [`model_info`] is tracing layer by layer on this thread (fused paths stay off then).
pub(crate) fn is_tracing() -> bool {
    TRACING.with(Cell::get)
}

/// Run one layer's forward `f`; while [`model_info`] traces, record its path, kind, output shape
/// and the multiply-adds it performed. Called by every layer in `models::layers`.
pub(crate) fn traced(
    g: &mut Graph,
    path: &str,
    kind: &str,
    f: impl FnOnce(&mut Graph) -> Result<Var>,
) -> Result<Var> {
    traced_call(g, (path, kind), None, f)
}

/// [`traced`] that also records the shape of the input `x` and, for a conv, its window.
pub(crate) fn traced_with_input(
    g: &mut Graph,
    (path, kind): (&str, &str),
    x: Var,
    conv: Option<ConvWindow>,
    f: impl FnOnce(&mut Graph) -> Result<Var>,
) -> Result<Var> {
    if !TRACING.with(Cell::get) {
        return f(g);
    }
    let input_shape = g.value(x).shape().to_vec();
    traced_call(g, (path, kind), Some((input_shape, conv)), f)
}

fn traced_call(
    g: &mut Graph,
    (path, kind): (&str, &str),
    input: Option<(Vec<usize>, Option<ConvWindow>)>,
    f: impl FnOnce(&mut Graph) -> Result<Var>,
) -> Result<Var> {
    if !TRACING.with(Cell::get) {
        return f(g);
    }
    let before = flops::macs_so_far().unwrap_or(0);
    let y = f(g)?;
    let macs = flops::macs_so_far().unwrap_or(0) - before;
    let output_shape = g.value(y).shape().to_vec();
    let (input_shape, conv) = match input {
        Some((shape, conv)) => (Some(shape), conv),
        None => (None, None),
    };
    TRACE.with(|t| {
        t.borrow_mut().push(Traced {
            path: path.to_string(),
            kind: kind.to_string(),
            input_shape,
            conv,
            output_shape,
            macs,
        })
    });
    Ok(y)
}

/// Switches tracing off and empties the trace however the traced forward ends.
struct TraceGuard;

impl TraceGuard {
    fn start() -> TraceGuard {
        TRACE.with(|t| t.borrow_mut().clear());
        TRACING.with(|t| t.set(true));
        TraceGuard
    }
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        TRACING.with(|t| t.set(false));
        TRACE.with(|t| t.borrow_mut().clear());
    }
}

/// What one traced forward saw.
struct TracedForward {
    model: Box<dyn super::Model>,
    store: ParamStore,
    /// The layers in the order they ran.
    traced: Vec<Traced>,
    /// Multiply-adds of the whole pass.
    macs: u64,
}

/// One traced eval forward of `arch` on a single example on the CPU.
fn trace_forward(arch: &str, num_classes: usize) -> Result<TracedForward> {
    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    let mut rng = Rng::new(0);
    let model = super::build(arch, num_classes, &mut store, &dev, &mut rng)?;
    let input_shape = model.input_shape();
    let mut batch_shape = vec![1];
    batch_shape.extend_from_slice(&input_shape);
    let numel: usize = input_shape.iter().product();

    let mut g = Graph::no_grad(&dev);
    let guard = TraceGuard::start();
    let (forward, macs) = flops::count_macs(|| -> Result<()> {
        if model.takes_ids() {
            // Id 0 is valid in every vocabulary; the values do not change shapes or MACs.
            let ids = IndexTensor::from_vec(&batch_shape, vec![0; numel], &dev)?;
            model.forward(&mut g, &mut store, Input::Ids(&ids), false)?;
        } else {
            let x = Tensor::from_vec(&batch_shape, rng.normal_vec(numel, 1.0), &dev)?;
            let x = g.constant(x);
            model.forward(&mut g, &mut store, Input::Float(x), false)?;
        }
        Ok(())
    });
    forward?;
    let traced = TRACE.with(|t| std::mem::take(&mut *t.borrow_mut()));
    drop(guard);
    Ok(TracedForward {
        model,
        store,
        traced,
        macs,
    })
}

/// What [`trace_calls`] saw of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelTrace {
    /// The layer calls in the order they ran.
    pub calls: Vec<LayerCall>,
    /// Every trained parameter's name and shape, in registration order.
    pub params: Vec<(String, Vec<usize>)>,
}

/// The layer calls of one eval forward of `arch` on a single example (batch dimension 1), in the
/// order they ran, and its parameters: what the kernel lab derives its op shapes from.
pub fn trace_calls(arch: &str, num_classes: usize) -> Result<ModelTrace> {
    let TracedForward { store, traced, .. } = trace_forward(arch, num_classes)?;
    let calls = traced
        .into_iter()
        .map(|t| LayerCall {
            path: t.path,
            kind: t.kind,
            input_shape: t.input_shape,
            conv: t.conv,
            output_shape: t.output_shape,
        })
        .collect();
    let params = store
        .iter()
        .filter(|(_, p)| p.kind == EntryKind::Param)
        .map(|(name, p)| (name.to_string(), p.value.shape().to_vec()))
        .collect();
    Ok(ModelTrace { calls, params })
}

/// Layers, parameters and multiply-adds of `arch` built for `num_classes` classes.
pub fn model_info(arch: &str, num_classes: usize) -> Result<ModelInfo> {
    let TracedForward {
        model,
        store,
        traced,
        macs,
    } = trace_forward(arch, num_classes)?;
    let input_shape = model.input_shape();

    // Parameters belong to the first layer run under their module path.
    let mut first_call: HashMap<&str, usize> = HashMap::new();
    for (i, t) in traced.iter().enumerate() {
        if !t.path.is_empty() {
            first_call.entry(t.path.as_str()).or_insert(i);
        }
    }
    let mut layer_params = vec![0usize; traced.len()];
    let mut unattributed = 0usize;
    let (mut parameters, mut buffer_values, mut state_dict_bytes) = (0usize, 0usize, 0u64);
    for (name, p) in store.iter() {
        let n = p.value.numel();
        match p.kind {
            EntryKind::Param => {
                parameters += n;
                state_dict_bytes += 4 * n as u64;
                let module = name.rsplit_once('.').map_or("", |(m, _)| m);
                match first_call.get(module) {
                    Some(&i) => layer_params[i] += n,
                    None => unattributed += n,
                }
            }
            EntryKind::Buffer => {
                buffer_values += n;
                state_dict_bytes += if is_batch_counter(name) { 8 } else { 4 } * n as u64;
            }
            EntryKind::State => {}
        }
    }
    let mut layers: Vec<LayerInfo> = traced
        .into_iter()
        .zip(layer_params)
        .map(|(t, parameters)| LayerInfo {
            path: t.path,
            kind: t.kind,
            output_shape: t.output_shape.get(1..).unwrap_or_default().to_vec(),
            parameters,
            macs: t.macs,
        })
        .collect();
    // Keep the totals honest if a model registers parameters outside a traced layer.
    if unattributed > 0 {
        layers.push(LayerInfo {
            path: "(outside traced layers)".into(),
            kind: "-".into(),
            output_shape: Vec::new(),
            parameters: unattributed,
            macs: 0,
        });
    }
    Ok(ModelInfo {
        architecture: model.architecture().to_string(),
        num_classes,
        input_shape,
        layers,
        parameters,
        buffer_values,
        macs,
        state_dict_bytes,
    })
}
