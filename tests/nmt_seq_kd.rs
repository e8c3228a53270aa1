//! Sequence-level KD data (`nmt::seq_kd`, SPEC-TRANSLATION §3.7) with a tiny random QD teacher
//! on a 20-line corpus: one output line per source line equal to `translate_lines`, byte-identical
//! copies, an interrupted run leaves the previous `train.<tgt>` and resumes where it stopped.

use lit_engine::models::nmt_lstm::decode::QdStepDecoder;
use lit_engine::models::nmt_lstm::{QdNmt, QdNmtConfig};
use lit_engine::nmt::data::tokenize;
use lit_engine::nmt::search::{translate_lines, TranslateOptions};
use lit_engine::nmt::seq_kd::{distill_data, SeqKdOptions, SeqKdPaths};
use lit_engine::nmt::vocab::{Side, Vocab, VocabOptions};
use lit_engine::nn::ParamStore;
use lit_engine::rng::Rng;
use lit_engine::{Device, Error};
use std::path::{Path, PathBuf};

const SRC: [&str; 20] = [
    "en el principio creó dios los cielos y la tierra",
    "y la tierra estaba desordenada y vacía",
    "y dijo dios sea la luz y fue la luz",
    "y vio dios que la luz era buena",
    "",
    "y llamó dios a la luz día",
    "y a las tinieblas llamó noche",
    "y fue la tarde y la mañana un día",
    "luego dijo dios haya expansión en medio de las aguas",
    "e hizo dios la expansión",
    "y fue así",
    "y llamó dios a la expansión cielos",
    "dijo también dios júntense las aguas",
    "y descúbrase lo seco",
    "y llamó dios a lo seco tierra",
    "y vio dios que era bueno",
    "después dijo dios produzca la tierra hierba verde",
    "y produjo la tierra hierba verde",
    "zarzamora",
    "y fue la tarde y la mañana el día tercero",
];

const TGT: [&str; 6] = [
    "in the beginning god created the heaven and the earth",
    "and the earth was without form and void",
    "and god said let there be light and there was light",
    "and god saw the light that it was good",
    "and god called the light day",
    "and the evening and the morning were the first day",
];

fn write(dir: &Path, name: &str, lines: &[&str]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(dir.join(name), text).unwrap();
}

struct Setup {
    paths: SeqKdPaths,
    model: QdNmt,
    store: ParamStore,
    src_vocab: Vocab,
    tgt_vocab: Vocab,
}

/// A fresh folder per test (removed first, left for inspection after).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lit-nmt-seq-kd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn setup(name: &str) -> Setup {
    let tmp = temp_dir(name);
    let corpus = tmp.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    write(&corpus, "train.es", &SRC);
    write(&corpus, "train.en", &TGT);
    write(&corpus, "valid.es", &SRC[..3]);
    write(&corpus, "valid.en", &TGT[..3]);
    write(&corpus, "test.es", &SRC[3..5]);
    write(&corpus, "test.en", &TGT[3..5]);
    // A source vocabulary without the last sentences' words, so replace_unk meets OOV words.
    let src_sents: Vec<_> = SRC[..12].iter().map(|l| tokenize(l, false)).collect();
    let tgt_sents: Vec<_> = TGT.iter().map(|l| tokenize(l, false)).collect();
    let src_vocab = Vocab::build(Side::Source, &src_sents, VocabOptions::default()).unwrap();
    let tgt_vocab = Vocab::build(Side::Target, &tgt_sents, VocabOptions::default()).unwrap();
    let cfg = QdNmtConfig {
        src_vocab: src_vocab.len(),
        tgt_vocab: tgt_vocab.len(),
        word_vec_size: 8,
        rnn_size: 8,
        layers: 1,
        dropout: 0.0,
    };
    let mut store = ParamStore::new();
    let model = QdNmt::new(&mut store, cfg, &Device::Cpu, &mut Rng::new(11)).unwrap();
    let paths = SeqKdPaths {
        corpus,
        output: tmp.join("distilled"),
        src: "es".into(),
        tgt: "en".into(),
    };
    Setup {
        paths,
        model,
        store,
        src_vocab,
        tgt_vocab,
    }
}

fn options(chunk_lines: usize) -> SeqKdOptions {
    SeqKdOptions {
        translate: TranslateOptions {
            search: lit_engine::nmt::search::SearchOptions {
                max_length: 12,
                ..Default::default()
            },
            ..Default::default()
        },
        chunk_lines,
        teacher_id: "teacher-a".into(),
    }
}

