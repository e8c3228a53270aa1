//! The CPU's choice of lowering, made once per call from the geometry, and what each choice does
//! to one chunk of images:
//!
//! * [`ConvPlan`] for a convolution in f32: the forward, and the input gradient of a stride-1
//!   conv (a convolution of `dy`, [`ConvGeometry::data_grad`]). Winograd, the implicit GEMM or
//!   HWC panels. Other element types convolve by panels ([`PanelConv`]); both are a [`ChunkConv`].
//! * [`DataGradPlan`]: the input gradient, as a convolution or by col2im.
//! * [`WeightGradPlan`] for the weight gradient in f32 (Winograd, implicit GEMM or panels); other
//!   element types use [`PanelWeightGrad`]; both are a [`WeightGradStep`].
//!
//! Each variant owns its weight in the layout it reads, and carves the chunk's scratch its own way.

use std::borrow::Cow;

use super::epilogue::OutputMap;
use super::geometry::Window;
use super::implicit::ImplicitConv;
use super::layout::{transpose, weight_flipped_chw};
use super::panels::{Col2imGrad, PanelConv, PanelWeightGrad};
use super::scratch::carve;
use super::winograd::Winograd;
use super::ConvGeometry;
use crate::ops::Real;

/// A lowering that convolves chunks of whole images.
pub(super) trait ChunkConv<T>: Sync {
    /// Scratch values [`Self::convolve`] needs for `images` images of `g`.
    fn scratch_len(&self, g: &ConvGeometry, images: usize) -> usize;
    /// `ys = conv(xs)` for whole CHW images of `g`, the geometry the lowering was chosen for;
    /// `first` is the batch index of the first of them.
    fn convolve(&self, g: &ConvGeometry, first: usize, xs: &[T], ys: &mut [T], scratch: &mut [T]);
}

impl<T: Real> ChunkConv<T> for PanelConv<T> {
    fn scratch_len(&self, g: &ConvGeometry, images: usize) -> usize {
        PanelConv::scratch_len(self, g, images)
    }
    fn convolve(&self, g: &ConvGeometry, _: usize, xs: &[T], ys: &mut [T], scratch: &mut [T]) {
        PanelConv::convolve(self, g, xs, ys, scratch)
    }
}

/// How the CPU convolves one f32 geometry.
pub(super) enum ConvPlan<'w> {
    /// 3x3, stride 1, padding 1 on even maps (AVX-512): F(2x2, 3x3) with the transformed weight.
    Winograd {
        /// The shape it serves.
        wg: Winograd,
        /// [`Winograd::weight`] of the conv's weight.
        u: Vec<f32>,
    },
    /// Other stride-1 windows deep enough (AVX-512): one implicit GEMM per image.
    Implicit {
        /// The padded layout and offset table of the window.
        conv: ImplicitConv,
        /// `[o, c, kh, kw]`, read as stored.
        weight: Cow<'w, [f32]>,
    },
    /// Everything else, and every window on CPUs without AVX-512: HWC panels.
    Panels(PanelConv<f32>),
}

impl<'w> ConvPlan<'w> {
    /// The fastest lowering this CPU has for `g`, with `weight [o, c, kh, kw]`.
    pub(super) fn choose(g: &ConvGeometry, weight: Cow<'w, [f32]>) -> Self {
        if let Some(wg) = Winograd::forward_of(g) {
            return ConvPlan::Winograd {
                u: wg.weight(&weight),
                wg,
            };
        }
        if let Some(conv) = ImplicitConv::new(&Window::of(g)) {
            return ConvPlan::Implicit { conv, weight };
        }
        ConvPlan::Panels(PanelConv::new(g, &weight))
    }

    /// [`ChunkConv::convolve`] with `map` applied to each output image as it is written.
    pub(super) fn convolve_mapped(
        &self,
        g: &ConvGeometry,
        first: usize,
        (xs, ys): (&[f32], &mut [f32]),
        scratch: &mut [f32],
        map: OutputMap,
    ) {
        let pout = g.pixels_out();
        match self {
            ConvPlan::Winograd { wg, u } => {
                // It groups the chunk's images into GEMM blocks itself.
                wg.run(xs, u, ys, scratch, |i, out| {
                    map.apply_image(first + i, out, pout)
                });
            }
            ConvPlan::Implicit { conv, weight } => {
                let [padded, out] = carve(scratch, conv.scratch_lens(g.o));
                let images = xs
                    .chunks_exact(g.c * g.pixels_in())
                    .zip(ys.chunks_exact_mut(g.o * pout));
                for (i, (img, dst)) in images.enumerate() {
                    let image = first + i;
                    // The epilogue is applied as the output is copied out of the GEMM's rows.
                    let epilogue = match map {
                        OutputMap::Epilogue(e) => {
                            let res = e.residual.map(|r| &r[image * g.o * pout..][..g.o * pout]);
                            Some((e, res))
                        }
                        _ => None,
                    };
                    conv.run(img, weight, g.o, padded, out, dst, epilogue);
                    if epilogue.is_none() {
                        map.apply_image(image, dst, pout);
                    }
                }
            }
            ConvPlan::Panels(panels) => {
                panels.convolve(g, xs, ys, scratch);
                for (i, img) in ys.chunks_exact_mut(g.o * pout).enumerate() {
                    map.apply_image(first + i, img, pout);
                }
            }
        }
    }
}

