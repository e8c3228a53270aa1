//! The model zoo: parameter counts of every published configuration (SPEC-NOTES §4), state_dict
//! keys/order/shapes against the golden cases' `param.*` lists, and forward passes.

mod golden_support;

use lit_engine::models::builder::{count_params, MetaEntry};
use lit_engine::models::{self, build, build_from_descriptor, count_parameters, describe, Input};
use lit_engine::nn::{EntryKind, ParamStore};
use lit_engine::rng::Rng;
use lit_engine::{Device, Graph, IndexTensor, Tensor};

fn count(name: &str, classes: usize) -> usize {
    count_parameters(name, classes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn lit_resnet_parameter_counts() {
    for (d, n) in [
        (20, 269_722),
        (32, 464_154),
        (44, 658_586),
        (56, 853_018),
        (110, 1_727_962),
    ] {
        assert_eq!(count(&format!("resnet{d}"), 10), n, "resnet{d}");
    }
}

#[test]
fn takd_resnet_parameter_counts_c10_and_c100() {
    for (d, c10, c100) in [
        (8, 78_042, 83_892),
        (14, 175_258, 181_108),
        (20, 272_474, 278_324),
        (26, 369_690, 375_540),
        (32, 466_906, 472_756),
        (44, 661_338, 667_188),
        (56, 855_770, 861_620),
        (110, 1_730_714, 1_736_564),
    ] {
        assert_eq!(
            count(&format!("takd-resnet{d}"), 10),
            c10,
            "takd-resnet{d} C10"
        );
        assert_eq!(
            count(&format!("takd-resnet{d}"), 100),
            c100,
            "takd-resnet{d} C100"
        );
        // The alias names the same model.
        assert_eq!(count(&format!("resnet{d}-b"), 10), c10, "resnet{d}-b");
    }
}

#[test]
fn plane_parameter_counts_c10_and_c100() {
    let c10 = [13_082, 37_338, 82_778, 327_962, 2_487_850];
    let c100 = [215_172, 475_652, 1_107_204, 1_246_276, 2_931_460];
    for (i, d) in [2, 4, 6, 8, 10].into_iter().enumerate() {
        assert_eq!(count(&format!("plane{d}"), 10), c10[i], "plane{d} C10");
        assert_eq!(count(&format!("plane{d}"), 100), c100[i], "plane{d} C100");
    }
}

#[test]
fn wrn_parameter_counts_without_allocating() {
    for (d, k, classes, n) in [
        (10, 2, 100, 316_004),
        (10, 4, 100, 1_223_300),
        (16, 6, 100, 6_210_148),
        (16, 10, 100, 17_179_940),
        (22, 8, 100, 17_210_564),
        (28, 20, 100, 145_950_980),
        (16, 22, 10, 82_746_890),
    ] {
        assert_eq!(count(&format!("wrn-{d}-{k}"), classes), n, "WRN-{d}-{k}");
    }
}

#[test]
fn convforwardnet_parameter_counts() {
    for (name, n) in [
        ("cfn-teacher", 5_346_142),
        ("cfn-spec0", 1_000_235),
        ("cfn-smaller", 1_000_235),
        ("cfn-spec1", 318_415),
        ("cfn-spec2", 111_935),
        ("cfn-deeper", 5_825_396),
        // LMA-8 adds alphas[8] + betas[8] per activated layer (4 convs + 1 linear).
        ("cfn-spec0-lma8", 1_000_315),
        ("cfn-spec0-lma", 1_000_315),
        ("cfn-spec0-relu", 1_000_235),
    ] {
        assert_eq!(count(name, 10), n, "{name}");
    }
}

#[test]
fn vdcnn_parameter_counts() {
    for (d, n) in [
        (9, 14_178_133),
        (17, 16_270_933),
        (29, 16_641_877),
        (49, 19_770_453),
    ] {
        assert_eq!(count(&format!("vdcnn{d}-maxpool"), 5), n, "vdcnn{d}");
    }
}

#[test]
fn lma_running_statistics_are_state_outside_the_state_dict() {
    let meta = describe("cfn-spec2-lma8", 10).unwrap();
    let states: Vec<&str> = meta
        .iter()
        .filter(|e| e.kind == EntryKind::State)
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(states.len(), 10, "{states:?}");
    assert_eq!(states[0], "activations.0.mv_mean");
    assert_eq!(states[1], "activations.0.mv_std");
    assert_eq!(states[9], "activations.4.mv_std");
}

#[test]
fn unknown_or_malformed_names_are_errors_listing_the_valid_ones() {
    for bad in [
        "resnet21",
        "resnet8",
        "takd-resnet9",
        "wrn-15-2",
        "wrn-16",
        "plane3",
        "vdcnn10-maxpool",
        "cfn-spec9",
        "cfn-spec0-tanh",
        "alexnet",
    ] {
        let err = describe(bad, 10)
            .err()
            .unwrap_or_else(|| panic!("`{bad}` was accepted"));
        let msg = err.to_string();
        assert!(
            msg.contains(bad) || msg.contains(&bad[bad.len() - 2..]),
            "{bad}: {msg}"
        );
    }
    let msg = describe("alexnet", 10).unwrap_err().to_string();
    for family in [
        "mlp-",
        "resnet20",
        "takd-resnet",
        "plane",
        "wrn-",
        "cfn-",
        "vdcnn",
    ] {
        assert!(msg.contains(family), "{msg}");
    }
    assert!(describe("mlp-784-10", 100).is_err(), "class mismatch");
}

// ---- golden case layouts ----

/// Entry names and shapes, in order.
type Layout = Vec<(String, Vec<usize>)>;

/// The `param.*` and `state.*` tensors of a case in the order its JSON lists them (= state_dict
/// order; serde_json's map would sort them, so the order is read from the text).
fn golden_layout(case: &golden_support::GoldenCase) -> (Layout, Layout) {
    let (case_name, case_json) = (&case.name, &case.json);
    let text = std::fs::read_to_string(&case.json_path).unwrap();
    let shape_of = |name: &str| -> Vec<usize> {
        case_json["tensors"][name]["shape"]
            .as_array()
            .unwrap_or_else(|| panic!("{case_name}: no shape for {name}"))
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect()
    };
    let (mut params, mut states) = (Vec::new(), Vec::new());
    // Keys of the `tensors` object are the only quoted names followed by a colon.
    for piece in text.split('"').collect::<Vec<_>>().windows(2) {
        let (name, after) = (piece[0], piece[1]);
        if !after.trim_start().starts_with(':') {
            continue;
        }
        if let Some(k) = name.strip_prefix("param.") {
            params.push((k.to_string(), shape_of(name)));
        } else if let Some(k) = name.strip_prefix("state.") {
            states.push((k.to_string(), shape_of(name)));
        }
    }
    (params, states)
}

fn entries_of(meta: &[MetaEntry], state: bool) -> Vec<(String, Vec<usize>)> {
    meta.iter()
        .filter(|e| (e.kind == EntryKind::State) == state)
        .map(|e| (e.name.clone(), e.shape.clone()))
        .collect()
}

const MODEL_CASES: &[&str] = &[
    "model_lit_resnet20",
    "model_takd_resnet20_c10",
    "model_takd_resnet8_c10",
    "model_plane4_c10",
    "model_wrn_16_1_c10",
    "model_cfn_smallerModelSpec",
    "model_lma_cfn_narrow",
    "model_vdcnn9_maxpool_narrow",
];

#[test]
fn state_dict_keys_order_and_shapes_match_the_golden_cases() {
    let mut checked = 0;
    for case_name in MODEL_CASES {
        let Some(case) = golden_support::load(case_name) else {
            continue;
        };
        let descriptor = &case.json["model"];
        let (params, states) = golden_layout(&case);
        assert!(!params.is_empty(), "{case_name}: no param.* tensors");
        // Meta build and real build must agree with the case and with each other.
        let meta = models::describe_descriptor(descriptor).unwrap();
        assert_eq!(
            entries_of(&meta, false),
            params,
            "{case_name}: state_dict (meta build)"
        );
        assert_eq!(
            entries_of(&meta, true),
            states,
            "{case_name}: state entries"
        );
        let mut store = ParamStore::new();
        build_from_descriptor(descriptor, &mut store, &Device::Cpu, &mut Rng::new(3)).unwrap();
        let real: Vec<(String, Vec<usize>)> = store
            .iter()
            .filter(|(_, p)| p.kind != EntryKind::State)
            .map(|(n, p)| (n.to_string(), p.value.shape().to_vec()))
            .collect();
        assert_eq!(real, params, "{case_name}: state_dict (real build)");
        assert_eq!(store.num_parameters(), count_params(&meta), "{case_name}");
        checked += 1;
    }
    eprintln!("checked {checked} golden model layouts");
}

#[test]
fn golden_descriptors_name_the_same_models_as_the_config_names() {
    // The published-width cases: the descriptor and the config name build identical layouts.
    for (case_name, name, classes) in [
        ("model_lit_resnet20", "resnet20", 10),
        ("model_takd_resnet8_c10", "takd-resnet8", 10),
        ("model_takd_resnet20_c10", "resnet20-b", 10),
        ("model_plane4_c10", "plane4", 10),
        ("model_wrn_16_1_c10", "wrn-16-1", 10),
        ("model_cfn_smallerModelSpec", "cfn-spec0", 10),
    ] {
        let Some(case) = golden_support::load(case_name) else {
            continue;
        };
        let from_case = models::describe_descriptor(&case.json["model"]).unwrap();
        assert_eq!(
            from_case,
            describe(name, classes).unwrap(),
            "{case_name} vs {name}"
        );
    }
}

#[test]
fn bad_descriptors_are_errors_with_the_key() {
    let cases = [
        (serde_json::json!({"name": "x", "args": {}}), "family"),
        (
            serde_json::json!({"family": "lit_resnet", "args": {"depth": 20}}),
            "num_classes",
        ),
        (
            serde_json::json!({"family": "lit_resnet", "args": {"depth": "20", "num_classes": 10}}),
            "depth",
        ),
        (
            serde_json::json!({"family": "densenet", "args": {"num_classes": 10}}),
            "densenet",
        ),
        (
            serde_json::json!({"family": "vdcnn", "args": {"depth": 9, "num_classes": 5, "shortcut": true}}),
            "shortcut",
        ),
        (
            serde_json::json!({"family": "conv_forward_net", "args": {"num_classes": 10,
                "spec_conv_layers": [[4, 3]], "spec_max_pooling": [], "spec_linear": []}}),
            "spec_conv_layers",
        ),
    ];
    for (desc, key) in cases {
        let msg = models::describe_descriptor(&desc).unwrap_err().to_string();
        assert!(msg.contains(key), "{desc}: {msg}");
    }
}

// ---- initialisation ----

fn stats(store: &ParamStore, name: &str) -> (f64, f64, f32) {
    let v = store.get(name).unwrap().value.to_vec().unwrap();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    (mean, std, max)
}

#[test]
fn init_schemes_follow_each_codebase() {
    let dev = Device::Cpu;
    // LIT ResNet: kaiming_normal(fan_out) convs, BN 1/0, buffers 0/1/0.
    let mut s = ParamStore::new();
    build("resnet20", 10, &mut s, &dev, &mut Rng::new(1)).unwrap();
    let (_, std, _) = stats(&s, "layer3.0.conv2.weight"); // fan_out 64*9
    assert!((std / (2.0f64 / 576.0).sqrt() - 1.0).abs() < 0.03, "{std}");
    assert_eq!(
        s.get("bn1.weight").unwrap().value.to_vec().unwrap(),
        vec![1.0; 16]
    );
    assert_eq!(
        s.get("bn1.running_var").unwrap().value.to_vec().unwrap(),
        vec![1.0; 16]
    );
    let nbt = &s.get("bn1.num_batches_tracked").unwrap().value;
    assert_eq!((nbt.shape(), nbt.to_vec().unwrap()), (&[][..], vec![0.0]));
    // WRN: xavier_uniform(sqrt 2) convs with zero bias.
    let mut s = ParamStore::new();
    build("wrn-16-2", 10, &mut s, &dev, &mut Rng::new(2)).unwrap();
    let a = 2f64.sqrt() * (6.0f64 / (32.0 * 9.0 + 32.0 * 9.0)).sqrt();
    let (_, std, max) = stats(&s, "layer1.1.conv1.weight"); // 32 -> 32
    assert!(
        max as f64 <= a && (std / (a / 3f64.sqrt()) - 1.0).abs() < 0.05,
        "{std} {max}"
    );
    assert_eq!(stats(&s, "layer1.0.conv1.bias").2, 0.0);
    // ConvForwardNet QD: BN weight U(0,1); LMA variant: 1.
    let mut s = ParamStore::new();
    build("cfn-spec2", 10, &mut s, &dev, &mut Rng::new(3)).unwrap();
    let (mean, _, max) = stats(&s, "batchNormalizationLayers.4.weight");
    assert!((mean - 0.5).abs() < 0.06 && max < 1.0, "{mean}");
    let mut s = ParamStore::new();
    build("cfn-spec2-lma8", 10, &mut s, &dev, &mut Rng::new(3)).unwrap();
    assert_eq!(
        stats(&s, "batchNormalizationLayers.4.weight"),
        (1.0, 0.0, 1.0)
    );
    // VDCNN: kaiming_normal(fan_in) conv1d, embedding N(0, 1).
    let mut s = ParamStore::new();
    build("vdcnn9-maxpool", 5, &mut s, &dev, &mut Rng::new(4)).unwrap();
    let (_, std, _) = stats(&s, "sections.section_2.block_0.conv2.weight"); // fan_in 256*3
    assert!((std / (2.0f64 / 768.0).sqrt() - 1.0).abs() < 0.02, "{std}");
    let (_, std, _) = stats(&s, "character_embedding.weight");
    assert!((std - 1.0).abs() < 0.05, "{std}");
}

// ---- forward passes ----

fn images(n: usize, device: &Device) -> Tensor {
    let mut rng = Rng::new(11);
    Tensor::from_vec(
        &[n, 3, 32, 32],
        rng.normal_vec(n * 3 * 32 * 32, 1.0),
        device,
    )
    .unwrap()
}

fn check_logits(g: &Graph, y: lit_engine::Var, shape: &[usize], what: &str) {
    let v = g.value(y);
    assert_eq!(v.shape(), shape, "{what}");
    let data = v.to_vec().unwrap();
    assert!(
        data.iter().all(|x| x.is_finite()),
        "{what}: non-finite logits"
    );
    assert!(
        data.iter().any(|&x| x != data[0]),
        "{what}: constant logits"
    );
}

/// Train-mode forward + backward: finite logits, and every trainable parameter gets a gradient.
fn forward_backward(name: &str, classes: usize, device: &Device) {
    let mut store = ParamStore::new();
    let model = build(name, classes, &mut store, device, &mut Rng::new(5)).unwrap();
    let mut g = Graph::new(device);
    let x = g.constant(images(2, device));
    let y = model
        .forward(&mut g, &mut store, Input::Float(x), true)
        .unwrap();
    check_logits(&g, y, &[2, classes], name);
    let loss = lit_engine::ops::reduce::sum_all(&mut g, y).unwrap();
    g.backward(loss).unwrap();
    g.accumulate_param_grads(&mut store).unwrap();
    for (n, p) in store.iter() {
        if p.kind == EntryKind::Param {
            assert!(p.grad.is_some(), "{name}: no gradient for {n}");
        }
    }
}

#[test]
fn forward_every_image_family_on_cpu() {
    let dev = Device::Cpu;
    for (name, classes) in [
        ("resnet20", 10),
        ("takd-resnet8", 100),
        ("plane4", 10),
        ("plane6", 100),
        ("wrn-10-1", 10),
        ("cfn-spec2", 10),
        ("cfn-spec2-lma8", 10),
    ] {
        forward_backward(name, classes, &dev);
    }
}

#[test]
fn eval_forward_leaves_batchnorm_buffers_and_train_forward_updates_them() {
    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    let model = build("takd-resnet8", 10, &mut store, &dev, &mut Rng::new(6)).unwrap();
    let before = store.clone();
    let mut g = Graph::no_grad(&dev);
    let x = g.constant(images(2, &dev));
    model
        .forward(&mut g, &mut store, Input::Float(x), false)
        .unwrap();
    for ((n, a), (_, b)) in before.iter().zip(store.iter()) {
        assert_eq!(
            a.value.to_vec().unwrap(),
            b.value.to_vec().unwrap(),
            "{n} changed in eval"
        );
    }
    let mut g = Graph::new(&dev);
    let x = g.constant(images(2, &dev));
    model
        .forward(&mut g, &mut store, Input::Float(x), true)
        .unwrap();
    assert_eq!(
        store
            .get("layer2.0.downsample.1.num_batches_tracked")
            .unwrap()
            .value
            .item()
            .unwrap(),
        1.0
    );
    assert_ne!(
        store
            .get("bn1.running_mean")
            .unwrap()
            .value
            .to_vec()
            .unwrap(),
        before
            .get("bn1.running_mean")
            .unwrap()
            .value
            .to_vec()
            .unwrap()
    );
}

#[test]
fn sections_compose_to_the_full_forward() {
    let dev = Device::Cpu;
    for (name, classes) in [("resnet20", 10), ("takd-resnet8", 10), ("wrn-10-1", 10)] {
        let mut store = ParamStore::new();
        let model = build(name, classes, &mut store, &dev, &mut Rng::new(7)).unwrap();
        assert_eq!(model.num_sections(), 3);
        assert_eq!(model.section_names(), ["layer1", "layer2", "layer3"]);
        let mut g = Graph::no_grad(&dev);
        let x = g.constant(images(2, &dev));
        let full = model
            .forward(&mut g, &mut store, Input::Float(x), false)
            .unwrap();
        let mut h = model
            .stem(&mut g, &mut store, Input::Float(x), false)
            .unwrap();
        let mut widths = Vec::new();
        for i in 0..3 {
            h = model
                .forward_section(i, &mut g, &mut store, h, false)
                .unwrap();
            widths.push(g.value(h).shape().to_vec());
        }
        assert_eq!(
            widths,
            [vec![2, 16, 32, 32], vec![2, 32, 16, 16], vec![2, 64, 8, 8]],
            "{name}"
        );
        let logits = model.head(&mut g, &mut store, h, false).unwrap();
        assert_eq!(
            g.value(full).to_vec().unwrap(),
            g.value(logits).to_vec().unwrap(),
            "{name}"
        );
        assert!(model
            .forward_section(3, &mut g, &mut store, h, false)
            .is_err());
    }
    let mut store = ParamStore::new();
    let plane = build("plane2", 10, &mut store, &dev, &mut Rng::new(7)).unwrap();
    assert_eq!(plane.num_sections(), 0);
    let mut g = Graph::no_grad(&dev);
    let x = g.constant(images(1, &dev));
    let msg = plane
        .stem(&mut g, &mut store, Input::Float(x), false)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("plane2") && msg.contains("no sections"),
        "{msg}"
    );
}

#[test]
fn vdcnn_forward_on_token_ids_with_four_sections() {
    let dev = Device::Cpu;
    let desc = serde_json::json!({"family": "vdcnn", "name": "vdcnn9 narrow", "args": {
        "depth": 9, "block": "maxpool", "filters": [8, 12, 16, 20], "vocab_size": 69,
        "embedding_size": 16, "k": 8, "num_hidden": 12, "num_classes": 5,
        "shortcut": false, "bias": false}});
    let mut store = ParamStore::new();
    let model = build_from_descriptor(&desc, &mut store, &dev, &mut Rng::new(8)).unwrap();
    assert!(model.takes_ids());
    assert_eq!(model.section_names().len(), 4);
    let mut rng = Rng::new(9);
    let ids: Vec<i32> = (0..2 * 1014).map(|_| rng.below(69) as i32).collect();
    let ids = IndexTensor::from_vec(&[2, 1014], ids, &dev).unwrap();
    let mut g = Graph::new(&dev);
    let f0 = model
        .stem(&mut g, &mut store, Input::Ids(&ids), true)
        .unwrap();
    assert_eq!(g.value(f0).shape(), &[2, 8, 1014]);
    let mut h = f0;
    let mut lengths = Vec::new();
    for i in 0..4 {
        h = model
            .forward_section(i, &mut g, &mut store, h, true)
            .unwrap();
        lengths.push(g.value(h).shape()[2]);
    }
    assert_eq!(lengths, [1014, 507, 254, 127]);
    let y = model.head(&mut g, &mut store, h, true).unwrap();
    check_logits(&g, y, &[2, 5], "vdcnn");
    let loss = lit_engine::ops::reduce::sum_all(&mut g, y).unwrap();
    g.backward(loss).unwrap();
    g.accumulate_param_grads(&mut store).unwrap();
    assert!(store
        .get("character_embedding.weight")
        .unwrap()
        .grad
        .is_some());
    // Float input is refused with the model's name.
    let x = g.constant(images(1, &dev));
    let msg = model
        .forward(&mut g, &mut store, Input::Float(x), false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("token ids"), "{msg}");
}

// ---- numbers against the golden model cases (logits, loss, gradients, buffers) ----

use lit_engine::golden::{Case, Data, Produced};

fn f32_of(t: &Tensor) -> Data {
    Data::F32 {
        shape: t.shape().to_vec(),
        values: t.to_vec().unwrap(),
    }
}

/// Load every `param.*` (I64 counters as f32) and `state.*` of `case` into `store`.
fn load_case_params(case: &Case, store: &mut ParamStore, dev: &Device) {
    for (name, data) in &case.tensors {
        let key = match name
            .strip_prefix("param.")
            .or_else(|| name.strip_prefix("state."))
        {
            Some(k) => k,
            None => continue,
        };
        let t = match data {
            Data::F32 { shape, values } => Tensor::from_slice(shape, values, dev).unwrap(),
            Data::I64 { shape, values } => {
                let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
                Tensor::from_vec(shape, v, dev).unwrap()
            }
        };
        store
            .set(key, t)
            .unwrap_or_else(|e| panic!("{}: {key}: {e}", case.name));
    }
}

/// The model_standard eval and train passes (no optimizer step): everything they produce that
/// the case holds an expectation for.
fn run_model_case(case: &Case, dev: &Device) -> Produced {
    let mut produced = Produced::new();
    let mut put = |name: String, d: Data| {
        if case.tensors.contains_key(&name) {
            produced.insert(name, d);
        }
    };
    let desc = &case.json["model"];
    let build_loaded = || {
        let mut store = ParamStore::new();
        let model = build_from_descriptor(desc, &mut store, dev, &mut Rng::new(0)).unwrap();
        load_case_params(case, &mut store, dev);
        (model, store)
    };
    let ids = match case.tensor("input.x").unwrap() {
        Data::I64 { .. } => Some(case.index_tensor("input.x", dev).unwrap()),
        Data::F32 { .. } => None,
    };
    let input = |g: &mut Graph| match &ids {
        Some(ids) => Input::Ids(ids),
        None => Input::Float(g.constant(case.f32_tensor("input.x", dev).unwrap())),
    };
    let labels = case.index_tensor("input.y", dev).unwrap();

    let (model, mut store) = build_loaded();
    let mut g = Graph::no_grad(dev);
    let x = input(&mut g);
    let y = model.forward(&mut g, &mut store, x, false).unwrap();
    put("expect.logits_eval".into(), f32_of(g.value(y)));
    for (n, p) in store.iter() {
        if p.kind == EntryKind::State {
            put(format!("expect.state_after_eval.{n}"), f32_of(&p.value));
        }
    }

    let (model, mut store) = build_loaded();
    let mut g = Graph::new(dev);
    let x = input(&mut g);
    let y = model.forward(&mut g, &mut store, x, true).unwrap();
    put("expect.logits_train".into(), f32_of(g.value(y)));
    let loss = lit_engine::ops::loss::cross_entropy(
        &mut g,
        y,
        &labels,
        lit_engine::ops::loss::Reduction::Mean,
    )
    .unwrap();
    put("expect.loss".into(), f32_of(g.value(loss)));
    g.backward(loss).unwrap();
    g.accumulate_param_grads(&mut store).unwrap();
    for (n, p) in store.iter() {
        match p.kind {
            EntryKind::Param => {
                let grad = p
                    .grad
                    .as_ref()
                    .unwrap_or_else(|| panic!("{n}: no gradient"));
                put(format!("expect.grad.{n}"), f32_of(grad));
            }
            EntryKind::Buffer if n.ends_with("num_batches_tracked") => {
                let v = p.value.to_vec().unwrap();
                let values = v.iter().map(|&x| x as i64).collect();
                let shape = p.value.shape().to_vec();
                put(
                    format!("expect.buffer_after.{n}"),
                    Data::I64 { shape, values },
                );
            }
            EntryKind::Buffer => put(format!("expect.buffer_after.{n}"), f32_of(&p.value)),
            EntryKind::State => put(format!("expect.state_after_train.{n}"), f32_of(&p.value)),
        }
    }
    produced
}

fn check_model_case(case_name: &str, dev: &Device) {
    let Some(path) = lit_engine::golden::locate::case_or_skip(case_name) else {
        return;
    };
    let case = Case::load(&path).unwrap();
    let produced = run_model_case(&case, dev);
    for must in ["expect.logits_eval", "expect.logits_train", "expect.loss"] {
        assert!(
            produced.contains_key(must),
            "{case_name}: {must} not produced"
        );
    }
    let grads = produced
        .keys()
        .filter(|k| k.starts_with("expect.grad."))
        .count();
    let buffers = produced
        .keys()
        .filter(|k| k.starts_with("expect.buffer_after."))
        .count();
    assert!(
        grads > 0 && buffers > 0,
        "{case_name}: {grads} grads, {buffers} buffers compared"
    );
    let failures = case.compare(&produced);
    assert!(
        failures.is_empty(),
        "{case_name} on {}: {} of {} expectations fail:\n{}",
        dev.name(),
        failures.len(),
        produced.len(),
        failures.join("\n")
    );
}

#[test]
fn golden_model_cases_match_pytorch_on_cpu() {
    for case in MODEL_CASES {
        check_model_case(case, &Device::Cpu);
    }
}

#[test]
fn golden_model_cases_match_pytorch_on_kernel_devices() {
    // Emulated kernels are slow: the 2-D path (plane4, resnet8 with its downsample) and the 1-D
    // path (VDCNN: embedding, conv1d, k-max); every case runs in the ignored test below.
    for dev in lit_engine::testing::kernel_devices() {
        for case in [
            "model_plane4_c10",
            "model_takd_resnet8_c10",
            "model_vdcnn9_maxpool_narrow",
        ] {
            check_model_case(case, &dev);
        }
    }
}

#[test]
#[ignore = "about 30 s on the emulator; run with --ignored"]
fn every_golden_model_case_matches_pytorch_on_kernel_devices() {
    for dev in lit_engine::testing::kernel_devices() {
        for case in MODEL_CASES {
            check_model_case(case, &dev);
        }
    }
}

/// A forward that keeps no tape and does not train (a frozen teacher, evaluation) runs conv +
/// BatchNorm (+ shortcut) (+ ReLU) fused; it must give exactly the logits of the layer-by-layer
/// eval forward (a recording graph keeps the layers separate).
#[test]
fn fused_eval_forward_equals_the_layer_by_layer_forward() {
    let dev = Device::Cpu;
    for name in ["resnet20", "takd-resnet14", "plane4"] {
        let mut store = ParamStore::new();
        let model = build(name, 10, &mut store, &dev, &mut Rng::new(3)).unwrap();
        let mut rng = Rng::new(4);
        let x =
            Tensor::from_vec(&[4, 3, 32, 32], rng.normal_vec(4 * 3 * 32 * 32, 1.0), &dev).unwrap();
        // One train-mode forward, so the running statistics are not the trivial 0 / 1.
        let mut g = Graph::new(&dev);
        let xv = g.constant(x.clone());
        model
            .forward(&mut g, &mut store, Input::Float(xv), true)
            .unwrap();
        let mut eval = |mut g: Graph| {
            let xv = g.constant(x.clone());
            let y = model
                .forward(&mut g, &mut store, Input::Float(xv), false)
                .unwrap();
            g.value(y).to_vec().unwrap()
        };
        let fused = eval(Graph::no_grad(&dev));
        let separate = eval(Graph::new(&dev));
        assert!(fused.iter().all(|v| v.is_finite()), "{name}");
        assert_eq!(fused, separate, "{name}");
    }
}
