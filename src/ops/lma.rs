//! LMA — Light Multi-segment Activation (SPEC-NOTES §6). With K = num_bins, parameters
//! `alphas[K]`, `betas[K]` and the constant `init_alpha = [0]*(K/2) + [1]*(K-K/2)`, on every call
//! (train or eval):
//! - `mu_b = mean(x)`, `sigma_b = std(x)` (unbiased) over ALL elements, in f64, two passes, no gradient;
//! - `mv_mean <- mv_mean*mu + mu_b*(1-mu)`, `mv_std <- mv_std*mu + sigma_b*(1-mu)` (mu = 0.99);
//! - `(m, s)` = `(mu_b, sigma_b)` in train mode, the UPDATED `(mv_mean, mv_std)` in eval mode;
//! - `step = (6*s)/K`, `t = ((x - m) + 3*s)/step` (in f64, in this order), `idx = clamp(trunc(t), 0, K-1)`;
//! - `y = (alphas + init_alpha)[idx] * x + betas[idx]`.
//!
//! Backward: `dx = dy*(alphas+init_alpha)[idx]`, `dalphas[k] = sum_{idx=k} dy*x`,
//! `dbetas[k] = sum_{idx=k} dy`; nothing flows through m, s or idx. Kernels: `kernels/lma.cu`.

use crate::autograd::{Graph, Var};
use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::partials::{self, check_i32};
use crate::ops::Real;
use crate::tensor::{same_device, IndexTensor, Tensor};

/// Mirrors `LmaParams` in `kernels/lma.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LmaParams {
    /// Elements of x.
    pub n: i32,
    /// Segments K.
    pub bins: i32,
    /// 1: batch statistics (training); 0: running statistics.
    pub train: i32,
    /// First-pass blocks of the statistics kernels.
    pub blocks: i32,
    /// Momentum of the running statistics.
    pub mu: f64,
}

/// Doubles of the device statistics buffer (`LMA_STATS` in the kernel file).
const LMA_STATS: usize = 5;
/// Shared memory per block the parameter-gradient kernel may use.
const SHARED_BUDGET: usize = 48 * 1024;

/// How an LMA call runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LmaConfig {
    /// K, the number of segments.
    pub num_bins: usize,
    /// Momentum of the running statistics (0.99 in the seeds).
    pub mu: f64,
    /// Batch statistics (train) or the updated running ones (eval).
    pub train: bool,
}

impl LmaConfig {
    /// `num_bins` segments, the seeds' momentum 0.99.
    pub fn new(num_bins: usize, train: bool) -> LmaConfig {
        LmaConfig {
            num_bins,
            mu: 0.99,
            train,
        }
    }
}

/// `init_alpha[k]`: slope 0 for the lower half of the segments, 1 for the upper half.
pub fn init_alpha(k: usize, bins: usize) -> f64 {
    if k < bins / 2 {
        0.0
    } else {
        1.0
    }
}

// ---------- CPU reference ----------

/// Batch and running statistics of one call, in f64.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LmaMoments {
    /// Mean of this batch.
    pub batch_mean: f64,
    /// Standard deviation of this batch.
    pub batch_std: f64,
    /// Running mean after this call.
    pub mv_mean: f64,
    /// Running standard deviation after this call.
    pub mv_std: f64,
}

impl LmaMoments {
    /// The `(m, s)` the segments follow.
    pub fn centre_scale(&self, train: bool) -> (f64, f64) {
        if train {
            (self.batch_mean, self.batch_std)
        } else {
            (self.mv_mean, self.mv_std)
        }
    }
}

/// Mean and unbiased std of all of `x` (two passes in f64), and the updated running statistics.
pub fn lma_moments_cpu<T: Real>(x: &[T], mv_mean: f64, mv_std: f64, mu: f64) -> LmaMoments {
    let n = x.len() as f64;
    let mean = x.iter().map(|v| v.to_f64()).sum::<f64>() / n;
    let ss: f64 = x.iter().map(|v| (v.to_f64() - mean).powi(2)).sum();
    let std = (ss / (n - 1.0)).sqrt();
    let keep = 1.0 - mu;
    LmaMoments {
        batch_mean: mean,
        batch_std: std,
        mv_mean: mv_mean * mu + mean * keep,
        mv_std: mv_std * mu + std * keep,
    }
}

