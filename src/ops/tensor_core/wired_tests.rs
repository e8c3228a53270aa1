//! The dispatch of issue 13: under a rounding precision the autograd ops on the emulator (both
//! thread orders) run the tensor-core kernels — the launch record says which kernels ran — with
//! no operand-rounding pass and no fp32 conv / GEMM kernel, and their results match the rounded
//! references ([`super::cpu`], the tolerance of [`super::tests`]); a small conv net's training
//! step agrees with the cpu device's precision path (rounded copies + fp32 ops).

use super::tests::assert_within;
use super::*;
use crate::autograd::{Graph, Var};
use crate::device::{launch_record, EmuOrder};
use crate::ops::batchnorm::{self, Activation, BatchNormArgs, RunningStats};
use crate::ops::loss::{cross_entropy, Reduction};
use crate::ops::{conv as conv_ops, matmul as mm, pool};
use crate::tensor::IndexTensor;
use crate::testing::random_f32;
use std::collections::BTreeMap;

const ORDERS: [EmuOrder; 2] = [EmuOrder::Forward, EmuOrder::Reverse];

/// Kernels that must not run when the tensor cores do: the rounding pass and the fp32 conv /
/// GEMM kernels (by name stem).
const FP32_PATH: [&str; 5] = [
    "round_operands_f32",
    "gemm_f32",
    "conv2d_implicit",
    "conv2d_weight_grad_",
    "col2im_f32",
];

/// Panics unless every `want` kernel ran and no kernel of [`FP32_PATH`] did.
#[track_caller]
fn assert_ran(what: &str, launches: &BTreeMap<String, u64>, want: &[String]) {
    for k in want {
        assert!(
            launches.contains_key(k),
            "{what}: {k} did not run; launches: {launches:?}"
        );
    }
    for k in launches.keys() {
        assert!(
            !FP32_PATH.iter().any(|stem| k.starts_with(stem)),
            "{what}: the fp32 path's {k} ran; launches: {launches:?}"
        );
    }
}

fn tensor(dev: &Device, shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, random_f32(seed, n), dev).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec().unwrap()
}

// ---------- op level ----------

/// The taped op `f` on leaves of `inputs` under `precision`, backward with `dy`: the output and
/// every input's gradient, and the kernels that ran.
fn taped(
    inputs: &[Tensor],
    dy: &Tensor,
    precision: Precision,
    f: impl Fn(&mut Graph, &[Var]) -> Var,
) -> (Vec<Vec<f32>>, BTreeMap<String, u64>) {
    let (out, launches) = launch_record::record(|| {
        let mut g = Graph::new(inputs[0].device()).with_precision(precision);
        let vars: Vec<Var> = inputs.iter().map(|t| g.leaf(t.clone())).collect();
        let y = f(&mut g, &vars);
        let y_value = values(g.value(y));
        g.backward_with(y, Some(dy.clone())).unwrap();
        let grads = vars.iter().map(|&v| values(g.grad(v).unwrap()));
        std::iter::once(y_value).chain(grads).collect()
    });
    (out, launches)
}

/// `(x, w, stride, padding)` of the conv cases: partial tiles, strides, 1x1, 1-D.
type ConvCase = (Vec<usize>, Vec<usize>, (usize, usize), (usize, usize));

fn conv_cases() -> Vec<ConvCase> {
    vec![
        (vec![3, 5, 7, 9], vec![7, 5, 3, 3], (2, 2), (1, 1)),
        (vec![2, 6, 5, 5], vec![67, 6, 1, 1], (1, 1), (0, 0)),
        // conv1d (height 1), as VDCNN's.
        (vec![2, 5, 1, 13], vec![9, 5, 1, 3], (1, 1), (0, 1)),
    ]
}

