//! An AVX-512 f32 GEMM for the CPU path (x86_64 with `avx512f`, detected at run time; the
//! `gemm` crate serves every other case). The `gemm` crate only uses AVX2 on stable Rust;
//! these conv/linear shapes (`n` = channels, 16..64 wide; `m` = pixels, long) want a kernel
//! with the channels along the 16-lane vectors and many accumulators.
//!
//! `C[m, n] (+)= A[m, k] · B[k, n]`, `C` row-major. A register tile is `MR` rows of `C` by
//! `NV` vectors of 16 columns: each step of `k` broadcasts `MR` values of `A` straight from
//! its strided view (no packing: on Zen 4 one 512-bit FMA issues per cycle, leaving the load
//! ports idle enough for the broadcasts) and loads `NV` vectors of one row of `B`. `B` is read
//! in place when its rows are contiguous, else copied once to a row-major scratch. The ragged
//! last column vector is masked; the ragged last rows repeat row 0 and are not stored. `k` is
//! cut into blocks of `KC` so a block of `B` stays in L2 while the row tiles stream past.
//!
//! [`gemm_f32_gathered`] is the same tile with `B`'s rows found through an offset table: the
//! implicit im2col of a stride-1 convolution over a padded CHW image (`m` = output channels,
//! 8x48 tiles), so the conv reads activations as stored and writes them channel-major.

#[cfg(target_arch = "x86_64")]
mod avx512 {
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
                        let bv: [__m512; NV] = std::array::from_fn(|v| {
                            _mm512_maskz_loadu_ps(masks[v], bp.add(16 * v))
                        });
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
}

/// How [`gemm_f32_gathered_dot`] walks the rows of `a`: `images` images `image` apart, each
/// `rows` runs of `width` values `row` apart; row `i` of `a` starts `i·lda` further.
#[derive(Clone, Copy, Debug)]
pub struct DotRows {
    pub lda: usize,
    pub image: usize,
    pub images: usize,
    pub rows: usize,
    pub row: usize,
    pub width: usize,
}

/// The weight gradient of a stride-1 convolution read in place from CHW tensors:
/// `c[i, p] (+)= Σ_img Σ_r Σ_t a[img·image + i·lda + r·row + t] · src[img·src_image + offsets[p]
/// + r·src_row + t]` for `t < width` — `a` is `dy` (`i` = output channel, `r`/`t` = output
/// row/column), `src` the zero-padded input images of [`gemm_f32_gathered`]'s layout and `p` =
/// `(c, i, j)`. No transposes: both operands are read along their contiguous output rows.
/// Callers check [`fast_f32_available`] first (panics otherwise).
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_gathered_dot(
    a: &[f32],
    a_shape: DotRows,
    m: usize,
    src: &[f32],
    src_image: usize,
    src_row: usize,
    offsets: &[usize],
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let n = offsets.len();
    if m == 0 || n == 0 {
        return;
    }
    assert!(avx512_supported(), "AVX-512 GEMM on a CPU without avx512f");
    let DotRows {
        lda,
        image,
        images,
        rows,
        row,
        width,
    } = a_shape;
    assert!(
        c.len() >= (m - 1) * ldc + n && ldc >= n,
        "gathered dot: c too small"
    );
    if images == 0 || rows == 0 || width == 0 {
        if !accumulate {
            for line in c.chunks_mut(ldc).take(m) {
                line[..n].fill(0.0);
            }
        }
        return;
    }
    let last_run = (images - 1) * image + (rows - 1) * row + width;
    assert!(
        a.len() >= (m - 1) * lda + last_run,
        "gathered dot: a too small"
    );
    let last_src = (images - 1) * src_image + (rows - 1) * src_row + width;
    assert!(
        offsets.iter().all(|&o| o + last_src <= src.len()),
        "gathered dot: a row of b runs past its source"
    );
    // SAFETY: avx512f is present and every index the kernel touches was checked above (masked
    // lanes beyond `width` are not read).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        avx512::gathered_dot(
            a.as_ptr(),
            a_shape,
            m,
            src.as_ptr(),
            src_image,
            src_row,
            offsets,
            c.as_mut_ptr(),
            ldc,
            accumulate,
        )
    };
}

/// The CPU's f32 GEMM paths: the AVX-512 kernels of this file (and the implicit-GEMM convolutions
/// and Winograd transforms built on them), or the portable path every other CPU runs: the `gemm`
/// crate (AVX2+FMA or SSE by its own detection) behind explicit im2col lowerings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    Avx512,
    Portable,
}

