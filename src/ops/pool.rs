//! Pooling: `max_pool2d` / `max_pool1d` (padding counts as -inf; the gradient goes to each window's
//! arg-max and accumulates over overlapping windows), `avg_pool2d` (PyTorch's `count_include_pad`
//! rule), `global_avg_pool` (mean over every axis after the first two) and `kmax_pool` (VDCNN: the
//! k largest values of each row along the last axis, in their original order). Output size per axis
//! `floor((L + 2p - k)/s) + 1`. Kernels: `kernels/pool.cu`.

use crate::autograd::{Graph, Var};
use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::Real;
use crate::tensor::{IndexTensor, Tensor};
use rayon::prelude::*;

/// A 2-D pooling window: kernel, stride and padding as (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2d {
    /// Window (height, width).
    pub kernel: (usize, usize),
    /// Step (height, width).
    pub stride: (usize, usize),
    /// Zero padding (height, width).
    pub padding: (usize, usize),
}

impl Pool2d {
    /// A window of `kernel`, moved by `stride`, over an input padded by `padding`.
    pub fn new(kernel: (usize, usize), stride: (usize, usize), padding: (usize, usize)) -> Self {
        Pool2d {
            kernel,
            stride,
            padding,
        }
    }
    /// A square window.
    pub fn square(kernel: usize, stride: usize, padding: usize) -> Self {
        Self::new((kernel, kernel), (stride, stride), (padding, padding))
    }
}

/// Mirrors `Pool2dParams` in `kernels/pool.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Pool2dParams {
    /// Planes (N × C).
    pub planes: i32,
    /// Input height.
    pub in_h: i32,
    /// Input width.
    pub in_w: i32,
    /// Output height.
    pub out_h: i32,
    /// Output width.
    pub out_w: i32,
    /// Window height.
    pub kh: i32,
    /// Window width.
    pub kw: i32,
    /// Vertical stride.
    pub sh: i32,
    /// Horizontal stride.
    pub sw: i32,
    /// Vertical padding.
    pub ph: i32,
    /// Horizontal padding.
    pub pw: i32,
    /// Average pooling: 1 counts padding cells in the divisor (PyTorch's `count_include_pad`).
    pub count_include_pad: i32,
}

/// Mirrors `PlaneParams` in `kernels/pool.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PlaneParams {
    /// Rows (planes).
    pub planes: i32,
    /// Contiguous elements per plane.
    pub inner: i32,
}

/// Mirrors `KmaxParams` in `kernels/pool.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct KmaxParams {
    /// Rows.
    pub rows: i32,
    /// Elements per row.
    pub len: i32,
    /// Largest values kept per row.
    pub k: i32,
}

fn i32_of(op: &str, shape: &[usize], v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Shape(format!(
            "{op}: tensor of shape {shape:?} is beyond the kernels' 32-bit index range"
        ))
    })
}

/// Validate `x [N, C, H, W]` against the window and compute the launch parameters.
pub fn pool2d_params(
    op: &str,
    shape: &[usize],
    w: Pool2d,
    count_include_pad: bool,
) -> Result<Pool2dParams> {
    if shape.len() != 4 {
        return Err(Error::Shape(format!(
            "{op}: expected x [N, C, H, W], got {shape:?}"
        )));
    }
    let (kh, kw) = w.kernel;
    let (sh, sw) = w.stride;
    let (ph, pw) = w.padding;
    if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
        return Err(Error::Shape(format!(
            "{op}: kernel {:?} and stride {:?} must be positive",
            w.kernel, w.stride
        )));
    }
    if 2 * ph > kh || 2 * pw > kw {
        return Err(Error::Shape(format!(
            "{op}: padding {:?} must be at most half the kernel {:?} (as in PyTorch)",
            w.padding, w.kernel
        )));
    }
    let (h, wd) = (shape[2], shape[3]);
    if h + 2 * ph < kh || wd + 2 * pw < kw {
        return Err(Error::Shape(format!(
            "{op}: input {shape:?} with padding {:?} is smaller than the kernel {:?}",
            w.padding, w.kernel
        )));
    }
    let out_h = (h + 2 * ph - kh) / sh + 1;
    let out_w = (wd + 2 * pw - kw) / sw + 1;
    let total: usize = shape.iter().product();
    i32_of(op, shape, total.max(shape[0] * shape[1] * out_h * out_w))?;
    Ok(Pool2dParams {
        planes: (shape[0] * shape[1]) as i32,
        in_h: h as i32,
        in_w: wd as i32,
        out_h: out_h as i32,
        out_w: out_w as i32,
        kh: kh as i32,
        kw: kw as i32,
        sh: sh as i32,
        sw: sw as i32,
        ph: ph as i32,
        pw: pw as i32,
        count_include_pad: count_include_pad as i32,
    })
}

