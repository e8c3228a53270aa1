//! Concatenation and slicing along the last dimension, and their dim-0 forms (stack, select):
//! every one is a copy of a column block of a row-major `[rows, cols]` view, `place` into a
//! wider matrix or `take` out of it (kernels `column_block_place_f32` / `column_block_take_f32`
//! in `kernels/concat.cu`). Each op's backward is the other copy.

use crate::autograd::{Graph, Var};
use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::partials::check_i32;
use crate::ops::shape::reshape;
use crate::ops::Real;
use crate::tensor::{same_device, Tensor};

/// Mirrors `ColumnBlockParams` in `kernels/concat.cu`: the block is `[rows, cols]`, it sits at
/// column `offset` of a `[rows, wide_cols]` matrix.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ColumnBlockParams {
    /// Rows of both matrices.
    pub rows: i32,
    /// Columns of the block.
    pub cols: i32,
    /// Columns of the wide matrix.
    pub wide_cols: i32,
    /// First column of the block in the wide matrix.
    pub offset: i32,
}

impl ColumnBlockParams {
    fn new(op: &str, rows: usize, cols: usize, wide_cols: usize, offset: usize) -> Result<Self> {
        if offset + cols > wide_cols {
            return Err(Error::Shape(format!(
                "{op}: columns {offset}..{} outside a matrix of {wide_cols} columns",
                offset + cols
            )));
        }
        check_i32(op, &[rows, wide_cols])?;
        Ok(ColumnBlockParams {
            rows: rows as i32,
            cols: cols as i32,
            wide_cols: wide_cols as i32,
            offset: offset as i32,
        })
    }
}

// ---------- CPU reference ----------

/// `wide[r, offset + c] = block[r, c]`.
pub fn column_block_place_cpu<T: Real>(block: &[T], wide: &mut [T], p: &ColumnBlockParams) {
    let (cols, wide_cols, off) = (p.cols as usize, p.wide_cols as usize, p.offset as usize);
    for r in 0..p.rows as usize {
        wide[r * wide_cols + off..r * wide_cols + off + cols]
            .copy_from_slice(&block[r * cols..(r + 1) * cols]);
    }
}

/// `block[r, c] = wide[r, offset + c]`.
pub fn column_block_take_cpu<T: Real>(wide: &[T], block: &mut [T], p: &ColumnBlockParams) {
    let (cols, wide_cols, off) = (p.cols as usize, p.wide_cols as usize, p.offset as usize);
    for r in 0..p.rows as usize {
        block[r * cols..(r + 1) * cols]
            .copy_from_slice(&wide[r * wide_cols + off..r * wide_cols + off + cols]);
    }
}

// ---------- device dispatch ----------

fn launch(kernel: &str, src: &Tensor, dst: &mut Tensor, p: &ColumnBlockParams) -> Result<()> {
    let n = p.rows as usize * p.cols as usize;
    let Device::Gpu(g) = src.device().clone() else {
        return Err(Error::Device(format!("{kernel}: not a kernel device")));
    };
    if n == 0 {
        return Ok(());
    }
    let mut args = KernelArgs::new();
    args.ptr(g.addr(src.buffer()))
        .ptr(g.addr_mut(dst.try_buffer_mut()?))
        .value(p);
    g.launch(kernel, LaunchCfg::for_elements(n), &mut args)
}

/// Copy `block [rows, cols]` into columns `offset..offset + cols` of `wide [rows, wide_cols]`
/// (both viewed as 2-D by their last dimension).
pub fn place_columns(wide: &mut Tensor, block: &Tensor, offset: usize) -> Result<()> {
    let op = "place_columns";
    same_device(op, wide, block)?;
    let (rows, cols) = rows_cols(op, block)?;
    let (wide_rows, wide_cols) = rows_cols(op, wide)?;
    if rows != wide_rows {
        return Err(Error::Shape(format!(
            "{op}: block {:?} and matrix {:?} differ in rows",
            block.shape(),
            wide.shape()
        )));
    }
    let p = ColumnBlockParams::new(op, rows, cols, wide_cols, offset)?;
    match block.device() {
        Device::Cpu => {
            column_block_place_cpu(block.host_data()?, wide.host_data_mut()?, &p);
            Ok(())
        }
        Device::Gpu(_) => launch("column_block_place_f32", block, wide, &p),
    }
}

/// Columns `offset..offset + cols` of `wide` (viewed as `[rows, last dim]`) as a new tensor
/// `[..., cols]`.
pub fn take_columns(wide: &Tensor, offset: usize, cols: usize) -> Result<Tensor> {
    let op = "take_columns";
    let (rows, wide_cols) = rows_cols(op, wide)?;
    let p = ColumnBlockParams::new(op, rows, cols, wide_cols, offset)?;
    let mut shape = wide.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = cols;
    }
    let mut block = Tensor::zeros(&shape, wide.device())?;
    match wide.device() {
        Device::Cpu => column_block_take_cpu(wide.host_data()?, block.host_data_mut()?, &p),
        Device::Gpu(_) => launch("column_block_take_f32", wide, &mut block, &p)?,
    }
    Ok(block)
}

