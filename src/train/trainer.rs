//! The experiment runner behind `lit-engine train`: it turns the config's stages into a plan of
//! steps (teacher training, TAKD assistants, then the student's stages in order), runs each
//! step's epochs with its method's training step (`distill::*`), evaluates after every epoch,
//! and writes metrics and checkpoints:
//!
//! - `<save_model_name>` (`.safetensors` + `.json` sidecar): the best epoch (test accuracy) of
//!   the last student stage that ran, in deployable form (quantized students quantized);
//! - the resumable state (weights, SGD momentum buffers, plan position, epoch, schedule, shuffle
//!   RNG, learned quantization points, metrics history), committed as one unit every
//!   `save_every` epochs, at the end of each step and when a signal stops the run
//!   (`run_state`); `--resume` continues from it exactly. `<stem>-last.safetensors` + `.json`
//!   are copies of its weights and sidecar;
//! - the teacher of a `teacher` stage at `base_model_path` (as `.safetensors`), TAKD assistants
//!   at `<stem>-ta<i>-<arch>.safetensors`;
//! - `metrics.jsonl` in `params.logdir`: one JSON object per epoch (and per PTQ bit width).

use crate::autograd::Graph;
use crate::config::{Config, Stage, StageKind};
use crate::data::{self, Dataset, DatasetKind, Loader, Split};
use crate::device::Device;
use crate::distill::export::{save_packed, PackSpec};
use crate::distill::kd::{self, Teacher};
use crate::distill::lit::{self, LitSetup};
use crate::distill::qd::{self, DqState, QuantSpec, SizeReport};
use crate::distill::{model_input, takd, Batch, StepOutcome};
use crate::durable::{remove_stray_temp_files, Stray};
use crate::error::{Error, Result};
use crate::models::{self, Model};
use crate::nn::{EntryKind, ParamStore};
use crate::ops::kd::KdLoss;
use crate::ops::loss::{accuracy, cross_entropy, Reduction};
use crate::rng::Rng;
use crate::train::checkpoint;
use crate::train::guards::{check_finite, guard_outputs, weights_file};
use crate::train::interrupt;
pub use crate::train::metrics_log::EpochMetrics;
use crate::train::metrics_log::MetricsLog;
use crate::train::optim::Sgd;
use crate::train::report::{Report, ReportRow, Role};
use crate::train::resume::{self, read_resumed, PartialEpoch, ResumeState, Resumed};
use crate::train::run_state::{self, RunLock, RunState, Snapshot};
use crate::train::schedule::LrSchedule;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One post-training-quantization measurement.
#[derive(Clone, Debug, Serialize)]
pub struct PtqResult {
    pub stage: &'static str,
    pub bits: u32,
    pub test_acc: f64,
    pub test_loss: f64,
    pub packed_bytes: usize,
    pub full_precision_bytes: usize,
}

pub struct RunSummary {
    pub epochs: Vec<EpochMetrics>,
    /// The best checkpoint of the last student stage (absent when no student stage ran).
    pub checkpoint: Option<PathBuf>,
    pub last_checkpoint: Option<PathBuf>,
    pub metrics_file: PathBuf,
    pub best_test_acc: Option<f64>,
    pub ptq: Vec<PtqResult>,
    /// Size of the quantized student when the last stage quantized it.
    pub quantized_size: Option<(Vec<(String, u32)>, SizeReport)>,
    pub student_parameters: usize,
    /// Teacher, assistants and student: parameters, bytes, accuracy (best and last epoch).
    pub report: Report,
}

/// Loss and accuracy (fraction) over a split.
#[derive(Clone, Copy, Debug)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub examples: usize,
}

/// A model with its parameters, built from a config on a device.
pub struct Built {
    pub model: Box<dyn Model>,
    pub store: ParamStore,
}

/// Run options beyond the config.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Continue from the committed run state instead of starting over.
    pub resume: bool,
    /// Resume even when the config changed in keys that make it another experiment.
    pub allow_config_change: bool,
}

fn strip_config_prefix(e: Error) -> String {
    match e {
        Error::Config(m) => m,
        other => other.to_string(),
    }
}

fn config_error(key: &str, e: Error) -> Error {
    Error::Config(format!("{key}: {}", strip_config_prefix(e)))
}

/// Check what this build can run before any data is read: the data set and every architecture.
/// Errors name the config file and the line of the key.
pub fn check_runnable(cfg: &Config) -> Result<DatasetKind> {
    check_architectures(cfg).map_err(|e| cfg.locate(e))
}

fn check_architectures(cfg: &Config) -> Result<DatasetKind> {
    let kind = DatasetKind::from_name(&cfg.models.dataset)
        .map_err(|e| config_error("models.dataset", e))?;
    let classes = kind.num_classes();
    let student = cfg
        .student_architecture()
        .map_err(|e| config_error("models.student_activation", e))?;
    models::describe(&student, classes)
        .map_err(|e| config_error("models.training_architecture", e))?;
    if let Some(t) = &cfg.models.base_architecture {
        models::describe(t, classes).map_err(|e| config_error("models.base_architecture", e))?;
    }
    if let Some(chain) = cfg.sequence.takd.as_ref().and_then(|s| s.chain.as_ref()) {
        for (i, a) in chain.iter().enumerate() {
            models::describe(a, classes)
                .map_err(|e| config_error(&format!("sequence.takd.chain[{i}]"), e))?;
        }
    }
    Ok(kind)
}

