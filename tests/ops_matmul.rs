//! GEMM, matmul and linear: f64 finite differences of the CPU reference, autograd wiring on cpu,
//! the PyTorch golden case, and every kernel device against cpu (odd shapes, partial tiles).

use lit_engine::device::Device;
use lit_engine::nn::linear::Linear;
use lit_engine::nn::ParamStore;
use lit_engine::ops::matmul::{
    gemm, gemm_backward, gemm_backward_cpu, gemm_cpu, gemm_into, linear, linear_backward,
    linear_backward_cpu, linear_forward, linear_forward_cpu, matmul, matmul_forward, GemmParams,
};
use lit_engine::ops::reduce::sum_all;
use lit_engine::rng::Rng;
use lit_engine::testing::{
    assert_close, assert_devices_agree, assert_gradient, check_close, dot, random_f32, random_f64,
};
use lit_engine::{Error, Graph, Tensor};

const TRANSPOSES: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

/// Stored shape of A (`[m,k]` or `[k,m]`) and B (`[k,n]` or `[n,k]`).
fn stored_shapes(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> ([usize; 2], [usize; 2]) {
    (
        if ta { [k, m] } else { [m, k] },
        if tb { [n, k] } else { [k, n] },
    )
}

/// Plain loops with explicit leading dimensions, alpha and beta: the definition `gemm_cpu` must meet.
fn gemm_loops(p: &GemmParams, a: &[f64], b: &[f64], c: &mut [f64]) {
    for i in 0..p.m as usize {
        for j in 0..p.n as usize {
            let mut acc = 0.0;
            for q in 0..p.k as usize {
                let av = if p.trans_a != 0 {
                    a[q * p.lda as usize + i]
                } else {
                    a[i * p.lda as usize + q]
                };
                let bv = if p.trans_b != 0 {
                    b[j * p.ldb as usize + q]
                } else {
                    b[q * p.ldb as usize + j]
                };
                acc += av * bv;
            }
            let dst = &mut c[i * p.ldc as usize + j];
            *dst = p.alpha as f64 * acc
                + if p.beta == 0.0 {
                    0.0
                } else {
                    p.beta as f64 * *dst
                };
        }
    }
}

#[test]
fn gemm_cpu_honours_leading_dims_alpha_beta_and_batch() {
    let (m, n, k) = (5, 7, 3);
    for (ta, tb) in TRANSPOSES {
        let mut p = GemmParams::dense(m, n, k, ta, tb)
            .unwrap()
            .with_scale(0.5, -2.0);
        // Pad every stored row by 2 and every batch element by 3 so wrong strides show up.
        p.lda += 2;
        p.ldb += 2;
        p.ldc += 2;
        let (ra, rb) = (if ta { k } else { m }, if tb { n } else { k });
        p.stride_a = (ra * p.lda as usize + 3) as i64;
        p.stride_b = (rb * p.ldb as usize + 3) as i64;
        p.stride_c = (m * p.ldc as usize + 3) as i64;
        let batch = 2;
        let a = random_f64(1, batch * p.stride_a as usize);
        let b = random_f64(2, batch * p.stride_b as usize);
        let c0 = random_f64(3, batch * p.stride_c as usize);
        let mut got = c0.clone();
        gemm_cpu(&p, batch, &a, &b, &mut got);
        let mut want = c0.clone();
        for z in 0..batch {
            let (sa, sb, sc) = (
                z * p.stride_a as usize,
                z * p.stride_b as usize,
                z * p.stride_c as usize,
            );
            gemm_loops(&p, &a[sa..], &b[sb..], &mut want[sc..]);
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 1e-12, "ta={ta} tb={tb} [{i}]: {g} vs {w}");
        }
    }
}