/// The segment of `x` for centre `m` and scale `s` (f64, the spec's op order).
pub fn lma_segment(x: f64, m: f64, s: f64, bins: usize) -> usize {
    let step = (6.0 * s) / bins as f64;
    let t = ((x - m) + 3.0 * s) / step;
    // NaN (a constant input: s = 0, t = 0/0) goes to segment 0.
    if t.is_nan() || t <= 0.0 {
        0
    } else if t >= (bins - 1) as f64 {
        bins - 1
    } else {
        t as usize
    }
}

/// `y` and the segment index of every element.
pub fn lma_forward_cpu<T: Real>(
    x: &[T],
    alphas: &[T],
    betas: &[T],
    m: f64,
    s: f64,
    y: &mut [T],
    idx: &mut [i32],
) {
    let bins = alphas.len();
    for ((y, idx), &v) in y.iter_mut().zip(idx.iter_mut()).zip(x) {
        let k = lma_segment(v.to_f64(), m, s, bins);
        *idx = k as i32;
        *y = (alphas[k] + T::from_f64(init_alpha(k, bins))) * v + betas[k];
    }
}

/// Fills `dx`, `dalphas`, `dbetas` (per-segment sums in f64).
pub fn lma_backward_cpu<T: Real>(
    x: &[T],
    alphas: &[T],
    idx: &[i32],
    dy: &[T],
    dx: &mut [T],
    dalphas: &mut [T],
    dbetas: &mut [T],
) {
    let bins = alphas.len();
    let (mut acc_a, mut acc_b) = (vec![0.0f64; bins], vec![0.0f64; bins]);
    for (((dx, &v), &k), &g) in dx.iter_mut().zip(x).zip(idx).zip(dy) {
        let k = k as usize;
        *dx = g * (alphas[k] + T::from_f64(init_alpha(k, bins)));
        acc_a[k] += g.to_f64() * v.to_f64();
        acc_b[k] += g.to_f64();
    }
    for (d, a) in dalphas.iter_mut().zip(acc_a) {
        *d = T::from_f64(a);
    }
    for (d, a) in dbetas.iter_mut().zip(acc_b) {
        *d = T::from_f64(a);
    }
}

// ---------- device dispatch ----------

/// 0-dim f32 statistics of one call (on the call's device).
#[derive(Clone, Debug)]
pub struct LmaStats {
    /// Mean of this batch.
    pub batch_mean: Tensor,
    /// Standard deviation of this batch.
    pub batch_std: Tensor,
    /// The running statistics after this call (store them back).
    pub mv_mean: Tensor,
    /// The running standard deviation after this call (store it back).
    pub mv_std: Tensor,
}

/// What [`lma_forward`] returns.
pub struct LmaForward {
    /// The activation's output (shape of x).
    pub y: Tensor,
    /// Segment of every element (shape of x).
    pub segment_index: IndexTensor,
    /// The call's statistics.
    pub stats: LmaStats,
}

fn check_inputs(
    x: &Tensor,
    alphas: &Tensor,
    betas: &Tensor,
    mv_mean: &Tensor,
    mv_std: &Tensor,
    cfg: &LmaConfig,
) -> Result<()> {
    for t in [alphas, betas, mv_mean, mv_std] {
        same_device("lma", x, t)?;
    }
    let k = cfg.num_bins;
    if k == 0 {
        return Err(Error::op_arg("lma", "lma: num_bins must be at least 1"));
    }
    alphas.expect_shape("lma: alphas ([num_bins])", &[k])?;
    betas.expect_shape("lma: betas ([num_bins])", &[k])?;
    if mv_mean.numel() != 1 || mv_std.numel() != 1 {
        return Err(Error::Shape(format!(
            "lma: mv_mean and mv_std must be scalars, got {:?} and {:?}",
            mv_mean.shape(),
            mv_std.shape()
        )));
    }
    if x.numel() < 2 {
        return Err(Error::Shape(format!(
            "lma: the unbiased std needs at least 2 elements, got shape {:?}",
            x.shape()
        )));
    }
    check_i32("lma", x.shape())?;
    Ok(())
}

fn lma_params(x: &Tensor, cfg: &LmaConfig) -> LmaParams {
    LmaParams {
        n: x.numel() as i32,
        bins: cfg.num_bins as i32,
        train: cfg.train as i32,
        blocks: partials::partial_blocks(x.numel()) as i32,
        mu: cfg.mu,
    }
}

