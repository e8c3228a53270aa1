//! LMA's translation Transformer (`models::nmt_transformer`): the seed's parameter names, shapes,
//! order, count and initialisation (SPEC-TRANSLATION §5.2 / §5.8); the seed-probed example of §5.9
//! (hash-filled parameters, relu and lma); the forward expectations of the golden `nmt_step`
//! Transformer cases (encoder and decoder outputs, attention, log-probs, position table, LMA
//! statistics) on cpu and the emulator; the search step against the teacher-forced forward; and
//! the gradient through the whole model. The step itself (losses, Adam) is not covered here.

mod nmt_support;
use lit_engine::golden::locate::case_or_skip;
use lit_engine::golden::nmt_step::golden_batch;
use lit_engine::golden::{Case, Data, Produced};
use lit_engine::models::nmt_transformer::{
    parameter_count, NmtTransformer, NmtTransformerConfig, NmtTransformerOutput,
};
use lit_engine::nn::transformer::position::position_table;
use lit_engine::nn::ParamStore;
use lit_engine::params::EntryKind;
use lit_engine::rng::Rng;
use lit_engine::testing::{assert_close, kernel_devices, random_f32, spec_hash_fill};
use lit_engine::{Device, Graph, IndexTensor, Tensor};
use nmt_support::{ids, within};

fn all_devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    devices.extend(kernel_devices());
    devices
}

/// Names of the trained parameters, in registration order (LMA state left out).
fn param_names(store: &ParamStore) -> Vec<String> {
    store
        .iter()
        .filter(|(_, p)| p.kind == EntryKind::Param)
        .map(|(n, _)| n.to_string())
        .collect()
}

/// §5.2's key order for `layers` layers and activation parameters `act` (leaves under `.act`).
fn seed_keys(layers: usize, act: &[&str]) -> Vec<String> {
    let attn = |p: &str| {
        [
            "linear_keys.weight",
            "linear_values.weight",
            "linear_query.weight",
        ]
        .iter()
        .chain(&["layer_norm.a_2", "layer_norm.b_2"])
        .map(|k| format!("{p}.{k}"))
        .collect::<Vec<_>>()
    };
    let ffn = |p: &str| {
        let base = ["w_1.weight", "w_1.bias", "w_2.weight", "w_2.bias"];
        let ln = ["layer_norm.a_2", "layer_norm.b_2"];
        let acts: Vec<String> = act.iter().map(|a| format!("act.{a}")).collect();
        base.iter()
            .chain(&ln)
            .map(|k| k.to_string())
            .chain(acts)
            .map(|k| format!("{p}.feed_forward.{k}"))
            .collect::<Vec<_>>()
    };
    let emb = |side: &str| format!("{side}.embeddings.make_embedding.emb_luts.0.weight");
    let mut keys = vec![emb("encoder")];
    for i in 0..layers {
        let p = format!("encoder.transformer.{i}");
        keys.extend(attn(&format!("{p}.self_attn")));
        keys.extend(ffn(&p));
    }
    keys.push(emb("decoder"));
    for i in 0..layers {
        let p = format!("decoder.transformer_layers.{i}");
        keys.extend(attn(&format!("{p}.self_attn")));
        keys.extend(attn(&format!("{p}.context_attn")));
        keys.extend(ffn(&p));
    }
    keys.extend(["generator.0.weight".into(), "generator.0.bias".into()]);
    keys
}