#[test]
fn gemm_backward_matches_finite_differences_in_every_transpose() {
    let (m, n, k) = (3, 4, 5);
    for (ta, tb) in TRANSPOSES {
        let a = random_f64(10, m * k);
        let b = random_f64(11, k * n);
        let weights = random_f64(12, m * n); // dL/dC for L = sum(C * weights)
        let p = GemmParams::dense(m, n, k, ta, tb).unwrap();
        let forward = |a: &[f64], b: &[f64]| {
            let mut c = vec![0.0; m * n];
            gemm_cpu(&p, 1, a, b, &mut c);
            dot(&c, &weights)
        };
        let (mut da, mut db) = (vec![0.0; m * k], vec![0.0; k * n]);
        gemm_backward_cpu(
            (m, n, k),
            ta,
            tb,
            &a,
            &b,
            &weights,
            Some(&mut da),
            Some(&mut db),
        );
        assert_gradient(
            &format!("gemm dA ta={ta} tb={tb}"),
            &|x| forward(x, &b),
            &a,
            &da,
            1e-6,
        );
        assert_gradient(
            &format!("gemm dB ta={ta} tb={tb}"),
            &|x| forward(&a, x),
            &b,
            &db,
            1e-6,
        );
    }
}

#[test]
fn linear_backward_matches_finite_differences_with_and_without_bias() {
    let (rows, in_f, out_f) = (4, 6, 3);
    let x = random_f64(20, rows * in_f);
    let w = random_f64(21, out_f * in_f);
    let b = random_f64(22, out_f);
    let weights = random_f64(23, rows * out_f);
    for with_bias in [true, false] {
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = vec![0.0; rows * out_f];
            linear_forward_cpu(x, w, with_bias.then_some(b), &mut y, rows, in_f, out_f);
            dot(&y, &weights)
        };
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; out_f]);
        linear_backward_cpu(
            &x,
            &w,
            &weights,
            Some(&mut dx),
            Some(&mut dw),
            Some(&mut db),
            rows,
            in_f,
            out_f,
        );
        let what = if with_bias {
            "linear"
        } else {
            "linear (no bias)"
        };
        assert_gradient(&format!("{what} dx"), &|v| loss(v, &w, &b), &x, &dx, 1e-6);
        assert_gradient(&format!("{what} dW"), &|v| loss(&x, v, &b), &w, &dw, 1e-6);
        if with_bias {
            assert_gradient(&format!("{what} db"), &|v| loss(&x, &w, v), &b, &db, 1e-6);
        }
    }
}

fn tensor(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().iter().map(|&v| v as f64).collect()
}

#[test]
fn matmul_autograd_on_cpu_gives_the_reference_gradients() {
    let dev = Device::Cpu;
    let (m, n, k) = (3, 5, 4);
    let (a, b) = (tensor(&[m, k], 30, &dev), tensor(&[k, n], 31, &dev));
    let mut g = Graph::new(&dev);
    let (av, bv) = (g.leaf(a.clone()), g.leaf(b.clone()));
    let c = matmul(&mut g, av, bv).unwrap();
    let loss = sum_all(&mut g, c).unwrap();
    g.backward(loss).unwrap();
    // d sum(C) = ones
    let ones = vec![1.0; m * n];
    let (mut da, mut db) = (vec![0.0; m * k], vec![0.0; k * n]);
    gemm_backward_cpu(
        (m, n, k),
        false,
        false,
        &to_f64(&a),
        &to_f64(&b),
        &ones,
        Some(&mut da),
        Some(&mut db),
    );
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    assert_close(
        "matmul dA",
        &g.grad(av).unwrap().to_vec().unwrap(),
        &f32s(&da),
        1e-6,
        1e-7,
    );
    assert_close(
        "matmul dB",
        &g.grad(bv).unwrap().to_vec().unwrap(),
        &f32s(&db),
        1e-6,
        1e-7,
    );
}

