//! The stage ends and the quantization stages of `lit-engine train` on translation configs, on
//! the tiny Bible corpus of tests/fixtures/nmt: the test BLEU line equals scoring the written
//! hypotheses with `nmt::bleu` (two references); `quantized_distillation` and
//! `post_training_quantization` save models with at most 2^bits values per 256-bucket whose
//! reported size is `quantized_size`; a run resumed inside a QD stage equals an uninterrupted one;
//! `seq_kd` trains on the teacher's translations of the training source and, resumed, equals an
//! uninterrupted run without translating again.

use lit_engine::nmt::bleu::{multi_bleu, sacrebleu, SacreBleuOptions};
use lit_engine::nmt::config::{StageKind, TranslationConfig};
use lit_engine::nmt::quantize::{quantize_all, quantized_size, TranslationQuantization};
use lit_engine::nmt::search::TranslateOptions;
use lit_engine::nmt::train::corpus::prepare;
use lit_engine::nmt::train::seq_kd_data::SEQ_KD_FOLDER;
use lit_engine::nmt::train::translate::Translator;
use lit_engine::nmt::train::{run, RunOptions, RunSummary};
use lit_engine::params::ParamStore;
use lit_engine::{Device, Tensor};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn out_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lit-nmt-stages-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A data root holding a copy of the fixture corpus plus `test.en-kjv`: the first three words of
/// each `test.en` line, a second reference shorter than the first (so it changes the score).
fn data_root(dir: &Path) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nmt/bible-tiny");
    let root = dir.join("data");
    let to = root.join("bible-tiny");
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    let test = std::fs::read_to_string(to.join("test.en")).unwrap();
    let short = |l: &str| l.split(' ').take(3).collect::<Vec<_>>().join(" ") + "\n";
    let kjv: String = test.lines().map(short).collect();
    std::fs::write(to.join("test.en-kjv"), kjv).unwrap();
    root
}

fn config(dir: &Path, stages: &str) -> TranslationConfig {
    let text = format!(
        "task: translation\n\
         data: {{corpus: bible-tiny, src: es, tgt: en, extra_references: [en-kjv]}}\n\
         models:\n  \
           student: {{family: qd_lstm, word_vec_size: 12, rnn_size: 16, layers: 1}}\n  \
           teacher: {{family: qd_lstm, word_vec_size: 12, rnn_size: 16, layers: 1}}\n\
         sequence:\n{stages}\
         params: {{save_directory: {}}}\n\
         hyperparameters: {{seed: 5, dropout: 0.3}}\n",
        dir.join("run").display()
    );
    let c = TranslationConfig::parse(&text, "test config").unwrap();
    c.validate().unwrap();
    c
}

