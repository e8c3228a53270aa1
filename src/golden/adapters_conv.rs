//! Golden op adapters for conv2d, conv1d (attrs `stride`, `padding`, `dilation`, `groups`; the
//! bias is optional: present in `inputs` or not).

use serde_json::Value;

use super::{outputs, Case, OpArgs, OpTable};
use crate::error::{Error, Result};
use crate::ops::conv::{conv1d, conv2d};

/// `attrs[key]` as `dims` sizes: an integer (same along every axis) or a list of `dims` integers.
fn sizes(case: &Case, key: &str, dims: usize, default: usize) -> Result<Vec<usize>> {
    let bad = |v: &Value| {
        Error::Golden(format!(
            "attrs.{key} = {v}: expected a non-negative integer or a list of {dims}"
        ))
    };
    let v = &case.json["attrs"][key];
    let one = |v: &Value| v.as_u64().map(|n| n as usize).ok_or_else(|| bad(v));
    match v {
        Value::Null => Ok(vec![default; dims]),
        Value::Array(items) if items.len() == dims => items.iter().map(one).collect(),
        Value::Array(_) => Err(bad(v)),
        _ => Ok(vec![one(v)?; dims]),
    }
}

/// Only dilation 1 and groups 1 are implemented.
fn check_plain(case: &Case, dims: usize) -> Result<()> {
    let dilation = sizes(case, "dilation", dims, 1)?;
    let groups = sizes(case, "groups", 1, 1)?;
    if dilation.iter().any(|&d| d != 1) || groups[0] != 1 {
        return Err(Error::Golden(format!(
            "conv with dilation {dilation:?} and groups {}: only dilation 1, groups 1 are implemented",
            groups[0]
        )));
    }
    Ok(())
}

pub fn register(t: &mut OpTable) {
    t.insert("conv2d", |g, c, a| {
        check_plain(c, 2)?;
        let (s, p) = (sizes(c, "stride", 2, 1)?, sizes(c, "padding", 2, 0)?);
        let bias = a.vars.get("bias").copied();
        let y = conv2d(
            g,
            a.var("x")?,
            a.var("weight")?,
            bias,
            (s[0], s[1]),
            (p[0], p[1]),
        )?;
        outputs([("out", y)])
    });
    t.insert("conv1d", |g, c, a: &OpArgs| {
        check_plain(c, 1)?;
        let (s, p) = (sizes(c, "stride", 1, 1)?, sizes(c, "padding", 1, 0)?);
        let bias = a.vars.get("bias").copied();
        let y = conv1d(g, a.var("x")?, a.var("weight")?, bias, s[0], p[0])?;
        outputs([("out", y)])
    });
}