#[test]
fn linear_autograd_skips_the_input_gradient_of_data() {
    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    let layer = Linear::new(&mut store, "fc", 6, 3, true, &dev, &mut Rng::new(5)).unwrap();
    let x = tensor(&[4, 6], 40, &dev);
    let seed = tensor(&[4, 3], 41, &dev);

    let mut g = Graph::new(&dev);
    let xv = g.constant(x.clone());
    let y = layer.forward(&mut g, &store, xv).unwrap();
    g.backward_with(y, Some(seed.clone())).unwrap();
    assert!(g.grad(xv).is_none(), "data input got a gradient");
    g.accumulate_param_grads(&mut store).unwrap();

    let w = store.get("fc.weight").unwrap().value.clone();
    let (dx, dw, db) = linear_backward(&x, &w, &seed, (true, true, true)).unwrap();
    assert_eq!(
        store
            .get("fc.weight")
            .unwrap()
            .grad
            .as_ref()
            .unwrap()
            .to_vec()
            .unwrap(),
        dw.unwrap().to_vec().unwrap()
    );
    assert_eq!(
        store
            .get("fc.bias")
            .unwrap()
            .grad
            .as_ref()
            .unwrap()
            .to_vec()
            .unwrap(),
        db.unwrap().to_vec().unwrap()
    );

    // With a leaf input the same graph also yields dx.
    let mut g = Graph::new(&dev);
    let xv = g.leaf(x.clone());
    let y = layer.forward(&mut g, &store, xv).unwrap();
    g.backward_with(y, Some(seed)).unwrap();
    assert_eq!(
        g.grad(xv).unwrap().to_vec().unwrap(),
        dx.unwrap().to_vec().unwrap()
    );
}

#[test]
fn linear_layer_registers_pytorch_names_shapes_and_init_range() {
    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    Linear::new(
        &mut store,
        "classifier.1",
        50,
        7,
        true,
        &dev,
        &mut Rng::new(1),
    )
    .unwrap();
    let no_prefix = Linear::new(&mut store, "", 9, 2, false, &dev, &mut Rng::new(2)).unwrap();
    assert_eq!(
        store.names(),
        ["classifier.1.weight", "classifier.1.bias", "weight"]
    );
    assert_eq!(
        store.get("classifier.1.weight").unwrap().value.shape(),
        [7, 50]
    );
    assert_eq!(store.get("classifier.1.bias").unwrap().value.shape(), [7]);
    assert_eq!(store.get("weight").unwrap().value.shape(), [2, 9]);
    assert_eq!(no_prefix.bias_name(), None);
    let bound = 1.0 / 50f32.sqrt();
    for name in ["classifier.1.weight", "classifier.1.bias"] {
        let v = store.get(name).unwrap().value.to_vec().unwrap();
        assert!(
            v.iter().all(|x| x.abs() <= bound),
            "{name} outside ±1/sqrt(in)"
        );
        // A uniform draw spreads over most of the range (not all zeros, not a constant).
        let spread =
            v.iter().cloned().fold(f32::MIN, f32::max) - v.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread > bound, "{name} spread {spread} for bound {bound}");
    }
    assert!(Linear::new(&mut store, "empty", 0, 3, true, &dev, &mut Rng::new(3)).is_err());
}

#[test]
fn shape_mismatches_are_errors_naming_the_op_and_both_shapes() {
    let dev = Device::Cpu;
    let (a, b) = (tensor(&[2, 3], 1, &dev), tensor(&[4, 5], 2, &dev));
    match matmul_forward(&a, &b) {
        Err(Error::Shape(msg)) => assert!(
            msg.contains("matmul") && msg.contains("[2, 3]") && msg.contains("[4, 5]"),
            "{msg}"
        ),
        other => panic!("expected a shape error, got {other:?}"),
    }
    let mut g = Graph::new(&dev);
    let (av, bv) = (g.leaf(a.clone()), g.leaf(b.clone()));
    assert!(matches!(matmul(&mut g, av, bv), Err(Error::Shape(_))));
    let w = tensor(&[5, 4], 3, &dev);
    match linear_forward(&a, &w, None) {
        Err(Error::Shape(msg)) => assert!(
            msg.contains("linear") && msg.contains("[2, 3]") && msg.contains("[5, 4]"),
            "{msg}"
        ),
        other => panic!("expected a shape error, got {other:?}"),
    }
    let w = tensor(&[5, 3], 3, &dev);
    let bad_bias = tensor(&[4], 4, &dev);
    assert!(matches!(
        linear_forward(&a, &w, Some(&bad_bias)),
        Err(Error::Shape(_))
    ));
    assert!(matches!(gemm(&a, true, &b, false), Err(Error::Shape(_))));
}

