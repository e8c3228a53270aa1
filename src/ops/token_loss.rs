//! Token-level losses of the translation seeds (SPEC-TRANSLATION §3.2–3.3, §6.1) over student
//! log-probabilities `logp` `[T, B, V]` with targets `[T, B]`:
//!
//! ```text
//! nll_sum = Σ_{(t,b): y ≠ pad} −logp[t,b,y]                        (NLLLoss, weight 0 at <blank>)
//! kl_sum  = Σ_{(t,b) ALL positions} Σ_v where(p>0, p·(log p − logp), 0),  p = exp(teacher_logp)
//! loss    = (nll_weight·nll_sum + kl_weight·kl_sum) / B             (B = sentences)
//! ```
//!
//! The KL runs over padded positions too: PyTorch 0.3's `kl_div` ignored its `weight` (seed bug
//! B2), and the LMA code kept the sum. `log p` is recomputed from `p` as `kl_div` did. Plain NLL
//! is weights (1, 0) with no teacher; word-level KD is (0.3, 0.7).
//! Backward: `d loss/d logp = (−nll_weight·onehot(y)·[y ≠ pad] − kl_weight·p) / B`; chained through
//! [`crate::ops::softmax::log_softmax`] it is the spec's
//! `(1/B)·[0.3·[y≠pad]·(p_S − onehot) + 0.7·(p_S − p_T)]`.
//! Kernels: `kernels/token_loss.cu` (rows summed in f64, then one fixed-order f64 reduction).

use crate::autograd::{Graph, Var};
use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::partials::PARTIAL_THREADS;
use crate::ops::Real;
use crate::tensor::{same_device, IndexTensor, Tensor};

/// The weights of the two terms and the target that counts for nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenLoss {
    /// Weight of the NLL sum.
    pub nll_weight: f32,
    /// Weight of the KL sum (0: no teacher needed).
    pub kl_weight: f32,
    /// Targets equal to it (`<blank>`, 1 in the seeds) add nothing to the NLL.
    pub pad_index: i32,
}

impl TokenLoss {
    /// Plain NLL (teacher and students without KD).
    pub fn nll(pad_index: i32) -> Self {
        TokenLoss {
            nll_weight: 1.0,
            kl_weight: 0.0,
            pad_index,
        }
    }

    /// Word-level KD as the seeds: `0.3·nll + 0.7·kl`, temperature 1.
    pub fn word_kd(pad_index: i32) -> Self {
        TokenLoss {
            nll_weight: 0.3,
            kl_weight: 0.7,
            pad_index,
        }
    }
}

/// Mirrors `TokenLossParams` in `kernels/token_loss.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TokenLossParams {
    /// Positions `T·B`.
    pub rows: i32,
    /// Vocabulary `V`.
    pub cols: i32,
    /// See [`TokenLoss::pad_index`].
    pub pad_index: i32,
    /// 1 when a teacher is given.
    pub has_teacher: i32,
    /// See [`TokenLoss::nll_weight`].
    pub nll_weight: f32,
    /// See [`TokenLoss::kl_weight`].
    pub kl_weight: f32,
    /// `B`.
    pub sentences: f32,
    /// Keeps the size a multiple of 8.
    pub pad: i32,
}

// ---------- CPU reference ----------

/// `(nll_sum, kl_sum)` of `logp` `[rows, cols]`, summed in f64 (kernel rounding per term).
/// A target out of range (other than the pad index) gives a NaN NLL.
pub fn token_loss_sums_cpu<T: Real>(
    logp: &[T],
    targets: &[i32],
    teacher_logp: Option<&[T]>,
    cols: usize,
    pad_index: i32,
) -> (f64, f64) {
    let (mut nll, mut kl) = (0.0f64, 0.0f64);
    for (row, (x, &y)) in logp.chunks_exact(cols).zip(targets).enumerate() {
        if y != pad_index {
            nll += match x.get(y as usize) {
                Some(v) if y >= 0 => -v.to_f64(),
                _ => f64::NAN,
            };
        }
        if let Some(t) = teacher_logp {
            for (&tv, &xv) in t[row * cols..(row + 1) * cols].iter().zip(x) {
                let p = tv.exp();
                if p > T::ZERO {
                    kl += (p * (p.ln() - xv)).to_f64();
                }
            }
        }
    }
    (nll, kl)
}

