//! Matrix products: a general GEMM `C = alpha·op(A)·op(B) + beta·C` (row-major, optional transposes,
//! optional batch; kernel `gemm_f32` in `kernels/gemm.cu`), `matmul` for 2-D tensors and the
//! `linear` op `y = x·Wᵀ + b` with PyTorch's weight layout `[out, in]`.
//!
//! Backward of `C = op(A)·op(B)`: `d op(A) = dC·op(B)ᵀ` and `d op(B) = op(A)ᵀ·dC`; both are again
//! GEMMs over the stored operands with flipped transpose flags ([`grad_plan`]), so no transpose is
//! ever materialised.

use crate::autograd::{Graph, Var};
use crate::device::{Device, Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::autocast::{autocast, operand};
use crate::ops::cpu::{self, MatRef};
use crate::ops::reduce::{broadcast_rows, sum_rows_forward};
use crate::ops::tensor_core;
use crate::ops::Real;
use crate::precision::Precision;
use crate::tensor::{same_device, Tensor};

/// Mirrors `GemmParams` in `kernels/gemm.cu`. `op(A)` is `m x k`, `op(B)` is `k x n`, `C` is `m x n`.
/// Without transpose A is stored `[m, k]` with row stride `lda`; with `trans_a` it is stored `[k, m]`
/// (likewise B: `[k, n]` or `[n, k]`). Batch `z` (the grid's z) offsets A, B, C by `z * stride_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GemmParams {
    /// Rows of `op(A)` and `C`.
    pub m: i32,
    /// Columns of `op(B)` and `C`.
    pub n: i32,
    /// Columns of `op(A)`, rows of `op(B)`.
    pub k: i32,
    /// Row stride of A as stored.
    pub lda: i32,
    /// Row stride of B as stored.
    pub ldb: i32,
    /// Row stride of C.
    pub ldc: i32,
    /// 1: A is stored transposed.
    pub trans_a: i32,
    /// 1: B is stored transposed.
    pub trans_b: i32,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the existing C (0: C is not read).
    pub beta: f32,
    /// Elements between batch elements of A.
    pub stride_a: i64,
    /// Elements between batch elements of B.
    pub stride_b: i64,
    /// Elements between batch elements of C.
    pub stride_c: i64,
}

/// Block tile of the kernel (`GEMM_BM`, `GEMM_BN`) and its thread count.
const GEMM_TILE: usize = 64;
const GEMM_THREADS: u32 = 256;

fn to_i32(op: &str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Shape(format!(
            "{op}: {what} = {v} is beyond the kernels' 32-bit index range"
        ))
    })
}

