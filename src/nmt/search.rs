//! Decoding for the translation models as the seeds translate (SPEC-TRANSLATION §4.1–4.3):
//! greedy search, OpenNMT-py 0.1's beam search (`Translator.py`, `Beam.py`) and `replace_unk`,
//! written against [`StepDecoder`] so that any model that steps one token at a time can use them.
//!
//! Beam layout: row `k·B + b` of a decoder call is hypothesis `k` of sentence `b` (the seed's
//! layout). Every [`Beam`] follows `Beam.py` literally: at the first step only row 0 competes; later
//! a row whose last token is `</s>` scores exactly −1e20 for every word; `topk(beam)` over the
//! flattened `[beam·V]` candidates (ties: lowest flat index, where PyTorch leaves them to the
//! implementation); each new hypothesis ending in `</s>` joins `finished` with its raw cumulative
//! log-probability; `eosTop` when hypothesis 0 ends in `</s>`; a beam is done once `eosTop` and
//! `finished` is not empty, and the search stops when every beam is done (done beams keep
//! advancing meanwhile, as in the seed) or after `max_length` steps. The answer is the best of
//! `finished` by raw score (no length penalty, stable sort), or hypothesis 0 when none finished.
//!
//! Decoders: the QD LSTM (`models::nmt_lstm::decode::QdStepDecoder`, carried `(h, c, feed)`) and
//! the LMA Transformer ([`TransformerStepDecoder`], whole prefix recomputed each step, filler
//! `<unk>`). [`translate_lines`] cuts consecutive lines into batches (QD 1, LMA 10), sorts each by
//! descending length and translates it; empty lines give empty lines.

use super::batches::{Batch, Example};
use super::data::tokenize;
use super::vocab::{Vocab, BOS_ID, EOS_ID, PAD_ID, UNK_ID};
use crate::autograd::Graph;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::limits::MAX_BATCH;
use crate::models::nmt_transformer::{NmtTransformer, TransformerMemory};
use crate::nn::ParamStore;
use crate::tensor::IndexTensor;
use std::cmp::{Ordering, Reverse};

/// Most decoding steps a search may be asked for.
pub const MAX_DECODE_STEPS: usize = 1000;
/// Widest beam a search may be asked for.
pub const MAX_BEAM: usize = 256;
/// The score `Beam.py` gives every child of a hypothesis that already ended in `</s>`.
pub const FINISHED_ROW_SCORE: f32 = -1e20;

/// One decoder call's results, on the host.
#[derive(Clone, Debug)]
pub struct StepOut<S> {
    /// Log-probabilities `[N, V]`, row-major.
    pub logp: Vec<f32>,
    /// Attention over the (padded) source `[N, S]`, row-major.
    pub attn: Vec<f32>,
    /// The decoder state after the step.
    pub state: S,
}

/// A model that decodes one token at a time; what the searches are written against.
pub trait StepDecoder {
    /// The encoded source, per row.
    type Memory;
    /// The carried decoder state, per row.
    type State;
    /// V: the target vocabulary size.
    fn vocab_size(&self) -> usize;
    /// Encode `batch`'s source: memory and initial state with one row per sentence (`&mut`:
    /// LMA's running statistics move at inference, as the seed's do).
    fn start(&mut self, batch: &Batch) -> Result<(Self::Memory, Self::State)>;
    /// The memory tiled `times` over the batch: row `k·B + b` is row `b` (the beam layout).
    fn repeat_memory(&self, memory: &Self::Memory, times: usize) -> Result<Self::Memory>;
    /// The state of rows `rows` (row `i` of the result is row `rows[i]`).
    fn select_state(&self, state: &Self::State, rows: &[usize]) -> Result<Self::State>;
    /// One step: `tokens [N]` is each row's last token.
    fn step(
        &mut self,
        memory: &Self::Memory,
        state: &Self::State,
        tokens: &[i32],
    ) -> Result<StepOut<Self::State>>;
}

/// A decoded sentence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hypothesis {
    /// Target ids, cut before the first `</s>`.
    pub tokens: Vec<i32>,
    /// Per token, its attention over the real source positions (for `replace_unk`).
    pub attn: Vec<Vec<f32>>,
    /// Raw cumulative log-probability (including `</s>` when it finished).
    pub score: f32,
}

