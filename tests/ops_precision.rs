//! Precision modes (autocast) of the conv and GEMM ops: the `round_operands_f32` kernel against
//! its CPU reference (`Precision::round`) bit for bit, the forward of conv1d/conv2d/linear/matmul
//! under tf32/bf16/fp16 against the fp32 ops on pre-rounded operands (exactly on cpu, within
//! accumulation-order tolerance on the kernel devices), and their backward passes against
//! reference GEMMs whose operands (dy, weights, inputs) are rounded by hand.

use lit_engine::ops::autocast::round_operands;
use lit_engine::ops::conv::{
    conv1d, conv1d_backward, conv1d_forward, conv2d, conv2d_backward, conv2d_forward,
};
use lit_engine::ops::matmul::{
    gemm, gemm_backward, gemm_op, linear, linear_backward, linear_forward,
};
use lit_engine::precision::Precision;
use lit_engine::testing::{check_close, kernel_devices, random_f32};
use lit_engine::{Device, Graph, Tensor, Var};

/// The modes that round.
const ROUNDING: [Precision; 3] = [Precision::Tf32, Precision::Bf16, Precision::Fp16];

fn rand(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
}

fn rounded(t: &Tensor, p: Precision) -> Tensor {
    let v: Vec<f32> = t.to_vec().unwrap().iter().map(|&x| p.round(x)).collect();
    Tensor::from_vec(t.shape(), v, t.device()).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// Values that exercise every rounding branch: ties (even and odd), just off ties, fp16 and bf16
/// overflow, fp16 subnormals and underflow, f32 subnormals, infinities, NaN, signed zeros.
fn edge_values() -> Vec<f32> {
    let p = |e: i32| f32::powi(2.0, e);
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        1.0 + p(-11),
        1.0 + 3.0 * p(-11),
        1.0 + p(-8),
        1.0 + 3.0 * p(-8),
        -(1.0 + p(-8)),
        65504.0,
        65519.0,
        65520.0,
        -65520.0,
        70000.0,
        3.0e38,
        f32::MAX,
        -f32::MAX,
        p(-14),
        p(-14) - p(-24) * 0.5,
        p(-24),
        p(-25),
        p(-25) * 1.5,
        -p(-25) * 1.5,
        p(-26),
        1.0e-40,
        -1.0e-45,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
    ];
    // Neighbours of ties at every mantissa boundary that matters.
    for base in [0x3f80_0000u32, 0x3380_0000, 0x4770_0000, 0x0080_0000] {
        for off in [
            0x0fffu32, 0x1000, 0x1001, 0x3000, 0x7fff, 0x8000, 0x8001, 0x1_8000,
        ] {
            v.push(f32::from_bits(base + off));
            v.push(-f32::from_bits(base + off));
        }
    }
    v.extend(random_f32(5, 300).iter().map(|x| x * 1e3));
    v.extend(random_f32(6, 300).iter().map(|x| x * 1e-6));
    v
}

#[test]
fn round_operands_kernel_matches_precision_round_bit_for_bit() {
    let v = edge_values();
    let n = v.len();
    for p in Precision::ALL {
        let want: Vec<f32> = v.iter().map(|&x| p.round(x)).collect();
        let cpu = round_operands(&Tensor::from_vec(&[n], v.clone(), &Device::Cpu).unwrap(), p)
            .unwrap()
            .to_vec()
            .unwrap();
        for dev in kernel_devices() {
            let t = Tensor::from_vec(&[n], v.clone(), &dev).unwrap();
            let got = round_operands(&t, p).unwrap().to_vec().unwrap();
            for (i, ((&g, &w), &c)) in got.iter().zip(&want).zip(&cpu).enumerate() {
                let same =
                    |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
                assert!(
                    same(g, w) && same(c, w),
                    "{p} on {}: round({:e} = {:#010x}) = {:e} ({:#010x}), cpu {:e}, want {:e} ({:#010x})",
                    dev.name(),
                    v[i],
                    v[i].to_bits(),
                    g,
                    g.to_bits(),
                    c,
                    w,
                    w.to_bits()
                );
            }
        }
    }
}

