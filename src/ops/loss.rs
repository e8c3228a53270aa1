//! Cross-entropy of logits `[N, C]` against integer labels `[N]` (PyTorch `F.cross_entropy`):
//! `CE_i = logsumexp(s_i) - s_i[y_i]`, mean or sum over rows. Backward: `(softmax - onehot) / N`
//! (mean) or without `/N` (sum). Plus `argmax_rows` / `accuracy` for evaluation.
//! Kernels: `kernels/loss.cu` (per-row log-sum-exp, then one deterministic f64 reduction).

use crate::autograd::{Graph, Var};
use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::Real;
use crate::tensor::{same_device, IndexTensor, Tensor};

/// How per-row losses become one number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// Divide the summed row losses by the number of rows.
    Mean,
    /// Keep the sum.
    Sum,
}

impl std::str::FromStr for Reduction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            other => Err(Error::Config(format!(
                "unknown reduction `{other}`: expected `mean` or `sum`"
            ))),
        }
    }
}

impl Reduction {
    /// What the summed row losses are divided by.
    fn divisor(self, rows: usize) -> f64 {
        match self {
            Reduction::Mean => rows as f64,
            Reduction::Sum => 1.0,
        }
    }
}

/// Mirrors `CrossEntropyParams` in `kernels/loss.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CrossEntropyParams {
    /// Rows (examples).
    pub rows: i32,
    /// Columns (classes).
    pub cols: i32,
    /// `rows` for the mean, 1 for the sum.
    pub divisor: f32,
}

/// Threads of `cross_entropy_reduce_f32` (its `CE_REDUCE_THREADS`).
const REDUCE_THREADS: u32 = 256;

// ---------- CPU reference ----------

/// Fills `row_lse` with each row's log-sum-exp and returns the reduced loss (row losses summed in
/// f64). Labels must already be in range ([`check_labels`]).
pub fn cross_entropy_forward_cpu<T: Real>(
    logits: &[T],
    labels: &[i32],
    cols: usize,
    reduction: Reduction,
    row_lse: &mut [T],
) -> T {
    let mut total = 0.0f64;
    for ((row, &y), lse) in logits
        .chunks_exact(cols)
        .zip(labels)
        .zip(row_lse.iter_mut())
    {
        let m = row.iter().fold(T::NEG_INFINITY, |m, &v| m.max(v));
        let s: f64 = row.iter().map(|&v| (v - m).exp().to_f64()).sum();
        *lse = m + T::from_f64(s).ln();
        total += (*lse - row[y as usize]).to_f64();
    }
    T::from_f64(total / reduction.divisor(labels.len()))
}

/// `dx = (softmax - onehot) * dloss / divisor`, with the `row_lse` of the forward pass.
pub fn cross_entropy_backward_cpu<T: Real>(
    logits: &[T],
    labels: &[i32],
    cols: usize,
    row_lse: &[T],
    dloss: T,
    reduction: Reduction,
    dx: &mut [T],
) {
    let g = dloss / T::from_f64(reduction.divisor(labels.len()));
    let rows = logits
        .chunks_exact(cols)
        .zip(dx.chunks_exact_mut(cols))
        .zip(labels.iter().zip(row_lse));
    for ((row, dxr), (&y, &lse)) in rows {
        for (j, (dx, &v)) in dxr.iter_mut().zip(row).enumerate() {
            let target = if j == y as usize { T::ONE } else { T::ZERO };
            *dx = ((v - lse).exp() - target) * g;
        }
    }
}

// ---------- checks ----------

/// `(rows, cols)` of 2-D logits `[N, C]` with labels `[N]` (values not looked at).
fn label_shape(what: &str, logits: &Tensor, labels: &IndexTensor) -> Result<(usize, usize)> {
    let &[rows, cols] = logits.shape() else {
        return Err(Error::Shape(format!(
            "{what}: logits must be [N, C], got shape {:?}",
            logits.shape()
        )));
    };
    if rows == 0 || cols == 0 {
        return Err(Error::Shape(format!(
            "{what}: empty logits of shape {:?}",
            logits.shape()
        )));
    }
    if labels.shape() != [rows] {
        return Err(Error::Shape(format!(
            "{what}: labels must be [{rows}] for logits {:?}, got shape {:?}",
            logits.shape(),
            labels.shape()
        )));
    }
    Ok((rows, cols))
}

