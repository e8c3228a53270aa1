//! Sequence-level KD data, the `distill-data` step (SPEC-TRANSLATION §3.7,
//! `create_distillation_dataset`): the teacher translates the **raw, unfiltered** training
//! source with the seed's decoding (§4: beam 5, max 100 steps, replace_unk, batch 1), and a new
//! corpus folder gets `train.<src>` copied, `train.<tgt>` = the teacher's outputs (one line per
//! source line, tokens joined by single spaces, written as produced) and the `valid`/`test`
//! files copied. The trainer then reads that folder as any corpus (new target vocabulary, ≤ 50
//! filters: the seed drops empty or long teacher outputs there, not here).
//!
//! Durability: the outputs are appended, chunk by chunk and fsynced, to a hidden partial file
//! keyed by a fingerprint of the source, the teacher and the options; only the complete file is
//! renamed to `train.<tgt>`, so an interrupted run leaves the previous file (or none), and a
//! rerun with the same key resumes after the last complete line. Copies are written atomically.

use super::data::{read_lines, split_lines};
use super::search::{translate_lines, StepDecoder, TranslateOptions};
use super::vocab::Vocab;
use crate::durable::{rename, sync_folder, write_atomic};
use crate::error::{Error, Result};
use crate::limits::{read_file_at_most, MAX_BATCH, MAX_CORPUS_FILE_BYTES};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Source lines translated between two durable appends (rounded up to whole decoding batches).
pub const DEFAULT_CHUNK_LINES: usize = 256;

/// How the teacher's data is produced.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqKdOptions {
    /// Decoding (default: the QD seed's, beam 5, max 100, replace_unk, batch 1).
    pub translate: TranslateOptions,
    /// Lines per durable append (1..=[`MAX_BATCH`]).
    pub chunk_lines: usize,
    /// Identifies the teacher (e.g. its checkpoint's digest): a partial file made by another
    /// teacher is never resumed.
    pub teacher_id: String,
}

impl Default for SeqKdOptions {
    fn default() -> Self {
        SeqKdOptions {
            translate: TranslateOptions::default(),
            chunk_lines: DEFAULT_CHUNK_LINES,
            teacher_id: String::new(),
        }
    }
}

/// Where the corpus is read and the distilled one written.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqKdPaths {
    /// The original corpus folder (`{train,valid,test}.{src,tgt}`).
    pub corpus: PathBuf,
    /// The distilled corpus folder (created).
    pub output: PathBuf,
    /// Source suffix (`es`).
    pub src: String,
    /// Target suffix (`en`).
    pub tgt: String,
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqKdReport {
    /// Source lines = lines of the new `train.<tgt>`.
    pub lines: usize,
    /// Lines taken from an earlier, interrupted run.
    pub resumed_lines: usize,
    /// Teacher outputs that are empty (dropped later by the corpus filter).
    pub empty_outputs: usize,
    /// Files copied unchanged.
    pub copied: Vec<String>,
}

/// The files of the distilled folder that are plain copies (those present in the corpus).
fn copied_names(p: &SeqKdPaths) -> Vec<String> {
    let mut names = vec![format!("train.{}", p.src)];
    for split in ["valid", "test"] {
        for side in [&p.src, &p.tgt] {
            names.push(format!("{split}.{side}"));
        }
    }
    names
}

/// FNV-1a, 64 bits: a stable key for the partial file (not a security digest).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &b in part.iter().chain(&[0xffu8]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn check_suffix(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "seq_kd: the {what} suffix `{s}` must be 1..=32 letters, digits, `-` or `_`"
        )))
    }
}

