//! QD's translation model (SPEC-TRANSLATION §2): OpenNMT-py ~0.1 `NMTModel` with a unidirectional
//! LSTM encoder, an input-feeding `StackedLSTM` decoder with Luong "general" attention and a
//! log-softmax generator. Parameters under the seed's state-dict names, in its order (§2.2):
//!
//! | key | shape |
//! |---|---|
//! | `encoder.embeddings.make_embedding.emb_luts.0.weight` | `[V_src, E]` |
//! | `encoder.rnn.{weight_ih,weight_hh,bias_ih,bias_hh}_l{k}` | `[4H, in]`, `[4H, H]`, `[4H]`, `[4H]` |
//! | `decoder.embeddings.make_embedding.emb_luts.0.weight` | `[V_tgt, E]` |
//! | `decoder.rnn.layers.{k}.{weight_ih,weight_hh,bias_ih,bias_hh}` | layer 0 `weight_ih` `[4H, E + H]` |
//! | `decoder.attn.linear_in.weight`, `decoder.attn.linear_out.weight` | `[H, H]`, `[H, 2H]` |
//! | `generator.0.weight`, `generator.0.bias` | `[V_tgt, H]`, `[V_tgt]` |
//!
//! Initialisation (§2.4): everything but the generator U(±0.1) (`<blank>` rows included); the
//! generator is `nn.Linear`'s default. Forward (§2.3): no embedding dropout; encoder over the
//! packed source (0 at padded steps); decoder layer l starts from encoder layer l's final state,
//! feed 0; at each step `a_t = attn(StackedLSTM([emb(y_t); feed]))` over ALL source positions (no
//! mask), `o_t = dropout(a_t)` is both the output and the next feed. Both embeddings have
//! `padding_idx` `<blank>` (id 1): those rows keep their U(±0.1) init and get a zero gradient.

pub mod decode;

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nmt::vocab::PAD_ID;
use crate::nn::embedding::Embedding;
use crate::nn::global_attention::GlobalAttention;
use crate::nn::linear::Linear;
use crate::nn::lstm::{Lstm, LstmConfig, LstmState, StackedLstm};
use crate::nn::ParamStore;
use crate::ops::concat::{select_first, stack_first};
use crate::ops::dropout::dropout;
use crate::ops::embedding::embedding_padded;
use crate::ops::shape::{permute3, reshape};
use crate::ops::softmax::log_softmax;
use crate::rng::Rng;
use crate::tensor::{IndexTensor, Tensor};

/// The seed's `param_init`: U(±0.1) for every encoder and decoder tensor.
pub const PARAM_INIT: f32 = 0.1;

/// Sizes of a QD translation model (`model.args` of the golden cases).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QdNmtConfig {
    /// Source vocabulary size (specials included).
    pub src_vocab: usize,
    /// Target vocabulary size (specials included).
    pub tgt_vocab: usize,
    /// E, the word vector size of both embeddings.
    pub word_vec_size: usize,
    /// H, the LSTM and attention width.
    pub rnn_size: usize,
    /// L, the layers of the encoder and of the decoder.
    pub layers: usize,
    /// Dropout between LSTM layers and on the attention output (train mode).
    pub dropout: f32,
}

/// What a teacher-forced forward produces.
#[derive(Clone, Debug)]
pub struct QdNmtOutput {
    /// The encoder's top layer `[S, B, H]` (0 at padded steps).
    pub enc_out: Var,
    /// The encoder's final state per layer.
    pub enc_final: LstmState,
    /// The decoder outputs `o_t` `[T−1, B, H]`.
    pub dec_out: Var,
    /// The attention weights `[T−1, B, S]`.
    pub attn: Var,
    /// `log_softmax` of the generator `[T−1, B, V_tgt]`.
    pub logp: Var,
}

/// The model: layer descriptions; the tensors live in a [`ParamStore`].
#[derive(Clone, Debug)]
pub struct QdNmt {
    /// Its sizes.
    pub config: QdNmtConfig,
    src_embedding: Embedding,
    encoder: Lstm,
    tgt_embedding: Embedding,
    decoder: StackedLstm,
    attention: GlobalAttention,
    generator: Linear,
}

/// Register an embedding `<prefix>.weight [num, dim]` drawn U(±init).
fn uniform_embedding(
    store: &mut ParamStore,
    prefix: &str,
    (num, dim): (usize, usize),
    init: f32,
    device: &Device,
    rng: &mut Rng,
) -> Result<Embedding> {
    let e = Embedding {
        prefix: prefix.to_string(),
        num,
        dim,
    };
    let w = rng.uniform_vec(num * dim, -init, init);
    store.add_param(&e.weight_name(), Tensor::from_vec(&[num, dim], w, device)?)?;
    Ok(e)
}

