//! Embedding: `y[..., :] = weight[ids[...], :]` (id 0 is ordinary; [`embedding_padded`] adds
//! PyTorch's `padding_idx`); the weight gradient sums the rows of `dy` per id (repeated ids
//! accumulate). Kernels: `kernels/embedding.cu`.

use crate::autograd::{Graph, Var};
use crate::device::{Device, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::Real;
use crate::tensor::{same_device, IndexTensor, Tensor};

/// Mirrors `EmbeddingParams` in `kernels/embedding.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EmbeddingParams {
    /// Number of ids.
    pub n: i32,
    /// Rows of the weight (valid ids are `0..num`).
    pub num: i32,
    /// Embedding width.
    pub dim: i32,
}

// ---------- CPU reference ----------

/// Copy rows; `Err(position)` for the first id outside `[0, num)`.
pub fn embedding_forward_cpu<T: Real>(
    ids: &[i32],
    weight: &[T],
    y: &mut [T],
    num: usize,
    dim: usize,
) -> std::result::Result<(), usize> {
    for (i, &id) in ids.iter().enumerate() {
        if id < 0 || id as usize >= num {
            return Err(i);
        }
        let row = id as usize * dim;
        y[i * dim..(i + 1) * dim].copy_from_slice(&weight[row..row + dim]);
    }
    Ok(())
}

/// `dweight[v] = sum of dy[i] over ids[i] == v`, accumulated in f64 in position order (ids are
/// assumed valid: the forward checked them).
pub fn embedding_backward_cpu<T: Real>(ids: &[i32], dy: &[T], dweight: &mut [T], dim: usize) {
    let mut acc = vec![0.0f64; dweight.len()];
    for (i, &id) in ids.iter().enumerate() {
        let row = id as usize * dim;
        for (a, g) in acc[row..row + dim]
            .iter_mut()
            .zip(&dy[i * dim..(i + 1) * dim])
        {
            *a += g.to_f64();
        }
    }
    for (w, a) in dweight.iter_mut().zip(acc) {
        *w = T::from_f64(a);
    }
}

// ---------- device dispatch ----------

fn params(weight: &Tensor, ids: &IndexTensor) -> Result<EmbeddingParams> {
    if weight.dims() != 2 {
        return Err(Error::Shape(format!(
            "embedding: expected weight [num_embeddings, dim], got {:?}",
            weight.shape()
        )));
    }
    let (num, dim, n) = (weight.shape()[0], weight.shape()[1], ids.numel());
    let fits = |v: usize| i32::try_from(v).is_ok();
    if !fits(n.max(num).saturating_mul(dim.max(1))) {
        return Err(Error::Shape(format!(
            "embedding: {n} ids into a table {:?} is beyond the kernels' 32-bit index range",
            weight.shape()
        )));
    }
    Ok(EmbeddingParams {
        n: n as i32,
        num: num as i32,
        dim: dim as i32,
    })
}

fn out_of_range(ids: &IndexTensor, pos: usize, num: usize) -> Result<Error> {
    let id = ids.to_vec()?[pos];
    Ok(Error::Shape(format!(
        "embedding: id {id} at position {pos} of the ids {:?} is outside the table of {num} rows (valid ids: 0..{})",
        ids.shape(),
        num.saturating_sub(1)
    )))
}

/// `weight [num, dim]`, `ids [*]` → `[*, dim]`. An id outside `[0, num)` is an error naming it.
pub fn embedding_forward(weight: &Tensor, ids: &IndexTensor) -> Result<Tensor> {
    same_device("embedding", weight, ids)?;
    let p = params(weight, ids)?;
    let (num, dim) = (p.num as usize, p.dim as usize);
    let mut out_shape = ids.shape().to_vec();
    out_shape.push(dim);
    let n_out = ids.numel() * dim;
    let dev = weight.device();
    match dev {
        Device::Cpu => {
            let mut y = vec![0.0f32; n_out];
            let ids_h = ids.host_data()?;
            let w = weight.host_data()?;
            if let Err(pos) = embedding_forward_cpu(ids_h, w, &mut y, num, dim) {
                return Err(out_of_range(ids, pos, num)?);
            }
            Tensor::from_vec(&out_shape, y, dev)
        }
        Device::Gpu(g) => {
            let mut y = g.zeros::<f32>(n_out)?;
            let mut bad = g.upload(&[p.n])?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(ids.buffer()))
                .ptr(g.addr(weight.buffer()))
                .ptr(g.addr_mut(&mut y))
                .ptr(g.addr_mut(&mut bad))
                .value(&p);
            if n_out > 0 {
                g.launch(
                    "embedding_forward_f32",
                    LaunchCfg::for_elements(n_out),
                    &mut args,
                )?;
            }
            // One integer comes back (a sync on cuda): the price of naming a bad id.
            let first_bad = g.download(&bad)?[0];
            if first_bad < p.n {
                return Err(out_of_range(ids, first_bad as usize, num)?);
            }
            Tensor::from_buffer(&out_shape, y, dev)
        }
    }
}

