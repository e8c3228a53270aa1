//! Polino et al.'s uniform quantizer ("fake quantization", SPEC-NOTES §8) and a packed low-bit
//! export of its levels.
//!
//! `quantize_uniform(v, bits, bucket)`, s = 2^bits levels: flatten; one row if `bucket` is `None`
//! or `numel <= bucket`, else rows of `bucket` elements (the last row padded with copies of the last
//! element — which changes neither its min nor its max). Per row: `beta = min`, `alpha = max - beta`
//! (`alpha = 1` if `< 1e-10`), then, each one f32 operation in this order:
//! `u = (v - beta)/alpha; r = u*(s-1); level = round_half_to_even(r); q = level/(s-1);
//! v_hat = q*alpha + beta`. Bit-reproducible on every device. Kernel: `kernels/quant.cu`.
//!
//! The non-uniform quantizer of differentiable quantization (Polino et al. §3) scales each bucket
//! the same way and replaces `u = (v - beta)/alpha` by the nearest of a sorted table of points
//! `p_0 <= … <= p_{s-1}` in [0, 1] (ties to the lower point): `v_hat = p_j*alpha + beta`.
//! Its backward is the gradient with respect to the points, `dL/dp_j = sum over the elements i
//! that went to p_j of alpha_i * dL/dv_hat_i` ([`point_gradients_cpu`]). Kernels:
//! `quantize_points_f32` (bit-exact, like the uniform one) and `point_gradients_partial_f32` +
//! `sum_partials_f64` (deterministic, summed in f64) in `kernels/quant.cu`.

use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::partials::{self, check_i32, PARTIAL_THREADS};
use crate::ops::Real;
use crate::tensor::{same_device, IndexTensor, Tensor};

/// Mirrors `QuantParams` in `kernels/quant.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct QuantParams {
    /// Elements.
    pub n: i32,
    /// Elements per bucket.
    pub bucket: i32,
    /// Buckets.
    pub rows: i32,
    /// Levels − 1 (`2^bits − 1`).
    pub steps: f32,
}

/// Mirrors `PointsParams` in `kernels/quant.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PointsParams {
    /// Elements.
    pub n: i32,
    /// Elements per bucket.
    pub bucket: i32,
    /// Buckets.
    pub rows: i32,
    /// Points of the table.
    pub num_points: i32,
}

/// Mirrors `PointGradParams` in `kernels/quant.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PointGradParams {
    /// Elements.
    pub n: i32,
    /// Elements per bucket.
    pub bucket: i32,
    /// Points of the table.
    pub num_points: i32,
    /// Elements per block of the reduction.
    pub chunk: i32,
    /// Blocks of the reduction.
    pub chunks: i32,
}

/// Threads per block of `quantize_uniform_f32` and `quantize_points_f32` (`QUANT_THREADS`).
const QUANT_THREADS: u32 = 256;
/// Most bits a level may have (levels and `2^bits - 1` stay exact in f32 and i32).
pub const MAX_BITS: u32 = 16;

/// The result of quantizing one tensor.
#[derive(Clone, Debug)]
pub struct Quantized {
    /// The dequantized values `v_hat` (shape of the input).
    pub values: Tensor,
    /// Scale of each bucket row, `[rows]`.
    pub alpha: Tensor,
    /// Offset (minimum) of each bucket row, `[rows]`.
    pub beta: Tensor,
    /// Level of each element in `0..2^bits` (shape of the input).
    pub levels: IndexTensor,
}

/// `(rows, row length)` of the bucket view of `n` elements.
pub fn bucket_rows(n: usize, bucket: Option<usize>) -> (usize, usize) {
    match bucket {
        Some(b) if b > 0 && n > b => (n.div_ceil(b), b),
        _ => (1, n),
    }
}

