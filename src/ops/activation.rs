//! Learned activations used as baselines by the LMA repo (SPEC-NOTES §6):
//! - PReLU with ONE scalar alpha: `y = relu(x) - alpha*relu(-x)`;
//! - Swish(dim): `y = x*sigmoid(betas[d]*x)`;
//! - APLU(dim, num_bins): `y = relu(x) + sum_s alphas[d,s]*relu(-x + betas[d,s])`, S = num_bins-2.
//!
//! `d = (row-major flat index) mod dim` — the seeds' `view(-1, dim)` quirk, NOT the channel of a 4-D
//! input. Kernels: `kernels/activation.cu`; parameter gradients are deterministic reductions
//! (`ops::partials`).

use crate::autograd::{Graph, Var};
use crate::device::{Device, Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::partials::{self, check_i32};
use crate::ops::Real;
use crate::tensor::{same_device, Tensor};

/// Mirrors `ActParams` in `kernels/activation.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActParams {
    /// Elements of x.
    pub n: i32,
    /// Parameters per hinge: parameter index is (flat index) mod `dim`.
    pub dim: i32,
    /// APLU hinges per parameter (S).
    pub hinges: i32,
    /// Rows of the `[n / dim, dim]` view.
    pub rows: i32,
    /// Rows per block row of the parameter-gradient grid.
    pub chunk_rows: i32,
}

// ---------- CPU reference ----------

fn relu<T: Real>(v: T) -> T {
    if v > T::ZERO {
        v
    } else {
        T::ZERO
    }
}

pub(crate) fn sigmoid<T: Real>(z: T) -> T {
    T::ONE / (T::ONE + (-z).exp())
}

/// PReLU with one scalar slope: `y = relu(x) - alpha·relu(-x)`.
pub fn prelu_forward_cpu<T: Real>(x: &[T], alpha: T, y: &mut [T]) {
    for (y, &v) in y.iter_mut().zip(x) {
        *y = relu(v) - alpha * relu(-v);
    }
}

