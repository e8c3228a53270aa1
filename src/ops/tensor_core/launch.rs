//! Launches of the tensor-core kernels on a kernel device (cuda, emu): grids, chunks of images
//! that keep the kernels' 32-bit column indices, and the weight gradient's reduction slices.

use super::kernel_suffix;
use crate::device::{Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::conv::{sum_partials, ConvGeometry, ConvParams};
use crate::ops::matmul::GemmParams;
use crate::precision::Precision;
use crate::tensor::Tensor;

/// Block tile (`TC_BM` = `TC_BN` in `kernels/wmma_tile.cuh`) and threads per block.
const TILE: usize = 64;
const THREADS: u32 = 128;
/// The weight gradient's slices are whole k steps of every precision (tf32 16, bf16/fp16 32).
const SLICE_STEP: usize = 32;
/// Blocks a weight-gradient launch aims for (tiles × slices), to fill the GPU.
const WG_TARGET_BLOCKS: usize = 512;
/// At most this many partial-dW elements (64 MiB), as the fp32 weight gradient allows itself.
const MAX_PARTIALS: usize = 1 << 24;
/// Grid y and z limit.
const GRID_YZ: usize = 65_535;
const F32: u64 = std::mem::size_of::<f32>() as u64;

fn tiles(v: usize) -> usize {
    v.div_ceil(TILE)
}

/// `gemm_tc_<precision>` on raw device addresses, [`GemmParams`]' contract for `batch` elements
/// (the caller guarantees the buffers behind the addresses cover them).
pub fn gemm_launch(
    g: &Gpu,
    precision: Precision,
    a: u64,
    b: u64,
    c: u64,
    p: &GemmParams,
    batch: usize,
) -> Result<()> {
    let kernel = format!("gemm_tc_{}", kernel_suffix(precision)?);
    if p.m <= 0 || p.n <= 0 || batch == 0 {
        return Ok(());
    }
    let (gx, gy) = (tiles(p.n as usize), tiles(p.m as usize));
    if gy > GRID_YZ || batch > GRID_YZ {
        return Err(Error::Shape(format!(
            "tensor-core gemm: m = {} and batch = {batch} must stay below {} and {}",
            p.m,
            GRID_YZ * TILE + 1,
            GRID_YZ + 1
        )));
    }
    let mut args = KernelArgs::new();
    args.ptr(a).ptr(b).ptr(c).value(p);
    g.launch(
        &kernel,
        LaunchCfg::new((gx as u32, gy as u32, batch as u32), (THREADS, 1, 1)),
        &mut args,
    )
}

/// Whether the conv kernels take `g`: its channel counts within the grid's y, and the indices the
/// kernels form in 32 bits (the GEMM depths C·kh·kw and O·kh·kw, the weight, one image's pixels
/// with a slice's spare room) in range. The dispatch rounds and runs the fp32 op otherwise.
pub(super) fn conv_fits(g: &ConvGeometry) -> bool {
    let fits = |v: Option<usize>| v.is_some_and(|v| v <= i32::MAX as usize);
    let taps = g.kh.checked_mul(g.kw);
    tiles(g.o) <= GRID_YZ
        && tiles(g.c) <= GRID_YZ
        && fits(taps.and_then(|t| t.checked_mul(g.c)))
        && fits(taps.and_then(|t| t.checked_mul(g.o)))
        && fits(taps.and_then(|t| t.checked_mul(g.c)?.checked_mul(g.o)))
        && fits(g.pixels_in().checked_add(1 << 20))
        && fits(g.pixels_out().checked_add(1 << 20))
}

/// Images per launch such that `images · per_image` GEMM columns (with `margin` spare) fit an i32.
fn chunk(what: &str, n: usize, per_image: usize, margin: usize) -> Result<usize> {
    let fit = (i32::MAX as usize - margin) / per_image.max(1);
    if fit == 0 {
        return Err(Error::Shape(format!(
            "tensor-core conv2d: one image's {per_image} {what} exceed the kernels' 32-bit columns"
        )));
    }
    Ok(fit.min(n.max(1)))
}

/// Rows of the GEMM tile grid (`rows` output rows) as a grid y, within CUDA's limit.
fn grid_rows(what: &str, rows: usize) -> Result<u32> {
    let t = tiles(rows);
    if t > GRID_YZ {
        return Err(Error::Shape(format!(
            "tensor-core conv2d: {rows} {what} exceed the kernel's grid ({} at most)",
            GRID_YZ * TILE
        )));
    }
    Ok(t as u32)
}

/// `y = conv2d(x, w) (+ b)` by `conv2d_tc_forward_*`, in chunks of images.
pub(super) fn conv_forward(
    gpu: &Gpu,
    precision: Precision,
    g: &ConvGeometry,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
) -> Result<Tensor> {
    let kernel = format!("conv2d_tc_forward_{}", kernel_suffix(precision)?);
    let mut y = Tensor::zeros(&g.out_shape(), x.device())?;
    let pout = g.pixels_out();
    let rows = grid_rows("output channels", g.o)?;
    let per_launch = chunk("output pixels", g.n, pout, 0)?;
    let (xa, wa) = (gpu.addr(x.buffer()), gpu.addr(w.buffer()));
    let ba = b.map_or(0, |b| gpu.addr(b.buffer()));
    let ya = gpu.addr_mut(y.try_buffer_mut()?);
    for n0 in (0..g.n).step_by(per_launch) {
        let images = per_launch.min(g.n - n0);
        let p = g.params(images)?;
        let mut args = KernelArgs::new();
        args.ptr(xa + (n0 * g.c * g.pixels_in()) as u64 * F32)
            .ptr(wa)
            .ptr(ba)
            .ptr(ya + (n0 * g.o * pout) as u64 * F32)
            .value(&p);
        let grid = (tiles(images * pout) as u32, rows, 1);
        gpu.launch(&kernel, LaunchCfg::new(grid, (THREADS, 1, 1)), &mut args)?;
    }
    Ok(y)
}

/// `dx` of `y = conv2d(x, w)` by `conv2d_tc_data_grad_*`, in chunks of images.
pub(super) fn conv_backward_data(
    gpu: &Gpu,
    precision: Precision,
    g: &ConvGeometry,
    w: &Tensor,
    dy: &Tensor,
) -> Result<Tensor> {
    let kernel = format!("conv2d_tc_data_grad_{}", kernel_suffix(precision)?);
    let mut dx = Tensor::zeros(&[g.n, g.c, g.h, g.w], dy.device())?;
    let (pin, pout) = (g.pixels_in(), g.pixels_out());
    let rows = grid_rows("input channels", g.c)?;
    let per_launch = chunk("input pixels", g.n, pin, 0)?;
    let (wa, dya) = (gpu.addr(w.buffer()), gpu.addr(dy.buffer()));
    let dxa = gpu.addr_mut(dx.try_buffer_mut()?);
    for n0 in (0..g.n).step_by(per_launch) {
        let images = per_launch.min(g.n - n0);
        let p = g.params(images)?;
        let mut args = KernelArgs::new();
        args.ptr(wa)
            .ptr(dya + (n0 * g.o * pout) as u64 * F32)
            .ptr(dxa + (n0 * g.c * pin) as u64 * F32)
            .value(&p);
        let grid = (tiles(images * pin) as u32, rows, 1);
        gpu.launch(&kernel, LaunchCfg::new(grid, (THREADS, 1, 1)), &mut args)?;
    }
    Ok(dx)
}

/// `(slice, slices)`: `cols` reduction columns split into runs of `slice` (a multiple of
/// [`SLICE_STEP`]) so that `tiles × slices` reaches [`WG_TARGET_BLOCKS`], at most `max_slices`.
fn slices(tiles: usize, cols: usize, max_slices: usize) -> (usize, usize) {
    let cols = cols.max(1);
    let want = WG_TARGET_BLOCKS
        .div_ceil(tiles.max(1))
        .clamp(1, max_slices.max(1));
    let slice = cols.div_ceil(want).next_multiple_of(SLICE_STEP);
    (slice, cols.div_ceil(slice))
}

/// `dw` of `y = conv2d(x, w)` by `conv2d_tc_weight_grad_*`: the reduction over (image, pixel)
/// split into slices (`slice` columns when given), one partial dW per slice, the partials summed
/// in slice order by `conv_sum_partials_f32` (`kernels/conv.cu`), chunks of images accumulating
/// in order. One slice and one chunk write dw directly.
pub(super) fn conv_backward_weight(
    gpu: &Gpu,
    precision: Precision,
    g: &ConvGeometry,
    x: &Tensor,
    dy: &Tensor,
    slice: Option<usize>,
) -> Result<Tensor> {
    let kernel = format!("conv2d_tc_weight_grad_{}", kernel_suffix(precision)?);
    let (k, pin, pout) = (g.k(), g.pixels_in(), g.pixels_out());
    let mut dw = Tensor::zeros(&[g.o, g.c, g.kh, g.kw], dy.device())?;
    let len = g.o * k;
    if len > i32::MAX as usize {
        return Err(Error::Shape(format!(
            "tensor-core conv2d: a weight of {len} elements exceeds the kernels' 32-bit range"
        )));
    }
    let rows = grid_rows("output channels", g.o)?;
    let col_tiles = tiles(k);
    if col_tiles > i32::MAX as usize {
        return Err(Error::Shape(format!(
            "tensor-core conv2d: weight of {k} taps per output channel exceeds the grid"
        )));
    }
    // Spare room for the last slice's end (begin + slice) in the kernel's ints.
    let per_launch = chunk("output pixels", g.n, pout, 1 << 20)?;
    let max_slices = (MAX_PARTIALS / len.max(1)).clamp(1, GRID_YZ);
    let plan = |images: usize| -> Result<(usize, usize)> {
        let cols = images * pout;
        match slice {
            None => Ok(slices(rows as usize * col_tiles, cols, max_slices)),
            Some(s) if s > 0 && s % SLICE_STEP == 0 && s <= 1 << 20 => {
                let n = cols.div_ceil(s);
                if n > max_slices {
                    return Err(Error::OpArg {
                        op: "tensor-core conv2d weight gradient".into(),
                        msg: format!("{n} slices of {s} exceed the partials' budget"),
                    });
                }
                Ok((s, n))
            }
            Some(s) => Err(Error::OpArg {
                op: "tensor-core conv2d weight gradient".into(),
                msg: format!("slice {s} must be a positive multiple of {SLICE_STEP} up to 2^20"),
            }),
        }
    };
    let launches = g.n.div_ceil(per_launch);
    let most = plan(per_launch)?.1.max(plan(g.n % per_launch)?.1);
    let direct = launches == 1 && most == 1;
    let mut partials = match direct {
        true => None,
        false => Some(gpu.zeros::<f32>(most * len)?),
    };
    let (xa, dya) = (gpu.addr(x.buffer()), gpu.addr(dy.buffer()));
    let dwa = gpu.addr_mut(dw.try_buffer_mut()?);
    let out = match partials.as_mut() {
        Some(p) => gpu.addr_mut(p),
        None => dwa,
    };
    for n0 in (0..g.n).step_by(per_launch) {
        let images = per_launch.min(g.n - n0);
        let (slice, slices) = plan(images)?;
        let p = ConvParams {
            slice: slice as i32,
            ..g.params(images)?
        };
        let mut args = KernelArgs::new();
        args.ptr(xa + (n0 * g.c * pin) as u64 * F32)
            .ptr(dya + (n0 * g.o * pout) as u64 * F32)
            .ptr(out)
            .value(&p);
        let grid = (col_tiles as u32, rows, slices as u32);
        gpu.launch(&kernel, LaunchCfg::new(grid, (THREADS, 1, 1)), &mut args)?;
        if direct {
            continue;
        }
        sum_partials(gpu, out, dwa, slices, len, n0 > 0)?;
    }
    Ok(dw)
}