fn check_args(what: &str, n: usize, bits: u32, bucket: Option<usize>) -> Result<()> {
    if !(1..=MAX_BITS).contains(&bits) {
        return Err(Error::op_arg(
            "quantize",
            format!("{what}: num_bits must be in 1..={MAX_BITS}, got {bits}"),
        ));
    }
    if bucket == Some(0) {
        return Err(Error::op_arg(
            "quantize",
            format!("{what}: bucket_size must be positive (or absent for one bucket)"),
        ));
    }
    if n == 0 {
        return Err(Error::Shape(format!("{what}: empty tensor")));
    }
    Ok(())
}

/// `2^bits - 1` as f32.
fn steps(bits: u32) -> f32 {
    ((1u32 << bits) - 1) as f32
}

// ---------- CPU reference (f32: the spec is the f32 op sequence) ----------

/// `(values, alpha, beta, levels)` of the flat input `v`.
pub fn quantize_uniform_cpu(
    v: &[f32],
    bits: u32,
    bucket: Option<usize>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<i32>) {
    let (rows, len) = bucket_rows(v.len(), bucket);
    let s1 = steps(bits);
    let mut out = vec![0.0f32; v.len()];
    let mut levels = vec![0i32; v.len()];
    let (mut alphas, mut betas) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for (r, row) in v.chunks(len).enumerate() {
        let beta = row.iter().copied().fold(f32::INFINITY, f32::min);
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut alpha = max - beta;
        if alpha < 1e-10 {
            alpha = 1.0;
        }
        for (j, &x) in row.iter().enumerate() {
            let u = (x - beta) / alpha;
            let level = (u * s1).round_ties_even();
            let q = level / s1;
            out[r * len + j] = q * alpha + beta;
            levels[r * len + j] = level as i32;
        }
        alphas.push(alpha);
        betas.push(beta);
    }
    (out, alphas, betas, levels)
}

/// The values a set of levels stands for: `(level/(s-1))*alpha + beta`, exactly as the quantizer
/// computed them (so a packed export reloads bit for bit).
pub fn dequantize_cpu(
    levels: &[i32],
    alpha: &[f32],
    beta: &[f32],
    bits: u32,
    bucket: Option<usize>,
) -> Result<Vec<f32>> {
    let (rows, len) = bucket_rows(levels.len(), bucket);
    if alpha.len() != rows || beta.len() != rows {
        return Err(Error::Shape(format!(
            "dequantize: {} levels in {rows} buckets need {rows} alphas and betas, got {} and {}",
            levels.len(),
            alpha.len(),
            beta.len()
        )));
    }
    let s1 = steps(bits);
    Ok(levels
        .iter()
        .enumerate()
        .map(|(i, &l)| (l as f32 / s1) * alpha[i / len] + beta[i / len])
        .collect())
}

/// `(beta, alpha)` of one bucket row: min and max - min, `alpha = 1` when `< 1e-10`.
fn row_scale<T: Real>(row: &[T]) -> (T, T) {
    let beta = row.iter().copied().fold(-T::NEG_INFINITY, T::min);
    let max = row.iter().copied().fold(T::NEG_INFINITY, T::max);
    let mut alpha = max - beta;
    if alpha < T::from_f64(1e-10) {
        alpha = T::ONE;
    }
    (beta, alpha)
}

/// Index of the point nearest to `u` in the sorted `points` (ties to the lower point).
pub fn nearest_point<T: Real>(points: &[T], u: T) -> usize {
    let i = points.partition_point(|&p| p < u);
    if i == 0 {
        return 0;
    }
    if i == points.len() {
        return points.len() - 1;
    }
    if u - points[i - 1] <= points[i] - u {
        i - 1
    } else {
        i
    }
}