impl Pool2dParams {
    fn out_shape(&self, n: usize, c: usize) -> [usize; 4] {
        [n, c, self.out_h as usize, self.out_w as usize]
    }
    fn out_len(&self) -> usize {
        (self.planes * self.out_h * self.out_w) as usize
    }
    fn in_len(&self) -> usize {
        (self.planes * self.in_h * self.in_w) as usize
    }
    /// Input rows/cols `[start, end)` of window `(oh, ow)` clipped to the input.
    fn window(&self, oh: usize, ow: usize) -> ((usize, usize), (usize, usize)) {
        let h0 = oh as i64 * self.sh as i64 - self.ph as i64;
        let w0 = ow as i64 * self.sw as i64 - self.pw as i64;
        let clip = |a: i64, n: i32| a.clamp(0, n as i64) as usize;
        (
            (clip(h0, self.in_h), clip(h0 + self.kh as i64, self.in_h)),
            (clip(w0, self.in_w), clip(w0 + self.kw as i64, self.in_w)),
        )
    }
    /// PyTorch's average divisor for window `(oh, ow)`.
    fn avg_divisor(&self, oh: usize, ow: usize) -> usize {
        if self.count_include_pad == 0 {
            let ((h0, h1), (w0, w1)) = self.window(oh, ow);
            return (h1 - h0) * (w1 - w0);
        }
        let h0 = oh as i64 * self.sh as i64 - self.ph as i64;
        let w0 = ow as i64 * self.sw as i64 - self.pw as i64;
        let h1 = (h0 + self.kh as i64).min((self.in_h + self.ph) as i64);
        let w1 = (w0 + self.kw as i64).min((self.in_w + self.pw) as i64);
        ((h1 - h0) * (w1 - w0)) as usize
    }
}

// ---------- CPU reference ----------
// Planes are independent: every function runs them in parallel (rayon), one plane per task.

/// Max over each window; returns the arg-max of each output (index `h*W + w` in its plane; the
/// first in row-major window order on ties; a NaN wins, the last one if several, like PyTorch).
pub fn max_pool2d_forward_cpu<T: Real>(x: &[T], y: &mut [T], argmax: &mut [i32], p: &Pool2dParams) {
    let (iw, plane_in) = (p.in_w as usize, (p.in_h * p.in_w) as usize);
    let (ow_n, plane_out) = (p.out_w as usize, (p.out_h * p.out_w) as usize);
    if plane_out == 0 {
        return;
    }
    // Window column ranges are the same for every row and plane.
    let cols: Vec<(usize, usize)> = (0..ow_n).map(|ow| p.window(0, ow).1).collect();
    y.par_chunks_mut(plane_out)
        .zip(argmax.par_chunks_mut(plane_out))
        .zip(x.par_chunks(plane_in))
        .for_each(|((yp, ap), xp)| {
            for (oh, (yr, ar)) in yp.chunks_mut(ow_n).zip(ap.chunks_mut(ow_n)).enumerate() {
                let (h0, h1) = p.window(oh, 0).0;
                for ((y, a), &(w0, w1)) in yr.iter_mut().zip(ar.iter_mut()).zip(&cols) {
                    // Windows are never empty (padding <= kernel/2): start from the first cell.
                    let mut arg = h0 * iw + w0;
                    let mut best = xp[arg];
                    for h in h0..h1 {
                        for (k, &v) in xp[h * iw + w0..h * iw + w1].iter().enumerate() {
                            // Selects, not branches: random data mispredicts half of them.
                            #[allow(clippy::eq_op)]
                            let take = (v > best) | (v != v);
                            let mask = (take as usize).wrapping_neg();
                            best = if take { v } else { best };
                            arg ^= (arg ^ (h * iw + w0 + k)) & mask;
                        }
                    }
                    *y = best;
                    *a = arg as i32;
                }
            }
        });
}

