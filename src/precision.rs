//! Numeric precision of the conv / GEMM operands (config key `precision`, flag `--precision`).
//!
//! Every mode keeps fp32 master weights, optimizer state, BatchNorm statistics, losses and
//! accumulation; only the operands a tensor core multiplies are rounded. The rounding functions
//! here are the specification the kernels (and the emulator's `mma.h`) follow, so the cpu device
//! can reproduce each mode's numerics exactly: round the operands, then compute in fp32.

use crate::error::{Error, Result};

/// How conv and GEMM operands are represented.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Plain fp32 everywhere (the golden-exact default).
    #[default]
    Fp32,
    /// Operands rounded to TF32 (10-bit mantissa, round to nearest, ties away, as `cvt.rna.tf32.f32`).
    Tf32,
    /// Operands rounded to bfloat16 (round to nearest even), fp32 accumulation — PyTorch autocast bf16.
    Bf16,
    /// Operands rounded to IEEE half (round to nearest even), fp32 accumulation, with dynamic loss
    /// scaling so small gradients survive the fp16 range.
    Fp16,
}

impl Precision {
    /// Every mode, in the order the CLI lists them.
    pub const ALL: [Precision; 4] = [
        Precision::Fp32,
        Precision::Tf32,
        Precision::Bf16,
        Precision::Fp16,
    ];

    /// The config / CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// Whether operands are rounded at all.
    pub fn rounds_operands(self) -> bool {
        self != Precision::Fp32
    }

    /// Whether training needs dynamic loss scaling (fp16's narrow exponent range).
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::Fp16
    }

    /// `v` as the tensor cores see it in this mode, back in f32.
    pub fn round(self, v: f32) -> f32 {
        match self {
            Precision::Fp32 => v,
            Precision::Tf32 => round_tf32(v),
            Precision::Bf16 => half::bf16::from_f32(v).to_f32(),
            Precision::Fp16 => half::f16::from_f32(v).to_f32(),
        }
    }

    /// Round every element of `xs` in place.
    pub fn round_slice(self, xs: &mut [f32]) {
        if self.rounds_operands() {
            xs.iter_mut().for_each(|x| *x = self.round(*x));
        }
    }
}

/// TF32 rounding: keep 10 mantissa bits, round to nearest with ties away from zero
/// (`cvt.rna.tf32.f32`); infinities and NaN pass through.
pub fn round_tf32(v: f32) -> f32 {
    let u = v.to_bits();
    if u & 0x7f80_0000 == 0x7f80_0000 {
        return v;
    }
    f32::from_bits(u.wrapping_add(0x1000) & 0xffff_e000)
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let want = s.trim().to_ascii_lowercase();
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == want)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown precision `{s}`: expected one of fp32, tf32, bf16, fp16"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert!("fp8".parse::<Precision>().is_err());
    }

    #[test]
    fn tf32_rounds_to_nearest_ties_away() {
        // 1 + 2^-11 is exactly half-way between 1 and 1 + 2^-10: ties go away from zero.
        let tie = 1.0 + f32::powi(2.0, -11);
        assert_eq!(round_tf32(tie), 1.0 + f32::powi(2.0, -10));
        assert_eq!(round_tf32(-tie), -(1.0 + f32::powi(2.0, -10)));
        // Just below the tie rounds down.
        assert_eq!(round_tf32(f32::from_bits(tie.to_bits() - 1)), 1.0);
        assert!(round_tf32(f32::NAN).is_nan());
        assert_eq!(round_tf32(f32::INFINITY), f32::INFINITY);
        // Results carry at most 10 mantissa bits.
        for v in [0.1f32, -3.7, 1e-20, 6.02e23] {
            assert_eq!(round_tf32(v).to_bits() & 0x1fff, 0);
        }
    }

    #[test]
    fn bf16_and_fp16_round_to_nearest_even() {
        // 1 + 2^-8 lies half-way between bf16 neighbours 1 and 1 + 2^-7: ties to even (1).
        assert_eq!(Precision::Bf16.round(1.0 + f32::powi(2.0, -8)), 1.0);
        assert_eq!(
            Precision::Bf16.round(1.0 + 3.0 * f32::powi(2.0, -8)),
            1.0 + f32::powi(2.0, -6)
        );
        assert_eq!(Precision::Fp16.round(1.0 + f32::powi(2.0, -11)), 1.0);
        assert_eq!(Precision::Fp16.round(70000.0), f32::INFINITY);
        assert_eq!(Precision::Fp32.round(0.1), 0.1);
    }
}