#[test]
fn parameters_follow_the_seed_state_dict_count_and_init() {
    let dev = Device::Cpu;
    let (vs, vt, d, h) = (9, 11, 16, 48);
    for (act, extra) in [
        ("relu", vec![]),
        ("lma", vec!["alphas", "betas"]),
        ("prelu", vec!["alpha"]),
        ("swish", vec!["betas"]),
    ] {
        let cfg = NmtTransformerConfig {
            ffn_hidden: h,
            ..NmtTransformerConfig::seed(vs, vt, d, 2, act)
        };
        let mut store = ParamStore::new();
        NmtTransformer::new(&mut store, cfg.clone(), &dev, &mut Rng::new(3)).unwrap();
        assert_eq!(param_names(&store), seed_keys(2, &extra), "{act}");
        assert_eq!(Some(store.num_parameters()), parameter_count(&cfg), "{act}");
        let states: Vec<String> = store
            .iter()
            .filter(|(_, p)| p.kind != EntryKind::Param)
            .map(|(n, _)| n.to_string())
            .collect();
        let want_states = if act == "lma" { 8 } else { 0 };
        assert_eq!(states.len(), want_states, "{act}: {states:?}");
        assert!(states
            .iter()
            .all(|n| n.ends_with(".act.mv_mean") || n.ends_with(".act.mv_std")));
        let shape = |n: &str| store.get(n).unwrap().value.shape().to_vec();
        let values = |n: &str| store.get(n).unwrap().value.to_vec().unwrap();
        assert_eq!(shape(&seed_keys(1, &[])[0]), [vs, d]);
        assert_eq!(shape("generator.0.weight"), [vt, d]);
        assert_eq!(shape("generator.0.bias"), [vt]);
        let ffn = "decoder.transformer_layers.1.feed_forward";
        assert_eq!(shape(&format!("{ffn}.w_1.weight")), [h, d]);
        assert_eq!(shape(&format!("{ffn}.w_2.weight")), [d, h]);
        let ctx = "decoder.transformer_layers.1.context_attn";
        assert_eq!(shape(&format!("{ctx}.linear_keys.weight")), [d, d]);
        // §5.8: embeddings N(0,1) with the <blank> row (1) zero; linears U(±1/√fan_in).
        for side in ["encoder", "decoder"] {
            let w = values(&format!(
                "{side}.embeddings.make_embedding.emb_luts.0.weight"
            ));
            assert!(w[d..2 * d].iter().all(|&v| v == 0.0), "{side} <blank> row");
            assert!(
                w.iter().any(|&v| v.abs() > 1.0),
                "{side}: N(0, 1) reaches past 1"
            );
        }
        let bounded = |n: String, fan_in: usize| {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let v = values(&n);
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(
                max <= bound && max > 0.8 * bound,
                "{n}: max |w| {max}, bound {bound}"
            );
        };
        bounded(format!("{ctx}.linear_query.weight"), d);
        bounded(format!("{ffn}.w_1.weight"), d);
        bounded(format!("{ffn}.w_2.weight"), h);
        bounded("generator.0.weight".into(), d);
        assert!(values(&format!("{ctx}.layer_norm.a_2"))
            .iter()
            .all(|&v| v == 1.0));
        assert!(values(&format!("{ctx}.layer_norm.b_2"))
            .iter()
            .all(|&v| v == 0.0));
    }
    // §5.2's probed totals (full vocabularies 50002 / 50004, FFN 2048, ReLU).
    let total = |d, layers, act| {
        parameter_count(&NmtTransformerConfig::seed(50002, 50004, d, layers, act)).unwrap()
    };
    assert_eq!(total(512, 6, "relu"), 116_238_164);
    assert_eq!(total(256, 3, "relu"), 46_534_996);
    assert_eq!(total(128, 3, "relu"), 22_856_276);
    assert_eq!(total(64, 3, "relu"), 11_348_692);
    // Non-vocab student part: 8,082,432 for d = 256, LMA +96.
    let vocab = 256 * (50002 + 2 * 50004) + 50004;
    assert_eq!(total(256, 3, "relu") - vocab, 8_082_432);
    assert_eq!(total(256, 3, "lma") - vocab, 8_082_432 + 96);
    // Refused configurations.
    let mut store = ParamStore::new();
    let mut rng = Rng::new(1);
    for cfg in [
        NmtTransformerConfig::seed(9, 10, 12, 1, "relu"),
        NmtTransformerConfig::seed(9, 10, 16, 0, "relu"),
        NmtTransformerConfig::seed(9, 10, 16, 1, "aplu"),
        NmtTransformerConfig::seed(1, 10, 16, 1, "relu"),
        NmtTransformerConfig::seed(9, usize::MAX / 4, 16, 1, "relu"),
    ] {
        assert!(
            NmtTransformer::new(&mut store, cfg.clone(), &dev, &mut rng).is_err(),
            "{cfg:?}"
        );
    }
    assert!(store.is_empty());
}

