//! The CPU spec of BatchNorm, generic over f32/f64 slices (the f64 instance is what the finite
//! difference tests differentiate), and the tensor-level CPU paths of [`super::forward`] and
//! [`super::backward`].

use super::sums::{backward_sums_masked, channel_sums, lane_sum2, relu_pass, PlaneMask, Sum2};
use super::{BackwardCall, BatchNormArgs, BnShape, Forward, Grads, Mode, RunningStats, SavedStats};
use crate::device::host_vec_written;
use crate::error::{Error, Result};
use crate::ops::cpu::{prefetch, vectorized};
use crate::ops::Real;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// What the normalising pass does after the affine map, in this order: add a residual (the
/// shortcut of a ResNet block), then clamp at 0. Fusing them saves whole passes over the
/// activations; the values are those of the separate ops, bit for bit.
#[derive(Clone, Copy)]
pub struct Epilogue<'a, T> {
    /// Added after the affine map, shaped like `x`.
    pub residual: Option<&'a [T]>,
    /// Clamp at 0 (after the residual).
    pub relu: bool,
}

/// The statistics a CPU forward normalises with.
#[derive(Clone, Copy)]
pub enum CpuStats<'a, T> {
    /// The batch's (train mode).
    Batch,
    /// The running mean and variance (eval mode).
    Running {
        /// Per-channel mean.
        mean: &'a [T],
        /// Per-channel variance.
        var: &'a [T],
    },
}

/// A CPU forward on slices: the slice-level mirror of [`BatchNormArgs`].
#[derive(Clone, Copy)]
pub struct CpuForward<'a, T> {
    /// Batch (train) or running (eval) statistics.
    pub stats: CpuStats<'a, T>,
    /// `(gamma, beta)`, or none (gamma 1, beta 0).
    pub affine: Option<(&'a [T], &'a [T])>,
    /// The residual add and clamp fused after the affine map.
    pub epilogue: Epilogue<'a, T>,
    /// Added to the variance (in f64 for batch statistics, in `T` for running ones, as the
    /// kernels do).
    pub eps: f64,
}

/// The per-channel statistics of a train forward: `mean`/`invstd` as it normalised with (saved
/// for the backward), and the exact batch mean and biased variance (for the running update).
pub struct TrainStats<T> {
    /// The batch mean, rounded to `T`.
    pub mean: Vec<T>,
    /// `1/sqrt(var + eps)` of the batch variance, rounded to `T`.
    pub invstd: Vec<T>,
    /// The batch mean in f64.
    pub batch_mean: Vec<f64>,
    /// The biased batch variance in f64.
    pub batch_var: Vec<f64>,
}

/// `y = epilogue((x - mean[c]) * (gamma[c] * invstd[c]) + beta[c])`; train mode returns the batch
/// statistics it normalised with.
pub fn forward_cpu<T: Real>(
    x: &[T],
    args: &CpuForward<T>,
    y: &mut [T],
    s: BnShape,
) -> Option<TrainStats<T>> {
    match args.stats {
        CpuStats::Batch => {
            let (batch_mean, batch_var) = batch_stats_cpu(x, s);
            let mean: Vec<T> = batch_mean.iter().map(|&m| T::from_f64(m)).collect();
            let invstd: Vec<T> = batch_var
                .iter()
                .map(|&v| T::from_f64(1.0 / (v + args.eps).sqrt()))
                .collect();
            normalize_cpu(x, &mean, &invstd, args.affine, y, s, args.epilogue);
            Some(TrainStats {
                mean,
                invstd,
                batch_mean,
                batch_var,
            })
        }
        CpuStats::Running { mean, var } => {
            let invstd = invstd_cpu(var, T::from_f64(args.eps));
            normalize_cpu(x, mean, &invstd, args.affine, y, s, args.epilogue);
            None
        }
    }
}

