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
//!
//! From Rust, [`Trainer`] runs a config as `lit-engine train` does; [`run`] and [`run_with`]
//! are the same entry point for a config and device already at hand.
//!
//! The parts: [`plan`](super::plan) orders the steps, [`setup`](super::setup) checks the
//! config and builds data and models, `epochs` runs one step (teacher loading in `teacher`,
//! the method from `distill::method`), `checkpointer` owns every model file the run writes,
//! `ptq` is the post-training quantization baseline and [`summary`](super::summary) the result.

use super::checkpointer::Checkpointer;
use super::context::RunContext;
use super::epochs::run_step;
use super::guards::guard_outputs;
use super::metrics_log::MetricsLog;
use super::ptq::post_training_quantization;
use super::resume::{read_resumed, Resumed};
use super::run_state::RunLock;
use super::summary::build_report;
use crate::checkpoint;
use crate::config::Config;
use crate::data;
use crate::device::Device;
use crate::distill::qd::SizeReport;
use crate::durable::{remove_stray_temp_files, Stray};
use crate::error::{Error, Result};
use crate::precision::Precision;
use std::path::{Path, PathBuf};

pub use super::evaluate::{evaluate, parameter_count, run_evaluation, Evaluation};
pub use super::metrics_log::EpochMetrics;
pub use super::plan::{plan, teacher_output_path, PlanStep};
pub use super::ptq::PtqResult;
pub use super::setup::{
    build_arch, build_model, check_runnable, load_data, resolve_weights, Built, Splits,
};
pub use super::summary::RunSummary;

/// Run options beyond the config.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Continue from the committed run state instead of starting over.
    pub resume: bool,
    /// Resume even when the config changed in keys that make it another experiment.
    pub allow_config_change: bool,
}

/// Run every stage of `cfg` on `device`, reading data from `data_root`.
pub fn run(cfg: &Config, device: &Device, data_root: &Path) -> Result<RunSummary> {
    run_with(cfg, device, data_root, RunOptions::default())
}

/// [`run`] with options. Config errors found while running (a missing weights file, a model
/// that does not fit the data, …) name the config file and the line of the key.
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
    check_pretrained_teacher(cfg, &steps)?;
    guard_outputs(cfg, &steps)?;
    // Held until the run returns: a second run on this folder is refused.
    let _lock = RunLock::acquire(&cfg.params.save_directory)?;
    remove_stray_files(cfg);
    let checkpoints = Checkpointer::open(&cfg.params);
    // Everything --resume needs is read and checked before the data (which can take minutes).
    let resumed = match opts.resume {
        true => Some(read_resumed(
            cfg,
            checkpoints.state(),
            &steps,
            opts.allow_config_change,
        )?),
        false => None,
    };
    let data = load_data(cfg, kind, data_root)?.place_on(device)?;
    if data.train.is_empty() {
        return Err(Error::Config(format!(
            "models.dataset: the training split of {} is empty",
            kind.name()
        )));
    }
    let mut run = RunContext {
        cfg,
        device,
        precision: cfg.precision()?,
        data,
        metrics: MetricsLog::new(cfg.params.metrics_dir()),
        history: Vec::new(),
        checkpoints,
        teachers: Vec::new(),
    };
    start_metrics(&mut run, resumed.as_ref(), &steps)?;
    println!(
        "{} on {}: {} train / {} test examples, device {}{}",
        cfg.student_architecture()?,
        kind.name(),
        run.data.train.len(),
        run.data.test.len(),
        device.name(),
        match run.precision {
            Precision::Fp32 => String::new(),
            p => format!(", precision {p}"),
        }
    );

    let trained = run_steps(&mut run, &steps, resumed.as_ref())?;
    let (student, ptq) = match &cfg.sequence.post_training_quantization {
        Some(p) => {
            let (b, ptq) = post_training_quantization(&mut run, p, trained.student)?;
            (Some(b), ptq)
        }
        None => (trained.student, Vec::new()),
    };

    let any_student = steps.iter().any(PlanStep::is_student);
    let report = build_report(&run, &steps, student.as_ref(), &trained.quantized, &ptq);
    let (best_path, last_path) = run.checkpoints.into_outputs();
    Ok(RunSummary {
        epochs: run.history,
        checkpoint: any_student.then_some(best_path),
        last_checkpoint: last_path,
        metrics_file: run.metrics.path,
        best_test_acc: trained.best,
        ptq,
        quantized_size: trained.quantized,
        student_parameters: student.map_or(0, |b| b.store.num_parameters()),
        report,
    })
}

/// A pre-trained teacher must exist before the data are loaded (which can take minutes).
fn check_pretrained_teacher(cfg: &Config, steps: &[PlanStep]) -> Result<()> {
    if let (None, Some(path)) = (&cfg.sequence.teacher, &cfg.models.base_model_path) {
        if steps
            .iter()
            .any(|s| s.teacher.as_ref().is_some_and(|(_, t)| t == path))
        {
            resolve_weights(path, "models.base_model_path")?;
        }
    }
    Ok(())
}

/// Temp files of runs that died mid-write. The log folder may be shared with other runs: only
/// files of dead processes go there.
fn remove_stray_files(cfg: &Config) {
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
}

/// The metrics history and event file: continued from the run state when resuming, else
/// started afresh (when any step trains).
fn start_metrics(
    run: &mut RunContext,
    resumed: Option<&Resumed>,
    steps: &[PlanStep],
) -> Result<()> {
    if let Some(r) = resumed {
        run.history = r.history.clone();
        run.metrics.resume(&r.history, r.events_file.as_deref())?;
        // Repair the user-facing copies in case a kill came between commit and publish.
        run.checkpoints.resume_from(r, r.describe(steps))?;
        println!("resuming from {}", r.describe(steps));
        if let Some(name) = run.metrics.events_file_name() {
            run.checkpoints.state().record_events_file(&name)?;
        }
    } else if steps.iter().any(|s| s.epochs() > 0) {
        let state = run.checkpoints.state();
        let previous = state.events_file();
        run.metrics
            .start_fresh(previous.as_deref(), |name| state.record_events_file(name))?;
    }
    Ok(())
}

