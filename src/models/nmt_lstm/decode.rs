//! Incremental decoding of the QD model (SPEC-TRANSLATION §4.2): encode once, then one decoder
//! step at a time from a carried `(h, c, feed)` state. The step runs exactly the ops of
//! [`QdNmt::forward`] in eval mode, so stepping through a target reproduces the teacher-forced
//! pass; the state is plain tensors (not tape values) so that each step can use a fresh no-grad
//! graph and beam search can reorder rows between steps.

use super::QdNmt;
use crate::autograd::Graph;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nmt::batches::Batch;
use crate::nmt::search::{StepDecoder, StepOut};
use crate::nn::lstm::LstmState;
use crate::nn::ParamStore;
use crate::ops::embedding::embedding_forward;
use crate::ops::shape::permute3;
use crate::ops::softmax::log_softmax;
use crate::rng::Rng;
use crate::tensor::{IndexTensor, Tensor};

/// What the decoder attends to: the encoder's top layer per row.
#[derive(Clone, Debug)]
pub struct EncoderMemory {
    /// `[N, S, H]`, 0 at padded source steps (attended anyway: no mask, as the seed).
    pub bank: Tensor,
    /// Real source length of each row.
    pub lengths: Vec<usize>,
}

/// The decoder's carried state for `N` rows.
#[derive(Clone, Debug)]
pub struct DecoderState {
    /// h of each layer, `[N, H]`.
    pub h: Vec<Tensor>,
    /// c of each layer, `[N, H]`.
    pub c: Vec<Tensor>,
    /// The input feed (the previous attention output), `[N, H]`.
    pub feed: Tensor,
}

/// One decoder step's results.
#[derive(Clone, Debug)]
pub struct DecodeStep {
    /// `log_softmax` of the generator, `[N, V_tgt]`.
    pub logp: Tensor,
    /// Attention weights over the source, `[N, S]`.
    pub attn: Tensor,
    /// The state after the step.
    pub state: DecoderState,
}

/// `t[rows]` along the first axis (the embedding gather, used as a row gather).
fn gather_rows(t: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let shape = t.shape().to_vec();
    let Some((&n, rest)) = shape.split_first() else {
        return Err(Error::Shape("gather_rows: a scalar has no rows".into()));
    };
    if let Some(bad) = rows.iter().find(|&&r| r >= n) {
        return Err(Error::op_arg(
            "gather_rows",
            format!("row {bad} of a tensor with {n} rows"),
        ));
    }
    let inner: usize = rest.iter().product();
    let ids: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
    let ids = IndexTensor::from_vec(&[rows.len()], ids, t.device())?;
    let out = embedding_forward(&t.reshape(&[n, inner])?, &ids)?;
    let mut out_shape = vec![rows.len()];
    out_shape.extend_from_slice(rest);
    out.reshape(&out_shape)
}

impl EncoderMemory {
    /// Rows `rows` of the memory (beam replication: row `k·B + b` ← sentence `b`).
    pub fn select(&self, rows: &[usize]) -> Result<EncoderMemory> {
        let bank = gather_rows(&self.bank, rows)?;
        let lengths = rows.iter().map(|&r| self.lengths[r]).collect();
        Ok(EncoderMemory { bank, lengths })
    }
}

impl DecoderState {
    /// Rows `rows` of every tensor (beam reordering by parent).
    pub fn select(&self, rows: &[usize]) -> Result<DecoderState> {
        let pick = |v: &[Tensor]| -> Result<Vec<Tensor>> {
            v.iter().map(|t| gather_rows(t, rows)).collect()
        };
        Ok(DecoderState {
            h: pick(&self.h)?,
            c: pick(&self.c)?,
            feed: gather_rows(&self.feed, rows)?,
        })
    }

    fn rows(&self) -> usize {
        self.feed.shape()[0]
    }
}