impl QdNmt {
    /// Register every tensor in the seed's order and initialise it as the seed does.
    pub fn new(
        store: &mut ParamStore,
        config: QdNmtConfig,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<QdNmt> {
        let c = config;
        if c.src_vocab == 0 || c.tgt_vocab == 0 || c.word_vec_size == 0 {
            return Err(Error::Config(format!(
                "QD translation model: vocabularies ({}, {}) and word_vec_size ({}) must be positive",
                c.src_vocab, c.tgt_vocab, c.word_vec_size
            )));
        }
        let (e, h) = (c.word_vec_size, c.rnn_size);
        let emb = "embeddings.make_embedding.emb_luts.0";
        let src_embedding = uniform_embedding(
            store,
            &format!("encoder.{emb}"),
            (c.src_vocab, e),
            PARAM_INIT,
            device,
            rng,
        )?;
        let enc_cfg = LstmConfig {
            input_size: e,
            hidden_size: h,
            num_layers: c.layers,
            dropout: c.dropout,
        };
        let encoder = Lstm::new(store, "encoder.rnn", enc_cfg, PARAM_INIT, device, rng)?;
        let tgt_embedding = uniform_embedding(
            store,
            &format!("decoder.{emb}"),
            (c.tgt_vocab, e),
            PARAM_INIT,
            device,
            rng,
        )?;
        let dec_cfg = LstmConfig {
            input_size: e + h,
            ..enc_cfg
        };
        let decoder = StackedLstm::new(store, "decoder.rnn", dec_cfg, PARAM_INIT, device, rng)?;
        let attention = GlobalAttention::new(store, "decoder.attn", h, PARAM_INIT, device, rng)?;
        let generator = Linear::new(store, "generator.0", h, c.tgt_vocab, true, device, rng)?;
        Ok(QdNmt {
            config,
            src_embedding,
            encoder,
            tgt_embedding,
            decoder,
            attention,
            generator,
        })
    }

    /// Teacher-forced forward: `src [S, B]` (`<blank>`-padded), `src_lengths [B]`, decoder input
    /// `tgt_in [T−1, B]` (`tgt[:-1]`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        src: &IndexTensor,
        src_lengths: &[usize],
        tgt_in: &IndexTensor,
        train: bool,
        rng: &mut Rng,
    ) -> Result<QdNmtOutput> {
        let (&[_, batch], &[out_steps, tgt_batch]) = (src.shape(), tgt_in.shape()) else {
            return Err(Error::Shape(format!(
                "QD translation model: src {:?} and tgt {:?} must be [S, B] and [T-1, B]",
                src.shape(),
                tgt_in.shape()
            )));
        };
        if tgt_batch != batch || out_steps == 0 {
            return Err(Error::Shape(format!(
                "QD translation model: src {:?} and decoder input {:?} (need the same B, T-1 > 0)",
                src.shape(),
                tgt_in.shape()
            )));
        }
        let h = self.config.rnn_size;
        let w_src = g.param(store, &self.src_embedding.weight_name())?;
        let src_emb = embedding_padded(g, w_src, src, PAD_ID as usize)?;
        let enc = self
            .encoder
            .forward(g, store, src_emb, src_lengths, train, rng)?;
        let memory = permute3(g, enc.output, [1, 0, 2])?; // [B, S, H]
        let w_tgt = g.param(store, &self.tgt_embedding.weight_name())?;
        let tgt_emb = embedding_padded(g, w_tgt, tgt_in, PAD_ID as usize)?; // [T-1, B, E]
        let mut state = enc.state.clone();
        let mut feed = g.constant(Tensor::zeros(&[batch, h], g.device())?);
        let (mut outs, mut aligns) = (Vec::new(), Vec::new());
        for t in 0..out_steps {
            let emb_t = select_first(g, tgt_emb, t)?;
            let (r_t, next) = self
                .decoder
                .step_input_feed(g, store, emb_t, feed, &state, train, rng)?;
            state = next;
            let att = self.attention.forward(g, store, r_t, memory, None)?;
            let o_t = dropout(g, att.out, self.config.dropout, train, rng)?;
            feed = o_t;
            outs.push(o_t);
            aligns.push(att.align);
        }
        let dec_out = stack_first(g, &outs)?;
        let attn = stack_first(g, &aligns)?;
        let flat = reshape(g, dec_out, &[out_steps * batch, h])?;
        let logits = self.generator.forward(g, store, flat)?;
        let logp = log_softmax(g, logits, 1.0)?;
        let logp = reshape(g, logp, &[out_steps, batch, self.config.tgt_vocab])?;
        Ok(QdNmtOutput {
            enc_out: enc.output,
            enc_final: enc.state,
            dec_out,
            attn,
            logp,
        })
    }
}
