//! The CPU spec's per-plane f64 sums: lane-split sums of a function of two slices (optionally
//! masked by a fused ReLU), the backward's `(Σ g, Σ g·xhat)` with its AVX-512 f32 path, and the
//! per-channel totals over planes.

use super::BnShape;
use crate::ops::Real;
use rayon::prelude::*;

/// Independent f64 accumulators per plane sum: the adds vectorise and the rounding chain is 8x
/// shorter than one running sum.
pub(super) const LANES: usize = 8;

/// `(sum a, sum b)` of `(a, b) = f(x, g)` over two slices of equal length, in f64 lanes.
#[inline(always)]
pub(super) fn lane_sum2<T: Real>(xs: &[T], gs: &[T], f: impl Fn(T, T) -> (f64, f64)) -> (f64, f64) {
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
/// 0, in the same order. The mask is applied a block at a time into a stack array by a plain
/// loop: selecting inside the f64 lane loop compiles to a branch per element.
#[inline(always)]
pub(super) fn lane_sum2_masked<T: Real>(
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

/// Where a fused ReLU passed the gradient, per plane.
#[derive(Clone, Copy)]
pub(super) enum PlaneMask<'a, T> {
    /// Where its saved output `y` is > 0.
    Output(&'a [T]),
    /// Where `(x - m)·scale + shift > 0`: the forward's own arithmetic on the input, so the
    /// same mask without reading the output back (no residual).
    Recompute { scale: T, shift: T },
}

/// The backward's per-plane sums `(Σ g, Σ g·xhat)` with `xhat = (x - m)·is` and `g` masked by
/// `mask` when given: [`lane_sum2`] / [`lane_sum2_masked`] of that function, or for f32 (reached
/// through [`Real::as_f32s`]) the same f32 and f64 operations in the same lane order written
/// with AVX-512 intrinsics (the compiler leaves the generic version scalar), so the same sums.
pub(super) fn backward_sums_masked<T: Real>(
    xs: &[T],
    gs: &[T],
    mask: Option<PlaneMask<T>>,
    m: T,
    is: T,
) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if let Some(sums) = backward_sums_f32(xs, gs, mask, m, is) {
        return sums;
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

/// [`backward_sums_masked`] on the AVX-512 path, when `T` is f32 and the CPU has AVX-512 F and
/// VL (else `None`).
#[cfg(target_arch = "x86_64")]
fn backward_sums_f32<T: Real>(
    xs: &[T],
    gs: &[T],
    mask: Option<PlaneMask<T>>,
    m: T,
    is: T,
) -> Option<(f64, f64)> {
    let (xs, gs) = (T::as_f32s(xs)?, T::as_f32s(gs)?);
    if !(crate::ops::cpu_gemm::fast_f32_available()
        && std::arch::is_x86_feature_detected!("avx512vl"))
    {
        return None;
    }
    // Exact: T is f32 whenever the slices are.
    let f = |v: T| v.to_f64() as f32;
    let mask = match mask {
        None => None,
        Some(PlaneMask::Output(ys)) => Some(PlaneMask::Output(T::as_f32s(ys)?)),
        Some(PlaneMask::Recompute { scale, shift }) => Some(PlaneMask::Recompute {
            scale: f(scale),
            shift: f(shift),
        }),
    };
    // SAFETY: AVX-512 F (implied by fast_f32_available) and VL are available (checked above).
    Some(unsafe { backward_sums_avx512(xs, gs, mask, f(m), f(is)) })
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
pub(super) fn relu_pass<T: Real>(y: T, g: T) -> T {
    if y > T::ZERO {
        g
    } else {
        T::ZERO
    }
}

/// Per-channel totals of `plane(c, start)` — the sums over one `[start, start + inner)` plane —
/// over the `outer` planes of each channel, in parallel over channels.
pub(super) fn channel_sums<R: Send + Sync + Copy + std::ops::Add<Output = R>>(
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

/// A pair of f64 sums, added pairwise across planes.
#[derive(Clone, Copy)]
pub(super) struct Sum2(pub f64, pub f64);

impl std::ops::Add for Sum2 {
    type Output = Sum2;
    fn add(self, o: Sum2) -> Sum2 {
        Sum2(self.0 + o.0, self.1 + o.1)
    }
}