/// A weights path from the config: a `.pth` resolves to the `.safetensors` beside it; a missing
/// file is an error naming `key` (and, for a lone `.pth`, how to convert it).
pub fn resolve_weights(path: &Path, key: &str) -> Result<PathBuf> {
    let is_pth = path.extension().is_some_and(|e| e == "pth" || e == "pt");
    let candidate = if is_pth {
        path.with_extension("safetensors")
    } else {
        path.to_path_buf()
    };
    if candidate.is_file() {
        return Ok(candidate);
    }
    if is_pth && path.is_file() {
        return Err(Error::Config(format!(
            "{key}: {} is a PyTorch pickle, which lit-engine does not read; convert it once with \
             python: `import torch, safetensors.torch` then \
             `safetensors.torch.save_file(torch.load('{p}', map_location='cpu'), '{s}')` \
             (if the file holds a whole model or a dict, save its state_dict)",
            path.display(),
            p = path.display(),
            s = candidate.display()
        )));
    }
    Err(Error::Config(format!(
        "{key}: {} not found{}",
        candidate.display(),
        if is_pth {
            format!(" (nor {})", path.display())
        } else {
            String::new()
        }
    )))
}

/// Where a `teacher` stage saves the teacher: `base_model_path` as `.safetensors`, else
/// `<save_directory>/teacher-<arch>.safetensors`.
pub fn teacher_output_path(cfg: &Config) -> PathBuf {
    match &cfg.models.base_model_path {
        Some(p) => p.with_extension("safetensors"),
        None => cfg.params.save_directory.join(format!(
            "teacher-{}.safetensors",
            cfg.models.base_architecture.as_deref().unwrap_or("model")
        )),
    }
}

/// One step of a run: a stage applied to one model.
#[derive(Clone, Debug)]
pub struct PlanStep {
    pub kind: StageKind,
    pub stage: Stage,
    pub architecture: String,
    /// The teacher's architecture and weights file (`None`: no teacher; for differentiable
    /// quantization, the full-precision student itself).
    pub teacher: Option<(String, PathBuf)>,
    /// An intermediate model (teacher, TAKD assistant) saved here when its step ends; `None` for
    /// the student's steps.
    pub save_to: Option<PathBuf>,
}

impl PlanStep {
    pub fn is_student(&self) -> bool {
        self.save_to.is_none()
    }
}

/// The steps of `cfg` in run order: the teacher, the TAKD assistants (they do not depend on the
/// student), then the student's stages.
pub fn plan(cfg: &Config) -> Result<Vec<PlanStep>> {
    let student = cfg.student_architecture()?;
    let m = &cfg.models;
    let teacher_weights = || -> PathBuf {
        if cfg.sequence.teacher.is_some() {
            teacher_output_path(cfg)
        } else {
            m.base_model_path.clone().unwrap_or_default()
        }
    };
    let base = m.base_architecture.clone();
    let mut steps = Vec::new();
    if let Some(stage) = &cfg.sequence.teacher {
        steps.push(PlanStep {
            kind: StageKind::Teacher,
            stage: Stage::Teacher(stage.clone()),
            architecture: base.clone().unwrap_or_default(),
            teacher: None,
            save_to: Some(teacher_output_path(cfg)),
        });
    }
    let mut student_steps = Vec::new();
    for (kind, stage) in cfg.sequence.stages() {
        let teacher = base.clone().map(|b| (b, teacher_weights()));
        match kind {
            StageKind::Teacher => {}
            StageKind::Train => student_steps.push(PlanStep {
                kind,
                stage: stage.clone(),
                architecture: student.clone(),
                teacher: None,
                save_to: None,
            }),
            StageKind::Takd => {
                let (t_arch, t_path) = teacher.ok_or_else(|| {
                    Error::Config("models.base_architecture is required by `takd`".into())
                })?;
                let best = cfg.params.checkpoint_path();
                let stem = best.file_stem().unwrap_or_default().to_string_lossy();
                let links = takd::chain_links(
                    &t_arch,
                    &t_path,
                    stage.chain().unwrap_or(&[]),
                    &student,
                    &cfg.params.save_directory,
                    &stem,
                );
                for link in links {
                    let step = PlanStep {
                        kind,
                        stage: stage.clone(),
                        architecture: link.architecture,
                        teacher: Some((link.teacher_architecture, link.teacher_weights)),
                        save_to: link.save_to.clone(),
                    };
                    if link.save_to.is_some() {
                        steps.push(step);
                    } else {
                        student_steps.push(step);
                    }
                }
            }
            _ => student_steps.push(PlanStep {
                kind,
                stage: stage.clone(),
                architecture: student.clone(),
                teacher,
                save_to: None,
            }),
        }
    }
    steps.extend(student_steps);
    Ok(steps)
}

const SUBSET_SEED: u64 = 0x005e_b5e7;

/// The train and test splits, cut to `max_train_examples` / `max_test_examples`.
pub struct Splits {
    pub kind: DatasetKind,
    pub train: Dataset,
    pub test: Dataset,
}

/// A class-stratified subset of `n` examples, or all of them. The subset does not depend on
/// `hyperparameters.seed`, so runs with different seeds see the same examples.
fn truncate(d: Dataset, n: Option<usize>) -> Dataset {
    match n.filter(|&n| n < d.len()) {
        Some(n) => d.stratified_subset(n, SUBSET_SEED),
        None => d,
    }
}

pub fn load_data(cfg: &Config, kind: DatasetKind, root: &Path) -> Result<Splits> {
    let h = &cfg.hyperparameters;
    Ok(Splits {
        kind,
        train: truncate(data::load(root, kind, Split::Train)?, h.max_train_examples),
        test: truncate(data::load(root, kind, Split::Test)?, h.max_test_examples),
    })
}

/// Build `arch` for the data set (seeded) and check it fits the data.
pub fn build_arch(
    arch: &str,
    key: &str,
    kind: DatasetKind,
    features: usize,
    seed: u64,
    device: &Device,
) -> Result<Built> {
    let mut store = ParamStore::new();
    let mut rng = Rng::new(seed);
    let model = models::build(arch, kind.num_classes(), &mut store, device, &mut rng)
        .map_err(|e| config_error(key, e))?;
    if model.input_features() != features || model.num_classes() != kind.num_classes() {
        return Err(Error::Config(format!(
            "{key}: `{}` takes {} features and predicts {} classes, \
             but {} has {features} features and {} classes",
            model.architecture(),
            model.input_features(),
            model.num_classes(),
            kind.name(),
            kind.num_classes()
        )));
    }
    Ok(Built { model, store })
}