impl GemmParams {
    /// Densely packed operands (`lda` = stored row length), `C = op(A)·op(B)`, one batch element.
    pub fn dense(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Result<Self> {
        let op = "gemm";
        let lda = if trans_a { m } else { k };
        let ldb = if trans_b { k } else { n };
        Ok(GemmParams {
            m: to_i32(op, "m", m)?,
            n: to_i32(op, "n", n)?,
            k: to_i32(op, "k", k)?,
            lda: to_i32(op, "lda", lda.max(1))?,
            ldb: to_i32(op, "ldb", ldb.max(1))?,
            ldc: to_i32(op, "ldc", n.max(1))?,
            trans_a: trans_a as i32,
            trans_b: trans_b as i32,
            alpha: 1.0,
            beta: 0.0,
            stride_a: (m * k) as i64,
            stride_b: (k * n) as i64,
            stride_c: (m * n) as i64,
        })
    }

    /// `C = alpha·op(A)·op(B) + beta·C`.
    pub fn with_scale(mut self, alpha: f32, beta: f32) -> Self {
        self.alpha = alpha;
        self.beta = beta;
        self
    }

    /// Elements of A, B and C one batch element spans (the last one touched + 1).
    fn extents(&self) -> (usize, usize, usize) {
        let span = |rows: i32, cols: i32, ld: i32| {
            if rows == 0 || cols == 0 {
                0
            } else {
                (rows as usize - 1) * ld as usize + cols as usize
            }
        };
        let (ar, ac) = if self.trans_a != 0 {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let (br, bc) = if self.trans_b != 0 {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        (
            span(ar, ac, self.lda),
            span(br, bc, self.ldb),
            span(self.m, self.n, self.ldc),
        )
    }

    /// Buffer lengths needed for `batch` elements.
    fn required_lengths(&self, batch: usize) -> (usize, usize, usize) {
        let (ea, eb, ec) = self.extents();
        let need = |extent: usize, stride: i64| {
            if extent == 0 || batch == 0 {
                0
            } else {
                (batch - 1) * stride as usize + extent
            }
        };
        (
            need(ea, self.stride_a),
            need(eb, self.stride_b),
            need(ec, self.stride_c),
        )
    }
}

// ---------- CPU reference ----------

/// `c = alpha·op(a)·op(b) + beta·c` for `batch` GEMMs described by `p` (the specification of `gemm_f32`).
/// With `beta == 0`, `c` is not read (it may hold anything).
pub fn gemm_cpu<T: Real>(p: &GemmParams, batch: usize, a: &[T], b: &[T], c: &mut [T]) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let (lda, ldb, ldc) = (p.lda as isize, p.ldb as isize, p.ldc as usize);
    let (alpha, beta) = (T::from_f64(p.alpha as f64), T::from_f64(p.beta as f64));
    let (need_a, need_b, need_c) = p.required_lengths(batch);
    assert!(
        a.len() >= need_a && b.len() >= need_b && c.len() >= need_c,
        "gemm_cpu buffers too small"
    );
    let mut tmp = Vec::new();
    for z in 0..batch {
        let a = &a[z * p.stride_a as usize..];
        let b = &b[z * p.stride_b as usize..];
        let c = &mut c[z * p.stride_c as usize..];
        let av = if p.trans_a != 0 {
            MatRef {
                data: a,
                rows: m,
                cols: k,
                row_stride: 1,
                col_stride: lda,
            }
        } else {
            MatRef {
                data: a,
                rows: m,
                cols: k,
                row_stride: lda,
                col_stride: 1,
            }
        };
        let bv = if p.trans_b != 0 {
            MatRef {
                data: b,
                rows: k,
                cols: n,
                row_stride: 1,
                col_stride: ldb,
            }
        } else {
            MatRef {
                data: b,
                rows: k,
                cols: n,
                row_stride: ldb,
                col_stride: 1,
            }
        };
        let plain_scale = alpha == T::ONE && (beta == T::ZERO || beta == T::ONE);
        if ldc == n && plain_scale {
            cpu::gemm(av, bv, c, beta == T::ONE);
            continue;
        }
        tmp.clear();
        tmp.resize(m * n, T::ZERO);
        cpu::gemm(av, bv, &mut tmp, false);
        for i in 0..m {
            for (j, &prod) in tmp[i * n..(i + 1) * n].iter().enumerate() {
                let dst = &mut c[i * ldc + j];
                *dst = if beta == T::ZERO {
                    alpha * prod
                } else {
                    alpha * prod + beta * *dst
                };
            }
        }
    }
}

/// Which operands feed the two gradient GEMMs of `C = op(A)·op(B)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// The first operand.
    A,
    /// The second operand.
    B,
    /// The output gradient dC.
    DC,
}

/// `(lhs, trans_lhs, rhs, trans_rhs)` such that the stored-layout gradient of A (first) and of B
/// (second) is `op(lhs)·op(rhs)`:
/// * dA: `dC·op(B)ᵀ` when A is stored `[m,k]`; its transpose `op(B)·dCᵀ` when stored `[k,m]`;
/// * dB: `op(A)ᵀ·dC` when B is stored `[k,n]`; its transpose `dCᵀ·op(A)` when stored `[n,k]`.
pub fn grad_plan(trans_a: bool, trans_b: bool) -> [(Operand, bool, Operand, bool); 2] {
    let da = if trans_a {
        (Operand::B, trans_b, Operand::DC, true)
    } else {
        (Operand::DC, false, Operand::B, !trans_b)
    };
    let db = if trans_b {
        (Operand::DC, true, Operand::A, trans_a)
    } else {
        (Operand::A, !trans_a, Operand::DC, false)
    };
    [da, db]
}

/// Stored shape `[rows, cols]` of an operand for a GEMM of shape `(m, n, k)`.
fn stored_dims(
    which: Operand,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
) -> (usize, usize) {
    match which {
        Operand::A if trans_a => (k, m),
        Operand::A => (m, k),
        Operand::B if trans_b => (n, k),
        Operand::B => (k, n),
        Operand::DC => (m, n),
    }
}

/// Gradients of `C = op(A)·op(B)` (dense operands, one batch) in the stored layouts of A and B.
#[allow(clippy::too_many_arguments)]
pub fn gemm_backward_cpu<T: Real>(
    (m, n, k): (usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
    a: &[T],
    b: &[T],
    dc: &[T],
    da: Option<&mut [T]>,
    db: Option<&mut [T]>,
) {
    let pick = |w: Operand| match w {
        Operand::A => a,
        Operand::B => b,
        Operand::DC => dc,
    };
    let plan = grad_plan(trans_a, trans_b);
    for (out, (lhs, tl, rhs, tr)) in [da, db].into_iter().zip(plan) {
        let Some(out) = out else { continue };
        let (lr, lc) = stored_dims(lhs, m, n, k, trans_a, trans_b);
        let (rr, rc) = stored_dims(rhs, m, n, k, trans_a, trans_b);
        let (pm, pk) = if tl { (lc, lr) } else { (lr, lc) };
        let pn = if tr { rr } else { rc };
        let p = GemmParams::dense(pm, pn, pk, tl, tr).expect("reference sizes fit i32");
        gemm_cpu(&p, 1, pick(lhs), pick(rhs), out);
    }
}

/// `y[N, out] = x[N, in]·w[out, in]ᵀ (+ b[out])`.
pub fn linear_forward_cpu<T: Real>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    y: &mut [T],
    rows: usize,
    in_f: usize,
    out_f: usize,
) {
    let mut p = GemmParams::dense(rows, out_f, in_f, false, true).expect("reference sizes fit i32");
    if let Some(b) = b {
        for row in y.chunks_exact_mut(out_f) {
            row.copy_from_slice(b);
        }
        p.beta = 1.0;
    }
    gemm_cpu(&p, 1, x, w, y);
}

/// `dx = dy·w`, `dw = dyᵀ·x`, `db = column sums of dy`; each computed only when asked for.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_cpu<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: Option<&mut [T]>,
    db: Option<&mut [T]>,
    rows: usize,
    in_f: usize,
    out_f: usize,
) {
    if let Some(dx) = dx {
        let p =
            GemmParams::dense(rows, in_f, out_f, false, false).expect("reference sizes fit i32");
        gemm_cpu(&p, 1, dy, w, dx);
    }
    if let Some(dw) = dw {
        let p = GemmParams::dense(out_f, in_f, rows, true, false).expect("reference sizes fit i32");
        gemm_cpu(&p, 1, dy, x, dw);
    }
    if let Some(db) = db {
        crate::ops::reduce::channel_sum_cpu(dy, db, rows, out_f, 1);
    }
}

