//! SGD: the golden `sgd_steps` cases (cpu and kernel devices), PyTorch's skipping rules, momentum
//! buffers for checkpoints, and kernel devices against cpu.

mod golden_support;

use lit_engine::nn::ParamStore;
use lit_engine::optim::{sgd_step_cpu, Sgd, SgdParams, SGD_MULTI_MAX_TENSORS};
use lit_engine::testing::{assert_devices_agree, kernel_devices, random_f32};
use lit_engine::{Device, Tensor};

/// The `sgd_steps` protocol of `golden/README.md`: fresh buffers, `steps` steps, an absent
/// gradient tensor means the parameter has no gradient at that step.
fn golden_sgd(case: &str, dev: &Device) {
    let Some(c) = golden_support::load(case) else {
        return;
    };
    assert_eq!(
        c.attr_f64("dampening"),
        0.0,
        "{case}: only dampening 0 is specified"
    );
    let mut opt = Sgd::new(
        c.attr_f64("lr") as f32,
        c.attr_f64("momentum") as f32,
        c.attr_f64("weight_decay") as f32,
        c.json["attrs"]["nesterov"].as_bool().unwrap(),
    )
    .unwrap();
    let names: Vec<String> = c.json["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut store = ParamStore::new();
    for p in &names {
        store
            .add_param(p, c.tensor(&format!("param.{p}"), dev))
            .unwrap();
    }
    let steps = c.json["steps"].as_u64().unwrap();
    for s in 1..=steps {
        store.zero_grads();
        for p in &names {
            let gname = format!("input.grad.step{s}.{p}");
            if c.has(&gname) {
                store.accumulate_grad(p, c.tensor(&gname, dev)).unwrap();
            }
        }
        opt.step(&mut store).unwrap();
        for p in &names {
            c.check(
                &format!("expect.param_after_step{s}.{p}"),
                &store.get(p).unwrap().value,
                dev,
            );
            let bname = format!("expect.momentum_buffer_after_step{s}.{p}");
            if c.has(&bname) {
                let buf = opt
                    .momentum_buffer(p)
                    .unwrap_or_else(|| panic!("{case}: no buffer for {p} after step {s}"));
                c.check(&bname, buf, dev);
            }
        }
    }
}

const CASES: [&str; 2] = ["op_sgd_momentum_wd", "op_sgd_nesterov_wd"];

#[test]
fn golden_sgd_cpu() {
    for case in CASES {
        golden_sgd(case, &Device::Cpu);
    }
}

#[test]
fn golden_sgd_kernel_devices() {
    for dev in kernel_devices() {
        for case in CASES {
            golden_sgd(case, &dev);
        }
    }
}

/// The CPU reference against a hand-written f64 evaluation of the PyTorch formulas.
#[test]
fn sgd_reference_follows_pytorch_formulas() {
    let (lr, mu, wd) = (0.1f64, 0.9f64, 0.01f64);
    let w0 = [1.0f64, -2.0, 0.5];
    let grads = [[0.3f64, -0.1, 0.2], [0.05, 0.4, -0.6]];
    for nesterov in [false, true] {
        let mut w = w0;
        let mut buf = [0.0; 3];
        let mut expect_w = w0;
        let mut expect_b = [0.0; 3];
        for (s, grad) in grads.iter().enumerate() {
            let p = SgdParams {
                n: 3,
                lr: lr as f32,
                momentum: mu as f32,
                weight_decay: wd as f32,
                nesterov: nesterov as i32,
                first_step: (s == 0) as i32,
            };
            sgd_step_cpu(&mut w, grad, Some(&mut buf), &p);
            for i in 0..3 {
                let g = grad[i] + wd * expect_w[i];
                expect_b[i] = if s == 0 { g } else { mu * expect_b[i] + g };
                expect_w[i] -= lr
                    * if nesterov {
                        g + mu * expect_b[i]
                    } else {
                        expect_b[i]
                    };
            }
        }
        for i in 0..3 {
            // Hyperparameters pass through f32, hence the 1e-7 rather than exact equality.
            assert!(
                (w[i] - expect_w[i]).abs() < 1e-7,
                "nesterov={nesterov}: w[{i}] {} vs {}",
                w[i],
                expect_w[i]
            );
            assert!(
                (buf[i] - expect_b[i]).abs() < 1e-7,
                "nesterov={nesterov}: b[{i}]"
            );
        }
    }
    // Momentum 0: plain gradient descent with decay, no buffer.
    let mut w = [2.0f64];
    let p = SgdParams {
        n: 1,
        lr: 0.5,
        momentum: 0.0,
        weight_decay: 0.25,
        nesterov: 0,
        first_step: 1,
    };
    sgd_step_cpu(&mut w, &[1.0], None, &p);
    assert_eq!(w[0], 2.0 - 0.5 * (1.0 + 0.25 * 2.0));
}

fn store_with(dev: &Device) -> ParamStore {
    let mut s = ParamStore::new();
    s.add_param(
        "a",
        Tensor::from_slice(&[3], &[1.0, 2.0, 3.0], dev).unwrap(),
    )
    .unwrap();
    s.add_param(
        "frozen",
        Tensor::from_slice(&[2], &[5.0, 6.0], dev).unwrap(),
    )
    .unwrap();
    s.add_param(
        "nograd",
        Tensor::from_slice(&[2], &[7.0, 8.0], dev).unwrap(),
    )
    .unwrap();
    s.add_buffer(
        "running_mean",
        Tensor::from_slice(&[2], &[9.0, 10.0], dev).unwrap(),
    )
    .unwrap();
    s.set_trainable("frozen", false).unwrap();
    s
}

#[test]
fn sgd_skips_frozen_gradless_and_buffer_entries() {
    let dev = Device::Cpu;
    let mut store = store_with(&dev);
    // Gradients on entries that must still be skipped (weight decay would change them otherwise).
    store.get_mut("frozen").unwrap().grad =
        Some(Tensor::from_slice(&[2], &[1.0, 1.0], &dev).unwrap());
    store.get_mut("running_mean").unwrap().grad =
        Some(Tensor::from_slice(&[2], &[1.0, 1.0], &dev).unwrap());
    store
        .accumulate_grad(
            "a",
            Tensor::from_slice(&[3], &[1.0, 0.0, -1.0], &dev).unwrap(),
        )
        .unwrap();
    let mut opt = Sgd::new(0.1, 0.9, 0.5, false).unwrap();
    opt.step(&mut store).unwrap();
    let value = |n: &str| store.get(n).unwrap().value.to_vec().unwrap();
    assert_eq!(value("frozen"), vec![5.0, 6.0]);
    assert_eq!(value("nograd"), vec![7.0, 8.0]);
    assert_eq!(value("running_mean"), vec![9.0, 10.0]);
    let a = value("a");
    let expect = [
        1.0 - 0.1 * (1.0 + 0.5),
        2.0 - 0.1 * (0.0 + 1.0),
        3.0 - 0.1 * (-1.0 + 1.5),
    ];
    for (g, e) in a.iter().zip(expect) {
        assert!((g - e).abs() < 1e-6, "{a:?} vs {expect:?}");
    }
    let names: Vec<&str> = opt.momentum_buffers().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        vec!["a"],
        "only the updated parameter has a momentum buffer"
    );
    // The gradients are left for the caller.
    assert!(store.get("a").unwrap().grad.is_some());

    let mut plain = Sgd::new(0.1, 0.0, 0.0, false).unwrap();
    plain.step(&mut store).unwrap();
    assert_eq!(
        plain.momentum_buffers().count(),
        0,
        "momentum 0 keeps no buffers (as PyTorch)"
    );
}

