//! BatchNorm (1d and 2d) over every axis but 1: `x [N, C, *rest]` is viewed as `[outer = N,
//! channels = C, inner = prod(rest)]` (`[N, F]`: inner = 1). PyTorch semantics (SPEC-NOTES §2):
//!
//! * train: `y = gamma*(x - mean)/sqrt(var + eps) + beta` with the batch mean and BIASED variance;
//!   running stats `r <- (1-m)*r + m*batch` with the UNBIASED variance; `num_batches_tracked += 1`;
//! * eval: the running statistics normalise, nothing changes.
//!
//! Every variant — {train, eval} × {plain, ReLU, residual add + ReLU} — is one call described by
//! a [`BatchNormArgs`]: [`forward`] and [`backward`] on tensors, [`batch_norm`] on the tape.
//!
//! Statistics are accumulated in f64: on the CPU in one pass of sums shifted by each channel's
//! first value, on kernel devices per chunk (mean, then squared deviations) combined with Chan's
//! formula — an unshifted one-pass f32 `E[x²] - E[x]²` is off by more than the golden margins.
//!
//! * [`cpu`]: the CPU spec, generic over f32/f64 slices (one fused pass per channel
//!   forward and backward, rayon over channels for the sums, over samples for the elementwise
//!   part), and its tensor-level dispatch;
//! * `sums`: the per-plane f64 lane sums and their AVX-512 f32 path;
//! * `device`: the launches of `kernels/batchnorm.cu` (three per pass: partial statistics per
//!   (channel, chunk), a per-channel finalize, one elementwise pass applying the fused ReLU /
//!   residual; [`bn_split`] picks the chunks);
//! * `tape`: the autograd op.

pub mod cpu;
mod device;
mod sums;
mod tape;
#[cfg(test)]
mod tests;

pub use cpu::invstd_cpu;
pub use device::{bn_split, BnSplit, BN_MAX_CHUNKS, BN_MIN_CHUNK, BN_TARGET_BLOCKS};
pub use tape::batch_norm;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{same_device, Tensor};

/// `x [N, C, *rest]` as `[outer, channels, inner]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnShape {
    /// `N`, the samples.
    pub outer: usize,
    /// `C`, dimension 1.
    pub channels: usize,
    /// The product of the dimensions after the channels (1 for `[N, F]`).
    pub inner: usize,
}

impl BnShape {
    /// How far ahead (in elements) the per-channel passes prefetch: the same channel's plane
    /// of a later sample, at least 1024 elements on (one plane of 32x32, four of 16x16, ...).
    fn prefetch_distance(&self) -> usize {
        1024usize.div_ceil(self.inner.max(1)) * self.channels * self.inner
    }

    /// The view of `shape`; an error below 2 dimensions.
    pub fn of(shape: &[usize]) -> Result<BnShape> {
        if shape.len() < 2 {
            return Err(Error::Shape(format!(
                "batch_norm: expected x [N, C, ...] of at least 2 dimensions, got {shape:?}"
            )));
        }
        Ok(BnShape {
            outer: shape[0],
            channels: shape[1],
            inner: shape[2..].iter().product(),
        })
    }
    /// Elements per channel (the statistics' sample count).
    pub fn per_channel(&self) -> usize {
        self.outer * self.inner
    }
}

/// Running statistics of a BatchNorm layer: `num_batches_tracked` is an f32 scalar holding an
/// integer (absent when a layer does not track it).
#[derive(Clone, Debug)]
pub struct RunningStats {
    /// Per-channel running mean `[C]`.
    pub mean: Tensor,
    /// Per-channel running (unbiased) variance `[C]`.
    pub var: Tensor,
    /// Train forwards counted so far.
    pub num_batches_tracked: Option<Tensor>,
}

/// Which statistics normalise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The batch's own statistics; the running statistics are updated.
    Train,
    /// The running statistics, constants; nothing is updated.
    Eval,
}

/// What follows the normalisation (and the residual add, when there is one) in the same op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Nothing.
    None,
    /// A clamp at 0.
    Relu,
}

/// One BatchNorm call: `activation(bn(x) + residual?)`. `H` is how operands are held: `&Tensor`
/// for [`forward`] / [`backward`], a tape [`Var`](crate::autograd::Var) for [`batch_norm`].
#[derive(Clone, Copy, Debug)]
pub struct BatchNormArgs<'a, H> {
    /// Batch or running statistics.
    pub mode: Mode,
    /// Fused after the affine map and the residual.
    pub activation: Activation,
    /// `(gamma, beta)` per channel, or none (gamma 1, beta 0).
    pub affine: Option<(H, H)>,
    /// Added after the affine map (the shortcut of a ResNet block), shaped like `x`.
    pub residual: Option<H>,
    /// Train: updated (returned new) when given; eval: required, they normalise.
    pub running: Option<&'a RunningStats>,
    /// Added to the variance.
    pub eps: f32,
    /// PyTorch convention: `running <- (1-momentum)*running + momentum*batch`.
    pub momentum: f32,
    /// Kernel devices: split each channel's statistics into this many chunks (rounded by
    /// [`bn_split`]) instead of the split chosen from the sizes, so that tests run the
    /// multi-block path on small shapes. The CPU ignores it.
    pub chunks: Option<usize>,
}