/// The §5.9 model (d 16, 2 + 2 layers, FFN 2048, V 9 / 10) hash-filled over the parameters.
fn spec_model(act: &str, dev: &Device) -> (NmtTransformer, ParamStore) {
    let cfg = NmtTransformerConfig {
        dropout: 0.0,
        ..NmtTransformerConfig::seed(9, 10, 16, 2, act)
    };
    let mut store = ParamStore::new();
    let model = NmtTransformer::new(&mut store, cfg, dev, &mut Rng::new(1)).unwrap();
    for (t, name) in param_names(&store).iter().enumerate() {
        let shape = store.get(name).unwrap().value.shape().to_vec();
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|k| spec_hash_fill(t, k)).collect();
        store
            .set(name, Tensor::from_vec(&shape, v, dev).unwrap())
            .unwrap();
    }
    (model, store)
}

/// §2.6's batch: src [3, 2], tgt [4, 2] (decoder input = the first 3 rows).
const SPEC_SRC: [i32; 6] = [4, 5, 6, 7, 8, 1];
const SPEC_TGT: [i32; 8] = [2, 2, 4, 5, 6, 3, 3, 1];

#[test]
fn spec_example_forward_matches_the_seed() {
    let cases: [(&str, [f64; 6], [f64; 10], f64); 2] = [
        (
            "relu",
            [
                0.0322808, 0.1109608, 1.0379596, -0.0080183, 0.1464561, 0.1079149,
            ],
            [
                -2.343716, -2.789927, -2.757153, -2.265876, -2.190894, -2.454298, -2.788987,
                -1.417329, -3.295603, -1.989508,
            ],
            11.954509,
        ),
        (
            "lma",
            [
                1.0569386, 0.0290265, 0.3680346, -0.5550627, 0.0187842, -0.0868761,
            ],
            [
                -2.271008, -2.175398, -2.484847, -2.195610, -1.850204, -2.814857, -1.639964,
                -3.013734, -2.747463, -2.744253,
            ],
            11.119925,
        ),
    ];
    for dev in all_devices() {
        for (act, out0, logp0, nll_want) in &cases {
            let (model, mut store) = spec_model(act, &dev);
            let src = ids(&[3, 2], &SPEC_SRC, &dev);
            let tgt_in = ids(&[3, 2], &SPEC_TGT[..6], &dev);
            let mut g = Graph::no_grad(&dev);
            let mut rng = Rng::new(2);
            let out = model
                .forward(&mut g, &mut store, &src, &[3, 2], &tgt_in, true, &mut rng)
                .unwrap();
            let what = |s: &str| format!("{act} {s} on {}", dev.name());
            let dec = g.value(out.dec_out).to_vec().unwrap();
            within(&what("out[0,0,0:6]"), &dec[0..6], out0, 2e-6);
            let logp = g.value(out.logp).to_vec().unwrap();
            within(&what("logp[0,0]"), &logp[0..10], logp0, 2e-6);
            let nll: f64 = SPEC_TGT[2..]
                .iter()
                .enumerate()
                .filter(|(_, &y)| y != 1)
                .map(|(p, &y)| -(logp[p * 10 + y as usize] as f64))
                .sum();
            assert!((nll - nll_want).abs() < 2e-5, "{} nll {nll}", what("NLL"));
        }
    }
}

fn usize_arg(case: &Case, key: &str) -> usize {
    case.json["model"]["args"][key].as_u64().unwrap() as usize
}

fn i64_values(case: &Case, name: &str) -> (Vec<usize>, Vec<i64>) {
    match case.tensor(name).unwrap() {
        Data::I64 { shape, values } => (shape.clone(), values.clone()),
        Data::F32 { .. } => panic!("{name}: expected I64"),
    }
}

