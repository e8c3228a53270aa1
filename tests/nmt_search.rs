//! Decoding (`nmt::search`, `models::nmt_lstm::decode`; SPEC-TRANSLATION §4.1–4.3): beam search
//! against a literal re-reading of `Beam.py` and a brute-force enumeration on hand-written toy
//! decoders, the seed's specific rules (first step row 0 only, −1e20 for finished rows, eosTop,
//! finished sorted by raw score, top beam when nothing finished), replace_unk, and the QD model's
//! incremental decoder against its teacher-forced forward.

use lit_engine::models::nmt_lstm::decode::QdStepDecoder;
use lit_engine::models::nmt_lstm::{QdNmt, QdNmtConfig};
use lit_engine::models::nmt_transformer::{NmtTransformer, NmtTransformerConfig};
use lit_engine::nmt::batches::{Batch, Example};
use lit_engine::nmt::search::{
    beam_search, greedy_search, target_words, translate_lines, Beam, Hypothesis, SearchOptions,
    StepDecoder, StepOut, TransformerStepDecoder, TranslateOptions,
};
use lit_engine::nmt::vocab::{Side, Vocab, VocabOptions, BOS_ID, EOS_ID, PAD_ID, UNK_ID};
use lit_engine::nn::ParamStore;
use lit_engine::rng::Rng;
use lit_engine::testing::{assert_close, kernel_devices};
use lit_engine::{Device, Graph, IndexTensor, Result, Tensor};
use std::cell::Cell;

const A: i32 = 4;
const B: i32 = 5;

/// How a toy decoder scores the next word.
enum Rule {
    /// `table[last token]` (not normalised: search only adds the numbers); attention peaks at
    /// source position `attn_pos`.
    Table {
        table: Vec<Vec<f32>>,
        attn_pos: usize,
    },
    /// Log-softmax of pseudo-random numbers hashed from (seed, sentence, whole prefix), times
    /// `sharp`; the attention is hashed too. Depending on the whole prefix makes a wrong state
    /// reordering visible.
    Hashed { seed: u64, sharp: f64 },
}

/// A hand-written [`StepDecoder`]: its state is each row's input prefix.
struct Toy {
    v: usize,
    rule: Rule,
    calls: Cell<usize>,
}

struct ToyMemory {
    sentence: Vec<usize>,
    lengths: Vec<usize>,
    width: usize,
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hashed(seed: u64, sentence: usize, prefix: &[i32], salt: u64, n: usize) -> Vec<f64> {
    let mut h = mix(seed ^ mix(sentence as u64 + 17 * salt));
    for &t in prefix {
        h = mix(h ^ t as u64);
    }
    (0..n)
        .map(|i| (mix(h ^ (i as u64 + 1)) >> 11) as f64 / (1u64 << 53) as f64)
        .collect()
}

fn log_softmax(x: &[f64]) -> Vec<f32> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    x.iter().map(|v| (v - lse) as f32).collect()
}

impl Toy {
    fn new(v: usize, rule: Rule) -> Toy {
        Toy {
            v,
            rule,
            calls: Cell::new(0),
        }
    }

    /// Next-word scores after `prefix` (which starts with the first input token).
    fn dist(&self, sentence: usize, prefix: &[i32]) -> Vec<f32> {
        match &self.rule {
            Rule::Table { table, .. } => table[*prefix.last().unwrap() as usize].clone(),
            Rule::Hashed { seed, sharp } => {
                let u = hashed(*seed, sentence, prefix, 0, self.v);
                log_softmax(&u.iter().map(|x| x * sharp).collect::<Vec<_>>())
            }
        }
    }

    /// Attention over `width` positions, 0 past the sentence's `len` words.
    fn attn(&self, sentence: usize, prefix: &[i32], len: usize, width: usize) -> Vec<f32> {
        let mut row = vec![0.0f32; width];
        match &self.rule {
            Rule::Table { attn_pos, .. } => {
                for (j, a) in row.iter_mut().enumerate().take(len) {
                    *a = if j == attn_pos % len {
                        0.7
                    } else {
                        0.3 / len as f32
                    };
                }
            }
            Rule::Hashed { seed, .. } => {
                let u = hashed(*seed, sentence, prefix, 1, len);
                let p = log_softmax(&u.iter().map(|x| 3.0 * x).collect::<Vec<_>>());
                for (a, l) in row.iter_mut().zip(p) {
                    *a = l.exp();
                }
            }
        }
        row
    }
}

