//! Pooling (max 2-D/1-D, average, global average, k-max), shape ops (reshape, permute, option-A
//! shortcut), embedding and dropout: f64 finite differences of every backward, the documented
//! semantics on small examples, every kernel device against cpu (odd shapes, partial blocks, both
//! thread orders), and the errors.

use lit_engine::device::Device;
use lit_engine::nn::embedding::Embedding;
use lit_engine::nn::ParamStore;
use lit_engine::ops::dropout::{dropout, dropout2d, dropout_apply_cpu};
use lit_engine::ops::embedding::{
    embedding, embedding_backward, embedding_backward_cpu, embedding_forward, embedding_forward_cpu,
};
use lit_engine::ops::pool::{
    avg_pool2d_backward, avg_pool2d_backward_cpu, avg_pool2d_forward, avg_pool2d_forward_cpu,
    global_avg_pool, global_avg_pool_backward, global_avg_pool_backward_cpu,
    global_avg_pool_forward, global_avg_pool_forward_cpu, kmax_pool, kmax_pool_backward,
    kmax_pool_backward_cpu, kmax_pool_forward, kmax_pool_forward_cpu, max_pool1d,
    max_pool2d_backward, max_pool2d_backward_cpu, max_pool2d_forward, max_pool2d_forward_cpu,
    pool2d_params, Pool2d,
};
use lit_engine::ops::shape::ShortcutParams;
use lit_engine::ops::shape::{
    flatten, option_a_shortcut, option_a_shortcut_backward, option_a_shortcut_backward_cpu,
    option_a_shortcut_forward, option_a_shortcut_forward_cpu, permute3, permute3_cpu,
    permute3_forward, permute3_params, reshape, transpose_last2,
};
use lit_engine::rng::Rng;
use lit_engine::testing::{
    assert_devices_agree, assert_gradient, dot, kernel_devices, random_f32, random_f64,
};
use lit_engine::{Error, Graph, IndexTensor, Tensor};

fn tensor(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
}

fn all_devices() -> Vec<Device> {
    std::iter::once(Device::Cpu)
        .chain(kernel_devices())
        .collect()
}

// ---------- finite differences (f64 CPU reference) ----------

#[test]
fn max_pool_backward_matches_finite_differences() {
    // Overlapping windows (k3 s2) with padding, and non-overlapping k2 s2 on an odd size.
    for (shape, w) in [
        ([2, 3, 7, 6], Pool2d::square(3, 2, 1)),
        ([1, 2, 5, 5], Pool2d::square(2, 2, 0)),
        ([2, 2, 1, 9], Pool2d::new((1, 3), (1, 2), (0, 1))), // max_pool1d's form
    ] {
        let p = pool2d_params("test", &shape, w, false).unwrap();
        let x = random_f64(1, shape.iter().product());
        let n_out = (p.planes * p.out_h * p.out_w) as usize;
        let wts = random_f64(2, n_out);
        let loss = |x: &[f64]| {
            let (mut y, mut a) = (vec![0.0; n_out], vec![0; n_out]);
            max_pool2d_forward_cpu(x, &mut y, &mut a, &p);
            dot(&y, &wts)
        };
        let (mut y, mut arg) = (vec![0.0; n_out], vec![0; n_out]);
        max_pool2d_forward_cpu(&x, &mut y, &mut arg, &p);
        let mut dx = vec![0.0; x.len()];
        max_pool2d_backward_cpu(&wts, &arg, &mut dx, &p);
        assert_gradient(&format!("max_pool {shape:?} {w:?}"), &loss, &x, &dx, 1e-6);
    }
}

