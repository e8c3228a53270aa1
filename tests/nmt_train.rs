//! `lit-engine train` on translation configs (`nmt::train`), on the tiny Bible corpus in
//! tests/fixtures/nmt: training lowers the validation perplexity; a run stopped and resumed
//! equals an uninterrupted one bit for bit (weights and metrics), across stages and with both
//! optimizers; config mistakes are clear errors; the checkpoint has the seed's names.

mod nmt_support;
use lit_engine::nmt::config::TranslationConfig;
use lit_engine::nmt::train::{run, RunOptions};
use lit_engine::nmt::vocab::Vocab;
use lit_engine::Device;
use nmt_support::{column, metrics, tensors};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nmt")
}

fn out_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lit-nmt-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A config over the fixture corpus writing to `dir`, with `stages` as its `sequence` body.
fn config(dir: &Path, models: &str, stages: &str) -> TranslationConfig {
    let text = format!(
        "task: translation\n\
         data: {{corpus: bible-tiny, src: es, tgt: en}}\n\
         models:\n{models}\
         sequence:\n{stages}\
         params: {{save_directory: {}}}\n\
         hyperparameters: {{seed: 3, dropout: 0.3}}\n",
        dir.display()
    );
    let c = TranslationConfig::parse(&text, "test config").unwrap();
    c.validate().unwrap();
    c
}

const STUDENT: &str = "  student: {family: qd_lstm, word_vec_size: 12, rnn_size: 16, layers: 1}\n";
const TEACHER: &str = "  teacher: {family: qd_lstm, word_vec_size: 12, rnn_size: 16, layers: 2}\n";

#[test]
fn training_lowers_the_validation_perplexity() {
    let dir = out_dir("lowers");
    let cfg = config(
        &dir,
        STUDENT,
        "  train: {epochs: 5, batch_size: 10, start_decay_at: 3}\n",
    );
    let summary = run(&cfg, &Device::Cpu, &fixtures(), RunOptions::default()).unwrap();
    let lines = metrics(&dir);
    let ppl = column(&lines, "valid_ppl");
    assert_eq!(ppl.len(), 5, "{lines:?}");
    let vocab = Vocab::load(&dir.join("vocab.tgt.json")).unwrap().len() as f64;
    // A fresh model is about uniform over the target vocabulary; training must beat that well.
    eprintln!("validation perplexity by epoch {ppl:?}, |V_tgt| {vocab}");
    assert!(ppl[4] < 0.7 * ppl[0], "{ppl:?}");
    assert!(ppl[4] < 0.2 * vocab, "{ppl:?} vs |V| {vocab}");
    // The halving rule: epochs 1-3 at 1.0, then halved each epoch (start_decay_at 3).
    let lr = column(&lines, "lr");
    assert_eq!(lr, [1.0, 1.0, 1.0, 0.5, 0.25]);
    let stage = &summary.stages[0];
    assert!(stage.test_ppl.is_finite() && stage.test_ppl < 0.5 * vocab);
    assert_eq!(
        lines.last().unwrap()["test_ppl"].as_f64(),
        Some(stage.test_ppl)
    );
}

#[test]
fn a_stopped_and_resumed_run_equals_an_uninterrupted_one() {
    // Teacher (SGD, halving after epoch 1) then word-level KD (Adam + Noam): a stop after epoch 1
    // (inside the teacher) and one after the first KD epoch (across a stage boundary).
    let stages = "  teacher: {epochs: 2, batch_size: 24, start_decay_at: 1}\n  \
                  word_kd: {epochs: 2, optimizer: adam, lr: 2.0, warmup_steps: 5, \
                  max_grad_norm: 0, batch_size: 150, batch_unit: tokens}\n";
    let models = format!("{STUDENT}{TEACHER}");
    let whole = out_dir("whole");
    let cfg = config(&whole, &models, stages);
    run(&cfg, &Device::Cpu, &fixtures(), RunOptions::default()).unwrap();

    let parts = out_dir("parts");
    let cfg = config(&parts, &models, stages);
    let stop = |n, resume| RunOptions {
        resume,
        stop_after_epochs: Some(n),
    };
    assert!(
        run(&cfg, &Device::Cpu, &fixtures(), stop(1, false))
            .unwrap()
            .stopped
    );
    assert!(
        run(&cfg, &Device::Cpu, &fixtures(), stop(2, true))
            .unwrap()
            .stopped
    );
    let last = run(&cfg, &Device::Cpu, &fixtures(), stop(9, true)).unwrap();
    assert!(!last.stopped);

    for name in ["teacher.safetensors", "student_word_kd.safetensors"] {
        let (a, b) = (tensors(&whole.join(name)), tensors(&parts.join(name)));
        assert_eq!(a.len(), b.len(), "{name}");
        for (x, y) in a.iter().zip(&b) {
            assert!(x == y, "{name}: `{}` differs after stop and resume", x.0);
        }
    }
    let (a, b) = (metrics(&whole), metrics(&parts));
    assert_eq!(a.len(), 6, "{a:?}"); // 2 + 2 epochs, 2 test lines
    assert_eq!(a, b);
    // The schedules ran: SGD halved at teacher epoch 2, Noam rose during warm-up.
    assert_eq!(a[1]["lr"].as_f64(), Some(0.5));
    assert!(a[3]["lr"].as_f64().unwrap() > 0.0 && a[4]["lr"].as_f64() != a[3]["lr"].as_f64());
}

