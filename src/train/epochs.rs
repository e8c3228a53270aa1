//! One step of the plan, epoch by epoch: the teacher and the method are set up once, then each
//! epoch runs its batches through the method's training step (stopping cleanly on a signal),
//! evaluates on the test split, logs its metrics, saves a new best student and commits the run
//! state every `save_every` epochs and at the step's end.

use super::context::RunContext;
use super::graphed_steps::StepGraphs;
use super::guards::check_finite;
use super::interrupt;
use super::metrics_log::EpochMetrics;
use super::plan::PlanStep;
use super::progress::EpochProgress;
use super::resume::{self, PartialEpoch, ResumeState, Resumed};
use super::run_state;
use super::schedule::LrSchedule;
use super::setup::Built;
use super::teacher::step_teacher;
use crate::data::augment::AugmentKey;
use crate::data::Loader;
use crate::distill::lit;
use crate::distill::loss_scale::LossScaler;
use crate::distill::method::{self, Method, MethodSetup, StepOn};
use crate::distill::qd::{self, SizeReport};
use crate::distill::step::{sync_loss_scaler, NonFiniteGuard, PendingStep, StepEnv};
use crate::distill::Batch;
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::ParamStore;
use crate::optim::Sgd;
use crate::rng::Rng;
use std::collections::VecDeque;
use std::time::Instant;

/// Training steps queued on the device before the oldest one's outcome is read: the host runs
/// this many steps ahead of the device, and a non-finite loss, which changes no weight on the
/// device, is reported this many steps late (with the epoch and batch where it happened).
pub const STEPS_IN_FLIGHT: usize = 3;

/// What a step leaves for the rest of the run.
pub(super) struct StepResult {
    /// The best test accuracy of the step's epochs (student steps).
    pub best: Option<f64>,
    /// Bits per quantized parameter and the packed size, when the step quantized the model.
    pub quantized: Option<(Vec<(String, u32)>, SizeReport)>,
}

/// Run step `index` of the plan on `built` (continuing from `resumed` when the run state
/// stopped inside this step).
pub(super) fn run_step(
    run: &mut RunContext,
    index: usize,
    step: &PlanStep,
    built: &mut Built,
    resumed: Option<&Resumed>,
) -> Result<StepResult> {
    let h = &run.cfg.hyperparameters;
    let model = built.model.as_ref();
    let store = &mut built.store;
    let (teacher, teacher_acc) = step_teacher(run, step, store, &model.input_shape())?;
    println!(
        "== {}: {} ({} parameters){}, {} epochs",
        step.kind.name(),
        model.architecture(),
        store.num_parameters(),
        step.teacher
            .as_ref()
            .map(|(a, _)| format!(" from teacher {a}"))
            .unwrap_or_default(),
        step.epochs()
    );
    let setup = MethodSetup {
        kind: step.kind,
        stage: &step.stage,
        hyper: h,
        model,
        teacher,
        resumed_dq: resumed.and_then(|r| r.state.dq.clone()),
        train: &run.data.train,
        at: run.compute(),
    };
    let method = method::build(setup, store)?;
    let mut opt = method::optimizer_for(&step.stage, h)?;
    let mut position = match resumed {
        Some(r) => {
            run_state::load_optimizer(&r.optimizer, &mut opt, store, run.device)?;
            Position::resumed(r, step, &run.history, index)
        }
        None => Position::start(step, h.seed, index),
    };
    // fp16 only; a step starts with a fresh scaler, as it does with a fresh optimizer.
    if !run.precision.needs_loss_scaling() {
        position.scaler = None;
    } else if position.scaler.is_none() {
        position.scaler = Some(LossScaler::default());
    }
    // fp16's scaler lives on the device with the guard (cuda, emu); on cpu the host scales.
    let guard = NonFiniteGuard::with_loss_scaler(run.device, position.scaler.as_ref())?;
    let graphs = StepGraphs::new(
        run.device,
        run.cfg.params.step_graph,
        method.graph_support(),
    );
    let mut runner = StepRunner {
        guard,
        graphs,
        run,
        index,
        step,
        model,
        store,
        method,
        opt,
        teacher_acc,
        position,
    };
    for epoch in runner.position.epochs_done..step.epochs() {
        let totals = runner.train_epoch(epoch)?;
        runner.end_epoch(epoch, totals)?;
    }
    runner.finish()
}

