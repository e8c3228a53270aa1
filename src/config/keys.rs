//! The keys that several stage kinds share, each written once, in three groups: [`Schedule`]
//! (every training stage), [`Distill`] (every distillation stage) and [`Quantization`] (the
//! quantizing stages).
//!
//! A stage is written flat in YAML (`kd: {epochs: 2, lr: 0.1, temperature: 4}`) and must reject a
//! key its kind does not take. serde's `deny_unknown_fields` does not work through
//! `#[serde(flatten)]`, so each group's fields live in a list macro (`schedule_keys!`,
//! `distill_keys!`, `quantization_keys!`) that hands them to the macro it wraps:
//! `group_struct!` turns one list into its group struct, `stage_struct!` turns several lists plus
//! a kind's own keys into a stage struct that holds the groups as fields but reads (and rejects
//! unknown) keys flat. Adding a key to a list adds it to every kind that uses the group.

use serde::{Deserialize, Serialize};

/// The common keys of every training stage, handed to `$next!` after the groups already
/// collected (see the module documentation).
macro_rules! schedule_keys {
    ($next:ident ! { $($inner:tt)* } $($groups:tt)*) => {
        $next! { $($inner)* $($groups)*
            /// The common keys of every training stage: length, learning-rate schedule and
            /// optimizer overrides.
            schedule: Schedule {
                /// Epochs to train (`--epochs` overrides every stage's).
                epochs: usize,
                /// Learning rate at the start of the stage.
                lr: f64,
                /// Epochs (1-based counts of finished epochs) after which the learning rate is
                /// multiplied by `gamma`.
                #[serde(default)]
                milestones: Vec<usize>,
                /// The multistep schedule's factor.
                #[serde(default = "crate::config::keys::default_gamma")]
                gamma: f64,
                /// How the learning rate moves.
                #[serde(default)]
                schedule: crate::config::keys::ScheduleKind,
                /// Plateau schedule: epochs without improvement before the rate is cut.
                #[serde(default = "crate::config::keys::default_patience")]
                plateau_patience: usize,
                /// Plateau schedule: the factor of each cut.
                #[serde(default = "crate::config::keys::default_plateau_factor")]
                plateau_factor: f64,
                /// Overrides `hyperparameters.momentum`.
                #[serde(default)]
                momentum: Option<f64>,
                /// Overrides `hyperparameters.nesterov`.
                #[serde(default)]
                nesterov: Option<bool>,
                /// Overrides `hyperparameters.weight_decay`.
                #[serde(default)]
                weight_decay: Option<f64>,
            }
        }
    };
}

/// The KD loss keys of every distillation stage (see the module documentation).
macro_rules! distill_keys {
    ($next:ident ! { $($inner:tt)* } $($groups:tt)*) => {
        $next! { $($inner)* $($groups)*
            /// The KD loss keys of a distillation stage.
            distill: Distill {
                /// KD loss: `lit | qd | lma | takd` (SPEC-NOTES §7); default by stage kind.
                #[serde(default)]
                kd_variant: Option<String>,
                /// Overrides `hyperparameters.temperature`.
                #[serde(default)]
                temperature: Option<f64>,
                /// The KD weight of `kd_variant` (lit: alpha on the hard term; qd/lma: w_soft;
                /// takd: lambda).
                #[serde(default)]
                weight: Option<f64>,
            }
        }
    };
}

/// Which parameters are quantized and in what buckets (see the module documentation).
macro_rules! quantization_keys {
    ($next:ident ! { $($inner:tt)* } $($groups:tt)*) => {
        $next! { $($inner)* $($groups)*
            /// Which parameters are quantized, and in what buckets.
            quantization: Quantization {
                /// Elements per quantization bucket (absent: one bucket per tensor).
                #[serde(default)]
                bucket_size: Option<usize>,
                /// Polino's exclusion rule: when false, `named_parameters()` index 0 and the last
                /// index are not quantized.
                #[serde(default)]
                quantize_first_and_last_layer: Option<bool>,
                /// Only parameters whose name starts with one of these prefixes are quantized
                /// (default all).
                #[serde(default)]
                quantized_layers: Option<Vec<String>>,
            }
        }
    };
}

/// One key group as a struct of its own (it also parses on its own: a plain stage is a
/// [`Schedule`]).
macro_rules! group_struct {
    (
        $(#[$meta:meta])*
        $group:ident : $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }
    };
}

/// A stage struct: its own keys plus key groups, written and serialized flat. It is read through
/// a flat struct of the same name declared inside `deserialize`, so serde rejects unknown keys
/// (with the valid ones listed) and names the struct as before.
macro_rules! stage_struct {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$ometa:meta])* $own:ident : $oty:ty, )*
        }
        $(
            $(#[$gmeta:meta])*
            $group:ident : $gty:ident {
                $( $(#[$fmeta:meta])* $field:ident : $fty:ty, )*
            }
        )*
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, Serialize)]
        pub struct $name {
            $( $(#[$gmeta])* #[serde(flatten)] pub $group: $gty, )*
            $( $(#[$ometa])* pub $own: $oty, )*
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> std::result::Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct $name {
                    $( $( $(#[$fmeta])* $field: $fty, )* )*
                    $( $(#[$ometa])* $own: $oty, )*
                }
                let flat = $name::deserialize(deserializer)?;
                Ok(Self {
                    $( $group: $gty { $( $field: flat.$field, )* }, )*
                    $( $own: flat.$own, )*
                })
            }
        }
    };
}

schedule_keys! { group_struct! {} }
distill_keys! { group_struct! {} }
quantization_keys! { group_struct! {} }

/// How the learning rate moves during a stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// `lr · gamma^(milestones passed)` (PyTorch `MultiStepLR`, stepped once per epoch).
    #[default]
    Multistep,
    /// Multiply by `plateau_factor` when the test accuracy has not improved for
    /// `plateau_patience` epochs (Polino et al.'s halving).
    Plateau,
}

impl Schedule {
    /// Learning rate of epoch `epoch` (0-based) under the multistep schedule, as PyTorch's
    /// `MultiStepLR` stepped once per epoch.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let passed = self.milestones.iter().filter(|&&m| m <= epoch).count();
        self.lr * self.gamma.powi(passed as i32)
    }
}

/// Default of `gamma`.
pub(crate) fn default_gamma() -> f64 {
    0.1
}
/// Default of `plateau_patience`.
pub(crate) fn default_patience() -> usize {
    1
}
/// Default of `plateau_factor`.
pub(crate) fn default_plateau_factor() -> f64 {
    0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multistep_schedule_matches_pytorch_multisteplr() {
        let s = Schedule {
            epochs: 5,
            lr: 0.1,
            milestones: vec![3],
            gamma: 0.1,
            ..Schedule::default()
        };
        let lrs: Vec<f64> = (0..5).map(|e| s.lr_at(e)).collect();
        for (got, want) in lrs.iter().zip([0.1, 0.1, 0.1, 0.01, 0.01]) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
    }
}
