//! CPU reference of the fused LSTM cell kernels (`kernels/lstm.cu`), generic over f32/f64 so the
//! backward can be checked against finite differences in f64.

use crate::ops::activation::sigmoid;
use crate::ops::elementwise::tanh_scalar as tanh;
use crate::ops::Real;

/// Forward of the pointwise cell. `gates [batch, 4·hidden]` are the pre-activations in the order
/// i, f, g, o; writes `acts` (the activated gates σ(i), σ(f), tanh(g), σ(o), same layout),
/// `c_new = σ(f)·c + σ(i)·tanh(g)` and `h_new = σ(o)·tanh(c_new)` (`[batch, hidden]`).
pub fn lstm_cell_forward_cpu<T: Real>(
    gates: &[T],
    c: &[T],
    hidden: usize,
    acts: &mut [T],
    c_new: &mut [T],
    h_new: &mut [T],
) {
    for (e, &c_prev) in c.iter().enumerate() {
        let (b, j) = (e / hidden, e % hidden);
        let row = b * 4 * hidden;
        let i = sigmoid(gates[row + j]);
        let f = sigmoid(gates[row + hidden + j]);
        let g = tanh(gates[row + 2 * hidden + j]);
        let o = sigmoid(gates[row + 3 * hidden + j]);
        let cn = f * c_prev + i * g;
        acts[row + j] = i;
        acts[row + hidden + j] = f;
        acts[row + 2 * hidden + j] = g;
        acts[row + 3 * hidden + j] = o;
        c_new[e] = cn;
        h_new[e] = o * tanh(cn);
    }
}

/// Backward of [`lstm_cell_forward_cpu`]: from `dh` and `dc` (gradients of `h_new`, `c_new`) the
/// gradients of the gate pre-activations `dgates [batch, 4·hidden]` and of the previous cell
/// state `dc_prev [batch, hidden]`. `acts`, `c`, `c_new` are the forward's.
#[allow(clippy::too_many_arguments)]
pub fn lstm_cell_backward_cpu<T: Real>(
    acts: &[T],
    c: &[T],
    c_new: &[T],
    dh: &[T],
    dc: &[T],
    hidden: usize,
    dgates: &mut [T],
    dc_prev: &mut [T],
) {
    for e in 0..c.len() {
        let (b, j) = (e / hidden, e % hidden);
        let row = b * 4 * hidden;
        let i = acts[row + j];
        let f = acts[row + hidden + j];
        let g = acts[row + 2 * hidden + j];
        let o = acts[row + 3 * hidden + j];
        let tc = tanh(c_new[e]);
        let dct = dc[e] + dh[e] * o * (T::ONE - tc * tc);
        dgates[row + j] = dct * g * i * (T::ONE - i);
        dgates[row + hidden + j] = dct * c[e] * f * (T::ONE - f);
        dgates[row + 2 * hidden + j] = dct * i * (T::ONE - g * g);
        dgates[row + 3 * hidden + j] = dh[e] * tc * o * (T::ONE - o);
        dc_prev[e] = dct * f;
    }
}
