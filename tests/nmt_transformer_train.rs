//! `lit-engine train` with the `transformer` family (LMA's Transformer, SPEC-TRANSLATION §5–6)
//! on the tiny Bible corpus in tests/fixtures/nmt, with a d = 16 model: training lowers the
//! validation perplexity (relu and lma); the checkpoint has the seed's state-dict names in §5.2
//! order plus the LMA running statistics in its sidecar; the test perplexity is the eval-mode
//! perplexity of the committed weights and statistics; a stopped and resumed LMA run equals an
//! uninterrupted one bit for bit; `translate` gives one line per input; config mistakes name
//! their key.

mod nmt_support;
use lit_engine::autograd::Graph;
use lit_engine::checkpoint;
use lit_engine::nmt::batches::{eval_batches, Batch};
use lit_engine::nmt::config::TranslationConfig;
use lit_engine::nmt::train::{build_model_sized, corpus, run, RunOptions};
use lit_engine::nmt::vocab::{Vocab, PAD_ID};
use lit_engine::ops::token_loss::{token_loss_forward, TokenLoss};
use lit_engine::rng::Rng;
use lit_engine::Device;
use nmt_support::{column, metrics, tensors};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nmt")
}

fn out_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lit-nmt-tf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The config text of a d = 16 `activation` student over the fixture corpus writing to `dir`.
fn config_text(dir: &Path, activation: &str, layers: usize, epochs: usize) -> String {
    format!(
        "task: translation\n\
         data: {{corpus: bible-tiny, src: es, tgt: en}}\n\
         models:\n  student: {{family: transformer, d: 16, layers: {layers}, activation: \
         {activation}, ffn_hidden: 32}}\n\
         sequence:\n  train: {{epochs: {epochs}, optimizer: adam, lr: 1.0, warmup_steps: 100, \
         max_grad_norm: 0, batch_size: 100, batch_unit: tokens}}\n\
         params: {{save_directory: {}}}\n\
         hyperparameters: {{seed: 3, dropout: 0.1}}\n",
        dir.display()
    )
}

fn config(dir: &Path, activation: &str, layers: usize, epochs: usize) -> TranslationConfig {
    let c = TranslationConfig::parse(&config_text(dir, activation, layers, epochs), "t").unwrap();
    c.validate().unwrap();
    c
}

fn sidecar(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(checkpoint::sidecar_path(path)).unwrap()).unwrap()
}

#[test]
fn training_lowers_the_validation_perplexity_for_relu_and_lma() {
    for act in ["relu", "lma"] {
        let dir = out_dir(&format!("lowers-{act}"));
        let summary = run(
            &config(&dir, act, 1, 4),
            &Device::Cpu,
            &fixtures(),
            RunOptions::default(),
        )
        .unwrap();
        let lines = metrics(&dir);
        let ppl = column(&lines, "valid_ppl");
        assert_eq!(ppl.len(), 4, "{lines:?}");
        let vocab = Vocab::load(&dir.join("vocab.tgt.json")).unwrap().len() as f64;
        eprintln!("{act}: validation perplexity by epoch {ppl:?}, |V_tgt| {vocab}");
        assert!(ppl[3] < 0.7 * ppl[0], "{act}: {ppl:?}");
        assert!(ppl[3] < 0.3 * vocab, "{act}: {ppl:?} vs |V| {vocab}");
        // Noam: the rate rises during the warm-up (100 steps, about 2 epochs) and then falls.
        let lr = column(&lines, "lr");
        assert!(lr[1] > lr[0] && lr[3] < lr[2], "{act}: {lr:?}");
        // The test split is harder than the validation one for so small a model (relu 736,
        // lma 698 at |V| 1132); it must still beat the uniform guess.
        assert!(
            summary.stages[0].test_ppl < vocab,
            "{act}: {}",
            summary.stages[0].test_ppl
        );
    }
}

/// SPEC §5.2 names of `layers` encoder and decoder layers with the LMA activation, in order.
fn seed_names(layers: usize) -> Vec<String> {
    let attn = |p: &str| {
        [
            "linear_keys.weight",
            "linear_values.weight",
            "linear_query.weight",
        ]
        .iter()
        .map(|w| format!("{p}.{w}"))
        .chain(["a_2", "b_2"].map(|w| format!("{p}.layer_norm.{w}")))
        .collect::<Vec<_>>()
    };
    let ffn = |p: &str| {
        [
            "w_1.weight",
            "w_1.bias",
            "w_2.weight",
            "w_2.bias",
            "layer_norm.a_2",
            "layer_norm.b_2",
            "act.alphas",
            "act.betas",
        ]
        .map(|w| format!("{p}.feed_forward.{w}"))
        .to_vec()
    };
    let emb = "embeddings.make_embedding.emb_luts.0.weight";
    let mut want = vec![format!("encoder.{emb}")];
    for i in 0..layers {
        let p = format!("encoder.transformer.{i}");
        want.extend(attn(&format!("{p}.self_attn")));
        want.extend(ffn(&p));
    }
    want.push(format!("decoder.{emb}"));
    for i in 0..layers {
        let p = format!("decoder.transformer_layers.{i}");
        want.extend(attn(&format!("{p}.self_attn")));
        want.extend(attn(&format!("{p}.context_attn")));
        want.extend(ffn(&p));
    }
    want.extend(["generator.0.weight", "generator.0.bias"].map(String::from));
    want
}

