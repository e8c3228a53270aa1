//! MSE and the knowledge-distillation losses of the four seeds (SPEC-NOTES §7). With student logits
//! `s`, constant teacher logits `t`, labels `y`, N rows and C classes, `p = softmax(t/T)`,
//! `q = softmax(s/T)`, `H_i = -sum_c p log q`, `KL_i = sum_c p (log p - log q)`,
//! `CE_i = -log_softmax(s_i)[y_i]`:
//! - `kd_lit`:  `[(1-alpha)*T^2*sum H + alpha*sum CE] / N` (alpha weights the HARD term);
//! - `kd_qd`:   `w_soft*T^2*sum KL/(N*C) + (1-w_soft)*sum CE/N`;
//! - `kd_lma`:  `w_soft*T^2*sum KL/N + (1-w_soft)*sum CE/N`;
//! - `kd_takd`: `(1-lambda)*sum CE/N + lambda*T^2*sum KL/(N*C)`;
//! - `kd_nmt`:  `[(1-w_soft)*sum CE + w_soft*sum KL] / num_sentences` with T = 1.
//!
//! All are `a_soft*sum S + a_hard*sum CE`; the gradient with respect to `s` is
//! `a_soft*(q - p)/T + a_hard*(softmax(s) - onehot(y))` (for H and KL alike). Row values are
//! computed in f64 and summed in f64. `mse`: mean over all elements of `(input - target)^2`.
//! Kernels: `kernels/kd.cu`.

use crate::autograd::{Graph, Var};
use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::loss::check_labels;
use crate::ops::partials::{self, check_i32};
use crate::ops::Real;
use crate::tensor::{same_device, IndexTensor, Tensor};

/// Mirrors `MseParams` in `kernels/kd.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MseParams {
    /// Number of elements.
    pub n: i32,
    /// Gradient scale, `2 / n` for the backward.
    pub scale: f32,
}

/// Mirrors `KdParams` in `kernels/kd.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct KdParams {
    /// Rows (examples).
    pub rows: i32,
    /// Columns (classes).
    pub cols: i32,
    /// 1: the soft term is KL; 0: soft cross-entropy H.
    pub soft_kl: i32,
    /// Padding so the f64 fields are 8-byte aligned.
    pub pad: i32,
    /// Temperature T.
    pub temperature: f64,
    /// Weight of the summed soft term in the loss.
    pub a_soft: f64,
    /// Weight of the summed cross-entropy in the loss.
    pub a_hard: f64,
    /// Scale of the reported soft component.
    pub c_soft: f64,
    /// Scale of the reported hard component.
    pub c_hard: f64,
}

/// Threads of the KD row and reduce kernels (`KD_THREADS`).
const KD_THREADS: u32 = 128;

/// A distillation loss of one of the seeds, with its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KdLoss {
    /// LIT: `[(1-alpha)*T^2*sum H + alpha*sum CE] / N`.
    Lit {
        /// Temperature T.
        temperature: f64,
        /// Weight of the hard (cross-entropy) term.
        alpha: f64,
    },
    /// Polino QD: `w_soft*T^2*KL/(N*C) + (1-w_soft)*CE_mean`.
    Qd {
        /// Temperature T.
        temperature: f64,
        /// Weight of the soft term.
        w_soft: f64,
    },
    /// LMA: `w_soft*T^2*KL/N + (1-w_soft)*CE_mean`.
    Lma {
        /// Temperature T.
        temperature: f64,
        /// Weight of the soft term.
        w_soft: f64,
    },
    /// TAKD: `(1-lambda)*CE_mean + lambda*T^2*KL/(N*C)`.
    Takd {
        /// Temperature T.
        temperature: f64,
        /// Weight of the soft term.
        lambda: f64,
    },
    /// QD/LMA translation: `[(1-w_soft)*sum NLL + w_soft*sum KL] / num_sentences`, T = 1.
    Nmt {
        /// Sentences in the batch (the divisor).
        num_sentences: usize,
        /// Weight of the soft term.
        w_soft: f64,
    },
}