/// Beam search options (the seed's: beam 5, n_best 1, max 100 steps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchOptions {
    /// Hypotheses per sentence.
    pub beam_size: usize,
    /// Most decoder steps.
    pub max_length: usize,
    /// The token of hypotheses 1.. before the first step: `<blank>` (QD) or `<unk>` (LMA).
    pub filler: i32,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            beam_size: 5,
            max_length: 100,
            filler: PAD_ID,
        }
    }
}

impl SearchOptions {
    fn check(&self, vocab: usize, batch: usize) -> Result<()> {
        let err = |msg: String| Err(Error::op_arg("beam search", msg));
        if self.beam_size == 0 || self.beam_size > MAX_BEAM.min(vocab) {
            return err(format!(
                "beam {} must be 1..={} (and at most the vocabulary, {vocab})",
                self.beam_size, MAX_BEAM
            ));
        }
        check_steps(self.max_length)?;
        if batch == 0 || batch.saturating_mul(self.beam_size) > MAX_BATCH {
            return err(format!(
                "{batch} sentences × beam {} must be 1..={MAX_BATCH} rows",
                self.beam_size
            ));
        }
        if usize::try_from(self.filler).map_or(true, |f| f >= vocab) {
            return err(format!(
                "filler token {} outside the vocabulary",
                self.filler
            ));
        }
        Ok(())
    }
}

fn check_steps(max_length: usize) -> Result<()> {
    if max_length == 0 || max_length > MAX_DECODE_STEPS {
        return Err(Error::op_arg(
            "search",
            format!("max length {max_length} must be 1..={MAX_DECODE_STEPS}"),
        ));
    }
    Ok(())
}

/// NaN ranks below everything (a broken model must not win by accident).
fn rank(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else {
        v
    }
}

/// The index of the first maximum of `row`.
pub fn argmax_first(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if rank(v) > rank(row[best]) {
            best = i;
        }
    }
    best
}

/// The `k` largest of `values` as `(value, index)`, sorted by value descending then index
/// ascending.
fn top_k(values: impl Iterator<Item = f32>, k: usize) -> Vec<(f32, usize)> {
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (i, v) in values.enumerate() {
        if top.len() == k && rank(v) <= rank(top[k - 1].0) {
            continue;
        }
        let at = top.partition_point(|&(t, _)| rank(t) >= rank(v));
        top.insert(at, (v, i));
        top.truncate(k);
    }
    top
}

/// One sentence's beam, `Beam.py` of OpenNMT-py 0.1 with n_best 1 and no global scorer.
#[derive(Clone, Debug)]
pub struct Beam {
    size: usize,
    scores: Vec<f32>,
    prev_ks: Vec<Vec<usize>>,
    next_ys: Vec<Vec<i32>>,
    attn: Vec<Vec<Vec<f32>>>,
    finished: Vec<(f32, usize, usize)>,
    eos_top: bool,
}

impl Beam {
    /// `size` hypotheses: `<s>` then `filler` tokens, scores 0.
    pub fn new(size: usize, filler: i32) -> Beam {
        let mut first = vec![filler; size];
        first[0] = BOS_ID;
        Beam {
            size,
            scores: vec![0.0; size],
            prev_ks: Vec::new(),
            next_ys: vec![first],
            attn: Vec::new(),
            finished: Vec::new(),
            eos_top: false,
        }
    }

    /// The last token of every hypothesis (the next decoder input).
    pub fn current(&self) -> &[i32] {
        self.next_ys.last().map_or(&[], Vec::as_slice)
    }

    /// The parent of every hypothesis after the last advance.
    pub fn origin(&self) -> &[usize] {
        self.prev_ks.last().map_or(&[], Vec::as_slice)
    }

    /// `eosTop` and at least one finished hypothesis.
    pub fn done(&self) -> bool {
        self.eos_top && !self.finished.is_empty()
    }

