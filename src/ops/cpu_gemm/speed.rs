//! Kernel lab: GFLOP/s of the AVX-512 kernels and the `gemm` crate on the conv shapes of a CIFAR
//! ResNet step, one thread. `cargo test --release --lib gemm_speed -- --ignored --nocapture`

use super::tests::{avx512_or_skip, values};
use super::{gemm_f32, gemm_f32_gathered};
use crate::ops::cpu::MatRef;

/// CPU time of this thread: other processes on a shared machine do not inflate it.
fn thread_cpu_seconds() -> f64 {
    crate::cpu_time::thread_cpu_seconds().expect("clock_gettime")
}

/// GFLOP/s of the AVX-512 kernel and the `gemm` crate on the conv shapes of a
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
