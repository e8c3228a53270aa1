//! Step graphs in the epoch loop. On cuda and emu, after one eager step of a stage (kernels
//! loaded, momentum buffers made), each epoch captures its training step once
//! ([`capture_store_step`]) and replays it for every batch of the captured shape: the batch is
//! copied into the graph's input tensors, one launch runs forward, backward and update, and the
//! loss and the correct count are copied out into a [`PendingStep`], read a few steps later as
//! eager steps are. A new epoch captures again (the learning rate is a kernel argument).
//!
//! What a graph cannot hold runs eagerly, with the same results: a batch of another shape (an
//! epoch's short last batch), a method whose step reads the host, a model that draws dropout
//! masks on the host, a store or optimizer buffer that moved.
//! The reason graphs are off for a stage is printed once.

use super::step_graph::{
    capture_store_step, store_addresses, store_unchanged, CapturedStep, StepOutputs,
};
use crate::data;
use crate::device::Elem;
use crate::device::{Device, Gpu};
use crate::distill::method::{GraphSupport, Method, StepOn};
use crate::distill::step::{PendingStep, StepEnv};
use crate::distill::Batch;
use crate::error::{Error, Result};
use crate::optim::Sgd;
use crate::tensor::{IndexTensor, Tensor};
use std::sync::Arc;

/// A stage's step graphs: off, warming up, or capturing once per epoch and replaying.
pub(super) struct StepGraphs {
    /// The device, while graphs are on.
    gpu: Option<Arc<Gpu>>,
    support: GraphSupport,
    /// Shapes of the step's loss, correct count and (fp16) loss scaler state, from the eager
    /// warm-up step.
    outcome_shapes: Option<OutcomeShapes>,
    current: Option<Replay>,
    /// Kernels per step, announced once a graph is first captured.
    announced: bool,
}

type OutcomeShapes = (Vec<usize>, Vec<usize>, Option<Vec<usize>>);

/// One epoch's captured step with the tensors it reads and the addresses it writes.
struct Replay {
    step: CapturedStep,
    x: data::Batch,
    y: IndexTensor,
    /// The teacher's logits, filled before each replay ([`GraphSupport::AfterTeacher`]).
    teacher: Option<Tensor>,
    store_at: Vec<u64>,
    momentum_at: Vec<(String, u64)>,
}

impl StepGraphs {
    /// Graphs for a stage whose method supports `support`; off when `enabled` is false or on
    /// the cpu device.
    pub fn new(device: &Device, enabled: bool, support: GraphSupport) -> StepGraphs {
        let mut graphs = StepGraphs {
            gpu: device.gpu().cloned().filter(|_| enabled),
            support,
            outcome_shapes: None,
            current: None,
            announced: false,
        };
        if let GraphSupport::No(why) = support {
            graphs.turn_off(why);
        }
        graphs
    }

    /// The next steps run at another learning rate: the next one captures again.
    pub fn new_epoch(&mut self) {
        self.current = None;
    }

    /// One training step of `method` on `batch`: replayed when it can be, else eager.
    pub fn step(
        &mut self,
        method: &mut dyn Method,
        on: &mut StepOn,
        batch: &Batch,
    ) -> Result<PendingStep> {
        let Some(gpu) = self.gpu.clone() else {
            return method.step(on, batch);
        };
        let Some(shapes) = self.outcome_shapes.clone() else {
            return self.warm_up(method, on, batch);
        };
        if self.current.is_none() {
            match self.capture(&gpu, method, on, batch, &shapes) {
                Ok(replay) => self.current = Some(replay),
                Err(e) => {
                    self.turn_off(&format!("capturing the step failed: {e}"));
                    return method.step(on, batch);
                }
            }
            if !self.announced {
                self.announced = true;
                if let Some(r) = &self.current {
                    println!(
                        "step graph: one launch per training step ({} kernels)",
                        r.step.kernels()
                    );
                }
            }
        }
        let Some(replay) = self.current.as_mut() else {
            return method.step(on, batch);
        };
        if !replay.fits(batch) {
            return method.step(on, batch);
        }
        if !replay.unchanged(&gpu, on) {
            // Something outside the step replaced a buffer the graph writes: capture again.
            self.current = None;
            return method.step(on, batch);
        }
        replay.fill(&gpu, batch)?;
        if let Some(t) = replay.teacher.as_mut() {
            let logits = method.teacher_logits(batch, on.env.at)?;
            copy_same_shape(&gpu, &logits, t, "the teacher's logits")?;
        }
        replay.step.launch(&gpu)?;
        // Copies: the next replay overwrites the outputs before this step is read.
        let out = replay.step.outputs();
        let (Some(loss), Some(correct)) = (out.values.first(), out.counts.first()) else {
            return Err(Error::Device("a step graph without its outputs".into()));
        };
        let scaler = out.values.get(1).map(|s| duplicate(&gpu, s)).transpose()?;
        Ok(PendingStep::on_device(
            duplicate(&gpu, loss)?,
            duplicate(&gpu, correct)?,
            scaler,
            batch.len(),
        ))
    }

