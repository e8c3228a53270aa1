//! PReLU (scalar), Swish, APLU and LMA: f64 finite differences of every backward, the LMA
//! semantics (statistics, running state in train and eval, segments), kernel devices against cpu
//! on odd shapes in both thread orders, determinism of the parameter-gradient reductions, and the
//! `nn::Activation` layer.

use lit_engine::nn::activation::{Activation, ActivationSpec};
use lit_engine::nn::ParamStore;
use lit_engine::ops::activation as act;
use lit_engine::ops::lma::{self, LmaConfig};
use lit_engine::rng::Rng;
use lit_engine::testing::{
    assert_devices_agree, assert_gradient, dot, kernel_devices, random_f32, random_f64,
};
use lit_engine::{Device, Graph, IndexTensor, Tensor};

/// Moves every value of `x` at least `margin` away from each point of `kinks`.
fn away_from(x: &mut [f64], kinks: &[f64], margin: f64) {
    for v in x.iter_mut() {
        for &k in kinks {
            if (*v - k).abs() < margin {
                *v = k + if *v >= k { margin } else { -margin };
            }
        }
    }
}

// ---------- finite differences (f64 CPU reference) ----------

#[test]
fn prelu_backward_matches_finite_differences() {
    let n = 17;
    let mut x = random_f64(1, n);
    away_from(&mut x, &[0.0], 1e-3);
    let w = random_f64(2, n);
    let alpha = 0.3;
    // Variables: [x..., alpha].
    let f = |v: &[f64]| {
        let mut y = vec![0.0; n];
        act::prelu_forward_cpu(&v[..n], v[n], &mut y);
        dot(&y, &w)
    };
    let mut dx = vec![0.0; n];
    let da = act::prelu_backward_cpu(&x, alpha, &w, &mut dx);
    let mut vars = x.clone();
    vars.push(alpha);
    dx.push(da);
    assert_gradient("prelu (x, alpha)", &f, &vars, &dx, 1e-8);
    // relu'(0) = 0 on both sides: dx at exactly 0 is 0.
    let mut d0 = [1.0];
    act::prelu_backward_cpu(&[0.0], alpha, &[1.0], &mut d0);
    assert_eq!(d0[0], 0.0);
}

#[test]
fn swish_backward_matches_finite_differences() {
    let (dim, n) = (5, 30);
    let x = random_f64(3, n);
    let betas: Vec<f64> = random_f64(4, dim).iter().map(|b| 1.0 + 0.5 * b).collect();
    let w = random_f64(5, n);
    let f = |v: &[f64]| {
        let mut y = vec![0.0; n];
        act::swish_forward_cpu(&v[..n], &v[n..], &mut y);
        dot(&y, &w)
    };
    let (mut dx, mut db) = (vec![0.0; n], vec![0.0; dim]);
    act::swish_backward_cpu(&x, &betas, &w, &mut dx, &mut db);
    let vars: Vec<f64> = x.iter().chain(&betas).copied().collect();
    let analytic: Vec<f64> = dx.iter().chain(&db).copied().collect();
    assert_gradient("swish (x, betas)", &f, &vars, &analytic, 1e-7);
}

#[test]
fn swish_uses_flat_index_mod_dim_not_the_channel() {
    // x [2, 2, 3] viewed as rows of dim 2: element 3 (channel 0 of a 3-wide last axis) uses beta[1].
    let x = [0.7f64; 12];
    let betas = [1.0, -2.0];
    let mut y = [0.0; 12];
    act::swish_forward_cpu(&x, &betas, &mut y);
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    for (i, &v) in y.iter().enumerate() {
        let want = 0.7 * sig(betas[i % 2] * 0.7);
        assert!((v - want).abs() < 1e-15, "element {i}: {v} vs {want}");
    }
}