    /// One step: `logp[k]` (V entries) and `attn[k]` (real source positions) of hypothesis `k`.
    pub fn advance(&mut self, logp: &[&[f32]], attn: &[&[f32]]) -> Result<()> {
        let v = logp.first().map_or(0, |r| r.len());
        if logp.len() != self.size || attn.len() != self.size || logp.iter().any(|r| r.len() != v) {
            return Err(Error::op_arg(
                "Beam::advance",
                format!("{} rows for a beam of {}", logp.len(), self.size),
            ));
        }
        let top = if self.prev_ks.is_empty() {
            top_k(logp[0].iter().copied(), self.size)
        } else {
            let last = self.current().to_vec();
            let scores = &self.scores;
            let cand = logp.iter().enumerate().flat_map(|(k, row)| {
                let ended = last[k] == EOS_ID;
                row.iter().map(move |&l| {
                    if ended {
                        FINISHED_ROW_SCORE
                    } else {
                        l + scores[k]
                    }
                })
            });
            top_k(cand, self.size)
        };
        if top.len() != self.size {
            return Err(Error::op_arg(
                "Beam::advance",
                format!("{} candidates for a beam of {}", top.len(), self.size),
            ));
        }
        let prev: Vec<usize> = top.iter().map(|&(_, id)| id / v).collect();
        let ys: Vec<i32> = top.iter().map(|&(_, id)| (id % v) as i32).collect();
        self.scores = top.iter().map(|&(s, _)| s).collect();
        self.attn
            .push(prev.iter().map(|&p| attn[p].to_vec()).collect());
        self.prev_ks.push(prev);
        let t = self.prev_ks.len();
        for (k, &y) in ys.iter().enumerate() {
            if y == EOS_ID {
                self.finished.push((self.scores[k], t, k));
            }
        }
        if ys[0] == EOS_ID {
            self.eos_top = true;
        }
        self.next_ys.push(ys);
        Ok(())
    }

    /// The best finished hypothesis by raw score (hypothesis 0 if none finished), cut before its
    /// first `</s>`.
    pub fn best(&self) -> Hypothesis {
        let mut finished = self.finished.clone();
        if finished.is_empty() {
            finished.push((self.scores[0], self.prev_ks.len(), 0));
        }
        // Python's stable sort on −score.
        finished.sort_by(|a, b| rank(b.0).partial_cmp(&rank(a.0)).unwrap_or(Ordering::Equal));
        let (score, t, mut k) = finished[0];
        let (mut tokens, mut attn) = (Vec::with_capacity(t), Vec::with_capacity(t));
        for j in (0..t).rev() {
            tokens.push(self.next_ys[j + 1][k]);
            attn.push(self.attn[j][k].clone());
            k = self.prev_ks[j][k];
        }
        tokens.reverse();
        attn.reverse();
        if let Some(end) = tokens.iter().position(|&y| y == EOS_ID) {
            tokens.truncate(end);
            attn.truncate(end);
        }
        Hypothesis {
            tokens,
            attn,
            score,
        }
    }
}

fn lengths(batch: &Batch) -> Vec<usize> {
    batch.src_lengths.iter().map(|&l| l as usize).collect()
}

/// Checks a decoder call's sizes; returns S, the attention width.
fn check_out<S>(out: &StepOut<S>, rows: usize, vocab: usize, longest: usize) -> Result<usize> {
    let s = out.attn.len() / rows.max(1);
    if out.logp.len() != rows * vocab || out.attn.len() != rows * s || s < longest {
        return Err(Error::Shape(format!(
            "decoder step: {} log-probs and {} attention weights for {rows} rows, V {vocab}",
            out.logp.len(),
            out.attn.len()
        )));
    }
    Ok(s)
}

/// Beam search over `batch` with the seed's rules (module docs); one hypothesis per sentence.
pub fn beam_search<D: StepDecoder>(
    dec: &mut D,
    batch: &Batch,
    options: &SearchOptions,
) -> Result<Vec<Hypothesis>> {
    let (b, k, v) = (batch.batch_size(), options.beam_size, dec.vocab_size());
    options.check(v, b)?;
    let lens = lengths(batch);
    let longest = lens.iter().copied().max().unwrap_or(0);
    let (memory, state) = dec.start(batch)?;
    let rows: Vec<usize> = (0..k * b).map(|r| r % b).collect();
    let memory = dec.repeat_memory(&memory, k)?;
    let mut state = dec.select_state(&state, &rows)?;
    let mut beams: Vec<Beam> = (0..b).map(|_| Beam::new(k, options.filler)).collect();
    for _ in 0..options.max_length {
        if beams.iter().all(Beam::done) {
            break;
        }
        let tokens: Vec<i32> = (0..k * b).map(|r| beams[r % b].current()[r / b]).collect();
        let out = dec.step(&memory, &state, &tokens)?;
        let s = check_out(&out, k * b, v, longest)?;
        let mut parents = vec![0; k * b];
        for (j, beam) in beams.iter_mut().enumerate() {
            let logp: Vec<&[f32]> = (0..k).map(|i| &out.logp[(i * b + j) * v..][..v]).collect();
            let attn: Vec<&[f32]> = (0..k)
                .map(|i| &out.attn[(i * b + j) * s..][..lens[j]])
                .collect();
            beam.advance(&logp, &attn)?;
            for (i, &p) in beam.origin().iter().enumerate() {
                parents[i * b + j] = p * b + j;
            }
        }
        state = dec.select_state(&out.state, &parents)?;
    }
    Ok(beams.iter().map(Beam::best).collect())
}