impl StepDecoder for Toy {
    type Memory = ToyMemory;
    type State = Vec<Vec<i32>>;

    fn vocab_size(&self) -> usize {
        self.v
    }

    fn start(&mut self, batch: &Batch) -> Result<(ToyMemory, Vec<Vec<i32>>)> {
        let memory = ToyMemory {
            sentence: batch.lines.clone(),
            lengths: batch.src_lengths.iter().map(|&l| l as usize).collect(),
            width: batch.src_steps,
        };
        Ok((memory, vec![Vec::new(); batch.batch_size()]))
    }

    fn repeat_memory(&self, m: &ToyMemory, times: usize) -> Result<ToyMemory> {
        let rows: Vec<usize> = (0..m.sentence.len() * times)
            .map(|r| r % m.sentence.len())
            .collect();
        Ok(ToyMemory {
            sentence: rows.iter().map(|&r| m.sentence[r]).collect(),
            lengths: rows.iter().map(|&r| m.lengths[r]).collect(),
            width: m.width,
        })
    }

    fn select_state(&self, s: &Vec<Vec<i32>>, rows: &[usize]) -> Result<Vec<Vec<i32>>> {
        Ok(rows.iter().map(|&r| s[r].clone()).collect())
    }

    fn step(
        &mut self,
        m: &ToyMemory,
        s: &Vec<Vec<i32>>,
        tokens: &[i32],
    ) -> Result<StepOut<Vec<Vec<i32>>>> {
        self.calls.set(self.calls.get() + 1);
        let (mut logp, mut attn, mut state) = (Vec::new(), Vec::new(), Vec::new());
        for (r, &t) in tokens.iter().enumerate() {
            let mut prefix = s[r].clone();
            prefix.push(t);
            logp.extend(self.dist(m.sentence[r], &prefix));
            attn.extend(self.attn(m.sentence[r], &prefix, m.lengths[r], m.width));
            state.push(prefix);
        }
        Ok(StepOut { logp, attn, state })
    }
}

/// `Beam.py` + `Translator.translateBatch` read literally for one sentence, on whole prefixes
/// and a full stable sort of the candidates (no back-pointers, no state reordering). Also returns
/// the number of decoder steps it ran.
fn reference_beam(
    toy: &Toy,
    sentence: usize,
    len: usize,
    k: usize,
    max_len: usize,
) -> (Hypothesis, usize) {
    let mut prefixes: Vec<Vec<i32>> = (0..k)
        .map(|i| vec![if i == 0 { BOS_ID } else { PAD_ID }])
        .collect();
    let mut scores = vec![0.0f32; k];
    let mut attns: Vec<Vec<Vec<f32>>> = vec![Vec::new(); k];
    let mut finished: Vec<(f32, Vec<i32>, Vec<Vec<f32>>)> = Vec::new();
    let (mut eos_top, mut first) = (false, true);
    let mut steps = 0;
    for _ in 0..max_len {
        if eos_top && !finished.is_empty() {
            break;
        }
        let rows: Vec<Vec<f32>> = prefixes.iter().map(|p| toy.dist(sentence, p)).collect();
        let arows: Vec<Vec<f32>> = prefixes
            .iter()
            .map(|p| toy.attn(sentence, p, len, len))
            .collect();
        let mut cand: Vec<(f32, usize, usize)> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if first && i > 0 {
                break;
            }
            for (w, &l) in row.iter().enumerate() {
                let ended = !first && *prefixes[i].last().unwrap() == EOS_ID;
                let s = if first {
                    l
                } else if ended {
                    -1e20
                } else {
                    l + scores[i]
                };
                cand.push((s, i, w));
            }
        }
        cand.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        let chosen = &cand[..k];
        let new_prefixes: Vec<Vec<i32>> = chosen
            .iter()
            .map(|&(_, i, w)| [prefixes[i].clone(), vec![w as i32]].concat())
            .collect();
        attns = chosen
            .iter()
            .map(|&(_, i, _)| [attns[i].clone(), vec![arows[i].clone()]].concat())
            .collect();
        scores = chosen.iter().map(|c| c.0).collect();
        prefixes = new_prefixes;
        for i in 0..k {
            if *prefixes[i].last().unwrap() == EOS_ID {
                finished.push((scores[i], prefixes[i].clone(), attns[i].clone()));
            }
        }
        eos_top |= *prefixes[0].last().unwrap() == EOS_ID;
        first = false;
        steps += 1;
    }
    if finished.is_empty() {
        finished.push((scores[0], prefixes[0].clone(), attns[0].clone()));
    }
    finished.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
    let (score, prefix, attn) = finished.swap_remove(0);
    let cut = prefix[1..]
        .iter()
        .position(|&t| t == EOS_ID)
        .unwrap_or(prefix.len() - 1);
    let hyp = Hypothesis {
        tokens: prefix[1..1 + cut].to_vec(),
        attn: attn[..cut].to_vec(),
        score,
    };
    (hyp, steps)
}