/// Which soft term a loss uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftTerm {
    /// Soft cross-entropy `H(p, q)`.
    CrossEntropy,
    /// `KL(p || q)`.
    Kl,
}

/// A KD loss reduced to `a_soft*sum S + a_hard*sum CE` for `rows x cols` logits, plus how its two
/// reported components are scaled and named.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KdWeights {
    /// The soft term used.
    pub soft: SoftTerm,
    /// Temperature T.
    pub temperature: f64,
    /// Weight of the summed soft term.
    pub a_soft: f64,
    /// Weight of the summed cross-entropy.
    pub a_hard: f64,
    /// Scale of the reported soft component.
    pub c_soft: f64,
    /// Scale of the reported hard component.
    pub c_hard: f64,
    /// Name of the reported soft component (`kl`, `soft_ce`, …).
    pub soft_name: &'static str,
    /// Name of the reported hard component.
    pub hard_name: &'static str,
}

impl KdLoss {
    /// A loss for configs: `lit` (weight = alpha), `qd` / `lma` (weight = w_soft), `takd`
    /// (weight = lambda). `nmt` needs a sentence count: build [`KdLoss::Nmt`] directly.
    pub fn from_name(name: &str, temperature: f64, weight: f64) -> Result<KdLoss> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::Config(format!(
                "KD loss `{name}`: temperature must be a positive number, got {temperature}"
            )));
        }
        if !(0.0..=1.0).contains(&weight) {
            return Err(Error::Config(format!(
                "KD loss `{name}`: the weight must be in [0, 1], got {weight}"
            )));
        }
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "lit" | "kd_lit" => KdLoss::Lit {
                temperature,
                alpha: weight,
            },
            "qd" | "kd_qd" => KdLoss::Qd {
                temperature,
                w_soft: weight,
            },
            "lma" | "kd_lma" => KdLoss::Lma {
                temperature,
                w_soft: weight,
            },
            "takd" | "kd_takd" => KdLoss::Takd {
                temperature,
                lambda: weight,
            },
            other => {
                return Err(Error::Config(format!(
                    "unknown KD loss `{other}`: expected one of lit, qd, lma, takd"
                )))
            }
        })
    }

    /// The weights of this loss for `rows x cols` logits.
    pub fn weights(&self, rows: usize, cols: usize) -> Result<KdWeights> {
        let (n, nc) = (rows as f64, (rows * cols) as f64);
        let t2 = |t: f64| t * t;
        let w = match *self {
            KdLoss::Lit {
                temperature: t,
                alpha,
            } => KdWeights {
                soft: SoftTerm::CrossEntropy,
                temperature: t,
                a_soft: (1.0 - alpha) * t2(t) / n,
                a_hard: alpha / n,
                c_soft: t2(t),
                c_hard: 1.0,
                soft_name: "soft_scaled_sum",
                hard_name: "hard_sum",
            },
            KdLoss::Qd {
                temperature: t,
                w_soft,
            } => KdWeights {
                soft: SoftTerm::Kl,
                temperature: t,
                a_soft: w_soft * t2(t) / nc,
                a_hard: (1.0 - w_soft) / n,
                c_soft: 1.0 / nc,
                c_hard: 1.0 / n,
                soft_name: "kl_mean_nc",
                hard_name: "ce_mean",
            },
            KdLoss::Lma {
                temperature: t,
                w_soft,
            } => KdWeights {
                soft: SoftTerm::Kl,
                temperature: t,
                a_soft: w_soft * t2(t) / n,
                a_hard: (1.0 - w_soft) / n,
                c_soft: 1.0 / n,
                c_hard: 1.0 / n,
                soft_name: "kl_batchmean",
                hard_name: "ce_mean",
            },
            KdLoss::Takd {
                temperature: t,
                lambda,
            } => KdWeights {
                soft: SoftTerm::Kl,
                temperature: t,
                a_soft: lambda * t2(t) / nc,
                a_hard: (1.0 - lambda) / n,
                c_soft: 1.0 / nc,
                c_hard: 1.0 / n,
                soft_name: "kl_mean_nc",
                hard_name: "ce_mean",
            },
            KdLoss::Nmt {
                num_sentences,
                w_soft,
            } => {
                if num_sentences == 0 {
                    return Err(Error::op_arg(
                        "kd_nmt",
                        "kd_nmt: num_sentences must be at least 1",
                    ));
                }
                let ns = num_sentences as f64;
                KdWeights {
                    soft: SoftTerm::Kl,
                    temperature: 1.0,
                    a_soft: w_soft / ns,
                    a_hard: (1.0 - w_soft) / ns,
                    c_soft: 1.0,
                    c_hard: 1.0,
                    soft_name: "kl_sum",
                    hard_name: "nll_sum",
                }
            }
        };
        if !(w.temperature.is_finite() && w.temperature > 0.0) {
            return Err(Error::op_arg(
                "kd_loss",
                format!(
                    "KD loss: temperature must be a positive number, got {}",
                    w.temperature
                ),
            ));
        }
        Ok(w)
    }
}

