//! Helpers for the test tiers (public so integration tests and benches can use them):
//! the golden tolerance rule, finite differences in f64, and "run on cpu, then on every kernel
//! device, compare".

use crate::device::{Device, EmuOrder};
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// How far the worst single element may be off, in units of `rel * max|b - d| + abs`. The L2 rule
/// alone lets one element carry the whole `rel * ||b - d||_2 + abs * sqrt(n)`, about `sqrt(n)`
/// times the typical element's tolerance: one corrupted element of a large tensor would pass.
/// Largest observed over every golden case (the golden harness prints it): 0.38 on cpu, 0.78 on the emulator
/// except `model_cfn_smallerModelSpec`, whose BatchNorm1d over a batch of 4 concentrates the
/// float32 error of the emulated kernels in one feature: 3.35 (both thread orders). 5 keeps 1.5x
/// headroom there and still catches one wrong element in any tensor of more than a few hundred.
pub const WORST_ELEMENT_FACTOR: f64 = 5.0;

/// How close `a` came to `b` under the golden rule: the whole-tensor L2 error and the worst element,
/// each with its bound.
#[derive(Clone, Debug)]
pub struct Closeness {
    /// `||a - b||_2`, and its bound `rel * ||b - d||_2 + abs * sqrt(n)`.
    pub l2_err: f64,
    /// The bound of `l2_err`.
    pub l2_bound: f64,
    /// `max_i |a_i - b_i|` (at `worst_index`), and the unit `rel * max_i |b_i - d_i| + abs` that
    /// [`WORST_ELEMENT_FACTOR`] multiplies.
    pub worst_err: f64,
    /// The unit of the worst element.
    pub worst_unit: f64,
    /// Flat index of the worst element.
    pub worst_index: usize,
}

impl Closeness {
    /// The L2 error as a fraction of its bound (pass: <= 1).
    pub fn l2_ratio(&self) -> f64 {
        ratio(self.l2_err, self.l2_bound)
    }
    /// The worst element in units of `rel * max|b - d| + abs` (pass: <= WORST_ELEMENT_FACTOR).
    pub fn worst_ratio(&self) -> f64 {
        ratio(self.worst_err, self.worst_unit)
    }
    /// Both errors within their bounds.
    pub fn passes(&self) -> bool {
        self.l2_err <= self.l2_bound && self.worst_err <= WORST_ELEMENT_FACTOR * self.worst_unit
    }
}

fn ratio(err: f64, bound: f64) -> f64 {
    if err == 0.0 {
        0.0
    } else {
        err / bound
    }
}

/// Measure `got` against `want` (reference `d` = `delta_from`, else 0). Errors on a length
/// mismatch and on non-finite values where the expectation is finite.
pub fn closeness(
    got: &[f32],
    want: &[f32],
    delta_from: Option<&[f32]>,
    rel: f64,
    abs: f64,
) -> std::result::Result<Closeness, String> {
    if got.len() != want.len() {
        return Err(format!("length {} != expected {}", got.len(), want.len()));
    }
    if delta_from.is_some_and(|d| d.len() != want.len()) {
        return Err("delta_from has another length than the expectation".into());
    }
    if got.iter().any(|v| !v.is_finite()) && want.iter().all(|v| v.is_finite()) {
        return Err("result has NaN/Inf".into());
    }
    let (mut sq_err, mut sq_scale, mut worst_err, mut max_scale, mut worst_index) =
        (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0);
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let err = (a as f64 - b as f64).abs();
        let scale = (b as f64 - delta_from.map_or(0.0, |d| d[i] as f64)).abs();
        sq_err += err * err;
        sq_scale += scale * scale;
        max_scale = max_scale.max(scale);
        // A NaN error (non-finite expectations) is the worst, and stays so.
        if !worst_err.is_nan() && (err.is_nan() || err > worst_err) {
            worst_err = err;
            worst_index = i;
        }
    }
    Ok(Closeness {
        l2_err: sq_err.sqrt(),
        l2_bound: rel * sq_scale.sqrt() + abs * (got.len() as f64).sqrt(),
        worst_err,
        worst_unit: rel * max_scale + abs,
        worst_index,
    })
}

/// The golden-file rule: `||a - b||_2 <= rel * ||b - d||_2 + abs * sqrt(n)` (d = 0 here), and the
/// worst element `max|a_i - b_i| <= WORST_ELEMENT_FACTOR * (rel * max|b_i - d_i| + abs)`.
pub fn check_close(
    got: &[f32],
    want: &[f32],
    rel: f64,
    abs: f64,
) -> std::result::Result<(), String> {
    check_close_delta(got, want, None, rel, abs)
}

/// [`check_close`] with a reference `d`: the tolerance is relative to the change `b - d`.
pub fn check_close_delta(
    got: &[f32],
    want: &[f32],
    delta_from: Option<&[f32]>,
    rel: f64,
    abs: f64,
) -> std::result::Result<(), String> {
    let c = closeness(got, want, delta_from, rel, abs)?;
    if c.passes() {
        return Ok(());
    }
    let i = c.worst_index;
    Err(format!(
        "||a-b|| = {:.3e} (bound {:.3e}), worst at [{i}]: {} vs {}, off by {:.3e} (bound {:.3e} = \
         {WORST_ELEMENT_FACTOR} x (rel x max|b-d| + abs)); rel {rel:e}, abs {abs:e}",
        c.l2_err,
        c.l2_bound,
        got[i],
        want[i],
        c.worst_err,
        WORST_ELEMENT_FACTOR * c.worst_unit,
    ))
}

