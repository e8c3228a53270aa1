//! MSE and the KD losses (kd_lit, kd_qd, kd_lma, kd_takd, kd_nmt): f64 finite differences of the
//! gradients, each loss and its components against an independent computation from the softmax
//! ops, kernel devices against cpu on odd shapes in both thread orders, and input errors.

use lit_engine::ops::kd::{self, KdLoss};
use lit_engine::ops::softmax;
use lit_engine::testing::{assert_devices_agree, assert_gradient, random_f32, random_f64};
use lit_engine::{Device, Graph, IndexTensor, Tensor};

fn all_losses() -> Vec<KdLoss> {
    vec![
        KdLoss::Lit {
            temperature: 6.0,
            alpha: 0.95,
        },
        KdLoss::Qd {
            temperature: 2.0,
            w_soft: 0.7,
        },
        KdLoss::Lma {
            temperature: 2.0,
            w_soft: 0.7,
        },
        KdLoss::Takd {
            temperature: 4.5,
            lambda: 0.3,
        },
        KdLoss::Nmt {
            num_sentences: 3,
            w_soft: 0.6,
        },
    ]
}

#[test]
fn mse_backward_matches_finite_differences() {
    let n = 19;
    let (a, b) = (random_f64(1, n), random_f64(2, n));
    let f = |a: &[f64]| 1.3 * kd::mse_forward_cpu(a, &b);
    let mut da = vec![0.0; n];
    kd::mse_backward_cpu(&a, &b, 1.3, &mut da);
    assert_gradient("mse", &f, &a, &da, 1e-8);
    let direct: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        / n as f64;
    assert!((kd::mse_forward_cpu(&a, &b) - direct).abs() < 1e-15);
}

#[test]
fn kd_backward_matches_finite_differences() {
    let (rows, cols) = (5, 7);
    let s = random_f64(3, rows * cols);
    let t: Vec<f64> = random_f64(4, rows * cols).iter().map(|v| 2.0 * v).collect();
    let labels = [0, 6, 3, 3, 1];
    for loss in all_losses() {
        let w = loss.weights(rows, cols).unwrap();
        let f = |s: &[f64]| {
            let r = kd::kd_rows_cpu(s, &t, &labels, cols, &w);
            0.8 * kd::kd_reduce_cpu(&r, &w).0
        };
        let r = kd::kd_rows_cpu(&s, &t, &labels, cols, &w);
        let mut ds = vec![0.0; s.len()];
        kd::kd_backward_cpu(&s, &t, &labels, cols, &r, &w, 0.8, &mut ds);
        assert_gradient(&format!("{loss:?}"), &f, &s, &ds, 1e-7);
    }
}

/// Every loss and component from the softmax / log_softmax ops, straight from SPEC-NOTES §7.
#[test]
fn kd_losses_and_components_follow_the_spec() {
    let (rows, cols) = (4, 6);
    let (nf, ncf) = (rows as f64, (rows * cols) as f64);
    let s = random_f64(5, rows * cols);
    let t = random_f64(6, rows * cols);
    let labels = [2, 0, 5, 1];
    let sums = |temp: f64| {
        let (mut p, mut logp, mut logq, mut ls) = (
            vec![0.0; s.len()],
            vec![0.0; s.len()],
            vec![0.0; s.len()],
            vec![0.0; s.len()],
        );
        softmax::softmax_forward_cpu(&t, cols, temp, &mut p);
        softmax::log_softmax_forward_cpu(&t, cols, temp, &mut logp);
        softmax::log_softmax_forward_cpu(&s, cols, temp, &mut logq);
        softmax::log_softmax_forward_cpu(&s, cols, 1.0, &mut ls);
        let h: f64 = (0..s.len()).map(|i| -p[i] * logq[i]).sum();
        let kl: f64 = (0..s.len()).map(|i| p[i] * (logp[i] - logq[i])).sum();
        let ce: f64 = (0..rows).map(|i| -ls[i * cols + labels[i] as usize]).sum();
        (h, kl, ce)
    };
    let close = |what: &str, a: f64, b: f64| {
        assert!(
            (a - b).abs() <= 1e-12 * b.abs().max(1.0),
            "{what}: {a} vs {b}"
        )
    };
    for loss in all_losses() {
        let w = loss.weights(rows, cols).unwrap();
        let r = kd::kd_rows_cpu(&s, &t, &labels, cols, &w);
        let (l, c_soft, c_hard) = kd::kd_reduce_cpu(&r, &w);
        let (want, ws, wh) = match loss {
            KdLoss::Lit {
                temperature: tt,
                alpha,
            } => {
                let (h, _, ce) = sums(tt);
                (
                    ((1.0 - alpha) * tt * tt * h + alpha * ce) / nf,
                    tt * tt * h,
                    ce,
                )
            }
            KdLoss::Qd {
                temperature: tt,
                w_soft,
            } => {
                let (_, kl, ce) = sums(tt);
                (
                    w_soft * tt * tt * kl / ncf + (1.0 - w_soft) * ce / nf,
                    kl / ncf,
                    ce / nf,
                )
            }
            KdLoss::Lma {
                temperature: tt,
                w_soft,
            } => {
                let (_, kl, ce) = sums(tt);
                (
                    w_soft * tt * tt * kl / nf + (1.0 - w_soft) * ce / nf,
                    kl / nf,
                    ce / nf,
                )
            }
            KdLoss::Takd {
                temperature: tt,
                lambda,
            } => {
                let (_, kl, ce) = sums(tt);
                (
                    (1.0 - lambda) * ce / nf + lambda * tt * tt * kl / ncf,
                    kl / ncf,
                    ce / nf,
                )
            }
            KdLoss::Nmt {
                num_sentences,
                w_soft,
            } => {
                let (_, kl, ce) = sums(1.0);
                (
                    ((1.0 - w_soft) * ce + w_soft * kl) / num_sentences as f64,
                    kl,
                    ce,
                )
            }
        };
        close(&format!("{loss:?} loss"), l, want);
        close(&format!("{loss:?} {}", w.soft_name), c_soft, ws);
        close(&format!("{loss:?} {}", w.hard_name), c_hard, wh);
    }
}

