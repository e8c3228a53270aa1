//! The CPU path: every pass runs in parallel over chunks of images, each chunk lowered as the
//! plan chosen for the call says ([`super::plan`]). f32 takes the f32 plans (Winograd and the
//! implicit GEMM where the CPU has AVX-512, HWC panels otherwise); every other element type the
//! panels. The weight gradient is accumulated over the images of a fixed group of chunks, and the
//! groups' partials are summed in order, so results do not depend on the thread count or
//! scheduling. No input gradient is computed unless asked for.

use std::borrow::Cow;

use rayon::prelude::*;

use super::epilogue::{ChannelEpilogue, OutputMap};
use super::geometry::Window;
use super::layout::add_bias_planes;
use super::panels::{dy_rows, PanelConv, PanelWeightGrad};
use super::plan::{ChunkConv, ConvPlan, DataGradPlan, WeightGradPlan, WeightGradStep};
use super::scratch::with_scratch;
use super::winograd::Winograd;
use super::ConvGeometry;
use crate::ops::reduce::channel_sum_cpu;
use crate::ops::Real;

/// GEMM rows (output pixels) a chunk of images aims for, and the most im2col elements it may hold
/// (1 MiB of f32: the chunk's panels stay in L2).
const CHUNK_ROWS: usize = 1024;
const CHUNK_MAX_COL: usize = 1 << 18;
/// Weight-gradient partial sums: at most this many groups of chunks (fixed, not the thread count,
/// so the summation order — and the result — is the same on every machine).
const WEIGHT_GRAD_GROUPS: usize = 16;

/// Images per chunk for panels of `rows_per_image` rows of `row_len` values.
fn images_per_chunk(n: usize, rows_per_image: usize, row_len: usize) -> usize {
    let by_rows = CHUNK_ROWS.div_ceil(rows_per_image.max(1));
    let by_mem = CHUNK_MAX_COL / (rows_per_image * row_len).max(1);
    by_rows.min(by_mem).clamp(1, n.max(1))
}

/// Images per parallel chunk of the forward: Winograd's GEMM block, else sized for the panels.
fn forward_images_per_chunk(g: &ConvGeometry) -> usize {
    match Winograd::forward_of(g) {
        Some(wg) => wg.block().clamp(1, g.n.max(1)),
        None => {
            let win = Window::of(g);
            images_per_chunk(g.n, win.rows(), win.row_len())
        }
    }
}

/// Images per parallel chunk of the backward: the GEMM block of `winograd` where it serves both
/// gradients, else sized for the panels of the forward window and of `Window::data_grad`.
fn backward_images_per_chunk(g: &ConvGeometry, winograd: Option<Winograd>) -> usize {
    if let Some(wg) = winograd {
        return wg.block().clamp(1, g.n.max(1));
    }
    let (win, dwin) = (Window::of(g), Window::data_grad(g));
    let rows = win.rows().max(dwin.rows());
    images_per_chunk(g.n, rows, win.row_len().max(dwin.row_len()))
}

/// Fast forward: `y = conv2d(x, w) + b`.
pub fn conv2d_forward_cpu<T: Real + bytemuck::Pod>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
) {
    forward_chunked(g, x, w, b, y, forward_images_per_chunk(g));
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
    let per = forward_images_per_chunk(g);
    forward_f32(g, (x, w), y, per, OutputMap::Epilogue(epilogue));
}

/// [`conv2d_forward_cpu`] with `per` images per chunk.
pub(super) fn forward_chunked<T: Real + bytemuck::Pod>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
    per: usize,
) {
    let b32 = match b {
        None => Some(None),
        Some(b) => T::as_f32s(b).map(Some),
    };
    if let (Some(x), Some(w), Some(b), Some(y)) =
        (T::as_f32s(x), T::as_f32s(w), b32, T::as_f32s_mut(y))
    {
        return forward_f32(g, (x, w), y, per, OutputMap::bias(b));
    }
    let panels = PanelConv::new(g, w);
    let pout = g.pixels_out();
    for_chunks(g, x, y, per, &panels, |_, (xs, ys), scratch| {
        panels.convolve(g, xs, ys, scratch);
        if let Some(b) = b {
            add_bias_planes(ys, b, pout);
        }
    });
}

/// The f32 forward by the plan chosen for `g`, `map` applied to each output image.
fn forward_f32(
    g: &ConvGeometry,
    (x, w): (&[f32], &[f32]),
    y: &mut [f32],
    per: usize,
    map: OutputMap,
) {
    if g.n == 0 {
        return;
    }
    let plan = ConvPlan::choose(g, Cow::Borrowed(w));
    for_chunks(g, x, y, per, &plan, |first, io, scratch| {
        plan.convolve_mapped(g, first, io, scratch, map)
    });
}