impl GemmPath {
    /// The path f32 work takes in this process: AVX-512 where the CPU has it, unless
    /// `LIT_CPU_AVX512=off` (read once) turns the AVX-512 kernels off (this GEMM, the implicit-GEMM
    /// convolutions, Winograd, the BatchNorm backward sums), so that one machine can run what a
    /// CPU without AVX-512 runs.
    pub fn active() -> GemmPath {
        static FORCED_PORTABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let forced = *FORCED_PORTABLE
            .get_or_init(|| std::env::var("LIT_CPU_AVX512").as_deref() == Ok("off"));
        if avx512_supported() && !forced {
            GemmPath::Avx512
        } else {
            GemmPath::Portable
        }
    }

    /// Every path this CPU can run (tests cover each): the portable one always.
    pub fn runnable() -> Vec<GemmPath> {
        let mut v = vec![GemmPath::Portable];
        if avx512_supported() {
            v.insert(0, GemmPath::Avx512);
        }
        v
    }
}

/// Whether the CPU has the instructions of the AVX-512 kernels.
pub fn avx512_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether f32 work takes the AVX-512 kernels here ([`GemmPath::active`]).
pub fn fast_f32_available() -> bool {
    GemmPath::active() == GemmPath::Avx512
}

/// `c = a·b + (accumulate ? c : 0)` on one thread; `c` row-major `a.rows x b.cols`.
/// Callers check [`fast_f32_available`] first (panics otherwise).
pub fn gemm_f32(
    a: crate::ops::cpu::MatRef<f32>,
    b: crate::ops::cpu::MatRef<f32>,
    c: &mut [f32],
    accumulate: bool,
) {
    assert_eq!(b.rows, a.cols, "gemm inner dimensions");
    assert!(avx512_supported(), "AVX-512 GEMM on a CPU without avx512f");
    #[cfg(target_arch = "x86_64")]
    avx512::gemm(a, b, c, accumulate);
}