// ---------- device dispatch ----------

/// Launch `gemm_f32` on raw device addresses (for ops that lay out their own panels, e.g. conv).
/// The caller guarantees the buffers behind the addresses cover `p` for `batch` elements.
pub fn gemm_launch(g: &Gpu, a: u64, b: u64, c: u64, p: &GemmParams, batch: usize) -> Result<()> {
    if p.m == 0 || p.n == 0 || batch == 0 {
        return Ok(());
    }
    let tiles = |v: i32| (v as usize).div_ceil(GEMM_TILE) as u32;
    let (gx, gy) = (tiles(p.n), tiles(p.m));
    if gy > 65_535 || batch > 65_535 {
        return Err(Error::Shape(format!(
            "gemm: m = {} and batch = {batch} must stay below {} and 65536",
            p.m,
            65_535 * GEMM_TILE
        )));
    }
    let mut args = KernelArgs::new();
    args.ptr(a).ptr(b).ptr(c).value(p);
    g.launch(
        "gemm_f32",
        LaunchCfg::new((gx, gy, batch as u32), (GEMM_THREADS, 1, 1)),
        &mut args,
    )
}

/// Split `[batch?, rows, cols]` into `(batch, rows, cols)`.
fn matrix_dims(op: &str, what: &str, t: &Tensor) -> Result<(Option<usize>, usize, usize)> {
    match *t.shape() {
        [r, c] => Ok((None, r, c)),
        [z, r, c] => Ok((Some(z), r, c)),
        _ => Err(Error::Shape(format!(
            "{op}: {what} must be a 2-D or 3-D (batched) tensor, got shape {:?}",
            t.shape()
        ))),
    }
}

