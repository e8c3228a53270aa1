//! softmax / log_softmax with temperature, cross-entropy: f64 finite differences of the CPU
//! reference, golden cases (cpu and kernel devices), and kernel devices against cpu.

mod golden_support;

use lit_engine::ops::loss::{self, Reduction};
use lit_engine::ops::softmax;
use lit_engine::testing::{
    assert_devices_agree, assert_gradient, dot, kernel_devices, random_f32, random_f64,
};
use lit_engine::{Device, Error, Graph, IndexTensor, Tensor};

// ---------- finite differences (f64 CPU reference) ----------

#[test]
fn softmax_backward_matches_finite_differences() {
    let (rows, cols) = (3, 7);
    let x = random_f64(1, rows * cols);
    let w = random_f64(2, rows * cols);
    for t in [1.0, 2.5, 0.5] {
        let f = |x: &[f64]| {
            let mut y = vec![0.0; x.len()];
            softmax::softmax_forward_cpu(x, cols, t, &mut y);
            dot(&y, &w)
        };
        let mut y = vec![0.0; x.len()];
        softmax::softmax_forward_cpu(&x, cols, t, &mut y);
        let mut dx = vec![0.0; x.len()];
        softmax::softmax_backward_cpu(&y, &w, cols, t, &mut dx);
        assert_gradient(&format!("softmax T={t}"), &f, &x, &dx, 1e-7);
    }
}

#[test]
fn log_softmax_backward_matches_finite_differences() {
    let (rows, cols) = (4, 5);
    let x = random_f64(3, rows * cols);
    let w = random_f64(4, rows * cols);
    for t in [1.0, 6.0, 0.7] {
        let f = |x: &[f64]| {
            let mut y = vec![0.0; x.len()];
            softmax::log_softmax_forward_cpu(x, cols, t, &mut y);
            dot(&y, &w)
        };
        let mut y = vec![0.0; x.len()];
        softmax::log_softmax_forward_cpu(&x, cols, t, &mut y);
        let mut dx = vec![0.0; x.len()];
        softmax::log_softmax_backward_cpu(&y, &w, cols, t, &mut dx);
        assert_gradient(&format!("log_softmax T={t}"), &f, &x, &dx, 1e-7);
    }
}

#[test]
fn softmax_forward_is_stable_and_normalised() {
    // Huge logits would overflow exp without the max subtraction.
    let x = [1000.0f64, 999.0, -1000.0, 0.0, 0.0, 0.0];
    let mut y = [0.0; 6];
    softmax::softmax_forward_cpu(&x, 3, 1.0, &mut y);
    let e = (-1.0f64).exp();
    assert!(
        (y[0] - 1.0 / (1.0 + e)).abs() < 1e-15 && (y[1] - e / (1.0 + e)).abs() < 1e-15,
        "{y:?}"
    );
    assert!(y[2] == 0.0 && y.iter().all(|v| v.is_finite()));
    assert!((y[3] - 1.0 / 3.0).abs() < 1e-15);
    let mut ly = [0.0; 6];
    softmax::log_softmax_forward_cpu(&x, 3, 1.0, &mut ly);
    assert!((ly[2] - (-2000.0 - (1.0 + e).ln())).abs() < 1e-9, "{ly:?}");
}

#[test]
fn cross_entropy_backward_matches_finite_differences() {
    let (rows, cols) = (5, 6);
    let x = random_f64(5, rows * cols);
    let labels = [0, 5, 2, 2, 3];
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let f = |x: &[f64]| {
            let mut lse = vec![0.0; rows];
            loss::cross_entropy_forward_cpu(x, &labels, cols, reduction, &mut lse)
        };
        let mut lse = vec![0.0; rows];
        let value = loss::cross_entropy_forward_cpu(&x, &labels, cols, reduction, &mut lse);
        // Against the definition -log_softmax(x)[y].
        let mut ls = vec![0.0; x.len()];
        softmax::log_softmax_forward_cpu(&x, cols, 1.0, &mut ls);
        let direct: f64 = labels
            .iter()
            .enumerate()
            .map(|(i, &y)| -ls[i * cols + y as usize])
            .sum();
        let direct = if reduction == Reduction::Mean {
            direct / rows as f64
        } else {
            direct
        };
        assert!(
            (value - direct).abs() < 1e-12,
            "{reduction:?}: {value} vs {direct}"
        );

        let dloss = 1.7;
        let mut dx = vec![0.0; x.len()];
        loss::cross_entropy_backward_cpu(&x, &labels, cols, &lse, dloss, reduction, &mut dx);
        let scaled = |x: &[f64]| dloss * f(x);
        assert_gradient(
            &format!("cross_entropy {reduction:?}"),
            &scaled,
            &x,
            &dx,
            1e-7,
        );
    }
}

// ---------- golden cases ----------

