//! Moving values between layouts for the CPU lowerings: NCHW tensors to and from the HWC panels
//! of the GEMMs (8x8 AVX register transposes for f32), and the weight reordered for each lowering.

use super::ConvGeometry;
use crate::ops::Real;

/// `dst[c·dst_stride + r] = src[r·src_stride + c]` for `r < rows`, `c < cols`: between NCHW
/// tensors and the HWC panels of the GEMMs. f32 uses 8x8 AVX register transposes (a scalar
/// transpose costs as much as a third of the GEMM it feeds).
pub(super) fn transpose<T: Real>(
    src: &[T],
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst: &mut [T],
    dst_stride: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    let src = &src[..(rows - 1) * src_stride + cols];
    let dst = &mut dst[..(cols - 1) * dst_stride + rows];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        if let (Some(s), Some(d)) = (T::as_f32s(src), T::as_f32s_mut(dst)) {
            // SAFETY: AVX is available (checked above) and the slices cover every index touched.
            unsafe { transpose_f32_avx(s, rows, cols, src_stride, d, dst_stride) };
            return;
        }
    }
    transpose_scalar(src, (rows, cols), src_stride, dst, dst_stride, (0, 0));
}

/// Scalar transpose of the elements at row `>= from.0` or column `>= from.1` (all for `(0, 0)`).
fn transpose_scalar<T: Copy>(
    src: &[T],
    (rows, cols): (usize, usize),
    src_stride: usize,
    dst: &mut [T],
    dst_stride: usize,
    from: (usize, usize),
) {
    for r in 0..rows {
        let first = if r < from.0 { from.1 } else { 0 };
        for c in first..cols {
            dst[c * dst_stride + r] = src[r * src_stride + c];
        }
    }
}

/// [`transpose`] of f32 by 8x8 register transposes, the ragged edges by [`transpose_scalar`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_f32_avx(
    src: &[f32],
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst: &mut [f32],
    dst_stride: usize,
) {
    use std::arch::x86_64::*;
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    for r0 in (0..r8).step_by(8) {
        for c0 in (0..c8).step_by(8) {
            let at = |i: usize| _mm256_loadu_ps(sp.add((r0 + i) * src_stride + c0));
            let (a0, a1, a2, a3) = (at(0), at(1), at(2), at(3));
            let (a4, a5, a6, a7) = (at(4), at(5), at(6), at(7));
            let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
            let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
            let (t4, t5) = (_mm256_unpacklo_ps(a4, a5), _mm256_unpackhi_ps(a4, a5));
            let (t6, t7) = (_mm256_unpacklo_ps(a6, a7), _mm256_unpackhi_ps(a6, a7));
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (i, v) in out.into_iter().enumerate() {
                _mm256_storeu_ps(dp.add((c0 + i) * dst_stride + r0), v);
            }
        }
    }
    // The ragged right and bottom edges.
    transpose_scalar(src, (rows, cols), src_stride, dst, dst_stride, (r8, c8));
}

/// `y[o, :] += b[o]` over `[O, P]` planes.
pub(super) fn add_bias_planes<T: Real>(y: &mut [T], b: &[T], pixels: usize) {
    for (plane, &bias) in y.chunks_exact_mut(pixels).zip(b.iter().cycle()) {
        for v in plane {
            *v += bias;
        }
    }
}

/// `dst = src` for short runs (one kernel row of an im2col panel): fixed 8-wide copies the
/// compiler keeps in registers instead of a `memcpy` call per run.
#[inline(always)]
pub(super) fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    let split = dst.len() / 8 * 8;
    let (d8, dr) = dst.split_at_mut(split);
    let (s8, sr) = src[..d8.len() + dr.len()].split_at(split);
    for (d, s) in d8.chunks_exact_mut(8).zip(s8.chunks_exact(8)) {
        let v: [T; 8] = s.try_into().expect("8-element chunk");
        d.copy_from_slice(&v);
    }
    for (d, &s) in dr.iter_mut().zip(sr) {
        *d = s;
    }
}

/// `wp[o, (i, j, c)] = w[o, c, i, j]`: the weight in the column order of the panels.
pub(super) fn weight_to_hwc<T: Real>(g: &ConvGeometry, w: &[T]) -> Vec<T> {
    let mut wp = vec![T::ZERO; g.o * g.k()];
    for o in 0..g.o {
        for c in 0..g.c {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    wp[((o * g.kh + i) * g.kw + j) * g.c + c] =
                        w[((o * g.c + c) * g.kh + i) * g.kw + j];
                }
            }
        }
    }
    wp
}

/// `[cols, rows]` row-major from `[rows, cols]` row-major.
pub(super) fn transposed<T: Real>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::ZERO; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// `wc[c, (o, i, j)] = w[o, c, kh-1-i, kw-1-j]`: the weight of the input gradient as a
/// convolution ([`ConvGeometry::data_grad`]), in the usual `[out, in, kh, kw]` layout.
pub(super) fn weight_flipped_chw<T: Real>(g: &ConvGeometry, w: &[T]) -> Vec<T> {
    let mut wc = vec![T::ZERO; g.c * g.o * g.kh * g.kw];
    for o in 0..g.o {
        for c in 0..g.c {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let src = ((o * g.c + c) * g.kh + (g.kh - 1 - i)) * g.kw + (g.kw - 1 - j);
                    wc[((c * g.o + o) * g.kh + i) * g.kw + j] = w[src];
                }
            }
        }
    }
    wc
}
