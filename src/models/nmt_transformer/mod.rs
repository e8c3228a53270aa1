//! LMA's translation model (SPEC-TRANSLATION §5): the early OpenNMT-py Transformer with a
//! replaceable FFN activation. Parameters under the seed's state-dict names, in its order (§5.2;
//! the constant buffers `*.pe.pe` and `decoder.transformer_layers.{i}.mask` are not stored):
//!
//! | key | shape |
//! |---|---|
//! | `encoder.embeddings.make_embedding.emb_luts.0.weight` | `[V_src, d]` |
//! | `encoder.transformer.{i}.self_attn.{linear_keys,linear_values,linear_query}.weight` | `[d, d]` |
//! | `encoder.transformer.{i}.self_attn.layer_norm.{a_2,b_2}` | `[d]` |
//! | `encoder.transformer.{i}.feed_forward.{w_1,w_2}.{weight,bias}`, `.layer_norm.*`, `.act.*` | |
//! | `decoder.embeddings.make_embedding.emb_luts.0.weight` | `[V_tgt, d]` |
//! | `decoder.transformer_layers.{i}.{self_attn,context_attn}.*`, `.feed_forward.*` | as encoder |
//! | `generator.0.weight`, `generator.0.bias` | `[V_tgt, d]`, `[V_tgt]` |
//!
//! LMA's running `mv_mean`/`mv_std` are store *state* (`<ffn>.act.mv_mean`), outside the
//! parameters. Initialisation (§5.8): embeddings N(0, 1) with the `<blank>` row 0, every linear
//! U(±1/√fan_in) (generator included), LayerNorm 1/0, activation defaults. Forward (§5.7):
//! batch-major `[B, L, d]` inside, time-major `[L, B, d]` outside, as the seed.

mod decode;

pub use decode::TransformerMemory;

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::limits;
use crate::nmt::vocab::PAD_ID;
use crate::nn::linear::Linear;
use crate::nn::transformer::decoder::TransformerDecoderLayer;
use crate::nn::transformer::embeddings::TransformerEmbeddings;
use crate::nn::transformer::encoder::TransformerEncoderLayer;
use crate::nn::transformer::feed_forward::ONMT_FFN_HIDDEN;
use crate::nn::transformer::mask::AttentionMask;
use crate::nn::transformer::{SublayerDropout, ONMT_DROPOUT};
use crate::nn::ParamStore;
use crate::ops::shape::{permute3, reshape};
use crate::ops::softmax::log_softmax;
use crate::rng::Rng;
use crate::tensor::IndexTensor;

/// Sizes of an LMA translation model (`model.args` of the golden cases).
#[derive(Clone, Debug, PartialEq)]
pub struct NmtTransformerConfig {
    /// Source vocabulary size (specials included; `<blank>` = 1).
    pub src_vocab: usize,
    /// Target vocabulary size (specials included; `<blank>` = 1).
    pub tgt_vocab: usize,
    /// d: the embedding, attention and layer width (`rnn_size`), divisible by the 8 heads.
    pub d: usize,
    /// Layers of the encoder and of the decoder (the seed builds both with `layers`).
    pub layers: usize,
    /// The FFN's inner width (the seed hard-codes [`ONMT_FFN_HIDDEN`]).
    pub ffn_hidden: usize,
    /// The FFN activation: relu, lma, prelu or swish.
    pub activation: String,
    /// Dropout of embeddings, attention probabilities and residual branches (train mode).
    pub dropout: f32,
}

impl NmtTransformerConfig {
    /// The seed's student/teacher defaults for width `d`, `layers` and `activation`.
    pub fn seed(src_vocab: usize, tgt_vocab: usize, d: usize, layers: usize, act: &str) -> Self {
        NmtTransformerConfig {
            src_vocab,
            tgt_vocab,
            d,
            layers,
            ffn_hidden: ONMT_FFN_HIDDEN,
            activation: act.to_string(),
            dropout: ONMT_DROPOUT,
        }
    }