/// `dx[argmax] += dy` for every window (overlapping windows accumulate).
pub fn max_pool2d_backward_cpu<T: Real>(dy: &[T], argmax: &[i32], dx: &mut [T], p: &Pool2dParams) {
    let plane_in = (p.in_h * p.in_w) as usize;
    let plane_out = (p.out_h * p.out_w) as usize;
    if plane_in == 0 || plane_out == 0 {
        return;
    }
    dx.par_chunks_mut(plane_in)
        .zip(dy.par_chunks(plane_out).zip(argmax.par_chunks(plane_out)))
        .for_each(|(dxp, (gp, ap))| {
            dxp.fill(T::ZERO);
            for (&g, &a) in gp.iter().zip(ap) {
                if a >= 0 {
                    dxp[a as usize] += g;
                }
            }
        });
}

/// Mean over each window (zero padding) with PyTorch's divisor.
pub fn avg_pool2d_forward_cpu<T: Real>(x: &[T], y: &mut [T], p: &Pool2dParams) {
    let (iw, plane_in) = (p.in_w as usize, (p.in_h * p.in_w) as usize);
    let (ow_n, plane_out) = (p.out_w as usize, (p.out_h * p.out_w) as usize);
    if plane_out == 0 {
        return;
    }
    y.par_chunks_mut(plane_out)
        .zip(x.par_chunks(plane_in))
        .for_each(|(yp, xp)| {
            for (o, y) in yp.iter_mut().enumerate() {
                let (oh, ow) = (o / ow_n, o % ow_n);
                let ((h0, h1), (w0, w1)) = p.window(oh, ow);
                let mut sum = 0.0f64;
                for h in h0..h1 {
                    for &v in &xp[h * iw + w0..h * iw + w1] {
                        sum += v.to_f64();
                    }
                }
                *y = T::from_f64(sum / p.avg_divisor(oh, ow) as f64);
            }
        });
}

/// `dx[window] += dy / divisor` for every window.
pub fn avg_pool2d_backward_cpu<T: Real>(dy: &[T], dx: &mut [T], p: &Pool2dParams) {
    let (iw, plane_in) = (p.in_w as usize, (p.in_h * p.in_w) as usize);
    let (ow_n, plane_out) = (p.out_w as usize, (p.out_h * p.out_w) as usize);
    if plane_in == 0 || plane_out == 0 {
        return;
    }
    dx.par_chunks_mut(plane_in)
        .zip(dy.par_chunks(plane_out))
        .for_each(|(dxp, gp)| {
            dxp.fill(T::ZERO);
            for (o, &g) in gp.iter().enumerate() {
                let (oh, ow) = (o / ow_n, o % ow_n);
                let ((h0, h1), (w0, w1)) = p.window(oh, ow);
                let g = T::from_f64(g.to_f64() / p.avg_divisor(oh, ow) as f64);
                for h in h0..h1 {
                    for d in &mut dxp[h * iw + w0..h * iw + w1] {
                        *d += g;
                    }
                }
            }
        });
}

/// Mean of each plane of `inner` contiguous elements.
pub fn global_avg_pool_forward_cpu<T: Real>(x: &[T], y: &mut [T], inner: usize) {
    for (y, xs) in y.iter_mut().zip(x.chunks_exact(inner)) {
        *y = T::from_f64(xs.iter().map(|v| v.to_f64()).sum::<f64>() / inner as f64);
    }
}

/// Gradient of the global average pool: every element of a plane gets `dy / inner`.
pub fn global_avg_pool_backward_cpu<T: Real>(dy: &[T], dx: &mut [T], inner: usize) {
    let scale = T::from_f64(1.0 / inner as f64);
    for (&g, dxs) in dy.iter().zip(dx.chunks_exact_mut(inner)) {
        dxs.fill(g * scale);
    }
}