/// `c = alpha·op(a)·op(b) + beta·c` on tensors: `a` is `[m,k]` (`[k,m]` with `trans_a`), `b` is
/// `[k,n]` (`[n,k]` with `trans_b`), `c` is `[m,n]`; all three may carry a leading batch dimension.
#[allow(clippy::too_many_arguments)]
pub fn gemm_into(
    c: &mut Tensor,
    a: &Tensor,
    trans_a: bool,
    b: &Tensor,
    trans_b: bool,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    let op = "gemm";
    same_device(op, a, b)?;
    same_device(op, a, c)?;
    let (za, ar, ac) = matrix_dims(op, "a", a)?;
    let (zb, br, bc) = matrix_dims(op, "b", b)?;
    let (zc, cr, cc) = matrix_dims(op, "c", c)?;
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != k2 || za != zb || za != zc || (cr, cc) != (m, n) {
        return Err(Error::Shape(format!(
            "{op}: a {:?}{} and b {:?}{} do not give c {:?} (op(a) is m x k, op(b) k x n, c m x n)",
            a.shape(),
            if trans_a { "ᵀ" } else { "" },
            b.shape(),
            if trans_b { "ᵀ" } else { "" },
            c.shape()
        )));
    }
    let batch = za.unwrap_or(1);
    let p = GemmParams::dense(m, n, k, trans_a, trans_b)?.with_scale(alpha, beta);
    let dev = c.device().clone();
    match &dev {
        Device::Cpu => {
            let (a, b) = (a.host_data()?, b.host_data()?);
            let c = c.host_data_mut()?;
            gemm_cpu(&p, batch, a, b, c);
            Ok(())
        }
        Device::Gpu(g) => {
            let (pa, pb) = (g.addr(a.buffer()), g.addr(b.buffer()));
            let pc = g.addr_mut(c.try_buffer_mut()?);
            gemm_launch(g, pa, pb, pc, &p, batch)
        }
    }
}

/// `op(a)·op(b)` as a new tensor (see [`gemm_into`] for the shapes).
pub fn gemm(a: &Tensor, trans_a: bool, b: &Tensor, trans_b: bool) -> Result<Tensor> {
    gemm_with(a, trans_a, b, trans_b, None)
}

/// [`gemm_into`], or with the tensor-core kernels of `tc` when given (`ops::tensor_core::gemm`).
#[allow(clippy::too_many_arguments)]
fn gemm_into_with(
    c: &mut Tensor,
    (a, trans_a): (&Tensor, bool),
    (b, trans_b): (&Tensor, bool),
    alpha: f32,
    beta: f32,
    tc: Option<Precision>,
) -> Result<()> {
    match tc {
        Some(p) => tensor_core::gemm(c, a, trans_a, b, trans_b, alpha, beta, p),
        None => gemm_into(c, a, trans_a, b, trans_b, alpha, beta),
    }
}

/// [`gemm`], or with the tensor-core kernels of `tc` when given.
fn gemm_with(
    a: &Tensor,
    trans_a: bool,
    b: &Tensor,
    trans_b: bool,
    tc: Option<Precision>,
) -> Result<Tensor> {
    let (za, ar, ac) = matrix_dims("gemm", "a", a)?;
    let (_, br, bc) = matrix_dims("gemm", "b", b)?;
    let m = if trans_a { ac } else { ar };
    let n = if trans_b { br } else { bc };
    let shape: Vec<usize> = za.into_iter().chain([m, n]).collect();
    let mut c = Tensor::zeros(&shape, a.device())?;
    gemm_into_with(&mut c, (a, trans_a), (b, trans_b), 1.0, 0.0, tc)?;
    Ok(c)
}