fn data(t: &Tensor) -> Data {
    Data::F32 {
        shape: t.shape().to_vec(),
        values: t.to_vec().unwrap(),
    }
}

/// The golden case's model with every `param.*` and `state.*` loaded; every stored parameter
/// must be one of the model's and vice versa.
fn golden_model(case: &Case, dev: &Device) -> (NmtTransformer, ParamStore) {
    let cfg = NmtTransformerConfig::from_args(&case.json["model"]["args"]).unwrap();
    assert_eq!(cfg.d, usize_arg(case, "d"));
    let mut store = ParamStore::new();
    let model = NmtTransformer::new(&mut store, cfg, dev, &mut Rng::new(1)).unwrap();
    let names = param_names(&store);
    let mut stored: Vec<&str> = case
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("param."))
        .collect();
    stored.sort_unstable();
    let mut ours: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    ours.sort_unstable();
    assert_eq!(stored, ours, "{}: parameter keys", case.name);
    for name in store.names() {
        let kind = store.get(&name).unwrap().kind;
        let key = match kind {
            EntryKind::Param => format!("param.{name}"),
            _ => format!("state.{name}"),
        };
        let t = case.f32_tensor(&key, dev).unwrap();
        store
            .set(
                &name,
                t.reshape(store.get(&name).unwrap().value.shape()).unwrap(),
            )
            .unwrap();
    }
    (model, store)
}

/// The teacher-forced forward of a golden case: `(output, graph, store after)`.
fn golden_run(case: &Case, dev: &Device) -> (NmtTransformerOutput, Graph, ParamStore) {
    let (model, mut store) = golden_model(case, dev);
    let batch = golden_batch(case).unwrap();
    let src = batch.src_tensor(dev).unwrap();
    let tgt_in = batch.decoder_input(dev).unwrap();
    let lengths: Vec<usize> = batch.src_lengths.iter().map(|&n| n as usize).collect();
    let mut g = Graph::new(dev);
    let train = case.json["mode"].as_str() == Some("train");
    let out = model
        .forward(
            &mut g,
            &mut store,
            &src,
            &lengths,
            &tgt_in,
            train,
            &mut Rng::new(2),
        )
        .unwrap();
    (out, g, store)
}

/// Every forward expectation of one golden Transformer case on `dev`: the failures and the
/// closest call (the largest L2 error as a fraction of its bound, with its name).
fn golden_forward(case: &Case, dev: &Device) -> (Vec<String>, f64, String) {
    let (out, g, store) = golden_run(case, dev);
    let mut produced = Produced::new();
    for (name, v) in [
        ("expect.enc_out", out.enc_out),
        ("expect.dec_out", out.dec_out),
        ("expect.attn", out.attn),
        ("expect.logp", out.logp),
    ] {
        produced.insert(name.into(), data(g.value(v)));
    }
    let rows = case.tensor("expect.pe").unwrap().shape()[0];
    let d = usize_arg(case, "d");
    let pe = Tensor::from_vec(&[rows, d], position_table(rows, d).unwrap(), &Device::Cpu);
    produced.insert("expect.pe".into(), data(&pe.unwrap()));
    for (name, p) in store.iter().filter(|(_, p)| p.kind == EntryKind::State) {
        produced.insert(format!("expect.state_after.{name}"), data(&p.value));
    }
    for (name, t) in g.stats() {
        produced.insert(format!("expect.{name}"), data(t));
    }
    let lma_layers = store
        .iter()
        .filter(|(_, p)| p.kind == EntryKind::State)
        .count()
        / 2;
    let want = 5 + 4 * lma_layers;
    assert_eq!(
        produced.len(),
        want,
        "{}: produced {:?}",
        case.name,
        produced.keys()
    );
    let (failures, margins) = case.compare_measured(&produced);
    let worst = margins
        .iter()
        .map(|m| (m.closeness.l2_ratio(), m.tensor.clone()))
        .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a });
    (failures, worst.0, worst.1)
}