    /// From a golden case's `model.args` (`src_vocab, tgt_vocab, d, layers, d_ff, activation,
    /// dropout`); `heads`, `num_bins`, `layer_norm_eps` and `max_len`, when given, must be the
    /// seed's constants (8, 8, 1e-3, 5000) since the layers hard-code them.
    pub fn from_args(args: &serde_json::Value) -> Result<Self> {
        let bad = |what: String| Error::Config(format!("lma transformer args: {what}"));
        let size = |key: &str| -> Result<usize> {
            args[key]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| bad(format!("`{key}` must be a non-negative integer")))
        };
        for (key, want) in [
            ("heads", 8.0),
            ("num_bins", 8.0),
            ("layer_norm_eps", 1e-3),
            ("max_len", 5000.0),
        ] {
            if let Some(v) = args.get(key) {
                if v.as_f64().map(|v| (v - want).abs() > 1e-12) != Some(false) {
                    return Err(bad(format!("`{key}` = {v}, the seed's model uses {want}")));
                }
            }
        }
        let cfg = NmtTransformerConfig {
            src_vocab: size("src_vocab")?,
            tgt_vocab: size("tgt_vocab")?,
            d: size("d")?,
            layers: size("layers")?,
            ffn_hidden: match args.get("d_ff") {
                Some(_) => size("d_ff")?,
                None => ONMT_FFN_HIDDEN,
            },
            activation: args["activation"]
                .as_str()
                .ok_or_else(|| bad("`activation` must be a string".into()))?
                .to_string(),
            dropout: match args.get("dropout") {
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| bad("`dropout` must be a number".into()))?
                    as f32,
                None => ONMT_DROPOUT,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sizes bounded and consistent (before anything is allocated).
    pub fn validate(&self) -> Result<()> {
        let c = self;
        let bad = |what: String| Err(Error::Config(format!("lma transformer: {what}")));
        for (what, v, max) in [
            ("src_vocab", c.src_vocab, limits::MAX_VOCAB_SIZE),
            ("tgt_vocab", c.tgt_vocab, limits::MAX_VOCAB_SIZE),
            ("d", c.d, limits::MAX_LAYER_WIDTH),
            ("layers", c.layers, limits::MAX_DEPTH),
            ("ffn_hidden", c.ffn_hidden, limits::MAX_LAYER_WIDTH),
        ] {
            if v == 0 || v > max {
                return bad(format!("{what} = {v} must lie in 1..={max}"));
            }
        }
        if c.src_vocab <= PAD_ID as usize || c.tgt_vocab <= PAD_ID as usize {
            return bad("the vocabularies must hold the <blank> id 1".into());
        }
        if !c.d.is_multiple_of(8) {
            return bad(format!("d = {} is not divisible by the 8 heads", c.d));
        }
        if !(0.0..1.0).contains(&c.dropout) {
            return bad(format!("dropout {} outside [0, 1)", c.dropout));
        }
        if parameter_count(c).is_none_or(|n| n > limits::MAX_MODEL_ELEMENTS) {
            return bad(format!(
                "more than {} parameters",
                limits::MAX_MODEL_ELEMENTS
            ));
        }
        Ok(())
    }
}

/// The parameter count of §5.2 by formula (`None` on overflow or an unknown activation): encoder
/// layer `3d² + 2hd + h + 5d`, decoder layer `6d² + 2hd + h + 7d`, plus the activation's own
/// per FFN (lma 16, prelu 1, swish 8), and `d·(V_src + 2·V_tgt) + V_tgt` for the vocabularies.
pub fn parameter_count(c: &NmtTransformerConfig) -> Option<usize> {
    let (d, h, l) = (c.d, c.ffn_hidden, c.layers);
    let act = match c.activation.trim().to_ascii_lowercase().as_str() {
        "relu" => 0,
        "lma" => 16,
        "prelu" => 1,
        "swish" => 8,
        _ => return None,
    };
    let dd = d.checked_mul(d)?;
    let hd2 = h.checked_mul(d)?.checked_mul(2)?;
    let enc = dd.checked_mul(3)? + hd2 + h + 5 * d + act;
    let dec = dd.checked_mul(6)? + hd2 + h + 7 * d + act;
    let layers = (enc + dec).checked_mul(l)?;
    let vocab = d.checked_mul(c.src_vocab + 2 * c.tgt_vocab)? + c.tgt_vocab;
    layers.checked_add(vocab)
}

/// What a teacher-forced forward produces.
#[derive(Clone, Debug)]
pub struct NmtTransformerOutput {
    /// The encoder's output `[S, B, d]` (padded positions computed too).
    pub enc_out: Var,
    /// The decoder's output `[T−1, B, d]`.
    pub dec_out: Var,
    /// The last layer's context attention of head 0, `[B, T−1, S]` (a constant).
    pub attn: Var,
    /// `log_softmax` of the generator, `[T−1, B, V_tgt]`.
    pub logp: Var,
}

/// The model: layer descriptions; the tensors live in a [`ParamStore`].
#[derive(Clone, Debug)]
pub struct NmtTransformer {
    /// Its sizes.
    pub config: NmtTransformerConfig,
    src_embeddings: TransformerEmbeddings,
    encoder: Vec<TransformerEncoderLayer>,
    tgt_embeddings: TransformerEmbeddings,
    decoder: Vec<TransformerDecoderLayer>,
    generator: Linear,
}

/// Time-major ids `[L, B]` (the batch layout) → their values and the batch-major copy `[B, L]`
/// the layers take.
fn batch_major(ids: &IndexTensor, what: &str) -> Result<(Vec<i32>, IndexTensor)> {
    let &[len, batch] = ids.shape() else {
        return Err(Error::Shape(format!(
            "lma transformer: {what} must be time-major [L, B], got {:?}",
            ids.shape()
        )));
    };
    if len == 0 || batch == 0 {
        return Err(Error::Shape(format!(
            "lma transformer: empty {what} {:?}",
            ids.shape()
        )));
    }
    let tm = ids.to_vec()?;
    let bm: Vec<i32> = (0..batch)
        .flat_map(|b| (0..len).map(move |t| (b, t)))
        .map(|(b, t)| tm[t * batch + b])
        .collect();
    Ok((tm, IndexTensor::from_vec(&[batch, len], bm, ids.device())?))
}

impl NmtTransformer {
    /// Register every parameter in the seed's order and initialise it as the seed does.
    pub fn new(
        store: &mut ParamStore,
        config: NmtTransformerConfig,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<NmtTransformer> {
        config.validate()?;
        let c = &config;
        let pad = PAD_ID as usize;
        let (d, h, act) = (c.d, c.ffn_hidden, c.activation.as_str());
        let src_embeddings = TransformerEmbeddings::new(
            store,
            "encoder.embeddings",
            c.src_vocab,
            d,
            pad,
            device,
            rng,
        )?;
        let encoder = (0..c.layers)
            .map(|i| {
                let p = format!("encoder.transformer.{i}");
                TransformerEncoderLayer::new(store, &p, d, h, act, device, rng)
            })
            .collect::<Result<Vec<_>>>()?;
        let tgt_embeddings = TransformerEmbeddings::new(
            store,
            "decoder.embeddings",
            c.tgt_vocab,
            d,
            pad,
            device,
            rng,
        )?;
        let decoder = (0..c.layers)
            .map(|i| {
                let p = format!("decoder.transformer_layers.{i}");
                TransformerDecoderLayer::new(store, &p, d, h, act, device, rng)
            })
            .collect::<Result<Vec<_>>>()?;
        let generator = Linear::new(store, "generator.0", d, c.tgt_vocab, true, device, rng)?;
        Ok(NmtTransformer {
            config,
            src_embeddings,
            encoder,
            tgt_embeddings,
            decoder,
            generator,
        })
    }

    /// Teacher-forced forward: `src [S, B]` (time-major, `<blank>`-padded), `src_lengths [B]`
    /// (checked against the batch only: the Transformer masks by `<blank>` ids, as the seed),
    /// decoder input `tgt_in [T−1, B]` (`tgt[:-1]`). LMA layers update their running statistics
    /// in `store` (train and eval, as the seed).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        src: &IndexTensor,
        src_lengths: &[usize],
        tgt_in: &IndexTensor,
        train: bool,
        rng: &mut Rng,
    ) -> Result<NmtTransformerOutput> {
        let (src_tm, src_bm) = batch_major(src, "src")?;
        let (tgt_tm, tgt_bm) = batch_major(tgt_in, "decoder input")?;
        let (s, b) = (src.shape()[0], src.shape()[1]);
        if tgt_in.shape()[1] != b || src_lengths.len() != b {
            return Err(Error::Shape(format!(
                "lma transformer: src {:?}, {} lengths and decoder input {:?} disagree on B",
                src.shape(),
                src_lengths.len(),
                tgt_in.shape()
            )));
        }
        let mut drop = (train && self.config.dropout > 0.0).then_some(SublayerDropout {
            p: self.config.dropout,
            train,
            rng,
        });
        let memory = self.encode_layers(g, store, &src_tm, &src_bm, train, drop.as_mut())?;
        let src_ids = SourceIds {
            ids: &src_tm,
            len: s,
            batch: b,
        };
        let (y, attn) = self.decode_layers(
            g,
            store,
            memory,
            &src_ids,
            (&tgt_tm, &tgt_bm),
            train,
            drop.as_mut(),
        )?;
        let t = tgt_in.shape()[0];
        let enc_out = permute3(g, memory, [1, 0, 2])?;
        let dec_out = permute3(g, y, [1, 0, 2])?;
        let flat = reshape(g, dec_out, &[t * b, self.config.d])?;
        let logp = self.generate(g, store, flat)?;
        let logp = reshape(g, logp, &[t, b, self.config.tgt_vocab])?;
        Ok(NmtTransformerOutput {
            enc_out,
            dec_out,
            attn,
            logp,
        })
    }