#[test]
fn the_checkpoint_has_the_seed_state_dict_names_and_its_vocabularies() {
    let dir = out_dir("names");
    let cfg = config(&dir, STUDENT, "  train: {epochs: 1, batch_size: 64}\n");
    let summary = run(&cfg, &Device::Cpu, &fixtures(), RunOptions::default()).unwrap();
    let path = &summary.stages[0].checkpoint;
    assert_eq!(path, &dir.join("student.safetensors"));
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let order: Vec<String> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["lit_engine.key_order"]).unwrap();
    // SPEC-TRANSLATION §2.2, 1-layer student: 14 tensors in this order.
    let emb = "embeddings.make_embedding.emb_luts.0.weight";
    let mut want = vec![format!("encoder.{emb}")];
    want.extend(
        ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
            .map(|w| format!("encoder.rnn.{w}")),
    );
    want.push(format!("decoder.{emb}"));
    want.extend(
        ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
            .map(|w| format!("decoder.rnn.layers.0.{w}")),
    );
    want.extend(
        [
            "decoder.attn.linear_in.weight",
            "decoder.attn.linear_out.weight",
        ]
        .map(String::from),
    );
    want.extend(["generator.0.weight", "generator.0.bias"].map(String::from));
    assert_eq!(order, want);
    let src = Vocab::load(&dir.join("vocab.src.json")).unwrap();
    let tgt = Vocab::load(&dir.join("vocab.tgt.json")).unwrap();
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        tensors(path).into_iter().map(|(n, s, _)| (n, s)).collect();
    assert_eq!(shapes[&format!("encoder.{emb}")], [src.len(), 12]);
    assert_eq!(shapes["decoder.rnn.layers.0.weight_ih"], [64, 12 + 16]);
    assert_eq!(shapes["generator.0.weight"], [tgt.len(), 16]);
    assert_eq!(&tgt.itos()[..4], ["<unk>", "<blank>", "<s>", "</s>"]);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn config_mistakes_are_clear_errors() {
    let dir = out_dir("errors");
    let good = format!(
        "task: translation\ndata:\n  corpus: bible-tiny\nmodels:\n{STUDENT}sequence:\n  train: \
         {{epochs: 1}}\nparams: {{save_directory: {}}}\n",
        dir.join("out").display()
    );
    // An unknown key: file, line, key path and the closest valid key.
    let p = write(
        &dir,
        "typo.yml",
        &good.replace("  corpus:", "  corpsu: x\n  corpus:"),
    );
    let e = TranslationConfig::load(&p).unwrap_err().to_string();
    assert!(e.contains("typo.yml line 3"), "{e}");
    assert!(
        e.contains("unknown key `data.corpsu` (did you mean `corpus`?)"),
        "{e}"
    );
    // A value out of range: its key path and line.
    let p = write(&dir, "range.yml", &good.replace("epochs: 1", "epochs: 0"));
    let e = TranslationConfig::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("range.yml line 7: sequence.train.epochs must be in 1..="),
        "{e}"
    );
    // A missing corpus: the key and the file looked for.
    let p = write(
        &dir,
        "missing.yml",
        &good.replace("bible-tiny", "no-such-corpus"),
    );
    let cfg = TranslationConfig::load(&p).unwrap();
    let e = run(&cfg, &Device::Cpu, &fixtures(), RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data.corpus") && e.contains("no-such-corpus/train.es"),
        "{e}"
    );
    // Through the command line: one error line, no panic.
    // A precision the translation layers do not have: refused before anything runs.
    write(&dir, "good.yml", &good);
    for (file, flags, want) in [
        ("typo.yml", &[][..], "unknown key `data.corpsu`"),
        ("missing.yml", &[], "not found"),
        ("good.yml", &["--precision", "bf16"], "fp32 only"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lit-engine"))
            .args(["train", dir.join(file).to_str().unwrap(), "--device", "cpu"])
            .args(flags)
            .arg("--data-dir")
            .arg(fixtures())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(want),
            "{stderr}"
        );
        assert!(!stderr.contains("internal error"), "{stderr}");
    }
}

