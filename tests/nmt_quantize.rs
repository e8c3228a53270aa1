//! Quantization of the translation models (`nmt::quantize`, SPEC-TRANSLATION §3.5): the B6
//! selection on a real QD store, the straight-through batch wrapper against a hand-made
//! quantize → forward → backward, the B9 first batch, the final all-parameter quantization and
//! the packed sizes.

use lit_engine::distill::quantize::quantize_uniform;
use lit_engine::models::nmt_lstm::{QdNmt, QdNmtConfig};
use lit_engine::nmt::batches::{Batch, Example};
use lit_engine::nmt::model::NmtModel;
use lit_engine::nmt::quantize::{
    quantize_all, quantized_size, QdBatchQuantizer, TranslationQuantization,
};
use lit_engine::nmt::vocab::PAD_ID;
use lit_engine::nn::{EntryKind, ParamStore};
use lit_engine::ops::token_loss::{token_loss, TokenLoss};
use lit_engine::rng::Rng;
use lit_engine::{Device, Error, Graph, Result};
use std::collections::BTreeSet;

const BITS: u32 = 2;

fn tiny(seed: u64) -> (NmtModel, ParamStore) {
    let cfg = QdNmtConfig {
        src_vocab: 30,
        tgt_vocab: 40,
        word_vec_size: 12,
        rnn_size: 10,
        layers: 1,
        dropout: 0.0,
    };
    let mut store = ParamStore::new();
    let m = QdNmt::new(&mut store, cfg, &Device::Cpu, &mut Rng::new(seed)).unwrap();
    (NmtModel::QdLstm(m), store)
}

fn batch(seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let mut pick = |n: usize, lo: i32, hi: i32| -> Vec<i32> {
        (0..n)
            .map(|_| lo + rng.below((hi - lo) as usize) as i32)
            .collect()
    };
    let examples: Vec<Example> = [(5, 4), (4, 6), (2, 3)]
        .iter()
        .enumerate()
        .map(|(line, &(s, t))| Example {
            src: pick(s, 4, 30),
            tgt: pick(t, 4, 40),
            line,
            first_word_chars: (0, 0),
        })
        .collect();
    Batch::new(&examples, &[0, 1, 2]).unwrap()
}

/// Forward + NLL + backward on the cpu, leaving the gradients in `store`.
fn forward_backward(model: &NmtModel, store: &mut ParamStore, b: &Batch) -> Result<()> {
    let dev = Device::Cpu;
    store.zero_grads();
    let mut g = Graph::new(&dev);
    let lengths: Vec<usize> = b.src_lengths.iter().map(|&n| n as usize).collect();
    let (src, tgt_in) = (b.src_tensor(&dev)?, b.decoder_input(&dev)?);
    let f = model.forward(
        &mut g,
        store,
        &src,
        &lengths,
        &tgt_in,
        false,
        &mut Rng::new(1),
    )?;
    let targets = b.targets(&dev)?;
    let (loss, _) = token_loss(&mut g, f.logp(), &targets, None, TokenLoss::nll(PAD_ID))?;
    g.backward(loss)?;
    g.accumulate_param_grads(store)
}

fn param_names(store: &ParamStore) -> Vec<String> {
    store
        .iter()
        .filter(|(_, p)| p.kind == EntryKind::Param)
        .map(|(n, _)| n.to_string())
        .collect()
}

fn values(store: &ParamStore, name: &str) -> Vec<f32> {
    store.get(name).unwrap().value.to_vec().unwrap()
}

fn grads(store: &ParamStore) -> Vec<(String, Vec<f32>)> {
    param_names(store)
        .into_iter()
        .map(|n| {
            let g = store
                .get(&n)
                .unwrap()
                .grad
                .as_ref()
                .unwrap()
                .to_vec()
                .unwrap();
            (n, g)
        })
        .collect()
}

/// The seed's selection (B6): everything but the encoder embedding and the generator BIAS.
const ENC_EMB: &str = "encoder.embeddings.make_embedding.emb_luts.0.weight";
const GEN_BIAS: &str = "generator.0.bias";

#[test]
fn training_selection_skips_the_encoder_embedding_and_the_generator_bias() {
    let (_, store) = tiny(1);
    let all = param_names(&store);
    assert_eq!(all.len(), 14, "1-layer student: 14 tensors (SPEC §2.2)");
    assert_eq!(all[0], ENC_EMB);
    assert_eq!(all[13], GEN_BIAS);
    let q = TranslationQuantization::new(4, Some(256)).unwrap();
    assert!(!q.quantize_first_and_last_layer && !q.quantize_first_batch);
    let names = q.training_spec(&store).unwrap().names;
    assert_eq!(names, all[1..13].to_vec());
    assert!(names.contains(&"generator.0.weight".to_string()));
    assert!(names.contains(&"decoder.embeddings.make_embedding.emb_luts.0.weight".to_string()));
    let every = TranslationQuantization {
        quantize_first_and_last_layer: true,
        ..q
    };
    assert_eq!(every.training_spec(&store).unwrap().names, all);
    assert!(TranslationQuantization::new(0, Some(256)).is_err());
    assert!(TranslationQuantization::new(4, Some(0)).is_err());
}