// ---------- golden case ----------

/// `<case>.json` (a vendored op case: always present).
fn golden_json(case: &str) -> std::path::PathBuf {
    lit_engine::golden::locate::case_or_skip(case).expect("op cases are vendored")
}

/// F32 tensors of a golden safetensors file, by name.
fn golden_tensors(case: &str) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    let path = golden_json(case).with_extension("safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(name, v)| {
            let data = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (v.shape().to_vec(), data))
        })
        .collect()
}

/// (rel, abs) of an expectation, from the case's JSON.
fn golden_tolerance(case: &str, name: &str) -> (f64, f64) {
    let path = golden_json(case);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let t = &json["tensors"][name];
    (t["rel"].as_f64().unwrap(), t["abs"].as_f64().unwrap())
}

/// Run `op_linear` (forward and backward from its seed) on `dev` and compare with the expectations.
fn check_linear_golden(dev: &Device) {
    let case = "op_linear";
    let t = golden_tensors(case);
    let get = |name: &str| {
        let (shape, data) = &t[name];
        Tensor::from_slice(shape, data, dev).unwrap()
    };
    let mut g = Graph::new(dev);
    let (xv, wv, bv) = (
        g.leaf(get("input.x")),
        g.leaf(get("param.weight")),
        g.leaf(get("param.bias")),
    );
    let y = linear(&mut g, xv, wv, Some(bv)).unwrap();
    g.backward_with(y, Some(get("input.grad_out"))).unwrap();
    let results = [
        ("expect.out", g.value(y).clone()),
        ("expect.grad.x", g.grad(xv).unwrap().clone()),
        ("expect.grad.weight", g.grad(wv).unwrap().clone()),
        ("expect.grad.bias", g.grad(bv).unwrap().clone()),
    ];
    for (name, got) in results {
        let (shape, want) = &t[name];
        assert_eq!(got.shape(), &shape[..], "{name} shape");
        let (rel, abs) = golden_tolerance(case, name);
        if let Err(e) = check_close(&got.to_vec().unwrap(), want, rel, abs) {
            panic!("{case} {name} on {}: {e}", dev.name());
        }
    }
}

#[test]
fn linear_matches_the_pytorch_golden_case_on_cpu() {
    check_linear_golden(&Device::Cpu);
}

#[test]
fn linear_matches_the_pytorch_golden_case_on_kernel_devices() {
    for dev in lit_engine::testing::kernel_devices() {
        check_linear_golden(&dev);
    }
}

// ---------- kernel devices against cpu ----------

// f32 GEMMs with k up to 130 differ from the cpu path only by summation order.
const REL: f64 = 1e-5;
const ABS: f64 = 1e-6;

#[test]
fn gemm_kernel_agrees_with_cpu_in_every_transpose_and_odd_shape() {
    for (m, n, k) in [
        (37, 19, 45),
        (1, 1, 1),
        (70, 65, 130),
        (64, 64, 16),
        (5, 130, 3),
    ] {
        for (ta, tb) in TRANSPOSES {
            let (sa, sb) = stored_shapes(m, n, k, ta, tb);
            assert_devices_agree(
                &format!("gemm {m}x{n}x{k} ta={ta} tb={tb}"),
                REL,
                ABS,
                |dev| {
                    Ok(vec![gemm(
                        &tensor(&sa, 50, dev),
                        ta,
                        &tensor(&sb, 51, dev),
                        tb,
                    )?])
                },
            );
        }
    }
}

