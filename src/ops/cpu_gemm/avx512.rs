//! The AVX-512 kernels behind [`super::gemm_f32`], [`super::gemm_f32_gathered`] and
//! [`super::gemm_f32_gathered_dot`]: register tiles of `C` with the channels along the 16-lane
//! vectors. Callers check `avx512f` first.

use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::ops::cpu::MatRef;

/// Depth of one pass over `C` (`KC x n` of `B` stays in L2).
const KC: usize = 512;

thread_local! {
    /// Row-major copy of a `B` whose rows are not contiguous, reused across calls.
    static B_COPY: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// A strided read-only view as raw parts (offsets checked by the caller's asserts).
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// `c = a·b + (accumulate ? c : 0)`; `c` row-major with row stride `n`.
pub fn gemm(a: MatRef<f32>, b: MatRef<f32>, c: &mut [f32], accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    check_view(&a);
    check_view(&b);
    assert!(c.len() >= m * n, "gemm output too small");
    let av = View {
        ptr: a.data.as_ptr(),
        rs: a.row_stride,
        cs: a.col_stride,
    };
    if b.col_stride == 1 {
        let bv = View {
            ptr: b.data.as_ptr(),
            rs: b.row_stride,
            cs: 1,
        };
        // SAFETY: avx512f is present (the caller checked `available`), the views were
        // bounds-checked above and `c` holds `m x n`.
        return unsafe { gemm_views(m, k, n, av, bv, c.as_mut_ptr(), accumulate) };
    }
    B_COPY.with(|cell| {
        let mut guard = cell.try_borrow_mut();
        let mut private = Vec::new();
        let buf = match guard.as_deref_mut() {
            Ok(buf) => buf,
            Err(_) => &mut private,
        };
        buf.clear();
        buf.reserve(k * n);
        for p in 0..k {
            for j in 0..n {
                let at = p as isize * b.row_stride + j as isize * b.col_stride;
                buf.push(b.data[at as usize]);
            }
        }
        let bv = View {
            ptr: buf.as_ptr(),
            rs: n as isize,
            cs: 1,
        };
        // SAFETY: as above; `buf` is `k x n` row-major.
        unsafe { gemm_views(m, k, n, av, bv, c.as_mut_ptr(), accumulate) }
    });
}

/// Every element a view can address lies inside its slice.
fn check_view(v: &MatRef<f32>) {
    if v.rows == 0 || v.cols == 0 {
        return;
    }
    let corners = [
        0,
        (v.rows as isize - 1) * v.row_stride,
        (v.cols as isize - 1) * v.col_stride,
        (v.rows as isize - 1) * v.row_stride + (v.cols as isize - 1) * v.col_stride,
    ];
    let lo = corners.iter().copied().min().unwrap_or(0);
    let hi = corners.iter().copied().max().unwrap_or(0);
    assert!(
        lo >= 0 && (hi as usize) < v.data.len(),
        "gemm view outside its slice"
    );
}

#[target_feature(enable = "avx512f")]
unsafe fn gemm_views(
    m: usize,
    k: usize,
    n: usize,
    a: View,
    b: View,
    c: *mut f32,
    accumulate: bool,
) {
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let acc = accumulate || k0 > 0;
        let a_k = View {
            ptr: a.ptr.offset(k0 as isize * a.cs),
            ..a
        };
        let b_k = b.ptr.offset(k0 as isize * b.rs);
        // Short `m` (the Winograd weight gradient's channel x channel blocks) gets row tiles
        // that divide it; long `m` the tallest that fit the registers.
        if n <= 16 && m <= 16 {
            band::<16, 1>(m, kc, n, a_k, b_k, b.rs, c, acc);
        } else if n <= 16 {
            band::<28, 1>(m, kc, n, a_k, b_k, b.rs, c, acc);
        } else if n <= 32 && m <= 32 {
            band::<8, 2>(m, kc, n, a_k, b_k, b.rs, c, acc);
        } else {
            band::<14, 2>(m, kc, n, a_k, b_k, b.rs, c, acc);
        }
        k0 += kc;
    }
}

/// All row tiles of `C` for one block of `k`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn band<const MR: usize, const NV: usize>(
    m: usize,
    k: usize,
    n: usize,
    a: View,
    b: *const f32,
    b_rs: isize,
    c: *mut f32,
    accumulate: bool,
) {
    let nr = 16 * NV;
    let mut i0 = 0;
    while i0 < m {
        let rows = MR.min(m - i0);
        // Rows past the end repeat row 0 of the tile (valid memory) and are not stored.
        let offsets: [isize; MR] =
            std::array::from_fn(|i| if i < rows { i as isize * a.rs } else { 0 });
        let a_tile = a.ptr.offset(i0 as isize * a.rs);
        let mut j0 = 0;
        while j0 < n {
            let cols = nr.min(n - j0);
            let c_tile = c.add(i0 * n + j0);
            if cols > 16 * (NV - 1) {
                tile::<MR, NV>(
                    k,
                    a_tile,
                    &offsets,
                    a.cs,
                    b.add(j0),
                    b_rs,
                    c_tile,
                    n,
                    rows,
                    cols,
                    accumulate,
                );
            } else {
                // At most one vector of columns left: a narrower tile wastes no FMAs.
                tile::<MR, 1>(
                    k,
                    a_tile,
                    &offsets,
                    a.cs,
                    b.add(j0),
                    b_rs,
                    c_tile,
                    n,
                    rows,
                    cols,
                    accumulate,
                );
            }
            j0 += nr;
        }
        i0 += MR;
    }
}

