//! One module per op: its CPU reference (generic over f32/f64, the specification), its GPU launch
//! (cuda and emu share it), and its autograd wrapper. Kernels live in `kernels/<family>.cu`.

pub mod activation;
pub mod batchnorm;
pub mod conv;
pub mod cpu;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod flops;
pub mod kd;
pub mod lma;
pub mod loss;
pub mod matmul;
pub mod partials;
pub mod pool;
pub mod reduce;
pub mod shape;
pub mod softmax;

pub use cpu::Real;
