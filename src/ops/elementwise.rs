//! Elementwise ops: add, sub, mul, scale, relu, tanh, and axpy (gradient accumulation).
//! Kernels: `kernels/elementwise.cu`.

use crate::autograd::{Graph, Var};
use crate::device::{host_vec_written, Device, KernelArgs, LaunchCfg};
use crate::error::Result;
use crate::ops::cpu::vectorized;
use crate::ops::Real;
use crate::tensor::{same_device, Tensor};
use rayon::prelude::*;

/// Mirrors `ElementwiseParams` in `kernels/common.cuh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ElementwiseParams {
    /// Number of elements.
    pub n: i32,
    /// The scalar of `scale` / `axpy`.
    pub alpha: f32,
}

// ---------- CPU reference ----------

/// `y = max(x, 0)`.
pub fn relu_forward_cpu<T: Real>(x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = if x > T::ZERO { x } else { T::ZERO };
    }
}

/// `dx = dy` where `x > 0`, else 0.
pub fn relu_backward_cpu<T: Real>(x: &[T], dy: &[T], dx: &mut [T]) {
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        *dx = if x > T::ZERO { dy } else { T::ZERO };
    }
}

/// `tanh(x)` through f64 (correctly rounded for f32; `Real` has no tanh of its own).
pub fn tanh_scalar<T: Real>(x: T) -> T {
    T::from_f64(x.to_f64().tanh())
}

/// `y = tanh(x)`.
pub fn tanh_forward_cpu<T: Real>(x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = tanh_scalar(x);
    }
}

/// `dx = dy·(1 − y²)` from the forward's output `y`.
pub fn tanh_backward_cpu<T: Real>(y: &[T], dy: &[T], dx: &mut [T]) {
    for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
        *dx = dy * (T::ONE - y * y);
    }
}

/// `y = a + b`.
pub fn add_cpu<T: Real>(a: &[T], b: &[T], y: &mut [T]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a + b;
    }
}

/// `y = a - b`.
pub fn sub_cpu<T: Real>(a: &[T], b: &[T], y: &mut [T]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a - b;
    }
}

/// `y = a · b`, element by element.
pub fn mul_cpu<T: Real>(a: &[T], b: &[T], y: &mut [T]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = a * b;
    }
}

/// `y = alpha · x`.
pub fn scale_cpu<T: Real>(alpha: T, x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = alpha * x;
    }
}

/// `y += alpha · x`.
pub fn axpy_cpu<T: Real>(alpha: T, x: &[T], y: &mut [T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

// ---------- device dispatch ----------

/// CPU elementwise work is split into chunks of this many elements for rayon (serial below two
/// chunks): activations of a CIFAR batch are megabytes, and one core cannot saturate memory.
const PAR_CHUNK: usize = 1 << 15;

/// `f(inputs, y)` over matching chunks of the inputs and `y`, in parallel.
fn par_elementwise<T: Send + Sync>(
    inputs: &[&[T]],
    y: &mut [T],
    f: impl Fn(&[&[T]], &mut [T]) + Sync,
) {
    if y.len() < 2 * PAR_CHUNK {
        return vectorized(
            #[inline(always)]
            || f(inputs, y),
        );
    }
    y.par_chunks_mut(PAR_CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let range = i * PAR_CHUNK..i * PAR_CHUNK + chunk.len();
            let parts: Vec<&[T]> = inputs.iter().map(|s| &s[range.clone()]).collect();
            vectorized(
                #[inline(always)]
                || f(&parts, chunk),
            )
        });
}

/// Run a unary elementwise kernel `name(in..., out, params)` or the CPU function.
fn map_unary(
    inputs: &[&Tensor],
    kernel: &str,
    alpha: f32,
    cpu: impl Fn(&[&[f32]], &mut [f32]) + Sync,
) -> Result<Tensor> {
    let x = inputs[0];
    let n = x.numel();
    for t in &inputs[1..] {
        same_device(kernel, x, t)?;
        t.expect_shape(kernel, x.shape())?;
    }
    match x.device() {
        Device::Cpu => {
            let ins = inputs
                .iter()
                .map(|t| t.host_data())
                .collect::<Result<Vec<&[f32]>>>()?;
            // SAFETY: every CPU elementwise function assigns each output element (the inputs'
            // shapes equal `x`'s, checked above).
            let y = unsafe { host_vec_written(n, |y| par_elementwise(&ins, y, cpu)) };
            Tensor::from_vec(x.shape(), y, x.device())
        }
        Device::Gpu(g) => {
            let mut y = g.zeros::<f32>(n)?;
            let mut args = KernelArgs::new();
            for t in inputs {
                args.ptr(g.addr(t.buffer()));
            }
            args.ptr(g.addr_mut(&mut y))
                .value(&ElementwiseParams { n: n as i32, alpha });
            g.launch(kernel, LaunchCfg::for_elements(n), &mut args)?;
            Tensor::from_buffer(x.shape(), y, x.device())
        }
    }
}

/// ReLU on the tensor's device.
pub fn relu_forward(x: &Tensor) -> Result<Tensor> {
    map_unary(&[x], "relu_forward_f32", 0.0, |i, y| {
        relu_forward_cpu(i[0], y)
    })
}

/// ReLU's input gradient on the tensors' device.
pub fn relu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    map_unary(&[x, dy], "relu_backward_f32", 0.0, |i, dx| {
        relu_backward_cpu(i[0], i[1], dx)
    })
}