const GOLDEN_CASES: [&str; 4] = [
    "nmt_lma_relu_d8_l1_ff64_b2_nll",
    "nmt_lma_lma_d8_l1_ff64_b3_kd",
    "nmt_lma_lma_d16_l2_ff64_b3_nll_adam4000",
    "nmt_lma_swish_d8_l2_ff64_b3_kd_adam500",
];

#[test]
fn golden_transformer_cases_forward_matches_pytorch() {
    for name in GOLDEN_CASES {
        let Some(path) = case_or_skip(name) else {
            continue;
        };
        let case = Case::load(&path).unwrap();
        for dev in all_devices() {
            let (failures, ratio, worst) = golden_forward(&case, &dev);
            assert!(
                failures.is_empty(),
                "{name} on {}: {failures:?}",
                dev.name()
            );
            // Far inside the case's bounds (rel 1e-4 for model outputs): ~1e-5 relative.
            assert!(
                ratio <= 0.1,
                "{name} on {}: {worst} at {ratio} of its bound",
                dev.name()
            );
            let dev = dev.name();
            println!("{name} on {dev}: worst L2 error {ratio:.3} of its bound ({worst})");
        }
    }
}

/// A small model of `act` with the store's own init (alphas/betas of LMA made non-zero).
fn small_model(act: &str, dropout: f32, dev: &Device) -> (NmtTransformer, ParamStore) {
    let cfg = NmtTransformerConfig {
        ffn_hidden: 16,
        dropout,
        ..NmtTransformerConfig::seed(9, 10, 8, 2, act)
    };
    let mut store = ParamStore::new();
    let model = NmtTransformer::new(&mut store, cfg, dev, &mut Rng::new(11)).unwrap();
    for name in param_names(&store) {
        if name.ends_with("act.alphas") || name.ends_with("act.betas") {
            let v = random_f32(5, 8).iter().map(|x| 0.2 * x).collect();
            store
                .set(&name, Tensor::from_vec(&[8], v, dev).unwrap())
                .unwrap();
        }
    }
    (model, store)
}

/// src [4, 3] and tgt_in [5, 3], time-major, with padding in both.
const SMALL_SRC: [i32; 12] = [4, 5, 6, 7, 8, 2, 3, 1, 1, 5, 1, 1];
const SMALL_TGT: [i32; 15] = [2, 2, 2, 4, 5, 6, 7, 3, 3, 3, 1, 1, 8, 1, 1];

