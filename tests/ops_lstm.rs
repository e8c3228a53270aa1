//! The LSTM cell (fused pointwise kernels), tanh, the column-block concat/slice ops and the QD
//! translation layers built on them: f64 finite differences of every backward, kernel devices
//! against cpu on odd shapes in both thread orders, the tape wrapper's two outputs, the
//! encoder's pack_padded semantics, the decoder stack's names and input feeding, and the
//! attention's optional mask.

use lit_engine::nn::global_attention::{attend_general, GlobalAttention};
use lit_engine::nn::lstm::{Lstm, LstmConfig, LstmState, StackedLstm};
use lit_engine::nn::ParamStore;
use lit_engine::ops::concat::{self, concat_last, narrow_last, select_first, stack_first};
use lit_engine::ops::elementwise::{self as ew};
use lit_engine::ops::lstm::{self, LstmWeights};
use lit_engine::ops::reduce::sum_all;
use lit_engine::rng::Rng;
use lit_engine::testing::{
    assert_close, assert_devices_agree, assert_gradient, dot, random_f32, random_f64,
};
use lit_engine::{Device, Graph, Tensor};

fn tensor(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, random_f32(seed, n), dev).unwrap()
}

// ---------- finite differences (f64 CPU reference) ----------

#[test]
fn lstm_pointwise_backward_matches_finite_differences() {
    let (batch, hidden) = (3, 5);
    let n = batch * hidden;
    let gates = random_f64(1, 4 * n);
    let c = random_f64(2, n);
    let (wh, wc) = (random_f64(3, n), random_f64(4, n));
    // Variables: [gates..., c...]; L = Σ h'·wh + Σ c'·wc.
    let f = |v: &[f64]| {
        let (mut acts, mut cn, mut hn) = (vec![0.0; 4 * n], vec![0.0; n], vec![0.0; n]);
        lstm::lstm_cell_forward_cpu(
            &v[..4 * n],
            &v[4 * n..],
            hidden,
            &mut acts,
            &mut cn,
            &mut hn,
        );
        dot(&hn, &wh) + dot(&cn, &wc)
    };
    let (mut acts, mut cn, mut hn) = (vec![0.0; 4 * n], vec![0.0; n], vec![0.0; n]);
    lstm::lstm_cell_forward_cpu(&gates, &c, hidden, &mut acts, &mut cn, &mut hn);
    let (mut dg, mut dc) = (vec![0.0; 4 * n], vec![0.0; n]);
    lstm::lstm_cell_backward_cpu(&acts, &c, &cn, &wh, &wc, hidden, &mut dg, &mut dc);
    let vars: Vec<f64> = gates.iter().chain(&c).copied().collect();
    let analytic: Vec<f64> = dg.iter().chain(&dc).copied().collect();
    assert_gradient("lstm cell (gates, c)", &f, &vars, &analytic, 1e-7);
}

#[test]
fn lstm_gate_rows_are_in_the_order_i_f_g_o() {
    // One unit, four different pre-activations: rows 0..4 are i, f, g, o.
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    let (zi, zf, zg, zo, c) = (0.3, -0.7, 0.8, 1.1, 0.4);
    let (mut acts, mut cn, mut hn) = ([0.0f64; 4], [0.0], [0.0]);
    lstm::lstm_cell_forward_cpu(&[zi, zf, zg, zo], &[c], 1, &mut acts, &mut cn, &mut hn);
    let want_c = sig(zf) * c + sig(zi) * zg.tanh();
    assert!((cn[0] - want_c).abs() < 1e-15, "{} vs {want_c}", cn[0]);
    assert!((hn[0] - sig(zo) * want_c.tanh()).abs() < 1e-15);
    let want_acts = [sig(zi), sig(zf), zg.tanh(), sig(zo)];
    for (a, w) in acts.iter().zip(want_acts) {
        assert!((a - w).abs() < 1e-15, "{acts:?} vs {want_acts:?}");
    }
}

