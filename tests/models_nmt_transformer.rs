//! LMA's translation Transformer (`models::nmt_transformer`): the seed's parameter names, shapes,
//! order, count and initialisation (SPEC-TRANSLATION §5.2 / §5.8); the seed-probed example of §5.9
//! (hash-filled parameters, relu and lma); the forward expectations of the golden `nmt_step`
//! Transformer cases (encoder and decoder outputs, attention, log-probs, position table, LMA
//! statistics) on cpu and the emulator; the search step against the teacher-forced forward; and
//! the gradient through the whole model. The step itself (losses, Adam) is not covered here.

use lit_engine::golden::locate::case_or_skip;
use lit_engine::golden::{Case, Data, Produced};
use lit_engine::models::nmt_transformer::{
    parameter_count, NmtTransformer, NmtTransformerConfig, NmtTransformerOutput,
};
use lit_engine::nn::transformer::position::position_table;
use lit_engine::nn::ParamStore;
use lit_engine::params::EntryKind;
use lit_engine::rng::Rng;
use lit_engine::testing::{kernel_devices, spec_hash_fill};
use lit_engine::{Device, Graph, IndexTensor, Tensor};

fn ids(shape: &[usize], v: &[i32], dev: &Device) -> IndexTensor {
    IndexTensor::from_vec(shape, v.to_vec(), dev).unwrap()
}

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

fn within(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

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
    let (src_shape, src) = i64_values(case, "input.src");
    let (_, lengths) = i64_values(case, "input.src_lengths");
    let (tgt_shape, tgt) = i64_values(case, "input.tgt");
    let to_i32 = |v: &[i64]| v.iter().map(|&x| x as i32).collect::<Vec<_>>();
    let src = ids(&src_shape, &to_i32(&src), dev);
    let batch = tgt_shape[1];
    let tgt_in = ids(
        &[tgt_shape[0] - 1, batch],
        &to_i32(&tgt[..tgt.len() - batch]),
        dev,
    );
    let lengths: Vec<usize> = lengths.iter().map(|&n| n as usize).collect();
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