fn metrics(cfg: &TranslationConfig) -> Vec<Value> {
    let text = std::fs::read_to_string(cfg.params.save_directory.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(str::to_string).collect()
}

/// The checkpoint at `path` as a store of named f32 tensors.
fn store_of(path: &Path) -> ParamStore {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut store = ParamStore::new();
    for (name, view) in st.tensors() {
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let t = Tensor::from_vec(view.shape(), data, &Device::Cpu).unwrap();
        store.add_param(&name, t).unwrap();
    }
    store
}

/// Every tensor of `store` has at most `2^bits` distinct values in each 256-element bucket.
fn assert_quantized(store: &ParamStore, bits: u32) {
    for (name, p) in store.iter() {
        for bucket in p.value.to_vec().unwrap().chunks(256) {
            let mut v: Vec<u32> = bucket.iter().map(|x| x.to_bits()).collect();
            v.sort_unstable();
            v.dedup();
            assert!(v.len() <= 1 << bits, "{name}: {} values", v.len());
        }
    }
}

/// The reported (packed, f32) sizes of a stage, from the summary and from `metrics.jsonl`.
fn reported_size(summary: &RunSummary, lines: &[Value], kind: StageKind) -> (usize, usize) {
    let stage = summary.stages.iter().find(|s| s.kind == kind).unwrap();
    let size = stage.size.unwrap();
    let line = lines
        .iter()
        .find(|l| l["stage"] == kind.name() && l.get("test_ppl").is_some())
        .unwrap();
    assert_eq!(line["packed_bytes"].as_u64(), Some(size.0 as u64));
    assert_eq!(line["f32_bytes"].as_u64(), Some(size.1 as u64));
    size
}

#[test]
fn test_bleu_line_equals_scoring_the_written_hypotheses() {
    let dir = out_dir("bleu");
    let root = data_root(&dir);
    let cfg = config(&dir, "  train: {epochs: 2, batch_size: 10, beam_size: 3}\n");
    let summary = run(&cfg, &Device::Cpu, &root, RunOptions::default()).unwrap();
    let bleu = summary.stages[0].test_bleu.clone().unwrap();
    assert_eq!(bleu.beam_size, 3);
    let hyps = lines(&bleu.hypotheses);
    assert_eq!(hyps.len(), 40, "one hypothesis per unfiltered test line");
    assert!(bleu.hypotheses.starts_with(&cfg.params.save_directory));
    let corpus = root.join("bible-tiny");
    let refs = vec![
        lines(&corpus.join("test.en")),
        lines(&corpus.join("test.en-kjv")),
    ];
    let mb = multi_bleu(&hyps, &refs, true).unwrap();
    let sb = sacrebleu(&hyps, &refs, SacreBleuOptions::default()).unwrap();
    let one_ref = multi_bleu(&hyps, &refs[..1], true).unwrap();
    assert_ne!(mb, one_ref, "the second reference must matter here");
    let line = metrics(&cfg)
        .into_iter()
        .find(|l| l.get("test_bleu").is_some())
        .expect("a test_bleu line");
    assert_eq!(line["stage"], "train");
    assert_eq!(line["test_bleu"].as_f64(), Some(mb.score));
    assert_eq!(line["test_sacrebleu"].as_f64(), Some(sb.score));
    let one_ref_sb = sacrebleu(&hyps, &refs[..1], SacreBleuOptions::default()).unwrap();
    assert_eq!(line["test_bleu_ref1"].as_f64(), Some(one_ref.score));
    assert_eq!(
        line["multi_bleu_ref1"].as_str(),
        Some(one_ref.multi_bleu_line().as_str())
    );
    assert_eq!(line["test_sacrebleu_ref1"].as_f64(), Some(one_ref_sb.score));
    assert_eq!(
        line["multi_bleu"].as_str(),
        Some(mb.multi_bleu_line().as_str())
    );
    assert_eq!((bleu.multi_bleu, bleu.sacrebleu), (mb.score, sb.score));

    // `lit-engine bleu` scores the same files to the same numbers; a reference of another
    // length is one clear error.
    let cli = |refs: &[PathBuf]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lit-engine"))
            .arg("bleu")
            .arg(&bleu.hypotheses)
            .args(refs)
            .output()
            .unwrap()
    };
    let stdout_of = |refs: &[PathBuf]| {
        let out = cli(refs);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().map(str::to_string).collect::<Vec<_>>()
    };
    let both = [corpus.join("test.en"), corpus.join("test.en-kjv")];
    let two = format!("sacreBLEU = {:.2} (2 references)", sb.score);
    assert_eq!(stdout_of(&both), [mb.multi_bleu_line(), two]);
    let one = format!("sacreBLEU = {:.2} (1 reference)", one_ref_sb.score);
    assert_eq!(stdout_of(&both[..1]), [one_ref.multi_bleu_line(), one]);
    let out = cli(&[corpus.join("train.en")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("300 reference lines for 40"),
        "{stderr}"
    );
}

#[test]
fn quantized_distillation_saves_a_quantized_student_of_the_reported_size() {
    let dir = out_dir("qd");
    let root = data_root(&dir);
    let cfg = config(
        &dir,
        "  teacher: {epochs: 1, batch_size: 10, bleu: false}\n  \
           quantized_distillation: {epochs: 2, batch_size: 10, bits: 2, bleu: false}\n",
    );
    let summary = run(&cfg, &Device::Cpu, &root, RunOptions::default()).unwrap();
    let lines = metrics(&cfg);
    let stage = &summary.stages[1];
    assert_eq!(stage.kind, StageKind::QuantizedDistillation);
    assert!(stage
        .checkpoint
        .ends_with("student_word_kd-qd2.safetensors"));
    assert!(stage.test_ppl.is_finite());
    let store = store_of(&stage.checkpoint);
    assert_quantized(&store, 2);
    let spec = TranslationQuantization::new(2, Some(256))
        .unwrap()
        .all_parameters_spec(&store)
        .unwrap();
    let expected = quantized_size(&store, &spec);
    let size = reported_size(&summary, &lines, StageKind::QuantizedDistillation);
    assert_eq!(size, (expected.packed_bytes, expected.full_precision_bytes));
    assert!(size.0 < size.1 / 8, "{size:?}");
}

#[test]
fn post_training_quantization_quantizes_the_trained_student() {
    let dir = out_dir("ptq");
    let root = data_root(&dir);
    let cfg = config(
        &dir,
        "  train: {epochs: 1, batch_size: 10, bleu: false}\n  \
           post_training_quantization: {bits: 4, beam_size: 2}\n",
    );
    let summary = run(&cfg, &Device::Cpu, &root, RunOptions::default()).unwrap();
    let lines = metrics(&cfg);
    let [train, ptq] = &summary.stages[..] else {
        panic!("two stages: {:?}", summary.stages)
    };
    assert!(ptq.checkpoint.ends_with("student-ptq4.safetensors"));
    let student = store_of(&train.checkpoint);
    let expected = quantize_all(&student, 4, Some(256)).unwrap();
    let saved = store_of(&ptq.checkpoint);
    assert_quantized(&saved, 4);
    for (name, p) in expected.store.iter() {
        let got = saved.get(name).unwrap().value.to_vec().unwrap();
        assert_eq!(got, p.value.to_vec().unwrap(), "{name}");
    }
    let size = reported_size(&summary, &lines, StageKind::PostTrainingQuantization);
    assert_eq!(
        size,
        (
            expected.size.packed_bytes,
            expected.size.full_precision_bytes
        )
    );
    assert!(ptq.test_ppl.is_finite() && ptq.test_bleu.is_some());
    assert!(lines
        .iter()
        .any(|l| l["stage"] == "post_training_quantization" && l.get("test_bleu").is_some()));
}

/// Runs `stages` uninterrupted in one folder, and in another stopped after `stop_after` epochs,
/// `on_stop` called, then resumed: the metrics and the last stage's weights must be equal.
/// Returns the resumed run's config.
fn assert_resumed_run_equals_uninterrupted(
    tag: &str,
    stages: &str,
    stop_after: usize,
    on_stop: &mut dyn FnMut(&TranslationConfig),
) -> TranslationConfig {
    let (a, b) = (out_dir(&format!("{tag}-a")), out_dir(&format!("{tag}-b")));
    let (cfg_a, cfg_b) = (config(&a, stages), config(&b, stages));
    let (root_a, root_b) = (data_root(&a), data_root(&b));
    let full = run(&cfg_a, &Device::Cpu, &root_a, RunOptions::default()).unwrap();
    let stop = RunOptions {
        resume: false,
        stop_after_epochs: Some(stop_after),
    };
    assert!(run(&cfg_b, &Device::Cpu, &root_b, stop).unwrap().stopped);
    on_stop(&cfg_b);
    let resume = RunOptions {
        resume: true,
        stop_after_epochs: None,
    };
    let resumed = run(&cfg_b, &Device::Cpu, &root_b, resume).unwrap();
    assert_eq!(metrics(&cfg_a), metrics(&cfg_b));
    let x = store_of(&full.stages.last().unwrap().checkpoint);
    let y = store_of(&resumed.stages.last().unwrap().checkpoint);
    for (name, p) in x.iter() {
        let same = p.value.to_vec().unwrap() == y.get(name).unwrap().value.to_vec().unwrap();
        assert!(same, "{name} differs");
    }
    cfg_b
}

#[test]
fn a_run_resumed_inside_quantized_distillation_equals_an_uninterrupted_one() {
    let stages = "  teacher: {epochs: 1, batch_size: 10, bleu: false}\n  \
                  quantized_distillation: {epochs: 3, batch_size: 10, bits: 4, bleu: false}\n";
    assert_resumed_run_equals_uninterrupted("resume", stages, 2, &mut |_| {});
}

/// The teacher stage of the sequence-level KD tests: enough epochs on the tiny corpus for its
/// beam search to say words.
const SEQ_KD_TEACHER: &str = "  teacher: {epochs: 6, batch_size: 10, bleu: false}\n";

#[test]
fn seq_kd_trains_the_student_on_the_teachers_translations_of_the_training_source() {
    let dir = out_dir("seqkd");
    let root = data_root(&dir);
    let with_seq_kd =
        format!("{SEQ_KD_TEACHER}  seq_kd: {{epochs: 2, batch_size: 10, bleu: false}}\n");
    let cfg = config(&dir, &with_seq_kd);
    let summary = run(&cfg, &Device::Cpu, &root, RunOptions::default()).unwrap();
    let stage = &summary.stages[1];
    assert_eq!(stage.kind, StageKind::SeqKd);
    assert!(stage.checkpoint.ends_with("student_seq_kd.safetensors"));

    // The distilled targets are the teacher's beam-5 translations (batch 1, replace_unk) of the
    // training source as the run read it, one line per training pair.
    let data = prepare(&cfg, &root).unwrap();
    let mut teacher = Translator::load(&summary.stages[0].checkpoint, &Device::Cpu).unwrap();
    let want = teacher
        .translate(&data.train_src_text, &TranslateOptions::default())
        .unwrap();
    let folder = cfg.params.save_directory.join(SEQ_KD_FOLDER);
    assert_eq!(lines(&folder.join("train.en")), want);
    assert_eq!(lines(&folder.join("train.es")), data.train_src_text);
    let worded = want.iter().filter(|l| !l.is_empty()).count();
    assert!(worded > want.len() / 2, "the teacher says words: {worded}");
    let references = lines(&root.join("bible-tiny/train.en"));
    let copies = want.iter().filter(|w| references.contains(w)).count();
    assert!(copies < want.len() / 2, "{copies} outputs are references");

    // The student is trained on them: the same stage on the references (`train`, the same
    // initialisation and batches) fits them worse than the student fits the teacher's outputs.
    let base = out_dir("seqkd-base");
    let base_cfg = config(
        &base,
        &format!("{SEQ_KD_TEACHER}  train: {{epochs: 2, batch_size: 10, bleu: false}}\n"),
    );
    run(
        &base_cfg,
        &Device::Cpu,
        &data_root(&base),
        RunOptions::default(),
    )
    .unwrap();
    let train_ppl = |cfg: &TranslationConfig, stage: &str| -> Vec<f64> {
        metrics(cfg)
            .iter()
            .filter(|l| l["stage"] == stage && l.get("train_ppl").is_some())
            .map(|l| l["train_ppl"].as_f64().unwrap())
            .collect()
    };
    let (distilled, references) = (train_ppl(&cfg, "seq_kd"), train_ppl(&base_cfg, "train"));
    assert_eq!((distilled.len(), references.len()), (2, 2));
    assert!(
        distilled[1] < references[1],
        "seq-KD train ppl {distilled:?} vs references {references:?}"
    );
}

#[test]
fn a_run_resumed_inside_seq_kd_equals_an_uninterrupted_one_and_does_not_translate_again() {
    let stages = format!("{SEQ_KD_TEACHER}  seq_kd: {{epochs: 3, batch_size: 10, bleu: false}}\n");
    let outputs = |cfg: &TranslationConfig| {
        let folder = cfg.params.save_directory.join(SEQ_KD_FOLDER);
        folder.join("train.en")
    };
    let modified = |cfg: &TranslationConfig| {
        let meta = std::fs::metadata(outputs(cfg)).unwrap();
        meta.modified().unwrap()
    };
    let mut written = None;
    let cfg = assert_resumed_run_equals_uninterrupted("seqkd-resume", &stages, 7, &mut |cfg| {
        written = Some(modified(cfg));
        std::thread::sleep(std::time::Duration::from_millis(20));
    });
    assert_eq!(
        written,
        Some(modified(&cfg)),
        "the translations were reused, not rewritten"
    );
}
