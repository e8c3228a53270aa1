//! The shapes of a convolution: [`ConvGeometry`] (one 2-D conv over a batch) and `Window` (one
//! image's sliding window, with the way the CPU's panel lowering unrolls it).

use crate::error::{Error, Result};

/// Sizes of one 2-D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Images in the batch.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Zero rows added above and below the input.
    pub ph: usize,
    /// Zero columns added left and right of the input.
    pub pw: usize,
    /// Output height: `(h + 2·ph - kh) / sh + 1`.
    pub oh: usize,
    /// Output width: `(w + 2·pw - kw) / sw + 1`.
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
    /// Pixels of one input channel: `H·W`.
    pub fn pixels_in(&self) -> usize {
        self.h * self.w
    }
    /// Pixels of one output channel: `OH·OW`.
    pub fn pixels_out(&self) -> usize {
        self.oh * self.ow
    }
    /// `[N, O, OH, OW]`.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.o, self.oh, self.ow]
    }
    /// Multiply-adds of one pass (forward, input gradient or weight gradient) over the batch.
    pub fn macs(&self) -> usize {
        self.n * self.o * self.k() * self.pixels_out()
    }
    /// 1x1, stride 1, no padding: the input gradient's `dcol` is `dx` itself.
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
    /// The input gradient as a stride-1 convolution of `dy` needs a non-negative padding `k-1-p`.
    pub(super) fn data_grad_is_conv(&self) -> bool {
        self.sh == 1 && self.sw == 1 && self.ph < self.kh && self.pw < self.kw
    }
    /// The input gradient of a stride-1 conv as a convolution ([`Self::data_grad_is_conv`]):
    /// `dy [n, o, oh, ow]` convolved with the flipped, transposed weight `[c, o, kh, kw]`,
    /// padding `k-1-p`, gives `dx [n, c, h, w]`.
    pub(super) fn data_grad(&self) -> Option<ConvGeometry> {
        self.data_grad_is_conv().then(|| ConvGeometry {
            n: self.n,
            c: self.o,
            h: self.oh,
            w: self.ow,
            o: self.c,
            kh: self.kh,
            kw: self.kw,
            sh: 1,
            sw: 1,
            ph: self.kh - 1 - self.ph,
            pw: self.kw - 1 - self.pw,
            oh: self.h,
            ow: self.w,
        })
    }
}

/// Shifted GEMMs also compute the `wp - ow` padding columns of every output row; above this
/// fraction of `ow` an explicit im2col is cheaper (measured: 32- and 16-wide maps gain, 8-wide lose).
const MAX_SHIFT_WASTE: f64 = 0.15;
/// Shifted GEMMs have depth `kw·c` only; below this (an RGB stem: 9) im2col's `kh·kw·c` wins.
const MIN_SHIFT_DEPTH: usize = 16;

/// How a window becomes GEMM panels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lowering {
    /// 1x1, stride 1, no padding: the HWC image is the panel.
    Pointwise,
    /// Stride 1: the image zero-padded to `[h + 2ph + 1, wp, c]` (`wp = w + 2pw`); GEMM row
    /// `oh·wp + ow` is output pixel `(oh, ow)` (columns `ow >= OW` are padding, discarded), and
    /// kernel row `i` is a strided view of the padded image `i·wp` pixels further — no im2col.
    Shifted,
    /// An explicit `[oh·ow, kh·kw·c]` panel (`im2col_hwc`).
    Im2col,
}

/// One image's sliding window: an input `[h, w, c]` read by a `kh x kw` kernel.
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) sh: usize,
    pub(super) sw: usize,
    pub(super) ph: usize,
    pub(super) pw: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) lowering: Lowering,
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
    /// The forward window of `g`.
    pub(super) fn of(g: &ConvGeometry) -> Self {
        Window::new(
            (g.h, g.w, g.c),
            (g.kh, g.kw),
            (g.sh, g.sw),
            (g.ph, g.pw),
            (g.oh, g.ow),
        )
    }
    /// The input gradient of a stride-1 conv as a conv over `dy` (`[oh, ow, o]`): kernel
    /// flipped, padding `k-1-p`, output `[h, w]` (the window of [`ConvGeometry::data_grad`]).
    /// Built for every geometry, as the backward's chunk size has always been: where the padding
    /// `k-1-p` is negative it wraps around, and the window is an im2col one of `h·w` rows.
    pub(super) fn data_grad(g: &ConvGeometry) -> Self {
        Window::new(
            (g.oh, g.ow, g.o),
            (g.kh, g.kw),
            (1, 1),
            (
                g.kh.wrapping_sub(1).wrapping_sub(g.ph),
                g.kw.wrapping_sub(1).wrapping_sub(g.pw),
            ),
            (g.h, g.w),
        )
    }
    /// Whether `ImplicitConv` serves this window: the shifted lowering's conditions, with the
    /// depth counted over all `kh·kw·c` taps (its one GEMM has them all), so an RGB stem (27)
    /// qualifies; its im2col rows of `kw·c` = 9 values ran at a third of the implicit GEMM's speed.
    pub(super) fn implicit_fits(&self) -> bool {
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
    pub(super) fn row_len(&self) -> usize {
        self.kh * self.kw * self.c
    }
    /// Output pixels of one image.
    pub(super) fn pixels_out(&self) -> usize {
        self.oh * self.ow
    }
    /// Width of the zero-padded input.
    pub(super) fn padded_w(&self) -> usize {
        self.w + 2 * self.pw
    }
    /// Elements of one prepared (HWC, padded when shifted) image.
    pub(super) fn image_len(&self) -> usize {
        match self.lowering {
            Lowering::Shifted => (self.h + 2 * self.ph + 1) * self.padded_w() * self.c,
            _ => self.h * self.w * self.c,
        }
    }
    /// GEMM rows per image.
    pub(super) fn rows(&self) -> usize {
        self.oh * self.pitch()
    }
    /// The row distance between consecutive output rows.
    pub(super) fn pitch(&self) -> usize {
        match self.lowering {
            Lowering::Shifted => self.padded_w(),
            _ => self.ow,
        }
    }
    /// Elements of one image's im2col panel (0 where the lowering builds none).
    pub(super) fn col_len(&self) -> usize {
        match self.lowering {
            Lowering::Im2col => self.pixels_out() * self.row_len(),
            _ => 0,
        }
    }
    /// Input column of output column `ow` at kernel column 0 (may lie left of the image).
    pub(super) fn left(&self, ow: usize) -> isize {
        (ow * self.sw) as isize - self.pw as isize
    }
    /// Input row of output row `oh` at kernel row `i`, if inside the image.
    pub(super) fn input_row(&self, oh: usize, i: usize) -> Option<usize> {
        let ih = (oh * self.sh + i) as isize - self.ph as isize;
        (ih >= 0 && ih < self.h as isize).then_some(ih as usize)
    }
}