#[test]
fn decode_prefix_is_the_forward_at_the_last_position() {
    for dev in all_devices() {
        for act in ["relu", "swish"] {
            let (model, mut store) = small_model(act, 0.1, &dev);
            let (b, t, s, v) = (3, 5, 4, 10);
            let src = ids(&[s, b], &SMALL_SRC, &dev);
            let tgt_in = ids(&[t, b], &SMALL_TGT, &dev);
            let mut g = Graph::no_grad(&dev);
            let mut rng = Rng::new(1);
            let full = model
                .forward(
                    &mut g,
                    &mut store,
                    &src,
                    &[4, 2, 1],
                    &tgt_in,
                    false,
                    &mut rng,
                )
                .unwrap();
            let logp = g.value(full.logp).to_vec().unwrap(); // [T, B, V]
            let attn = g.value(full.attn).to_vec().unwrap(); // [B, T, S]
            let enc = g.value(full.enc_out).to_vec().unwrap(); // [S, B, d]
            let mut g = Graph::no_grad(&dev);
            let memory = model.encode(&mut g, &mut store, &src).unwrap();
            let mem = memory.enc.to_vec().unwrap(); // [B, S, d]
            for (i, m) in mem.iter().enumerate() {
                let (bb, ss, j) = (i / (s * 8), (i / 8) % s, i % 8);
                assert_eq!(*m, enc[(ss * b + bb) * 8 + j], "memory[{i}]");
            }
            let beams = memory.repeat(2).unwrap();
            for p in 1..=t {
                let what = format!("{act} prefix {p} on {}", dev.name());
                let mut g = Graph::no_grad(&dev);
                let prefix = ids(&[p, b], &SMALL_TGT[..p * b], &dev);
                let (lp, at) = model
                    .decode_prefix(&mut g, &mut store, &memory, &prefix)
                    .unwrap();
                assert_eq!(g.value(lp).shape(), [b, v]);
                assert_eq!(g.value(at).shape(), [b, s]);
                let want_lp = &logp[(p - 1) * b * v..p * b * v];
                assert_close(&what, &g.value(lp).to_vec().unwrap(), want_lp, 1e-5, 1e-7);
                let want_at: Vec<f32> = (0..b)
                    .flat_map(|bb| attn[(bb * t + p - 1) * s..(bb * t + p) * s].to_vec())
                    .collect();
                assert_close(&what, &g.value(at).to_vec().unwrap(), &want_at, 1e-5, 1e-7);
                // Beams: the memory tiled twice and the prefix tiled the same way (row k·B + b).
                let tiled: Vec<i32> = (0..p)
                    .flat_map(|r| {
                        let row = &SMALL_TGT[r * b..(r + 1) * b];
                        row.iter().chain(row).copied().collect::<Vec<_>>()
                    })
                    .collect();
                let prefix2 = ids(&[p, 2 * b], &tiled, &dev);
                let (lp2, _) = model
                    .decode_prefix(&mut g, &mut store, &beams, &prefix2)
                    .unwrap();
                let lp2 = g.value(lp2).to_vec().unwrap();
                assert_close(&what, &lp2[..b * v], want_lp, 1e-5, 1e-7);
                assert_close(&what, &lp2[b * v..], want_lp, 1e-5, 1e-7);
            }
            let mut g = Graph::no_grad(&dev);
            let wrong = ids(&[2, 2], &[2, 2, 4, 5], &dev);
            assert!(model
                .decode_prefix(&mut g, &mut store, &memory, &wrong)
                .is_err());
            let empty = IndexTensor::from_vec(&[0, b], vec![], &dev).unwrap();
            assert!(model
                .decode_prefix(&mut g, &mut store, &memory, &empty)
                .is_err());
            assert!(memory.repeat(0).is_err());
        }
    }
}

#[test]
fn lma_search_steps_update_the_running_statistics_as_the_seed() {
    let dev = Device::Cpu;
    let (model, mut store) = small_model("lma", 0.0, &dev);
    let mv = |store: &ParamStore| -> Vec<f32> {
        store
            .iter()
            .filter(|(_, p)| p.kind == EntryKind::State)
            .map(|(_, p)| p.value.item().unwrap())
            .collect()
    };
    assert!(mv(&store).iter().all(|&v| v == 0.0));
    let src = ids(&[4, 3], &SMALL_SRC, &dev);
    let mut g = Graph::no_grad(&dev);
    let memory = model.encode(&mut g, &mut store, &src).unwrap();
    let after_encode = mv(&store);
    // Encoder statistics move (0.01 of the batch's), the decoder's are untouched.
    assert!(
        after_encode[..4].iter().all(|&v| v != 0.0),
        "{after_encode:?}"
    );
    assert!(
        after_encode[4..].iter().all(|&v| v == 0.0),
        "{after_encode:?}"
    );
    let prefix = ids(&[2, 3], &SMALL_TGT[..6], &dev);
    model
        .decode_prefix(&mut g, &mut store, &memory, &prefix)
        .unwrap();
    let after_step = mv(&store);
    assert_eq!(after_step[..4], after_encode[..4]);
    assert!(after_step[4..].iter().all(|&v| v != 0.0), "{after_step:?}");
}

