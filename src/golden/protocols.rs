//! Whole-model golden protocols: `model_standard`, `lit_distill`, `kd_distill`, `qd_step`
//! (see `../shared/golden/README.md`). Each one builds models from the case's descriptors, loads
//! the case's `param.*` / `state.*` tensors under their state_dict names, runs the documented
//! steps and reports every expectation the case holds.

use super::{f32_data, Case, Data, Produced};
use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::distill::quantize::quantize_uniform;
use crate::error::{Error, Result};
use crate::models::{self, Input, Model};
use crate::nn::{EntryKind, ParamStore};
use crate::ops;
use crate::ops::kd::KdLoss;
use crate::rng::Rng;
use crate::tensor::{IndexTensor, Tensor};
use crate::train::optim::Sgd;
use serde_json::Value;

fn build(descriptor: &Value, device: &Device) -> Result<(Box<dyn Model>, ParamStore)> {
    let mut store = ParamStore::new();
    let model = models::build_from_descriptor(descriptor, &mut store, device, &mut Rng::new(0))?;
    Ok((model, store))
}

/// Load `<prefix><key>` of `source` into every state_dict entry of `store` (strictly: no key
/// missing, none unexpected), and `state.<name>` into State entries (LMA) when present.
pub(super) fn load_state_dict(
    store: &mut ParamStore,
    source: &Case,
    prefix: &str,
    device: &Device,
) -> Result<()> {
    let mut missing = Vec::new();
    for name in store.names() {
        let kind = store.get(&name)?.kind;
        let key = match kind {
            EntryKind::State => format!("state.{name}"),
            _ => format!("{prefix}{name}"),
        };
        let value = match source.tensors.get(&key) {
            Some(Data::F32 { shape, values }) => Tensor::from_slice(shape, values, device)?,
            Some(Data::I64 { shape, values }) => {
                Tensor::from_vec(shape, values.iter().map(|&v| v as f32).collect(), device)?
            }
            None if kind == EntryKind::State => continue,
            None => {
                missing.push(key);
                continue;
            }
        };
        store
            .set(&name, value)
            .map_err(|e| Error::Golden(format!("{key}: {e}")))?;
    }
    let mut unexpected: Vec<&str> = source
        .tensors
        .keys()
        .filter(|k| k.starts_with(prefix) && !store.contains(&k[prefix.len()..]))
        .map(String::as_str)
        .collect();
    unexpected.sort();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(Error::Checkpoint(format!(
            "{}: state_dict mismatch: missing {missing:?}, unexpected {unexpected:?}",
            source.name
        )));
    }
    Ok(())
}

/// The parameters of another case of the same directory (`params_from = {case, prefix}`).
fn load_from_other_case(
    store: &mut ParamStore,
    case: &Case,
    params_from: &Value,
    device: &Device,
) -> Result<()> {
    let other = params_from["case"]
        .as_str()
        .ok_or_else(|| Error::Golden("params_from.case missing".into()))?;
    let prefix = params_from["prefix"].as_str().unwrap_or("param.");
    let source = Case::load(&case.dir.join(format!("{other}.json")))?;
    load_state_dict(store, &source, prefix, device)
}

/// A batch: images/features or token ids.
enum Batch {
    Float(Tensor),
    Ids(IndexTensor),
}

impl Batch {
    fn load(case: &Case, name: &str, device: &Device) -> Result<Batch> {
        Ok(match case.tensor(name)? {
            Data::F32 { .. } => Batch::Float(case.f32_tensor(name, device)?),
            Data::I64 { .. } => Batch::Ids(case.index_tensor(name, device)?),
        })
    }
    fn input<'a>(&'a self, g: &mut Graph) -> Input<'a> {
        match self {
            Batch::Float(t) => Input::Float(g.constant(t.clone())),
            Batch::Ids(ids) => Input::Ids(ids),
        }
    }
}

/// Record `value` as expectation `name` if the case holds it (an I64 expectation gets the
/// integer value of an f32 counter such as `num_batches_tracked`).
pub(super) fn put(out: &mut Produced, case: &Case, name: &str, value: &Tensor) -> Result<()> {
    match case.tensors.get(name) {
        None => {}
        Some(Data::I64 { .. }) => {
            let values = value.to_vec()?.iter().map(|v| v.round() as i64).collect();
            out.insert(
                name.to_string(),
                Data::I64 {
                    shape: value.shape().to_vec(),
                    values,
                },
            );
        }
        Some(Data::F32 { .. }) => {
            out.insert(name.to_string(), f32_data(value)?);
        }
    }
    Ok(())
}