#[test]
fn aplu_backward_matches_finite_differences() {
    let (dim, hinges, rows) = (3, 4, 7);
    let n = dim * rows;
    let pn = dim * hinges;
    let alphas = random_f64(6, pn);
    let betas = random_f64(7, pn);
    let mut x = random_f64(8, n);
    let mut kinks = betas.clone();
    kinks.push(0.0);
    away_from(&mut x, &kinks, 1e-3);
    let w = random_f64(9, n);
    // Variables: [x..., alphas..., betas...]; betas kept away from the x values too.
    let f = |v: &[f64]| {
        let mut y = vec![0.0; n];
        act::aplu_forward_cpu(&v[..n], &v[n..n + pn], &v[n + pn..], dim, &mut y);
        dot(&y, &w)
    };
    let mut dx = vec![0.0; n];
    let (mut da, mut db) = (vec![0.0; pn], vec![0.0; pn]);
    act::aplu_backward_cpu(&x, &alphas, &betas, dim, &w, &mut dx, &mut da, &mut db);
    let vars: Vec<f64> = x.iter().chain(&alphas).chain(&betas).copied().collect();
    let analytic: Vec<f64> = dx.iter().chain(&da).chain(&db).copied().collect();
    assert_gradient("aplu (x, alphas, betas)", &f, &vars, &analytic, 1e-7);
}

