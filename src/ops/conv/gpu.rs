//! The kernel devices (cuda and emu): the forward is one implicit GEMM per chunk of images
//! (`conv2d_implicit_*`: `gemm_f32`'s tiling with the im2col panel read from the image as the
//! tiles are staged, never written; a 16-, 32- or 64-row block tile to fit the output channels;
//! bias, or eval BatchNorm + residual + ReLU, applied as the output is stored). The input
//! gradient of a stride-1 conv is the same implicit GEMM over `dy` with the weight read flipped
//! and transposed (`conv2d_implicit_*flip_f32`); other strides use batched `gemm_f32` + col2im.
//! The weight gradient: an implicit GEMM over the reduction (image, pixel), split into slices
//! (`conv2d_weight_grad_*`: col gathered from x, one partial dW per slice), the partials summed
//! in slice order (`conv_sum_partials_f32`). Kernels: `kernels/conv.cu`, each taking one
//! `#[repr(C)]` struct by value: its device addresses, then [`ConvParams`] (or
//! [`PartialSumParams`]), mirrored field for field there.

use super::dispatch::BnEval;
use super::ConvGeometry;
use crate::device::{Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::matmul::{gemm_launch, GemmParams};
use crate::tensor::Tensor;
use bytemuck::Zeroable;

/// Mirrors `ConvParams` in `kernels/conv.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ConvParams {
    /// Images in this launch.
    pub n: i32,
    /// Input channels.
    pub c: i32,
    /// Input height.
    pub h: i32,
    /// Input width.
    pub w: i32,
    /// Kernel height.
    pub kh: i32,
    /// Kernel width.
    pub kw: i32,
    /// Vertical stride.
    pub sh: i32,
    /// Horizontal stride.
    pub sw: i32,
    /// Vertical zero padding.
    pub ph: i32,
    /// Horizontal zero padding.
    pub pw: i32,
    /// Output height.
    pub oh: i32,
    /// Output width.
    pub ow: i32,
    /// Output channels (`conv2d_implicit_*`).
    pub o: i32,
    /// `conv2d_implicit_*`'s epilogue: ReLU last.
    pub relu: i32,
    /// `conv2d_implicit_*`'s epilogue: the BatchNorm's epsilon.
    pub eps: f32,
    /// Weight gradients (`conv2d_weight_grad_*`, `conv2d_tc_weight_grad_*`): reduction columns
    /// (image, pixel) per block.
    pub slice: i32,
}

/// Mirrors `PartialSumParams` in `kernels/conv.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PartialSumParams {
    /// Partial sums to add, in order.
    pub parts: i32,
    /// Elements of each partial sum.
    pub len: i32,
    /// 1: add the sum to the output, 0: overwrite it.
    pub accumulate: i32,
    /// Keeps the size a multiple of 8, so that the launch struct (`SumPartialsArgs`) has no
    /// padding.
    pub pad: i32,
}

/// Mirrors `Col2imArgs` in `kernels/conv.cu`: `col2im_f32`'s arguments.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Col2imArgs {
    /// `[n, K, P]` column gradients.
    pub dcol: u64,
    /// `[n, c, h, w]` input gradient, written.
    pub dx: u64,
    /// The launch's geometry.
    pub p: ConvParams,
}

/// Mirrors `SumPartialsArgs` in `kernels/conv.cu`: `conv_sum_partials_f32`'s arguments.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct SumPartialsArgs {
    /// `parts` partial results of `len` elements each.
    pub partials: u64,
    /// `len` elements, written (or added to).
    pub out: u64,
    /// Counts and mode.
    pub p: PartialSumParams,
}

/// Mirrors `ImplicitArgs` in `kernels/conv.cu`: the arguments of every `conv2d_implicit_*`
/// kernel. The epilogue's addresses are 0 when absent.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct ImplicitArgs {
    /// The input (`dy` in the `*flip*` kernels).
    pub x: u64,
    /// The weight (read flipped and transposed in the `*flip*` kernels).
    pub wt: u64,
    /// Bias per output channel.
    pub bias: u64,
    /// Eval BatchNorm: running mean per output channel (0: no BatchNorm).
    pub bn_mean: u64,
    /// Eval BatchNorm: running variance per output channel.
    pub bn_var: u64,
    /// Eval BatchNorm: gamma per output channel (0: not affine).
    pub bn_gamma: u64,
    /// Eval BatchNorm: beta per output channel.
    pub bn_beta: u64,
    /// Added before the ReLU, shaped like the output.
    pub residual: u64,
    /// The output, written.
    pub y: u64,
    /// The launch's geometry and epilogue flags.
    pub p: ConvParams,
}

/// Mirrors `WeightGradArgs` in `kernels/conv.cu`: the arguments of every `conv2d_weight_grad_*`
/// kernel.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct WeightGradArgs {
    /// The launch's images.
    pub x: u64,
    /// Their output gradient.
    pub dy: u64,
    /// One partial dW per reduction slice, written.
    pub partials: u64,
    /// The launch's geometry and slice.
    pub p: ConvParams,
}

