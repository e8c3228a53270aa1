//! BatchNorm (1d and 2d) over every axis but 1: `x [N, C, *rest]` is viewed as `[outer = N,
//! channels = C, inner = prod(rest)]` (`[N, F]`: inner = 1). PyTorch semantics (SPEC-NOTES §2):
//!
//! * train: `y = gamma*(x - mean)/sqrt(var + eps) + beta` with the batch mean and BIASED variance;
//!   running stats `r <- (1-m)*r + m*batch` with the UNBIASED variance; `num_batches_tracked += 1`;
//! * eval: the running statistics normalise, nothing changes.
//!
//! Statistics are accumulated in f64: on the CPU in one pass of sums shifted by each channel's
//! first value, on kernel devices per chunk (mean, then squared deviations) combined with Chan's
//! formula — an unshifted one-pass f32 `E[x²] - E[x]²` is off by more than the golden margins. Forward and backward are each one fused
//! pass per channel on the CPU (rayon over channels for the sums, over samples for the elementwise
//! part). On kernel devices (`kernels/batchnorm.cu`) each is three launches: partial statistics per
//! (channel, chunk of the channel's values) on a 2-D grid, a per-channel finalize that combines
//! them, and one elementwise pass that also applies a fused ReLU / residual ([`bn_split`] picks
//! the chunks).

use crate::autograd::{Graph, Var};
use crate::device::{host_vec_written, Device, Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::cpu::{prefetch, vectorized};
use crate::ops::Real;
use crate::tensor::{same_device, Tensor};
use rayon::prelude::*;

/// Mirrors `BatchNormParams` in `kernels/batchnorm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BatchNormParams {
    pub outer: i32,
    pub channels: i32,
    pub inner: i32,
    pub eps: f32,
    pub momentum: f32,
    pub affine: i32,
    pub update_running: i32,
    /// Statistics kernels: chunks per channel and values per chunk (see [`bn_split`]).
    pub chunks: i32,
    pub chunk_len: i32,
    /// Forward: clamp the output at 0 (after the residual, when one is given).
    pub relu: i32,
    /// Backward: batch statistics (else running statistics, constants).
    pub train: i32,
}

/// `x [N, C, *rest]` as `[outer, channels, inner]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnShape {
    pub outer: usize,
    pub channels: usize,
    pub inner: usize,
}

impl BnShape {
    /// How far ahead (in elements) the per-channel passes prefetch: the same channel's plane
    /// of a later sample, at least 1024 elements on (one plane of 32x32, four of 16x16, ...).
    fn prefetch_distance(&self) -> usize {
        1024usize.div_ceil(self.inner.max(1)) * self.channels * self.inner
    }

    pub fn of(shape: &[usize]) -> Result<BnShape> {
        if shape.len() < 2 {
            return Err(Error::Shape(format!(
                "batch_norm: expected x [N, C, ...] of at least 2 dimensions, got {shape:?}"
            )));
        }
        Ok(BnShape {
            outer: shape[0],
            channels: shape[1],
            inner: shape[2..].iter().product(),
        })
    }
    /// Elements per channel (the statistics' sample count).
    pub fn per_channel(&self) -> usize {
        self.outer * self.inner
    }
}

/// Running statistics of a BatchNorm layer: `num_batches_tracked` is an f32 scalar holding an
/// integer (absent when a layer does not track it).
#[derive(Clone, Debug)]
pub struct RunningStats {
    pub mean: Tensor,
    pub var: Tensor,
    pub num_batches_tracked: Option<Tensor>,
}

// ---------- CPU reference ----------

/// Independent f64 accumulators per plane sum: the adds vectorise and the rounding chain is 8x
/// shorter than one running sum.
const LANES: usize = 8;

/// `(sum a, sum b)` of `(a, b) = f(x, g)` over two slices of equal length, in f64 lanes.
#[inline(always)]
fn lane_sum2<T: Real>(xs: &[T], gs: &[T], f: impl Fn(T, T) -> (f64, f64)) -> (f64, f64) {
    let (mut acc_a, mut acc_b) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (xc, gc) = (xs.chunks_exact(LANES), gs.chunks_exact(LANES));
    let (xr, gr) = (xc.remainder(), gc.remainder());
    for (x, g) in xc.zip(gc) {
        let x: &[T; LANES] = x.try_into().expect("chunks_exact");
        let g: &[T; LANES] = g.try_into().expect("chunks_exact");
        for l in 0..LANES {
            let (a, b) = f(x[l], g[l]);
            acc_a[l] += a;
            acc_b[l] += b;
        }
    }
    let (mut ta, mut tb) = (acc_a.iter().sum::<f64>(), acc_b.iter().sum::<f64>());
    for (&x, &g) in xr.iter().zip(gr) {
        let (a, b) = f(x, g);
        ta += a;
        tb += b;
    }
    (ta, tb)
}

/// [`lane_sum2`] of `f(x, g)` with each `g` zeroed where `y_at(i)` (a ReLU's output at `i`) is
/// 0, in the same order. The mask is applied a block at a time into a stack array by a plain loop: selecting
/// inside the f64 lane loop compiles to a branch per element.
#[inline(always)]
fn lane_sum2_masked<T: Real>(
    xs: &[T],
    gs: &[T],
    y_at: impl Fn(usize) -> T,
    f: impl Fn(T, T) -> (f64, f64),
) -> (f64, f64) {
    const BLOCK: usize = 32 * LANES;
    let (mut acc_a, mut acc_b) = ([0.0f64; LANES], [0.0f64; LANES]);
    let full = xs.len() / LANES * LANES;
    let mut masked = [T::ZERO; BLOCK];
    for start in (0..full).step_by(BLOCK) {
        let len = BLOCK.min(full - start);
        let block = &mut masked[..len];
        for (j, (m, &g)) in block.iter_mut().zip(&gs[start..]).enumerate() {
            *m = relu_pass(y_at(start + j), g);
        }
        for (x, g) in xs[start..start + len]
            .chunks_exact(LANES)
            .zip(block.chunks_exact(LANES))
        {
            let x: &[T; LANES] = x.try_into().expect("chunks_exact");
            let g: &[T; LANES] = g.try_into().expect("chunks_exact");
            for l in 0..LANES {
                let (a, b) = f(x[l], g[l]);
                acc_a[l] += a;
                acc_b[l] += b;
            }
        }
    }
    let (mut ta, mut tb) = (acc_a.iter().sum::<f64>(), acc_b.iter().sum::<f64>());
    for (i, (&x, &g)) in xs.iter().zip(gs).enumerate().skip(full) {
        let (a, b) = f(x, relu_pass(y_at(i), g));
        ta += a;
        tb += b;
    }
    (ta, tb)
}

/// The backward's per-channel sums `(Σ g, Σ g·xhat)` with `xhat = (x - m)·is` (f32) and `g`
/// masked by `ys` when given: [`lane_sum2`] / [`lane_sum2_masked`] of that function, written with
/// AVX-512 intrinsics for f32 (the compiler leaves the generic version scalar). The same f32 and
/// f64 operations in the same lane order (multiply then add, no FMA), so the same sums.
/// Where a fused ReLU passed the gradient, per plane.
#[derive(Clone, Copy)]
enum PlaneMask<'a, T> {
    /// Where its saved output `y` is > 0.
    Output(&'a [T]),
    /// Where `(x - m)·scale + shift > 0`: the forward's own arithmetic on the input, so the
    /// same mask without reading the output back (no residual).
    Recompute { scale: T, shift: T },
}