/// Batch mean and biased variance per channel, in one pass over `x`: f64 sums of `d = x - k` and
/// `d²`, shifted by the channel's first value `k`, so `Σd²/n - (Σd/n)²` does not cancel when
/// the mean is far from zero (each `d` is within a few standard deviations of the mean's
/// distance from `k`). One read of the activations instead of two.
fn batch_stats_cpu<T: Real>(x: &[T], s: BnShape) -> (Vec<f64>, Vec<f64>) {
    let n = s.per_channel() as f64;
    let shift = |c: usize| {
        if s.per_channel() == 0 {
            0.0
        } else {
            x[c * s.inner].to_f64()
        }
    };
    let sums = channel_sums(s, Sum2(0.0, 0.0), |c, st| {
        prefetch(x, st + s.prefetch_distance(), s.inner);
        let k = shift(c);
        let (a, b) = vectorized(
            #[inline(always)]
            || {
                let plane = &x[st..st + s.inner];
                lane_sum2(plane, plane, |v, _| {
                    let d = v.to_f64() - k;
                    (d, d * d)
                })
            },
        );
        Sum2(a, b)
    });
    sums.into_iter()
        .enumerate()
        .map(|(c, Sum2(sd, sd2))| {
            let mean_d = sd / n;
            (shift(c) + mean_d, (sd2 / n - mean_d * mean_d).max(0.0))
        })
        .unzip()
}

/// `y = epilogue((x - mean[c]) * (gamma[c] * invstd[c]) + beta[c])` (gamma 1 and beta 0 when
/// absent), in parallel over samples.
fn normalize_cpu<T: Real>(
    x: &[T],
    mean: &[T],
    invstd: &[T],
    affine: Option<(&[T], &[T])>,
    y: &mut [T],
    s: BnShape,
    act: Epilogue<T>,
) {
    let sample = s.channels * s.inner;
    if sample == 0 {
        return;
    }
    // Written as "not > 0" so that NaN clamps to 0 too, as the kernels' `v > 0 ? v : 0` does.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    let clamp = |v: T| {
        if act.relu && !(v > T::ZERO) {
            T::ZERO
        } else {
            v
        }
    };
    y.par_chunks_mut(sample).enumerate().for_each(|(i, ys)| {
        vectorized(
            #[inline(always)]
            || {
                let xs = &x[i * sample..][..sample];
                let rs = act.residual.map(|r| &r[i * sample..][..sample]);
                for c in 0..s.channels {
                    let (scale, shift) = match affine {
                        Some((gamma, beta)) => (gamma[c] * invstd[c], beta[c]),
                        None => (invstd[c], T::ZERO),
                    };
                    // Per-channel values in locals: read through the captured slices inside the
                    // loops, they are reloaded every element and the loops do not vectorise.
                    let m = mean[c];
                    let range = c * s.inner..(c + 1) * s.inner;
                    let pairs = ys[range.clone()].iter_mut().zip(&xs[range.clone()]);
                    match (rs, act.relu) {
                        (None, true) => {
                            for (y, &x) in pairs {
                                let v = (x - m) * scale + shift;
                                *y = if v > T::ZERO { v } else { T::ZERO };
                            }
                        }
                        (None, false) => {
                            for (y, &x) in pairs {
                                *y = (x - m) * scale + shift;
                            }
                        }
                        (Some(rs), _) => {
                            for ((y, &x), &r) in pairs.zip(&rs[range]) {
                                *y = clamp((x - m) * scale + shift + r);
                            }
                        }
                    }
                }
            },
        )
    });
}

/// `1/sqrt(var + eps)` per channel, in `T` arithmetic (as the eval kernel computes it).
pub fn invstd_cpu<T: Real>(var: &[T], eps: T) -> Vec<T> {
    var.iter().map(|&v| T::ONE / (v + eps).sqrt()).collect()
}

