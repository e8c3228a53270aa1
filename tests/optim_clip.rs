//! Global gradient-norm clipping (PyTorch 0.3.1 `clip_grad_norm`): hand-derived values, the
//! no-clip case, and kernel devices (no host read) against cpu.

use lit_engine::nn::ParamStore;
use lit_engine::optim::clip::CLIP_MAX_TENSORS;
use lit_engine::optim::{clip_grad_norm, clip_grad_norm_cpu};
use lit_engine::testing::{assert_devices_agree, random_f32};
use lit_engine::{Device, Tensor};

#[test]
fn reference_clips_to_the_total_norm_of_all_tensors() {
    // Norms 5 and 12: total 13, coef 5 / (13 + 1e-6).
    let (mut a, mut b) = (vec![3.0f32, 4.0], vec![12.0f32]);
    let (norm, coef) = clip_grad_norm_cpu(&mut [&mut a, &mut b], 5.0);
    let want = (5.0 / (13.0 + 1e-6)) as f32;
    assert_eq!((norm, coef), (13.0, want));
    assert_eq!(a, vec![3.0 * want, 4.0 * want]);
    assert_eq!(b, vec![12.0 * want]);
    // Below the threshold (coef 5/4 >= 1): nothing changes.
    let (mut a, mut b) = (vec![2.4f32, -3.2], vec![0.0f32]);
    let (norm, coef) = clip_grad_norm_cpu(&mut [&mut a, &mut b], 5.0);
    assert!((norm - 4.0).abs() < 1e-6, "{norm}");
    assert!(coef > 1.0 && coef < 1.3, "{coef}");
    assert_eq!((a, b), (vec![2.4, -3.2], vec![0.0]));
}

fn store_with(dev: &Device, sizes: &[usize], scale: f32) -> ParamStore {
    let mut s = ParamStore::new();
    for (i, &n) in sizes.iter().enumerate() {
        let name = format!("p{i:03}");
        s.add_param(&name, Tensor::zeros(&[n], dev).unwrap())
            .unwrap();
        let g: Vec<f32> = random_f32(40 + i as u64, n)
            .iter()
            .map(|v| v * scale)
            .collect();
        s.accumulate_grad(&name, Tensor::from_vec(&[n], g, dev).unwrap())
            .unwrap();
    }
    // A frozen parameter's gradient is neither counted nor scaled.
    s.add_param("frozen", Tensor::zeros(&[2], dev).unwrap())
        .unwrap();
    s.get_mut("frozen").unwrap().grad = Some(Tensor::from_slice(&[2], &[1e3, 1e3], dev).unwrap());
    s.set_trainable("frozen", false).unwrap();
    s
}

fn clipped(dev: &Device, sizes: &[usize], scale: f32) -> lit_engine::Result<Vec<Tensor>> {
    let mut store = store_with(dev, sizes, scale);
    let mut out = vec![clip_grad_norm(&mut store, 5.0)?];
    for (name, p) in store.iter() {
        out.push(p.grad.clone().expect(name));
    }
    Ok(out)
}

#[test]
fn kernel_devices_agree_with_cpu_clipped_or_not() {
    // Odd sizes, an empty tensor, one spanning several blocks of partial sums.
    let sizes = [1, 7, 0, 33, 5000, 3];
    for scale in [1.0, 1e-3] {
        assert_devices_agree("clip_grad_norm", 1e-6, 0.0, |dev| {
            clipped(dev, &sizes, scale)
        });
    }
    let on_cpu = clipped(&Device::Cpu, &sizes, 1.0).unwrap()[0]
        .to_vec()
        .unwrap();
    assert!(on_cpu[1] < 1.0, "the test must clip: {on_cpu:?}");
    let on_cpu = clipped(&Device::Cpu, &sizes, 1e-3).unwrap()[0]
        .to_vec()
        .unwrap();
    assert!(on_cpu[1] > 1.0, "the test must not clip: {on_cpu:?}");
}

#[test]
fn more_tensors_than_one_launch_holds() {
    let sizes: Vec<usize> = (0..CLIP_MAX_TENSORS + 5).map(|i| 1 + i % 4).collect();
    assert_devices_agree("clip_grad_norm multi-launch", 1e-6, 0.0, |dev| {
        clipped(dev, &sizes, 1.0)
    });
}

#[test]
fn a_bad_threshold_is_refused() {
    let mut store = store_with(&Device::Cpu, &[2], 1.0);
    for bad in [0.0, -1.0, f64::NAN] {
        assert!(clip_grad_norm(&mut store, bad).is_err());
    }
}