#[test]
fn avg_pool_backward_matches_finite_differences() {
    for include_pad in [true, false] {
        for (shape, w) in [
            ([2, 3, 7, 6], Pool2d::square(3, 2, 1)),
            ([2, 2, 8, 8], Pool2d::square(8, 8, 0)),
        ] {
            let p = pool2d_params("test", &shape, w, include_pad).unwrap();
            let x = random_f64(3, shape.iter().product());
            let n_out = (p.planes * p.out_h * p.out_w) as usize;
            let wts = random_f64(4, n_out);
            let loss = |x: &[f64]| {
                let mut y = vec![0.0; n_out];
                avg_pool2d_forward_cpu(x, &mut y, &p);
                dot(&y, &wts)
            };
            let mut dx = vec![0.0; x.len()];
            avg_pool2d_backward_cpu(&wts, &mut dx, &p);
            let what = format!("avg_pool {shape:?} {w:?} include_pad={include_pad}");
            assert_gradient(&what, &loss, &x, &dx, 1e-6);
        }
    }
}

#[test]
fn global_avg_and_kmax_backward_match_finite_differences() {
    let x = random_f64(5, 2 * 3 * 10);
    let w = random_f64(6, 6);
    let loss = |x: &[f64]| {
        let mut y = vec![0.0; 6];
        global_avg_pool_forward_cpu(x, &mut y, 10);
        dot(&y, &w)
    };
    let mut dx = vec![0.0; x.len()];
    global_avg_pool_backward_cpu(&w, &mut dx, 10);
    assert_gradient("global_avg_pool", &loss, &x, &dx, 1e-6);

    let (len, k) = (10, 4);
    let w = random_f64(7, 6 * k);
    let loss = |x: &[f64]| {
        let (mut y, mut idx) = (vec![0.0; 6 * k], vec![0; 6 * k]);
        kmax_pool_forward_cpu(x, &mut y, &mut idx, len, k);
        dot(&y, &w)
    };
    let (mut y, mut idx) = (vec![0.0; 6 * k], vec![0; 6 * k]);
    kmax_pool_forward_cpu(&x, &mut y, &mut idx, len, k);
    let mut dx = vec![0.0; x.len()];
    kmax_pool_backward_cpu(&w, &idx, &mut dx, len, k);
    assert_gradient("kmax_pool", &loss, &x, &dx, 1e-6);
}

#[test]
fn shape_op_backwards_match_finite_differences() {
    let shape = [2, 3, 4];
    for perm in [[0, 2, 1], [2, 0, 1], [1, 2, 0]] {
        let p = permute3_params(&shape, perm).unwrap();
        let mut inv_perm = [0; 3];
        for (j, &a) in perm.iter().enumerate() {
            inv_perm[a] = j;
        }
        let out_shape = [p.d0 as usize, p.d1 as usize, p.d2 as usize];
        let inv = permute3_params(&out_shape, inv_perm).unwrap();
        let x = random_f64(8, 24);
        let w = random_f64(9, 24);
        let loss = |x: &[f64]| {
            let mut y = vec![0.0; 24];
            permute3_cpu(x, &mut y, &p);
            dot(&y, &w)
        };
        let mut dx = vec![0.0; 24];
        permute3_cpu(&w, &mut dx, &inv);
        assert_gradient(&format!("permute3 {perm:?}"), &loss, &x, &dx, 1e-6);
    }

    let p = ShortcutParams {
        n: 2,
        c: 3,
        h: 5,
        w: 4,
        pad: 2,
        out_h: 3,
        out_w: 2,
    };
    let x = random_f64(10, 2 * 3 * 5 * 4);
    let n_out = 2 * 7 * 3 * 2;
    let w = random_f64(11, n_out);
    let loss = |x: &[f64]| {
        let mut y = vec![0.0; n_out];
        option_a_shortcut_forward_cpu(x, &mut y, &p);
        dot(&y, &w)
    };
    let mut dx = vec![0.0; x.len()];
    option_a_shortcut_backward_cpu(&w, &mut dx, &p);
    assert_gradient("option_a_shortcut", &loss, &x, &dx, 1e-6);
}