fn expected(s: &Setup, o: &SeqKdOptions) -> String {
    let mut dec = QdStepDecoder::new(&s.model, &s.store, &Device::Cpu);
    let lines: Vec<String> = SRC.iter().map(|l| l.to_string()).collect();
    let out = translate_lines(&mut dec, &s.src_vocab, &s.tgt_vocab, &lines, &o.translate).unwrap();
    assert_eq!(out.len(), SRC.len());
    out.iter().map(|l| format!("{l}\n")).collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn hidden_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn distilled_corpus_has_the_teachers_translation_of_every_line_and_exact_copies() {
    let s = setup("copies");
    let o = options(3);
    let mut dec = QdStepDecoder::new(&s.model, &s.store, &Device::Cpu);
    let mut calls = Vec::new();
    let report = distill_data(
        &mut dec,
        &s.src_vocab,
        &s.tgt_vocab,
        &s.paths,
        &o,
        &mut |done, total| {
            calls.push((done, total));
            Ok(())
        },
    )
    .unwrap();
    let got = read(&s.paths.output.join("train.en"));
    assert_eq!(got.lines().count(), SRC.len(), "one line per source line");
    assert_eq!(got, expected(&s, &o));
    assert!(
        got.lines().any(|l| !l.is_empty()),
        "the teacher produced words"
    );
    assert_eq!(report.lines, 20);
    assert_eq!(report.resumed_lines, 0);
    assert!(
        report.empty_outputs >= 1,
        "the empty source line gives an empty line"
    );
    assert_eq!(calls.len(), 7, "20 lines in chunks of 3");
    assert_eq!(calls.last(), Some(&(20, 20)));
    for name in ["train.es", "valid.es", "valid.en", "test.es", "test.en"] {
        let (a, b) = (s.paths.corpus.join(name), s.paths.output.join(name));
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{name}"
        );
    }
    assert_eq!(report.copied.len(), 5);
    assert_eq!(hidden_files(&s.paths.output), Vec::<String>::new());
}

#[test]
fn an_interrupted_run_keeps_the_previous_file_and_resumes_after_the_last_complete_line() {
    let s = setup("resume");
    let o = options(4);
    let mut dec = QdStepDecoder::new(&s.model, &s.store, &Device::Cpu);
    std::fs::create_dir_all(&s.paths.output).unwrap();
    let target = s.paths.output.join("train.en");
    std::fs::write(&target, "an older distilled file\n").unwrap();

    let stop = |done: usize, _: usize| {
        if done >= 8 {
            Err(Error::Config("interrupted".into()))
        } else {
            Ok(())
        }
    };
    let mut run = |o: &SeqKdOptions, on: &mut dyn FnMut(usize, usize) -> lit_engine::Result<()>| {
        distill_data(&mut dec, &s.src_vocab, &s.tgt_vocab, &s.paths, o, on)
    };
    assert!(run(&o, &mut { stop }).is_err());
    assert_eq!(
        read(&target),
        "an older distilled file\n",
        "previous file intact"
    );

    // A torn last line (a crash mid-append) is dropped on resume.
    let partial = s.paths.output.join(".train.en.seq-kd-partial");
    let mut text = read(&partial);
    assert_eq!(text.lines().count(), 8);
    text.push_str("torn half li");
    std::fs::write(&partial, text).unwrap();

    let report = run(&o, &mut |_, _| Ok(())).unwrap();
    assert_eq!(report.resumed_lines, 8);
    assert_eq!(read(&target), expected(&s, &o));

    // Another teacher never resumes someone else's partial file.
    assert!(run(&o, &mut { stop }).is_err());
    let other = SeqKdOptions {
        teacher_id: "teacher-b".into(),
        ..o.clone()
    };
    let report = run(&other, &mut |_, _| Ok(())).unwrap();
    assert_eq!(report.resumed_lines, 0);
    assert_eq!(read(&target), expected(&s, &o));
}

#[test]
fn bad_settings_are_refused() {
    let s = setup("refused");
    let mut dec = QdStepDecoder::new(&s.model, &s.store, &Device::Cpu);
    let mut run = |p: &SeqKdPaths, o: &SeqKdOptions| {
        distill_data(&mut dec, &s.src_vocab, &s.tgt_vocab, p, o, &mut |_, _| {
            Ok(())
        })
    };
    assert!(run(&s.paths, &options(0)).is_err());
    let same = SeqKdPaths {
        output: s.paths.corpus.clone(),
        ..s.paths.clone()
    };
    assert!(run(&same, &options(4)).is_err());
    let slash = SeqKdPaths {
        tgt: "../en".into(),
        ..s.paths.clone()
    };
    assert!(run(&slash, &options(4)).is_err());
    assert!(!s.paths.output.exists());
}