/// The best `</s>`-terminated sequence of at most `max_len` words, by exhaustive enumeration.
fn brute_best(toy: &Toy, sentence: usize, max_len: usize) -> (f32, Vec<i32>) {
    fn go(
        toy: &Toy,
        s: usize,
        prefix: &mut Vec<i32>,
        score: f32,
        left: usize,
        best: &mut (f32, Vec<i32>),
    ) {
        let row = toy.dist(s, prefix);
        for (w, &l) in row.iter().enumerate() {
            let sc = score + l;
            if w as i32 == EOS_ID {
                if sc > best.0 {
                    *best = (sc, prefix[1..].to_vec());
                }
            } else if left > 1 {
                prefix.push(w as i32);
                go(toy, s, prefix, sc, left - 1, best);
                prefix.pop();
            }
        }
    }
    let mut best = (f32::NEG_INFINITY, Vec::new());
    go(toy, sentence, &mut vec![BOS_ID], 0.0, max_len, &mut best);
    best
}

/// A batch of sentences of the given source lengths (word ids irrelevant to toys).
fn batch_of(lengths: &[usize]) -> Batch {
    let examples: Vec<Example> = lengths
        .iter()
        .enumerate()
        .map(|(line, &n)| Example {
            src: (0..n).map(|i| 2 + (i + line) as i32 % 5).collect(),
            tgt: Vec::new(),
            line,
            first_word_chars: (0, 0),
        })
        .collect();
    Batch::new(&examples, &(0..lengths.len()).collect::<Vec<_>>()).unwrap()
}

fn options(beam: usize, max_len: usize) -> SearchOptions {
    SearchOptions {
        beam_size: beam,
        max_length: max_len,
        ..SearchOptions::default()
    }
}

/// A table with every entry `fill` except the given `(from, to, logp)`.
fn table(v: usize, fill: f32, entries: &[(i32, i32, f32)]) -> Vec<Vec<f32>> {
    let mut t = vec![vec![fill; v]; v];
    for &(from, to, l) in entries {
        t[from as usize][to as usize] = l;
    }
    t
}

#[test]
fn beam_search_matches_a_literal_reading_of_beam_py_on_random_toys() {
    let mut rng = Rng::new(11);
    let mut finished_seen = 0;
    for case in 0..40u64 {
        let v = 6 + (case % 3) as usize;
        let sharp = [1.0, 3.0, 6.0][(case % 3) as usize];
        let mut toy = Toy::new(v, Rule::Hashed { seed: case, sharp });
        let b = 1 + rng.below(3) as usize;
        let k = 1 + rng.below(5) as usize;
        let max_len = 1 + rng.below(8) as usize;
        let lengths: Vec<usize> = (0..b).map(|_| 1 + rng.below(5) as usize).collect();
        let batch = batch_of(&lengths);
        let got = beam_search(&mut toy, &batch, &options(k, max_len)).unwrap();
        assert_eq!(got.len(), b);
        let mut steps = 0;
        for (s, hyp) in got.iter().enumerate() {
            let (want, ran) = reference_beam(&toy, s, lengths[s], k, max_len);
            steps = steps.max(ran);
            assert_eq!(
                hyp, &want,
                "case {case}: sentence {s} of {b}, beam {k}, max {max_len}"
            );
            // Brute force: a finished answer scores at most the best finished sequence.
            let mut path = vec![BOS_ID];
            let mut score = 0.0f32;
            for &t in &hyp.tokens {
                score += toy.dist(s, &path)[t as usize];
                path.push(t);
            }
            let with_eos = score + toy.dist(s, &path)[EOS_ID as usize];
            if with_eos == hyp.score && hyp.tokens.len() < max_len {
                finished_seen += 1;
                let (best, _) = brute_best(&toy, s, max_len);
                assert!(
                    hyp.score <= best,
                    "case {case}: {} above brute force {best}",
                    hyp.score
                );
            } else {
                assert_eq!(score, hyp.score, "case {case}: unfinished answer's score");
            }
        }
        // The batch runs until its last sentence is done.
        assert_eq!(toy.calls.get(), steps, "case {case}: decoder steps");
    }
    assert!(
        finished_seen > 10,
        "too few finished answers ({finished_seen}) to test"
    );
}

