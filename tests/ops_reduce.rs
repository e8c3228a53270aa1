//! Bias add and reductions: f64 finite differences of the CPU reference, autograd on cpu, accuracy
//! and reproducibility of sums, and every kernel device against cpu.

use lit_engine::device::Device;
use lit_engine::ops::reduce::{
    add_bias, add_bias_cpu, add_bias_forward, broadcast_channels, broadcast_channels_cpu,
    broadcast_rows, channel_sum, channel_sum_cpu, fill_scaled, mean_all, mean_all_cpu,
    mean_all_forward, sum_all, sum_all_cpu, sum_all_forward, sum_rows, sum_rows_forward,
};
use lit_engine::testing::{
    assert_devices_agree, assert_gradient, dot, kernel_devices, random_f32, random_f64,
};
use lit_engine::{Error, Graph, Tensor};

fn tensor(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
}

#[test]
fn add_bias_backward_matches_finite_differences() {
    let (n, c, inner) = (3, 4, 5); // x [3, 4, 5]
    let x = random_f64(1, n * c * inner);
    let b = random_f64(2, c);
    let weights = random_f64(3, x.len());
    let loss = |x: &[f64], b: &[f64]| {
        let mut y = vec![0.0; x.len()];
        add_bias_cpu(x, b, &mut y, c, inner);
        dot(&y, &weights)
    };
    // dx = dy, db = channel sums of dy.
    let mut db = vec![0.0; c];
    channel_sum_cpu(&weights, &mut db, n, c, inner);
    assert_gradient("add_bias dx", &|v| loss(v, &b), &x, &weights, 1e-6);
    assert_gradient("add_bias db", &|v| loss(&x, v), &b, &db, 1e-6);
}

#[test]
fn sum_rows_sum_all_and_mean_all_backward_match_finite_differences() {
    let (rows, cols) = (4, 3);
    let x = random_f64(4, rows * cols);
    let weights = random_f64(5, cols);
    // sum_rows backward broadcasts dy over the rows.
    let mut dx = vec![0.0; x.len()];
    broadcast_channels_cpu(&weights, &mut dx, cols, 1);
    let sum_rows_loss = |v: &[f64]| {
        let mut y = vec![0.0; cols];
        channel_sum_cpu(v, &mut y, rows, cols, 1);
        dot(&y, &weights)
    };
    assert_gradient("sum_rows dx", &sum_rows_loss, &x, &dx, 1e-6);
    assert_gradient(
        "sum_all dx",
        &|v| 1.7 * sum_all_cpu(v),
        &x,
        &vec![1.7; x.len()],
        1e-6,
    );
    let n = x.len() as f64;
    assert_gradient(
        "mean_all dx",
        &|v| 1.7 * mean_all_cpu(v),
        &x,
        &vec![1.7 / n; x.len()],
        1e-6,
    );
}

#[test]
fn autograd_bias_add_and_mean_on_cpu() {
    let dev = Device::Cpu;
    let (x, b) = (tensor(&[2, 3, 4], 10, &dev), tensor(&[3], 11, &dev));
    let mut g = Graph::new(&dev);
    let (xv, bv) = (g.leaf(x), g.leaf(b));
    let y = add_bias(&mut g, xv, bv).unwrap();
    let loss = mean_all(&mut g, y).unwrap();
    g.backward(loss).unwrap();
    // d mean / dy = 1/24 everywhere; the bias collects 8 of those per channel.
    assert_eq!(g.grad(xv).unwrap().to_vec().unwrap(), vec![1.0 / 24.0; 24]);
    for v in g.grad(bv).unwrap().to_vec().unwrap() {
        assert!((v - 8.0 / 24.0).abs() < 1e-7, "bias grad {v}");
    }

    let mut g = Graph::new(&dev);
    let xv = g.leaf(tensor(&[5, 3], 12, &dev));
    let s = sum_rows(&mut g, xv).unwrap();
    let total = sum_all(&mut g, s).unwrap();
    g.backward(total).unwrap();
    assert_eq!(g.grad(xv).unwrap().to_vec().unwrap(), vec![1.0; 15]);
}

#[test]
fn cpu_sums_are_accurate_for_long_inputs() {
    // 0.1f32 a million times: a naive f32 running sum drifts to ~100958; the f64 accumulator does not.
    let x = Tensor::full(&[1000, 1000], 0.1, &Device::Cpu).unwrap();
    let want = 0.1f32 as f64 * 1e6;
    let got = sum_all_forward(&x).unwrap().item().unwrap() as f64;
    assert!((got - want).abs() / want < 1e-7, "sum {got} vs {want}");
    let cols = sum_rows_forward(&x).unwrap().to_vec().unwrap();
    // 1000 rows of 0.1: a naive f32 sum gives 99.99905.
    let want_col = 1000.0 * 0.1f32 as f64;
    assert!(
        cols.iter().all(|&c| ((c as f64) - want_col).abs() < 1e-5),
        "column sums {:?}",
        &cols[..3]
    );
}

