//! Early-OpenNMT Transformer layers above attention: embeddings with a padding row (no gradient to
//! it), the position-wise feed-forward block with each activation, and the encoder layer — kernel
//! devices (emu both thread orders) against cpu, the seed's parameter names, and the block's math.

use lit_engine::nn::transformer::embeddings::TransformerEmbeddings;
use lit_engine::nn::transformer::encoder::TransformerEncoderLayer;
use lit_engine::nn::transformer::feed_forward::PositionwiseFeedForward;
use lit_engine::nn::transformer::mask::AttentionMask;
use lit_engine::nn::transformer::position::position_table;
use lit_engine::nn::ParamStore;
use lit_engine::ops::embedding::{embedding, embedding_padded};
use lit_engine::ops::{elementwise, layer_norm, matmul};
use lit_engine::rng::Rng;
use lit_engine::testing::{assert_close, assert_devices_agree, random_f32};
use lit_engine::{Device, Graph, IndexTensor, Tensor};

fn tensor(seed: u64, shape: &[usize], dev: &Device) -> Tensor {
    Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
}

#[test]
fn padded_embedding_gives_the_padding_row_no_gradient() {
    let (num, dim) = (6, 5);
    let ids = [3, 1, 1, 4, 0, 1, 3];
    assert_devices_agree("embedding_padded", 0.0, 0.0, |dev| {
        let w = tensor(1, &[num, dim], dev);
        let ids = IndexTensor::from_vec(&[7], ids.to_vec(), dev)?;
        let dy = tensor(2, &[7, dim], dev);
        let mut g = Graph::new(dev);
        let wv = g.leaf(w.clone());
        let y = embedding_padded(&mut g, wv, &ids, 1)?;
        g.backward_with(y, Some(dy.clone()))?;
        let padded = g.grad(wv).unwrap().clone();
        let mut g = Graph::new(dev);
        let wv = g.leaf(w);
        let plain = embedding(&mut g, wv, &ids)?;
        g.backward_with(plain, Some(dy))?;
        Ok(vec![
            g.value(y).clone(),
            padded,
            g.grad(wv).unwrap().clone(),
        ])
    });
    let dev = Device::Cpu;
    let mut g = Graph::new(&dev);
    let wv = g.leaf(tensor(1, &[num, dim], &dev));
    let idx = IndexTensor::from_vec(&[7], ids.to_vec(), &dev).unwrap();
    let y = embedding_padded(&mut g, wv, &idx, 1).unwrap();
    g.backward_with(y, Some(tensor(2, &[7, dim], &dev)))
        .unwrap();
    let grad = g.grad(wv).unwrap().to_vec().unwrap();
    assert!(grad[dim..2 * dim].iter().all(|&v| v == 0.0), "padding row");
    assert!(grad[3 * dim..4 * dim].iter().any(|&v| v != 0.0), "row 3");
    assert!(embedding_padded(&mut g, wv, &idx, num).is_err());
}

#[test]
fn transformer_embeddings_zero_the_padding_row_and_add_positions() {
    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    let mut rng = Rng::new(5);
    let e = TransformerEmbeddings::new(&mut store, "encoder.embeddings", 9, 8, 1, &dev, &mut rng)
        .unwrap();
    let name = "encoder.embeddings.make_embedding.emb_luts.0.weight";
    assert_eq!(store.names(), [name]);
    let w = store.get(name).unwrap().value.to_vec().unwrap();
    assert!(w[8..16].iter().all(|&v| v == 0.0));
    assert!(w[..8].iter().all(|&v| v != 0.0));
    // ids [B 2, L 3] batch-major.
    let ids = IndexTensor::from_vec(&[2, 3], vec![2, 5, 1, 7, 1, 1], &dev).unwrap();
    let mut g = Graph::new(&dev);
    let y = e.forward(&mut g, &store, &ids, None).unwrap();
    let pe = position_table(3, 8).unwrap();
    let got = g.value(y).to_vec().unwrap();
    for (i, &id) in [2usize, 5, 1, 7, 1, 1].iter().enumerate() {
        let want: Vec<f32> = (0..8)
            .map(|j| w[id * 8 + j] + pe[(i % 3) * 8 + j])
            .collect();
        assert_eq!(got[i * 8..(i + 1) * 8], want[..], "position {i}");
    }
    assert!(TransformerEmbeddings::new(&mut store, "x", 4, 8, 4, &dev, &mut rng).is_err());
}

fn ffn(store: &mut ParamStore, act: &str, dev: &Device) -> PositionwiseFeedForward {
    let mut rng = Rng::new(7);
    PositionwiseFeedForward::new(store, "ff", 8, 24, act, dev, &mut rng).unwrap()
}

#[test]
fn feed_forward_registers_the_seed_parameters_in_order() {
    let dev = Device::Cpu;
    let base = [
        "w_1.weight",
        "w_1.bias",
        "w_2.weight",
        "w_2.bias",
        "layer_norm.a_2",
        "layer_norm.b_2",
    ];
    for (act, extra) in [
        ("relu", vec![]),
        ("lma", vec!["act.alphas", "act.betas"]),
        ("prelu", vec!["act.alpha"]),
        ("swish", vec!["act.betas"]),
    ] {
        let mut store = ParamStore::new();
        ffn(&mut store, act, &dev);
        let want: Vec<String> = base
            .iter()
            .chain(&extra)
            .map(|n| format!("ff.{n}"))
            .collect();
        let names: Vec<String> = store
            .names()
            .into_iter()
            .filter(|n| !n.contains("mv_"))
            .collect();
        assert_eq!(names, want, "{act}");
        if act == "swish" {
            assert_eq!(store.get("ff.act.betas").unwrap().value.shape(), [8]);
        }
    }
    let mut store = ParamStore::new();
    let mut rng = Rng::new(1);
    assert!(PositionwiseFeedForward::new(&mut store, "ff", 8, 24, "aplu", &dev, &mut rng).is_err());
}

