//! The translation data pipeline (src/nmt/{data,vocab,batches}.rs): reading and its bounds,
//! length filtering, torchtext 0.1.1 vocabularies, batch tensors and the iterators' budgets and
//! order; and the real Bible corpus of ../shared/data (LIT_SHARED_DATA) where it is present.

mod nmt_support;

use lit_engine::error::Error;
use lit_engine::limits::{MAX_CORPUS_FILE_BYTES, MAX_SENTENCE_BYTES, MAX_VOCAB_FILE_BYTES};
use lit_engine::nmt::batches::{
    eval_batches, numericalize, train_batches, Batch, BatchSize, Example,
};
use lit_engine::nmt::data::{read_lines, tokenize, LengthFilter, ParallelCorpus, Sentence};
use lit_engine::nmt::vocab::{Side, Vocab, VocabOptions, BOS_ID, EOS_ID, PAD_ID, UNK_ID};
use lit_engine::rng::Rng;
use lit_engine::Device;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lit-nmt-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sentences(lines: &[&str]) -> Vec<Sentence> {
    lines.iter().map(|l| tokenize(l, false)).collect()
}

fn data_error(result: Result<impl std::fmt::Debug, Error>, needle: &str) {
    match result {
        Err(e @ Error::Data { .. }) => {
            assert!(e.to_string().contains(needle), "{e} lacks {needle:?}")
        }
        other => panic!("expected a data error with {needle:?}, got {other:?}"),
    }
}

// --- reading ---

#[test]
fn invalid_utf8_is_a_data_error_naming_the_line() {
    let dir = temp_dir("utf8");
    let path = dir.join("train.es");
    std::fs::write(&path, b"buenos dias\nhola \xff\xfe mundo\n").unwrap();
    data_error(
        read_lines(&path),
        "line 2 is not UTF-8 (invalid byte at column 6)",
    );
}

#[test]
fn an_over_long_line_is_a_data_error() {
    let dir = temp_dir("long");
    let path = dir.join("train.en");
    let mut text = b"short\n".to_vec();
    text.extend(std::iter::repeat_n(b'a', MAX_SENTENCE_BYTES + 1));
    std::fs::write(&path, &text).unwrap();
    data_error(read_lines(&path), "line 2 is");
    // exactly the limit is a sentence
    text.truncate(6 + MAX_SENTENCE_BYTES);
    std::fs::write(&path, &text).unwrap();
    assert_eq!(read_lines(&path).unwrap().len(), 2);
}

#[test]
fn a_huge_file_is_refused_before_reading() {
    let dir = temp_dir("huge");
    let path = dir.join("train.es");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(MAX_CORPUS_FILE_BYTES + 1).unwrap(); // sparse: nothing is written
    data_error(
        read_lines(&path),
        &format!("a corpus file is {} bytes", MAX_CORPUS_FILE_BYTES + 1),
    );
}

#[test]
fn sides_of_different_lengths_are_a_data_error() {
    let dir = temp_dir("pair");
    std::fs::write(dir.join("a.es"), "uno\ndos\n").unwrap();
    std::fs::write(dir.join("a.en"), "one\n").unwrap();
    data_error(
        ParallelCorpus::read(&dir.join("a.es"), &dir.join("a.en"), false),
        "the source has 2 lines and the target 1",
    );
}

#[test]
fn reading_tokenises_and_the_filter_keeps_the_seed_lengths() {
    let dir = temp_dir("filter");
    std::fs::write(dir.join("t.es"), "Hola  Mundo\n\nuno dos tres\na b\nx\n").unwrap();
    std::fs::write(dir.join("t.en"), "Hello world\nE\none two\nA\n\n").unwrap();
    let corpus = ParallelCorpus::read(&dir.join("t.es"), &dir.join("t.en"), false).unwrap();
    assert_eq!(corpus.len(), 5);
    assert_eq!(corpus.src[0], ["Hola", "Mundo"]);
    let lower = ParallelCorpus::read(&dir.join("t.es"), &dir.join("t.en"), true).unwrap();
    assert_eq!(lower.src[0], ["hola", "mundo"]);
    // empty sides go, and so do sides above the maximum (here 2 source, 1 target words)
    let kept = corpus.filter_lengths(LengthFilter {
        max_src: 2,
        max_tgt: 1,
    });
    assert_eq!(kept.lines, [3]);
    assert_eq!(
        (kept.src[0].clone(), kept.tgt[0].clone()),
        (vec!["a".to_string(), "b".into()], vec!["A".to_string()])
    );
    assert!(LengthFilter::default().keeps(50, 50) && !LengthFilter::default().keeps(51, 1));
}