/// Gradients, buffers and state of `store` under `expect.grad.*`, `expect.buffer_after.*` and
/// `expect.<state_prefix>.*`.
pub(super) fn put_store(
    out: &mut Produced,
    case: &Case,
    store: &ParamStore,
    state_prefix: &str,
) -> Result<()> {
    for (name, p) in store.iter() {
        match p.kind {
            EntryKind::Param => {
                let key = format!("expect.grad.{name}");
                if case.tensors.contains_key(&key) {
                    let g = match &p.grad {
                        Some(g) => g.clone(),
                        None => Tensor::zeros(p.value.shape(), p.value.device())?,
                    };
                    put(out, case, &key, &g)?;
                }
            }
            EntryKind::Buffer => put(out, case, &format!("expect.buffer_after.{name}"), &p.value)?,
            EntryKind::State => put(
                out,
                case,
                &format!("expect.{state_prefix}.{name}"),
                &p.value,
            )?,
        }
    }
    Ok(())
}

/// One step of the case's `optimizer` (SGD, fresh buffers) → `expect.param_after_step.*`.
fn sgd_step(out: &mut Produced, case: &Case, store: &mut ParamStore) -> Result<()> {
    let o = &case.json["optimizer"];
    let num = |k: &str| o[k].as_f64().unwrap_or(0.0) as f32;
    if o["type"].as_str() != Some("sgd") || num("dampening") != 0.0 {
        return Err(Error::Golden(format!(
            "optimizer {o} is not supported (SGD without dampening only)"
        )));
    }
    let mut opt = Sgd::new(
        num("lr"),
        num("momentum"),
        num("weight_decay"),
        o["nesterov"].as_bool().unwrap_or(false),
    )?;
    opt.step(store)?;
    for (name, p) in store.iter() {
        if p.kind == EntryKind::Param {
            put(
                out,
                case,
                &format!("expect.param_after_step.{name}"),
                &p.value,
            )?;
        }
    }
    Ok(())
}

/// Observations recorded by layers (LMA batch statistics) → `expect.<name>`.
fn put_stats(out: &mut Produced, case: &Case, g: &Graph) -> Result<()> {
    for (name, t) in g.stats() {
        put(out, case, &format!("expect.{name}"), t)?;
    }
    Ok(())
}

fn kd_from_json(kd: &Value) -> Result<KdLoss> {
    let variant = kd["variant"]
        .as_str()
        .or_else(|| kd["kd_variant"].as_str())
        .unwrap_or("");
    let t = kd["T"]
        .as_f64()
        .ok_or_else(|| Error::Golden("kd.T missing".into()))?;
    let weight = ["lambda", "alpha", "w_soft"]
        .iter()
        .find_map(|k| kd[*k].as_f64())
        .ok_or_else(|| Error::Golden(format!("kd {kd}: no lambda/alpha/w_soft")))?;
    KdLoss::from_name(variant, t, weight)
}

fn cross_entropy_reduction(case: &Case) -> Result<ops::loss::Reduction> {
    let loss = &case.json["loss"];
    match (loss["type"].as_str(), loss["reduction"].as_str()) {
        (Some("cross_entropy"), Some("mean") | None) => Ok(ops::loss::Reduction::Mean),
        (Some("cross_entropy"), Some("sum")) => Ok(ops::loss::Reduction::Sum),
        _ => Err(Error::Golden(format!("loss {loss} is not supported"))),
    }
}

/// `model_standard`: eval pass, train pass + cross-entropy + backward, one SGD step.
pub fn model_standard(case: &Case, device: &Device) -> Result<Produced> {
    let mut out = Produced::new();
    let batch = Batch::load(case, "input.x", device)?;
    let labels = case.index_tensor("input.y", device)?;

    let (model, mut store) = build(&case.json["model"], device)?;
    load_state_dict(&mut store, case, "param.", device)?;
    let mut g = Graph::no_grad(device);
    let x = batch.input(&mut g);
    let logits = model.forward(&mut g, &mut store, x, false)?;
    put(&mut out, case, "expect.logits_eval", g.value(logits))?;
    for (name, p) in store.iter() {
        if p.kind == EntryKind::State {
            put(
                &mut out,
                case,
                &format!("expect.state_after_eval.{name}"),
                &p.value,
            )?;
        }
    }

    // The train pass starts again from the loaded state.
    let (model, mut store) = build(&case.json["model"], device)?;
    load_state_dict(&mut store, case, "param.", device)?;
    let mut g = Graph::new(device);
    let x = batch.input(&mut g);
    let logits = model.forward(&mut g, &mut store, x, true)?;
    put(&mut out, case, "expect.logits_train", g.value(logits))?;
    let loss = ops::loss::cross_entropy(&mut g, logits, &labels, cross_entropy_reduction(case)?)?;
    put(&mut out, case, "expect.loss", g.value(loss))?;
    g.backward(loss)?;
    g.accumulate_param_grads(&mut store)?;
    put_stats(&mut out, case, &g)?;
    put_store(&mut out, case, &store, "state_after_train")?;
    sgd_step(&mut out, case, &mut store)?;
    Ok(out)
}

