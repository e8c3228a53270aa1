//! The GEMM paths against the f64 triple loop: every path the CPU can run, ragged shapes, every
//! transpose, overlapping and padded views, and the gathered (implicit-im2col) kernels.

use super::*;
use crate::ops::cpu::{gemm_naive, MatRef};

/// Deterministic values in [-11/8, 11/8], varied by `seed`.
pub(super) fn values(len: usize, seed: usize) -> Vec<f32> {
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
pub(super) fn avx512_or_skip() -> bool {
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
                    let tol = 1e-5 * (1.0 + want.abs()) * ((images * rows * width) as f64).sqrt();
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