#[test]
fn gemm_kernel_agrees_with_cpu_with_alpha_beta_and_batch() {
    let (batch, m, n, k) = (3, 17, 33, 9);
    for (ta, tb) in [(false, false), (true, true)] {
        let (sa, sb) = stored_shapes(m, n, k, ta, tb);
        assert_devices_agree(&format!("batched gemm ta={ta} tb={tb}"), REL, ABS, |dev| {
            let a = tensor(&[batch, sa[0], sa[1]], 60, dev);
            let b = tensor(&[batch, sb[0], sb[1]], 61, dev);
            let mut c = tensor(&[batch, m, n], 62, dev);
            gemm_into(&mut c, &a, ta, &b, tb, -0.75, 0.5)?;
            Ok(vec![c])
        });
    }
    // beta = 0 ignores whatever C held, NaN included.
    assert_devices_agree("gemm beta=0 over NaN", REL, ABS, |dev| {
        let mut c = Tensor::full(&[m, n], f32::NAN, dev)?;
        gemm_into(
            &mut c,
            &tensor(&[m, k], 63, dev),
            false,
            &tensor(&[k, n], 64, dev),
            false,
            2.0,
            0.0,
        )?;
        Ok(vec![c])
    });
}

#[test]
fn gemm_backward_kernels_agree_with_cpu() {
    let (m, n, k) = (29, 21, 67);
    for (ta, tb) in TRANSPOSES {
        let (sa, sb) = stored_shapes(m, n, k, ta, tb);
        assert_devices_agree(&format!("gemm backward ta={ta} tb={tb}"), REL, ABS, |dev| {
            let (a, b, dc) = (
                tensor(&sa, 70, dev),
                tensor(&sb, 71, dev),
                tensor(&[m, n], 72, dev),
            );
            let (da, db) = gemm_backward(&a, ta, &b, tb, &dc, (true, true))?;
            Ok(vec![da.unwrap(), db.unwrap()])
        });
    }
}

#[test]
fn linear_kernels_agree_with_cpu() {
    for (rows, in_f, out_f) in [(33, 70, 10), (1, 3, 1), (130, 9, 67)] {
        for with_bias in [true, false] {
            assert_devices_agree(
                &format!("linear {rows}x{in_f}->{out_f} bias={with_bias}"),
                REL,
                ABS,
                |dev| {
                    let x = tensor(&[rows, in_f], 80, dev);
                    let w = tensor(&[out_f, in_f], 81, dev);
                    let b = tensor(&[out_f], 82, dev);
                    let dy = tensor(&[rows, out_f], 83, dev);
                    let y = linear_forward(&x, &w, with_bias.then_some(&b))?;
                    let (dx, dw, db) = linear_backward(&x, &w, &dy, (true, true, true))?;
                    Ok(vec![y, dx.unwrap(), dw.unwrap(), db.unwrap()])
                },
            );
        }
    }
}

/// Kernel lab (no assertions on time): `cargo test --release --test ops_matmul -- --ignored --nocapture`.
/// Prints GFLOP/s of the GEMM path of every device available (cpu, and cuda when usable).
#[test]
#[ignore = "a timing report, not a check: run with --ignored --nocapture"]
fn kernel_lab_gemm_throughput() {
    let mut devices = vec![Device::Cpu];
    devices.extend(Device::cuda().ok());
    for dev in &devices {
        for (m, n, k) in [(512, 512, 512), (128, 256, 784), (128, 784, 256)] {
            let (a, b) = (tensor(&[m, k], 90, dev), tensor(&[k, n], 91, dev));
            let mut c = Tensor::zeros(&[m, n], dev).unwrap();
            gemm_into(&mut c, &a, false, &b, false, 1.0, 0.0).unwrap(); // warm-up (compile, threads)
            dev.synchronize().unwrap();
            let reps = 20;
            let start = std::time::Instant::now();
            for _ in 0..reps {
                gemm_into(&mut c, &a, false, &b, false, 1.0, 0.0).unwrap();
            }
            dev.synchronize().unwrap();
            let secs = start.elapsed().as_secs_f64() / reps as f64;
            let gflops = 2.0 * (m * n * k) as f64 / secs / 1e9;
            println!(
                "{}: gemm {m}x{n}x{k}: {:.3} ms, {gflops:.1} GFLOP/s",
                dev.name(),
                secs * 1e3
            );
        }
    }
}