impl<H> Default for BatchNormArgs<'_, H> {
    /// Train mode, no affine map, residual, activation or running statistics; PyTorch's eps
    /// (1e-5) and momentum (0.1).
    fn default() -> Self {
        BatchNormArgs {
            mode: Mode::Train,
            activation: Activation::None,
            affine: None,
            residual: None,
            running: None,
            eps: 1e-5,
            momentum: 0.1,
            chunks: None,
        }
    }
}

impl Activation {
    /// [`Activation::Relu`] when `relu`, else [`Activation::None`].
    pub fn relu_if(relu: bool) -> Activation {
        if relu {
            Activation::Relu
        } else {
            Activation::None
        }
    }
}

impl<H> BatchNormArgs<'_, H> {
    /// Whether the output is clamped at 0.
    pub fn relu(&self) -> bool {
        self.activation == Activation::Relu
    }
}

/// The per-channel statistics a forward normalised with, which its backward needs.
#[derive(Clone, Debug)]
pub struct SavedStats {
    /// Per-channel mean `[C]`.
    pub mean: Tensor,
    /// Per-channel `1/sqrt(var + eps)` `[C]`.
    pub invstd: Tensor,
}

impl SavedStats {
    /// What an eval forward normalised with: the running mean and `1/sqrt(running_var + eps)`.
    pub fn of_running(running: &RunningStats, eps: f32) -> Result<SavedStats> {
        Ok(SavedStats {
            mean: running.mean.clone(),
            invstd: invstd(&running.var, eps)?,
        })
    }
}

/// What a [`forward`] produced.
#[derive(Clone, Debug)]
pub struct Forward {
    /// The output, shaped like `x`.
    pub y: Tensor,
    /// Train mode: the batch statistics (eval mode: none, see [`SavedStats::of_running`]).
    pub saved: Option<SavedStats>,
    /// Train mode with running statistics given: their updated values.
    pub running: Option<RunningStats>,
}

/// What a [`backward`] produced.
#[derive(Clone, Debug)]
pub struct Grads {
    /// The gradient of `x`.
    pub dx: Tensor,
    /// The gradient of gamma (computed with or without an affine map).
    pub dgamma: Tensor,
    /// The gradient of beta.
    pub dbeta: Tensor,
    /// The gradient of the residual, when asked for.
    pub dresidual: Option<Tensor>,
}

/// `activation(bn(x) + residual?)` on `x`'s device. Train mode needs more than one value per
/// channel, like PyTorch.
pub fn forward(x: &Tensor, args: &BatchNormArgs<&Tensor>) -> Result<Forward> {
    let s = check_forward(x, args)?;
    match (x.device(), args.mode) {
        (Device::Cpu, Mode::Train) => cpu::train_forward(x, args, s),
        (Device::Cpu, Mode::Eval) => cpu::eval_forward(x, args, s),
        (Device::Gpu(g), Mode::Train) => device::train_forward(g, x, args, s),
        (Device::Gpu(g), Mode::Eval) => device::eval_forward(g, x, args, s),
    }
}

/// The backward of [`forward`] with the same `args`: `y` is its output (its zeros mask `dy` when
/// a ReLU is fused), `saved` the statistics it normalised with. `want_dresidual` asks for the
/// residual's gradient (`dy` masked by the ReLU).
pub fn backward(
    x: &Tensor,
    dy: &Tensor,
    y: &Tensor,
    args: &BatchNormArgs<&Tensor>,
    saved: &SavedStats,
    want_dresidual: bool,
) -> Result<Grads> {
    backward_with(x, dy, y, args, saved, want_dresidual, true)
}

/// [`backward`]; `recompute_mask`: the CPU may recompute a fused ReLU's mask from `x` (train
/// mode, no residual, no residual gradient) instead of reading `y`.
fn backward_with(
    x: &Tensor,
    dy: &Tensor,
    y: &Tensor,
    args: &BatchNormArgs<&Tensor>,
    saved: &SavedStats,
    want_dresidual: bool,
    recompute_mask: bool,
) -> Result<Grads> {
    let s = check_backward(x, dy, args.affine.map(|(g, _)| g), saved)?;
    if args.relu() {
        y.expect_shape("batch_norm_relu backward: y", x.shape())?;
        same_device("batch_norm_relu backward", x, y)?;
    }
    let call = BackwardCall {
        x,
        dy,
        relu_out: args.relu().then_some(y),
        args,
        saved,
        want_dresidual,
        s,
    };
    match x.device() {
        Device::Cpu => cpu::backward(&call, recompute_mask && args.residual.is_none()),
        Device::Gpu(g) => device::backward(g, &call),
    }
}

