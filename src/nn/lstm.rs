//! LSTM layers of the QD translation model (SPEC-TRANSLATION §2.2–2.4), with PyTorch's
//! state-dict names:
//! - [`Lstm`], `nn.LSTM` (unidirectional, multi-layer, time-major `[S, B, E]`), as the encoder
//!   runs it through `pack_padded_sequence`: sentence b only takes steps `s < len_b`; its output
//!   at padded steps is exactly 0 and its final state is the one after step `len_b − 1`;
//!   cuDNN inter-layer dropout on the inputs of layers ≥ 2. Names `weight_ih_l{k}`,
//!   `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}`.
//! - [`StackedLstm`], onmt's `StackedLSTM` of `LSTMCell`s (the decoder), one step at a time:
//!   layer 1 reads the step input, layer l ≥ 2 reads dropout(h^{l−1}); the top layer's h is the
//!   output (no dropout on it). Names `layers.{l}.weight_ih` etc. With input feeding the step
//!   input is `[embedding ; feed]` ([`StackedLstm::step_input_feed`]).
//!
//! Every tensor is initialised U(±`init`): the seed's `param_init` 0.1 (§2.4), which covers the
//! LSTM weights and both bias vectors.

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::concat::{concat_last, select_first, stack_first};
use crate::ops::dropout::dropout;
use crate::ops::elementwise::{add, mul};
use crate::ops::lstm::{lstm_cell, lstm_cell_from_input_gates, LstmWeights};
use crate::ops::matmul::linear;
use crate::ops::shape::reshape;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// The store names of one cell's four tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct LstmCellNames {
    /// `[4H, in]`.
    pub weight_ih: String,
    /// `[4H, H]`.
    pub weight_hh: String,
    /// `[4H]`.
    pub bias_ih: String,
    /// `[4H]`.
    pub bias_hh: String,
}

impl LstmCellNames {
    /// `<prefix>.weight_ih<suffix>`, … (`nn.LSTM`: suffix `_l0`; `LSTMCell`: empty suffix).
    fn new(prefix: &str, suffix: &str) -> Self {
        let name = |what: &str| format!("{prefix}.{what}{suffix}");
        LstmCellNames {
            weight_ih: name("weight_ih"),
            weight_hh: name("weight_hh"),
            bias_ih: name("bias_ih"),
            bias_hh: name("bias_hh"),
        }
    }

    /// Register the four tensors in PyTorch's state-dict order, each drawn U(±init) in turn.
    #[allow(clippy::too_many_arguments)]
    fn register(
        &self,
        store: &mut ParamStore,
        input: usize,
        hidden: usize,
        init: f32,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<()> {
        let shapes: [(&str, Vec<usize>); 4] = [
            (&self.weight_ih, vec![4 * hidden, input]),
            (&self.weight_hh, vec![4 * hidden, hidden]),
            (&self.bias_ih, vec![4 * hidden]),
            (&self.bias_hh, vec![4 * hidden]),
        ];
        for (name, shape) in shapes {
            let n = shape.iter().product();
            let values = rng.uniform_vec(n, -init, init);
            store.add_param(name, Tensor::from_vec(&shape, values, device)?)?;
        }
        Ok(())
    }

    /// The four tensors on the tape.
    pub fn weights(&self, g: &mut Graph, store: &ParamStore) -> Result<LstmWeights> {
        Ok(LstmWeights {
            weight_ih: g.param(store, &self.weight_ih)?,
            weight_hh: g.param(store, &self.weight_hh)?,
            bias_ih: g.param(store, &self.bias_ih)?,
            bias_hh: g.param(store, &self.bias_hh)?,
        })
    }
}

/// Sizes and dropout of an LSTM stack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LstmConfig {
    /// Width of the input of layer 1.
    pub input_size: usize,
    /// H, the width of every state.
    pub hidden_size: usize,
    /// Layers L.
    pub num_layers: usize,
    /// Dropout between layers (train mode only).
    pub dropout: f32,
}

