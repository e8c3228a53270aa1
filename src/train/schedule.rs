//! Learning-rate schedules of a stage, stepped once per epoch:
//! - multistep: `lr · gamma^(number of milestones ≤ finished epochs)` (PyTorch `MultiStepLR`);
//! - plateau: the rate is multiplied by `plateau_factor` (0.5: halving) after `plateau_patience`
//!   consecutive epochs whose test accuracy did not beat the best so far (Polino et al.'s rule).
//!
//! The state is plain data so that a resumed run continues the schedule exactly.

use crate::config::{ScheduleKind, Stage};
use serde::{Deserialize, Serialize};

/// The learning rate of each epoch: multistep (milestones × gamma) or on plateau (× factor after
/// `patience` epochs without a better test accuracy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Which schedule.
    pub kind: ScheduleKind,
    /// The stage's rate.
    pub base_lr: f64,
    /// Multistep: epochs after which the rate is multiplied by `gamma`.
    pub milestones: Vec<usize>,
    /// Multistep factor.
    pub gamma: f64,
    /// Plateau: epochs without improvement before the rate drops.
    pub patience: usize,
    /// Plateau factor.
    pub factor: f64,
    /// Plateau state: the current rate, the best accuracy seen, epochs since it improved.
    pub current_lr: f64,
    /// Plateau: the best test accuracy so far.
    pub best_accuracy: Option<f64>,
    /// Plateau: epochs since it improved.
    pub bad_epochs: usize,
}

impl LrSchedule {
    /// The schedule of a stage, at its first epoch.
    pub fn new(stage: &Stage) -> Self {
        LrSchedule {
            kind: stage.schedule,
            base_lr: stage.lr,
            milestones: stage.milestones.clone(),
            gamma: stage.gamma,
            patience: stage.plateau_patience,
            factor: stage.plateau_factor,
            current_lr: stage.lr,
            best_accuracy: None,
            bad_epochs: 0,
        }
    }

    /// The rate of epoch `epoch` (0-based).
    pub fn lr(&self, epoch: usize) -> f64 {
        match self.kind {
            ScheduleKind::Multistep => {
                let passed = self.milestones.iter().filter(|&&m| m <= epoch).count();
                self.base_lr * self.gamma.powi(passed as i32)
            }
            ScheduleKind::Plateau => self.current_lr,
        }
    }

    /// Report the test accuracy at the end of an epoch.
    pub fn observe(&mut self, accuracy: f64) {
        if self.kind != ScheduleKind::Plateau {
            return;
        }
        match self.best_accuracy {
            Some(best) if accuracy <= best => {
                self.bad_epochs += 1;
                if self.bad_epochs >= self.patience {
                    self.current_lr *= self.factor;
                    self.bad_epochs = 0;
                }
            }
            _ => {
                self.best_accuracy = Some(accuracy);
                self.bad_epochs = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Schedule;

    fn stage(kind: ScheduleKind) -> Stage {
        Stage::Train(Schedule {
            epochs: 6,
            lr: 0.1,
            milestones: vec![2, 4],
            gamma: 0.1,
            schedule: kind,
            plateau_patience: 2,
            plateau_factor: 0.5,
            ..Schedule::default()
        })
    }

    #[test]
    fn multistep_matches_pytorch_multisteplr() {
        let mut s = LrSchedule::new(&stage(ScheduleKind::Multistep));
        let lrs: Vec<f64> = (0..6)
            .map(|e| {
                s.observe(0.0); // accuracy does not move a multistep schedule
                s.lr(e)
            })
            .collect();
        let want = [0.1, 0.1, 0.01, 0.01, 0.001, 0.001];
        for (got, want) in lrs.iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{lrs:?}");
        }
    }

    #[test]
    fn plateau_halves_after_patience_epochs_without_improvement() {
        let mut s = LrSchedule::new(&stage(ScheduleKind::Plateau));
        let mut lrs = Vec::new();
        // accuracies: improve, improve, flat, flat (-> halve), better, worse, worse (-> halve)
        for acc in [0.5, 0.6, 0.6, 0.55, 0.7, 0.1, 0.2] {
            lrs.push(s.lr(0));
            s.observe(acc);
        }
        lrs.push(s.lr(0));
        assert_eq!(lrs, vec![0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]);
        assert_eq!(s.best_accuracy, Some(0.7));
    }

    #[test]
    fn plateau_state_round_trips_through_json() {
        let mut s = LrSchedule::new(&stage(ScheduleKind::Plateau));
        for acc in [0.5, 0.4] {
            s.observe(acc);
        }
        let back: LrSchedule = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let (mut a, mut b) = (s, back);
        a.observe(0.3);
        b.observe(0.3);
        assert_eq!(a.lr(0), 0.05);
        assert_eq!(a, b);
    }
}