    /// `log_softmax(generator(x))` of `x [N, d]` → `[N, V_tgt]`.
    fn generate(&self, g: &mut Graph, store: &ParamStore, x: Var) -> Result<Var> {
        let logits = self.generator.forward(g, store, x)?;
        log_softmax(g, logits, 1.0)
    }

    /// The encoder stack over `src` → memory `[B, S, d]` (batch-major).
    fn encode_layers(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        src_tm: &[i32],
        src_bm: &IndexTensor,
        train: bool,
        mut drop: Option<&mut SublayerDropout<'_>>,
    ) -> Result<Var> {
        let (b, s) = (src_bm.shape()[0], src_bm.shape()[1]); // [B, S] from batch_major
        let mask = AttentionMask::padding(src_tm, s, b, PAD_ID, s)?;
        let mut x = self
            .src_embeddings
            .forward(g, store, src_bm, drop.as_deref_mut())?;
        for layer in &self.encoder {
            x = layer.forward(g, store, x, &mask, train, drop.as_deref_mut())?;
        }
        Ok(x)
    }

    /// The decoder stack over `tgt` (time-major values and batch-major ids, `[T, B]`) attending
    /// `memory [B, S, d]` → `(y [B, T, d], last layer's context attention of head 0 [B, T, S])`.
    #[allow(clippy::too_many_arguments)]
    fn decode_layers(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        memory: Var,
        src: &SourceIds<'_>,
        (tgt_tm, tgt_bm): (&[i32], &IndexTensor),
        train: bool,
        mut drop: Option<&mut SublayerDropout<'_>>,
    ) -> Result<(Var, Var)> {
        let (b, t) = (tgt_bm.shape()[0], tgt_bm.shape()[1]); // [B, T] from batch_major
        if b != src.batch {
            return Err(Error::Shape(format!(
                "lma transformer: decoder batch {b} for a memory of batch {}",
                src.batch
            )));
        }
        let self_mask = AttentionMask::causal_padding(tgt_tm, t, b, PAD_ID)?;
        let src_mask = AttentionMask::padding(src.ids, src.len, b, PAD_ID, t)?;
        let mut y = self
            .tgt_embeddings
            .forward(g, store, tgt_bm, drop.as_deref_mut())?;
        let mut attn = None;
        for layer in &self.decoder {
            let (out, a) = layer.forward(
                g,
                store,
                y,
                memory,
                &self_mask,
                &src_mask,
                train,
                drop.as_deref_mut(),
            )?;
            y = out;
            attn = Some(a);
        }
        let attn = attn.ok_or_else(|| Error::Config("lma transformer: no decoder layer".into()))?;
        Ok((y, attn))
    }
}

/// Time-major source ids `[len, batch]`: what the padding masks are built from.
struct SourceIds<'a> {
    ids: &'a [i32],
    len: usize,
    batch: usize,
}