/// Where a step stands between batches: what the run state saves to resume it.
struct Position {
    epochs_done: usize,
    /// The shuffle stream (advanced by each epoch's order and augmentation).
    rng: Rng,
    schedule: LrSchedule,
    best: Option<f64>,
    best_epoch: Option<usize>,
    /// The batches of an epoch a signal stopped, when resuming inside it.
    partial: Option<PartialEpoch>,
    /// fp16's loss scaler (`None` for the other precisions).
    scaler: Option<LossScaler>,
}

impl Position {
    fn start(step: &PlanStep, seed: u64, index: usize) -> Position {
        Position {
            epochs_done: 0,
            rng: shuffle_rng(seed, index),
            schedule: LrSchedule::new(&step.stage),
            best: None,
            best_epoch: None,
            partial: None,
            scaler: None,
        }
    }

    fn resumed(r: &Resumed, step: &PlanStep, history: &[EpochMetrics], index: usize) -> Position {
        let s = &r.state;
        Position {
            epochs_done: s.epochs_done,
            rng: Rng::from_state(s.shuffle_rng),
            schedule: resume::schedule_for(&step.stage, &s.schedule, history, index),
            best: s.best_acc,
            best_epoch: s.best_epoch,
            partial: s.partial.clone(),
            scaler: s.loss_scaler,
        }
    }
}