/// `(rows, cols)` of 2-D logits whose labels are `[rows]`; on the cpu device every label must be
/// in `0..cols` (an error value otherwise). Device labels are not read back — a training step
/// reads nothing to the host (it may be one captured graph) — and the kernels turn a label out of
/// range into a NaN loss, never an out-of-bounds read; data sets check their labels when loaded.
pub fn check_labels(what: &str, logits: &Tensor, labels: &IndexTensor) -> Result<(usize, usize)> {
    let (rows, cols) = label_shape(what, logits, labels)?;
    let Some(values) = labels.host().filter(|_| labels.device().is_cpu()) else {
        return Ok((rows, cols));
    };
    if let Some((row, &bad)) = values
        .iter()
        .enumerate()
        .find(|(_, &y)| y < 0 || y as usize >= cols)
    {
        return Err(Error::Shape(format!(
            "{what}: label {bad} at row {row} is out of range for {cols} classes (labels must be in 0..{cols})"
        )));
    }
    Ok((rows, cols))
}

// ---------- device dispatch ----------

/// What the forward pass returns: the scalar loss, and each row's log-sum-exp for the backward pass.
#[derive(Debug)]
pub struct CrossEntropyOutput {
    /// Shape `[]`.
    pub loss: Tensor,
    /// Shape `[N]`.
    pub row_logsumexp: Tensor,
}

/// Cross-entropy of `logits` `[N, C]` against `labels` `[N]`, with the per-row log-sum-exps
/// the backward reuses.
pub fn cross_entropy_forward(
    logits: &Tensor,
    labels: &IndexTensor,
    reduction: Reduction,
) -> Result<CrossEntropyOutput> {
    same_device("cross_entropy", logits, labels)?;
    let (rows, cols) = check_labels("cross_entropy", logits, labels)?;
    let divisor = reduction.divisor(rows);
    let dev = logits.device();
    match dev {
        Device::Cpu => {
            let x = logits.host_data()?;
            let y = labels.host_data()?;
            let mut lse = vec![0.0f32; rows];
            let loss = cross_entropy_forward_cpu(x, y, cols, reduction, &mut lse);
            Ok(CrossEntropyOutput {
                loss: Tensor::scalar(loss, dev)?,
                row_logsumexp: Tensor::from_vec(&[rows], lse, dev)?,
            })
        }
        Device::Gpu(g) => {
            let params = CrossEntropyParams {
                rows: rows as i32,
                cols: cols as i32,
                divisor: divisor as f32,
            };
            let mut row_loss = g.zeros::<f32>(rows)?;
            let mut row_lse = g.zeros::<f32>(rows)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(logits.buffer()))
                .ptr(g.addr(labels.buffer()));
            args.ptr(g.addr_mut(&mut row_loss))
                .ptr(g.addr_mut(&mut row_lse))
                .value(&params);
            let cfg = crate::ops::softmax::row_launch(rows, cols);
            g.launch("cross_entropy_rows_f32", cfg, &mut args)?;

            let mut loss = g.zeros::<f32>(1)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(&row_loss))
                .ptr(g.addr_mut(&mut loss))
                .value(&params);
            let cfg = LaunchCfg::new((1, 1, 1), (REDUCE_THREADS, 1, 1));
            g.launch("cross_entropy_reduce_f32", cfg, &mut args)?;
            Ok(CrossEntropyOutput {
                loss: Tensor::from_buffer(&[], loss, dev)?,
                row_logsumexp: Tensor::from_buffer(&[rows], row_lse, dev)?,
            })
        }
    }
}