/// Saving the buffers and restoring them into a fresh optimizer continues exactly.
#[test]
fn sgd_resumes_from_saved_momentum_buffers() {
    let dev = Device::Cpu;
    let grads: Vec<Vec<f32>> = (0..4).map(|s| random_f32(100 + s, 3)).collect();
    let run = |resume_at: Option<usize>| {
        let mut store = store_with(&dev);
        let mut opt = Sgd::new(0.05, 0.9, 1e-3, true).unwrap();
        for (s, g) in grads.iter().enumerate() {
            if resume_at == Some(s) {
                let saved: Vec<(String, Tensor)> = opt
                    .momentum_buffers()
                    .map(|(n, t)| (n.to_string(), t.clone()))
                    .collect();
                opt = Sgd::new(0.05, 0.9, 1e-3, true).unwrap();
                for (n, t) in saved {
                    opt.set_momentum_buffer(&n, t);
                }
            }
            store.zero_grads();
            store
                .accumulate_grad("a", Tensor::from_slice(&[3], g, &dev).unwrap())
                .unwrap();
            opt.step(&mut store).unwrap();
        }
        store.get("a").unwrap().value.to_vec().unwrap()
    };
    let straight = run(None);
    assert_eq!(run(Some(2)), straight);
    // Not restoring the buffer (a fresh optimizer) gives a different trajectory: the check can fail.
    let fresh = {
        let mut store = store_with(&dev);
        let mut opt = Sgd::new(0.05, 0.9, 1e-3, true).unwrap();
        for (s, g) in grads.iter().enumerate() {
            if s == 2 {
                opt = Sgd::new(0.05, 0.9, 1e-3, true).unwrap();
            }
            store.zero_grads();
            store
                .accumulate_grad("a", Tensor::from_slice(&[3], g, &dev).unwrap())
                .unwrap();
            opt.step(&mut store).unwrap();
        }
        store.get("a").unwrap().value.to_vec().unwrap()
    };
    assert_ne!(fresh, straight);
}