fn golden_softmax_family(dev: &Device) {
    for case in [
        "op_softmax_T1",
        "op_softmax_T4",
        "op_log_softmax_T1",
        "op_log_softmax_T2",
        "op_log_softmax_T6",
    ] {
        let Some(c) = golden_support::load(case) else {
            return;
        };
        assert_eq!(
            c.attr_f64("dim"),
            1.0,
            "{case}: these tests cover softmax over dim 1 of [N, C]"
        );
        let t = c.attr_f64("temperature") as f32;
        let mut g = Graph::new(dev);
        let x = g.leaf(c.tensor("input.x", dev));
        let y = match c.json["op"].as_str().unwrap() {
            "softmax" => softmax::softmax(&mut g, x, t).unwrap(),
            "log_softmax" => softmax::log_softmax(&mut g, x, t).unwrap(),
            other => panic!("{case}: unexpected op {other}"),
        };
        c.check("expect.out", g.value(y), dev);
        g.backward_with(y, Some(c.tensor("input.grad_out", dev)))
            .unwrap();
        c.check("expect.grad.x", g.grad(x).unwrap(), dev);
    }
}

fn golden_cross_entropy(dev: &Device) {
    for case in ["op_cross_entropy_mean", "op_cross_entropy_sum"] {
        let Some(c) = golden_support::load(case) else {
            return;
        };
        let reduction: Reduction = c.attr_str("reduction").parse().unwrap();
        let mut g = Graph::new(dev);
        let logits = g.leaf(c.tensor("input.logits", dev));
        let labels = c.index_tensor("input.y", dev);
        let l = loss::cross_entropy(&mut g, logits, &labels, reduction).unwrap();
        c.check("expect.loss", g.value(l), dev);
        g.backward(l).unwrap();
        c.check("expect.grad.logits", g.grad(logits).unwrap(), dev);
    }
}

#[test]
fn golden_softmax_and_log_softmax_cpu() {
    golden_softmax_family(&Device::Cpu);
}

#[test]
fn golden_softmax_and_log_softmax_kernel_devices() {
    for dev in kernel_devices() {
        golden_softmax_family(&dev);
    }
}

#[test]
fn golden_cross_entropy_cpu() {
    golden_cross_entropy(&Device::Cpu);
}

#[test]
fn golden_cross_entropy_kernel_devices() {
    for dev in kernel_devices() {
        golden_cross_entropy(&dev);
    }
}

// ---------- kernel devices against cpu ----------

/// Row lengths: one partial warp, exactly one warp, partial warps across several, more than a block.
const SHAPES: [(usize, usize); 5] = [(3, 1), (5, 10), (2, 32), (4, 77), (3, 1000)];

#[test]
fn softmax_kernels_agree_with_cpu() {
    for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
        for t in [1.0f32, 4.0] {
            let x = random_f32(10 + i as u64, rows * cols)
                .iter()
                .map(|v| v * 3.0)
                .collect::<Vec<_>>();
            let dy = random_f32(20 + i as u64, rows * cols);
            assert_devices_agree(
                &format!("softmax [{rows},{cols}] T={t}"),
                1e-5,
                1e-7,
                |dev| {
                    let xt = Tensor::from_slice(&[rows, cols], &x, dev)?;
                    let dyt = Tensor::from_slice(&[rows, cols], &dy, dev)?;
                    let y = softmax::softmax_forward(&xt, t)?;
                    let dx = softmax::softmax_backward(&y, &dyt, t)?;
                    Ok(vec![y, dx])
                },
            );
            assert_devices_agree(
                &format!("log_softmax [{rows},{cols}] T={t}"),
                1e-5,
                1e-7,
                |dev| {
                    let xt = Tensor::from_slice(&[rows, cols], &x, dev)?;
                    let dyt = Tensor::from_slice(&[rows, cols], &dy, dev)?;
                    let y = softmax::log_softmax_forward(&xt, t)?;
                    let dx = softmax::log_softmax_backward(&y, &dyt, t)?;
                    Ok(vec![y, dx])
                },
            );
        }
    }
}

#[test]
fn softmax_over_last_dim_of_3d_tensor_agrees_with_cpu() {
    let x = random_f32(30, 2 * 3 * 45);
    assert_devices_agree("softmax [2,3,45]", 1e-5, 1e-7, |dev| {
        Ok(vec![softmax::softmax_forward(
            &Tensor::from_slice(&[2, 3, 45], &x, dev)?,
            2.0,
        )?])
    });
}

#[test]
fn cross_entropy_kernels_agree_with_cpu() {
    // 300 rows: more rows than the reduction block has threads.
    for (rows, cols) in [(7usize, 10usize), (300, 13), (3, 1000)] {
        let x = random_f32(40 + rows as u64, rows * cols)
            .iter()
            .map(|v| v * 2.0)
            .collect::<Vec<_>>();
        let y: Vec<i32> = (0..rows).map(|i| ((i * 7 + 3) % cols) as i32).collect();
        for reduction in [Reduction::Mean, Reduction::Sum] {
            assert_devices_agree(
                &format!("cross_entropy [{rows},{cols}] {reduction:?}"),
                1e-5,
                1e-7,
                |dev| {
                    let mut g = Graph::new(dev);
                    let logits = g.leaf(Tensor::from_slice(&[rows, cols], &x, dev)?);
                    let labels = IndexTensor::from_slice(&[rows], &y, dev)?;
                    let l = loss::cross_entropy(&mut g, logits, &labels, reduction)?;
                    g.backward_with(l, Some(Tensor::scalar(0.75, dev)?))?;
                    Ok(vec![g.value(l).clone(), g.grad(logits).unwrap().clone()])
                },
            );
        }
    }
}

