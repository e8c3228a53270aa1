//! Sentences to ids, and ids to batches as the seed's torchtext 0.1.1 iterators cut them
//! (SPEC-TRANSLATION §1.4, §1.5, §6.3).
//!
//! A batch is time-major: the source `[S, B]` (words, `<blank>`-padded to the longest, `S` its
//! word count) with the lengths `[B]`, the target `[T, B]` (`<s>` words `</s>`, padded, `T` the
//! longest word count + 2), the columns in descending source length (the encoder packs them).
//!
//! Cutting follows torchtext's `batch()`: add an example, recompute the batch's size; at the
//! capacity the batch is complete; above it the batch is complete without the example, which
//! starts the next. The size is counted by [`BatchSize`]: sentences (QD), padded tokens (the
//! default for token budgets: no batch tensor exceeds the budget unless one pair alone does), or
//! LMA's `max_tok_len` with its bug L1 (it counts the characters of the first word).
//! Training batches come from 100-batch pools of a shuffled epoch, each pool sorted by descending
//! source length, its batches shuffled ([`train_batches`]); evaluation batches from the corpus in
//! order or sorted ([`eval_batches`]). Shuffles use the project's [`Rng`], so a seed fixes them.

use super::data::ParallelCorpus;
use super::vocab::{Side, Vocab, BOS_ID, EOS_ID, PAD_ID};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::limits::{checked_product, MAX_BATCH, MAX_BATCH_TOKENS};
use crate::rng::Rng;
use crate::tensor::IndexTensor;
use std::cmp::Reverse;

/// One sentence pair as ids: words only (no `<s>`/`</s>`), and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Source word ids.
    pub src: Vec<i32>,
    /// Target word ids.
    pub tgt: Vec<i32>,
    /// The 0-based line of the corpus files the pair was read from.
    pub line: usize,
    /// Characters of the first source and target word (0 for an empty sentence): what LMA's
    /// token count measures (bug L1).
    pub first_word_chars: (usize, usize),
}

/// The pairs of `corpus` as ids of `src_vocab` (a [`Side::Source`] vocabulary) and `tgt_vocab`
/// (a [`Side::Target`] one).
pub fn numericalize(
    corpus: &ParallelCorpus,
    src_vocab: &Vocab,
    tgt_vocab: &Vocab,
) -> Result<Vec<Example>> {
    if src_vocab.side() != Side::Source || tgt_vocab.side() != Side::Target {
        return Err(Error::op_arg(
            "numericalize",
            format!(
                "needs a source and a target vocabulary, got {:?} and {:?}",
                src_vocab.side(),
                tgt_vocab.side()
            ),
        ));
    }
    let first_chars = |s: &[String]| s.first().map_or(0, |w| w.chars().count());
    Ok(corpus
        .src
        .iter()
        .zip(&corpus.tgt)
        .zip(&corpus.lines)
        .map(|((src, tgt), &line)| Example {
            src: src_vocab.encode(src),
            tgt: tgt_vocab.encode(tgt),
            line,
            first_word_chars: (first_chars(src), first_chars(tgt)),
        })
        .collect())
}

/// How the size of a batch is counted, and its capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSize {
    /// At most this many sentences (QD: 64).
    Sentences(usize),
    /// At most this many padded tokens in each of the source `[S, B]` and target `[T, B]`
    /// tensors: `B · max(S, T)` with `T` = longest target + 2.
    Tokens(usize),
    /// LMA's `max_tok_len` exactly (SPEC §6.3, bug L1): `B · max(c_src + 2, c_tgt + 1)` with `c`
    /// the largest number of characters of a sentence's FIRST WORD in the batch (LMA: 3192 for
    /// training, 1024 for validation).
    LmaFirstWordChars(usize),
}

impl BatchSize {
    /// The capacity, checked: at least 1, at most [`MAX_BATCH`] sentences or
    /// [`MAX_BATCH_TOKENS`] tokens.
    fn capacity(self) -> Result<usize> {
        let (n, limit, unit) = match self {
            BatchSize::Sentences(n) => (n, MAX_BATCH, "sentences"),
            BatchSize::Tokens(n) | BatchSize::LmaFirstWordChars(n) => {
                (n, MAX_BATCH_TOKENS, "tokens")
            }
        };
        if n == 0 || n > limit {
            return Err(Error::Config(format!(
                "a batch of {n} {unit}: it must be between 1 and {limit}"
            )));
        }
        Ok(n)
    }
}

