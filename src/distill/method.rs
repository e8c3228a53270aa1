//! A stage of the config as a training method: [`build`] reads the stage's method settings
//! (KD loss, LIT sections, quantization bits…) and returns the [`Method`] whose
//! [`Method::step`] the trainer calls once per mini-batch; [`optimizer_for`] gives the stage's
//! SGD. These constructors are the one place where the per-method keys of a stage are read.

use super::export::PackSpec;
use super::kd::{self, Teacher};
use super::lit::{self, LitSetup};
use super::qd::{self, DqState, QuantSpec};
use super::step::{finish_step, PendingStep, StepEnv};
use super::{model_input, Batch, Compute};
use crate::config::{Hyperparameters, Stage, StageKind};
use crate::data::{Dataset, Loader};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::ParamStore;
use crate::ops::kd::KdLoss;
use crate::ops::loss::{cross_entropy, Reduction};
use crate::optim::Sgd;
use crate::tensor::Tensor;

/// Bits per quantized parameter, the bucket size, and whether point tables are stored.
pub type QuantizedLayout = (Vec<(String, u32)>, Option<usize>, bool);

/// Whether a method's training step can be captured as one step graph
/// ([`crate::train::step_graph`]): nothing in it may read or write the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphSupport {
    /// The whole step, teacher included.
    Whole,
    /// The step after the teacher: the teacher's logits come from the host (the teacher-output
    /// cache), so [`Method::teacher_logits`] runs before each replay and fills an input of the
    /// graph, which [`Method::step_from_teacher`] reads.
    AfterTeacher,
    /// Not at all, and why.
    No(&'static str),
}

/// What a stage's method does per batch, and what it deploys.
pub trait Method {
    /// One training step on `batch`; by default, for methods with a teacher, the teacher's
    /// logits ([`Method::teacher_logits`]) then [`Method::step_from_teacher`].
    fn step(&mut self, on: &mut StepOn, batch: &Batch) -> Result<PendingStep> {
        let t = self.teacher_logits(batch, on.env.at)?;
        self.step_from_teacher(on, batch, &t)
    }
    /// How much of [`Method::step`] a step graph can hold.
    fn graph_support(&self) -> GraphSupport {
        GraphSupport::No("its step reads the host")
    }
    /// The teacher's logits for `batch` (methods with a teacher).
    fn teacher_logits(&mut self, _batch: &Batch, _at: Compute) -> Result<Tensor> {
        Err(Error::Config("this method has no teacher".into()))
    }
    /// [`Method::step`] given the teacher's logits of `batch` (methods with a teacher).
    fn step_from_teacher(
        &mut self,
        _on: &mut StepOn,
        _batch: &Batch,
        _teacher: &Tensor,
    ) -> Result<PendingStep> {
        Err(Error::Config("this method has no teacher".into()))
    }
    /// The model as deployed (quantized students: quantized), when it differs from `store`.
    fn deployable(&self, _store: &ParamStore) -> Result<Option<ParamStore>> {
        Ok(None)
    }
    /// The learned quantization points, which the run state saves (differentiable quantization
    /// only).
    fn dq_state(&self) -> Option<DqState> {
        None
    }
    /// Bits per quantized parameter and whether point tables are stored.
    fn quantized_bits(&self) -> Option<QuantizedLayout> {
        None
    }
    /// How the deployable student is packed (quantized students only).
    fn pack_specs(&self) -> Option<Vec<PackSpec>> {
        None
    }
}

/// What a step works on: the student, its store, the optimizer at the epoch's rate, the device
/// and precision, and fp16's loss scaler.
pub struct StepOn<'a> {
    /// The student.
    pub model: &'a dyn Model,
    /// The student's parameters, which the step updates.
    pub store: &'a mut ParamStore,
    /// The stage's SGD, at the epoch's learning rate.
    pub opt: &'a mut Sgd,
    /// The epoch's learning rate (differentiable quantization steps its points with it).
    pub lr: f64,
    /// Where the batch lives and how the step's graphs compute.
    pub env: StepEnv<'a>,
}

/// What [`build`] needs besides the student's store.
pub struct MethodSetup<'a> {
    /// The stage's kind (which method).
    pub kind: StageKind,
    /// The stage's settings.
    pub stage: &'a Stage,
    /// The config's hyperparameters (defaults of the stage's settings).
    pub hyper: &'a Hyperparameters,
    /// The student.
    pub model: &'a dyn Model,
    /// The teacher of the distillation methods.
    pub teacher: Option<Teacher>,
    /// Learned quantization points from the run state (a resumed differentiable quantization).
    pub resumed_dq: Option<DqState>,
    /// The training split (differentiable quantization allocates its bits on its first
    /// batches).
    pub train: &'a Dataset,
    /// Where the batches go, and the precision of the allocation passes.
    pub at: Compute<'a>,
}

