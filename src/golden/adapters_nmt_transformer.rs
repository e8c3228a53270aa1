//! Golden op adapters for the early-OpenNMT Transformer layers: `layer_norm_onmt` and `mha_onmt`.

use super::{outputs, Case, OpTable};
use crate::error::{Error, Result};
use crate::nn::transformer::attention::{multi_head_attention, MhaWeights};
use crate::nn::transformer::mask::AttentionMask;
use crate::ops::layer_norm::layer_norm_onmt;

pub fn register(t: &mut OpTable) {
    t.insert("layer_norm_onmt", |g, c, a| {
        let eps = c.attr_f64("eps")? as f32;
        let out = layer_norm_onmt(g, a.var("z")?, a.var("a_2")?, a.var("b_2")?, eps)?;
        outputs([("out", out)])
    });
    t.insert("mha_onmt", |g, c, a| {
        check_eps(c)?;
        let heads = c.attr_f64("head_count")? as usize;
        let model_dim = c.attr_f64("model_dim")? as usize;
        let query = a.var("query")?;
        if g.value(query).shape().last() != Some(&model_dim) {
            return Err(Error::Golden(format!(
                "case {}: query {:?} vs model_dim {model_dim}",
                c.name,
                g.value(query).shape()
            )));
        }
        let w = MhaWeights {
            w_k: a.var("w_k")?,
            w_v: a.var("w_v")?,
            w_q: a.var("w_q")?,
            a_2: a.var("a_2")?,
            b_2: a.var("b_2")?,
        };
        let mask = AttentionMask::from_index(a.index("mask")?)?;
        let (out, top_attn) = multi_head_attention(
            g,
            a.var("key")?,
            a.var("value")?,
            query,
            &mask,
            &w,
            heads,
            None,
        )?;
        outputs([("out", out), ("top_attn", top_attn)])
    });
}

/// The attention's LayerNorm eps is the seed's constant: a case asking for another is an error.
fn check_eps(c: &Case) -> Result<()> {
    let eps = c.attr_f64("layer_norm_eps")? as f32;
    if eps != crate::ops::layer_norm::ONMT_LAYER_NORM_EPS {
        return Err(Error::Golden(format!(
            "case {}: layer_norm_eps {eps}, the onmt attention uses 1e-3",
            c.name
        )));
    }
    Ok(())
}
