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

use super::ConvGeometry;
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
    pub(crate) fn new(
        c: usize,
        o: usize,
        h: usize,
        w: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Option<Self> {
        let shape_fits = kernel == (3, 3)
            && stride == (1, 1)
            && padding == (1, 1)
            && h.is_multiple_of(2)
            && w.is_multiple_of(2)
            && h > 0
            && w > 0
            && c >= MIN_CHANNELS
            && o > 0;
        (fast_f32_available() && shape_fits && enabled()).then_some(Winograd { c, o, h, w })
    }

    /// [`Self::new`] for the forward (and the weight gradient) of `g`.
    pub(crate) fn forward_of(g: &ConvGeometry) -> Option<Self> {
        Self::new(g.c, g.o, g.h, g.w, (g.kh, g.kw), (g.sh, g.sw), (g.ph, g.pw))
    }

    /// [`Self::new`] for the input gradient of `g`: the stride-1 conv of `dy` (`o` channels) with
    /// the flipped weight, padding `k - 1 - p` (`None` for other strides).
    pub(crate) fn data_grad_of(g: &ConvGeometry) -> Option<Self> {
        let as_conv = g.sh == 1 && g.sw == 1 && g.ph < g.kh && g.pw < g.kw;
        let pad = (g.kh.saturating_sub(1 + g.ph), g.kw.saturating_sub(1 + g.pw));
        let kernel = (g.kh, g.kw);
        as_conv
            .then(|| Self::new(g.o, g.c, g.oh, g.ow, kernel, (1, 1), pad))
            .flatten()
    }

    /// [`Self::forward_of`] when Winograd also serves the input gradient of `g`: the backward
    /// then sizes its chunks to [`Self::block`].
    pub(crate) fn for_backward(g: &ConvGeometry) -> Option<Self> {
        Self::data_grad_of(g).and(Self::forward_of(g))
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
mod avx512;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{conv2d_backward_direct, conv2d_forward_cpu, conv2d_forward_direct};

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
        let wg = Winograd::new(c, o, h, w, (3, 3), (1, 1), (1, 1));
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
        let ok = |c, h, w, k, s, p| Winograd::new(c, 4, h, w, k, s, p).is_some();
        let (k3, s1, p1) = ((3, 3), (1, 1), (1, 1));
        assert!(!ok(16, 7, 8, k3, s1, p1), "odd height");
        assert!(!ok(16, 8, 9, k3, s1, p1), "odd width");
        assert!(!ok(16, 8, 8, k3, (2, 2), p1), "stride 2");
        assert!(!ok(16, 8, 8, (1, 1), s1, (0, 0)), "1x1");
        assert!(!ok(16, 8, 8, k3, s1, (0, 0)), "no padding");
        assert!(!ok(3, 8, 8, k3, s1, p1), "RGB stem");
        // f64 never reaches Winograd (the conv's plans are f32 only): a Winograd shape in f64
        // agrees with the direct loops to f64 precision, which F(2x2, 3x3) in f32 cannot.
        let g = ConvGeometry::new(&[2, 16, 8, 8], &[4, 16, 3, 3], s1, p1).unwrap();
        let (x, k) = (f64s(&values(2 * 16 * 64, 5)), f64s(&values(4 * 16 * 9, 6)));
        let mut want = vec![0.0f64; 2 * 4 * 64];
        conv2d_forward_direct(&g, &x, &k, None, &mut want);
        let mut got = vec![f64::NAN; want.len()];
        conv2d_forward_cpu(&g, &x, &k, None, &mut got);
        let f64_exact = got
            .iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() <= 1e-12 * (1.0 + b.abs()));
        assert!(f64_exact, "f64");
    }
}
