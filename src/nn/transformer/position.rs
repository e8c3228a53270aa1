//! LMA's non-standard sinusoidal position encoding (`onmt/modules/Embeddings.py`,
//! SPEC-TRANSLATION §5.3 / L8), computed in float32 with the seed's operations:
//! `div_j = 1 / pow(10000, (2j)/d)` for j = 0..d−1 (the exponent runs over ALL j, not 2⌊j/2⌋),
//! `angle = p · div_j`, `PE[p, j] = sin(angle)` for even j, `cos(angle)` for odd j. No √d scaling
//! of the embeddings. Positions start at 0 in both encoder and decoder.

use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::limits;
use crate::ops::reduce::add_bias;
use crate::ops::shape::reshape;
use crate::tensor::Tensor;

/// The seed's table length (`max_len`).
pub const ONMT_MAX_POSITIONS: usize = 5000;

/// Rows `0..len` of the position table for model dim `dim`, row-major `[len, dim]`.
pub fn position_table(len: usize, dim: usize) -> Result<Vec<f32>> {
    let n = len
        .checked_mul(dim)
        .filter(|&n| n <= limits::MAX_MODEL_ELEMENTS && dim > 0)
        .ok_or_else(|| {
            Error::op_arg(
                "position_table",
                format!("{len} positions of dim {dim}: empty or beyond the element limit"),
            )
        })?;
    let d = dim as f32;
    // float32 as the seed: arange(0, 2d, 2) / d, pow, reciprocal.
    let div: Vec<f32> = (0..dim)
        .map(|j| 1.0 / 10000f32.powf((2 * j) as f32 / d))
        .collect();
    let mut table = Vec::with_capacity(n);
    for p in 0..len {
        for (j, &dv) in div.iter().enumerate() {
            let angle = p as f32 * dv;
            table.push(if j % 2 == 0 { angle.sin() } else { angle.cos() });
        }
    }
    Ok(table)
}

/// `x [B, L, d] + PE[0..L]` (broadcast over the batch); the gradient passes to `x` unchanged.
/// `L` may not exceed the seed's [`ONMT_MAX_POSITIONS`].
pub fn add_position_encoding(g: &mut Graph, x: Var) -> Result<Var> {
    let &[b, len, dim] = g.value(x).shape() else {
        return Err(Error::Shape(format!(
            "add_position_encoding: expected x [B, L, d], got {:?}",
            g.value(x).shape()
        )));
    };
    if len > ONMT_MAX_POSITIONS {
        return Err(Error::op_arg(
            "add_position_encoding",
            format!("{len} positions: the seed's table has {ONMT_MAX_POSITIONS}"),
        ));
    }
    let table = Tensor::from_vec(&[len * dim], position_table(len, dim)?, g.device())?;
    let pe = g.constant(table);
    let rows = reshape(g, x, &[b, len * dim])?;
    let y = add_bias(g, rows, pe)?;
    reshape(g, y, &[b, len, dim])
}
