//! The implicit-GEMM lowering (f32 on AVX-512 CPUs): a stride-1 convolution as one GEMM over the
//! zero-padded CHW image, read in place through an offset table, so neither the input nor the
//! output is transposed; the weight gradient reads CHW `x` and `dy` in place too.

use super::epilogue::ChannelEpilogue;
use super::geometry::Window;
use crate::ops::cpu_gemm::{fast_f32_available, gemm_f32_gathered, gemm_f32_gathered_dot, DotRows};

/// f32 stride-1 convolutions on CPUs with AVX-512: an implicit GEMM over the zero-padded CHW
/// image ([`gemm_f32_gathered`]), so neither the input nor the output is transposed. Output
/// pixel `(oh, ow)` is GEMM column `oh·wp + ow` (the `wp - ow` padding columns of each row are
/// computed and dropped, as in `Lowering::Shifted`); kernel tap `(c, i, j)` is the image
/// `c·plane + i·wp + j` further. The weight `[n, (c, i, j)]` is read as it is stored.
///
/// Rows share their padding: each padded row is the `w` inputs then `pw` zeros (`wp = w + pw`),
/// and a row's zeros are also the left padding of the next row (`pw` zeros lead each channel).
/// Half the dropped columns of a `w + 2pw` layout: 3 % of the work on 32x32 maps instead of 6 %,
/// 6 % on 16x16 instead of 12.5 %.
pub(super) struct ImplicitConv {
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
    /// `Some` on an AVX-512 CPU for the windows the shifted lowering takes. (8x8 maps, 12.5 %
    /// dropped columns here, measured no faster than their im2col GEMMs, so they stay there.)
    pub(super) fn new(win: &Window) -> Option<Self> {
        if !fast_f32_available() || !win.implicit_fits() {
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
    pub(super) fn padded_len(&self) -> usize {
        self.c * self.plane()
    }
    /// GEMM columns per output channel.
    fn cols(&self) -> usize {
        self.oh * self.wp()
    }
    /// The scratch of [`Self::run`] for `n` output channels: the padded image and the GEMM's
    /// `[n, cols]` output.
    pub(super) fn scratch_lens(&self, n: usize) -> [usize; 2] {
        [self.padded_len(), n * self.cols()]
    }
    /// One CHW image `x[c, h·w]` into the padded layout (`padded_len` values).
    pub(super) fn pad<T: Copy + Default>(&self, x: &[T], padded: &mut [T]) {
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
    pub(super) fn weight_grad(
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
    pub(super) fn run(
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
