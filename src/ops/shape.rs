//! Shape ops: `reshape` / `flatten` (free: the output shares the input's buffer), `permute3` and
//! `transpose_last2` (VDCNN: embedding `[N, L, D]` → `[N, D, L]`), and the ResNet option-A shortcut
//! (`x[:, :, ::2, ::2]` with `pad` zero channels before and after). Kernels: `kernels/shape.cu`.

use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::ops::Real;
use crate::tensor::Tensor;

/// Mirrors `PermuteParams` in `kernels/shape.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PermuteParams {
    /// First output dimension.
    pub d0: i32,
    /// Second output dimension.
    pub d1: i32,
    /// Third output dimension.
    pub d2: i32,
    /// Input stride of the first output index.
    pub s0: i32,
    /// Input stride of the second output index.
    pub s1: i32,
    /// Input stride of the third output index.
    pub s2: i32,
}

/// Mirrors `ShortcutParams` in `kernels/shape.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ShortcutParams {
    /// Batch.
    pub n: i32,
    /// Input channels.
    pub c: i32,
    /// Input height.
    pub h: i32,
    /// Input width.
    pub w: i32,
    /// Zero channels added on each side.
    pub pad: i32,
    /// Output height (input subsampled by 2).
    pub out_h: i32,
    /// Output width.
    pub out_w: i32,
}

fn i32_of(op: &str, shape: &[usize], v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Shape(format!(
            "{op}: tensor of shape {shape:?} is beyond the kernels' 32-bit index range"
        ))
    })
}

// ---------- CPU reference ----------

/// `y[i0, i1, i2] = x[i0*s0 + i1*s1 + i2*s2]` for output dims `(d0, d1, d2)`.
pub fn permute3_cpu<T: Real>(x: &[T], y: &mut [T], p: &PermuteParams) {
    let (d1, d2) = (p.d1 as usize, p.d2 as usize);
    let (s0, s1, s2) = (p.s0 as usize, p.s1 as usize, p.s2 as usize);
    for (k, y) in y.iter_mut().enumerate() {
        let (i0, i1, i2) = (k / (d1 * d2), (k / d2) % d1, k % d2);
        *y = x[i0 * s0 + i1 * s1 + i2 * s2];
    }
}

/// LIT's option-A shortcut: subsample by 2 in space, pad `pad` zero channels on each side.
pub fn option_a_shortcut_forward_cpu<T: Real>(x: &[T], y: &mut [T], p: &ShortcutParams) {
    let (n, c, h, w) = (p.n as usize, p.c as usize, p.h as usize, p.w as usize);
    let (pad, oh_n, ow_n) = (p.pad as usize, p.out_h as usize, p.out_w as usize);
    let oc = c + 2 * pad;
    y.fill(T::ZERO);
    for b in 0..n {
        for ch in 0..c {
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    y[((b * oc + ch + pad) * oh_n + oh) * ow_n + ow] =
                        x[((b * c + ch) * h + 2 * oh) * w + 2 * ow];
                }
            }
        }
    }
}

/// Gradient of the option-A shortcut: the subsampled positions of the unpadded channels.
pub fn option_a_shortcut_backward_cpu<T: Real>(dy: &[T], dx: &mut [T], p: &ShortcutParams) {
    let (n, c, h, w) = (p.n as usize, p.c as usize, p.h as usize, p.w as usize);
    let (pad, oh_n, ow_n) = (p.pad as usize, p.out_h as usize, p.out_w as usize);
    let oc = c + 2 * pad;
    dx.fill(T::ZERO);
    for b in 0..n {
        for ch in 0..c {
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    dx[((b * c + ch) * h + 2 * oh) * w + 2 * ow] =
                        dy[((b * oc + ch + pad) * oh_n + oh) * ow_n + ow];
                }
            }
        }
    }
}

// ---------- device dispatch ----------

/// Parameters that permute `[a0, a1, a2]` by `perm` (output axis j is input axis `perm[j]`).
pub fn permute3_params(shape: &[usize], perm: [usize; 3]) -> Result<PermuteParams> {
    let mut sorted = perm;
    sorted.sort_unstable();
    if shape.len() != 3 || sorted != [0, 1, 2] {
        return Err(Error::Shape(format!(
            "permute3: expected a 3-D tensor and a permutation of [0, 1, 2], got {shape:?} and {perm:?}"
        )));
    }
    let n: usize = shape.iter().product();
    i32_of("permute3", shape, n)?;
    let strides = [shape[1] * shape[2], shape[2], 1];
    Ok(PermuteParams {
        d0: shape[perm[0]] as i32,
        d1: shape[perm[1]] as i32,
        d2: shape[perm[2]] as i32,
        s0: strides[perm[0]] as i32,
        s1: strides[perm[1]] as i32,
        s2: strides[perm[2]] as i32,
    })
}

/// `x.permute(perm)` of a 3-D tensor, materialised.
pub fn permute3_forward(x: &Tensor, perm: [usize; 3]) -> Result<Tensor> {
    let p = permute3_params(x.shape(), perm)?;
    let out_shape = [p.d0 as usize, p.d1 as usize, p.d2 as usize];
    crate::ops::map_with_params(x, &out_shape, "permute3_f32", &p, |xs, ys| {
        permute3_cpu(xs, ys, &p)
    })
}

