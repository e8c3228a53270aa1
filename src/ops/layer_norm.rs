//! The early-OpenNMT LayerNorm (`onmt/modules/UtilClass.py` `LayerNorm`, SPEC-TRANSLATION §5.5)
//! over the last dimension (rows of `[rows, d]`, any leading shape):
//! `out = a_2 · (z − mean) / (std + eps) + b_2` with the UNBIASED std (÷(d−1)) and `eps` added to
//! the std, not to the variance (the seed uses eps 1e-3). Not PyTorch's `nn.LayerNorm`.
//!
//! Backward, with `g = dy·a_2`, `c = z − mean`, `s = std + eps`:
//! `dz = (g − mean(g) − c·Σ(g·c) / (s·(d−1)·std)) / s`, `da_2 = Σ_rows dy·c/s`, `db_2 = Σ_rows dy`.
//! Kernels: `kernels/layer_norm.cu`; the parameter sums use the deterministic two-pass reduction
//! of [`crate::ops::partials`].

use crate::autograd::{Graph, Var};
use crate::device::{Device, Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::partials::{self, check_i32, PARTIAL_THREADS};
use crate::ops::Real;
use crate::tensor::{same_device, Tensor};

/// The seed's epsilon (added to the unbiased std).
pub const ONMT_LAYER_NORM_EPS: f32 = 1e-3;

/// Mirrors `LayerNormParams` in `kernels/layer_norm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LayerNormParams {
    /// Rows (every axis but the last).
    pub rows: i32,
    /// The normalised (last) dimension.
    pub cols: i32,
    /// Added to the unbiased std.
    pub eps: f32,
    /// Rows per chunk of the parameter-gradient grid.
    pub chunk_rows: i32,
}

/// Per-row statistics the backward needs: the mean and the unbiased std (before `eps`).
#[derive(Clone, Debug)]
pub struct RowStats {
    /// Row means `[rows]`.
    pub mean: Tensor,
    /// Row unbiased standard deviations `[rows]`.
    pub std: Tensor,
}

// ---------- CPU reference (row and column sums accumulated in f64) ----------

/// Mean and unbiased std of one row, rounded to `T` as the kernel does.
fn row_stats<T: Real>(zr: &[T]) -> (T, T) {
    let d = zr.len() as f64;
    let m = T::from_f64(zr.iter().map(|v| v.to_f64()).sum::<f64>() / d);
    let q: f64 = zr.iter().map(|&v| (v - m).to_f64().powi(2)).sum();
    (m, T::from_f64((q / (d - 1.0)).sqrt()))
}

/// Forward over rows of `cols`; fills `out` and the per-row `mean` / `std`.
pub fn layer_norm_forward_cpu<T: Real>(
    z: &[T],
    a: &[T],
    b: &[T],
    eps: T,
    out: &mut [T],
    mean: &mut [T],
    std: &mut [T],
) {
    let cols = a.len();
    let rows = z.chunks_exact(cols).zip(out.chunks_exact_mut(cols));
    for (r, (zr, yr)) in rows.enumerate() {
        let (m, sd) = row_stats(zr);
        let denom = sd + eps;
        for (((y, &v), &a), &b) in yr.iter_mut().zip(zr).zip(a).zip(b) {
            *y = a * (v - m) / denom + b;
        }
        mean[r] = m;
        std[r] = sd;
    }
}

/// Backward: fills `dz`, `da`, `db` from the forward's `mean` / `std`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward_cpu<T: Real>(
    z: &[T],
    a: &[T],
    dy: &[T],
    mean: &[T],
    std: &[T],
    eps: T,
    dz: &mut [T],
    da: &mut [T],
    db: &mut [T],
) {
    let cols = a.len();
    let (mut acc_a, mut acc_b) = (vec![0.0f64; cols], vec![0.0f64; cols]);
    let rows = z.chunks_exact(cols).zip(dy.chunks_exact(cols));
    for (r, ((zr, dyr), dzr)) in rows.zip(dz.chunks_exact_mut(cols)).enumerate() {
        let (m, sd) = (mean[r], std[r]);
        let denom = sd + eps;
        let g = |j: usize| (dyr[j] * a[j]).to_f64();
        let c = |j: usize| (zr[j] - m).to_f64();
        let g_mean = (0..cols).map(g).sum::<f64>() / cols as f64;
        let sgc: f64 = (0..cols).map(|j| g(j) * c(j)).sum();
        let k = sgc / (denom.to_f64() * (cols - 1) as f64 * sd.to_f64());
        for (j, dz) in dzr.iter_mut().enumerate() {
            *dz = T::from_f64((g(j) - g_mean - c(j) * k) / denom.to_f64());
            let xhat = (zr[j] - m) / denom;
            acc_a[j] += dyr[j].to_f64() * xhat.to_f64();
            acc_b[j] += dyr[j].to_f64();
        }
    }
    for ((da, db), (sa, sb)) in da
        .iter_mut()
        .zip(db.iter_mut())
        .zip(acc_a.into_iter().zip(acc_b))
    {
        *da = T::from_f64(sa);
        *db = T::from_f64(sb);
    }
}

