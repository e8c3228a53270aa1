//! Golden op adapters for activations (prelu, swish, aplu, lma), mse, KD losses, quantize_uniform.
//! Integer outputs (LMA segment indices, quantization levels) are returned as whole-valued f32 and
//! compared as I64 by the runner.

use super::{outputs, Case, OpArgs, OpTable};
use crate::autograd::{Graph, Var};
use crate::distill::quantize::quantize_uniform;
use crate::error::{Error, Result};
use crate::ops::{activation, kd, lma};
use crate::tensor::{IndexTensor, Tensor};
use std::collections::HashMap;

pub fn register(t: &mut OpTable) {
    t.insert("prelu_scalar", |g, _c, a| {
        outputs([("out", activation::prelu(g, a.var("x")?, a.var("alpha")?)?)])
    });
    t.insert("swish", |g, c, a| {
        let betas = a.var("betas")?;
        check_usize(c, "dim", g.value(betas).shape().first().copied())?;
        outputs([("out", activation::swish(g, a.var("x")?, betas)?)])
    });
    t.insert("aplu", |g, c, a| {
        let (alphas, betas) = (a.var("alphas")?, a.var("betas")?);
        let shape = g.value(alphas).shape().to_vec();
        check_usize(c, "dim", shape.first().copied())?;
        check_usize(c, "num_bins", shape.get(1).map(|s| s + 2))?;
        outputs([("out", activation::aplu(g, a.var("x")?, alphas, betas)?)])
    });
    t.insert("lma", run_lma);
    t.insert("mse", |g, _c, a| {
        let target = g.value(a.var("target")?).clone();
        outputs([("loss", kd::mse(g, a.var("input")?, &target)?)])
    });
    t.insert("kd_lit", |g, c, a| {
        let loss = kd::KdLoss::Lit {
            temperature: c.attr_f64("T")?,
            alpha: c.attr_f64("alpha")?,
        };
        run_kd(g, a, loss)
    });
    t.insert("kd_qd", |g, c, a| {
        let loss = kd::KdLoss::Qd {
            temperature: c.attr_f64("T")?,
            w_soft: c.attr_f64("w_soft")?,
        };
        run_kd(g, a, loss)
    });
    t.insert("kd_lma", |g, c, a| {
        let loss = kd::KdLoss::Lma {
            temperature: c.attr_f64("T")?,
            w_soft: c.attr_f64("w_soft")?,
        };
        run_kd(g, a, loss)
    });
    t.insert("kd_takd", |g, c, a| {
        let loss = kd::KdLoss::Takd {
            temperature: c.attr_f64("T")?,
            lambda: c.attr_f64("lambda")?,
        };
        run_kd(g, a, loss)
    });
    t.insert("kd_nmt", |g, c, a| {
        let n = c.json["attrs"]["num_sentences"].as_u64().ok_or_else(|| {
            Error::Golden(format!(
                "case {}: attrs.num_sentences missing or not a positive integer",
                c.name
            ))
        })?;
        let loss = kd::KdLoss::Nmt {
            num_sentences: n as usize,
            w_soft: c.attr_f64("w_soft")?,
        };
        run_kd(g, a, loss)
    });
    t.insert("quantize_uniform", run_quantize);
}

/// `attrs.<key>` must equal what the tensors imply.
fn check_usize(c: &Case, key: &str, implied: Option<usize>) -> Result<()> {
    let want = c.attr_f64(key)?;
    if implied.map(|v| v as f64) != Some(want) {
        return Err(Error::Golden(format!(
            "case {}: attrs.{key} = {want} does not fit the parameter shapes (implied {implied:?})",
            c.name
        )));
    }
    Ok(())
}

fn index_as_f32(t: &IndexTensor) -> Result<Tensor> {
    let v: Vec<f32> = t.to_vec()?.into_iter().map(|i| i as f32).collect();
    Tensor::from_vec(t.shape(), v, t.device())
}

fn run_lma(g: &mut Graph, c: &Case, a: &OpArgs) -> Result<HashMap<String, Var>> {
    let train = match c.json["mode"].as_str() {
        Some("train") => true,
        Some("eval") => false,
        other => {
            return Err(Error::Golden(format!(
                "case {}: lma needs mode train or eval, got {other:?}",
                c.name
            )))
        }
    };
    let (alphas, betas) = (a.var("alphas")?, a.var("betas")?);
    let num_bins = g.value(alphas).numel();
    check_usize(c, "num_bins", Some(num_bins))?;
    let cfg = lma::LmaConfig {
        num_bins,
        mu: c.attr_f64("mu").unwrap_or(0.99),
        train,
    };
    let mv_mean = g.value(a.var("mv_mean")?).clone();
    let mv_std = g.value(a.var("mv_std")?).clone();
    let (y, aux) = lma::lma(g, a.var("x")?, alphas, betas, &mv_mean, &mv_std, cfg)?;
    let s = aux.stats;
    let seg = index_as_f32(&aux.segment_index)?;
    outputs([
        ("out", y),
        ("state_after.mv_mean", g.constant(s.mv_mean)),
        ("state_after.mv_std", g.constant(s.mv_std)),
        ("segment_index", g.constant(seg)),
        ("batch_mean", g.constant(s.batch_mean)),
        ("batch_std", g.constant(s.batch_std)),
    ])
}

fn run_kd(g: &mut Graph, a: &OpArgs, loss: kd::KdLoss) -> Result<HashMap<String, Var>> {
    let teacher = g.value(a.var("teacher_logits")?).clone();
    let out = kd::kd_loss(
        g,
        a.var("student_logits")?,
        &teacher,
        a.index("labels")?,
        loss,
    )?;
    let mut m = HashMap::from([("loss".to_string(), out.loss)]);
    for (name, t) in out.components {
        m.insert(format!("component.{name}"), g.constant(t));
    }
    Ok(m)
}

fn run_quantize(g: &mut Graph, c: &Case, a: &OpArgs) -> Result<HashMap<String, Var>> {
    let attrs = &c.json["attrs"];
    for (key, want) in [("scaling", "linear"), ("rounding", "deterministic")] {
        let got = attrs[key].as_str().unwrap_or(want);
        if got != want {
            return Err(Error::Golden(format!(
                "case {}: quantize_uniform supports {key} = {want}, got {got}",
                c.name
            )));
        }
    }
    let bits = attrs["num_bits"]
        .as_u64()
        .ok_or_else(|| Error::Golden(format!("case {}: attrs.num_bits missing", c.name)))?;
    let bucket = match &attrs["bucket_size"] {
        serde_json::Value::Null => None,
        v => Some(v.as_u64().ok_or_else(|| {
            Error::Golden(format!(
                "case {}: attrs.bucket_size must be an integer or null",
                c.name
            ))
        })? as usize),
    };
    let q = quantize_uniform(g.value(a.var("v")?), bits as u32, bucket)?;
    let level = index_as_f32(&q.levels)?;
    outputs([
        ("out", g.constant(q.values)),
        ("alpha", g.constant(q.alpha)),
        ("beta", g.constant(q.beta)),
        ("level", g.constant(level)),
    ])
}