/// Make the distilled corpus (see the module documentation). `on_chunk(done, total)` runs after
/// each durable append (progress; an error from it stops the run, resumable).
pub fn distill_data<D: StepDecoder>(
    teacher: &mut D,
    src_vocab: &Vocab,
    tgt_vocab: &Vocab,
    paths: &SeqKdPaths,
    options: &SeqKdOptions,
    on_chunk: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<SeqKdReport> {
    check_suffix("source", &paths.src)?;
    check_suffix("target", &paths.tgt)?;
    if paths.src == paths.tgt {
        return Err(Error::Config(
            "seq_kd: the source and target suffixes must differ".into(),
        ));
    }
    if options.chunk_lines == 0 || options.chunk_lines > MAX_BATCH {
        return Err(Error::Config(format!(
            "seq_kd: chunk_lines must be in 1..={MAX_BATCH}, got {}",
            options.chunk_lines
        )));
    }
    if paths.output == paths.corpus {
        return Err(Error::Config(
            "seq_kd: the output folder must not be the corpus folder".into(),
        ));
    }
    std::fs::create_dir_all(&paths.output).map_err(|e| Error::io(&paths.output, e))?;

    let mut copied = Vec::new();
    for name in copied_names(paths) {
        let from = paths.corpus.join(&name);
        if !from.exists() && !name.starts_with("train.") {
            continue;
        }
        let bytes = read_file_at_most(&from, MAX_CORPUS_FILE_BYTES, "a corpus file")?;
        write_atomic(&paths.output.join(&name), &bytes)?;
        copied.push(name);
    }

    let src_path = paths.corpus.join(format!("train.{}", paths.src));
    let src_bytes = read_file_at_most(&src_path, MAX_CORPUS_FILE_BYTES, "a corpus file")?;
    let lines = split_lines(&src_path, &src_bytes)?;
    let key = key_of(&[
        &src_bytes,
        options.teacher_id.as_bytes(),
        format!("{:?}", options.translate).as_bytes(),
        &src_vocab.itos().join("\n").into_bytes(),
        &tgt_vocab.itos().join("\n").into_bytes(),
    ]);
    let final_path = paths.output.join(format!("train.{}", paths.tgt));
    let batch = options.translate.batch_size.max(1);
    let chunk = options.chunk_lines.div_ceil(batch).saturating_mul(batch);
    let mut translate =
        |part: &[String]| translate_lines(teacher, src_vocab, tgt_vocab, part, &options.translate);
    let (done, resumed_lines) =
        distill_lines(&mut translate, &lines, &final_path, &key, chunk, on_chunk)?;
    Ok(SeqKdReport {
        lines: lines.len(),
        resumed_lines,
        empty_outputs: done.iter().filter(|l| l.is_empty()).count(),
        copied,
    })
}

/// A stable hex key of `parts` (FNV-1a; identifies inputs, not a security digest).
pub fn key_of(parts: &[&[u8]]) -> String {
    format!("{:016x}", fnv1a(parts))
}

/// The key of a file's bytes (read in pieces: a teacher checkpoint may be large).
pub fn file_key(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{h:016x}"))
}

/// Translate `lines` (by `translate`, `chunk` lines a call) into `final_path`, durably: each
/// chunk is appended and fsynced to a hidden partial file beside it, keyed by `key`; only the
/// complete file is renamed to `final_path`. A partial file with the same key is resumed after
/// its last complete line. Returns the outputs and how many came from an earlier run.
/// `on_chunk(done, total)` runs after each append (an error from it stops, resumable).
pub fn distill_lines(
    translate: &mut dyn FnMut(&[String]) -> Result<Vec<String>>,
    lines: &[String],
    final_path: &Path,
    key: &str,
    chunk: usize,
    on_chunk: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<(Vec<String>, usize)> {
    let folder = final_path.parent().unwrap_or(Path::new("."));
    let name = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            Error::Config(format!("seq_kd: bad output file {}", final_path.display()))
        })?;
    let partial = folder.join(format!(".{name}.seq-kd-partial"));
    let key_path = folder.join(format!(".{name}.seq-kd-key"));
    let mut done = resume_point(&partial, &key_path, key, lines.len())?;
    let resumed_lines = done.len();
    if resumed_lines == 0 {
        write_atomic(&partial, b"")?;
        write_atomic(&key_path, key.as_bytes())?;
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&partial)
        .map_err(|e| Error::io(&partial, e))?;
    let chunk = chunk.max(1);
    while done.len() < lines.len() {
        let end = (done.len() + chunk).min(lines.len());
        let out = translate(&lines[done.len()..end])?;
        if out.len() != end - done.len() {
            return Err(Error::Internal(format!(
                "seq_kd: {} translations for {} lines",
                out.len(),
                end - done.len()
            )));
        }
        let mut text = String::new();
        for line in &out {
            text.push_str(line);
            text.push('\n');
        }
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&partial, e))?;
        done.extend(out);
        on_chunk(done.len(), lines.len())?;
    }
    drop(file);
    rename(&partial, final_path)?;
    let _ = std::fs::remove_file(&key_path);
    sync_folder(folder);
    Ok((done, resumed_lines))
}

/// The complete lines of an earlier run with the same key (rewritten without a torn last line),
/// or none.
fn resume_point(partial: &Path, key_path: &Path, key: &str, total: usize) -> Result<Vec<String>> {
    let same_key = std::fs::read(key_path).is_ok_and(|k| k == key.as_bytes());
    if !same_key || !partial.exists() {
        return Ok(Vec::new());
    }
    let bytes = read_file_at_most(partial, MAX_CORPUS_FILE_BYTES, "a partial seq-kd file")?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = split_lines(partial, &bytes[..complete])?;
    if lines.len() > total {
        return Ok(Vec::new());
    }
    if complete < bytes.len() {
        write_atomic(partial, &bytes[..complete])?;
    }
    Ok(lines)
}

/// The lines of the distilled target file (for checks and the report).
pub fn read_distilled(paths: &SeqKdPaths) -> Result<Vec<String>> {
    read_lines(&paths.output.join(format!("train.{}", paths.tgt)))
}
