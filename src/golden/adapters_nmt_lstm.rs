//! Golden op adapters for the QD translation model's layers: `lstm_cell` (x, h, c, weight_ih,
//! weight_hh, bias_ih, bias_hh → h, c) and `global_attention_general` (query, memory, linear_in,
//! linear_out → out, align; `attrs.mask` null = no mask, as the seed).

use super::{outputs, OpTable};
use crate::error::Error;
use crate::nn::global_attention::attend_general;
use crate::ops::lstm::{lstm_cell, LstmWeights};

pub fn register(t: &mut OpTable) {
    t.insert("lstm_cell", |g, c, a| {
        let w = LstmWeights {
            weight_ih: a.var("weight_ih")?,
            weight_hh: a.var("weight_hh")?,
            bias_ih: a.var("bias_ih")?,
            bias_hh: a.var("bias_hh")?,
        };
        let hidden = c.attr_f64("hidden_size")? as usize;
        if g.value(w.weight_hh).shape() != [4 * hidden, hidden] {
            return Err(Error::Golden(format!(
                "lstm_cell: weight_hh {:?} does not fit hidden_size {hidden}",
                g.value(w.weight_hh).shape()
            )));
        }
        let (h, c) = lstm_cell(g, a.var("x")?, a.var("h")?, a.var("c")?, &w)?;
        outputs([("h", h), ("c", c)])
    });
    t.insert("global_attention_general", |g, c, a| {
        if !c.json["attrs"]["mask"].is_null() {
            return Err(Error::Golden(format!(
                "global_attention_general: attrs.mask = {} (only null, no mask, is defined)",
                c.json["attrs"]["mask"]
            )));
        }
        let att = attend_general(
            g,
            a.var("query")?,
            a.var("memory")?,
            a.var("linear_in")?,
            a.var("linear_out")?,
            None,
        )?;
        outputs([("out", att.out), ("align", att.align)])
    });
}