#[test]
fn sgd_rejects_bad_settings_and_mismatched_buffers() {
    assert!(Sgd::new(-0.1, 0.9, 0.0, false).is_err());
    assert!(Sgd::new(0.1, f32::NAN, 0.0, false).is_err());
    assert!(Sgd::new(0.1, 0.9, -1e-4, false).is_err());
    let err = Sgd::new(0.1, 0.0, 0.0, true).expect_err("nesterov without momentum");
    assert!(err.to_string().contains("nesterov"), "{err}");

    let dev = Device::Cpu;
    let mut store = store_with(&dev);
    store
        .accumulate_grad(
            "a",
            Tensor::from_slice(&[3], &[1.0, 1.0, 1.0], &dev).unwrap(),
        )
        .unwrap();
    let mut opt = Sgd::new(0.1, 0.9, 0.0, false).unwrap();
    opt.set_momentum_buffer("a", Tensor::zeros(&[4], &dev).unwrap());
    let err = opt.step(&mut store).expect_err("shape mismatch");
    assert!(err.to_string().contains("momentum buffer of `a`"), "{err}");
}

/// Kernel devices against cpu: odd sizes (partial blocks, one size past the 1024-block grid so the
/// grid-stride loop wraps), every mode, a parameter that misses a gradient on one step.
#[test]
fn sgd_kernel_agrees_with_cpu() {
    let sizes = [1usize, 37, 257, 1024 * 256 + 3];
    let settings = [
        (0.1f32, 0.0f32, 1e-4f32, false),
        (0.1, 0.9, 5e-4, false),
        (0.05, 0.9, 5e-3, true),
    ];
    for (lr, mu, wd, nesterov) in settings {
        assert_devices_agree(
            &format!("sgd lr={lr} mu={mu} wd={wd} nesterov={nesterov}"),
            1e-6,
            1e-7,
            |dev| {
                let mut store = ParamStore::new();
                for (i, &n) in sizes.iter().enumerate() {
                    store.add_param(
                        &format!("p{i}"),
                        Tensor::from_vec(&[n], random_f32(i as u64, n), dev)?,
                    )?;
                }
                let mut opt = Sgd::new(lr, mu, wd, nesterov)?;
                for step in 0..3u64 {
                    store.zero_grads();
                    for (i, &n) in sizes.iter().enumerate() {
                        if step == 1 && i == 2 {
                            continue; // no gradient for p2 at step 1
                        }
                        let g = Tensor::from_vec(
                            &[n],
                            random_f32(1000 + 10 * step + i as u64, n),
                            dev,
                        )?;
                        store.accumulate_grad(&format!("p{i}"), g)?;
                    }
                    opt.step(&mut store)?;
                }
                let mut out: Vec<Tensor> = store.iter().map(|(_, p)| p.value.clone()).collect();
                out.extend(opt.momentum_buffers().map(|(_, t)| t.clone()));
                Ok(out)
            },
        );
    }
}