/// An implicit-im2col GEMM: `c[i, j] (+)= Σ_p a[i·lda + p] · src[offsets[p] + j]` for `i < m`,
/// `j < n`, `p < offsets.len()`; `c` has row stride `ldc`. Row `p` of `B` is a run of `src`
/// starting at `offsets[p]`: for a stride-1 convolution over a zero-padded CHW image, `p` is
/// `(c, i, j)` and `offsets[p] = c·plane + i·wp + j`, so the image is read in place.
/// Callers check [`fast_f32_available`] first (panics otherwise).
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32_gathered(
    a: &[f32],
    lda: usize,
    m: usize,
    src: &[f32],
    offsets: &[usize],
    n: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let k = offsets.len();
    if m == 0 || n == 0 {
        return;
    }
    assert!(avx512_supported(), "AVX-512 GEMM on a CPU without avx512f");
    assert!(
        k == 0 || a.len() >= (m - 1) * lda + k,
        "gathered gemm: a too small"
    );
    assert!(
        offsets.iter().all(|&o| o + n <= src.len()),
        "gathered gemm: a row of b runs past its source"
    );
    assert!(
        c.len() >= (m - 1) * ldc + n && ldc >= n,
        "gathered gemm: c too small"
    );
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: avx512f is present and every index the kernel touches was checked above.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        avx512::gathered(
            a.as_ptr(),
            lda,
            m,
            src.as_ptr(),
            offsets,
            n,
            c.as_mut_ptr(),
            ldc,
            accumulate,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::{gemm_naive, MatRef};

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7 + seed * 13) % 23) as f32 - 11.0) / 8.0)
            .collect()
    }

    /// `got` against the f64 triple loop, within the f32 dot-product error bound
    /// `2·k·ε·Σ|a||b|` (plus `|c|·ε` for the accumulated term).
    fn check(a: MatRef<f32>, b: MatRef<f32>, c0: &[f32], got: &[f32], accumulate: bool) {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let (a64, b64): (Vec<f64>, Vec<f64>) = (
            a.data.iter().map(|&v| v as f64).collect(),
            b.data.iter().map(|&v| v as f64).collect(),
        );
        let (av, bv) = (widen(a, &a64), widen(b, &b64));
        let mut want: Vec<f64> = c0.iter().map(|&v| v as f64).collect();
        gemm_naive(av, bv, &mut want, accumulate);
        let abs_a: Vec<f64> = a64.iter().map(|v| v.abs()).collect();
        let abs_b: Vec<f64> = b64.iter().map(|v| v.abs()).collect();
        let mut bound: Vec<f64> = c0.iter().map(|&v| v.abs() as f64).collect();
        gemm_naive(widen(a, &abs_a), widen(b, &abs_b), &mut bound, accumulate);
        let eps = f32::EPSILON as f64;
        for i in 0..m * n {
            let tol = 2.0 * (k as f64 + 1.0) * eps * bound[i] + 1e-30;
            let err = (got[i] as f64 - want[i]).abs();
            assert!(
                err <= tol,
                "m={m} k={k} n={n} acc={accumulate} at {i}: {} vs {} (tol {tol})",
                got[i],
                want[i]
            );
        }
        assert!(got[m * n..].iter().zip(&c0[m * n..]).all(|(x, y)| x == y));
    }

    /// The same view over a widened copy of its data.
    fn widen<'a>(v: MatRef<f32>, data: &'a [f64]) -> MatRef<'a, f64> {
        MatRef {
            data,
            rows: v.rows,
            cols: v.cols,
            row_stride: v.row_stride,
            col_stride: v.col_stride,
        }
    }

    /// Every GEMM path this CPU can run (the one it takes among them), one thread and threaded,
    /// and the dispatching `gemm_with`.
    fn run(a: MatRef<f32>, b: MatRef<f32>) {
        let (m, n) = (a.rows, b.cols);
        let paths = GemmPath::runnable();
        assert!(paths.contains(&GemmPath::active()));
        for accumulate in [false, true] {
            // Two spare elements after C must stay untouched.
            let c0 = values(m * n + 2, 5);
            for &path in &paths {
                for parallel in [false, true] {
                    let mut got = c0.clone();
                    crate::ops::cpu::gemm_f32_on(path, a, b, &mut got, accumulate, parallel);
                    check(a, b, &c0, &got, accumulate);
                }
            }
            let mut got = c0.clone();
            crate::ops::cpu::gemm_with(a, b, &mut got, accumulate, true);
            check(a, b, &c0, &got, accumulate);
        }
    }

    /// The AVX-512-only kernels (implicit-GEMM convolutions): a printed SKIP on a CPU without
    /// AVX-512, which runs the explicit im2col path instead (tested by the conv tests and, on any
    /// CPU, by `tests/cpu_paths.rs`). `LIT_REQUIRE_AVX512=1` makes it a failure.
    fn avx512_or_skip() -> bool {
        if !avx512_supported() {
            crate::testing::skip_unless_required(
                "LIT_REQUIRE_AVX512",
                "no avx512f on this CPU: its AVX-512-only kernels are not run here",
            );
        }
        avx512_supported()
    }

    #[test]
    fn the_portable_path_is_runnable_everywhere_and_avx512_where_the_cpu_has_it() {
        let paths = GemmPath::runnable();
        assert!(paths.contains(&GemmPath::Portable));
        assert_eq!(paths.contains(&GemmPath::Avx512), avx512_supported());
        if !avx512_supported() {
            assert_eq!(GemmPath::active(), GemmPath::Portable);
        }
    }

    #[test]
    fn matches_naive_on_ragged_shapes_and_every_transpose() {
        for (m, k, n) in [
            (1, 1, 1),
            (13, 7, 5),
            (28, 3, 16),
            (29, 9, 17),
            (57, 31, 32),
            (27, 16, 33),
            (64, 48, 64),
            (43, 5, 70),
            (30, 600, 48),
            (3, 1100, 9),
        ] {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let av = if ta {
                    MatRef::transposed(&a, k, m)
                } else {
                    MatRef::rows(&a, m, k)
                };
                let bv = if tb {
                    MatRef::transposed(&b, n, k)
                } else {
                    MatRef::rows(&b, k, n)
                };
                run(av, bv);
            }
        }
    }

    #[test]
    fn matches_naive_on_overlapping_and_padded_views() {
        // The conv's shifted view: rows `c` apart, `kw·c` wide (rows overlap).
        let (rows, c, kw, n) = (61, 5, 3, 19);
        let img = values((rows + kw) * c, 3);
        let a = MatRef {
            data: &img,
            rows,
            cols: kw * c,
            row_stride: c as isize,
            col_stride: 1,
        };
        // A weight slice of a wider row-major matrix, read transposed.
        let w = values(n * 40, 4);
        let b = MatRef {
            data: &w[2..],
            rows: kw * c,
            cols: n,
            row_stride: 1,
            col_stride: 40,
        };
        run(a, b);
        // The same view transposed (the weight gradient's A) and a padded-row B.
        let at = MatRef {
            data: &img,
            rows: kw * c,
            cols: rows,
            row_stride: 1,
            col_stride: c as isize,
        };
        let dy = values(rows * (n + 3), 6);
        let bp = MatRef {
            data: &dy,
            rows,
            cols: n,
            row_stride: (n + 3) as isize,
            col_stride: 1,
        };
        run(at, bp);
    }

    #[test]
    fn gathered_matches_naive() {
        if !avx512_or_skip() {
            return;
        }
        for (m, k, n, ldc) in [
            (1, 1, 1, 1),
            (8, 5, 48, 50),
            (19, 27, 61, 61),
            (16, 600, 100, 103),
        ] {
            let src = values(4000, 7);
            let offsets: Vec<usize> = (0..k).map(|p| (p * 37) % (4000 - n)).collect();
            let lda = k + 2;
            let a = values(m * lda, 8);
            // The same product as an explicit B [k, n].
            let b: Vec<f32> = offsets
                .iter()
                .flat_map(|&o| src[o..o + n].to_vec())
                .collect();
            let (av, bv) = (
                MatRef {
                    data: &a,
                    rows: m,
                    cols: k,
                    row_stride: lda as isize,
                    col_stride: 1,
                },
                MatRef::rows(&b, k, n),
            );
            for accumulate in [false, true] {
                let c0 = values((m - 1) * ldc + n + 2, 9);
                let mut got = c0.clone();
                gemm_f32_gathered(&a, lda, m, &src, &offsets, n, &mut got, ldc, accumulate);
                // Compact the strided rows of C to compare with the dense check.
                let dense = |c: &[f32]| -> Vec<f32> {
                    let mut d: Vec<f32> = (0..m)
                        .flat_map(|i| c[i * ldc..i * ldc + n].to_vec())
                        .collect();
                    d.extend_from_slice(&c[(m - 1) * ldc + n..]);
                    d
                };
                check(av, bv, &dense(&c0), &dense(&got), accumulate);
                // The gaps between rows stay untouched.
                for i in 0..m.saturating_sub(1) {
                    assert_eq!(
                        &got[i * ldc + n..(i + 1) * ldc],
                        &c0[i * ldc + n..(i + 1) * ldc]
                    );
                }
            }
        }
    }

    #[test]
    fn gathered_dot_matches_naive() {
        if !avx512_or_skip() {
            return;
        }
        // (m rows of a, n offsets, images, rows, width): ragged tiles, widths below, at and
        // above one vector, one image and several.
        for (m, n, images, rows, width) in [
            (1, 1, 1, 1, 1),
            (4, 6, 1, 3, 16),
            (5, 7, 2, 4, 32),
            (9, 13, 3, 2, 19),
            (16, 20, 2, 5, 8),
        ] {
            let (row, src_row) = (width + 1, width + 3);
            let lda = rows * row + 2;
            let image = m * lda + 5;
            let a = values((images - 1) * image + (m - 1) * lda + rows * row, 3);
            let src_image = 500;
            let src = values((images - 1) * src_image + 400 + rows * src_row, 4);
            let offsets: Vec<usize> = (0..n).map(|p| (p * 29) % 400).collect();
            let ldc = n + 3;
            let naive = |i: usize, p: usize| -> f64 {
                let mut s = 0.0f64;
                for img in 0..images {
                    for r in 0..rows {
                        for t in 0..width {
                            let av = a[img * image + i * lda + r * row + t] as f64;
                            let bv = src[img * src_image + offsets[p] + r * src_row + t] as f64;
                            s += av * bv;
                        }
                    }
                }
                s
            };
            let shape = DotRows {
                lda,
                image,
                images,
                rows,
                row,
                width,
            };
            for accumulate in [false, true] {
                let c0 = values((m - 1) * ldc + n, 5);
                let mut got = c0.clone();
                gemm_f32_gathered_dot(
                    &a, shape, m, &src, src_image, src_row, &offsets, &mut got, ldc, accumulate,
                );
                for i in 0..m {
                    for p in 0..n {
                        let base = if accumulate {
                            c0[i * ldc + p] as f64
                        } else {
                            0.0
                        };
                        let want = base + naive(i, p);
                        let g = got[i * ldc + p] as f64;
                        let tol =
                            1e-5 * (1.0 + want.abs()) * ((images * rows * width) as f64).sqrt();
                        assert!(
                            (g - want).abs() <= tol,
                            "m {m} n {n} images {images} width {width}: c[{i},{p}] {g} vs {want}"
                        );
                    }
                    // The gap between rows of c stays untouched.
                    if i + 1 < m {
                        assert_eq!(
                            &got[i * ldc + n..(i + 1) * ldc],
                            &c0[i * ldc + n..(i + 1) * ldc]
                        );
                    }
                }
            }
        }
    }

    /// CPU time of this thread: other processes on a shared machine do not inflate it.
    fn thread_cpu_seconds() -> f64 {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: a plain libc call writing into `ts`.
        let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime");
        ts.sec as f64 + ts.nsec as f64 * 1e-9
    }

    /// Kernel lab: GFLOP/s of this kernel and the `gemm` crate on the conv shapes of a
    /// CIFAR ResNet step, one thread. `cargo test --release --lib gemm_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing report, not a check: run with --ignored --nocapture"]
    fn gemm_speed() {
        if !avx512_or_skip() {
            return;
        }
        // (name, m, k, n, a transposed, b transposed)
        let shapes = [
            ("fwd 16ch shifted", 1088, 48, 16, false, true),
            ("fwd 32ch shifted", 1088, 96, 32, false, true),
            ("fwd 64ch im2col", 1024, 576, 64, false, true),
            ("dw 16ch", 48, 1088, 16, true, false),
            ("dw 64ch im2col", 576, 1024, 64, true, false),
            ("dcol 64ch", 1024, 64, 576, false, false),
        ];
        for (name, m, k, n, ta, tb) in shapes {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            let av = if ta {
                MatRef::transposed(&a, k, m)
            } else {
                MatRef::rows(&a, m, k)
            };
            let bv = if tb {
                MatRef::transposed(&b, n, k)
            } else {
                MatRef::rows(&b, k, n)
            };
            let mut c = vec![0f32; m * n];
            let flops = 2.0 * (m * k * n) as f64;
            let reps = (4e9 / flops).ceil() as usize;
            let time = |f: &mut dyn FnMut()| {
                let mut best = f64::INFINITY;
                for _ in 0..5 {
                    let t = thread_cpu_seconds();
                    for _ in 0..reps {
                        f();
                    }
                    best = best.min((thread_cpu_seconds() - t) / reps as f64);
                }
                flops / best / 1e9
            };
            let ours = time(&mut || gemm_f32(av, bv, &mut c, true));
            let krate = time(&mut || unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    true,
                    av.data.as_ptr(),
                    av.col_stride,
                    av.row_stride,
                    bv.data.as_ptr(),
                    bv.col_stride,
                    bv.row_stride,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            });
            println!(
                "{name:>18} m={m:5} k={k:5} n={n:4}: avx512 {ours:6.1} GFLOP/s, gemm crate {krate:6.1} GFLOP/s"
            );
        }
        // The implicit GEMM of a 3x3 stride-1 conv on a padded CHW image (m = out channels).
        for (c, hw, o) in [(16, 32, 16), (32, 16, 32), (64, 8, 64)] {
            let wp = hw + 2;
            let plane = (hw + 3) * wp;
            let src = values(c * plane, 3);
            let offsets: Vec<usize> = (0..c * 9)
                .map(|p| (p / 9) * plane + (p % 9 / 3) * wp + p % 3)
                .collect();
            let (k, n) = (c * 9, hw * wp);
            let w = values(o * k, 4);
            let mut out = vec![0f32; o * n];
            let flops = 2.0 * (o * k * n) as f64;
            let reps = (4e9 / flops).ceil() as usize;
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t = thread_cpu_seconds();
                for _ in 0..reps {
                    gemm_f32_gathered(&w, k, o, &src, &offsets, n, &mut out, n, false);
                }
                best = best.min((thread_cpu_seconds() - t) / reps as f64);
            }
            println!(
                "implicit conv {c:3}ch {hw:2}x{hw:<2} m={o:5} k={k:5} n={n:4}: avx512 {:6.1} GFLOP/s (incl. padding columns)",
                flops / best / 1e9
            );
        }
    }
}