/// `(w_nll·nll + w_kl·kl)/B` from the sums, in f64.
pub fn combine(loss: &TokenLoss, sums: (f64, f64), sentences: usize) -> f64 {
    (loss.nll_weight as f64 * sums.0 + loss.kl_weight as f64 * sums.1) / sentences as f64
}

/// Gradient of the loss with respect to `logp` (`dx`, `[rows, cols]`), `dloss` the loss's.
pub fn token_loss_backward_cpu<T: Real>(
    targets: &[i32],
    teacher_logp: Option<&[T]>,
    cols: usize,
    loss: &TokenLoss,
    sentences: usize,
    dloss: T,
    dx: &mut [T],
) {
    let g = dloss / T::from_f64(sentences as f64);
    let (nw, kw) = (
        T::from_f64(loss.nll_weight as f64),
        T::from_f64(loss.kl_weight as f64),
    );
    for (i, d) in dx.iter_mut().enumerate() {
        let (row, col) = (i / cols, i % cols);
        let y = targets[row];
        let mut v = if y != loss.pad_index && y >= 0 && y as usize == col {
            -nw
        } else {
            T::ZERO
        };
        if let Some(t) = teacher_logp {
            v -= kw * t[i].exp();
        }
        *d = g * v;
    }
}

// ---------- checks and dispatch ----------

/// `(rows, cols, sentences)` of `logp` `[T, B, V]` with targets `[T, B]` and the teacher's
/// `[T, B, V]` (required exactly when the KL weight is not 0).
fn check(
    what: &str,
    logp: &Tensor,
    targets: &IndexTensor,
    teacher_logp: Option<&Tensor>,
    loss: &TokenLoss,
) -> Result<(usize, usize, usize)> {
    let &[t, b, v] = logp.shape() else {
        return Err(Error::Shape(format!(
            "{what}: log-probabilities must be [T, B, V], got {:?}",
            logp.shape()
        )));
    };
    targets.expect_shape(&format!("{what}: targets"), &[t, b])?;
    same_device(what, logp, targets)?;
    match (teacher_logp, loss.kl_weight != 0.0) {
        (Some(tl), _) => {
            tl.expect_shape(&format!("{what}: teacher log-probabilities"), logp.shape())?;
            same_device(what, logp, tl)?;
        }
        (None, true) => {
            return Err(Error::op_arg(
                what,
                format!(
                    "a KL weight of {} needs teacher log-probabilities",
                    loss.kl_weight
                ),
            ))
        }
        (None, false) => {}
    }
    if b == 0 || v == 0 {
        return Err(Error::Shape(format!(
            "{what}: no sentences or an empty vocabulary ({:?})",
            logp.shape()
        )));
    }
    crate::ops::partials::check_i32(what, logp.shape())?;
    Ok((t * b, v, b))
}

fn params(
    rows: usize,
    cols: usize,
    sentences: usize,
    teacher: bool,
    l: &TokenLoss,
) -> TokenLossParams {
    TokenLossParams {
        rows: rows as i32,
        cols: cols as i32,
        pad_index: l.pad_index,
        has_teacher: teacher as i32,
        nll_weight: l.nll_weight,
        kl_weight: l.kl_weight,
        sentences: sentences as f32,
        pad: 0,
    }
}

/// What the forward pass returns.
#[derive(Debug)]
pub struct TokenLossOutput {
    /// The loss, shape `[]`.
    pub loss: Tensor,
    /// `[nll_sum, kl_sum, loss]`, shape `[3]` (for logs and the golden `nmt_step` checks).
    pub sums: Tensor,
}