#[test]
fn beam_of_one_is_greedy_search() {
    for case in 0..20u64 {
        let mut toy = Toy::new(
            7,
            Rule::Hashed {
                seed: 100 + case,
                sharp: 2.0,
            },
        );
        let batch = batch_of(&[3, 1, 4]);
        let beam = beam_search(&mut toy, &batch, &options(1, 12)).unwrap();
        let greedy = greedy_search(&mut toy, &batch, 12).unwrap();
        assert_eq!(beam, greedy, "case {case}");
    }
}

#[test]
fn a_finished_hypothesis_beats_the_live_top_beam_at_max_length() {
    // <s> → a −0.1 or </s> −2; a → a −0.1 or </s> −5: the live "a a a a a" (−0.5) tops the beam
    // to the end, yet the answer is the finished empty sentence (−2), the brute-force optimum.
    let t = table(
        6,
        -10.0,
        &[
            (BOS_ID, A, -0.1),
            (BOS_ID, EOS_ID, -2.0),
            (A, A, -0.1),
            (A, EOS_ID, -5.0),
        ],
    );
    let mut toy = Toy::new(
        6,
        Rule::Table {
            table: t,
            attn_pos: 0,
        },
    );
    let got = beam_search(&mut toy, &batch_of(&[2]), &options(2, 5)).unwrap();
    assert_eq!((got[0].tokens.clone(), got[0].score), (vec![], -2.0));
    assert_eq!(brute_best(&toy, 0, 5), (-2.0, vec![]));
    assert_eq!(toy.calls.get(), 5, "never eosTop: all max_length steps run");
    // Nothing finished: the top beam.
    let t = table(6, -10.0, &[(BOS_ID, A, -0.1), (A, A, -0.1)]);
    let mut toy = Toy::new(
        6,
        Rule::Table {
            table: t,
            attn_pos: 0,
        },
    );
    let got = beam_search(&mut toy, &batch_of(&[2]), &options(2, 4)).unwrap();
    assert_eq!(got[0].tokens, vec![A; 4]);
}

#[test]
fn finished_sorted_by_raw_score_and_eos_top_stops_the_search() {
    // Step 1: a (−0.5), </s> (−1, finished at index 1). Step 2: "a </s>" (−1.3) tops the beam →
    // done after 2 steps; the answer is the better finished "" (−1), not the eosTop "a".
    let t = table(
        6,
        -10.0,
        &[
            (BOS_ID, A, -0.5),
            (BOS_ID, EOS_ID, -1.0),
            (A, EOS_ID, -0.8),
            (A, B, -0.9),
            (B, EOS_ID, -0.01),
        ],
    );
    let mut toy = Toy::new(
        6,
        Rule::Table {
            table: t,
            attn_pos: 0,
        },
    );
    let got = beam_search(&mut toy, &batch_of(&[3]), &options(2, 10)).unwrap();
    assert_eq!((got[0].tokens.clone(), got[0].score), (vec![], -1.0));
    assert_eq!(toy.calls.get(), 2, "eosTop after step 2 ends the search");
    assert_eq!(brute_best(&toy, 0, 10), (-1.0, vec![]));
    let greedy = greedy_search(&mut toy, &batch_of(&[3]), 10).unwrap();
    assert_eq!(greedy[0].tokens, vec![A], "greedy takes a, then </s>");
    assert!((greedy[0].score + 1.3).abs() < 1e-6);
}

#[test]
fn first_step_uses_row_zero_only() {
    let mut beam = Beam::new(3, PAD_ID);
    let row0 = [-5.0, -5.0, -5.0, -5.0, -1.0, -2.0];
    let high = [0.0f32; 6];
    let attn = [1.0f32];
    beam.advance(&[&row0, &high, &high], &[&attn, &attn, &attn])
        .unwrap();
    assert_eq!(beam.origin(), [0, 0, 0]);
    assert_eq!(
        beam.current(),
        [A, B, UNK_ID],
        "top 3 of row 0, ties by lowest id"
    );
}