/// Gradient of the loss with respect to the logits; `dloss` is the loss's (scalar) gradient.
pub fn cross_entropy_backward(
    logits: &Tensor,
    labels: &IndexTensor,
    row_logsumexp: &Tensor,
    dloss: &Tensor,
    reduction: Reduction,
) -> Result<Tensor> {
    same_device("cross_entropy backward", logits, labels)?;
    same_device("cross_entropy backward", logits, dloss)?;
    same_device("cross_entropy backward", logits, row_logsumexp)?;
    // Values were checked by the forward pass; the backward never indexes memory with a label.
    let (rows, cols) = label_shape("cross_entropy backward", logits, labels)?;
    row_logsumexp.expect_shape("cross_entropy backward: row log-sum-exp", &[rows])?;
    if dloss.numel() != 1 {
        return Err(Error::Shape(format!(
            "cross_entropy backward: loss gradient must be a scalar, got {:?}",
            dloss.shape()
        )));
    }
    let dev = logits.device();
    match dev {
        Device::Cpu => {
            let y = labels.host_data()?;
            let mut dx = vec![0.0f32; rows * cols];
            let (x, lse) = (logits.host_data()?, row_logsumexp.host_data()?);
            let dl = dloss.host_data()?[0];
            cross_entropy_backward_cpu(x, y, cols, lse, dl, reduction, &mut dx);
            Tensor::from_vec(logits.shape(), dx, dev)
        }
        Device::Gpu(g) => {
            let divisor = reduction.divisor(rows) as f32;
            let params = CrossEntropyParams {
                rows: rows as i32,
                cols: cols as i32,
                divisor,
            };
            let mut dx = g.zeros::<f32>(rows * cols)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(logits.buffer()))
                .ptr(g.addr(labels.buffer()));
            args.ptr(g.addr(row_logsumexp.buffer()))
                .ptr(g.addr(dloss.buffer()));
            args.ptr(g.addr_mut(&mut dx)).value(&params);
            g.launch(
                "cross_entropy_backward_f32",
                LaunchCfg::for_elements(rows * cols),
                &mut args,
            )?;
            Tensor::from_buffer(logits.shape(), dx, dev)
        }
    }
}

// ---------- autograd ----------

/// Scalar cross-entropy of `logits` `[N, C]` against `labels` `[N]`.
pub fn cross_entropy(
    g: &mut Graph,
    logits: Var,
    labels: &IndexTensor,
    reduction: Reduction,
) -> Result<Var> {
    let x = g.value(logits).clone();
    let out = cross_entropy_forward(&x, labels, reduction)?;
    let (labels, lse) = (labels.clone(), out.row_logsumexp);
    Ok(g.op(out.loss, &[logits], move |dloss| {
        Ok(vec![Some(cross_entropy_backward(
            &x, &labels, &lse, dloss, reduction,
        )?)])
    }))
}

// ---------- evaluation helpers (host side) ----------

/// Index of the largest value of each row of `[N, C]` logits (the first one on ties, as PyTorch).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<usize>> {
    let &[_, cols] = logits.shape() else {
        return Err(Error::Shape(format!(
            "argmax_rows: logits must be [N, C], got shape {:?}",
            logits.shape()
        )));
    };
    if cols == 0 {
        return Err(Error::Shape(format!(
            "argmax_rows: no classes in logits of shape {:?}",
            logits.shape()
        )));
    }
    let x = logits.to_vec()?;
    Ok(x.chunks_exact(cols)
        .map(|row| {
            // NaN compares false, so a NaN never wins over a number.
            row.iter()
                .enumerate()
                .fold(0, |best, (j, &v)| if v > row[best] { j } else { best })
        })
        .collect())
}

/// How many rows of `logits` have their argmax equal to the label.
pub fn accuracy(logits: &Tensor, labels: &IndexTensor) -> Result<usize> {
    let pred = argmax_rows(logits)?;
    if labels.shape() != [pred.len()] {
        return Err(Error::Shape(format!(
            "accuracy: labels must be [{}] for logits {:?}, got shape {:?}",
            pred.len(),
            logits.shape(),
            labels.shape()
        )));
    }
    let y = labels.to_vec()?;
    Ok(pred
        .iter()
        .zip(&y)
        .filter(|(&p, &y)| y >= 0 && p == y as usize)
        .count())
}