#[test]
fn tanh_backward_matches_finite_differences() {
    let x = random_f64(5, 23);
    let w = random_f64(6, 23);
    let f = |v: &[f64]| {
        let mut y = vec![0.0; v.len()];
        ew::tanh_forward_cpu(v, &mut y);
        dot(&y, &w)
    };
    let mut y = vec![0.0; 23];
    ew::tanh_forward_cpu(&x, &mut y);
    let mut dx = vec![0.0; 23];
    ew::tanh_backward_cpu(&y, &w, &mut dx);
    assert_gradient("tanh", &f, &x, &dx, 1e-8);
}

/// Every float input of one LSTM step (row-major), f64: x, h, c, W_ih, W_hh, b_ih, b_hh.
struct Step {
    batch: usize,
    input: usize,
    hidden: usize,
    values: Vec<f64>,
}

impl Step {
    fn sizes(&self) -> [usize; 7] {
        let (b, i, h) = (self.batch, self.input, self.hidden);
        [b * i, b * h, b * h, 4 * h * i, 4 * h * h, 4 * h, 4 * h]
    }
    fn parts<'a>(&self, v: &'a [f64]) -> Vec<&'a [f64]> {
        let mut out = Vec::new();
        let mut at = 0;
        for n in self.sizes() {
            out.push(&v[at..at + n]);
            at += n;
        }
        out
    }
    /// (h', c') in f64 from first principles: the products by loops, then the CPU pointwise.
    fn forward(&self, v: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let p = self.parts(v);
        let (b, i, h) = (self.batch, self.input, self.hidden);
        let mut gates = vec![0.0; b * 4 * h];
        for r in 0..b {
            for k in 0..4 * h {
                let mut z = p[5][k] + p[6][k];
                z += (0..i)
                    .map(|j| p[0][r * i + j] * p[3][k * i + j])
                    .sum::<f64>();
                z += (0..h)
                    .map(|j| p[1][r * h + j] * p[4][k * h + j])
                    .sum::<f64>();
                gates[r * 4 * h + k] = z;
            }
        }
        let (mut acts, mut cn, mut hn) = (vec![0.0; 4 * b * h], vec![0.0; b * h], vec![0.0; b * h]);
        lstm::lstm_cell_forward_cpu(&gates, p[2], h, &mut acts, &mut cn, &mut hn);
        (hn, cn)
    }
}

/// `lstm_cell` on the tape (f32, cpu and kernel devices) against f64 finite differences of the
/// whole step, with the loss reading h' only, c' only, or both (the two tape outputs).
#[test]
fn lstm_cell_on_the_tape_matches_finite_differences_of_the_whole_step() {
    let step = Step {
        batch: 3,
        input: 4,
        hidden: 5,
        values: random_f64(7, 3 * 4 + 2 * 15 + 20 * 4 + 20 * 5 + 40)
            .iter()
            .map(|v| 0.5 * v)
            .collect(),
    };
    let n = step.batch * step.hidden;
    let (wh, wc) = (random_f64(8, n), random_f64(9, n));
    for (use_h, use_c) in [(true, true), (true, false), (false, true)] {
        let f = |v: &[f64]| {
            let (h, c) = step.forward(v);
            let mut l = 0.0;
            if use_h {
                l += dot(&h, &wh);
            }
            if use_c {
                l += dot(&c, &wc);
            }
            l
        };
        let numeric = lit_engine::testing::finite_diff(&f, &step.values, 1e-6);
        let mut devices = vec![Device::Cpu];
        devices.extend(lit_engine::testing::kernel_devices());
        for dev in devices {
            let mut g = Graph::new(&dev);
            let shapes: [Vec<usize>; 7] = [
                vec![3, 4],
                vec![3, 5],
                vec![3, 5],
                vec![20, 4],
                vec![20, 5],
                vec![20],
                vec![20],
            ];
            let parts = step.parts(&step.values);
            let vars: Vec<_> = parts
                .iter()
                .zip(&shapes)
                .map(|(p, s)| {
                    let v: Vec<f32> = p.iter().map(|&x| x as f32).collect();
                    g.leaf(Tensor::from_vec(s, v, &dev).unwrap())
                })
                .collect();
            let w = LstmWeights {
                weight_ih: vars[3],
                weight_hh: vars[4],
                bias_ih: vars[5],
                bias_hh: vars[6],
            };
            let (h, c) = lstm::lstm_cell(&mut g, vars[0], vars[1], vars[2], &w).unwrap();
            let mut terms = Vec::new();
            for (out, weights, used) in [(h, &wh, use_h), (c, &wc, use_c)] {
                if used {
                    let wt: Vec<f32> = weights.iter().map(|&x| x as f32).collect();
                    let wt = g.constant(Tensor::from_vec(&[3, 5], wt, &dev).unwrap());
                    let prod = ew::mul(&mut g, out, wt).unwrap();
                    terms.push(sum_all(&mut g, prod).unwrap());
                }
            }
            let loss = match terms[..] {
                [a, b] => ew::add(&mut g, a, b).unwrap(),
                [a] => a,
                _ => unreachable!(),
            };
            g.backward(loss).unwrap();
            let analytic: Vec<f32> = vars
                .iter()
                .flat_map(|&v| g.grad(v).unwrap().to_vec().unwrap())
                .collect();
            let want: Vec<f32> = numeric.iter().map(|&x| x as f32).collect();
            assert_close(
                &format!("lstm_cell grads (h {use_h}, c {use_c}) on {}", dev.name()),
                &analytic,
                &want,
                1e-5,
                1e-6,
            );
        }
    }
}