/// The method of a stage; prepares the student's store for it (unfreezes it, or for LIT copies
/// and freezes the teacher's stem and head).
pub fn build(setup: MethodSetup, store: &mut ParamStore) -> Result<Box<dyn Method>> {
    let MethodSetup {
        kind,
        stage,
        hyper: h,
        model,
        teacher,
        resumed_dq,
        train,
        at,
    } = setup;
    let name = kind.name();
    let kd_loss = || kd::loss_for(kind, stage, h);
    let need_teacher = || {
        Error::Config(format!(
            "sequence.{name}: needs a teacher (models.base_architecture and base_model_path)"
        ))
    };
    Ok(match kind {
        StageKind::Teacher | StageKind::Train => Box::new(Supervised),
        StageKind::Kd | StageKind::Takd | StageKind::FullModel => {
            lit::unfreeze_all(store)?;
            Box::new(KdMethod {
                teacher: teacher.ok_or_else(need_teacher)?,
                loss: kd_loss()?,
            })
        }
        StageKind::Lit => {
            let teacher = teacher.ok_or_else(need_teacher)?;
            let setup = LitSetup::new(stage, h, kd_loss()?, model, teacher.model.as_ref())?;
            if setup.freeze_stem_head {
                lit::copy_and_freeze_stem_head(model, store, &teacher)?;
            }
            Box::new(LitMethod { teacher, setup })
        }
        StageKind::QuantizedDistillation => {
            lit::unfreeze_all(store)?;
            let spec = QuantSpec::new(
                store,
                stage.bits().unwrap_or(8),
                stage.bucket_size(),
                stage.quantize_first_and_last_layer(),
                stage.quantized_layers(),
                &format!("sequence.{name}.quantized_layers"),
            )?;
            Box::new(QdMethod {
                teacher: teacher.ok_or_else(need_teacher)?,
                loss: kd_loss()?,
                spec,
            })
        }
        StageKind::DifferentiableQuantization => {
            let mut teacher = teacher.ok_or_else(need_teacher)?;
            let loss = kd_loss()?;
            let state = match resumed_dq {
                Some(s) => s,
                None => allocate_dq(stage, h, model, store, &mut teacher, loss, train, at)?,
            };
            Box::new(DqMethod {
                teacher,
                loss,
                state,
                momentum: stage.momentum.unwrap_or(h.momentum) as f32,
            })
        }
    })
}

/// Differentiable quantization's starting points: bits per layer from the gradient norms on
/// the first `allocation_batches` batches of the training split.
#[allow(clippy::too_many_arguments)]
fn allocate_dq(
    stage: &Stage,
    h: &Hyperparameters,
    model: &dyn Model,
    store: &mut ParamStore,
    teacher: &mut Teacher,
    loss: KdLoss,
    train: &Dataset,
    at: Compute,
) -> Result<DqState> {
    let names = qd::quantized_parameter_names(
        store,
        stage
            .quantize_first_and_last_layer()
            .unwrap_or(qd::DEFAULT_QUANTIZE_FIRST_AND_LAST),
        stage.quantized_layers(),
    );
    let bits = stage.bits().unwrap_or(4);
    let batches: Vec<Batch> = Loader::sequential(train, h.batch_size, at.device)?
        .input_shape(&model.input_shape())?
        .limit(Some(stage.allocation_batches().unwrap_or(10)))
        .map(|b| {
            b.map(|(x, y)| Batch {
                x,
                y,
                indices: None,
            })
        })
        .collect::<Result<_>>()?;
    let s = DqState::allocate(
        &names,
        stage.bucket_size(),
        bits,
        stage.min_bits().unwrap_or(bits.saturating_sub(1).max(1)),
        stage.max_bits().unwrap_or((bits + 2).min(8)),
        model,
        store,
        teacher,
        &batches,
        loss,
        at,
    )?;
    let alloc: Vec<String> = s
        .layers
        .iter()
        .map(|l| format!("{}:{}", l.name, l.bits))
        .collect();
    println!("bits per layer (from gradient norms): {}", alloc.join(" "));
    Ok(s)
}

/// The optimizer of a stage: its overrides, else `hyperparameters`.
pub fn optimizer_for(stage: &Stage, h: &Hyperparameters) -> Result<Sgd> {
    Sgd::new(
        stage.lr as f32,
        stage.momentum.unwrap_or(h.momentum) as f32,
        stage.weight_decay.unwrap_or(h.weight_decay) as f32,
        stage.nesterov.unwrap_or(h.nesterov),
    )
}