#[test]
fn rows_ending_in_eos_get_no_children() {
    let mut beam = Beam::new(2, PAD_ID);
    let attn = [1.0f32];
    let first = [-9.0, -9.0, -9.0, -1.0, -0.5, -9.0];
    beam.advance(&[&first, &first], &[&attn, &attn]).unwrap();
    assert_eq!(beam.current(), [A, EOS_ID]);
    assert!(!beam.done(), "</s> is not on top");
    // The finished row's words score 0 here; with the rule they are −1e20 and lose.
    let live = [-3.0f32; 6];
    let after_eos = [0.0f32; 6];
    beam.advance(&[&live, &after_eos], &[&attn, &attn]).unwrap();
    assert_eq!(beam.origin(), [0, 0]);
    assert_eq!(beam.best().score, -1.0, "the finished </s> is the answer");
}

#[test]
fn replace_unk_takes_the_most_attended_source_word() {
    let src_vocab = vocab(Side::Source, "a b c d e");
    let tgt_vocab = vocab(Side::Target, "u v w x y z");
    // <s> → <unk> → </s>; attention peaks at source position attn_pos.
    let t = table(10, -10.0, &[(BOS_ID, UNK_ID, -0.1), (UNK_ID, EOS_ID, -0.1)]);
    for (pos, replaced, want) in [
        (2, true, "c"),
        (0, true, "a"),
        (1, true, "<unk>"),
        (2, false, "<unk>"),
    ] {
        let mut toy = Toy::new(
            10,
            Rule::Table {
                table: t.clone(),
                attn_pos: pos,
            },
        );
        let opts = TranslateOptions {
            replace_unk: replaced,
            ..TranslateOptions::default()
        };
        let out = translate_lines(
            &mut toy,
            &src_vocab,
            &tgt_vocab,
            &lines(&["a qqq c"]),
            &opts,
        )
        .unwrap();
        assert_eq!(
            out,
            [want],
            "attention on position {pos}, replace_unk {replaced}"
        );
    }
    // Directly: only <unk> tokens are replaced, with the source vocabulary's string.
    let hyp = Hypothesis {
        tokens: vec![UNK_ID, 4, UNK_ID],
        attn: vec![
            vec![0.1, 0.8, 0.1],
            vec![0.9, 0.05, 0.05],
            vec![0.2, 0.2, 0.6],
        ],
        score: 0.0,
    };
    let src = src_vocab.encode(&["d".into(), "e".into(), "b".into()]);
    assert_eq!(
        target_words(&hyp, &src, &src_vocab, &tgt_vocab, true),
        ["e", "u", "b"]
    );
}