/// Build the student (`models.training_architecture` with `student_activation`).
pub fn build_model(
    cfg: &Config,
    kind: DatasetKind,
    features: usize,
    device: &Device,
) -> Result<Built> {
    build_arch(
        &cfg.student_architecture()?,
        "models.training_architecture",
        kind,
        features,
        cfg.hyperparameters.seed,
        device,
    )
}

/// Mean loss and accuracy of `model` over `data` (no tape).
pub fn evaluate(
    model: &dyn Model,
    store: &mut ParamStore,
    data: &Dataset,
    batch_size: usize,
    max_batches: Option<usize>,
    device: &Device,
) -> Result<Evaluation> {
    let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    let loader = Loader::sequential(data, batch_size, device)?
        .input_shape(&model.input_shape())?
        .limit(max_batches);
    for batch in loader {
        let (x, y) = batch?;
        let batch = Batch { x, y };
        let mut g = Graph::no_grad(device);
        let x = model_input(&mut g, &batch);
        let logits = model.forward(&mut g, store, x, false)?;
        let loss = cross_entropy(&mut g, logits, &batch.y, Reduction::Sum)?;
        loss_sum += g.value(loss).item()? as f64;
        correct += accuracy(g.value(logits), &batch.y)?;
        seen += batch.len();
    }
    if seen == 0 {
        return Err(Error::data(
            Path::new(&data.name),
            format!("the {} split is empty", data.split.name()),
        ));
    }
    Ok(Evaluation {
        loss: loss_sum / seen as f64,
        accuracy: correct as f64 / seen as f64,
        examples: seen,
    })
}

fn progress_bar(len: usize, prefix: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    let style =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(prefix);
    pb
}

/// Bits per quantized parameter, the bucket size, and whether point tables are stored.
type QuantizedLayout = (Vec<(String, u32)>, Option<usize>, bool);

/// What a step's method does per batch.
trait Method {
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        model: &dyn Model,
        store: &mut ParamStore,
        opt: &mut Sgd,
        batch: &Batch,
        lr: f64,
        device: &Device,
    ) -> Result<StepOutcome>;
    /// The model as deployed (quantized students: quantized), when it differs from `store`.
    fn deployable(&self, _store: &ParamStore) -> Result<Option<ParamStore>> {
        Ok(None)
    }
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

struct Supervised;

impl Method for Supervised {
    fn step(
        &mut self,
        model: &dyn Model,
        store: &mut ParamStore,
        opt: &mut Sgd,
        batch: &Batch,
        _lr: f64,
        device: &Device,
    ) -> Result<StepOutcome> {
        let mut g = Graph::new(device);
        let x = model_input(&mut g, batch);
        let logits = model.forward(&mut g, store, x, true)?;
        let loss = cross_entropy(&mut g, logits, &batch.y, Reduction::Mean)?;
        let value = g.value(loss).item()?;
        let correct = accuracy(g.value(logits), &batch.y)?;
        if value.is_finite() {
            g.backward(loss)?;
            g.accumulate_param_grads(store)?;
            opt.step(store)?;
        }
        store.zero_grads();
        Ok(StepOutcome {
            loss: value,
            correct,
            examples: batch.len(),
        })
    }
}

struct KdMethod {
    teacher: Teacher,
    loss: KdLoss,
}

impl Method for KdMethod {
    fn step(
        &mut self,
        model: &dyn Model,
        store: &mut ParamStore,
        opt: &mut Sgd,
        batch: &Batch,
        _lr: f64,
        device: &Device,
    ) -> Result<StepOutcome> {
        let t = self.teacher.logits(batch, device)?;
        kd::kd_step(model, store, opt, batch, &t, self.loss, device)
    }
}

struct LitMethod {
    teacher: Teacher,
    setup: LitSetup,
}

impl Method for LitMethod {
    fn step(
        &mut self,
        model: &dyn Model,
        store: &mut ParamStore,
        opt: &mut Sgd,
        batch: &Batch,
        _lr: f64,
        device: &Device,
    ) -> Result<StepOutcome> {
        lit::lit_step(
            model,
            store,
            opt,
            batch,
            &mut self.teacher,
            &self.setup,
            device,
        )
    }
}

struct QdMethod {
    teacher: Teacher,
    loss: KdLoss,
    spec: QuantSpec,
}