/// Fills `dx` and returns `dalpha = sum_{x<0} dy*x` (accumulated in f64).
pub fn prelu_backward_cpu<T: Real>(x: &[T], alpha: T, dy: &[T], dx: &mut [T]) -> T {
    let mut dalpha = 0.0f64;
    for ((dx, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        *dx = if v > T::ZERO {
            g
        } else if v < T::ZERO {
            dalpha += g.to_f64() * v.to_f64();
            alpha * g
        } else {
            T::ZERO
        };
    }
    T::from_f64(dalpha)
}

/// Swish `y = x·sigmoid(beta·x)`, beta per feature (`betas[i mod dim]`).
pub fn swish_forward_cpu<T: Real>(x: &[T], betas: &[T], y: &mut [T]) {
    let dim = betas.len();
    for (i, (y, &v)) in y.iter_mut().zip(x).enumerate() {
        *y = v * sigmoid(betas[i % dim] * v);
    }
}

/// Fills `dx` and `dbetas` (`dbetas[d] = sum dy*x^2*s*(1-s)`, accumulated in f64).
pub fn swish_backward_cpu<T: Real>(x: &[T], betas: &[T], dy: &[T], dx: &mut [T], dbetas: &mut [T]) {
    let dim = betas.len();
    let mut acc = vec![0.0f64; dim];
    for (i, ((dx, &v), &g)) in dx.iter_mut().zip(x).zip(dy).enumerate() {
        let b = betas[i % dim];
        let s = sigmoid(b * v);
        *dx = g * (s + v * s * (T::ONE - s) * b);
        acc[i % dim] += g.to_f64() * (v * v * s * (T::ONE - s)).to_f64();
    }
    for (d, a) in dbetas.iter_mut().zip(acc) {
        *d = T::from_f64(a);
    }
}

/// `alphas`, `betas` are `[dim, hinges]` row-major.
pub fn aplu_forward_cpu<T: Real>(x: &[T], alphas: &[T], betas: &[T], dim: usize, y: &mut [T]) {
    let hinges = alphas.len() / dim;
    for (i, (y, &v)) in y.iter_mut().zip(x).enumerate() {
        let base = (i % dim) * hinges;
        let mut acc = relu(v);
        for s in base..base + hinges {
            acc += alphas[s] * relu(-v + betas[s]);
        }
        *y = acc;
    }
}

/// Fills `dx`, `dalphas` and `dbetas` (`[dim, hinges]`, accumulated in f64).
#[allow(clippy::too_many_arguments)]
pub fn aplu_backward_cpu<T: Real>(
    x: &[T],
    alphas: &[T],
    betas: &[T],
    dim: usize,
    dy: &[T],
    dx: &mut [T],
    dalphas: &mut [T],
    dbetas: &mut [T],
) {
    let hinges = alphas.len() / dim;
    let mut acc_a = vec![0.0f64; alphas.len()];
    let mut acc_b = vec![0.0f64; alphas.len()];
    for (i, ((dx, &v), &g)) in dx.iter_mut().zip(x).zip(dy).enumerate() {
        let base = (i % dim) * hinges;
        let mut slope = if v > T::ZERO { T::ONE } else { T::ZERO };
        for s in base..base + hinges {
            let h = -v + betas[s];
            if h > T::ZERO {
                slope -= alphas[s];
                acc_a[s] += g.to_f64() * h.to_f64();
                acc_b[s] += g.to_f64() * alphas[s].to_f64();
            }
        }
        *dx = g * slope;
    }
    for (d, a) in dalphas.iter_mut().zip(acc_a) {
        *d = T::from_f64(a);
    }
    for (d, a) in dbetas.iter_mut().zip(acc_b) {
        *d = T::from_f64(a);
    }
}

// ---------- checks ----------

/// `dim` for a per-position parameter `[dim, ...]` applied through `view(-1, dim)`.
fn check_dim(op: &str, x: &Tensor, param: &Tensor, per_d: usize) -> Result<usize> {
    let dim = param.shape().first().copied().unwrap_or(0);
    if dim == 0 || param.numel() != dim * per_d {
        return Err(Error::Shape(format!(
            "{op}: parameter of shape {:?} (expected [dim{}] with dim > 0)",
            param.shape(),
            if per_d == 1 {
                String::new()
            } else {
                format!(", {per_d}")
            }
        )));
    }
    if x.numel() % dim != 0 {
        return Err(Error::Shape(format!(
            "{op}: input of shape {:?} ({} elements) cannot be viewed as rows of dim = {dim}",
            x.shape(),
            x.numel()
        )));
    }
    Ok(dim)
}

/// Parameters of the per-element kernels and of the `[rows, cols]` column-sum grid.
fn act_params(op: &str, x: &Tensor, dim: usize, hinges: usize) -> Result<(ActParams, LaunchCfg)> {
    let n = check_i32(op, x.shape())?;
    let rows = x.numel() / dim.max(1);
    let chunks = rows.div_ceil(64).clamp(1, 64);
    let chunk_rows = rows.div_ceil(chunks).max(1);
    let p = ActParams {
        n,
        dim: dim as i32,
        hinges: hinges as i32,
        rows: rows as i32,
        chunk_rows: chunk_rows as i32,
    };
    let cols = dim * hinges.max(1);
    let grid = LaunchCfg::new(
        (
            cols.div_ceil(32) as u32,
            rows.div_ceil(chunk_rows).max(1) as u32,
            1,
        ),
        (32, 8, 1),
    );
    Ok((p, grid))
}

fn chunks_of(p: &ActParams) -> usize {
    (p.rows as usize).div_ceil(p.chunk_rows as usize).max(1)
}

/// Launch a per-element kernel `kernel(inputs..., out, p)` and return its output shaped like `x`.
fn map_kernel(
    g: &Gpu,
    kernel: &str,
    x: &Tensor,
    inputs: &[&Tensor],
    p: ActParams,
) -> Result<Tensor> {
    let n = x.numel();
    let mut y = g.zeros::<f32>(n)?;
    let mut args = KernelArgs::new();
    for t in inputs {
        args.ptr(g.addr(t.buffer()));
    }
    args.ptr(g.addr_mut(&mut y)).value(&p);
    g.launch(kernel, LaunchCfg::for_elements(n), &mut args)?;
    Tensor::from_buffer(x.shape(), y, x.device())
}

// ---------- device dispatch: PReLU ----------

fn check_alpha(x: &Tensor, alpha: &Tensor) -> Result<()> {
    same_device("prelu", x, alpha)?;
    if alpha.numel() != 1 {
        return Err(Error::Shape(format!(
            "prelu: alpha must be one scalar (shape []), got {:?}",
            alpha.shape()
        )));
    }
    Ok(())
}

/// PReLU on the tensor's device (`alpha` is a one-element tensor).
pub fn prelu_forward(x: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    check_alpha(x, alpha)?;
    match x.device() {
        Device::Cpu => {
            let mut y = vec![0.0; x.numel()];
            prelu_forward_cpu(x.host_data()?, alpha.host_data()?[0], &mut y);
            Tensor::from_vec(x.shape(), y, x.device())
        }
        Device::Gpu(g) => {
            let (p, _) = act_params("prelu", x, 1, 0)?;
            map_kernel(g, "prelu_forward_f32", x, &[x, alpha], p)
        }
    }
}

/// `(dx, dalpha)`; `dalpha` has `alpha`'s shape.
pub fn prelu_backward(x: &Tensor, alpha: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    check_alpha(x, alpha)?;
    same_device("prelu backward", x, dy)?;
    dy.expect_shape("prelu backward: dy", x.shape())?;
    match x.device() {
        Device::Cpu => {
            let mut dx = vec![0.0; x.numel()];
            let da = prelu_backward_cpu(
                x.host_data()?,
                alpha.host_data()?[0],
                dy.host_data()?,
                &mut dx,
            );
            Ok((
                Tensor::from_vec(x.shape(), dx, x.device())?,
                Tensor::from_vec(alpha.shape(), vec![da], x.device())?,
            ))
        }
        Device::Gpu(g) => {
            let (p, _) = act_params("prelu backward", x, 1, 0)?;
            let dx = map_kernel(g, "prelu_backward_x_f32", x, &[x, alpha, dy], p)?;
            let blocks = partials::partial_blocks(x.numel());
            let mut partial = g.zeros::<f64>(blocks)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer())).ptr(g.addr(dy.buffer()));
            args.ptr(g.addr_mut(&mut partial)).value(&p);
            g.launch(
                "prelu_alpha_partial_f32",
                partials::partial_launch(x.numel()),
                &mut args,
            )?;
            let da = partials::finish(g, &partial, blocks, 1, 1.0)?;
            Ok((dx, Tensor::from_buffer(alpha.shape(), da, x.device())?))
        }
    }
}

