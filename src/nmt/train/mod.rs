//! `lit-engine train` for translation configs: the stages `teacher`, `train`, `word_kd`,
//! `seq_kd` (plain NLL on the teacher's translations of the training source, [`seq_kd_data`]),
//! `quantized_distillation` (word KD at quantized weights, then every weight quantized, §3.5)
//! and `post_training_quantization` (the student quantized once) in order, each trained epoch
//! by epoch with the seed's batches (§1.5), validated by plain-NLL perplexity in eval mode
//! (§3.2), its rate set by the halving rule or Noam (§3.4, §6.2), and tested at its end by
//! perplexity and BLEU ([`bleu_eval`]).
//!
//! In `params.save_directory`: `vocab.src.json` / `vocab.tgt.json` (built on the filtered
//! training split, checked on resume), one checkpoint per stage with the seed's state-dict
//! names (PyTorch loads it) with its test hypotheses `<stem>.test-hyp.<tgt>` beside it,
//! `metrics.jsonl` (one line per epoch and one `test` line per stage: perplexity, BLEU, sizes),
//! and the run state `run-last.state/` committed as one unit at every epoch end (weights,
//! optimizer state, and in the sidecar the position, generators, schedule and metric history;
//! see [`crate::train::run_state`]). `--resume` continues from it bit for bit.

pub mod bleu_eval;
pub mod corpus;
pub mod epoch;
pub mod models;
pub mod optimizer;
pub mod seq_kd_data;
pub mod translate;

use crate::checkpoint;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nmt::config::{ModelSpec, StageKind, TranslationConfig};
use crate::nmt::quantize::{quantize_all, QdBatchQuantizer, TranslationQuantization};
use crate::nmt::step::StepConfig;
use crate::nmt::vocab::PAD_ID;
use crate::ops::token_loss::TokenLoss;
use crate::rng::Rng;
use crate::train::run_state::{load_optimizer, RunLock, RunState, Snapshot};
use corpus::Prepared;
pub use epoch::Model;
use epoch::{evaluate, train_epoch, StepSetup};
pub use models::build_model_sized;
use optimizer::{ScheduleState, StageOptimizer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How a run starts and (tests) stops.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue from the committed run state.
    pub resume: bool,
    /// Stop (as a kill would, after the commit) once this many epochs were trained by this
    /// call: lets tests compare a stopped-and-resumed run with an uninterrupted one.
    pub stop_after_epochs: Option<usize>,
}

/// What a finished stage produced.
#[derive(Clone, Debug)]
pub struct StageResult {
    /// Which stage.
    pub kind: StageKind,
    /// Its checkpoint.
    pub checkpoint: PathBuf,
    /// The last epoch's validation perplexity.
    pub valid_ppl: Option<f64>,
    /// The test perplexity of the final weights.
    pub test_ppl: f64,
    /// The test BLEU of the saved model (unless the stage says `bleu: false`).
    pub test_bleu: Option<bleu_eval::TestBleu>,
    /// Quantization stages: the saved model's packed bytes and f32 bytes.
    pub size: Option<(usize, usize)>,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// The finished stages of this call, in order.
    pub stages: Vec<StageResult>,
    /// `metrics.jsonl`.
    pub metrics_file: PathBuf,
    /// Whether [`RunOptions::stop_after_epochs`] stopped the run.
    pub stopped: bool,
}

/// Where a run is, stored in the committed sidecar under `nmt`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Position {
    /// Index into [`TranslationConfig::stages`].
    stage: usize,
    /// Its name (checked on resume).
    stage_name: String,
    /// Complete epochs of the stage.
    epochs_done: usize,
    /// Training batches of the stage so far (quantized distillation's batch counter, B9).
    #[serde(default)]
    stage_batches: u64,
    /// The batch-order generator after the last complete epoch.
    shuffle_rng: [u64; 2],
    /// The dropout generator after the last complete epoch.
    dropout_rng: [u64; 2],
    /// The learning-rate schedule.
    schedule: ScheduleState,
    /// The last epoch's validation perplexity.
    valid_ppl: Option<f64>,
    /// Every `metrics.jsonl` line so far.
    history: Vec<Value>,
    /// The config without the epoch counts: a resumed run must be the same experiment.
    experiment: Value,
}