#[test]
fn kl_vanishes_when_student_equals_teacher() {
    let (rows, cols) = (3, 5);
    let s = random_f64(7, rows * cols);
    let labels = [1, 4, 0];
    let loss = KdLoss::Takd {
        temperature: 3.0,
        lambda: 1.0,
    };
    let w = loss.weights(rows, cols).unwrap();
    let r = kd::kd_rows_cpu(&s, &s, &labels, cols, &w);
    assert!(r.soft.iter().all(|k| k.abs() < 1e-15), "{:?}", r.soft);
    let mut ds = vec![1.0; s.len()];
    kd::kd_backward_cpu(&s, &s, &labels, cols, &r, &w, 1.0, &mut ds);
    assert!(ds.iter().all(|d| d.abs() < 1e-15), "{ds:?}");
}

#[test]
fn mse_kernels_match_cpu() {
    for shape in [vec![3, 5, 7], vec![4099]] {
        assert_devices_agree("mse", 1e-6, 1e-8, |dev| {
            let n = shape.iter().product();
            let a = Tensor::from_vec(&shape, random_f32(8, n), dev)?;
            let b = Tensor::from_vec(&shape, random_f32(9, n), dev)?;
            let dl = Tensor::scalar(0.7, dev)?;
            Ok(vec![
                kd::mse_forward(&a, &b)?,
                kd::mse_backward(&a, &b, &dl)?,
            ])
        });
    }
}

#[test]
fn kd_kernels_match_cpu() {
    // 13 classes (a partial warp); 300 classes (more than one block of 128 threads per row).
    for (rows, cols) in [(37, 13), (3, 300)] {
        let labels: Vec<i32> = (0..rows).map(|i| ((i * 7 + 3) % cols) as i32).collect();
        for loss in all_losses() {
            assert_devices_agree(&format!("{loss:?} {rows}x{cols}"), 1e-6, 1e-9, |dev| {
                let n = rows * cols;
                let s = Tensor::from_vec(&[rows, cols], random_f32(10, n), dev)?;
                let t = Tensor::from_vec(&[rows, cols], random_f32(11, n), dev)?;
                let y = IndexTensor::from_slice(&[rows], &labels, dev)?;
                let f = kd::kd_forward(&s, &t, &y, &loss)?;
                let dl = Tensor::scalar(1.5, dev)?;
                let ds = kd::kd_backward(&s, &t, &y, &loss, &f, &dl)?;
                let [(_, c1), (_, c2)] = f.components.clone();
                Ok(vec![f.loss, c1, c2, ds])
            });
        }
    }
}

#[test]
fn kd_loss_through_the_graph_gives_the_student_gradient_only() {
    let dev = Device::Cpu;
    let s = Tensor::from_vec(&[2, 3], random_f32(12, 6), &dev).unwrap();
    let t = Tensor::from_vec(&[2, 3], random_f32(13, 6), &dev).unwrap();
    let y = IndexTensor::from_slice(&[2], &[2, 0], &dev).unwrap();
    let loss = KdLoss::from_name("lit", 6.0, 0.95).unwrap();
    let mut g = Graph::new(&dev);
    let sv = g.leaf(s.clone());
    let out = kd::kd_loss(&mut g, sv, &t, &y, loss).unwrap();
    assert_eq!(out.components[0].0, "soft_scaled_sum");
    assert_eq!(out.components[1].0, "hard_sum");
    g.backward(out.loss).unwrap();
    let grad = g.grad(sv).unwrap().to_vec().unwrap();
    let f = kd::kd_forward(&s, &t, &y, &loss).unwrap();
    let one = Tensor::scalar(1.0, &dev).unwrap();
    let want = kd::kd_backward(&s, &t, &y, &loss, &f, &one).unwrap();
    assert_eq!(grad, want.to_vec().unwrap());
}

#[test]
fn kd_inputs_and_names_are_checked() {
    let dev = Device::Cpu;
    let s = Tensor::zeros(&[2, 3], &dev).unwrap();
    let t4 = Tensor::zeros(&[2, 4], &dev).unwrap();
    let y = IndexTensor::from_slice(&[2], &[0, 1], &dev).unwrap();
    let bad_y = IndexTensor::from_slice(&[2], &[0, 3], &dev).unwrap();
    let loss = KdLoss::from_name("qd", 2.0, 0.7).unwrap();
    assert!(kd::kd_forward(&s, &t4, &y, &loss).is_err(), "teacher shape");
    let err = kd::kd_forward(&s, &s, &bad_y, &loss).err().unwrap();
    assert!(err.to_string().contains("label 3"), "{err}");
    assert!(KdLoss::from_name("hinton", 2.0, 0.5).is_err());
    assert!(KdLoss::from_name("takd", 0.0, 0.5).is_err());
    assert!(KdLoss::from_name("lma", 2.0, 1.5).is_err());
    let nmt = KdLoss::Nmt {
        num_sentences: 0,
        w_soft: 0.5,
    };
    assert!(kd::kd_forward(&s, &s, &y, &nmt).is_err());
    assert!(kd::mse_forward(&s, &t4).is_err());
}