/// Shuffling has its own stream per step, so that changing the model does not change the data
/// order (step 0 keeps the single-stage stream of earlier versions).
fn shuffle_rng(seed: u64, step: usize) -> Rng {
    Rng::new(seed ^ 0x5eed_da7a ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// An epoch's learning rate and the running sums of its training batches.
struct TrainedEpoch {
    lr: f64,
    loss_sum: f64,
    correct: usize,
    seen: usize,
    /// Steps whose update fp16 loss scaling skipped.
    skipped: usize,
    /// Seconds spent before a stop, for an epoch resumed in the middle.
    seconds_before: f64,
    started: Instant,
}

impl TrainedEpoch {
    /// An epoch at rate `lr`, continuing the sums of `partial` when a stop interrupted it.
    fn start(lr: f64, partial: Option<&PartialEpoch>) -> TrainedEpoch {
        TrainedEpoch {
            lr,
            loss_sum: partial.map_or(0.0, |p| p.loss_sum),
            correct: partial.map_or(0, |p| p.correct),
            seen: partial.map_or(0, |p| p.seen),
            skipped: partial.map_or(0, |p| p.skipped),
            seconds_before: partial.map_or(0.0, |p| p.seconds),
            started: Instant::now(),
        }
    }
    fn mean_loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }
    fn seconds(&self) -> f64 {
        self.seconds_before + self.started.elapsed().as_secs_f64()
    }
}

/// Where a signal stopped an epoch.
struct Stop {
    signal: i32,
    epoch: usize,
    /// The first batch not trained.
    batch: usize,
    num_batches: usize,
}

/// A step's moving parts while its epochs run.
struct StepRunner<'r, 'a> {
    run: &'r mut RunContext<'a>,
    index: usize,
    step: &'r PlanStep,
    model: &'r dyn Model,
    store: &'r mut ParamStore,
    method: Box<dyn Method>,
    opt: Sgd,
    teacher_acc: Option<f64>,
    position: Position,
    /// Lets steps run without reading the device (cuda and emu; `None` on cpu).
    guard: Option<NonFiniteGuard>,
    /// The epoch's step captured as one graph (cuda and emu).
    graphs: StepGraphs,
}

impl StepRunner<'_, '_> {
    fn name(&self) -> &'static str {
        self.step.kind.name()
    }

    /// The run-state record of this step after `epochs_done` epochs.
    fn resume_record(
        &self,
        epochs_done: usize,
        shuffle_rng: &Rng,
        partial: Option<PartialEpoch>,
    ) -> ResumeState {
        ResumeState {
            step: self.index,
            epochs_done,
            architecture: self.step.architecture.clone(),
            shuffle_rng: shuffle_rng.state(),
            schedule: self.position.schedule.clone(),
            best_acc: self.position.best,
            best_epoch: self.position.best_epoch,
            dq: self.method.dq_state(),
            partial,
            model_rng_calls: self.model.rng_calls(),
            loss_scaler: self.position.scaler,
        }
    }

    /// Commit the run state with `resume`, `at` saying where the run is.
    fn commit(&mut self, resume: ResumeState, epoch: usize, at: &str) -> Result<String> {
        let (step, model, store, opt) = (self.step, self.model, &*self.store, &self.opt);
        self.run
            .commit_state(step, model, store, opt, resume, epoch, at)
    }

    /// Commit the state of an epoch a signal stopped before batch `stop.batch` (the epoch's
    /// batch order comes from `epoch_rng`); the error that ends the run.
    fn save_and_stop(
        &mut self,
        stop: Stop,
        epoch_rng: &Rng,
        totals: &TrainedEpoch,
    ) -> Result<Error> {
        let Stop {
            signal,
            epoch,
            batch,
            num_batches,
        } = stop;
        let partial = PartialEpoch {
            batches_done: batch,
            epoch_rng: epoch_rng.state(),
            loss_sum: totals.loss_sum,
            correct: totals.correct,
            seen: totals.seen,
            skipped: totals.skipped,
            seconds: totals.seconds(),
        };
        sync_loss_scaler(self.guard.as_ref(), &mut self.position.scaler)?;
        let at = format!(
            "epoch {}/{} batch {batch}/{num_batches} of stage `{}`",
            epoch + 1,
            self.step.epochs(),
            self.name()
        );
        let resume = self.resume_record(epoch, epoch_rng, Some(partial));
        let saved = self.commit(resume, epoch, &at)?;
        Ok(Error::Interrupted {
            signal,
            message: format!("stopped by a signal at {at}: {saved}"),
        })
    }

    /// The training batches of `epoch` (from where a stop left it, when resuming).
    fn train_epoch(&mut self, epoch: usize) -> Result<TrainedEpoch> {
        let h = &self.run.cfg.hyperparameters;
        let (name, epochs) = (self.name(), self.step.epochs());
        let lr = self.position.schedule.lr(epoch);
        self.opt.set_lr(lr as f32);
        self.graphs.new_epoch();
        let partial = self.position.partial.take();
        // A stop inside this epoch rebuilds the same batch order from the epoch's start.
        let epoch_rng = match partial.as_ref() {
            Some(p) => Rng::from_state(p.epoch_rng),
            None => self.position.rng.clone(),
        };
        self.position.rng = epoch_rng.clone();
        let rng = &mut self.position.rng;
        let mut loader =
            Loader::shuffled(&self.run.data.train, h.batch_size, rng, self.run.device)?
                .input_shape(&self.model.input_shape())?
                .limit(h.max_train_batches);
        if h.augment {
            // Keyed by a seed from the epoch's generator and the epoch: a resumed epoch redraws
            // the same key, and every example's crop/flip is the same on host and device.
            let key = AugmentKey::draw(rng, u32::try_from(epoch).unwrap_or(u32::MAX));
            loader = loader.augment_keyed(key)?;
        }
        let first_batch = partial.as_ref().map_or(0, |p| p.batches_done);
        let mut totals = TrainedEpoch::start(lr, partial.as_ref());
        let num_batches = loader.num_batches();
        let loader = loader.starting_at(first_batch);
        let progress = EpochProgress::start(
            num_batches,
            format!("{name} epoch {}/{epochs}", epoch + 1),
            first_batch,
        );
        let mut in_flight = VecDeque::new();
        for (b, batch) in (first_batch..).zip(loader.with_indices()) {
            interrupt::before_batch();
            if let Some(signal) = interrupt::requested() {
                progress.abandon();
                // The saved sums (and a loss that became non-finite) need every queued step.
                self.resolve_steps(&mut in_flight, 0, &mut totals, epoch)?;
                let stop = Stop {
                    signal,
                    epoch,
                    batch: b,
                    num_batches,
                };
                return Err(self.save_and_stop(stop, &epoch_rng, &totals)?);
            }
            let out = batch.and_then(|(x, y, indices)| {
                let batch = Batch {
                    x,
                    y,
                    indices: Some(indices),
                };
                let mut on = StepOn {
                    model: self.model,
                    store: self.store,
                    opt: &mut self.opt,
                    lr,
                    env: StepEnv {
                        at: self.run.compute(),
                        scaler: self.position.scaler.as_mut(),
                        guard: self.guard.as_mut(),
                    },
                };
                self.graphs.step(self.method.as_mut(), &mut on, &batch)
            });
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    progress.abandon();
                    // An earlier non-finite loss is what stopped the run first.
                    self.resolve_steps(&mut in_flight, 0, &mut totals, epoch)?;
                    return Err(e);
                }
            };
            in_flight.push_back((b, out));
            if let Err(e) = self.resolve_steps(&mut in_flight, STEPS_IN_FLIGHT, &mut totals, epoch)
            {
                progress.abandon();
                return Err(e);
            }
            progress.batch_done(b, || totals.mean_loss());
        }
        if let Err(e) = self.resolve_steps(&mut in_flight, 0, &mut totals, epoch) {
            progress.abandon();
            return Err(e);
        }
        progress.finish();
        Ok(totals)
    }

    /// Read the oldest queued steps of `epoch` until `keep` remain, adding them to `totals`; a
    /// non-finite loss stops the run, reported at its own batch (the device skipped its update
    /// and every later one).
    fn resolve_steps(
        &self,
        in_flight: &mut VecDeque<(usize, PendingStep)>,
        keep: usize,
        totals: &mut TrainedEpoch,
        epoch: usize,
    ) -> Result<()> {
        while in_flight.len() > keep {
            let Some((b, pending)) = in_flight.pop_front() else {
                break;
            };
            let out = pending.resolve()?;
            if !out.loss.is_finite() {
                let (name, lr) = (self.name(), totals.lr);
                return Err(Error::Numeric(format!(
                    "loss became {} at epoch {} batch {} of stage `{name}` (lr {lr}); stopped, \
                     {}; try a smaller sequence.{name}.lr",
                    out.loss,
                    epoch + 1,
                    b + 1,
                    self.run.checkpoints.kept_state()
                )));
            }
            totals.loss_sum += out.loss as f64 * out.examples as f64;
            totals.correct += out.correct;
            totals.seen += out.examples;
            totals.skipped += usize::from(out.skipped);
        }
        Ok(())
    }

    /// After `epoch`'s batches: evaluate, log, save a new best, commit when due.
    fn end_epoch(&mut self, epoch: usize, totals: TrainedEpoch) -> Result<()> {
        sync_loss_scaler(self.guard.as_ref(), &mut self.position.scaler)?;
        let (name, epochs, lr) = (self.name(), self.step.epochs(), totals.lr);
        let e = match self.method.deployable(self.store)? {
            Some(mut q) => self.run.eval(self.model, &mut q)?,
            None => self.run.eval(self.model, self.store)?,
        };
        if !e.loss.is_finite() {
            return Err(Error::Numeric(format!(
                "the test loss became {} after epoch {} of stage `{name}` (lr {lr}); stopped, {}",
                e.loss,
                epoch + 1,
                self.run.checkpoints.kept_state()
            )));
        }
        if let Err(param) = check_finite(self.store) {
            return Err(Error::Numeric(format!(
                "parameter `{param}` became non-finite in epoch {} of stage `{name}` (lr {lr}); \
                 stopped, {}",
                epoch + 1,
                self.run.checkpoints.kept_state()
            )));
        }
        self.position.schedule.observe(e.accuracy);
        let m = EpochMetrics {
            stage: name.to_string(),
            step: self.index,
            model: self.model.architecture().to_string(),
            epoch: epoch + 1,
            epochs,
            lr,
            train_loss: totals.mean_loss(),
            train_acc: totals.correct as f64 / totals.seen.max(1) as f64,
            test_loss: e.loss,
            test_acc: e.accuracy,
            teacher_acc: self.teacher_acc,
            seconds: totals.seconds(),
            skipped_steps: self.position.scaler.map(|_| totals.skipped),
            loss_scale: self.position.scaler.map(|s| s.scale as f64),
        };
        println!(
            "epoch {}/{}  loss {:.4}  train acc {:.1}%  test acc {:.1}%{}{}  {:.1} s",
            m.epoch,
            m.epochs,
            m.train_loss,
            100.0 * m.train_acc,
            100.0 * m.test_acc,
            self.teacher_acc
                .map(|a| format!("  (teacher {:.1}%)", 100.0 * a))
                .unwrap_or_default(),
            m.skipped_steps
                .zip(m.loss_scale)
                .map(|(n, s)| format!("  (fp16: {n} steps skipped, loss scale {s})"))
                .unwrap_or_default(),
            m.seconds
        );
        let run = &mut *self.run;
        run.metrics.write(&m)?;
        run.metrics.scalars(&m, run.history.len() + 1)?;
        run.history.push(m);

        let position = &mut self.position;
        if self.step.is_student() && position.best.is_none_or(|b| e.accuracy > b) {
            position.best = Some(e.accuracy);
            position.best_epoch = Some(epoch + 1);
            let info = run.sidecar_info(self.step, self.model.architecture(), epoch + 1);
            run.checkpoints
                .save_best(self.store, self.method.as_ref(), info)?;
        }
        let last = epoch + 1 == epochs;
        if last || (epoch + 1).is_multiple_of(run.cfg.params.save_every) {
            let resume = self.resume_record(epoch + 1, &self.position.rng, None);
            let at = format!("epoch {}/{epochs} of stage `{name}`", epoch + 1);
            self.commit(resume, epoch + 1, &at)?;
        }
        Ok(())
    }

    /// After the last epoch: save an intermediate model, unfreeze, report a quantized size.
    fn finish(self) -> Result<StepResult> {
        let (run, step, model, store) = (self.run, self.step, self.model, self.store);
        let epochs = step.epochs();
        if let Some(path) = &step.save_to {
            let info = run.sidecar_info(step, model.architecture(), epochs);
            run.checkpoints.save_model(path, store, info)?;
            println!("saved {} to {}", model.architecture(), path.display());
        }
        // Frozen parts (LIT) stay frozen only within their stage.
        lit::unfreeze_all(store)?;
        let (best, best_epoch) = (self.position.best, self.position.best_epoch);
        let quantized = match self.method.quantized_bits() {
            None => None,
            Some((bits, bucket, tables)) => {
                let mut size = qd::packed_size(store, &bits, bucket, tables);
                println!(
                    "quantized student: {} bytes packed (full precision {} bytes, {:.1}x smaller)",
                    size.packed_bytes,
                    size.full_precision_bytes,
                    size.full_precision_bytes as f64 / size.packed_bytes.max(1) as f64
                );
                if let (Some(_), Some(epoch)) = (self.method.pack_specs(), best_epoch) {
                    let (packed_path, file_bytes) = run.checkpoints.packed_file()?;
                    println!(
                        "packed export: {} ({file_bytes} bytes on disk), the student of the best \
                         epoch {} of {} (test acc {:.2}%), as in {}",
                        packed_path.display(),
                        epoch,
                        epochs,
                        100.0 * best.unwrap_or(0.0),
                        run.checkpoints.best_path().display()
                    );
                    size.file = Some((packed_path, file_bytes));
                }
                Some((bits, size))
            }
        };
        Ok(StepResult { best, quantized })
    }
}
