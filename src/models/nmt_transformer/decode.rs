//! The Transformer's decoding steps for search (SPEC-TRANSLATION §5.7, inference): the source is
//! encoded once; every step feeds the WHOLE prefix again (the seed keeps `previous_input` and has
//! no cache) and keeps the last position. Eval mode, no dropout. For LMA this is not the same as
//! cached decoding: its statistics (and the eval-time running update in the store) cover the
//! whole recomputed prefix of every beam and batch row, which is what the seed does.

use super::{batch_major, NmtTransformer, SourceIds};
use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::ParamStore;
use crate::ops::concat::select_first;
use crate::ops::shape::permute3;
use crate::tensor::{IndexTensor, Tensor};

/// The encoded source a decoder step attends to.
#[derive(Clone, Debug)]
pub struct TransformerMemory {
    /// The encoder output, batch-major `[B, S, d]`.
    pub enc: Tensor,
    /// The source ids, time-major `[S, B]` (the context attention's padding mask).
    pub src: Vec<i32>,
    /// S, the source length.
    pub src_len: usize,
    /// B, the batch rows.
    pub batch: usize,
}

impl TransformerMemory {
    /// The memory tiled `times` over the batch, row `k·B + b` = row `b` (the seed's
    /// `repeat(1, beam_size, 1)` of the context and the source before beam search).
    pub fn repeat(&self, times: usize) -> Result<TransformerMemory> {
        let rows = self
            .batch
            .checked_mul(times)
            .filter(|&r| r > 0 && r <= limits::MAX_BATCH);
        let Some(rows) = rows else {
            return Err(Error::op_arg(
                "TransformerMemory::repeat",
                format!(
                    "{times} copies of {} rows: empty or beyond {}",
                    self.batch,
                    limits::MAX_BATCH
                ),
            ));
        };
        let shape = self.enc.shape();
        let enc = self.enc.to_vec()?;
        let tiled: Vec<f32> = (0..times).flat_map(|_| enc.iter().copied()).collect();
        let src: Vec<i32> = (0..self.src_len)
            .flat_map(|s| {
                let row = &self.src[s * self.batch..(s + 1) * self.batch];
                (0..times).flat_map(move |_| row.iter().copied())
            })
            .collect();
        Ok(TransformerMemory {
            enc: Tensor::from_vec(&[rows, shape[1], shape[2]], tiled, self.enc.device())?,
            src,
            src_len: self.src_len,
            batch: rows,
        })
    }
}

impl NmtTransformer {
    /// Encode `src [S, B]` (time-major, `<blank>`-padded) in eval mode. LMA layers update their
    /// running statistics in `store`, as the seed's one encoder call per batch does.
    pub fn encode(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        src: &IndexTensor,
    ) -> Result<TransformerMemory> {
        let (src_tm, src_bm) = batch_major(src, "src")?;
        let enc = self.encode_layers(g, store, &src_tm, &src_bm, false, None)?;
        Ok(TransformerMemory {
            enc: g.value(enc).clone(),
            src: src_tm,
            src_len: src.shape()[0],
            batch: src.shape()[1],
        })
    }

    /// One search step: the decoder over the whole `prefix [P, B']` (time-major, starting with
    /// `<s>`; B' = `memory.batch`, see [`TransformerMemory::repeat`]) in eval mode →
    /// `(logp [B', V_tgt], context attention of head 0 [B', S])` of the LAST position.
    pub fn decode_prefix(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        memory: &TransformerMemory,
        prefix: &IndexTensor,
    ) -> Result<(Var, Var)> {
        let (tgt_tm, tgt_bm) = batch_major(prefix, "prefix")?;
        let expect = [memory.batch, memory.src_len, self.config.d];
        memory.enc.expect_shape("transformer memory", &expect)?;
        let enc = g.constant(memory.enc.clone());
        let src = SourceIds {
            ids: &memory.src,
            len: memory.src_len,
            batch: memory.batch,
        };
        let (y, attn) = self.decode_layers(g, store, enc, &src, (&tgt_tm, &tgt_bm), false, None)?;
        let last = prefix.shape()[0] - 1;
        let y = permute3(g, y, [1, 0, 2])?; // [P, B', d]
        let y_last = select_first(g, y, last)?;
        let logp = self.generate(g, store, y_last)?;
        let attn = permute3(g, attn, [1, 0, 2])?; // [P, B', S]
        let attn_last = select_first(g, attn, last)?;
        Ok((logp, attn_last))
    }
}
