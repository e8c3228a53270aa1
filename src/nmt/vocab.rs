//! Source and target vocabularies with torchtext 0.1.1's semantics (SPEC-TRANSLATION §1.3).
//!
//! `itos = ['<unk>'] + specials`: the source has `<unk>`=0 `<blank>`=1, the target `<unk>`=0
//! `<blank>`=1 `<s>`=2 `</s>`=3. Then the words of the training split, by descending count, ties
//! in code point order (torchtext sorts alphabetically, then stable-sorts by count), while the
//! count is at least `max(min_freq, 1)` and the vocabulary has fewer than `max_size` + specials
//! entries. A special that also occurs in the corpus is not ranked again. An unknown word is 0.
//!
//! A vocabulary is saved as a small JSON file (`{"format": …, "side": …, "itos": […]}`) next to
//! the checkpoint, and checked when it is read back.

use super::data::{is_python_space, Sentence};
use crate::error::{Error, Result};
use crate::limits::{read_file_at_most, MAX_VOCAB_FILE_BYTES, MAX_VOCAB_SIZE};
use std::collections::HashMap;
use std::path::Path;

/// The unknown word, id 0 on both sides.
pub const UNK: &str = "<unk>";
/// The padding word (`onmt.IO.PAD_WORD`), id 1 on both sides.
pub const PAD: &str = "<blank>";
/// Begin of sentence, target side only, id 2.
pub const BOS: &str = "<s>";
/// End of sentence, target side only, id 3.
pub const EOS: &str = "</s>";
/// Id of [`UNK`].
pub const UNK_ID: i32 = 0;
/// Id of [`PAD`].
pub const PAD_ID: i32 = 1;
/// Id of [`BOS`] in a target vocabulary.
pub const BOS_ID: i32 = 2;
/// Id of [`EOS`] in a target vocabulary.
pub const EOS_ID: i32 = 3;

/// The value of `"format"` in a saved vocabulary.
const FILE_FORMAT: &str = "lit-engine translation vocabulary v1";

/// Which side of the translation a vocabulary is for; it decides the special tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The source language: `<unk>`, `<blank>`.
    Source,
    /// The target language: `<unk>`, `<blank>`, `<s>`, `</s>`.
    Target,
}

impl Side {
    /// The special tokens that come first, in id order.
    pub fn specials(self) -> &'static [&'static str] {
        match self {
            Side::Source => &[UNK, PAD],
            Side::Target => &[UNK, PAD, BOS, EOS],
        }
    }
}

/// How many words a vocabulary keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VocabOptions {
    /// Most corpus words (specials come on top); the seed's `src/tgt_vocab_size` is 50,000.
    pub max_size: usize,
    /// Fewest occurrences of a kept word; 0 and 1 both keep every word (the seed: 0).
    pub min_freq: usize,
}

impl Default for VocabOptions {
    /// The seed's `vocab_size 50000`, `min_frequency 0`.
    fn default() -> Self {
        VocabOptions {
            max_size: 50_000,
            min_freq: 0,
        }
    }
}

/// A vocabulary: the words by id and the id of each word.
#[derive(Clone, Debug, PartialEq)]
pub struct Vocab {
    side: Side,
    itos: Vec<String>,
    stoi: HashMap<String, i32>,
}

/// A vocabulary file's contents.
#[derive(serde::Serialize, serde::Deserialize)]
struct VocabFile {
    format: String,
    side: Side,
    itos: Vec<String>,
}