#[test]
fn translate_decodes_stdin_with_the_checkpoint_and_its_vocabularies() {
    let dir = out_dir("translate");
    let cfg = config(&dir, STUDENT, "  train: {epochs: 2, batch_size: 16}\n");
    let summary = run(&cfg, &Device::Cpu, &fixtures(), RunOptions::default()).unwrap();
    let ckpt = &summary.stages[0].checkpoint;
    let tgt = Vocab::load(&dir.join("vocab.tgt.json")).unwrap();
    let input = "En el principio crió Dios los cielos y la tierra.\n\nY dijo Dios\n";
    let translator =
        lit_engine::nmt::train::translate::Translator::load(ckpt, &Device::Cpu).unwrap();
    assert_eq!(
        translator.seed_batch_size(),
        1,
        "QD translates one sentence a batch"
    );
    let out = lit_engine::nmt::train::translate::translate_text(
        &cfg,
        ckpt,
        &Device::Cpu,
        input.as_bytes(),
        (3, Some(2)),
    )
    .unwrap();
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(out[1].is_empty(), "an empty line stays empty: {out:?}");
    for (line, src) in out.iter().zip(input.lines()) {
        for w in line.split(' ').filter(|w| !w.is_empty()) {
            // A target word, or a source word put in place of `<unk>` (replace_unk).
            assert!(
                (tgt.id(w) > 3) || src.split(' ').any(|s| s == w),
                "`{w}` of {line:?}"
            );
        }
    }
    assert!(!out[0].is_empty());
    // The command line gives the same lines.
    let cfg_path = write(&dir, "cfg.yml", &serde_norway::to_string(&cfg).unwrap());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lit-engine"))
        .args([
            "translate",
            ckpt.to_str().unwrap(),
            "--beam",
            "3",
            "--batch-size",
            "2",
        ])
        .args(["--device", "cpu", "--config", cfg_path.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let done = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(done.stdout).unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), out);
}

#[test]
fn every_shipped_translation_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/translation");
    let mut n = 0;
    let mut folders = vec![dir];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "yml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                lit_engine::nmt::config::is_translation(&text),
                "{}",
                path.display()
            );
            TranslationConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 19, "{n} configs");
}

#[test]
fn a_short_run_on_the_kernel_devices_follows_the_cpu() {
    // Both emulator thread orders (and cuda when present): one epoch of a few steps, then the
    // validation perplexity; the devices sum in other orders, so close but not equal.
    let run_on = |dev: &Device, tag: &str| -> Vec<f64> {
        let dir = out_dir(tag);
        let text = format!(
            "task: translation\ndata: {{corpus: bible-tiny, max_train_pairs: 24, \
             max_eval_pairs: 8}}\nmodels:\n  student: {{family: qd_lstm, word_vec_size: 6, \
             rnn_size: 8}}\nsequence:\n  train: {{epochs: 2, batch_size: 8}}\n\
             params: {{save_directory: {}}}\nhyperparameters: {{seed: 5, dropout: 0.2}}\n",
            dir.display()
        );
        let cfg = TranslationConfig::parse(&text, "t").unwrap();
        run(&cfg, dev, &fixtures(), RunOptions::default()).unwrap();
        metrics(&dir)
            .iter()
            .filter_map(|l| l["valid_ppl"].as_f64().or(l["test_ppl"].as_f64()))
            .collect()
    };
    let want = run_on(&Device::Cpu, "dev-cpu");
    assert_eq!(want.len(), 3);
    for (i, dev) in lit_engine::testing::kernel_devices().iter().enumerate() {
        let got = run_on(dev, &format!("dev-{i}"));
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-3 * w,
                "{}: {got:?} vs cpu {want:?}",
                dev.name()
            );
        }
    }
}