/// Teacher in eval mode with no tape: features 0..=sections and logits.
fn teacher_pass(
    case: &Case,
    teacher_json: &Value,
    batch: &Batch,
    device: &Device,
    out: &mut Produced,
) -> Result<(Vec<Tensor>, Tensor)> {
    let (teacher, mut store) = build(&teacher_json["model"], device)?;
    load_from_other_case(&mut store, case, &teacher_json["params_from"], device)?;
    let mut g = Graph::no_grad(device);
    let x = batch.input(&mut g);
    let mut features = Vec::new();
    let logits = if teacher.num_sections() > 0 {
        let mut h = teacher.stem(&mut g, &mut store, x, false)?;
        features.push(g.value(h).clone());
        for i in 0..teacher.num_sections() {
            h = teacher.forward_section(i, &mut g, &mut store, h, false)?;
            features.push(g.value(h).clone());
        }
        teacher.head(&mut g, &mut store, h, false)?
    } else {
        teacher.forward(&mut g, &mut store, x, false)?
    };
    for (k, f) in features.iter().enumerate() {
        put(out, case, &format!("expect.teacher_features.{k}"), f)?;
    }
    let logits = g.value(logits).clone();
    put(out, case, "expect.teacher_logits", &logits)?;
    Ok((features, logits))
}

