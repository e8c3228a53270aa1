//! Learning-rate schedules of a stage, stepped once per epoch:
//! - multistep: `lr · gamma^(number of milestones ≤ finished epochs)` (PyTorch `MultiStepLR`);
//! - plateau: the rate is multiplied by `plateau_factor` (0.5: halving) after `plateau_patience`
//!   consecutive epochs whose test accuracy did not beat the best so far (Polino et al.'s rule).
//!
//! Translation (SPEC-TRANSLATION §3.4, §6.2; OpenNMT-py 0.x `onmt/Optim.py`):
//! - [`NoamSchedule`]: the rate of every optimizer step (LMA Transformers with Adam);
//! - [`OnmtDecay`]: `updateLearningRate` after each epoch's validation perplexity (QD LSTMs with
//!   SGD): halve from epoch `start_decay_at` on, or from the first epoch whose perplexity rose.
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

/// The Noam rate (tensor2tensor; OpenNMT-py `Optim.step` with `decay_method 'noam'`), set before
/// every optimizer step: `factor · (d^−0.5 · min(step^−0.5, step · warmup^−1.5))` in f64, in
/// Python's order, where `step` counts optimizer steps from 1 across epochs (never reset within a
/// run) and d is the model's `rnn_size`. Rises linearly to its peak at `step = warmup`, then decays
/// as `step^−0.5`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoamSchedule {
    /// The optimizer's `lr` option (1.0 in the LMA runs).
    pub factor: f64,
    /// The model width d (`rnn_size`).
    pub model_size: usize,
    /// Warm-up steps (8000 in the LMA runs).
    pub warmup: u64,
    /// Steps taken so far (`Optim._step`).
    pub step: u64,
}

impl NoamSchedule {
    /// The LMA runs' schedule (factor 1, warm-up 8000) for a model of width `model_size`.
    pub fn lma(model_size: usize) -> Self {
        NoamSchedule {
            factor: 1.0,
            model_size,
            warmup: 8000,
            step: 0,
        }
    }

    /// The rate of optimizer step `step` (1-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        let (d, s, w) = (self.model_size as f64, step as f64, self.warmup as f64);
        self.factor * (d.powf(-0.5) * s.powf(-0.5).min(s * w.powf(-1.5)))
    }

    /// Counts one more step and returns its rate (call before each optimizer step).
    pub fn advance(&mut self) -> f64 {
        self.step += 1;
        self.lr_at(self.step)
    }
}

/// OpenNMT-py 0.x `Optim.updateLearningRate(ppl, epoch)`, called after the validation of each
/// epoch: decay starts at epoch `start_decay_at` or at the first epoch whose perplexity is above
/// the previous epoch's, and never stops; while it is on, every call multiplies the rate by
/// `lr_decay`. QD translation: lr 1, `lr_decay` 0.5, `start_decay_at` 8, so epochs 1–8 run at 1
/// and epoch k ≥ 9 at 0.5^(k−8) when the perplexity never rises.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnmtDecay {
    /// The current rate.
    pub lr: f64,
    /// The factor of each decay.
    pub lr_decay: f64,
    /// The 1-based epoch from which the rate decays regardless of the perplexity.
    pub start_decay_at: usize,
    /// The previous epoch's validation perplexity.
    pub last_ppl: Option<f64>,
    /// Whether decay has started.
    pub start_decay: bool,
}

impl OnmtDecay {
    /// The schedule at its first epoch.
    pub fn new(lr: f64, lr_decay: f64, start_decay_at: usize) -> Self {
        OnmtDecay {
            lr,
            lr_decay,
            start_decay_at,
            last_ppl: None,
            start_decay: false,
        }
    }

    /// Report epoch `epoch`'s (1-based) validation perplexity; returns the rate of the next epoch.
    pub fn observe(&mut self, epoch: usize, ppl: f64) -> f64 {
        if epoch >= self.start_decay_at {
            self.start_decay = true;
        }
        if self.last_ppl.is_some_and(|last| ppl > last) {
            self.start_decay = true;
        }
        if self.start_decay {
            self.lr *= self.lr_decay;
        }
        self.last_ppl = Some(ppl);
        self.lr
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

    #[test]
    fn noam_matches_the_probed_lma_rates() {
        // SPEC-TRANSLATION §6.2 [PROBED]: d = 512 at steps 1, 4000, 8000, 16000, 100000, and the
        // peaks (step 8000) of the narrower students.
        let s = NoamSchedule::lma(512);
        for (step, want) in [
            (1, 6.18e-8),
            (4000, 2.4705e-4),
            (8000, 4.9411e-4),
            (16000, 3.4939e-4),
            (100000, 1.3975e-4),
        ] {
            let got = s.lr_at(step);
            assert!(
                (got / want - 1.0).abs() < 1e-3,
                "step {step}: {got} vs {want}"
            );
        }
        for (d, want) in [(256, 6.9877e-4), (128, 9.8821e-4), (64, 1.39754e-3)] {
            let got = NoamSchedule::lma(d).lr_at(8000);
            assert!((got / want - 1.0).abs() < 1e-4, "d {d}: {got} vs {want}");
        }
        // Exactly the Python expression at a step on each side of the warm-up.
        let py =
            |step: f64| 1.0 * (512f64.powf(-0.5) * step.powf(-0.5).min(step * 8000f64.powf(-1.5)));
        assert_eq!(s.lr_at(3), py(3.0));
        assert_eq!(s.lr_at(12345), py(12345.0));
    }

    #[test]
    fn noam_counts_steps_from_one_and_round_trips() {
        let mut s = NoamSchedule::lma(64);
        assert_eq!(s.advance(), s.lr_at(1));
        assert_eq!(s.advance(), s.lr_at(2));
        let back: NoamSchedule = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.clone().advance(), back.clone().advance());
    }

    #[test]
    fn onmt_decay_halves_from_start_decay_at_or_the_first_ppl_rise() {
        // No rise: epochs 1-8 at 1, epoch k >= 9 at 0.5^(k-8) (SPEC-TRANSLATION §3.4).
        let mut s = OnmtDecay::new(1.0, 0.5, 8);
        let mut lrs = vec![s.lr];
        for epoch in 1..=10 {
            lrs.push(s.observe(epoch, 100.0 - epoch as f64));
        }
        assert_eq!(
            lrs,
            vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125]
        );
        // A rise at epoch 3 starts the decay for good, even when the ppl falls again.
        let mut s = OnmtDecay::new(1.0, 0.5, 8);
        let got: Vec<f64> = [(1, 50.0), (2, 40.0), (3, 41.0), (4, 30.0), (5, 29.0)]
            .iter()
            .map(|&(e, p)| s.observe(e, p))
            .collect();
        assert_eq!(got, vec![1.0, 1.0, 0.5, 0.25, 0.125]);
        // An equal ppl is not a rise.
        let mut s = OnmtDecay::new(1.0, 0.5, 8);
        assert_eq!([s.observe(1, 7.0), s.observe(2, 7.0)], [1.0, 1.0]);
    }
}
