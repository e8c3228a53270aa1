//! The panel lowering, for every element type and every window: each image transposed to HWC and
//! lowered as its window's `Lowering` says (the HWC image itself, shifted strided views of the
//! padded image, or an explicit im2col), then one GEMM per chunk of images with the output pixels
//! as the long dimension. [`PanelConv`] convolves, [`PanelWeightGrad`] accumulates `panelᵀ·dy`,
//! [`Col2imGrad`] computes the input gradient of strided convs (`dcol = dy·W`, folded back).

use super::geometry::{Lowering, Window};
use super::layout::{copy_run, transpose, transposed, weight_to_hwc};
use super::scratch::carve;
use super::ConvGeometry;
use crate::ops::cpu::{gemm_with, MatRef};
use crate::ops::Real;

/// A convolution by HWC panels: prepare each image, one GEMM, then back to CHW.
pub(super) struct PanelConv<T> {
    win: Window,
    /// `[(i, j, c), o]`: the weight in the panels' column order, row-major, so the GEMM reads
    /// it in place.
    wt: Vec<T>,
}

impl<T: Real> PanelConv<T> {
    /// The lowering of `g` with its weight `w [o, c, kh, kw]`.
    pub(super) fn new(g: &ConvGeometry, w: &[T]) -> Self {
        PanelConv {
            win: Window::of(g),
            wt: transposed(&weight_to_hwc(g, w), g.o, g.k()),
        }
    }

    /// Prepared images, their im2col panels and the GEMM's output rows for `images` images.
    fn scratch_lens(&self, g: &ConvGeometry, images: usize) -> [usize; 3] {
        let win = &self.win;
        [
            images * win.image_len(),
            images * win.col_len(),
            images * win.rows() * g.o,
        ]
    }

    /// Scratch values [`Self::convolve`] needs for `images` images.
    pub(super) fn scratch_len(&self, g: &ConvGeometry, images: usize) -> usize {
        self.scratch_lens(g, images).iter().sum()
    }

    /// `ys = conv(xs)` for whole CHW images of `g`.
    pub(super) fn convolve(&self, g: &ConvGeometry, xs: &[T], ys: &mut [T], scratch: &mut [T]) {
        let win = &self.win;
        let images = xs.len() / (g.c * g.pixels_in());
        let [prepared, col, out] = carve(scratch, self.scratch_lens(g, images));
        for (img, prep) in xs
            .chunks_exact(g.c * g.pixels_in())
            .zip(prepared.chunks_exact_mut(win.image_len()))
        {
            win.prepare_image(img, prep);
        }
        win.gemm_forward(images, prepared, col, &self.wt, g.o, out);
        for (rows, img) in out
            .chunks_exact(win.rows() * g.o)
            .zip(ys.chunks_exact_mut(g.o * g.pixels_out()))
        {
            win.gather_rows(rows, g.o, img);
        }
    }
}

/// The weight gradient by HWC panels: `partial[(i, j, c), o] (+)= panelᵀ · dy_rows`.
pub(super) struct PanelWeightGrad {
    win: Window,
}

impl PanelWeightGrad {
    /// The weight gradient of `g`.
    pub(super) fn new(g: &ConvGeometry) -> Self {
        PanelWeightGrad { win: Window::of(g) }
    }

    /// Prepared images and their im2col panels for `images` images.
    fn scratch_lens(&self, images: usize) -> [usize; 2] {
        [images * self.win.image_len(), images * self.win.col_len()]
    }

    /// Scratch values [`Self::accumulate`] needs for `images` images.
    pub(super) fn scratch_len(&self, images: usize) -> usize {
        self.scratch_lens(images).iter().sum()
    }

    /// `partial (+)= panel(xs)ᵀ · dy_rows` over whole CHW images `xs`, `dy_rows` from [`dy_rows`].
    pub(super) fn accumulate<T: Real>(
        &self,
        g: &ConvGeometry,
        xs: &[T],
        dy_rows: &[T],
        partial: &mut [T],
        accumulate: bool,
        scratch: &mut [T],
    ) {
        let win = &self.win;
        let images = xs.len() / (g.c * g.pixels_in());
        let [prepared, col] = carve(scratch, self.scratch_lens(images));
        for (img, dst) in xs
            .chunks_exact(g.c * g.pixels_in())
            .zip(prepared.chunks_exact_mut(win.image_len()))
        {
            win.prepare_image(img, dst);
        }
        win.gemm_weight_grad(images, prepared, col, dy_rows, g.o, partial, accumulate);
    }

