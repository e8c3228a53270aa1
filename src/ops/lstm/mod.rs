//! LSTM cell (PyTorch `nn.LSTMCell`, one step of `nn.LSTM`; SPEC-TRANSLATION §2.3):
//! `gates = x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh` with rows in the cuDNN order i, f, g, o;
//! `c' = σ(f)·c + σ(i)·tanh(g)`, `h' = σ(o)·tanh(c')`.
//!
//! The two products are [`linear`] ops (GEMM kernels); the pointwise rest is one fused kernel
//! forward (`lstm_cell_forward_f32`) and one backward (`lstm_cell_backward_f32`, which turns
//! `dh'`, `dc'` into the gate and previous-cell gradients in one pass), in `kernels/lstm.cu`.
//! CPU reference: [`cpu`].

pub mod cpu;

use crate::autograd::{Graph, Var};
use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::elementwise::add;
use crate::ops::matmul::linear;
use crate::ops::partials::check_i32;
use crate::tensor::{same_device, Tensor};
use std::cell::RefCell;
use std::rc::Rc;

pub use cpu::{lstm_cell_backward_cpu, lstm_cell_forward_cpu};

/// Mirrors `LstmCellParams` in `kernels/lstm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LstmCellParams {
    /// Rows (sentences).
    pub batch: i32,
    /// Units per gate (H); gate tensors are `[batch, 4·H]`.
    pub hidden: i32,
}

/// What the fused forward produces.
#[derive(Clone, Debug)]
pub struct LstmCellOutput {
    /// `h' [batch, H]`.
    pub h: Tensor,
    /// `c' [batch, H]`.
    pub c: Tensor,
    /// The activated gates σ(i), σ(f), tanh(g), σ(o) `[batch, 4·H]` (kept for the backward).
    pub acts: Tensor,
}

/// `(batch, hidden)` of a gate tensor `[batch, 4·H]` and a cell state `[batch, H]`.
fn cell_dims(op: &str, gates: &Tensor, c: &Tensor) -> Result<(usize, usize)> {
    same_device(op, gates, c)?;
    let (batch, hidden) = match *c.shape() {
        [b, h] if h > 0 => (b, h),
        _ => {
            return Err(Error::Shape(format!(
                "{op}: cell state must be [batch, hidden] with hidden > 0, got {:?}",
                c.shape()
            )))
        }
    };
    if gates.shape() != [batch, 4 * hidden] {
        return Err(Error::Shape(format!(
            "{op}: gates {:?} do not fit cell state {:?} (expected [{batch}, {}])",
            gates.shape(),
            c.shape(),
            4 * hidden
        )));
    }
    check_i32(op, gates.shape())?;
    Ok((batch, hidden))
}

fn params(batch: usize, hidden: usize) -> LstmCellParams {
    // Both fit i32: checked by `cell_dims` (4·batch·hidden does).
    LstmCellParams {
        batch: batch as i32,
        hidden: hidden as i32,
    }
}

/// The pointwise cell on the tensors' device: `gates [batch, 4·H]` (pre-activations, order
/// i, f, g, o), `c [batch, H]`.
pub fn lstm_cell_forward(gates: &Tensor, c: &Tensor) -> Result<LstmCellOutput> {
    let (batch, hidden) = cell_dims("lstm_cell", gates, c)?;
    let n = batch * hidden;
    let dev = c.device();
    match dev {
        Device::Cpu => {
            let mut acts = vec![0.0f32; 4 * n];
            let (mut cn, mut hn) = (vec![0.0f32; n], vec![0.0f32; n]);
            let (gs, cs) = (gates.host_data()?, c.host_data()?);
            lstm_cell_forward_cpu(gs, cs, hidden, &mut acts, &mut cn, &mut hn);
            Ok(LstmCellOutput {
                h: Tensor::from_vec(c.shape(), hn, dev)?,
                c: Tensor::from_vec(c.shape(), cn, dev)?,
                acts: Tensor::from_vec(gates.shape(), acts, dev)?,
            })
        }
        Device::Gpu(g) => {
            let mut acts = g.zeros::<f32>(4 * n)?;
            let (mut cn, mut hn) = (g.zeros::<f32>(n)?, g.zeros::<f32>(n)?);
            if n > 0 {
                let mut args = KernelArgs::new();
                args.ptr(g.addr(gates.buffer())).ptr(g.addr(c.buffer()));
                args.ptr(g.addr_mut(&mut acts)).ptr(g.addr_mut(&mut cn));
                args.ptr(g.addr_mut(&mut hn)).value(&params(batch, hidden));
                g.launch(
                    "lstm_cell_forward_f32",
                    LaunchCfg::for_elements(n),
                    &mut args,
                )?;
            }
            Ok(LstmCellOutput {
                h: Tensor::from_buffer(c.shape(), hn, dev)?,
                c: Tensor::from_buffer(c.shape(), cn, dev)?,
                acts: Tensor::from_buffer(gates.shape(), acts, dev)?,
            })
        }
    }
}