/// `run(first, (xs, ys), scratch)` over the batch in parallel chunks of `per` whole images
/// (`first`: the batch index of a chunk's first image), with the scratch `conv` asks for.
fn for_chunks<T: Real + bytemuck::Pod>(
    g: &ConvGeometry,
    x: &[T],
    y: &mut [T],
    per: usize,
    conv: &impl ChunkConv<T>,
    run: impl Fn(usize, (&[T], &mut [T]), &mut [T]) + Sync,
) {
    let (pin, pout) = (g.pixels_in(), g.pixels_out());
    if g.n == 0 {
        return;
    }
    let x_chunks = x[..g.n * g.c * pin].par_chunks(per * g.c * pin);
    let y_chunks = y[..g.n * g.o * pout].par_chunks_mut(per * g.o * pout);
    x_chunks
        .zip(y_chunks)
        .enumerate()
        .for_each(|(chunk, (xs, ys))| {
            let images = xs.len() / (g.c * pin);
            with_scratch([conv.scratch_len(g, images)], |[scratch]| {
                run(chunk * per, (xs, ys), scratch)
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
    if let Some(db) = db {
        channel_sum_cpu(dy, db, g.n, g.o, g.pixels_out());
    }
    backward_chunked(g, x, w, dy, dx, dw, None);
}

/// The input and weight gradients of [`conv2d_backward_cpu`] with `per` images per chunk
/// (`None`: the default for the plan).
pub(super) fn backward_chunked<T: Real + bytemuck::Pod>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
    mut dx: Option<&mut [T]>,
    mut dw: Option<&mut [T]>,
    per: Option<usize>,
) {
    if g.n == 0 {
        if let Some(dw) = dw {
            dw.fill(T::ZERO);
        }
        return;
    }
    let (need_dx, need_dw) = (dx.is_some(), dw.is_some());
    if !need_dx && !need_dw {
        return;
    }
    if let (Some(x), Some(w), Some(dy), Some(dx), Some(dw)) = (
        T::as_f32s(x),
        T::as_f32s(w),
        T::as_f32s(dy),
        f32_output(dx.as_deref_mut()),
        f32_output(dw.as_deref_mut()),
    ) {
        let per = per.unwrap_or_else(|| backward_images_per_chunk(g, Winograd::for_backward(g)));
        let data =
            need_dx.then(|| DataGradPlan::new(g, w, |gd, wf| ConvPlan::choose(gd, Cow::Owned(wf))));
        let weight = need_dw.then(|| WeightGradPlan::choose(g));
        let plans = (data.as_ref(), weight.as_ref());
        return backward_chunks(g, (x, dy), (dx, dw), per, plans);
    }
    let per = per.unwrap_or_else(|| backward_images_per_chunk(g, None));
    let data = need_dx.then(|| DataGradPlan::new(g, w, |gd, wf| PanelConv::new(gd, &wf)));
    let weight = need_dw.then(|| PanelWeightGrad::new(g));
    backward_chunks(g, (x, dy), (dx, dw), per, (data.as_ref(), weight.as_ref()));
}

/// An optional output as f32: `Some` when `T` is f32 (or there is no output).
fn f32_output<T: Real>(out: Option<&mut [T]>) -> Option<Option<&mut [f32]>> {
    match out {
        None => Some(None),
        Some(out) => T::as_f32s_mut(out).map(Some),
    }
}

/// The batch cut into chunks of `per` images, and the chunks into at most
/// [`WEIGHT_GRAD_GROUPS`] groups of consecutive chunks.
struct ChunkGroups {
    per: usize,
    images_per_group: usize,
    count: usize,
}

impl ChunkGroups {
    fn new(n: usize, per: usize) -> Self {
        let chunks = n.div_ceil(per);
        let chunks_per_group = chunks.div_ceil(chunks.min(WEIGHT_GRAD_GROUPS));
        ChunkGroups {
            per,
            images_per_group: chunks_per_group * per,
            count: chunks.div_ceil(chunks_per_group),
        }
    }

    /// The chunks of `group` in order: `(first image, images)`, of a batch of `n`.
    fn chunks(&self, group: usize, n: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let first = group * self.images_per_group;
        let last = (first + self.images_per_group).min(n);
        (first..last)
            .step_by(self.per)
            .map(move |n0| (n0, self.per.min(last - n0)))
    }
}

/// The two steps of one backward, each absent when its gradient is not asked for.
struct BackwardSteps<'p, C, T, W> {
    data: Option<&'p DataGradPlan<C, T>>,
    weight: Option<&'p W>,
}

impl<C, T, W> BackwardSteps<'_, C, T, W>
where
    T: Real + bytemuck::Pod,
    C: ChunkConv<T>,
    W: WeightGradStep<T>,
{
    /// One chunk of whole images `(xs, dys)`: the chunk's input gradient into `dxs`, and its
    /// weight gradient into `partial` (added to it when the flag says so).
    fn run(
        &self,
        g: &ConvGeometry,
        (xs, dys): (&[T], &[T]),
        dxs: Option<&mut [T]>,
        partial: Option<(&mut [T], bool)>,
    ) {
        let images = xs.len() / (g.c * g.pixels_in());
        let (data, weight) = (self.data.filter(|_| dxs.is_some()), self.weight);
        let weight = weight.filter(|_| partial.is_some());
        // dy as GEMM rows of the forward window, shared by the steps that read it.
        let needs_rows = weight.is_some_and(|wg| wg.needs_dy_rows())
            || data.is_some_and(|dg| dg.needs_dy_rows());
        let rows_len = match needs_rows {
            true => images * Window::of(g).rows() * g.o,
            false => 0,
        };
        // The two steps take the chunk's scratch in turn.
        let scratch_len = weight
            .map_or(0, |wg| wg.scratch_len(g, images))
            .max(data.map_or(0, |dg| dg.scratch_len(g, images)));
        with_scratch([rows_len, scratch_len], |[rows, scratch]| {
            if needs_rows {
                dy_rows(g, dys, rows);
            }
            if let (Some((partial, accumulate)), Some(wg)) = (partial, weight) {
                wg.accumulate(g, (xs, dys, rows), partial, accumulate, scratch);
            }
            if let (Some(dxs), Some(dg)) = (dxs, data) {
                dg.run(g, (dys, rows), dxs, scratch);
            }
        });
    }
}

/// The gradients asked for (`dx`, `dw`) by `data` and `weight`, over groups of chunks of `per`
/// images in parallel: each group accumulates its chunks' weight gradients into its own partial
/// sum, and the partials are summed in group order.
fn backward_chunks<T, C, W>(
    g: &ConvGeometry,
    (x, dy): (&[T], &[T]),
    (dx, dw): (Option<&mut [T]>, Option<&mut [T]>),
    per: usize,
    (data, weight): (Option<&DataGradPlan<C, T>>, Option<&W>),
) where
    T: Real + bytemuck::Pod,
    C: ChunkConv<T>,
    W: WeightGradStep<T>,
{
    let (pin, pout) = (g.pixels_in(), g.pixels_out());
    let groups = ChunkGroups::new(g.n, per);
    let part_len = weight.map_or(0, |wg| wg.part_len(g));
    let mut partials = vec![T::ZERO; groups.count * part_len];
    let partial_slots: Vec<Option<&mut [T]>> = match weight {
        Some(_) => partials.chunks_mut(part_len).map(Some).collect(),
        None => (0..groups.count).map(|_| None).collect(),
    };
    let dx_slots: Vec<Option<&mut [T]>> = match dx {
        Some(dx) => dx[..g.n * g.c * pin]
            .chunks_mut(groups.images_per_group * g.c * pin)
            .map(Some)
            .collect(),
        None => (0..groups.count).map(|_| None).collect(),
    };
    debug_assert_eq!(
        (partial_slots.len(), dx_slots.len()),
        (groups.count, groups.count)
    );
    let steps = BackwardSteps { data, weight };
    let work = |group: usize, mut dx_group: Option<&mut [T]>, mut partial: Option<&mut [T]>| {
        let first = group * groups.images_per_group;
        for (ci, (n0, images)) in groups.chunks(group, g.n).enumerate() {
            let dys = &dy[n0 * g.o * pout..(n0 + images) * g.o * pout];
            let xs = &x[n0 * g.c * pin..(n0 + images) * g.c * pin];
            let dxs = dx_group
                .as_deref_mut()
                .map(|d| &mut d[(n0 - first) * g.c * pin..][..images * g.c * pin]);
            let partial = partial.as_deref_mut().map(|p| (p, ci > 0));
            steps.run(g, (xs, dys), dxs, partial);
        }
    };
    dx_slots
        .into_par_iter()
        .zip(partial_slots)
        .enumerate()
        .for_each(|(group, (dx_group, partial))| work(group, dx_group, partial));

    if let (Some(dw), Some(wg)) = (dw, weight) {
        let mut sum = vec![T::ZERO; part_len];
        for part in partials.chunks_exact(part_len) {
            for (s, &v) in sum.iter_mut().zip(part) {
                *s += v;
            }
        }
        wg.finish(g, &sum, dw);
    }
}