/// What the plan's steps leave: the student and its last stage's results.
struct Trained {
    student: Option<Built>,
    best: Option<f64>,
    quantized: Option<(Vec<(String, u32)>, SizeReport)>,
}

/// Run the plan's steps in order (skipping those a resumed state has finished).
fn run_steps(
    run: &mut RunContext,
    steps: &[PlanStep],
    resumed: Option<&Resumed>,
) -> Result<Trained> {
    let mut trained = Trained {
        student: None,
        best: None,
        quantized: None,
    };
    for (i, step) in steps.iter().enumerate() {
        if resumed.is_some_and(|r| r.state.step > i) {
            continue;
        }
        let resuming_here = resumed.filter(|r| r.state.step == i);
        let mut built = model_for_step(run, i, step, &mut trained.student, resuming_here)?;
        let outcome = run_step(run, i, step, &mut built, resuming_here)?;
        if step.is_student() {
            trained.best = outcome.best;
            trained.quantized = outcome.quantized;
            trained.student = Some(built);
        }
    }
    Ok(trained)
}

/// The model step `i` trains: the student (carried over from its previous step, else built and
/// loaded from `models.training_checkpoint`), or a freshly built teacher or assistant; with
/// the run state's weights when resuming inside this step.
fn model_for_step(
    run: &RunContext,
    i: usize,
    step: &PlanStep,
    student: &mut Option<Built>,
    resuming_here: Option<&Resumed>,
) -> Result<Built> {
    let (cfg, kind, device) = (run.cfg, run.data.kind, run.device);
    let features = run.data.train.example_len();
    let mut built = if !step.is_student() {
        build_arch(
            &step.architecture,
            &format!("sequence.{}", step.kind.name()),
            kind,
            features,
            cfg.hyperparameters.seed.wrapping_add(1 + i as u64),
            device,
        )?
    } else if let Some(b) = student.take() {
        b
    } else {
        let mut b = build_model(cfg, kind, features, device)?;
        if resuming_here.is_none() {
            if let Some(ckpt) = &cfg.models.training_checkpoint {
                let p = resolve_weights(ckpt, "models.training_checkpoint")?;
                checkpoint::load_into(&p, &mut b.store)?;
            }
        }
        b
    };
    if let Some(r) = resuming_here {
        checkpoint::load_into(&r.weights, &mut built.store)?;
        built.model.set_rng_calls(r.state.model_rng_calls);
    }
    Ok(built)
}

/// A training run from Rust: a config, the device and the data folder, then [`Trainer::run`]
/// (what `lit-engine train` does, without its printing of the summary).
///
/// ```no_run
/// use lit_engine::train::Trainer;
///
/// let summary = Trainer::load("configs/quickstart.yml")?
///     .data_root("data")
///     .run()?;
/// println!("best test accuracy: {:?}", summary.best_test_acc);
/// print!("{}", summary.report.render());
/// # Ok::<(), lit_engine::Error>(())
/// ```
pub struct Trainer {
    config: Config,
    device: Option<Device>,
    data_root: Option<PathBuf>,
    options: RunOptions,
}

impl Trainer {
    /// A run of `config` (already validated, e.g. by `Config::load`).
    pub fn new(config: Config) -> Trainer {
        Trainer {
            config,
            device: None,
            data_root: None,
            options: RunOptions::default(),
        }
    }

    /// A run of the YAML config file at `path`, validated as `lit-engine train` validates it
    /// (errors name the file, line and key).
    pub fn load(path: impl AsRef<Path>) -> Result<Trainer> {
        Ok(Trainer::new(Config::load(path.as_ref())?))
    }

    /// A run of a config given as YAML text; `origin` names it in error messages (e.g. the
    /// program or file it came from).
    pub fn parse(yaml: &str, origin: &str) -> Result<Trainer> {
        let config = Config::parse(yaml, origin)?;
        config.validate().map_err(|e| config.locate(e))?;
        Ok(Trainer::new(config))
    }

    /// Train on `device` (default: `LIT_DEVICE`, else the config's `device`, else a GPU when
    /// there is one).
    pub fn device(mut self, device: Device) -> Trainer {
        self.device = Some(device);
        self
    }

    /// Read the data sets from `root` (default: `LIT_DATA_DIR`, else `./data`).
    pub fn data_root(mut self, root: impl Into<PathBuf>) -> Trainer {
        self.data_root = Some(root.into());
        self
    }

    /// Continue from the committed run state instead of starting over (`--resume`).
    pub fn resume(mut self, resume: bool) -> Trainer {
        self.options.resume = resume;
        self
    }

    /// Resume even when the config changed in keys that make it another experiment
    /// (`--allow-config-change`).
    pub fn allow_config_change(mut self, allow: bool) -> Trainer {
        self.options.allow_config_change = allow;
        self
    }

    /// The config this run trains.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Run every stage; see the module documentation for what is written where.
    pub fn run(&self) -> Result<RunSummary> {
        let cfg = &self.config;
        check_runnable(cfg)?;
        let device = match &self.device {
            Some(d) => d.clone(),
            None if std::env::var_os("LIT_DEVICE").is_some() => Device::select(None)?,
            None => Device::select(cfg.device_request()?)?,
        };
        let root = data::data_root(self.data_root.as_deref());
        run_with(cfg, &device, &root, self.options)
    }
}
