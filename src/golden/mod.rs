//! The generic runner for PyTorch-generated golden cases (found by [`locate`], format
//! `lit-engine-golden/1`). Everything is driven by each case's JSON: which op or protocol to run,
//! which tensors are inputs, which are expectations and with what tolerance. Nothing is special-cased
//! by file name, so new cases in the same format are picked up as they are.
//!
//! A case whose `requires` names a capability not implemented yet is skipped with the reason.

mod adapters_act_loss_quant;
mod adapters_conv;
mod adapters_nmt_lstm;
mod adapters_nmt_transformer;
mod adapters_norm_pool;
pub mod locate;
pub mod nmt_step;
mod protocols;

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::{IndexTensor, Tensor};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A tensor from a case file.
#[derive(Clone, Debug)]
pub enum Data {
    /// 32-bit floats.
    F32 {
        /// Dimensions.
        shape: Vec<usize>,
        /// Row-major values.
        values: Vec<f32>,
    },
    /// 64-bit integers (labels, ids, quantization levels).
    I64 {
        /// Dimensions.
        shape: Vec<usize>,
        /// Row-major values.
        values: Vec<i64>,
    },
}

impl Data {
    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Data::F32 { shape, .. } | Data::I64 { shape, .. } => shape,
        }
    }
}

/// One case: its JSON and its tensors.
pub struct Case {
    /// The case name (the file stem).
    pub name: String,
    /// The directory the case was read from (cases may refer to other cases in it).
    pub dir: PathBuf,
    /// The case's JSON: kind, op or model, attributes, tolerances, `requires`.
    pub json: Value,
    /// The case's tensors by name (`input.x`, `expect.grad.x`, …).
    pub tensors: HashMap<String, Data>,
}

/// What a run of a case produced: a value per expectation name.
pub type Produced = BTreeMap<String, Data>;

/// The result of running one case.
pub enum Outcome {
    /// Every expectation within its tolerance.
    Passed,
    /// One message per expectation that was off.
    Failed(Vec<String>),
    /// Not run, and why (a capability this engine lacks).
    Skipped(String),
}

impl Case {
    /// Read `<name>.json` and the `<name>.safetensors` beside it.
    pub fn load(json_path: &Path) -> Result<Case> {
        let text = std::fs::read_to_string(json_path).map_err(|e| Error::io(json_path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::data(json_path, format!("invalid JSON: {e}")))?;
        let st_path = json_path.with_extension("safetensors");
        let bytes = std::fs::read(&st_path).map_err(|e| Error::io(&st_path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::data(&st_path, format!("not a safetensors file: {e}")))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data = view.data();
            let t = match view.dtype() {
                safetensors::Dtype::F32 => Data::F32 {
                    shape,
                    values: data
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                },
                safetensors::Dtype::I64 => Data::I64 {
                    shape,
                    values: data
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                },
                other => {
                    return Err(Error::data(
                        &st_path,
                        format!("tensor {name}: unsupported dtype {other:?}"),
                    ))
                }
            };
            tensors.insert(name, t);
        }
        let name = json["case"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                json_path
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            });
        Ok(Case {
            dir: json_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            name,
            json,
            tensors,
        })
    }

    /// The tensor `name`, or an error naming the case.
    pub fn tensor(&self, name: &str) -> Result<&Data> {
        self.tensors.get(name).ok_or_else(|| {
            Error::Golden(format!(
                "case {}: tensor `{name}` missing from the safetensors file",
                self.name
            ))
        })
    }