// ---------- CPU reference ----------

/// Mean squared error `Σ(a - b)² / n`, summed in f64.
pub fn mse_forward_cpu<T: Real>(a: &[T], b: &[T]) -> T {
    let ss: f64 = a
        .iter()
        .zip(b)
        .map(|(&a, &b)| (a.to_f64() - b.to_f64()).powi(2))
        .sum();
    T::from_f64(ss / a.len() as f64)
}

/// Gradient of the MSE for `a`: `da = dloss · 2(a - b) / n`.
pub fn mse_backward_cpu<T: Real>(a: &[T], b: &[T], dloss: T, da: &mut [T]) {
    let g = dloss * T::from_f64(2.0 / a.len() as f64);
    for ((d, &a), &b) in da.iter_mut().zip(a).zip(b) {
        *d = g * (a - b);
    }
}

/// Per-row values of one KD evaluation (f64).
#[derive(Clone, Debug, Default)]
pub struct KdRows {
    /// S_i (H or KL).
    pub soft: Vec<f64>,
    /// CE_i at T = 1.
    pub ce: Vec<f64>,
    /// Per row: log-sum-exp of s/T, of t/T, of s.
    pub lse: Vec<[f64; 3]>,
}

fn logsumexp(row: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = row.clone().fold(f64::NEG_INFINITY, f64::max);
    m + row.map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// Row values of a KD loss; labels must be in range.
pub fn kd_rows_cpu<T: Real>(
    s: &[T],
    t: &[T],
    labels: &[i32],
    cols: usize,
    w: &KdWeights,
) -> KdRows {
    let temp = w.temperature;
    let mut out = KdRows::default();
    for ((sr, tr), &y) in s.chunks_exact(cols).zip(t.chunks_exact(cols)).zip(labels) {
        let lse_s = logsumexp(sr.iter().map(|v| v.to_f64() / temp));
        let lse_t = logsumexp(tr.iter().map(|v| v.to_f64() / temp));
        let lse_1 = logsumexp(sr.iter().map(|v| v.to_f64()));
        let mut soft = 0.0;
        for (&sv, &tv) in sr.iter().zip(tr) {
            let logp = tv.to_f64() / temp - lse_t;
            let logq = sv.to_f64() / temp - lse_s;
            let p = logp.exp();
            if p > 0.0 {
                soft += match w.soft {
                    SoftTerm::Kl => p * (logp - logq),
                    SoftTerm::CrossEntropy => -p * logq,
                };
            }
        }
        out.soft.push(soft);
        out.ce.push(lse_1 - sr[y as usize].to_f64());
        out.lse.push([lse_s, lse_t, lse_1]);
    }
    out
}

/// `(loss, soft component, hard component)`.
pub fn kd_reduce_cpu(rows: &KdRows, w: &KdWeights) -> (f64, f64, f64) {
    let soft: f64 = rows.soft.iter().sum();
    let ce: f64 = rows.ce.iter().sum();
    (
        w.a_soft * soft + w.a_hard * ce,
        w.c_soft * soft,
        w.c_hard * ce,
    )
}

/// Gradient with respect to the student logits.
#[allow(clippy::too_many_arguments)]
pub fn kd_backward_cpu<T: Real>(
    s: &[T],
    t: &[T],
    labels: &[i32],
    cols: usize,
    rows: &KdRows,
    w: &KdWeights,
    dloss: f64,
    ds: &mut [T],
) {
    let temp = w.temperature;
    for (r, ((sr, tr), dr)) in s
        .chunks_exact(cols)
        .zip(t.chunks_exact(cols))
        .zip(ds.chunks_exact_mut(cols))
        .enumerate()
    {
        let [lse_s, lse_t, lse_1] = rows.lse[r];
        for (c, ((d, &sv), &tv)) in dr.iter_mut().zip(sr).zip(tr).enumerate() {
            let q = (sv.to_f64() / temp - lse_s).exp();
            let p = (tv.to_f64() / temp - lse_t).exp();
            let sm = (sv.to_f64() - lse_1).exp();
            let hard = sm - if c == labels[r] as usize { 1.0 } else { 0.0 };
            *d = T::from_f64(dloss * (w.a_soft * (q - p) / temp + w.a_hard * hard));
        }
    }
}

// ---------- device dispatch: MSE ----------

fn check_mse(input: &Tensor, target: &Tensor) -> Result<usize> {
    same_device("mse", input, target)?;
    target.expect_shape("mse: target (same shape as the input)", input.shape())?;
    if input.numel() == 0 {
        return Err(Error::Shape("mse: empty input".into()));
    }
    Ok(check_i32("mse", input.shape())? as usize)
}

/// `mean((input - target)^2)` → 0-dim tensor.
pub fn mse_forward(input: &Tensor, target: &Tensor) -> Result<Tensor> {
    let n = check_mse(input, target)?;
    let dev = input.device();
    match dev {
        Device::Cpu => Tensor::scalar(
            mse_forward_cpu(input.host_data()?, target.host_data()?),
            dev,
        ),
        Device::Gpu(g) => {
            let blocks = partials::partial_blocks(n);
            let mut partial = g.zeros::<f64>(blocks)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(input.buffer()))
                .ptr(g.addr(target.buffer()));
            args.ptr(g.addr_mut(&mut partial));
            args.value(&MseParams {
                n: n as i32,
                scale: 0.0,
            });
            g.launch("mse_partial_f32", partials::partial_launch(n), &mut args)?;
            let out = partials::finish(g, &partial, blocks, 1, 1.0 / n as f64)?;
            Tensor::from_buffer(&[], out, dev)
        }
    }
}