fn backward_sums_masked<T: Real>(
    xs: &[T],
    gs: &[T],
    mask: Option<PlaneMask<T>>,
    m: T,
    is: T,
) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && crate::ops::cpu_gemm::fast_f32_available()
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: T is f32 (checked above), so the slices are f32 slices.
        let cast = |v: &[T]| -> &[f32] {
            unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<f32>(), v.len()) }
        };
        let f = |v: T| v.to_f64() as f32;
        let mask = mask.map(|k| match k {
            PlaneMask::Output(ys) => PlaneMask::Output(cast(ys)),
            PlaneMask::Recompute { scale, shift } => PlaneMask::Recompute {
                scale: f(scale),
                shift: f(shift),
            },
        });
        // SAFETY: AVX-512 F (implied by fast_f32_available) and VL are available (checked above).
        return unsafe { backward_sums_avx512(cast(xs), cast(gs), mask, f(m), f(is)) };
    }
    let sum = |x: T, g: T| {
        let xhat = (x - m) * is;
        (g.to_f64(), g.to_f64() * xhat.to_f64())
    };
    match mask {
        None => lane_sum2(xs, gs, sum),
        Some(PlaneMask::Output(ys)) => lane_sum2_masked(xs, gs, |i| ys[i], sum),
        Some(PlaneMask::Recompute { scale, shift }) => {
            // The forward's output, recomputed (only its sign is used).
            lane_sum2_masked(xs, gs, |i| (xs[i] - m) * scale + shift, sum)
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn backward_sums_avx512(
    xs: &[f32],
    gs: &[f32],
    mask: Option<PlaneMask<f32>>,
    m: f32,
    is: f32,
) -> (f64, f64) {
    use std::arch::x86_64::*;
    const { assert!(LANES == 8) };
    let n = xs.len().min(gs.len());
    let full = n / LANES * LANES;
    let (vm, vis) = (_mm256_set1_ps(m), _mm256_set1_ps(is));
    let (mut acc_a, mut acc_b) = (_mm512_setzero_pd(), _mm512_setzero_pd());
    for i in (0..full).step_by(LANES) {
        let x = _mm256_loadu_ps(xs.as_ptr().add(i));
        let mut g = _mm256_loadu_ps(gs.as_ptr().add(i));
        let d = _mm256_sub_ps(x, vm);
        let y = match mask {
            None => None,
            Some(PlaneMask::Output(ys)) => Some(_mm256_loadu_ps(ys.as_ptr().add(i))),
            Some(PlaneMask::Recompute { scale, shift }) => Some(_mm256_add_ps(
                _mm256_mul_ps(d, _mm256_set1_ps(scale)),
                _mm256_set1_ps(shift),
            )),
        };
        if let Some(y) = y {
            let pass = _mm256_cmp_ps_mask::<_CMP_GT_OQ>(y, _mm256_setzero_ps());
            g = _mm256_maskz_mov_ps(pass, g);
        }
        let xhat = _mm256_mul_ps(d, vis);
        let gd = _mm512_cvtps_pd(g);
        acc_a = _mm512_add_pd(acc_a, gd);
        acc_b = _mm512_add_pd(acc_b, _mm512_mul_pd(gd, _mm512_cvtps_pd(xhat)));
    }
    let (mut la, mut lb) = ([0.0f64; LANES], [0.0f64; LANES]);
    _mm512_storeu_pd(la.as_mut_ptr(), acc_a);
    _mm512_storeu_pd(lb.as_mut_ptr(), acc_b);
    let (mut ta, mut tb) = (la.iter().sum::<f64>(), lb.iter().sum::<f64>());
    for i in full..n {
        let g = match mask {
            Some(PlaneMask::Output(ys)) => relu_pass(ys[i], gs[i]),
            Some(PlaneMask::Recompute { scale, shift }) => {
                relu_pass((xs[i] - m) * scale + shift, gs[i])
            }
            None => gs[i],
        };
        let xhat = (xs[i] - m) * is;
        ta += g as f64;
        tb += g as f64 * xhat as f64;
    }
    (ta, tb)
}

/// The gradient a ReLU with output `y` passes on: `g` where `y > 0`, else 0.
#[inline(always)]
fn relu_pass<T: Real>(y: T, g: T) -> T {
    if y > T::ZERO {
        g
    } else {
        T::ZERO
    }
}

/// Per-channel totals of `plane(c, start)` — the sums over one `[start, start + inner)` plane —
/// over the `outer` planes of each channel, in parallel over channels.
fn channel_sums<R: Send + Sync + Copy + std::ops::Add<Output = R>>(
    s: BnShape,
    zero: R,
    plane: impl Fn(usize, usize) -> R + Sync,
) -> Vec<R> {
    (0..s.channels)
        .into_par_iter()
        .map(|c| {
            (0..s.outer).fold(zero, |acc, o| {
                acc + plane(c, (o * s.channels + c) * s.inner)
            })
        })
        .collect()
}

/// `(Σ d, Σ d²)` pairs summed across planes.
#[derive(Clone, Copy)]
struct ShiftedSums(f64, f64);

impl std::ops::Add for ShiftedSums {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        ShiftedSums(self.0 + o.0, self.1 + o.1)
    }
}

/// Batch mean and biased variance per channel, in one pass over `x`: f64 sums of `d = x - k` and
/// `d²`, shifted by the channel's first value `k`, so `Σd²/n - (Σd/n)²` does not cancel when
/// the mean is far from zero (each `d` is within a few standard deviations of the mean's
/// distance from `k`). One read of the activations instead of two.
pub fn batch_stats_cpu<T: Real>(x: &[T], s: BnShape) -> (Vec<f64>, Vec<f64>) {
    let n = s.per_channel() as f64;
    let shift = |c: usize| {
        if s.per_channel() == 0 {
            0.0
        } else {
            x[c * s.inner].to_f64()
        }
    };
    let sums = channel_sums(s, ShiftedSums(0.0, 0.0), |c, st| {
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
        ShiftedSums(a, b)
    });
    sums.into_iter()
        .enumerate()
        .map(|(c, ShiftedSums(sd, sd2))| {
            let mean_d = sd / n;
            (shift(c) + mean_d, (sd2 / n - mean_d * mean_d).max(0.0))
        })
        .unzip()
}

/// `y = (x - mean[c]) * (gamma[c] * invstd[c]) + beta[c]` (gamma 1 and beta 0 when absent), in
/// parallel over samples.
pub fn normalize_cpu<T: Real>(
    x: &[T],
    mean: &[T],
    invstd: &[T],
    affine: Option<(&[T], &[T])>,
    y: &mut [T],
    s: BnShape,
) {
    normalize_act_cpu(x, mean, invstd, affine, y, s, Act::NONE)
}

/// What the normalising pass does after the affine map, in this order: add a residual (the
/// shortcut of a ResNet block), then clamp at 0. Fusing them saves whole passes over the
/// activations; the values are those of the separate ops, bit for bit.
#[derive(Clone, Copy)]
pub struct Act<'a, T> {
    pub residual: Option<&'a [T]>,
    pub relu: bool,
}

impl<T> Act<'_, T> {
    pub const NONE: Self = Act {
        residual: None,
        relu: false,
    };
    pub const RELU: Self = Act {
        residual: None,
        relu: true,
    };
}

/// [`normalize_cpu`], followed by `act` in the same pass.
fn normalize_act_cpu<T: Real>(
    x: &[T],
    mean: &[T],
    invstd: &[T],
    affine: Option<(&[T], &[T])>,
    y: &mut [T],
    s: BnShape,
    act: Act<T>,
) {
    let sample = s.channels * s.inner;
    if sample == 0 {
        return;
    }
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

/// The per-channel statistics of a train forward: `mean`/`invstd` as it normalised with (saved for
/// the backward), and the exact batch mean and biased variance (for the running update).
pub struct TrainStats<T> {
    pub mean: Vec<T>,
    pub invstd: Vec<T>,
    pub batch_mean: Vec<f64>,
    pub batch_var: Vec<f64>,
}

/// Train forward: normalise with the batch statistics, return them.
pub fn batchnorm_train_forward_cpu<T: Real>(
    x: &[T],
    affine: Option<(&[T], &[T])>,
    y: &mut [T],
    s: BnShape,
    eps: f64,
) -> TrainStats<T> {
    train_forward_act_cpu(x, affine, y, s, eps, Act::NONE)
}

/// Fused `relu(batch_norm(x))` train forward: [`batchnorm_train_forward_cpu`] whose output is
/// clamped at 0 in the normalising pass.
pub fn batchnorm_relu_train_forward_cpu<T: Real>(
    x: &[T],
    affine: Option<(&[T], &[T])>,
    y: &mut [T],
    s: BnShape,
    eps: f64,
) -> TrainStats<T> {
    train_forward_act_cpu(x, affine, y, s, eps, Act::RELU)
}

/// Fused `relu(batch_norm(x) + residual)` train forward (the end of a ResNet block).
pub fn batchnorm_add_relu_train_forward_cpu<T: Real>(
    x: &[T],
    residual: &[T],
    affine: Option<(&[T], &[T])>,
    y: &mut [T],
    s: BnShape,
    eps: f64,
) -> TrainStats<T> {
    let act = Act {
        residual: Some(residual),
        relu: true,
    };
    train_forward_act_cpu(x, affine, y, s, eps, act)
}

fn train_forward_act_cpu<T: Real>(
    x: &[T],
    affine: Option<(&[T], &[T])>,
    y: &mut [T],
    s: BnShape,
    eps: f64,
    act: Act<T>,
) -> TrainStats<T> {
    let (batch_mean, batch_var) = batch_stats_cpu(x, s);
    let mean: Vec<T> = batch_mean.iter().map(|&m| T::from_f64(m)).collect();
    let invstd: Vec<T> = batch_var
        .iter()
        .map(|&v| T::from_f64(1.0 / (v + eps).sqrt()))
        .collect();
    normalize_act_cpu(x, &mean, &invstd, affine, y, s, act);
    TrainStats {
        mean,
        invstd,
        batch_mean,
        batch_var,
    }
}

/// `1/sqrt(var + eps)` per channel, in `T` arithmetic (as the eval kernel computes it).
pub fn invstd_cpu<T: Real>(var: &[T], eps: T) -> Vec<T> {
    var.iter().map(|&v| T::ONE / (v + eps).sqrt()).collect()
}

/// Eval forward with the running statistics.
pub fn batchnorm_eval_forward_cpu<T: Real>(
    x: &[T],
    affine: Option<(&[T], &[T])>,
    running_mean: &[T],
    running_var: &[T],
    y: &mut [T],
    s: BnShape,
    eps: T,
) {
    let invstd = invstd_cpu(running_var, eps);
    normalize_cpu(x, running_mean, &invstd, affine, y, s);
}

/// [`batchnorm_eval_forward_cpu`] followed by `act` in the same pass.
#[allow(clippy::too_many_arguments)]
fn batchnorm_eval_forward_act_cpu<T: Real>(
    x: &[T],
    affine: Option<(&[T], &[T])>,
    running_mean: &[T],
    running_var: &[T],
    y: &mut [T],
    s: BnShape,
    eps: T,
    act: Act<T>,
) {
    let invstd = invstd_cpu(running_var, eps);
    normalize_act_cpu(x, running_mean, &invstd, affine, y, s, act);
}

/// `r <- (1-m)*r + m*batch` for mean and (unbiased) variance; `n` samples per channel.
pub fn update_running_cpu<T: Real>(
    running_mean: &mut [T],
    running_var: &mut [T],
    batch_mean: &[f64],
    batch_var_biased: &[f64],
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
        running_mean[c] = T::from_f64((1.0 - momentum) * rm + momentum * batch_mean[c]);
        running_var[c] =
            T::from_f64((1.0 - momentum) * rv + momentum * batch_var_biased[c] * bessel);
    }
}

