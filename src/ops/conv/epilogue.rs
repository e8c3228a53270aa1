//! What the f32 forward applies to its output as it writes it, while it is in cache: a bias, or
//! an eval-mode BatchNorm with an optional residual and ReLU ([`ChannelEpilogue`]).

use super::layout::add_bias_planes;

/// A per-output-channel map applied as the conv writes its output: an eval-mode BatchNorm
/// (`(v - mean[o]) · scale[o] + shift[o]`), then `+ residual` and a ReLU when given. The same f32
/// operations in the same order as the separate ops (`ops::batchnorm`), so the same values.
#[derive(Clone, Copy)]
pub struct ChannelEpilogue<'a> {
    /// The BatchNorm's running mean, per output channel.
    pub mean: &'a [f32],
    /// `gamma[o] · invstd[o]` (`invstd[o]` alone without an affine BatchNorm).
    pub scale: &'a [f32],
    /// `beta` per output channel (0 without an affine BatchNorm).
    pub shift: &'a [f32],
    /// Shaped like the conv's output.
    pub residual: Option<&'a [f32]>,
    /// A ReLU last.
    pub relu: bool,
}

impl ChannelEpilogue<'_> {
    /// `dst[i] = (src[i] - mean[o])·scale[o] + shift[o]`, `+ res[i]` when there is a residual
    /// (only then: adding 0 would turn `-0.0` outputs into `+0.0`, unlike the unfused ops),
    /// then the ReLU (`!(v > 0)` gives 0, NaN included).
    #[inline(always)]
    pub(super) fn apply(&self, o: usize, src: &[f32], res: Option<&[f32]>, dst: &mut [f32]) {
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
    pub(super) fn apply_image(&self, image: usize, y: &mut [f32], pixels: usize) {
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

/// What the f32 forward applies to each output image as it is written.
#[derive(Clone, Copy)]
pub(super) enum OutputMap<'a> {
    /// The convolution alone (also the input gradient computed as a convolution).
    Plain,
    /// `+ b[o]`.
    Bias(&'a [f32]),
    /// An eval-mode BatchNorm, then a residual and a ReLU when given.
    Epilogue(&'a ChannelEpilogue<'a>),
}

impl<'a> OutputMap<'a> {
    /// The map of a forward with bias `b`, if any.
    pub(super) fn bias(b: Option<&'a [f32]>) -> Self {
        b.map_or(OutputMap::Plain, OutputMap::Bias)
    }

    /// In place over one output image `[o, pixels]`; `image` is its index in the batch.
    pub(super) fn apply_image(&self, image: usize, y: &mut [f32], pixels: usize) {
        match self {
            OutputMap::Plain => {}
            OutputMap::Bias(b) => add_bias_planes(y, b, pixels),
            OutputMap::Epilogue(e) => e.apply_image(image, y, pixels),
        }
    }
}