/// `r <- (1-m)*r + m*batch` for mean and (unbiased) variance; `n` samples per channel.
fn update_running_cpu<T: Real>(
    (running_mean, running_var): (&mut [T], &mut [T]),
    stats: &TrainStats<T>,
    n: usize,
    momentum: f64,
) {
    let bessel = if n > 1 {
        n as f64 / (n - 1) as f64
    } else {
        1.0
    };
    for c in 0..running_mean.len() {
        let rm = running_mean[c].to_f64();
        let rv = running_var[c].to_f64();
        running_mean[c] = T::from_f64((1.0 - momentum) * rm + momentum * stats.batch_mean[c]);
        running_var[c] =
            T::from_f64((1.0 - momentum) * rv + momentum * stats.batch_var[c] * bessel);
    }
}

/// Where a fused ReLU's mask comes from in a CPU backward.
#[derive(Clone, Copy)]
pub enum ReluMask<'a, T> {
    /// Its output, whose zeros block the gradient.
    Output(&'a [T]),
    /// Recomputed from the input with the train forward's arithmetic,
    /// `(x - mean)·(gamma·invstd) + beta > 0` (`beta` absent: 0), so the same mask without
    /// reading the output back: one stream fewer in both passes. Train mode, no residual.
    Recompute {
        /// Beta, when affine.
        beta: Option<&'a [T]>,
    },
}

/// The inputs of a CPU backward on slices.
#[derive(Clone, Copy)]
pub struct CpuBackward<'a, T> {
    /// The forward's input.
    pub x: &'a [T],
    /// The gradient of the forward's output.
    pub dy: &'a [T],
    /// A fused ReLU's mask.
    pub relu: Option<ReluMask<'a, T>>,
    /// Gamma, when affine.
    pub gamma: Option<&'a [T]>,
    /// The per-channel mean the forward normalised with.
    pub mean: &'a [T],
    /// The per-channel `1/sqrt(var + eps)` the forward normalised with.
    pub invstd: &'a [T],
    /// Train: the statistics depend on `x`; eval: they are constants.
    pub mode: Mode,
}

/// Where a CPU backward writes.
pub struct CpuGrads<'a, T> {
    /// The gradient of `x`.
    pub dx: &'a mut [T],
    /// The gradient of a fused residual (the masked `dy`; needs a ReLU output mask), when wanted.
    pub dresidual: Option<&'a mut [T]>,
    /// The gradient of gamma.
    pub dgamma: &'a mut [T],
    /// The gradient of beta.
    pub dbeta: &'a mut [T],
}

/// Backward given the statistics the forward normalised with (`xhat = (x - mean)*invstd`),
/// `g` being `dy` masked by the fused ReLU (when one is given): `dbeta = sum(g)`,
/// `dgamma = sum(g*xhat)`, and
/// * train: `dx = gamma*invstd*(g - mean(g) - xhat*mean(g*xhat))` (batch statistics depend on x);
/// * eval: `dx = gamma*invstd*g` (running statistics are constants).
pub fn backward_cpu<T: Real>(inp: &CpuBackward<T>, out: CpuGrads<T>, s: BnShape) {
    let CpuBackward {
        x,
        dy,
        relu,
        gamma,
        mean,
        invstd,
        mode,
    } = *inp;
    let sums = channel_sums(s, Sum2(0.0, 0.0), |c, st| {
        let next = st + s.prefetch_distance();
        prefetch(x, next, s.inner);
        prefetch(dy, next, s.inner);
        if let Some(ReluMask::Output(y)) = relu {
            prefetch(y, next, s.inner);
        }
        let (xs, gs) = (&x[st..st + s.inner], &dy[st..st + s.inner]);
        let mask = relu.map(|r| match r {
            ReluMask::Output(y) => PlaneMask::Output(&y[st..st + s.inner]),
            ReluMask::Recompute { beta } => PlaneMask::Recompute {
                scale: gamma.map_or(invstd[c], |gm| gm[c] * invstd[c]),
                shift: beta.map_or(T::ZERO, |b| b[c]),
            },
        });
        let (sg, sgx) = backward_sums_masked(xs, gs, mask, mean[c], invstd[c]);
        Sum2(sg, sgx)
    });
    let n = s.per_channel() as f64;
    let (mean_g, mean_gx): (Vec<T>, Vec<T>) = match mode {
        Mode::Train => sums
            .iter()
            .map(|t| (T::from_f64(t.0 / n), T::from_f64(t.1 / n)))
            .unzip(),
        Mode::Eval => (vec![T::ZERO; s.channels], vec![T::ZERO; s.channels]),
    };
    for (c, t) in sums.iter().enumerate() {
        out.dgamma[c] = T::from_f64(t.1);
        out.dbeta[c] = T::from_f64(t.0);
    }
    let coef = DxCoefficients {
        gamma,
        mean,
        invstd,
        mean_g: &mean_g,
        mean_gx: &mean_gx,
    };
    dx_cpu(inp, &coef, out.dx, out.dresidual, s)
}