/// A pair of f64 sums.
#[derive(Clone, Copy)]
struct Sum2(f64, f64);

impl std::ops::Add for Sum2 {
    type Output = Sum2;
    fn add(self, o: Sum2) -> Sum2 {
        Sum2(self.0 + o.0, self.1 + o.1)
    }
}

/// Backward given the statistics the forward normalised with (`xhat = (x - mean)*invstd`):
/// `dbeta = sum(g)`, `dgamma = sum(g*xhat)`, and
/// * `train`: `dx = gamma*invstd*(g - mean(g) - xhat*mean(g*xhat))` (batch statistics depend on x);
/// * eval: `dx = gamma*invstd*g` (running statistics are constants).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_cpu<T: Real>(
    x: &[T],
    dy: &[T],
    gamma: Option<&[T]>,
    mean: &[T],
    invstd: &[T],
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
    s: BnShape,
    train: bool,
) {
    let (stats, grads) = ((gamma, mean, invstd), (dx, None, dgamma, dbeta));
    backward_act_cpu(x, dy, None, stats, grads, s, train)
}

/// Backward of the fused `y = relu(batch_norm(x) [+ residual])`: [`batchnorm_backward_cpu`] with
/// the upstream gradient `dy` masked where `y` (the fused output) is 0, within the same passes;
/// with a residual, its gradient `dres` (the masked `dy`) is written in the same pass too.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_relu_backward_cpu<T: Real>(
    x: &[T],
    y: &[T],
    dy: &[T],
    gamma: Option<&[T]>,
    mean: &[T],
    invstd: &[T],
    dx: &mut [T],
    dres: Option<&mut [T]>,
    dgamma: &mut [T],
    dbeta: &mut [T],
    s: BnShape,
    train: bool,
) {
    let (stats, grads) = ((gamma, mean, invstd), (dx, dres, dgamma, dbeta));
    backward_act_cpu(x, dy, Some(ReluMask::Output(y)), stats, grads, s, train)
}

/// `(gamma, mean, invstd)`: what a backward reads per channel.
type ChannelStats<'a, T> = (Option<&'a [T]>, &'a [T], &'a [T]);
/// `(dx, dresidual, dgamma, dbeta)`: what a backward writes (`dresidual` when wanted).
type BackwardOut<'a, T> = (&'a mut [T], Option<&'a mut [T]>, &'a mut [T], &'a mut [T]);

