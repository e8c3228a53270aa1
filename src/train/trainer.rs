//! The training loop of the `train` stage (supervised training, from scratch or from
//! `models.training_checkpoint`): per step a fresh [`Graph`], forward, cross-entropy, backward,
//! gradients into the store, one SGD step; a multistep LR schedule; evaluation on the test split
//! after every epoch; a progress bar, one summary line per epoch, `metrics.jsonl`, checkpoints.

use crate::autograd::Graph;
use crate::config::{Config, Stage};
use crate::data::{self, Dataset, DatasetKind, Loader, Split};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::models::{self, Model};
use crate::nn::ParamStore;
use crate::ops::loss::{accuracy, cross_entropy, Reduction};
use crate::rng::Rng;
use crate::train::checkpoint;
use crate::train::optim::Sgd;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Stages this build can run.
pub const RUNNABLE_STAGES: &[&str] = &["train"];

#[derive(Clone, Debug, Serialize)]
pub struct EpochMetrics {
    pub stage: String,
    pub epoch: usize,
    pub epochs: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub seconds: f64,
}

pub struct RunSummary {
    pub epochs: Vec<EpochMetrics>,
    pub checkpoint: PathBuf,
    pub metrics_file: PathBuf,
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

/// Check what this build can run before any data is read: the stages, the data set, the model.
pub fn check_runnable(cfg: &Config) -> Result<DatasetKind> {
    for (name, _) in cfg.sequence.stages() {
        if !RUNNABLE_STAGES.contains(&name) {
            return Err(Error::Config(format!(
                "sequence.{name}: the `{name}` stage is not implemented yet; this build runs: {}",
                RUNNABLE_STAGES.join(", ")
            )));
        }
    }
    DatasetKind::from_name(&cfg.models.dataset)
        .map_err(|e| Error::Config(format!("models.dataset: {}", strip_config_prefix(e))))
}

fn strip_config_prefix(e: Error) -> String {
    match e {
        Error::Config(m) => m,
        other => other.to_string(),
    }
}

/// Build `models.training_architecture` (seeded by `hyperparameters.seed`) and check it fits the data.
pub fn build_model(
    cfg: &Config,
    kind: DatasetKind,
    features: usize,
    device: &Device,
) -> Result<Built> {
    let mut store = ParamStore::new();
    let mut rng = Rng::new(cfg.hyperparameters.seed);
    let model = models::build(
        &cfg.models.training_architecture,
        kind.num_classes(),
        &mut store,
        device,
        &mut rng,
    )
    .map_err(|e| {
        Error::Config(format!(
            "models.training_architecture: {}",
            strip_config_prefix(e)
        ))
    })?;
    if model.input_features() != features || model.num_classes() != kind.num_classes() {
        return Err(Error::Config(format!(
            "models.training_architecture: `{}` takes {} features and predicts {} classes, \
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
        let mut g = Graph::no_grad(device);
        let input = x.input(&mut g);
        let logits = model.forward(&mut g, store, input, false)?;
        let loss = cross_entropy(&mut g, logits, &y, Reduction::Sum)?;
        loss_sum += g.value(loss).item()? as f64;
        correct += accuracy(g.value(logits), &y)?;
        seen += x.len();
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

/// `metrics.jsonl`: one JSON object per line. The file is replaced when the first epoch of a run
/// ends, so a run that fails before that leaves the previous run's log alone.
struct MetricsLog {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl MetricsLog {
    fn new(dir: &Path) -> Self {
        MetricsLog {
            path: dir.join("metrics.jsonl"),
            file: None,
        }
    }
    fn write(&mut self, m: &EpochMetrics) -> Result<()> {
        let line = serde_json::to_string(m).map_err(|e| Error::Other(format!("metrics: {e}")))?;
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            self.file =
                Some(std::fs::File::create(&self.path).map_err(|e| Error::io(&self.path, e))?);
        }
        let file = self.file.as_mut().expect("opened above");
        writeln!(file, "{line}")
            .and_then(|_| file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Run every stage of `cfg` (for now: `train`) on `device`, reading data from `data_root`.
pub fn run(cfg: &Config, device: &Device, data_root: &Path) -> Result<RunSummary> {
    let kind = check_runnable(cfg)?;
    let stage = cfg.sequence.train.as_ref().ok_or_else(|| {
        Error::Config("sequence: no `train` stage (e.g. `train: {epochs: 5, lr: 0.1}`)".into())
    })?;
    let train = data::load(data_root, kind, Split::Train)?;
    let test = data::load(data_root, kind, Split::Test)?;
    let Built { model, mut store } = build_model(cfg, kind, train.example_len(), device)?;
    if let Some(ckpt) = &cfg.models.training_checkpoint {
        checkpoint::load_into(ckpt, &mut store)?;
    }
    println!(
        "training {} ({} parameters) on {}: {} train / {} test examples, device {}",
        model.architecture(),
        store.num_parameters(),
        kind.name(),
        train.len(),
        test.len(),
        device.name()
    );
    train_stage(
        cfg,
        "train",
        stage,
        model.as_ref(),
        &mut store,
        &train,
        &test,
        device,
    )
}

/// Evaluate `models.training_checkpoint` (or `checkpoint`) on the test split.
pub fn run_evaluation(
    cfg: &Config,
    checkpoint_path: &Path,
    device: &Device,
    data_root: &Path,
) -> Result<Evaluation> {
    let kind = DatasetKind::from_name(&cfg.models.dataset)
        .map_err(|e| Error::Config(format!("models.dataset: {}", strip_config_prefix(e))))?;
    let test = data::load(data_root, kind, Split::Test)?;
    let Built { model, mut store } = build_model(cfg, kind, test.example_len(), device)?;
    checkpoint::load_into(checkpoint_path, &mut store)?;
    let h = &cfg.hyperparameters;
    evaluate(
        model.as_ref(),
        &mut store,
        &test,
        h.batch_size,
        h.max_eval_batches,
        device,
    )
}

#[allow(clippy::too_many_arguments)]
fn train_stage(
    cfg: &Config,
    stage_name: &str,
    stage: &Stage,
    model: &dyn Model,
    store: &mut ParamStore,
    train: &Dataset,
    test: &Dataset,
    device: &Device,
) -> Result<RunSummary> {
    let h = &cfg.hyperparameters;
    let ckpt_path = cfg.params.checkpoint_path();
    let mut metrics_log = MetricsLog::new(cfg.params.metrics_dir());
    let mut opt = Sgd::new(
        stage.lr as f32,
        h.momentum as f32,
        h.weight_decay as f32,
        h.nesterov,
    )?;
    // Shuffling has its own stream so that changing the model does not change the data order.
    let mut shuffle_rng = Rng::new(h.seed ^ 0x5eed_da7a);
    let mut history = Vec::new();

    for epoch in 0..stage.epochs {
        let started = Instant::now();
        let lr = stage.lr_at(epoch);
        opt.set_lr(lr as f32);
        let loader = Loader::shuffled(train, h.batch_size, &mut shuffle_rng, device)?
            .input_shape(&model.input_shape())?
            .limit(h.max_train_batches);
        let pb = progress_bar(
            loader.num_batches(),
            format!("epoch {}/{}", epoch + 1, stage.epochs),
        );
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for (step, batch) in loader.enumerate() {
            let (x, y) = batch?;
            let mut g = Graph::new(device);
            let input = x.input(&mut g);
            let logits = model.forward(&mut g, store, input, true)?;
            let loss = cross_entropy(&mut g, logits, &y, Reduction::Mean)?;
            let loss_value = g.value(loss).item()?;
            if !loss_value.is_finite() {
                pb.abandon();
                let kept = if history.is_empty() {
                    "no checkpoint was written yet".to_string()
                } else {
                    format!("the last good checkpoint is {}", ckpt_path.display())
                };
                return Err(Error::Numeric(format!(
                    "loss became {loss_value} at epoch {} batch {} (lr {lr}); stopped, {kept}; \
                     try a smaller sequence.{stage_name}.lr",
                    epoch + 1,
                    step + 1
                )));
            }
            correct += accuracy(g.value(logits), &y)?;
            g.backward(loss)?;
            g.accumulate_param_grads(store)?;
            opt.step(store)?;
            store.zero_grads();

            loss_sum += loss_value as f64 * x.len() as f64;
            seen += x.len();
            pb.inc(1);
            if step % 10 == 0 {
                pb.set_message(format!("loss {:.4}", loss_sum / seen as f64));
            }
        }
        pb.finish_and_clear();
        let eval = evaluate(model, store, test, h.batch_size, h.max_eval_batches, device)?;
        let m = EpochMetrics {
            stage: stage_name.to_string(),
            epoch: epoch + 1,
            epochs: stage.epochs,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_loss: eval.loss,
            test_acc: eval.accuracy,
            seconds: started.elapsed().as_secs_f64(),
        };
        println!(
            "epoch {}/{}  loss {:.4}  train acc {:.1}%  test acc {:.1}%  {:.1} s",
            m.epoch,
            m.epochs,
            m.train_loss,
            100.0 * m.train_acc,
            100.0 * m.test_acc,
            m.seconds
        );
        metrics_log.write(&m)?;
        let last = epoch + 1 == stage.epochs;
        history.push(m);
        if last || (epoch + 1) % cfg.params.save_every == 0 {
            let info = serde_json::json!({
                "lit_engine_version": env!("CARGO_PKG_VERSION"),
                "architecture": model.architecture(),
                "dataset": cfg.models.dataset,
                "stage": stage_name,
                "epoch": epoch + 1,
                "seed": h.seed,
                "device": device.name(),
                "metrics": history.last(),
                "config": cfg,
            });
            checkpoint::save(&ckpt_path, store, info)?;
        }
    }
    Ok(RunSummary {
        epochs: history,
        checkpoint: ckpt_path,
        metrics_file: metrics_log.path,
    })
}