/// Greedy search: the first most likely word each step until `</s>` or `max_length` steps.
pub fn greedy_search<D: StepDecoder>(
    dec: &mut D,
    batch: &Batch,
    max_length: usize,
) -> Result<Vec<Hypothesis>> {
    check_steps(max_length)?;
    let (b, v) = (batch.batch_size(), dec.vocab_size());
    let lens = lengths(batch);
    let longest = lens.iter().copied().max().unwrap_or(0);
    let (memory, mut state) = dec.start(batch)?;
    let mut hyps = vec![Hypothesis::default(); b];
    let mut running = vec![true; b];
    let mut tokens = vec![BOS_ID; b];
    for _ in 0..max_length {
        if !running.iter().any(|&r| r) {
            break;
        }
        let out = dec.step(&memory, &state, &tokens)?;
        let s = check_out(&out, b, v, longest)?;
        for r in 0..b {
            if !running[r] {
                continue;
            }
            let row = &out.logp[r * v..][..v];
            let w = argmax_first(row);
            hyps[r].score += row[w];
            tokens[r] = w as i32;
            if w as i32 == EOS_ID {
                running[r] = false;
            } else {
                hyps[r].tokens.push(w as i32);
                hyps[r].attn.push(out.attn[r * s..][..lens[r]].to_vec());
            }
        }
        state = out.state;
    }
    Ok(hyps)
}

/// The target words of `hyp`; with `replace_unk`, each `<unk>` becomes the source-vocabulary
/// string of the source word it attends to most (first maximum), so an OOV source word gives
/// `<unk>` again (§4.3).
pub fn target_words(
    hyp: &Hypothesis,
    src: &[i32],
    src_vocab: &Vocab,
    tgt_vocab: &Vocab,
    replace_unk: bool,
) -> Vec<String> {
    let word = |v: &Vocab, id: i32| v.word(id).unwrap_or(super::vocab::UNK).to_string();
    hyp.tokens
        .iter()
        .enumerate()
        .map(|(i, &y)| match hyp.attn.get(i) {
            Some(row) if replace_unk && y == UNK_ID && !row.is_empty() => {
                let j = argmax_first(row);
                word(src_vocab, src.get(j).copied().unwrap_or(UNK_ID))
            }
            _ => word(tgt_vocab, y),
        })
        .collect()
}

/// How [`translate_lines`] decodes (defaults: the QD seed's, §4.1–4.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TranslateOptions {
    /// Beam search options (beam 1 picks as greedy search does).
    pub search: SearchOptions,
    /// Sentences decoded together (QD 1, LMA 10); consecutive lines, each batch sorted by
    /// descending length as the seed's test iterator does.
    pub batch_size: usize,
    /// Replace `<unk>` outputs by the most attended source word.
    pub replace_unk: bool,
    /// Lowercase the source words before looking them up.
    pub lowercase: bool,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            search: SearchOptions::default(),
            batch_size: 1,
            replace_unk: true,
            lowercase: false,
        }
    }
}