// ---------- device dispatch ----------

/// Checks shapes and builds the kernel parameters (`rows`, `cols` of `z`; `a_2`, `b_2` are `[cols]`).
fn params(
    what: &str,
    z: &Tensor,
    a: &Tensor,
    b: Option<&Tensor>,
    eps: f32,
) -> Result<LayerNormParams> {
    same_device(what, z, a)?;
    let cols = z.shape().last().copied().unwrap_or(0);
    if cols < 2 {
        return Err(Error::Shape(format!(
            "{what}: the normalised (last) dimension needs at least 2 values for an unbiased std, \
             got shape {:?}",
            z.shape()
        )));
    }
    a.expect_shape(&format!("{what}: a_2"), &[cols])?;
    if let Some(b) = b {
        same_device(what, z, b)?;
        b.expect_shape(&format!("{what}: b_2"), &[cols])?;
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::op_arg(
            what,
            format!("eps must be a finite number >= 0, got {eps}"),
        ));
    }
    check_i32(what, z.shape())?;
    let rows = z.numel() / cols;
    let chunks = rows.div_ceil(64).clamp(1, 64);
    Ok(LayerNormParams {
        rows: rows as i32,
        cols: cols as i32,
        eps,
        chunk_rows: rows.div_ceil(chunks).max(1) as i32,
    })
}

/// One block per row: whole warps, a power of two up to `PARTIAL_THREADS` (the f64 tree sum).
fn row_launch(p: &LayerNormParams) -> LaunchCfg {
    let threads = (p.cols as u32)
        .next_power_of_two()
        .clamp(32, PARTIAL_THREADS);
    LaunchCfg::new((p.rows.clamp(1, 65535) as u32, 1, 1), (threads, 1, 1)).grid_stride()
}

/// `(out, row stats)` of the onmt LayerNorm of `z` over its last dimension.
pub fn layer_norm_forward(
    z: &Tensor,
    a: &Tensor,
    b: &Tensor,
    eps: f32,
) -> Result<(Tensor, RowStats)> {
    let p = params("layer_norm_onmt", z, a, Some(b), eps)?;
    let rows = p.rows as usize;
    let dev = z.device();
    match dev {
        Device::Cpu => {
            let mut out = vec![0.0f32; z.numel()];
            let (mut mean, mut std) = (vec![0.0f32; rows], vec![0.0f32; rows]);
            let (zs, az, bz) = (z.host_data()?, a.host_data()?, b.host_data()?);
            layer_norm_forward_cpu(zs, az, bz, eps, &mut out, &mut mean, &mut std);
            let stats = RowStats {
                mean: Tensor::from_vec(&[rows], mean, dev)?,
                std: Tensor::from_vec(&[rows], std, dev)?,
            };
            Ok((Tensor::from_vec(z.shape(), out, dev)?, stats))
        }
        Device::Gpu(g) => {
            let mut out = g.zeros::<f32>(z.numel())?;
            let (mut mean, mut std) = (g.zeros::<f32>(rows)?, g.zeros::<f32>(rows)?);
            if rows > 0 {
                let mut args = KernelArgs::new();
                args.ptr(g.addr(z.buffer())).ptr(g.addr(a.buffer()));
                args.ptr(g.addr(b.buffer())).ptr(g.addr_mut(&mut out));
                args.ptr(g.addr_mut(&mut mean)).ptr(g.addr_mut(&mut std));
                args.value(&p);
                g.launch("layer_norm_onmt_forward_f32", row_launch(&p), &mut args)?;
            }
            let stats = RowStats {
                mean: Tensor::from_buffer(&[rows], mean, dev)?,
                std: Tensor::from_buffer(&[rows], std, dev)?,
            };
            Ok((Tensor::from_buffer(z.shape(), out, dev)?, stats))
        }
    }
}

