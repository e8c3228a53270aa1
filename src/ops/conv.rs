//! Convolution: PyTorch's `conv2d` / `conv1d` (cross-correlation, zero padding, dilation 1,
//! groups 1). `x [N, C, H, W]`, `weight [O, C, kh, kw]`, optional `bias [O]`, output
//! `[N, O, OH, OW]` with `OH = (H + 2·ph - kh) / sh + 1`. 1-D is 2-D with `H = kh = 1`.
//! Kernels: `kernels/conv.cu` (implicit GEMMs, col2im) + the tiled `gemm_f32`.
//!
//! * [`conv2d_forward_direct`] / [`conv2d_backward_direct`]: the specification, plain loops.
//! * The CPU path ([`conv2d_forward_cpu`], [`conv2d_backward_cpu`]) turns every pass into GEMMs
//!   over HWC panels, run in parallel over chunks of images, output pixels as the long GEMM
//!   dimension and channels as the short one (the layout the `gemm` crate runs fastest). Each
//!   image is transposed to HWC (8x8 AVX transposes for f32) and lowered one of three ways:
//!   1x1 stride-1 convs use the HWC image itself; stride-1 convs on maps wide enough use
//!   *shifted* GEMMs — the image is zero-padded and kernel row `i` is a strided view `i` padded
//!   rows further, so no im2col is materialised (the few padding columns of each output row are
//!   computed and dropped); everything else is unrolled by im2col into `[pixels, (i, j, c)]` with
//!   row copies of `kw·C` values. The input gradient of a stride-1 convolution is the
//!   convolution of `dy` with the flipped, transposed weight (same machinery, no scatter);
//!   other strides use `dcol = dy·W` folded back by col2im. The weight gradient is
//!   `panelᵀ·dy` accumulated over the images of a fixed group of chunks, and the groups' partials
//!   are summed in order, so results do not depend on the thread count or scheduling. No input
//!   gradient is computed unless asked for. Scratch buffers are thread-local and reused.
//! * f32 on AVX-512 CPUs: 3x3 stride-1 padding-1 convs on even maps (almost all of ResNet's)
//!   run as Winograd F(2x2, 3x3) for the forward, the input gradient and the weight gradient
//!   ([`crate::ops::winograd`]: 2.25x fewer multiplies). Other stride-1 windows of depth
//!   `kh·kw·c` >= 16 (`ImplicitConv`, an RGB stem included) skip the HWC panels altogether: an
//!   implicit GEMM over the zero-padded CHW image ([`gemm_f32_gathered`]) writes the output
//!   channel-major, no transposes, and the weight gradient reads CHW x and dy in place.
//! * GPU (cuda and emu): the forward is one implicit GEMM per chunk of images
//!   (`conv2d_implicit_*`: `gemm_f32`'s tiling with the im2col panel read from the image as
//!   the tiles are staged, never written; a 16-, 32- or 64-row block tile to fit the output
//!   channels; bias, or eval BatchNorm + residual + ReLU, applied as the output is stored).
//!   The input gradient of a stride-1 conv is the same implicit GEMM over `dy` with the weight
//!   read flipped and transposed (`conv2d_implicit_*flip_f32`); other strides use
//!   batched `gemm_f32` + col2im. The weight gradient: an implicit GEMM over the reduction
//!   (image, pixel), split into slices (`conv2d_weight_grad_*`: col gathered from x, one partial
//!   dW per slice), the partials summed in slice order (`conv_sum_partials_f32`).

use std::cell::RefCell;

use rayon::prelude::*;

use crate::autograd::{Graph, Var};
use crate::device::{host_vec_written, Device, Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::batchnorm::{invstd_cpu, RunningStats};
use crate::ops::cpu::{gemm_with, MatRef};
use crate::ops::cpu_gemm::{fast_f32_available, gemm_f32_gathered, gemm_f32_gathered_dot, DotRows};
use crate::ops::matmul::{gemm_launch, GemmParams};
use crate::ops::reduce::{channel_sum, channel_sum_cpu};
use crate::ops::winograd::Winograd;
use crate::ops::Real;
use crate::tensor::{same_device, Tensor};

/// Mirrors `ConvParams` in `kernels/conv.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ConvParams {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub kh: i32,
    pub kw: i32,
    pub sh: i32,
    pub sw: i32,
    pub ph: i32,
    pub pw: i32,
    pub oh: i32,
    pub ow: i32,
    /// Output channels (`conv2d_implicit_*`).
    pub o: i32,
    /// `conv2d_implicit_*`'s epilogue: ReLU last.
    pub relu: i32,
    /// `conv2d_implicit_*`'s epilogue: the BatchNorm's epsilon.
    pub eps: f32,
    /// `conv2d_weight_grad_*`: reduction columns (image, pixel) per block.
    pub slice: i32,
}

/// Mirrors `PartialSumParams` in `kernels/conv.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PartialSumParams {
    pub parts: i32,
    pub len: i32,
    pub accumulate: i32,
}

/// Sizes of one 2-D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeometry {
    /// Check `x [N, C, H, W]` against `weight [O, C, kh, kw]`, stride and padding.
    pub fn new(
        x: &[usize],
        weight: &[usize],
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Self> {
        let (&[n, c, h, w], &[o, wc, kh, kw]) = (x, weight) else {
            return Err(Error::Shape(format!(
                "conv2d: x {x:?} and weight {weight:?} must be [N, C, H, W] and [O, C, kh, kw]"
            )));
        };
        if c != wc {
            return Err(Error::Shape(format!(
                "conv2d: x has {c} channels but weight {weight:?} expects {wc}"
            )));
        }
        if o == 0 || c == 0 || kh == 0 || kw == 0 || h == 0 || w == 0 {
            return Err(Error::Shape(format!(
                "conv2d: x {x:?} or weight {weight:?} has an empty dimension"
            )));
        }
        let (sh, sw) = stride;
        let (ph, pw) = padding;
        if sh == 0 || sw == 0 {
            return Err(Error::Config(format!(
                "conv2d: stride {stride:?} must be positive"
            )));
        }
        if h + 2 * ph < kh || w + 2 * pw < kw {
            return Err(Error::Shape(format!(
                "conv2d: kernel {kh}x{kw} is larger than the padded input {}x{} (x {x:?}, padding {padding:?})",
                h + 2 * ph,
                w + 2 * pw
            )));
        }
        Ok(ConvGeometry {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            oh: (h + 2 * ph - kh) / sh + 1,
            ow: (w + 2 * pw - kw) / sw + 1,
        })
    }

    /// GEMM depth of the forward pass: `C·kh·kw`.
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    pub fn pixels_in(&self) -> usize {
        self.h * self.w
    }
    pub fn pixels_out(&self) -> usize {
        self.oh * self.ow
    }
    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.o, self.oh, self.ow]
    }
    /// Multiply-adds of one pass (forward, input gradient or weight gradient) over the batch.
    pub fn macs(&self) -> usize {
        self.n * self.o * self.k() * self.pixels_out()
    }
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
    /// The input gradient as a stride-1 convolution of `dy` needs a non-negative padding `k-1-p`.
    fn data_grad_is_conv(&self) -> bool {
        self.sh == 1 && self.sw == 1 && self.ph < self.kh && self.pw < self.kw
    }
    fn params(&self, n: usize) -> Result<ConvParams> {
        let i = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| {
                Error::Shape(format!(
                    "conv2d: {what} = {v} exceeds the kernels' 32-bit range"
                ))
            })
        };
        Ok(ConvParams {
            n: i("batch", n)?,
            c: i("channels", self.c)?,
            h: i("height", self.h)?,
            w: i("width", self.w)?,
            kh: i("kernel height", self.kh)?,
            kw: i("kernel width", self.kw)?,
            sh: i("stride", self.sh)?,
            sw: i("stride", self.sw)?,
            ph: i("padding", self.ph)?,
            pw: i("padding", self.pw)?,
            oh: i("output height", self.oh)?,
            ow: i("output width", self.ow)?,
            o: i("output channels", self.o)?,
            relu: 0,
            eps: 0.0,
            slice: 0,
        })
    }
}

/// A per-output-channel map applied as the conv writes its output: an eval-mode BatchNorm
/// (`(v - mean[o]) · scale[o] + shift[o]`), then `+ residual` and a ReLU when given. The same f32
/// operations in the same order as the separate ops (`ops::batchnorm`), so the same values.
#[derive(Clone, Copy)]
pub struct ChannelEpilogue<'a> {
    pub mean: &'a [f32],
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    /// Shaped like the conv's output.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

impl ChannelEpilogue<'_> {
    /// `dst[i] = (src[i] - mean[o])·scale[o] + shift[o]`, `+ res[i]` when there is a residual
    /// (only then: adding 0 would turn `-0.0` outputs into `+0.0`, unlike the unfused ops),
    /// then the ReLU (`!(v > 0)` gives 0, NaN included).
    #[inline(always)]
    fn apply(&self, o: usize, src: &[f32], res: Option<&[f32]>, dst: &mut [f32]) {
        // Per-channel values in locals and the cases split outside the loops, so each loop
        // vectorises (the arithmetic of the separate ops, operation for operation).
        let (m, sc, sh) = (self.mean[o], self.scale[o], self.shift[o]);
        let relu = |v: f32| if v > 0.0 { v } else { 0.0 };
        match (res.filter(|_| self.residual.is_some()), self.relu) {
            (None, false) => {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = (v - m) * sc + sh;
                }
            }
            (None, true) => {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = relu((v - m) * sc + sh);
                }
            }
            (Some(r), false) => {
                for ((d, &v), &r) in dst.iter_mut().zip(src).zip(r) {
                    *d = (v - m) * sc + sh + r;
                }
            }
            (Some(r), true) => {
                for ((d, &v), &r) in dst.iter_mut().zip(src).zip(r) {
                    *d = relu((v - m) * sc + sh + r);
                }
            }
        }
    }

    /// In place over one output image `[o, pixels]`; `image` is its index in the batch. The
    /// loops of [`Self::apply`] (per-channel values in locals, so they vectorise), in place.
    fn apply_image(&self, image: usize, y: &mut [f32], pixels: usize) {
        let res = self.residual.map(|r| &r[image * y.len()..][..y.len()]);
        crate::ops::cpu::vectorized(
            #[inline(always)]
            || {
                for (o, plane) in y.chunks_exact_mut(pixels).enumerate() {
                    let (m, sc, sh) = (self.mean[o], self.scale[o], self.shift[o]);
                    let relu = |v: f32| if v > 0.0 { v } else { 0.0 };
                    match (res, self.relu) {
                        (None, false) => plane.iter_mut().for_each(|v| *v = (*v - m) * sc + sh),
                        (None, true) => {
                            plane.iter_mut().for_each(|v| *v = relu((*v - m) * sc + sh))
                        }
                        (Some(r), relu_on) => {
                            for (v, &r) in plane.iter_mut().zip(&r[o * pixels..][..pixels]) {
                                let z = (*v - m) * sc + sh + r;
                                *v = if relu_on { relu(z) } else { z };
                            }
                        }
                    }
                }
            },
        )
    }
}

// ---------- CPU specification: direct loops ----------

/// `y[n,o,oh,ow] = b[o] + Σ_{c,i,j} x[n,c,oh·sh-ph+i, ow·sw-pw+j] · w[o,c,i,j]` (zero outside).
pub fn conv2d_forward_direct<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    for n in 0..g.n {
        for o in 0..g.o {
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let mut acc = b.map_or(T::ZERO, |b| b[o]);
                    for c in 0..g.c {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let (ih, iw) = ((oh * g.sh + i) as isize, (ow * g.sw + j) as isize);
                                let (ih, iw) = (ih - g.ph as isize, iw - g.pw as isize);
                                if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                                    continue;
                                }
                                let xv = x[((n * g.c + c) * g.h + ih as usize) * g.w + iw as usize];
                                acc += xv * w[((o * g.c + c) * g.kh + i) * g.kw + j];
                            }
                        }
                    }
                    y[((n * g.o + o) * g.oh + oh) * g.ow + ow] = acc;
                }
            }
        }
    }
}