#[test]
fn taped_convs_run_the_tensor_core_kernels_and_match_the_rounded_reference() {
    for precision in [Precision::Tf32, Precision::Bf16, Precision::Fp16] {
        let suffix = kernel_suffix(precision).unwrap();
        for (i, (xs, ws, stride, padding)) in conv_cases().into_iter().enumerate() {
            let cpu = Device::Cpu;
            let g = ConvGeometry::new(&xs, &ws, stride, padding).unwrap();
            let seed = 50 + 10 * i as u64;
            let host = [
                tensor(&cpu, &xs, seed),
                tensor(&cpu, &ws, seed + 1),
                tensor(&cpu, &[g.o], seed + 2),
                tensor(&cpu, &g.out_shape(), seed + 3),
            ];
            let [x, w, b, dy] = host.each_ref().map(values);
            let want = [
                cpu::conv2d_forward(precision, &g, (&x, &w, Some(&b)), false),
                cpu::conv2d_backward_data(precision, &g, (&w, &dy), false),
                cpu::conv2d_backward_weight(precision, &g, (&x, &dy), false),
            ];
            let magnitude = [
                cpu::conv2d_forward(precision, &g, (&x, &w, Some(&b)), true),
                cpu::conv2d_backward_data(precision, &g, (&w, &dy), true),
                cpu::conv2d_backward_weight(precision, &g, (&x, &dy), true),
            ];
            let depths = [g.k(), g.o * g.kh * g.kw, g.n * g.pixels_out()];
            let one_d = xs[2] == 1;
            for order in ORDERS {
                let dev = Device::emu_with_order(order).unwrap();
                let on = |t: &Tensor| Tensor::from_vec(t.shape(), values(t), &dev).unwrap();
                let mut inputs: Vec<Tensor> = host[..3].iter().map(on).collect();
                let mut dy_dev = on(&host[3]);
                if one_d {
                    // [N, C, 1, L] → [N, C, L] through the conv1d op.
                    let squeeze = |t: &Tensor| {
                        let s = t.shape();
                        t.reshape(&[s[0], s[1], s[3]]).unwrap()
                    };
                    inputs[0] = squeeze(&inputs[0]);
                    inputs[1] = squeeze(&inputs[1]);
                    dy_dev = squeeze(&dy_dev);
                }
                let (got, launches) = taped(&inputs, &dy_dev, precision, |g, v| {
                    match one_d {
                        true => conv_ops::conv1d(g, v[0], v[1], Some(v[2]), stride.1, padding.1),
                        false => conv_ops::conv2d(g, v[0], v[1], Some(v[2]), stride, padding),
                    }
                    .unwrap()
                });
                let what = format!("{precision} conv {xs:?} {ws:?} on {order:?}");
                let kernels = ["forward", "data_grad", "weight_grad"]
                    .map(|pass| format!("conv2d_tc_{pass}_{suffix}"));
                assert_ran(&what, &launches, &kernels);
                for (pass, ((got, want), (magnitude, depth))) in ["y", "dx", "dw"]
                    .iter()
                    .zip(got.iter().zip(&want).zip(magnitude.iter().zip(depths)))
                {
                    assert_within(&format!("{what} {pass}"), got, want, magnitude, depth);
                }
                // The bias gradient is the fp32 column sum of the unrounded dy, as in fp32.
                let (pixels, o) = (g.pixels_out(), g.o);
                let column = |abs: bool| -> Vec<f64> {
                    (0..o)
                        .map(|c| {
                            let terms =
                                (0..g.n).flat_map(|n| &dy[(n * o + c) * pixels..][..pixels]);
                            terms
                                .map(|&v| if abs { v.abs() as f64 } else { v as f64 })
                                .sum()
                        })
                        .collect()
                };
                let (db_want, db_mag) = (column(false), column(true));
                assert_within(
                    &format!("{what} db"),
                    &got[3],
                    &db_want,
                    &db_mag,
                    g.n * pixels,
                );
            }
        }
    }
}