impl Vocab {
    /// The vocabulary of `sentences` (the training split) for `side`, as torchtext 0.1.1 builds
    /// it. A `max_size` above [`MAX_VOCAB_SIZE`] is a config error.
    pub fn build(side: Side, sentences: &[Sentence], options: VocabOptions) -> Result<Vocab> {
        let specials = side.specials();
        let max_size = options.max_size;
        if max_size > MAX_VOCAB_SIZE - specials.len() {
            return Err(Error::Config(format!(
                "a vocabulary of {max_size} words is above the limit of {} words",
                MAX_VOCAB_SIZE - specials.len()
            )));
        }
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for word in sentences.iter().flatten() {
            *counts.entry(word.as_str()).or_default() += 1;
        }
        let min_freq = options.min_freq.max(1);
        let mut ranked: Vec<(&str, usize)> = counts
            .into_iter()
            .filter(|(word, count)| *count >= min_freq && !specials.contains(word))
            .collect();
        // torchtext: sorted by word, then stable-sorted by count descending.
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let itos = specials
            .iter()
            .copied()
            .chain(ranked.into_iter().take(max_size).map(|(w, _)| w))
            .map(str::to_string)
            .collect();
        Ok(Vocab::from_itos_unchecked(side, itos))
    }

    fn from_itos_unchecked(side: Side, itos: Vec<String>) -> Vocab {
        let stoi = itos
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as i32))
            .collect();
        Vocab { side, itos, stoi }
    }

    /// The side the vocabulary is for.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Number of entries, specials included.
    pub fn len(&self) -> usize {
        self.itos.len()
    }

    /// Never true: a vocabulary holds at least its specials.
    pub fn is_empty(&self) -> bool {
        self.itos.is_empty()
    }

    /// The entries in id order.
    pub fn itos(&self) -> &[String] {
        &self.itos
    }

    /// The id of `word`, [`UNK_ID`] when it is not in the vocabulary.
    pub fn id(&self, word: &str) -> i32 {
        self.stoi.get(word).copied().unwrap_or(UNK_ID)
    }

    /// The word of `id`, `None` outside the vocabulary.
    pub fn word(&self, id: i32) -> Option<&str> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.itos.get(i))
            .map(String::as_str)
    }

    /// The ids of `words`.
    pub fn encode(&self, words: &[String]) -> Vec<i32> {
        words.iter().map(|w| self.id(w)).collect()
    }

    /// Write the vocabulary as JSON to `path` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let file = VocabFile {
            format: FILE_FORMAT.to_string(),
            side: self.side,
            itos: self.itos.clone(),
        };
        let json = serde_json::to_vec(&file).map_err(|e| Error::Encode(e.to_string()))?;
        crate::durable::write_atomic(path, &json)
    }

    /// Read a vocabulary that [`save`](Vocab::save) wrote. A file above
    /// [`MAX_VOCAB_FILE_BYTES`], of another format, with more than [`MAX_VOCAB_SIZE`] entries,
    /// without its side's specials first, with a repeated entry or an entry that is empty or
    /// holds white space is a data error naming the file.
    pub fn load(path: &Path) -> Result<Vocab> {
        let bytes = read_file_at_most(path, MAX_VOCAB_FILE_BYTES, "a vocabulary file")?;
        let file: VocabFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::data(path, format!("not a vocabulary file ({e})")))?;
        let bad = |msg: String| Err(Error::data(path, msg));
        if file.format != FILE_FORMAT {
            return bad(format!(
                "format `{}`, expected `{FILE_FORMAT}`",
                file.format
            ));
        }
        if file.itos.len() > MAX_VOCAB_SIZE {
            return bad(format!(
                "{} entries, above the limit of {MAX_VOCAB_SIZE}",
                file.itos.len()
            ));
        }
        let specials = file.side.specials();
        let starts_with_specials = file.itos.len() >= specials.len()
            && file.itos.iter().zip(specials).all(|(w, s)| w == s);
        if !starts_with_specials {
            return bad(format!(
                "a {:?} vocabulary must start with {specials:?}",
                file.side
            ));
        }
        let vocab = Vocab::from_itos_unchecked(file.side, file.itos);
        if vocab.stoi.len() != vocab.itos.len() {
            return bad("an entry occurs twice".to_string());
        }
        if let Some(w) = vocab
            .itos
            .iter()
            .find(|w| w.is_empty() || w.chars().any(is_python_space))
        {
            return bad(format!(
                "entry {w:?} is empty or holds white space, which no word can"
            ));
        }
        Ok(vocab)
    }
}