/// The per-channel values of the dx pass.
struct DxCoefficients<'a, T> {
    gamma: Option<&'a [T]>,
    mean: &'a [T],
    invstd: &'a [T],
    /// `mean(g)` (train) or 0.
    mean_g: &'a [T],
    /// `mean(g*xhat)` (train) or 0.
    mean_gx: &'a [T],
}

impl<T: Real> DxCoefficients<'_, T> {
    /// `gamma*invstd` of channel `c`.
    #[inline(always)]
    fn scale(&self, c: usize) -> T {
        self.gamma
            .map_or(self.invstd[c], |gm| gm[c] * self.invstd[c])
    }
}

/// The elementwise pass of [`backward_cpu`]: `dx` (and `dres`, the masked `dy`), in parallel over
/// samples.
fn dx_cpu<T: Real>(
    inp: &CpuBackward<T>,
    k: &DxCoefficients<T>,
    dx: &mut [T],
    dres: Option<&mut [T]>,
    s: BnShape,
) {
    if s.channels * s.inner == 0 {
        return;
    }
    match inp.relu {
        None => dx_plain_cpu(inp, k, dx, s),
        Some(relu) => dx_masked_cpu(inp, k, relu, dx, dres, s),
    }
}

/// [`dx_cpu`] without a fused ReLU.
fn dx_plain_cpu<T: Real>(inp: &CpuBackward<T>, k: &DxCoefficients<T>, dx: &mut [T], s: BnShape) {
    let (x, dy, sample) = (inp.x, inp.dy, s.channels * s.inner);
    dx.par_chunks_mut(sample)
        .zip(x.par_chunks(sample).zip(dy.par_chunks(sample)))
        .for_each(|(dxs, (xs, gs))| {
            vectorized(
                #[inline(always)]
                || {
                    for c in 0..s.channels {
                        let scale = k.scale(c);
                        let (m, is, mg, mgx) = (k.mean[c], k.invstd[c], k.mean_g[c], k.mean_gx[c]);
                        let range = c * s.inner..(c + 1) * s.inner;
                        for ((dx, &x), &g) in dxs[range.clone()]
                            .iter_mut()
                            .zip(&xs[range.clone()])
                            .zip(&gs[range])
                        {
                            let xhat = (x - m) * is;
                            *dx = scale * (g - mg - xhat * mgx);
                        }
                    }
                },
            )
        })
}