// ---------- device dispatch: Swish ----------

/// Swish on the tensor's device, `betas[i mod dim]` for the element of flat index i.
pub fn swish_forward(x: &Tensor, betas: &Tensor) -> Result<Tensor> {
    same_device("swish", x, betas)?;
    let dim = check_dim("swish", x, betas, 1)?;
    match x.device() {
        Device::Cpu => {
            let mut y = vec![0.0; x.numel()];
            swish_forward_cpu(x.host_data()?, betas.host_data()?, &mut y);
            Tensor::from_vec(x.shape(), y, x.device())
        }
        Device::Gpu(g) => {
            let (p, _) = act_params("swish", x, dim, 1)?;
            map_kernel(g, "swish_forward_f32", x, &[x, betas], p)
        }
    }
}

/// `(dx, dbetas)`.
pub fn swish_backward(x: &Tensor, betas: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    same_device("swish backward", x, betas)?;
    same_device("swish backward", x, dy)?;
    dy.expect_shape("swish backward: dy", x.shape())?;
    let dim = check_dim("swish", x, betas, 1)?;
    let dev = x.device();
    match dev {
        Device::Cpu => {
            let (mut dx, mut db) = (vec![0.0; x.numel()], vec![0.0; dim]);
            swish_backward_cpu(
                x.host_data()?,
                betas.host_data()?,
                dy.host_data()?,
                &mut dx,
                &mut db,
            );
            Ok((
                Tensor::from_vec(x.shape(), dx, dev)?,
                Tensor::from_vec(betas.shape(), db, dev)?,
            ))
        }
        Device::Gpu(g) => {
            let (p, grid) = act_params("swish backward", x, dim, 1)?;
            let dx = map_kernel(g, "swish_backward_x_f32", x, &[x, betas, dy], p)?;
            let chunks = chunks_of(&p);
            let mut partial = g.zeros::<f64>(chunks * dim)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer())).ptr(g.addr(betas.buffer()));
            args.ptr(g.addr(dy.buffer())).ptr(g.addr_mut(&mut partial));
            args.value(&p);
            g.launch("swish_betas_partial_f32", grid, &mut args)?;
            let db = partials::finish(g, &partial, chunks, dim, 1.0)?;
            Ok((dx, Tensor::from_buffer(betas.shape(), db, dev)?))
        }
    }
}

// ---------- device dispatch: APLU ----------

/// `(dim, hinges)` of APLU parameters `[dim, S]`.
fn check_aplu(x: &Tensor, alphas: &Tensor, betas: &Tensor) -> Result<(usize, usize)> {
    same_device("aplu", x, alphas)?;
    same_device("aplu", x, betas)?;
    let &[dim, hinges] = alphas.shape() else {
        return Err(Error::Shape(format!(
            "aplu: alphas must be [dim, num_bins-2], got {:?}",
            alphas.shape()
        )));
    };
    betas.expect_shape("aplu: betas (same shape as alphas)", alphas.shape())?;
    check_dim("aplu", x, alphas, hinges)?;
    Ok((dim, hinges))
}

