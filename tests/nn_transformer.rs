//! Early-OpenNMT Transformer layers: LMA's position table against the spec's probed values, the
//! attention masks, and multi-head attention (finite differences of the composed graph on cpu,
//! kernel devices in both emulator thread orders against cpu, the seed's parameter names).

use lit_engine::nn::transformer::attention::{
    multi_head_attention, MhaWeights, MultiHeadedAttention,
};
use lit_engine::nn::transformer::mask::AttentionMask;
use lit_engine::nn::transformer::position::{add_position_encoding, position_table};
use lit_engine::nn::ParamStore;
use lit_engine::rng::Rng;
use lit_engine::testing::{assert_close, assert_devices_agree, random_f32};
use lit_engine::{Device, Graph, Tensor, Var};

fn tensor(seed: u64, shape: &[usize], dev: &Device) -> Tensor {
    Tensor::from_vec(shape, random_f32(seed, shape.iter().product()), dev).unwrap()
}

// ---------- position encoding ----------

#[test]
fn position_table_matches_the_spec_probes() {
    // SPEC-TRANSLATION §5.3 [PROBED], d = 512.
    let d = 512;
    let t = position_table(50, d).unwrap();
    let row = |p: usize, j0: usize, j1: usize| t[p * d + j0..p * d + j1].to_vec();
    let p1 = [
        0.841471f32,
        0.569695,
        0.8019618,
        0.6234201,
        0.7617204,
        0.6709089,
    ];
    assert_close("PE[1, 0:6]", &row(1, 0, 6), &p1, 1e-6, 1e-7);
    let p7 = [8.68656e-08f32, 1.0, 8.08347e-08, 1.0, 7.52225e-08, 1.0];
    assert_close("PE[7, 506:512]", &row(7, 506, 512), &p7, 1e-5, 1e-12);
    let p49 = [-0.9537526f32, -0.9895735, 0.9989905, 0.9999905];
    assert_close("PE[49, 0:4]", &row(49, 0, 4), &p49, 1e-6, 1e-7);
    // Position 0: sin 0 = 0 at even j, cos 0 = 1 at odd j.
    assert!(row(0, 0, d)
        .iter()
        .enumerate()
        .all(|(j, &v)| v == (j % 2) as f32));
}

#[test]
fn position_encoding_adds_the_table_per_batch_element_and_passes_the_gradient() {
    let dev = Device::Cpu;
    let (b, len, d) = (2, 3, 4);
    let x = tensor(1, &[b, len, d], &dev);
    let mut g = Graph::new(&dev);
    let xv = g.leaf(x.clone());
    let y = add_position_encoding(&mut g, xv).unwrap();
    let table = position_table(len, d).unwrap();
    let want: Vec<f32> = x
        .to_vec()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, v)| v + table[i % (len * d)])
        .collect();
    assert_eq!(g.value(y).to_vec().unwrap(), want);
    let dy = tensor(2, &[b, len, d], &dev);
    g.backward_with(y, Some(dy.clone())).unwrap();
    assert_eq!(g.grad(xv).unwrap().to_vec().unwrap(), dy.to_vec().unwrap());

    let mut g = Graph::new(&dev);
    let long = g.leaf(Tensor::zeros(&[1, 5001, 2], &dev).unwrap());
    assert!(add_position_encoding(&mut g, long).is_err());
    assert!(position_table(3, 0).is_err());
    assert!(position_table(usize::MAX, 2).is_err());
}

// ---------- masks ----------

#[test]
fn masks_block_padding_and_the_future() {
    // Time-major ids [3, 2]: batch 0 = [5, 6, 1], batch 1 = [7, 1, 1]; pad = 1.
    let ids = [5, 7, 6, 1, 1, 1];
    let pad = AttentionMask::padding(&ids, 3, 2, 1, 2).unwrap();
    let row = |m: &AttentionMask, b: usize, q: usize| -> Vec<bool> {
        let k = m.keys;
        m.blocked[(b * m.queries + q) * k..(b * m.queries + q + 1) * k].to_vec()
    };
    assert_eq!(row(&pad, 0, 1), [false, false, true]);
    assert_eq!(row(&pad, 1, 0), [false, true, true]);
    let causal = AttentionMask::causal_padding(&ids, 3, 2, 1).unwrap();
    assert_eq!(row(&causal, 0, 0), [false, true, true]);
    assert_eq!(row(&causal, 0, 1), [false, false, true]);
    assert_eq!(row(&causal, 1, 2), [false, true, true]);
    assert!(AttentionMask::padding(&ids, 4, 2, 1, 2).is_err());

    // Head-major bias: slice h·B + b holds batch element b's mask for every head h.
    let bias = causal.head_bias(2, &Device::Cpu).unwrap();
    assert_eq!(bias.shape(), [4, 3, 3]);
    let v = bias.to_vec().unwrap();
    let per_head = 2 * 9;
    assert_eq!(v[..per_head], v[per_head..]);
    assert_eq!(v[1], f32::NEG_INFINITY);
    assert_eq!(v[0], 0.0);
}

