//! Test BLEU at the end of a stage (SPEC-TRANSLATION §4): the stage's saved checkpoint translates
//! the raw, unfiltered test source (the first `data.max_eval_pairs` lines when set) with the
//! seed's decoding, the hypotheses are written beside the checkpoint, and they are scored
//! against `test.<tgt>` (plus `test.<suffix>` for each `data.extra_references`) by
//! `multi-bleu.perl -lc` (what the seed reports) and by sacreBLEU; with extra references, also
//! against `test.<tgt>` alone.

use super::translate::Translator;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::limits::{read_file_at_most, MAX_CORPUS_FILE_BYTES};
use crate::nmt::bleu::{multi_bleu, sacrebleu, SacreBleuOptions};
use crate::nmt::config::TranslationConfig;
use crate::nmt::data::split_lines;
use crate::nmt::search::TranslateOptions;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The BLEU of one stage's model on the test set.
#[derive(Clone, Debug, Serialize)]
pub struct TestBleu {
    /// `multi-bleu.perl -lc` score in percent (the seed's number).
    pub multi_bleu: f64,
    /// The line the script prints.
    pub multi_bleu_line: String,
    /// sacreBLEU (13a, mixed case) in percent.
    pub sacrebleu: f64,
    /// With extra references: the scores against `test.<tgt>` alone (multi-bleu, its line,
    /// sacreBLEU).
    pub first_reference_only: Option<(f64, String, f64)>,
    /// The reference files, `test.<tgt>` first.
    pub references: Vec<PathBuf>,
    /// The hypotheses, one line per test source line.
    pub hypotheses: PathBuf,
    /// The beam size used.
    pub beam_size: usize,
}

impl TestBleu {
    /// Its fields of the stage's `test` line in `metrics.jsonl` (file names only, so that the
    /// line does not depend on where the run and the corpus are).
    pub fn add_to(&self, line: &mut Value) {
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        line["test_bleu"] = json!(self.multi_bleu);
        line["test_sacrebleu"] = json!(self.sacrebleu);
        if let Some((mb, mb_line, sb)) = &self.first_reference_only {
            line["test_bleu_ref1"] = json!(mb);
            line["multi_bleu_ref1"] = json!(mb_line);
            line["test_sacrebleu_ref1"] = json!(sb);
        }
        line["multi_bleu"] = json!(self.multi_bleu_line);
        line["references"] = json!(self.references.iter().map(|p| name(p)).collect::<Vec<_>>());
        line["hypotheses"] = json!(name(&self.hypotheses));
        line["beam_size"] = json!(self.beam_size);
    }
}

/// The lines of `path` (a corpus file), the first `limit` when given.
fn lines_of(path: &Path, limit: Option<usize>) -> Result<Vec<String>> {
    let bytes = read_file_at_most(path, MAX_CORPUS_FILE_BYTES, "test file")?;
    let mut lines = split_lines(path, &bytes)?;
    if let Some(n) = limit {
        lines.truncate(n);
    }
    Ok(lines)
}

/// Where the hypotheses of `checkpoint` go: `<stem>.test-hyp.<tgt>` beside it.
pub fn hypotheses_path(checkpoint: &Path, tgt: &str) -> PathBuf {
    let stem = checkpoint
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model");
    checkpoint.with_file_name(format!("{stem}.test-hyp.{tgt}"))
}

/// Translate the test source of `cfg` (corpus under `data_root`) with `checkpoint` at
/// `beam_size`, write the hypotheses beside it and score them.
pub fn test_bleu(
    cfg: &TranslationConfig,
    data_root: &Path,
    checkpoint: &Path,
    beam_size: usize,
    dev: &Device,
) -> Result<TestBleu> {
    let d = &cfg.data;
    let dir = data_root.join(&d.corpus);
    let source = lines_of(&dir.join(format!("test.{}", d.src)), d.max_eval_pairs)?;
    let suffixes = std::iter::once(&d.tgt).chain(&d.extra_references);
    let references: Vec<PathBuf> = suffixes.map(|s| dir.join(format!("test.{s}"))).collect();
    let mut refs = Vec::with_capacity(references.len());
    for path in &references {
        let lines = lines_of(path, d.max_eval_pairs)?;
        if lines.len() != source.len() {
            return Err(Error::data(
                path,
                format!(
                    "{} reference lines for {} test source lines",
                    lines.len(),
                    source.len()
                ),
            ));
        }
        refs.push(lines);
    }
    let mut options = TranslateOptions {
        lowercase: d.lowercase,
        ..TranslateOptions::default()
    };
    options.search.beam_size = beam_size;
    let mut translator = Translator::load(checkpoint, dev)?;
    options.batch_size = translator.seed_batch_size();
    let hyps = translator.translate(&source, &options)?;
    let hypotheses = hypotheses_path(checkpoint, &d.tgt);
    let text: String = hyps.iter().map(|h| format!("{h}\n")).collect();
    crate::durable::write_atomic(&hypotheses, text.as_bytes())?;
    let mb = multi_bleu(&hyps, &refs, true)?;
    let sb = sacrebleu(&hyps, &refs, SacreBleuOptions::default())?;
    let first_reference_only = match refs.len() > 1 {
        true => {
            let one = multi_bleu(&hyps, &refs[..1], true)?;
            let sb = sacrebleu(&hyps, &refs[..1], SacreBleuOptions::default())?;
            Some((one.score, one.multi_bleu_line(), sb.score))
        }
        false => None,
    };
    Ok(TestBleu {
        first_reference_only,
        multi_bleu: mb.score,
        multi_bleu_line: mb.multi_bleu_line(),
        sacrebleu: sb.score,
        references,
        hypotheses,
        beam_size,
    })
}