impl QdNmt {
    /// Encode `src [S, B]` (eval mode): the memory and the decoder's initial state (encoder final
    /// state per layer, feed 0).
    pub fn encode(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        src: &IndexTensor,
        lengths: &[usize],
    ) -> Result<(EncoderMemory, DecoderState)> {
        let &[_, batch] = src.shape() else {
            return Err(Error::Shape(format!(
                "QD encode: src {:?} is not [S, B]",
                src.shape()
            )));
        };
        let mut rng = Rng::new(0); // eval mode: dropout draws nothing
        let emb = self.src_embedding.forward(g, store, src)?;
        let enc = self
            .encoder
            .forward(g, store, emb, lengths, false, &mut rng)?;
        let bank = permute3(g, enc.output, [1, 0, 2])?;
        let value =
            |vars: &[crate::autograd::Var]| vars.iter().map(|&v| g.value(v).clone()).collect();
        let state = DecoderState {
            h: value(&enc.state.h),
            c: value(&enc.state.c),
            feed: Tensor::zeros(&[batch, self.config.rnn_size], g.device())?,
        };
        let memory = EncoderMemory {
            bank: g.value(bank).clone(),
            lengths: lengths.to_vec(),
        };
        Ok((memory, state))
    }

    /// One decoder step (eval mode) on `tokens [N]` from `state`, attending to `memory`.
    pub fn step(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        memory: &EncoderMemory,
        state: &DecoderState,
        tokens: &IndexTensor,
    ) -> Result<DecodeStep> {
        let n = state.rows();
        if tokens.shape() != [n] || memory.bank.shape().first() != Some(&n) {
            return Err(Error::Shape(format!(
                "QD step: tokens {:?}, memory {:?} and a state of {n} rows",
                tokens.shape(),
                memory.bank.shape()
            )));
        }
        let mut rng = Rng::new(0);
        let emb = self.tgt_embedding.forward(g, store, tokens)?;
        let lstm_state = LstmState {
            h: state.h.iter().map(|t| g.constant(t.clone())).collect(),
            c: state.c.iter().map(|t| g.constant(t.clone())).collect(),
        };
        let feed = g.constant(state.feed.clone());
        let (r, next) =
            self.decoder
                .step_input_feed(g, store, emb, feed, &lstm_state, false, &mut rng)?;
        let bank = g.constant(memory.bank.clone());
        let att = self.attention.forward(g, store, r, bank, None)?;
        let logits = self.generator.forward(g, store, att.out)?;
        let logp = log_softmax(g, logits, 1.0)?;
        let value =
            |vars: &[crate::autograd::Var]| vars.iter().map(|&v| g.value(v).clone()).collect();
        Ok(DecodeStep {
            logp: g.value(logp).clone(),
            attn: g.value(att.align).clone(),
            state: DecoderState {
                h: value(&next.h),
                c: value(&next.c),
                feed: g.value(att.out).clone(),
            },
        })
    }
}

/// The QD model as a [`StepDecoder`]: each call runs on a fresh no-grad graph on `device`.
pub struct QdStepDecoder<'a> {
    model: &'a QdNmt,
    store: &'a ParamStore,
    device: Device,
}

impl<'a> QdStepDecoder<'a> {
    /// Decode with `model` whose tensors are in `store` on `device`.
    pub fn new(model: &'a QdNmt, store: &'a ParamStore, device: &Device) -> Self {
        QdStepDecoder {
            model,
            store,
            device: device.clone(),
        }
    }
}

impl StepDecoder for QdStepDecoder<'_> {
    type Memory = EncoderMemory;
    type State = DecoderState;

    fn vocab_size(&self) -> usize {
        self.model.config.tgt_vocab
    }

    fn start(&mut self, batch: &Batch) -> Result<(EncoderMemory, DecoderState)> {
        let mut g = Graph::no_grad(&self.device);
        let src = batch.src_tensor(&self.device)?;
        let lengths: Vec<usize> = batch.src_lengths.iter().map(|&l| l as usize).collect();
        self.model.encode(&mut g, self.store, &src, &lengths)
    }

    fn repeat_memory(&self, memory: &EncoderMemory, times: usize) -> Result<EncoderMemory> {
        let batch = memory.lengths.len();
        memory.select(&(0..batch * times).map(|r| r % batch).collect::<Vec<_>>())
    }

    fn select_state(&self, state: &DecoderState, rows: &[usize]) -> Result<DecoderState> {
        state.select(rows)
    }

    fn step(
        &mut self,
        memory: &EncoderMemory,
        state: &DecoderState,
        tokens: &[i32],
    ) -> Result<StepOut<DecoderState>> {
        let mut g = Graph::no_grad(&self.device);
        let ids = IndexTensor::from_slice(&[tokens.len()], tokens, &self.device)?;
        let out = self.model.step(&mut g, self.store, memory, state, &ids)?;
        Ok(StepOut {
            logp: out.logp.to_vec()?,
            attn: out.attn.to_vec()?,
            state: out.state,
        })
    }
}