/// The inverse permutation.
fn inverse(perm: [usize; 3]) -> [usize; 3] {
    let mut inv = [0; 3];
    for (j, &p) in perm.iter().enumerate() {
        inv[p] = j;
    }
    inv
}

fn shortcut_params(shape: &[usize], pad: usize) -> Result<ShortcutParams> {
    let op = "option_a_shortcut";
    if shape.len() != 4 {
        return Err(Error::Shape(format!(
            "{op}: expected x [N, C, H, W], got {shape:?}"
        )));
    }
    let (out_h, out_w) = (shape[2].div_ceil(2), shape[3].div_ceil(2));
    let out_n = shape[0] * (shape[1] + 2 * pad) * out_h * out_w;
    i32_of(op, shape, out_n.max(shape.iter().product()))?;
    Ok(ShortcutParams {
        n: shape[0] as i32,
        c: shape[1] as i32,
        h: shape[2] as i32,
        w: shape[3] as i32,
        pad: pad as i32,
        out_h: out_h as i32,
        out_w: out_w as i32,
    })
}

impl ShortcutParams {
    fn out_shape(&self) -> [usize; 4] {
        [
            self.n as usize,
            (self.c + 2 * self.pad) as usize,
            self.out_h as usize,
            self.out_w as usize,
        ]
    }
    fn in_shape(&self) -> [usize; 4] {
        [
            self.n as usize,
            self.c as usize,
            self.h as usize,
            self.w as usize,
        ]
    }
}

/// `x[:, :, ::2, ::2]` padded with `pad` zero channels on each side.
pub fn option_a_shortcut_forward(x: &Tensor, pad: usize) -> Result<Tensor> {
    let p = shortcut_params(x.shape(), pad)?;
    let out_shape = p.out_shape();
    crate::ops::map_with_params(
        x,
        &out_shape,
        "option_a_shortcut_forward_f32",
        &p,
        |xs, ys| option_a_shortcut_forward_cpu(xs, ys, &p),
    )
}

/// Gradient of the option-A shortcut for an input of `in_shape`.
pub fn option_a_shortcut_backward(dy: &Tensor, in_shape: &[usize], pad: usize) -> Result<Tensor> {
    let p = shortcut_params(in_shape, pad)?;
    dy.expect_shape("option_a_shortcut backward: dy", &p.out_shape())?;
    crate::ops::map_with_params(
        dy,
        &p.in_shape(),
        "option_a_shortcut_backward_f32",
        &p,
        |xs, ys| option_a_shortcut_backward_cpu(xs, ys, &p),
    )
}

// ---------- autograd ----------

/// Same data, another shape (no copy); the gradient is reshaped back.
pub fn reshape(g: &mut Graph, x: Var, shape: &[usize]) -> Result<Var> {
    let in_shape = g.value(x).shape().to_vec();
    let y = g.value(x).reshape(shape)?;
    Ok(g.op(y, &[x], move |dy| Ok(vec![Some(dy.reshape(&in_shape)?)])))
}

/// `[N, *rest]` → `[N, prod(rest)]` (row-major, like `x.view(N, -1)`).
pub fn flatten(g: &mut Graph, x: Var) -> Result<Var> {
    let shape = g.value(x).shape().to_vec();
    if shape.is_empty() {
        return Err(Error::Shape(
            "flatten: expected at least a 1-D tensor, got a scalar".into(),
        ));
    }
    let rest: usize = shape[1..].iter().product();
    reshape(g, x, &[shape[0], rest])
}

/// `x.permute(perm)` of a 3-D tensor (materialised); the gradient is permuted back.
pub fn permute3(g: &mut Graph, x: Var, perm: [usize; 3]) -> Result<Var> {
    let y = permute3_forward(g.value(x), perm)?;
    Ok(g.op(y, &[x], move |dy| {
        Ok(vec![Some(permute3_forward(dy, inverse(perm))?)])
    }))
}

/// Swap the last two axes of a tensor of rank >= 2 (leading axes are kept).
pub fn transpose_last2(g: &mut Graph, x: Var) -> Result<Var> {
    let shape = g.value(x).shape().to_vec();
    if shape.len() < 2 {
        return Err(Error::Shape(format!(
            "transpose_last2: expected at least a 2-D tensor, got {shape:?}"
        )));
    }
    let r = shape.len();
    let lead: usize = shape[..r - 2].iter().product();
    let x3 = reshape(g, x, &[lead, shape[r - 2], shape[r - 1]])?;
    let y3 = permute3(g, x3, [0, 2, 1])?;
    let mut out_shape = shape.clone();
    out_shape.swap(r - 2, r - 1);
    reshape(g, y3, &out_shape)
}

/// ResNet option-A shortcut: `x[:, :, ::2, ::2]` with `pad` zero channels before and after.
pub fn option_a_shortcut(g: &mut Graph, x: Var, pad: usize) -> Result<Var> {
    let in_shape = g.value(x).shape().to_vec();
    let y = option_a_shortcut_forward(g.value(x), pad)?;
    Ok(g.op(y, &[x], move |dy| {
        Ok(vec![Some(option_a_shortcut_backward(dy, &in_shape, pad)?)])
    }))
}