/// LMA on the tensors' device: the piecewise-linear activation with its segments placed by
/// the batch (train) or running (eval) statistics.
pub fn lma_forward(
    x: &Tensor,
    alphas: &Tensor,
    betas: &Tensor,
    mv_mean: &Tensor,
    mv_std: &Tensor,
    cfg: LmaConfig,
) -> Result<LmaForward> {
    check_inputs(x, alphas, betas, mv_mean, mv_std, &cfg)?;
    let dev = x.device();
    let n = x.numel();
    match dev {
        Device::Cpu => {
            let mo = lma_moments_cpu(
                x.host_data()?,
                mv_mean.host_data()?[0] as f64,
                mv_std.host_data()?[0] as f64,
                cfg.mu,
            );
            let (m, s) = mo.centre_scale(cfg.train);
            let (mut y, mut idx) = (vec![0.0f32; n], vec![0i32; n]);
            lma_forward_cpu(
                x.host_data()?,
                alphas.host_data()?,
                betas.host_data()?,
                m,
                s,
                &mut y,
                &mut idx,
            );
            let scalar = |v: f64| Tensor::scalar(v as f32, dev);
            Ok(LmaForward {
                y: Tensor::from_vec(x.shape(), y, dev)?,
                segment_index: IndexTensor::from_vec(x.shape(), idx, dev)?,
                stats: LmaStats {
                    batch_mean: scalar(mo.batch_mean)?,
                    batch_std: scalar(mo.batch_std)?,
                    mv_mean: scalar(mo.mv_mean)?,
                    mv_std: scalar(mo.mv_std)?,
                },
            })
        }
        Device::Gpu(g) => {
            let p = lma_params(x, &cfg);
            let blocks = p.blocks as usize;
            let first = partials::partial_launch(n);
            let one = LaunchCfg::new((1, 1, 1), (1, 1, 1));
            let mut partial = g.zeros::<f64>(blocks)?;
            let mut stats = g.zeros::<f64>(LMA_STATS)?;

            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer())).ptr(g.addr_mut(&mut partial));
            g.launch("lma_sum_partial_f32", first, args.value(&p))?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(&partial)).ptr(g.addr_mut(&mut stats));
            g.launch("lma_mean_finish", one, args.value(&p))?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer())).ptr(g.addr(&stats));
            args.ptr(g.addr_mut(&mut partial));
            g.launch("lma_sqdev_partial_f32", first, args.value(&p))?;

            let mut outs: Vec<_> = (0..4).map(|_| g.zeros::<f32>(1)).collect::<Result<_>>()?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(&partial)).ptr(g.addr_mut(&mut stats));
            args.ptr(g.addr(mv_mean.buffer()))
                .ptr(g.addr(mv_std.buffer()));
            for o in outs.iter_mut() {
                args.ptr(g.addr_mut(o));
            }
            g.launch("lma_stats_finish", one, args.value(&p))?;

            let mut y = g.zeros::<f32>(n)?;
            let mut idx = g.zeros::<i32>(n)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer())).ptr(g.addr(alphas.buffer()));
            args.ptr(g.addr(betas.buffer())).ptr(g.addr(&stats));
            args.ptr(g.addr_mut(&mut y)).ptr(g.addr_mut(&mut idx));
            g.launch(
                "lma_forward_f32",
                LaunchCfg::for_elements(n),
                args.value(&p),
            )?;

            let mut outs = outs.into_iter().map(|b| Tensor::from_buffer(&[], b, dev));
            let mut next = || outs.next().expect("four statistics");
            Ok(LmaForward {
                y: Tensor::from_buffer(x.shape(), y, dev)?,
                segment_index: IndexTensor::from_buffer(x.shape(), idx, dev)?,
                stats: LmaStats {
                    batch_mean: next()?,
                    batch_std: next()?,
                    mv_mean: next()?,
                    mv_std: next()?,
                },
            })
        }
    }
}

/// Threads per block of `lma_params_partial_f32` for K segments (its shared table is
/// `2*K*threads` doubles).
fn params_threads(bins: usize) -> Result<u32> {
    [128u32, 64, 32]
        .into_iter()
        .find(|&t| 2 * bins * t as usize * 8 <= SHARED_BUDGET)
        .ok_or_else(|| {
            Error::op_arg(
                "lma",
                format!(
                "lma: num_bins = {bins} is more segments than the GPU kernel supports (at most {})",
                SHARED_BUDGET / (2 * 8 * 32)
            ),
            )
        })
}