/// `(Σ logp·w, gradients by name)` of a teacher-forced train-mode pass over the small batch.
fn weighted_logp(
    model: &NmtTransformer,
    store: &mut ParamStore,
    w: &[f32],
    backward: bool,
) -> (f64, Vec<(String, Tensor)>) {
    let dev = Device::Cpu;
    let src = ids(&[4, 3], &SMALL_SRC, &dev);
    let tgt_in = ids(&[5, 3], &SMALL_TGT, &dev);
    let mut g = Graph::new(&dev);
    let out = model
        .forward(
            &mut g,
            store,
            &src,
            &[4, 2, 1],
            &tgt_in,
            true,
            &mut Rng::new(3),
        )
        .unwrap();
    let logp = g.value(out.logp).to_vec().unwrap();
    let value = logp.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum();
    if !backward {
        return (value, vec![]);
    }
    let seed = Tensor::from_vec(&[5, 3, 10], w.to_vec(), &dev).unwrap();
    g.backward_with(out.logp, Some(seed)).unwrap();
    store.zero_grads();
    g.accumulate_param_grads(store).unwrap();
    let grads = param_names(store)
        .into_iter()
        .map(|n| {
            let grad = store.get(&n).unwrap().grad.clone();
            let grad = grad.unwrap_or_else(|| panic!("{n}: no gradient"));
            (n, grad)
        })
        .collect();
    (value, grads)
}

#[test]
fn gradient_reaches_every_parameter_and_matches_finite_differences() {
    let w = random_f32(21, 5 * 3 * 10);
    for act in ["lma", "swish"] {
        let (model, mut store) = small_model(act, 0.0, &Device::Cpu);
        let (_, grads) = weighted_logp(&model, &mut store, &w, true);
        for (name, grad) in &grads {
            let g = grad.to_vec().unwrap();
            if name.contains("emb_luts") {
                assert!(
                    g[8..16].iter().all(|&v| v == 0.0),
                    "{act} {name}: <blank> row"
                );
            }
            assert!(g.iter().any(|&v| v != 0.0), "{act} {name}: zero gradient");
        }
        if act == "lma" {
            continue; // piecewise in its segments: no finite differences across them
        }
        // Directional derivatives along random directions over all parameters (f32 forward).
        for seed in 0..3u64 {
            let dirs: Vec<(String, Vec<f32>)> = grads
                .iter()
                .enumerate()
                .map(|(i, (n, g))| {
                    let mut d = random_f32(100 * seed + i as u64, g.numel());
                    if n.contains("emb_luts") {
                        d[8..16].fill(0.0); // the <blank> row is used but gets no gradient
                    }
                    (n.clone(), d)
                })
                .collect();
            let analytic: f64 = grads
                .iter()
                .zip(&dirs)
                .map(|((_, g), (_, d))| {
                    let g = g.to_vec().unwrap();
                    g.iter()
                        .zip(d)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                })
                .sum();
            let eps = 1e-3f32; // converged: 3e-3 is 0.6% off, 1e-2 7% (all parameters move)
            let shifted = |sign: f32| {
                let mut s = store.clone();
                for (n, d) in &dirs {
                    let p = s.get(n).unwrap().value.clone();
                    let v: Vec<f32> = p
                        .to_vec()
                        .unwrap()
                        .iter()
                        .zip(d)
                        .map(|(x, d)| x + sign * eps * d)
                        .collect();
                    s.set(n, Tensor::from_vec(p.shape(), v, &Device::Cpu).unwrap())
                        .unwrap();
                }
                weighted_logp(&model, &mut s, &w, false).0
            };
            let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps as f64);
            let err = (analytic - numeric).abs() / numeric.abs().max(1.0);
            assert!(
                err < 2e-3,
                "{act} direction {seed}: analytic {analytic} vs {numeric}"
            );
        }
    }
}