/// The running size of a batch being filled (the globals of LMA's `max_tok_len`).
struct Sizer {
    size: BatchSize,
    max_src: usize,
    max_tgt: usize,
}

impl Sizer {
    fn new(size: BatchSize) -> Sizer {
        Sizer {
            size,
            max_src: 0,
            max_tgt: 0,
        }
    }

    /// The batch's size once `ex` is its `count`-th example.
    fn add(&mut self, ex: &Example, count: usize) -> usize {
        let (src, tgt) = match self.size {
            BatchSize::Sentences(_) => return count,
            BatchSize::Tokens(_) => (ex.src.len(), ex.tgt.len() + 2),
            BatchSize::LmaFirstWordChars(_) => {
                (ex.first_word_chars.0 + 2, ex.first_word_chars.1 + 1)
            }
        };
        if count == 1 {
            (self.max_src, self.max_tgt) = (0, 0);
        }
        self.max_src = self.max_src.max(src);
        self.max_tgt = self.max_tgt.max(tgt);
        count.saturating_mul(self.max_src.max(self.max_tgt))
    }
}

/// Cut `order` (ids into `examples`) into batches of capacity `capacity` counted by `size`, as
/// torchtext's `batch()` does. A pair that alone exceeds the capacity is a batch of its own
/// (torchtext would also yield an empty batch before it, which is dropped here).
fn cut(examples: &[Example], order: &[usize], size: BatchSize, capacity: usize) -> Vec<Vec<usize>> {
    let mut sizer = Sizer::new(size);
    let (mut batches, mut current) = (Vec::new(), Vec::new());
    for &i in order {
        current.push(i);
        let so_far = sizer.add(&examples[i], current.len());
        if so_far == capacity {
            batches.push(std::mem::take(&mut current));
        } else if so_far > capacity {
            current.pop();
            if !current.is_empty() {
                batches.push(std::mem::take(&mut current));
            }
            current.push(i);
            sizer.add(&examples[i], 1);
        }
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Sort `ids` by descending source length, keeping the order of equal lengths (the seed's
/// `sorted(key=lambda ex: -len(ex.src))`).
fn sort_by_source_length(examples: &[Example], ids: &mut [usize]) {
    ids.sort_by_key(|&i| Reverse(examples[i].src.len()));
}

/// One training epoch's batches (ids into `examples`), as the seed's `OrderedIterator` with
/// `train=True, shuffle=True`: the epoch shuffled, cut into pools of 100 batches' capacity, each
/// pool sorted by descending source length and cut into batches, the batches of each pool
/// shuffled. `rng` carries on from epoch to epoch.
pub fn train_batches(
    examples: &[Example],
    size: BatchSize,
    rng: &mut Rng,
) -> Result<Vec<Vec<usize>>> {
    let capacity = size.capacity()?;
    let mut order: Vec<usize> = (0..examples.len()).collect();
    rng.shuffle(&mut order);
    let mut batches = Vec::new();
    for mut pool in cut(examples, &order, size, capacity.saturating_mul(100)) {
        sort_by_source_length(examples, &mut pool);
        let mut pool_batches = cut(examples, &pool, size, capacity);
        rng.shuffle(&mut pool_batches);
        batches.extend(pool_batches);
    }
    Ok(batches)
}

/// Evaluation batches (ids into `examples`): the corpus in order, or sorted by descending source
/// length when `sort` (the seed's test loader; its translation loader does not sort), cut by
/// `size`, each batch sorted by descending source length.
pub fn eval_batches(examples: &[Example], size: BatchSize, sort: bool) -> Result<Vec<Vec<usize>>> {
    let capacity = size.capacity()?;
    let mut order: Vec<usize> = (0..examples.len()).collect();
    if sort {
        sort_by_source_length(examples, &mut order);
    }
    let mut batches = cut(examples, &order, size, capacity);
    for batch in &mut batches {
        sort_by_source_length(examples, batch);
    }
    Ok(batches)
}

/// A batch as host index data, time-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Source ids `[S, B]`, row `s` holding word `s` of every sentence, `<blank>` after the end.
    pub src: Vec<i32>,
    /// Target ids `[T, B]`: `<s>`, the words, `</s>`, `<blank>` padding.
    pub tgt: Vec<i32>,
    /// Word count of each source sentence `[B]`, descending when the batch came sorted.
    pub src_lengths: Vec<i32>,
    /// The corpus line of each column.
    pub lines: Vec<usize>,
    /// `S`: the longest source sentence.
    pub src_steps: usize,
    /// `T`: the longest target sentence + 2.
    pub tgt_steps: usize,
}

impl Batch {
    /// The batch of `examples[ids]`, columns in the order of `ids`. No ids, an id outside
    /// `examples` or a batch tensor above [`MAX_BATCH_TOKENS`] elements is an argument error.
    pub fn new(examples: &[Example], ids: &[usize]) -> Result<Batch> {
        let err = |msg: String| Err(Error::op_arg("Batch::new", msg));
        if ids.is_empty() || ids.len() > MAX_BATCH {
            return err(format!("{} sentences, must be 1..={MAX_BATCH}", ids.len()));
        }
        let mut chosen = Vec::with_capacity(ids.len());
        for &i in ids {
            match examples.get(i) {
                Some(ex) => chosen.push(ex),
                None => return err(format!("example {i} of {}", examples.len())),
            }
        }
        let b = chosen.len();
        let src_steps = chosen.iter().map(|e| e.src.len()).max().unwrap_or(0);
        let tgt_steps = chosen.iter().map(|e| e.tgt.len()).max().unwrap_or(0) + 2;
        for steps in [src_steps, tgt_steps] {
            match checked_product(&[steps, b]) {
                Some(n) if n <= MAX_BATCH_TOKENS => {}
                _ => return err(format!("[{steps}, {b}] is above {MAX_BATCH_TOKENS} tokens")),
            }
        }
        let mut src = vec![PAD_ID; src_steps * b];
        let mut tgt = vec![PAD_ID; tgt_steps * b];
        for (col, ex) in chosen.iter().enumerate() {
            for (t, &id) in ex.src.iter().enumerate() {
                src[t * b + col] = id;
            }
            let words = std::iter::once(BOS_ID)
                .chain(ex.tgt.iter().copied())
                .chain(std::iter::once(EOS_ID));
            for (t, id) in words.enumerate() {
                tgt[t * b + col] = id;
            }
        }
        Ok(Batch {
            src,
            tgt,
            src_lengths: chosen.iter().map(|e| e.src.len() as i32).collect(),
            lines: chosen.iter().map(|e| e.line).collect(),
            src_steps,
            tgt_steps,
        })
    }

    /// `B`: the number of sentences (the seed's loss normaliser).
    pub fn batch_size(&self) -> usize {
        self.src_lengths.len()
    }

    /// Target positions the loss counts: the words and `</s>` of every sentence (the non-padding
    /// entries of [`targets`](Batch::targets)).
    pub fn target_tokens(&self) -> usize {
        self.tgt.iter().filter(|&&id| id != PAD_ID).count() - self.batch_size()
    }

    /// The source `[S, B]` on `device`.
    pub fn src_tensor(&self, device: &Device) -> Result<IndexTensor> {
        IndexTensor::from_slice(&[self.src_steps, self.batch_size()], &self.src, device)
    }

    /// The source lengths `[B]` on `device`.
    pub fn src_lengths_tensor(&self, device: &Device) -> Result<IndexTensor> {
        IndexTensor::from_slice(&[self.batch_size()], &self.src_lengths, device)
    }

    /// The whole target `[T, B]` on `device`.
    pub fn tgt_tensor(&self, device: &Device) -> Result<IndexTensor> {
        IndexTensor::from_slice(&[self.tgt_steps, self.batch_size()], &self.tgt, device)
    }

    /// The decoder input `tgt[:-1]`, `[T-1, B]`, on `device`.
    pub fn decoder_input(&self, device: &Device) -> Result<IndexTensor> {
        let b = self.batch_size();
        let rows = self.tgt_steps - 1;
        IndexTensor::from_slice(&[rows, b], &self.tgt[..rows * b], device)
    }

    /// The loss targets `tgt[1:]`, `[T-1, B]`, on `device`.
    pub fn targets(&self, device: &Device) -> Result<IndexTensor> {
        let b = self.batch_size();
        IndexTensor::from_slice(&[self.tgt_steps - 1, b], &self.tgt[b..], device)
    }
}