    /// `dw [o, c, i, j]` from the summed partials `[(i, j, c), o]`.
    pub(super) fn finish<T: Real>(&self, g: &ConvGeometry, sum: &[T], dw: &mut [T]) {
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

/// The input gradient of convs that are not stride 1: `dcol[(oh, ow), (i, j, c)] = dy_rows · W`
/// folded back onto the HWC input by col2im, then transposed to CHW.
pub(super) struct Col2imGrad<T> {
    win: Window,
    /// `[o, (i, j, c)]`: the weight in the panels' column order.
    wp: Vec<T>,
}

impl<T: Real> Col2imGrad<T> {
    /// The input gradient of `g` with its weight `w [o, c, kh, kw]`.
    pub(super) fn new(g: &ConvGeometry, w: &[T]) -> Self {
        Col2imGrad {
            win: Window::of(g),
            wp: weight_to_hwc(g, w),
        }
    }

    /// `dcol` and the HWC input gradient for `images` images.
    fn scratch_lens(g: &ConvGeometry, images: usize) -> [usize; 2] {
        [
            images * g.pixels_out() * g.k(),
            images * g.pixels_in() * g.c,
        ]
    }

    /// Scratch values [`Self::run`] needs for `images` images.
    pub(super) fn scratch_len(&self, g: &ConvGeometry, images: usize) -> usize {
        Self::scratch_lens(g, images).iter().sum()
    }

    /// `dxs` (whole CHW images, overwritten) from `dy_rows` ([`dy_rows`]).
    pub(super) fn run(&self, g: &ConvGeometry, dy_rows: &[T], dxs: &mut [T], scratch: &mut [T]) {
        let (k, pin, pout) = (g.k(), g.pixels_in(), g.pixels_out());
        let images = dxs.len() / (g.c * pin);
        let [dcol, dxt] = carve(scratch, Self::scratch_lens(g, images));
        gemm_with(
            MatRef::rows(dy_rows, images * pout, g.o),
            MatRef::rows(&self.wp, g.o, k),
            dcol,
            false,
            false,
        );
        dxt.fill(T::ZERO);
        for (src, dst) in dcol
            .chunks_exact(pout * k)
            .zip(dxt.chunks_exact_mut(pin * g.c))
        {
            col2im_hwc(&self.win, src, dst);
        }
        for (src, img) in dxt
            .chunks_exact(pin * g.c)
            .zip(dxs.chunks_exact_mut(g.c * pin))
        {
            transpose(src, pin, g.c, g.c, img, pin);
        }
    }
}

/// `dys` (whole CHW images of `g`'s output) as the GEMM rows of the forward window
/// `[images·rows, o]` (padding rows zero): what [`PanelWeightGrad`] and [`Col2imGrad`] read.
pub(super) fn dy_rows<T: Real>(g: &ConvGeometry, dys: &[T], rows: &mut [T]) {
    let win = Window::of(g);
    for (img, dst) in dys
        .chunks_exact(g.o * g.pixels_out())
        .zip(rows.chunks_exact_mut(win.rows() * g.o))
    {
        win.scatter_rows(img, g.o, dst);
    }
}

/// The panel operations of a window.
impl Window {
    /// A CHW image `[c, h·w]` in this window's prepared layout.
    fn prepare_image<T: Real>(&self, chw: &[T], out: &mut [T]) {
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
    fn scatter_rows<T: Real>(&self, chw: &[T], n: usize, rows: &mut [T]) {
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
    fn gather_rows<T: Real>(&self, rows: &[T], n: usize, chw: &mut [T]) {
        let (p, pitch) = (self.pixels_out(), self.pitch());
        for oh in 0..self.oh {
            let src = &rows[oh * pitch * n..];
            transpose(src, self.ow, n, n, &mut chw[oh * self.ow..], p);
        }
    }

    /// `out[rows, n] = panel · wt` for `images` prepared images; `wt` is `[(i, j, c), n]`
    /// (row-major, so the GEMM reads it in place).
    #[allow(clippy::too_many_arguments)]
    fn gemm_forward<T: Real>(
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
    fn gemm_weight_grad<T: Real>(
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
