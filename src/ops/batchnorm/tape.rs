//! BatchNorm as an autograd op.

use super::{backward, forward, BatchNormArgs, RunningStats, SavedStats};
use crate::autograd::{Graph, Var};
use crate::error::Result;

/// `activation(bn(x) + residual?)` on the tape (one op: same values and gradients as the separate
/// ops; on the CPU fewer passes each way and no intermediates). The running statistics are
/// required. In train mode the batch statistics normalise and the updated running statistics are
/// returned (the caller stores them); in eval mode the running ones normalise and `None` is
/// returned.
pub fn batch_norm(
    g: &mut Graph,
    x: Var,
    args: &BatchNormArgs<Var>,
) -> Result<(Var, Option<RunningStats>)> {
    let running = args.running.ok_or_else(|| {
        crate::error::Error::op_arg(
            "batch_norm",
            "batch_norm: the tape op needs the running statistics",
        )
    })?;
    let xv = g.value(x).clone();
    let affine = args
        .affine
        .map(|(w, b)| (g.value(w).clone(), g.value(b).clone()));
    let residual = args.residual.map(|r| g.value(r).clone());
    let f = forward(
        &xv,
        &BatchNormArgs {
            mode: args.mode,
            activation: args.activation,
            affine: affine.as_ref().map(|(w, b)| (w, b)),
            residual: residual.as_ref(),
            running: Some(running),
            eps: args.eps,
            momentum: args.momentum,
            chunks: args.chunks,
        },
    )?;
    // Eval mode: invstd is only computed if a backward actually runs.
    let saved = f.saved.ok_or_else(|| running.clone());
    let mut inputs: Vec<Var> = match args.affine {
        Some((w, b)) => vec![x, w, b],
        None => vec![x],
    };
    inputs.extend(args.residual);
    let need_dx = g.requires_grad(x);
    let need_dres = args.residual.is_some_and(|r| g.requires_grad(r));
    let y = f.y.clone();
    let (mode, activation, eps) = (args.mode, args.activation, args.eps);
    let chunks = args.chunks;
    let out = g.op(f.y, &inputs, move |dy| {
        let saved = match saved {
            Ok(saved) => saved,
            Err(running) => SavedStats::of_running(&running, eps)?,
        };
        let args = BatchNormArgs {
            mode,
            activation,
            affine: affine.as_ref().map(|(w, b)| (w, b)),
            residual: residual.as_ref(),
            chunks,
            ..Default::default()
        };
        let grads = backward(&xv, dy, &y, &args, &saved, need_dres)?;
        let mut out = vec![need_dx.then_some(grads.dx)];
        if args.affine.is_some() {
            out.push(Some(grads.dgamma));
            out.push(Some(grads.dbeta));
        }
        if args.residual.is_some() {
            out.push(grads.dresidual);
        }
        Ok(out)
    });
    Ok((out, f.running))
}