impl Method for QdMethod {
    fn step(
        &mut self,
        model: &dyn Model,
        store: &mut ParamStore,
        opt: &mut Sgd,
        batch: &Batch,
        _lr: f64,
        device: &Device,
    ) -> Result<StepOutcome> {
        let t = self.teacher.logits(batch, device)?;
        qd::qd_step(model, store, opt, batch, &t, self.loss, &self.spec, device)
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

struct DqMethod {
    teacher: Teacher,
    loss: KdLoss,
    state: DqState,
    momentum: f32,
}

impl Method for DqMethod {
    fn step(
        &mut self,
        model: &dyn Model,
        store: &mut ParamStore,
        _opt: &mut Sgd,
        batch: &Batch,
        lr: f64,
        device: &Device,
    ) -> Result<StepOutcome> {
        let t = self.teacher.logits(batch, device)?;
        self.state.step(
            model,
            store,
            batch,
            &t,
            self.loss,
            lr as f32,
            self.momentum,
            device,
        )
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

/// Everything a run shares between its steps.
struct Run<'a> {
    cfg: &'a Config,
    device: &'a Device,
    data: Splits,
    metrics: MetricsLog,
    history: Vec<EpochMetrics>,
    best_path: PathBuf,
    last_path: PathBuf,
    state: RunState,
    /// What the committed state holds, for messages ("generation 3: epoch 2 of `kd`").
    committed: Option<String>,
    /// Teachers evaluated during the run: (architecture, parameters, test accuracy).
    teachers: Vec<(String, usize, f64)>,
}

impl Run<'_> {
    fn load_teacher(&self, arch: &str, path: &Path, key: &str) -> Result<Teacher> {
        let path = resolve_weights(path, key)?;
        let Built { model, mut store } = build_arch(
            arch,
            "models.base_architecture",
            self.data.kind,
            self.data.train.example_len(),
            self.cfg.hyperparameters.seed,
            self.device,
        )?;
        checkpoint::load_into(&path, &mut store)?;
        check_finite(&store).map_err(|name| {
            Error::Numeric(format!(
                "the teacher weights in {} hold non-finite values (`{name}`): the teacher file \
                 is broken; re-export or retrain the teacher",
                path.display()
            ))
        })?;
        Ok(Teacher { model, store })
    }

    fn eval(&self, model: &dyn Model, store: &mut ParamStore) -> Result<Evaluation> {
        let h = &self.cfg.hyperparameters;
        evaluate(
            model,
            store,
            &self.data.test,
            h.batch_size,
            h.max_eval_batches,
            self.device,
        )
    }

    fn sidecar_info(&self, step: &PlanStep, arch: &str, epoch: usize) -> serde_json::Value {
        serde_json::json!({
            "lit_engine_version": env!("CARGO_PKG_VERSION"),
            "architecture": arch,
            "dataset": self.cfg.models.dataset,
            "stage": step.kind.name(),
            "epoch": epoch,
            "seed": self.cfg.hyperparameters.seed,
            "device": self.device.name(),
            "metrics": self.history.last(),
            "config": self.cfg,
            "history": self.history,
            "events_file": self.metrics.events_file_name(),
        })
    }
}

/// Commit the run state (after checking that every parameter is finite); returns a sentence
/// saying what was saved and how to continue.
#[allow(clippy::too_many_arguments)]
fn commit_state(
    run: &mut Run,
    step: &PlanStep,
    model: &dyn Model,
    store: &ParamStore,
    opt: &Sgd,
    resume: ResumeState,
    epoch: usize,
    at: &str,
) -> Result<String> {
    if let Err(param) = check_finite(store) {
        return Err(Error::Numeric(format!(
            "parameter `{param}` is non-finite at {at}; not saved, {}",
            run.kept_state()
        )));
    }
    let mut info = run.sidecar_info(step, model.architecture(), epoch);
    info["resume"] =
        serde_json::to_value(resume).map_err(|e| Error::Other(format!("resume state: {e}")))?;
    let generation = run.state.commit(Snapshot {
        store,
        optimizer: opt,
        info,
    })?;
    let what = format!("generation {generation} of the run state ({at})");
    run.committed = Some(what.clone());
    Ok(format!(
        "saved {what} in {}; continue with --resume",
        run.state.dir().display()
    ))
}

impl Run<'_> {
    /// Which finite state a stopped run keeps, for error messages.
    fn kept_state(&self) -> String {
        match &self.committed {
            Some(what) => format!(
                "the last finite state is {what} in {} (continue with --resume after lowering \
                 the rate; best so far: {})",
                self.state.dir().display(),
                self.best_path.display()
            ),
            None => "no run state was committed yet".to_string(),
        }
    }
}

/// The optimizer of a stage: its overrides, else `hyperparameters`.
fn optimizer_for(stage: &Stage, cfg: &Config) -> Result<Sgd> {
    let h = &cfg.hyperparameters;
    Sgd::new(
        stage.lr as f32,
        stage.momentum.unwrap_or(h.momentum) as f32,
        stage.weight_decay.unwrap_or(h.weight_decay) as f32,
        stage.nesterov.unwrap_or(h.nesterov),
    )
}

/// Shuffling has its own stream per step, so that changing the model does not change the data
/// order (step 0 keeps the single-stage stream of earlier versions).
fn shuffle_rng(seed: u64, step: usize) -> Rng {
    Rng::new(seed ^ 0x5eed_da7a ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Run every stage of `cfg` on `device`, reading data from `data_root`.
pub fn run(cfg: &Config, device: &Device, data_root: &Path) -> Result<RunSummary> {
    run_with(cfg, device, data_root, RunOptions::default())
}

/// Config errors found while running (a missing weights file, a model that does not fit the
/// data, …) name the config file and the line of the key.
pub fn run_with(
    cfg: &Config,
    device: &Device,
    data_root: &Path,
    opts: RunOptions,
) -> Result<RunSummary> {
    run_stages(cfg, device, data_root, opts).map_err(|e| cfg.locate(e))
}

fn run_stages(
    cfg: &Config,
    device: &Device,
    data_root: &Path,
    opts: RunOptions,
) -> Result<RunSummary> {
    for w in cfg.warnings() {
        eprintln!("warning: {w}");
    }
    let kind = check_runnable(cfg)?;
    let steps = plan(cfg)?;
    // A pre-trained teacher must exist before the data are loaded (which can take minutes).
    if let (None, Some(path)) = (&cfg.sequence.teacher, &cfg.models.base_model_path) {
        if steps
            .iter()
            .any(|s| s.teacher.as_ref().is_some_and(|(_, t)| t == path))
        {
            resolve_weights(path, "models.base_model_path")?;
        }
    }
    guard_outputs(cfg, &steps)?;
    // Held until the run returns: a second run on this folder is refused.
    let _lock = RunLock::acquire(&cfg.params.save_directory)?;
    // The log folder may be shared with other runs: only files of dead processes go there.
    let strays = [
        (cfg.params.save_directory.as_path(), Stray::AllOthers),
        (cfg.params.metrics_dir(), Stray::DeadOnly),
    ];
    for (dir, which) in strays {
        for stray in remove_stray_temp_files(dir, which) {
            eprintln!(
                "note: removed {}, left by a run that died mid-write",
                stray.display()
            );
        }
    }
    let last_path = cfg.params.checkpoint_with_suffix("-last");
    let state = RunState::open(&last_path);
    state.remove_other_generations();
    // Everything --resume needs is read and checked before the data (which can take minutes).
    let resumed = if opts.resume {
        Some(read_resumed(cfg, &state, &steps, opts.allow_config_change)?)
    } else {
        None
    };
    let data = load_data(cfg, kind, data_root)?;
    if data.train.is_empty() {
        return Err(Error::Config(format!(
            "models.dataset: the training split of {} is empty",
            kind.name()
        )));
    }
    let mut run = Run {
        cfg,
        device,
        data,
        metrics: MetricsLog::new(cfg.params.metrics_dir()),
        history: Vec::new(),
        best_path: cfg.params.checkpoint_path(),
        last_path,
        state,
        committed: None,
        teachers: Vec::new(),
    };
    if let Some(r) = &resumed {
        run.history = r.history.clone();
        run.metrics.resume(&r.history, r.events_file.as_deref())?;
        // Repair the user-facing copies in case a kill came between commit and publish.
        run.state.publish(r.generation)?;
        run.committed = Some(r.describe(&steps));
        println!("resuming from {}", r.describe(&steps));
        if let Some(name) = run.metrics.events_file_name() {
            run.state.record_events_file(&name)?;
        }
    } else if steps.iter().any(|s| s.stage.epochs > 0) {
        let previous = run.state.events_file();
        let state = &run.state;
        run.metrics
            .start_fresh(previous.as_deref(), |name| state.record_events_file(name))?;
    }
    println!(
        "{} on {}: {} train / {} test examples, device {}",
        cfg.student_architecture()?,
        kind.name(),
        run.data.train.len(),
        run.data.test.len(),
        device.name()
    );

    let features = run.data.train.example_len();
    let mut student: Option<Built> = None;
    let mut best: Option<f64> = None;
    let mut quantized_size = None;
    for (i, step) in steps.iter().enumerate() {
        let resuming_here = resumed.as_ref().filter(|r| r.state.step == i);
        if resumed.as_ref().is_some_and(|r| r.state.step > i) {
            continue;
        }
        let mut built = if step.is_student() {
            match student.take() {
                Some(b) => b,
                None => {
                    let mut b = build_model(cfg, kind, features, device)?;
                    if resuming_here.is_none() {
                        if let Some(ckpt) = &cfg.models.training_checkpoint {
                            let p = resolve_weights(ckpt, "models.training_checkpoint")?;
                            checkpoint::load_into(&p, &mut b.store)?;
                        }
                    }
                    b
                }
            }
        } else {
            build_arch(
                &step.architecture,
                &format!("sequence.{}", step.kind.name()),
                kind,
                features,
                cfg.hyperparameters.seed.wrapping_add(1 + i as u64),
                device,
            )?
        };
        if let Some(r) = resuming_here {
            checkpoint::load_into(&r.weights, &mut built.store)?;
            built.model.set_rng_calls(r.state.model_rng_calls);
        }
        let outcome = run_step(&mut run, i, step, &mut built, resuming_here)?;
        if step.is_student() {
            best = outcome.best;
            quantized_size = outcome.quantized;
            student = Some(built);
        }
    }

    let mut ptq = Vec::new();
    if let Some(p) = &cfg.sequence.post_training_quantization {
        let mut b = match student.take() {
            Some(b) => b,
            None => {
                let mut b = build_model(cfg, kind, features, device)?;
                let ckpt = cfg.models.training_checkpoint.as_ref().ok_or_else(|| {
                    Error::Config(
                        "sequence.post_training_quantization needs a trained student: a training \
                         stage before it or models.training_checkpoint"
                            .into(),
                    )
                })?;
                let path = resolve_weights(ckpt, "models.training_checkpoint")?;
                checkpoint::load_into(&path, &mut b.store)?;
                b
            }
        };
        let fp = run.eval(b.model.as_ref(), &mut b.store)?;
        println!(
            "post-training quantization of {}: full precision test acc {:.2}%",
            b.model.architecture(),
            100.0 * fp.accuracy
        );
        for &bits in &p.bits {
            let spec = QuantSpec::new(
                &b.store,
                bits,
                p.quantization.bucket_size,
                p.quantization.quantize_first_and_last_layer,
                p.quantization.quantized_layers.as_deref(),
                "sequence.post_training_quantization.quantized_layers",
            )?;
            let mut q = spec.quantized_copy(&b.store)?;
            let e = run.eval(b.model.as_ref(), &mut q)?;
            let size = qd::packed_size(&q, &spec.bits_of(), spec.bucket, false);
            println!(
                "  {bits} bits: test acc {:.2}%  test loss {:.4}  packed {} bytes (full precision {})",
                100.0 * e.accuracy,
                e.loss,
                size.packed_bytes,
                size.full_precision_bytes
            );
            let r = PtqResult {
                stage: "post_training_quantization",
                bits,
                test_acc: e.accuracy,
                test_loss: e.loss,
                packed_bytes: size.packed_bytes,
                full_precision_bytes: size.full_precision_bytes,
            };
            run.metrics.write(&r)?;
            ptq.push(r);
        }
        student = Some(b);
    }

    let any_student = steps.iter().any(PlanStep::is_student);
    let report = build_report(&run, &steps, student.as_ref(), &quantized_size, &ptq);
    Ok(RunSummary {
        epochs: run.history,
        checkpoint: any_student.then_some(run.best_path),
        last_checkpoint: run.committed.is_some().then_some(run.last_path),
        metrics_file: run.metrics.path,
        best_test_acc: best,
        ptq,
        quantized_size,
        student_parameters: student.map_or(0, |b| b.store.num_parameters()),
        report,
    })
}

fn b_numel(store: &ParamStore, name: &str) -> usize {
    store.get(name).map_or(0, |p| p.value.numel())
}

/// The final table: the base teacher, the assistants, and the student (its last stage's
/// accuracies; quantized: the packed size and bits; PTQ rows when there is no trained stage).
fn build_report(
    run: &Run,
    steps: &[PlanStep],
    student: Option<&Built>,
    quantized: &Option<(Vec<(String, u32)>, SizeReport)>,
    ptq: &[PtqResult],
) -> Report {
    let mut report = Report::new();
    let accuracies = |step: usize| -> Vec<f64> {
        run.history
            .iter()
            .filter(|m| m.step == step)
            .map(|m| m.test_acc)
            .collect()
    };
    let base = run.cfg.models.base_architecture.as_deref();
    for (arch, params, acc) in &run.teachers {
        let role = if Some(arch.as_str()) == base {
            Role::Teacher
        } else {
            Role::Assistant
        };
        // A teacher trained in this run reports its own epochs.
        let trained = steps
            .iter()
            .position(|s| !s.is_student() && s.architecture == *arch)
            .map(accuracies)
            .filter(|a| !a.is_empty());
        let accs = trained.unwrap_or_else(|| vec![*acc]);
        report.push(ReportRow::float(role, arch, *params, &accs));
    }
    if let Some(b) = student {
        let params = b.store.num_parameters();
        let arch = b.model.architecture();
        if let Some(last_student) = steps.iter().rposition(PlanStep::is_student) {
            let accs = accuracies(last_student);
            match quantized {
                Some((bits, size)) => {
                    // Mixed precision (differentiable quantization): the size-weighted mean.
                    let (mut sum, mut count) = (0.0f64, 0usize);
                    for (name, layer_bits) in bits {
                        let n = b_numel(&b.store, name);
                        sum += (*layer_bits as f64) * n as f64;
                        count += n;
                    }
                    let mean_bits = (sum / count.max(1) as f64).round() as u32;
                    report.push(ReportRow::quantized(
                        arch,
                        params,
                        size.packed_bytes as u64,
                        mean_bits,
                        &accs,
                    ));
                }
                None => {
                    report.push(ReportRow::float(Role::Student, arch, params, &accs));
                }
            }
        }
        for r in ptq {
            report.push(ReportRow::quantized(
                &format!("{arch} PTQ"),
                params,
                r.packed_bytes as u64,
                r.bits,
                &[r.test_acc],
            ));
        }
    }
    report
}

struct StepResult {
    best: Option<f64>,
    quantized: Option<(Vec<(String, u32)>, SizeReport)>,
}

fn run_step(
    run: &mut Run,
    index: usize,
    step: &PlanStep,
    built: &mut Built,
    resumed: Option<&Resumed>,
) -> Result<StepResult> {
    let resume = resumed.map(|r| &r.state);
    let cfg = run.cfg;
    let h = &cfg.hyperparameters;
    let device = run.device;
    let stage = &step.stage;
    let model = built.model.as_ref();
    let store = &mut built.store;
    let name = step.kind.name();

    // The teacher (if any) and its accuracy, once per step.
    let teacher = match &step.teacher {
        Some((arch, path)) => Some(run.load_teacher(
            arch,
            path,
            if cfg.sequence.teacher.is_some() || step.kind == StageKind::Takd {
                "teacher weights"
            } else {
                "models.base_model_path"
            },
        )?),
        None if step.kind == StageKind::DifferentiableQuantization => {
            // Distil from the full-precision student itself.
            let Built { model: m, .. } = build_arch(
                &step.architecture,
                "models.training_architecture",
                run.data.kind,
                run.data.train.example_len(),
                h.seed,
                device,
            )?;
            Some(Teacher {
                model: m,
                store: store.clone(),
            })
        }
        None => None,
    };
    let teacher_acc = match teacher {
        Some(mut t) => {
            let e = run.eval(t.model.as_ref(), &mut t.store)?;
            if !e.loss.is_finite() {
                let file = step
                    .teacher
                    .as_ref()
                    .map_or("the student's own weights".to_string(), |(_, p)| {
                        weights_file(p).display().to_string()
                    });
                return Err(Error::Numeric(format!(
                    "the teacher {} gives non-finite outputs (test loss {}): its weights in \
                     {file} are broken (this is not a learning-rate problem)",
                    t.model.architecture(),
                    e.loss
                )));
            }
            println!(
                "teacher {}: test acc {:.2}%",
                t.model.architecture(),
                100.0 * e.accuracy
            );
            let arch = t.model.architecture().to_string();
            if !run.teachers.iter().any(|(a, _, _)| *a == arch) {
                run.teachers
                    .push((arch, t.store.num_parameters(), e.accuracy));
            }
            Some((t, e.accuracy))
        }
        None => None,
    };
    let (teacher, teacher_acc) = match teacher_acc {
        Some((t, a)) => (Some(t), Some(a)),
        None => (None, None),
    };
    println!(
        "== {name}: {} ({} parameters){}, {} epochs",
        model.architecture(),
        store.num_parameters(),
        step.teacher
            .as_ref()
            .map(|(a, _)| format!(" from teacher {a}"))
            .unwrap_or_default(),
        stage.epochs
    );

    let kd_loss = || kd::loss_for(step.kind, stage, h);
    let need_teacher = || {
        Error::Config(format!(
            "sequence.{name}: needs a teacher (models.base_architecture and base_model_path)"
        ))
    };
    let mut method: Box<dyn Method> = match step.kind {
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
            let state = match resume.and_then(|r| r.dq.clone()) {
                Some(s) => s,
                None => {
                    let names = qd::quantized_parameter_names(
                        store,
                        stage
                            .quantize_first_and_last_layer()
                            .unwrap_or(qd::DEFAULT_QUANTIZE_FIRST_AND_LAST),
                        stage.quantized_layers(),
                    );
                    let bits = stage.bits().unwrap_or(4);
                    let batches: Vec<Batch> =
                        Loader::sequential(&run.data.train, h.batch_size, device)?
                            .input_shape(&model.input_shape())?
                            .limit(Some(stage.allocation_batches().unwrap_or(10)))
                            .map(|b| b.map(|(x, y)| Batch { x, y }))
                            .collect::<Result<_>>()?;
                    let s = DqState::allocate(
                        &names,
                        stage.bucket_size(),
                        bits,
                        stage.min_bits().unwrap_or(bits.saturating_sub(1).max(1)),
                        stage.max_bits().unwrap_or((bits + 2).min(8)),
                        model,
                        store,
                        &mut teacher,
                        &batches,
                        loss,
                        device,
                    )?;
                    let alloc: Vec<String> = s
                        .layers
                        .iter()
                        .map(|l| format!("{}:{}", l.name, l.bits))
                        .collect();
                    println!("bits per layer (from gradient norms): {}", alloc.join(" "));
                    s
                }
            };
            Box::new(DqMethod {
                teacher,
                loss,
                state,
                momentum: stage.momentum.unwrap_or(h.momentum) as f32,
            })
        }
    };

    let mut opt = optimizer_for(stage, cfg)?;
    let (start, mut rng, mut schedule, mut best, mut best_epoch) = match resumed {
        Some(r) => {
            run_state::load_optimizer(&r.optimizer, &mut opt, store, device)?;
            let s = &r.state;
            (
                s.epochs_done,
                Rng::from_state(s.shuffle_rng),
                resume::schedule_for(stage, &s.schedule, &run.history, index),
                s.best_acc,
                s.best_epoch,
            )
        }
        None => (
            0,
            shuffle_rng(h.seed, index),
            LrSchedule::new(stage),
            None,
            None,
        ),
    };
    let mut partial = resume.and_then(|r| r.partial.clone());
    let packed_path = cfg.params.checkpoint_with_suffix("-packed");

    for epoch in start..stage.epochs {
        let lr = schedule.lr(epoch);
        opt.set_lr(lr as f32);
        // A stop inside this epoch rebuilds the same batch order from the epoch's start.
        let epoch_rng = match partial.as_ref() {
            Some(p) => Rng::from_state(p.epoch_rng),
            None => rng.clone(),
        };
        rng = epoch_rng.clone();
        let mut loader = Loader::shuffled(&run.data.train, h.batch_size, &mut rng, device)?
            .input_shape(&model.input_shape())?
            .limit(h.max_train_batches);
        if h.augment {
            loader = loader.augment(&mut rng)?;
        }
        let first_batch = partial.as_ref().map_or(0, |p| p.batches_done);
        let (mut loss_sum, mut correct, mut seen, seconds_before) = match partial.take() {
            Some(p) => (p.loss_sum, p.correct, p.seen, p.seconds),
            None => (0.0f64, 0usize, 0usize, 0.0),
        };
        let started = Instant::now();
        let num_batches = loader.num_batches();
        let loader = loader.starting_at(first_batch);
        let pb = progress_bar(
            num_batches,
            format!("{name} epoch {}/{}", epoch + 1, stage.epochs),
        );
        pb.set_position(first_batch as u64);
        for (b, batch) in (first_batch..).zip(loader) {
            interrupt::before_batch();
            if let Some(signal) = interrupt::requested() {
                pb.abandon();
                let partial = PartialEpoch {
                    batches_done: b,
                    epoch_rng: epoch_rng.state(),
                    loss_sum,
                    correct,
                    seen,
                    seconds: seconds_before + started.elapsed().as_secs_f64(),
                };
                let at = format!(
                    "epoch {}/{} batch {b}/{num_batches} of stage `{name}`",
                    epoch + 1,
                    stage.epochs
                );
                let resume = ResumeState {
                    step: index,
                    epochs_done: epoch,
                    architecture: step.architecture.clone(),
                    shuffle_rng: epoch_rng.state(),
                    schedule: schedule.clone(),
                    best_acc: best,
                    best_epoch,
                    dq: method.dq_state(),
                    partial: Some(partial),
                    model_rng_calls: model.rng_calls(),
                };
                let saved = commit_state(run, step, model, store, &opt, resume, epoch, &at)?;
                return Err(Error::Interrupted {
                    signal,
                    message: format!("stopped by a signal at {at}: {saved}"),
                });
            }
            let (x, y) = batch?;
            let batch = Batch { x, y };
            let out = method.step(model, store, &mut opt, &batch, lr, device)?;
            if !out.loss.is_finite() {
                pb.abandon();
                return Err(Error::Numeric(format!(
                    "loss became {} at epoch {} batch {} of stage `{name}` (lr {lr}); stopped, \
                     {}; try a smaller sequence.{name}.lr",
                    out.loss,
                    epoch + 1,
                    b + 1,
                    run.kept_state()
                )));
            }
            loss_sum += out.loss as f64 * out.examples as f64;
            correct += out.correct;
            seen += out.examples;
            pb.inc(1);
            if b % 10 == 0 {
                pb.set_message(format!("loss {:.4}", loss_sum / seen.max(1) as f64));
            }
        }
        pb.finish_and_clear();
        let deployed = method.deployable(store)?;
        let e = match deployed {
            Some(mut q) => run.eval(model, &mut q)?,
            None => run.eval(model, store)?,
        };
        if !e.loss.is_finite() {
            return Err(Error::Numeric(format!(
                "the test loss became {} after epoch {} of stage `{name}` (lr {lr}); stopped, {}",
                e.loss,
                epoch + 1,
                run.kept_state()
            )));
        }
        if let Err(param) = check_finite(store) {
            return Err(Error::Numeric(format!(
                "parameter `{param}` became non-finite in epoch {} of stage `{name}` (lr {lr}); \
                 stopped, {}",
                epoch + 1,
                run.kept_state()
            )));
        }
        schedule.observe(e.accuracy);
        let m = EpochMetrics {
            stage: name.to_string(),
            step: index,
            model: model.architecture().to_string(),
            epoch: epoch + 1,
            epochs: stage.epochs,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_loss: e.loss,
            test_acc: e.accuracy,
            teacher_acc,
            seconds: seconds_before + started.elapsed().as_secs_f64(),
        };
        println!(
            "epoch {}/{}  loss {:.4}  train acc {:.1}%  test acc {:.1}%{}  {:.1} s",
            m.epoch,
            m.epochs,
            m.train_loss,
            100.0 * m.train_acc,
            100.0 * m.test_acc,
            teacher_acc
                .map(|a| format!("  (teacher {:.1}%)", 100.0 * a))
                .unwrap_or_default(),
            m.seconds
        );
        run.metrics.write(&m)?;
        run.metrics.scalars(&m, run.history.len() + 1)?;
        run.history.push(m);

        if step.is_student() && best.is_none_or(|b| e.accuracy > b) {
            best = Some(e.accuracy);
            best_epoch = Some(epoch + 1);
            let info = run.sidecar_info(step, model.architecture(), epoch + 1);
            // The packed export holds the same student as the best checkpoint: both are written
            // (each atomically) whenever the best changes.
            if let Some(specs) = method.pack_specs() {
                save_packed(&packed_path, store, &specs, info.clone())?;
            }
            match method.deployable(store)? {
                Some(q) => checkpoint::save(&run.best_path, &q, info)?,
                None => checkpoint::save(&run.best_path, store, info)?,
            }
        }
        let last = epoch + 1 == stage.epochs;
        if last || (epoch + 1) % cfg.params.save_every == 0 {
            let resume = ResumeState {
                step: index,
                epochs_done: epoch + 1,
                architecture: step.architecture.clone(),
                shuffle_rng: rng.state(),
                schedule: schedule.clone(),
                best_acc: best,
                best_epoch,
                dq: method.dq_state(),
                partial: None,
                model_rng_calls: model.rng_calls(),
            };
            let at = format!("epoch {}/{} of stage `{name}`", epoch + 1, stage.epochs);
            commit_state(run, step, model, store, &opt, resume, epoch + 1, &at)?;
        }
    }
    if let Some(path) = &step.save_to {
        let info = run.sidecar_info(step, model.architecture(), stage.epochs);
        checkpoint::save(path, store, info)?;
        println!("saved {} to {}", model.architecture(), path.display());
    }
    // Frozen parts (LIT) stay frozen only within their stage.
    lit::unfreeze_all(store)?;
    let quantized = match method.quantized_bits() {
        None => None,
        Some((bits, bucket, tables)) => {
            let mut size = qd::packed_size(store, &bits, bucket, tables);
            println!(
                "quantized student: {} bytes packed (full precision {} bytes, {:.1}x smaller)",
                size.packed_bytes,
                size.full_precision_bytes,
                size.full_precision_bytes as f64 / size.packed_bytes.max(1) as f64
            );
            if let (Some(_), Some(epoch)) = (method.pack_specs(), best_epoch) {
                let file_bytes = std::fs::metadata(&packed_path)
                    .map_err(|e| Error::io(&packed_path, e))?
                    .len();
                size.file = Some((packed_path.clone(), file_bytes));
                println!(
                    "packed export: {} ({file_bytes} bytes on disk), the student of the best \
                     epoch {} of {} (test acc {:.2}%), as in {}",
                    packed_path.display(),
                    epoch,
                    stage.epochs,
                    100.0 * best.unwrap_or(0.0),
                    run.best_path.display()
                );
            }
            Some((bits, size))
        }
    };
    Ok(StepResult { best, quantized })
}

/// Evaluate `checkpoint` with the config's student architecture on the test split.
pub fn run_evaluation(
    cfg: &Config,
    checkpoint_path: &Path,
    device: &Device,
    data_root: &Path,
) -> Result<Evaluation> {
    evaluate_checkpoint(cfg, checkpoint_path, device, data_root).map_err(|e| cfg.locate(e))
}

fn evaluate_checkpoint(
    cfg: &Config,
    checkpoint_path: &Path,
    device: &Device,
    data_root: &Path,
) -> Result<Evaluation> {
    let kind = check_runnable(cfg)?;
    let test = truncate(
        data::load(data_root, kind, Split::Test)?,
        cfg.hyperparameters.max_test_examples,
    );
    let Built { model, mut store } = build_model(cfg, kind, test.example_len(), device)?;
    let path = resolve_weights(checkpoint_path, "checkpoint")?;
    checkpoint::load_into(&path, &mut store)?;
    check_finite(&store).map_err(|name| {
        Error::Numeric(format!(
            "{}: parameter `{name}` holds non-finite values",
            path.display()
        ))
    })?;
    let h = &cfg.hyperparameters;
    let e = evaluate(
        model.as_ref(),
        &mut store,
        &test,
        h.batch_size,
        h.max_eval_batches,
        device,
    )?;
    if !e.loss.is_finite() {
        return Err(Error::Numeric(format!(
            "{}: the test loss is {} (the model's outputs are not finite)",
            path.display(),
            e.loss
        )));
    }
    Ok(e)
}

/// The state_dict entries of a store that are parameters (for reports).
pub fn parameter_count(store: &ParamStore) -> usize {
    store
        .iter()
        .filter(|(_, p)| p.kind == EntryKind::Param)
        .map(|(_, p)| p.value.numel())
        .sum()
}