/// Non-uniform quantization of the flat input `v` to the sorted `points`:
/// `(values, alpha, beta, point index)`. `u = (v - beta)/alpha`, `v_hat = p_j*alpha + beta`, each
/// one operation of `T` (f32: bit-reproducible on every device).
pub fn quantize_to_points_cpu<T: Real>(
    v: &[T],
    points: &[T],
    bucket: Option<usize>,
) -> (Vec<T>, Vec<T>, Vec<T>, Vec<i32>) {
    let (rows, len) = bucket_rows(v.len(), bucket);
    let mut out = Vec::with_capacity(v.len());
    let mut index = Vec::with_capacity(v.len());
    let (mut alphas, mut betas) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for row in v.chunks(len.max(1)) {
        let (beta, alpha) = row_scale(row);
        for &x in row {
            let j = nearest_point(points, (x - beta) / alpha);
            index.push(j as i32);
            out.push(points[j] * alpha + beta);
        }
        alphas.push(alpha);
        betas.push(beta);
    }
    (out, alphas, betas, index)
}

/// The values a set of point indices stands for: `points[j]*alpha + beta`, exactly as
/// [`quantize_to_points_cpu`] computed them.
pub fn dequantize_points_cpu(
    index: &[i32],
    points: &[f32],
    alpha: &[f32],
    beta: &[f32],
    bucket: Option<usize>,
) -> Result<Vec<f32>> {
    let (rows, len) = bucket_rows(index.len(), bucket);
    if alpha.len() != rows || beta.len() != rows {
        return Err(Error::Shape(format!(
            "dequantize_points: {} indices in {rows} buckets need {rows} alphas and betas, got {} \
             and {}",
            index.len(),
            alpha.len(),
            beta.len()
        )));
    }
    index
        .iter()
        .enumerate()
        .map(|(i, &j)| match points.get(j as usize) {
            Some(&p) if j >= 0 => Ok(p * alpha[i / len] + beta[i / len]),
            _ => Err(Error::Numeric(format!(
                "dequantize_points: index {j} at element {i} is not one of the {} points",
                points.len()
            ))),
        })
        .collect()
}

/// Backward of [`quantize_to_points_cpu`] with respect to the points:
/// `dL/dp_j = sum over i with index_i = j of alpha_{row(i)} * grad_i` (summed in f64, in element
/// order; an index outside `0..num_points` adds nothing). `grad` is `dL/dv_hat`.
pub fn point_gradients_cpu<T: Real>(
    grad: &[T],
    index: &[i32],
    alpha: &[T],
    bucket: Option<usize>,
    num_points: usize,
) -> Vec<T> {
    let (_, len) = bucket_rows(grad.len(), bucket);
    let mut g = vec![0.0f64; num_points];
    for (i, (&gi, &j)) in grad.iter().zip(index).enumerate() {
        if let Some(slot) = usize::try_from(j).ok().and_then(|j| g.get_mut(j)) {
            *slot += alpha[i / len.max(1)].to_f64() * gi.to_f64();
        }
    }
    g.into_iter().map(T::from_f64).collect()
}

// ---------- device dispatch ----------

/// Quantize `v` to `bits` bits in buckets of `bucket` elements (`None`: one bucket).
pub fn quantize_uniform(v: &Tensor, bits: u32, bucket: Option<usize>) -> Result<Quantized> {
    let n = v.numel();
    check_args("quantize_uniform", n, bits, bucket)?;
    check_i32("quantize_uniform", v.shape())?;
    let (rows, len) = bucket_rows(n, bucket);
    let dev = v.device();
    match dev {
        Device::Cpu => {
            let x = v.host_data()?;
            let (out, a, b, l) = quantize_uniform_cpu(x, bits, bucket);
            Ok(Quantized {
                values: Tensor::from_vec(v.shape(), out, dev)?,
                alpha: Tensor::from_vec(&[rows], a, dev)?,
                beta: Tensor::from_vec(&[rows], b, dev)?,
                levels: IndexTensor::from_vec(v.shape(), l, dev)?,
            })
        }
        Device::Gpu(g) => {
            let mut out = g.zeros::<f32>(n)?;
            let (mut a, mut b) = (g.zeros::<f32>(rows)?, g.zeros::<f32>(rows)?);
            let mut l = g.zeros::<i32>(n)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(v.buffer())).ptr(g.addr_mut(&mut out));
            args.ptr(g.addr_mut(&mut a)).ptr(g.addr_mut(&mut b));
            args.ptr(g.addr_mut(&mut l));
            args.value(&QuantParams {
                n: n as i32,
                bucket: len as i32,
                rows: rows as i32,
                steps: steps(bits),
            });
            let cfg =
                LaunchCfg::new((rows.min(65535) as u32, 1, 1), (QUANT_THREADS, 1, 1)).grid_stride();
            g.launch("quantize_uniform_f32", cfg, &mut args)?;
            Ok(Quantized {
                values: Tensor::from_buffer(v.shape(), out, dev)?,
                alpha: Tensor::from_buffer(&[rows], a, dev)?,
                beta: Tensor::from_buffer(&[rows], b, dev)?,
                levels: IndexTensor::from_buffer(v.shape(), l, dev)?,
            })
        }
    }
}

