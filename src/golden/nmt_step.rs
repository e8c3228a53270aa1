//! Golden protocol `nmt_step` (README "nmt_step", SPEC-TRANSLATION §2–3, §5–6): one translation
//! training step through [`crate::nmt::step::train_step`], the function the trainer runs. The
//! step's observer records what the case expects between the backward pass and the update
//! (forward outputs, unclipped gradients, LMA state and batch statistics); the step's statistics
//! give the sums, the norm and the rate; the store after it the updated parameters.

use super::protocols::{load_state_dict, put, put_store};
use super::{Case, Data, Produced};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nmt::batches::Batch;
use crate::nmt::model::{NmtForward, NmtModel};
use crate::nmt::step::{train_step, NmtOptimizer, StepConfig, StepView};
use crate::nmt::vocab::PAD_ID;
use crate::nn::transformer::position::position_table;
use crate::nn::{EntryKind, ParamStore};
use crate::ops::token_loss::{token_loss_forward, TokenLoss};
use crate::optim::adam::{Adam, AdamState};
use crate::optim::Sgd;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::schedule::NoamSchedule;

/// The word-KD weights of the seeds, for `expect.kd_sum` (0.3·nll + 0.7·kl).
const KD: TokenLoss = TokenLoss {
    nll_weight: 0.3,
    kl_weight: 0.7,
    pad_index: PAD_ID,
};

/// Runs one `nmt_step` case on `device`; what it produced, under the expectation names.
pub fn nmt_step(case: &Case, device: &Device) -> Result<Produced> {
    check_special_tokens(case)?;
    let mut store = ParamStore::new();
    let model =
        NmtModel::from_descriptor(&case.json["model"], &mut store, device, &mut Rng::new(0))?;
    load_state_dict(&mut store, case, "param.", device)?;
    let batch = golden_batch(case)?;
    let teacher = match case.tensors.get("input.teacher_logp") {
        Some(_) => Some(case.f32_tensor("input.teacher_logp", device)?),
        None => None,
    };
    let loss = match case.json["loss"]["train_loss"].as_str() {
        Some("nll") => TokenLoss::nll(PAD_ID),
        Some("kd") => KD,
        other => return Err(Error::Golden(format!("loss.train_loss {other:?}"))),
    };
    let (mut optimizer, max_grad_norm) = optimizer(case, &store, device)?;
    let config = StepConfig {
        loss,
        max_grad_norm,
        detail: true,
    };

    let mut out = Produced::new();
    let mut kl_sum = None;
    let mut observe = |v: &StepView| -> Result<()> {
        put_forward(&mut out, case, v)?;
        put_layer_stats(&mut out, case, v.graph)?;
        put_store(&mut out, case, v.store, "state_after")?;
        // The KL to the teacher is expected even when the step trains on the NLL alone.
        if let Some(t) = &teacher {
            let targets = batch.targets(device)?;
            let logp = v.graph.value(v.forward.logp());
            let sums = token_loss_forward(logp, &targets, Some(t), &KD)?
                .sums
                .to_vec()?;
            kl_sum = Some(sums[1] as f64);
        }
        Ok(())
    };
    let stats = train_step(
        &model,
        &mut store,
        &mut optimizer,
        &config,
        &batch,
        teacher.as_ref(),
        &mut Rng::new(1),
        Some(&mut observe),
    )?;
    let n = stats.read()?;
    let kl = if loss.kl_weight != 0.0 {
        n.kl_sum
    } else {
        kl_sum.unwrap_or(0.0)
    };
    let kd_sum = KD.nll_weight as f64 * n.nll_sum + KD.kl_weight as f64 * kl;
    for (name, value) in [
        ("nll_sum", Some(n.nll_sum)),
        ("kl_sum", Some(kl)),
        ("kd_sum", Some(kd_sum)),
        ("loss", Some(n.loss)),
        ("grad_norm", n.grad_norm),
        ("clip_coef", n.clip_coef),
        ("lr", Some(n.lr)),
    ] {
        if let Some(v) = value {
            let t = Tensor::scalar(v as f32, &Device::Cpu)?;
            put(&mut out, case, &format!("expect.{name}"), &t)?;
        }
    }
    for (name, p) in store.iter() {
        if p.kind == EntryKind::Param {
            let key = format!("expect.param_after_step.{name}");
            put(&mut out, case, &key, &p.value)?;
        }
    }
    if let NmtOptimizer::AdamNoam { adam, .. } = &optimizer {
        for (name, s) in adam.states() {
            put(
                &mut out,
                case,
                &format!("expect.adam_after.exp_avg.{name}"),
                &s.exp_avg,
            )?;
            put(
                &mut out,
                case,
                &format!("expect.adam_after.exp_avg_sq.{name}"),
                &s.exp_avg_sq,
            )?;
        }
    }
    // Every expectation of the case must have been produced: none is left unchecked.
    let mut unchecked: Vec<&str> = case
        .tensors
        .keys()
        .filter(|k| k.starts_with("expect.") && !out.contains_key(*k))
        .map(String::as_str)
        .collect();
    if !unchecked.is_empty() {
        unchecked.sort();
        return Err(Error::Golden(format!(
            "nmt_step produced no value for {unchecked:?}"
        )));
    }
    Ok(out)
}

