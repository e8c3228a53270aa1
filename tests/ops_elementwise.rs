//! Elementwise ops (add, sub, mul, scale, relu, axpy): f64 finite differences of the backward
//! formulas, autograd wiring, the `op_relu` golden case, and kernel devices against cpu.

mod golden_support;

use lit_engine::ops::elementwise as ew;
use lit_engine::testing::{
    assert_devices_agree, assert_gradient, dot, kernel_devices, random_f32, random_f64,
};
use lit_engine::{Device, Graph, Tensor};

const N: usize = 23;

/// `f(a, b) = sum(op(a, b) * w)` over the concatenation `[a, b]`.
fn binary_objective(op: fn(&[f64], &[f64], &mut [f64]), w: &[f64]) -> impl Fn(&[f64]) -> f64 + '_ {
    move |ab: &[f64]| {
        let (a, b) = ab.split_at(N);
        let mut y = vec![0.0; N];
        op(a, b, &mut y);
        dot(&y, w)
    }
}

#[test]
fn add_sub_mul_backward_match_finite_differences() {
    let (a, b, w) = (random_f64(1, N), random_f64(2, N), random_f64(3, N));
    let ab: Vec<f64> = a.iter().chain(&b).copied().collect();

    // add: (dy, dy)
    let analytic: Vec<f64> = w.iter().chain(&w).copied().collect();
    assert_gradient(
        "add",
        &binary_objective(ew::add_cpu, &w),
        &ab,
        &analytic,
        1e-8,
    );

    // sub: (dy, -1 * dy) — the backward scales dy by -1 for b
    let mut neg = vec![0.0; N];
    ew::scale_cpu(-1.0, &w, &mut neg);
    let analytic: Vec<f64> = w.iter().chain(&neg).copied().collect();
    assert_gradient(
        "sub",
        &binary_objective(ew::sub_cpu, &w),
        &ab,
        &analytic,
        1e-8,
    );

    // mul: (dy * b, dy * a)
    let (mut da, mut db) = (vec![0.0; N], vec![0.0; N]);
    ew::mul_cpu(&w, &b, &mut da);
    ew::mul_cpu(&w, &a, &mut db);
    let analytic: Vec<f64> = da.iter().chain(&db).copied().collect();
    assert_gradient(
        "mul",
        &binary_objective(ew::mul_cpu, &w),
        &ab,
        &analytic,
        1e-8,
    );
}

#[test]
fn scale_and_relu_backward_match_finite_differences() {
    let (x, w) = (random_f64(4, N), random_f64(5, N));
    let c = -2.5;
    let f = |x: &[f64]| {
        let mut y = vec![0.0; N];
        ew::scale_cpu(c, x, &mut y);
        dot(&y, &w)
    };
    let mut dx = vec![0.0; N];
    ew::scale_cpu(c, &w, &mut dx);
    assert_gradient("scale", &f, &x, &dx, 1e-8);

    // relu: keep x away from the kink so central differences are valid.
    let x: Vec<f64> = x
        .iter()
        .map(|v| if v.abs() < 1e-3 { 0.5 } else { *v })
        .collect();
    let f = |x: &[f64]| {
        let mut y = vec![0.0; N];
        ew::relu_forward_cpu(x, &mut y);
        dot(&y, &w)
    };
    ew::relu_backward_cpu(&x, &w, &mut dx);
    assert_gradient("relu", &f, &x, &dx, 1e-8);
}

