//! Time one kernel: a square f32 matmul `C = A·B` on the chosen device (on `cpu` the engine's
//! blocked GEMM, on `cuda` / `emu` the `gemm_f32` kernel of `kernels/gemm.cu`), checked first
//! against a plain triple loop in f64, then timed; prints GFLOP/s. Exits non-zero when the
//! device's result disagrees with the reference.
//!
//! `cargo run --release --example time_kernel -- [size]` (default 384; 96 on the slow `emu`
//! device). `LIT_DEVICE=cpu|cuda|emu|auto` picks the device (default cpu).

use lit_engine::ops::matmul::matmul_forward;
use lit_engine::{rng::Rng, Device, Error, Result, Tensor};
use std::time::Instant;

fn main() -> Result<()> {
    let device = match std::env::var("LIT_DEVICE") {
        Ok(_) => Device::select(None)?,
        Err(_) => Device::cpu(),
    };
    let is_emu = device.gpu().is_some_and(|g| g.is_emu());
    let n: usize = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| Error::Config(format!("size `{arg}` is not a positive integer")))?,
        None if is_emu => 96,
        None => 384,
    };
    let mut rng = Rng::new(7);
    let (a_host, b_host) = (
        rng.uniform_vec(n * n, -1.0, 1.0),
        rng.uniform_vec(n * n, -1.0, 1.0),
    );
    let a = Tensor::from_slice(&[n, n], &a_host, &device)?;
    let b = Tensor::from_slice(&[n, n], &b_host, &device)?;

    // Correctness first: a fast wrong kernel is not worth timing.
    let got = matmul_forward(&a, &b)?.to_vec()?;
    let want = reference_matmul(&a_host, &b_host, n);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(&g, &w)| (g as f64 - w).abs() / (1.0 + w.abs()))
        .fold(0.0f64, f64::max);
    // f32 sums of n products of values in [-1, 1]: rounding grows like sqrt(n)·eps, far below this.
    assert!(
        worst < 1e-4,
        "matmul on {} is off the reference by {worst:e}",
        device.name()
    );

    let reps = if is_emu { 1 } else { 10 };
    let mut seconds = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = Instant::now();
        let c = matmul_forward(&a, &b)?;
        device.synchronize()?;
        seconds.push(started.elapsed().as_secs_f64());
        std::hint::black_box(c);
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[reps / 2];
    let gflops = 2.0 * (n * n * n) as f64 / median / 1e9;
    println!(
        "matmul {n}x{n}x{n} on {}: {:.3} ms (median of {reps}), {gflops:.1} GFLOP/s; \
         largest relative difference from the reference {worst:.1e}",
        device.name(),
        median * 1e3
    );
    Ok(())
}

/// `a·b` for row-major `n × n` matrices, summed in f64: slow, obviously right.
fn reference_matmul(a: &[f32], b: &[f32], n: usize) -> Vec<f64> {
    let mut c = vec![0.0f64; n * n];
    for i in 0..n {
        for p in 0..n {
            let a_ip = a[i * n + p] as f64;
            for (c_ij, &b_pj) in c[i * n..(i + 1) * n].iter_mut().zip(&b[p * n..(p + 1) * n]) {
                *c_ij += a_ip * b_pj as f64;
            }
        }
    }
    c
}