/// The `k` largest values of each row of `len` (ties: the lower index ranks first), written in
/// their original order, with their positions.
pub fn kmax_pool_forward_cpu<T: Real>(x: &[T], y: &mut [T], idx: &mut [i32], len: usize, k: usize) {
    let mut order: Vec<usize> = Vec::with_capacity(len);
    for (r, xr) in x.chunks_exact(len).enumerate() {
        order.clear();
        order.extend(0..len);
        // Stable sort by descending value keeps equal values in index order.
        order.sort_by(|&a, &b| {
            xr[b]
                .partial_cmp(&xr[a])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        order.truncate(k);
        order.sort_unstable();
        for (j, &i) in order.iter().enumerate() {
            y[r * k + j] = xr[i];
            idx[r * k + j] = i as i32;
        }
    }
}

/// `dx[row, idx[row, j]] = dy[row, j]`, zero elsewhere.
pub fn kmax_pool_backward_cpu<T: Real>(dy: &[T], idx: &[i32], dx: &mut [T], len: usize, k: usize) {
    dx.fill(T::ZERO);
    for (t, (&g, &i)) in dy.iter().zip(idx).enumerate() {
        dx[(t / k) * len + i as usize] = g;
    }
}

// ---------- device dispatch ----------

/// Max pooling of `x [N, C, H, W]`: the output and the arg-max of each window.
pub fn max_pool2d_forward(x: &Tensor, w: Pool2d) -> Result<(Tensor, IndexTensor)> {
    let p = pool2d_params("max_pool2d", x.shape(), w, false)?;
    let out_shape = p.out_shape(x.shape()[0], x.shape()[1]);
    let dev = x.device();
    match dev {
        Device::Cpu => {
            let mut y = vec![0.0f32; p.out_len()];
            let mut arg = vec![0i32; p.out_len()];
            max_pool2d_forward_cpu(x.host_data()?, &mut y, &mut arg, &p);
            Ok((
                Tensor::from_vec(&out_shape, y, dev)?,
                IndexTensor::from_vec(&out_shape, arg, dev)?,
            ))
        }
        Device::Gpu(g) => {
            let mut y = g.zeros::<f32>(p.out_len())?;
            let mut arg = g.zeros::<i32>(p.out_len())?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer()))
                .ptr(g.addr_mut(&mut y))
                .ptr(g.addr_mut(&mut arg))
                .value(&p);
            if p.out_len() > 0 {
                g.launch(
                    "max_pool2d_forward_f32",
                    LaunchCfg::for_elements(p.out_len()),
                    &mut args,
                )?;
            }
            Ok((
                Tensor::from_buffer(&out_shape, y, dev)?,
                IndexTensor::from_buffer(&out_shape, arg, dev)?,
            ))
        }
    }
}

/// Gradient of max pooling: `dy` routed to the arg-max positions of an input of `in_shape`.
pub fn max_pool2d_backward(
    dy: &Tensor,
    argmax: &IndexTensor,
    in_shape: &[usize],
    w: Pool2d,
) -> Result<Tensor> {
    let p = pool2d_params("max_pool2d backward", in_shape, w, false)?;
    let out_shape = p.out_shape(in_shape[0], in_shape[1]);
    dy.expect_shape("max_pool2d backward: dy", &out_shape)?;
    argmax.expect_shape("max_pool2d backward: argmax", &out_shape)?;
    let dev = dy.device();
    match dev {
        Device::Cpu => {
            let mut dx = vec![0.0f32; p.in_len()];
            max_pool2d_backward_cpu(dy.host_data()?, argmax.host_data()?, &mut dx, &p);
            Tensor::from_vec(in_shape, dx, dev)
        }
        Device::Gpu(g) => {
            let mut dx = g.zeros::<f32>(p.in_len())?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(dy.buffer()))
                .ptr(g.addr(argmax.buffer()))
                .ptr(g.addr_mut(&mut dx))
                .value(&p);
            if p.in_len() > 0 {
                g.launch(
                    "max_pool2d_backward_f32",
                    LaunchCfg::for_elements(p.in_len()),
                    &mut args,
                )?;
            }
            Tensor::from_buffer(in_shape, dx, dev)
        }
    }
}

/// Average pooling of `x [N, C, H, W]`.
pub fn avg_pool2d_forward(x: &Tensor, w: Pool2d, count_include_pad: bool) -> Result<Tensor> {
    let p = pool2d_params("avg_pool2d", x.shape(), w, count_include_pad)?;
    let out_shape = p.out_shape(x.shape()[0], x.shape()[1]);
    crate::ops::map_with_params(x, &out_shape, "avg_pool2d_forward_f32", &p, |xs, ys| {
        avg_pool2d_forward_cpu(xs, ys, &p)
    })
}

