//! BatchNorm on kernel devices (`kernels/batchnorm.cu`): each kernel takes one `#[repr(C)]`
//! struct by value, its pointers then the shared [`BatchNormParams`] (a null pointer, 0, for an
//! absent operand). Train forward and backward are two launches each: sums per (channel, chunk)
//! on a 2-D grid whose last block per channel (a per-channel counter) finalizes the channel, then
//! one elementwise pass.

use super::{BackwardCall, BatchNormArgs, BnShape, Forward, Grads, Mode, RunningStats, SavedStats};
use crate::device::{Gpu, KernelArgs, LaunchCfg};
use crate::error::Result;
use crate::tensor::Tensor;

/// Mirrors `BatchNormParams` in `kernels/batchnorm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct BatchNormParams {
    outer: i32,
    channels: i32,
    inner: i32,
    eps: f32,
    momentum: f32,
    affine: i32,
    update_running: i32,
    /// Statistics kernels: chunks per channel and values per chunk (see [`bn_split`]).
    chunks: i32,
    chunk_len: i32,
    /// Forward: clamp the output at 0 (after the residual, when one is given).
    relu: i32,
    /// Backward: batch statistics (else running statistics, constants).
    train: i32,
    /// Keeps the size a multiple of 8, so that the launch structs have no padding.
    pad: i32,
}

/// Declares a kernel's argument struct (mirrored in `kernels/batchnorm.cu`): device addresses,
/// then the parameters.
macro_rules! launch_args {
    ($(#[$doc:meta])* $name:ident { $($field:ident),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        struct $name {
            $($field: u64,)*
            p: BatchNormParams,
        }
    };
}

launch_args!(
    /// `batchnorm_stats_f32`.
    StatsArgs {
        x, partial, done, save_mean, save_invstd, running_mean, running_var, count_in,
        new_running_mean, new_running_var, count_out,
    }
);
launch_args!(
    /// `batchnorm_apply_f32`.
    ApplyArgs { x, gamma, beta, mean, invstd, residual, y }
);
launch_args!(
    /// `batchnorm_forward_eval_f32`.
    EvalArgs { x, gamma, beta, running_mean, running_var, residual, y }
);
launch_args!(
    /// `batchnorm_backward_stats_f32`.
    BackwardStatsArgs { x, dy, relu_out, mean, invstd, partial, done, dgamma, dbeta, coef }
);
launch_args!(
    /// `batchnorm_backward_dx_f32`.
    BackwardDxArgs { x, dy, relu_out, gamma, mean, invstd, coef, dx, dres }
);
launch_args!(
    /// `batchnorm_invstd_f32`.
    InvstdArgs { var, invstd }
);

/// Launches `kernel` with its argument struct `args`.
fn launch<A: bytemuck::Pod>(g: &Gpu, kernel: &str, cfg: LaunchCfg, args: &A) -> Result<()> {
    g.launch(kernel, cfg, KernelArgs::new().value(args))
}

/// The parameters of a shape with one chunk per channel; the flags off.
fn params(s: BnShape, eps: f32, momentum: f32) -> BatchNormParams {
    BatchNormParams {
        outer: s.outer as i32,
        channels: s.channels as i32,
        inner: s.inner as i32,
        eps,
        momentum,
        affine: 0,
        update_running: 0,
        chunks: 1,
        chunk_len: s.per_channel().max(1) as i32,
        relu: 0,
        train: 0,
        pad: 0,
    }
}

/// Blocks the statistics kernels aim for when there is enough work: a few per SM of a large GPU
/// (4 x the 132 SMs of an H100/H200). A constant, not the device's SM count, so that results
/// depend only on the shape.
pub const BN_TARGET_BLOCKS: usize = 4 * 132;
/// Fewest values per chunk when the split is chosen from the sizes: below this a block's fixed
/// cost (two tree reductions, a partial written and re-read) outweighs its share of the reading.
pub const BN_MIN_CHUNK: usize = 2048;
/// Most chunks per channel (the chunk index is `blockIdx.y`, at most 65535).
pub const BN_MAX_CHUNKS: usize = 4096;

/// How the statistics kernels split each channel's values: `chunks` contiguous chunks of
/// `chunk_len` values in `[0, outer*inner)` order (the last one shorter), none empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnSplit {
    /// Chunks per channel.
    pub chunks: usize,
    /// Values per chunk.
    pub chunk_len: usize,
}

/// The split of `s`'s statistics: `chunks` per channel when given (tests force several on small
/// shapes), else from the sizes — enough chunks for [`BN_TARGET_BLOCKS`] blocks over all channels,
/// but none shorter than [`BN_MIN_CHUNK`] values. Either way the count is then rounded so that
/// every chunk is non-empty (it may come out lower than asked, never higher).
pub fn bn_split(s: BnShape, chunks: Option<usize>) -> BnSplit {
    let n = s.per_channel();
    let want = chunks.unwrap_or_else(|| {
        BN_TARGET_BLOCKS
            .div_ceil(s.channels.max(1))
            .min(n / BN_MIN_CHUNK)
    });
    let want = want.clamp(1, n.clamp(1, BN_MAX_CHUNKS));
    let chunk_len = n.div_ceil(want).max(1);
    BnSplit {
        chunks: n.div_ceil(chunk_len).max(1),
        chunk_len,
    }
}