/// Gradients of [`conv2d_forward_direct`]: `dx` and `dw` (overwritten), each only when asked for.
pub fn conv2d_backward_direct<T: Real>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
    mut dx: Option<&mut [T]>,
    mut dw: Option<&mut [T]>,
) {
    if let Some(dx) = dx.as_deref_mut() {
        dx.fill(T::ZERO);
    }
    if let Some(dw) = dw.as_deref_mut() {
        dw.fill(T::ZERO);
    }
    for n in 0..g.n {
        for o in 0..g.o {
            for oh in 0..g.oh {
                for ow in 0..g.ow {
                    let gy = dy[((n * g.o + o) * g.oh + oh) * g.ow + ow];
                    for c in 0..g.c {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let (ih, iw) = ((oh * g.sh + i) as isize, (ow * g.sw + j) as isize);
                                let (ih, iw) = (ih - g.ph as isize, iw - g.pw as isize);
                                if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                                    continue;
                                }
                                let xi = ((n * g.c + c) * g.h + ih as usize) * g.w + iw as usize;
                                let wi = ((o * g.c + c) * g.kh + i) * g.kw + j;
                                if let Some(dx) = dx.as_deref_mut() {
                                    dx[xi] += gy * w[wi];
                                }
                                if let Some(dw) = dw.as_deref_mut() {
                                    dw[wi] += gy * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------- CPU fast path ----------

/// GEMM rows (output pixels) a chunk of images aims for, and the most im2col elements it may hold
/// (1 MiB of f32: the chunk's panels stay in L2).
const CHUNK_ROWS: usize = 1024;
const CHUNK_MAX_COL: usize = 1 << 18;
/// Weight-gradient partial sums: at most this many groups of chunks (fixed, not the thread count,
/// so the summation order — and the result — is the same on every machine).
const WEIGHT_GRAD_GROUPS: usize = 16;
/// Shifted GEMMs also compute the `wp - ow` padding columns of every output row; above this
/// fraction of `ow` an explicit im2col is cheaper (measured: 32- and 16-wide maps gain, 8-wide lose).
const MAX_SHIFT_WASTE: f64 = 0.15;
/// Shifted GEMMs have depth `kw·c` only; below this (an RGB stem: 9) im2col's `kh·kw·c` wins.
const MIN_SHIFT_DEPTH: usize = 16;

/// Images per chunk for panels of `rows_per_image` rows of `row_len` values.
fn images_per_chunk(n: usize, rows_per_image: usize, row_len: usize) -> usize {
    let by_rows = CHUNK_ROWS.div_ceil(rows_per_image.max(1));
    let by_mem = CHUNK_MAX_COL / (rows_per_image * row_len).max(1);
    by_rows.min(by_mem).clamp(1, n.max(1))
}

thread_local! {
    /// Per-thread scratch, grown on demand and reused by every conv call on this thread.
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with `K` scratch slices of the given lengths (contents unspecified: callers overwrite).
fn with_scratch<T: bytemuck::Pod, R, const K: usize>(
    lens: [usize; K],
    f: impl FnOnce([&mut [T]; K]) -> R,
) -> R {
    let elems: usize = lens.iter().sum();
    let words = (elems * std::mem::size_of::<T>()).div_ceil(8);
    let run = |buf: &mut Vec<u64>| {
        if buf.len() < words {
            buf.resize(words, 0);
        }
        let mut rest: &mut [T] = bytemuck::cast_slice_mut(&mut buf[..words]);
        let parts: [&mut [T]; K] = std::array::from_fn(|i| {
            let (part, tail) = std::mem::take(&mut rest).split_at_mut(lens[i]);
            rest = tail;
            part
        });
        f(parts)
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => run(&mut buf),
        // Re-entered on this thread (a conv inside a conv's closure): use a private buffer.
        Err(_) => run(&mut Vec::new()),
    })
}

/// `dst[c·dst_stride + r] = src[r·src_stride + c]` for `r < rows`, `c < cols`: between NCHW
/// tensors and the HWC panels of the GEMMs. f32 uses 8x8 AVX register transposes (a scalar
/// transpose costs as much as a third of the GEMM it feeds).
fn transpose<T: Real + bytemuck::Pod>(
    src: &[T],
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst: &mut [T],
    dst_stride: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    let src = &src[..(rows - 1) * src_stride + cols];
    let dst = &mut dst[..(cols - 1) * dst_stride + rows];
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && std::arch::is_x86_feature_detected!("avx")
    {
        let (s, d): (&[f32], &mut [f32]) =
            (bytemuck::cast_slice(src), bytemuck::cast_slice_mut(dst));
        // SAFETY: AVX is available (checked above) and the slices cover every index touched.
        unsafe { transpose_f32_avx(s, rows, cols, src_stride, d, dst_stride) };
        return;
    }
    transpose_scalar(src, (rows, cols), src_stride, dst, dst_stride, (0, 0));
}

/// Scalar transpose of the elements at row `>= from.0` or column `>= from.1` (all for `(0, 0)`).
fn transpose_scalar<T: Copy>(
    src: &[T],
    (rows, cols): (usize, usize),
    src_stride: usize,
    dst: &mut [T],
    dst_stride: usize,
    from: (usize, usize),
) {
    for r in 0..rows {
        let first = if r < from.0 { from.1 } else { 0 };
        for c in first..cols {
            dst[c * dst_stride + r] = src[r * src_stride + c];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_f32_avx(
    src: &[f32],
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst: &mut [f32],
    dst_stride: usize,
) {
    use std::arch::x86_64::*;
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    for r0 in (0..r8).step_by(8) {
        for c0 in (0..c8).step_by(8) {
            let at = |i: usize| _mm256_loadu_ps(sp.add((r0 + i) * src_stride + c0));
            let (a0, a1, a2, a3) = (at(0), at(1), at(2), at(3));
            let (a4, a5, a6, a7) = (at(4), at(5), at(6), at(7));
            let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
            let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
            let (t4, t5) = (_mm256_unpacklo_ps(a4, a5), _mm256_unpackhi_ps(a4, a5));
            let (t6, t7) = (_mm256_unpacklo_ps(a6, a7), _mm256_unpackhi_ps(a6, a7));
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (i, v) in out.into_iter().enumerate() {
                _mm256_storeu_ps(dp.add((c0 + i) * dst_stride + r0), v);
            }
        }
    }
    // The ragged right and bottom edges.
    transpose_scalar(src, (rows, cols), src_stride, dst, dst_stride, (r8, c8));
}

/// `y[o, :] += b[o]` over `[O, P]` planes.
fn add_bias_planes<T: Real>(y: &mut [T], b: &[T], pixels: usize) {
    for (plane, &bias) in y.chunks_exact_mut(pixels).zip(b.iter().cycle()) {
        for v in plane {
            *v += bias;
        }
    }
}

/// `dst = src` for short runs (one kernel row of an im2col panel): fixed 8-wide copies the
/// compiler keeps in registers instead of a `memcpy` call per run.
#[inline(always)]
fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    let split = dst.len() / 8 * 8;
    let (d8, dr) = dst.split_at_mut(split);
    let (s8, sr) = src[..d8.len() + dr.len()].split_at(split);
    for (d, s) in d8.chunks_exact_mut(8).zip(s8.chunks_exact(8)) {
        let v: [T; 8] = s.try_into().expect("8-element chunk");
        d.copy_from_slice(&v);
    }
    for (d, &s) in dr.iter_mut().zip(sr) {
        *d = s;
    }
}

/// How a window becomes GEMM panels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lowering {
    /// 1x1, stride 1, no padding: the HWC image is the panel.
    Pointwise,
    /// Stride 1: the image zero-padded to `[h + 2ph + 1, wp, c]` (`wp = w + 2pw`); GEMM row
    /// `oh·wp + ow` is output pixel `(oh, ow)` (columns `ow >= OW` are padding, discarded), and
    /// kernel row `i` is a strided view of the padded image `i·wp` pixels further — no im2col.
    Shifted,
    /// An explicit `[oh·ow, kh·kw·c]` panel ([`im2col_hwc`]).
    Im2col,
}

/// One image's sliding window: an input `[h, w, c]` read by a `kh x kw` kernel.
#[derive(Clone, Copy, Debug)]
struct Window {
    h: usize,
    w: usize,
    c: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
    lowering: Lowering,
}

impl Window {
    fn new(
        (h, w, c): (usize, usize, usize),
        (kh, kw): (usize, usize),
        (sh, sw): (usize, usize),
        (ph, pw): (usize, usize),
        (oh, ow): (usize, usize),
    ) -> Self {
        let stride1 = sh == 1 && sw == 1;
        let lowering = if stride1 && kh == 1 && kw == 1 && ph == 0 && pw == 0 {
            Lowering::Pointwise
        } else if stride1
            && ph < kh
            && pw < kw
            && kw * c >= MIN_SHIFT_DEPTH
            && (w + 2 * pw - ow) as f64 <= MAX_SHIFT_WASTE * ow as f64
        {
            Lowering::Shifted
        } else {
            Lowering::Im2col
        };
        Window {
            h,
            w,
            c,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            oh,
            ow,
            lowering,
        }
    }
    fn of(g: &ConvGeometry) -> Self {
        Window::new(
            (g.h, g.w, g.c),
            (g.kh, g.kw),
            (g.sh, g.sw),
            (g.ph, g.pw),
            (g.oh, g.ow),
        )
    }
    /// The input gradient of a stride-1 conv as a conv over `dy` (`[oh, ow, o]`): kernel
    /// flipped, padding `k-1-p`, output `[h, w]`.
    fn data_grad(g: &ConvGeometry) -> Self {
        Window::new(
            (g.oh, g.ow, g.o),
            (g.kh, g.kw),
            (1, 1),
            (g.kh - 1 - g.ph, g.kw - 1 - g.pw),
            (g.h, g.w),
        )
    }
    /// Whether [`ImplicitConv`] serves this window: the shifted lowering's conditions, with the
    /// depth counted over all `kh·kw·c` taps (its one GEMM has them all), so an RGB stem (27)
    /// qualifies; its im2col rows of `kw·c` = 9 values ran at a third of the implicit GEMM's speed.
    fn implicit_fits(&self) -> bool {
        let stride1 = self.sh == 1 && self.sw == 1;
        let pointwise = self.kh == 1 && self.kw == 1 && self.ph == 0 && self.pw == 0;
        self.lowering == Lowering::Shifted
            || (stride1
                && !pointwise
                && self.ph < self.kh
                && self.pw < self.kw
                && self.row_len() >= MIN_SHIFT_DEPTH
                && (self.w + 2 * self.pw - self.ow) as f64 <= MAX_SHIFT_WASTE * self.ow as f64)
    }
    /// GEMM depth: `kh·kw·c`, ordered `(i, j, c)`.
    fn row_len(&self) -> usize {
        self.kh * self.kw * self.c
    }
    fn pixels_out(&self) -> usize {
        self.oh * self.ow
    }
    fn padded_w(&self) -> usize {
        self.w + 2 * self.pw
    }
    /// Elements of one prepared (HWC, padded when shifted) image.
    fn image_len(&self) -> usize {
        match self.lowering {
            Lowering::Shifted => (self.h + 2 * self.ph + 1) * self.padded_w() * self.c,
            _ => self.h * self.w * self.c,
        }
    }
    /// GEMM rows per image and the row distance between consecutive output rows.
    fn rows(&self) -> usize {
        self.oh * self.pitch()
    }
    fn pitch(&self) -> usize {
        match self.lowering {
            Lowering::Shifted => self.padded_w(),
            _ => self.ow,
        }
    }
    fn col_len(&self) -> usize {
        match self.lowering {
            Lowering::Im2col => self.pixels_out() * self.row_len(),
            _ => 0,
        }
    }
    /// Input column of output column `ow` at kernel column 0 (may lie left of the image).
    fn left(&self, ow: usize) -> isize {
        (ow * self.sw) as isize - self.pw as isize
    }
    /// Input row of output row `oh` at kernel row `i`, if inside the image.
    fn input_row(&self, oh: usize, i: usize) -> Option<usize> {
        let ih = (oh * self.sh + i) as isize - self.ph as isize;
        (ih >= 0 && ih < self.h as isize).then_some(ih as usize)
    }

    /// A CHW image `[c, h·w]` in this window's prepared layout.
    fn prepare_image<T: Real + bytemuck::Pod>(&self, chw: &[T], out: &mut [T]) {
        let (h, w, c) = (self.h, self.w, self.c);
        match self.lowering {
            Lowering::Shifted => {
                // Zero only the border (top rows, left/right columns, bottom rows + spare row).
                let wp = self.padded_w();
                let out = &mut out[..self.image_len()];
                out[..(self.ph * wp + self.pw) * c].fill(T::ZERO);
                for ih in 0..h {
                    let start = ((ih + self.ph) * wp + self.pw) * c;
                    transpose(&chw[ih * w..], c, w, h * w, &mut out[start..], c);
                    // Right padding of this row and left padding of the next one.
                    out[start + w * c..start + (w + 2 * self.pw) * c].fill(T::ZERO);
                }
                out[((h + self.ph) * wp + self.pw) * c..].fill(T::ZERO);
            }
            _ => transpose(chw, c, h * w, h * w, out, c),
        }
    }

    /// A CHW output-shaped image `[n, oh·ow]` as GEMM rows `[rows, n]` (padding rows zero).
    fn scatter_rows<T: Real + bytemuck::Pod>(&self, chw: &[T], n: usize, rows: &mut [T]) {
        let (p, pitch) = (self.pixels_out(), self.pitch());
        if pitch == self.ow {
            return transpose(chw, n, p, p, rows, n);
        }
        for oh in 0..self.oh {
            let row = &mut rows[oh * pitch * n..(oh + 1) * pitch * n];
            transpose(&chw[oh * self.ow..], n, self.ow, p, row, n);
            row[self.ow * n..].fill(T::ZERO);
        }
    }

    /// GEMM rows `[rows, n]` back to a CHW image `[n, oh·ow]` (padding rows dropped).
    fn gather_rows<T: Real + bytemuck::Pod>(&self, rows: &[T], n: usize, chw: &mut [T]) {
        let (p, pitch) = (self.pixels_out(), self.pitch());
        for oh in 0..self.oh {
            let src = &rows[oh * pitch * n..];
            transpose(src, self.ow, n, n, &mut chw[oh * self.ow..], p);
        }
    }

    /// The convolution of the CHW images in `src` (`images` of them) into the CHW images of
    /// `dst` (`n` channels each) through HWC panels: prepare each image, one GEMM, then back to
    /// CHW. `prepared`, `col` and `out` are scratch.
    #[allow(clippy::too_many_arguments)]
    fn convolve_images<T: Real + bytemuck::Pod>(
        &self,
        images: usize,
        src: &[T],
        prepared: &mut [T],
        col: &mut [T],
        wt: &[T],
        n: usize,
        out: &mut [T],
        dst: &mut [T],
    ) {
        let (src_len, dst_len) = (src.len() / images, dst.len() / images);
        for (img, prep) in src
            .chunks_exact(src_len)
            .zip(prepared.chunks_exact_mut(self.image_len()))
        {
            self.prepare_image(img, prep);
        }
        self.gemm_forward(images, prepared, col, wt, n, out);
        for (rows, img) in out
            .chunks_exact(self.rows() * n)
            .zip(dst.chunks_exact_mut(dst_len))
        {
            self.gather_rows(rows, n, img);
        }
    }

    /// `out[rows, n] = panel · wt` for `images` prepared images; `wt` is `[(i, j, c), n]`
    /// (row-major, so the GEMM reads it in place).
    #[allow(clippy::too_many_arguments)]
    fn gemm_forward<T: Real + bytemuck::Pod>(
        &self,
        images: usize,
        prepared: &[T],
        col: &mut [T],
        wt: &[T],
        n: usize,
        out: &mut [T],
    ) {
        let k = self.row_len();
        let rows = self.rows();
        if self.lowering != Lowering::Shifted {
            let panel = self.panel(images, prepared, col);
            let b = MatRef::rows(wt, k, n);
            return gemm_with(MatRef::rows(panel, images * rows, k), b, out, false, false);
        }
        let (seg, len) = (self.kw * self.c, self.image_len());
        for (img, out) in prepared
            .chunks_exact(len)
            .zip(out.chunks_exact_mut(rows * n))
        {
            for i in 0..self.kh {
                let b = MatRef::rows(&wt[i * seg * n..], seg, n);
                gemm_with(self.shifted_view(img, i), b, out, i > 0, false);
            }
        }
    }

    /// `grad[(i, j, c), n] (+)= panelᵀ · dy_rows` for `images` prepared images.
    #[allow(clippy::too_many_arguments)]
    fn gemm_weight_grad<T: Real + bytemuck::Pod>(
        &self,
        images: usize,
        prepared: &[T],
        col: &mut [T],
        dy_rows: &[T],
        n: usize,
        grad: &mut [T],
        accumulate: bool,
    ) {
        let k = self.row_len();
        let rows = self.rows();
        if self.lowering != Lowering::Shifted {
            let panel = self.panel(images, prepared, col);
            let a = MatRef::transposed(panel, images * rows, k);
            return gemm_with(
                a,
                MatRef::rows(dy_rows, images * rows, n),
                grad,
                accumulate,
                false,
            );
        }
        let (seg, len) = (self.kw * self.c, self.image_len());
        for (b, (img, dy)) in prepared
            .chunks_exact(len)
            .zip(dy_rows.chunks_exact(rows * n))
            .enumerate()
        {
            for i in 0..self.kh {
                let v = self.shifted_view(img, i);
                let a = MatRef {
                    data: v.data,
                    rows: seg,
                    cols: rows,
                    row_stride: 1,
                    col_stride: v.row_stride,
                };
                let dst = &mut grad[i * seg * n..][..seg * n];
                gemm_with(
                    a,
                    MatRef::rows(dy, rows, n),
                    dst,
                    accumulate || b > 0,
                    false,
                );
            }
        }
    }

    /// Kernel row `i` of a padded image as a `[rows, kw·c]` matrix with overlapping rows.
    fn shifted_view<'a, T>(&self, img: &'a [T], i: usize) -> MatRef<'a, T> {
        MatRef {
            data: &img[i * self.padded_w() * self.c..],
            rows: self.rows(),
            cols: self.kw * self.c,
            row_stride: self.c as isize,
            col_stride: 1,
        }
    }

    /// The `[images·rows, row_len]` panel of prepared images (unrolled into `col` for im2col).
    fn panel<'a, T: Real>(&self, images: usize, prepared: &'a [T], col: &'a mut [T]) -> &'a [T] {
        if self.lowering == Lowering::Pointwise {
            return &prepared[..images * self.image_len()];
        }
        let (len, col_len) = (self.image_len(), self.col_len());
        for b in 0..images {
            im2col_hwc(
                self,
                &prepared[b * len..][..len],
                &mut col[b * col_len..][..col_len],
            );
        }
        &col[..images * col_len]
    }
}

/// `col[(oh, ow), (i, j, c)] = x[oh·sh-ph+i, ow·sw-pw+j, c]` (0 outside) for an HWC image:
/// each kernel row is one copy of `kw·c` contiguous values (split only at the borders).
fn im2col_hwc<T: Real>(win: &Window, x: &[T], col: &mut [T]) {
    let (c, kw) = (win.c, win.kw);
    let seg = kw * c;
    let row_len = win.row_len();
    for oh in 0..win.oh {
        for ow in 0..win.ow {
            let row = &mut col[(oh * win.ow + ow) * row_len..][..row_len];
            let left = win.left(ow);
            for (i, dst) in row.chunks_exact_mut(seg).enumerate() {
                let Some(ih) = win.input_row(oh, i) else {
                    dst.fill(T::ZERO);
                    continue;
                };
                let line = &x[ih * win.w * c..(ih + 1) * win.w * c];
                if left >= 0 && left as usize + kw <= win.w {
                    copy_run(dst, &line[left as usize * c..][..seg]);
                    continue;
                }
                for (j, d) in dst.chunks_exact_mut(c).enumerate() {
                    let iw = left + j as isize;
                    if iw >= 0 && (iw as usize) < win.w {
                        copy_run(d, &line[iw as usize * c..][..c]);
                    } else {
                        d.fill(T::ZERO);
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col_hwc`]: `dx[ih, iw, c] += dcol[(oh, ow), (i, j, c)]` (dx pre-zeroed).
fn col2im_hwc<T: Real>(win: &Window, dcol: &[T], dx: &mut [T]) {
    let (c, kw) = (win.c, win.kw);
    let seg = kw * c;
    let row_len = win.row_len();
    for oh in 0..win.oh {
        for ow in 0..win.ow {
            let row = &dcol[(oh * win.ow + ow) * row_len..][..row_len];
            let left = win.left(ow);
            for (i, src) in row.chunks_exact(seg).enumerate() {
                let Some(ih) = win.input_row(oh, i) else {
                    continue;
                };
                let line = &mut dx[ih * win.w * c..(ih + 1) * win.w * c];
                for (j, s) in src.chunks_exact(c).enumerate() {
                    let iw = left + j as isize;
                    if iw >= 0 && (iw as usize) < win.w {
                        for (d, &v) in line[iw as usize * c..][..c].iter_mut().zip(s) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// `wp[o, (i, j, c)] = w[o, c, i, j]`: the weight in the column order of the panels.
fn weight_to_hwc<T: Real>(g: &ConvGeometry, w: &[T]) -> Vec<T> {
    let mut wp = vec![T::ZERO; g.o * g.k()];
    for o in 0..g.o {
        for c in 0..g.c {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    wp[((o * g.kh + i) * g.kw + j) * g.c + c] =
                        w[((o * g.c + c) * g.kh + i) * g.kw + j];
                }
            }
        }
    }
    wp
}

/// `[cols, rows]` row-major from `[rows, cols]` row-major.
fn transposed<T: Real>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::ZERO; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// `wf[c, (i, j, o)] = w[o, c, kh-1-i, kw-1-j]`: the weight of the input gradient as a convolution.
fn weight_flipped<T: Real>(g: &ConvGeometry, w: &[T]) -> Vec<T> {
    let mut wf = vec![T::ZERO; g.c * g.kh * g.kw * g.o];
    for o in 0..g.o {
        for c in 0..g.c {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let src = ((o * g.c + c) * g.kh + (g.kh - 1 - i)) * g.kw + (g.kw - 1 - j);
                    wf[((c * g.kh + i) * g.kw + j) * g.o + o] = w[src];
                }
            }
        }
    }
    wf
}

/// f32 stride-1 convolutions on CPUs with AVX-512: an implicit GEMM over the zero-padded CHW
/// image ([`gemm_f32_gathered`]), so neither the input nor the output is transposed. Output
/// pixel `(oh, ow)` is GEMM column `oh·wp + ow` (the `wp - ow` padding columns of each row are
/// computed and dropped, as in [`Lowering::Shifted`]); kernel tap `(c, i, j)` is the image
/// `c·plane + i·wp + j` further. The weight `[n, (c, i, j)]` is read as it is stored.
///
/// Rows share their padding: each padded row is the `w` inputs then `pw` zeros (`wp = w + pw`),
/// and a row's zeros are also the left padding of the next row (`pw` zeros lead each channel).
/// Half the dropped columns of a `w + 2pw` layout: 3 % of the work on 32x32 maps instead of 6 %,
/// 6 % on 16x16 instead of 12.5 %.
struct ImplicitConv {
    c: usize,
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
    offsets: Vec<usize>,
}

impl ImplicitConv {
    /// `Some` for f32 on an AVX-512 CPU and the windows the shifted lowering takes. (8x8 maps,
    /// 12.5 % dropped columns here, measured no faster than their im2col GEMMs, so they stay there.)
    fn new<T: 'static>(win: &Window) -> Option<Self> {
        let f32_fast =
            std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && fast_f32_available();
        if !f32_fast || !win.implicit_fits() {
            return None;
        }
        let wp = win.w + win.pw;
        let plane = win.pw + (win.h + 2 * win.ph + 1) * wp;
        let mut offsets = Vec::with_capacity(win.row_len());
        for c in 0..win.c {
            for i in 0..win.kh {
                for j in 0..win.kw {
                    offsets.push(c * plane + i * wp + j);
                }
            }
        }
        Some(ImplicitConv {
            c: win.c,
            h: win.h,
            w: win.w,
            ph: win.ph,
            pw: win.pw,
            oh: win.oh,
            ow: win.ow,
            offsets,
        })
    }
    fn wp(&self) -> usize {
        self.w + self.pw
    }
    /// One channel of the padded image: `pw` leading zeros, then `[h + 2ph + 1, wp]` (a spare
    /// zero row for the last taps' overrun).
    fn plane(&self) -> usize {
        self.pw + (self.h + 2 * self.ph + 1) * self.wp()
    }
    fn padded_len(&self) -> usize {
        self.c * self.plane()
    }
    /// GEMM columns per output channel.
    fn cols(&self) -> usize {
        self.oh * self.wp()
    }
    /// One CHW image `x[c, h·w]` into the padded layout (`padded_len` values).
    fn pad<T: Copy + Default>(&self, x: &[T], padded: &mut [T]) {
        let (wp, plane) = (self.wp(), self.plane());
        let zero = T::default();
        for (src, dst) in x
            .chunks_exact(self.h * self.w)
            .zip(padded[..self.padded_len()].chunks_exact_mut(plane))
        {
            // Input row r starts at pw + (ph + r)·wp; everything else is zero.
            let top = self.pw + self.ph * wp;
            dst[..top].fill(zero);
            for (line, row) in src
                .chunks_exact(self.w)
                .zip(dst[top..].chunks_exact_mut(wp))
            {
                row[..self.w].copy_from_slice(line);
                row[self.w..].fill(zero);
            }
            dst[top + self.h * wp..].fill(zero);
        }
    }

    /// `dw[o, (c, i, j)] (+)= Σ dy · x` over `images` images straight from CHW: `dy` is
    /// `[images, o, oh·ow]`, `padded` the images in [`Self::pad`]'s layout.
    fn weight_grad(
        &self,
        images: usize,
        dy: &[f32],
        o: usize,
        padded: &[f32],
        dw: &mut [f32],
        accumulate: bool,
    ) {
        let pixels = self.oh * self.ow;
        let rows = DotRows {
            lda: pixels,
            image: o * pixels,
            images,
            rows: self.oh,
            row: self.ow,
            width: self.ow,
        };
        let k = self.offsets.len();
        gemm_f32_gathered_dot(
            dy,
            rows,
            o,
            padded,
            self.padded_len(),
            self.wp(),
            &self.offsets,
            dw,
            k,
            accumulate,
        );
    }

    /// `y[n, oh·ow] = conv(x[c, h·w])` for one image; `padded` and `out` (`n·cols`) are scratch.
    /// `epilogue` (with this image's residual) is applied as the output is copied out.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        x: &[f32],
        w: &[f32],
        n: usize,
        padded: &mut [f32],
        out: &mut [f32],
        y: &mut [f32],
        epilogue: Option<(&ChannelEpilogue, Option<&[f32]>)>,
    ) {
        let wp = self.wp();
        let padded = &mut padded[..self.padded_len()];
        self.pad(x, padded);
        let (k, cols) = (self.offsets.len(), self.cols());
        gemm_f32_gathered(w, k, n, padded, &self.offsets, cols, out, cols, false);
        let pixels = self.oh * self.ow;
        for (o, (src, dst)) in out
            .chunks_exact(cols)
            .zip(y.chunks_exact_mut(pixels))
            .enumerate()
        {
            let rows = src.chunks_exact(wp).zip(dst.chunks_exact_mut(self.ow));
            match epilogue {
                None => rows.for_each(|(s, d)| d.copy_from_slice(&s[..self.ow])),
                Some((epi, res)) => {
                    for (r, (s, d)) in rows.enumerate() {
                        let res = res.map(|res| &res[o * pixels + r * self.ow..][..self.ow]);
                        epi.apply(o, &s[..self.ow], res, d);
                    }
                }
            }
        }
    }
}

/// `wc[c, (o, i, j)] = w[o, c, kh-1-i, kw-1-j]`: the input gradient's weight for [`ImplicitConv`].
fn weight_flipped_chw<T: Real>(g: &ConvGeometry, w: &[T]) -> Vec<T> {
    let mut wc = vec![T::ZERO; g.c * g.o * g.kh * g.kw];
    for o in 0..g.o {
        for c in 0..g.c {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let src = ((o * g.c + c) * g.kh + (g.kh - 1 - i)) * g.kw + (g.kw - 1 - j);
                    wc[((c * g.o + o) * g.kh + i) * g.kw + j] = w[src];
                }
            }
        }
    }
    wc
}

/// Fast forward: `y = conv2d(x, w) + b` (see the module documentation).
pub fn conv2d_forward_cpu<T: Real + bytemuck::Pod>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    forward_chunked(g, x, w, b, y, forward_chunk(g), None);
}

/// [`conv2d_forward_cpu`] (f32, no bias) with `epilogue` applied as each chunk of output is
/// written, while it is in cache: an eval-mode BatchNorm, residual and ReLU cost no extra pass.
pub fn conv2d_forward_epilogue_cpu(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    epilogue: &ChannelEpilogue,
) {
    forward_chunked(g, x, w, None, y, forward_chunk(g), Some(epilogue));
}

/// Images per parallel chunk of the forward: Winograd's GEMM block, else sized for the panels.
fn forward_chunk(g: &ConvGeometry) -> usize {
    match Winograd::forward_of::<f32>(g) {
        Some(wg) => wg.block().clamp(1, g.n.max(1)),
        None => {
            let win = Window::of(g);
            images_per_chunk(g.n, win.rows(), win.row_len())
        }
    }
}

/// [`conv2d_forward_cpu`] with `per` images per chunk.
fn forward_chunked<T: Real + bytemuck::Pod>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
    per: usize,
    epilogue: Option<&ChannelEpilogue>,
) {
    let (pin, pout) = (g.pixels_in(), g.pixels_out());
    if g.n == 0 {
        return;
    }
    assert!(
        epilogue.is_none()
            || (b.is_none() && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()),
        "conv epilogue: f32 and no bias only"
    );
    let win = Window::of(g);
    // Winograd and `ImplicitConv` exist only for T = f32.
    let f32_chunks = |run: &(dyn Fn(usize, &[f32], &mut [f32]) + Sync), y: &mut [T]| {
        let (x32, y32): (&[f32], &mut [f32]) =
            (bytemuck::cast_slice(x), bytemuck::cast_slice_mut(y));
        let x_chunks = x32[..g.n * g.c * pin].par_chunks(per * g.c * pin);
        let y_chunks = y32[..g.n * g.o * pout].par_chunks_mut(per * g.o * pout);
        x_chunks
            .zip(y_chunks)
            .enumerate()
            .for_each(|(chunk, (xs, ys))| run(chunk, xs, ys));
        if let Some(b) = b {
            add_bias_planes(&mut y[..g.n * g.o * pout], b, pout);
        }
    };
    if let Some(wg) = Winograd::forward_of::<T>(g) {
        // It groups the chunk's images into GEMM blocks itself.
        let u = wg.weight(bytemuck::cast_slice(w));
        f32_chunks(
            &|chunk, xs, ys| {
                let images = xs.len() / (g.c * pin);
                with_scratch([wg.scratch_len(images)], |[scratch]| {
                    wg.run(xs, &u, ys, scratch, |i, out| {
                        if let Some(e) = epilogue {
                            e.apply_image(chunk * per + i, out, pout);
                        }
                    });
                });
            },
            y,
        );
        return;
    }
    if let Some(ic) = ImplicitConv::new::<T>(&win) {
        let w32: &[f32] = bytemuck::cast_slice(w);
        f32_chunks(
            &|chunk, xs, ys| {
                with_scratch([ic.padded_len(), g.o * ic.cols()], |[padded, out]| {
                    for (i, (img, dst)) in xs
                        .chunks_exact(g.c * pin)
                        .zip(ys.chunks_exact_mut(g.o * pout))
                        .enumerate()
                    {
                        let image = chunk * per + i;
                        let epi = epilogue.map(|e| {
                            let res = e.residual.map(|r| &r[image * g.o * pout..][..g.o * pout]);
                            (e, res)
                        });
                        ic.run(img, w32, g.o, padded, out, dst, epi);
                    }
                });
            },
            y,
        );
        return;
    }
    let wt = transposed(&weight_to_hwc(g, w), g.o, g.k());
    let x_chunks = x[..g.n * g.c * pin].par_chunks(per * g.c * pin);
    let y_chunks = y[..g.n * g.o * pout].par_chunks_mut(per * g.o * pout);
    x_chunks
        .zip(y_chunks)
        .enumerate()
        .for_each(|(chunk, (xs, ys))| {
            let images = xs.len() / (g.c * pin);
            let lens = [
                images * win.image_len(),
                images * win.col_len(),
                images * win.rows() * g.o,
            ];
            with_scratch(lens, |[prepared, col, out]| {
                win.convolve_images(images, xs, prepared, col, &wt, g.o, out, ys);
                if let Some(b) = b {
                    add_bias_planes(ys, b, pout);
                }
                if let Some(epi) = epilogue {
                    let ys: &mut [f32] = bytemuck::cast_slice_mut(ys);
                    for (i, img) in ys.chunks_exact_mut(g.o * pout).enumerate() {
                        epi.apply_image(chunk * per + i, img, pout);
                    }
                }
            });
        });
}

/// Fast backward: `dx`, `dw` and `db` (each overwritten, only when asked for).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_cpu<T: Real + bytemuck::Pod>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: Option<&mut [T]>,
    db: Option<&mut [T]>,
) {
    let (win, dwin) = (Window::of(g), Window::data_grad(g));
    let rows = win.rows().max(dwin.rows());
    // Winograd's GEMM block when it serves both gradients, else sized for the panels.
    let per = match (Winograd::forward_of::<T>(g), Winograd::data_grad_of::<T>(g)) {
        (Some(wg), Some(_)) => wg.block().clamp(1, g.n.max(1)),
        _ => images_per_chunk(g.n, rows, win.row_len().max(dwin.row_len())),
    };
    if let Some(db) = db {
        channel_sum_cpu(dy, db, g.n, g.o, g.pixels_out());
    }
    backward_chunked(g, x, w, dy, dx, dw, per);
}

/// The input and weight gradients of [`conv2d_backward_cpu`] with `per` images per chunk.
fn backward_chunked<T: Real + bytemuck::Pod>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: Option<&mut [T]>,
    per: usize,
) {
    let (k, pin, pout) = (g.k(), g.pixels_in(), g.pixels_out());
    if g.n == 0 {
        if let Some(dw) = dw {
            dw.fill(T::ZERO);
        }
        return;
    }
    if dx.is_none() && dw.is_none() {
        return;
    }
    let win = Window::of(g);
    let grad_as_conv = g.data_grad_is_conv();
    let dwin = if grad_as_conv {
        Window::data_grad(g)
    } else {
        win
    };
    let need_dw = dw.is_some();
    let need_dx = dx.is_some();
    let wp = weight_to_hwc(g, w);
    // The input gradient by Winograd (3x3, padding 1, even maps), else as an implicit GEMM over
    // dy (f32, AVX-512), else over HWC panels.
    let winograd_dx = if need_dx {
        Winograd::data_grad_of::<T>(g)
    } else {
        None
    };
    let implicit_dx = if need_dx && grad_as_conv && winograd_dx.is_none() {
        ImplicitConv::new::<T>(&dwin)
    } else {
        None
    };
    // The weight gradient by Winograd (partials in its transformed domain), else straight from
    // CHW x and dy (f32, AVX-512, stride-1 windows), else from HWC panels.
    let winograd_dw = if need_dw {
        Winograd::forward_of::<T>(g)
    } else {
        None
    };
    let implicit_dw = if need_dw && winograd_dw.is_none() {
        ImplicitConv::new::<T>(&win)
    } else {
        None
    };
    let part_len = if winograd_dw.is_some() {
        16 * g.c * g.o
    } else {
        k * g.o
    };
    let wf = match (need_dx && grad_as_conv, &implicit_dx, &winograd_dx) {
        (false, _, _) => Vec::new(),
        (true, None, None) => transposed(&weight_flipped(g, w), g.c, g.kh * g.kw * g.o),
        (true, _, _) => weight_flipped_chw(g, w),
    };
    // `Winograd` exists only for T = f32.
    let wf_winograd = winograd_dx
        .as_ref()
        .map(|wg| wg.weight(bytemuck::cast_slice(&wf)));

    let chunks = g.n.div_ceil(per);
    let chunks_per_group = chunks.div_ceil(chunks.min(WEIGHT_GRAD_GROUPS));
    let groups = chunks.div_ceil(chunks_per_group);
    let images_per_group = chunks_per_group * per;

    let mut partials = vec![T::ZERO; if need_dw { groups * part_len } else { 0 }];
    let partial_slots: Vec<Option<&mut [T]>> = if need_dw {
        partials.chunks_mut(part_len).map(Some).collect()
    } else {
        (0..groups).map(|_| None).collect()
    };
    let dx_slots: Vec<Option<&mut [T]>> = match dx {
        Some(dx) => dx[..g.n * g.c * pin]
            .chunks_mut(images_per_group * g.c * pin)
            .map(Some)
            .collect(),
        None => (0..groups).map(|_| None).collect(),
    };
    debug_assert_eq!((partial_slots.len(), dx_slots.len()), (groups, groups));

    let work = |group: usize, mut dx_group: Option<&mut [T]>, mut partial: Option<&mut [T]>| {
        let first = group * images_per_group;
        let last = (first + images_per_group).min(g.n);
        for (ci, n0) in (first..last).step_by(per).enumerate() {
            let images = per.min(last - n0);
            let dys = &dy[n0 * g.o * pout..(n0 + images) * g.o * pout];
            let xs = &x[n0 * g.c * pin..(n0 + images) * g.c * pin];
            // dy as GEMM rows of the forward window: for the weight gradient and for col2im.
            let panel_dw = need_dw && implicit_dw.is_none() && winograd_dw.is_none();
            let need_rows = panel_dw || (need_dx && !grad_as_conv);
            let dx_conv = need_dx && grad_as_conv && implicit_dx.is_none() && winograd_dx.is_none();
            let lens = [
                if need_rows {
                    images * win.rows() * g.o
                } else {
                    0
                },
                match &implicit_dw {
                    _ if winograd_dw.is_some() => {
                        // Its scratch, then dy channels last.
                        let wg = winograd_dw.as_ref();
                        wg.map_or(0, |wg| wg.scratch_len(images)) + images * g.o * pout
                    }
                    Some(ic) => images * ic.padded_len(),
                    None if need_dw => images * win.image_len(),
                    None => 0,
                },
                if panel_dw || dx_conv {
                    images * win.col_len().max(dwin.col_len())
                } else {
                    0
                },
                if dx_conv {
                    images * dwin.image_len()
                } else {
                    0
                },
                match (need_dx, grad_as_conv, &implicit_dx) {
                    (false, _, _) => 0,
                    _ if winograd_dx.is_some() => {
                        winograd_dx.as_ref().map_or(0, |wg| wg.scratch_len(images))
                    }
                    (true, true, Some(ic)) => ic.padded_len() + g.c * ic.cols(),
                    (true, true, None) => images * dwin.rows() * g.c,
                    (true, false, _) => images * pout * k,
                },
                if need_dx && !grad_as_conv {
                    images * pin * g.c
                } else {
                    0
                },
            ];
            with_scratch(lens, |[dy_rows, prepared, col, dy_image, out, dxt]| {
                if need_rows {
                    for (img, dst) in dys
                        .chunks_exact(g.o * pout)
                        .zip(dy_rows.chunks_exact_mut(win.rows() * g.o))
                    {
                        win.scatter_rows(img, g.o, dst);
                    }
                }
                if let (Some(partial), Some(wg)) = (partial.as_deref_mut(), &winograd_dw) {
                    // `Winograd` exists only for T = f32.
                    let (x32, dy32): (&[f32], &[f32]) =
                        (bytemuck::cast_slice(xs), bytemuck::cast_slice(dys));
                    let scratch: &mut [f32] = bytemuck::cast_slice_mut(prepared);
                    let (scratch, dy_hwc) = scratch.split_at_mut(wg.scratch_len(images));
                    for (src, dst) in dy32
                        .chunks_exact(g.o * pout)
                        .zip(dy_hwc.chunks_exact_mut(g.o * pout))
                    {
                        transpose(src, g.o, pout, pout, dst, g.o);
                    }
                    let du: &mut [f32] = bytemuck::cast_slice_mut(partial);
                    wg.weight_grad(x32, dy_hwc, du, ci > 0, scratch);
                } else if let (Some(partial), Some(ic)) = (partial.as_deref_mut(), &implicit_dw) {
                    // `ImplicitConv` exists only for T = f32.
                    let (x32, dy32): (&[f32], &[f32]) =
                        (bytemuck::cast_slice(xs), bytemuck::cast_slice(dys));
                    let padded: &mut [f32] = bytemuck::cast_slice_mut(prepared);
                    for (img, dst) in x32
                        .chunks_exact(g.c * pin)
                        .zip(padded.chunks_exact_mut(ic.padded_len()))
                    {
                        ic.pad(img, dst);
                    }
                    let dw32: &mut [f32] = bytemuck::cast_slice_mut(partial);
                    ic.weight_grad(images, dy32, g.o, padded, dw32, ci > 0);
                } else if let Some(partial) = partial.as_deref_mut() {
                    for (img, dst) in xs
                        .chunks_exact(g.c * pin)
                        .zip(prepared.chunks_exact_mut(win.image_len()))
                    {
                        win.prepare_image(img, dst);
                    }
                    win.gemm_weight_grad(images, prepared, col, dy_rows, g.o, partial, ci > 0);
                }
                let Some(dx_group) = dx_group.as_deref_mut() else {
                    return;
                };
                let dxs = &mut dx_group[(n0 - first) * g.c * pin..][..images * g.c * pin];
                if let (Some(wg), Some(u)) = (&winograd_dx, &wf_winograd) {
                    let scratch: &mut [f32] = bytemuck::cast_slice_mut(out);
                    let (dy32, dx32): (&[f32], &mut [f32]) =
                        (bytemuck::cast_slice(dys), bytemuck::cast_slice_mut(dxs));
                    wg.run(dy32, u, dx32, scratch, |_, _| {});
                    return;
                }
                if let Some(ic) = &implicit_dx {
                    // `ImplicitConv` exists only for T = f32: `out` is a padded image + rows.
                    let scratch: &mut [f32] = bytemuck::cast_slice_mut(out);
                    let (padded, rows) = scratch.split_at_mut(ic.padded_len());
                    let (dy32, w32): (&[f32], &[f32]) =
                        (bytemuck::cast_slice(dys), bytemuck::cast_slice(&wf));
                    let dx32: &mut [f32] = bytemuck::cast_slice_mut(dxs);
                    for (img, dst) in dy32
                        .chunks_exact(g.o * pout)
                        .zip(dx32.chunks_exact_mut(g.c * pin))
                    {
                        ic.run(img, w32, g.c, padded, rows, dst, None);
                    }
                    return;
                }
                if grad_as_conv {
                    dwin.convolve_images(images, dys, dy_image, col, &wf, g.c, out, dxs);
                    return;
                }
                // dcol[(oh, ow), (i, j, c)] = dy_rows · wp, folded back onto the HWC input.
                let dcol = &mut out[..images * pout * k];
                gemm_with(
                    MatRef::rows(dy_rows, images * pout, g.o),
                    MatRef::rows(&wp, g.o, k),
                    dcol,
                    false,
                    false,
                );
                dxt.fill(T::ZERO);
                for (src, dst) in dcol
                    .chunks_exact(pout * k)
                    .zip(dxt.chunks_exact_mut(pin * g.c))
                {
                    col2im_hwc(&win, src, dst);
                }
                for (src, img) in dxt
                    .chunks_exact(pin * g.c)
                    .zip(dxs.chunks_exact_mut(g.c * pin))
                {
                    transpose(src, pin, g.c, g.c, img, pin);
                }
            });
        }
    };
    dx_slots
        .into_par_iter()
        .zip(partial_slots)
        .enumerate()
        .for_each(|(group, (dx_group, partial))| work(group, dx_group, partial));

    if let Some(dw) = dw {
        let mut sum = vec![T::ZERO; part_len];
        for part in partials.chunks_exact(part_len) {
            for (s, &v) in sum.iter_mut().zip(part) {
                *s += v;
            }
        }
        if let Some(wg) = &winograd_dw {
            wg.weight_grad_finish(bytemuck::cast_slice(&sum), bytemuck::cast_slice_mut(dw));
            return;
        }
        if implicit_dw.is_some() {
            // Already in the weight's [o, (c, i, j)] layout.
            dw[..k * g.o].copy_from_slice(&sum);
            return;
        }
        // [(i, j, c), o] back to the weight's [o, c, i, j].
        for o in 0..g.o {
            for c in 0..g.c {
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        dw[((o * g.c + c) * g.kh + i) * g.kw + j] =
                            sum[((i * g.kw + j) * g.c + c) * g.o + o];
                    }
                }
            }
        }
    }
}

// ---------- device dispatch ----------

fn host<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32]> {
    t.host()
        .ok_or_else(|| Error::Device(format!("conv2d: {what} is not in host memory")))
}

fn check_bias(g: &ConvGeometry, b: Option<&Tensor>) -> Result<()> {
    match b {
        Some(b) if b.shape() != [g.o] => Err(Error::Shape(format!(
            "conv2d: bias {:?} does not fit {} output channels (expected [{}])",
            b.shape(),
            g.o,
            g.o
        ))),
        _ => Ok(()),
    }
}

/// Images per GPU launch of the input gradient of strided convs, so the dcol buffer stays below
/// 2^25 elements (128 MiB) and the O·K products below 2^24.
fn gpu_chunk(g: &ConvGeometry) -> usize {
    let col = (g.k() * g.pixels_out()).max(1);
    let part = (g.o * g.k()).max(1);
    ((1usize << 25) / col)
        .min((1usize << 24) / part)
        .clamp(1, g.n.max(1))
        .min(65_535)
}

/// Images per forward launch: the implicit GEMM indexes its `images·OH·OW` columns with 32-bit
/// ints (and needs no scratch).
fn gpu_forward_chunk(g: &ConvGeometry) -> usize {
    (i32::MAX as usize / g.pixels_out().max(1)).clamp(1, g.n.max(1))
}

const F32: u64 = std::mem::size_of::<f32>() as u64;

/// Device addresses of what `conv2d_implicit_*` applies as it stores the output, 0 = absent.
#[derive(Clone, Copy, Default)]
struct GpuEpilogue {
    bias: u64,
    mean: u64,
    var: u64,
    gamma: u64,
    beta: u64,
    /// Shaped like the whole output (offset per chunk here).
    residual: u64,
    relu: bool,
    eps: f32,
}

impl GpuEpilogue {
    /// Eval BatchNorm, then `+ residual` and a ReLU when given (shapes checked by the caller).
    fn bn_eval(gpu: &Gpu, bn: BnEval, residual: Option<&Tensor>, relu: bool) -> Self {
        let addr = |t: &Tensor| gpu.addr(t.buffer());
        GpuEpilogue {
            mean: addr(&bn.running.mean),
            var: addr(&bn.running.var),
            gamma: bn.affine.map_or(0, |(gamma, _)| addr(gamma)),
            beta: bn.affine.map_or(0, |(_, beta)| addr(beta)),
            residual: residual.map_or(0, addr),
            relu,
            eps: bn.eps,
            ..GpuEpilogue::default()
        }
    }
}

/// Threads of a `conv2d_implicit_*` block.
const CONV_THREADS: u32 = 256;

/// The `conv2d_implicit_*` kernel for `o` output channels and its block tile `(rows, columns)`:
/// 16 or 32 rows when that holds all of them (no empty rows for O = 16 or 32), else 64; the tile
/// keeps 4096 outputs. `flipped`: the `*flip*` kernel, which reads the weight of the conv whose
/// input gradient it computes, flipped and transposed in place.
fn implicit_kernel(o: usize, flipped: bool) -> (&'static str, usize, usize) {
    match (o, flipped) {
        (0..=16, false) => ("conv2d_implicit_o16_f32", 16, 256),
        (0..=16, true) => ("conv2d_implicit_o16_flip_f32", 16, 256),
        (17..=32, false) => ("conv2d_implicit_o32_f32", 32, 128),
        (17..=32, true) => ("conv2d_implicit_o32_flip_f32", 32, 128),
        (_, false) => ("conv2d_implicit_f32", 64, 64),
        (_, true) => ("conv2d_implicit_flip_f32", 64, 64),
    }
}

/// `y = conv2d(x, w) + b` with stride `(sh, sw)` and zero padding `(ph, pw)`.
pub fn conv2d_forward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Tensor> {
    same_device("conv2d", x, w)?;
    if let Some(b) = b {
        same_device("conv2d", x, b)?;
    }
    let g = ConvGeometry::new(x.shape(), w.shape(), stride, padding)?;
    check_bias(&g, b)?;
    let out_shape = g.out_shape();
    match x.device() {
        Device::Cpu => {
            let bias = b.map(|b| host(b, "bias")).transpose()?;
            let (xs, ws) = (host(x, "x")?, host(w, "weight")?);
            // SAFETY: conv2d_forward_cpu overwrites all of y (the tests pass NaN-filled outputs).
            let y = unsafe {
                host_vec_written(out_shape.iter().product(), |y| {
                    conv2d_forward_cpu(&g, xs, ws, bias, y)
                })
            };
            Tensor::from_vec(&out_shape, y, x.device())
        }
        Device::Gpu(gpu) => forward_gpu(gpu, &g, x, w, b, gpu_forward_chunk(&g)),
    }
}

/// The eval-mode BatchNorm after a conv, for [`conv2d_bn_eval_forward`].
#[derive(Clone, Copy)]
pub struct BnEval<'a> {
    /// `(weight, bias)` when affine.
    pub affine: Option<(&'a Tensor, &'a Tensor)>,
    pub running: &'a RunningStats,
    pub eps: f32,
}

/// `relu?(batch_norm_eval(conv2d(x, w)) + residual?)` with no conv bias, for forwards that keep
/// no tape (frozen teachers, evaluation). The BatchNorm, residual and ReLU are applied as the
/// conv writes its output (CPU: [`ChannelEpilogue`]; kernel devices: `conv2d_implicit_*`'s
/// epilogue): the same values as the separate ops, one pass over the activations instead of two.
pub fn conv2d_bn_eval_forward(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    padding: (usize, usize),
    bn: BnEval,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    same_device("conv2d", x, w)?;
    let g = ConvGeometry::new(x.shape(), w.shape(), stride, padding)?;
    let out_shape = g.out_shape();
    let per_channel = [g.o];
    let mut vectors = vec![("running_mean", bn.running.mean.clone())];
    vectors.push(("running_var", bn.running.var.clone()));
    if let Some((gamma, beta)) = bn.affine {
        vectors.push(("weight", gamma.clone()));
        vectors.push(("bias", beta.clone()));
    }
    for (what, t) in &vectors {
        same_device("conv2d_bn_eval", x, t)?;
        t.expect_shape(&format!("conv2d_bn_eval: batch norm {what}"), &per_channel)?;
    }
    if let Some(r) = residual {
        same_device("conv2d_bn_eval", x, r)?;
        r.expect_shape("conv2d_bn_eval: residual", &out_shape)?;
    }
    if let Device::Gpu(gpu) = x.device() {
        let epilogue = GpuEpilogue::bn_eval(gpu, bn, residual, relu);
        return forward_gpu_epilogue(gpu, &g, x, w, &epilogue, gpu_forward_chunk(&g));
    }
    let invstd = invstd_cpu(host(&bn.running.var, "running_var")?, bn.eps);
    let (scale, shift): (Vec<f32>, Vec<f32>) = match bn.affine {
        Some((gamma, beta)) => {
            let (gamma, beta) = (host(gamma, "weight")?, host(beta, "bias")?);
            (0..g.o).map(|o| (gamma[o] * invstd[o], beta[o])).unzip()
        }
        None => (invstd.clone(), vec![0.0; g.o]),
    };
    let epilogue = ChannelEpilogue {
        mean: host(&bn.running.mean, "running_mean")?,
        scale: &scale,
        shift: &shift,
        residual: residual.map(|r| host(r, "residual")).transpose()?,
        relu,
    };
    let (xs, ws) = (host(x, "x")?, host(w, "weight")?);
    // SAFETY: the conv overwrites all of y, and the epilogue maps each element in place.
    let y = unsafe {
        host_vec_written(out_shape.iter().product(), |y| {
            conv2d_forward_epilogue_cpu(&g, xs, ws, y, &epilogue)
        })
    };
    Tensor::from_vec(&out_shape, y, x.device())
}

/// `y = conv2d(x, w) (+ b)`: the implicit GEMM, `chunk` images per launch.
fn forward_gpu(
    gpu: &Gpu,
    g: &ConvGeometry,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    chunk: usize,
) -> Result<Tensor> {
    let epilogue = GpuEpilogue {
        bias: b.map_or(0, |b| gpu.addr(b.buffer())),
        ..GpuEpilogue::default()
    };
    forward_gpu_epilogue(gpu, g, x, w, &epilogue, chunk)
}

/// `y = epilogue(conv2d(x, w))` by `conv2d_implicit_*`, `chunk` images per launch.
fn forward_gpu_epilogue(
    gpu: &Gpu,
    g: &ConvGeometry,
    x: &Tensor,
    w: &Tensor,
    epilogue: &GpuEpilogue,
    chunk: usize,
) -> Result<Tensor> {
    let mut y = Tensor::zeros(&g.out_shape(), x.device())?;
    let (xa, wa) = (gpu.addr(x.buffer()), gpu.addr(w.buffer()));
    let ya = gpu.addr_mut(y.buffer_mut());
    launch_implicit(gpu, g, xa, wa, false, ya, epilogue, chunk)?;
    Ok(y)
}

/// `y = epilogue(conv2d(x, w))` for the device addresses of `x`, `w` and `y` (all of it written),
/// `chunk` images per `conv2d_implicit_*` launch. `flipped`: `w` is the `[g.c, g.o, kh, kw]`
/// weight of the conv whose input gradient this is, read flipped and transposed.
#[allow(clippy::too_many_arguments)]
fn launch_implicit(
    gpu: &Gpu,
    g: &ConvGeometry,
    xa: u64,
    wa: u64,
    flipped: bool,
    ya: u64,
    epilogue: &GpuEpilogue,
    chunk: usize,
) -> Result<()> {
    if g.n == 0 {
        return Ok(());
    }
    let pout = g.pixels_out();
    let (kernel, tile_rows, tile_cols) = implicit_kernel(g.o, flipped);
    let row_tiles = g.o.div_ceil(tile_rows);
    if row_tiles > 65_535 {
        return Err(Error::Shape(format!(
            "conv2d: {} output channels exceed the kernel's grid ({} at most)",
            g.o,
            65_535 * tile_rows
        )));
    }
    let out_at = |base: u64, n0: usize| match base {
        0 => 0,
        _ => base + (n0 * g.o * pout) as u64 * F32,
    };
    for n0 in (0..g.n).step_by(chunk.max(1)) {
        let images = chunk.max(1).min(g.n - n0);
        let p = ConvParams {
            relu: epilogue.relu as i32,
            eps: epilogue.eps,
            ..g.params(images)?
        };
        let cols = images * pout;
        if cols > i32::MAX as usize {
            return Err(Error::Shape(format!(
                "conv2d: {images} images of {pout} output pixels exceed the kernel's 32-bit columns"
            )));
        }
        let e = epilogue;
        let mut args = KernelArgs::new();
        args.ptr(xa + (n0 * g.c * g.pixels_in()) as u64 * F32)
            .ptr(wa)
            .ptr(e.bias)
            .ptr(e.mean)
            .ptr(e.var)
            .ptr(e.gamma)
            .ptr(e.beta)
            .ptr(out_at(e.residual, n0))
            .ptr(out_at(ya, n0))
            .value(&p);
        let grid = (cols.div_ceil(tile_cols) as u32, row_tiles as u32, 1);
        gpu.launch(
            kernel,
            LaunchCfg::new(grid, (CONV_THREADS, 1, 1)),
            &mut args,
        )?;
    }
    Ok(())
}

/// Gradients of [`conv2d_forward`]: `(dx, dw, db)`, each computed only when its flag in `need` is
/// set (the input gradient of data images is never needed).
pub fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    stride: (usize, usize),
    padding: (usize, usize),
    need: (bool, bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    same_device("conv2d backward", x, w)?;
    same_device("conv2d backward", x, dy)?;
    let g = ConvGeometry::new(x.shape(), w.shape(), stride, padding)?;
    dy.expect_shape("conv2d backward: dy", &g.out_shape())?;
    let (need_dx, need_dw, need_db) = need;
    let db = if need_db {
        Some(channel_sum(dy)?)
    } else {
        None
    };
    match x.device() {
        Device::Cpu => {
            let (xs, ws, dys) = (host(x, "x")?, host(w, "weight")?, host(dy, "dy")?);
            let run = |dx: Option<&mut [f32]>, dw: Option<&mut [f32]>| {
                conv2d_backward_cpu(&g, xs, ws, dys, dx, dw, None)
            };
            let (nx, nw) = (x.numel(), w.numel());
            // SAFETY: conv2d_backward_cpu overwrites every element of the dx and dw it is given
            // (the tests pass NaN-filled gradients).
            let (dx, dw) = unsafe {
                match (need_dx, need_dw) {
                    (true, true) => {
                        let mut dw = None;
                        let dx = host_vec_written(nx, |dx| {
                            dw = Some(host_vec_written(nw, |dw| run(Some(dx), Some(dw))));
                        });
                        (Some(dx), dw)
                    }
                    (true, false) => (Some(host_vec_written(nx, |dx| run(Some(dx), None))), None),
                    (false, true) => (None, Some(host_vec_written(nw, |dw| run(None, Some(dw))))),
                    (false, false) => (None, None),
                }
            };
            let dx = dx
                .map(|v| Tensor::from_vec(x.shape(), v, x.device()))
                .transpose()?;
            let dw = dw
                .map(|v| Tensor::from_vec(w.shape(), v, x.device()))
                .transpose()?;
            Ok((dx, dw, db))
        }
        Device::Gpu(gpu) => {
            let dx = if need_dx {
                let chunk = match g.data_grad_is_conv() {
                    true => gpu_forward_chunk(&g).min(i32::MAX as usize / g.pixels_in().max(1)),
                    false => gpu_chunk(&g),
                };
                Some(backward_data_gpu(gpu, &g, w, dy, chunk)?)
            } else {
                None
            };
            let dw = if need_dw {
                // No col buffer: the whole batch per launch, within the kernel's own limit.
                Some(backward_weight_gpu(gpu, &g, x, dy, g.n)?)
            } else {
                None
            };
            Ok((dx, dw, db))
        }
    }
}

/// Stride 1 (padding below the kernel size): `dx = conv2d(dy, flipped Wᵀ)` by the implicit GEMM.
/// Otherwise `dcol_n = Wᵀ·dy_n` (batched GEMM), folded back by col2im. `chunk` images per launch.
fn backward_data_gpu(
    gpu: &Gpu,
    g: &ConvGeometry,
    w: &Tensor,
    dy: &Tensor,
    chunk: usize,
) -> Result<Tensor> {
    let (k, pin, pout) = (g.k(), g.pixels_in(), g.pixels_out());
    let mut dx = Tensor::zeros(&[g.n, g.c, g.h, g.w], dy.device())?;
    if g.n == 0 {
        return Ok(dx);
    }
    let (wa, dya) = (gpu.addr(w.buffer()), gpu.addr(dy.buffer()));
    let dxa = gpu.addr_mut(dx.buffer_mut());
    if g.data_grad_is_conv() {
        let gd = ConvGeometry::new(
            &[g.n, g.o, g.oh, g.ow],
            &[g.c, g.o, g.kh, g.kw],
            (1, 1),
            (g.kh - 1 - g.ph, g.kw - 1 - g.pw),
        )?;
        debug_assert_eq!((gd.oh, gd.ow), (g.h, g.w));
        launch_implicit(gpu, &gd, dya, wa, true, dxa, &GpuEpilogue::default(), chunk)?;
        return Ok(dx);
    }
    // A pointwise conv's dcol is dx itself.
    let mut dcol = if g.pointwise() {
        None
    } else {
        Some(gpu.zeros::<f32>(chunk * k * pout)?)
    };
    for n0 in (0..g.n).step_by(chunk) {
        let images = chunk.min(g.n - n0);
        let dx0 = dxa + (n0 * g.c * pin) as u64 * F32;
        let target = match dcol.as_mut() {
            Some(d) => gpu.addr_mut(d),
            None => dx0,
        };
        // dcol_n[K, P] = W[O, K]ᵀ · dy_n[O, P]
        let mut p = GemmParams::dense(k, pout, g.o, true, false)?;
        p.stride_a = 0;
        let dy0 = dya + (n0 * g.o * pout) as u64 * F32;
        gemm_launch(gpu, wa, dy0, target, &p, images)?;
        if dcol.is_some() {
            let p = g.params(images)?;
            let mut args = KernelArgs::new();
            args.ptr(target).ptr(dx0).value(&p);
            gpu.launch(
                "col2im_f32",
                LaunchCfg::for_elements(images * g.c * pin),
                &mut args,
            )?;
        }
    }
    Ok(dx)
}

/// Blocks a weight-gradient launch aims for: tiles × slices of at least this many.
const WG_TARGET_BLOCKS: usize = 512;
/// Reduction columns per step of `conv2d_weight_grad_*` (a slice is a multiple).
const WG_STEP: usize = 16;
/// Output columns (K) of a weight-gradient tile.
const WG_TILE_K: usize = 64;

/// The `conv2d_weight_grad_*` kernel for `o` output channels, its tile height and its threads:
/// 16 or 32 rows when that holds all of them (no empty rows for O = 16 or 32), else 64. The
/// 16-row tile runs 64 threads of 4x4 outputs (256 threads of 1x4 were bound by shared-memory
/// loads).
fn weight_grad_kernel(o: usize) -> (&'static str, usize, u32) {
    match o {
        0..=16 => ("conv2d_weight_grad_o16_f32", 16, 64),
        17..=32 => ("conv2d_weight_grad_o32_f32", 32, 256),
        _ => ("conv2d_weight_grad_f32", 64, 256),
    }
}

/// `(slice, slices)`: the reduction of `cols` (image, pixel) columns split into `slices` runs of
/// `slice` columns (a multiple of 16, the last run shorter) so that `tiles × slices` reaches
/// [`WG_TARGET_BLOCKS`], with at most `max_slices` (the partials' budget).
fn weight_grad_slices(
    tiles: usize,
    cols: usize,
    max_slices: usize,
    target_blocks: usize,
) -> (usize, usize) {
    let cols = cols.max(1);
    let want = target_blocks
        .div_ceil(tiles.max(1))
        .clamp(1, max_slices.max(1));
    let slice = cols.div_ceil(want).next_multiple_of(WG_STEP);
    (slice, cols.div_ceil(slice))
}

/// Images per weight-gradient launch: its `images·OH·OW` reduction columns (plus a slice) must
/// stay in the kernel's 32-bit ints.
fn gpu_weight_grad_chunk(g: &ConvGeometry) -> usize {
    ((i32::MAX as usize / 2) / g.pixels_out().max(1)).clamp(1, g.n.max(1))
}

/// `dW = Σ_n dy_n·col_nᵀ` by `conv2d_weight_grad_*` (an implicit GEMM: col is gathered from x,
/// never written) into one partial dW per reduction slice, summed in slice order by
/// `conv_sum_partials_f32`; launches of `chunk` images accumulate in image order.
fn backward_weight_gpu(
    gpu: &Gpu,
    g: &ConvGeometry,
    x: &Tensor,
    dy: &Tensor,
    chunk: usize,
) -> Result<Tensor> {
    backward_weight_gpu_sliced(gpu, g, x, dy, chunk, WG_TARGET_BLOCKS)
}

/// [`backward_weight_gpu`] aiming for `target_blocks` blocks per launch (tests: long slices).
fn backward_weight_gpu_sliced(
    gpu: &Gpu,
    g: &ConvGeometry,
    x: &Tensor,
    dy: &Tensor,
    chunk: usize,
    target_blocks: usize,
) -> Result<Tensor> {
    let (k, pin, pout) = (g.k(), g.pixels_in(), g.pixels_out());
    let mut dw = Tensor::zeros(&[g.o, g.c, g.kh, g.kw], dy.device())?;
    if g.n == 0 || g.o * k == 0 {
        return Ok(dw);
    }
    let (kernel, tile_o, threads) = weight_grad_kernel(g.o);
    let (row_tiles, col_tiles) = (g.o.div_ceil(tile_o), k.div_ceil(WG_TILE_K));
    if row_tiles > 65_535 {
        return Err(Error::Shape(format!(
            "conv2d: {} output channels exceed the weight-gradient kernel's grid",
            g.o
        )));
    }
    let chunk = chunk.clamp(1, gpu_weight_grad_chunk(g));
    // The partials of all slices stay below 2^24 elements (or one dW when that is larger).
    let max_slices = ((1usize << 24) / (g.o * k)).clamp(1, 65_535);
    let (xa, dya) = (gpu.addr(x.buffer()), gpu.addr(dy.buffer()));
    let dwa = gpu.addr_mut(dw.buffer_mut());
    let slices_for = |images: usize| {
        weight_grad_slices(
            row_tiles * col_tiles,
            images * pout,
            max_slices,
            target_blocks,
        )
    };
    // (Not monotonic in the images: size for both launch sizes.)
    let most = slices_for(chunk.min(g.n)).1.max(slices_for(g.n % chunk).1);
    let mut partials = gpu.zeros::<f32>(most * g.o * k)?;
    let pa = gpu.addr_mut(&mut partials);
    for n0 in (0..g.n).step_by(chunk) {
        let images = chunk.min(g.n - n0);
        let (slice, slices) = slices_for(images);
        let p = ConvParams {
            slice: slice as i32,
            ..g.params(images)?
        };
        let mut args = KernelArgs::new();
        args.ptr(xa + (n0 * g.c * pin) as u64 * F32)
            .ptr(dya + (n0 * g.o * pout) as u64 * F32)
            .ptr(pa)
            .value(&p);
        let grid = (col_tiles as u32, row_tiles as u32, slices as u32);
        gpu.launch(kernel, LaunchCfg::new(grid, (threads, 1, 1)), &mut args)?;
        let sp = PartialSumParams {
            parts: slices as i32,
            len: (g.o * k) as i32,
            accumulate: (n0 > 0) as i32,
        };
        let mut args = KernelArgs::new();
        args.ptr(pa).ptr(dwa).value(&sp);
        gpu.launch(
            "conv_sum_partials_f32",
            LaunchCfg::for_elements(g.o * k),
            &mut args,
        )?;
    }
    Ok(dw)
}

// ---------- autograd ----------

/// `conv2d(x [N, C, H, W], weight [O, C, kh, kw], bias [O]?)` with stride and zero padding.
pub fn conv2d(
    g: &mut Graph,
    x: Var,
    weight: Var,
    bias: Option<Var>,
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Var> {
    let (xv, wv) = (g.value(x).clone(), g.value(weight).clone());
    let y = conv2d_forward(&xv, &wv, bias.map(|b| g.value(b)), stride, padding)?;
    super::flops::add_dot_products(y.numel(), wv.numel() / wv.shape()[0]);
    let need = (
        g.requires_grad(x),
        g.requires_grad(weight),
        bias.is_some_and(|b| g.requires_grad(b)),
    );
    let inputs: Vec<Var> = [x, weight].into_iter().chain(bias).collect();
    let has_bias = bias.is_some();
    Ok(g.op(y, &inputs, move |dy| {
        let (dx, dw, db) = conv2d_backward(&xv, &wv, dy, stride, padding, need)?;
        let mut grads = vec![dx, dw];
        if has_bias {
            grads.push(db);
        }
        Ok(grads)
    }))
}

/// `[N, C, L]` → `[N, C, 1, L]` (and `[O, C, k]` → `[O, C, 1, k]`).
fn as_2d(t: &Tensor, what: &str) -> Result<Tensor> {
    match *t.shape() {
        [a, b, l] => t.reshape(&[a, b, 1, l]),
        _ => Err(Error::Shape(format!(
            "conv1d: {what} {:?} must be 3-D ([N, C, L] / [O, C, k])",
            t.shape()
        ))),
    }
}

/// `conv1d(x [N, C, L], weight [O, C, k], bias [O]?)`: a 2-D convolution with height 1.
pub fn conv1d_forward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let y = conv2d_forward(
        &as_2d(x, "x")?,
        &as_2d(w, "weight")?,
        b,
        (1, stride),
        (0, padding),
    )?;
    let s = y.shape().to_vec();
    y.reshape(&[s[0], s[1], s[3]])
}

/// Gradients of [`conv1d_forward`], like [`conv2d_backward`].
pub fn conv1d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    stride: usize,
    padding: usize,
    need: (bool, bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let dy2 = as_2d(dy, "dy")?;
    let (x2, w2) = (as_2d(x, "x")?, as_2d(w, "weight")?);
    let (dx, dw, db) = conv2d_backward(&x2, &w2, &dy2, (1, stride), (0, padding), need)?;
    let dx = dx.map(|t| t.reshape(x.shape())).transpose()?;
    let dw = dw.map(|t| t.reshape(w.shape())).transpose()?;
    Ok((dx, dw, db))
}

/// `conv1d(x [N, C, L], weight [O, C, k], bias [O]?)` with stride and zero padding.
pub fn conv1d(
    g: &mut Graph,
    x: Var,
    weight: Var,
    bias: Option<Var>,
    stride: usize,
    padding: usize,
) -> Result<Var> {
    let (xv, wv) = (g.value(x).clone(), g.value(weight).clone());
    let y = conv1d_forward(&xv, &wv, bias.map(|b| g.value(b)), stride, padding)?;
    super::flops::add_dot_products(y.numel(), wv.numel() / wv.shape()[0]);
    let need = (
        g.requires_grad(x),
        g.requires_grad(weight),
        bias.is_some_and(|b| g.requires_grad(b)),
    );
    let inputs: Vec<Var> = [x, weight].into_iter().chain(bias).collect();
    let has_bias = bias.is_some();
    Ok(g.op(y, &inputs, move |dy| {
        let (dx, dw, db) = conv1d_backward(&xv, &wv, dy, stride, padding, need)?;
        let mut grads = vec![dx, dw];
        if has_bias {
            grads.push(db);
        }
        Ok(grads)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::batchnorm::batchnorm_eval_forward_act;
    use crate::testing::{assert_devices_agree, assert_gradient, dot, random_f32, random_f64};

    /// The eval-BatchNorm epilogues tested: (affine, residual, relu).
    const BN_EPILOGUE_VARIANTS: [(bool, bool, bool); 4] = [
        (true, false, false),
        (true, false, true),
        (true, true, true),
        (false, true, false),
    ];

    /// The fused eval conv + BatchNorm (+ residual) (+ ReLU) gives bit for bit what the separate
    /// ops give, on every lowering (implicit GEMM, shifted, im2col, pointwise, strided), and the
    /// kernel devices (which fuse it into the conv kernel) agree with it.
    #[test]
    fn conv_bn_eval_epilogue_equals_the_separate_ops() {
        let dev = Device::Cpu;
        let t = |shape: &[usize], seed: u64, dev: &Device| {
            Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
        };
        // Plus batches of several chunks (implicit GEMM and im2col), so image indices cross chunks.
        let mut cases = geometries();
        cases.push(([9, 6, 16, 16], [5, 6, 3, 3], (1, 1), (1, 1)));
        cases.push(([20, 3, 8, 8], [4, 3, 3, 3], (1, 1), (1, 1)));
        for (i, (xs, ws, stride, padding)) in cases.into_iter().enumerate() {
            let o = ws[0];
            let (x, w) = (t(&xs, 70 + i as u64, &dev), t(&ws, 90 + i as u64, &dev));
            let running = RunningStats {
                mean: t(&[o], 3, &dev),
                var: Tensor::from_vec(&[o], (0..o).map(|k| 0.5 + k as f32 * 0.3).collect(), &dev)
                    .unwrap(),
                num_batches_tracked: None,
            };
            let (gamma, beta) = (t(&[o], 5, &dev), t(&[o], 6, &dev));
            let plain = conv2d_forward(&x, &w, None, stride, padding).unwrap();
            let res = t(plain.shape(), 7, &dev);
            for (affine, residual, relu) in BN_EPILOGUE_VARIANTS {
                let bn = BnEval {
                    affine: affine.then_some((&gamma, &beta)),
                    running: &running,
                    eps: 1e-5,
                };
                let r = residual.then_some(&res);
                let fused = conv2d_bn_eval_forward(&x, &w, stride, padding, bn, r, relu).unwrap();
                let want =
                    batchnorm_eval_forward_act(&plain, bn.affine, &running, 1e-5, relu, r).unwrap();
                assert_eq!(
                    fused.to_vec().unwrap(),
                    want.to_vec().unwrap(),
                    "{xs:?} {ws:?} affine={affine} residual={residual} relu={relu}"
                );
            }
        }
        let (xs, ws) = ([3, 6, 5, 16], [5, 6, 3, 3]);
        assert_devices_agree("conv+bn eval fused", 1e-4, 1e-5, |dev| {
            let (x, w) = (t(&xs, 1, dev), t(&ws, 2, dev));
            let running = RunningStats {
                mean: t(&[5], 3, dev),
                var: Tensor::full(&[5], 0.7, dev)?,
                num_batches_tracked: None,
            };
            let (gamma, beta) = (t(&[5], 4, dev), t(&[5], 5, dev));
            let res = t(&[3, 5, 5, 16], 6, dev);
            let bn = BnEval {
                affine: Some((&gamma, &beta)),
                running: &running,
                eps: 1e-5,
            };
            Ok(vec![conv2d_bn_eval_forward(
                &x,
                &w,
                (1, 1),
                (1, 1),
                bn,
                Some(&res),
                true,
            )?])
        });
    }

    /// x shape, weight shape, stride, padding.
    type Geometry = ([usize; 4], [usize; 4], (usize, usize), (usize, usize));

    /// Covering 1x1, 3x3 s1/s2, 5x5 p2, odd and non-square sizes, padding beyond k-1 (input
    /// gradient via col2im) and 1-D (height 1).
    fn geometries() -> Vec<Geometry> {
        vec![
            ([2, 3, 5, 4], [4, 3, 1, 1], (1, 1), (0, 0)),
            ([2, 3, 7, 6], [2, 3, 1, 1], (2, 2), (0, 0)),
            ([2, 3, 6, 5], [4, 3, 3, 3], (1, 1), (1, 1)),
            ([2, 2, 7, 8], [3, 2, 3, 3], (2, 2), (1, 1)),
            ([1, 2, 7, 6], [3, 2, 5, 5], (1, 1), (2, 2)),
            ([3, 3, 5, 7], [2, 3, 3, 2], (2, 1), (0, 1)),
            ([2, 2, 4, 5], [3, 2, 1, 1], (1, 1), (1, 1)),
            ([2, 1, 9, 9], [2, 1, 3, 3], (3, 3), (2, 0)),
            ([2, 4, 1, 11], [3, 4, 1, 3], (1, 1), (0, 1)),
            ([2, 3, 1, 10], [2, 3, 1, 3], (1, 2), (0, 1)),
            ([2, 3, 1, 7], [5, 3, 1, 1], (1, 1), (0, 0)),
            // Wide enough for the shifted lowering (padding columns <= 15% of the output width, kw·c >= 16).
            ([2, 6, 5, 16], [6, 6, 3, 3], (1, 1), (1, 1)),
            ([1, 3, 4, 16], [4, 3, 3, 3], (1, 1), (1, 1)),
            ([1, 9, 4, 17], [10, 9, 3, 3], (1, 1), (1, 1)),
            ([1, 4, 3, 30], [4, 4, 5, 5], (1, 1), (2, 2)),
            ([2, 6, 4, 18], [6, 6, 2, 3], (1, 1), (0, 1)),
            ([2, 6, 1, 21], [6, 6, 1, 3], (1, 1), (0, 1)),
            // 8x8 maps (im2col).
            ([2, 16, 8, 8], [8, 16, 3, 3], (1, 1), (1, 1)),
        ]
    }

    #[test]
    fn geometries_cover_every_lowering() {
        let lowerings: Vec<(Lowering, Lowering)> = geometries()
            .into_iter()
            .map(|(xs, ws, s, p)| {
                let g = geometry(xs, ws, s, p);
                (Window::of(&g).lowering, Window::data_grad(&g).lowering)
            })
            .collect();
        for want in [Lowering::Pointwise, Lowering::Shifted, Lowering::Im2col] {
            assert!(lowerings.iter().any(|l| l.0 == want), "forward {want:?}");
            assert!(
                lowerings.iter().any(|l| l.1 == want),
                "input gradient {want:?}"
            );
        }
    }

    #[test]
    fn fast_cpu_path_in_f32_matches_direct_loops() {
        // f32 takes the AVX transposes (f64 the scalar ones).
        for (xs, ws, s, p) in geometries() {
            let g = geometry(xs, ws, s, p);
            let x = random_f32(1, xs.iter().product());
            let w = random_f32(2, ws.iter().product());
            let dy = random_f32(4, g.out_shape().iter().product());
            let what = format!("f32 x {xs:?} w {ws:?} s {s:?} p {p:?}");
            let mut want = vec![0.0f32; dy.len()];
            conv2d_forward_direct(&g, &x, &w, None, &mut want);
            let (mut want_dx, mut want_dw) = (vec![0.0f32; x.len()], vec![0.0f32; w.len()]);
            conv2d_backward_direct(&g, &x, &w, &dy, Some(&mut want_dx), Some(&mut want_dw));
            let mut y = vec![f32::NAN; dy.len()];
            conv2d_forward_cpu(&g, &x, &w, None, &mut y);
            let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![f32::NAN; w.len()]);
            conv2d_backward_cpu(&g, &x, &w, &dy, Some(&mut dx), Some(&mut dw), None);
            crate::testing::assert_close(&format!("{what} y"), &y, &want, 1e-6, 1e-7);
            crate::testing::assert_close(&format!("{what} dx"), &dx, &want_dx, 1e-6, 1e-7);
            crate::testing::assert_close(&format!("{what} dw"), &dw, &want_dw, 1e-6, 1e-7);
        }
    }

    fn geometry(
        xs: [usize; 4],
        ws: [usize; 4],
        s: (usize, usize),
        p: (usize, usize),
    ) -> ConvGeometry {
        ConvGeometry::new(&xs, &ws, s, p).unwrap()
    }

    fn assert_near(what: &str, got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-11 * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    #[test]
    fn fast_cpu_path_matches_direct_loops() {
        for (xs, ws, s, p) in geometries() {
            let g = geometry(xs, ws, s, p);
            let x = random_f64(1, xs.iter().product());
            let w = random_f64(2, ws.iter().product());
            let b = random_f64(3, g.o);
            let dy = random_f64(4, g.out_shape().iter().product());
            let what = format!("x {xs:?} w {ws:?} s {s:?} p {p:?}");
            let mut want_y = vec![0.0; dy.len()];
            conv2d_forward_direct(&g, &x, &w, Some(&b), &mut want_y);
            let (mut want_dx, mut want_dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
            conv2d_backward_direct(&g, &x, &w, &dy, Some(&mut want_dx), Some(&mut want_dw));
            let mut want_db = vec![0.0; g.o];
            channel_sum_cpu(&dy, &mut want_db, g.n, g.o, g.pixels_out());
            // Default chunking, and one/two images per chunk (several chunks per weight-gradient group).
            for per in [None, Some(1), Some(2)] {
                let mut y = vec![f64::NAN; dy.len()];
                let (mut dx, mut dw, mut db) = (
                    vec![f64::NAN; x.len()],
                    vec![f64::NAN; w.len()],
                    vec![f64::NAN; g.o],
                );
                match per {
                    None => {
                        conv2d_forward_cpu(&g, &x, &w, Some(&b), &mut y);
                        conv2d_backward_cpu(
                            &g,
                            &x,
                            &w,
                            &dy,
                            Some(&mut dx),
                            Some(&mut dw),
                            Some(&mut db),
                        );
                    }
                    Some(per) => {
                        forward_chunked(&g, &x, &w, Some(&b), &mut y, per, None);
                        backward_chunked(&g, &x, &w, &dy, Some(&mut dx), Some(&mut dw), per);
                        db.copy_from_slice(&want_db);
                    }
                }
                assert_near(&format!("{what} {per:?} y"), &y, &want_y);
                assert_near(&format!("{what} {per:?} dx"), &dx, &want_dx);
                assert_near(&format!("{what} {per:?} dw"), &dw, &want_dw);
                assert_near(&format!("{what} {per:?} db"), &db, &want_db);
            }
            // Each gradient alone (the other skipped) gives the same values.
            let mut dw_only = vec![f64::NAN; w.len()];
            conv2d_backward_cpu(&g, &x, &w, &dy, None, Some(&mut dw_only), None);
            assert_near(&format!("{what} dw alone"), &dw_only, &want_dw);
            let mut dx_only = vec![f64::NAN; x.len()];
            conv2d_backward_cpu(&g, &x, &w, &dy, Some(&mut dx_only), None, None);
            assert_near(&format!("{what} dx alone"), &dx_only, &want_dx);
        }
    }

    #[test]
    fn weight_gradient_sums_many_chunks_in_groups() {
        // 40 images, one per chunk: 40 chunks in 14 groups of 3 (the last one short).
        let (xs, ws) = ([40, 2, 4, 3], [3, 2, 3, 3]);
        let g = geometry(xs, ws, (1, 1), (1, 1));
        let x = random_f64(5, xs.iter().product());
        let w = random_f64(6, ws.iter().product());
        let dy = random_f64(7, g.out_shape().iter().product());
        let (mut want_dx, mut want_dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        conv2d_backward_direct(&g, &x, &w, &dy, Some(&mut want_dx), Some(&mut want_dw));
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        backward_chunked(&g, &x, &w, &dy, Some(&mut dx), Some(&mut dw), 1);
        assert_near("dw", &dw, &want_dw);
        assert_near("dx", &dx, &want_dx);
    }

    #[test]
    fn implicit_weight_gradient_sums_multi_image_chunks_in_groups() {
        // f32 on a shifted window: the weight gradient read straight from CHW (AVX-512 CPUs);
        // 41 images, 3 per chunk: 14 chunks in 14 groups, the last chunk short.
        let (xs, ws) = ([41, 6, 4, 16], [5, 6, 3, 3]);
        let g = geometry(xs, ws, (1, 1), (1, 1));
        assert_eq!(Window::of(&g).lowering, Lowering::Shifted);
        let x = random_f32(5, xs.iter().product());
        let w = random_f32(6, ws.iter().product());
        let dy = random_f32(7, g.out_shape().iter().product());
        let (mut want_dx, mut want_dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        conv2d_backward_direct(&g, &x, &w, &dy, Some(&mut want_dx), Some(&mut want_dw));
        let (mut dx, mut dw) = (vec![f32::NAN; x.len()], vec![f32::NAN; w.len()]);
        backward_chunked(&g, &x, &w, &dy, Some(&mut dx), Some(&mut dw), 3);
        crate::testing::assert_close("dw", &dw, &want_dw, 1e-5, 1e-6);
        crate::testing::assert_close("dx", &dx, &want_dx, 1e-5, 1e-6);
        let mut dw_only = vec![f32::NAN; w.len()];
        backward_chunked(&g, &x, &w, &dy, None, Some(&mut dw_only), 3);
        assert_eq!(dw_only, dw, "dw alone equals dw with dx");
    }

    /// Finite differences of `sum(conv(x, w, b) * r)` against the fast backward, in f64.
    fn check_gradients(xs: [usize; 4], ws: [usize; 4], s: (usize, usize), p: (usize, usize)) {
        let g = geometry(xs, ws, s, p);
        let x = random_f64(11, xs.iter().product());
        let w = random_f64(12, ws.iter().product());
        let b = random_f64(13, g.o);
        let r = random_f64(14, g.out_shape().iter().product());
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = vec![0.0; r.len()];
            conv2d_forward_cpu(&g, x, w, Some(b), &mut y);
            dot(&y, &r)
        };
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; g.o]);
        conv2d_backward_cpu(&g, &x, &w, &r, Some(&mut dx), Some(&mut dw), Some(&mut db));
        let what = format!("x {xs:?} w {ws:?} s {s:?} p {p:?}");
        assert_gradient(&format!("{what} dx"), &|v| loss(v, &w, &b), &x, &dx, 1e-6);
        assert_gradient(&format!("{what} dw"), &|v| loss(&x, v, &b), &w, &dw, 1e-6);
        assert_gradient(&format!("{what} db"), &|v| loss(&x, &w, v), &b, &db, 1e-6);
    }

    #[test]
    fn gradients_match_finite_differences_2d() {
        check_gradients([2, 3, 4, 5], [2, 3, 1, 1], (1, 1), (0, 0));
        check_gradients([2, 2, 5, 5], [3, 2, 3, 3], (1, 1), (1, 1));
        check_gradients([2, 2, 7, 6], [3, 2, 3, 3], (2, 2), (1, 1));
        check_gradients([1, 2, 6, 7], [2, 2, 5, 5], (1, 1), (2, 2));
        check_gradients([2, 3, 5, 7], [2, 3, 3, 2], (2, 1), (0, 1));
        check_gradients([2, 6, 3, 16], [6, 6, 3, 3], (1, 1), (1, 1));
    }

    #[test]
    fn gradients_match_finite_differences_1d() {
        // Through the public conv1d shapes: [N, C, L] as [N, C, 1, L].
        check_gradients([2, 3, 1, 9], [4, 3, 1, 3], (1, 1), (0, 1));
        check_gradients([2, 3, 1, 9], [2, 3, 1, 3], (1, 2), (0, 1));
        check_gradients([2, 3, 1, 6], [2, 3, 1, 1], (1, 1), (0, 0));
        check_gradients([2, 6, 1, 20], [6, 6, 1, 3], (1, 1), (0, 1));
    }

    type Case = ([usize; 4], [usize; 4], (usize, usize), (usize, usize), bool);

    /// Shapes for the kernels: odd sizes, partial GEMM tiles (K or P above 64), with and without bias.
    fn device_cases() -> Vec<Case> {
        vec![
            ([2, 3, 7, 5], [4, 3, 3, 3], (1, 1), (1, 1), true),
            ([3, 5, 9, 8], [6, 5, 3, 3], (2, 2), (1, 1), false),
            ([2, 3, 6, 7], [5, 3, 1, 1], (1, 1), (0, 0), true),
            ([2, 4, 7, 7], [3, 4, 1, 1], (2, 2), (0, 0), false),
            ([1, 2, 9, 10], [3, 2, 5, 5], (1, 1), (2, 2), true),
            ([2, 2, 5, 6], [3, 2, 3, 2], (2, 1), (0, 2), true),
            ([2, 16, 1, 13], [7, 16, 1, 3], (1, 1), (0, 1), false),
            ([2, 6, 3, 16], [6, 6, 3, 3], (1, 1), (1, 1), true),
            // The implicit GEMM's partial tiles: O = 70 and 66 (two row tiles), 189 and 96
            // (image, pixel) columns, K = 63 and 30 over several 16-deep steps.
            ([3, 7, 9, 7], [70, 7, 3, 3], (1, 1), (1, 1), true),
            ([2, 5, 11, 9], [66, 5, 3, 2], (2, 1), (1, 0), false),
            // The 16- and 32-row tiles past their columns: O = 9 over 286 (two 256-column
            // tiles), O = 20 over 144 (two 128-column tiles).
            ([2, 3, 13, 11], [9, 3, 3, 3], (1, 1), (1, 1), true),
            ([2, 5, 9, 8], [20, 5, 3, 3], (1, 1), (1, 1), false),
        ]
    }

    /// Every geometry of [`geometries`] and of [`device_cases`] (the partial-tile cases).
    fn kernel_geometries() -> Vec<Geometry> {
        let mut cases = geometries();
        cases.extend(
            device_cases()
                .into_iter()
                .map(|(x, w, s, p, _)| (x, w, s, p)),
        );
        cases
    }

    /// The input gradient against the CPU on every geometry and the partial-tile cases (stride 1:
    /// the implicit GEMM over dy; otherwise GEMM + col2im), in one launch and one image per launch.
    #[test]
    fn input_gradient_kernels_match_cpu_on_every_geometry() {
        for (i, (xs, ws, s, p)) in kernel_geometries().into_iter().enumerate() {
            let g = geometry(xs, ws, s, p);
            let what = format!("input gradient x {xs:?} w {ws:?} s {s:?} p {p:?}");
            let seed = 300 + 10 * i as u64;
            assert_devices_agree(&what, 1e-5, 1e-6, |dev| {
                let t = |shape: &[usize], k: u64| {
                    Tensor::from_vec(shape, random_f32(seed + k, shape.iter().product()), dev)
                };
                let (x, w, dy) = (t(&xs, 0)?, t(&ws, 1)?, t(&g.out_shape(), 2)?);
                let dx = conv2d_backward(&x, &w, &dy, s, p, (true, false, false))?.0;
                let chunked = match dev {
                    Device::Cpu => dx.clone().unwrap(),
                    Device::Gpu(gpu) => backward_data_gpu(gpu, &g, &w, &dy, 1)?,
                };
                Ok(vec![dx.unwrap(), chunked])
            });
        }
    }

    /// The forward kernels (`conv2d_implicit_*`, all three tiles) against the CPU on every geometry, plus its
    /// partial-tile cases: plain, with bias, and each eval BatchNorm (+ residual) (+ ReLU)
    /// epilogue — in one launch, and in launches of two images (residual and output offsets).
    #[test]
    fn implicit_forward_and_epilogues_match_cpu_on_every_geometry() {
        for (i, (xs, ws, s, p)) in kernel_geometries().into_iter().enumerate() {
            let o = ws[0];
            let g = geometry(xs, ws, s, p);
            let what = format!("implicit conv x {xs:?} w {ws:?} s {s:?} p {p:?}");
            let seed = 100 + 10 * i as u64;
            assert_devices_agree(&what, 1e-5, 1e-6, |dev| {
                let t = |shape: &[usize], k: u64| {
                    Tensor::from_vec(shape, random_f32(seed + k, shape.iter().product()), dev)
                };
                let (x, w, b) = (t(&xs, 0)?, t(&ws, 1)?, t(&[o], 2)?);
                let running = RunningStats {
                    mean: t(&[o], 3)?,
                    var: Tensor::from_vec(
                        &[o],
                        (0..o).map(|k| 0.5 + k as f32 * 0.3).collect(),
                        dev,
                    )?,
                    num_batches_tracked: None,
                };
                let (gamma, beta, res) = (t(&[o], 4)?, t(&[o], 5)?, t(&g.out_shape(), 6)?);
                let mut out = vec![
                    conv2d_forward(&x, &w, None, s, p)?,
                    conv2d_forward(&x, &w, Some(&b), s, p)?,
                ];
                for (affine, residual, relu) in BN_EPILOGUE_VARIANTS {
                    let bn = BnEval {
                        affine: affine.then_some((&gamma, &beta)),
                        running: &running,
                        eps: 1e-5,
                    };
                    let r = residual.then_some(&res);
                    out.push(conv2d_bn_eval_forward(&x, &w, s, p, bn, r, relu)?);
                    // Launches of two images: the cpu repeats its answer.
                    out.push(match dev {
                        Device::Cpu => conv2d_bn_eval_forward(&x, &w, s, p, bn, r, relu)?,
                        Device::Gpu(gpu) => {
                            let e = GpuEpilogue::bn_eval(gpu, bn, r, relu);
                            forward_gpu_epilogue(gpu, &g, &x, &w, &e, 2)?
                        }
                    });
                }
                Ok(out)
            });
        }
    }

    /// The weight-gradient kernels (`conv2d_weight_grad_o16/o32/_f32`) against the CPU on every
    /// geometry and device case, plus O = 20 and 40 (the 32- and 64-row tiles): in one launch
    /// (the default slicing), in launches of one and two images, and with 3 blocks' worth of
    /// slices per launch (slices of several 16-column steps, the last one partial).
    #[test]
    fn weight_gradient_kernels_match_cpu_on_every_geometry() {
        let mut cases = kernel_geometries();
        cases.push(([3, 5, 6, 7], [20, 5, 3, 3], (1, 1), (1, 1)));
        cases.push(([2, 3, 7, 9], [40, 3, 2, 3], (2, 1), (1, 1)));
        let mut long_uneven = 0;
        for (i, (xs, ws, s, p)) in cases.into_iter().enumerate() {
            let g = geometry(xs, ws, s, p);
            let (_, tile_o, _) = weight_grad_kernel(g.o);
            let tiles = g.o.div_ceil(tile_o) * g.k().div_ceil(WG_TILE_K);
            let cols = g.n * g.pixels_out();
            let (slice, slices) = weight_grad_slices(tiles, cols, 65_535, 3);
            assert!(slice % WG_STEP == 0 && (slices - 1) * slice < cols && slices * slice >= cols);
            if slices > 1 && slice > WG_STEP && cols % slice != 0 {
                long_uneven += 1;
            }
            let what = format!("weight gradient x {xs:?} w {ws:?} s {s:?} p {p:?}");
            let seed = 500 + 10 * i as u64;
            assert_devices_agree(&what, 1e-5, 1e-6, |dev| {
                let t = |shape: &[usize], k: u64| {
                    Tensor::from_vec(shape, random_f32(seed + k, shape.iter().product()), dev)
                };
                let (x, w, dy) = (t(&xs, 0)?, t(&ws, 1)?, t(&g.out_shape(), 2)?);
                let dw = conv2d_backward(&x, &w, &dy, s, p, (false, true, false))?.1;
                let dw = dw.unwrap();
                Ok(match dev {
                    Device::Cpu => vec![dw.clone(), dw.clone(), dw.clone(), dw],
                    Device::Gpu(gpu) => vec![
                        dw,
                        backward_weight_gpu(gpu, &g, &x, &dy, 1)?,
                        backward_weight_gpu(gpu, &g, &x, &dy, 2)?,
                        backward_weight_gpu_sliced(gpu, &g, &x, &dy, g.n, 3)?,
                    ],
                })
            });
        }
        assert!(
            long_uneven >= 5,
            "{long_uneven} cases with long, uneven slices"
        );
    }

    #[test]
    fn kernels_match_cpu() {
        for (xs, ws, s, p, bias) in device_cases() {
            let what = format!("conv2d x {xs:?} w {ws:?} s {s:?} p {p:?} bias {bias}");
            let o = ws[0];
            let g = geometry(xs, ws, s, p);
            let dy = random_f32(24, g.out_shape().iter().product());
            assert_devices_agree(&what, 1e-5, 1e-6, |dev| {
                let x = Tensor::from_vec(&xs, random_f32(21, xs.iter().product()), dev)?;
                let w = Tensor::from_vec(&ws, random_f32(22, ws.iter().product()), dev)?;
                let b = Tensor::from_vec(&[o], random_f32(23, o), dev)?;
                let dy = Tensor::from_slice(&g.out_shape(), &dy, dev)?;
                let y = conv2d_forward(&x, &w, bias.then_some(&b), s, p)?;
                let (dx, dw, db) = conv2d_backward(&x, &w, &dy, s, p, (true, true, bias))?;
                let mut out = vec![y, dx.unwrap(), dw.unwrap()];
                out.extend(db);
                Ok(out)
            });
        }
    }

    #[test]
    fn gpu_chunk_sizes_respect_the_memory_caps() {
        let g = geometry([1000, 3, 40, 40], [4, 3, 3, 3], (1, 1), (1, 1));
        assert_eq!(gpu_chunk(&g), (1 << 25) / (27 * 1600));
        let g = geometry([5, 1024, 4, 4], [2048, 1024, 3, 3], (1, 1), (1, 1));
        assert_eq!(
            gpu_chunk(&g),
            1,
            "2048x9216 weight partials allow one image per chunk"
        );
    }

    #[test]
    fn kernels_in_several_chunks_match_cpu() {
        for (xs, ws, s, p, bias) in device_cases().into_iter().take(4) {
            let what = format!("chunked conv2d x {xs:?} w {ws:?} s {s:?} p {p:?}");
            let o = ws[0];
            let g = geometry(xs, ws, s, p);
            assert_devices_agree(&what, 1e-5, 1e-6, |dev| {
                let x = Tensor::from_vec(&xs, random_f32(51, xs.iter().product()), dev)?;
                let w = Tensor::from_vec(&ws, random_f32(52, ws.iter().product()), dev)?;
                let b = Tensor::from_vec(&[o], random_f32(53, o), dev)?;
                let dy = random_f32(54, g.out_shape().iter().product());
                let dy = Tensor::from_vec(&g.out_shape(), dy, dev)?;
                let b = bias.then_some(&b);
                match dev {
                    Device::Cpu => {
                        let y = conv2d_forward(&x, &w, b, s, p)?;
                        let (dx, dw, _) = conv2d_backward(&x, &w, &dy, s, p, (true, true, false))?;
                        Ok(vec![y, dx.unwrap(), dw.unwrap()])
                    }
                    Device::Gpu(gpu) => Ok(vec![
                        forward_gpu(gpu, &g, &x, &w, b, 1)?,
                        backward_data_gpu(gpu, &g, &w, &dy, 1)?,
                        backward_weight_gpu(gpu, &g, &x, &dy, 1)?,
                    ]),
                }
            });
        }
    }

    #[test]
    fn autograd_skips_the_data_gradient_and_matches_tensor_backward() {
        let dev = Device::Cpu;
        let (xs, ws) = ([2, 3, 6, 6], [4, 3, 3, 3]);
        let x = Tensor::from_vec(&xs, random_f32(31, 216), &dev).unwrap();
        let w = Tensor::from_vec(&ws, random_f32(32, 108), &dev).unwrap();
        let b = Tensor::from_vec(&[4], random_f32(33, 4), &dev).unwrap();
        let mut g = Graph::new(&dev);
        let (xv, wv, bv) = (g.constant(x.clone()), g.leaf(w.clone()), g.leaf(b.clone()));
        let y = conv2d(&mut g, xv, wv, Some(bv), (2, 2), (1, 1)).unwrap();
        let seed = Tensor::from_vec(&[2, 4, 3, 3], random_f32(34, 72), &dev).unwrap();
        g.backward_with(y, Some(seed.clone())).unwrap();
        assert!(g.grad(xv).is_none(), "no gradient for a constant input");
        let (dx, dw, db) =
            conv2d_backward(&x, &w, &seed, (2, 2), (1, 1), (false, true, true)).unwrap();
        assert!(dx.is_none());
        assert_eq!(
            g.grad(wv).unwrap().to_vec().unwrap(),
            dw.unwrap().to_vec().unwrap()
        );
        assert_eq!(
            g.grad(bv).unwrap().to_vec().unwrap(),
            db.unwrap().to_vec().unwrap()
        );
    }

    #[test]
    fn conv1d_is_conv2d_of_height_one() {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(&[2, 3, 10], random_f32(41, 60), &dev).unwrap();
        let w = Tensor::from_vec(&[4, 3, 3], random_f32(42, 36), &dev).unwrap();
        let b = Tensor::from_vec(&[4], random_f32(43, 4), &dev).unwrap();
        let y = conv1d_forward(&x, &w, Some(&b), 2, 1).unwrap();
        assert_eq!(y.shape(), [2, 4, 5]);
        let g = geometry([2, 3, 1, 10], [4, 3, 1, 3], (1, 2), (0, 1));
        let mut want = vec![0.0f32; 40];
        let (xh, wh, bh) = (
            x.to_vec().unwrap(),
            w.to_vec().unwrap(),
            b.to_vec().unwrap(),
        );
        conv2d_forward_direct(&g, &xh, &wh, Some(&bh), &mut want);
        crate::testing::assert_close("conv1d", &y.to_vec().unwrap(), &want, 1e-6, 1e-7);
        let dy = Tensor::from_vec(&[2, 4, 5], random_f32(44, 40), &dev).unwrap();
        let (dx, dw, db) = conv1d_backward(&x, &w, &dy, 2, 1, (true, true, true)).unwrap();
        assert_eq!(dx.unwrap().shape(), [2, 3, 10]);
        assert_eq!(dw.unwrap().shape(), [4, 3, 3]);
        assert_eq!(db.unwrap().shape(), [4]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let t = |s: &[usize]| Tensor::zeros(s, &dev).unwrap();
        let x = t(&[1, 3, 5, 5]);
        assert!(conv2d_forward(&x, &t(&[2, 4, 3, 3]), None, (1, 1), (0, 0)).is_err());
        assert!(conv2d_forward(&x, &t(&[2, 3, 7, 7]), None, (1, 1), (0, 0)).is_err());
        assert!(conv2d_forward(&x, &t(&[2, 3, 3, 3]), None, (0, 1), (0, 0)).is_err());
        assert!(conv2d_forward(&x, &t(&[2, 3, 3, 3]), Some(&t(&[3])), (1, 1), (0, 0)).is_err());
        assert!(conv2d_forward(&t(&[3, 5, 5]), &t(&[2, 3, 3, 3]), None, (1, 1), (0, 0)).is_err());
        assert!(conv1d_forward(&x, &t(&[2, 3, 3]), None, 1, 0).is_err());
        let dy = t(&[1, 2, 4, 4]);
        assert!(conv2d_backward(
            &x,
            &t(&[2, 3, 3, 3]),
            &dy,
            (1, 1),
            (0, 0),
            (true, true, true)
        )
        .is_err());
    }
}