/// Quantize `v` to the sorted `points` (a `[s]` tensor on `v`'s device) in buckets of `bucket`
/// elements (`None`: one bucket); `levels` holds each element's point index.
pub fn quantize_to_points(v: &Tensor, points: &Tensor, bucket: Option<usize>) -> Result<Quantized> {
    let n = v.numel();
    let what = "quantize_to_points";
    check_args(what, n, 1, bucket)?;
    check_i32(what, v.shape())?;
    same_device(what, v, points)?;
    let num_points = points.numel();
    if num_points == 0 || points.shape().len() != 1 {
        return Err(Error::Shape(format!(
            "{what}: points must be a non-empty vector, got shape {:?}",
            points.shape()
        )));
    }
    let (rows, len) = bucket_rows(n, bucket);
    let dev = v.device();
    match dev {
        Device::Cpu => {
            let x = v.host_data()?;
            let p = points.host_data()?;
            let (out, a, b, l) = quantize_to_points_cpu(x, p, bucket);
            Ok(Quantized {
                values: Tensor::from_vec(v.shape(), out, dev)?,
                alpha: Tensor::from_vec(&[rows], a, dev)?,
                beta: Tensor::from_vec(&[rows], b, dev)?,
                levels: IndexTensor::from_vec(v.shape(), l, dev)?,
            })
        }
        Device::Gpu(g) => {
            let mut out = g.zeros::<f32>(n)?;
            let (mut a, mut b) = (g.zeros::<f32>(rows)?, g.zeros::<f32>(rows)?);
            let mut l = g.zeros::<i32>(n)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(v.buffer())).ptr(g.addr(points.buffer()));
            args.ptr(g.addr_mut(&mut out));
            args.ptr(g.addr_mut(&mut a)).ptr(g.addr_mut(&mut b));
            args.ptr(g.addr_mut(&mut l));
            args.value(&PointsParams {
                n: n as i32,
                bucket: len as i32,
                rows: rows as i32,
                num_points: num_points as i32,
            });
            let cfg =
                LaunchCfg::new((rows.min(65535) as u32, 1, 1), (QUANT_THREADS, 1, 1)).grid_stride();
            g.launch("quantize_points_f32", cfg, &mut args)?;
            Ok(Quantized {
                values: Tensor::from_buffer(v.shape(), out, dev)?,
                alpha: Tensor::from_buffer(&[rows], a, dev)?,
                beta: Tensor::from_buffer(&[rows], b, dev)?,
                levels: IndexTensor::from_buffer(v.shape(), l, dev)?,
            })
        }
    }
}