impl ChunkConv<f32> for ConvPlan<'_> {
    fn scratch_len(&self, g: &ConvGeometry, images: usize) -> usize {
        match self {
            ConvPlan::Winograd { wg, .. } => wg.scratch_len(images),
            ConvPlan::Implicit { conv, .. } => conv.scratch_lens(g.o).iter().sum(),
            ConvPlan::Panels(panels) => panels.scratch_len(g, images),
        }
    }
    fn convolve(&self, g: &ConvGeometry, first: usize, xs: &[f32], ys: &mut [f32], s: &mut [f32]) {
        self.convolve_mapped(g, first, (xs, ys), s, OutputMap::Plain)
    }
}

/// How the CPU computes the input gradient of one geometry.
pub(super) enum DataGradPlan<C, T> {
    /// Stride 1: `dx` is the convolution of `dy` with the flipped, transposed weight.
    AsConv {
        /// [`ConvGeometry::data_grad`] of the conv.
        gd: ConvGeometry,
        /// Its lowering.
        conv: C,
    },
    /// Other strides: `dcol = dy·W`, folded back by col2im.
    Col2im(Col2imGrad<T>),
}

impl<C: ChunkConv<T>, T: Real> DataGradPlan<C, T> {
    /// The input gradient of `g` with `w [o, c, kh, kw]`; `lower` picks the lowering of the
    /// convolution of `dy` from its geometry and weight.
    pub(super) fn new(
        g: &ConvGeometry,
        w: &[T],
        lower: impl FnOnce(&ConvGeometry, Vec<T>) -> C,
    ) -> Self {
        match g.data_grad() {
            Some(gd) => DataGradPlan::AsConv {
                conv: lower(&gd, weight_flipped_chw(g, w)),
                gd,
            },
            None => DataGradPlan::Col2im(Col2imGrad::new(g, w)),
        }
    }

    /// Whether [`Self::run`] reads `dy` as the forward window's GEMM rows.
    pub(super) fn needs_dy_rows(&self) -> bool {
        matches!(self, DataGradPlan::Col2im(_))
    }

    /// Scratch values [`Self::run`] needs for `images` images of `g`.
    pub(super) fn scratch_len(&self, g: &ConvGeometry, images: usize) -> usize {
        match self {
            DataGradPlan::AsConv { gd, conv } => conv.scratch_len(gd, images),
            DataGradPlan::Col2im(col2im) => col2im.scratch_len(g, images),
        }
    }

    /// `dxs` (overwritten) for whole images: `dys` as stored, `dy_rows` as the forward window's
    /// GEMM rows where [`Self::needs_dy_rows`].
    pub(super) fn run(
        &self,
        g: &ConvGeometry,
        (dys, dy_rows): (&[T], &[T]),
        dxs: &mut [T],
        scratch: &mut [T],
    ) {
        match self {
            DataGradPlan::AsConv { gd, conv } => conv.convolve(gd, 0, dys, dxs, scratch),
            DataGradPlan::Col2im(col2im) => col2im.run(g, dy_rows, dxs, scratch),
        }
    }
}

/// One way of accumulating the weight gradient over chunks of images into partial sums.
pub(super) trait WeightGradStep<T>: Sync {
    /// Values of one partial sum.
    fn part_len(&self, g: &ConvGeometry) -> usize;
    /// Whether [`Self::accumulate`] reads `dy` as the forward window's GEMM rows.
    fn needs_dy_rows(&self) -> bool;
    /// Scratch values [`Self::accumulate`] needs for `images` images of `g`.
    fn scratch_len(&self, g: &ConvGeometry, images: usize) -> usize;
    /// `partial (+)= ` the gradient of whole images: `inputs` is `(xs, dys, dy_rows)`, the last
    /// read only where [`Self::needs_dy_rows`]; `partial` is overwritten unless `accumulate`.
    fn accumulate(
        &self,
        g: &ConvGeometry,
        inputs: (&[T], &[T], &[T]),
        partial: &mut [T],
        accumulate: bool,
        scratch: &mut [T],
    );
    /// `dw [o, c, kh, kw]` from the sum of the partials.
    fn finish(&self, g: &ConvGeometry, sum: &[T], dw: &mut [T]);
}