/// Gradient of the average pool for input shape `in_shape`, on `dy`'s device.
pub fn avg_pool2d_backward(
    dy: &Tensor,
    in_shape: &[usize],
    w: Pool2d,
    count_include_pad: bool,
) -> Result<Tensor> {
    let p = pool2d_params("avg_pool2d backward", in_shape, w, count_include_pad)?;
    dy.expect_shape(
        "avg_pool2d backward: dy",
        &p.out_shape(in_shape[0], in_shape[1]),
    )?;
    crate::ops::map_with_params(dy, in_shape, "avg_pool2d_backward_f32", &p, |xs, ys| {
        avg_pool2d_backward_cpu(xs, ys, &p)
    })
}

fn plane_params(op: &str, shape: &[usize]) -> Result<PlaneParams> {
    if shape.len() < 3 || shape[2..].iter().product::<usize>() == 0 {
        return Err(Error::Shape(format!(
            "{op}: expected x [N, C, ...] with at least one non-empty spatial axis, got {shape:?}"
        )));
    }
    Ok(PlaneParams {
        planes: i32_of(op, shape, shape[0] * shape[1])?,
        inner: i32_of(op, shape, shape[2..].iter().product())?,
    })
}

/// Mean over every axis after the first two: `[N, C, *rest]` → `[N, C]`.
pub fn global_avg_pool_forward(x: &Tensor) -> Result<Tensor> {
    let p = plane_params("global_avg_pool", x.shape())?;
    i32_of("global_avg_pool", x.shape(), x.numel())?;
    let out_shape = [x.shape()[0], x.shape()[1]];
    crate::ops::map_with_params(
        x,
        &out_shape,
        "global_avg_pool_forward_f32",
        &p,
        |xs, ys| global_avg_pool_forward_cpu(xs, ys, p.inner as usize),
    )
}

/// Gradient of the global average pool for input shape `in_shape`, on `dy`'s device.
pub fn global_avg_pool_backward(dy: &Tensor, in_shape: &[usize]) -> Result<Tensor> {
    let p = plane_params("global_avg_pool backward", in_shape)?;
    dy.expect_shape("global_avg_pool backward: dy", &in_shape[..2])?;
    crate::ops::map_with_params(
        dy,
        in_shape,
        "global_avg_pool_backward_f32",
        &p,
        |xs, ys| global_avg_pool_backward_cpu(xs, ys, p.inner as usize),
    )
}

fn kmax_params(shape: &[usize], k: usize) -> Result<KmaxParams> {
    let op = "kmax_pool";
    let Some(&len) = shape.last() else {
        return Err(Error::Shape(format!(
            "{op}: expected at least a 1-D input, got a scalar"
        )));
    };
    if k == 0 || k > len {
        return Err(Error::Shape(format!(
            "{op}: k = {k} must be between 1 and the length {len} of the last axis of {shape:?}"
        )));
    }
    let rows: usize = shape[..shape.len() - 1].iter().product();
    i32_of(op, shape, rows * len)?;
    Ok(KmaxParams {
        rows: rows as i32,
        len: len as i32,
        k: k as i32,
    })
}

/// k-max pooling along the last axis: `[..., L]` → `[..., k]` and the kept positions.
pub fn kmax_pool_forward(x: &Tensor, k: usize) -> Result<(Tensor, IndexTensor)> {
    let p = kmax_params(x.shape(), k)?;
    let mut out_shape = x.shape().to_vec();
    *out_shape.last_mut().unwrap() = k;
    let n_out = p.rows as usize * k;
    let dev = x.device();
    match dev {
        Device::Cpu => {
            let mut y = vec![0.0f32; n_out];
            let mut idx = vec![0i32; n_out];
            kmax_pool_forward_cpu(x.host_data()?, &mut y, &mut idx, p.len as usize, k);
            Ok((
                Tensor::from_vec(&out_shape, y, dev)?,
                IndexTensor::from_vec(&out_shape, idx, dev)?,
            ))
        }
        Device::Gpu(g) => {
            let mut y = g.zeros::<f32>(n_out)?;
            let mut idx = g.zeros::<i32>(n_out)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer()))
                .ptr(g.addr_mut(&mut y))
                .ptr(g.addr_mut(&mut idx))
                .value(&p);
            if p.rows > 0 {
                // Small blocks: one thread per row and rows are few next to elementwise sizes.
                let blocks = (p.rows as usize).div_ceil(64).clamp(1, 65535) as u32;
                g.launch(
                    "kmax_pool_forward_f32",
                    LaunchCfg::new((blocks, 1, 1), (64, 1, 1)).grid_stride(),
                    &mut args,
                )?;
            }
            Ok((
                Tensor::from_buffer(&out_shape, y, dev)?,
                IndexTensor::from_buffer(&out_shape, idx, dev)?,
            ))
        }
    }
}