// ---------- kernel devices against cpu ----------

#[test]
fn lstm_cell_kernels_match_cpu() {
    // 91 units (odd, one partial block) and 903 (several blocks, partial last).
    for (batch, hidden) in [(7, 13), (3, 301)] {
        assert_devices_agree("lstm cell", 1e-6, 1e-7, |dev| {
            let gates = tensor(&[batch, 4 * hidden], 10, dev);
            let c = tensor(&[batch, hidden], 11, dev);
            let out = lstm::lstm_cell_forward(&gates, &c)?;
            let dh = tensor(&[batch, hidden], 12, dev);
            let dc = tensor(&[batch, hidden], 13, dev);
            let (dg, dcp) = lstm::lstm_cell_backward(&out.acts, &c, &out.c, &dh, &dc)?;
            Ok(vec![out.h, out.c, out.acts, dg, dcp])
        });
    }
}

#[test]
fn tanh_and_column_block_kernels_match_cpu() {
    assert_devices_agree("tanh", 1e-6, 1e-7, |dev| {
        let x = tensor(&[5, 61], 14, dev);
        let y = ew::tanh_forward(&x)?;
        let dx = ew::tanh_backward(&y, &tensor(&[5, 61], 15, dev))?;
        Ok(vec![y, dx])
    });
    assert_devices_agree("column blocks", 0.0, 0.0, |dev| {
        let wide = tensor(&[7, 3, 29], 16, dev);
        let block = concat::take_columns(&wide, 11, 13)?;
        let mut placed = Tensor::zeros(&[7, 3, 29], dev)?;
        concat::place_columns(&mut placed, &block, 11)?;
        Ok(vec![block, placed])
    });
}

#[test]
fn column_blocks_copy_exactly_and_reject_bad_ranges() {
    let dev = Device::Cpu;
    let wide = Tensor::from_vec(&[2, 4], (0..8).map(|v| v as f32).collect(), &dev).unwrap();
    let block = concat::take_columns(&wide, 1, 2).unwrap();
    assert_eq!(block.to_vec().unwrap(), [1.0, 2.0, 5.0, 6.0]);
    let mut z = Tensor::zeros(&[2, 4], &dev).unwrap();
    concat::place_columns(&mut z, &block, 2).unwrap();
    assert_eq!(
        z.to_vec().unwrap(),
        [0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 5.0, 6.0]
    );
    assert!(concat::take_columns(&wide, 3, 2).is_err());
    assert!(concat::place_columns(&mut z, &block, 3).is_err());
}