    /// The F32 tensor `name` on `device`.
    pub fn f32_tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        match self.tensor(name)? {
            Data::F32 { shape, values } => Tensor::from_slice(shape, values, device),
            Data::I64 { .. } => Err(Error::Golden(format!(
                "case {}: `{name}` is I64, expected F32",
                self.name
            ))),
        }
    }

    /// The I64 tensor `name` on `device`, as i32 indices.
    pub fn index_tensor(&self, name: &str, device: &Device) -> Result<IndexTensor> {
        match self.tensor(name)? {
            Data::I64 { shape, values } => {
                let v: Vec<i32> = values
                    .iter()
                    .map(|&x| {
                        i32::try_from(x).map_err(|_| {
                            Error::Golden(format!("`{name}`: index {x} out of i32 range"))
                        })
                    })
                    .collect::<Result<_>>()?;
                IndexTensor::from_vec(shape, v, device)
            }
            Data::F32 { .. } => Err(Error::Golden(format!(
                "case {}: `{name}` is F32, expected I64",
                self.name
            ))),
        }
    }

    /// The number `attrs.<key>` of the case.
    pub fn attr_f64(&self, key: &str) -> Result<f64> {
        self.json["attrs"][key].as_f64().ok_or_else(|| {
            Error::Golden(format!(
                "case {}: attrs.{key} missing or not a number",
                self.name
            ))
        })
    }
    /// The string `attrs.<key>` of the case.
    pub fn attr_str(&self, key: &str) -> Result<&str> {
        self.json["attrs"][key].as_str().ok_or_else(|| {
            Error::Golden(format!(
                "case {}: attrs.{key} missing or not a string",
                self.name
            ))
        })
    }

    /// Compare every produced value with its expectation (present expectations only).
    pub fn compare(&self, produced: &Produced) -> Vec<String> {
        self.compare_measured(produced).0
    }

    /// [`compare`](Case::compare), plus how close each F32 expectation came to its bounds.
    pub fn compare_measured(&self, produced: &Produced) -> (Vec<String>, Vec<Margin>) {
        let mut failures = Vec::new();
        let mut margins = Vec::new();
        for (name, got) in produced {
            let Some(want) = self.tensors.get(name) else {
                failures.push(format!("{name}: produced but absent from the case file"));
                continue;
            };
            if got.shape() != want.shape() {
                failures.push(format!(
                    "{name}: shape {:?}, expected {:?}",
                    got.shape(),
                    want.shape()
                ));
                continue;
            }
            let meta = &self.json["tensors"][name];
            match (got, want) {
                (Data::F32 { values: a, .. }, Data::F32 { values: b, .. }) => {
                    let rel = meta["rel"].as_f64().unwrap_or(0.0);
                    let abs = meta["abs"].as_f64().unwrap_or(0.0);
                    let delta = match meta["delta_from"].as_str() {
                        Some(d) => match self.tensors.get(d) {
                            Some(Data::F32 { values, .. }) => Some(values.as_slice()),
                            _ => {
                                failures.push(format!("{name}: delta_from `{d}` missing"));
                                continue;
                            }
                        },
                        None => None,
                    };
                    if let Ok(closeness) = crate::testing::closeness(a, b, delta, rel, abs) {
                        margins.push(Margin {
                            tensor: name.clone(),
                            closeness,
                        });
                    }
                    if let Err(e) = crate::testing::check_close_delta(a, b, delta, rel, abs) {
                        failures.push(format!("{name}: {e}"));
                    }
                }
                (Data::I64 { values: a, .. }, Data::I64 { values: b, .. }) => {
                    let wrong = a.iter().zip(b).filter(|(x, y)| x != y).count();
                    if wrong > 0 {
                        failures.push(format!("{name}: {wrong} of {} integers differ", b.len()));
                    }
                }
                _ => failures.push(format!("{name}: dtype differs from the expectation")),
            }
        }
        (failures, margins)
    }
}

/// How close one F32 expectation came to its tolerance (for reporting the headroom of a run).
pub struct Margin {
    /// The expectation's name.
    pub tensor: String,
    /// Its error against its bounds.
    pub closeness: crate::testing::Closeness,
}

fn f32_data(t: &Tensor) -> Result<Data> {
    Ok(Data::F32 {
        shape: t.shape().to_vec(),
        values: t.to_vec()?,
    })
}

/// An op output as its expectation's dtype: integer outputs (segment indices, quantization levels)
/// come out of adapters as whole-valued f32 and are compared as I64 (exactly).
fn output_data(t: &Tensor, want: Option<&Data>) -> Result<Data> {
    let Some(Data::I64 { .. }) = want else {
        return f32_data(t);
    };
    let values = t
        .to_vec()?
        .into_iter()
        .map(|v| {
            if v.fract() == 0.0 && v.abs() < 9.0e15 {
                Ok(v as i64)
            } else {
                Err(Error::Golden(format!("integer output holds {v}")))
            }
        })
        .collect::<Result<_>>()?;
    Ok(Data::I64 {
        shape: t.shape().to_vec(),
        values,
    })
}

// ---------------------------------------------------------------------------------------------
// Capabilities: what this engine implements. A case is run only if all of its `requires` are here.