// --- vocabularies ---

#[test]
fn vocab_specials_then_count_then_code_point_order() {
    let corpus = sentences(&["b a é B <blank> a", "b c a <unk> z", "é c"]);
    let src = Vocab::build(Side::Source, &corpus, VocabOptions::default()).unwrap();
    // a×3, b×2, c×2, é×2, B×1, z×1; ties in code point order ("B" < "b" < "c" < "é" < "z");
    // the corpus's "<blank>" and "<unk>" are not ranked again.
    assert_eq!(
        src.itos(),
        ["<unk>", "<blank>", "a", "b", "c", "é", "B", "z"]
    );
    let tgt = Vocab::build(Side::Target, &corpus, VocabOptions::default()).unwrap();
    assert_eq!(&tgt.itos()[..5], ["<unk>", "<blank>", "<s>", "</s>", "a"]);
    assert_eq!(
        (tgt.id("<s>"), tgt.id("</s>"), tgt.id("<blank>")),
        (BOS_ID, EOS_ID, PAD_ID)
    );
    assert_eq!(tgt.id("never seen"), UNK_ID);
    assert_eq!(tgt.word(4), Some("a"));
    assert_eq!(tgt.word(-1), None);
}

#[test]
fn vocab_max_size_and_min_freq() {
    let corpus = sentences(&["a a a b b c d", "a b c e"]);
    let top2 = VocabOptions {
        max_size: 2,
        min_freq: 0,
    };
    assert_eq!(
        Vocab::build(Side::Source, &corpus, top2).unwrap().itos(),
        ["<unk>", "<blank>", "a", "b"]
    );
    let tgt = Vocab::build(Side::Target, &corpus, top2).unwrap();
    assert_eq!(tgt.len(), 6, "max_size counts words, not specials");
    let twice = VocabOptions {
        max_size: 50_000,
        min_freq: 2,
    };
    assert_eq!(
        Vocab::build(Side::Source, &corpus, twice).unwrap().itos(),
        ["<unk>", "<blank>", "a", "b", "c"]
    );
    let once = VocabOptions {
        max_size: 50_000,
        min_freq: 1,
    };
    assert_eq!(Vocab::build(Side::Source, &corpus, once).unwrap().len(), 7);
    let too_big = VocabOptions {
        max_size: usize::MAX,
        min_freq: 0,
    };
    assert!(matches!(
        Vocab::build(Side::Source, &corpus, too_big),
        Err(Error::Config(_))
    ));
}