/// [`dx_cpu`] with `dy` masked by a fused ReLU; `dres` receives the masked `dy`.
fn dx_masked_cpu<T: Real>(
    inp: &CpuBackward<T>,
    k: &DxCoefficients<T>,
    relu: ReluMask<T>,
    dx: &mut [T],
    dres: Option<&mut [T]>,
    s: BnShape,
) {
    let (x, dy, sample) = (inp.x, inp.dy, s.channels * s.inner);
    let sample_grad = |i: usize, dxs: &mut [T], mut drs: Option<&mut [T]>| {
        vectorized(
            #[inline(always)]
            || {
                let at = |v: &[T]| -> std::ops::Range<usize> { i * sample..i * sample + v.len() };
                let (xs, gs) = (&x[at(dxs)], &dy[at(dxs)]);
                let ys = match relu {
                    ReluMask::Output(y) => Some(&y[at(dxs)]),
                    ReluMask::Recompute { .. } => None,
                };
                for c in 0..s.channels {
                    let scale = k.scale(c);
                    let range = c * s.inner..(c + 1) * s.inner;
                    let (dxs, xs) = (&mut dxs[range.clone()], &xs[range.clone()]);
                    let gs = &gs[range.clone()];
                    // Masked gradient first (branch-free select), then the affine update.
                    match (relu, ys) {
                        (ReluMask::Output(_), Some(ys)) => {
                            let ys = &ys[range.clone()];
                            for (dx, (&y, &g)) in dxs.iter_mut().zip(ys.iter().zip(gs)) {
                                *dx = relu_pass(y, g);
                            }
                        }
                        (ReluMask::Output(_), None) => unreachable!("set above"),
                        (ReluMask::Recompute { beta }, _) => {
                            let (m, shift) = (k.mean[c], beta.map_or(T::ZERO, |b| b[c]));
                            for (dx, (&x, &g)) in dxs.iter_mut().zip(xs.iter().zip(gs)) {
                                *dx = relu_pass((x - m) * scale + shift, g);
                            }
                        }
                    }
                    if let Some(drs) = drs.as_deref_mut() {
                        drs[range].copy_from_slice(dxs);
                    }
                    let (m, is, mg, mgx) = (k.mean[c], k.invstd[c], k.mean_g[c], k.mean_gx[c]);
                    for (dx, &x) in dxs.iter_mut().zip(xs) {
                        let xhat = (x - m) * is;
                        *dx = scale * (*dx - mg - xhat * mgx);
                    }
                }
            },
        )
    };
    match dres {
        None => dx
            .par_chunks_mut(sample)
            .enumerate()
            .for_each(|(i, dxs)| sample_grad(i, dxs, None)),
        Some(dres) => dx
            .par_chunks_mut(sample)
            .zip(dres.par_chunks_mut(sample))
            .enumerate()
            .for_each(|(i, (dxs, drs))| sample_grad(i, dxs, Some(drs))),
    }
}

// ---------- tensors ----------

/// [`forward_cpu`] into a new tensor shaped like `x`.
fn forward_tensor(
    x: &Tensor,
    args: &BatchNormArgs<&Tensor>,
    stats: CpuStats<f32>,
    s: BnShape,
) -> Result<(Vec<f32>, Option<TrainStats<f32>>)> {
    let affine = match args.affine {
        Some((g, b)) => Some((g.host_data()?, b.host_data()?)),
        None => None,
    };
    let cpu_args = CpuForward {
        stats,
        affine,
        epilogue: Epilogue {
            residual: args.residual.map(Tensor::host_data).transpose()?,
            relu: args.relu(),
        },
        eps: args.eps as f64,
    };
    let xs = x.host_data()?;
    let mut stats = None;
    // SAFETY: forward_cpu assigns every element of y.
    let y = unsafe { host_vec_written(x.numel(), |y| stats = forward_cpu(xs, &cpu_args, y, s)) };
    Ok((y, stats))
}

