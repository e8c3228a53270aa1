//! Golden op adapters for batchnorm, pooling, k-max, option-A shortcut, embedding.

use super::{outputs, Case, OpArgs, OpTable};
use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::ops::batchnorm::{batch_norm, BatchNormArgs, Mode, RunningStats};
use crate::ops::{embedding, pool, shape};
use crate::tensor::Tensor;
use std::collections::HashMap;

pub fn register(t: &mut OpTable) {
    t.insert("batchnorm2d", |g, c, a| batchnorm(g, c, a, &[4]));
    t.insert("batchnorm1d", |g, c, a| batchnorm(g, c, a, &[2, 3]));
    t.insert("maxpool2d", |g, c, a| {
        let w = window(c)?;
        outputs([("out", pool::max_pool2d(g, a.var("x")?, w)?)])
    });
    t.insert("maxpool1d", |g, c, a| {
        let (k, s, p) = (uint(c, "kernel")?, uint(c, "stride")?, uint(c, "padding")?);
        outputs([("out", pool::max_pool1d(g, a.var("x")?, k, s, p)?)])
    });
    t.insert("avgpool2d", |g, c, a| {
        let w = window(c)?;
        // PyTorch's default unless the case says otherwise.
        let include_pad = c.json["attrs"]["count_include_pad"]
            .as_bool()
            .unwrap_or(true);
        outputs([("out", pool::avg_pool2d(g, a.var("x")?, w, include_pad)?)])
    });
    t.insert("kmax_pool", |g, c, a| {
        let x = a.var("x")?;
        let rank = g.value(x).dims() as i64;
        let dim = c.json["attrs"]["dim"].as_i64().unwrap_or(-1);
        if dim != rank - 1 && dim != -1 {
            return Err(Error::Golden(format!(
                "kmax_pool: dim {dim} of a rank-{rank} tensor: only the last axis is supported"
            )));
        }
        outputs([("out", pool::kmax_pool(g, x, uint(c, "k")?)?)])
    });
    t.insert("option_a_shortcut", |g, c, a| {
        let pad = uint(c, "pad_channels")?;
        outputs([("out", shape::option_a_shortcut(g, a.var("x")?, pad)?)])
    });
    t.insert("embedding", |g, c, a| {
        let w = a.var("weight")?;
        let want = [uint(c, "num_embeddings")?, uint(c, "embedding_dim")?];
        g.value(w)
            .expect_shape("embedding weight vs attrs", &want)?;
        outputs([("out", embedding::embedding(g, w, a.index("ids")?)?)])
    });
}

/// A non-negative integer attribute.
fn uint(c: &Case, key: &str) -> Result<usize> {
    let v = c.attr_f64(key)?;
    if v < 0.0 || v.fract() != 0.0 {
        return Err(Error::Golden(format!(
            "case {}: attrs.{key} = {v} is not a non-negative integer",
            c.name
        )));
    }
    Ok(v as usize)
}

/// An attribute given as one integer or as `[h, w]`.
fn pair(c: &Case, key: &str) -> Result<(usize, usize)> {
    match c.json["attrs"][key].as_array() {
        Some(a) if a.len() == 2 => {
            let get = |v: &serde_json::Value| {
                v.as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| Error::Golden(format!("case {}: attrs.{key} = {a:?}", c.name)))
            };
            Ok((get(&a[0])?, get(&a[1])?))
        }
        _ => uint(c, key).map(|v| (v, v)),
    }
}

fn window(c: &Case) -> Result<pool::Pool2d> {
    let kernel = pair(c, "kernel")?;
    // PyTorch: the stride defaults to the kernel size.
    let stride = if c.json["attrs"]["stride"].is_null() {
        kernel
    } else {
        pair(c, "stride")?
    };
    let padding = if c.json["attrs"]["padding"].is_null() {
        (0, 0)
    } else {
        pair(c, "padding")?
    };
    Ok(pool::Pool2d::new(kernel, stride, padding))
}

/// BatchNorm: inputs x, weight/bias (when affine), running_mean/var (F32), num_batches_tracked
/// (I64); outputs `out` and, in train mode, `buffer_after.*` (the counter as an integer-valued f32,
/// turned into I64 by the runner).
fn batchnorm(g: &mut Graph, c: &Case, a: &OpArgs, ranks: &[usize]) -> Result<HashMap<String, Var>> {
    let x = a.var("x")?;
    let rank = g.value(x).dims();
    if !ranks.contains(&rank) {
        return Err(Error::Shape(format!(
            "case {}: {} expects an input of rank {ranks:?}, got {:?}",
            c.name,
            c.json["op"],
            g.value(x).shape()
        )));
    }
    let affine = c.json["attrs"]["affine"].as_bool().unwrap_or(true);
    let affine = match affine {
        true => Some((a.var("weight")?, a.var("bias")?)),
        false => None,
    };
    let mode = match c.json["mode"].as_str() {
        Some("train") => Mode::Train,
        Some("eval") => Mode::Eval,
        other => {
            return Err(Error::Golden(format!(
                "case {}: mode {other:?}, expected \"train\" or \"eval\"",
                c.name
            )))
        }
    };
    let count = match a.indices.get("num_batches_tracked") {
        Some(t) => {
            let v: Vec<f32> = t.to_vec()?.into_iter().map(|n| n as f32).collect();
            Some(Tensor::from_vec(t.shape(), v, g.device())?)
        }
        None => None,
    };
    let running = RunningStats {
        mean: g.value(a.var("running_mean")?).clone(),
        var: g.value(a.var("running_var")?).clone(),
        num_batches_tracked: count,
    };
    let args = BatchNormArgs {
        mode,
        affine,
        running: Some(&running),
        momentum: c.attr_f64("momentum")? as f32,
        eps: c.attr_f64("eps")? as f32,
        ..Default::default()
    };
    let (out, updated) = batch_norm(g, x, &args)?;
    let mut outs = HashMap::from([("out".to_string(), out)]);
    if let Some(r) = updated {
        outs.insert("buffer_after.running_mean".into(), g.constant(r.mean));
        outs.insert("buffer_after.running_var".into(), g.constant(r.var));
        if let Some(n) = r.num_batches_tracked {
            outs.insert("buffer_after.num_batches_tracked".into(), g.constant(n));
        }
    }
    Ok(outs)
}
