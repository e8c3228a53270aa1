//! Parameter initialisation schemes with PyTorch's semantics (SPEC-NOTES §1).
//!
//! Fans follow `torch.nn.init._calculate_fan_in_and_fan_out`: for a weight `[out, in, *kernel]`,
//! `fan_in = in * prod(kernel)` and `fan_out = out * prod(kernel)` (see [`fans`]).

use crate::device::Device;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// How a parameter tensor's initial values are drawn (from the model's [`Rng`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// `U(-1/sqrt(fan_in), +1/sqrt(fan_in))`: PyTorch's default for conv/linear weights and biases.
    PytorchDefault,
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: `N(0, sqrt(2/fan_out))`.
    KaimingNormalFanOut,
    /// `kaiming_normal_(mode="fan_in", nonlinearity="relu")`: `N(0, sqrt(2/fan_in))`.
    KaimingNormalFanIn,
    /// `N(0, std)`.
    NormalStd(f32),
    /// `xavier_uniform_(gain)`: `U(-a, a)`, `a = gain * sqrt(6/(fan_in + fan_out))`.
    XavierUniform(f32),
    /// `U(lo, hi)`.
    Uniform(f32, f32),
    /// Every element equal to the value.
    Constant(f32),
}

/// PyTorch's `(fan_in, fan_out)` of a weight shape: `[out, in, *kernel]` gives
/// `(in * k, out * k)`; a 1-D shape `[n]` gives `(n, n)` (biases are initialised from the
/// weight's fan_in by the layer, not from this).
pub fn fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [out, inp, kernel @ ..] => {
            let receptive: usize = kernel.iter().product();
            (inp * receptive, out * receptive)
        }
    }
}

/// A tensor of `shape` drawn from `init` (elements in row-major order, one draw each).
pub fn init_tensor(
    init: Init,
    shape: &[usize],
    fan_in: usize,
    fan_out: usize,
    device: &Device,
    rng: &mut Rng,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let need_fan = |fan: usize, which: &str| -> Result<f64> {
        if fan == 0 {
            return Err(Error::op_arg(
                "init",
                format!("{init:?} init of a {shape:?} tensor needs a positive {which}, got 0"),
            ));
        }
        Ok(fan as f64)
    };
    let data = match init {
        Init::PytorchDefault => {
            let bound = 1.0 / need_fan(fan_in, "fan_in")?.sqrt();
            rng.uniform_vec(n, -bound as f32, bound as f32)
        }
        Init::KaimingNormalFanOut => {
            let std = (2.0 / need_fan(fan_out, "fan_out")?).sqrt();
            rng.normal_vec(n, std as f32)
        }
        Init::KaimingNormalFanIn => {
            let std = (2.0 / need_fan(fan_in, "fan_in")?).sqrt();
            rng.normal_vec(n, std as f32)
        }
        Init::NormalStd(std) => {
            if !(std >= 0.0 && std.is_finite()) {
                return Err(Error::op_arg(
                    "init",
                    format!("normal init needs a finite std >= 0, got {std}"),
                ));
            }
            rng.normal_vec(n, std)
        }
        Init::XavierUniform(gain) => {
            let fan_sum = need_fan(fan_in + fan_out, "fan_in + fan_out")?;
            let bound = gain as f64 * (6.0 / fan_sum).sqrt();
            rng.uniform_vec(n, -bound as f32, bound as f32)
        }
        Init::Uniform(lo, hi) => {
            if !(lo <= hi && lo.is_finite() && hi.is_finite()) {
                return Err(Error::op_arg(
                    "init",
                    format!("uniform init needs finite lo <= hi, got [{lo}, {hi})"),
                ));
            }
            rng.uniform_vec(n, lo, hi)
        }
        Init::Constant(value) => vec![value; n],
    };
    Tensor::from_vec(shape, data, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(v: &[f32]) -> (f64, f64, f32, f32) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let lo = v.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        (mean, var.sqrt(), lo, hi)
    }

    fn draw(init: Init, shape: &[usize]) -> Vec<f32> {
        let (fi, fo) = fans(shape);
        init_tensor(init, shape, fi, fo, &Device::Cpu, &mut Rng::new(7))
            .unwrap()
            .to_vec()
            .unwrap()
    }

    #[test]
    fn fans_follow_pytorch() {
        assert_eq!(fans(&[16, 3, 3, 3]), (27, 144));
        assert_eq!(fans(&[64, 16, 3]), (48, 192));
        assert_eq!(fans(&[10, 64]), (64, 10));
    }

    #[test]
    fn uniform_schemes_respect_their_bounds() {
        // fan_in = 32*9 = 288: bound 1/sqrt(288); a std of bound/sqrt(3) is the uniform's.
        let v = draw(Init::PytorchDefault, &[64, 32, 3, 3]);
        let bound = 1.0 / 288f32.sqrt();
        let (mean, std, lo, hi) = moments(&v);
        assert!(lo >= -bound && hi < bound && hi > 0.95 * bound && lo < -0.95 * bound);
        assert!(mean.abs() < 0.01 * bound as f64);
        assert!((std / (bound as f64 / 3f64.sqrt()) - 1.0).abs() < 0.03);

        let gain = 2f32.sqrt();
        let v = draw(Init::XavierUniform(gain), &[64, 32, 3, 3]);
        let a = gain * (6.0 / (288.0 + 576.0f32)).sqrt();
        let (_, _, lo, hi) = moments(&v);
        assert!(lo >= -a && hi < a && hi > 0.95 * a && lo < -0.95 * a);
    }

    #[test]
    fn kaiming_normal_std_uses_the_right_fan() {
        let v = draw(Init::KaimingNormalFanOut, &[64, 32, 3, 3]);
        let (mean, std, _, _) = moments(&v);
        let want = (2.0 / 576.0f64).sqrt();
        assert!(mean.abs() < 0.02 * want && (std / want - 1.0).abs() < 0.03);
        let v = draw(Init::KaimingNormalFanIn, &[64, 32, 3, 3]);
        let (_, std, _, _) = moments(&v);
        let want = (2.0 / 288.0f64).sqrt();
        assert!((std / want - 1.0).abs() < 0.03);
    }

    #[test]
    fn constant_and_bad_arguments() {
        assert!(draw(Init::Constant(0.5), &[3, 2]).iter().all(|&x| x == 0.5));
        let err = init_tensor(
            Init::PytorchDefault,
            &[4],
            0,
            0,
            &Device::Cpu,
            &mut Rng::new(1),
        );
        assert!(err.is_err());
        let err = init_tensor(
            Init::Uniform(1.0, 0.0),
            &[4],
            1,
            1,
            &Device::Cpu,
            &mut Rng::new(1),
        );
        assert!(err.is_err());
    }
}