/// Weight gradient `[num, dim]` of an embedding lookup with `ids`.
pub fn embedding_backward(dy: &Tensor, ids: &IndexTensor, num: usize) -> Result<Tensor> {
    same_device("embedding backward", dy, ids)?;
    let dim = dy.shape().last().copied().unwrap_or(0);
    let mut want = ids.shape().to_vec();
    want.push(dim);
    dy.expect_shape("embedding backward: dy", &want)?;
    let shape = [num, dim];
    let p = EmbeddingParams {
        n: ids.numel() as i32,
        num: num as i32,
        dim: dim as i32,
    };
    let dev = dy.device();
    match dev {
        Device::Cpu => {
            let mut dw = vec![0.0f32; num * dim];
            embedding_backward_cpu(ids.host_data()?, dy.host_data()?, &mut dw, dim);
            Tensor::from_vec(&shape, dw, dev)
        }
        Device::Gpu(g) => {
            let mut dw = g.zeros::<f32>(num * dim)?;
            let mut args = KernelArgs::new();
            args.ptr(g.addr(ids.buffer()))
                .ptr(g.addr(dy.buffer()))
                .ptr(g.addr_mut(&mut dw))
                .value(&p);
            if num > 0 && dim > 0 {
                let cfg = LaunchCfg::new((num as u32, dim.div_ceil(32) as u32, 1), (32, 8, 1));
                g.launch("embedding_backward_f32", cfg, &mut args)?;
            }
            Tensor::from_buffer(&shape, dw, dev)
        }
    }
}

// ---------- autograd ----------

/// `weight[ids]` on the tape; the gradient goes to `weight`.
pub fn embedding(g: &mut Graph, weight: Var, ids: &IndexTensor) -> Result<Var> {
    let y = embedding_forward(g.value(weight), ids)?;
    let num = g.value(weight).shape()[0];
    let ids = ids.clone();
    Ok(g.op(y, &[weight], move |dy| {
        Ok(vec![Some(embedding_backward(dy, &ids, num)?)])
    }))
}

/// `weight[ids]` like [`embedding`], with PyTorch's `padding_idx`: positions holding
/// `padding_idx` contribute no gradient, so that row of `weight` gets exactly 0 (SPEC-TRANSLATION
/// §5.8: the `<blank>` rows stay 0). The row mask is built once from the ids (read to the host)
/// and applied to `dy` before the usual weight-gradient sum.
pub fn embedding_padded(
    g: &mut Graph,
    weight: Var,
    ids: &IndexTensor,
    padding_idx: usize,
) -> Result<Var> {
    let (num, dim) = match g.value(weight).shape() {
        &[num, dim] => (num, dim),
        other => {
            return Err(Error::Shape(format!(
                "embedding: weight must be [num, dim], got {other:?}"
            )))
        }
    };
    if padding_idx >= num {
        return Err(Error::op_arg(
            "embedding",
            format!("padding_idx {padding_idx} is not a row of a {num}-row table"),
        ));
    }
    let y = embedding_forward(g.value(weight), ids)?;
    let keep: Vec<f32> = ids
        .to_vec()?
        .into_iter()
        .map(|id| if id as usize == padding_idx { 0.0 } else { 1.0 })
        .collect();
    let keep = Tensor::from_vec(&[keep.len()], keep, g.device())?;
    let ids = ids.clone();
    Ok(g.op(y, &[weight], move |dy| {
        if dim == 0 {
            return Ok(vec![Some(embedding_backward(dy, &ids, num)?)]);
        }
        let dy = crate::ops::dropout::dropout_apply(dy, &keep, dim)?;
        Ok(vec![Some(embedding_backward(&dy, &ids, num)?)])
    }))
}