/// The layer-shaped ops under test: each runs its forward on a graph (of `p`) and returns the
/// output and the gradients of `inputs` for the output gradient `dy`.
struct Case {
    name: &'static str,
    /// Shapes of the inputs (x, weight, then bias if any).
    shapes: Vec<Vec<usize>>,
    /// The op on a graph.
    taped: fn(&mut Graph, &[Var]) -> Var,
    /// The fp32 forward on the given (already rounded, or not) operands; bias last.
    forward: fn(&[Tensor]) -> Tensor,
    /// The fp32 gradients of the GEMM operands (x, weight) for `dy`.
    backward: fn(&[Tensor], &Tensor) -> (Tensor, Tensor),
    /// The bias gradient for `dy`, when there is a bias.
    bias_grad: Option<fn(&[Tensor], &Tensor) -> Tensor>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "conv2d stride 1 pad 1, bias",
            shapes: vec![vec![2, 3, 7, 6], vec![5, 3, 3, 3], vec![5]],
            taped: |g, v| conv2d(g, v[0], v[1], Some(v[2]), (1, 1), (1, 1)).unwrap(),
            forward: |t| conv2d_forward(&t[0], &t[1], Some(&t[2]), (1, 1), (1, 1)).unwrap(),
            backward: |t, dy| {
                let (dx, dw, _) =
                    conv2d_backward(&t[0], &t[1], dy, (1, 1), (1, 1), (true, true, false)).unwrap();
                (dx.unwrap(), dw.unwrap())
            },
            bias_grad: Some(|t, dy| {
                conv2d_backward(&t[0], &t[1], dy, (1, 1), (1, 1), (false, false, true))
                    .unwrap()
                    .2
                    .unwrap()
            }),
        },
        Case {
            name: "conv2d stride 2 no bias",
            shapes: vec![vec![3, 4, 9, 7], vec![6, 4, 3, 2]],
            taped: |g, v| conv2d(g, v[0], v[1], None, (2, 2), (1, 0)).unwrap(),
            forward: |t| conv2d_forward(&t[0], &t[1], None, (2, 2), (1, 0)).unwrap(),
            backward: |t, dy| {
                let (dx, dw, _) =
                    conv2d_backward(&t[0], &t[1], dy, (2, 2), (1, 0), (true, true, false)).unwrap();
                (dx.unwrap(), dw.unwrap())
            },
            bias_grad: None,
        },
        Case {
            name: "conv1d, bias",
            shapes: vec![vec![2, 5, 13], vec![7, 5, 3], vec![7]],
            taped: |g, v| conv1d(g, v[0], v[1], Some(v[2]), 1, 1).unwrap(),
            forward: |t| conv1d_forward(&t[0], &t[1], Some(&t[2]), 1, 1).unwrap(),
            backward: |t, dy| {
                let (dx, dw, _) =
                    conv1d_backward(&t[0], &t[1], dy, 1, 1, (true, true, false)).unwrap();
                (dx.unwrap(), dw.unwrap())
            },
            bias_grad: Some(|t, dy| {
                conv1d_backward(&t[0], &t[1], dy, 1, 1, (false, false, true))
                    .unwrap()
                    .2
                    .unwrap()
            }),
        },
        Case {
            name: "linear, bias",
            shapes: vec![vec![9, 37], vec![11, 37], vec![11]],
            taped: |g, v| linear(g, v[0], v[1], Some(v[2])).unwrap(),
            forward: |t| linear_forward(&t[0], &t[1], Some(&t[2])).unwrap(),
            backward: |t, dy| {
                let (dx, dw, _) = linear_backward(&t[0], &t[1], dy, (true, true, false)).unwrap();
                (dx.unwrap(), dw.unwrap())
            },
            bias_grad: Some(|t, dy| {
                linear_backward(&t[0], &t[1], dy, (false, false, true))
                    .unwrap()
                    .2
                    .unwrap()
            }),
        },
        Case {
            name: "gemm aᵀ·b",
            shapes: vec![vec![19, 6], vec![19, 10]],
            taped: |g, v| gemm_op(g, v[0], true, v[1], false).unwrap(),
            forward: |t| gemm(&t[0], true, &t[1], false).unwrap(),
            backward: |t, dy| {
                let (da, db) = gemm_backward(&t[0], true, &t[1], false, dy, (true, true)).unwrap();
                (da.unwrap(), db.unwrap())
            },
            bias_grad: None,
        },
    ]
}

/// The op of `case` on a graph of precision `p` on `dev`: its output and the gradients of every
/// input for the output gradient `dy`.
fn run_taped(case: &Case, p: Precision, inputs: &[Tensor], dy: &Tensor) -> (Tensor, Vec<Tensor>) {
    let mut g = Graph::new(inputs[0].device()).with_precision(p);
    let vars: Vec<Var> = inputs.iter().map(|t| g.leaf(t.clone())).collect();
    let y = (case.taped)(&mut g, &vars);
    let out = g.value(y).clone();
    g.backward_with(y, Some(dy.clone())).unwrap();
    let grads = vars.iter().map(|&v| g.grad(v).unwrap().clone()).collect();
    (out, grads)
}