/// Translate `lines` (whitespace-tokenised source sentences): one output line per input, tokens
/// joined by single spaces. An empty line translates to an empty line without a decoder call.
pub fn translate_lines<D: StepDecoder>(
    dec: &mut D,
    src_vocab: &Vocab,
    tgt_vocab: &Vocab,
    lines: &[String],
    options: &TranslateOptions,
) -> Result<Vec<String>> {
    if options.batch_size == 0 || options.batch_size > MAX_BATCH {
        return Err(Error::op_arg(
            "translate_lines",
            format!("batch size {} must be 1..={MAX_BATCH}", options.batch_size),
        ));
    }
    options.search.check(dec.vocab_size(), options.batch_size)?;
    let examples: Vec<Example> = lines
        .iter()
        .enumerate()
        .map(|(line, text)| Example {
            src: src_vocab.encode(&tokenize(text, options.lowercase)),
            tgt: Vec::new(),
            line,
            first_word_chars: (0, 0),
        })
        .collect();
    let mut out = vec![String::new(); lines.len()];
    let all: Vec<usize> = (0..lines.len()).collect();
    for chunk in all.chunks(options.batch_size) {
        let mut ids: Vec<usize> = chunk
            .iter()
            .copied()
            .filter(|&i| !examples[i].src.is_empty())
            .collect();
        if ids.is_empty() {
            continue;
        }
        ids.sort_by_key(|&i| Reverse(examples[i].src.len()));
        let batch = Batch::new(&examples, &ids)?;
        let hyps = beam_search(dec, &batch, &options.search)?;
        for (&i, hyp) in ids.iter().zip(&hyps) {
            let src = &examples[i].src;
            out[i] = target_words(hyp, src, src_vocab, tgt_vocab, options.replace_unk).join(" ");
        }
    }
    Ok(out)
}

/// The LMA Transformer as a [`StepDecoder`]: its state is every row's whole input prefix, which
/// each step decodes again (the seed keeps `previous_input` and has no cache, §5.7), so LMA's
/// statistics and eval-time running update see what the seed's see. Use [`UNK_ID`] as the
/// beam filler for it (the LMA `Beam.py`).
pub struct TransformerStepDecoder<'a> {
    model: &'a NmtTransformer,
    store: &'a mut ParamStore,
    device: Device,
}

impl<'a> TransformerStepDecoder<'a> {
    /// Decode with `model` whose tensors (and LMA running statistics) are in `store` on `device`.
    pub fn new(model: &'a NmtTransformer, store: &'a mut ParamStore, device: &Device) -> Self {
        TransformerStepDecoder {
            model,
            store,
            device: device.clone(),
        }
    }
}

impl StepDecoder for TransformerStepDecoder<'_> {
    type Memory = TransformerMemory;
    type State = Vec<Vec<i32>>;

    fn vocab_size(&self) -> usize {
        self.model.config.tgt_vocab
    }

    fn start(&mut self, batch: &Batch) -> Result<(TransformerMemory, Vec<Vec<i32>>)> {
        let mut g = Graph::no_grad(&self.device);
        let src = batch.src_tensor(&self.device)?;
        let memory = self.model.encode(&mut g, self.store, &src)?;
        Ok((memory, vec![Vec::new(); batch.batch_size()]))
    }

    fn repeat_memory(&self, memory: &TransformerMemory, times: usize) -> Result<TransformerMemory> {
        memory.repeat(times)
    }

    fn select_state(&self, state: &Vec<Vec<i32>>, rows: &[usize]) -> Result<Vec<Vec<i32>>> {
        rows.iter()
            .map(|&r| {
                state.get(r).cloned().ok_or_else(|| {
                    Error::op_arg("select_state", format!("row {r} of {}", state.len()))
                })
            })
            .collect()
    }

    fn step(
        &mut self,
        memory: &TransformerMemory,
        state: &Vec<Vec<i32>>,
        tokens: &[i32],
    ) -> Result<StepOut<Vec<Vec<i32>>>> {
        let n = tokens.len();
        let p = state.first().map_or(0, Vec::len) + 1;
        if state.len() != n || state.iter().any(|s| s.len() + 1 != p) {
            return Err(Error::Shape(format!(
                "transformer step: {n} tokens for {} prefixes of unequal or other lengths",
                state.len()
            )));
        }
        let mut ids = vec![PAD_ID; p * n];
        let mut next = Vec::with_capacity(n);
        for (b, (prefix, &t)) in state.iter().zip(tokens).enumerate() {
            let mut prefix = prefix.clone();
            prefix.push(t);
            for (pos, &id) in prefix.iter().enumerate() {
                ids[pos * n + b] = id;
            }
            next.push(prefix);
        }
        let prefix = IndexTensor::from_vec(&[p, n], ids, &self.device)?;
        let mut g = Graph::no_grad(&self.device);
        let (logp, attn) = self
            .model
            .decode_prefix(&mut g, self.store, memory, &prefix)?;
        Ok(StepOut {
            logp: g.value(logp).to_vec()?,
            attn: g.value(attn).to_vec()?,
            state: next,
        })
    }
}