/// The LMA running statistics in a sidecar's `state`: name → values.
fn lma_state(side: &serde_json::Value) -> Vec<(String, Vec<f64>)> {
    let state = side["state"].as_object().cloned().unwrap_or_default();
    state
        .iter()
        .map(|(k, v)| {
            let values = v["values"]
                .as_array()
                .unwrap_or_else(|| panic!("{k}: {v}"))
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            (k.clone(), values)
        })
        .collect()
}

#[test]
fn the_checkpoint_has_the_seed_names_and_the_lma_statistics_and_test_ppl_is_eval_mode() {
    let dir = out_dir("names");
    let cfg = config(&dir, "lma", 2, 1);
    let summary = run(&cfg, &Device::Cpu, &fixtures(), RunOptions::default()).unwrap();
    let path = &summary.stages[0].checkpoint;
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let order: Vec<String> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["lit_engine.key_order"]).unwrap();
    assert_eq!(order, seed_names(2));
    let src = Vocab::load(&dir.join("vocab.src.json")).unwrap();
    let tgt = Vocab::load(&dir.join("vocab.tgt.json")).unwrap();
    let shapes: std::collections::HashMap<String, Vec<usize>> =
        tensors(path).into_iter().map(|(n, s, _)| (n, s)).collect();
    let emb = "embeddings.make_embedding.emb_luts.0.weight";
    assert_eq!(shapes[&format!("encoder.{emb}")], [src.len(), 16]);
    assert_eq!(
        shapes["decoder.transformer_layers.1.feed_forward.w_1.weight"],
        [32, 16]
    );
    assert_eq!(shapes["generator.0.weight"], [tgt.len(), 16]);
    assert!(!shapes.keys().any(|k| k.contains("mv_")), "{shapes:?}");

    // The running statistics of the 4 FFNs, trained away from their initial 0, in the sidecars of
    // the checkpoint and of the run state (the seed loses them, L3).
    let side = sidecar(path);
    assert_eq!(side["model"]["family"], "transformer", "{}", side["model"]);
    let state = lma_state(&side);
    assert_eq!(state.len(), 8, "{state:?}");
    for (name, v) in &state {
        assert!(name.ends_with(".act.mv_mean") || name.ends_with(".act.mv_std"));
        assert!(
            v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != 0.0),
            "{name}"
        );
    }
    let committed = dir.join("run-last.safetensors");
    assert_eq!(lma_state(&sidecar(&committed)).len(), 8);

    // The stage's test perplexity is the eval-mode (running statistics, no dropout) perplexity of
    // the committed weights and statistics, recomputed here by hand.
    let data = corpus::prepare(&cfg, &fixtures()).unwrap();
    let vocabs = (data.src_vocab.len(), data.tgt_vocab.len());
    let spec = cfg.models.student.as_ref().unwrap();
    let dev = Device::Cpu;
    let mut m = build_model_sized(spec, vocabs, 0.1, &dev, &mut Rng::new(9)).unwrap();
    checkpoint::load_into(&committed, &mut m.store).unwrap();
    let stage = cfg.sequence.train.as_ref().unwrap();
    let (mut nll, mut tokens) = (0f64, 0usize);
    for ids in eval_batches(&data.test, stage.eval_batch(), true).unwrap() {
        let batch = Batch::new(&data.test, &ids).unwrap();
        let lengths: Vec<usize> = batch.src_lengths.iter().map(|&n| n as usize).collect();
        let mut g = Graph::no_grad(&dev);
        let out = m
            .net
            .forward(
                &mut g,
                &mut m.store,
                &batch.src_tensor(&dev).unwrap(),
                &lengths,
                &batch.decoder_input(&dev).unwrap(),
                false,
                &mut Rng::new(1),
            )
            .unwrap();
        let sums = token_loss_forward(
            g.value(out.logp()),
            &batch.targets(&dev).unwrap(),
            None,
            &TokenLoss::nll(PAD_ID),
        )
        .unwrap()
        .sums
        .to_vec()
        .unwrap();
        nll += sums[0] as f64;
        tokens += batch.target_tokens();
    }
    let want = (nll / tokens as f64).min(100.0).exp();
    assert_eq!(summary.stages[0].test_ppl, want);
}

