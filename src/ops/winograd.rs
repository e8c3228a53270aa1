//! Winograd F(2x2, 3x3) convolution for the CPU path (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016): 3x3, stride 1, padding 1, even maps, f32 on AVX-512.
//! ResNet's convolutions are almost all of this shape; the forward and the input gradient (a
//! convolution of `dy` with the flipped, transposed weight) both run here.
//!
//! Each 2x2 block of outputs ("tile") comes from a 4x4 patch `d` of the zero-padded input:
//!
//! ```text
//!     Y = Aᵀ [ Σ_c (G g Gᵀ) ⊙ (Bᵀ d B) ] A        Bᵀ = [1  0 -1  0]    G = [ 1    0    0 ]   Aᵀ = [1 1  1  0]
//!                                                      [0  1  1  0]        [ 1/2  1/2  1/2]        [0 1 -1 -1]
//!                                                      [0 -1  1  0]        [ 1/2 -1/2  1/2]
//!                                                      [0  1  0 -1]        [ 0    0    1 ]
//! ```
//!
//! so the channel sum is 16 GEMMs (one per position `ξ` of the 4x4 transformed tile) of
//! `[o, c] x [c, tiles]`: 16 multiplies per tile and channel pair instead of 36, 2.25x fewer
//! FLOPs. The transforms are additions only (and exact halvings in `G`), done as whole tile rows in
//! AVX-512 registers. Rounding differs from the direct sum by a few float32 ulps of the
//! operands' scale (the transformed values are sums of up to 4 inputs); tests compare with the
//! direct loops in f64 (measured: 1.3e-7 to 2.7e-7 relative, normwise,
//! against 2.5e-8 for rounding the exact result to f32). `LIT_WINOGRAD=0` turns it off (every conv
//! then takes the implicit-GEMM / im2col paths), for bit-for-bit comparisons with earlier runs.

use rayon::prelude::*;

use crate::ops::conv::ConvGeometry;
use crate::ops::cpu::{prefetch, MatRef};
use crate::ops::cpu_gemm::{fast_f32_available, gemm_f32, gemm_f32_gathered};

/// The transformed tiles of a GEMM block (`V` and `M`) take about this much: images are grouped
/// so the GEMMs' long dimension stays long on 16x16 and 8x8 maps (192 and 96 tiles for ResNet's
/// 32 and 64 channels, multiples of the GEMM's 48 columns) while the block stays in a Zen 4
/// core's 1 MiB L2. 512 KiB, 768 KiB and 1 MiB measured within noise of each other, 768 KiB
/// best by a few per cent.
const BLOCK_BYTES: usize = 768 << 10;
/// Below this many input channels the GEMMs are too short for the transforms to pay (an RGB stem).
const MIN_CHANNELS: usize = 8;

/// The filter transform.
const G: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// Whether `LIT_WINOGRAD=0` asked for the other conv paths.
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LIT_WINOGRAD").map_or(true, |v| v != "0"))
}

/// One GEMM block's buffers: `V` and `M` (`vs`, `ms` floats a transformed position apart) and
/// the transforms' scratch.
struct BlockScratch<'a> {
    v: &'a mut [f32],
    vs: usize,
    m: &'a mut [f32],
    ms: usize,
    rows: &'a mut [f32],
}

/// One conv shape that F(2x2, 3x3) serves: `x [images, c, h, w]` to `y [images, o, h, w]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Winograd {
    c: usize,
    o: usize,
    h: usize,
    w: usize,
}

impl Winograd {
    /// `Some` for a 3x3, stride-1, padding-1 conv of `c -> o` channels on an even `h x w` map,
    /// f32 on an AVX-512 CPU, unless `LIT_WINOGRAD=0`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new<T: 'static>(
        c: usize,
        o: usize,
        h: usize,
        w: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Option<Self> {
        let f32_fast =
            std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && fast_f32_available();
        let shape_fits = kernel == (3, 3)
            && stride == (1, 1)
            && padding == (1, 1)
            && h.is_multiple_of(2)
            && w.is_multiple_of(2)
            && h > 0
            && w > 0
            && c >= MIN_CHANNELS
            && o > 0;
        (f32_fast && shape_fits && enabled()).then_some(Winograd { c, o, h, w })
    }