// ---------- the multi-tensor kernel ----------

/// Odd sizes, empty ones among them, and more tensors than one multi-tensor launch takes
/// ([`SGD_MULTI_MAX_TENSORS`]), so the step is split over several launches.
fn many_sizes() -> Vec<usize> {
    let mut sizes = vec![0, 1, 3, 37, 0, 255, 256, 257, 1000, 5, 0, 4097];
    sizes.extend((0..SGD_MULTI_MAX_TENSORS).map(|i| (i * 37) % 301));
    sizes
}

/// Three steps over [`many_sizes`]: `p2` has no gradient at step 0 (its first step is step 1,
/// while the others' is step 0); returns the weights then the momentum buffers.
fn many_tensor_steps(
    dev: &Device,
    (lr, mu, wd, nesterov): (f32, f32, f32, bool),
    per_tensor: bool,
) -> lit_engine::Result<Vec<Tensor>> {
    let sizes = many_sizes();
    let mut store = ParamStore::new();
    for (i, &n) in sizes.iter().enumerate() {
        let w = Tensor::from_vec(&[n], random_f32(i as u64, n), dev)?;
        store.add_param(&format!("p{i}"), w)?;
    }
    let mut opt = Sgd::new(lr, mu, wd, nesterov)?;
    for step in 0..3u64 {
        store.zero_grads();
        for (i, &n) in sizes.iter().enumerate() {
            if step == 0 && i == 2 {
                continue;
            }
            let g = Tensor::from_vec(&[n], random_f32(5000 + 1000 * step + i as u64, n), dev)?;
            store.accumulate_grad(&format!("p{i}"), g)?;
        }
        if per_tensor {
            opt.step_per_tensor(&mut store)?;
        } else {
            opt.step(&mut store)?;
        }
    }
    let mut out: Vec<Tensor> = store.iter().map(|(_, p)| p.value.clone()).collect();
    out.extend(opt.momentum_buffers().map(|(_, t)| t.clone()));
    Ok(out)
}

const MULTI_SETTINGS: [(f32, f32, f32, bool); 3] = [
    (0.1, 0.0, 1e-4, false),
    (0.1, 0.9, 5e-4, false),
    (0.05, 0.9, 5e-3, true),
];

/// Multi-tensor steps on every kernel device (emu in both thread orders) against the CPU
/// reference: momentum 0, plain and Nesterov momentum, first steps that differ per tensor.
#[test]
fn sgd_multi_tensor_kernel_agrees_with_cpu() {
    for s in MULTI_SETTINGS {
        assert_devices_agree(&format!("multi-tensor sgd {s:?}"), 1e-6, 1e-7, |dev| {
            many_tensor_steps(dev, s, false)
        });
    }
}