fn vocab(side: Side, words: &str) -> Vocab {
    let sentence: Vec<String> = words.split(' ').map(String::from).collect();
    Vocab::build(side, &[sentence], VocabOptions::default()).unwrap()
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn tiny_qd(dev: &Device, layers: usize, seed: u64) -> (QdNmt, ParamStore) {
    let cfg = QdNmtConfig {
        src_vocab: 7,
        tgt_vocab: 10,
        word_vec_size: 6,
        rnn_size: 5,
        layers,
        dropout: 0.3,
    };
    let mut store = ParamStore::new();
    let mut rng = Rng::new(seed);
    let model = QdNmt::new(&mut store, cfg, dev, &mut rng).unwrap();
    // Weights U(±0.5) (as §2.6's probe) so that every path, the input feed included, moves the
    // outputs well above the tolerances.
    for name in store.names() {
        let shape = store.get(&name).unwrap().value.shape().to_vec();
        let v = rng.uniform_vec(shape.iter().product(), -0.5, 0.5);
        store
            .set(&name, Tensor::from_vec(&shape, v, dev).unwrap())
            .unwrap();
    }
    (model, store)
}

#[test]
fn qd_incremental_decoding_equals_the_teacher_forced_forward() {
    let mut devices = vec![Device::Cpu];
    devices.extend(kernel_devices());
    for dev in devices {
        let (model, store) = tiny_qd(&dev, 2, 5);
        let src = IndexTensor::from_vec(&[3, 2], vec![4, 5, 6, 2, 3, 1], &dev).unwrap();
        let lengths = [3, 2];
        let steps = 4;
        let tgt: Vec<i32> = vec![2, 2, 4, 5, 6, 3, 3, 9];
        let tgt_in = IndexTensor::from_vec(&[steps, 2], tgt.clone(), &dev).unwrap();
        let mut g = Graph::no_grad(&dev);
        let out = model
            .forward(
                &mut g,
                &store,
                &src,
                &lengths,
                &tgt_in,
                false,
                &mut Rng::new(0),
            )
            .unwrap();
        let logp = g.value(out.logp).to_vec().unwrap();
        let attn = g.value(out.attn).to_vec().unwrap();
        let (memory, mut state) = model.encode(&mut g, &store, &src, &lengths).unwrap();
        for t in 0..steps {
            let tokens = IndexTensor::from_slice(&[2], &tgt[2 * t..2 * t + 2], &dev).unwrap();
            let mut gs = Graph::no_grad(&dev);
            let step = model
                .step(&mut gs, &store, &memory, &state, &tokens)
                .unwrap();
            let what = format!("{}: step {t}", dev.name());
            let got = step.logp.to_vec().unwrap();
            assert_close(
                &format!("{what} logp"),
                &got,
                &logp[t * 20..][..20],
                1e-6,
                1e-7,
            );
            let got = step.attn.to_vec().unwrap();
            assert_close(
                &format!("{what} attn"),
                &got,
                &attn[t * 6..][..6],
                1e-6,
                1e-7,
            );
            // Reordered rows step as the rows they came from.
            let (rows, swapped) = ([1, 0, 1], [tgt[2 * t + 1], tgt[2 * t], tgt[2 * t + 1]]);
            let m3 = memory.select(&rows).unwrap();
            let s3 = state.select(&rows).unwrap();
            let ids = IndexTensor::from_slice(&[3], &swapped, &dev).unwrap();
            let re = model.step(&mut gs, &store, &m3, &s3, &ids).unwrap();
            let re = re.logp.to_vec().unwrap();
            let full = step.logp.to_vec().unwrap();
            for (i, &r) in rows.iter().enumerate() {
                assert_close(
                    &format!("{what} row {i}"),
                    &re[i * 10..][..10],
                    &full[r * 10..][..10],
                    1e-5,
                    1e-6,
                );
            }
            state = step.state;
        }
    }
}

#[test]
fn qd_beam_of_one_is_greedy_and_beams_are_sentence_independent() {
    let dev = Device::Cpu;
    let (model, store) = tiny_qd(&dev, 1, 9);
    let mut dec = QdStepDecoder::new(&model, &store, &dev);
    let batch = batch_of(&[4, 2, 3]);
    let beam = beam_search(&mut dec, &batch, &options(1, 15)).unwrap();
    let greedy = greedy_search(&mut dec, &batch, 15).unwrap();
    assert_eq!(beam, greedy);
    // Sentences of equal length (no padding, which the seed's unmasked attention would see)
    // decoded together get the answers they get alone: beams of a batch do not mix.
    let same = batch_of(&[3, 3]);
    let together = beam_search(&mut dec, &same, &options(4, 15)).unwrap();
    for (s, hyp) in together.iter().enumerate() {
        let examples = vec![Example {
            src: same.src.iter().skip(s).step_by(2).copied().collect(),
            tgt: Vec::new(),
            line: 0,
            first_word_chars: (0, 0),
        }];
        let alone = beam_search(
            &mut dec,
            &Batch::new(&examples, &[0]).unwrap(),
            &options(4, 15),
        )
        .unwrap();
        assert_eq!(hyp.tokens, alone[0].tokens, "sentence {s}");
        assert!((hyp.score - alone[0].score).abs() < 1e-4, "sentence {s}");
    }
}

#[test]
fn translate_lines_gives_one_line_per_input_and_never_panics() {
    let dev = Device::Cpu;
    let (model, store) = tiny_qd(&dev, 2, 3);
    let mut dec = QdStepDecoder::new(&model, &store, &dev);
    let src_vocab = vocab(Side::Source, "a b c d e");
    let tgt_vocab = vocab(Side::Target, "u v w x y z");
    let input = lines(&["a b c", "", "   ", "zzz qqq", "e d c b a a", "b"]);
    let mut first: Option<Vec<String>> = None;
    for batch_size in [1, 4] {
        let opts = TranslateOptions {
            batch_size,
            ..TranslateOptions::default()
        };
        let out = translate_lines(&mut dec, &src_vocab, &tgt_vocab, &input, &opts).unwrap();
        assert_eq!(out.len(), input.len());
        assert_eq!((out[1].as_str(), out[2].as_str()), ("", ""));
        for line in &out {
            for w in line.split(' ').filter(|w| !w.is_empty()) {
                let known = tgt_vocab
                    .itos()
                    .iter()
                    .chain(src_vocab.itos())
                    .any(|x| x == w);
                assert!(known && w != "</s>", "word {w:?} in {line:?}");
            }
            assert!(line.split(' ').count() <= 100, "at most max_length words");
        }
        if batch_size == 1 {
            first = Some(out);
        }
    }
    // Batch 1 is each line on its own.
    let single = translate_lines(
        &mut dec,
        &src_vocab,
        &tgt_vocab,
        &input[4..5],
        &TranslateOptions::default(),
    )
    .unwrap();
    assert_eq!(single[0], first.unwrap()[4]);
    assert!(translate_lines(
        &mut dec,
        &src_vocab,
        &tgt_vocab,
        &[],
        &TranslateOptions::default()
    )
    .unwrap()
    .is_empty());
    // Bad options are errors, not panics.
    for (beam, max_length, batch_size) in [
        (0, 10, 1),
        (11, 10, 1),
        (2, 0, 1),
        (2, 100_000, 1),
        (2, 10, 0),
    ] {
        let opts = TranslateOptions {
            search: SearchOptions {
                beam_size: beam,
                max_length,
                ..SearchOptions::default()
            },
            batch_size,
            ..TranslateOptions::default()
        };
        assert!(translate_lines(&mut dec, &src_vocab, &tgt_vocab, &input, &opts).is_err());
    }
}

#[test]
fn transformer_beam_of_one_is_greedy_and_translate_lines_runs() {
    let dev = Device::Cpu;
    for act in ["relu", "lma"] {
        let cfg = NmtTransformerConfig::seed(7, 10, 8, 1, act);
        let mut store = ParamStore::new();
        let model = NmtTransformer::new(&mut store, cfg, &dev, &mut Rng::new(4)).unwrap();
        let opts = SearchOptions {
            filler: UNK_ID,
            ..options(1, 12)
        };
        let batch = batch_of(&[4, 2, 3]);
        if act == "relu" {
            // LMA's running statistics move with every call, so only relu repeats itself.
            let mut dec = TransformerStepDecoder::new(&model, &mut store, &dev);
            let beam = beam_search(&mut dec, &batch, &opts).unwrap();
            let greedy = greedy_search(&mut dec, &batch, 12).unwrap();
            assert_eq!(beam, greedy);
            // The Transformer masks <blank> keys, so a batch of unequal sentences under beam 4
            // gives each sentence its answer alone (the k·B+b prefix layout keeps rows apart).
            let beam4 = SearchOptions {
                beam_size: 4,
                ..opts
            };
            let together = beam_search(&mut dec, &batch, &beam4).unwrap();
            for (s, hyp) in together.iter().enumerate() {
                let examples = vec![Example {
                    src: batch
                        .src
                        .iter()
                        .skip(s)
                        .step_by(3)
                        .copied()
                        .filter(|&t| t != PAD_ID)
                        .collect(),
                    tgt: Vec::new(),
                    line: 0,
                    first_word_chars: (0, 0),
                }];
                let one = Batch::new(&examples, &[0]).unwrap();
                let alone = beam_search(&mut dec, &one, &beam4).unwrap();
                assert_eq!(hyp.tokens, alone[0].tokens, "sentence {s}");
                assert!((hyp.score - alone[0].score).abs() < 1e-4, "sentence {s}");
            }
        }
        let mut dec = TransformerStepDecoder::new(&model, &mut store, &dev);
        let src_vocab = vocab(Side::Source, "a b c d e");
        let tgt_vocab = vocab(Side::Target, "u v w x y z");
        let input = lines(&["a b c", "", "zzz", "e d c b a", "b"]);
        let topts = TranslateOptions {
            search: SearchOptions {
                filler: UNK_ID,
                max_length: 20,
                ..SearchOptions::default()
            },
            batch_size: 3,
            ..TranslateOptions::default()
        };
        let out = translate_lines(&mut dec, &src_vocab, &tgt_vocab, &input, &topts).unwrap();
        assert_eq!(out.len(), input.len(), "{act}");
        assert_eq!(out[1], "", "{act}");
        assert!(out.iter().all(|l| !l.contains("</s>")), "{act}: {out:?}");
    }
}
