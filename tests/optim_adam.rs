//! Adam as PyTorch 1.0.1 executed it: the reference against hand-derived values, the difference
//! from today's Adam (eps on the bias-corrected √v̂), restored state, and kernel devices against cpu.

use lit_engine::nn::ParamStore;
use lit_engine::optim::adam::ADAM_MULTI_MAX_TENSORS;
use lit_engine::optim::{adam_step_cpu, Adam, AdamState};
use lit_engine::testing::{assert_devices_agree, random_f32};
use lit_engine::{Device, Tensor};

/// Today's PyTorch Adam (eps added to √v̂ = √v/√(1−β2^t)), f64, one parameter: `steps` steps of
/// the gradients `grads`, returns the weights.
fn modern_adam(w0: f64, grads: &[f64], lr: f64, b1: f64, b2: f64, eps: f64) -> f64 {
    let (mut w, mut m, mut v) = (w0, 0.0, 0.0);
    for (t, &g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
        let denom = v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
        w -= lr / (1.0 - b1.powi(t)) * m / denom;
    }
    w
}

/// PyTorch 1.0.1 written out by hand in f64 (SPEC-TRANSLATION §6.2).
fn torch101_adam(w0: f64, grads: &[f64], lr: f64, b1: f64, b2: f64, eps: f64) -> f64 {
    let (mut w, mut m, mut v) = (w0, 0.0, 0.0);
    for (t, &g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
        w -= lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t)) * m / (v.sqrt() + eps);
    }
    w
}

/// The f64 reference (with the optimizer's f32 scalars) over `grads`, one element.
fn reference(opt: &Adam, w0: f64, grads: &[f64]) -> f64 {
    let (mut w, mut m, mut v) = ([w0], [0.0], [0.0]);
    for (t, g) in grads.iter().enumerate() {
        adam_step_cpu(
            &mut w,
            &[*g],
            &mut m,
            &mut v,
            &opt.scalars(),
            opt.step_size(t as u64 + 1),
        );
    }
    w[0]
}

#[test]
fn reference_matches_the_hand_derived_torch_1_0_1_update() {
    let opt = Adam::lma(2.5e-4).unwrap();
    // First step by hand: m = 0.1 g, v = 0.02 g², step size lr·√0.02/0.1, so for |g| ≫ eps
    // w moves by lr·sign(g)·√0.02|g|/(√0.02|g| + eps).
    let g = 0.3f64;
    let first = reference(&opt, 1.0, &[g]);
    let s = 0.02f64.sqrt() * g;
    let want = 1.0 - 2.5e-4 * s / (s + 1e-9);
    // The step size travels as f32: ~3e-8 relative of the 2.5e-4 move.
    assert!((first - want).abs() < 2e-11, "{first} vs {want}");
    let grads = [0.3, -0.7, 0.05, 1.5, -0.2];
    let got = reference(&opt, 1.0, &grads);
    let want = torch101_adam(1.0, &grads, 2.5e-4, 0.9, 0.98, 1e-9);
    // The scalars travel as f32 (0.9f, 0.98f...), hence not exact.
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
}

#[test]
fn eps_on_sqrt_v_differs_from_modern_adam_only_where_sqrt_v_is_near_eps() {
    let opt = Adam::lma(1.0).unwrap();
    // Large gradients: eps is negligible in both forms, the updates agree.
    let grads = [0.3, -0.7, 0.05];
    let (old, new) = (
        reference(&opt, 0.0, &grads),
        modern_adam(0.0, &grads, 1.0, 0.9, 0.98, 1e-9),
    );
    assert!((old - new).abs() < 1e-6 * new.abs(), "{old} vs {new}");
    // A first step whose gradient is of the order of eps: 1.0.1 moves by √0.02/(√0.02 + 1) ≈ 0.124
    // of lr, today's Adam by 1/(1 + 1) = 0.5.
    let tiny = [1e-9];
    let old = reference(&opt, 0.0, &tiny);
    let new = modern_adam(0.0, &tiny, 1.0, 0.9, 0.98, 1e-9);
    let r = 0.02f64.sqrt();
    assert!((old + r / (r + 1.0)).abs() < 1e-6, "1.0.1 step {old}");
    assert!((new + 0.5).abs() < 1e-6, "modern step {new}");
    let step = torch101_adam(0.0, &tiny, 1.0, 0.9, 0.98, 1e-9);
    assert!(step < -0.12, "1.0.1 step {step}");
}

#[test]
fn weight_decay_adds_to_the_gradient_as_torch_1_0_1() {
    let opt = Adam::new(0.1, (0.9, 0.999), 1e-8, 0.5).unwrap();
    let got = reference(&opt, 2.0, &[0.25]);
    let want = torch101_adam(2.0, &[0.25 + 0.5 * 2.0], 0.1, 0.9, 0.999, 1e-8);
    assert!((got - want).abs() < 1e-7, "{got} vs {want}");
}