/// The multi-tensor kernel computes exactly what the per-tensor kernel computes, bit for bit
/// (same element update), and the cpu device is unchanged by the choice of method.
#[test]
fn sgd_multi_tensor_kernel_equals_per_tensor_kernel_bitwise() {
    let mut devices = kernel_devices();
    devices.push(Device::Cpu);
    for dev in devices {
        for s in MULTI_SETTINGS {
            let multi = many_tensor_steps(&dev, s, false).unwrap();
            let single = many_tensor_steps(&dev, s, true).unwrap();
            assert_eq!(multi.len(), single.len());
            for (i, (m, p)) in multi.iter().zip(&single).enumerate() {
                let (m, p) = (m.to_vec().unwrap(), p.to_vec().unwrap());
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(
                    bits(&m) == bits(&p),
                    "{s:?} on {}: output {i} differs between the multi-tensor and per-tensor kernels",
                    dev.name()
                );
            }
        }
    }
}

/// One launch per [`SGD_MULTI_MAX_TENSORS`] non-empty parameters, against one per parameter.
#[test]
fn sgd_multi_tensor_step_launches_once_per_batch_of_tensors() {
    let dev = Device::emu_with_order(lit_engine::device::EmuOrder::Forward).unwrap();
    let sizes = many_sizes();
    let nonempty = sizes.iter().filter(|&&n| n > 0).count();
    let launches_of = |per_tensor: bool| {
        let before = dev.launches().unwrap();
        many_tensor_steps(&dev, (0.1, 0.9, 0.0, false), per_tensor).unwrap();
        (dev.launches().unwrap() - before) as usize
    };
    assert_eq!(
        launches_of(false),
        3 * nonempty.div_ceil(SGD_MULTI_MAX_TENSORS)
    );
    // Per tensor: every parameter each step (empty ones too) but p2 at step 0.
    assert_eq!(launches_of(true), 3 * sizes.len() - 1);
}

/// A short training run of a real model on emu: after every step the weights and buffers of the
/// multi-tensor path equal the per-tensor path's bit for bit.
#[test]
fn sgd_multi_tensor_training_run_equals_per_tensor_bitwise() {
    use lit_engine::models::{self, Input};
    use lit_engine::rng::Rng;
    let dev = Device::emu_with_order(lit_engine::device::EmuOrder::Reverse).unwrap();
    let run = |per_tensor: bool| -> Vec<Vec<u32>> {
        let mut store = ParamStore::new();
        let model = models::build("takd-resnet8", 10, &mut store, &dev, &mut Rng::new(3)).unwrap();
        let x = Tensor::from_vec(&[2, 3, 32, 32], random_f32(11, 2 * 3 * 32 * 32), &dev).unwrap();
        let y = lit_engine::IndexTensor::from_vec(&[2], vec![3, 7], &dev).unwrap();
        let mut opt = Sgd::new(0.1, 0.9, 1e-4, true).unwrap();
        let mut snapshots = Vec::new();
        for _ in 0..3 {
            let mut g = lit_engine::Graph::new(&dev);
            let xv = g.constant(x.clone());
            let logits = model
                .forward(&mut g, &mut store, Input::Float(xv), true)
                .unwrap();
            let loss = lit_engine::ops::loss::cross_entropy(
                &mut g,
                logits,
                &y,
                lit_engine::ops::loss::Reduction::Mean,
            )
            .unwrap();
            g.backward(loss).unwrap();
            g.accumulate_param_grads(&mut store).unwrap();
            drop(g);
            if per_tensor {
                opt.step_per_tensor(&mut store).unwrap();
            } else {
                opt.step(&mut store).unwrap();
            }
            store.zero_grads();
            let values = store.iter().map(|(_, p)| p.value.clone());
            let buffers = opt.momentum_buffers().map(|(_, t)| t.clone());
            for t in values.chain(buffers) {
                snapshots.push(t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect());
            }
        }
        snapshots
    };
    let (multi, single) = (run(false), run(true));
    assert_eq!(multi.len(), single.len());
    for (i, (m, s)) in multi.iter().zip(&single).enumerate() {
        assert!(m == s, "tensor snapshot {i} differs after the same steps");
    }
}