#[test]
fn vocab_saves_and_loads_and_refuses_bad_files() {
    let dir = temp_dir("vocab");
    let corpus = sentences(&["the cat", "the dog ."]);
    let vocab = Vocab::build(Side::Target, &corpus, VocabOptions::default()).unwrap();
    let path = dir.join("vocab.tgt.json");
    vocab.save(&path).unwrap();
    assert_eq!(Vocab::load(&path).unwrap(), vocab);
    let bad = |text: &str, needle: &str| {
        std::fs::write(&path, text).unwrap();
        data_error(Vocab::load(&path), needle);
    };
    let format = "lit-engine translation vocabulary v1";
    bad("not json", "not a vocabulary file");
    bad(
        r#"{"format":"other","side":"source","itos":["<unk>","<blank>"]}"#,
        "format `other`",
    );
    bad(
        &format!(r#"{{"format":"{format}","side":"target","itos":["<unk>","<blank>","x"]}}"#),
        "must start with",
    );
    bad(
        &format!(r#"{{"format":"{format}","side":"source","itos":["<unk>","<blank>","x","x"]}}"#),
        "twice",
    );
    bad(
        &format!(r#"{{"format":"{format}","side":"source","itos":["<unk>","<blank>","a b"]}}"#),
        "white space",
    );
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(MAX_VOCAB_FILE_BYTES + 1).unwrap();
    data_error(
        Vocab::load(&path),
        &format!("a vocabulary file is {} bytes", MAX_VOCAB_FILE_BYTES + 1),
    );
}

// --- batches ---

/// Pairs with source lengths `src_lens` and target lengths `tgt_lens` (word ids 4, 5, …).
fn examples(src_lens: &[usize], tgt_lens: &[usize]) -> Vec<Example> {
    src_lens
        .iter()
        .zip(tgt_lens)
        .enumerate()
        .map(|(line, (&s, &t))| Example {
            src: (0..s as i32).map(|i| i + 4).collect(),
            tgt: (0..t as i32).map(|i| i + 4).collect(),
            line,
            first_word_chars: (s.min(9), t.min(9)),
        })
        .collect()
}

#[test]
fn batch_tensors_are_time_major_padded_and_framed() {
    let corpus = ParallelCorpus::from_lines(
        Path::new("mem"),
        &["a b c".into(), "b".into(), "a a".into()],
        &["x y".into(), "y y y".into(), "z".into()],
        false,
    )
    .unwrap();
    let src_vocab = Vocab::build(Side::Source, &corpus.src, VocabOptions::default()).unwrap();
    let tgt_vocab = Vocab::build(Side::Target, &corpus.tgt, VocabOptions::default()).unwrap();
    assert!(
        numericalize(&corpus, &tgt_vocab, &tgt_vocab).is_err(),
        "sides are checked"
    );
    let ex = numericalize(&corpus, &src_vocab, &tgt_vocab).unwrap();
    let batches = eval_batches(&ex, BatchSize::Sentences(64), false).unwrap();
    assert_eq!(
        batches,
        [vec![0, 2, 1]],
        "one batch, descending source length"
    );
    let batch = Batch::new(&ex, &batches[0]).unwrap();
    let (a, b, c) = (src_vocab.id("a"), src_vocab.id("b"), src_vocab.id("c"));
    assert_eq!((batch.src_steps, batch.tgt_steps), (3, 5));
    #[rustfmt::skip]
    assert_eq!(batch.src, [a, a, b,
                           b, a, PAD_ID,
                           c, PAD_ID, PAD_ID]);
    let (x, y, z) = (tgt_vocab.id("x"), tgt_vocab.id("y"), tgt_vocab.id("z"));
    #[rustfmt::skip]
    assert_eq!(batch.tgt, [BOS_ID, BOS_ID, BOS_ID,
                           x, z, y,
                           y, EOS_ID, y,
                           EOS_ID, PAD_ID, y,
                           PAD_ID, PAD_ID, EOS_ID]);
    assert_eq!(batch.src_lengths, [3, 2, 1]);
    assert_eq!(batch.lines, [0, 2, 1]);
    assert_eq!(batch.target_tokens(), 3 + 2 + 4);
    let dev = Device::cpu();
    let src = batch.src_tensor(&dev).unwrap();
    assert_eq!(src.shape(), [3, 3]);
    assert_eq!(src.to_vec().unwrap(), batch.src);
    let input = batch.decoder_input(&dev).unwrap();
    assert_eq!(input.shape(), [4, 3]);
    assert_eq!(input.to_vec().unwrap(), batch.tgt[..12]);
    let targets = batch.targets(&dev).unwrap();
    assert_eq!(targets.to_vec().unwrap(), batch.tgt[3..]);
    assert_eq!(batch.tgt_tensor(&dev).unwrap().shape(), [5, 3]);
    assert_eq!(
        batch.src_lengths_tensor(&dev).unwrap().to_vec().unwrap(),
        [3, 2, 1]
    );
    assert!(Batch::new(&ex, &[]).is_err());
    assert!(Batch::new(&ex, &[3]).is_err());
}

/// Every example exactly once over `batches`, each batch in descending source length.
fn assert_partition(ex: &[Example], batches: &[Vec<usize>]) {
    let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..ex.len()).collect::<Vec<_>>());
    for b in batches {
        assert!(!b.is_empty());
        assert!(
            b.windows(2)
                .all(|w| ex[w[0]].src.len() >= ex[w[1]].src.len()),
            "{b:?}"
        );
    }
}

fn lengths(n: usize, seed: u64, max: usize) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| 1 + rng.below(max)).collect()
}