/// `(dx, dalphas, dbetas)` from the forward's segment indices.
pub fn lma_backward(
    x: &Tensor,
    alphas: &Tensor,
    segment_index: &IndexTensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    same_device("lma backward", x, alphas)?;
    same_device("lma backward", x, dy)?;
    same_device("lma backward", x, segment_index)?;
    dy.expect_shape("lma backward: dy", x.shape())?;
    segment_index.expect_shape("lma backward: segment indices", x.shape())?;
    let bins = alphas.numel();
    let dev = x.device();
    let n = check_i32("lma backward", x.shape())? as usize;
    match dev {
        Device::Cpu => {
            let mut dx = vec![0.0f32; n];
            let (mut da, mut db) = (vec![0.0f32; bins], vec![0.0f32; bins]);
            let idx = segment_index.host_data()?;
            lma_backward_cpu(
                x.host_data()?,
                alphas.host_data()?,
                idx,
                dy.host_data()?,
                &mut dx,
                &mut da,
                &mut db,
            );
            Ok((
                Tensor::from_vec(x.shape(), dx, dev)?,
                Tensor::from_vec(alphas.shape(), da, dev)?,
                Tensor::from_vec(alphas.shape(), db, dev)?,
            ))
        }
        Device::Gpu(g) => {
            let cfg = LmaConfig::new(bins, true);
            let p = lma_params(x, &cfg);
            let mut dx = g.zeros::<f32>(n)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(alphas.buffer()))
                .ptr(g.addr(segment_index.buffer()));
            args.ptr(g.addr(dy.buffer())).ptr(g.addr_mut(&mut dx));
            g.launch(
                "lma_backward_x_f32",
                LaunchCfg::for_elements(n),
                args.value(&p),
            )?;

            let threads = params_threads(bins)?;
            let blocks = partials::partial_blocks(n);
            let (mut pa, mut pb) = (
                g.zeros::<f64>(blocks * bins)?,
                g.zeros::<f64>(blocks * bins)?,
            );
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer()))
                .ptr(g.addr(segment_index.buffer()));
            args.ptr(g.addr(dy.buffer()));
            args.ptr(g.addr_mut(&mut pa)).ptr(g.addr_mut(&mut pb));
            let cfg = LaunchCfg::new((blocks as u32, 1, 1), (threads, 1, 1))
                .with_shared((2 * bins * threads as usize * 8) as u32);
            g.launch("lma_params_partial_f32", cfg, args.value(&p))?;
            let da = partials::finish(g, &pa, blocks, bins, 1.0)?;
            let db = partials::finish(g, &pb, blocks, bins, 1.0)?;
            Ok((
                Tensor::from_buffer(x.shape(), dx, dev)?,
                Tensor::from_buffer(alphas.shape(), da, dev)?,
                Tensor::from_buffer(alphas.shape(), db, dev)?,
            ))
        }
    }
}

// ---------- autograd ----------

/// What an LMA call produced beside its output: the statistics (the caller stores `mv_mean`/`mv_std`
/// back as the new running state) and the segment of every element.
pub struct LmaAux {
    /// The call's statistics.
    pub stats: LmaStats,
    /// Segment of every element (shape of x).
    pub segment_index: IndexTensor,
}

/// LMA of `x` with parameters `alphas`, `betas` (`[K]`) and the running statistics before the call.
pub fn lma(
    g: &mut Graph,
    x: Var,
    alphas: Var,
    betas: Var,
    mv_mean: &Tensor,
    mv_std: &Tensor,
    cfg: LmaConfig,
) -> Result<(Var, LmaAux)> {
    let (xv, av) = (g.value(x).clone(), g.value(alphas).clone());
    let out = lma_forward(&xv, &av, g.value(betas), mv_mean, mv_std, cfg)?;
    let idx = out.segment_index.clone();
    let y = g.op(out.y, &[x, alphas, betas], move |dy| {
        let (dx, da, db) = lma_backward(&xv, &av, &idx, dy)?;
        Ok(vec![Some(dx), Some(da), Some(db)])
    });
    Ok((
        y,
        LmaAux {
            stats: out.stats,
            segment_index: out.segment_index,
        },
    ))
}