/// Backward of [`lstm_cell_forward`]: `(dgates [batch, 4·H], dc_prev [batch, H])` from the
/// gradients `dh`, `dc` of `h'`, `c'`. `acts` and `c_new` are the forward's outputs, `c` its input.
pub fn lstm_cell_backward(
    acts: &Tensor,
    c: &Tensor,
    c_new: &Tensor,
    dh: &Tensor,
    dc: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let op = "lstm_cell backward";
    let (batch, hidden) = cell_dims(op, acts, c)?;
    for (what, t) in [("c_new", c_new), ("dh", dh), ("dc", dc)] {
        same_device(op, c, t)?;
        t.expect_shape(&format!("{op}: {what}"), c.shape())?;
    }
    let n = batch * hidden;
    let dev = c.device();
    match dev {
        Device::Cpu => {
            let (mut dg, mut dcp) = (vec![0.0f32; 4 * n], vec![0.0f32; n]);
            lstm_cell_backward_cpu(
                acts.host_data()?,
                c.host_data()?,
                c_new.host_data()?,
                dh.host_data()?,
                dc.host_data()?,
                hidden,
                &mut dg,
                &mut dcp,
            );
            Ok((
                Tensor::from_vec(acts.shape(), dg, dev)?,
                Tensor::from_vec(c.shape(), dcp, dev)?,
            ))
        }
        Device::Gpu(g) => {
            let (mut dg, mut dcp) = (g.zeros::<f32>(4 * n)?, g.zeros::<f32>(n)?);
            if n > 0 {
                let mut args = KernelArgs::new();
                args.ptr(g.addr(acts.buffer())).ptr(g.addr(c.buffer()));
                args.ptr(g.addr(c_new.buffer())).ptr(g.addr(dh.buffer()));
                args.ptr(g.addr(dc.buffer())).ptr(g.addr_mut(&mut dg));
                args.ptr(g.addr_mut(&mut dcp)).value(&params(batch, hidden));
                g.launch(
                    "lstm_cell_backward_f32",
                    LaunchCfg::for_elements(n),
                    &mut args,
                )?;
            }
            Ok((
                Tensor::from_buffer(acts.shape(), dg, dev)?,
                Tensor::from_buffer(c.shape(), dcp, dev)?,
            ))
        }
    }
}

// ---------- autograd ----------

/// The pointwise cell on the tape: `(h', c')` from `gates [batch, 4·H]` and `c [batch, H]`.
///
/// The tape holds one value per op, so the two outputs are two nodes: `c'` (inputs gates, c)
/// and, after it, `h'` (input `c'`). Walking back, `h'`'s node only hands its gradient to the
/// `c'` node (through a shared slot, passing zeros along the tape edge), whose backward then runs
/// the fused kernel once with both `dh'` and `dc'`.
pub fn lstm_pointwise(g: &mut Graph, gates: Var, c: Var) -> Result<(Var, Var)> {
    let out = lstm_cell_forward(g.value(gates), g.value(c))?;
    let need_dc_prev = g.requires_grad(c);
    let dh_slot: Rc<RefCell<Option<Tensor>>> = Rc::new(RefCell::new(None));
    let slot = Rc::clone(&dh_slot);
    let (acts, c_prev, c_new) = (out.acts, g.value(c).clone(), out.c.clone());
    let c_var = g.op(out.c, &[gates, c], move |dc| {
        let dh = match slot.borrow_mut().take() {
            Some(dh) => dh,
            None => Tensor::zeros(dc.shape(), dc.device())?,
        };
        let (dgates, dc_prev) = lstm_cell_backward(&acts, &c_prev, &c_new, &dh, dc)?;
        Ok(vec![Some(dgates), need_dc_prev.then_some(dc_prev)])
    });
    let h_var = g.op(out.h, &[c_var], move |dh| {
        *dh_slot.borrow_mut() = Some(dh.clone());
        Ok(vec![Some(Tensor::zeros(dh.shape(), dh.device())?)])
    });
    Ok((h_var, c_var))
}

/// The weights of one LSTM cell on the tape: `weight_ih [4H, in]`, `weight_hh [4H, H]`,
/// `bias_ih [4H]`, `bias_hh [4H]`.
#[derive(Clone, Copy, Debug)]
pub struct LstmWeights {
    /// Input-to-gates weight `[4H, in]`.
    pub weight_ih: Var,
    /// Hidden-to-gates weight `[4H, H]`.
    pub weight_hh: Var,
    /// Input-side bias `[4H]`.
    pub bias_ih: Var,
    /// Hidden-side bias `[4H]`.
    pub bias_hh: Var,
}

/// One LSTM step: `x [batch, in]`, state `h, c [batch, H]` → `(h', c')`.
pub fn lstm_cell(g: &mut Graph, x: Var, h: Var, c: Var, w: &LstmWeights) -> Result<(Var, Var)> {
    let from_x = linear(g, x, w.weight_ih, Some(w.bias_ih))?;
    lstm_cell_from_input_gates(g, from_x, h, c, w)
}

/// [`lstm_cell`] given the input half of the gates `x·W_ihᵀ + b_ih` (`[batch, 4H]`): how a
/// sequence layer runs the input products of all steps as one GEMM.
pub fn lstm_cell_from_input_gates(
    g: &mut Graph,
    from_x: Var,
    h: Var,
    c: Var,
    w: &LstmWeights,
) -> Result<(Var, Var)> {
    let from_h = linear(g, h, w.weight_hh, Some(w.bias_hh))?;
    let gates = add(g, from_x, from_h)?;
    lstm_pointwise(g, gates, c)
}