/// The inputs of an op case: float inputs as graph values, integer inputs (labels, ids) as tensors.
pub struct OpArgs {
    /// Float inputs by name, as graph values.
    pub vars: HashMap<String, Var>,
    /// Integer inputs (labels, ids) by name.
    pub indices: HashMap<String, IndexTensor>,
}

impl OpArgs {
    /// The float input `name`.
    pub fn var(&self, name: &str) -> Result<Var> {
        self.vars
            .get(name)
            .copied()
            .ok_or_else(|| Error::Golden(format!("op input `{name}` missing")))
    }
    /// The integer input `name`.
    pub fn index(&self, name: &str) -> Result<&IndexTensor> {
        self.indices
            .get(name)
            .ok_or_else(|| Error::Golden(format!("integer op input `{name}` missing")))
    }
}

/// An op adapter: build the op in `g` from the case's named inputs; return its named outputs.
pub type OpFn = fn(&mut Graph, &Case, &OpArgs) -> Result<HashMap<String, Var>>;
/// Op adapters by op name.
pub type OpTable = HashMap<&'static str, OpFn>;

/// Named outputs of an adapter.
pub fn outputs<const K: usize>(pairs: [(&str, Var); K]) -> Result<HashMap<String, Var>> {
    Ok(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn op_table() -> OpTable {
    let mut t: OpTable = HashMap::new();
    adapters_conv::register(&mut t);
    adapters_norm_pool::register(&mut t);
    adapters_act_loss_quant::register(&mut t);
    adapters_nmt_lstm::register(&mut t);
    adapters_nmt_transformer::register(&mut t);
    t.insert("relu", |g, _c, a| {
        outputs([("out", ops::elementwise::relu(g, a.var("x")?)?)])
    });
    t.insert("linear", |g, _c, a| {
        let bias = a.vars.get("bias").copied();
        outputs([(
            "out",
            ops::matmul::linear(g, a.var("x")?, a.var("weight")?, bias)?,
        )])
    });
    t.insert("softmax", |g, c, a| {
        last_dim(g, c, a.var("x")?)?;
        outputs([(
            "out",
            ops::softmax::softmax(g, a.var("x")?, c.attr_f64("temperature")? as f32)?,
        )])
    });
    t.insert("log_softmax", |g, c, a| {
        last_dim(g, c, a.var("x")?)?;
        let t = c.attr_f64("temperature")? as f32;
        outputs([("out", ops::softmax::log_softmax(g, a.var("x")?, t)?)])
    });
    t.insert("cross_entropy", |g, c, a| {
        let reduction = match c.attr_str("reduction")? {
            "mean" => ops::loss::Reduction::Mean,
            "sum" => ops::loss::Reduction::Sum,
            other => return Err(Error::Golden(format!("cross_entropy: reduction `{other}`"))),
        };
        let loss = ops::loss::cross_entropy(g, a.var("logits")?, a.index("labels")?, reduction)?;
        outputs([("loss", loss)])
    });
    t
}

/// The softmax-family ops run over the last dimension: check that `attrs.dim` names it.
fn last_dim(g: &Graph, c: &Case, x: Var) -> Result<()> {
    let rank = g.value(x).dims() as i64;
    let dim = c.json["attrs"]["dim"].as_i64().unwrap_or(-1);
    if dim == rank - 1 || dim == -1 {
        Ok(())
    } else {
        Err(Error::Golden(format!(
            "dim {dim} of a rank-{rank} tensor: only the last dimension is supported"
        )))
    }
}

/// Protocols implemented (besides `op`, whose support depends on the op).
const PROTOCOLS: &[&str] = &[
    "sgd_steps",
    "model_standard",
    "lit_distill",
    "kd_distill",
    "qd_step",
    "nmt_step",
];

/// Model capabilities (`model:<family>[_<variant>]`) the model zoo implements.
const MODEL_FAMILIES: &[&str] = &[
    "lit_resnet",
    "takd_resnet",
    "plane",
    "wrn",
    "conv_forward_net_qd",
    "conv_forward_net_lma",
    "vdcnn",
    "qd_lstm_nmt",
    "lma_transformer_nmt",
];

/// Ops that are run by a protocol of their own rather than by an op adapter.
const PROTOCOL_OPS: &[&str] = &["sgd"];

/// Whether this engine has capability `cap` (`op:<name>`, `protocol:<name>`, `model:<family>`).
pub fn supports(cap: &str) -> bool {
    match cap.split_once(':') {
        Some(("op", op)) => op_table().contains_key(op) || PROTOCOL_OPS.contains(&op),
        Some(("protocol", p)) => p == "op" || PROTOCOLS.contains(&p),
        Some(("model", m)) => MODEL_FAMILIES.contains(&m),
        _ => false,
    }
}

/// Run one case on one device.
pub fn run_case(case: &Case, device: &Device) -> Outcome {
    run_case_measured(case, device).0
}

/// [`run_case`], plus the margin of every F32 expectation that was compared.
pub fn run_case_measured(case: &Case, device: &Device) -> (Outcome, Vec<Margin>) {
    if case.json["format"].as_str() != Some("lit-engine-golden/1") {
        let msg = format!("unknown format {:?}", case.json["format"]);
        return (Outcome::Failed(vec![msg]), Vec::new());
    }
    let missing: Vec<String> = case.json["requires"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .filter(|c| !supports(c))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if !missing.is_empty() {
        let why = format!("not implemented yet: {}", missing.join(", "));
        return (Outcome::Skipped(why), Vec::new());
    }
    let protocol = case.json["protocol"].as_str().unwrap_or("");
    let produced = match protocol {
        "op" => run_op(case, device),
        "sgd_steps" => run_sgd_steps(case, device),
        "model_standard" => protocols::model_standard(case, device),
        "lit_distill" => protocols::lit_distill(case, device),
        "kd_distill" => protocols::kd_distill(case, device),
        "qd_step" => protocols::qd_step(case, device),
        "nmt_step" => nmt_step::nmt_step(case, device),
        other => {
            let why = format!("protocol `{other}` not implemented yet");
            return (Outcome::Skipped(why), Vec::new());
        }
    };
    match produced {
        Err(e) => (Outcome::Failed(vec![format!("error: {e}")]), Vec::new()),
        Ok(p) => {
            let (f, margins) = case.compare_measured(&p);
            let outcome = if f.is_empty() {
                Outcome::Passed
            } else {
                Outcome::Failed(f)
            };
            (outcome, margins)
        }
    }
}

/// Protocol `op`: evaluate once, compare outputs; back-propagate from `backward.of` seeded with
/// `backward.seed` and compare the gradients of `backward.grads`.
fn run_op(case: &Case, device: &Device) -> Result<Produced> {
    let table = op_table();
    let op = case.json["op"].as_str().unwrap_or("");
    let f = table
        .get(op)
        .ok_or_else(|| Error::Golden(format!("op `{op}` not implemented")))?;
    let backward = &case.json["backward"];
    let wants_grad: Vec<&str> = backward["grads"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut g = Graph::new(device);
    let mut args = HashMap::new();
    let mut index_args = HashMap::new();
    for (arg, tname) in case.json["inputs"].as_object().into_iter().flatten() {
        let tname = tname.as_str().unwrap_or("");
        match case.tensor(tname)? {
            Data::F32 { .. } => {
                let t = case.f32_tensor(tname, device)?;
                let v = if wants_grad.contains(&arg.as_str()) {
                    g.leaf(t)
                } else {
                    g.constant(t)
                };
                args.insert(arg.clone(), v);
            }
            Data::I64 { .. } => {
                index_args.insert(arg.clone(), case.index_tensor(tname, device)?);
            }
        }
    }
    let op_args = OpArgs {
        vars: args.clone(),
        indices: index_args,
    };
    let outs = f(&mut g, case, &op_args)?;
    let mut produced = Produced::new();
    for (oname, ename) in case.json["outputs"].as_object().into_iter().flatten() {
        let v = outs
            .get(oname)
            .ok_or_else(|| Error::Golden(format!("op `{op}` has no output `{oname}`")))?;
        let ename = ename.as_str().unwrap_or("");
        produced.insert(
            ename.to_string(),
            output_data(g.value(*v), case.tensors.get(ename))?,
        );
    }
    if backward.is_object() {
        let (root, seed) = backward_root(&mut g, case, &outs, device)?;
        g.backward_with(root, seed)?;
        for (arg, ename) in backward["grads"].as_object().into_iter().flatten() {
            let v = args
                .get(arg)
                .ok_or_else(|| Error::Golden(format!("backward.grads: no F32 input `{arg}`")))?;
            let grad = match g.grad(*v) {
                Some(t) => t.clone(),
                None => Tensor::zeros(g.value(*v).shape(), device)?,
            };
            produced.insert(ename.as_str().unwrap_or("").to_string(), f32_data(&grad)?);
        }
    }
    Ok(produced)
}

/// The value `backward` starts from, and its seed. `backward.of` names one output (seeded with
/// `backward.seed`: a tensor name or a number) or a list of outputs with a list of seed tensors,
/// which stands for `L = Σ_k sum(out_k · seed_k)` (built on the tape, seeded with 1).
fn backward_root(
    g: &mut Graph,
    case: &Case,
    outs: &HashMap<String, Var>,
    device: &Device,
) -> Result<(Var, Option<Tensor>)> {
    let backward = &case.json["backward"];
    let output = |name: &str| {
        outs.get(name)
            .copied()
            .ok_or_else(|| Error::Golden(format!("backward.of: no output `{name}`")))
    };
    if let (Value::Array(of), Value::Array(seeds)) = (&backward["of"], &backward["seed"]) {
        if of.len() != seeds.len() || of.is_empty() {
            return Err(Error::Golden(format!(
                "backward: {} outputs and {} seeds",
                of.len(),
                seeds.len()
            )));
        }
        let mut total: Option<Var> = None;
        for (o, s) in of.iter().zip(seeds) {
            let out = output(o.as_str().unwrap_or(""))?;
            let seed = g.constant(case.f32_tensor(s.as_str().unwrap_or(""), device)?);
            let prod = ops::elementwise::mul(g, out, seed)?;
            let term = ops::reduce::sum_all(g, prod)?;
            total = Some(match total {
                Some(t) => ops::elementwise::add(g, t, term)?,
                None => term,
            });
        }
        let total = total.ok_or_else(|| Error::Golden("backward.of: empty list".into()))?;
        return Ok((total, None));
    }
    let root = output(backward["of"].as_str().unwrap_or(""))?;
    let shape = g.value(root).shape().to_vec();
    let seed = match &backward["seed"] {
        Value::String(s) => case.f32_tensor(s, device)?,
        Value::Number(n) => Tensor::full(&shape, n.as_f64().unwrap_or(1.0) as f32, device)?,
        other => return Err(Error::Golden(format!("backward.seed: unsupported {other}"))),
    };
    Ok((root, Some(seed)))
}

/// Protocol `sgd_steps`: `steps` SGD steps over `params` with fresh momentum buffers; the gradient of
/// `p` at step `s` is `input.grad.step<s>.<p>`, absent = None (skipped that step).
fn run_sgd_steps(case: &Case, device: &Device) -> Result<Produced> {
    let j = &case.json;
    let attr = |k: &str| case.attr_f64(k);
    if attr("dampening").unwrap_or(0.0) != 0.0 {
        return Err(Error::Golden("sgd: dampening != 0 is not supported".into()));
    }
    let mut opt = crate::train::optim::Sgd::new(
        attr("lr")? as f32,
        attr("momentum").unwrap_or(0.0) as f32,
        attr("weight_decay").unwrap_or(0.0) as f32,
        j["attrs"]["nesterov"].as_bool().unwrap_or(false),
    )?;
    let names: Vec<&str> = j["params"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    let mut store = crate::nn::ParamStore::new();
    for p in &names {
        store.add_param(p, case.f32_tensor(&format!("param.{p}"), device)?)?;
    }
    let steps = j["steps"]
        .as_u64()
        .ok_or_else(|| Error::Golden("sgd_steps: `steps` missing".into()))?;
    let mut produced = Produced::new();
    for s in 1..=steps {
        store.zero_grads();
        for p in &names {
            let gname = format!("input.grad.step{s}.{p}");
            if case.tensors.contains_key(&gname) {
                store.accumulate_grad(p, case.f32_tensor(&gname, device)?)?;
            }
        }
        opt.step(&mut store)?;
        for p in &names {
            let pe = format!("expect.param_after_step{s}.{p}");
            if case.tensors.contains_key(&pe) {
                produced.insert(pe, f32_data(&store.get(p)?.value)?);
            }
            let be = format!("expect.momentum_buffer_after_step{s}.{p}");
            if case.tensors.contains_key(&be) {
                let buf = opt.momentum_buffer(p).ok_or_else(|| {
                    Error::Golden(format!("no momentum buffer for `{p}` after step {s}"))
                })?;
                produced.insert(be, f32_data(buf)?);
            }
        }
    }
    Ok(produced)
}