/// `lit_distill`: LIT's blockwise step — KD on the full student's logits plus, for each LIT
/// section, MSE between the student section fed the teacher's previous feature and the teacher's
/// feature.
pub fn lit_distill(case: &Case, device: &Device) -> Result<Produced> {
    let mut out = Produced::new();
    let lit = &case.json["lit"];
    let batch = Batch::load(case, "input.x", device)?;
    let labels = case.index_tensor("input.y", device)?;
    let (features, teacher_logits) =
        teacher_pass(case, &case.json["teacher"], &batch, device, &mut out)?;

    let student_json = &case.json["student"];
    let (student, mut store) = build(&student_json["model"], device)?;
    load_state_dict(
        &mut store,
        case,
        student_json["params_prefix"].as_str().unwrap_or("param."),
        device,
    )?;
    for p in lit["frozen_params"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        store.set_trainable(p, false)?;
    }
    let sections: Vec<usize> = lit["sections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|k| k as usize)
        .collect();
    if sections
        .iter()
        .any(|&k| k == 0 || k > student.num_sections() || k >= features.len())
    {
        return Err(Error::Golden(format!(
            "lit.sections {sections:?} out of range"
        )));
    }

    // The whole student in eval mode, the LIT sections in train mode.
    let mut g = Graph::new(device);
    let x = batch.input(&mut g);
    let mut h = student.stem(&mut g, &mut store, x, false)?;
    for i in 0..student.num_sections() {
        h = student.forward_section(i, &mut g, &mut store, h, sections.contains(&(i + 1)))?;
    }
    let s = student.head(&mut g, &mut store, h, false)?;
    put(&mut out, case, "expect.student_logits", g.value(s))?;
    let kd_json =
        serde_json::json!({"variant": lit["kd_variant"], "T": lit["T"], "alpha": lit["alpha"]});
    let kd = ops::kd::kd_loss(&mut g, s, &teacher_logits, &labels, kd_from_json(&kd_json)?)?;
    put(&mut out, case, "expect.kd", g.value(kd.loss))?;

    let mut ir_total: Option<Var> = None;
    for &k in &sections {
        let fed = g.constant(features[k - 1].clone());
        let o = student.forward_section(k - 1, &mut g, &mut store, fed, true)?;
        put(
            &mut out,
            case,
            &format!("expect.student_section_out.{k}"),
            g.value(o),
        )?;
        let ir = ops::kd::mse(&mut g, o, &features[k])?;
        put(&mut out, case, &format!("expect.ir_mse.{k}"), g.value(ir))?;
        ir_total = Some(match ir_total {
            None => ir,
            Some(t) => ops::elementwise::add(&mut g, t, ir)?,
        });
    }
    let beta = lit["beta"]
        .as_f64()
        .ok_or_else(|| Error::Golden("lit.beta missing".into()))? as f32;
    let mut loss = ops::elementwise::scale(&mut g, kd.loss, beta)?;
    if let Some(ir) = ir_total {
        let ir = ops::elementwise::scale(&mut g, ir, 1.0 - beta)?;
        loss = ops::elementwise::add(&mut g, loss, ir)?;
    }
    if lit["divide_total_by_2"].as_bool().unwrap_or(false) {
        loss = ops::elementwise::scale(&mut g, loss, 0.5)?;
    }
    put(&mut out, case, "expect.loss", g.value(loss))?;
    g.backward(loss)?;
    g.accumulate_param_grads(&mut store)?;
    put_store(&mut out, case, &store, "state_after_train")?;
    sgd_step(&mut out, case, &mut store)?;
    Ok(out)
}

/// `kd_distill` (TAKD): teacher eval, student train, a KD loss, one SGD step.
pub fn kd_distill(case: &Case, device: &Device) -> Result<Produced> {
    let mut out = Produced::new();
    let batch = Batch::load(case, "input.x", device)?;
    let labels = case.index_tensor("input.y", device)?;
    let (_, teacher_logits) = teacher_pass(case, &case.json["teacher"], &batch, device, &mut out)?;
    let student_json = &case.json["student"];
    let (student, mut store) = build(&student_json["model"], device)?;
    load_state_dict(
        &mut store,
        case,
        student_json["params_prefix"].as_str().unwrap_or("param."),
        device,
    )?;
    let mut g = Graph::new(device);
    let x = batch.input(&mut g);
    let s = student.forward(&mut g, &mut store, x, true)?;
    put(&mut out, case, "expect.student_logits", g.value(s))?;
    let kd = ops::kd::kd_loss(
        &mut g,
        s,
        &teacher_logits,
        &labels,
        kd_from_json(&case.json["kd"])?,
    )?;
    put(&mut out, case, "expect.loss", g.value(kd.loss))?;
    for (name, t) in &kd.components {
        put(&mut out, case, &format!("expect.component.{name}"), t)?;
    }
    g.backward(kd.loss)?;
    g.accumulate_param_grads(&mut store)?;
    put_store(&mut out, case, &store, "state_after_train")?;
    sgd_step(&mut out, case, &mut store)?;
    Ok(out)
}

/// `qd_step`: Polino's quantized distillation on one minibatch — quantize, eval and train passes
/// at the quantized point, restore the full-precision weights, step with the quantized-point
/// gradients.
pub fn qd_step(case: &Case, device: &Device) -> Result<Produced> {
    let mut out = Produced::new();
    let q = &case.json["quantization"];
    let bits = q["num_bits"]
        .as_u64()
        .ok_or_else(|| Error::Golden("quantization.num_bits missing".into()))?
        as u32;
    let bucket = q["bucket_size"].as_u64().map(|b| b as usize);
    let batch = Batch::load(case, "input.x", device)?;
    let labels = case.index_tensor("input.y", device)?;
    let teacher_logits = case.f32_tensor(
        case.json["inputs"]["teacher_logits"]
            .as_str()
            .unwrap_or("input.teacher_logits"),
        device,
    )?;
    let (model, mut store) = build(&case.json["model"], device)?;
    load_state_dict(&mut store, case, "param.", device)?;

    let mut full_precision = Vec::new();
    for p in q["quantized_params"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let value = store.get(p)?.value.clone();
        let quantized = quantize_uniform(&value, bits, bucket)?;
        put(
            &mut out,
            case,
            &format!("expect.quantized.{p}"),
            &quantized.values,
        )?;
        store.set(p, quantized.values)?;
        full_precision.push((p.to_string(), value));
    }

    let mut g = Graph::no_grad(device);
    let x = batch.input(&mut g);
    let logits = model.forward(&mut g, &mut store, x, false)?;
    put(&mut out, case, "expect.logits_eval", g.value(logits))?;

    let mut g = Graph::new(device);
    let x = batch.input(&mut g);
    let logits = model.forward(&mut g, &mut store, x, true)?;
    put(&mut out, case, "expect.logits_train", g.value(logits))?;
    let kd = ops::kd::kd_loss(
        &mut g,
        logits,
        &teacher_logits,
        &labels,
        kd_from_json(&case.json["kd"])?,
    )?;
    put(&mut out, case, "expect.loss", g.value(kd.loss))?;
    for (name, t) in &kd.components {
        put(&mut out, case, &format!("expect.component.{name}"), t)?;
    }
    g.backward(kd.loss)?;
    g.accumulate_param_grads(&mut store)?;
    put_store(&mut out, case, &store, "state_after_train")?;

    // Straight-through: gradients taken at the quantized point update the full-precision weights.
    for (p, value) in full_precision {
        store.get_mut(&p)?.value = value;
    }
    sgd_step(&mut out, case, &mut store)?;
    Ok(out)
}