/// Smallest distance of any element's `t` to an interior segment boundary.
fn boundary_margin(x: &[f64], m: f64, s: f64, bins: usize) -> f64 {
    let step = (6.0 * s) / bins as f64;
    x.iter()
        .map(|&v| {
            let t = ((v - m) + 3.0 * s) / step;
            (1..bins)
                .map(|j| (t - j as f64).abs())
                .fold(f64::INFINITY, f64::min)
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn lma_backward_matches_finite_differences() {
    let (n, bins) = (40, 8);
    // A deterministic input with every element well inside its segment.
    let x = (1..)
        .map(|seed| random_f64(100 + seed, n))
        .find(|x| {
            let mo = lma::lma_moments_cpu(x, 0.0, 0.0, 0.99);
            boundary_margin(x, mo.batch_mean, mo.batch_std, bins) > 1e-3
        })
        .unwrap();
    let alphas = random_f64(10, bins);
    let betas = random_f64(11, bins);
    let w = random_f64(12, n);
    for train in [true, false] {
        let (mv_mean, mv_std) = (0.05, 0.9);
        // Eval mode segments follow the running statistics, which also move with x.
        let f = |v: &[f64]| {
            let xs = &v[..n];
            let mo = lma::lma_moments_cpu(xs, mv_mean, mv_std, 0.99);
            let (m, s) = mo.centre_scale(train);
            let (mut y, mut idx) = (vec![0.0; n], vec![0; n]);
            lma::lma_forward_cpu(xs, &v[n..n + bins], &v[n + bins..], m, s, &mut y, &mut idx);
            dot(&y, &w)
        };
        let mo = lma::lma_moments_cpu(&x, mv_mean, mv_std, 0.99);
        let (m, s) = mo.centre_scale(train);
        assert!(
            boundary_margin(&x, m, s, bins) > 1e-4,
            "test input too close to a boundary"
        );
        let (mut y, mut idx) = (vec![0.0; n], vec![0; n]);
        lma::lma_forward_cpu(&x, &alphas, &betas, m, s, &mut y, &mut idx);
        let mut dx = vec![0.0; n];
        let (mut da, mut db) = (vec![0.0; bins], vec![0.0; bins]);
        lma::lma_backward_cpu(&x, &alphas, &idx, &w, &mut dx, &mut da, &mut db);
        let vars: Vec<f64> = x.iter().chain(&alphas).chain(&betas).copied().collect();
        let analytic: Vec<f64> = dx.iter().chain(&da).chain(&db).copied().collect();
        assert_gradient(
            &format!("lma (x, alphas, betas) train={train}"),
            &f,
            &vars,
            &analytic,
            1e-7,
        );
    }
}

// ---------- LMA semantics ----------

#[test]
fn lma_statistics_running_state_and_segments_follow_the_spec() {
    // x = 0..9: mean 4.5, unbiased std sqrt(55/6).
    let x: Vec<f32> = (0..10).map(|i| i as f32).collect();
    let std = (55.0f64 / 6.0).sqrt();
    let dev = Device::Cpu;
    let t = |v: &[f32], s: &[usize]| Tensor::from_slice(s, v, &dev).unwrap();
    let xt = t(&x, &[2, 5]);
    let alphas = t(&[0.0; 4], &[4]);
    let betas = t(&[0.0, 0.0, 0.0, 10.0], &[4]);
    let (mv_mean, mv_std) = (t(&[1.0], &[]), t(&[2.0], &[]));
    for train in [true, false] {
        let cfg = LmaConfig::new(4, train);
        let out = lma::lma_forward(&xt, &alphas, &betas, &mv_mean, &mv_std, cfg).unwrap();
        let item = |t: &Tensor| t.item().unwrap() as f64;
        assert!((item(&out.stats.batch_mean) - 4.5).abs() < 1e-6);
        assert!((item(&out.stats.batch_std) - std).abs() < 1e-6);
        // Updated on every call, train and eval.
        let new_mean = 1.0 * 0.99 + 4.5 * (1.0 - 0.99);
        let new_std = 2.0 * 0.99 + std * (1.0 - 0.99);
        assert!((item(&out.stats.mv_mean) - new_mean).abs() < 1e-6);
        assert!((item(&out.stats.mv_std) - new_std).abs() < 1e-6);
        let (m, s) = if train {
            (4.5, std)
        } else {
            (new_mean, new_std)
        };
        let idx = out.segment_index.to_vec().unwrap();
        let y = out.y.to_vec().unwrap();
        for (i, &v) in x.iter().enumerate() {
            let t = ((v as f64 - m) + 3.0 * s) / ((6.0 * s) / 4.0);
            let want = (t.trunc() as i64).clamp(0, 3) as i32;
            assert_eq!(idx[i], want, "train={train} x={v} t={t}");
            // init_alpha = [0, 0, 1, 1]; betas[3] = 10.
            let slope = if want >= 2 { 1.0 } else { 0.0 };
            let bias = if want == 3 { 10.0 } else { 0.0 };
            assert_eq!(y[i], slope * v + bias, "train={train} x={v}");
        }
    }
}

#[test]
fn lma_rejects_inputs_it_cannot_normalise() {
    let dev = Device::Cpu;
    let z = |s: &[usize]| Tensor::zeros(s, &dev).unwrap();
    let one = Tensor::from_slice(&[1], &[3.0], &dev).unwrap();
    let cfg = LmaConfig::new(8, true);
    assert!(lma::lma_forward(&one, &z(&[8]), &z(&[8]), &z(&[]), &z(&[]), cfg).is_err());
    let x = z(&[4, 3]);
    assert!(lma::lma_forward(&x, &z(&[7]), &z(&[8]), &z(&[]), &z(&[]), cfg).is_err());
    let bad = LmaConfig::new(0, true);
    assert!(lma::lma_forward(&x, &z(&[0]), &z(&[0]), &z(&[]), &z(&[]), bad).is_err());
}

#[test]
fn activations_reject_shapes_that_do_not_fit() {
    let dev = Device::Cpu;
    let x = Tensor::zeros(&[3, 5], &dev).unwrap();
    let b4 = Tensor::zeros(&[4], &dev).unwrap();
    assert!(
        act::swish_forward(&x, &b4).is_err(),
        "15 elements in rows of 4"
    );
    let a = Tensor::zeros(&[5, 6], &dev).unwrap();
    let b = Tensor::zeros(&[5, 5], &dev).unwrap();
    assert!(
        act::aplu_forward(&x, &a, &b).is_err(),
        "alphas and betas differ"
    );
    let alpha2 = Tensor::zeros(&[2], &dev).unwrap();
    assert!(
        act::prelu_forward(&x, &alpha2).is_err(),
        "PReLU alpha is one scalar"
    );
}

// ---------- kernel devices against cpu ----------

fn tensor(seed: u64, shape: &[usize], dev: &Device) -> Tensor {
    Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
}

fn index_as_f32(t: &IndexTensor) -> Tensor {
    let v: Vec<f32> = t.to_vec().unwrap().into_iter().map(|i| i as f32).collect();
    Tensor::from_vec(t.shape(), v, t.device()).unwrap()
}

#[test]
fn prelu_kernels_match_cpu() {
    // 5003 elements: several partial-sum blocks and a partial last block.
    for shape in [vec![3, 7, 11], vec![5003]] {
        assert_devices_agree("prelu", 1e-6, 1e-7, |dev| {
            let x = tensor(20, &shape, dev);
            let alpha = Tensor::scalar(0.37, dev)?;
            let dy = tensor(21, &shape, dev);
            let y = act::prelu_forward(&x, &alpha)?;
            let (dx, da) = act::prelu_backward(&x, &alpha, &dy)?;
            Ok(vec![y, dx, da])
        });
    }
}

#[test]
fn swish_kernels_match_cpu() {
    // dim 7 over [3, 5, 7]; dim 3 over [130, 3] (130 rows: several row chunks, a partial one);
    // dim 33 over [2, 3, 33] (a partial block of 32 columns).
    for (shape, dim) in [(vec![3, 5, 7], 7), (vec![130, 3], 3), (vec![2, 3, 33], 33)] {
        assert_devices_agree("swish", 1e-5, 1e-6, |dev| {
            let x = tensor(22, &shape, dev);
            let betas = tensor(23, &[dim], dev);
            let dy = tensor(24, &shape, dev);
            let y = act::swish_forward(&x, &betas)?;
            let (dx, db) = act::swish_backward(&x, &betas, &dy)?;
            Ok(vec![y, dx, db])
        });
    }
}

#[test]
fn aplu_kernels_match_cpu() {
    for (shape, dim, hinges) in [(vec![4, 3, 5], 3, 6), (vec![131, 5], 5, 7), (vec![9], 9, 1)] {
        assert_devices_agree("aplu", 1e-5, 1e-6, |dev| {
            let x = tensor(25, &shape, dev);
            let a = tensor(26, &[dim, hinges], dev);
            let b = tensor(27, &[dim, hinges], dev);
            let dy = tensor(28, &shape, dev);
            let y = act::aplu_forward(&x, &a, &b)?;
            let (dx, da, db) = act::aplu_backward(&x, &a, &b, &dy)?;
            Ok(vec![y, dx, da, db])
        });
    }
}

#[test]
fn lma_kernels_match_cpu() {
    // Odd sizes; 4099 elements span several statistics blocks; K = 5 and K = 40 (a smaller block).
    for (shape, bins) in [(vec![3, 5, 7], 8), (vec![4099], 5), (vec![6, 37], 40)] {
        for train in [true, false] {
            assert_devices_agree("lma", 1e-6, 1e-7, |dev| {
                let x = tensor(29, &shape, dev);
                let a = tensor(30, &[bins], dev);
                let b = tensor(31, &[bins], dev);
                let (mm, ms) = (Tensor::scalar(0.1, dev)?, Tensor::scalar(0.8, dev)?);
                let cfg = LmaConfig::new(bins, train);
                let out = lma::lma_forward(&x, &a, &b, &mm, &ms, cfg)?;
                let dy = tensor(32, &shape, dev);
                let (dx, da, db) = lma::lma_backward(&x, &a, &out.segment_index, &dy)?;
                let s = out.stats;
                Ok(vec![
                    out.y,
                    index_as_f32(&out.segment_index),
                    s.batch_mean,
                    s.batch_std,
                    s.mv_mean,
                    s.mv_std,
                    dx,
                    da,
                    db,
                ])
            });
        }
    }
}

#[test]
fn lma_segments_are_identical_on_every_device_and_reductions_reproducible() {
    let shape = [7, 301];
    let run = |dev: &Device| {
        let x = tensor(33, &shape, dev);
        let a = tensor(34, &[8], dev);
        let b = tensor(35, &[8], dev);
        let (mm, ms) = (
            Tensor::scalar(0.0, dev).unwrap(),
            Tensor::scalar(0.0, dev).unwrap(),
        );
        let out = lma::lma_forward(&x, &a, &b, &mm, &ms, LmaConfig::new(8, true)).unwrap();
        let dy = tensor(36, &shape, dev);
        let (_, da, db) = lma::lma_backward(&x, &a, &out.segment_index, &dy).unwrap();
        (
            out.segment_index.to_vec().unwrap(),
            da.to_vec().unwrap(),
            db.to_vec().unwrap(),
        )
    };
    let (want_idx, ..) = run(&Device::Cpu);
    for dev in kernel_devices() {
        let first = run(&dev);
        assert_eq!(first.0, want_idx, "segments on {}", dev.name());
        let again = run(&dev);
        assert_eq!(first, again, "two runs on {} differ", dev.name());
    }
}

// ---------- nn::Activation ----------

#[test]
fn activation_layers_register_seed_names_and_lma_updates_its_state() {
    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    let spec = ActivationSpec {
        dim: Some(6),
        num_bins: 8,
    };
    let mut rng = Rng::new(5);
    let lma_layer =
        Activation::new(&mut store, "activations.0", "lma", spec, &dev, &mut rng).unwrap();
    let prelu = Activation::new(&mut store, "act1", "PReLU", spec, &dev, &mut rng).unwrap();
    let swish = Activation::new(&mut store, "act2", "swish", spec, &dev, &mut rng).unwrap();
    let aplu = Activation::new(&mut store, "act3", "aplu", spec, &dev, &mut rng).unwrap();
    let relu = Activation::new(&mut store, "act4", "relu", spec, &dev, &mut rng).unwrap();
    assert_eq!(
        store.names(),
        [
            "activations.0.alphas",
            "activations.0.betas",
            "activations.0.mv_mean",
            "activations.0.mv_std",
            "act1.alpha",
            "act2.betas",
            "act3.alphas",
            "act3.betas",
        ]
    );
    assert_eq!(store.get("act3.alphas").unwrap().value.shape(), [6, 6]);
    assert_eq!(
        store.get("act1.alpha").unwrap().value.shape(),
        [] as [usize; 0]
    );
    // Only the 8+8 LMA values, 1 PReLU, 6 Swish and 2*36 APLU values are parameters.
    assert_eq!(store.num_parameters(), 16 + 1 + 6 + 72);

    let x = Tensor::from_vec(&[4, 6], random_f32(40, 24), &dev).unwrap();
    for train in [false, true] {
        let mut g = Graph::new(&dev);
        let xv = g.constant(x.clone());
        let before = store
            .get("activations.0.mv_mean")
            .unwrap()
            .value
            .item()
            .unwrap();
        let (y, stats) = lma_layer
            .forward_with_stats(&mut g, &mut store, xv, train)
            .unwrap();
        let stats = stats.expect("LMA reports its statistics");
        let after = store
            .get("activations.0.mv_mean")
            .unwrap()
            .value
            .item()
            .unwrap();
        assert_eq!(after, stats.mv_mean.item().unwrap());
        assert_ne!(before, after, "running mean must move in train={train}");
        let mut h = y;
        for layer in [&prelu, &swish, &aplu, &relu] {
            h = layer.forward(&mut g, &mut store, h, train).unwrap();
        }
        assert_eq!(g.value(h).shape(), [4, 6]);
        let loss = lit_engine::ops::reduce::sum_all(&mut g, h).unwrap();
        g.backward(loss).unwrap();
        g.accumulate_param_grads(&mut store).unwrap();
        for name in [
            "activations.0.alphas",
            "act1.alpha",
            "act2.betas",
            "act3.alphas",
        ] {
            assert!(
                store.get(name).unwrap().grad.is_some(),
                "{name} has no gradient"
            );
        }
        store.zero_grads();
    }

    let err = Activation::new(&mut store, "a", "gelu", spec, &dev, &mut rng).unwrap_err();
    assert!(err.to_string().contains("gelu"), "{err}");
    let no_dim = ActivationSpec::default();
    assert!(Activation::new(&mut store, "s", "swish", no_dim, &dev, &mut rng).is_err());
}

#[test]
fn lma_of_a_constant_input_uses_segment_zero_on_every_device() {
    // std = 0 makes t = 0/0: every element goes to segment 0, y = alphas[0]*x + betas[0].
    let mut devices = kernel_devices();
    devices.insert(0, Device::Cpu);
    for dev in devices {
        let x = Tensor::full(&[3, 3], 2.0, &dev).unwrap();
        let a = Tensor::from_slice(&[4], &[0.5, 0.0, 0.0, 0.0], &dev).unwrap();
        let b = Tensor::from_slice(&[4], &[0.25, 0.0, 0.0, 0.0], &dev).unwrap();
        let z = Tensor::scalar(0.0, &dev).unwrap();
        let out = lma::lma_forward(&x, &a, &b, &z, &z, LmaConfig::new(4, true)).unwrap();
        assert_eq!(
            out.segment_index.to_vec().unwrap(),
            [0; 9],
            "{}",
            dev.name()
        );
        assert_eq!(out.y.to_vec().unwrap(), [1.25; 9], "{}", dev.name());
        assert_eq!(out.stats.batch_std.item().unwrap(), 0.0);
    }
}

/// APLU's parameters of a `cfn-spec2-aplu8` student built from `seed`: `(alphas, betas)` of every
/// APLU layer, flattened in registration order.
fn aplu_init(seed: u64) -> (Vec<f32>, Vec<f32>) {
    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    lit_engine::models::build("cfn-spec2-aplu8", 10, &mut store, &dev, &mut Rng::new(seed))
        .unwrap();
    let (mut alphas, mut betas) = (Vec::new(), Vec::new());
    for name in store.names() {
        let v = store.get(&name).unwrap().value.to_vec().unwrap();
        if name.starts_with("activations.") && name.ends_with(".alphas") {
            alphas.extend(v);
        } else if name.starts_with("activations.") && name.ends_with(".betas") {
            betas.extend(v);
        }
    }
    (alphas, betas)
}

#[test]
fn aplu_starts_from_the_seeds_distribution_drawn_from_the_model_seed() {
    // SPEC-NOTES §6: alphas ~ U(-0.5, 0.5), betas ~ N(0, 0.5^2); zeros (APLU = ReLU) is wrong.
    let (alphas, betas) = aplu_init(11);
    assert!(
        alphas.len() > 1000 && alphas.len() == betas.len(),
        "{}",
        alphas.len()
    );
    let moments = |v: &[f32]| {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    };
    assert!(
        alphas.iter().all(|&a| (-0.5..0.5).contains(&a)),
        "alpha outside [-0.5, 0.5)"
    );
    let (mean, std) = moments(&alphas);
    // U(-0.5, 0.5): mean 0, std 1/sqrt(12) = 0.2887.
    assert!(
        mean.abs() < 0.03 && (std - 0.2887).abs() < 0.02,
        "alphas {mean} {std}"
    );
    let (mean, std) = moments(&betas);
    assert!(
        mean.abs() < 0.05 && (std - 0.5).abs() < 0.03,
        "betas {mean} {std}"
    );
    let beyond = betas.iter().filter(|b| b.abs() > 0.5).count() as f64 / betas.len() as f64;
    // P(|N(0, 0.5^2)| > 0.5) = 0.317: a normal, not a uniform of the same spread.
    assert!(
        (beyond - 0.317).abs() < 0.04,
        "betas beyond one std: {beyond}"
    );
    assert_eq!(
        aplu_init(11),
        (alphas.clone(), betas),
        "same seed, same values"
    );
    assert_ne!(aplu_init(12).0, alphas, "two seeds give the same alphas");
}

#[test]
fn nn_activation_aplu_draws_alphas_then_betas_from_the_given_rng() {
    let dev = Device::Cpu;
    let spec = ActivationSpec {
        dim: Some(5),
        num_bins: 6,
    };
    let mut store = ParamStore::new();
    Activation::new(&mut store, "a", "aplu", spec, &dev, &mut Rng::new(9)).unwrap();
    let mut rng = Rng::new(9);
    let want_alphas = rng.uniform_vec(20, -0.5, 0.5);
    let want_betas = rng.normal_vec(20, 0.5);
    assert_eq!(
        store.get("a.alphas").unwrap().value.to_vec().unwrap(),
        want_alphas
    );
    assert_eq!(
        store.get("a.betas").unwrap().value.to_vec().unwrap(),
        want_betas
    );
}
