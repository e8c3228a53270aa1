//! Dynamic loss scaling for fp16 training, with PyTorch `GradScaler`'s semantics and defaults:
//! the backward pass starts from `scale · loss` so that small gradients survive fp16 operands;
//! the gradients are unscaled (multiplied by `1 / scale`) before the update; a step whose
//! gradients hold an infinity or NaN is skipped and the scale halved, and after
//! `growth_interval` good steps in a row the scale doubles. The state (scale and good-step
//! count) is part of the committed run state, so a resumed run continues the same sequence.
//!
//! [`LossScaler`] runs on the host: it is the specification and the cpu device's path. On cuda
//! and emu, [`device::DeviceLossScaler`] keeps the same state on the device and applies the same
//! rules in kernels, so a step never waits for the host.

pub mod device;

use crate::error::Result;
use crate::nn::ParamStore;
use crate::ops::elementwise::scale_forward;
use serde::{Deserialize, Serialize};

/// PyTorch's `GradScaler(init_scale=2.**16)`.
pub const INIT_SCALE: f32 = 65536.0;
/// PyTorch's `growth_factor`.
pub const GROWTH_FACTOR: f32 = 2.0;
/// PyTorch's `backoff_factor`.
pub const BACKOFF_FACTOR: f32 = 0.5;
/// PyTorch's `growth_interval`.
pub const GROWTH_INTERVAL: u32 = 2000;
/// The largest growth interval [`LossScaler::update_with`] takes: the device keeps the good-step
/// count in a float, exact up to 2^24.
pub const MAX_GROWTH_INTERVAL: u32 = 1 << 24;

