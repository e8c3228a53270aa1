//! The device's measured peaks, the yardsticks of the lab's "% of peak" column: copy bandwidth
//! (one large device-to-device copy) and the GEMM rate of the engine's best GEMM at a large square
//! size, in the lab's precision ([`peak_gemm`]: the tensor-core GEMM under a rounding precision
//! on kernel devices).

use super::time_reps;
use crate::bench::BenchResult;
use crate::device::Device;
use crate::error::Result;
use crate::ops::matmul::matmul_forward;
use crate::ops::tensor_core;
use crate::precision::Precision;
use crate::rng::Rng;
use crate::tensor::Tensor;
use rayon::prelude::*;
use serde::Serialize;

/// What the lab measured on its device.
#[derive(Clone, Debug, Serialize)]
pub struct Peaks {
    /// Copy bandwidth in GB/s (bytes read + bytes written, per second).
    pub copy_gbs: f64,
    /// Bytes of the copied buffer.
    pub copy_bytes: usize,
    /// GEMM rate in TFLOP/s.
    pub gemm_tflops: f64,
    /// The square GEMM's size.
    pub gemm_n: usize,
    /// Which GEMM gave it.
    pub gemm_kernel: String,
}

/// Sizes of the peak measurements: large enough to saturate the device, small enough for the
/// emulator (whose numbers say nothing about speed) and for `--quick`.
fn sizes(dev: &Device, quick: bool) -> (usize, usize) {
    let emu = dev.gpu().is_some_and(|g| g.is_emu());
    match (dev.is_cuda(), emu, quick) {
        (true, _, false) => (1 << 30, 8192),
        (true, _, true) => (64 << 20, 2048),
        (_, true, false) => (8 << 20, 128),
        (_, true, true) => (1 << 20, 48),
        (_, _, false) => (256 << 20, 2048),
        (_, _, true) => (16 << 20, 256),
    }
}

/// Copy bandwidth and GEMM peak on `dev`, the GEMM in `precision`.
pub fn measure(dev: &Device, quick: bool, reps: usize, precision: Precision) -> Result<Peaks> {
    let (copy_bytes, gemm_n) = sizes(dev, quick);
    let copy = time_copy(dev, copy_bytes / 4, reps)?;
    let copy_gbs = 2.0 * copy_bytes as f64 / (copy.best_ms() * 1e-3) / 1e9;
    let (gemm_tflops, gemm_kernel) = peak_gemm(dev, gemm_n, reps, precision)?;
    Ok(Peaks {
        copy_gbs,
        copy_bytes,
        gemm_tflops,
        gemm_n,
        gemm_kernel,
    })
}

/// Timed copies of `n` floats: device-to-device on a GPU (stream-ordered allocations are reused
/// after the warm-up), a parallel `memcpy` into a buffer allocated once on the cpu (allocating
/// 256 MiB per copy would time page faults, not the memory).
fn time_copy(dev: &Device, n: usize, reps: usize) -> Result<BenchResult> {
    match dev {
        Device::Gpu(_) => {
            let src = dev.zeros::<f32>(n)?;
            time_reps("copy", dev, 1, reps, || dev.copy(&src))
        }
        Device::Cpu => {
            const CHUNK: usize = 1 << 16;
            let src = vec![1.0f32; n];
            let mut dst = vec![0.0f32; n];
            time_reps("copy", dev, 1, reps, || {
                dst.par_chunks_mut(CHUNK)
                    .zip(src.par_chunks(CHUNK))
                    .for_each(|(d, s)| d.copy_from_slice(s));
                Ok(())
            })
        }
    }
}

/// TFLOP/s of the engine's best GEMM for `precision` on an `n`x`n`x`n` product, and its name:
/// under a rounding precision on cuda and emu the tensor-core `gemm_tc_*` (`kernels/gemm_tc.cu`,
/// what the Linear and matmul ops run then); otherwise fp32 `matmul_forward` — the AVX-512
/// `cpu_gemm` (or the `gemm` crate) on cpu, `gemm_f32` of `kernels/gemm.cu` on cuda and emu.
pub fn peak_gemm(
    dev: &Device,
    n: usize,
    reps: usize,
    precision: Precision,
) -> Result<(f64, String)> {
    let mut rng = Rng::new(11);
    let a = Tensor::from_vec(&[n, n], rng.normal_vec(n * n, 1.0), dev)?;
    let b = Tensor::from_vec(&[n, n], rng.normal_vec(n * n, 1.0), dev)?;
    let flops = 2.0 * (n as f64).powi(3);
    if let Some(p) = tensor_core::wired(dev, precision) {
        let mut c = Tensor::zeros(&[n, n], dev)?;
        let t = time_reps("gemm", dev, 1, reps, || {
            tensor_core::gemm(&mut c, &a, false, &b, false, 1.0, 0.0, p)
        })?;
        let kernel = format!(
            "gemm_tc_{} (kernels/gemm_tc.cu)",
            tensor_core::kernel_suffix(p)?
        );
        return Ok((flops / (t.best_ms() * 1e-3) / 1e12, kernel));
    }
    let t = time_reps("gemm", dev, 1, reps, || matmul_forward(&a, &b))?;
    let kernel = match dev {
        Device::Cpu if crate::ops::cpu_gemm::fast_f32_available() => "cpu_gemm AVX-512 f32",
        Device::Cpu => "gemm crate f32",
        Device::Gpu(_) => "gemm_f32 (kernels/gemm.cu)",
    };
    Ok((flops / (t.best_ms() * 1e-3) / 1e12, kernel.to_string()))
}