#[test]
fn batch_wrapper_takes_the_gradient_at_the_quantized_point_and_restores_full_precision() {
    let (model, mut store) = tiny(2);
    let b = batch(3);
    let all = param_names(&store);
    let original: Vec<Vec<f32>> = all.iter().map(|n| values(&store, n)).collect();

    // By hand: quantize the B6 selection of a copy, forward, backward.
    let mut manual = store.clone();
    for name in &all[1..all.len() - 1] {
        let v = manual.get(name).unwrap().value.clone();
        manual.get_mut(name).unwrap().value = quantize_uniform(&v, BITS, Some(256)).unwrap().values;
    }
    forward_backward(&model, &mut manual, &b).unwrap();

    let q = TranslationQuantization::new(BITS, Some(256)).unwrap();
    let mut wrapper = QdBatchQuantizer::resume(&store, &q, 1).unwrap();
    assert!(wrapper.quantizes_next());
    wrapper
        .run(&mut store, |s| {
            for name in &all {
                assert_eq!(
                    values(s, name),
                    values(&manual, name),
                    "{name} inside the wrapper"
                );
            }
            forward_backward(&model, s, &b)
        })
        .unwrap();
    for (name, before) in all.iter().zip(&original) {
        assert_eq!(
            &values(&store, name),
            before,
            "{name} not restored bit for bit"
        );
    }
    assert_eq!(grads(&store), grads(&manual));
    // The quantized point really differs from the full-precision one (2 bits).
    assert_ne!(values(&manual, &all[1]), original[1]);

    // A failing forward still leaves the full-precision weights.
    let err = wrapper.run(&mut store, |_| -> Result<()> {
        Err(Error::Config("boom".into()))
    });
    assert!(err.is_err());
    for (name, before) in all.iter().zip(&original) {
        assert_eq!(&values(&store, name), before, "{name} after an error");
    }
    assert_eq!(wrapper.batches_done(), 3);
}

#[test]
fn first_batch_of_a_qd_run_is_unquantized_b9() {
    let (_, mut store) = tiny(4);
    let name = "generator.0.weight";
    let full = values(&store, name);
    let q = TranslationQuantization::new(BITS, Some(256)).unwrap();
    let mut seen = Vec::new();
    let mut wrapper = QdBatchQuantizer::new(&store, &q).unwrap();
    for _ in 0..3 {
        wrapper
            .run(&mut store, |s| {
                seen.push(values(s, name) == full);
                Ok(())
            })
            .unwrap();
    }
    assert_eq!(seen, [true, false, false], "full precision at batch 1 only");

    let eager = TranslationQuantization {
        quantize_first_batch: true,
        ..q
    };
    let mut wrapper = QdBatchQuantizer::new(&store, &eager).unwrap();
    assert!(wrapper.quantizes_next());
    wrapper
        .run(&mut store, |s| {
            assert_ne!(values(s, name), full);
            Ok(())
        })
        .unwrap();
}

#[test]
fn final_quantization_touches_every_parameter_with_at_most_2_pow_bits_levels_per_bucket() {
    let (_, store) = tiny(5);
    let all = param_names(&store);
    let out = quantize_all(&store, BITS, Some(256)).unwrap();
    assert_eq!(
        out.spec.names, all,
        "every parameter, first and last included (§3.5)"
    );
    for name in &all {
        let (before, after) = (values(&store, name), values(&out.store, name));
        assert_ne!(before, after, "{name} untouched");
        for (k, bucket) in after.chunks(256).enumerate() {
            let levels: BTreeSet<u32> = bucket.iter().map(|v| v.to_bits()).collect();
            assert!(
                levels.len() <= 1 << BITS,
                "{name} bucket {k}: {} values",
                levels.len()
            );
        }
    }
    assert!(
        values(&store, ENC_EMB).len() > 256,
        "the test needs a multi-bucket tensor"
    );
    // The trained store is left as it was.
    assert_eq!(values(&store, GEN_BIAS), values(&tiny(5).1, GEN_BIAS));
}

#[test]
fn sizes_pack_levels_and_two_floats_per_bucket() {
    let (_, store) = tiny(6);
    let all = param_names(&store);
    let numel = |n: &String| values(&store, n).len();
    let full: usize = all.iter().map(|n| 4 * numel(n)).sum();
    let packed = |n: usize, bits: usize| (n * bits).div_ceil(8) + 8 * n.div_ceil(256);
    for bits in [2u32, 4, 8] {
        let out = quantize_all(&store, bits, Some(256)).unwrap();
        let want: usize = all.iter().map(|n| packed(numel(n), bits as usize)).sum();
        assert_eq!(out.size.full_precision_bytes, full);
        assert_eq!(out.size.packed_bytes, want, "{bits} bits");
        // Training selection: the B6 tensors stay f32.
        let q = TranslationQuantization::new(bits, Some(256)).unwrap();
        let spec = q.training_spec(&store).unwrap();
        let skipped = 4 * numel(&all[0]) + 4 * numel(&all[13]);
        let want_train =
            want - packed(numel(&all[0]), bits as usize) - packed(numel(&all[13]), bits as usize)
                + skipped;
        assert_eq!(quantized_size(&store, &spec).packed_bytes, want_train);
    }
}