    /// The stage's first step, eagerly: it loads the kernels and makes the optimizer's buffers,
    /// which a capture must find in place, and shows whether the model draws on the host.
    fn warm_up(
        &mut self,
        method: &mut dyn Method,
        on: &mut StepOn,
        batch: &Batch,
    ) -> Result<PendingStep> {
        let draws = on.model.rng_calls();
        let out = method.step(on, batch)?;
        if on.model.rng_calls() != draws {
            self.turn_off("the model draws its dropout masks on the host");
        }
        match out.device_outcome() {
            Some((loss, correct, scaler)) => {
                self.outcome_shapes = Some((
                    loss.shape().to_vec(),
                    correct.shape().to_vec(),
                    scaler.map(|s| s.shape().to_vec()),
                ))
            }
            None => self.turn_off("the step read its loss on the host"),
        }
        Ok(out)
    }

    fn capture(
        &self,
        gpu: &Gpu,
        method: &mut dyn Method,
        on: &mut StepOn,
        batch: &Batch,
        (loss_shape, count_shape, scaler_shape): &OutcomeShapes,
    ) -> Result<Replay> {
        let device = batch.y.device();
        let x = match &batch.x {
            data::Batch::Float(t) => data::Batch::Float(Tensor::zeros(t.shape(), device)?),
            data::Batch::Ids(t) => data::Batch::Ids(IndexTensor::zeros(t.shape(), device)?),
        };
        let mut replay_inputs = (x, IndexTensor::zeros(batch.y.shape(), device)?);
        let teacher = match self.support {
            GraphSupport::AfterTeacher => {
                let t = method.teacher_logits(batch, on.env.at)?;
                Some(Tensor::from_buffer(
                    t.shape(),
                    gpu.copy(t.buffer())?,
                    device,
                )?)
            }
            _ => None,
        };
        fill_inputs(gpu, batch, &mut replay_inputs.0, &mut replay_inputs.1)?;
        let (x, y) = replay_inputs;
        let mut values = vec![Tensor::zeros(loss_shape, device)?];
        if let Some(shape) = scaler_shape {
            values.push(Tensor::zeros(shape, device)?);
        }
        let outputs = StepOutputs {
            values,
            counts: vec![IndexTensor::zeros(count_shape, device)?],
        };
        let momentum_before = momentum_names(on.opt);
        let graph_batch = Batch {
            x: x.clone(),
            y: y.clone(),
            indices: None,
        };
        let (model, lr, at) = (on.model, on.lr, on.env.at);
        let (opt, guard) = (&mut *on.opt, on.env.guard.as_deref_mut());
        let step = capture_store_step(gpu, on.store, outputs, |store| {
            let mut inside = StepOn {
                model,
                store,
                opt,
                lr,
                env: StepEnv {
                    at,
                    scaler: None,
                    guard,
                },
            };
            let pending = match &teacher {
                Some(t) => method.step_from_teacher(&mut inside, &graph_batch, t)?,
                None => method.step(&mut inside, &graph_batch)?,
            };
            let (loss, correct, scaler) = pending.device_outcome().ok_or_else(|| {
                Error::Device("the captured step read its loss on the host".into())
            })?;
            Ok(StepOutputs {
                values: std::iter::once(loss).chain(scaler).cloned().collect(),
                counts: vec![correct.clone()],
            })
        })?;
        drop(graph_batch);
        if momentum_names(on.opt) != momentum_before {
            // A buffer made inside the capture is graph memory: the eager steps make their own.
            for name in momentum_names(on.opt) {
                if !momentum_before.contains(&name) {
                    on.opt.forget_momentum_buffer(&name);
                }
            }
            return Err(Error::Device(
                "the step made optimizer buffers that the warm-up step did not".into(),
            ));
        }
        Ok(Replay {
            step,
            x,
            y,
            teacher,
            store_at: store_addresses(gpu, on.store),
            momentum_at: momentum_addresses(gpu, on.opt),
        })
    }

