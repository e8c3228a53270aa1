//! One module per op: its CPU reference (generic over f32/f64, the specification), its GPU launch
//! (cuda and emu share it), and its autograd wrapper. Kernels live in `kernels/<family>.cu`.

pub mod activation;
pub mod autocast;
pub mod batchnorm;
pub mod concat;
pub mod conv;
pub mod cpu;
pub mod cpu_gemm;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod flops;
pub mod kd;
pub mod layer_norm;
pub mod lma;
pub mod loss;
pub mod lstm;
pub mod matmul;
pub mod partials;
pub mod pool;
pub mod reduce;
pub mod shape;
pub mod softmax;
pub mod tensor_core;
pub mod token_loss;

pub use cpu::Real;

use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::Result;
use crate::tensor::Tensor;

/// The dispatch shared by ops that map one tensor to one new tensor with a params struct:
/// `cpu(x, y)` on the cpu device (y zero-filled), else `kernel(x, y, params)` launched over the
/// output's elements (grid-stride), y zero-filled too.
pub(crate) fn map_with_params<P: bytemuck::Pod>(
    x: &Tensor,
    out_shape: &[usize],
    kernel: &str,
    params: &P,
    cpu: impl FnOnce(&[f32], &mut [f32]),
) -> Result<Tensor> {
    let n: usize = out_shape.iter().product();
    let dev = x.device();
    match dev {
        Device::Cpu => {
            let mut y = vec![0.0f32; n];
            cpu(x.host_data()?, &mut y);
            Tensor::from_vec(out_shape, y, dev)
        }
        Device::Gpu(g) => {
            let mut y = g.zeros::<f32>(n)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer()))
                .ptr(g.addr_mut(&mut y))
                .value(params);
            if n > 0 {
                g.launch(kernel, LaunchCfg::for_elements(n), &mut args)?;
            }
            Tensor::from_buffer(out_shape, y, dev)
        }
    }
}