/// Plain training on the labels (teacher and `train` stages): cross-entropy, SGD.
struct Supervised;

impl Method for Supervised {
    fn step(&mut self, on: &mut StepOn, batch: &Batch) -> Result<PendingStep> {
        let mut g = on.env.at.graph();
        let x = model_input(&mut g, batch);
        let logits = on.model.forward(&mut g, on.store, x, true)?;
        let loss = cross_entropy(&mut g, logits, &batch.y, Reduction::Mean)?;
        let opt = &mut *on.opt;
        let update = |store: &mut ParamStore, skip: Option<&Tensor>| opt.step_unless(store, skip);
        finish_step(
            &mut g,
            loss,
            logits,
            batch,
            on.store,
            Vec::new(),
            &mut on.env,
            update,
        )
    }
    fn graph_support(&self) -> GraphSupport {
        GraphSupport::Whole
    }
}

/// Knowledge distillation (`kd`, `takd`, `full_model`).
struct KdMethod {
    teacher: Teacher,
    loss: KdLoss,
}

impl Method for KdMethod {
    fn graph_support(&self) -> GraphSupport {
        self.teacher.graph_support()
    }
    fn teacher_logits(&mut self, batch: &Batch, at: Compute) -> Result<Tensor> {
        self.teacher.logits(batch, at)
    }
    fn step_from_teacher(
        &mut self,
        on: &mut StepOn,
        batch: &Batch,
        teacher: &Tensor,
    ) -> Result<PendingStep> {
        let env = &mut on.env;
        kd::kd_step(on.model, on.store, on.opt, batch, teacher, self.loss, env)
    }
}

/// LIT's blockwise training.
struct LitMethod {
    teacher: Teacher,
    setup: LitSetup,
}

impl Method for LitMethod {
    fn step(&mut self, on: &mut StepOn, batch: &Batch) -> Result<PendingStep> {
        let teacher = &mut self.teacher;
        let env = &mut on.env;
        lit::lit_step(on.model, on.store, on.opt, batch, teacher, &self.setup, env)
    }
    fn graph_support(&self) -> GraphSupport {
        GraphSupport::Whole
    }
}

/// Quantized distillation (uniform quantizer, straight-through).
struct QdMethod {
    teacher: Teacher,
    loss: KdLoss,
    spec: QuantSpec,
}

impl Method for QdMethod {
    fn graph_support(&self) -> GraphSupport {
        self.teacher.graph_support()
    }
    fn teacher_logits(&mut self, batch: &Batch, at: Compute) -> Result<Tensor> {
        self.teacher.logits(batch, at)
    }
    fn step_from_teacher(
        &mut self,
        on: &mut StepOn,
        batch: &Batch,
        teacher: &Tensor,
    ) -> Result<PendingStep> {
        let (spec, env) = (&self.spec, &mut on.env);
        qd::qd_step(
            on.model, on.store, on.opt, batch, teacher, self.loss, spec, env,
        )
    }
    fn deployable(&self, store: &ParamStore) -> Result<Option<ParamStore>> {
        self.spec.quantized_copy(store).map(Some)
    }
    fn quantized_bits(&self) -> Option<QuantizedLayout> {
        Some((self.spec.bits_of(), self.spec.bucket, false))
    }
    fn pack_specs(&self) -> Option<Vec<PackSpec>> {
        Some(PackSpec::uniform(
            &self.spec.names,
            self.spec.bits,
            self.spec.bucket,
        ))
    }
}

/// Differentiable quantization (learned points, weights fixed).
struct DqMethod {
    teacher: Teacher,
    loss: KdLoss,
    state: DqState,
    momentum: f32,
}

impl Method for DqMethod {
    fn step(&mut self, on: &mut StepOn, batch: &Batch) -> Result<PendingStep> {
        let t = self.teacher.logits(batch, on.env.at)?;
        let (lr, momentum) = (on.lr as f32, self.momentum);
        let state = &mut self.state;
        state.step(
            on.model,
            on.store,
            batch,
            &t,
            self.loss,
            lr,
            momentum,
            &mut on.env,
        )
    }
    fn graph_support(&self) -> GraphSupport {
        GraphSupport::No("differentiable quantization keeps its points on the host")
    }
    fn deployable(&self, store: &ParamStore) -> Result<Option<ParamStore>> {
        self.state.quantized_copy(store).map(Some)
    }
    fn dq_state(&self) -> Option<DqState> {
        Some(self.state.clone())
    }
    fn quantized_bits(&self) -> Option<QuantizedLayout> {
        Some((self.state.bits_of(), self.state.bucket, true))
    }
    fn pack_specs(&self) -> Option<Vec<PackSpec>> {
        Some(self.state.pack_specs())
    }
}