/// One backward's operands, checked, as the CPU and kernel-device paths take them.
struct BackwardCall<'a, 'r> {
    x: &'a Tensor,
    dy: &'a Tensor,
    /// A fused ReLU's output, whose zeros mask `dy`.
    relu_out: Option<&'a Tensor>,
    args: &'a BatchNormArgs<'r, &'a Tensor>,
    saved: &'a SavedStats,
    want_dresidual: bool,
    s: BnShape,
}

/// `(weight, bias)` as an affine map: both given, or both absent (no affine map).
pub fn affine_pair<H>(weight: Option<H>, bias: Option<H>) -> Result<Option<(H, H)>> {
    match (weight, bias) {
        (Some(w), Some(b)) => Ok(Some((w, b))),
        (None, None) => Ok(None),
        _ => Err(Error::op_arg(
            "batch_norm",
            "batch_norm: weight and bias must be both given (affine) or both absent",
        )),
    }
}

/// `1/sqrt(var + eps)` per channel on the tensor's device.
pub fn invstd(var: &Tensor, eps: f32) -> Result<Tensor> {
    match var.device() {
        Device::Cpu => {
            Tensor::from_vec(var.shape(), invstd_cpu(var.host_data()?, eps), var.device())
        }
        Device::Gpu(g) => device::invstd(g, var, eps),
    }
}

/// The eval forward `relu?(bn(x) + residual?)` with the running statistics: [`forward`] in eval
/// mode, in the argument list of the conv epilogue's tests (`ops::conv`).
pub fn batchnorm_eval_forward_act(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    running: &RunningStats,
    eps: f32,
    relu: bool,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let args = BatchNormArgs {
        mode: Mode::Eval,
        activation: Activation::relu_if(relu),
        affine,
        residual,
        running: Some(running),
        eps,
        ..Default::default()
    };
    Ok(forward(x, &args)?.y)
}

/// The checks of a forward: shapes and devices of every operand; in train mode more than one
/// value per channel, in eval mode running statistics.
fn check_forward(x: &Tensor, args: &BatchNormArgs<&Tensor>) -> Result<BnShape> {
    let s = check_inputs(x, args.affine, args.running)?;
    if let Some(r) = args.residual {
        same_device("batch_norm_add_relu", x, r)?;
        r.expect_shape("batch_norm_add_relu: residual", x.shape())?;
    }
    match args.mode {
        Mode::Train if s.per_channel() <= 1 => Err(Error::Shape(format!(
            "batch_norm: expected more than 1 value per channel when training, got x {:?}",
            x.shape()
        ))),
        Mode::Eval if args.running.is_none() => Err(Error::op_arg(
            "batch_norm",
            "batch_norm: eval mode needs the running statistics",
        )),
        _ => Ok(s),
    }
}

/// Shapes and devices of `x`, the affine map and the running statistics.
fn check_inputs(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    running: Option<&RunningStats>,
) -> Result<BnShape> {
    let s = BnShape::of(x.shape())?;
    let c = s.channels;
    let check = |what: &str, t: &Tensor| -> Result<()> {
        same_device("batch_norm", x, t)?;
        if t.shape() != [c] {
            return Err(Error::Shape(format!(
                "batch_norm: {what} has shape {:?}, expected [{c}] for x {:?} (one value per channel = dim 1)",
                t.shape(),
                x.shape()
            )));
        }
        Ok(())
    };
    if let Some((gamma, beta)) = affine {
        check("weight", gamma)?;
        check("bias", beta)?;
    }
    if let Some(r) = running {
        check("running_mean", &r.mean)?;
        check("running_var", &r.var)?;
        if let Some(count) = &r.num_batches_tracked {
            same_device("batch_norm", x, count)?;
            if count.numel() != 1 {
                return Err(Error::Shape(format!(
                    "batch_norm: num_batches_tracked has shape {:?}, expected a scalar",
                    count.shape()
                )));
            }
        }
    }
    i32::try_from(x.numel()).map_err(|_| {
        Error::Shape(format!(
            "batch_norm: x {:?} is beyond the kernels' 32-bit index range",
            x.shape()
        ))
    })?;
    Ok(s)
}

/// The checks of a backward: shapes and devices of `dy` and the per-channel values.
fn check_backward(
    x: &Tensor,
    dy: &Tensor,
    gamma: Option<&Tensor>,
    saved: &SavedStats,
) -> Result<BnShape> {
    let s = BnShape::of(x.shape())?;
    dy.expect_shape("batch_norm backward: dy", x.shape())?;
    for t in [&saved.mean, &saved.invstd].into_iter().chain(gamma) {
        same_device("batch_norm backward", x, t)?;
        t.expect_shape("batch_norm backward: per-channel value", &[s.channels])?;
    }
    same_device("batch_norm backward", x, dy)?;
    Ok(s)
}