/// Where a fused ReLU's mask comes from in a CPU backward.
#[derive(Clone, Copy)]
enum ReluMask<'a, T> {
    /// Its output, whose zeros block the gradient.
    Output(&'a [T]),
    /// Recomputed from the input with the train forward's arithmetic, `(x - mean)·(gamma·invstd)
    /// + beta > 0` (`beta` absent: 0), so the same mask without reading the output back: one
    /// stream fewer in both passes. Train mode, no residual.
    Recompute { beta: Option<&'a [T]> },
}

/// `relu`: a fused ReLU's mask; `dres`: where the masked gradient is also wanted (a fused
/// residual's gradient; needs the ReLU's output).
#[allow(clippy::too_many_arguments)]
fn backward_act_cpu<T: Real>(
    x: &[T],
    dy: &[T],
    relu: Option<ReluMask<T>>,
    (gamma, mean, invstd): ChannelStats<T>,
    (dx, dres, dgamma, dbeta): BackwardOut<T>,
    s: BnShape,
    train: bool,
) {
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
    let sum_g: Vec<f64> = sums.iter().map(|t| t.0).collect();
    let sum_gx: Vec<f64> = sums.iter().map(|t| t.1).collect();
    let n = s.per_channel() as f64;
    let (mean_g, mean_gx): (Vec<T>, Vec<T>) = if train {
        (
            sum_g.iter().map(|&v| T::from_f64(v / n)).collect(),
            sum_gx.iter().map(|&v| T::from_f64(v / n)).collect(),
        )
    } else {
        (vec![T::ZERO; s.channels], vec![T::ZERO; s.channels])
    };
    for c in 0..s.channels {
        dgamma[c] = T::from_f64(sum_gx[c]);
        dbeta[c] = T::from_f64(sum_g[c]);
    }
    let sample = s.channels * s.inner;
    if sample == 0 {
        return;
    }
    match relu {
        None => dx
            .par_chunks_mut(sample)
            .zip(x.par_chunks(sample).zip(dy.par_chunks(sample)))
            .for_each(|(dxs, (xs, gs))| {
                vectorized(
                    #[inline(always)]
                    || {
                        for c in 0..s.channels {
                            let scale = gamma.map_or(invstd[c], |gm| gm[c] * invstd[c]);
                            let (m, is, mg, mgx) = (mean[c], invstd[c], mean_g[c], mean_gx[c]);
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
            }),
        Some(relu) => {
            let sample_grad = |i: usize, dxs: &mut [T], mut drs: Option<&mut [T]>| {
                vectorized(
                    #[inline(always)]
                    || {
                        let at = |v: &[T]| -> std::ops::Range<usize> {
                            i * sample..i * sample + v.len()
                        };
                        let (xs, gs) = (&x[at(dxs)], &dy[at(dxs)]);
                        let ys = match relu {
                            ReluMask::Output(y) => Some(&y[at(dxs)]),
                            ReluMask::Recompute { .. } => None,
                        };
                        for c in 0..s.channels {
                            let scale = gamma.map_or(invstd[c], |gm| gm[c] * invstd[c]);
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
                                    let (m, shift) = (mean[c], beta.map_or(T::ZERO, |b| b[c]));
                                    for (dx, (&x, &g)) in dxs.iter_mut().zip(xs.iter().zip(gs)) {
                                        *dx = relu_pass((x - m) * scale + shift, g);
                                    }
                                }
                            }
                            if let Some(drs) = drs.as_deref_mut() {
                                drs[range].copy_from_slice(dxs);
                            }
                            let (m, is, mg, mgx) = (mean[c], invstd[c], mean_g[c], mean_gx[c]);
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
    }
}

// ---------- device dispatch ----------

fn host(t: &Tensor) -> &[f32] {
    t.host().expect("cpu tensor in host memory")
}

fn check_inputs(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    running: Option<&RunningStats>,
) -> Result<BnShape> {
    let s = BnShape::of(x.shape())?;
    let c = s.channels;
    let check = |what: &str, t: &Tensor| -> Result<()> {
        same_device("batch_norm", x, t)?;
        if t.shape() != [c] {
            return Err(Error::Shape(format!(
                "batch_norm: {what} has shape {:?}, expected [{c}] for x {:?} (one value per channel = dim 1)",
                t.shape(),
                x.shape()
            )));
        }
        Ok(())
    };
    if let Some((gamma, beta)) = affine {
        check("weight", gamma)?;
        check("bias", beta)?;
    }
    if let Some(r) = running {
        check("running_mean", &r.mean)?;
        check("running_var", &r.var)?;
        if let Some(count) = &r.num_batches_tracked {
            same_device("batch_norm", x, count)?;
            if count.numel() != 1 {
                return Err(Error::Shape(format!(
                    "batch_norm: num_batches_tracked has shape {:?}, expected a scalar",
                    count.shape()
                )));
            }
        }
    }
    i32::try_from(x.numel()).map_err(|_| {
        Error::Shape(format!(
            "batch_norm: x {:?} is beyond the kernels' 32-bit index range",
            x.shape()
        ))
    })?;
    Ok(s)
}

fn params(s: BnShape, eps: f32, momentum: f32, affine: bool, update: bool) -> BatchNormParams {
    BatchNormParams {
        outer: s.outer as i32,
        channels: s.channels as i32,
        inner: s.inner as i32,
        eps,
        momentum,
        affine: affine as i32,
        update_running: update as i32,
        chunks: 1,
        chunk_len: s.per_channel().max(1) as i32,
        relu: 0,
        train: 0,
    }
}

/// Blocks the statistics kernels aim for when there is enough work: a few per SM of a large GPU
/// (4 x the 132 SMs of an H100/H200). A constant, not the device's SM count, so that results
/// depend only on the shape.
pub const BN_TARGET_BLOCKS: usize = 4 * 132;
/// Fewest values per chunk when the split is chosen from the sizes: below this a block's fixed
/// cost (two tree reductions, a partial written and re-read) outweighs its share of the reading.
pub const BN_MIN_CHUNK: usize = 2048;
/// Most chunks per channel (the chunk index is `blockIdx.y`, at most 65535).
pub const BN_MAX_CHUNKS: usize = 4096;

/// How the statistics kernels split each channel's values: `chunks` contiguous chunks of
/// `chunk_len` values in `[0, outer*inner)` order (the last one shorter), none empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnSplit {
    pub chunks: usize,
    pub chunk_len: usize,
}

/// The split of `s`'s statistics: `chunks` per channel when given (tests force several on small
/// shapes), else from the sizes — enough chunks for [`BN_TARGET_BLOCKS`] blocks over all channels,
/// but none shorter than [`BN_MIN_CHUNK`] values. Either way the count is then rounded so that
/// every chunk is non-empty (it may come out lower than asked, never higher).
pub fn bn_split(s: BnShape, chunks: Option<usize>) -> BnSplit {
    let n = s.per_channel();
    let want = chunks.unwrap_or_else(|| {
        BN_TARGET_BLOCKS
            .div_ceil(s.channels.max(1))
            .min(n / BN_MIN_CHUNK)
    });
    let want = want.clamp(1, n.clamp(1, BN_MAX_CHUNKS));
    let chunk_len = n.div_ceil(want).max(1);
    BnSplit {
        chunks: n.div_ceil(chunk_len).max(1),
        chunk_len,
    }
}

/// The statistics kernels' 2-D grid: `(channel, chunk)`, one block per chunk; fewer threads when
/// chunks are short.
fn stats_cfg(s: BnShape, split: BnSplit) -> LaunchCfg {
    let threads = split.chunk_len.next_power_of_two().clamp(32, 256) as u32;
    LaunchCfg::new((s.channels as u32, split.chunks as u32, 1), (threads, 1, 1))
}

/// `params` with the split of the statistics kernels.
fn split_params(p: BatchNormParams, split: BnSplit) -> BatchNormParams {
    BatchNormParams {
        chunks: split.chunks as i32,
        chunk_len: split.chunk_len as i32,
        ..p
    }
}

/// Train forward on a kernel device, `relu?(bn(x) + residual?)` in three launches: per-(channel,
/// chunk) partial statistics, a per-channel finalize (saved statistics, running statistics and
/// the batch counter), and one elementwise pass writing the fused output. `chunks` forces the
/// split (see [`bn_split`]). Inputs are checked by the caller.
#[allow(clippy::too_many_arguments)]
fn train_forward_gpu(
    g: &Gpu,
    x: &Tensor,
    s: BnShape,
    affine: Option<(&Tensor, &Tensor)>,
    running: Option<&RunningStats>,
    momentum: f32,
    eps: f32,
    relu: bool,
    residual: Option<&Tensor>,
    chunks: Option<usize>,
) -> Result<TrainForward> {
    let (c, dev) = (s.channels, x.device());
    let split = bn_split(s, chunks);
    let p = BatchNormParams {
        relu: relu as i32,
        ..split_params(
            params(s, eps, momentum, affine.is_some(), running.is_some()),
            split,
        )
    };
    let mut y = g.zeros::<f32>(x.numel())?;
    let mut save_mean = g.zeros::<f32>(c)?;
    let mut save_invstd = g.zeros::<f32>(c)?;
    let mut new_rm = g.zeros::<f32>(if running.is_some() { c } else { 0 })?;
    let mut new_rv = g.zeros::<f32>(if running.is_some() { c } else { 0 })?;
    let count_in = running.and_then(|r| r.num_batches_tracked.as_ref());
    let mut count_out = g.zeros::<f32>(count_in.map_or(0, |_| 1))?;
    if c > 0 {
        let mut partial = g.zeros::<f64>(c * split.chunks * 2)?;
        let mut args = KernelArgs::new();
        args.ptr(g.addr(x.buffer()))
            .ptr(g.addr_mut(&mut partial))
            .value(&p);
        g.launch(
            "batchnorm_stats_partial_f32",
            stats_cfg(s, split),
            &mut args,
        )?;

        let mut args = KernelArgs::new();
        args.ptr(g.addr(&partial))
            .ptr(g.addr_mut(&mut save_mean))
            .ptr(g.addr_mut(&mut save_invstd));
        match running {
            Some(r) => args
                .ptr(g.addr(r.mean.buffer()))
                .ptr(g.addr(r.var.buffer())),
            None => args.ptr(0).ptr(0),
        };
        args.ptr(count_in.map_or(0, |t| g.addr(t.buffer())));
        if running.is_some() {
            args.ptr(g.addr_mut(&mut new_rm))
                .ptr(g.addr_mut(&mut new_rv));
        } else {
            args.ptr(0).ptr(0);
        }
        args.ptr(if count_in.is_some() {
            g.addr_mut(&mut count_out)
        } else {
            0
        });
        args.value(&p);
        g.launch(
            "batchnorm_stats_finalize_f32",
            LaunchCfg::for_elements(c),
            &mut args,
        )?;

        let mut args = KernelArgs::new();
        args.ptr(g.addr(x.buffer()));
        match affine {
            Some((gamma, beta)) => args.ptr(g.addr(gamma.buffer())).ptr(g.addr(beta.buffer())),
            None => args.ptr(0).ptr(0),
        };
        args.ptr(g.addr(&save_mean))
            .ptr(g.addr(&save_invstd))
            .ptr(residual.map_or(0, |r| g.addr(r.buffer())))
            .ptr(g.addr_mut(&mut y))
            .value(&p);
        g.launch(
            "batchnorm_apply_f32",
            LaunchCfg::for_elements(x.numel()),
            &mut args,
        )?;
    }
    let running = match running {
        None => None,
        Some(r) => Some(RunningStats {
            mean: Tensor::from_buffer(&[c], new_rm, dev)?,
            var: Tensor::from_buffer(&[c], new_rv, dev)?,
            num_batches_tracked: match &r.num_batches_tracked {
                Some(t) => Some(Tensor::from_buffer(t.shape(), count_out, dev)?),
                None => None,
            },
        }),
    };
    Ok(TrainForward {
        y: Tensor::from_buffer(x.shape(), y, dev)?,
        save_mean: Tensor::from_buffer(&[c], save_mean, dev)?,
        save_invstd: Tensor::from_buffer(&[c], save_invstd, dev)?,
        running,
    })
}

/// Backward on a kernel device in three launches: per-(channel, chunk) partial sums of `g` and
/// `g*xhat` (`g` = `dy` masked by the fused ReLU's output `relu_out`, when given), a per-channel
/// finalize (dgamma, dbeta and the dx coefficients), and one elementwise pass writing dx and, when
/// `want_dres` with a `relu_out`, the residual's gradient (the masked `dy`). `chunks` forces the
/// split (see [`bn_split`]). Inputs are checked by the caller.
#[allow(clippy::too_many_arguments)]
fn backward_act_gpu(
    g: &Gpu,
    x: &Tensor,
    s: BnShape,
    relu_out: Option<&Tensor>,
    dy: &Tensor,
    gamma: Option<&Tensor>,
    mean: &Tensor,
    invstd: &Tensor,
    train: bool,
    want_dres: bool,
    chunks: Option<usize>,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    let (c, dev) = (s.channels, x.device());
    let split = bn_split(s, chunks);
    let p = BatchNormParams {
        train: train as i32,
        ..split_params(params(s, 0.0, 0.0, gamma.is_some(), false), split)
    };
    let mut dx = g.zeros::<f32>(x.numel())?;
    let mut dgamma = g.zeros::<f32>(c)?;
    let mut dbeta = g.zeros::<f32>(c)?;
    let mut dres = match relu_out {
        Some(_) if want_dres => Some(g.zeros::<f32>(x.numel())?),
        _ => None,
    };
    let relu_addr = relu_out.map_or(0, |y| g.addr(y.buffer()));
    if c > 0 {
        let mut partial = g.zeros::<f64>(c * split.chunks * 2)?;
        let mut args = KernelArgs::new();
        args.ptr(g.addr(x.buffer()))
            .ptr(g.addr(dy.buffer()))
            .ptr(relu_addr)
            .ptr(g.addr(mean.buffer()))
            .ptr(g.addr(invstd.buffer()))
            .ptr(g.addr_mut(&mut partial))
            .value(&p);
        g.launch(
            "batchnorm_backward_partial_f32",
            stats_cfg(s, split),
            &mut args,
        )?;

        let mut coef = g.zeros::<f32>(2 * c)?;
        let mut args = KernelArgs::new();
        args.ptr(g.addr(&partial))
            .ptr(g.addr_mut(&mut dgamma))
            .ptr(g.addr_mut(&mut dbeta))
            .ptr(g.addr_mut(&mut coef))
            .value(&p);
        g.launch(
            "batchnorm_backward_finalize_f32",
            LaunchCfg::for_elements(c),
            &mut args,
        )?;

        let mut args = KernelArgs::new();
        args.ptr(g.addr(x.buffer()))
            .ptr(g.addr(dy.buffer()))
            .ptr(relu_addr)
            .ptr(gamma.map_or(0, |t| g.addr(t.buffer())))
            .ptr(g.addr(mean.buffer()))
            .ptr(g.addr(invstd.buffer()))
            .ptr(g.addr(&coef))
            .ptr(g.addr_mut(&mut dx))
            .ptr(dres.as_mut().map_or(0, |d| g.addr_mut(d)))
            .value(&p);
        g.launch(
            "batchnorm_backward_dx_f32",
            LaunchCfg::for_elements(x.numel()),
            &mut args,
        )?;
    }
    let dres = match dres {
        Some(d) => Some(Tensor::from_buffer(x.shape(), d, dev)?),
        None => want_dres.then(|| dy.clone()),
    };
    Ok((
        Tensor::from_buffer(x.shape(), dx, dev)?,
        Tensor::from_buffer(&[c], dgamma, dev)?,
        Tensor::from_buffer(&[c], dbeta, dev)?,
        dres,
    ))
}

/// What a train forward produced: the output, the statistics saved for the backward, and the
/// updated running statistics (when running statistics were given).
pub struct TrainForward {
    pub y: Tensor,
    pub save_mean: Tensor,
    pub save_invstd: Tensor,
    pub running: Option<RunningStats>,
}

/// Train forward. `affine` = `(gamma, beta)`. Needs more than one value per channel, like PyTorch.
pub fn batchnorm_train_forward(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    running: Option<&RunningStats>,
    momentum: f32,
    eps: f32,
) -> Result<TrainForward> {
    batchnorm_train_forward_act(x, affine, running, momentum, eps, false, None)
}

/// Train forward of the fused `relu(batch_norm(x))` (`y` is the ReLU's output), clamped in the
/// normalising pass.
pub fn batchnorm_relu_train_forward(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    running: Option<&RunningStats>,
    momentum: f32,
    eps: f32,
) -> Result<TrainForward> {
    batchnorm_train_forward_act(x, affine, running, momentum, eps, true, None)
}

fn check_residual(x: &Tensor, residual: Option<&Tensor>) -> Result<()> {
    if let Some(r) = residual {
        same_device("batch_norm_add_relu", x, r)?;
        r.expect_shape("batch_norm_add_relu: residual", x.shape())?;
    }
    Ok(())
}

/// The checks of a train forward: shapes and devices, and more than one value per channel.
fn check_train_forward(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    running: Option<&RunningStats>,
    residual: Option<&Tensor>,
) -> Result<BnShape> {
    let s = check_inputs(x, affine, running)?;
    check_residual(x, residual)?;
    if s.per_channel() <= 1 {
        return Err(Error::Shape(format!(
            "batch_norm: expected more than 1 value per channel when training, got x {:?}",
            x.shape()
        )));
    }
    Ok(s)
}

/// Train forward followed by `relu?(y + residual?)` (`y` is then the fused output). The CPU adds
/// and clamps in the normalising pass, kernel devices in their elementwise pass.
pub fn batchnorm_train_forward_act(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    running: Option<&RunningStats>,
    momentum: f32,
    eps: f32,
    relu: bool,
    residual: Option<&Tensor>,
) -> Result<TrainForward> {
    train_forward_act(x, affine, running, momentum, eps, relu, residual, None)
}

/// [`batchnorm_train_forward_act`] with an optional split of the kernel devices' statistics.
#[allow(clippy::too_many_arguments)]
fn train_forward_act(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    running: Option<&RunningStats>,
    momentum: f32,
    eps: f32,
    relu: bool,
    residual: Option<&Tensor>,
    chunks: Option<usize>,
) -> Result<TrainForward> {
    let s = check_train_forward(x, affine, running, residual)?;
    let c = s.channels;
    let dev = x.device();
    match dev {
        Device::Cpu => {
            let mut stats = None;
            // SAFETY: normalize_cpu assigns every element of y.
            let y = unsafe {
                host_vec_written(x.numel(), |y| {
                    let act = Act {
                        residual: residual.map(host),
                        relu,
                    };
                    stats = Some(train_forward_act_cpu(
                        host(x),
                        affine.map(|(g, b)| (host(g), host(b))),
                        y,
                        s,
                        eps as f64,
                        act,
                    ))
                })
            };
            let stats = stats.expect("the train forward ran");
            let running = match running {
                None => None,
                Some(r) => {
                    let mut rm = host(&r.mean).to_vec();
                    let mut rv = host(&r.var).to_vec();
                    update_running_cpu(
                        &mut rm,
                        &mut rv,
                        &stats.batch_mean,
                        &stats.batch_var,
                        s.per_channel(),
                        momentum as f64,
                    );
                    let count = match &r.num_batches_tracked {
                        Some(t) => Some(Tensor::from_vec(t.shape(), vec![host(t)[0] + 1.0], dev)?),
                        None => None,
                    };
                    Some(RunningStats {
                        mean: Tensor::from_vec(&[c], rm, dev)?,
                        var: Tensor::from_vec(&[c], rv, dev)?,
                        num_batches_tracked: count,
                    })
                }
            };
            Ok(TrainForward {
                y: Tensor::from_vec(x.shape(), y, dev)?,
                save_mean: Tensor::from_vec(&[c], stats.mean, dev)?,
                save_invstd: Tensor::from_vec(&[c], stats.invstd, dev)?,
                running,
            })
        }
        Device::Gpu(g) => train_forward_gpu(
            g, x, s, affine, running, momentum, eps, relu, residual, chunks,
        ),
    }
}

/// [`batchnorm_train_forward_act`] with each channel's statistics split into `chunks` chunks on
/// kernel devices (rounded by [`bn_split`] so that none is empty) instead of the split chosen from
/// the sizes, so that tests run the multi-block path on small shapes. The CPU ignores `chunks`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_train_forward_act_chunked(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    running: Option<&RunningStats>,
    momentum: f32,
    eps: f32,
    relu: bool,
    residual: Option<&Tensor>,
    chunks: usize,
) -> Result<TrainForward> {
    let chunks = Some(chunks);
    train_forward_act(x, affine, running, momentum, eps, relu, residual, chunks)
}

/// Eval forward with the running statistics.
pub fn batchnorm_eval_forward(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    running: &RunningStats,
    eps: f32,
) -> Result<Tensor> {
    batchnorm_eval_forward_act(x, affine, running, eps, false, None)
}

/// Eval forward followed by `relu(y + residual)` (each part optional), in the same pass.
pub fn batchnorm_eval_forward_act(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    running: &RunningStats,
    eps: f32,
    relu: bool,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let s = check_inputs(x, affine, Some(running))?;
    check_residual(x, residual)?;
    match x.device() {
        Device::Cpu => {
            let act = Act {
                residual: residual.map(host),
                relu,
            };
            // SAFETY: normalize_act_cpu assigns every element of y.
            let y = unsafe {
                host_vec_written(x.numel(), |y| {
                    batchnorm_eval_forward_act_cpu(
                        host(x),
                        affine.map(|(g, b)| (host(g), host(b))),
                        host(&running.mean),
                        host(&running.var),
                        y,
                        s,
                        eps,
                        act,
                    )
                })
            };
            Tensor::from_vec(x.shape(), y, x.device())
        }
        Device::Gpu(g) => {
            let mut y = g.zeros::<f32>(x.numel())?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer()));
            match affine {
                Some((gamma, beta)) => args.ptr(g.addr(gamma.buffer())).ptr(g.addr(beta.buffer())),
                None => args.ptr(0).ptr(0),
            };
            let p = BatchNormParams {
                relu: relu as i32,
                ..params(s, eps, 0.0, affine.is_some(), false)
            };
            args.ptr(g.addr(running.mean.buffer()))
                .ptr(g.addr(running.var.buffer()))
                .ptr(residual.map_or(0, |r| g.addr(r.buffer())))
                .ptr(g.addr_mut(&mut y))
                .value(&p);
            g.launch(
                "batchnorm_forward_eval_f32",
                LaunchCfg::for_elements(x.numel()),
                &mut args,
            )?;
            Tensor::from_buffer(x.shape(), y, x.device())
        }
    }
}

/// `1/sqrt(var + eps)` per channel on the tensor's device.
pub fn invstd(var: &Tensor, eps: f32) -> Result<Tensor> {
    let c = var.numel();
    match var.device() {
        Device::Cpu => Tensor::from_vec(var.shape(), invstd_cpu(host(var), eps), var.device()),
        Device::Gpu(g) => {
            let mut out = g.zeros::<f32>(c)?;
            let s = BnShape {
                outer: 1,
                channels: c,
                inner: 1,
            };
            let mut args = KernelArgs::new();
            args.ptr(g.addr(var.buffer()))
                .ptr(g.addr_mut(&mut out))
                .value(&params(s, eps, 0.0, false, false));
            g.launch(
                "batchnorm_invstd_f32",
                LaunchCfg::for_elements(c),
                &mut args,
            )?;
            Tensor::from_buffer(var.shape(), out, var.device())
        }
    }
}

/// Backward: `(dx, dgamma, dbeta)` given the per-channel `mean`/`invstd` the forward used (saved
/// batch statistics in train mode, running mean and `invstd(running_var)` in eval mode).
pub fn batchnorm_backward(
    x: &Tensor,
    dy: &Tensor,
    gamma: Option<&Tensor>,
    mean: &Tensor,
    invstd: &Tensor,
    train: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (dx, dgamma, dbeta, _) =
        backward_act(x, None, None, dy, gamma, mean, invstd, train, false, None)?;
    Ok((dx, dgamma, dbeta))
}

/// Backward of the fused `y = relu(batch_norm(x))` given its output `y`; `dy` is masked within the
/// BatchNorm backward's passes.
pub fn batchnorm_relu_backward(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    gamma: Option<&Tensor>,
    mean: &Tensor,
    invstd: &Tensor,
    train: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (dx, dgamma, dbeta, _) = fused_relu_backward(x, y, dy, gamma, mean, invstd, train, false)?;
    Ok((dx, dgamma, dbeta))
}

/// Backward of the fused `y = relu(batch_norm(x) + residual)` given its output `y`:
/// `(dx, dresidual, dgamma, dbeta)`; `dresidual` is `dy` masked where `y` is 0.
pub fn batchnorm_add_relu_backward(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    gamma: Option<&Tensor>,
    mean: &Tensor,
    invstd: &Tensor,
    train: bool,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let (dx, dgamma, dbeta, dres) =
        fused_relu_backward(x, y, dy, gamma, mean, invstd, train, true)?;
    let dres = dres.expect("backward_act returns dres when asked with a ReLU output");
    Ok((dx, dres, dgamma, dbeta))
}

/// [`backward_act`] of a fused ReLU whose output is `y` (checked against `x`).
#[allow(clippy::too_many_arguments)]
fn fused_relu_backward(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    gamma: Option<&Tensor>,
    mean: &Tensor,
    invstd: &Tensor,
    train: bool,
    want_dres: bool,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    check_relu_out(x, y)?;
    backward_act(
        x,
        Some(y),
        None,
        dy,
        gamma,
        mean,
        invstd,
        train,
        want_dres,
        None,
    )
}

/// The output of a fused ReLU given to a backward: the shape and device of `x`.
fn check_relu_out(x: &Tensor, y: &Tensor) -> Result<()> {
    y.expect_shape("batch_norm_relu backward: y", x.shape())?;
    same_device("batch_norm_relu backward", x, y)
}

/// The checks of a backward: shapes and devices of `dy` and the per-channel values.
fn check_backward(
    x: &Tensor,
    dy: &Tensor,
    gamma: Option<&Tensor>,
    mean: &Tensor,
    invstd: &Tensor,
) -> Result<BnShape> {
    let s = BnShape::of(x.shape())?;
    dy.expect_shape("batch_norm backward: dy", x.shape())?;
    for t in [mean, invstd].into_iter().chain(gamma) {
        same_device("batch_norm backward", x, t)?;
        t.expect_shape("batch_norm backward: per-channel value", &[s.channels])?;
    }
    same_device("batch_norm backward", x, dy)?;
    Ok(s)
}

/// The backward of every BatchNorm variant, `(dx, dgamma, dbeta, dresidual)`: `relu_out` is the
/// output of a fused ReLU (masking `dy`), `want_dres` asks for a fused residual's gradient. On
/// kernel devices each channel's sums are split into `chunks` chunks (rounded by [`bn_split`] so
/// that none is empty) instead of the split chosen from the sizes, so that tests run the
/// multi-block path on small shapes. The CPU ignores `chunks`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_act_chunked(
    x: &Tensor,
    relu_out: Option<&Tensor>,
    dy: &Tensor,
    gamma: Option<&Tensor>,
    mean: &Tensor,
    invstd: &Tensor,
    train: bool,
    want_dres: bool,
    chunks: usize,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    if let Some(y) = relu_out {
        check_relu_out(x, y)?;
    }
    let chunks = Some(chunks);
    backward_act(
        x, relu_out, None, dy, gamma, mean, invstd, train, want_dres, chunks,
    )
}

/// `want_dres` (needs `relu_out`): also return the masked `dy`, a fused residual's gradient.
/// `chunks` overrides the kernel devices' split (see [`bn_split`]). `relu_out`: a fused ReLU's
/// output; `recompute`: `Some(beta)` when the CPU may recompute the ReLU's mask from `x`
/// instead ([`ReluMask::Recompute`]; train mode, no residual).
#[allow(clippy::too_many_arguments)]
fn backward_act(
    x: &Tensor,
    relu_out: Option<&Tensor>,
    recompute: Option<Option<&Tensor>>,
    dy: &Tensor,
    gamma: Option<&Tensor>,
    mean: &Tensor,
    invstd: &Tensor,
    train: bool,
    want_dres: bool,
    chunks: Option<usize>,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    let s = check_backward(x, dy, gamma, mean, invstd)?;
    let c = s.channels;
    let dev = x.device();
    match dev {
        Device::Cpu => {
            let (mut dgamma, mut dbeta) = (vec![0.0f32; c], vec![0.0f32; c]);
            let n = x.numel();
            let run = |dx: &mut [f32], dres: Option<&mut [f32]>, dgamma: &mut [f32], dbeta| {
                let stats = (gamma.map(host), host(mean), host(invstd));
                let (xs, gs) = (host(x), host(dy));
                let relu = match (recompute, relu_out) {
                    (Some(beta), Some(_)) if train && !want_dres => Some(ReluMask::Recompute {
                        beta: beta.map(host),
                    }),
                    (_, y) => y.map(|y| ReluMask::Output(host(y))),
                };
                backward_act_cpu(xs, gs, relu, stats, (dx, dres, dgamma, dbeta), s, train)
            };
            let mut dres = None;
            // SAFETY: backward_act_cpu assigns every element of dx, and of dres when given one.
            let dx = unsafe {
                host_vec_written(n, |dx| {
                    if want_dres && relu_out.is_some() {
                        dres = Some(host_vec_written(n, |dr| {
                            run(dx, Some(dr), &mut dgamma, &mut dbeta)
                        }));
                    } else {
                        run(dx, None, &mut dgamma, &mut dbeta)
                    }
                })
            };
            let dres = match dres {
                Some(d) => Some(Tensor::from_vec(x.shape(), d, dev)?),
                None => want_dres.then(|| dy.clone()),
            };
            Ok((
                Tensor::from_vec(x.shape(), dx, dev)?,
                Tensor::from_vec(&[c], dgamma, dev)?,
                Tensor::from_vec(&[c], dbeta, dev)?,
                dres,
            ))
        }
        Device::Gpu(g) => backward_act_gpu(
            g, x, s, relu_out, dy, gamma, mean, invstd, train, want_dres, chunks,
        ),
    }
}

// ---------- autograd ----------

/// BatchNorm on the tape. `weight`/`bias` both present (affine) or both absent. In train mode the
/// batch statistics normalise and the updated running statistics are returned (the caller stores
/// them); in eval mode `running` normalises and `None` is returned.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    g: &mut Graph,
    x: Var,
    weight: Option<Var>,
    bias: Option<Var>,
    running: &RunningStats,
    train: bool,
    momentum: f32,
    eps: f32,
) -> Result<(Var, Option<RunningStats>)> {
    batch_norm_act(
        g, x, weight, bias, running, train, momentum, eps, false, None,
    )
}

/// `relu(batch_norm(x))` as one op (same values and gradients as the two ops; on the CPU one pass
/// less forward and backward, and no intermediate tensor). Arguments as for [`batch_norm`].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_relu(
    g: &mut Graph,
    x: Var,
    weight: Option<Var>,
    bias: Option<Var>,
    running: &RunningStats,
    train: bool,
    momentum: f32,
    eps: f32,
) -> Result<(Var, Option<RunningStats>)> {
    batch_norm_act(
        g, x, weight, bias, running, train, momentum, eps, true, None,
    )
}