#[test]
fn feed_forward_is_layer_norm_of_the_residual() {
    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    let block = ffn(&mut store, "relu", &dev);
    let y = tensor(3, &[2, 3, 8], &dev);
    let mut g = Graph::new(&dev);
    let yv = g.leaf(y.clone());
    let out = block.forward(&mut g, &mut store, yv, true, None).unwrap();
    let p = |n: &str| store.get(&format!("ff.{n}")).unwrap().value.clone();
    let y2 = y.reshape(&[6, 8]).unwrap();
    let h = matmul::linear_forward(&y2, &p("w_1.weight"), Some(&p("w_1.bias"))).unwrap();
    let h = elementwise::relu_forward(&h).unwrap();
    let o = matmul::linear_forward(&h, &p("w_2.weight"), Some(&p("w_2.bias"))).unwrap();
    let r = elementwise::add_forward(&y2, &o).unwrap();
    let (want, _) = layer_norm::layer_norm_forward(
        &r,
        &p("layer_norm.a_2"),
        &p("layer_norm.b_2"),
        layer_norm::ONMT_LAYER_NORM_EPS,
    )
    .unwrap();
    assert_eq!(g.value(out).shape(), [2, 3, 8]);
    assert_eq!(g.value(out).to_vec().unwrap(), want.to_vec().unwrap());

    // LMA's statistics cover every row of the hidden tensor (padding positions included).
    let mut store = ParamStore::new();
    let block = ffn(&mut store, "lma", &dev);
    let mut g = Graph::new(&dev);
    let yv = g.leaf(y.clone());
    block.forward(&mut g, &mut store, yv, true, None).unwrap();
    let p = |n: &str| store.get(&format!("ff.{n}")).unwrap().value.clone();
    let h = matmul::linear_forward(&y2, &p("w_1.weight"), Some(&p("w_1.bias"))).unwrap();
    let hv = h.to_vec().unwrap();
    let mean = hv.iter().map(|&v| v as f64).sum::<f64>() / hv.len() as f64;
    let (_, stat) = g
        .stats()
        .iter()
        .find(|(n, _)| n == "lma_batch_mean.ff.act")
        .expect("LMA batch mean recorded");
    assert_close(
        "LMA batch mean",
        &stat.to_vec().unwrap(),
        &[mean as f32],
        1e-6,
        1e-7,
    );
}

#[test]
fn feed_forward_and_encoder_layer_kernels_match_cpu() {
    for act in ["relu", "lma", "prelu", "swish"] {
        assert_devices_agree(&format!("feed_forward {act}"), 1e-5, 1e-6, |dev| {
            let mut store = ParamStore::new();
            let block = ffn(&mut store, act, dev);
            let mut g = Graph::new(dev);
            let yv = g.leaf(tensor(3, &[3, 5, 8], dev));
            let out = block.forward(&mut g, &mut store, yv, true, None)?;
            g.backward_with(out, Some(tensor(4, &[3, 5, 8], dev)))?;
            let mut v = vec![g.value(out).clone(), g.grad(yv).unwrap().clone()];
            g.accumulate_param_grads(&mut store)?;
            v.extend(store.iter().filter_map(|(_, p)| p.grad.clone()));
            Ok(v)
        });
    }
    // Encoder layer: B 2, S 5 with the second sentence padded after 3 tokens (pad id 1).
    let ids = [4, 6, 5, 7, 8, 9, 2, 1, 3, 1];
    let mask = AttentionMask::padding(&ids, 5, 2, 1, 5).unwrap();
    assert_devices_agree("encoder layer", 1e-5, 1e-6, |dev| {
        let mut store = ParamStore::new();
        let mut rng = Rng::new(11);
        let layer = TransformerEncoderLayer::new(
            &mut store,
            "encoder.transformer.0",
            16,
            24,
            "lma",
            dev,
            &mut rng,
        )?;
        let mut g = Graph::new(dev);
        let x = g.leaf(tensor(12, &[2, 5, 16], dev));
        let out = layer.forward(&mut g, &mut store, x, &mask, true, None)?;
        g.backward_with(out, Some(tensor(13, &[2, 5, 16], dev)))?;
        Ok(vec![g.value(out).clone(), g.grad(x).unwrap().clone()])
    });
    let mut store = ParamStore::new();
    let mut rng = Rng::new(11);
    TransformerEncoderLayer::new(&mut store, "enc.0", 16, 24, "relu", &Device::Cpu, &mut rng)
        .unwrap();
    let names = store.names();
    assert_eq!(names.len(), 5 + 6);
    assert_eq!(names[0], "enc.0.self_attn.linear_keys.weight");
    assert_eq!(names[5], "enc.0.feed_forward.w_1.weight");
}