#[test]
fn concat_stack_and_select_route_gradients_to_their_parts() {
    let dev = Device::Cpu;
    let mut g = Graph::new(&dev);
    let a = g.leaf(tensor(&[2, 3], 17, &dev));
    let b = g.leaf(tensor(&[2, 2], 18, &dev));
    let cat = concat_last(&mut g, &[a, b]).unwrap();
    let mid = narrow_last(&mut g, cat, 2, 2).unwrap(); // a[:, 2] and b[:, 0]
    let s = stack_first(&mut g, &[mid, mid]).unwrap(); // [2, 2, 2]
    let row = select_first(&mut g, s, 1).unwrap();
    assert_eq!(
        g.value(row).to_vec().unwrap(),
        g.value(mid).to_vec().unwrap()
    );
    let seed = Tensor::from_vec(&[2, 2], vec![1.0, 2.0, 3.0, 4.0], &dev).unwrap();
    g.backward_with(row, Some(seed)).unwrap();
    assert_eq!(
        g.grad(a).unwrap().to_vec().unwrap(),
        [0.0, 0.0, 1.0, 0.0, 0.0, 3.0]
    );
    assert_eq!(g.grad(b).unwrap().to_vec().unwrap(), [2.0, 0.0, 4.0, 0.0]);
}

// ---------- layers ----------

fn encoder(store: &mut ParamStore, layers: usize, dev: &Device) -> Lstm {
    let cfg = LstmConfig {
        input_size: 4,
        hidden_size: 3,
        num_layers: layers,
        dropout: 0.3,
    };
    Lstm::new(store, "encoder.rnn", cfg, 0.5, dev, &mut Rng::new(20)).unwrap()
}

#[test]
fn encoder_names_and_shapes_follow_pytorch() {
    let mut store = ParamStore::new();
    encoder(&mut store, 2, &Device::Cpu);
    let got: Vec<(String, Vec<usize>)> = store
        .iter()
        .map(|(n, p)| (n.to_string(), p.value.shape().to_vec()))
        .collect();
    let want = [
        ("encoder.rnn.weight_ih_l0", vec![12, 4]),
        ("encoder.rnn.weight_hh_l0", vec![12, 3]),
        ("encoder.rnn.bias_ih_l0", vec![12]),
        ("encoder.rnn.bias_hh_l0", vec![12]),
        ("encoder.rnn.weight_ih_l1", vec![12, 3]),
        ("encoder.rnn.weight_hh_l1", vec![12, 3]),
        ("encoder.rnn.bias_ih_l1", vec![12]),
        ("encoder.rnn.bias_hh_l1", vec![12]),
    ];
    let want: Vec<(String, Vec<usize>)> = want
        .iter()
        .map(|(n, s)| (n.to_string(), s.clone()))
        .collect();
    assert_eq!(got, want);
    for (_, p) in store.iter() {
        assert!(p.value.to_vec().unwrap().iter().all(|v| v.abs() <= 0.5));
    }
}