/// The statistics kernels' 2-D grid: `(channel, chunk)`, one block per chunk; fewer threads when
/// chunks are short.
fn stats_cfg(s: BnShape, split: BnSplit) -> LaunchCfg {
    let threads = split.chunk_len.next_power_of_two().clamp(32, 256) as u32;
    LaunchCfg::new((s.channels as u32, split.chunks as u32, 1), (threads, 1, 1))
}

/// `params` with the split of the statistics kernels.
fn split_params(p: BatchNormParams, split: BnSplit) -> BatchNormParams {
    BatchNormParams {
        chunks: split.chunks as i32,
        chunk_len: split.chunk_len as i32,
        ..p
    }
}

/// The device address of an optional operand (0: absent).
fn addr_of(g: &Gpu, t: Option<&Tensor>) -> u64 {
    t.map_or(0, |t| g.addr(t.buffer()))
}

/// Train forward, `relu?(bn(x) + residual?)` in two launches: per-(channel, chunk) partial
/// statistics whose last block per channel finalizes it (saved statistics, running statistics
/// and the batch counter), and one elementwise pass writing the fused output. Inputs are checked
/// by the caller.
pub(super) fn train_forward(
    g: &Gpu,
    x: &Tensor,
    args: &BatchNormArgs<&Tensor>,
    s: BnShape,
) -> Result<Forward> {
    let (c, dev, running) = (s.channels, x.device(), args.running);
    let split = bn_split(s, args.chunks);
    let p = BatchNormParams {
        relu: args.relu() as i32,
        affine: args.affine.is_some() as i32,
        update_running: running.is_some() as i32,
        ..split_params(params(s, args.eps, args.momentum), split)
    };
    let mut y = g.zeros::<f32>(x.numel())?;
    let mut save_mean = g.zeros::<f32>(c)?;
    let mut save_invstd = g.zeros::<f32>(c)?;
    let mut new_rm = g.zeros::<f32>(if running.is_some() { c } else { 0 })?;
    let mut new_rv = g.zeros::<f32>(if running.is_some() { c } else { 0 })?;
    let count_in = running.and_then(|r| r.num_batches_tracked.as_ref());
    let mut count_out = g.zeros::<f32>(count_in.map_or(0, |_| 1))?;
    if c > 0 {
        let mut partial = g.zeros::<f64>(c * split.chunks * 2)?;
        let mut done = g.zeros::<i32>(c)?;
        let stats = StatsArgs {
            x: g.addr(x.buffer()),
            partial: g.addr_mut(&mut partial),
            done: g.addr_mut(&mut done),
            save_mean: g.addr_mut(&mut save_mean),
            save_invstd: g.addr_mut(&mut save_invstd),
            running_mean: addr_of(g, running.map(|r| &r.mean)),
            running_var: addr_of(g, running.map(|r| &r.var)),
            count_in: addr_of(g, count_in),
            new_running_mean: if running.is_some() {
                g.addr_mut(&mut new_rm)
            } else {
                0
            },
            new_running_var: if running.is_some() {
                g.addr_mut(&mut new_rv)
            } else {
                0
            },
            count_out: if count_in.is_some() {
                g.addr_mut(&mut count_out)
            } else {
                0
            },
            p,
        };
        launch(g, "batchnorm_stats_f32", stats_cfg(s, split), &stats)?;

        let apply = ApplyArgs {
            x: g.addr(x.buffer()),
            gamma: addr_of(g, args.affine.map(|(gamma, _)| gamma)),
            beta: addr_of(g, args.affine.map(|(_, beta)| beta)),
            mean: g.addr(&save_mean),
            invstd: g.addr(&save_invstd),
            residual: addr_of(g, args.residual),
            y: g.addr_mut(&mut y),
            p,
        };
        let cfg = LaunchCfg::for_elements(x.numel());
        launch(g, "batchnorm_apply_f32", cfg, &apply)?;
    }
    let running = match running {
        None => None,
        Some(r) => Some(RunningStats {
            mean: Tensor::from_buffer(&[c], new_rm, dev)?,
            var: Tensor::from_buffer(&[c], new_rv, dev)?,
            num_batches_tracked: match &r.num_batches_tracked {
                Some(t) => Some(Tensor::from_buffer(t.shape(), count_out, dev)?),
                None => None,
            },
        }),
    };
    Ok(Forward {
        y: Tensor::from_buffer(x.shape(), y, dev)?,
        saved: Some(SavedStats {
            mean: Tensor::from_buffer(&[c], save_mean, dev)?,
            invstd: Tensor::from_buffer(&[c], save_invstd, dev)?,
        }),
        running,
    })
}

