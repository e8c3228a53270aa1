//! The onmt LayerNorm (unbiased std, eps on the std): the spec's probed example, f64 finite
//! differences of the CPU reference, and kernel devices (emu both thread orders) against cpu.

use lit_engine::ops::layer_norm::{self as ln, ONMT_LAYER_NORM_EPS};
use lit_engine::testing::{
    assert_close, assert_devices_agree, assert_gradient, dot, random_f32, random_f64,
};
use lit_engine::{Device, Error, Graph, Tensor};

fn tensor(seed: u64, shape: &[usize], dev: &Device) -> Tensor {
    Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
}

#[test]
fn layer_norm_matches_the_spec_example() {
    // SPEC-TRANSLATION §5.5 [PROBED], a_2 = 1, b_2 = 0.
    let z = [-1.5f32, -0.4, 0.0, 0.3, 0.9, 2.2, -0.05, 1.1];
    let want = [
        -1.644198f32,
        -0.649769,
        -0.288158,
        -0.016951,
        0.525465,
        1.7007,
        -0.333360,
        0.706271,
    ];
    let dev = Device::Cpu;
    let (out, _) = ln::layer_norm_forward(
        &Tensor::from_slice(&[1, 8], &z, &dev).unwrap(),
        &Tensor::full(&[8], 1.0, &dev).unwrap(),
        &Tensor::zeros(&[8], &dev).unwrap(),
        ONMT_LAYER_NORM_EPS,
    )
    .unwrap();
    assert_close("spec example", &out.to_vec().unwrap(), &want, 2e-6, 1e-6);
}

#[test]
fn layer_norm_backward_matches_finite_differences() {
    let (rows, cols) = (3, 6);
    let eps = 1e-3;
    let n = rows * cols;
    // One row nearly constant so that the eps-on-the-std term matters.
    let mut vars = random_f64(31, n + 2 * cols);
    for v in &mut vars[cols..2 * cols] {
        *v *= 1e-2;
    }
    let w = random_f64(32, n);
    let forward = |v: &[f64]| {
        let (mut y, mut m, mut s) = (vec![0.0; n], vec![0.0; rows], vec![0.0; rows]);
        ln::layer_norm_forward_cpu(
            &v[..n],
            &v[n..n + cols],
            &v[n + cols..],
            eps,
            &mut y,
            &mut m,
            &mut s,
        );
        (y, m, s)
    };
    let f = |v: &[f64]| dot(&forward(v).0, &w);
    let (_, m, s) = forward(&vars);
    let (mut dz, mut da, mut db) = (vec![0.0; n], vec![0.0; cols], vec![0.0; cols]);
    ln::layer_norm_backward_cpu(
        &vars[..n],
        &vars[n..n + cols],
        &w,
        &m,
        &s,
        eps,
        &mut dz,
        &mut da,
        &mut db,
    );
    let analytic: Vec<f64> = dz.into_iter().chain(da).chain(db).collect();
    assert_gradient("layer_norm_onmt (z, a_2, b_2)", &f, &vars, &analytic, 1e-6);
}

#[test]
fn layer_norm_kernels_match_cpu() {
    // [7, 37]: odd rows and a partial warp; [3, 300]: wider than one block (threads loop);
    // [131, 5]: several row chunks of the parameter sums, the last one partial; [2, 3, 9]: 3-D.
    for shape in [vec![7, 37], vec![3, 300], vec![131, 5], vec![2, 3, 9]] {
        let cols = *shape.last().unwrap();
        assert_devices_agree("layer_norm_onmt", 1e-5, 1e-6, |dev| {
            let z = tensor(41, &shape, dev);
            let a = tensor(42, &[cols], dev);
            let b = tensor(43, &[cols], dev);
            let dy = tensor(44, &shape, dev);
            let (y, stats) = ln::layer_norm_forward(&z, &a, &b, ONMT_LAYER_NORM_EPS)?;
            let (dz, da, db) = ln::layer_norm_backward(&z, &a, &stats, &dy, ONMT_LAYER_NORM_EPS)?;
            Ok(vec![y, stats.mean, stats.std, dz, da, db])
        });
    }
}

#[test]
fn layer_norm_autograd_routes_every_gradient() {
    let dev = Device::Cpu;
    let (z, a, b, dy) = (
        tensor(51, &[4, 5], &dev),
        tensor(52, &[5], &dev),
        tensor(53, &[5], &dev),
        tensor(54, &[4, 5], &dev),
    );
    let mut g = Graph::new(&dev);
    let (zv, av, bv) = (g.leaf(z.clone()), g.leaf(a.clone()), g.leaf(b.clone()));
    let y = ln::layer_norm_onmt(&mut g, zv, av, bv, ONMT_LAYER_NORM_EPS).unwrap();
    g.backward_with(y, Some(dy.clone())).unwrap();
    let (_, stats) = ln::layer_norm_forward(&z, &a, &b, ONMT_LAYER_NORM_EPS).unwrap();
    let (dz, da, db) = ln::layer_norm_backward(&z, &a, &stats, &dy, ONMT_LAYER_NORM_EPS).unwrap();
    for (v, want) in [(zv, dz), (av, da), (bv, db)] {
        assert_eq!(g.grad(v).unwrap().to_vec().unwrap(), want.to_vec().unwrap());
    }
}

#[test]
fn layer_norm_rejects_bad_shapes() {
    let dev = Device::Cpu;
    let (a, b) = (tensor(1, &[4], &dev), tensor(2, &[4], &dev));
    let one_col = tensor(3, &[4, 1], &dev);
    let (a1, b1) = (tensor(1, &[1], &dev), tensor(2, &[1], &dev));
    assert!(matches!(
        ln::layer_norm_forward(&one_col, &a1, &b1, 1e-3),
        Err(Error::Shape(_))
    ));
    let z = tensor(4, &[3, 5], &dev);
    assert!(matches!(
        ln::layer_norm_forward(&z, &a, &b, 1e-3),
        Err(Error::Shape(_))
    ));
    let z = tensor(5, &[3, 4], &dev);
    assert!(ln::layer_norm_forward(&z, &a, &b, f32::NAN).is_err());
}