/// pack_padded_sequence: a sentence of length ℓ in a padded batch gives the same outputs and final
/// state as alone with S = ℓ; its outputs past ℓ are exactly 0. Checked on every device.
#[test]
fn encoder_padded_steps_do_not_touch_a_sentence() {
    let mut devices = vec![Device::Cpu];
    devices.extend(lit_engine::testing::kernel_devices());
    for dev in devices {
        let mut store = ParamStore::new();
        let enc = encoder(&mut store, 2, &dev);
        let (steps, lengths) = (5, [5usize, 3, 1]);
        let x = tensor(&[steps, 3, 4], 21, &dev);
        let xs = x.to_vec().unwrap();
        let mut g = Graph::no_grad(&dev);
        let xv = g.constant(x);
        let out = enc
            .forward(&mut g, &store, xv, &lengths, false, &mut Rng::new(1))
            .unwrap();
        let all = g.value(out.output).to_vec().unwrap();
        for (b, &len) in lengths.iter().enumerate() {
            // Sentence b alone: its steps of x, [len, 1, 4].
            let own: Vec<f32> = (0..len)
                .flat_map(|s| xs[(s * 3 + b) * 4..(s * 3 + b + 1) * 4].to_vec())
                .collect();
            let mut g1 = Graph::no_grad(&dev);
            let x1 = g1.constant(Tensor::from_vec(&[len, 1, 4], own, &dev).unwrap());
            let alone = enc
                .forward(&mut g1, &store, x1, &[len], false, &mut Rng::new(1))
                .unwrap();
            let alone_out = g1.value(alone.output).to_vec().unwrap();
            for s in 0..steps {
                let got = &all[(s * 3 + b) * 3..(s * 3 + b + 1) * 3];
                if s < len {
                    assert_close("output", got, &alone_out[s * 3..(s + 1) * 3], 1e-6, 1e-7);
                } else {
                    assert_eq!(got, [0.0; 3], "padded output of sentence {b} at step {s}");
                }
            }
            for l in 0..2 {
                for (batch_state, own_state) in [
                    (out.state.h[l], alone.state.h[l]),
                    (out.state.c[l], alone.state.c[l]),
                ] {
                    let got = g.value(batch_state).to_vec().unwrap();
                    let want = g1.value(own_state).to_vec().unwrap();
                    assert_close("final state", &got[b * 3..(b + 1) * 3], &want, 1e-6, 1e-7);
                }
            }
        }
    }
}