/// The autograd wrappers route each gradient to the right input.
#[test]
fn autograd_wrappers_route_gradients() {
    let dev = Device::Cpu;
    let (a, b, dy) = (random_f32(6, N), random_f32(7, N), random_f32(8, N));
    let t = |v: &[f32]| Tensor::from_slice(&[N], v, &dev).unwrap();
    let zip = |f: fn(f32, f32) -> f32, x: &[f32], y: &[f32]| -> Vec<f32> {
        x.iter().zip(y).map(|(p, q)| f(*p, *q)).collect()
    };
    type Build =
        fn(&mut Graph, lit_engine::Var, lit_engine::Var) -> lit_engine::Result<lit_engine::Var>;
    let cases: [(&str, Build, Vec<f32>, Vec<f32>, Vec<f32>); 3] = [
        (
            "add",
            ew::add,
            zip(|x, y| x + y, &a, &b),
            dy.clone(),
            dy.clone(),
        ),
        (
            "sub",
            ew::sub,
            zip(|x, y| x - y, &a, &b),
            dy.clone(),
            dy.iter().map(|v| -v).collect(),
        ),
        (
            "mul",
            ew::mul,
            zip(|x, y| x * y, &a, &b),
            zip(|x, y| x * y, &dy, &b),
            zip(|x, y| x * y, &dy, &a),
        ),
    ];
    for (name, build, out, da, db) in cases {
        let mut g = Graph::new(&dev);
        let (va, vb) = (g.leaf(t(&a)), g.leaf(t(&b)));
        let y = build(&mut g, va, vb).unwrap();
        assert_eq!(g.value(y).to_vec().unwrap(), out, "{name} forward");
        g.backward_with(y, Some(t(&dy))).unwrap();
        assert_eq!(g.grad(va).unwrap().to_vec().unwrap(), da, "{name} grad a");
        assert_eq!(g.grad(vb).unwrap().to_vec().unwrap(), db, "{name} grad b");
    }
    // scale, and a mul whose second input is a constant (its gradient is not computed).
    let mut g = Graph::new(&dev);
    let va = g.leaf(t(&a));
    let vb = g.constant(t(&b));
    let s = ew::scale(&mut g, va, 3.0).unwrap();
    let y = ew::mul(&mut g, s, vb).unwrap();
    g.backward_with(y, Some(t(&dy))).unwrap();
    let want: Vec<f32> = dy.iter().zip(&b).map(|(d, b)| 3.0 * (d * b)).collect();
    assert_eq!(g.grad(va).unwrap().to_vec().unwrap(), want);
    assert!(g.grad(vb).is_none());
}

#[test]
fn shape_mismatch_is_an_error() {
    let dev = Device::Cpu;
    let a = Tensor::zeros(&[2, 3], &dev).unwrap();
    let b = Tensor::zeros(&[3, 2], &dev).unwrap();
    for r in [
        ew::add_forward(&a, &b),
        ew::sub_forward(&a, &b),
        ew::mul_forward(&a, &b),
    ] {
        assert!(r
            .err()
            .expect("an error")
            .to_string()
            .contains("expected shape [2, 3]"));
    }
}

fn golden_relu(dev: &Device) {
    let Some(c) = golden_support::load("op_relu") else {
        return;
    };
    let mut g = Graph::new(dev);
    let x = g.leaf(c.tensor("input.x", dev));
    let y = ew::relu(&mut g, x).unwrap();
    c.check("expect.out", g.value(y), dev);
    g.backward_with(y, Some(c.tensor("input.grad_out", dev)))
        .unwrap();
    c.check("expect.grad.x", g.grad(x).unwrap(), dev);
}

#[test]
fn golden_relu_cpu() {
    golden_relu(&Device::Cpu);
}

#[test]
fn golden_relu_kernel_devices() {
    for dev in kernel_devices() {
        golden_relu(&dev);
    }
}

/// Odd sizes: a partial block, several blocks, and one size past the 1024-block grid so the
/// grid-stride loop wraps.
const SIZES: [usize; 3] = [1, 3 * 37 * 11, 1024 * 256 + 5];

#[test]
fn elementwise_kernels_agree_with_cpu() {
    for &n in &SIZES {
        let (a, b, dy) = (random_f32(10, n), random_f32(11, n), random_f32(12, n));
        assert_devices_agree(&format!("elementwise n={n}"), 1e-6, 0.0, |dev| {
            let t = |v: &[f32]| Tensor::from_slice(&[n], v, dev);
            let (a, b, dy) = (t(&a)?, t(&b)?, t(&dy)?);
            let (_, sub_db) = ew::sub_backward(&dy)?;
            let (mul_da, mul_db) = ew::mul_backward(&a, &b, &dy)?;
            let mut acc = a.clone();
            ew::axpy_inplace(&mut acc, -0.5, &b)?;
            ew::add_inplace(&mut acc, &dy)?;
            Ok(vec![
                ew::add_forward(&a, &b)?,
                ew::sub_forward(&a, &b)?,
                ew::mul_forward(&a, &b)?,
                ew::scale_forward(&a, 1.75)?,
                ew::relu_forward(&a)?,
                ew::relu_backward(&a, &dy)?,
                sub_db,
                mul_da,
                mul_db,
                ew::scale_backward(&dy, -0.25)?,
                acc,
            ])
        });
    }
}