/// `(a, trans_a, b, trans_b)` stored shapes of the GEMM cases: every transpose, partial tiles.
fn gemm_dims_of(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> (Vec<usize>, Vec<usize>) {
    let a = if ta { vec![k, m] } else { vec![m, k] };
    let b = if tb { vec![n, k] } else { vec![k, n] };
    (a, b)
}

/// `op(l)·op(r)` by the rounded reference (`abs`: magnitudes), `rows x cols`, depth `depth`.
#[allow(clippy::too_many_arguments)]
fn gemm_ref(
    precision: Precision,
    (l, tl): (&[f32], bool),
    (r, tr): (&[f32], bool),
    (rows, cols, depth): (usize, usize, usize),
    abs: bool,
) -> Vec<f64> {
    let p = GemmParams::dense(rows, cols, depth, tl, tr).unwrap();
    cpu::gemm(precision, &p, 1, (l, r, &vec![0.0; rows * cols]), abs)
}

#[test]
fn taped_gemms_and_linear_run_the_tensor_core_kernel_and_match_the_rounded_reference() {
    let (m, n, k) = (37, 70, 45);
    for precision in [Precision::Tf32, Precision::Bf16] {
        let kernel = [format!("gemm_tc_{}", kernel_suffix(precision).unwrap())];
        for (ta, tb) in [(false, false), (true, true), (false, true)] {
            let (sa, sb) = gemm_dims_of(m, n, k, ta, tb);
            let cpu = Device::Cpu;
            let host = [
                tensor(&cpu, &sa, 1),
                tensor(&cpu, &sb, 2),
                tensor(&cpu, &[m, n], 3),
            ];
            let [a, b, dc] = host.each_ref().map(values);
            // dA and dB in stored layouts by the gradient plan of ops::matmul.
            let pick = |o: mm::Operand| match o {
                mm::Operand::A => (&a[..], sa.clone()),
                mm::Operand::B => (&b[..], sb.clone()),
                mm::Operand::DC => (&dc[..], vec![m, n]),
            };
            let refs = |abs: bool| {
                let mut out = vec![gemm_ref(precision, (&a, ta), (&b, tb), (m, n, k), abs)];
                for (l, tl, r, tr) in mm::grad_plan(ta, tb) {
                    let ((lv, ls), (rv, rs)) = (pick(l), pick(r));
                    let rows = if tl { ls[1] } else { ls[0] };
                    let (cols, depth) = if tr { (rs[0], rs[1]) } else { (rs[1], rs[0]) };
                    out.push(gemm_ref(
                        precision,
                        (lv, tl),
                        (rv, tr),
                        (rows, cols, depth),
                        abs,
                    ));
                }
                out
            };
            let (want, magnitude) = (refs(false), refs(true));
            let depths = [k, n, m];
            for order in ORDERS {
                let dev = Device::emu_with_order(order).unwrap();
                let on = |t: &Tensor| Tensor::from_vec(t.shape(), values(t), &dev).unwrap();
                let inputs = [on(&host[0]), on(&host[1])];
                let (got, launches) = taped(&inputs, &on(&host[2]), precision, |g, v| {
                    mm::gemm_op(g, v[0], ta, v[1], tb).unwrap()
                });
                let what = format!("{precision} gemm ta={ta} tb={tb} on {order:?}");
                assert_ran(&what, &launches, &kernel);
                for (i, got) in got.iter().enumerate() {
                    assert_within(
                        &format!("{what} #{i}"),
                        got,
                        &want[i],
                        &magnitude[i],
                        depths[i],
                    );
                }
            }
        }
        // Linear: y = x·wᵀ + b (bias exact, beta = 1), dx = dy·w, dw = dyᵀ·x.
        let (rows, inf, outf) = (9, 37, 11);
        let cpu = Device::Cpu;
        let host = [
            tensor(&cpu, &[rows, inf], 4),
            tensor(&cpu, &[outf, inf], 5),
            tensor(&cpu, &[outf], 6),
            tensor(&cpu, &[rows, outf], 7),
        ];
        let [x, w, b, dy] = host.each_ref().map(values);
        let biased: Vec<f32> = (0..rows).flat_map(|_| b.iter().copied()).collect();
        let refs = |abs: bool| {
            let p = GemmParams::dense(rows, outf, inf, false, true)
                .unwrap()
                .with_scale(1.0, 1.0);
            vec![
                cpu::gemm(precision, &p, 1, (&x, &w, &biased), abs),
                gemm_ref(precision, (&dy, false), (&w, false), (rows, inf, outf), abs),
                gemm_ref(precision, (&dy, true), (&x, false), (outf, inf, rows), abs),
            ]
        };
        let (want, magnitude) = (refs(false), refs(true));
        for order in ORDERS {
            let dev = Device::emu_with_order(order).unwrap();
            let on = |t: &Tensor| Tensor::from_vec(t.shape(), values(t), &dev).unwrap();
            let inputs = [on(&host[0]), on(&host[1]), on(&host[2])];
            let (got, launches) = taped(&inputs, &on(&host[3]), precision, |g, v| {
                mm::linear(g, v[0], v[1], Some(v[2])).unwrap()
            });
            let what = format!("{precision} linear on {order:?}");
            assert_ran(&what, &launches, &kernel);
            for (i, depth) in [inf, outf, rows].into_iter().enumerate() {
                assert_within(
                    &format!("{what} #{i}"),
                    &got[i],
                    &want[i],
                    &magnitude[i],
                    depth,
                );
            }
        }
    }
}

// ---------- a training step ----------

/// One training step of a small conv net (conv → BatchNorm + ReLU → strided conv with bias →
/// global average pool → Linear → cross-entropy) on `dev` under `precision`: the loss, then every
/// parameter's gradient; and the kernels that ran.
fn conv_net_step(dev: &Device, precision: Precision) -> (Vec<Vec<f32>>, BTreeMap<String, u64>) {
    let params = [
        tensor(dev, &[8, 3, 3, 3], 11),
        tensor(dev, &[8], 12),
        tensor(dev, &[8], 13),
        tensor(dev, &[6, 8, 3, 3], 14),
        tensor(dev, &[6], 15),
        tensor(dev, &[5, 6], 16),
        tensor(dev, &[5], 17),
    ];
    let x = tensor(dev, &[3, 3, 7, 6], 18);
    let labels = IndexTensor::from_vec(&[3], vec![4, 0, 2], dev).unwrap();
    let running = RunningStats {
        mean: Tensor::zeros(&[8], dev).unwrap(),
        var: Tensor::full(&[8], 1.0, dev).unwrap(),
        num_batches_tracked: None,
    };
    launch_record::record(|| {
        let mut g = Graph::new(dev).with_precision(precision);
        let p: Vec<Var> = params.iter().map(|t| g.leaf(t.clone())).collect();
        let xv = g.constant(x.clone());
        let h = conv_ops::conv2d(&mut g, xv, p[0], None, (1, 1), (1, 1)).unwrap();
        let args = BatchNormArgs {
            activation: Activation::Relu,
            affine: Some((p[1], p[2])),
            running: Some(&running),
            ..BatchNormArgs::default()
        };
        let (h, _) = batchnorm::batch_norm(&mut g, h, &args).unwrap();
        let h = conv_ops::conv2d(&mut g, h, p[3], Some(p[4]), (2, 2), (1, 1)).unwrap();
        let h = pool::global_avg_pool(&mut g, h).unwrap();
        let logits = mm::linear(&mut g, h, p[5], Some(p[6])).unwrap();
        let loss = cross_entropy(&mut g, logits, &labels, Reduction::Mean).unwrap();
        let mut out = vec![values(g.value(loss))];
        g.backward(loss).unwrap();
        out.extend(p.iter().map(|&v| values(g.grad(v).unwrap())));
        out
    })
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|d| d * d).sum::<f64>().sqrt()
}

