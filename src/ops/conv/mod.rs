//! Convolution: PyTorch's `conv2d` / `conv1d` (cross-correlation, zero padding, dilation 1,
//! groups 1). `x [N, C, H, W]`, `weight [O, C, kh, kw]`, optional `bias [O]`, output
//! `[N, O, OH, OW]` with `OH = (H + 2·ph - kh) / sh + 1`. 1-D is 2-D with `H = kh = 1`.
//!
//! Where things live:
//!
//! * `geometry`: [`ConvGeometry`] (the sizes of one conv) and `Window` (one image's sliding
//!   window and how the panel lowering unrolls it).
//! * `spec`: [`conv2d_forward_direct`] / [`conv2d_backward_direct`], the specification as plain
//!   loops; everything else is tested against it.
//! * `cpu`: the CPU path ([`conv2d_forward_cpu`], [`conv2d_backward_cpu`]): parallel chunks of
//!   images, each lowered as the plan chosen once per call says (`plan`: `ConvPlan`,
//!   `DataGradPlan`, `WeightGradPlan`). The lowerings, one module each:
//!   - `panels`: every element type and window. Each image is transposed to HWC (`layout`: 8x8
//!     AVX transposes for f32) and lowered one of three ways: 1x1 stride-1 convs use the HWC image
//!     itself; stride-1 convs on maps wide enough use *shifted* GEMMs (kernel row `i` is a strided
//!     view `i` padded rows further, no im2col); everything else is unrolled by im2col. Output
//!     pixels are the long GEMM dimension, channels the short one.
//!   - `implicit` (f32, AVX-512): stride-1 windows of depth `kh·kw·c >= 16` as one implicit GEMM
//!     over the zero-padded CHW image, no transposes; the weight gradient reads CHW x and dy in
//!     place.
//!   - `winograd` (f32, AVX-512): 3x3 stride-1 padding-1 convs on even maps (almost all of
//!     ResNet's) as F(2x2, 3x3), 2.25x fewer multiplies, for all three passes.
//!
//!   The input gradient of a stride-1 convolution is the convolution of `dy` with the flipped,
//!   transposed weight (the same plans); other strides use `dcol = dy·W` folded back by col2im.
//!   Scratch buffers are thread-local and reused (`scratch`).
//! * `epilogue`: [`ChannelEpilogue`], an eval BatchNorm (+ residual) (+ ReLU) applied as the
//!   forward writes its output.
//! * `gpu`: the kernel devices (cuda and emu; kernels in `kernels/conv.cu`): implicit GEMMs for
//!   the forward and the stride-1 input gradient, GEMM + col2im otherwise, sliced implicit GEMMs
//!   for the weight gradient.
//! * `dispatch`: the tensor-level entry points ([`conv2d_forward`], [`conv2d_backward`],
//!   [`conv2d_bn_eval_forward`], the conv1d ones); `tape`: the autograd ops [`conv2d`],
//!   [`conv1d`].

mod cpu;
mod dispatch;
mod epilogue;
mod geometry;
mod gpu;
mod implicit;
mod layout;
mod panels;
mod plan;
mod scratch;
mod spec;
mod tape;
pub(crate) mod winograd;

#[cfg(test)]
mod tests;

pub use cpu::{conv2d_backward_cpu, conv2d_forward_cpu, conv2d_forward_epilogue_cpu};
pub use dispatch::{
    conv1d_backward, conv1d_forward, conv2d_backward, conv2d_bn_eval_forward, conv2d_forward,
    BnEval,
};
pub(crate) use dispatch::{lift_1d_backward, lift_1d_forward};
pub use epilogue::ChannelEpilogue;
pub use geometry::ConvGeometry;
pub(crate) use gpu::sum_partials;
pub use gpu::{ConvParams, PartialSumParams};
pub use spec::{conv2d_backward_direct, conv2d_forward_direct};
pub(crate) use tape::{backward_2d, forward_2d};
pub use tape::{conv1d, conv2d};