// ---------- multi-head attention ----------

struct Inputs {
    key: Tensor,
    value: Tensor,
    query: Tensor,
    params: [Tensor; 5],
}

fn inputs(b: usize, lq: usize, lk: usize, d: usize, dev: &Device) -> Inputs {
    let mut a_2 = random_f32(16, d);
    a_2.iter_mut().for_each(|v| *v += 1.0);
    Inputs {
        key: tensor(10, &[b, lk, d], dev),
        value: tensor(11, &[b, lk, d], dev),
        query: tensor(12, &[b, lq, d], dev),
        params: [
            tensor(13, &[d, d], dev),
            tensor(14, &[d, d], dev),
            tensor(15, &[d, d], dev),
            Tensor::from_vec(&[d], a_2, dev).unwrap(),
            tensor(17, &[d], dev),
        ],
    }
}

/// A mask with padded keys in the last batch element and the future blocked in the first.
fn mixed_mask(b: usize, lq: usize, lk: usize) -> AttentionMask {
    let mut blocked = Vec::new();
    for bi in 0..b {
        for q in 0..lq {
            for k in 0..lk {
                blocked.push(if bi == 0 {
                    k > q
                } else {
                    bi == b - 1 && k + 2 >= lk
                });
            }
        }
    }
    AttentionMask::new(b, lq, lk, blocked).unwrap()
}

/// `(out, top_attn, vars)` of one attention call on `g`.
fn run(g: &mut Graph, x: &Inputs, mask: &AttentionMask, heads: usize) -> (Var, Var, Vec<Var>) {
    let vars: Vec<Var> = [&x.key, &x.value, &x.query]
        .into_iter()
        .chain(&x.params)
        .map(|t| g.leaf(t.clone()))
        .collect();
    let w = MhaWeights {
        w_k: vars[3],
        w_v: vars[4],
        w_q: vars[5],
        a_2: vars[6],
        b_2: vars[7],
    };
    let (out, top) =
        multi_head_attention(g, vars[0], vars[1], vars[2], mask, &w, heads, None).unwrap();
    (out, top, vars)
}

#[test]
fn attention_kernels_match_cpu() {
    // B 3, Lq 5, Lk 7, d 12, 3 heads (d_h 4); and self-attention B 2, L 4, d 16, 8 heads (d_h 2).
    for (b, lq, lk, d, heads) in [(3, 5, 7, 12, 3), (2, 4, 4, 16, 8)] {
        let mask = mixed_mask(b, lq, lk);
        assert_devices_agree("multi_head_attention", 1e-5, 1e-6, |dev| {
            let x = inputs(b, lq, lk, d, dev);
            let mut g = Graph::new(dev);
            let (out, top, vars) = run(&mut g, &x, &mask, heads);
            g.backward_with(out, Some(tensor(20, &[b, lq, d], dev)))?;
            let mut v = vec![g.value(out).clone(), g.value(top).clone()];
            v.extend(vars.iter().map(|&x| g.grad(x).unwrap().clone()));
            Ok(v)
        });
    }
}

#[test]
fn attention_blocks_masked_keys_and_returns_head_0() {
    let (b, lq, lk, d, heads) = (3, 5, 7, 12, 3);
    let dev = Device::Cpu;
    let mask = mixed_mask(b, lq, lk);
    let x = inputs(b, lq, lk, d, &dev);
    let mut g = Graph::new(&dev);
    let (_, top, _) = run(&mut g, &x, &mask, heads);
    let a = g.value(top).to_vec().unwrap();
    assert_eq!(g.value(top).shape(), [b, lq, lk]);
    for (r, row) in a.chunks(lk).enumerate() {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "row {r} sums to {sum}");
        for (k, &v) in row.iter().enumerate() {
            if mask.blocked[r * lk + k] {
                assert_eq!(v, 0.0, "blocked (row {r}, key {k}) got weight {v}");
            }
        }
    }
    // Head 0 by hand: softmax(Q_0 K_0ᵀ / √d_h) over the unblocked keys of row (b 1, q 2).
    let dh = d / heads;
    let (bi, q) = (1, 2);
    let proj = |x: &Tensor, w: &Tensor, pos: usize| -> Vec<f32> {
        let (xv, wv) = (x.to_vec().unwrap(), w.to_vec().unwrap());
        let row = &xv[(bi * x.shape()[1] + pos) * d..][..d];
        (0..dh)
            .map(|o| (0..d).map(|i| row[i] * wv[o * d + i]).sum())
            .collect()
    };
    let qv = proj(&x.query, &x.params[2], q);
    let scores: Vec<f32> = (0..lk)
        .map(|k| {
            let kv = proj(&x.key, &x.params[0], k);
            qv.iter().zip(&kv).map(|(a, b)| a * b).sum::<f32>() / (dh as f32).sqrt()
        })
        .collect();
    let open: Vec<bool> = (0..lk)
        .map(|k| !mask.blocked[(bi * lq + q) * lk + k])
        .collect();
    let m = scores
        .iter()
        .zip(&open)
        .filter(|(_, &o)| o)
        .fold(f32::MIN, |m, (&s, _)| m.max(s));
    let e: Vec<f32> = scores
        .iter()
        .zip(&open)
        .map(|(&s, &o)| if o { (s - m).exp() } else { 0.0 })
        .collect();
    let total: f32 = e.iter().sum();
    let want: Vec<f32> = e.iter().map(|v| v / total).collect();
    let got = &a[(bi * lq + q) * lk..][..lk];
    assert_close("top_attn row (b 1, q 2)", got, &want, 1e-5, 1e-6);
}