impl<T: Real> WeightGradStep<T> for PanelWeightGrad {
    fn part_len(&self, g: &ConvGeometry) -> usize {
        g.k() * g.o
    }
    fn needs_dy_rows(&self) -> bool {
        true
    }
    fn scratch_len(&self, _: &ConvGeometry, images: usize) -> usize {
        PanelWeightGrad::scratch_len(self, images)
    }
    fn accumulate(
        &self,
        g: &ConvGeometry,
        (xs, _, dy_rows): (&[T], &[T], &[T]),
        partial: &mut [T],
        accumulate: bool,
        scratch: &mut [T],
    ) {
        PanelWeightGrad::accumulate(self, g, xs, dy_rows, partial, accumulate, scratch)
    }
    fn finish(&self, g: &ConvGeometry, sum: &[T], dw: &mut [T]) {
        PanelWeightGrad::finish(self, g, sum, dw)
    }
}

/// How the CPU computes the weight gradient of one f32 geometry.
pub(super) enum WeightGradPlan {
    /// Where Winograd serves the forward: partials in its transformed domain (`16·c·o` values),
    /// mapped back once summed.
    Winograd(Winograd),
    /// Stride-1 windows the implicit GEMM serves: straight from CHW `x` and `dy`.
    Implicit(ImplicitConv),
    /// Everything else: from HWC panels.
    Panels(PanelWeightGrad),
}

impl WeightGradPlan {
    /// The fastest lowering this CPU has for the weight gradient of `g`.
    pub(super) fn choose(g: &ConvGeometry) -> Self {
        if let Some(wg) = Winograd::forward_of(g) {
            return WeightGradPlan::Winograd(wg);
        }
        match ImplicitConv::new(&Window::of(g)) {
            Some(conv) => WeightGradPlan::Implicit(conv),
            None => WeightGradPlan::Panels(PanelWeightGrad::new(g)),
        }
    }
}

impl WeightGradStep<f32> for WeightGradPlan {
    fn part_len(&self, g: &ConvGeometry) -> usize {
        match self {
            WeightGradPlan::Winograd(_) => 16 * g.c * g.o,
            WeightGradPlan::Implicit(_) | WeightGradPlan::Panels(_) => g.k() * g.o,
        }
    }
    fn needs_dy_rows(&self) -> bool {
        matches!(self, WeightGradPlan::Panels(_))
    }
    fn scratch_len(&self, g: &ConvGeometry, images: usize) -> usize {
        match self {
            // Its scratch, then dy channels last.
            WeightGradPlan::Winograd(wg) => wg.scratch_len(images) + images * g.o * g.pixels_out(),
            WeightGradPlan::Implicit(conv) => images * conv.padded_len(),
            WeightGradPlan::Panels(panels) => panels.scratch_len(images),
        }
    }
    fn accumulate(
        &self,
        g: &ConvGeometry,
        (xs, dys, dy_rows): (&[f32], &[f32], &[f32]),
        partial: &mut [f32],
        accumulate: bool,
        scratch: &mut [f32],
    ) {
        let (pin, pout) = (g.pixels_in(), g.pixels_out());
        let images = xs.len() / (g.c * pin);
        match self {
            WeightGradPlan::Winograd(wg) => {
                let lens = [wg.scratch_len(images), images * g.o * pout];
                let [scratch, dy_hwc] = carve(scratch, lens);
                for (src, dst) in dys
                    .chunks_exact(g.o * pout)
                    .zip(dy_hwc.chunks_exact_mut(g.o * pout))
                {
                    transpose(src, g.o, pout, pout, dst, g.o);
                }
                wg.weight_grad(xs, dy_hwc, partial, accumulate, scratch);
            }
            WeightGradPlan::Implicit(conv) => {
                let padded = &mut scratch[..images * conv.padded_len()];
                for (img, dst) in xs
                    .chunks_exact(g.c * pin)
                    .zip(padded.chunks_exact_mut(conv.padded_len()))
                {
                    conv.pad(img, dst);
                }
                conv.weight_grad(images, dys, g.o, padded, partial, accumulate);
            }
            WeightGradPlan::Panels(panels) => {
                panels.accumulate(g, xs, dy_rows, partial, accumulate, scratch)
            }
        }
    }
    fn finish(&self, g: &ConvGeometry, sum: &[f32], dw: &mut [f32]) {
        match self {
            WeightGradPlan::Winograd(wg) => wg.weight_grad_finish(sum, dw),
            // Already in the weight's [o, (c, i, j)] layout.
            WeightGradPlan::Implicit(_) => dw[..g.k() * g.o].copy_from_slice(sum),
            WeightGradPlan::Panels(panels) => panels.finish(g, sum, dw),
        }
    }
}