impl LstmConfig {
    fn check(&self, what: &str) -> Result<()> {
        if self.input_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return Err(Error::Config(format!(
                "{what}: input size ({}), hidden size ({}) and layers ({}) must be positive",
                self.input_size, self.hidden_size, self.num_layers
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "{what}: dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Register every layer's cell, layer by layer (state-dict order), U(±init).
    fn register_layers(
        &self,
        store: &mut ParamStore,
        names: impl Fn(usize) -> LstmCellNames,
        init: f32,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Vec<LstmCellNames>> {
        (0..self.num_layers)
            .map(|l| {
                let cell = names(l);
                let input = self.layer_input(l);
                cell.register(store, input, self.hidden_size, init, device, rng)?;
                Ok(cell)
            })
            .collect()
    }

    fn layer_input(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.hidden_size
        }
    }
}

/// The state `(h, c)` of every layer, each `[B, H]`.
#[derive(Clone, Debug)]
pub struct LstmState {
    /// h per layer.
    pub h: Vec<Var>,
    /// c per layer.
    pub c: Vec<Var>,
}

impl LstmState {
    /// Zeros for `layers` layers of `[batch, hidden]` (constants on the tape).
    pub fn zeros(g: &mut Graph, layers: usize, batch: usize, hidden: usize) -> Result<Self> {
        let mut zero = || -> Result<Var> {
            let t = Tensor::zeros(&[batch, hidden], g.device())?;
            Ok(g.constant(t))
        };
        let h = (0..layers).map(|_| zero()).collect::<Result<Vec<_>>>()?;
        let c = (0..layers).map(|_| zero()).collect::<Result<Vec<_>>>()?;
        Ok(LstmState { h, c })
    }
}

/// The result of running [`Lstm`] over a sequence.
#[derive(Clone, Debug)]
pub struct LstmOutput {
    /// The top layer's h at every step `[S, B, H]`, 0 at padded steps.
    pub output: Var,
    /// The final state of every layer (after each sentence's last real step).
    pub state: LstmState,
}

/// `nn.LSTM(input_size, hidden_size, num_layers, dropout)`, unidirectional, time-major.
#[derive(Clone, Debug)]
pub struct Lstm {
    /// Sizes and dropout.
    pub config: LstmConfig,
    /// Per layer, the store names `<prefix>.weight_ih_l{k}`, ….
    pub layers: Vec<LstmCellNames>,
}

impl Lstm {
    /// Register every layer's tensors under `prefix` (layer by layer, state-dict order), U(±init).
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        config: LstmConfig,
        init: f32,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Lstm> {
        config.check("Lstm::new")?;
        let names = |l: usize| LstmCellNames::new(prefix, &format!("_l{l}"));
        let layers = config.register_layers(store, names, init, device, rng)?;
        Ok(Lstm { config, layers })
    }

    /// Run over `x [S, B, input]` from zero state; sentence b has `lengths[b]` real steps
    /// (1..=S, any order).
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        x: Var,
        lengths: &[usize],
        train: bool,
        rng: &mut Rng,
    ) -> Result<LstmOutput> {
        let cfg = self.config;
        let (steps, batch) = match *g.value(x).shape() {
            [s, b, i] if i == cfg.input_size => (s, b),
            _ => {
                return Err(Error::Shape(format!(
                    "Lstm: input {:?} is not [S, B, {}]",
                    g.value(x).shape(),
                    cfg.input_size
                )))
            }
        };
        let keep = step_masks(g, lengths, steps, batch, cfg.hidden_size)?;
        let mut state = LstmState::zeros(g, cfg.num_layers, batch, cfg.hidden_size)?;
        let mut input = x;
        for (l, names) in self.layers.iter().enumerate() {
            if l > 0 {
                input = dropout(g, input, cfg.dropout, train, rng)?;
            }
            let w = names.weights(g, store)?;
            // The input half of every step's gates in one GEMM: [S·B, in] → [S, B, 4H].
            let flat = reshape(g, input, &[steps * batch, cfg.layer_input(l)])?;
            let from_x = linear(g, flat, w.weight_ih, Some(w.bias_ih))?;
            let from_x = reshape(g, from_x, &[steps, batch, 4 * cfg.hidden_size])?;
            let (mut h, mut c) = (state.h[l], state.c[l]);
            let mut outputs = Vec::with_capacity(steps);
            for (s, keep) in keep.iter().enumerate() {
                let gates_x = select_first(g, from_x, s)?;
                let (h_new, c_new) = lstm_cell_from_input_gates(g, gates_x, h, c, &w)?;
                match keep {
                    None => {
                        (h, c) = (h_new, c_new);
                        outputs.push(h_new);
                    }
                    Some((m, not_m)) => {
                        // Padded sentences keep their state and output 0.
                        let out = mul(g, h_new, *m)?;
                        let h_old = mul(g, h, *not_m)?;
                        h = add(g, out, h_old)?;
                        let c_kept = mul(g, c_new, *m)?;
                        let c_old = mul(g, c, *not_m)?;
                        c = add(g, c_kept, c_old)?;
                        outputs.push(out);
                    }
                }
            }
            state.h[l] = h;
            state.c[l] = c;
            input = stack_first(g, &outputs)?;
        }
        Ok(LstmOutput {
            output: input,
            state,
        })
    }
}

/// One length per sentence of the batch, each in `1..=steps` (the padded length).
pub fn check_lengths(what: &str, lengths: &[usize], batch: usize, steps: usize) -> Result<()> {
    if lengths.len() != batch {
        return Err(Error::Shape(format!(
            "{what}: {} lengths for a batch of {batch}",
            lengths.len()
        )));
    }
    if let Some(bad) = lengths.iter().find(|&&n| n == 0 || n > steps) {
        return Err(Error::op_arg(
            what,
            format!("length {bad} outside 1..={steps} (the padded sequence length)"),
        ));
    }
    Ok(())
}

/// Per step, `None` when every sentence is still running, else constants `(m, 1 − m)` of
/// `[B, H]` with `m[b, :] = 1` iff `s < lengths[b]`.
fn step_masks(
    g: &mut Graph,
    lengths: &[usize],
    steps: usize,
    batch: usize,
    hidden: usize,
) -> Result<Vec<Option<(Var, Var)>>> {
    check_lengths("Lstm", lengths, batch, steps)?;
    let mut masks = Vec::with_capacity(steps);
    for s in 0..steps {
        if lengths.iter().all(|&n| s < n) {
            masks.push(None);
            continue;
        }
        let running = |b: usize| if s < lengths[b] { 1.0f32 } else { 0.0 };
        let m: Vec<f32> = (0..batch * hidden).map(|e| running(e / hidden)).collect();
        let not_m: Vec<f32> = m.iter().map(|v| 1.0 - v).collect();
        let m = g.constant(Tensor::from_vec(&[batch, hidden], m, g.device())?);
        let not_m = g.constant(Tensor::from_vec(&[batch, hidden], not_m, g.device())?);
        masks.push(Some((m, not_m)));
    }
    Ok(masks)
}

/// onmt `StackedLSTM`: L `LSTMCell`s run one step at a time (the decoder).
#[derive(Clone, Debug)]
pub struct StackedLstm {
    /// Sizes and dropout.
    pub config: LstmConfig,
    /// Per layer, the store names `<prefix>.layers.{l}.weight_ih`, ….
    pub layers: Vec<LstmCellNames>,
}

impl StackedLstm {
    /// Register every cell under `<prefix>.layers.{l}` (state-dict order), U(±init).
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        config: LstmConfig,
        init: f32,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<StackedLstm> {
        config.check("StackedLstm::new")?;
        let names = |l: usize| LstmCellNames::new(&format!("{prefix}.layers.{l}"), "");
        let layers = config.register_layers(store, names, init, device, rng)?;
        Ok(StackedLstm { config, layers })
    }

    /// One step on `x [B, input]` from `state`: the top layer's new h, and the new state.
    pub fn step(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        x: Var,
        state: &LstmState,
        train: bool,
        rng: &mut Rng,
    ) -> Result<(Var, LstmState)> {
        let cfg = self.config;
        if state.h.len() != cfg.num_layers || state.c.len() != cfg.num_layers {
            return Err(Error::Shape(format!(
                "StackedLstm: state of {} layers for a {}-layer stack",
                state.h.len(),
                cfg.num_layers
            )));
        }
        let mut input = x;
        let mut next = LstmState {
            h: Vec::with_capacity(cfg.num_layers),
            c: Vec::with_capacity(cfg.num_layers),
        };
        for (l, names) in self.layers.iter().enumerate() {
            if l > 0 {
                input = dropout(g, input, cfg.dropout, train, rng)?;
            }
            let w = names.weights(g, store)?;
            let (h, c) = lstm_cell(g, input, state.h[l], state.c[l], &w)?;
            next.h.push(h);
            next.c.push(c);
            input = h;
        }
        Ok((input, next))
    }

    /// [`StackedLstm::step`] with input feeding: the step input is `[embedding ; feed]`
    /// (embedding first, SPEC-TRANSLATION §2.3), so `input_size` = E + H.
    #[allow(clippy::too_many_arguments)]
    pub fn step_input_feed(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        embedding: Var,
        feed: Var,
        state: &LstmState,
        train: bool,
        rng: &mut Rng,
    ) -> Result<(Var, LstmState)> {
        let x = concat_last(g, &[embedding, feed])?;
        self.step(g, store, x, state, train, rng)
    }
}
