//! Shared pieces of the CPU reference: the `Real` scalar trait (f32 for running, f64 for
//! finite-difference checks) and a strided GEMM: the AVX-512 kernel of [`cpu_gemm`] for f32
//! where the CPU has it, the `gemm` crate otherwise.

use crate::ops::cpu_gemm;

/// Run `f` compiled for the widest vector unit this CPU has (AVX-512, else AVX2+FMA, else the
/// baseline build): the crate targets baseline x86-64 (SSE2), which halves or quarters the
/// throughput of the memory-bound loops (BatchNorm, elementwise). `f` is inlined into a
/// `#[target_feature]` copy. LLVM does not contract `a*b + c` into FMA without fast-math, so the
/// results are bit for bit those of the baseline build.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the features were detected on this CPU.
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Ask the cache for `data[start..start + len]` (clipped to `data`), a line at a time. For
/// loops that walk short planes a page or more apart (a channel's planes across a batch), where
/// the hardware prefetchers, which stay within a page, start cold on every plane.
#[inline]
pub fn prefetch<T>(data: &[T], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let end = (start + len).min(data.len());
        let step = (64 / std::mem::size_of::<T>().max(1)).max(1);
        for i in (start.min(end)..end).step_by(step) {
            // SAFETY: a prefetch of an address inside `data` has no effect on memory.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(data.as_ptr().add(i) as *const i8) };
        }
    }
}

/// The float types the CPU reference is written for.
pub trait Real:
    Copy
    + Default
    + PartialOrd
    + Send
    + Sync
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + 'static
{
    /// Additive identity, `0.0`.
    const ZERO: Self;
    /// Multiplicative identity, `1.0`.
    const ONE: Self;
    /// Negative infinity: the start value of a running maximum (max pooling, softmax).
    const NEG_INFINITY: Self;
    /// Convert from f64, rounding to nearest for f32.
    fn from_f64(v: f64) -> Self;
    /// Convert to f64 (exact).
    fn to_f64(self) -> f64;
    /// `e^self`, as the std float method.
    fn exp(self) -> Self;
    /// Natural logarithm, as the std float method (`-inf` at 0, NaN below).
    fn ln(self) -> Self;
    /// Square root, as the std float method (NaN below 0).
    fn sqrt(self) -> Self;
    /// The larger of the two; when one is NaN, the other (std `max` semantics).
    fn max(self, o: Self) -> Self;
    /// The smaller of the two; when one is NaN, the other (std `min` semantics).
    fn min(self, o: Self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// The slice as f32 when `Self` is f32: how generic code reaches the f32-only fast paths
    /// (AVX-512 GEMM, Winograd, implicit convolution) without `TypeId` checks or casts.
    fn as_f32s(s: &[Self]) -> Option<&[f32]>;
    /// [`Real::as_f32s`] for a mutable slice.
    fn as_f32s_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}

macro_rules! impl_real {
    ($t:ty, $as_f32:expr, $as_f32_mut:expr) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            fn min(self, o: Self) -> Self {
                <$t>::min(self, o)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn as_f32s(s: &[Self]) -> Option<&[f32]> {
                $as_f32(s)
            }
            fn as_f32s_mut(s: &mut [Self]) -> Option<&mut [f32]> {
                $as_f32_mut(s)
            }
        }
    };
}
impl_real!(f32, Some, Some);
impl_real!(f64, |_| None, |_| None);

/// A row-major or transposed view of a matrix for [`gemm()`]: `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    /// The backing storage; every `(r, c)` inside `rows x cols` must index into it.
    pub data: &'a [T],
    /// Rows of the matrix as viewed (after any transpose).
    pub rows: usize,
    /// Columns of the matrix as viewed (after any transpose).
    pub cols: usize,
    /// Elements between `(r, c)` and `(r + 1, c)` in `data`.
    pub row_stride: isize,
    /// Elements between `(r, c)` and `(r, c + 1)` in `data`.
    pub col_stride: isize,
}

impl<'a, T: Real> MatRef<'a, T> {
    /// The same view over f32 data, when `T` is f32 (see [`Real::as_f32s`]).
    fn as_f32(self) -> Option<MatRef<'a, f32>> {
        Some(MatRef {
            data: T::as_f32s(self.data)?,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        })
    }
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major `rows x cols` matrix.
    pub fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }
    /// The transpose of a row-major `rows x cols` matrix (a `cols x rows` view).
    pub fn transposed(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows: cols,
            cols: rows,
            row_stride: 1,
            col_stride: cols as isize,
        }
    }
}

/// `c = a·b + (accumulate ? c : 0)`; `c` is row-major `a.rows x b.cols`. Multi-threaded for large sizes.
pub fn gemm<T: Real>(a: MatRef<T>, b: MatRef<T>, c: &mut [T], accumulate: bool) {
    let parallel = 2 * a.rows * b.cols * a.cols >= 1 << 20;
    gemm_with(a, b, c, accumulate, parallel);
}