/// The model pads with `<blank>` = 1 on both sides (the embeddings' `padding_idx`).
fn check_special_tokens(case: &Case) -> Result<()> {
    let s = &case.json["special_tokens"];
    for side in ["src", "tgt"] {
        match s[side]["pad"].as_i64() {
            None => {}
            Some(p) if p == PAD_ID as i64 => {}
            Some(p) => {
                return Err(Error::Golden(format!(
                    "special_tokens.{side}.pad = {p}: only <blank> = {PAD_ID} is supported"
                )))
            }
        }
    }
    Ok(())
}

/// `input.*` as I64 values (checked to fit i32) with their shape.
fn ids(case: &Case, name: &str) -> Result<(Vec<usize>, Vec<i32>)> {
    match case.tensor(name)? {
        Data::I64 { shape, values } => {
            let v = values
                .iter()
                .map(|&x| {
                    i32::try_from(x)
                        .map_err(|_| Error::Golden(format!("`{name}`: id {x} out of range")))
                })
                .collect::<Result<_>>()?;
            Ok((shape.clone(), v))
        }
        Data::F32 { .. } => Err(Error::Golden(format!("`{name}` must be I64"))),
    }
}

/// The case's batch: `input.src [S, B]`, `input.src_lengths [B]`, `input.tgt [T, B]` (also read
/// by the model tests).
pub fn golden_batch(case: &Case) -> Result<Batch> {
    let (src_shape, src) = ids(case, "input.src")?;
    let (len_shape, src_lengths) = ids(case, "input.src_lengths")?;
    let (tgt_shape, tgt) = ids(case, "input.tgt")?;
    let (&[s, b], &[t, tb]) = (src_shape.as_slice(), tgt_shape.as_slice()) else {
        return Err(Error::Golden(format!(
            "input.src {src_shape:?} and input.tgt {tgt_shape:?} must be [S, B] and [T, B]"
        )));
    };
    if tb != b || len_shape != [b] || t < 2 || b == 0 {
        return Err(Error::Golden(format!(
            "input.src {src_shape:?}, input.src_lengths {len_shape:?}, input.tgt {tgt_shape:?}: \
             need one B > 0 and T >= 2"
        )));
    }
    if src_lengths.iter().any(|&n| n < 1 || n as usize > s) {
        return Err(Error::Golden(format!(
            "input.src_lengths {src_lengths:?} outside 1..={s}"
        )));
    }
    Ok(Batch {
        src,
        tgt,
        src_lengths,
        lines: (0..b).collect(),
        src_steps: s,
        tgt_steps: t,
    })
}

/// The case's optimizer (fresh, or with the stored Adam moments after `state_step` steps) and
/// its clipping threshold (0 or absent: none).
fn optimizer(
    case: &Case,
    store: &ParamStore,
    device: &Device,
) -> Result<(NmtOptimizer, Option<f64>)> {
    let o = &case.json["optimizer"];
    let num = |k: &str| o[k].as_f64();
    let need = |k: &str| num(k).ok_or_else(|| Error::Golden(format!("optimizer.{k} missing")));
    let max_grad_norm = num("max_grad_norm").filter(|&m| m > 0.0);
    let opt = match o["type"].as_str() {
        Some("sgd") => {
            let nesterov = o["nesterov"].as_bool().unwrap_or(false);
            let f = |k: &str| num(k).unwrap_or(0.0) as f32;
            NmtOptimizer::Sgd(Sgd::new(
                need("lr")? as f32,
                f("momentum"),
                f("weight_decay"),
                nesterov,
            )?)
        }
        Some("adam_noam") => {
            let betas = match o["betas"].as_array().map(Vec::as_slice) {
                Some([b1, b2]) => (b1.as_f64(), b2.as_f64()),
                _ => (None, None),
            };
            let (Some(b1), Some(b2)) = betas else {
                return Err(Error::Golden(format!(
                    "optimizer.betas {} is not [b1, b2]",
                    o["betas"]
                )));
            };
            let step = o["state_step"].as_u64().unwrap_or(0);
            let mut adam = Adam::new(
                0.0,
                (b1, b2),
                need("eps")?,
                num("weight_decay").unwrap_or(0.0),
            )?;
            restore_moments(&mut adam, case, store, step, device)?;
            let noam = NoamSchedule {
                factor: num("lr").unwrap_or(1.0),
                model_size: need("d")? as usize,
                warmup: need("warmup_steps")? as u64,
                step,
            };
            NmtOptimizer::AdamNoam { adam, noam }
        }
        other => return Err(Error::Golden(format!("optimizer.type {other:?}"))),
    };
    Ok((opt, max_grad_norm))
}