#[test]
fn reduction_shape_errors_name_the_op_and_shapes() {
    let dev = Device::Cpu;
    let x = tensor(&[2, 3, 4], 1, &dev);
    match add_bias_forward(&x, &tensor(&[4], 2, &dev)) {
        Err(Error::Shape(msg)) => assert!(
            msg.contains("add_bias") && msg.contains("[2, 3, 4]") && msg.contains("[4]"),
            "{msg}"
        ),
        other => panic!("expected a shape error, got {other:?}"),
    }
    assert!(matches!(
        add_bias_forward(&tensor(&[3], 3, &dev), &tensor(&[3], 4, &dev)),
        Err(Error::Shape(_))
    ));
    assert!(matches!(sum_rows_forward(&x), Err(Error::Shape(_))));
    assert!(matches!(fill_scaled(&x, &[2], 1.0), Err(Error::Shape(_))));
}

// ---------- kernel devices against cpu ----------

const REL: f64 = 1e-6;
const ABS: f64 = 1e-6;

#[test]
fn add_bias_and_broadcast_kernels_agree_with_cpu() {
    for shape in [vec![3, 5, 7], vec![37, 70], vec![2, 3, 5, 11], vec![1, 1]] {
        assert_devices_agree(&format!("add_bias {shape:?}"), REL, ABS, |dev| {
            let x = tensor(&shape, 20, dev);
            let b = tensor(&[shape[1]], 21, dev);
            Ok(vec![
                add_bias_forward(&x, &b)?,
                broadcast_channels(&b, &shape)?,
                broadcast_rows(&b, 9)?,
            ])
        });
    }
}

#[test]
fn channel_and_column_sum_kernels_agree_with_cpu() {
    // inner > 1 → one block per channel (channel counts and plane sizes odd, some below a warp);
    // inner == 1 → column kernel with partial 32-column blocks and row counts not a multiple of 8.
    for shape in [
        vec![5, 6, 13],
        vec![3, 2, 300],
        vec![2, 7, 3, 3],
        vec![37, 70],
        vec![1, 1],
        vec![300, 33],
    ] {
        assert_devices_agree(&format!("channel_sum {shape:?}"), REL, ABS, |dev| {
            Ok(vec![channel_sum(&tensor(&shape, 30, dev))?])
        });
    }
}

#[test]
fn sum_and_mean_kernels_agree_with_cpu() {
    // 1 and 2047 elements: one block; 5000 and 300001: the two-pass path (partials then one block).
    for n in [1, 2047, 5000, 300_001] {
        assert_devices_agree(&format!("sum/mean of {n}"), REL, ABS, |dev| {
            let x = tensor(&[n], 40, dev);
            Ok(vec![sum_all_forward(&x)?, mean_all_forward(&x)?])
        });
    }
    assert_devices_agree("fill_scaled", REL, ABS, |dev| {
        Ok(vec![fill_scaled(
            &Tensor::scalar(1.5, dev)?,
            &[3, 77],
            0.25,
        )?])
    });
}

#[test]
fn kernel_sums_are_reproducible_run_to_run() {
    for dev in kernel_devices() {
        let x = tensor(&[300_001], 50, &dev);
        let first = sum_all_forward(&x).unwrap().item().unwrap();
        let cols = tensor(&[300, 33], 51, &dev);
        let first_cols = channel_sum(&cols).unwrap().to_vec().unwrap();
        for _ in 0..3 {
            assert_eq!(
                sum_all_forward(&x).unwrap().item().unwrap().to_bits(),
                first.to_bits(),
                "{}",
                dev.name()
            );
            assert_eq!(
                channel_sum(&cols).unwrap().to_vec().unwrap(),
                first_cols,
                "{}",
                dev.name()
            );
        }
    }
}

#[test]
fn autograd_reductions_agree_with_cpu_on_kernel_devices() {
    assert_devices_agree("add_bias + sum_all backward", REL, ABS, |dev| {
        let mut g = Graph::new(dev);
        let (xv, bv) = (
            g.leaf(tensor(&[4, 3, 9], 60, dev)),
            g.leaf(tensor(&[3], 61, dev)),
        );
        let y = add_bias(&mut g, xv, bv)?;
        let s = sum_all(&mut g, y)?;
        g.backward(s)?;
        Ok(vec![
            g.value(s).clone(),
            g.grad(xv).unwrap().clone(),
            g.grad(bv).unwrap().clone(),
        ])
    });
    assert_devices_agree("sum_rows + mean_all backward", REL, ABS, |dev| {
        let mut g = Graph::new(dev);
        let xv = g.leaf(tensor(&[6, 35], 62, dev));
        let r = sum_rows(&mut g, xv)?;
        let m = mean_all(&mut g, r)?;
        g.backward_with(m, Some(Tensor::scalar(-2.5, dev)?))?;
        Ok(vec![g.value(m).clone(), g.grad(xv).unwrap().clone()])
    });
}