/// Gradients of `c = op(a)·op(b)` in the stored layouts of `a` and `b`, each only when asked for.
pub fn gemm_backward(
    a: &Tensor,
    trans_a: bool,
    b: &Tensor,
    trans_b: bool,
    dc: &Tensor,
    need: (bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    gemm_backward_with(a, trans_a, b, trans_b, dc, need, None)
}

/// [`gemm_backward`], or with the tensor-core kernels of `tc` when given.
fn gemm_backward_with(
    a: &Tensor,
    trans_a: bool,
    b: &Tensor,
    trans_b: bool,
    dc: &Tensor,
    need: (bool, bool),
    tc: Option<Precision>,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let pick = |w: Operand| match w {
        Operand::A => a,
        Operand::B => b,
        Operand::DC => dc,
    };
    let [(l1, t1, r1, u1), (l2, t2, r2, u2)] = grad_plan(trans_a, trans_b);
    let da = if need.0 {
        Some(gemm_with(pick(l1), t1, pick(r1), u1, tc)?)
    } else {
        None
    };
    let db = if need.1 {
        Some(gemm_with(pick(l2), t2, pick(r2), u2, tc)?)
    } else {
        None
    };
    Ok((da, db))
}

fn check_matmul_shapes(a: &[usize], b: &[usize]) -> Result<()> {
    match (a, b) {
        ([_, k], [k2, _]) if k == k2 => Ok(()),
        _ => Err(Error::Shape(format!(
            "matmul: a {a:?} and b {b:?} do not fit (expected 2-D [m, k] and [k, n])"
        ))),
    }
}

/// `a·b` for 2-D tensors `[m,k]·[k,n]`.
pub fn matmul_forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_matmul_shapes(a.shape(), b.shape())?;
    gemm(a, false, b, false)
}

fn linear_dims(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    let (rows, in_f, out_f) = match (x.shape(), w.shape()) {
        (&[rows, in_f], &[out_f, w_in]) if in_f == w_in => (rows, in_f, out_f),
        _ => {
            return Err(Error::Shape(format!(
            "linear: x {:?} and weight {:?} do not fit (expected x [N, in] and weight [out, in])",
            x.shape(),
            w.shape()
        )))
        }
    };
    if let Some(b) = b {
        if b.shape() != [out_f] {
            return Err(Error::Shape(format!(
                "linear: bias {:?} does not fit weight {:?} (expected [{out_f}])",
                b.shape(),
                w.shape()
            )));
        }
    }
    Ok((rows, in_f, out_f))
}

/// `y = x·wᵀ + b` with `x [N, in]`, `w [out, in]`, `b [out]`.
pub fn linear_forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_forward_with(x, w, b, None)
}

/// [`linear_forward`], or with the tensor-core kernels of `tc` when given (the bias added in
/// fp32 by `beta = 1`, as here).
pub fn linear_forward_with(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    tc: Option<Precision>,
) -> Result<Tensor> {
    let (rows, _, out_f) = linear_dims(x, w, b)?;
    let mut y = match b {
        Some(b) => broadcast_rows(b, rows)?,
        None => Tensor::zeros(&[rows, out_f], x.device())?,
    };
    let beta = if b.is_some() { 1.0 } else { 0.0 };
    gemm_into_with(&mut y, (x, false), (w, true), 1.0, beta, tc)?;
    Ok(y)
}

/// Gradients of [`linear_forward`]: `(dx, dw, db)` = `(dy·w, dyᵀ·x, column sums of dy)`, each
/// computed only when its flag in `need` is set.
pub fn linear_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    need: (bool, bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    linear_backward_with(x, w, dy, need, None)
}