/// `state.adam.exp_avg|exp_avg_sq.<param>` as each parameter's state after `step` steps; with no
/// stored moments the state must be fresh (`step` 0).
fn restore_moments(
    adam: &mut Adam,
    case: &Case,
    store: &ParamStore,
    step: u64,
    device: &Device,
) -> Result<()> {
    for (name, p) in store.iter() {
        if p.kind != EntryKind::Param {
            continue;
        }
        let (m, v) = (
            format!("state.adam.exp_avg.{name}"),
            format!("state.adam.exp_avg_sq.{name}"),
        );
        match (case.tensors.contains_key(&m), case.tensors.contains_key(&v)) {
            (true, true) => adam.set_state(
                name,
                AdamState {
                    step,
                    exp_avg: case.f32_tensor(&m, device)?,
                    exp_avg_sq: case.f32_tensor(&v, device)?,
                },
            ),
            (false, false) if step == 0 => {}
            _ => {
                return Err(Error::Golden(format!(
                    "optimizer.state_step {step}: Adam moments of `{name}` incomplete"
                )))
            }
        }
    }
    Ok(())
}

/// Layer observations (LMA batch statistics and segment indices) → `expect.<name>`. The FFN
/// runs on the rows `[B·L, d_ff]` of the seed's `[B, L, d_ff]`: same elements in the same order,
/// so a segment index is given the expectation's shape when the element counts agree.
fn put_layer_stats(out: &mut Produced, case: &Case, g: &crate::autograd::Graph) -> Result<()> {
    for (name, t) in g.stats() {
        let key = format!("expect.{name}");
        let t = match case.tensors.get(&key) {
            Some(want) if want.shape().iter().product::<usize>() == t.numel() => {
                t.reshape(want.shape())?
            }
            _ => t.clone(),
        };
        put(out, case, &key, &t)?;
    }
    Ok(())
}

/// The forward outputs of the step, per family.
fn put_forward(out: &mut Produced, case: &Case, v: &StepView) -> Result<()> {
    let g = v.graph;
    match v.forward {
        NmtForward::QdLstm(o) => {
            for (name, var) in [
                ("enc_out", o.enc_out),
                ("dec_out", o.dec_out),
                ("attn", o.attn),
                ("logp", o.logp),
            ] {
                put(out, case, &format!("expect.{name}"), g.value(var))?;
            }
            for (name, layers) in [
                ("enc_final_h", &o.enc_final.h),
                ("enc_final_c", &o.enc_final.c),
            ] {
                let mut values = Vec::new();
                for &l in layers.iter() {
                    values.extend(g.value(l).to_vec()?);
                }
                let first = layers.first().map(|&l| g.value(l).shape().to_vec());
                let mut shape = vec![layers.len()];
                shape.extend(first.unwrap_or_default());
                let t = Tensor::from_vec(&shape, values, &Device::Cpu)?;
                put(out, case, &format!("expect.{name}"), &t)?;
            }
        }
        NmtForward::Transformer(o) => {
            for (name, var) in [
                ("enc_out", o.enc_out),
                ("dec_out", o.dec_out),
                ("attn", o.attn),
                ("logp", o.logp),
            ] {
                put(out, case, &format!("expect.{name}"), g.value(var))?;
            }
            // The rows of the position table the batch used (source and decoder input).
            let d = g.value(o.enc_out).shape()[2];
            let rows = g.value(o.enc_out).shape()[0].max(g.value(o.dec_out).shape()[0]);
            let pe = Tensor::from_vec(&[rows, d], position_table(rows, d)?, &Device::Cpu)?;
            put(out, case, "expect.pe", &pe)?;
        }
    }
    Ok(())
}