/// `(m, k, n)` of `c = a b`; panics on inconsistent shapes (a caller's bug, never input).
fn gemm_dims<T>(a: &MatRef<T>, b: &MatRef<T>, c: &[T]) -> (usize, usize, usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm inner dimensions");
    assert!(c.len() >= m * n, "gemm output too small");
    (m, k, n)
}

/// [`gemm()`] with the threading chosen by the caller: ops that already split their work over
/// rayon (conv, per image chunk) call it with `parallel = false`.
pub fn gemm_with<T: Real>(
    a: MatRef<T>,
    b: MatRef<T>,
    c: &mut [T],
    accumulate: bool,
    parallel: bool,
) {
    let (m, k, n) = gemm_dims(&a, &b, c);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].iter_mut().for_each(|v| *v = T::ZERO);
        }
        return;
    }
    if crate::ops::cpu_gemm::fast_f32_available() {
        if let (Some(a32), Some(b32), Some(c32)) = (a.as_f32(), b.as_f32(), T::as_f32s_mut(&mut *c))
        {
            return gemm_f32_threads(a32, b32, c32, accumulate, parallel);
        }
    }
    gemm_portable(a, b, c, accumulate, parallel);
}

/// [`gemm_with`] for f32 on a chosen path, so tests cover every path the CPU can run
/// ([`cpu_gemm::GemmPath::runnable`]), not only the one it takes.
pub fn gemm_f32_on(
    path: cpu_gemm::GemmPath,
    a: MatRef<f32>,
    b: MatRef<f32>,
    c: &mut [f32],
    accumulate: bool,
    parallel: bool,
) {
    let (m, k, n) = gemm_dims(&a, &b, c);
    if m == 0 || n == 0 || k == 0 {
        // The shapes that never reach a kernel: the same on every path.
        return gemm_with(a, b, c, accumulate, parallel);
    }
    match path {
        cpu_gemm::GemmPath::Avx512 => gemm_f32_threads(a, b, c, accumulate, parallel),
        cpu_gemm::GemmPath::Portable => gemm_portable(a, b, c, accumulate, parallel),
    }
}

/// The `gemm` crate: every type, and f32 on CPUs without AVX-512.
fn gemm_portable<T: Real>(
    a: MatRef<T>,
    b: MatRef<T>,
    c: &mut [T],
    accumulate: bool,
    parallel: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let par = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the views index inside their slices (rows/cols/strides describe sub-slices we own).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride,
            a.row_stride,
            b.data.as_ptr(),
            b.col_stride,
            b.row_stride,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        );
    }
}

/// The AVX-512 kernel, split into bands of rows over rayon when `parallel`.
fn gemm_f32_threads(
    a: MatRef<f32>,
    b: MatRef<f32>,
    c: &mut [f32],
    accumulate: bool,
    parallel: bool,
) {
    use rayon::prelude::*;
    let (m, n) = (a.rows, b.cols);
    let threads = rayon::current_num_threads();
    if !parallel || threads < 2 || m < 2 * BAND_ROWS || a.row_stride < 0 {
        return cpu_gemm::gemm_f32(a, b, c, accumulate);
    }
    // A few bands per thread for balance, each a whole number of register tiles.
    let band = m.div_ceil(4 * threads).div_ceil(BAND_ROWS) * BAND_ROWS;
    c[..m * n]
        .par_chunks_mut(band * n)
        .enumerate()
        .for_each(|(t, c_band)| {
            let r0 = t * band;
            let rows = c_band.len() / n;
            let a_band = MatRef {
                data: &a.data[r0 * a.row_stride as usize..],
                rows,
                ..a
            };
            cpu_gemm::gemm_f32(a_band, b, c_band, accumulate);
        });
}

/// Row granularity of the threaded split (a multiple of the kernel's row tiles).
const BAND_ROWS: usize = 28;

/// A plain triple loop, the specification `gemm` is tested against.
pub fn gemm_naive<T: Real>(a: MatRef<T>, b: MatRef<T>, c: &mut [T], accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    for i in 0..m {
        for j in 0..n {
            let mut acc = if accumulate { c[i * n + j] } else { T::ZERO };
            for p in 0..k {
                let av = a.data[(i as isize * a.row_stride + p as isize * a.col_stride) as usize];
                let bv = b.data[(p as isize * b.row_stride + j as isize * b.col_stride) as usize];
                acc += av * bv;
            }
            c[i * n + j] = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive_in_every_transpose() {
        let (m, k, n) = (13, 37, 9);
        let a: Vec<f64> = (0..m * k)
            .map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0)
            .collect();
        let b: Vec<f64> = (0..k * n)
            .map(|i| ((i * 5 % 13) as f64 - 6.0) / 4.0)
            .collect();
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
            let mut c1 = vec![1.0; m * n];
            let mut c2 = vec![1.0; m * n];
            gemm(av, bv, &mut c1, true);
            gemm_naive(av, bv, &mut c2, true);
            for (x, y) in c1.iter().zip(&c2) {
                assert!((x - y).abs() < 1e-9, "{ta} {tb}: {x} vs {y}");
            }
        }
    }
}