#[test]
fn sentence_batches_hold_the_sentence_count() {
    let ex = examples(&lengths(1000, 1, 50), &lengths(1000, 2, 50));
    let mut rng = Rng::new(7);
    let batches = train_batches(&ex, BatchSize::Sentences(64), &mut rng).unwrap();
    assert_partition(&ex, &batches);
    assert!(batches.iter().all(|b| b.len() <= 64));
    // 1000 = 64·15 + 40: one pool of 6400 holds everything, 15 full batches and the rest
    assert_eq!(batches.iter().filter(|b| b.len() == 64).count(), 15);
    let eval = eval_batches(&ex, BatchSize::Sentences(64), true).unwrap();
    assert_partition(&ex, &eval);
    let firsts: Vec<usize> = eval.iter().map(|b| ex[b[0]].src.len()).collect();
    assert!(firsts.windows(2).all(|w| w[0] >= w[1]), "sorted globally");
    assert!(eval_batches(&ex, BatchSize::Sentences(0), true).is_err());
    assert!(eval_batches(&ex, BatchSize::Tokens(usize::MAX), true).is_err());
}

#[test]
fn token_batches_respect_the_budget() {
    let mut src = lengths(3000, 3, 60);
    let tgt = lengths(3000, 4, 60);
    src[17] = 1500; // one pair alone above the budget: a batch of its own
    let ex = examples(&src, &tgt);
    let budget = 1000;
    let mut rng = Rng::new(11);
    let train = train_batches(&ex, BatchSize::Tokens(budget), &mut rng).unwrap();
    let eval = eval_batches(&ex, BatchSize::Tokens(budget), true).unwrap();
    for batches in [&train, &eval] {
        assert_partition(&ex, batches);
        let mut full = 0;
        for ids in batches.iter() {
            let batch = Batch::new(&ex, ids).unwrap();
            let b = batch.batch_size();
            let padded = (batch.src_steps * b).max(batch.tgt_steps * b);
            if ids == &[17] {
                continue;
            }
            assert!(padded <= budget, "{padded} tokens in {ids:?}");
            full += usize::from(padded > budget / 2);
        }
        assert!(
            full > batches.len() / 2,
            "batches are filled: {full} of {}",
            batches.len()
        );
    }
    assert!(train.contains(&vec![17]) && eval.contains(&vec![17]));
}

#[test]
fn lma_token_count_measures_first_word_characters() {
    // first words of 9, 3, 3, 1 characters (source) and 1 (target): LMA counts
    // count · max(chars + 2, 1 + 1) = 11, 2·11, 3·11 … whatever the sentence lengths.
    let mut ex = examples(&[30, 30, 30, 30, 30], &[40, 40, 40, 40, 40]);
    for (e, c) in ex.iter_mut().zip([9, 3, 3, 1, 3]) {
        e.first_word_chars = (c, 1);
    }
    // 33 = 3·11: the first three fill a batch exactly; then 1·5, 2·5 = 10 < 33
    let batches = eval_batches(&ex, BatchSize::LmaFirstWordChars(33), false).unwrap();
    assert_eq!(batches, [vec![0, 1, 2], vec![3, 4]]);
    // the same pairs by real padded tokens: 42 rows each, so 84 tokens hold two
    let batches = eval_batches(&ex, BatchSize::Tokens(84), false).unwrap();
    assert_eq!(batches, [vec![0, 1], vec![2, 3], vec![4]]);
}

#[test]
fn training_order_is_fixed_by_the_seed() {
    let ex = examples(&lengths(500, 5, 40), &lengths(500, 6, 40));
    let run = |seed| train_batches(&ex, BatchSize::Sentences(16), &mut Rng::new(seed)).unwrap();
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
    let mut rng = Rng::new(3);
    let epoch1 = train_batches(&ex, BatchSize::Sentences(16), &mut rng).unwrap();
    let epoch2 = train_batches(&ex, BatchSize::Sentences(16), &mut rng).unwrap();
    assert_ne!(
        epoch1, epoch2,
        "the generator carries on from epoch to epoch"
    );
}