/// `(dz, da_2, db_2)` from the forward's input, `a_2` and row statistics.
pub fn layer_norm_backward(
    z: &Tensor,
    a: &Tensor,
    stats: &RowStats,
    dy: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let what = "layer_norm_onmt backward";
    let p = params(what, z, a, None, eps)?;
    same_device(what, z, dy)?;
    dy.expect_shape(&format!("{what}: dy"), z.shape())?;
    let rows = p.rows as usize;
    stats
        .mean
        .expect_shape(&format!("{what}: saved mean"), &[rows])?;
    stats
        .std
        .expect_shape(&format!("{what}: saved std"), &[rows])?;
    let cols = p.cols as usize;
    let dev = z.device();
    match dev {
        Device::Cpu => {
            let mut dz = vec![0.0f32; z.numel()];
            let (mut da, mut db) = (vec![0.0f32; cols], vec![0.0f32; cols]);
            layer_norm_backward_cpu(
                z.host_data()?,
                a.host_data()?,
                dy.host_data()?,
                stats.mean.host_data()?,
                stats.std.host_data()?,
                eps,
                &mut dz,
                &mut da,
                &mut db,
            );
            Ok((
                Tensor::from_vec(z.shape(), dz, dev)?,
                Tensor::from_vec(&[cols], da, dev)?,
                Tensor::from_vec(&[cols], db, dev)?,
            ))
        }
        Device::Gpu(g) => {
            let dz = backward_x_gpu(g, z, a, stats, dy, &p)?;
            let (da, db) = params_grad_gpu(g, z, stats, dy, &p)?;
            Ok((
                Tensor::from_buffer(z.shape(), dz, dev)?,
                Tensor::from_buffer(&[cols], da, dev)?,
                Tensor::from_buffer(&[cols], db, dev)?,
            ))
        }
    }
}

fn backward_x_gpu(
    g: &Gpu,
    z: &Tensor,
    a: &Tensor,
    stats: &RowStats,
    dy: &Tensor,
    p: &LayerNormParams,
) -> Result<crate::device::Buffer<f32>> {
    let mut dz = g.zeros::<f32>(z.numel())?;
    if p.rows > 0 {
        let mut args = KernelArgs::new();
        args.ptr(g.addr(z.buffer())).ptr(g.addr(a.buffer()));
        args.ptr(g.addr(dy.buffer()))
            .ptr(g.addr(stats.mean.buffer()));
        args.ptr(g.addr(stats.std.buffer()))
            .ptr(g.addr_mut(&mut dz));
        args.value(p);
        g.launch("layer_norm_onmt_backward_x_f32", row_launch(p), &mut args)?;
    }
    Ok(dz)
}

/// `(da_2, db_2)`: per-chunk column sums, then the fixed-order finish.
fn params_grad_gpu(
    g: &Gpu,
    z: &Tensor,
    stats: &RowStats,
    dy: &Tensor,
    p: &LayerNormParams,
) -> Result<(crate::device::Buffer<f32>, crate::device::Buffer<f32>)> {
    let (rows, cols) = (p.rows as usize, p.cols as usize);
    let chunks = rows.div_ceil(p.chunk_rows as usize).max(1);
    let mut pa = g.zeros::<f64>(chunks * cols)?;
    let mut pb = g.zeros::<f64>(chunks * cols)?;
    if rows > 0 {
        let mut args = KernelArgs::new();
        args.ptr(g.addr(z.buffer())).ptr(g.addr(dy.buffer()));
        args.ptr(g.addr(stats.mean.buffer()))
            .ptr(g.addr(stats.std.buffer()));
        args.ptr(g.addr_mut(&mut pa)).ptr(g.addr_mut(&mut pb));
        args.value(p);
        let threads = PARTIAL_THREADS;
        let grid = (cols.div_ceil(threads as usize) as u32, chunks as u32, 1);
        g.launch(
            "layer_norm_onmt_params_partial_f32",
            LaunchCfg::new(grid, (threads, 1, 1)),
            &mut args,
        )?;
    }
    let da = partials::finish(g, &pa, chunks, cols, 1.0)?;
    let db = partials::finish(g, &pb, chunks, cols, 1.0)?;
    Ok((da, db))
}

// ---------- autograd ----------

/// The onmt LayerNorm of `z` over its last dimension with gain `a_2` and bias `b_2` (`[d]` each).
pub fn layer_norm_onmt(g: &mut Graph, z: Var, a_2: Var, b_2: Var, eps: f32) -> Result<Var> {
    let (y, stats) = layer_norm_forward(g.value(z), g.value(a_2), g.value(b_2), eps)?;
    let (zv, av) = (g.value(z).clone(), g.value(a_2).clone());
    Ok(g.op(y, &[z, a_2, b_2], move |dy| {
        let (dz, da, db) = layer_norm_backward(&zv, &av, &stats, dy, eps)?;
        Ok(vec![Some(dz), Some(da), Some(db)])
    }))
}