#[test]
fn attention_backward_matches_finite_differences() {
    // f32 graph on cpu: central differences with a step of 1e-2 on a few entries of every input.
    let (b, lq, lk, d, heads) = (2, 3, 4, 8, 2);
    let dev = Device::Cpu;
    let mask = mixed_mask(b, lq, lk);
    let x = inputs(b, lq, lk, d, &dev);
    let w = tensor(30, &[b, lq, d], &dev).to_vec().unwrap();
    let loss = |x: &Inputs| -> f64 {
        let mut g = Graph::no_grad(&dev);
        let (out, _, _) = run(&mut g, x, &mask, heads);
        let o = g.value(out).to_vec().unwrap();
        o.iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    let mut g = Graph::new(&dev);
    let (out, _, vars) = run(&mut g, &x, &mask, heads);
    g.backward_with(
        out,
        Some(Tensor::from_slice(&[b, lq, d], &w, &dev).unwrap()),
    )
    .unwrap();
    let h = 1e-2f32;
    for (i, &v) in vars.iter().enumerate() {
        let analytic = g.grad(v).unwrap().to_vec().unwrap();
        for e in [0, analytic.len() / 2, analytic.len() - 1] {
            let bump = |delta: f32| {
                let mut y = inputs(b, lq, lk, d, &dev);
                let t = match i {
                    0 => &mut y.key,
                    1 => &mut y.value,
                    2 => &mut y.query,
                    p => &mut y.params[p - 3],
                };
                let mut data = t.to_vec().unwrap();
                data[e] += delta;
                *t = Tensor::from_vec(t.shape(), data, &dev).unwrap();
                loss(&y)
            };
            let numeric = (bump(h) - bump(-h)) / (2.0 * h as f64);
            let err = (analytic[e] as f64 - numeric).abs() / numeric.abs().max(1.0);
            assert!(
                err < 2e-3,
                "input {i} entry {e}: analytic {} vs numeric {numeric}",
                analytic[e]
            );
        }
    }
}

#[test]
fn attention_module_registers_the_seed_parameters_in_order() {
    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    let mut rng = Rng::new(3);
    let p = "encoder.transformer.0.self_attn";
    let m = MultiHeadedAttention::new(&mut store, p, 16, 8, &dev, &mut rng).unwrap();
    let want: Vec<String> = [
        "linear_keys.weight",
        "linear_values.weight",
        "linear_query.weight",
        "layer_norm.a_2",
        "layer_norm.b_2",
    ]
    .iter()
    .map(|n| format!("{p}.{n}"))
    .collect();
    assert_eq!(store.names(), want);
    let bound = 1.0 / 4.0;
    let wk = store.get(&want[0]).unwrap().value.to_vec().unwrap();
    assert!(wk.iter().all(|v| v.abs() <= bound));
    assert_eq!(
        store.get(&want[3]).unwrap().value.to_vec().unwrap(),
        vec![1.0; 16]
    );
    assert!(MultiHeadedAttention::new(&mut ParamStore::new(), p, 12, 8, &dev, &mut rng).is_err());

    // Self-attention through the module: out [B, L, d].
    let mut g = Graph::new(&dev);
    let x = g.leaf(tensor(4, &[2, 3, 16], &dev));
    let ids = [4, 5, 6, 1, 7, 1]; // time-major [3, 2]
    let mask = AttentionMask::causal_padding(&ids, 3, 2, 1).unwrap();
    let (out, top) = m.forward(&mut g, &store, x, x, x, &mask, None).unwrap();
    assert_eq!(g.value(out).shape(), [2, 3, 16]);
    assert_eq!(g.value(top).shape(), [2, 3, 3]);
}
