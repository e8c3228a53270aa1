//! `lit-engine translate <checkpoint> --config <cfg>`: a trained stage's checkpoint with the
//! vocabularies beside it, decoding lines by [`crate::nmt::search::translate_lines`] (the seed's
//! beam 5, 100 steps, `replace_unk`; SPEC §4.1–4.3) with the decoder of its family: QD's LSTM
//! (beam filler `<blank>`) or LMA's Transformer (whole prefix each step, filler `<unk>`, §5.7).

use super::corpus::load_vocabs;
use super::{build_model_sized, Model};
use crate::checkpoint;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::limits::MAX_CORPUS_FILE_BYTES;
use crate::models::nmt_lstm::decode::QdStepDecoder;
use crate::nmt::config::{ModelSpec, TranslationConfig};
use crate::nmt::model::NmtModel;
use crate::nmt::search::{translate_lines, TransformerStepDecoder, TranslateOptions};
use crate::nmt::vocab::{PAD_ID, UNK_ID};
use crate::rng::Rng;
use std::path::Path;

/// A checkpoint written by a translation stage, ready to translate.
pub struct Translator {
    model: Model,
    src_vocab: crate::nmt::vocab::Vocab,
    tgt_vocab: crate::nmt::vocab::Vocab,
    device: Device,
}

impl Translator {
    /// Load `checkpoint` (its sidecar names the architecture) and the vocabularies beside it.
    pub fn load(checkpoint_path: &Path, device: &Device) -> Result<Translator> {
        let sidecar_path = checkpoint::sidecar_path(checkpoint_path);
        let bytes = crate::limits::read_file_at_most(
            &sidecar_path,
            crate::limits::MAX_CONFIG_BYTES * 16,
            "checkpoint sidecar",
        )?;
        let sidecar: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", sidecar_path.display())))?;
        let spec: ModelSpec = serde_json::from_value(sidecar["model"].clone()).map_err(|e| {
            Error::Checkpoint(format!(
                "{}: no translation model description (`model`: {e}); was it written by a \
                 translation stage?",
                sidecar_path.display()
            ))
        })?;
        let (src_vocab, tgt_vocab) = load_vocabs(checkpoint_path)?;
        let mut model = build_model_sized(
            &spec,
            (src_vocab.len(), tgt_vocab.len()),
            0.0,
            device,
            &mut Rng::new(0),
        )?;
        checkpoint::load_into(checkpoint_path, &mut model.store)?;
        Ok(Translator {
            model,
            src_vocab,
            tgt_vocab,
            device: device.clone(),
        })
    }

    /// Sentences the seed decodes together: QD 1, LMA 10 (SPEC-TRANSLATION §4.1). It matters for
    /// LMA, whose statistics span the whole batch (L4).
    pub fn seed_batch_size(&self) -> usize {
        match self.model.net {
            NmtModel::QdLstm(_) => 1,
            NmtModel::Transformer(_) => 10,
        }
    }

    /// Translate `lines`, one output line each. The beam filler is the family's (`<blank>` for
    /// QD, `<unk>` for LMA) whatever `options` says. LMA's eval-time running update changes the
    /// statistics in memory as the seed's does (hence `&mut`); the checkpoint is not rewritten.
    pub fn translate(
        &mut self,
        lines: &[String],
        options: &TranslateOptions,
    ) -> Result<Vec<String>> {
        let mut options = *options;
        let (src, tgt) = (&self.src_vocab, &self.tgt_vocab);
        match &self.model.net {
            NmtModel::QdLstm(m) => {
                options.search.filler = PAD_ID;
                let mut dec = QdStepDecoder::new(m, &self.model.store, &self.device);
                translate_lines(&mut dec, src, tgt, lines, &options)
            }
            NmtModel::Transformer(m) => {
                options.search.filler = UNK_ID;
                let mut dec = TransformerStepDecoder::new(m, &mut self.model.store, &self.device);
                translate_lines(&mut dec, src, tgt, lines, &options)
            }
        }
    }
}

/// `translate`: the lines of `input` (at most a corpus file's size) translated with the
/// checkpoint, the config giving the lowercasing; `(beam, batch_size)` as the seed's options (no
/// batch size: the seed's, [`Translator::seed_batch_size`]).
pub fn translate_text(
    cfg: &TranslationConfig,
    checkpoint_path: &Path,
    device: &Device,
    input: impl std::io::Read,
    (beam, batch_size): (usize, Option<usize>),
) -> Result<Vec<String>> {
    let what = Path::new("<stdin>");
    let bytes = crate::limits::read_at_most(what, input, MAX_CORPUS_FILE_BYTES, "the input")?;
    let lines = crate::nmt::data::split_lines(what, &bytes)?;
    let mut t = Translator::load(checkpoint_path, device)?;
    let mut options = TranslateOptions {
        batch_size: batch_size.unwrap_or_else(|| t.seed_batch_size()),
        lowercase: cfg.data.lowercase,
        ..TranslateOptions::default()
    };
    options.search.beam_size = beam;
    t.translate(&lines, &options)
}