/// Gradient of the MSE with respect to `input`, for the loss gradient `dloss` (one element).
pub fn mse_backward(input: &Tensor, target: &Tensor, dloss: &Tensor) -> Result<Tensor> {
    let n = check_mse(input, target)?;
    same_device("mse backward", input, dloss)?;
    let dev = input.device();
    match dev {
        Device::Cpu => {
            let mut da = vec![0.0f32; n];
            mse_backward_cpu(
                input.host_data()?,
                target.host_data()?,
                dloss.host_data()?[0],
                &mut da,
            );
            Tensor::from_vec(input.shape(), da, dev)
        }
        Device::Gpu(g) => {
            let mut da = g.zeros::<f32>(n)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(input.buffer()))
                .ptr(g.addr(target.buffer()));
            args.ptr(g.addr(dloss.buffer())).ptr(g.addr_mut(&mut da));
            args.value(&MseParams {
                n: n as i32,
                scale: (2.0 / n as f64) as f32,
            });
            g.launch("mse_backward_f32", LaunchCfg::for_elements(n), &mut args)?;
            Tensor::from_buffer(input.shape(), da, dev)
        }
    }
}

// ---------- device dispatch: KD ----------

/// What a KD forward pass returns.
pub struct KdForward {
    /// 0-dim.
    pub loss: Tensor,
    /// The two named components (soft first), each 0-dim.
    pub components: [(&'static str, Tensor); 2],
    /// Per-row log-sum-exps for the backward pass (`[rows, 3]`, f64; cpu keeps them on the host).
    row_lse: RowLse,
}

enum RowLse {
    Host(KdRows),
    Device(crate::device::Buffer<f64>),
}

fn kd_params(w: &KdWeights, rows: usize, cols: usize) -> KdParams {
    KdParams {
        rows: rows as i32,
        cols: cols as i32,
        soft_kl: (w.soft == SoftTerm::Kl) as i32,
        pad: 0,
        temperature: w.temperature,
        a_soft: w.a_soft,
        a_hard: w.a_hard,
        c_soft: w.c_soft,
        c_hard: w.c_hard,
    }
}

fn check_kd(s: &Tensor, t: &Tensor, labels: &IndexTensor) -> Result<(usize, usize)> {
    same_device("kd loss", s, t)?;
    t.expect_shape(
        "kd loss: teacher logits (same shape as the student's)",
        s.shape(),
    )?;
    let (rows, cols) = check_labels("kd loss", s, labels)?;
    check_i32("kd loss", s.shape())?;
    Ok((rows, cols))
}

/// A KD loss of student logits `s` against teacher logits `t` and `labels`, on their device.
pub fn kd_forward(
    s: &Tensor,
    t: &Tensor,
    labels: &IndexTensor,
    loss: &KdLoss,
) -> Result<KdForward> {
    let (rows, cols) = check_kd(s, t, labels)?;
    let w = loss.weights(rows, cols)?;
    let dev = s.device();
    match dev {
        Device::Cpu => {
            let y = labels.host_data()?;
            let r = kd_rows_cpu(s.host_data()?, t.host_data()?, y, cols, &w);
            let (l, cs, ch) = kd_reduce_cpu(&r, &w);
            Ok(KdForward {
                loss: Tensor::scalar(l as f32, dev)?,
                components: [
                    (w.soft_name, Tensor::scalar(cs as f32, dev)?),
                    (w.hard_name, Tensor::scalar(ch as f32, dev)?),
                ],
                row_lse: RowLse::Host(r),
            })
        }
        Device::Gpu(g) => {
            let p = kd_params(&w, rows, cols);
            let mut row_soft = g.zeros::<f64>(rows)?;
            let mut row_ce = g.zeros::<f64>(rows)?;
            let mut row_lse = g.zeros::<f64>(rows * 3)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(s.buffer())).ptr(g.addr(t.buffer()));
            args.ptr(g.addr(labels.buffer()))
                .ptr(g.addr_mut(&mut row_soft));
            args.ptr(g.addr_mut(&mut row_ce))
                .ptr(g.addr_mut(&mut row_lse));
            let grid = (rows.min(65535) as u32, 1, 1);
            let cfg = LaunchCfg::new(grid, (KD_THREADS, 1, 1)).grid_stride();
            g.launch("kd_rows_f64", cfg, args.value(&p))?;

            let (mut l, mut cs, mut ch) =
                (g.zeros::<f32>(1)?, g.zeros::<f32>(1)?, g.zeros::<f32>(1)?);
            let mut args = KernelArgs::new();
            args.ptr(g.addr(&row_soft)).ptr(g.addr(&row_ce));
            args.ptr(g.addr_mut(&mut l)).ptr(g.addr_mut(&mut cs));
            args.ptr(g.addr_mut(&mut ch));
            let cfg = LaunchCfg::new((1, 1, 1), (KD_THREADS, 1, 1));
            g.launch("kd_reduce_f64", cfg, args.value(&p))?;
            Ok(KdForward {
                loss: Tensor::from_buffer(&[], l, dev)?,
                components: [
                    (w.soft_name, Tensor::from_buffer(&[], cs, dev)?),
                    (w.hard_name, Tensor::from_buffer(&[], ch, dev)?),
                ],
                row_lse: RowLse::Device(row_lse),
            })
        }
    }
}

/// Gradient with respect to the student logits `s`, for the loss gradient `dloss` (one element).
pub fn kd_backward(
    s: &Tensor,
    t: &Tensor,
    labels: &IndexTensor,
    loss: &KdLoss,
    forward: &KdForward,
    dloss: &Tensor,
) -> Result<Tensor> {
    let (rows, cols) = check_kd(s, t, labels)?;
    same_device("kd loss backward", s, dloss)?;
    if dloss.numel() != 1 {
        return Err(Error::Shape(format!(
            "kd loss backward: the loss gradient must be a scalar, got {:?}",
            dloss.shape()
        )));
    }
    let w = loss.weights(rows, cols)?;
    let dev = s.device();
    match (&forward.row_lse, dev) {
        (RowLse::Host(r), Device::Cpu) => {
            let y = labels.host_data()?;
            let mut ds = vec![0.0f32; rows * cols];
            let dl = dloss.host_data()?[0] as f64;
            kd_backward_cpu(s.host_data()?, t.host_data()?, y, cols, r, &w, dl, &mut ds);
            Tensor::from_vec(s.shape(), ds, dev)
        }
        (RowLse::Device(lse), Device::Gpu(g)) => {
            let p = kd_params(&w, rows, cols);
            let mut ds = g.zeros::<f32>(rows * cols)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(s.buffer())).ptr(g.addr(t.buffer()));
            args.ptr(g.addr(labels.buffer())).ptr(g.addr(lse));
            args.ptr(g.addr(dloss.buffer())).ptr(g.addr_mut(&mut ds));
            let cfg = LaunchCfg::for_elements(rows * cols);
            g.launch("kd_backward_f32", cfg, args.value(&p))?;
            Tensor::from_buffer(s.shape(), ds, dev)
        }
        _ => Err(Error::Device(
            "kd loss backward: forward state from another device".into(),
        )),
    }
}