// ---------- errors and helpers ----------

fn all_devices() -> Vec<Device> {
    let mut v = vec![Device::Cpu];
    v.extend(kernel_devices());
    v
}

/// Labels out of range: an error naming the label on the cpu device; on kernel devices the
/// labels are not read back (a training step reads nothing to the host), and the loss is NaN
/// without any out-of-bounds read (data sets check their labels when they are loaded).
#[test]
fn cross_entropy_rejects_bad_labels_on_every_device() {
    for dev in all_devices() {
        let logits = Tensor::from_slice(&[2, 3], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], &dev).unwrap();
        for bad in [3, -1, i32::MAX, i32::MIN] {
            let labels = IndexTensor::from_slice(&[2], &[0, bad], &dev).unwrap();
            let out = loss::cross_entropy_forward(&logits, &labels, Reduction::Mean);
            if dev.is_cpu() {
                let err = out.expect_err("an error");
                let msg = err.to_string();
                assert!(matches!(err, Error::Shape(_)), "{msg}");
                assert!(
                    msg.contains(&format!("label {bad} at row 1")) && msg.contains("3 classes"),
                    "{msg}"
                );
            } else {
                let loss = out
                    .expect("device labels are not read back")
                    .loss
                    .item()
                    .unwrap();
                assert!(
                    loss.is_nan(),
                    "{}: label {bad} gave loss {loss}",
                    dev.name()
                );
            }
        }
        let labels = IndexTensor::from_slice(&[3], &[0, 1, 2], &dev).unwrap();
        let err =
            loss::cross_entropy_forward(&logits, &labels, Reduction::Sum).expect_err("an error");
        assert!(err.to_string().contains("labels must be [2]"), "{err}");
    }
}

#[test]
fn softmax_rejects_bad_temperature_and_scalars() {
    let x = Tensor::from_slice(&[1, 2], &[0.0, 1.0], &Device::Cpu).unwrap();
    for t in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let err = softmax::softmax_forward(&x, t).expect_err("an error");
        assert!(err.to_string().contains("temperature"), "{err}");
    }
    let s = Tensor::scalar(1.0, &Device::Cpu).unwrap();
    assert!(softmax::log_softmax_forward(&s, 1.0).is_err());
    assert!("median".parse::<Reduction>().is_err());
}

#[test]
fn argmax_and_accuracy() {
    let dev = Device::Cpu;
    let logits = Tensor::from_slice(
        &[3, 4],
        &[
            0.0, 2.0, 1.0, 2.0, 5.0, -1.0, 0.0, 0.0, -3.0, -2.0, -1.0, -0.5,
        ],
        &dev,
    )
    .unwrap();
    // Ties go to the first index, as in PyTorch.
    assert_eq!(loss::argmax_rows(&logits).unwrap(), vec![1, 0, 3]);
    let labels = IndexTensor::from_slice(&[3], &[1, 2, 3], &dev).unwrap();
    assert_eq!(loss::accuracy(&logits, &labels).unwrap(), 2);
    let wrong = IndexTensor::from_slice(&[2], &[1, 2], &dev).unwrap();
    assert!(loss::accuracy(&logits, &wrong).is_err());
}

/// Logits far beyond exp's range: the max-subtracted forms stay finite on every device.
#[test]
fn cross_entropy_and_softmax_are_stable_for_huge_logits() {
    for dev in all_devices() {
        let logits = Tensor::from_slice(
            &[2, 3],
            &[1000.0, -1000.0, 999.0, -500.0, -500.0, -501.0],
            &dev,
        )
        .unwrap();
        let labels = IndexTensor::from_slice(&[2], &[1, 0], &dev).unwrap();
        let out = loss::cross_entropy_forward(&logits, &labels, Reduction::Sum).unwrap();
        let e1 = (-1.0f64).exp();
        let row0 = 2000.0 + (1.0 + e1).ln();
        let row1 = (2.0 + e1).ln();
        let got = out.loss.item().unwrap() as f64;
        assert!(
            (got - (row0 + row1)).abs() < 1e-3,
            "{}: {got} vs {}",
            dev.name(),
            row0 + row1
        );
        let y = softmax::softmax_forward(&logits, 1.0)
            .unwrap()
            .to_vec()
            .unwrap();
        assert!(y.iter().all(|v| v.is_finite()), "{}: {y:?}", dev.name());
        assert!(
            (y[0] as f64 - 1.0 / (1.0 + e1)).abs() < 1e-6,
            "{}: {y:?}",
            dev.name()
        );
    }
}
