//! Deterministic reductions on kernel devices: a first-pass kernel (one per op) writes per-block
//! partial sums in double (`[blocks, cols]`), then `sum_partials_f64` (`kernels/partials.cu`) adds
//! them in a fixed order. The number of blocks depends only on the element count, so results are
//! reproducible run to run (no float atomics).

use crate::device::{Buffer, Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};

/// Threads per block of the first-pass kernels (`PARTIAL_THREADS` in `kernels/partials.cuh`).
pub const PARTIAL_THREADS: u32 = 256;
/// Elements per thread worth a block of its own, and the most first-pass blocks.
const PER_THREAD: usize = 8;
const MAX_BLOCKS: usize = 256;

/// Mirrors `FinishParams` in `kernels/partials.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FinishParams {
    /// Rows of partial sums (first-pass blocks).
    pub count: i32,
    /// Columns: sums computed side by side.
    pub cols: i32,
    /// Factor applied to each total.
    pub scale: f64,
}

/// First-pass blocks for `n` elements (a function of `n` only).
pub fn partial_blocks(n: usize) -> usize {
    n.div_ceil(PARTIAL_THREADS as usize * PER_THREAD)
        .clamp(1, MAX_BLOCKS)
}

/// The launch of a first-pass kernel over `n` elements.
pub fn partial_launch(n: usize) -> LaunchCfg {
    LaunchCfg::new((partial_blocks(n) as u32, 1, 1), (PARTIAL_THREADS, 1, 1))
}

/// `out[c] = scale * sum_k partial[k, c]` as f32, for `partial` of `[count, cols]` doubles.
pub fn finish(
    g: &Gpu,
    partial: &Buffer<f64>,
    count: usize,
    cols: usize,
    scale: f64,
) -> Result<Buffer<f32>> {
    if partial.len() != count * cols {
        return Err(Error::Shape(format!(
            "partial sums: buffer of {} for [{count}, {cols}]",
            partial.len()
        )));
    }
    let mut out = g.zeros::<f32>(cols)?;
    let mut args = KernelArgs::new();
    args.ptr(g.addr(partial)).ptr(g.addr_mut(&mut out));
    args.value(&FinishParams {
        count: count as i32,
        cols: cols as i32,
        scale,
    });
    g.launch("sum_partials_f64", LaunchCfg::for_elements(cols), &mut args)?;
    Ok(out)
}

/// Checks that `n` elements fit the kernels' 32-bit indexing.
pub fn check_i32(op: &str, shape: &[usize]) -> Result<i32> {
    let n: usize = shape.iter().product();
    i32::try_from(n).map_err(|_| {
        Error::Shape(format!(
            "{op}: tensor of shape {shape:?} is beyond the kernels' 32-bit index range"
        ))
    })
}