/// How close the tensor-core step must come to the cpu precision path, as a fraction of how far
/// the precision's rounding moves the cpu step from fp32. Both paths round the same operands
/// the same way and differ only in fp32 accumulation order, which changes an activation by
/// δ ≈ 2^-24·√depth relatively (≈ 2^-21 here); an operand then rounds to the other neighbour
/// with probability δ/u (u: the precision's spacing, 2^-8 bf16, 2^-11 tf32), moving it by u.
/// Per element that is δ·u of squared difference against u²/3 for the rounding itself, a
/// ratio of √(3δ/u): ≈ 0.02 for bf16 and ≈ 0.05 for tf32, propagated alike through the step.
/// 0.25 leaves a 5x margin; a kernel that skipped the rounding sits at ≈ 1 (the rounding effect
/// itself), one that rounded differently at about √2.
const SAME_ROUNDING: f64 = 0.25;

/// Every output `i` of the tensor-core run `tc` within [`SAME_ROUNDING`] of the rounding's own
/// effect (`cpu_p` against `fp32`) from the cpu precision path `cpu_p`.
#[track_caller]
fn assert_same_rounding(what: &str, tc: &[Vec<f32>], cpu_p: &[Vec<f32>], fp32: &[Vec<f32>]) {
    assert_eq!(tc.len(), cpu_p.len());
    for (i, ((tc, cpu), fp32)) in tc.iter().zip(cpu_p).zip(fp32).enumerate() {
        let diff = |a: &[f32], b: &[f32]| norm(a.iter().zip(b).map(|(&a, &b)| a as f64 - b as f64));
        let (d_tc, d_rounding) = (diff(tc, cpu), diff(cpu, fp32));
        // Pure fp32 accumulation noise where the rounding happens to move little.
        let floor = f64::powi(2.0, -20) * norm(cpu.iter().map(|&v| v as f64));
        eprintln!("{what} #{i}: |tc - cpu| {d_tc:.3e}, |cpu - fp32| {d_rounding:.3e}");
        assert!(
            d_tc <= SAME_ROUNDING * d_rounding + floor,
            "{what}: output {i} is {d_tc:.3e} from the cpu path, more than {SAME_ROUNDING} x \
             the rounding's own effect {d_rounding:.3e} (+ {floor:.1e})"
        );
    }
}