/// d loss / d logp of the case's loss (`loss.train_loss`): NLL over the non-`<blank>` targets
/// `tgt[1:]`, or KD = 0.3·NLL + 0.7·KL(teacher ‖ model) over all positions; divided by B. The
/// loss itself belongs to the step (nmt-step); this seeds the model's backward with its gradient.
fn loss_gradient(case: &Case, logp_shape: &[usize]) -> Vec<f32> {
    let (tgt_shape, tgt) = i64_values(case, "input.tgt");
    let &[t, b, v] = logp_shape else {
        panic!("logp {logp_shape:?}")
    };
    assert_eq!(tgt_shape, [t + 1, b]);
    let (w_hard, w_soft) = match case.json["loss"]["train_loss"].as_str() {
        Some("nll") => (1.0, 0.0),
        Some("kd") => (0.3, 0.7),
        other => panic!("{}: train_loss {other:?}", case.name),
    };
    let teacher = match case.tensor("input.teacher_logp").unwrap() {
        Data::F32 { values, .. } => values.clone(),
        Data::I64 { .. } => panic!("teacher_logp: expected F32"),
    };
    let mut grad = vec![0f32; t * b * v];
    for (row, gr) in grad.chunks_mut(v).enumerate() {
        let y = tgt[b + row]; // tgt[1:][t, b] for row = t·B + b
        for (k, gk) in gr.iter_mut().enumerate() {
            let hard = if y != 1 && k as i64 == y { -1.0 } else { 0.0 };
            let soft = -(teacher[row * v + k] as f64).exp();
            *gk = ((w_hard * hard + w_soft * soft) / b as f64) as f32;
        }
    }
    grad
}

#[test]
fn golden_transformer_cases_gradient_matches_pytorch() {
    for name in GOLDEN_CASES {
        let Some(path) = case_or_skip(name) else {
            continue;
        };
        let case = Case::load(&path).unwrap();
        for dev in all_devices() {
            let (out, mut g, mut store) = golden_run(&case, &dev);
            let shape = g.value(out.logp).shape().to_vec();
            let seed = Tensor::from_vec(&shape, loss_gradient(&case, &shape), &dev).unwrap();
            g.backward_with(out.logp, Some(seed)).unwrap();
            g.accumulate_param_grads(&mut store).unwrap();
            let mut produced = Produced::new();
            for n in param_names(&store) {
                let key = format!("expect.grad.{n}");
                if case.tensors.contains_key(&key) {
                    let grad = store.get(&n).unwrap().grad.clone().unwrap();
                    produced.insert(key, data(&grad));
                }
            }
            assert!(!produced.is_empty(), "{name}: no gradient expectations");
            let (failures, margins) = case.compare_measured(&produced);
            let dev = dev.name();
            assert!(failures.is_empty(), "{name} on {dev}: {failures:?}");
            let worst = margins
                .iter()
                .map(|m| m.closeness.l2_ratio())
                .fold(0.0, f64::max);
            println!(
                "{name} on {dev}: {} gradients, worst L2 error {worst:.3} of its bound",
                produced.len()
            );
            assert!(
                worst <= 0.1,
                "{name} on {dev}: a gradient at {worst} of its bound"
            );
        }
    }
}

#[test]
fn dropout_acts_in_training_only_and_follows_the_generator() {
    let dev = Device::Cpu;
    let run = |dropout: f32, train: bool, seed: u64| {
        let (model, mut store) = small_model("relu", dropout, &dev);
        let src = ids(&[4, 3], &SMALL_SRC, &dev);
        let tgt_in = ids(&[5, 3], &SMALL_TGT, &dev);
        let mut g = Graph::no_grad(&dev);
        let mut rng = Rng::new(seed);
        let out = model
            .forward(
                &mut g,
                &mut store,
                &src,
                &[4, 2, 1],
                &tgt_in,
                train,
                &mut rng,
            )
            .unwrap();
        g.value(out.logp).to_vec().unwrap()
    };
    let plain = run(0.0, true, 1);
    assert_eq!(run(0.1, false, 1), plain, "eval: no dropout");
    let dropped = run(0.1, true, 1);
    assert_ne!(dropped, plain, "train: dropout");
    assert_eq!(
        run(0.1, true, 1),
        dropped,
        "same generator state, same masks"
    );
    assert_ne!(
        run(0.1, true, 2),
        dropped,
        "another generator state, other masks"
    );
}