/// Eval forward, one elementwise launch (inputs checked, running statistics given).
pub(super) fn eval_forward(
    g: &Gpu,
    x: &Tensor,
    args: &BatchNormArgs<&Tensor>,
    s: BnShape,
) -> Result<Forward> {
    let running = args
        .running
        .expect("checked: eval mode has running statistics");
    let mut y = g.zeros::<f32>(x.numel())?;
    let eval = EvalArgs {
        x: g.addr(x.buffer()),
        gamma: addr_of(g, args.affine.map(|(gamma, _)| gamma)),
        beta: addr_of(g, args.affine.map(|(_, beta)| beta)),
        running_mean: g.addr(running.mean.buffer()),
        running_var: g.addr(running.var.buffer()),
        residual: addr_of(g, args.residual),
        y: g.addr_mut(&mut y),
        p: BatchNormParams {
            relu: args.relu() as i32,
            affine: args.affine.is_some() as i32,
            ..params(s, args.eps, 0.0)
        },
    };
    let cfg = LaunchCfg::for_elements(x.numel());
    launch(g, "batchnorm_forward_eval_f32", cfg, &eval)?;
    Ok(Forward {
        y: Tensor::from_buffer(x.shape(), y, x.device())?,
        saved: None,
        running: None,
    })
}

/// Backward in two launches: per-(channel, chunk) partial sums of `g` and `g*xhat` (`g` = `dy`
/// masked by the fused ReLU's output, when given) whose last block per channel finalizes it
/// (dgamma, dbeta and the dx coefficients), and one elementwise pass writing dx and, when wanted with a ReLU output, the
/// residual's gradient (the masked `dy`). Inputs are checked by the caller.
pub(super) fn backward(g: &Gpu, call: &BackwardCall) -> Result<Grads> {
    let (x, dy, relu_out, s) = (call.x, call.dy, call.relu_out, call.s);
    let (args, saved, want_dresidual) = (call.args, call.saved, call.want_dresidual);
    let (c, dev) = (s.channels, x.device());
    let gamma = args.affine.map(|(gamma, _)| gamma);
    let split = bn_split(s, args.chunks);
    let p = BatchNormParams {
        train: (args.mode == Mode::Train) as i32,
        affine: gamma.is_some() as i32,
        ..split_params(params(s, 0.0, 0.0), split)
    };
    let mut dx = g.zeros::<f32>(x.numel())?;
    let mut dgamma = g.zeros::<f32>(c)?;
    let mut dbeta = g.zeros::<f32>(c)?;
    let mut dres = match relu_out {
        Some(_) if want_dresidual => Some(g.zeros::<f32>(x.numel())?),
        _ => None,
    };
    if c > 0 {
        let mut partial = g.zeros::<f64>(c * split.chunks * 2)?;
        let mut done = g.zeros::<i32>(c)?;
        let mut coef = g.zeros::<f32>(2 * c)?;
        let stats = BackwardStatsArgs {
            x: g.addr(x.buffer()),
            dy: g.addr(dy.buffer()),
            relu_out: addr_of(g, relu_out),
            mean: g.addr(saved.mean.buffer()),
            invstd: g.addr(saved.invstd.buffer()),
            partial: g.addr_mut(&mut partial),
            done: g.addr_mut(&mut done),
            dgamma: g.addr_mut(&mut dgamma),
            dbeta: g.addr_mut(&mut dbeta),
            coef: g.addr_mut(&mut coef),
            p,
        };
        let name = "batchnorm_backward_stats_f32";
        launch(g, name, stats_cfg(s, split), &stats)?;

        let dx_args = BackwardDxArgs {
            x: g.addr(x.buffer()),
            dy: g.addr(dy.buffer()),
            relu_out: addr_of(g, relu_out),
            gamma: addr_of(g, gamma),
            mean: g.addr(saved.mean.buffer()),
            invstd: g.addr(saved.invstd.buffer()),
            coef: g.addr(&coef),
            dx: g.addr_mut(&mut dx),
            dres: dres.as_mut().map_or(0, |d| g.addr_mut(d)),
            p,
        };
        let cfg = LaunchCfg::for_elements(x.numel());
        launch(g, "batchnorm_backward_dx_f32", cfg, &dx_args)?;
    }
    let dresidual = match dres {
        Some(d) => Some(Tensor::from_buffer(x.shape(), d, dev)?),
        None => want_dresidual.then(|| dy.clone()),
    };
    Ok(Grads {
        dx: Tensor::from_buffer(x.shape(), dx, dev)?,
        dgamma: Tensor::from_buffer(&[c], dgamma, dev)?,
        dbeta: Tensor::from_buffer(&[c], dbeta, dev)?,
        dresidual,
    })
}

/// `1/sqrt(var + eps)` per channel, one launch.
pub(super) fn invstd(g: &Gpu, var: &Tensor, eps: f32) -> Result<Tensor> {
    let c = var.numel();
    let mut out = g.zeros::<f32>(c)?;
    let s = BnShape {
        outer: 1,
        channels: c,
        inner: 1,
    };
    let args = InvstdArgs {
        var: g.addr(var.buffer()),
        invstd: g.addr_mut(&mut out),
        p: params(s, eps, 0.0),
    };
    launch(g, "batchnorm_invstd_f32", LaunchCfg::for_elements(c), &args)?;
    Tensor::from_buffer(var.shape(), out, var.device())
}
