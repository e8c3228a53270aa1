//! Knowledge distillation (Hinton et al.) with the loss of each seed codebase (`kd_variant`:
//! `lit | qd | lma | takd`, SPEC-NOTES §7): the teacher runs once per batch in eval mode with no
//! tape, the student in train mode; one SGD step on the chosen KD loss.

use super::method::GraphSupport;
use super::step::{finish_step, PendingStep, StepEnv};
use super::teacher_cache::TeacherCache;
use super::{model_input, Batch, Compute};
use crate::config::{Hyperparameters, Stage, StageKind};
use crate::error::Result;
use crate::models::{Input, Model};
use crate::nn::ParamStore;
use crate::ops::kd::{kd_loss, KdLoss};
use crate::optim::Sgd;
use crate::tensor::Tensor;

/// A frozen teacher: its model and weights.
pub struct Teacher {
    /// The teacher model.
    pub model: Box<dyn Model>,
    /// Its weights (and buffers), loaded from its checkpoint.
    pub store: ParamStore,
    /// Its logits per training example, when its inputs are deterministic (no augmentation).
    pub cache: Option<TeacherCache>,
}

impl Teacher {
    /// A teacher without a cache.
    pub fn new(model: Box<dyn Model>, store: ParamStore) -> Teacher {
        Teacher {
            model,
            store,
            cache: None,
        }
    }

    /// How much of a step that calls [`Teacher::logits`] a step graph can hold: the cached
    /// logits come from the host, so with a cache only the step after the teacher.
    pub fn graph_support(&self) -> GraphSupport {
        match self.cache {
            Some(_) => GraphSupport::AfterTeacher,
            None => GraphSupport::Whole,
        }
    }

    /// Logits of the batch (eval mode, no tape): from the cache when it holds every example of
    /// a training batch, else a live pass (whose rows then fill the cache).
    pub fn logits(&mut self, batch: &Batch, at: Compute) -> Result<Tensor> {
        let indices = batch.indices.as_deref();
        if let (Some(cache), Some(indices)) = (&self.cache, indices) {
            if let Some(rows) = cache.lookup(indices) {
                return Tensor::from_vec(&[indices.len(), cache.classes()], rows, at.device);
            }
        }
        let logits = self.live_logits(batch, at)?;
        if let (Some(cache), Some(indices)) = (&mut self.cache, indices) {
            if logits.shape() == [indices.len(), cache.classes()] {
                cache.fill(indices, &logits.to_vec()?)?;
            } else {
                eprintln!(
                    "warning: teacher cache off: the teacher's logits have shape {:?}, not \
                     [batch, {}]",
                    logits.shape(),
                    cache.classes()
                );
                self.cache = None;
            }
        }
        Ok(logits)
    }

    /// Logits of the batch from the teacher itself.
    fn live_logits(&mut self, batch: &Batch, at: Compute) -> Result<Tensor> {
        let mut g = at.no_grad();
        let x = model_input(&mut g, batch);
        let logits = self.model.forward(&mut g, &mut self.store, x, false)?;
        Ok(g.value(logits).clone())
    }

    /// Features 0..=sections (stem output, then each section's output) and the logits, from one
    /// eval pass with no tape.
    pub fn features_and_logits(
        &mut self,
        batch: &Batch,
        at: Compute,
    ) -> Result<(Vec<Tensor>, Tensor)> {
        let mut g = at.no_grad();
        let x = model_input(&mut g, batch);
        let mut h = self.model.stem(&mut g, &mut self.store, x, false)?;
        let mut features = vec![g.value(h).clone()];
        for i in 0..self.model.num_sections() {
            h = self
                .model
                .forward_section(i, &mut g, &mut self.store, h, false)?;
            features.push(g.value(h).clone());
        }
        let logits = self.model.head(&mut g, &mut self.store, h, false)?;
        Ok((features, g.value(logits).clone()))
    }
}

/// The KD variant a stage kind uses when `kd_variant` is not set.
pub fn default_variant(kind: StageKind) -> &'static str {
    match kind {
        StageKind::Takd => "takd",
        StageKind::QuantizedDistillation | StageKind::DifferentiableQuantization => "qd",
        _ => "lit",
    }
}

/// Default weight of a variant (lit: alpha on the hard term, as in the LIT seed config; qd/lma:
/// the soft weight; takd: lambda, the TAKD code's default).
pub fn default_weight(variant: &str) -> f64 {
    match variant {
        "lit" | "kd_lit" => 0.95,
        "takd" | "kd_takd" => 0.5,
        _ => 0.7,
    }
}

/// Default temperature when neither the stage nor `hyperparameters.temperature` sets one.
pub const DEFAULT_TEMPERATURE: f64 = 4.0;

/// The KD loss of a stage: `kd_variant`, `temperature` and `weight` of the stage, falling back
/// to `hyperparameters.temperature` / `hyperparameters.alpha` (alpha for the `lit` variant only)
/// and then to the defaults above.
pub fn loss_for(kind: StageKind, stage: &Stage, h: &Hyperparameters) -> Result<KdLoss> {
    let variant = stage
        .kd_variant()
        .unwrap_or(default_variant(kind))
        .trim()
        .to_ascii_lowercase();
    let temperature = stage
        .temperature()
        .or(h.temperature)
        .unwrap_or(DEFAULT_TEMPERATURE);
    let is_lit = variant == "lit" || variant == "kd_lit";
    let weight = stage
        .weight()
        .or(if is_lit { h.alpha } else { None })
        .unwrap_or(default_weight(&variant));
    KdLoss::from_name(&variant, temperature, weight)
}

/// One KD step: student train-mode forward, KD loss against `teacher_logits`, backward, SGD.
pub fn kd_step(
    student: &dyn Model,
    store: &mut ParamStore,
    opt: &mut Sgd,
    batch: &Batch,
    teacher_logits: &Tensor,
    loss: KdLoss,
    env: &mut StepEnv,
) -> Result<PendingStep> {
    let mut g = env.at.graph();
    let x: Input = model_input(&mut g, batch);
    let s = student.forward(&mut g, store, x, true)?;
    let kd = kd_loss(&mut g, s, teacher_logits, &batch.y, loss)?;
    finish_step(
        &mut g,
        kd.loss,
        s,
        batch,
        store,
        Vec::new(),
        env,
        |store, skip| opt.step_unless(store, skip),
    )
}