// ---------- autograd ----------

/// `mean((input - target)^2)`; `target` is a constant (e.g. a teacher feature map).
pub fn mse(g: &mut Graph, input: Var, target: &Tensor) -> Result<Var> {
    let (a, b) = (g.value(input).clone(), target.clone());
    let y = mse_forward(&a, &b)?;
    Ok(g.op(y, &[input], move |dl| {
        Ok(vec![Some(mse_backward(&a, &b, dl)?)])
    }))
}

/// A KD loss and its two named components (0-dim constants).
pub struct KdOutput {
    /// The scalar loss on the tape.
    pub loss: Var,
    /// The soft and hard components, scaled as the loss reports them.
    pub components: [(&'static str, Tensor); 2],
}

/// A KD loss of student logits `s` (`[N, C]`, with gradient) against constant teacher logits and labels.
pub fn kd_loss(
    g: &mut Graph,
    s: Var,
    teacher: &Tensor,
    labels: &IndexTensor,
    loss: KdLoss,
) -> Result<KdOutput> {
    let sv = g.value(s).clone();
    let fwd = kd_forward(&sv, teacher, labels, &loss)?;
    let components = fwd.components.clone();
    let (t, y) = (teacher.clone(), labels.clone());
    let value = fwd.loss.clone();
    let v = g.op(value, &[s], move |dl| {
        Ok(vec![Some(kd_backward(&sv, &t, &y, &loss, &fwd, dl)?)])
    });
    Ok(KdOutput {
        loss: v,
        components,
    })
}