/// Mask of the first `cols - 16·v` lanes of vector `v` (all 16 when `cols` covers it).
#[inline(always)]
fn lane_mask(cols: usize, v: usize) -> __mmask16 {
    let left = cols.saturating_sub(16 * v).min(16);
    ((1u32 << left) - 1) as __mmask16
}

/// One `MR x 16·NV` tile: `c[i, j] (+)= Σ_p a[offsets[i] + p·a_cs] · b[p·b_rs + j]`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const MR: usize, const NV: usize>(
    k: usize,
    a: *const f32,
    offsets: &[isize; MR],
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    let masks: [__mmask16; NV] = std::array::from_fn(|v| lane_mask(cols, v));
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..k {
        let bv: [__m512; NV] =
            std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], bp.add(16 * v)));
        for i in 0..MR {
            let ai = _mm512_set1_ps(*ap.offset(offsets[i]));
            for v in 0..NV {
                acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
            }
        }
        ap = ap.offset(a_cs);
        bp = bp.offset(b_rs);
    }
    for (i, row) in acc.iter().enumerate().take(rows) {
        let cp = c.add(i * ldc);
        for v in 0..NV {
            let dst = cp.add(16 * v);
            let mut val = row[v];
            if accumulate {
                val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(masks[v], dst));
            }
            _mm512_mask_storeu_ps(dst, masks[v], val);
        }
    }
}

/// See [`super::gemm_f32_gathered`] (arguments checked there).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub unsafe fn gathered(
    a: *const f32,
    lda: usize,
    m: usize,
    src: *const f32,
    offsets: &[usize],
    n: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    const MR: usize = 8;
    const NV: usize = 3;
    let nr = 16 * NV;
    for (kb, offs) in offsets.chunks(KC).enumerate() {
        let acc = accumulate || kb > 0;
        let a_k = a.add(kb * KC);
        let mut j0 = 0;
        while j0 < n {
            let cols = nr.min(n - j0);
            let masks: [__mmask16; NV] = std::array::from_fn(|v| lane_mask(cols, v));
            let mut i0 = 0;
            while i0 < m {
                let rows = MR.min(m - i0);
                let a_rows: [usize; MR] =
                    std::array::from_fn(|i| if i < rows { i * lda } else { 0 });
                let a_tile = a_k.add(i0 * lda);
                let mut accs = [[_mm512_setzero_ps(); NV]; MR];
                for (p, &off) in offs.iter().enumerate() {
                    let bp = src.add(off + j0);
                    let bv: [__m512; NV] =
                        std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], bp.add(16 * v)));
                    for i in 0..MR {
                        let ai = _mm512_set1_ps(*a_tile.add(a_rows[i] + p));
                        for v in 0..NV {
                            accs[i][v] = _mm512_fmadd_ps(ai, bv[v], accs[i][v]);
                        }
                    }
                }
                for (i, row) in accs.iter().enumerate().take(rows) {
                    let cp = c.add((i0 + i) * ldc + j0);
                    for v in 0..NV {
                        let dst = cp.add(16 * v);
                        let mut val = row[v];
                        if acc {
                            val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(masks[v], dst));
                        }
                        _mm512_mask_storeu_ps(dst, masks[v], val);
                    }
                }
                i0 += MR;
            }
            j0 += nr;
        }
    }
}

/// See [`super::gemm_f32_gathered_dot`] (arguments checked there).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub unsafe fn gathered_dot(
    a: *const f32,
    a_shape: super::DotRows,
    m: usize,
    src: *const f32,
    src_image: usize,
    src_row: usize,
    offsets: &[usize],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // 4 rows of `a` x 6 rows of `b`: 24 accumulators, 10 loads per 24 FMAs.
    const MR: usize = 4;
    const NR: usize = 6;
    let super::DotRows {
        lda,
        image: a_image,
        images,
        rows,
        row: a_row,
        width,
    } = a_shape;
    let masks: Vec<__mmask16> = (0..width.div_ceil(16))
        .map(|v| lane_mask(width, v))
        .collect();
    let n = offsets.len();
    let mut i0 = 0;
    while i0 < m {
        let live_rows = MR.min(m - i0);
        let a_rows: [usize; MR] =
            std::array::from_fn(|i| (i0 + if i < live_rows { i } else { 0 }) * lda);
        let mut j0 = 0;
        while j0 < n {
            let live_cols = NR.min(n - j0);
            let b_offs: [usize; NR] =
                std::array::from_fn(|j| offsets[j0 + if j < live_cols { j } else { 0 }]);
            let mut acc = [[_mm512_setzero_ps(); NR]; MR];
            for img in 0..images {
                let (ap, bp) = (a.add(img * a_image), src.add(img * src_image));
                for r in 0..rows {
                    let (ar, br) = (ap.add(r * a_row), bp.add(r * src_row));
                    for (v, &mask) in masks.iter().enumerate() {
                        let av: [__m512; MR] = std::array::from_fn(|i| {
                            _mm512_maskz_loadu_ps(mask, ar.add(a_rows[i] + 16 * v))
                        });
                        for j in 0..NR {
                            let bv = _mm512_maskz_loadu_ps(mask, br.add(b_offs[j] + 16 * v));
                            for i in 0..MR {
                                acc[i][j] = _mm512_fmadd_ps(av[i], bv, acc[i][j]);
                            }
                        }
                    }
                }
            }
            for (i, row) in acc.iter().enumerate().take(live_rows) {
                for (j, &v) in row.iter().enumerate().take(live_cols) {
                    let dst = c.add((i0 + i) * ldc + j0 + j);
                    let sum = _mm512_reduce_add_ps(v);
                    *dst = if accumulate { *dst + sum } else { sum };
                }
            }
            j0 += NR;
        }
        i0 += MR;
    }
}