    /// [`Self::new`] for the forward (and the weight gradient) of `g`.
    pub(crate) fn forward_of<T: 'static>(g: &ConvGeometry) -> Option<Self> {
        Self::new::<T>(g.c, g.o, g.h, g.w, (g.kh, g.kw), (g.sh, g.sw), (g.ph, g.pw))
    }

    /// [`Self::new`] for the input gradient of `g`: the stride-1 conv of `dy` (`o` channels) with
    /// the flipped weight, padding `k - 1 - p` (`None` for other strides).
    pub(crate) fn data_grad_of<T: 'static>(g: &ConvGeometry) -> Option<Self> {
        let as_conv = g.sh == 1 && g.sw == 1 && g.ph < g.kh && g.pw < g.kw;
        let pad = (g.kh.saturating_sub(1 + g.ph), g.kw.saturating_sub(1 + g.pw));
        let kernel = (g.kh, g.kw);
        as_conv
            .then(|| Self::new::<T>(g.o, g.c, g.oh, g.ow, kernel, (1, 1), pad))
            .flatten()
    }

    fn tiles(&self) -> usize {
        (self.h / 2) * (self.w / 2)
    }

    /// Images per GEMM block (callers chunk their batches by it).
    pub(crate) fn block(&self) -> usize {
        // V and M hold 16·(c + o) floats a tile.
        (BLOCK_BYTES / (self.tiles() * 64 * (self.c + self.o))).max(1)
    }

    /// Floats between the `V[ξ]` (`M[ξ]`) blocks beyond `c·nt` (`o·nt`): 64 bytes, so the 16
    /// streams a transform reads or writes at once do not all fall in one cache set.
    const SKEW: usize = 16;

    /// Scratch floats [`Self::run`] needs for `images` images (it asks for no more).
    pub(crate) fn scratch_len(&self, images: usize) -> usize {
        let (h, w, tiles) = (self.h, self.w, self.tiles());
        let nt = self.block().min(images.max(1)) * tiles;
        let rows = 8 * (h / 2 + 1) * (w / 2);
        16 * ((self.c + self.o) * nt + 2 * Self::SKEW) + (2 * rows).max(4 * tiles)
    }

    /// The transformed weight `U[ξ, o, c] = (G g Gᵀ)[ξ]` of `weight [o, c, 3, 3]`, in f64 then
    /// rounded once.
    pub(crate) fn weight(&self, weight: &[f32]) -> Vec<f32> {
        let (c, o) = (self.c, self.o);
        assert!(weight.len() >= o * c * 9);
        let mut u = vec![0.0f32; 16 * o * c];
        // One transformed position ξ = (a, s) per task: this runs on every conv call.
        u.par_chunks_mut(o * c).enumerate().for_each(|(xi, block)| {
            let (a, s) = (xi / 4, xi % 4);
            for (u, g) in block.iter_mut().zip(weight.chunks_exact(9)) {
                let mut v = 0.0f64;
                for i in 0..3 {
                    for j in 0..3 {
                        v += G[a][i] * g[i * 3 + j] as f64 * G[s][j];
                    }
                }
                *u = v as f32;
            }
        });
        u
    }

    /// `y = conv3x3(x, g)` for `images` images, `u` = [`Self::weight`]`(g)`; `scratch` holds at
    /// least [`Self::scratch_len`]`(images)` floats. `per_image(i, y_i)` runs on each output
    /// image as soon as it is written (while it is in cache): the conv's epilogue.
    pub(crate) fn run(
        &self,
        x: &[f32],
        u: &[f32],
        y: &mut [f32],
        scratch: &mut [f32],
        mut per_image: impl FnMut(usize, &mut [f32]),
    ) {
        let (c, o, h, w) = (self.c, self.o, self.h, self.w);
        let (pin, tiles) = (h * w, self.tiles());
        let images = x.len() / (c * pin);
        assert!(
            x.len() == images * c * pin && y.len() >= images * o * pin && u.len() == 16 * o * c,
            "winograd: buffers do not match the shape"
        );
        self.for_blocks(images, scratch, |first, nb, nt, b| {
            let BlockScratch { v, vs, m, ms, rows } = b;
            for i in 0..nb {
                let img = &x[(first + i) * c * pin..][..c * pin];
                self.input_transform(img, v, vs, nt, i * tiles, rows);
            }
            // M[ξ] = U[ξ] · V[ξ]: row p of V[ξ] starts p·nt further.
            let offsets: Vec<usize> = (0..c).map(|p| p * nt).collect();
            for xi in 0..16 {
                gemm_f32_gathered(
                    &u[xi * o * c..][..o * c],
                    c,
                    o,
                    &v[xi * vs..][..c * nt],
                    &offsets,
                    nt,
                    &mut m[xi * ms..][..o * nt],
                    nt,
                    false,
                );
            }
            for i in 0..nb {
                let out = &mut y[(first + i) * o * pin..][..o * pin];
                self.output_transform(m, ms, nt, i * tiles, out, rows);
                per_image(first + i, out);
            }
        });
    }

    /// `f(first, nb, nt, scratch)` for each block of `nb` ≤ [`Self::block`] images of `images`
    /// (`nt = nb·tiles`), with the block's buffers carved from `scratch` (frames zeroed).
    fn for_blocks(
        &self,
        images: usize,
        scratch: &mut [f32],
        mut f: impl FnMut(usize, usize, usize, BlockScratch),
    ) {
        assert!(
            scratch.len() >= self.scratch_len(images),
            "winograd: scratch too small"
        );
        let (c, o, tiles) = (self.c, self.o, self.tiles());
        let mut first = 0;
        while first < images {
            let nb = self.block().min(images - first);
            let nt = nb * tiles;
            let (vs, ms) = (c * nt + Self::SKEW, o * nt + Self::SKEW);
            let (v, rest) = scratch.split_at_mut(16 * vs);
            let (m, rows) = rest.split_at_mut(16 * ms);
            let buffers = BlockScratch { v, vs, m, ms, rows };
            f(first, nb, nt, buffers);
            first += nb;
        }
    }

    /// The weight gradient in the transformed domain: `du[ξ, c, o] (+)= Σ_t V[ξ, c, t] ·
    /// dM[ξ, t, o]` over the tiles of `images` images, where `V` is the forward's input transform
    /// and `dM = A·dY·Aᵀ` the adjoint of its output transform (`dY` a 2x2 block of `dy`).
    /// `dy_hwc` is `dy` with channels last (`[images, h·w, o]`), so `dM` comes out tile-major
    /// with channels along the vectors and each `du[ξ]` is a plain GEMM over the tiles (no
    /// horizontal sums). [`Self::weight_grad_finish`] maps the sum back to `[o, c, 3, 3]`; it is
    /// linear, so partial sums of `du` can be added first. Scratch as for [`Self::run`].
    pub(crate) fn weight_grad(
        &self,
        x: &[f32],
        dy_hwc: &[f32],
        du: &mut [f32],
        accumulate: bool,
        scratch: &mut [f32],
    ) {
        let (c, o, h, w) = (self.c, self.o, self.h, self.w);
        let (pin, tiles) = (h * w, self.tiles());
        let images = x.len() / (c * pin);
        assert!(
            x.len() == images * c * pin
                && dy_hwc.len() >= images * o * pin
                && du.len() >= 16 * o * c,
            "winograd weight gradient: buffers do not match the shape"
        );
        if !accumulate {
            du[..16 * o * c].fill(0.0);
        }
        self.for_blocks(images, scratch, |first, nb, nt, b| {
            let BlockScratch { v, vs, m, ms, rows } = b;
            for i in 0..nb {
                let img = &x[(first + i) * c * pin..][..c * pin];
                self.input_transform(img, v, vs, nt, i * tiles, rows);
                let grad = &dy_hwc[(first + i) * o * pin..][..o * pin];
                // SAFETY: `fast_f32_available` was checked in `new`; the kernel checks sizes.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    avx512::adjoint_tiles(grad, w, o, &mut m[i * tiles * o..], ms, tiles)
                };
            }
            for xi in 0..16 {
                gemm_f32(
                    MatRef::rows(&v[xi * vs..][..c * nt], c, nt),
                    MatRef::rows(&m[xi * ms..][..nt * o], nt, o),
                    &mut du[xi * c * o..][..c * o],
                    true,
                );
            }
        });
    }

    /// `dw[o, c, i, j] = Σ_{a,s} G[a, i] · du[(a, s), c, o] · G[s, j]` (the adjoint of
    /// [`Self::weight`]), in f64 then rounded once.
    pub(crate) fn weight_grad_finish(&self, du: &[f32], dw: &mut [f32]) {
        let (c, o) = (self.c, self.o);
        assert!(du.len() >= 16 * o * c && dw.len() >= 9 * o * c);
        dw[..9 * o * c]
            .par_chunks_mut(9 * c)
            .enumerate()
            .for_each(|(oi, dw)| {
                for (ci, dw) in dw.chunks_exact_mut(9).enumerate() {
                    let d: [f64; 16] = std::array::from_fn(|xi| du[(xi * c + ci) * o + oi] as f64);
                    for i in 0..3 {
                        for j in 0..3 {
                            let mut v = 0.0f64;
                            for a in 0..4 {
                                for s in 0..4 {
                                    v += G[a][i] * d[a * 4 + s] * G[s][j];
                                }
                            }
                            dw[i * 3 + j] = v as f32;
                        }
                    }
                }
            });
    }

    /// `V[ξ·vs + ci·nt + t0 + t] = (Bᵀ d B)[ξ]` for every tile `t` of one image `x [c, h, w]`.
    /// Per channel: transformed across straight from `x` (the zero frame is masked loads) into
    /// `rows` (two buffers), split by padded-row parity so the down transform reads them at `t`
    /// and `t + tw` for every tile (one vector covers 16 tiles whatever the width), then down.
    /// The two stages run a channel apart, so the down transform does not read what the across
    /// transform has just stored (on 8x8 maps those loads waited on the stores).
    fn input_transform(
        &self,
        x: &[f32],
        v: &mut [f32],
        vs: usize,
        nt: usize,
        t0: usize,
        rows: &mut [f32],
    ) {
        let (c, h, w) = (self.c, self.h, self.w);
        let (tw, tiles) = (w / 2, self.tiles());
        let half = (h / 2 + 1) * tw;
        let rows = rows.split_at_mut(8 * half);
        let mut rows = [rows.0, rows.1];
        assert!(rows[1].len() >= 8 * half);
        assert!(v.len() >= 15 * vs + (c - 1) * nt + t0 + tiles && t0 + tiles <= nt);
        // The frame's top and bottom rows transform to zeros: written once, kept by both buffers.
        for buffer in rows.iter_mut() {
            for pr in [0, h + 1] {
                let at = (pr % 2) * half + (pr / 2) * tw;
                for s in 0..4 {
                    buffer[s * 2 * half + at..][..tw].fill(0.0);
                }
            }
        }
        for step in 0..c + 1 {
            // SAFETY: `fast_f32_available` was checked in `new`; the sizes were checked above
            // and by the kernels.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                if step < c {
                    // The next channel's plane is a page or less: start it on its way from
                    // memory (the hardware prefetchers do not cross pages).
                    if step + 1 < c {
                        prefetch(x, (step + 1) * h * w, h * w);
                    }
                    let plane = &x[step * h * w..][..h * w];
                    avx512::across_plane(plane, (h, w), rows[step % 2]);
                }
                if step >= 1 {
                    let ci = step - 1;
                    avx512::down_tiles(rows[ci % 2], half, tw, tiles, v, vs, ci * nt + t0);
                }
            }
        }
    }

    /// `y[oi, 2ty + i, 2tx + j] = (Aᵀ M A)[i, j]` for the tiles `t0..t0 + tiles` of
    /// `M [ξ·ms + oi·nt + t]`; `rows` is scratch for the four output phases.
    fn output_transform(
        &self,
        m: &[f32],
        ms: usize,
        nt: usize,
        t0: usize,
        y: &mut [f32],
        rows: &mut [f32],
    ) {
        let (o, h, w) = (self.o, self.h, self.w);
        let tiles = self.tiles();
        assert!(m.len() >= 15 * ms + (o - 1) * nt + t0 + tiles && t0 + tiles <= nt);
        assert!(y.len() >= o * h * w && rows.len() >= 4 * tiles);
        for oi in 0..o {
            // SAFETY: as in `input_transform`; sizes checked above.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                let plane = &mut y[oi * h * w..][..h * w];
                avx512::output_channel(m, ms, oi * nt + t0, rows, plane, (h, w))
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The first `n` lanes (n ≤ 16).
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// The across transform of the inner rows `1..=h` of one channel `plane [h, w]` with its
    /// zero frame, into `rows` (see `input_transform`; the frame's top and bottom rows are the
    /// caller's).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn across_plane(plane: &[f32], (h, w): (usize, usize), rows: &mut [f32]) {
        let tw = w / 2;
        let half = (h / 2 + 1) * tw;
        assert!(plane.len() == h * w);
        for r in 0..h {
            let pr = r + 1;
            let at = (pr % 2) * half + (pr / 2) * tw;
            across_row(&plane[r * w..][..w], rows, 2 * half, at);
        }
    }

    /// The lanes `l` of a 16-float load at `xr[start..]` with `0 <= start + l < w`: the rest
    /// are the zero frame (or a later tile's lanes, which the stores drop).
    #[inline(always)]
    fn inside(start: isize, w: usize) -> __mmask16 {
        let lo = (-start).clamp(0, 16) as u32;
        let hi = (w as isize - start).clamp(0, 16) as u32;
        (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16
    }

    /// One output channel's transform: `Aᵀ·M·A` of its tiles `m[ξ·ms + src + t]` into the
    /// phases in `rows`, interleaved into `plane [h, w]`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_channel(
        m: &[f32],
        ms: usize,
        src: usize,
        rows: &mut [f32],
        plane: &mut [f32],
        (h, w): (usize, usize),
    ) {
        let (th, tw) = (h / 2, w / 2);
        assert!(plane.len() == h * w);
        if tw % 8 == 0 || 8 % tw == 0 {
            return output_direct(m, ms, src, plane, (h, w));
        }
        output_tiles(m, ms, src, th * tw, rows);
        for ty in 0..th {
            interleave_rows(rows, th * tw, ty * tw, &mut plane[2 * ty * w..], w, tw);
        }
    }

    /// [`output_channel`] for tile rows of 1, 2, 4 or a multiple of 8 tiles, straight from
    /// registers: each half-vector of 8 tiles, interleaved, is one piece of a pixel row or
    /// whole pixel rows. (Through the phase buffer, the interleave's loads waited on the
    /// masked stores just before them: 13 % of a two-thread step on 8x8 and 16x16 maps.)
    #[target_feature(enable = "avx512f")]
    unsafe fn output_direct(
        m: &[f32],
        ms: usize,
        src: usize,
        plane: &mut [f32],
        (h, w): (usize, usize),
    ) {
        let (th, tw) = (h / 2, w / 2);
        let tiles = th * tw;
        assert!(m.len() >= 15 * ms + src + tiles && plane.len() == h * w);
        assert!(tw % 8 == 0 || 8 % tw == 0);
        let (mp, yp) = (m.as_ptr().add(src), plane.as_mut_ptr());
        // Lanes 0..8 (lo) and 8..16 (hi) of two vectors a, b interleaved: a0 b0 a1 b1 ...
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let mut t = 0;
        while t < tiles {
            let k = mask(tiles - t);
            let wv: [[__m512; 2]; 4] = std::array::from_fn(|a| {
                let r: [__m512; 4] =
                    std::array::from_fn(|s| _mm512_maskz_loadu_ps(k, mp.add((a * 4 + s) * ms + t)));
                [
                    _mm512_add_ps(_mm512_add_ps(r[0], r[1]), r[2]),
                    _mm512_sub_ps(_mm512_sub_ps(r[1], r[2]), r[3]),
                ]
            });
            for i in 0..2 {
                let pair: [__m512; 2] = std::array::from_fn(|j| {
                    if i == 0 {
                        _mm512_add_ps(_mm512_add_ps(wv[0][j], wv[1][j]), wv[2][j])
                    } else {
                        _mm512_sub_ps(_mm512_sub_ps(wv[1][j], wv[2][j]), wv[3][j])
                    }
                });
                let halves = [
                    _mm512_permutex2var_ps(pair[0], lo, pair[1]),
                    _mm512_permutex2var_ps(pair[0], hi, pair[1]),
                ];
                for (half, &v) in halves.iter().enumerate() {
                    let t0 = t + 8 * half;
                    if t0 >= tiles {
                        break;
                    }
                    if tw % 8 == 0 {
                        // 8 tiles of one tile row: 2·8 pixels of row 2ty + i.
                        let (ty, tx) = (t0 / tw, t0 % tw);
                        let n = (tiles - t0).min(8);
                        _mm512_mask_storeu_ps(yp.add((2 * ty + i) * w + 2 * tx), mask(2 * n), v);
                    } else {
                        // 8 / tw whole tile rows, 2·tw = w pixels each: lanes r·w..(r+1)·w of
                        // `v` are row 2(ty0 + r) + i.
                        for r in 0..8 / tw {
                            let tr = t0 + r * tw;
                            if tr >= tiles {
                                break;
                            }
                            let lanes = ((1u32 << w) - 1) << (r * w);
                            let row = yp.add((2 * (tr / tw) + i) * w);
                            _mm512_mask_storeu_ps(row.wrapping_sub(r * w), lanes as __mmask16, v);
                        }
                    }
                }
            }
            t += 16;
        }
    }

    /// One input row `xr` (`w = 2·tw` values, read with the zero frame around it) transformed
    /// across: `u_s[tx]` = `(d·B)[s]` of the tile's 4 values `d_k = xr[2tx + k - 1]`, written
    /// to `rows[s·stride + dst + tx]`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn across_row(xr: &[f32], rows: &mut [f32], stride: usize, dst: usize) {
        let (w, tw) = (xr.len(), xr.len() / 2);
        assert!(rows.len() >= 3 * stride + dst + tw);
        let out = rows.as_mut_ptr().add(dst);
        // Masked lanes are never read, so the pointer may sit outside the row.
        let at = |i: isize| xr.as_ptr().wrapping_offset(i);
        let load = |i: isize| _mm512_maskz_loadu_ps(inside(i, w), at(i));
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let mut tx = 0;
        while tx < tw {
            let k = mask(tw - tx);
            let p = 2 * tx as isize - 1;
            let (a, b) = (load(p), load(p + 16));
            let (c, d) = (load(p + 2), load(p + 18));
            let d0 = _mm512_permutex2var_ps(a, even, b);
            let d1 = _mm512_permutex2var_ps(a, odd, b);
            let d2 = _mm512_permutex2var_ps(c, even, d);
            let d3 = _mm512_permutex2var_ps(c, odd, d);
            let u = [
                _mm512_sub_ps(d0, d2),
                _mm512_add_ps(d1, d2),
                _mm512_sub_ps(d2, d1),
                _mm512_sub_ps(d1, d3),
            ];
            for (s, &us) in u.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(s * stride + tx), k, us);
            }
            tx += 16;
        }
    }

    /// The down transform `Bᵀ·u` of every tile, 16 tiles a vector: padded rows 2ty..2ty+3 of
    /// `u_s` are the even/odd parity blocks (`half` apart) at tiles `t` and `t + tw`. Writes
    /// `v[ξ·vs + dst + t]`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn down_tiles(
        rows: &[f32],
        half: usize,
        tw: usize,
        tiles: usize,
        v: &mut [f32],
        vs: usize,
        dst: usize,
    ) {
        assert!(rows.len() >= 8 * half && tiles + tw <= half);
        assert!(v.len() >= 15 * vs + dst + tiles);
        let (rp, vp) = (rows.as_ptr(), v.as_mut_ptr().add(dst));
        let mut t = 0;
        while t < tiles {
            let k = mask(tiles - t);
            for s in 0..4 {
                let (ev, od) = (rp.add(2 * s * half + t), rp.add((2 * s + 1) * half + t));
                let (e0, o0) = (_mm512_maskz_loadu_ps(k, ev), _mm512_maskz_loadu_ps(k, od));
                let e1 = _mm512_maskz_loadu_ps(k, ev.add(tw));
                let o1 = _mm512_maskz_loadu_ps(k, od.add(tw));
                let out = [
                    _mm512_sub_ps(e0, e1),
                    _mm512_add_ps(o0, e1),
                    _mm512_sub_ps(e1, o0),
                    _mm512_sub_ps(o0, o1),
                ];
                for (a, &va) in out.iter().enumerate() {
                    _mm512_mask_storeu_ps(vp.add((a * 4 + s) * vs + t), k, va);
                }
            }
            t += 16;
        }
    }

    /// `Aᵀ·M·A` of every tile of one output channel, 16 tiles a vector: `m[ξ·ms + src + t]` in,
    /// the four phases `Y[i, j]` out to `rows[(2i + j)·tiles + t]`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_tiles(
        m: &[f32],
        ms: usize,
        src: usize,
        tiles: usize,
        rows: &mut [f32],
    ) {
        assert!(m.len() >= 15 * ms + src + tiles && rows.len() >= 4 * tiles);
        let (mp, yp) = (m.as_ptr().add(src), rows.as_mut_ptr());
        let mut t = 0;
        while t < tiles {
            let k = mask(tiles - t);
            let wv: [[__m512; 2]; 4] = std::array::from_fn(|a| {
                let r: [__m512; 4] =
                    std::array::from_fn(|s| _mm512_maskz_loadu_ps(k, mp.add((a * 4 + s) * ms + t)));
                [
                    _mm512_add_ps(_mm512_add_ps(r[0], r[1]), r[2]),
                    _mm512_sub_ps(_mm512_sub_ps(r[1], r[2]), r[3]),
                ]
            });
            for j in 0..2 {
                let y0 = _mm512_add_ps(_mm512_add_ps(wv[0][j], wv[1][j]), wv[2][j]);
                let y1 = _mm512_sub_ps(_mm512_sub_ps(wv[1][j], wv[2][j]), wv[3][j]);
                _mm512_mask_storeu_ps(yp.add(j * tiles + t), k, y0);
                _mm512_mask_storeu_ps(yp.add((2 + j) * tiles + t), k, y1);
            }
            t += 16;
        }
    }

    /// `A·dY·Aᵀ` of every tile of one channels-last gradient image `dy [h·w, o]`, vectors
    /// along the channels: `m[ξ·ms + t·o + oi]` for tile `t`, `A = [1 0; 1 1; 1 -1; 0 -1]`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn adjoint_tiles(
        dy: &[f32],
        w: usize,
        o: usize,
        m: &mut [f32],
        ms: usize,
        tiles: usize,
    ) {
        let tw = w / 2;
        assert!(dy.len() >= 4 * tiles * o && m.len() >= 15 * ms + tiles * o);
        let (yp, mp) = (dy.as_ptr(), m.as_mut_ptr());
        let zero = _mm512_setzero_ps();
        for t in 0..tiles {
            let p00 = (2 * (t / tw) * w + 2 * (t % tw)) * o;
            let p10 = p00 + w * o;
            let mut oi = 0;
            while oi < o {
                let k = mask(o - oi);
                let ld = |at: usize| _mm512_maskz_loadu_ps(k, yp.add(at + oi));
                // r_i[s] = Σ_j dY[i, j]·A[s, j] for the two rows i of the tile.
                let r: [[__m512; 4]; 2] = std::array::from_fn(|i| {
                    let at = if i == 0 { p00 } else { p10 };
                    let (y0, y1) = (ld(at), ld(at + o));
                    [
                        y0,
                        _mm512_add_ps(y0, y1),
                        _mm512_sub_ps(y0, y1),
                        _mm512_sub_ps(zero, y1),
                    ]
                });
                let dst = mp.add(t * o + oi);
                for s in 0..4 {
                    let out = [
                        r[0][s],
                        _mm512_add_ps(r[0][s], r[1][s]),
                        _mm512_sub_ps(r[0][s], r[1][s]),
                        _mm512_sub_ps(zero, r[1][s]),
                    ];
                    for (a, &va) in out.iter().enumerate() {
                        _mm512_mask_storeu_ps(dst.add((a * 4 + s) * ms), k, va);
                    }
                }
                oi += 16;
            }
        }
    }

    /// Output rows `2ty` and `2ty + 1` of one channel from the phases of its tile row (tiles
    /// `first..first + tw`): `y[i·w + 2tx + j] = Y[i, j][first + tx]`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn interleave_rows(
        rows: &[f32],
        tiles: usize,
        first: usize,
        y: &mut [f32],
        w: usize,
        tw: usize,
    ) {
        assert!(rows.len() >= 4 * tiles && first + tw <= tiles && y.len() >= w + 2 * tw);
        let (rp, yp) = (rows.as_ptr().add(first), y.as_mut_ptr());
        // Lanes 0..8 (lo) and 8..16 (hi) of two vectors a, b interleaved: a0 b0 a1 b1 ...
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let mut tx = 0;
        while tx < tw {
            let n = (tw - tx).min(16);
            let k = mask(n);
            for i in 0..2 {
                let p0 = _mm512_maskz_loadu_ps(k, rp.add(2 * i * tiles + tx));
                let p1 = _mm512_maskz_loadu_ps(k, rp.add((2 * i + 1) * tiles + tx));
                let row = yp.add(i * w + 2 * tx);
                _mm512_mask_storeu_ps(row, mask(2 * n), _mm512_permutex2var_ps(p0, lo, p1));
                if n > 8 {
                    let second = _mm512_permutex2var_ps(p0, hi, p1);
                    _mm512_mask_storeu_ps(row.add(16), mask(2 * n - 16), second);
                }
            }
            tx += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{conv2d_backward_direct, conv2d_forward_direct};

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// The geometry and the Winograd plan of a 3x3 / stride 1 / padding 1 test case, or `None`
    /// after a printed SKIP where the AVX-512 path is not taken (no avx512f, or
    /// `LIT_CPU_AVX512=off`); such a CPU convolves by im2col, which the conv tests cover.
    fn case(n: usize, c: usize, o: usize, h: usize, w: usize) -> Option<(ConvGeometry, Winograd)> {
        if !fast_f32_available() {
            crate::testing::skip_unless_required(
                "LIT_REQUIRE_AVX512",
                "the AVX-512 path is not taken here: Winograd (AVX-512 only) is not used",
            );
            return None;
        }
        let g = ConvGeometry::new(&[n, c, h, w], &[o, c, 3, 3], (1, 1), (1, 1)).unwrap();
        let wg = Winograd::new::<f32>(c, o, h, w, (3, 3), (1, 1), (1, 1));
        Some((g, wg.expect("the shape qualifies")))
    }

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&v| v as f64).collect()
    }

    /// Against the direct loops in f64, on maps whose tile rows fill 1, 2 and ragged vectors.
    #[test]
    fn matches_direct_convolution() {
        for &(n, c, o, h, w) in &[
            (1, 8, 8, 2, 2),
            (2, 16, 16, 8, 8),
            (3, 16, 32, 16, 16),
            (1, 32, 16, 32, 32),
            (2, 9, 5, 6, 40),
            (5, 64, 64, 8, 8),
            (1, 8, 3, 34, 4),
        ] {
            let Some((g, wg)) = case(n, c, o, h, w) else {
                return;
            };
            let (x, k) = (values(n * c * h * w, 1), values(o * c * 9, 2));
            let mut want = vec![0.0f64; n * o * h * w];
            conv2d_forward_direct(&g, &f64s(&x), &f64s(&k), None, &mut want);
            let mut got = vec![f32::NAN; n * o * h * w];
            let mut scratch = vec![0.0f32; wg.scratch_len(n)];
            let mut seen = Vec::new();
            wg.run(&x, &wg.weight(&k), &mut got, &mut scratch, |i, _| {
                seen.push(i)
            });
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "per-image hook order");
            let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            crate::testing::assert_close(
                &format!("winograd n{n} c{c} o{o} {h}x{w}"),
                &got,
                &want32,
                1e-6,
                1e-7,
            );
        }
    }

    /// The weight gradient against the direct loops in f64, with `du` accumulated over two calls.
    #[test]
    fn weight_grad_matches_direct() {
        for &(n, c, o, h, w) in &[
            (1, 8, 8, 2, 2),
            (2, 16, 16, 8, 8),
            (3, 16, 32, 16, 16),
            (2, 32, 16, 32, 32),
            (2, 9, 5, 6, 40),
            (20, 64, 64, 8, 8),
        ] {
            let Some((g, wg)) = case(n, c, o, h, w) else {
                return;
            };
            let (x, dy) = (values(n * c * h * w, 3), values(n * o * h * w, 4));
            let mut want = vec![0.0f64; o * c * 9];
            let zeros = vec![0.0f64; o * c * 9];
            conv2d_backward_direct(&g, &f64s(&x), &zeros, &f64s(&dy), None, Some(&mut want));
            let mut du = vec![f32::NAN; 16 * o * c];
            // Two calls: the first `split` images, then the rest accumulated.
            let split = n / 2;
            let (pin, pout) = (c * h * w, o * h * w);
            let mut scratch = vec![0.0f32; wg.scratch_len(n)];
            // dy channels last: [n, h·w, o].
            let mut dy_hwc = vec![0.0f32; dy.len()];
            for img in 0..n {
                for oi in 0..o {
                    for p in 0..h * w {
                        dy_hwc[(img * h * w + p) * o + oi] = dy[(img * o + oi) * h * w + p];
                    }
                }
            }
            wg.weight_grad(
                &x[..split * pin],
                &dy_hwc[..split * pout],
                &mut du,
                false,
                &mut scratch,
            );
            wg.weight_grad(
                &x[split * pin..],
                &dy_hwc[split * pout..],
                &mut du,
                true,
                &mut scratch,
            );
            let mut got = vec![f32::NAN; o * c * 9];
            wg.weight_grad_finish(&du, &mut got);
            let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            crate::testing::assert_close(
                &format!("winograd dw n{n} c{c} o{o} {h}x{w}"),
                &got,
                &want32,
                1e-6,
                1e-7,
            );
        }
    }

    #[test]
    fn declines_other_shapes() {
        let ok = |c, h, w, k, s, p| Winograd::new::<f32>(c, 4, h, w, k, s, p).is_some();
        let (k3, s1, p1) = ((3, 3), (1, 1), (1, 1));
        assert!(!ok(16, 7, 8, k3, s1, p1), "odd height");
        assert!(!ok(16, 8, 9, k3, s1, p1), "odd width");
        assert!(!ok(16, 8, 8, k3, (2, 2), p1), "stride 2");
        assert!(!ok(16, 8, 8, (1, 1), s1, (0, 0)), "1x1");
        assert!(!ok(16, 8, 8, k3, s1, (0, 0)), "no padding");
        assert!(!ok(3, 8, 8, k3, s1, p1), "RGB stem");
        assert!(
            !Winograd::new::<f64>(16, 4, 8, 8, k3, s1, p1).is_some(),
            "f64"
        );
    }
}