/// `(rows, cols)` of a tensor viewed as 2-D by its last dimension.
fn rows_cols(op: &str, t: &Tensor) -> Result<(usize, usize)> {
    let Some((&cols, lead)) = t.shape().split_last() else {
        return Err(Error::Shape(format!(
            "{op}: expected at least a 1-D tensor, got a scalar"
        )));
    };
    Ok((lead.iter().product(), cols))
}

// ---------- autograd ----------

/// `torch.cat(parts, dim=-1)`: every part has the same leading dimensions.
pub fn concat_last(g: &mut Graph, parts: &[Var]) -> Result<Var> {
    let op = "concat_last";
    let Some(&first) = parts.first() else {
        return Err(Error::op_arg(op, "no tensors to concatenate"));
    };
    let lead = g.value(first).shape().split_last().map(|(_, l)| l.to_vec());
    let lead = lead.ok_or_else(|| Error::Shape(format!("{op}: scalar part")))?;
    let mut widths = Vec::with_capacity(parts.len());
    for &p in parts {
        let v = g.value(p);
        same_device(op, g.value(first), v)?;
        match v.shape().split_last() {
            Some((&w, l)) if l == lead.as_slice() => widths.push(w),
            _ => {
                return Err(Error::Shape(format!(
                    "{op}: part {:?} does not share the leading dimensions {lead:?}",
                    v.shape()
                )))
            }
        }
    }
    let total: usize = widths.iter().sum();
    let shape: Vec<usize> = lead.iter().copied().chain([total]).collect();
    let mut y = Tensor::zeros(&shape, g.value(first).device())?;
    let mut offset = 0;
    for (&p, &w) in parts.iter().zip(&widths) {
        place_columns(&mut y, g.value(p), offset)?;
        offset += w;
    }
    let need: Vec<bool> = parts.iter().map(|&p| g.requires_grad(p)).collect();
    Ok(g.op(y, parts, move |dy| {
        let mut offset = 0;
        let mut grads = Vec::with_capacity(widths.len());
        for (&w, &need) in widths.iter().zip(&need) {
            grads.push(if need {
                Some(take_columns(dy, offset, w)?)
            } else {
                None
            });
            offset += w;
        }
        Ok(grads)
    }))
}

/// `x[..., start..start + len]` (a copy); the gradient is placed back into zeros.
pub fn narrow_last(g: &mut Graph, x: Var, start: usize, len: usize) -> Result<Var> {
    let y = take_columns(g.value(x), start, len)?;
    let in_shape = g.value(x).shape().to_vec();
    Ok(g.op(y, &[x], move |dy| {
        let mut dx = Tensor::zeros(&in_shape, dy.device())?;
        place_columns(&mut dx, dy, start)?;
        Ok(vec![Some(dx)])
    }))
}

/// `torch.stack(parts, dim=0)`: `k` tensors of one shape → `[k, *shape]`.
pub fn stack_first(g: &mut Graph, parts: &[Var]) -> Result<Var> {
    let Some(&first) = parts.first() else {
        return Err(Error::op_arg("stack_first", "no tensors to stack"));
    };
    let shape = g.value(first).shape().to_vec();
    let n: usize = shape.iter().product();
    let mut rows = Vec::with_capacity(parts.len());
    for &p in parts {
        if g.value(p).shape() != shape.as_slice() {
            return Err(Error::Shape(format!(
                "stack_first: part {:?} differs from the first part {shape:?}",
                g.value(p).shape()
            )));
        }
        rows.push(reshape(g, p, &[1, n])?);
    }
    let flat = concat_last(g, &rows)?;
    let out_shape: Vec<usize> = [parts.len()].into_iter().chain(shape).collect();
    reshape(g, flat, &out_shape)
}

/// `x[i]` of `x [S, *rest]` (a copy) → `[*rest]`.
pub fn select_first(g: &mut Graph, x: Var, i: usize) -> Result<Var> {
    let shape = g.value(x).shape().to_vec();
    let Some((&s, rest)) = shape.split_first() else {
        return Err(Error::Shape("select_first: scalar input".into()));
    };
    if i >= s {
        return Err(Error::Shape(format!(
            "select_first: index {i} out of range for shape {shape:?}"
        )));
    }
    let inner: usize = rest.iter().product();
    let rest = rest.to_vec();
    let flat = reshape(g, x, &[1, s * inner])?;
    let row = narrow_last(g, flat, i * inner, inner)?;
    reshape(g, row, &rest)
}