/// Print `SKIP <test>: <reason>` where a passing `cargo test` shows it (straight to stderr, past
/// the test harness's capture), or fail the test when the environment variable `require` is `1`.
/// `<test>` is the running test's name (libtest names each test's thread after it).
#[track_caller]
pub fn skip_unless_required(require: &str, reason: &str) {
    if std::env::var(require).as_deref() == Ok("1") {
        panic!("{require}=1 but {reason}");
    }
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    // One write of the whole line, so lines of parallel tests do not interleave.
    let line = format!("SKIP {test}: {reason} (set {require}=1 to make this a failure)\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Panics, naming `what`, unless `got` is close to `want` under [`check_close`]'s rule.
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

/// `n` standard normal f32 values from `seed`.
pub fn random_f32(seed: u64, n: usize) -> Vec<f32> {
    Rng::new(seed).normal_vec(n, 1.0)
}
/// `n` standard normal f64 values from `seed`.
pub fn random_f64(seed: u64, n: usize) -> Vec<f64> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal()).collect()
}
/// `v` widened to f64.
pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The translation spec's probe fill (SPEC-TRANSLATION §2.6, reused by §5.9): element `k` (flat,
/// row-major) of parameter tensor number `t` (state-dict order), so a port can reproduce the
/// seed's probed forwards without its weights.
pub fn spec_hash_fill(t: usize, k: usize) -> f32 {
    let mut x = (k as u64 + 1_000_003 * t as u64 + 1) as u32;
    for _ in 0..2 {
        x = ((x >> 16) ^ x).wrapping_mul(0x45d9f3b);
    }
    x = (x >> 16) ^ x;
    (0.5 * (2.0 * x as f64 / 4_294_967_296.0 - 1.0)) as f32
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 10 000 values of a smooth pattern, |b| <= 1.
    fn want() -> Vec<f32> {
        (0..10_000).map(|i| (i as f32 * 0.37).sin()).collect()
    }

    #[test]
    fn one_wrong_element_that_the_l2_rule_lets_through_fails() {
        let (rel, abs) = (1e-5, 1e-7);
        let want = want();
        let mut got = want.clone();
        // Half the L2 bound (about 35 x rel x max|b|) in one element.
        let l2_bound = closeness(&want, &want, None, rel, abs).unwrap().l2_bound;
        got[4321] += (0.5 * l2_bound) as f32;
        let c = closeness(&got, &want, None, rel, abs).unwrap();
        assert!(c.l2_err <= c.l2_bound, "the L2 rule alone passes it");
        assert_eq!(c.worst_index, 4321);
        let err = check_close(&got, &want, rel, abs).unwrap_err();
        assert!(err.contains("worst at [4321]"), "{err}");
        // The same relative to a reference `d`: the unit is the change `b - d`.
        let d: Vec<f32> = want.iter().map(|b| b - 0.01 * b).collect();
        let l2_bound = closeness(&want, &want, Some(&d), rel, abs)
            .unwrap()
            .l2_bound;
        let mut got = want.clone();
        got[17] -= (0.5 * l2_bound) as f32;
        assert!(check_close_delta(&got, &want, Some(&d), rel, abs).is_err());
    }

    #[test]
    fn an_error_spread_over_every_element_within_the_tolerance_passes() {
        let (rel, abs) = (1e-5, 1e-7);
        let want = want();
        // Every element off by 0.9 x rel x |b|: at the L2 bound, nowhere near the element bound.
        let got: Vec<f32> = want
            .iter()
            .map(|b| (*b as f64 * (1.0 + 0.9 * rel)) as f32)
            .collect();
        let c = closeness(&got, &want, None, rel, abs).unwrap();
        assert!(c.l2_ratio() > 0.5 && c.worst_ratio() < 1.5, "{c:?}");
        check_close(&got, &want, rel, abs).unwrap();
        // Five units in the worst element pass, a little more fails.
        let mut got = want.clone();
        let unit = c.worst_unit;
        got[9] += (0.99 * WORST_ELEMENT_FACTOR * unit) as f32;
        check_close(&got, &want, rel, abs).unwrap();
        got[9] = want[9] + (1.05 * WORST_ELEMENT_FACTOR * unit) as f32;
        assert!(check_close(&got, &want, rel, abs).is_err());
    }

    #[test]
    fn lengths_and_non_finite_results_are_errors() {
        assert!(check_close(&[1.0], &[1.0, 2.0], 1e-5, 0.0).is_err());
        assert!(check_close(&[f32::NAN], &[1.0], 1e-5, 0.0).is_err());
        assert!(check_close(&[1.0], &[1.0], 1e-5, 0.0).is_ok());
    }
}