/// Backward of [`quantize_to_points`] with respect to its `num_points` points: `grad` is
/// `dL/dv_hat` (shape of the input), `index` and `alpha` what the forward returned.
pub fn point_gradients(
    grad: &Tensor,
    index: &IndexTensor,
    alpha: &Tensor,
    bucket: Option<usize>,
    num_points: usize,
) -> Result<Tensor> {
    let n = grad.numel();
    let what = "point_gradients";
    check_args(what, n, 1, bucket)?;
    check_i32(what, grad.shape())?;
    same_device(what, grad, index)?;
    same_device(what, grad, alpha)?;
    index.expect_shape(what, grad.shape())?;
    let (rows, len) = bucket_rows(n, bucket);
    alpha.expect_shape(what, &[rows])?;
    if num_points == 0 || i32::try_from(num_points).is_err() {
        return Err(Error::Shape(format!(
            "{what}: {num_points} points (need 1 to {})",
            i32::MAX
        )));
    }
    let dev = grad.device();
    match dev {
        Device::Cpu => {
            let g = grad.host_data()?;
            let idx = index.host_data()?;
            let a = alpha.host_data()?;
            let out = point_gradients_cpu(g, idx, a, bucket, num_points);
            Tensor::from_vec(&[num_points], out, dev)
        }
        Device::Gpu(g) => {
            let chunks = partials::partial_blocks(n);
            let chunk = n.div_ceil(chunks);
            let mut partial = g.zeros::<f64>(chunks * num_points)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(grad.buffer())).ptr(g.addr(index.buffer()));
            args.ptr(g.addr(alpha.buffer()))
                .ptr(g.addr_mut(&mut partial));
            args.value(&PointGradParams {
                n: n as i32,
                bucket: len as i32,
                num_points: num_points as i32,
                chunk: chunk as i32,
                chunks: chunks as i32,
            });
            // One thread per point (up to a block), whole warps.
            let threads = (num_points.div_ceil(32) * 32).min(PARTIAL_THREADS as usize) as u32;
            let cfg = LaunchCfg::new((chunks as u32, 1, 1), (threads, 1, 1)).grid_stride();
            g.launch("point_gradients_partial_f32", cfg, &mut args)?;
            let out = partials::finish(g, &partial, chunks, num_points, 1.0)?;
            Tensor::from_buffer(&[num_points], out, dev)
        }
    }
}

// ---------- packed low-bit export ----------

/// Pack levels of `bits` bits each, little-endian: level i occupies bits `[i*bits, (i+1)*bits)` of
/// the stream, least significant bit first. Every level must be in `0..2^bits`.
pub fn pack_levels(levels: &[i32], bits: u32) -> Result<Vec<u8>> {
    if !(1..=MAX_BITS).contains(&bits) {
        return Err(Error::op_arg(
            "pack_levels",
            format!("pack_levels: bits must be in 1..={MAX_BITS}, got {bits}"),
        ));
    }
    let limit = 1i64 << bits;
    let mut out = vec![0u8; (levels.len() * bits as usize).div_ceil(8)];
    for (i, &l) in levels.iter().enumerate() {
        if l < 0 || l as i64 >= limit {
            return Err(Error::Numeric(format!(
                "pack_levels: level {l} at index {i} does not fit in {bits} bits"
            )));
        }
        let start = i * bits as usize;
        for b in 0..bits as usize {
            if (l >> b) & 1 == 1 {
                let pos = start + b;
                out[pos / 8] |= 1 << (pos % 8);
            }
        }
    }
    Ok(out)
}

/// Inverse of [`pack_levels`]: `count` levels of `bits` bits.
pub fn unpack_levels(bytes: &[u8], bits: u32, count: usize) -> Result<Vec<i32>> {
    if !(1..=MAX_BITS).contains(&bits) {
        return Err(Error::op_arg(
            "unpack_levels",
            format!("unpack_levels: bits must be in 1..={MAX_BITS}, got {bits}"),
        ));
    }
    let need = (count * bits as usize).div_ceil(8);
    if bytes.len() < need {
        return Err(Error::Checkpoint(format!(
            "unpack_levels: {count} levels of {bits} bits need {need} bytes, got {}",
            bytes.len()
        )));
    }
    Ok((0..count)
        .map(|i| {
            let start = i * bits as usize;
            (0..bits as usize).fold(0i32, |acc, b| {
                let pos = start + b;
                acc | ((((bytes[pos / 8] >> (pos % 8)) & 1) as i32) << b)
            })
        })
        .collect())
}