/// The scaler's state.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The factor the loss is multiplied by before backward.
    pub scale: f32,
    /// Good (finite-gradient) steps since the scale last changed.
    pub good_steps: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: INIT_SCALE,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    /// Unscale every gradient of `store` in place (`grad · (1 / scale)`); returns whether all of
    /// them were finite (checked before unscaling, as PyTorch does).
    pub fn unscale(&self, store: &mut ParamStore) -> Result<bool> {
        // As PyTorch: the reciprocal in double, applied in single precision.
        let inv = (1.0 / self.scale as f64) as f32;
        let mut finite = true;
        for (_, p) in store.iter_mut() {
            let Some(grad) = &mut p.grad else { continue };
            finite &= grad.to_vec()?.iter().all(|g| g.is_finite());
            *grad = scale_forward(grad, inv)?;
        }
        Ok(finite)
    }

    /// After a step: back off (and restart the count) when its gradients were not finite,
    /// else count it and grow the scale after [`GROWTH_INTERVAL`] good steps in a row (unless
    /// the grown scale would overflow).
    pub fn update(&mut self, grads_finite: bool) {
        self.update_with(grads_finite, GROWTH_INTERVAL);
    }

    /// [`LossScaler::update`] growing after `growth_interval` good steps instead of
    /// [`GROWTH_INTERVAL`].
    pub fn update_with(&mut self, grads_finite: bool, growth_interval: u32) {
        if !grads_finite {
            self.scale *= BACKOFF_FACTOR;
            self.good_steps = 0;
            return;
        }
        self.good_steps += 1;
        if self.good_steps == growth_interval {
            let grown = self.scale * GROWTH_FACTOR;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.good_steps = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::Graph;
    use crate::device::Device;
    use crate::distill::step::{finish_step, StepEnv};
    use crate::distill::{Batch, Compute};
    use crate::ops::elementwise::mul;
    use crate::ops::reduce::sum_all;
    use crate::tensor::{IndexTensor, Tensor};

    #[test]
    fn backs_off_on_non_finite_and_grows_after_the_interval() {
        let mut s = LossScaler::default();
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!((s.scale, s.good_steps), (65536.0, GROWTH_INTERVAL - 1));
        s.update(true);
        assert_eq!((s.scale, s.good_steps), (131072.0, 0));
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        // A grown scale that would overflow stays where it is.
        let mut big = LossScaler {
            scale: f32::MAX,
            good_steps: GROWTH_INTERVAL - 1,
        };
        big.update(true);
        assert_eq!((big.scale, big.good_steps), (f32::MAX, 0));
    }

    /// One step of `loss = sum(w · c)` through [`finish_step`] with `scaler`: the outcome, the
    /// gradient the update saw (None: the update did not run), and the weights after it.
    fn step(c: &[f32], scaler: Option<&mut LossScaler>) -> (bool, Option<Vec<f32>>, Vec<f32>) {
        let dev = Device::Cpu;
        let mut store = ParamStore::new();
        let w0 = Tensor::from_vec(&[3], vec![0.5, -0.25, 1.0], &dev).unwrap();
        store.add_param("w", w0).unwrap();
        let mut g = Graph::new(&dev);
        let w = g.param(&store, "w").unwrap();
        let cv = g.constant(Tensor::from_vec(&[3], c.to_vec(), &dev).unwrap());
        let prod = mul(&mut g, w, cv).unwrap();
        let loss = sum_all(&mut g, prod).unwrap();
        let logits = g.constant(Tensor::from_vec(&[1, 2], vec![1.0, 0.0], &dev).unwrap());
        let batch = Batch {
            x: crate::data::Batch::Float(Tensor::zeros(&[1, 1], &dev).unwrap()),
            y: IndexTensor::from_vec(&[1], vec![0], &dev).unwrap(),
            indices: None,
        };
        let mut seen = None;
        let mut env = StepEnv {
            at: Compute::fp32(&dev),
            scaler,
            guard: None,
        };
        let out = finish_step(
            &mut g,
            loss,
            logits,
            &batch,
            &mut store,
            Vec::new(),
            &mut env,
            |store, _| {
                let p = store.get_mut("w")?;
                let grad = p.grad.as_ref().unwrap().to_vec()?;
                let w: Vec<f32> = p
                    .value
                    .to_vec()?
                    .iter()
                    .zip(&grad)
                    .map(|(w, g)| w - g)
                    .collect();
                p.value = Tensor::from_vec(&[3], w, &Device::Cpu)?;
                seen = Some(grad);
                Ok(())
            },
        )
        .and_then(|p| p.resolve())
        .unwrap();
        assert!(store.get("w").unwrap().grad.is_none(), "gradients cleared");
        let w = store.get("w").unwrap().value.to_vec().unwrap();
        (out.skipped, seen, w)
    }

    #[test]
    fn a_finite_step_updates_with_the_unscaled_gradients_and_counts() {
        let c = [0.3f32, -7.0, 1e-6];
        let (_, plain, w_plain) = step(&c, None);
        let mut s = LossScaler::default();
        let (skipped, scaled, w) = step(&c, Some(&mut s));
        assert!(!skipped);
        // Power-of-two scale: unscaling is exact, so the update sees fp32's gradients.
        assert_eq!(scaled, plain);
        assert_eq!(plain.unwrap(), c.to_vec());
        assert_eq!(w, w_plain);
        assert_eq!((s.scale, s.good_steps), (65536.0, 1));
    }

    #[test]
    fn a_step_with_an_infinite_scaled_gradient_is_skipped_and_backs_off() {
        // The loss (about 3e35) is finite; its gradient times 65536 is not.
        let c = [1e35f32, 1.0, 1.0];
        let mut s = LossScaler {
            scale: 65536.0,
            good_steps: 7,
        };
        let (skipped, seen, w) = step(&c, Some(&mut s));
        assert!(skipped);
        assert!(seen.is_none(), "the update must not run");
        assert_eq!(w, vec![0.5, -0.25, 1.0], "weights unchanged");
        assert_eq!((s.scale, s.good_steps), (32768.0, 0));
        // Without a scaler (fp32/tf32/bf16) the same step updates, as before.
        let (skipped, seen, _) = step(&c, None);
        assert!(!skipped && seen.is_some());
    }

    #[test]
    fn a_non_finite_loss_is_neither_skipped_nor_applied() {
        let mut s = LossScaler::default();
        let (skipped, seen, _) = step(&[f32::INFINITY, 1.0, 1.0], Some(&mut s));
        // Not a skipped step: the trainer stops on the loss, as for every precision.
        assert!(!skipped && seen.is_none());
        assert_eq!(s, LossScaler::default());
    }
}