/// `relu(batch_norm(x) + residual)` as one op: the end of a ResNet block (same values and
/// gradients as the three ops; on the CPU two passes fewer each way and no intermediates).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_add_relu(
    g: &mut Graph,
    x: Var,
    weight: Option<Var>,
    bias: Option<Var>,
    residual: Var,
    running: &RunningStats,
    train: bool,
    momentum: f32,
    eps: f32,
) -> Result<(Var, Option<RunningStats>)> {
    batch_norm_act(
        g,
        x,
        weight,
        bias,
        running,
        train,
        momentum,
        eps,
        true,
        Some(residual),
    )
}

#[allow(clippy::too_many_arguments)]
fn batch_norm_act(
    g: &mut Graph,
    x: Var,
    weight: Option<Var>,
    bias: Option<Var>,
    running: &RunningStats,
    train: bool,
    momentum: f32,
    eps: f32,
    relu: bool,
    residual: Option<Var>,
) -> Result<(Var, Option<RunningStats>)> {
    let affine_vars = match (weight, bias) {
        (Some(w), Some(b)) => Some((w, b)),
        (None, None) => None,
        _ => {
            return Err(Error::Other(
                "batch_norm: weight and bias must be both given (affine) or both absent".into(),
            ))
        }
    };
    let xv = g.value(x).clone();
    let gamma = affine_vars.map(|(w, _)| g.value(w).clone());
    let affine = affine_vars.map(|(w, b)| (g.value(w).clone(), g.value(b).clone()));
    let affine_ref = affine.as_ref().map(|(w, b)| (w, b));
    // Per-channel (mean, invstd or the variance it comes from) for the backward; in eval mode
    // invstd is only computed if a backward actually runs.
    let rv = residual.map(|r| g.value(r).clone());
    let (y, mean, spread, new_running) = if train {
        let f = batchnorm_train_forward_act(
            &xv,
            affine_ref,
            Some(running),
            momentum,
            eps,
            relu,
            rv.as_ref(),
        )?;
        (f.y, f.save_mean, Ok(f.save_invstd), f.running)
    } else {
        let y = batchnorm_eval_forward_act(&xv, affine_ref, running, eps, relu, rv.as_ref())?;
        (y, running.mean.clone(), Err(running.var.clone()), None)
    };
    drop(rv);
    // The fused ReLU's output masks the gradient.
    let relu_out = relu.then(|| y.clone());
    let mut inputs: Vec<Var> = match affine_vars {
        Some((w, b)) => vec![x, w, b],
        None => vec![x],
    };
    inputs.extend(residual);
    let need_dx = g.requires_grad(x);
    let need_dres = residual.is_some_and(|r| g.requires_grad(r));
    let has_residual = residual.is_some();
    let beta = affine.as_ref().map(|(_, b)| b.clone());
    let out = g.op(y, &inputs, move |dy| {
        let invstd_t = match spread {
            Ok(saved) => saved,
            Err(var) => invstd(&var, eps)?,
        };
        let (dx, dgamma, dbeta, dres) = backward_act(
            &xv,
            relu_out.as_ref(),
            (!has_residual).then_some(beta.as_ref()),
            dy,
            gamma.as_ref(),
            &mean,
            &invstd_t,
            train,
            need_dres,
            None,
        )?;
        let mut grads = vec![need_dx.then_some(dx)];
        if gamma.is_some() {
            grads.push(Some(dgamma));
            grads.push(Some(dbeta));
        }
        if has_residual {
            grads.push(dres);
        }
        Ok(grads)
    });
    Ok((out, new_running))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise::{add_forward, relu_backward, relu_forward};
    use crate::testing::{assert_devices_agree, assert_gradient, dot, random_f32, random_f64};

    fn tensor(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
        Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
    }

    /// Gradients of `sum(relu(bn(x)) * w)` (train mode) against central differences.
    fn check_fused_relu_gradients(shape: &[usize], affine: bool) {
        let s = BnShape::of(shape).unwrap();
        let c = s.channels;
        let x = random_f64(11, shape.iter().product());
        let (gamma, beta, w) = (
            random_f64(12, c),
            random_f64(13, c),
            random_f64(14, x.len()),
        );
        let eps = 1e-5;
        let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| {
            let mut y = vec![0.0; x.len()];
            batchnorm_relu_train_forward_cpu(x, affine.then_some((gamma, beta)), &mut y, s, eps);
            dot(&y, &w)
        };
        let mut y = vec![0.0; x.len()];
        let aff = affine.then_some((&gamma[..], &beta[..]));
        let stats = batchnorm_relu_train_forward_cpu(&x, aff, &mut y, s, eps);
        assert!(y.iter().any(|&v| v == 0.0) && y.iter().any(|&v| v > 0.0));
        let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
        batchnorm_relu_backward_cpu(
            &x,
            &y,
            &w,
            affine.then_some(&gamma[..]),
            &stats.mean,
            &stats.invstd,
            &mut dx,
            None,
            &mut dgamma,
            &mut dbeta,
            s,
            true,
        );
        let what = format!("bn+relu train {shape:?} affine={affine}");
        let loss_x = |v: &[f64]| loss(v, &gamma, &beta);
        assert_gradient(&format!("{what} dx"), &loss_x, &x, &dx, 1e-6);
        if affine {
            let loss_gamma = |v: &[f64]| loss(&x, v, &beta);
            assert_gradient(
                &format!("{what} dgamma"),
                &loss_gamma,
                &gamma,
                &dgamma,
                1e-6,
            );
            let loss_beta = |v: &[f64]| loss(&x, &gamma, v);
            assert_gradient(&format!("{what} dbeta"), &loss_beta, &beta, &dbeta, 1e-6);
        }
    }

    #[test]
    fn fused_relu_backward_matches_finite_differences() {
        check_fused_relu_gradients(&[3, 4, 5], true);
        check_fused_relu_gradients(&[2, 3, 2, 3], true);
        check_fused_relu_gradients(&[6, 3], true);
        check_fused_relu_gradients(&[3, 2, 4], false);
    }

    /// The fused op gives bit for bit what `relu` after `batch_norm` gives, forward and backward,
    /// in train and eval mode.
    #[test]
    fn fused_relu_equals_the_composition_on_cpu() {
        let dev = Device::Cpu;
        let shape = [3, 5, 7, 3];
        let x = tensor(&shape, 21, &dev);
        let (gamma, beta) = (tensor(&[5], 22, &dev), tensor(&[5], 23, &dev));
        let dy = tensor(&shape, 24, &dev);
        let running = RunningStats {
            mean: tensor(&[5], 25, &dev),
            var: Tensor::from_vec(&[5], vec![0.5, 1.0, 2.0, 0.7, 1.3], &dev).unwrap(),
            num_batches_tracked: None,
        };
        let aff = Some((&gamma, &beta));
        let fused = batchnorm_relu_train_forward(&x, aff, Some(&running), 0.1, 1e-5).unwrap();
        let plain = batchnorm_train_forward(&x, aff, Some(&running), 0.1, 1e-5).unwrap();
        let y = relu_forward(&plain.y).unwrap();
        assert_eq!(fused.y.to_vec().unwrap(), y.to_vec().unwrap());
        let invstd_eval = invstd(&running.var, 1e-5).unwrap();
        for (train, mean, inv) in [
            (true, &plain.save_mean, &plain.save_invstd),
            (false, &running.mean, &invstd_eval),
        ] {
            let got = batchnorm_relu_backward(&x, &y, &dy, Some(&gamma), mean, inv, train).unwrap();
            let masked = relu_backward(&y, &dy).unwrap();
            let want = batchnorm_backward(&x, &masked, Some(&gamma), mean, inv, train).unwrap();
            for (g, w) in [(got.0, want.0), (got.1, want.1), (got.2, want.2)] {
                assert_eq!(g.to_vec().unwrap(), w.to_vec().unwrap(), "train={train}");
            }
        }
    }

    /// The CPU backward with the ReLU mask recomputed from `x` (what training uses, no residual)
    /// is bit for bit the backward that reads the fused forward's output, affine or not.
    #[test]
    fn recomputed_relu_mask_equals_the_saved_output() {
        let dev = Device::Cpu;
        let shape = [4, 6, 5, 5];
        let x = tensor(&shape, 31, &dev);
        let (gamma, beta) = (tensor(&[6], 32, &dev), tensor(&[6], 33, &dev));
        let dy = tensor(&shape, 34, &dev);
        for affine in [true, false] {
            let aff = affine.then_some((&gamma, &beta));
            let f = batchnorm_relu_train_forward(&x, aff, None, 0.1, 1e-5).unwrap();
            let y = f.y.to_vec().unwrap();
            let zeros = y.iter().filter(|&&v| v == 0.0).count();
            assert!(zeros > 0 && zeros < y.len(), "the mask must matter");
            let g = aff.map(|(g, _)| g);
            let (mean, inv) = (&f.save_mean, &f.save_invstd);
            let run = |recompute| {
                let out = backward_act(
                    &x,
                    Some(&f.y),
                    recompute,
                    &dy,
                    g,
                    mean,
                    inv,
                    true,
                    false,
                    None,
                );
                let (dx, dg, db, _) = out.unwrap();
                [dx, dg, db].map(|t| t.to_vec().unwrap())
            };
            let saved = run(None);
            let recomputed = run(Some(aff.map(|(_, b)| b)));
            assert_eq!(saved, recomputed, "affine={affine}");
        }
    }

    /// The AVX-512 backward sums are the generic lane sums bit for bit (masked and not, with
    /// ragged tails), so which path runs never changes a result.
    #[test]
    fn backward_sums_equal_the_generic_lane_sums() {
        for n in [0usize, 5, 8, 37, 1000, 4099] {
            let (x, g) = (random_f32(71, n), random_f32(72, n));
            let y: Vec<f32> = random_f32(73, n).iter().map(|v| v.max(0.0)).collect();
            let (m, is) = (0.1234f32, 1.789f32);
            let sum = |x: f32, g: f32| {
                let xhat = (x - m) * is;
                (g as f64, g as f64 * xhat as f64)
            };
            let plain = lane_sum2(&x, &g, sum);
            let masked = lane_sum2_masked(&x, &g, |i| y[i], sum);
            assert_eq!(backward_sums_masked(&x, &g, None, m, is), plain, "n={n}");
            let output = Some(PlaneMask::Output(&y[..]));
            assert_eq!(backward_sums_masked(&x, &g, output, m, is), masked, "n={n}");
            // The mask recomputed from x: the lane sums masked by that forward output.
            let (scale, shift) = (0.9f32, -0.05f32);
            let y_of_x: Vec<f32> = x.iter().map(|&x| (x - m) * scale + shift).collect();
            let recompute = Some(PlaneMask::Recompute { scale, shift });
            let want = lane_sum2_masked(&x, &g, |i| y_of_x[i], sum);
            assert_eq!(
                backward_sums_masked(&x, &g, recompute, m, is),
                want,
                "n={n}"
            );
            if n > 8 {
                assert_ne!(plain, masked, "the mask must matter (n={n})");
            }
        }
    }

    /// Gradients of `sum(relu(bn(x) + r) * w)` (train mode) w.r.t. x, r, gamma and beta against
    /// central differences.
    #[test]
    fn fused_add_relu_backward_matches_finite_differences() {
        for shape in [vec![3usize, 4, 5], vec![2, 3, 2, 3]] {
            let s = BnShape::of(&shape).unwrap();
            let (c, n) = (s.channels, shape.iter().product::<usize>());
            let (x, r) = (random_f64(41, n), random_f64(42, n));
            let (gamma, beta, w) = (random_f64(43, c), random_f64(44, c), random_f64(45, n));
            let loss = |x: &[f64], r: &[f64], gamma: &[f64], beta: &[f64]| {
                let mut y = vec![0.0; n];
                batchnorm_add_relu_train_forward_cpu(x, r, Some((gamma, beta)), &mut y, s, 1e-5);
                dot(&y, &w)
            };
            let mut y = vec![0.0; n];
            let stats = batchnorm_add_relu_train_forward_cpu(
                &x,
                &r,
                Some((&gamma, &beta)),
                &mut y,
                s,
                1e-5,
            );
            assert!(y.iter().any(|&v| v == 0.0) && y.iter().any(|&v| v > 0.0));
            let (mut dx, mut dr) = (vec![0.0; n], vec![0.0; n]);
            let (mut dgamma, mut dbeta) = (vec![0.0; c], vec![0.0; c]);
            batchnorm_relu_backward_cpu(
                &x,
                &y,
                &w,
                Some(&gamma),
                &stats.mean,
                &stats.invstd,
                &mut dx,
                Some(&mut dr),
                &mut dgamma,
                &mut dbeta,
                s,
                true,
            );
            let what = format!("bn+add+relu train {shape:?}");
            let (g, b) = (&gamma[..], &beta[..]);
            assert_gradient(
                &format!("{what} dx"),
                &|v: &[f64]| loss(v, &r, g, b),
                &x,
                &dx,
                1e-6,
            );
            assert_gradient(
                &format!("{what} dr"),
                &|v: &[f64]| loss(&x, v, g, b),
                &r,
                &dr,
                1e-6,
            );
            let loss_gamma = |v: &[f64]| loss(&x, &r, v, b);
            assert_gradient(
                &format!("{what} dgamma"),
                &loss_gamma,
                &gamma,
                &dgamma,
                1e-6,
            );
            let loss_beta = |v: &[f64]| loss(&x, &r, g, v);
            assert_gradient(&format!("{what} dbeta"), &loss_beta, &beta, &dbeta, 1e-6);
        }
    }

    /// The fused op gives bit for bit what `relu(batch_norm(x) + r)` as three ops gives, forward
    /// and backward, in train and eval mode.
    #[test]
    fn fused_add_relu_equals_the_composition_on_cpu() {
        let dev = Device::Cpu;
        let shape = [3, 5, 7, 3];
        let (x, r) = (tensor(&shape, 51, &dev), tensor(&shape, 52, &dev));
        let (gamma, beta) = (tensor(&[5], 53, &dev), tensor(&[5], 54, &dev));
        let dy = tensor(&shape, 55, &dev);
        let running = RunningStats {
            mean: tensor(&[5], 56, &dev),
            var: Tensor::from_vec(&[5], vec![0.5, 1.0, 2.0, 0.7, 1.3], &dev).unwrap(),
            num_batches_tracked: None,
        };
        let aff = Some((&gamma, &beta));
        let fused = batchnorm_train_forward_act(&x, aff, Some(&running), 0.1, 1e-5, true, Some(&r))
            .unwrap();
        let plain = batchnorm_train_forward(&x, aff, Some(&running), 0.1, 1e-5).unwrap();
        let y = relu_forward(&add_forward(&plain.y, &r).unwrap()).unwrap();
        assert_eq!(fused.y.to_vec().unwrap(), y.to_vec().unwrap());
        let eval_fused = batchnorm_eval_forward_act(&x, aff, &running, 1e-5, true, Some(&r));
        let eval_plain = batchnorm_eval_forward(&x, aff, &running, 1e-5).unwrap();
        let eval_y = relu_forward(&add_forward(&eval_plain, &r).unwrap()).unwrap();
        assert_eq!(
            eval_fused.unwrap().to_vec().unwrap(),
            eval_y.to_vec().unwrap()
        );
        let invstd_eval = invstd(&running.var, 1e-5).unwrap();
        for (train, mean, inv) in [
            (true, &plain.save_mean, &plain.save_invstd),
            (false, &running.mean, &invstd_eval),
        ] {
            let got = batchnorm_add_relu_backward(&x, &y, &dy, Some(&gamma), mean, inv, train);
            let (dx, dr, dgamma, dbeta) = got.unwrap();
            let masked = relu_backward(&y, &dy).unwrap();
            let want = batchnorm_backward(&x, &masked, Some(&gamma), mean, inv, train).unwrap();
            assert_eq!(
                dr.to_vec().unwrap(),
                masked.to_vec().unwrap(),
                "train={train}"
            );
            for (g, w) in [(dx, want.0), (dgamma, want.1), (dbeta, want.2)] {
                assert_eq!(g.to_vec().unwrap(), w.to_vec().unwrap(), "train={train}");
            }
        }
    }

    #[test]
    fn fused_add_relu_kernel_devices_match_cpu() {
        for shape in [vec![5, 3, 7, 9], vec![7, 4]] {
            let c = shape[1];
            assert_devices_agree(&format!("bn+add+relu {shape:?}"), 1e-5, 1e-6, |dev| {
                let (x, r) = (tensor(&shape, 61, dev), tensor(&shape, 62, dev));
                let (gamma, beta) = (tensor(&[c], 63, dev), tensor(&[c], 64, dev));
                let aff = Some((&gamma, &beta));
                let f = batchnorm_train_forward_act(&x, aff, None, 0.1, 1e-5, true, Some(&r))?;
                let dy = tensor(&shape, 65, dev);
                let (mean, inv) = (&f.save_mean, &f.save_invstd);
                let (dx, dr, dgamma, dbeta) =
                    batchnorm_add_relu_backward(&x, &f.y, &dy, Some(&gamma), mean, inv, true)?;
                let running = RunningStats {
                    mean: tensor(&[c], 66, dev),
                    var: Tensor::full(&[c], 0.8, dev)?,
                    num_batches_tracked: None,
                };
                let eval = batchnorm_eval_forward_act(&x, aff, &running, 1e-5, true, Some(&r))?;
                Ok(vec![f.y, dx, dr, dgamma, dbeta, eval])
            });
        }
    }

    #[test]
    fn fused_relu_kernel_devices_match_cpu() {
        // Per-channel counts 315 (partial block) and 7 (inner = 1).
        for shape in [vec![5, 3, 7, 9], vec![7, 4]] {
            let c = shape[1];
            assert_devices_agree(&format!("bn+relu {shape:?}"), 1e-5, 1e-6, |dev| {
                let x = tensor(&shape, 31, dev);
                let (gamma, beta) = (tensor(&[c], 32, dev), tensor(&[c], 33, dev));
                let f = batchnorm_relu_train_forward(&x, Some((&gamma, &beta)), None, 0.1, 1e-5)?;
                let dy = tensor(&shape, 34, dev);
                let (dx, dgamma, dbeta) = batchnorm_relu_backward(
                    &x,
                    &f.y,
                    &dy,
                    Some(&gamma),
                    &f.save_mean,
                    &f.save_invstd,
                    true,
                )?;
                Ok(vec![f.y, dx, dgamma, dbeta])
            });
        }
    }
}