/// The train forward on the CPU (inputs checked).
pub(super) fn train_forward(
    x: &Tensor,
    args: &BatchNormArgs<&Tensor>,
    s: BnShape,
) -> Result<Forward> {
    let (c, dev) = (s.channels, x.device());
    let (y, stats) = forward_tensor(x, args, CpuStats::Batch, s)?;
    let stats = stats.ok_or(Error::Internal(
        "batchnorm: a batch-statistics forward returned no statistics".into(),
    ))?;
    let running = match args.running {
        None => None,
        Some(r) => {
            let (mut rm, mut rv) = (r.mean.host_data()?.to_vec(), r.var.host_data()?.to_vec());
            let momentum = args.momentum as f64;
            update_running_cpu((&mut rm, &mut rv), &stats, s.per_channel(), momentum);
            let count = match &r.num_batches_tracked {
                Some(t) => Some(Tensor::from_vec(
                    t.shape(),
                    vec![t.host_data()?[0] + 1.0],
                    dev,
                )?),
                None => None,
            };
            Some(RunningStats {
                mean: Tensor::from_vec(&[c], rm, dev)?,
                var: Tensor::from_vec(&[c], rv, dev)?,
                num_batches_tracked: count,
            })
        }
    };
    Ok(Forward {
        y: Tensor::from_vec(x.shape(), y, dev)?,
        saved: Some(SavedStats {
            mean: Tensor::from_vec(&[c], stats.mean, dev)?,
            invstd: Tensor::from_vec(&[c], stats.invstd, dev)?,
        }),
        running,
    })
}

/// The eval forward on the CPU (inputs checked, running statistics given).
pub(super) fn eval_forward(
    x: &Tensor,
    args: &BatchNormArgs<&Tensor>,
    s: BnShape,
) -> Result<Forward> {
    let running = args
        .running
        .expect("checked: eval mode has running statistics");
    let stats = CpuStats::Running {
        mean: running.mean.host_data()?,
        var: running.var.host_data()?,
    };
    let (y, _) = forward_tensor(x, args, stats, s)?;
    Ok(Forward {
        y: Tensor::from_vec(x.shape(), y, x.device())?,
        saved: None,
        running: None,
    })
}

/// The backward on the CPU (inputs checked); `recompute`: a fused ReLU's mask may be recomputed
/// from `x` ([`ReluMask::Recompute`]) when no residual gradient is wanted in train mode.
pub(super) fn backward(call: &BackwardCall, recompute: bool) -> Result<Grads> {
    let BackwardCall {
        x,
        dy,
        relu_out,
        args,
        saved,
        want_dresidual,
        s,
    } = *call;
    let (c, n, dev) = (s.channels, x.numel(), x.device());
    let (mut dgamma, mut dbeta) = (vec![0.0f32; c], vec![0.0f32; c]);
    let relu = match relu_out {
        Some(_) if recompute && args.mode == Mode::Train && !want_dresidual => {
            Some(ReluMask::Recompute {
                beta: args.affine.map(|(_, b)| b.host_data()).transpose()?,
            })
        }
        y => y.map(|y| y.host_data().map(ReluMask::Output)).transpose()?,
    };
    let inp = CpuBackward {
        x: x.host_data()?,
        dy: dy.host_data()?,
        relu,
        gamma: args.affine.map(|(g, _)| g.host_data()).transpose()?,
        mean: saved.mean.host_data()?,
        invstd: saved.invstd.host_data()?,
        mode: args.mode,
    };
    let mut dres = None;
    // SAFETY: backward_cpu assigns every element of dx, and of dres when given one.
    let dx = unsafe {
        host_vec_written(n, |dx| {
            let mut run = |dresidual: Option<&mut [f32]>| {
                let (dgamma, dbeta) = (&mut dgamma[..], &mut dbeta[..]);
                let out = CpuGrads {
                    dx,
                    dresidual,
                    dgamma,
                    dbeta,
                };
                backward_cpu(&inp, out, s)
            };
            if want_dresidual && relu_out.is_some() {
                dres = Some(host_vec_written(n, |dr| run(Some(dr))));
            } else {
                run(None)
            }
        })
    };
    let dresidual = match dres {
        Some(d) => Some(Tensor::from_vec(x.shape(), d, dev)?),
        None => want_dresidual.then(|| dy.clone()),
    };
    Ok(Grads {
        dx: Tensor::from_vec(x.shape(), dx, dev)?,
        dgamma: Tensor::from_vec(&[c], dgamma, dev)?,
        dbeta: Tensor::from_vec(&[c], dbeta, dev)?,
        dresidual,
    })
}