    fn turn_off(&mut self, why: &str) {
        if self.gpu.take().is_some() {
            println!("step graph off for this stage: {why}; its steps run one kernel at a time");
        }
        self.current = None;
    }
}

impl Replay {
    /// Whether `batch` has the captured shapes.
    fn fits(&self, batch: &Batch) -> bool {
        let x_fits = match (&self.x, &batch.x) {
            (data::Batch::Float(a), data::Batch::Float(b)) => a.shape() == b.shape(),
            (data::Batch::Ids(a), data::Batch::Ids(b)) => a.shape() == b.shape(),
            _ => false,
        };
        x_fits && self.y.shape() == batch.y.shape()
    }

    /// Whether the store and the momentum buffers are where the graph writes them.
    fn unchanged(&self, gpu: &Gpu, on: &StepOn) -> bool {
        store_unchanged(gpu, on.store, &self.store_at)
            && on.opt.momentum_buffers().count() == self.momentum_at.len()
            && on
                .opt
                .momentum_buffers()
                .zip(&self.momentum_at)
                .all(|((name, t), (n, a))| name == n && t.is_unique() && gpu.addr(t.buffer()) == *a)
    }

    fn fill(&mut self, gpu: &Gpu, batch: &Batch) -> Result<()> {
        fill_inputs(gpu, batch, &mut self.x, &mut self.y)
    }
}

/// Copy `batch` into a graph's input tensors (same shapes).
fn fill_inputs(gpu: &Gpu, batch: &Batch, x: &mut data::Batch, y: &mut IndexTensor) -> Result<()> {
    match (&batch.x, x) {
        (data::Batch::Float(src), data::Batch::Float(dst)) => {
            copy_same_shape(gpu, src, dst, "the batch")?
        }
        (data::Batch::Ids(src), data::Batch::Ids(dst)) => {
            copy_same_shape(gpu, src, dst, "the batch")?
        }
        _ => {
            return Err(Error::Device(
                "a batch of another kind than the step graph's".into(),
            ))
        }
    }
    copy_same_shape(gpu, &batch.y, y, "the labels")
}

fn copy_same_shape<T: Elem>(
    gpu: &Gpu,
    src: &Tensor<T>,
    dst: &mut Tensor<T>,
    what: &str,
) -> Result<()> {
    if src.shape() != dst.shape() {
        return Err(Error::Shape(format!(
            "{what} has shape {:?}, the step graph's input {:?}",
            src.shape(),
            dst.shape()
        )));
    }
    gpu.copy_into(src.buffer(), dst.try_buffer_mut()?)
}

/// A new device tensor holding a copy of `t`.
fn duplicate<T: Elem>(gpu: &Gpu, t: &Tensor<T>) -> Result<Tensor<T>> {
    Tensor::from_buffer(t.shape(), gpu.copy(t.buffer())?, t.device())
}

fn momentum_names(opt: &Sgd) -> Vec<String> {
    opt.momentum_buffers()
        .map(|(name, _)| name.to_string())
        .collect()
}

fn momentum_addresses(gpu: &Gpu, opt: &Sgd) -> Vec<(String, u64)> {
    opt.momentum_buffers()
        .map(|(name, t)| (name.to_string(), gpu.addr(t.buffer())))
        .collect()
}