/// Launches `kernel` with its argument struct `args`.
fn launch<A: bytemuck::Pod>(gpu: &Gpu, kernel: &str, cfg: LaunchCfg, args: &A) -> Result<()> {
    gpu.launch(kernel, cfg, KernelArgs::new().value(args))
}

impl ConvGeometry {
    /// The kernels' parameters for a launch over `n` images (epilogue and slice unset); also
    /// the tensor-core conv kernels'.
    pub(crate) fn params(&self, n: usize) -> Result<ConvParams> {
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

/// Images per GPU launch of the input gradient of strided convs, so the dcol buffer stays below
/// 2^25 elements (128 MiB) and the O·K products below 2^24.
pub(super) fn gpu_chunk(g: &ConvGeometry) -> usize {
    let col = (g.k() * g.pixels_out()).max(1);
    let part = (g.o * g.k()).max(1);
    ((1usize << 25) / col)
        .min((1usize << 24) / part)
        .clamp(1, g.n.max(1))
        .min(65_535)
}

/// Images per forward launch: the implicit GEMM indexes its `images·OH·OW` columns with 32-bit
/// ints (and needs no scratch).
pub(super) fn gpu_forward_chunk(g: &ConvGeometry) -> usize {
    (i32::MAX as usize / g.pixels_out().max(1)).clamp(1, g.n.max(1))
}

const F32: u64 = std::mem::size_of::<f32>() as u64;

/// Device addresses of what `conv2d_implicit_*` applies as it stores the output, 0 = absent.
#[derive(Clone, Copy, Default)]
pub(super) struct GpuEpilogue {
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
    pub(super) fn bn_eval(gpu: &Gpu, bn: BnEval, residual: Option<&Tensor>, relu: bool) -> Self {
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

    /// The `conv2d_implicit_*` arguments for the whole batch: the device addresses of `x`, `w`
    /// and `y`, this epilogue's, and its flags (the geometry is set per launch).
    fn args(&self, x: u64, wt: u64, y: u64) -> ImplicitArgs {
        ImplicitArgs {
            x,
            wt,
            bias: self.bias,
            bn_mean: self.mean,
            bn_var: self.var,
            bn_gamma: self.gamma,
            bn_beta: self.beta,
            residual: self.residual,
            y,
            p: ConvParams {
                relu: self.relu as i32,
                eps: self.eps,
                ..ConvParams::zeroed()
            },
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

/// `y = conv2d(x, w) (+ b)`: the implicit GEMM, `chunk` images per launch.
pub(super) fn forward_gpu(
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
pub(super) fn forward_gpu_epilogue(
    gpu: &Gpu,
    g: &ConvGeometry,
    x: &Tensor,
    w: &Tensor,
    epilogue: &GpuEpilogue,
    chunk: usize,
) -> Result<Tensor> {
    let mut y = Tensor::zeros(&g.out_shape(), x.device())?;
    let (xa, wa) = (gpu.addr(x.buffer()), gpu.addr(w.buffer()));
    let ya = gpu.addr_mut(y.try_buffer_mut()?);
    launch_implicit(gpu, g, &epilogue.args(xa, wa, ya), false, chunk)?;
    Ok(y)
}

/// `y = epilogue(conv2d(x, w))` for `batch`, the arguments of the whole batch (`y` all written),
/// `chunk` images per `conv2d_implicit_*` launch. `flipped`: `w` is the `[g.c, g.o, kh, kw]`
/// weight of the conv whose input gradient this is, read flipped and transposed.
fn launch_implicit(
    gpu: &Gpu,
    g: &ConvGeometry,
    batch: &ImplicitArgs,
    flipped: bool,
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
            relu: batch.p.relu,
            eps: batch.p.eps,
            ..g.params(images)?
        };
        let cols = images * pout;
        if cols > i32::MAX as usize {
            return Err(Error::Shape(format!(
                "conv2d: {images} images of {pout} output pixels exceed the kernel's 32-bit columns"
            )));
        }
        let args = ImplicitArgs {
            x: batch.x + (n0 * g.c * g.pixels_in()) as u64 * F32,
            residual: out_at(batch.residual, n0),
            y: out_at(batch.y, n0),
            p,
            ..*batch
        };
        let grid = (cols.div_ceil(tile_cols) as u32, row_tiles as u32, 1);
        let cfg = LaunchCfg::new(grid, (CONV_THREADS, 1, 1));
        launch(gpu, kernel, cfg, &args)?;
    }
    Ok(())
}

/// The input and weight gradients of [`super::conv2d_backward`] on a kernel device, each only
/// when asked for.
pub(super) fn backward_gpu(
    gpu: &Gpu,
    g: &ConvGeometry,
    (x, w, dy): (&Tensor, &Tensor, &Tensor),
    (need_dx, need_dw): (bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dx = if need_dx {
        let chunk = match g.data_grad_is_conv() {
            true => gpu_forward_chunk(g).min(i32::MAX as usize / g.pixels_in().max(1)),
            false => gpu_chunk(g),
        };
        Some(backward_data_gpu(gpu, g, w, dy, chunk)?)
    } else {
        None
    };
    let dw = if need_dw {
        // No col buffer: the whole batch per launch, within the kernel's own limit.
        Some(backward_weight_gpu(gpu, g, x, dy, g.n)?)
    } else {
        None
    };
    Ok((dx, dw))
}

/// Stride 1 (padding below the kernel size): `dx = conv2d(dy, flipped Wᵀ)` by the implicit GEMM.
/// Otherwise `dcol_n = Wᵀ·dy_n` (batched GEMM), folded back by col2im. `chunk` images per launch.
pub(super) fn backward_data_gpu(
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
    let dxa = gpu.addr_mut(dx.try_buffer_mut()?);
    if let Some(gd) = g.data_grad() {
        let batch = GpuEpilogue::default().args(dya, wa, dxa);
        launch_implicit(gpu, &gd, &batch, true, chunk)?;
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
            let args = Col2imArgs {
                dcol: target,
                dx: dx0,
                p: g.params(images)?,
            };
            let cfg = LaunchCfg::for_elements(images * g.c * pin);
            launch(gpu, "col2im_f32", cfg, &args)?;
        }
    }
    Ok(dx)
}

/// Blocks a weight-gradient launch aims for: tiles × slices of at least this many.
const WG_TARGET_BLOCKS: usize = 512;
/// Reduction columns per step of `conv2d_weight_grad_*` (a slice is a multiple).
pub(super) const WG_STEP: usize = 16;
/// Output columns (K) of a weight-gradient tile.
pub(super) const WG_TILE_K: usize = 64;

/// The `conv2d_weight_grad_*` kernel for `o` output channels, its tile height and its threads:
/// 16 or 32 rows when that holds all of them (no empty rows for O = 16 or 32), else 64. The
/// 16-row tile runs 64 threads of 4x4 outputs (256 threads of 1x4 were bound by shared-memory
/// loads).
pub(super) fn weight_grad_kernel(o: usize) -> (&'static str, usize, u32) {
    match o {
        0..=16 => ("conv2d_weight_grad_o16_f32", 16, 64),
        17..=32 => ("conv2d_weight_grad_o32_f32", 32, 256),
        _ => ("conv2d_weight_grad_f32", 64, 256),
    }
}

/// `(slice, slices)`: the reduction of `cols` (image, pixel) columns split into `slices` runs of
/// `slice` columns (a multiple of 16, the last run shorter) so that `tiles × slices` reaches
/// [`WG_TARGET_BLOCKS`], with at most `max_slices` (the partials' budget).
pub(super) fn weight_grad_slices(
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
pub(super) fn backward_weight_gpu(
    gpu: &Gpu,
    g: &ConvGeometry,
    x: &Tensor,
    dy: &Tensor,
    chunk: usize,
) -> Result<Tensor> {
    backward_weight_gpu_sliced(gpu, g, x, dy, chunk, WG_TARGET_BLOCKS)
}

/// [`backward_weight_gpu`] aiming for `target_blocks` blocks per launch (tests: long slices).
pub(super) fn backward_weight_gpu_sliced(
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
    let dwa = gpu.addr_mut(dw.try_buffer_mut()?);
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
        let args = WeightGradArgs {
            x: xa + (n0 * g.c * pin) as u64 * F32,
            dy: dya + (n0 * g.o * pout) as u64 * F32,
            partials: pa,
            p: ConvParams {
                slice: slice as i32,
                ..g.params(images)?
            },
        };
        let grid = (col_tiles as u32, row_tiles as u32, slices as u32);
        launch(gpu, kernel, LaunchCfg::new(grid, (threads, 1, 1)), &args)?;
        sum_partials(gpu, pa, dwa, slices, g.o * k, n0 > 0)?;
    }
    Ok(dw)
}

/// `out (+)= Σ_s partials[s]` over `parts` partial results of `len` elements each, added in
/// slice order (`conv_sum_partials_f32`); `accumulate` adds to `out` instead of overwriting it.
/// Shared with the tensor-core weight gradient.
pub(crate) fn sum_partials(
    gpu: &Gpu,
    partials: u64,
    out: u64,
    parts: usize,
    len: usize,
    accumulate: bool,
) -> Result<()> {
    let count = |what: &str, v: usize| {
        i32::try_from(v).map_err(|_| {
            Error::Shape(format!(
                "conv_sum_partials: {what} = {v} exceeds the kernel's 32-bit range"
            ))
        })
    };
    let sum = SumPartialsArgs {
        partials,
        out,
        p: PartialSumParams {
            parts: count("parts", parts)?,
            len: count("len", len)?,
            accumulate: accumulate as i32,
            pad: 0,
        },
    };
    launch(
        gpu,
        "conv_sum_partials_f32",
        LaunchCfg::for_elements(len),
        &sum,
    )
}
