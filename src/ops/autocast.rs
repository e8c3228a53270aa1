//! Autocast for conv and GEMM operands: under a precision other than fp32 (`precision::Precision`),
//! the ops that multiply on tensor cores (conv1d/conv2d, Linear, matmul) read rounded operands
//! (inputs and weights in the forward pass; the output gradient, weights and inputs in the
//! backward GEMMs). On kernel devices the tensor-core kernels (`ops::tensor_core`) round them as
//! they stage them ([`operand`] passes the values on as they are); on the cpu device the ops take
//! rounded copies made here and run the fp32 kernels, which accumulate and write fp32 — the
//! tensor-core numerics up to accumulation order. Under fp32 the operands are used as they are,
//! with no copy. Kernel: `round_operands_f32` in
//! `kernels/precision.cu`; CPU reference: [`Precision::round_slice`].

use crate::error::{Error, Result};
use crate::ops::map_with_params;
use crate::precision::Precision;
use crate::tensor::Tensor;

/// Mirrors `RoundOperandsParams` in `kernels/precision.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RoundOperandsParams {
    /// Number of elements.
    pub n: i32,
    /// 0 fp32 (copy), 1 tf32, 2 bf16, 3 fp16.
    pub mode: i32,
}

/// The kernel's code for a precision.
fn mode(p: Precision) -> i32 {
    match p {
        Precision::Fp32 => 0,
        Precision::Tf32 => 1,
        Precision::Bf16 => 2,
        Precision::Fp16 => 3,
    }
}

/// A copy of `t` with every element rounded to `p` (fp32: a plain copy), on `t`'s device.
pub fn round_operands(t: &Tensor, p: Precision) -> Result<Tensor> {
    let n = i32::try_from(t.numel()).map_err(|_| {
        Error::Shape(format!(
            "round_operands: {} elements are beyond the kernel's 32-bit index range",
            t.numel()
        ))
    })?;
    let params = RoundOperandsParams { n, mode: mode(p) };
    map_with_params(t, t.shape(), "round_operands_f32", &params, |x, y| {
        y.copy_from_slice(x);
        p.round_slice(y);
    })
}

/// `t` as a conv / GEMM under `p` reads it: `t` itself (shared, no copy) under fp32, else a
/// rounded copy.
pub fn autocast(t: &Tensor, p: Precision) -> Result<Tensor> {
    match p.rounds_operands() {
        true => round_operands(t, p),
        false => Ok(t.clone()),
    }
}

/// `t` as a conv / GEMM under `p` takes it, given `tensor_cores` (`ops::tensor_core::wired`):
/// `t` itself (shared, no copy) when the tensor-core kernels run the op, as they round while
/// staging; else [`autocast`].
pub fn operand(t: &Tensor, p: Precision, tensor_cores: Option<Precision>) -> Result<Tensor> {
    match tensor_cores {
        Some(_) => Ok(t.clone()),
        None => autocast(t, p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    #[test]
    fn cpu_rounds_every_element_and_fp32_shares_the_buffer() {
        let v = vec![0.1f32, -1.0 / 3.0, 70000.0, 1e-7];
        let t = Tensor::from_vec(&[2, 2], v.clone(), &Device::Cpu).unwrap();
        for p in Precision::ALL {
            let r = round_operands(&t, p).unwrap().to_vec().unwrap();
            let want: Vec<f32> = v.iter().map(|&x| p.round(x)).collect();
            assert_eq!(r, want, "{p}");
        }
        let same = autocast(&t, Precision::Fp32).unwrap();
        assert!(std::ptr::eq(
            same.host().unwrap().as_ptr(),
            t.host().unwrap().as_ptr()
        ));
    }
}