/// [`linear_backward`], or with the tensor-core kernels of `tc` when given (the GEMMs; the bias
/// gradient stays the fp32 column sum of `dy`).
pub fn linear_backward_with(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    need: (bool, bool, bool),
    tc: Option<Precision>,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (rows, _, out_f) = linear_dims(x, w, None)?;
    dy.expect_shape("linear backward: dy", &[rows, out_f])?;
    let dx = if need.0 {
        Some(gemm_with(dy, false, w, false, tc)?)
    } else {
        None
    };
    let dw = if need.1 {
        Some(gemm_with(dy, true, x, false, tc)?)
    } else {
        None
    };
    let db = if need.2 {
        Some(sum_rows_forward(dy)?)
    } else {
        None
    };
    Ok((dx, dw, db))
}

// ---------- autograd ----------

/// `op(a)·op(b)` for 2-D (or batched 3-D) tensors, with gradients for whichever inputs need them.
/// Under the graph's precision other than fp32 both GEMMs of the backward, like the forward, read
/// rounded operands: the tensor-core kernels' on kernel devices, rounded copies on cpu
/// (`ops::autocast`).
pub fn gemm_op(g: &mut Graph, a: Var, trans_a: bool, b: Var, trans_b: bool) -> Result<Var> {
    let precision = g.precision();
    let tc = tensor_core::wired(g.value(a).device(), precision);
    let av = operand(g.value(a), precision, tc)?;
    let bv = operand(g.value(b), precision, tc)?;
    let y = gemm_with(&av, trans_a, &bv, trans_b, tc)?;
    let a_shape = av.shape();
    let depth = a_shape[a_shape.len() - if trans_a { 2 } else { 1 }];
    super::flops::add_dot_products(y.numel(), depth);
    let need = (g.requires_grad(a), g.requires_grad(b));
    Ok(g.op(y, &[a, b], move |dy| {
        let dy = operand(dy, precision, tc)?;
        let (da, db) = gemm_backward_with(&av, trans_a, &bv, trans_b, &dy, need, tc)?;
        Ok(vec![da, db])
    }))
}

/// `a·b` for `a [m, k]`, `b [k, n]`.
pub fn matmul(g: &mut Graph, a: Var, b: Var) -> Result<Var> {
    check_matmul_shapes(g.value(a).shape(), g.value(b).shape())?;
    gemm_op(g, a, false, b, false)
}

/// `y = x·weightᵀ + bias` (PyTorch `nn.Linear`): `x [N, in]`, `weight [out, in]`, `bias [out]`.
/// Under the graph's precision other than fp32, `x` and `weight` are rounded for the forward and
/// kept rounded for the backward, whose two GEMMs also read a rounded `dy` (on kernel devices the
/// tensor-core kernels round them as they stage them); the bias and its gradient stay fp32.
pub fn linear(g: &mut Graph, x: Var, weight: Var, bias: Option<Var>) -> Result<Var> {
    let precision = g.precision();
    let tc = tensor_core::wired(g.value(x).device(), precision);
    let xv = operand(g.value(x), precision, tc)?;
    let wv = operand(g.value(weight), precision, tc)?;
    let y = linear_forward_with(&xv, &wv, bias.map(|b| g.value(b)), tc)?;
    super::flops::add_dot_products(y.numel(), wv.shape()[1]);
    let need_dx = g.requires_grad(x);
    let need_dw = g.requires_grad(weight);
    let need_db = bias.is_some_and(|b| g.requires_grad(b));
    let inputs: Vec<Var> = [x, weight].into_iter().chain(bias).collect();
    let has_bias = bias.is_some();
    Ok(g.op(y, &inputs, move |dy| {
        let (dx, dw, db) = if tc.is_some() {
            // The kernels round dy while staging it; the bias gradient sums it in fp32.
            linear_backward_with(&xv, &wv, dy, (need_dx, need_dw, need_db), tc)?
        } else if precision.rounds_operands() {
            let dy_rounded = autocast(dy, precision)?;
            let (dx, dw, _) = linear_backward(&xv, &wv, &dy_rounded, (need_dx, need_dw, false))?;
            let (_, _, db) = linear_backward(&xv, &wv, dy, (false, false, need_db))?;
            (dx, dw, db)
        } else {
            linear_backward(&xv, &wv, dy, (need_dx, need_dw, need_db))?
        };
        let mut grads = vec![dx, dw];
        if has_bias {
            grads.push(db);
        }
        Ok(grads)
    }))
}