#[test]
fn a_stopped_and_resumed_lma_run_equals_an_uninterrupted_one() {
    let whole = out_dir("whole");
    run(
        &config(&whole, "lma", 1, 2),
        &Device::Cpu,
        &fixtures(),
        RunOptions::default(),
    )
    .unwrap();
    let parts = out_dir("parts");
    let cfg = config(&parts, "lma", 1, 2);
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
        !run(&cfg, &Device::Cpu, &fixtures(), stop(9, true))
            .unwrap()
            .stopped
    );
    let name = "student.safetensors";
    let (a, b) = (tensors(&whole.join(name)), tensors(&parts.join(name)));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x == y, "`{}` differs after stop and resume", x.0);
    }
    let (sa, sb) = (
        lma_state(&sidecar(&whole.join(name))),
        lma_state(&sidecar(&parts.join(name))),
    );
    assert_eq!(sa.len(), 4);
    assert_eq!(
        sa, sb,
        "the LMA running statistics differ after stop and resume"
    );
    let (a, b) = (metrics(&whole), metrics(&parts));
    assert_eq!(a.len(), 3, "{a:?}");
    assert_eq!(a, b);
}

#[test]
fn translate_gives_one_line_per_input_line() {
    let dir = out_dir("translate");
    let cfg = config(&dir, "lma", 1, 4);
    let summary = run(&cfg, &Device::Cpu, &fixtures(), RunOptions::default()).unwrap();
    let ckpt = &summary.stages[0].checkpoint;
    let tgt = Vocab::load(&dir.join("vocab.tgt.json")).unwrap();
    let input = "En el principio crió Dios los cielos y la tierra.\n\nY dijo Dios\npalabra\n";
    let translator =
        lit_engine::nmt::train::translate::Translator::load(ckpt, &Device::Cpu).unwrap();
    assert_eq!(
        translator.seed_batch_size(),
        10,
        "LMA translates 10 sentences a batch"
    );
    let out = lit_engine::nmt::train::translate::translate_text(
        &cfg,
        ckpt,
        &Device::Cpu,
        input.as_bytes(),
        (3, None),
    )
    .unwrap();
    assert_eq!(out.len(), 4, "{out:?}");
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
    assert!(!out[0].is_empty(), "{out:?}");
}

#[test]
fn transformer_config_mistakes_name_their_key() {
    let dir = out_dir("errors");
    let good = config_text(&dir, "relu", 1, 1);
    for (from, to, want) in [
        (
            "d: 16",
            "d: 12",
            "models.student.d must be divisible by the 8 heads (got 12)",
        ),
        ("d: 16", "d: 16, heads: 4", "models.student.heads must be 8"),
        (
            "d: 16",
            "rnn_size: 16",
            "models.student.rnn_size is not a key of the `transformer`",
        ),
        ("d: 16", "d: 0", "models.student.d must be in 1..="),
        (
            "activation: relu",
            "activation: rleu",
            "(did you mean `relu`?)",
        ),
        (
            "ffn_hidden: 32",
            "ffn_hidden: 0",
            "models.student.ffn_hidden must be in 1..=",
        ),
        (
            "family: transformer",
            "family: transfomer",
            "(did you mean `transformer`?)",
        ),
        (
            "layers: 1",
            "layers: 100000",
            "models.student.layers must be in 1..=",
        ),
    ] {
        assert!(good.contains(from), "{from}");
        let c = TranslationConfig::parse(&good.replace(from, to), "t").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{to}: {e}");
    }
    let text = good.replace(", activation: relu", "");
    let e = TranslationConfig::parse(&text, "t")
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("models.student.activation must be one of relu, lma, prelu, swish"),
        "{e}"
    );
    // QD keys stay as they were, and the Transformer's are refused there.
    let qd = "{family: qd_lstm, word_vec_size: 8, rnn_size: 8}";
    let student = good
        .lines()
        .find(|l| l.contains("student:"))
        .unwrap()
        .to_string();
    let text = good.replace(&student, &format!("  student: {qd}"));
    TranslationConfig::parse(&text, "t")
        .unwrap()
        .validate()
        .unwrap();
    let text = good.replace(
        &student,
        &format!("  student: {}", qd.replace('}', ", d: 8}")),
    );
    let e = TranslationConfig::parse(&text, "t")
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("models.student.d is not a key of the `qd_lstm` family"),
        "{e}"
    );
}
