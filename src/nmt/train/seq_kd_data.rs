//! The `seq_kd` stage's training set (sequence-level KD, SPEC-TRANSLATION §3.7): the teacher's
//! beam-search translations of the run's training source, made once and durably in
//! `<save_directory>/seq_kd/` — `train.<src>` the sources as the run read them, `train.<tgt>`
//! the teacher's outputs (written chunk by chunk through [`distill_lines`], so an interrupted
//! translation resumes after its last complete chunk) and `manifest.json` with the key of every
//! input (teacher weights, decoding options, sources, vocabularies). A stage that is resumed
//! finds the manifest's key unchanged and trains on the same set without translating again.
//!
//! Unlike the seed, the student keeps the run's vocabularies (the seed builds a new target
//! vocabulary from the teacher's outputs), so every student of a run shares `vocab.*.json` and
//! its test perplexity is comparable. Pairs whose teacher output is empty or longer than
//! `data.max_length` are dropped, as the seed's preprocessing of the new corpus drops them.

use super::corpus::Prepared;
use super::translate::Translator;
use crate::device::Device;
use crate::durable::write_atomic;
use crate::error::{Error, Result};
use crate::nmt::batches::{numericalize, Example};
use crate::nmt::config::{StageSection, TranslationConfig};
use crate::nmt::data::{read_lines, ParallelCorpus};
use crate::nmt::search::TranslateOptions;
use crate::nmt::seq_kd::{distill_lines, file_key, key_of, DEFAULT_CHUNK_LINES};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The folder of the distilled training set inside the save directory.
pub const SEQ_KD_FOLDER: &str = "seq_kd";
const MANIFEST: &str = "manifest.json";

/// The student's training set and how it was made.
pub struct SeqKdSet {
    /// The kept pairs as ids (run vocabularies).
    pub train: Vec<Example>,
    /// Source sentences translated (= the run's training pairs).
    pub translated: usize,
    /// Teacher outputs that were empty or too long (dropped).
    pub dropped: usize,
    /// Whether the translations were already complete (no decoding this time).
    pub reused: bool,
    /// Where the teacher's outputs are.
    pub outputs: PathBuf,
}

/// Make (or reuse) the teacher's translations of `data`'s training source and return the
/// student's training set.
pub fn seq_kd_train_set(
    cfg: &TranslationConfig,
    data: &Prepared,
    stage: &StageSection,
    dev: &Device,
    stop: &dyn Fn() -> Option<i32>,
) -> Result<SeqKdSet> {
    let teacher_path = cfg.teacher_checkpoint();
    if !teacher_path.is_file() {
        return Err(Error::Config(format!(
            "models.teacher_checkpoint: {} not found (sequence.seq_kd translates the training \
             source with a trained teacher: run a `teacher` stage first, or point \
             models.teacher_checkpoint at one)",
            teacher_path.display()
        )));
    }
    let what = format!("teacher checkpoint {}", teacher_path.display());
    data.check_vocabs(teacher_path.parent().unwrap_or(Path::new(".")), &what)?;
    let mut teacher = Translator::load(&teacher_path, dev)?;
    let mut options = TranslateOptions {
        batch_size: stage
            .distill_batch_size
            .unwrap_or_else(|| teacher.seed_batch_size()),
        lowercase: cfg.data.lowercase,
        ..TranslateOptions::default()
    };
    options.search.beam_size = stage.distill_beam_size.unwrap_or(options.search.beam_size);

    let dir = cfg.params.save_directory.join(SEQ_KD_FOLDER);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let sources = &data.train_src_text;
    let src_text: String = sources.iter().map(|l| format!("{l}\n")).collect();
    let key = key_of(&[
        file_key(&teacher_path)?.as_bytes(),
        format!("{options:?}").as_bytes(),
        src_text.as_bytes(),
        data.src_vocab.itos().join("\n").as_bytes(),
        data.tgt_vocab.itos().join("\n").as_bytes(),
    ]);
    let outputs = dir.join(format!("train.{}", cfg.data.tgt));
    let manifest = dir.join(MANIFEST);
    let complete = read_manifest_key(&manifest).is_some_and(|k| k == key) && outputs.is_file();
    let translations = match complete {
        true => read_lines(&outputs)?,
        false => Vec::new(),
    };
    let reused = complete && translations.len() == sources.len();
    let translations = if reused {
        translations
    } else {
        let _ = std::fs::remove_file(&manifest);
        write_atomic(
            &dir.join(format!("train.{}", cfg.data.src)),
            src_text.as_bytes(),
        )?;
        let started = std::time::Instant::now();
        let batch = options.batch_size.max(1);
        let chunk = DEFAULT_CHUNK_LINES.div_ceil(batch) * batch;
        let mut translate = |part: &[String]| teacher.translate(part, &options);
        let mut progress = |done: usize, total: usize| {
            eprintln!(
                "seq_kd: the teacher translated {done}/{total} training sentences ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
            match stop() {
                Some(signal) => Err(Error::Interrupted {
                    signal,
                    message: format!(
                        "stopped while the teacher translated the training source for seq_kd \
                         ({done}/{total} sentences kept in {}, and reused by the next run); \
                         continue with --resume, or with the same command when seq_kd is the \
                         run's first stage (nothing was committed yet)",
                        dir.display()
                    ),
                }),
                None => Ok(()),
            }
        };
        let (lines, _) = distill_lines(
            &mut translate,
            sources,
            &outputs,
            &key,
            chunk,
            &mut progress,
        )?;
        let text = json!({"key": key, "lines": lines.len()}).to_string();
        write_atomic(&manifest, text.as_bytes())?;
        lines
    };
    let corpus = ParallelCorpus::from_lines(&outputs, sources, &translations, cfg.data.lowercase)?;
    let kept = corpus.filter_lengths(cfg.length_filter());
    if kept.is_empty() {
        return Err(Error::data(
            &outputs,
            format!(
                "seq_kd: every teacher translation is empty or longer than data.max_length {} \
                 (is the teacher trained?)",
                cfg.data.max_length
            ),
        ));
    }
    Ok(SeqKdSet {
        dropped: sources.len() - kept.len(),
        train: numericalize(&kept, &data.src_vocab, &data.tgt_vocab)?,
        translated: sources.len(),
        reused,
        outputs,
    })
}

fn read_manifest_key(path: &Path) -> Option<String> {
    let bytes = crate::limits::read_file_at_most(path, 4096, "seq_kd manifest").ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["key"].as_str().map(str::to_string)
}