#[test]
fn embedding_and_dropout_backwards_match_finite_differences() {
    let (num, dim) = (5, 3);
    let ids = [4, 0, 4, 2, 4, 1];
    let weight = random_f64(12, num * dim);
    let w = random_f64(13, ids.len() * dim);
    let loss = |weight: &[f64]| {
        let mut y = vec![0.0; ids.len() * dim];
        embedding_forward_cpu(&ids, weight, &mut y, num, dim).unwrap();
        dot(&y, &w)
    };
    let mut dw = vec![0.0; num * dim];
    embedding_backward_cpu(&ids, &w, &mut dw, dim);
    assert_gradient("embedding dW", &loss, &weight, &dw, 1e-6);
    assert_eq!(
        &dw[3 * dim..4 * dim],
        &[0.0; 3],
        "an unused row gets no gradient"
    );

    let x = random_f64(14, 12);
    let mask = [0.0, 2.0, 2.0, 0.0];
    let w = random_f64(15, 12);
    let loss = |x: &[f64]| {
        let mut y = vec![0.0; 12];
        dropout_apply_cpu(x, &mask, &mut y, 3);
        dot(&y, &w)
    };
    let mut dx = vec![0.0; 12];
    dropout_apply_cpu(&w, &mask, &mut dx, 3);
    assert_gradient("dropout2d", &loss, &x, &dx, 1e-6);
}

// ---------- semantics on small examples, every device ----------

