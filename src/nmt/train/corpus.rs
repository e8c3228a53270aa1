//! The data of a translation run: the three splits read from the corpus folder, filtered by
//! length (SPEC §1.2: train and the validation/test sets used for perplexity), the vocabularies
//! built on the (filtered, possibly subsampled) training split (§1.3), and every pair as ids.

use crate::error::{Error, Result};
use crate::nmt::batches::{numericalize, Example};
use crate::nmt::config::TranslationConfig;
use crate::nmt::data::ParallelCorpus;
use crate::nmt::vocab::{Side, Vocab};
use crate::rng::Rng;
use std::path::{Path, PathBuf};

/// File names of the vocabularies, written beside every checkpoint of the run.
pub const SRC_VOCAB_FILE: &str = "vocab.src.json";
/// See [`SRC_VOCAB_FILE`].
pub const TGT_VOCAB_FILE: &str = "vocab.tgt.json";

/// Salt of the generator that picks the `max_train_pairs` subset.
const SUBSET_SALT: u64 = 0x7375_6273_6574_0001;

/// The prepared corpus.
pub struct Prepared {
    /// Source vocabulary.
    pub src_vocab: Vocab,
    /// Target vocabulary.
    pub tgt_vocab: Vocab,
    /// Training pairs as ids.
    pub train: Vec<Example>,
    /// The training pairs' source sentences as text (tokens joined by spaces): what `seq_kd`'s
    /// teacher translates.
    pub train_src_text: Vec<String>,
    /// Validation pairs (filtered) as ids.
    pub valid: Vec<Example>,
    /// Test pairs (filtered) as ids.
    pub test: Vec<Example>,
}

/// The files of split `split` in `dir`, both checked to exist (a missing corpus is a config
/// error naming `data.corpus`).
fn split_files(cfg: &TranslationConfig, dir: &Path, split: &str) -> Result<(PathBuf, PathBuf)> {
    let d = &cfg.data;
    let src = dir.join(format!("{split}.{}", d.src));
    let tgt = dir.join(format!("{split}.{}", d.tgt));
    for f in [&src, &tgt] {
        if !f.is_file() {
            return Err(Error::Config(format!(
                "data.corpus: {} not found (the corpus folder `{}` under the data root {} \
                 needs {{train,valid,test}}.{{{},{}}}; set --data-dir or LIT_DATA_DIR)",
                f.display(),
                d.corpus.display(),
                dir.parent()
                    .map_or(String::new(), |p| p.display().to_string()),
                d.src,
                d.tgt
            )));
        }
    }
    Ok((src, tgt))
}

/// Read split `split`, keep the pairs within `data.max_length`, at most `limit` of them (the
/// first ones).
fn read_split(
    cfg: &TranslationConfig,
    dir: &Path,
    split: &str,
    limit: Option<usize>,
) -> Result<ParallelCorpus> {
    let (src, tgt) = split_files(cfg, dir, split)?;
    let mut c =
        ParallelCorpus::read(&src, &tgt, cfg.data.lowercase)?.filter_lengths(cfg.length_filter());
    if let Some(n) = limit {
        c.src.truncate(n);
        c.tgt.truncate(n);
        c.lines.truncate(n);
    }
    if c.is_empty() {
        return Err(Error::data(
            &src,
            format!(
                "no pair of `{split}` has 1..={} words on both sides",
                cfg.data.max_length
            ),
        ));
    }
    Ok(c)
}

/// A seeded subset of `n` pairs of `c`, kept in file order.
fn subset(c: ParallelCorpus, n: usize, seed: u64) -> ParallelCorpus {
    if n >= c.len() {
        return c;
    }
    let mut ids: Vec<usize> = (0..c.len()).collect();
    Rng::new(seed ^ SUBSET_SALT).shuffle(&mut ids);
    ids.truncate(n);
    ids.sort_unstable();
    ParallelCorpus {
        src: ids.iter().map(|&i| c.src[i].clone()).collect(),
        tgt: ids.iter().map(|&i| c.tgt[i].clone()).collect(),
        lines: ids.iter().map(|&i| c.lines[i]).collect(),
    }
}

/// Read the corpus of `cfg` under `data_root` and build the vocabularies.
pub fn prepare(cfg: &TranslationConfig, data_root: &Path) -> Result<Prepared> {
    let dir = data_root.join(&cfg.data.corpus);
    let mut train = read_split(cfg, &dir, "train", None)?;
    if let Some(n) = cfg.data.max_train_pairs {
        train = subset(train, n, cfg.hyperparameters.seed);
    }
    let valid = read_split(cfg, &dir, "valid", cfg.data.max_eval_pairs)?;
    let test = read_split(cfg, &dir, "test", cfg.data.max_eval_pairs)?;
    let (src_opts, tgt_opts) = cfg.vocab_options();
    let src_vocab = Vocab::build(Side::Source, &train.src, src_opts)?;
    let tgt_vocab = Vocab::build(Side::Target, &train.tgt, tgt_opts)?;
    Ok(Prepared {
        train: numericalize(&train, &src_vocab, &tgt_vocab)?,
        train_src_text: train.src.iter().map(|words| words.join(" ")).collect(),
        valid: numericalize(&valid, &src_vocab, &tgt_vocab)?,
        test: numericalize(&test, &src_vocab, &tgt_vocab)?,
        src_vocab,
        tgt_vocab,
    })
}

impl Prepared {
    /// Write both vocabularies into `dir` (atomically), unless equal ones are there already.
    pub fn save_vocabs(&self, dir: &Path) -> Result<()> {
        for (name, v) in [
            (SRC_VOCAB_FILE, &self.src_vocab),
            (TGT_VOCAB_FILE, &self.tgt_vocab),
        ] {
            let path = dir.join(name);
            if Vocab::load(&path).ok().as_ref() != Some(v) {
                v.save(&path)?;
            }
        }
        Ok(())
    }

    /// Fail unless the vocabularies in `dir` are this run's: a checkpoint (a teacher, a
    /// resumed state) is only meaningful with the ids it was trained on. `what` names it.
    pub fn check_vocabs(&self, dir: &Path, what: &str) -> Result<()> {
        for (name, v) in [
            (SRC_VOCAB_FILE, &self.src_vocab),
            (TGT_VOCAB_FILE, &self.tgt_vocab),
        ] {
            let path = dir.join(name);
            let saved = Vocab::load(&path).map_err(|e| {
                Error::Checkpoint(format!("{what}: its vocabulary cannot be read ({e})"))
            })?;
            if &saved != v {
                return Err(Error::Checkpoint(format!(
                    "{what}: {} differs from the vocabulary this config builds ({} vs {} \
                     entries): the data or data settings changed",
                    path.display(),
                    saved.len(),
                    v.len()
                )));
            }
        }
        Ok(())
    }
}

/// The vocabularies saved beside `checkpoint`.
pub fn load_vocabs(checkpoint: &Path) -> Result<(Vocab, Vocab)> {
    let dir = checkpoint.parent().unwrap_or(Path::new("."));
    Ok((
        Vocab::load(&dir.join(SRC_VOCAB_FILE))?,
        Vocab::load(&dir.join(TGT_VOCAB_FILE))?,
    ))
}
