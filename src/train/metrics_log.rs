//! The run's metrics: `metrics.jsonl` (one JSON object per epoch and per PTQ bit width) and a
//! TensorBoard event file, both in `params.logdir`.
//!
//! A fresh run replaces `metrics.jsonl` when its first line is written (a run that fails before
//! leaves the previous log alone). A resumed run first rewrites both files atomically from the
//! history of its committed state, so the epochs a killed run logged after its last commit are
//! dropped, never shown twice, whatever point the kill came at.

use crate::durable::write_atomic;
use crate::error::{Error, Result};
use crate::train::tensorboard::EventWriter;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of `metrics.jsonl`: an epoch of a step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// The stage's name (`kd`, `lit`, …).
    pub stage: String,
    /// Index of the step in the run's plan.
    #[serde(default)]
    pub step: usize,
    /// The architecture trained.
    #[serde(default)]
    pub model: String,
    /// The epoch (1-based).
    pub epoch: usize,
    /// Epochs of the stage.
    pub epochs: usize,
    /// The learning rate of the epoch.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (fraction).
    pub train_acc: f64,
    /// Test loss.
    pub test_loss: f64,
    /// Test accuracy (fraction).
    pub test_acc: f64,
    /// The teacher's test accuracy (distillation stages).
    #[serde(default)]
    pub teacher_acc: Option<f64>,
    /// Wall-clock seconds of the epoch (training and evaluation).
    pub seconds: f64,
    /// fp16 loss scaling: the epoch's steps whose update was skipped (non-finite gradients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<usize>,
    /// fp16 loss scaling: the loss scale at the end of the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
}

impl EpochMetrics {
    /// The TensorBoard scalars of an epoch: `<stage>/train_loss`, …
    fn scalars(&self) -> Vec<(String, f32)> {
        let mut v: Vec<(String, f32)> = [
            ("train_loss", self.train_loss),
            ("train_acc", self.train_acc),
            ("test_loss", self.test_loss),
            ("test_acc", self.test_acc),
            ("lr", self.lr),
        ]
        .iter()
        .map(|(tag, v)| (format!("{}/{tag}", self.stage), *v as f32))
        .collect();
        if let Some(t) = self.teacher_acc {
            v.push((format!("{}/teacher_acc", self.stage), t as f32));
        }
        if let (Some(skipped), Some(scale)) = (self.skipped_steps, self.loss_scale) {
            v.push((format!("{}/skipped_steps", self.stage), skipped as f32));
            v.push((format!("{}/loss_scale", self.stage), scale as f32));
        }
        v
    }
}

/// The epochs of a `metrics.jsonl` (other rows, such as PTQ results, are skipped): the one reader
/// of the log, for `lit-engine sweep report` and other tools that summarise finished runs.
pub fn read_epochs(path: &Path) -> Result<Vec<EpochMetrics>> {
    let bytes = crate::limits::read_file_at_most(
        path,
        crate::limits::MAX_METRICS_LOG_BYTES,
        "metrics log",
    )?;
    let text = String::from_utf8_lossy(&bytes);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let row: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::data(path, format!("line {}: not JSON ({e})", i + 1)))?;
        if row.get("epoch").is_some() {
            out.push(
                serde_json::from_value(row)
                    .map_err(|e| Error::data(path, format!("line {}: {e}", i + 1)))?,
            );
        }
    }
    Ok(out)
}

/// `metrics.jsonl` and the TensorBoard event file of a run.
pub struct MetricsLog {
    /// `metrics.jsonl`.
    pub path: PathBuf,
    file: Option<std::fs::File>,
    events: Option<EventWriter>,
}

impl MetricsLog {
    /// The log in `dir` (nothing is written before the first line).
    pub fn new(dir: &Path) -> Self {
        MetricsLog {
            path: dir.join("metrics.jsonl"),
            file: None,
            events: None,
        }
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The event file's name (recorded in the run state, so a resumed run rewrites that file).
    pub fn events_file_name(&self) -> Option<String> {
        let path = self.events.as_ref()?.path();
        Some(path.file_name()?.to_string_lossy().into_owned())
    }

    /// Resume: rewrite `metrics.jsonl` and the event file `events_file` (a new one when `None`)
    /// from `history`, each atomically, and append from there.
    pub fn resume(&mut self, history: &[EpochMetrics], events_file: Option<&str>) -> Result<()> {
        let mut text = String::new();
        for m in history {
            let line =
                serde_json::to_string(m).map_err(|e| Error::Encode(format!("metrics: {e}")))?;
            text.push_str(&line);
            text.push('\n');
        }
        write_atomic(&self.path, text.as_bytes())?;
        self.file = Some(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&self.path)
                .map_err(|e| Error::io(&self.path, e))?,
        );
        let scalars: Vec<(i64, String, f32)> = history
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                m.scalars()
                    .into_iter()
                    .map(move |(tag, v)| (i as i64 + 1, tag, v))
            })
            .collect();
        // Only a plain file name is taken from the state: it must not lead out of the log folder.
        let events_path = events_file
            .filter(|n| Path::new(n).file_name() == Some(std::ffi::OsStr::new(n)))
            .map(|n| self.dir().join(n));
        self.events = Some(match events_path {
            Some(p) => EventWriter::replace(&p, &scalars)?,
            None => {
                let mut w = EventWriter::create(self.dir())?;
                for (step, tag, v) in &scalars {
                    w.scalar(tag, *step, *v)?;
                }
                w.flush()?;
                w
            }
        });
        Ok(())
    }

    /// A fresh run: start a new event file, removing `previous` (the event file of the last run
    /// on the same outputs, which `metrics.jsonl` also forgets). `record` is given the new
    /// file's name before the file exists, so that no kill leaves a file nobody knows of.
    pub fn start_fresh(
        &mut self,
        previous: Option<&str>,
        record: impl FnOnce(&str) -> Result<()>,
    ) -> Result<()> {
        if let Some(old) = previous.filter(|n| n.starts_with("events.out.tfevents.")) {
            let _ = std::fs::remove_file(self.dir().join(old));
        }
        let path = EventWriter::free_path(self.dir())?;
        record(&path.file_name().unwrap_or_default().to_string_lossy())?;
        self.events = Some(EventWriter::create_file(&path)?);
        Ok(())
    }

    /// TensorBoard scalars of an epoch at the run's epoch count.
    pub fn scalars(&mut self, m: &EpochMetrics, global_epoch: usize) -> Result<()> {
        if self.events.is_none() {
            self.events = Some(EventWriter::create(self.dir())?);
        }
        let w = self.events.as_mut().expect("created above");
        for (tag, v) in m.scalars() {
            w.scalar(&tag, global_epoch as i64, v)?;
        }
        w.flush()
    }

    fn open(&mut self) -> Result<&mut std::fs::File> {
        if self.file.is_none() {
            let dir = self.dir().to_path_buf();
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let f = std::fs::File::create(&self.path).map_err(|e| Error::io(&self.path, e))?;
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Append one JSON line (an epoch, a PTQ result).
    pub fn write<T: Serialize>(&mut self, m: &T) -> Result<()> {
        let line = serde_json::to_string(m).map_err(|e| Error::Encode(format!("metrics: {e}")))?;
        let path = self.path.clone();
        let file = self.open()?;
        writeln!(file, "{line}")
            .and_then(|_| file.flush())
            .map_err(|e| Error::io(&path, e))
    }
}
