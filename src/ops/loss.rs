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
    if !labels.device().is_cpu() {
        return Ok((rows, cols));
    }
    let values = labels.host_data()?;
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
    Ok(x.chunks_exact(cols).map(argmax_row).collect())
}

/// The first index of the row's largest value; a NaN compares false, so it never wins over a
/// number (the kernel `count_correct_rows_f32` does the same).
fn argmax_row(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (j, &v)| if v > row[best] { j } else { best })
}

/// How many rows of `logits` have their argmax equal to the label (read to the host now).
pub fn accuracy(logits: &Tensor, labels: &IndexTensor) -> Result<usize> {
    let pred = argmax_rows(logits)?;
    check_label_count("accuracy", logits, labels)?;
    let y = labels.to_vec()?;
    Ok(count_matches(&pred, &y))
}

/// Rows whose predicted class equals their label (negative labels never match).
fn count_matches(pred: &[usize], labels: &[i32]) -> usize {
    pred.iter()
        .zip(labels)
        .filter(|(&p, &y)| y >= 0 && p == y as usize)
        .count()
}

/// Labels must be `[N]` for logits `[N, C]`.
fn check_label_count(op: &str, logits: &Tensor, labels: &IndexTensor) -> Result<()> {
    let rows = logits.shape().first().copied().unwrap_or(0);
    if labels.shape() != [rows] {
        return Err(Error::Shape(format!(
            "{op}: labels must be [{rows}] for logits {:?}, got shape {:?}",
            logits.shape(),
            labels.shape()
        )));
    }
    Ok(())
}

/// Mirrors `CorrectParams` in `kernels/loss.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CorrectParams {
    /// Rows (examples).
    pub rows: i32,
    /// Columns (classes, > 0).
    pub cols: i32,
}

/// The CPU reference of `count_correct_rows_f32`: [`accuracy`] on host slices (`logits` row-major
/// with `cols` columns, one label per row).
pub fn count_correct_cpu(logits: &[f32], cols: usize, labels: &[i32]) -> usize {
    let pred: Vec<usize> = logits.chunks_exact(cols.max(1)).map(argmax_row).collect();
    count_matches(&pred, labels)
}

/// [`accuracy`] left on the device: a one-element tensor holding the count, so a training step
/// can count its correct predictions without the host waiting (on cpu it is counted directly).
pub fn count_correct(logits: &Tensor, labels: &IndexTensor) -> Result<IndexTensor> {
    let &[rows, cols] = logits.shape() else {
        return Err(Error::Shape(format!(
            "count_correct: logits must be [N, C], got shape {:?}",
            logits.shape()
        )));
    };
    if cols == 0 {
        return Err(Error::Shape(format!(
            "count_correct: no classes in logits of shape {:?}",
            logits.shape()
        )));
    }
    check_label_count("count_correct", logits, labels)?;
    same_device("count_correct", logits, labels)?;
    let (Ok(r), Ok(c)) = (i32::try_from(rows), i32::try_from(cols)) else {
        return Err(Error::op_arg(
            "count_correct",
            format!("logits {:?} above 2^31 - 1 rows or columns", logits.shape()),
        ));
    };
    let dev = logits.device();
    let Device::Gpu(g) = dev else {
        let n = count_correct_cpu(logits.host_data()?, cols, labels.host_data()?);
        return IndexTensor::from_vec(&[1], vec![n as i32], dev);
    };
    let mut count = g.zeros::<i32>(1)?;
    if rows > 0 {
        let mut args = KernelArgs::new();
        args.ptr(g.addr(logits.buffer()))
            .ptr(g.addr(labels.buffer()))
            .ptr(g.addr_mut(&mut count))
            .value(&CorrectParams { rows: r, cols: c });
        g.launch(
            "count_correct_rows_f32",
            LaunchCfg::for_elements(rows),
            &mut args,
        )?;
    }
    IndexTensor::from_buffer(&[1], count, dev)
}