/// APLU on the tensor's device: `relu(x) + Σ_s alphas[d, s]·relu(-x + betas[d, s])`, d = flat
/// index mod dim.
pub fn aplu_forward(x: &Tensor, alphas: &Tensor, betas: &Tensor) -> Result<Tensor> {
    let (dim, hinges) = check_aplu(x, alphas, betas)?;
    match x.device() {
        Device::Cpu => {
            let mut y = vec![0.0; x.numel()];
            aplu_forward_cpu(
                x.host_data()?,
                alphas.host_data()?,
                betas.host_data()?,
                dim,
                &mut y,
            );
            Tensor::from_vec(x.shape(), y, x.device())
        }
        Device::Gpu(g) => {
            let (p, _) = act_params("aplu", x, dim, hinges)?;
            map_kernel(g, "aplu_forward_f32", x, &[x, alphas, betas], p)
        }
    }
}

/// `(dx, dalphas, dbetas)`.
pub fn aplu_backward(
    x: &Tensor,
    alphas: &Tensor,
    betas: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (dim, hinges) = check_aplu(x, alphas, betas)?;
    same_device("aplu backward", x, dy)?;
    dy.expect_shape("aplu backward: dy", x.shape())?;
    let dev = x.device();
    let cols = dim * hinges;
    match dev {
        Device::Cpu => {
            let mut dx = vec![0.0; x.numel()];
            let (mut da, mut db) = (vec![0.0; cols], vec![0.0; cols]);
            let (xs, a, b) = (x.host_data()?, alphas.host_data()?, betas.host_data()?);
            aplu_backward_cpu(xs, a, b, dim, dy.host_data()?, &mut dx, &mut da, &mut db);
            Ok((
                Tensor::from_vec(x.shape(), dx, dev)?,
                Tensor::from_vec(alphas.shape(), da, dev)?,
                Tensor::from_vec(alphas.shape(), db, dev)?,
            ))
        }
        Device::Gpu(g) => {
            let (p, grid) = act_params("aplu backward", x, dim, hinges)?;
            let dx = map_kernel(g, "aplu_backward_x_f32", x, &[x, alphas, betas, dy], p)?;
            if cols == 0 {
                let z = Tensor::zeros(alphas.shape(), dev)?;
                return Ok((dx, z.clone(), z));
            }
            let chunks = chunks_of(&p);
            let mut pa = g.zeros::<f64>(chunks * cols)?;
            let mut pb = g.zeros::<f64>(chunks * cols)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer())).ptr(g.addr(alphas.buffer()));
            args.ptr(g.addr(betas.buffer())).ptr(g.addr(dy.buffer()));
            args.ptr(g.addr_mut(&mut pa)).ptr(g.addr_mut(&mut pb));
            args.value(&p);
            g.launch("aplu_params_partial_f32", grid, &mut args)?;
            let da = partials::finish(g, &pa, chunks, cols, 1.0)?;
            let db = partials::finish(g, &pb, chunks, cols, 1.0)?;
            Ok((
                dx,
                Tensor::from_buffer(alphas.shape(), da, dev)?,
                Tensor::from_buffer(alphas.shape(), db, dev)?,
            ))
        }
    }
}

// ---------- autograd ----------

/// PReLU with one scalar `alpha` (shape `[]` or `[1]`).
pub fn prelu(g: &mut Graph, x: Var, alpha: Var) -> Result<Var> {
    let (xv, av) = (g.value(x).clone(), g.value(alpha).clone());
    let y = prelu_forward(&xv, &av)?;
    Ok(g.op(y, &[x, alpha], move |dy| {
        let (dx, da) = prelu_backward(&xv, &av, dy)?;
        Ok(vec![Some(dx), Some(da)])
    }))
}

/// Swish with `betas [dim]`; `x.numel()` must be a multiple of dim.
pub fn swish(g: &mut Graph, x: Var, betas: Var) -> Result<Var> {
    let (xv, bv) = (g.value(x).clone(), g.value(betas).clone());
    let y = swish_forward(&xv, &bv)?;
    Ok(g.op(y, &[x, betas], move |dy| {
        let (dx, db) = swish_backward(&xv, &bv, dy)?;
        Ok(vec![Some(dx), Some(db)])
    }))
}

/// APLU with `alphas`, `betas` of `[dim, num_bins-2]`.
pub fn aplu(g: &mut Graph, x: Var, alphas: Var, betas: Var) -> Result<Var> {
    let xv = g.value(x).clone();
    let (av, bv) = (g.value(alphas).clone(), g.value(betas).clone());
    let y = aplu_forward(&xv, &av, &bv)?;
    Ok(g.op(y, &[x, alphas, betas], move |dy| {
        let (dx, da, db) = aplu_backward(&xv, &av, &bv, dy)?;
        Ok(vec![Some(dx), Some(da), Some(db)])
    }))
}