fn store_with(dev: &Device, sizes: &[usize], seed: u64) -> ParamStore {
    let mut s = ParamStore::new();
    for (i, &n) in sizes.iter().enumerate() {
        let name = format!("p{i:03}");
        s.add_param(
            &name,
            Tensor::from_vec(&[n], random_f32(seed + i as u64, n), dev).unwrap(),
        )
        .unwrap();
    }
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
    s.set_trainable("frozen", false).unwrap();
    s
}

/// Three Adam steps (the last from a restored step count) on `sizes`; outputs the weights and
/// moments of every parameter, and the frozen / gradless entries.
fn three_steps(dev: &Device, sizes: &[usize]) -> lit_engine::Result<Vec<Tensor>> {
    let mut store = store_with(dev, sizes, 11);
    let mut opt = Adam::lma(4.9411e-4)?;
    for step in 0..3u64 {
        store.zero_grads();
        for (i, &n) in sizes.iter().enumerate() {
            // Some gradients tiny (√v near eps), some large.
            let scale = if i % 2 == 0 { 1e-8 } else { 3.0 };
            let g: Vec<f32> = random_f32(100 + 7 * step + i as u64, n)
                .iter()
                .map(|v| v * scale)
                .collect();
            store.accumulate_grad(&format!("p{i:03}"), Tensor::from_vec(&[n], g, dev)?)?;
        }
        store.get_mut("frozen")?.grad = Some(Tensor::from_slice(&[2], &[1.0, 1.0], dev)?);
        if step == 1 {
            // A state restored mid-run (as from a checkpoint) at step 4000.
            let s = opt.state("p001").expect("state after a step");
            let (m, v) = (s.exp_avg.to_vec()?, s.exp_avg_sq.to_vec()?);
            let shape = s.exp_avg.shape().to_vec();
            opt.set_state(
                "p001",
                AdamState {
                    step: 4000,
                    exp_avg: Tensor::from_vec(&shape, m, &Device::Cpu)?,
                    exp_avg_sq: Tensor::from_vec(&shape, v, &Device::Cpu)?,
                },
            );
        }
        opt.step(&mut store)?;
    }
    let mut out = Vec::new();
    for (i, _) in sizes.iter().enumerate() {
        let name = format!("p{i:03}");
        out.push(store.get(&name)?.value.clone());
        let s = opt.state(&name).expect("state");
        let want_step = if i == 1 { 4002 } else { 3 };
        assert_eq!(s.step, want_step, "{name}");
        out.push(s.exp_avg.clone());
        out.push(s.exp_avg_sq.clone());
    }
    assert!(opt.state("frozen").is_none() && opt.state("nograd").is_none());
    out.push(store.get("frozen")?.value.clone());
    out.push(store.get("nograd")?.value.clone());
    Ok(out)
}

#[test]
fn kernel_devices_match_the_reference_bit_for_bit() {
    // Odd sizes, an empty parameter, one larger than a block.
    let sizes = [1, 7, 0, 33, 300, 5];
    assert_devices_agree("adam", 0.0, 0.0, |dev| three_steps(dev, &sizes));
}

#[test]
fn more_parameters_than_one_launch_holds() {
    let sizes: Vec<usize> = (0..ADAM_MULTI_MAX_TENSORS + 9).map(|i| 1 + i % 5).collect();
    assert_devices_agree("adam multi-launch", 0.0, 0.0, |dev| {
        three_steps(dev, &sizes)
    });
}

#[test]
fn a_state_of_the_wrong_shape_is_refused_before_anything_changes() {
    let dev = Device::Cpu;
    let mut store = store_with(&dev, &[3, 2], 1);
    for n in ["p000", "p001"] {
        let len = store.get(n).unwrap().value.numel();
        store
            .accumulate_grad(n, Tensor::from_vec(&[len], vec![1.0; len], &dev).unwrap())
            .unwrap();
    }
    let before = store.get("p000").unwrap().value.to_vec().unwrap();
    let mut opt = Adam::lma(1e-3).unwrap();
    opt.set_state(
        "p001",
        AdamState {
            step: 3,
            exp_avg: Tensor::zeros(&[5], &dev).unwrap(),
            exp_avg_sq: Tensor::zeros(&[5], &dev).unwrap(),
        },
    );
    let err = opt.step(&mut store).unwrap_err().to_string();
    assert!(err.contains("exp_avg of `p001`"), "{err}");
    assert_eq!(store.get("p000").unwrap().value.to_vec().unwrap(), before);
    assert!(Adam::new(1e-3, (1.0, 0.98), 1e-9, 0.0).is_err());
    assert!(Adam::new(-1.0, (0.9, 0.98), 1e-9, 0.0).is_err());
}