// --- the real corpus ---

#[test]
fn bible_corpus_counts_match_its_readme() {
    let Some(dir) = nmt_support::bible_dir() else {
        return;
    };
    let read = |split: &str, lower| {
        ParallelCorpus::read(
            &dir.join(format!("{split}.es")),
            &dir.join(format!("{split}.en")),
            lower,
        )
        .unwrap()
    };
    for (split, pairs) in [("train", 28_596), ("valid", 1_007), ("test", 1_447)] {
        assert_eq!(read(split, false).len(), pairs, "{split}");
    }
    assert_eq!(read_lines(&dir.join("test.en-kjv")).unwrap().len(), 1_447);
    let test = read("test", false);
    assert_eq!(
        test.src.iter().map(Vec::len).max(),
        Some(80),
        "longest es line"
    );
    assert_eq!(
        test.tgt.iter().map(Vec::len).max(),
        Some(86),
        "longest WEB line"
    );
    // The README counts lowercased whitespace tokens: 47,361 es and 28,536 en types in train.
    let lower = read("train", true);
    let all = VocabOptions {
        max_size: 1 << 20,
        min_freq: 0,
    };
    assert_eq!(
        Vocab::build(Side::Source, &lower.src, all).unwrap().len(),
        2 + 47_361
    );
    assert_eq!(
        Vocab::build(Side::Target, &lower.tgt, all).unwrap().len(),
        4 + 28_536
    );
    // The seed's pipeline: cased, pairs with a side above 50 words dropped (617 pairs), 50k words.
    let train = read("train", false).filter_lengths(LengthFilter::default());
    assert_eq!(train.len(), 28_596 - 617);
    let src_vocab = Vocab::build(Side::Source, &train.src, VocabOptions::default()).unwrap();
    let tgt_vocab = Vocab::build(Side::Target, &train.tgt, VocabOptions::default()).unwrap();
    let types = |side: &[Sentence]| side.iter().flatten().collect::<HashSet<_>>().len();
    assert_eq!(src_vocab.len(), 50_002.min(2 + types(&train.src)));
    assert_eq!(tgt_vocab.len(), 50_004.min(4 + types(&train.tgt)));
    // Capped at 10k words: the most frequent ones, by descending count.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in train.tgt.iter().flatten() {
        *counts.entry(w.as_str()).or_default() += 1;
    }
    let top = VocabOptions {
        max_size: 10_000,
        min_freq: 0,
    };
    let capped = Vocab::build(Side::Target, &train.tgt, top).unwrap();
    assert_eq!(capped.len(), 10_004);
    let kept: Vec<usize> = capped.itos()[4..]
        .iter()
        .map(|w| counts[w.as_str()])
        .collect();
    assert!(kept.windows(2).all(|w| w[0] >= w[1]));
    let mut all_counts: Vec<usize> = counts.values().copied().collect();
    all_counts.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(kept, all_counts[..10_000]);
    let ex = numericalize(&train, &src_vocab, &tgt_vocab).unwrap();
    let mut rng = Rng::new(1);
    for size in [
        BatchSize::Sentences(64),
        BatchSize::Tokens(3192),
        BatchSize::LmaFirstWordChars(3192),
    ] {
        let batches = train_batches(&ex, size, &mut rng).unwrap();
        assert_partition(&ex, &batches);
        let padded: usize = batches
            .iter()
            .map(|ids| {
                let b = Batch::new(&ex, ids).unwrap();
                (b.src_steps * ids.len()).max(b.tgt_steps * ids.len())
            })
            .max()
            .unwrap();
        eprintln!(
            "{size:?}: {} batches, {:.1} sentences a batch, largest batch tensor {padded} tokens",
            batches.len(),
            ex.len() as f64 / batches.len() as f64
        );
        if let BatchSize::Tokens(budget) = size {
            assert!(padded <= budget);
        }
    }
}
