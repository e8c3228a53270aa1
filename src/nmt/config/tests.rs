//! The translation config's parsing and validation.

use super::*;
use crate::nmt::batches::BatchSize;

const MINIMAL: &str = "task: translation\ndata:\n  corpus: text/x\nmodels:\n  student: \
                       {family: qd_lstm, word_vec_size: 8, rnn_size: 8}\nsequence:\n  train: \
                       {epochs: 2}\n";

#[test]
fn peeks_the_task() {
    assert!(is_translation(MINIMAL));
    assert!(!is_translation("models: {dataset: mnist}\n"));
    assert!(!is_translation("task: [unclosed\n"));
}

#[test]
fn defaults_are_the_seed_settings() {
    let c = TranslationConfig::parse(MINIMAL, "t").unwrap();
    c.validate().unwrap();
    let st = c.sequence.train.as_ref().unwrap();
    assert_eq!((st.lr, st.max_grad_norm, st.start_decay_at), (1.0, 5.0, 8));
    assert_eq!(st.train_batch(), BatchSize::Sentences(64));
    assert_eq!(c.data.max_length, 50);
    assert!(!c.data.lowercase);
    assert_eq!(c.hyperparameters.dropout, 0.3);
}

#[test]
fn unknown_key_names_the_line_and_the_closest_key() {
    let text = MINIMAL.replace("corpus:", "corpsu: a\n  corpus:");
    let e = TranslationConfig::parse(&text, "f.yml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("f.yml line 3"), "{e}");
    assert!(
        e.contains("unknown key `data.corpsu` (did you mean `corpus`?)"),
        "{e}"
    );
}

#[test]
fn word_kd_needs_a_teacher() {
    let text = MINIMAL.replace("train:", "word_kd:");
    let c = TranslationConfig::parse(&text, "t").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("sequence.word_kd needs `models.teacher`"), "{e}");
}

#[test]
fn seq_kd_needs_a_teacher_and_owns_its_decoding_keys() {
    let err = |text: &str| {
        let c = TranslationConfig::parse(text, "t").unwrap();
        c.validate().map(|_| ()).map_err(|e| e.to_string())
    };
    let seq = MINIMAL.replace("train:", "seq_kd:");
    let e = err(&seq).unwrap_err();
    assert!(e.contains("sequence.seq_kd needs `models.teacher`"), "{e}");
    let teacher = "  teacher: {family: qd_lstm, word_vec_size: 8, rnn_size: 8}\nsequence:";
    let with_teacher = |t: &str| t.replace("sequence:", teacher);
    err(&with_teacher(&seq)).unwrap();
    let beam = seq.replace("{epochs: 2}", "{epochs: 2, distill_beam_size: 3}");
    err(&with_teacher(&beam)).unwrap();
    let e = err(&MINIMAL.replace("{epochs: 2}", "{epochs: 2, distill_beam_size: 3}")).unwrap_err();
    assert!(
        e.contains("sequence.train.distill_beam_size only applies to seq_kd"),
        "{e}"
    );
    let zero = seq.replace("{epochs: 2}", "{epochs: 2, distill_batch_size: 0}");
    let e = err(&with_teacher(&zero)).unwrap_err();
    assert!(
        e.contains("sequence.seq_kd.distill_batch_size must be in 1..="),
        "{e}"
    );
    let both = with_teacher(&MINIMAL.replace(
        "  train: {epochs: 2}\n",
        "  train: {epochs: 2}\n  seq_kd: {epochs: 2}\nparams: {seq_kd_name: student.safetensors}\n",
    ));
    let e = err(&both).unwrap_err();
    assert!(
        e.contains("params.seq_kd_name must differ from params.train_name"),
        "{e}"
    );
}

#[test]
fn quantization_keys_belong_to_quantization_stages() {
    let err = |stages: &str| {
        let text = MINIMAL.replace("  train: {epochs: 2}\n", stages);
        let c = TranslationConfig::parse(&text, "t").unwrap();
        c.validate().map(|_| ()).map_err(|e| e.to_string())
    };
    let e = err("  post_training_quantization: {bucket_size: 256}\n").unwrap_err();
    assert!(
        e.contains("sequence.post_training_quantization.bits is required"),
        "{e}"
    );
    let e = err("  train: {epochs: 2, bits: 4}\n").unwrap_err();
    assert!(e.contains("sequence.train.bits only applies"), "{e}");
    let e = err("  train: {epochs: 2, checkpoint: a.safetensors}\n").unwrap_err();
    assert!(e.contains("sequence.train.checkpoint only applies"), "{e}");
    let e = err("  post_training_quantization: {bits: 4, epochs: 3}\n").unwrap_err();
    assert!(
        e.contains("post_training_quantization.epochs must be 0"),
        "{e}"
    );
    err("  train: {epochs: 2}\n  post_training_quantization: {bits: 2}\n").unwrap();
}

#[test]
fn post_training_quantization_reads_its_own_checkpoint_first() {
    let teacher = "  teacher: {family: qd_lstm, word_vec_size: 8, rnn_size: 8}\nsequence:";
    let stages = |ptq: &str| {
        let text = MINIMAL.replace("sequence:", teacher).replace(
            "{epochs: 2}\n",
            &format!("{{epochs: 2}}\n  word_kd: {{epochs: 2}}\n{ptq}"),
        );
        let c = TranslationConfig::parse(&text, "t").unwrap();
        c.validate().unwrap();
        c
    };
    let c = stages("  post_training_quantization: {bits: 4}\n");
    assert_eq!(c.ptq_source(), c.checkpoint_of(StageKind::WordKd));
    let c = stages("  post_training_quantization: {bits: 4, checkpoint: a/s.safetensors}\n");
    assert_eq!(c.ptq_source(), PathBuf::from("a/s.safetensors"));
    assert!(c
        .checkpoint_of(StageKind::PostTrainingQuantization)
        .ends_with("s-ptq4.safetensors"));
}