/// Gradient of k-max pooling for an input of `in_shape`.
pub fn kmax_pool_backward(dy: &Tensor, idx: &IndexTensor, in_shape: &[usize]) -> Result<Tensor> {
    let k = dy.shape().last().copied().unwrap_or(0);
    let p = kmax_params(in_shape, k)?;
    idx.expect_shape("kmax_pool backward: indices", dy.shape())?;
    let n: usize = in_shape.iter().product();
    if dy.numel() != p.rows as usize * k {
        return Err(Error::Shape(format!(
            "kmax_pool backward: dy {:?} does not fit the input {in_shape:?}",
            dy.shape()
        )));
    }
    let dev = dy.device();
    match dev {
        Device::Cpu => {
            let mut dx = vec![0.0f32; n];
            kmax_pool_backward_cpu(
                dy.host_data()?,
                idx.host_data()?,
                &mut dx,
                p.len as usize,
                k,
            );
            Tensor::from_vec(in_shape, dx, dev)
        }
        Device::Gpu(g) => {
            let mut dx = g.zeros::<f32>(n)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(dy.buffer()))
                .ptr(g.addr(idx.buffer()))
                .ptr(g.addr_mut(&mut dx))
                .value(&p);
            if dy.numel() > 0 {
                g.launch(
                    "kmax_pool_backward_f32",
                    LaunchCfg::for_elements(dy.numel()),
                    &mut args,
                )?;
            }
            Tensor::from_buffer(in_shape, dx, dev)
        }
    }
}

// ---------- autograd ----------

/// 2-D max pooling on the tape.
pub fn max_pool2d(g: &mut Graph, x: Var, w: Pool2d) -> Result<Var> {
    let in_shape = g.value(x).shape().to_vec();
    let (y, argmax) = max_pool2d_forward(g.value(x), w)?;
    Ok(g.op(y, &[x], move |dy| {
        Ok(vec![Some(max_pool2d_backward(dy, &argmax, &in_shape, w)?)])
    }))
}

/// 1-D max pooling of `x [N, C, L]` (the `H = 1` case of [`max_pool2d`]).
pub fn max_pool1d(
    g: &mut Graph,
    x: Var,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Var> {
    let shape = g.value(x).shape().to_vec();
    if shape.len() != 3 {
        return Err(Error::Shape(format!(
            "max_pool1d: expected x [N, C, L], got {shape:?}"
        )));
    }
    let x4 = crate::ops::shape::reshape(g, x, &[shape[0], shape[1], 1, shape[2]])?;
    let w = Pool2d::new((1, kernel), (1, stride), (0, padding));
    let y4 = max_pool2d(g, x4, w)?;
    let out_l = g.value(y4).shape()[3];
    crate::ops::shape::reshape(g, y4, &[shape[0], shape[1], out_l])
}

/// Average pooling (`count_include_pad` as in PyTorch; its default is `true`).
pub fn avg_pool2d(g: &mut Graph, x: Var, w: Pool2d, count_include_pad: bool) -> Result<Var> {
    let in_shape = g.value(x).shape().to_vec();
    let y = avg_pool2d_forward(g.value(x), w, count_include_pad)?;
    Ok(g.op(y, &[x], move |dy| {
        Ok(vec![Some(avg_pool2d_backward(
            dy,
            &in_shape,
            w,
            count_include_pad,
        )?)])
    }))
}

/// `[N, C, *rest]` → `[N, C]`: the mean of each plane.
pub fn global_avg_pool(g: &mut Graph, x: Var) -> Result<Var> {
    let in_shape = g.value(x).shape().to_vec();
    let y = global_avg_pool_forward(g.value(x))?;
    Ok(g.op(y, &[x], move |dy| {
        Ok(vec![Some(global_avg_pool_backward(dy, &in_shape)?)])
    }))
}

/// k-max pooling along the last axis (VDCNN).
pub fn kmax_pool(g: &mut Graph, x: Var, k: usize) -> Result<Var> {
    let in_shape = g.value(x).shape().to_vec();
    let (y, idx) = kmax_pool_forward(g.value(x), k)?;
    Ok(g.op(y, &[x], move |dy| {
        Ok(vec![Some(kmax_pool_backward(dy, &idx, &in_shape)?)])
    }))
}
