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
//!
//! Files: `avx512` holds the kernels (and the row-major copy of a `B` with strided rows), `tests`
//! their checks against the naive loops, `speed` the `gemm_speed` timing report.

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(test)]
mod speed;
#[cfg(test)]
mod tests;

/// How [`gemm_f32_gathered_dot`] walks the rows of `a`: `images` images `image` apart, each
/// `rows` runs of `width` values `row` apart; row `i` of `a` starts `i·lda` further.
#[derive(Clone, Copy, Debug)]
pub struct DotRows {
    /// Distance between rows of `a`.
    pub lda: usize,
    /// Distance between images.
    pub image: usize,
    /// Images summed over.
    pub images: usize,
    /// Runs per image.
    pub rows: usize,
    /// Distance between runs.
    pub row: usize,
    /// Values per run.
    pub width: usize,
}

/// The weight gradient of a stride-1 convolution read in place from CHW tensors:
/// `c[i, p] (+)= Σ_img Σ_r Σ_t a[img·image + i·lda + r·row + t] · b[img, r, t]` for `t < width`,
/// `b[img, r, t] = src[img·src_image + offsets[p] + r·src_row + t]` — `a` is `dy` (`i` = output channel, `r`/`t` = output
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
    /// The AVX-512 kernels of this module.
    Avx512,
    /// The `gemm` crate behind explicit im2col lowerings.
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