/// The generator of `purpose` for stage `stage` of a run seeded `seed`.
fn stage_rng(seed: u64, stage: usize, purpose: u64) -> Rng {
    let mix = (stage as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ purpose.rotate_left(29);
    Rng::new(seed ^ mix)
}
const INIT: u64 = 1;
const SHUFFLE: u64 = 2;
const DROPOUT: u64 = 3;

/// `cfg` as JSON without what a resumed run may change (epochs, device).
fn experiment(cfg: &TranslationConfig) -> Result<Value> {
    let mut v = serde_json::to_value(cfg).map_err(|e| Error::Encode(e.to_string()))?;
    if let Some(seq) = v["sequence"].as_object_mut() {
        for st in seq.values_mut().filter_map(Value::as_object_mut) {
            st.remove("epochs");
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("device");
    }
    Ok(v)
}

/// The key paths where `a` and `b` differ.
fn differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                differences(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &path,
                    out,
                );
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

/// A fresh model of `spec` over the run's vocabularies, initialised from `rng`.
fn build_model(
    spec: &ModelSpec,
    data: &Prepared,
    dropout: f32,
    dev: &Device,
    rng: &mut Rng,
) -> Result<Model> {
    let vocabs = (data.src_vocab.len(), data.tgt_vocab.len());
    build_model_sized(spec, vocabs, dropout, dev, rng)
}

/// `metrics.jsonl`: rewritten from the committed history on resume, appended line by line.
struct MetricsFile {
    path: PathBuf,
}

impl MetricsFile {
    fn reset(&self, history: &[Value]) -> Result<()> {
        let text: String = history.iter().map(|l| format!("{l}\n")).collect();
        crate::durable::write_atomic(&self.path, text.as_bytes())
    }

    fn append(&self, line: &Value) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        writeln!(f, "{line}")
            .and_then(|_| f.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// The teacher of `word_kd`, read from the teacher checkpoint, whose vocabularies must be ours.
fn load_teacher(cfg: &TranslationConfig, data: &Prepared, dev: &Device) -> Result<Model> {
    let path = cfg.teacher_checkpoint();
    if !path.is_file() {
        return Err(Error::Config(format!(
            "models.teacher_checkpoint: {} not found (run a `teacher` stage first, or point \
             models.teacher_checkpoint at a trained teacher)",
            path.display()
        )));
    }
    let spec = cfg
        .models
        .teacher
        .as_ref()
        .ok_or_else(|| Error::Config("sequence.word_kd needs `models.teacher`".into()))?;
    let mut teacher = build_model(spec, data, 0.0, dev, &mut Rng::new(0))?;
    load_weights(&path, "teacher", data, &mut teacher)?;
    Ok(teacher)
}

/// Load `path` (a `what` checkpoint whose vocabularies must be ours) into `model`.
fn load_weights(path: &Path, what: &str, data: &Prepared, model: &mut Model) -> Result<()> {
    let what = format!("{what} checkpoint {}", path.display());
    data.check_vocabs(path.parent().unwrap_or(Path::new(".")), &what)?;
    checkpoint::load_into(path, &mut model.store)
}

/// Run the stages of `cfg` on `dev`, reading the corpus under `data_root`.
pub fn run(
    cfg: &TranslationConfig,
    dev: &Device,
    data_root: &Path,
    opts: RunOptions,
) -> Result<RunSummary> {
    let dir = cfg.params.save_directory.clone();
    let _lock = RunLock::acquire(&dir)?;
    let data = corpus::prepare(cfg, data_root)?;
    let mut state = RunState::open(&dir.join("run-last.safetensors"));
    state.remove_other_generations();
    let metrics = MetricsFile {
        path: dir.join("metrics.jsonl"),
    };
    let fingerprint = experiment(cfg)?;
    let mut resumed = None;
    if opts.resume {
        let committed = state.load()?;
        let pos: Position = serde_json::from_value(committed.sidecar["nmt"].clone())
            .map_err(|e| Error::Checkpoint(format!("run state: no translation position ({e})")))?;
        let mut changed = Vec::new();
        differences(&pos.experiment, &fingerprint, "", &mut changed);
        if !changed.is_empty() {
            return Err(Error::Config(format!(
                "--resume: the config differs from the run's at {} (only epochs and the device \
                 may change); start a new run in another save_directory",
                changed.join(", ")
            )));
        }
        data.check_vocabs(&dir, "the run state")?;
        metrics.reset(&pos.history)?;
        resumed = Some((pos, committed));
    } else {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        data.save_vocabs(&dir)?;
        metrics.reset(&[])?;
    }
    let seed = cfg.hyperparameters.seed;
    let mut history = resumed
        .as_ref()
        .map_or_else(Vec::new, |(p, _)| p.history.clone());
    let first = resumed.as_ref().map_or(0, |(p, _)| p.stage);
    let mut summary = RunSummary {
        stages: Vec::new(),
        metrics_file: metrics.path.clone(),
        stopped: false,
    };
    let mut epochs_run = 0usize;
    for (index, (kind, stage)) in cfg.stages().into_iter().enumerate().skip(first) {
        let spec = cfg
            .model_of(kind)
            .ok_or_else(|| Error::Config(format!("sequence.{} has no model", kind.name())))?;
        let mut model = build_model(
            spec,
            &data,
            cfg.hyperparameters.dropout,
            dev,
            &mut stage_rng(seed, index, INIT),
        )?;
        let mut opt = StageOptimizer::new(stage, model.net.model_size())?;
        let mut shuffle_rng = stage_rng(seed, index, SHUFFLE);
        let mut dropout_rng = stage_rng(seed, index, DROPOUT);
        let mut done = 0;
        let mut stage_batches = 0u64;
        let mut valid_ppl = None;
        if kind == StageKind::PostTrainingQuantization {
            let source = cfg.ptq_source();
            if !source.is_file() {
                return Err(Error::Config(format!(
                    "sequence.post_training_quantization: the student {} is not there (train \
                     it first, or set the stage's `checkpoint`)",
                    source.display()
                )));
            }
            load_weights(&source, "student", &data, &mut model)?;
        }
        if let Some((pos, committed)) = resumed.take() {
            if pos.stage_name != kind.name() {
                return Err(Error::Checkpoint(format!(
                    "run state: stage {} is `{}` in the state but `{}` in the config",
                    pos.stage,
                    pos.stage_name,
                    kind.name()
                )));
            }
            checkpoint::load_into(&committed.weights, &mut model.store)?;
            load_optimizer(
                &committed.optimizer,
                opt.checkpoint_mut(),
                &model.store,
                dev,
            )?;
            opt.restore_schedule(pos.schedule)?;
            shuffle_rng = Rng::from_state(pos.shuffle_rng);
            dropout_rng = Rng::from_state(pos.dropout_rng);
            done = pos.epochs_done;
            stage_batches = pos.stage_batches;
            valid_ppl = pos.valid_ppl;
            eprintln!(
                "resuming `{}` after epoch {done} (run state generation {})",
                kind.name(),
                committed.generation
            );
        }
        let seq_kd_set = match kind == StageKind::SeqKd && done < stage.epochs {
            true => Some(seq_kd_data::seq_kd_train_set(
                cfg,
                &data,
                stage,
                dev,
                &crate::train::interrupt::requested,
            )?),
            false => None,
        };
        if let Some(set) = &seq_kd_set {
            println!(
                "seq_kd: {} training pairs from the teacher's translations of {} sentences \
                 ({} empty or too long, dropped){}; {}",
                set.train.len(),
                set.translated,
                set.dropped,
                if set.reused { ", reused" } else { "" },
                set.outputs.display()
            );
        }
        let train_set = seq_kd_set.as_ref().map_or(&data.train, |s| &s.train);
        let mut teacher = match kind.distills() && done < stage.epochs {
            true => Some(load_teacher(cfg, &data, dev)?),
            false => None,
        };
        let quantizer = match (kind, stage.bits) {
            (StageKind::QuantizedDistillation, Some(bits)) => {
                let mut q = TranslationQuantization::new(bits, Some(stage.bucket_size))?;
                q.quantize_first_and_last_layer = stage.quantize_first_and_last_layer;
                Some(QdBatchQuantizer::resume(&model.store, &q, stage_batches)?)
            }
            _ => None,
        };
        let mut setup = StepSetup {
            step: StepConfig {
                loss: match kind.distills() {
                    true => TokenLoss::word_kd(PAD_ID),
                    false => TokenLoss::nll(PAD_ID),
                },
                max_grad_norm: (stage.max_grad_norm > 0.0).then_some(stage.max_grad_norm),
                detail: false,
            },
            teacher: teacher.as_mut(),
            quantizer,
        };
        for epoch in done + 1..=stage.epochs {
            if opts.stop_after_epochs.is_some_and(|n| epochs_run >= n) {
                summary.stopped = true;
                return Ok(summary);
            }
            let started = std::time::Instant::now();
            let lr = opt.lr();
            let train = train_epoch(
                &mut model,
                train_set,
                stage.train_batch(),
                &mut setup,
                &mut opt,
                &mut shuffle_rng,
                &mut dropout_rng,
                dev,
                &crate::train::interrupt::requested,
            )
            .map_err(|e| interrupted(e, &state, kind, epoch))?;
            stage_batches += train.batches as u64;
            let valid = evaluate(&mut model, &data.valid, stage.eval_batch(), dev)?;
            let ppl = valid.ppl()?;
            opt.end_epoch(epoch, ppl);
            valid_ppl = Some(ppl);
            let line = json!({
                "stage": kind.name(),
                "epoch": epoch,
                "epochs": stage.epochs,
                "lr": lr,
                "steps": train.batches,
                "train_loss": train.loss / train.tokens.max(1) as f64,
                "train_ppl": train.ppl()?,
                "train_acc": train.correct as f64 / train.tokens.max(1) as f64,
                "valid_nll": valid.nll / valid.tokens.max(1) as f64,
                "valid_ppl": ppl,
                "seconds": started.elapsed().as_secs_f64(),
            });
            println!(
                "{} epoch {epoch}/{}: lr {lr:.6} train ppl {:.2} valid ppl {ppl:.2} ({:.1} s)",
                kind.name(),
                stage.epochs,
                train.ppl()?,
                started.elapsed().as_secs_f64()
            );
            metrics.append(&line)?;
            history.push(line);
            let pos = Position {
                stage: index,
                stage_name: kind.name().to_string(),
                epochs_done: epoch,
                stage_batches,
                shuffle_rng: shuffle_rng.state(),
                dropout_rng: dropout_rng.state(),
                schedule: opt.schedule()?,
                valid_ppl,
                history: history.clone(),
                experiment: fingerprint.clone(),
            };
            let info = json!({"task": "translation", "nmt": pos});
            crate::train::guards::check_finite(&model.store).map_err(|p| {
                Error::Numeric(format!(
                    "parameter `{p}` is non-finite after epoch {epoch} of `{}`; not saved",
                    kind.name()
                ))
            })?;
            state.commit(Snapshot {
                store: &model.store,
                optimizer: opt.checkpoint(),
                info,
            })?;
            epochs_run += 1;
        }
        drop(setup);
        let mut size = None;
        if let Some(bits) = stage.bits {
            let q = quantize_all(&model.store, bits, Some(stage.bucket_size))?;
            model.store = q.store;
            size = Some((q.size.packed_bytes, q.size.full_precision_bytes));
        }
        let test = evaluate(&mut model, &data.test, stage.eval_batch(), dev)?;
        let test_ppl = test.ppl()?;
        let path = cfg.checkpoint_of(kind);
        let folder = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
        data.save_vocabs(&folder)?;
        let info = json!({
            "task": "translation",
            "stage": kind.name(),
            "model": spec,
            "epochs": stage.epochs,
            "valid_ppl": valid_ppl,
            "test_ppl": test_ppl,
            "bits": stage.bits,
            "packed_bytes": size.map(|s| s.0),
            "f32_bytes": size.map(|s| s.1),
            "src_vocab": corpus::SRC_VOCAB_FILE,
            "tgt_vocab": corpus::TGT_VOCAB_FILE,
            "config": cfg,
        });
        checkpoint::save(&path, &model.store, info)?;
        let test_bleu = match stage.bleu {
            true => Some(bleu_eval::test_bleu(
                cfg,
                data_root,
                &path,
                stage.beam_size,
                dev,
            )?),
            false => None,
        };
        let mut line = json!({"stage": kind.name(), "test_ppl": test_ppl, "test_nll": test.nll / test.tokens.max(1) as f64});
        if let Some((packed, f32_bytes)) = size {
            line["bits"] = json!(stage.bits);
            line["packed_bytes"] = json!(packed);
            line["f32_bytes"] = json!(f32_bytes);
        }
        if let Some(b) = &test_bleu {
            b.add_to(&mut line);
        }
        metrics.append(&line)?;
        history.push(line);
        println!(
            "{}: test ppl {test_ppl:.2}; saved {}",
            kind.name(),
            path.display()
        );
        if let Some(b) = &test_bleu {
            println!(
                "{}: test {}; sacreBLEU {:.2}",
                kind.name(),
                b.multi_bleu_line,
                b.sacrebleu
            );
            if let Some((_, mb_line, sb)) = &b.first_reference_only {
                println!(
                    "{}: against test.{} alone: {mb_line}; sacreBLEU {sb:.2}",
                    kind.name(),
                    cfg.data.tgt
                );
            }
        }
        summary.stages.push(StageResult {
            kind,
            checkpoint: path,
            valid_ppl,
            test_ppl,
            test_bleu,
            size,
        });
    }
    Ok(summary)
}

/// An interrupted epoch's error says what the run state holds and how to continue.
fn interrupted(e: Error, state: &RunState, kind: StageKind, epoch: usize) -> Error {
    match e {
        Error::Interrupted { signal, .. } => Error::Interrupted {
            signal,
            message: format!(
                "stopped in epoch {epoch} of `{}`; {}",
                kind.name(),
                match state.committed() {
                    Some(g) => format!(
                        "generation {g} of the run state in {} holds the last complete epoch; \
                         continue with --resume",
                        state.dir().display()
                    ),
                    None => "no epoch was committed yet".into(),
                }
            ),
        },
        other => other,
    }
}