/// tanh on the tensor's device.
pub fn tanh_forward(x: &Tensor) -> Result<Tensor> {
    map_unary(&[x], "tanh_forward_f32", 0.0, |i, y| {
        tanh_forward_cpu(i[0], y)
    })
}

/// tanh's input gradient from its output `y` on the tensors' device.
pub fn tanh_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    map_unary(&[y, dy], "tanh_backward_f32", 0.0, |i, dx| {
        tanh_backward_cpu(i[0], i[1], dx)
    })
}

/// `a + b` (same shapes).
pub fn add_forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    map_unary(&[a, b], "add_forward_f32", 0.0, |i, y| {
        add_cpu(i[0], i[1], y)
    })
}

/// `a - b` (same shapes).
pub fn sub_forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    map_unary(&[a, b], "sub_forward_f32", 0.0, |i, y| {
        sub_cpu(i[0], i[1], y)
    })
}

/// `a * b` elementwise (same shapes).
pub fn mul_forward(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    map_unary(&[a, b], "mul_forward_f32", 0.0, |i, y| {
        mul_cpu(i[0], i[1], y)
    })
}

/// `c * x`.
pub fn scale_forward(x: &Tensor, c: f32) -> Result<Tensor> {
    map_unary(&[x], "scale_forward_f32", c, |i, y| scale_cpu(c, i[0], y))
}

/// Gradients of `a + b`: `(dy, dy)`.
pub fn add_backward(dy: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((dy.clone(), dy.clone()))
}

/// Gradients of `a - b`: `(dy, -dy)`.
pub fn sub_backward(dy: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((dy.clone(), scale_forward(dy, -1.0)?))
}

/// Gradients of `a * b`: `(dy * b, dy * a)`.
pub fn mul_backward(a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((mul_forward(dy, b)?, mul_forward(dy, a)?))
}

/// Gradient of `c * x`: `c * dy`.
pub fn scale_backward(dy: &Tensor, c: f32) -> Result<Tensor> {
    scale_forward(dy, c)
}

/// `y += alpha * x` in place.
pub fn axpy_inplace(y: &mut Tensor, alpha: f32, x: &Tensor) -> Result<()> {
    same_device("axpy", x, y)?;
    x.expect_shape("axpy", y.shape())?;
    let n = x.numel();
    let dev = y.device().clone();
    match &dev {
        Device::Cpu => {
            let xs = x.host_data()?;
            let ys = y.host_data_mut()?;
            par_elementwise(&[xs], ys, |x, y| axpy_cpu(alpha, x[0], y));
            Ok(())
        }
        Device::Gpu(g) => {
            let mut args = KernelArgs::new();
            args.ptr(g.addr(x.buffer()));
            args.ptr(g.addr_mut(y.try_buffer_mut()?))
                .value(&ElementwiseParams { n: n as i32, alpha });
            g.launch("axpy_f32", LaunchCfg::for_elements(n), &mut args)
        }
    }
}

/// `acc += g` (gradient accumulation).
pub fn add_inplace(acc: &mut Tensor, g: &Tensor) -> Result<()> {
    axpy_inplace(acc, 1.0, g)
}

// ---------- autograd ----------

/// `a + b` on the tape.
pub fn add(g: &mut Graph, a: Var, b: Var) -> Result<Var> {
    let y = add_forward(g.value(a), g.value(b))?;
    Ok(g.op(y, &[a, b], move |dy| {
        let (da, db) = add_backward(dy)?;
        Ok(vec![Some(da), Some(db)])
    }))
}

/// `a - b` on the tape.
pub fn sub(g: &mut Graph, a: Var, b: Var) -> Result<Var> {
    let y = sub_forward(g.value(a), g.value(b))?;
    Ok(g.op(y, &[a, b], move |dy| {
        let (da, db) = sub_backward(dy)?;
        Ok(vec![Some(da), Some(db)])
    }))
}

/// `a · b` (element by element) on the tape; only the wanted gradients are computed.
pub fn mul(g: &mut Graph, a: Var, b: Var) -> Result<Var> {
    let (av, bv) = (g.value(a).clone(), g.value(b).clone());
    let y = mul_forward(&av, &bv)?;
    let (need_a, need_b) = (g.requires_grad(a), g.requires_grad(b));
    Ok(g.op(y, &[a, b], move |dy| {
        // Only the gradients that are wanted are computed.
        let da = if need_a {
            Some(mul_forward(dy, &bv)?)
        } else {
            None
        };
        let db = if need_b {
            Some(mul_forward(dy, &av)?)
        } else {
            None
        };
        Ok(vec![da, db])
    }))
}

/// `c · x` on the tape.
pub fn scale(g: &mut Graph, x: Var, c: f32) -> Result<Var> {
    let y = scale_forward(g.value(x), c)?;
    Ok(g.op(y, &[x], move |dy| Ok(vec![Some(scale_backward(dy, c)?)])))
}

/// ReLU on the tape.
pub fn relu(g: &mut Graph, x: Var) -> Result<Var> {
    let xv = g.value(x).clone();
    let y = relu_forward(&xv)?;
    Ok(g.op(y, &[x], move |dy| Ok(vec![Some(relu_backward(&xv, dy)?)])))
}

/// tanh on the tape (the backward reads the output).
pub fn tanh(g: &mut Graph, x: Var) -> Result<Var> {
    let y = tanh_forward(g.value(x))?;
    let yv = y.clone();
    Ok(g.op(y, &[x], move |dy| Ok(vec![Some(tanh_backward(&yv, dy)?)])))
}