#[test]
fn a_conv_net_training_step_runs_the_tensor_cores_and_agrees_with_the_cpu_precision_path() {
    let (fp32, _) = conv_net_step(&Device::Cpu, Precision::Fp32);
    for precision in [Precision::Bf16, Precision::Tf32] {
        let (cpu_p, cpu_launches) = conv_net_step(&Device::Cpu, precision);
        assert!(cpu_launches.is_empty(), "the cpu device launches no kernel");
        let suffix = kernel_suffix(precision).unwrap();
        let kernels = [
            "conv2d_tc_forward",
            "conv2d_tc_data_grad",
            "conv2d_tc_weight_grad",
            "gemm_tc",
        ]
        .map(|k| format!("{k}_{suffix}"));
        for order in ORDERS {
            let (tc, launches) = conv_net_step(&Device::emu_with_order(order).unwrap(), precision);
            let what = format!("{precision} step on {order:?}");
            assert_ran(&what, &launches, &kernels);
            assert_same_rounding(&what, &tc, &cpu_p, &fp32);
        }
    }
}

/// A frozen teacher's forward (eval, no tape: each bias-free conv + BatchNorm (+ residual) +
/// ReLU one fused op) of `takd-resnet8` on `dev` under `precision`: its logits and the kernels
/// that ran.
fn resnet8_eval(dev: &Device, precision: Precision) -> (Vec<Vec<f32>>, BTreeMap<String, u64>) {
    let mut store = crate::nn::ParamStore::new();
    let model = crate::models::build(
        "takd-resnet8",
        10,
        &mut store,
        dev,
        &mut crate::rng::Rng::new(3),
    )
    .unwrap();
    let mut shape = vec![1];
    shape.extend(model.input_shape());
    let x = tensor(dev, &shape, 21);
    launch_record::record(|| {
        let mut g = Graph::no_grad(dev).with_precision(precision);
        let xv = g.constant(x.clone());
        let input = crate::models::Input::Float(xv);
        let logits = model.forward(&mut g, &mut store, input, false).unwrap();
        vec![values(g.value(logits))]
    })
}

/// The fused eval conv + BatchNorm runs the tensor-core conv, then the BatchNorm kernel (not
/// the rounding pass and the fp32 conv with its epilogue), and agrees with the cpu precision
/// path as the training step does.
#[test]
fn a_frozen_teachers_eval_forward_runs_the_tensor_core_conv_then_the_batchnorm() {
    let precision = Precision::Bf16;
    let (fp32, _) = resnet8_eval(&Device::Cpu, Precision::Fp32);
    let (cpu_p, _) = resnet8_eval(&Device::Cpu, precision);
    for order in ORDERS {
        let (tc, launches) = resnet8_eval(&Device::emu_with_order(order).unwrap(), precision);
        let what = format!("takd-resnet8 eval {precision} on {order:?}");
        assert_ran(&what, &launches, &["conv2d_tc_forward_bf16".into()]);
        assert!(
            launches.keys().any(|k| k.starts_with("batchnorm")),
            "{what}: no BatchNorm kernel after the tensor-core conv: {launches:?}"
        );
        assert_same_rounding(&what, &tc, &cpu_p, &fp32);
    }
}