#[test]
fn kmax_keeps_the_k_largest_in_original_order_with_ties_to_the_lower_index() {
    // Row 0: 5, then the two 3s; row 1: with k = 2 the tie between three 2s keeps indices 0 and 2.
    let x = [1.0, 3.0, 3.0, 2.0, 5.0, 2.0, 1.0, 2.0, 2.0, -1.0];
    for dev in all_devices() {
        let t = Tensor::from_slice(&[2, 5], &x, &dev).unwrap();
        let (y, idx) = kmax_pool_forward(&t, 3).unwrap();
        assert_eq!(
            y.to_vec().unwrap(),
            [3.0, 3.0, 5.0, 2.0, 2.0, 2.0],
            "{}",
            dev.name()
        );
        assert_eq!(idx.to_vec().unwrap(), [1, 2, 4, 0, 2, 3], "{}", dev.name());
        let (y, _) = kmax_pool_forward(&t, 2).unwrap();
        assert_eq!(y.to_vec().unwrap(), [3.0, 5.0, 2.0, 2.0], "{}", dev.name());
        let dx = kmax_pool_backward(&Tensor::full(&[2, 3], 1.0, &dev).unwrap(), &idx, &[2, 5]);
        assert_eq!(
            dx.unwrap().to_vec().unwrap(),
            [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
        );
    }
}

#[test]
fn max_pool_pads_with_minus_infinity_and_routes_ties_to_the_first() {
    // All-negative input: zero padding would win, -inf padding does not. Window ties go to the
    // first element in row-major order.
    let x = [-5.0, -1.0, -3.0, -2.0, -4.0, -6.0, -7.0, -8.0, -9.0];
    let ties = [2.0, 2.0, 2.0, 2.0];
    for dev in all_devices() {
        let t = Tensor::from_slice(&[1, 1, 3, 3], &x, &dev).unwrap();
        let w = Pool2d::square(2, 2, 1);
        let (y, arg) = max_pool2d_forward(&t, w).unwrap();
        assert_eq!(
            y.to_vec().unwrap(),
            [-5.0, -1.0, -2.0, -4.0],
            "{}",
            dev.name()
        );
        assert_eq!(arg.to_vec().unwrap(), [0, 1, 3, 4]);
        let t = Tensor::from_slice(&[1, 1, 2, 2], &ties, &dev).unwrap();
        let (_, arg) = max_pool2d_forward(&t, Pool2d::square(2, 2, 0)).unwrap();
        assert_eq!(arg.to_vec().unwrap(), [0], "{}", dev.name());
        // Overlapping windows that share an arg-max accumulate: 1-D k3 s1 over [0, 9, 0, 0].
        let t = Tensor::from_slice(&[1, 1, 1, 4], &[0.0, 9.0, 0.0, 0.0], &dev).unwrap();
        let w = Pool2d::new((1, 3), (1, 1), (0, 1));
        let (_, arg) = max_pool2d_forward(&t, w).unwrap();
        let dy = Tensor::from_slice(&[1, 1, 1, 4], &[1.0, 2.0, 4.0, 8.0], &dev).unwrap();
        let dx = max_pool2d_backward(&dy, &arg, &[1, 1, 1, 4], w).unwrap();
        assert_eq!(dx.to_vec().unwrap(), [0.0, 7.0, 8.0, 0.0], "{}", dev.name());
    }
}

#[test]
fn avg_pool_divisor_follows_count_include_pad() {
    // 2x2 ones, k3 s1 p1: every window covers 4 real cells (corner) of 9 with padding.
    for dev in all_devices() {
        let t = Tensor::full(&[1, 1, 2, 2], 1.0, &dev).unwrap();
        let w = Pool2d::square(3, 1, 1);
        let y = avg_pool2d_forward(&t, w, true).unwrap().to_vec().unwrap();
        assert!(y.iter().all(|&v| (v - 4.0 / 9.0).abs() < 1e-7), "{y:?}");
        let y = avg_pool2d_forward(&t, w, false).unwrap().to_vec().unwrap();
        assert!(y.iter().all(|&v| (v - 1.0).abs() < 1e-7), "{y:?}");
    }
}

#[test]
fn option_a_shortcut_subsamples_and_pads_channels() {
    let x: Vec<f32> = (0..2 * 3 * 3).map(|v| v as f32).collect(); // [1, 2, 3, 3]
    for dev in all_devices() {
        let t = Tensor::from_slice(&[1, 2, 3, 3], &x, &dev).unwrap();
        let y = option_a_shortcut_forward(&t, 1).unwrap();
        assert_eq!(y.shape(), [1, 4, 2, 2]);
        let mut want = vec![0.0; 4];
        want.extend([0.0, 2.0, 6.0, 8.0, 9.0, 11.0, 15.0, 17.0]);
        want.extend([0.0; 4]);
        assert_eq!(y.to_vec().unwrap(), want, "{}", dev.name());
    }
}

// ---------- kernels against cpu ----------

#[test]
fn pooling_kernels_match_cpu() {
    for (shape, w) in [
        (vec![3, 5, 9, 11], Pool2d::square(3, 2, 1)),
        (vec![2, 3, 7, 7], Pool2d::square(2, 2, 0)),
        (vec![2, 3, 8, 8], Pool2d::square(8, 1, 0)),
        (vec![4, 5, 1, 37], Pool2d::new((1, 3), (1, 2), (0, 1))),
    ] {
        assert_devices_agree(&format!("max_pool2d {shape:?} {w:?}"), 1e-6, 0.0, |dev| {
            let x = tensor(&shape, 20, dev);
            let (y, arg) = max_pool2d_forward(&x, w)?;
            let dy = tensor(y.shape(), 21, dev);
            let dx = max_pool2d_backward(&dy, &arg, &shape, w)?;
            let arg_f = Tensor::from_vec(
                arg.shape(),
                arg.to_vec()?.iter().map(|&a| a as f32).collect(),
                dev,
            )?;
            Ok(vec![y, arg_f, dx])
        });
        for include_pad in [true, false] {
            let what = format!("avg_pool2d {shape:?} {w:?} include_pad={include_pad}");
            assert_devices_agree(&what, 1e-6, 1e-7, |dev| {
                let x = tensor(&shape, 22, dev);
                let y = avg_pool2d_forward(&x, w, include_pad)?;
                let dy = tensor(y.shape(), 23, dev);
                let dx = avg_pool2d_backward(&dy, &shape, w, include_pad)?;
                Ok(vec![y, dx])
            });
        }
    }
    for shape in [vec![3, 5, 9, 11], vec![2, 7, 300]] {
        assert_devices_agree(&format!("global_avg_pool {shape:?}"), 1e-6, 1e-7, |dev| {
            let x = tensor(&shape, 24, dev);
            let y = global_avg_pool_forward(&x)?;
            let dy = tensor(y.shape(), 25, dev);
            Ok(vec![y, global_avg_pool_backward(&dy, &shape)?])
        });
    }
    for (shape, k) in [(vec![3, 7, 37], 5), (vec![2, 65, 9], 9), (vec![130, 4], 1)] {
        assert_devices_agree(&format!("kmax_pool {shape:?} k={k}"), 0.0, 0.0, |dev| {
            let x = tensor(&shape, 26, dev);
            let (y, idx) = kmax_pool_forward(&x, k)?;
            let dy = tensor(y.shape(), 27, dev);
            let dx = kmax_pool_backward(&dy, &idx, &shape)?;
            Ok(vec![y, dx])
        });
    }
}

#[test]
fn shape_kernels_match_cpu() {
    let shape = [3, 5, 7];
    for perm in [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ] {
        assert_devices_agree(&format!("permute3 {perm:?}"), 0.0, 0.0, |dev| {
            Ok(vec![permute3_forward(&tensor(&shape, 30, dev), perm)?])
        });
    }
    for (shape, pad) in [([3, 5, 7, 9], 2), ([2, 16, 8, 8], 8), ([1, 3, 1, 1], 0)] {
        assert_devices_agree(&format!("option_a {shape:?} pad={pad}"), 0.0, 0.0, |dev| {
            let y = option_a_shortcut_forward(&tensor(&shape, 31, dev), pad)?;
            let dy = tensor(y.shape(), 32, dev);
            Ok(vec![y, option_a_shortcut_backward(&dy, &shape, pad)?])
        });
    }
}

#[test]
fn embedding_kernels_match_cpu() {
    // dim 45: a full and a partial 32-column block; 37 ids with many repeats over 11 rows.
    let (num, dim) = (11, 45);
    let mut rng = Rng::new(40);
    let ids: Vec<i32> = (0..37).map(|_| rng.below(num - 1) as i32).collect();
    assert_devices_agree("embedding", 1e-6, 1e-7, |dev| {
        let weight = tensor(&[num, dim], 41, dev);
        let ids = IndexTensor::from_slice(&[37], &ids, dev)?;
        let y = embedding_forward(&weight, &ids)?;
        let dy = tensor(y.shape(), 42, dev);
        Ok(vec![y, embedding_backward(&dy, &ids, num)?])
    });
}

#[test]
fn dropout_kernels_match_cpu_with_the_same_seed() {
    for (shape, p) in [(vec![3, 5, 7], 0.3f32), (vec![4, 6, 3, 3], 0.5)] {
        assert_devices_agree(&format!("dropout {shape:?} p={p}"), 0.0, 0.0, |dev| {
            let mut g = Graph::new(dev);
            let x = g.leaf(tensor(&shape, 50, dev));
            let mut rng = Rng::new(51);
            let y = dropout(&mut g, x, p, true, &mut rng)?;
            let y2 = dropout2d(&mut g, y, p, true, &mut rng)?;
            g.backward_with(y2, Some(tensor(&shape, 52, dev)))?;
            Ok(vec![g.value(y2).clone(), g.grad(x).unwrap().clone()])
        });
    }
}

// ---------- autograd, layers, errors ----------

#[test]
fn max_pool1d_and_reshape_ops_on_the_tape() {
    let dev = Device::Cpu;
    let x = Tensor::from_slice(&[1, 1, 5], &[1.0, 4.0, 2.0, 0.0, 3.0], &dev).unwrap();
    let mut g = Graph::new(&dev);
    let xv = g.leaf(x);
    let y = max_pool1d(&mut g, xv, 3, 2, 1).unwrap();
    assert_eq!(g.value(y).shape(), [1, 1, 3]);
    assert_eq!(g.value(y).to_vec().unwrap(), [4.0, 4.0, 3.0]);
    let f = flatten(&mut g, y).unwrap();
    assert_eq!(g.value(f).shape(), [1, 3]);
    g.backward_with(f, Some(Tensor::full(&[1, 3], 1.0, &dev).unwrap()))
        .unwrap();
    assert_eq!(
        g.grad(xv).unwrap().to_vec().unwrap(),
        [0.0, 2.0, 0.0, 0.0, 1.0]
    );

    // reshape shares the buffer; transpose_last2 of [2, 3, 4] is [2, 4, 3] and reverses itself.
    let t = tensor(&[2, 3, 4], 60, &dev);
    let mut g = Graph::new(&dev);
    let tv = g.leaf(t.clone());
    let r = reshape(&mut g, tv, &[6, 4]).unwrap();
    assert!(std::ptr::eq(g.value(r).buffer(), g.value(tv).buffer()));
    let tt = transpose_last2(&mut g, tv).unwrap();
    assert_eq!(g.value(tt).shape(), [2, 4, 3]);
    let v = g.value(tt).to_vec().unwrap();
    let orig = t.to_vec().unwrap();
    assert_eq!(v[4 * 3 + 3 + 2], orig[12 + 2 * 4 + 1]); // [1, 1, 2] <- [1, 2, 1]
    let back = transpose_last2(&mut g, tt).unwrap();
    assert_eq!(g.value(back).to_vec().unwrap(), orig);
    let p = permute3(&mut g, tv, [2, 0, 1]).unwrap();
    let dy = tensor(g.value(p).shape(), 61, &dev);
    g.backward_with(p, Some(dy.clone())).unwrap();
    let want = permute3_forward(&dy, [1, 2, 0]).unwrap();
    assert_eq!(
        g.grad(tv).unwrap().to_vec().unwrap(),
        want.to_vec().unwrap()
    );
    let mut g = Graph::new(&dev);
    let xv = g.leaf(tensor(&[2, 4, 3, 3], 62, &dev));
    let y = option_a_shortcut(&mut g, xv, 2).unwrap();
    assert_eq!(g.value(y).shape(), [2, 8, 2, 2]);
    // k = L keeps everything, so d(mean)/dx is 1/4 at the sub-sampled positions and 0 elsewhere.
    let y = kmax_pool(&mut g, y, 2).unwrap();
    let y = global_avg_pool(&mut g, y).unwrap();
    assert_eq!(g.value(y).shape(), [2, 8]);
    g.backward_with(y, Some(Tensor::full(&[2, 8], 1.0, &dev).unwrap()))
        .unwrap();
    let dx = g.grad(xv).unwrap().to_vec().unwrap();
    for (k, v) in dx.iter().enumerate() {
        let (h, w) = ((k / 3) % 3, k % 3);
        let want = if h % 2 == 0 && w % 2 == 0 { 0.25 } else { 0.0 };
        assert_eq!(*v, want, "dx[{k}]");
    }
}

#[test]
fn embedding_layer_registers_a_normal_table_and_looks_up_rows() {
    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    let mut rng = Rng::new(70);
    let e = Embedding::new(&mut store, "character_embedding", 69, 16, &dev, &mut rng).unwrap();
    assert_eq!(store.names(), ["character_embedding.weight"]);
    let w = store
        .get("character_embedding.weight")
        .unwrap()
        .value
        .to_vec()
        .unwrap();
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64;
    let var = w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / w.len() as f64;
    assert!(
        mean.abs() < 0.1 && (var - 1.0).abs() < 0.15,
        "N(0,1)? mean {mean} var {var}"
    );
    let ids = IndexTensor::from_slice(&[2, 2], &[0, 68, 5, 0], &dev).unwrap();
    let mut g = Graph::new(&dev);
    let y = e.forward(&mut g, &store, &ids).unwrap();
    assert_eq!(g.value(y).shape(), [2, 2, 16]);
    let yv = g.value(y).to_vec().unwrap();
    assert_eq!(&yv[16..32], &w[68 * 16..69 * 16]);
    g.backward_with(y, Some(Tensor::full(&[2, 2, 16], 1.0, &dev).unwrap()))
        .unwrap();
    g.accumulate_param_grads(&mut store).unwrap();
    let dw = store
        .get("character_embedding.weight")
        .unwrap()
        .grad
        .clone()
        .unwrap();
    let dw = dw.to_vec().unwrap();
    assert_eq!(&dw[..16], &[2.0; 16], "id 0 is used twice");
    assert_eq!(&dw[16..32], &[0.0; 16]);
}

#[test]
fn out_of_range_ids_are_errors_naming_the_id() {
    for dev in all_devices() {
        let weight = tensor(&[4, 3], 80, &dev);
        for bad in [4, -1] {
            let ids = IndexTensor::from_slice(&[5], &[0, 1, bad, 2, 7], &dev).unwrap();
            match embedding_forward(&weight, &ids) {
                Err(Error::Shape(msg)) => assert!(
                    msg.contains(&format!("id {bad} at position 2")) && msg.contains("4 rows"),
                    "{}: {msg}",
                    dev.name()
                ),
                other => panic!("expected a shape error on {}, got {other:?}", dev.name()),
            }
        }
        let mut g = Graph::new(&dev);
        let w = g.leaf(weight.clone());
        let ids = IndexTensor::from_slice(&[1], &[9], &dev).unwrap();
        assert!(embedding(&mut g, w, &ids).is_err());
    }
}

#[test]
fn dropout_is_identity_in_eval_and_for_p0_and_scales_kept_values() {
    let dev = Device::Cpu;
    let mut g = Graph::new(&dev);
    let x = g.leaf(Tensor::full(&[50, 40], 1.0, &dev).unwrap());
    let mut rng = Rng::new(90);
    assert_eq!(dropout(&mut g, x, 0.5, false, &mut rng).unwrap(), x);
    assert_eq!(dropout(&mut g, x, 0.0, true, &mut rng).unwrap(), x);
    match dropout2d(&mut g, x, 0.5, false, &mut rng) {
        Err(Error::Shape(msg)) => assert!(msg.contains("[50, 40]"), "{msg}"),
        other => panic!("dropout2d of a 2-D tensor: {other:?}"),
    }
    let y = dropout(&mut g, x, 0.25, true, &mut rng).unwrap();
    let v = g.value(y).to_vec().unwrap();
    let zeros = v.iter().filter(|&&a| a == 0.0).count();
    assert!(v.iter().all(|&a| a == 0.0 || (a - 1.0 / 0.75).abs() < 1e-6));
    assert!(
        (zeros as f64 / 2000.0 - 0.25).abs() < 0.04,
        "{zeros} zeros of 2000"
    );
    // Dropout2d drops whole planes.
    let x4 = g.leaf(Tensor::full(&[8, 16, 3, 3], 1.0, &dev).unwrap());
    let y = dropout2d(&mut g, x4, 0.5, true, &mut rng).unwrap();
    let v = g.value(y).to_vec().unwrap();
    for plane in v.chunks(9) {
        assert!(plane.iter().all(|&a| a == plane[0]) && (plane[0] == 0.0 || plane[0] == 2.0));
    }
    assert!(v.chunks(9).any(|p| p[0] == 0.0) && v.chunks(9).any(|p| p[0] == 2.0));
    assert!(dropout(&mut g, x, 1.5, true, &mut rng).is_err());
    let all = dropout(&mut g, x, 1.0, true, &mut rng).unwrap();
    assert!(g.value(all).to_vec().unwrap().iter().all(|&a| a == 0.0));
}

#[test]
fn pooling_errors_name_the_op_and_the_shapes() {
    let dev = Device::Cpu;
    let x = tensor(&[2, 3, 4], 100, &dev);
    match max_pool2d_forward(&x, Pool2d::square(2, 2, 0)) {
        Err(Error::Shape(msg)) => assert!(msg.contains("max_pool2d") && msg.contains("[2, 3, 4]")),
        other => panic!("expected a shape error, got {:?}", other.map(|_| ())),
    }
    let x4 = tensor(&[1, 1, 4, 4], 101, &dev);
    assert!(
        max_pool2d_forward(&x4, Pool2d::square(2, 2, 2)).is_err(),
        "padding > k/2"
    );
    assert!(
        avg_pool2d_forward(&x4, Pool2d::square(5, 1, 0), true).is_err(),
        "kernel > input"
    );
    match kmax_pool_forward(&x, 5) {
        Err(Error::Shape(msg)) => assert!(msg.contains("k = 5") && msg.contains("length 4")),
        other => panic!("expected a shape error, got {:?}", other.map(|_| ())),
    }
    assert!(permute3_forward(&x4, [0, 1, 2]).is_err());
    assert!(option_a_shortcut_forward(&x, 1).is_err());
}