/// The specification on `dev`: fp32 forward on rounded x and weight (bias as is); x and weight
/// gradients from GEMMs on rounded dy, weight and x; the bias gradient from the fp32 dy.
fn reference(case: &Case, p: Precision, inputs: &[Tensor], dy: &Tensor) -> (Tensor, Vec<Tensor>) {
    let mut r: Vec<Tensor> = inputs.to_vec();
    r[0] = rounded(&inputs[0], p);
    r[1] = rounded(&inputs[1], p);
    let y = (case.forward)(&r);
    let (dx, dw) = (case.backward)(&r, &rounded(dy, p));
    let mut grads = vec![dx, dw];
    if let Some(bias_grad) = case.bias_grad {
        grads.push(bias_grad(&r, dy));
    }
    (y, grads)
}

fn inputs_on(case: &Case, dev: &Device) -> (Vec<Tensor>, Tensor) {
    let inputs: Vec<Tensor> = (case.shapes.iter().enumerate())
        .map(|(i, s)| rand(s, 10 + i as u64, dev))
        .collect();
    let out_shape = (case.forward)(&inputs).shape().to_vec();
    // An output gradient with values far from every rounding grid.
    (inputs, rand(&out_shape, 99, dev))
}

#[test]
fn cpu_forward_and_backward_equal_fp32_ops_on_rounded_operands_exactly() {
    for case in cases() {
        let (inputs, dy) = inputs_on(&case, &Device::Cpu);
        let (y32, g32) = run_taped(&case, Precision::Fp32, &inputs, &dy);
        for p in ROUNDING {
            let (y, grads) = run_taped(&case, p, &inputs, &dy);
            let (want_y, want_grads) = reference(&case, p, &inputs, &dy);
            let what = format!("{} under {p}", case.name);
            assert_eq!(bits(&y), bits(&want_y), "{what}: forward");
            // The rounding changes the result: the test would notice a missing rounding.
            assert_ne!(bits(&y), bits(&y32), "{what}: forward equals fp32's");
            for (i, (g, w)) in grads.iter().zip(&want_grads).enumerate() {
                assert_eq!(bits(g), bits(w), "{what}: gradient of input {i}");
            }
            for i in 0..2 {
                assert_ne!(
                    bits(&grads[i]),
                    bits(&g32[i]),
                    "{what}: gradient {i} equals fp32's"
                );
            }
        }
    }
}

/// Under fp32 the graph ops are the plain ops (no rounding anywhere).
#[test]
fn fp32_graph_ops_are_the_plain_ops() {
    for case in cases() {
        let (inputs, dy) = inputs_on(&case, &Device::Cpu);
        let (y, grads) = run_taped(&case, Precision::Fp32, &inputs, &dy);
        let (want_y, want_grads) = reference(&case, Precision::Fp32, &inputs, &dy);
        assert_eq!(bits(&y), bits(&want_y), "{}", case.name);
        for (g, w) in grads.iter().zip(&want_grads) {
            assert_eq!(bits(g), bits(w), "{}", case.name);
        }
    }
}

#[test]
fn kernel_devices_forward_and_backward_match_the_rounded_reference() {
    for dev in kernel_devices() {
        for case in cases() {
            let (inputs, dy) = inputs_on(&case, &Device::Cpu);
            let on_dev: Vec<Tensor> = inputs
                .iter()
                .map(|t| Tensor::from_vec(t.shape(), t.to_vec().unwrap(), &dev).unwrap())
                .collect();
            let dy_dev = Tensor::from_vec(dy.shape(), dy.to_vec().unwrap(), &dev).unwrap();
            for p in ROUNDING {
                let (y, grads) = run_taped(&case, p, &on_dev, &dy_dev);
                let (want_y, want_grads) = reference(&case, p, &inputs, &dy);
                let (y32, _) = reference(&case, Precision::Fp32, &inputs, &dy);
                let what = format!("{} under {p} on {}", case.name, dev.name());
                let (y, want_y) = (y.to_vec().unwrap(), want_y.to_vec().unwrap());
                check_close(&y, &want_y, 1e-5, 1e-6)
                    .unwrap_or_else(|e| panic!("{what}: forward: {e}"));
                // Far enough from fp32 that the tolerance above would catch a missing rounding.
                assert!(
                    check_close(&y32.to_vec().unwrap(), &want_y, 1e-5, 1e-6).is_err(),
                    "{what}: rounding is invisible at this tolerance"
                );
                for (i, (g, w)) in grads.iter().zip(&want_grads).enumerate() {
                    check_close(&g.to_vec().unwrap(), &w.to_vec().unwrap(), 1e-5, 1e-6)
                        .unwrap_or_else(|e| panic!("{what}: gradient of input {i}: {e}"));
                }
            }
        }
    }
}
