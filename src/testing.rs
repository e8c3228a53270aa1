//! Helpers for the test tiers (public so integration tests and benches can use them):
//! the golden tolerance rule, finite differences in f64, and "run on cpu, then on every kernel
//! device, compare".

use crate::device::{Device, EmuOrder};
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// The golden-file rule: `||a - b||_2 <= rel * ||b - d||_2 + abs * sqrt(n)` (d = 0 here).
pub fn check_close(
    got: &[f32],
    want: &[f32],
    rel: f64,
    abs: f64,
) -> std::result::Result<(), String> {
    check_close_delta(got, want, None, rel, abs)
}

/// The golden-file rule with a reference `d` (`||a-b|| <= rel*||b-d|| + abs*sqrt(n)`).
pub fn check_close_delta(
    got: &[f32],
    want: &[f32],
    delta_from: Option<&[f32]>,
    rel: f64,
    abs: f64,
) -> std::result::Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("length {} != expected {}", got.len(), want.len()));
    }
    if got.iter().any(|v| !v.is_finite()) && want.iter().all(|v| v.is_finite()) {
        return Err("result has NaN/Inf".into());
    }
    let err: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let scale: f64 = match delta_from {
        Some(d) => want
            .iter()
            .zip(d)
            .map(|(b, d)| (*b as f64 - *d as f64).powi(2))
            .sum::<f64>()
            .sqrt(),
        None => want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt(),
    };
    let bound = rel * scale + abs * (got.len() as f64).sqrt();
    if err <= bound {
        Ok(())
    } else {
        let worst = got
            .iter()
            .zip(want)
            .enumerate()
            .max_by(|a, b| (a.1 .0 - a.1 .1).abs().total_cmp(&(b.1 .0 - b.1 .1).abs()))
            .map(|(i, (a, b))| format!("worst at [{i}]: {a} vs {b}"))
            .unwrap_or_default();
        Err(format!(
            "||a-b|| = {err:.3e} > bound {bound:.3e} (rel {rel:e}, abs {abs:e}); {worst}"
        ))
    }
}

#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f64, abs: f64) {
    if let Err(e) = check_close(got, want, rel, abs) {
        panic!("{what}: {e}");
    }
}

/// Central differences of a scalar function of many variables, in f64.
pub fn finite_diff(f: &dyn Fn(&[f64]) -> f64, x: &[f64], eps: f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + eps;
            let fp = f(&xp);
            xp[i] = orig - eps;
            let fm = f(&xp);
            xp[i] = orig;
            (fp - fm) / (2.0 * eps)
        })
        .collect()
}

/// Compare an analytic f64 gradient with central differences (eps 1e-6); fails on a max relative
/// error (to max(|g|, 1)) above `tol`.
#[track_caller]
pub fn assert_gradient(
    what: &str,
    f: &dyn Fn(&[f64]) -> f64,
    x: &[f64],
    analytic: &[f64],
    tol: f64,
) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let numeric = finite_diff(f, x, 1e-6);
    for (i, (a, n)) in analytic.iter().zip(&numeric).enumerate() {
        let err = (a - n).abs() / n.abs().max(1.0);
        assert!(
            err <= tol,
            "{what}: d/dx[{i}] analytic {a} vs finite-difference {n} (rel err {err:e} > {tol:e})"
        );
    }
}

/// `sum(out * weights)`: turns a tensor-valued function into the scalar a gradient check needs.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn random_f32(seed: u64, n: usize) -> Vec<f32> {
    Rng::new(seed).normal_vec(n, 1.0)
}
pub fn random_f64(seed: u64, n: usize) -> Vec<f64> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal()).collect()
}
pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Devices that execute kernels: the emulator in forward and reverse thread order, plus cuda when
/// one is usable (and required to be when `LIT_REQUIRE_GPU=1`).
pub fn kernel_devices() -> Vec<Device> {
    let mut v = vec![
        Device::emu_with_order(EmuOrder::Forward).expect("emu device"),
        Device::emu_with_order(EmuOrder::Reverse).expect("emu device"),
    ];
    let require = matches!(std::env::var("LIT_REQUIRE_GPU").as_deref(), Ok("1"));
    match Device::cuda() {
        Ok(d) => v.push(d),
        Err(e) if require => panic!("LIT_REQUIRE_GPU=1 but cuda is unusable: {e}"),
        Err(_) => {}
    }
    v
}

/// Run `f` on cpu and on every kernel device; every output must agree with cpu within `rel`/`abs`.
#[track_caller]
pub fn assert_devices_agree(
    what: &str,
    rel: f64,
    abs: f64,
    f: impl Fn(&Device) -> Result<Vec<Tensor>>,
) {
    let want = f(&Device::Cpu).unwrap_or_else(|e| panic!("{what} on cpu: {e}"));
    for dev in kernel_devices() {
        let got = f(&dev).unwrap_or_else(|e| panic!("{what} on {}: {e}", dev.name()));
        assert_eq!(got.len(), want.len(), "{what}: number of outputs");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.shape(),
                w.shape(),
                "{what} output {i} on {}: shape",
                dev.name()
            );
            let (g, w) = (g.to_vec().unwrap(), w.to_vec().unwrap());
            if let Err(e) = check_close(&g, &w, rel, abs) {
                panic!("{what} output {i} on {} vs cpu: {e}", dev.name());
            }
        }
    }
}