/// The loss of `logp` `[T, B, V]` against `targets` `[T, B]` (and `teacher_logp` when the KL
/// weight is not 0). Nothing is read back on kernel devices.
pub fn token_loss_forward(
    logp: &Tensor,
    targets: &IndexTensor,
    teacher_logp: Option<&Tensor>,
    loss: &TokenLoss,
) -> Result<TokenLossOutput> {
    let (rows, cols, sentences) = check("token_loss", logp, targets, teacher_logp, loss)?;
    let teacher = teacher_logp.filter(|_| loss.kl_weight != 0.0);
    let dev = logp.device();
    match dev {
        Device::Cpu => {
            let t = teacher.map(|t| t.host_data()).transpose()?;
            let sums = token_loss_sums_cpu(
                logp.host_data()?,
                targets.host_data()?,
                t,
                cols,
                loss.pad_index,
            );
            let l = combine(loss, sums, sentences) as f32;
            Ok(TokenLossOutput {
                loss: Tensor::scalar(l, dev)?,
                sums: Tensor::from_vec(&[3], vec![sums.0 as f32, sums.1 as f32, l], dev)?,
            })
        }
        Device::Gpu(g) => {
            let p = params(rows, cols, sentences, teacher.is_some(), loss);
            let (mut row_nll, mut row_kl) =
                (g.zeros::<f64>(rows.max(1))?, g.zeros::<f64>(rows.max(1))?);
            let mut args = KernelArgs::new();
            args.ptr(g.addr(logp.buffer()))
                .ptr(g.addr(targets.buffer()))
                .ptr(teacher.map_or(0, |t| g.addr(t.buffer())));
            args.ptr(g.addr_mut(&mut row_nll))
                .ptr(g.addr_mut(&mut row_kl))
                .value(&p);
            let cfg = LaunchCfg::new((rows.clamp(1, 65535) as u32, 1, 1), (PARTIAL_THREADS, 1, 1));
            g.launch("token_loss_rows_f32", cfg, &mut args)?;
            let (mut sums, mut l) = (g.zeros::<f32>(3)?, g.zeros::<f32>(1)?);
            let mut args = KernelArgs::new();
            args.ptr(g.addr(&row_nll)).ptr(g.addr(&row_kl));
            args.ptr(g.addr_mut(&mut sums))
                .ptr(g.addr_mut(&mut l))
                .value(&p);
            let cfg = LaunchCfg::new((1, 1, 1), (PARTIAL_THREADS, 1, 1));
            g.launch("token_loss_reduce_f32", cfg, &mut args)?;
            Ok(TokenLossOutput {
                loss: Tensor::from_buffer(&[], l, dev)?,
                sums: Tensor::from_buffer(&[3], sums, dev)?,
            })
        }
    }
}

/// Gradient of the loss with respect to `logp` (its shape), `dloss` the loss's scalar gradient.
pub fn token_loss_backward(
    logp: &Tensor,
    targets: &IndexTensor,
    teacher_logp: Option<&Tensor>,
    loss: &TokenLoss,
    dloss: &Tensor,
) -> Result<Tensor> {
    let (rows, cols, sentences) = check("token_loss backward", logp, targets, teacher_logp, loss)?;
    same_device("token_loss backward", logp, dloss)?;
    if dloss.numel() != 1 {
        return Err(Error::Shape(format!(
            "token_loss backward: loss gradient must be a scalar, got {:?}",
            dloss.shape()
        )));
    }
    let teacher = teacher_logp.filter(|_| loss.kl_weight != 0.0);
    let dev = logp.device();
    match dev {
        Device::Cpu => {
            let mut dx = vec![0.0f32; rows * cols];
            let t = teacher.map(|t| t.host_data()).transpose()?;
            let dl = dloss.host_data()?[0];
            token_loss_backward_cpu(targets.host_data()?, t, cols, loss, sentences, dl, &mut dx);
            Tensor::from_vec(logp.shape(), dx, dev)
        }
        Device::Gpu(g) => {
            let p = params(rows, cols, sentences, teacher.is_some(), loss);
            let mut dx = g.zeros::<f32>(rows * cols)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(targets.buffer()))
                .ptr(teacher.map_or(0, |t| g.addr(t.buffer())))
                .ptr(g.addr(dloss.buffer()));
            args.ptr(g.addr_mut(&mut dx)).value(&p);
            let cfg = LaunchCfg::for_elements(rows * cols);
            g.launch("token_loss_backward_f32", cfg, &mut args)?;
            Tensor::from_buffer(logp.shape(), dx, dev)
        }
    }
}

/// The scalar loss of `logp` (a [`Var`] `[T, B, V]`, e.g. from
/// [`crate::ops::softmax::log_softmax`]), and the `[nll_sum, kl_sum, loss]` sums (not on the tape).
pub fn token_loss(
    g: &mut Graph,
    logp: Var,
    targets: &IndexTensor,
    teacher_logp: Option<&Tensor>,
    loss: TokenLoss,
) -> Result<(Var, Tensor)> {
    let x = g.value(logp).clone();
    let out = token_loss_forward(&x, targets, teacher_logp, &loss)?;
    let (targets, teacher) = (targets.clone(), teacher_logp.cloned());
    let var = g.op(out.loss, &[logp], move |dloss| {
        Ok(vec![Some(token_loss_backward(
            &x,
            &targets,
            teacher.as_ref(),
            &loss,
            dloss,
        )?)])
    });
    Ok((var, out.sums))
}