#[test]
fn encoder_rejects_bad_lengths() {
    let dev = Device::Cpu;
    let mut store = ParamStore::new();
    let enc = encoder(&mut store, 1, &dev);
    let mut g = Graph::no_grad(&dev);
    let x = g.constant(tensor(&[3, 2, 4], 22, &dev));
    let mut rng = Rng::new(1);
    for bad in [&[3usize, 0][..], &[4, 1], &[3]] {
        assert!(
            enc.forward(&mut g, &store, x, bad, false, &mut rng)
                .is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn decoder_stack_names_input_feeding_and_layer_chaining() {
    let dev = Device::Cpu;
    let (e, h) = (4, 3);
    let mut store = ParamStore::new();
    let cfg = LstmConfig {
        input_size: e + h,
        hidden_size: h,
        num_layers: 2,
        dropout: 0.3,
    };
    let dec =
        StackedLstm::new(&mut store, "decoder.rnn", cfg, 0.1, &dev, &mut Rng::new(3)).unwrap();
    assert_eq!(
        store.names(),
        [
            "decoder.rnn.layers.0.weight_ih",
            "decoder.rnn.layers.0.weight_hh",
            "decoder.rnn.layers.0.bias_ih",
            "decoder.rnn.layers.0.bias_hh",
            "decoder.rnn.layers.1.weight_ih",
            "decoder.rnn.layers.1.weight_hh",
            "decoder.rnn.layers.1.bias_ih",
            "decoder.rnn.layers.1.bias_hh",
        ]
    );
    assert_eq!(
        store
            .get("decoder.rnn.layers.0.weight_ih")
            .unwrap()
            .value
            .shape(),
        [12, 7]
    );
    let mut g = Graph::no_grad(&dev);
    let emb = g.constant(tensor(&[2, e], 30, &dev));
    let feed = g.constant(tensor(&[2, h], 31, &dev));
    let state = LstmState {
        h: vec![
            g.constant(tensor(&[2, h], 32, &dev)),
            g.constant(tensor(&[2, h], 33, &dev)),
        ],
        c: vec![
            g.constant(tensor(&[2, h], 34, &dev)),
            g.constant(tensor(&[2, h], 35, &dev)),
        ],
    };
    let (top, next) = dec
        .step_input_feed(&mut g, &store, emb, feed, &state, false, &mut Rng::new(1))
        .unwrap();
    // By hand: layer 0 on [emb ; feed] (embedding first), layer 1 on layer 0's h.
    let x = concat_last(&mut g, &[emb, feed]).unwrap();
    let w0 = dec.layers[0].weights(&mut g, &store).unwrap();
    let (h0, _) = lstm::lstm_cell(&mut g, x, state.h[0], state.c[0], &w0).unwrap();
    let w1 = dec.layers[1].weights(&mut g, &store).unwrap();
    let (h1, c1) = lstm::lstm_cell(&mut g, h0, state.h[1], state.c[1], &w1).unwrap();
    assert_eq!(
        g.value(top).to_vec().unwrap(),
        g.value(h1).to_vec().unwrap()
    );
    assert_eq!(
        g.value(next.h[0]).to_vec().unwrap(),
        g.value(h0).to_vec().unwrap()
    );
    assert_eq!(
        g.value(next.c[1]).to_vec().unwrap(),
        g.value(c1).to_vec().unwrap()
    );
    // Swapping embedding and feed changes the result (the order is not symmetric).
    let swapped = concat_last(&mut g, &[feed, emb]);
    assert!(swapped.is_ok());
    let bad = dec.step(
        &mut g,
        &store,
        swapped.unwrap(),
        &state,
        false,
        &mut Rng::new(1),
    );
    let (top_swapped, _) = bad.unwrap();
    assert_ne!(
        g.value(top_swapped).to_vec().unwrap(),
        g.value(top).to_vec().unwrap()
    );
}

#[test]
fn attention_is_unmasked_by_default_and_masks_on_request() {
    let dev = Device::Cpu;
    let (b, s, h) = (2, 5, 4);
    let mut store = ParamStore::new();
    let att =
        GlobalAttention::new(&mut store, "decoder.attn", h, 0.5, &dev, &mut Rng::new(4)).unwrap();
    assert_eq!(
        store.names(),
        [
            "decoder.attn.linear_in.weight",
            "decoder.attn.linear_out.weight"
        ]
    );
    assert_eq!(
        store
            .get("decoder.attn.linear_out.weight")
            .unwrap()
            .value
            .shape(),
        [4, 8]
    );
    let lengths = [5usize, 3];
    // Memory rows past each length are 0, as the encoder leaves them.
    let mut mem = random_f32(40, b * s * h);
    for j in lengths[1]..s {
        mem[(s + j) * h..(s + j + 1) * h].fill(0.0);
    }
    let mut g = Graph::no_grad(&dev);
    let q = g.constant(tensor(&[b, h], 41, &dev));
    let m = g.constant(Tensor::from_vec(&[b, s, h], mem.clone(), &dev).unwrap());
    let open = att.forward(&mut g, &store, q, m, None).unwrap();
    let masked = att.forward(&mut g, &store, q, m, Some(&lengths)).unwrap();
    let (a_open, a_masked) = (
        g.value(open.align).to_vec().unwrap(),
        g.value(masked.align).to_vec().unwrap(),
    );
    // Seed bug B1: without a mask, padded slots score 0 and take exp(0)/Z of the mass.
    assert!(a_open[s + 3] > 0.0 && a_open[s + 4] == a_open[s + 3]);
    assert_eq!(&a_masked[s + 3..], [0.0, 0.0]);
    // Sentence 1 masked = sentence 1 alone on its own 3 memory rows.
    let q1 = g.constant(
        Tensor::from_vec(&[1, h], g.value(q).to_vec().unwrap()[h..].to_vec(), &dev).unwrap(),
    );
    let m1 =
        g.constant(Tensor::from_vec(&[1, 3, h], mem[s * h..(s + 3) * h].to_vec(), &dev).unwrap());
    let w_in = g.param(&store, &att.linear_in_name()).unwrap();
    let w_out = g.param(&store, &att.linear_out_name()).unwrap();
    let alone = attend_general(&mut g, q1, m1, w_in, w_out, None).unwrap();
    assert_close(
        "masked align",
        &a_masked[s..s + 3],
        &g.value(alone.align).to_vec().unwrap(),
        1e-6,
        1e-7,
    );
    assert_close(
        "masked out",
        &g.value(masked.out).to_vec().unwrap()[h..],
        &g.value(alone.out).to_vec().unwrap(),
        1e-6,
        1e-7,
    );
    // Sentence 0 has no padding: both agree exactly.
    assert_eq!(a_open[..s], a_masked[..s]);
    assert!(att.forward(&mut g, &store, q, m, Some(&[5, 0])).is_err());
}
