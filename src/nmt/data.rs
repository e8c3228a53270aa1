//! Parallel corpora: files of sentences, one a line, already tokenised (SPEC-TRANSLATION §1.1–1.2).
//!
//! A line becomes its words as Python's `line.split()` gives them (the seed's `onmt/IO.py`); the
//! seed never lowercases its training data, so lowercasing is an option, off by default. Every
//! size from the files is bounded ([`limits`](crate::limits)): a file above
//! [`MAX_CORPUS_FILE_BYTES`], a line above [`MAX_SENTENCE_BYTES`], more than
//! [`MAX_CORPUS_SENTENCES`] lines or bytes that are not UTF-8 give a data error naming the file
//! and the line.

use crate::error::{Error, Result};
use crate::limits::{
    read_file_at_most, MAX_CORPUS_FILE_BYTES, MAX_CORPUS_SENTENCES, MAX_SENTENCE_BYTES,
};
use std::path::Path;

/// The words of one sentence.
pub type Sentence = Vec<String>;

/// Whether `c` separates words for Python's `str.split()`: Unicode white space plus the ASCII
/// separators U+001C..U+001F, which Python counts as space and Rust does not.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The words of `line` as Python's `line.split()` gives them, lowercased (Unicode rules, as
/// Python's `str.lower`) when `lowercase` is set.
pub fn tokenize(line: &str, lowercase: bool) -> Sentence {
    line.split(is_python_space)
        .filter(|w| !w.is_empty())
        .map(|w| {
            if lowercase {
                w.to_lowercase()
            } else {
                w.to_string()
            }
        })
        .collect()
}

/// The lines of `bytes` (the contents of `path`): split at `\n`, one `\r` before it dropped, no
/// line after a final `\n`. Not UTF-8, a line above [`MAX_SENTENCE_BYTES`] or more than
/// [`MAX_CORPUS_SENTENCES`] lines is a data error naming `path` and the line (1-based).
pub fn split_lines(path: &Path, bytes: &[u8]) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Ok(lines);
    }
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let number = i + 1;
        if number > MAX_CORPUS_SENTENCES {
            return Err(Error::data(
                path,
                format!("more than {MAX_CORPUS_SENTENCES} lines, the limit for a corpus file"),
            ));
        }
        if raw.len() > MAX_SENTENCE_BYTES {
            return Err(Error::data(
                path,
                format!(
                    "line {number} is {} bytes, above the limit of {MAX_SENTENCE_BYTES} bytes \
                     for a sentence",
                    raw.len()
                ),
            ));
        }
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|e| {
            Error::data(
                path,
                format!(
                    "line {number} is not UTF-8 (invalid byte at column {})",
                    e.valid_up_to() + 1
                ),
            )
        })?;
        lines.push(line.to_string());
    }
    Ok(lines)
}

/// The lines of the text file at `path` (see [`split_lines`]); a file above
/// [`MAX_CORPUS_FILE_BYTES`] is refused before it is read.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = read_file_at_most(path, MAX_CORPUS_FILE_BYTES, "a corpus file")?;
    split_lines(path, &bytes)
}

/// Sentence lengths a training or validation pair may have (SPEC §1.2 `filter_pred`): kept iff
/// `0 < len(src) ≤ max_src` and `0 < len(tgt) ≤ max_tgt`, lengths in words without BOS/EOS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthFilter {
    /// Most words of a kept source sentence (the seed: 50).
    pub max_src: usize,
    /// Most words of a kept target sentence (the seed: 50).
    pub max_tgt: usize,
}

impl Default for LengthFilter {
    /// The seed's `src_seq_length 50`, `tgt_seq_length 50`.
    fn default() -> Self {
        LengthFilter {
            max_src: 50,
            max_tgt: 50,
        }
    }
}

impl LengthFilter {
    /// Whether a pair with these word counts is kept.
    pub fn keeps(&self, src_words: usize, tgt_words: usize) -> bool {
        (1..=self.max_src).contains(&src_words) && (1..=self.max_tgt).contains(&tgt_words)
    }
}

/// Aligned source and target sentences, with the line (0-based) each pair came from so that
/// translations can be put back in file order (the seed's `indices` field).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParallelCorpus {
    /// Source sentences.
    pub src: Vec<Sentence>,
    /// Target sentences, `tgt[i]` the translation of `src[i]`.
    pub tgt: Vec<Sentence>,
    /// The 0-based line of the files pair `i` was read from.
    pub lines: Vec<usize>,
}

impl ParallelCorpus {
    /// The pairs of two line-aligned lists, tokenised (lowercased when `lowercase`); lists of
    /// different lengths are a data error naming `what` (the files).
    pub fn from_lines(
        what: &Path,
        src: &[String],
        tgt: &[String],
        lowercase: bool,
    ) -> Result<ParallelCorpus> {
        if src.len() != tgt.len() {
            return Err(Error::data(
                what,
                format!(
                    "the source has {} lines and the target {}: a parallel corpus needs the same \
                     number of lines on both sides",
                    src.len(),
                    tgt.len()
                ),
            ));
        }
        Ok(ParallelCorpus {
            src: src.iter().map(|l| tokenize(l, lowercase)).collect(),
            tgt: tgt.iter().map(|l| tokenize(l, lowercase)).collect(),
            lines: (0..src.len()).collect(),
        })
    }

    /// Read the line-aligned files `src_path` and `tgt_path` (see [`read_lines`]).
    pub fn read(src_path: &Path, tgt_path: &Path, lowercase: bool) -> Result<ParallelCorpus> {
        let src = read_lines(src_path)?;
        let tgt = read_lines(tgt_path)?;
        ParallelCorpus::from_lines(tgt_path, &src, &tgt, lowercase)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.src.len()
    }

    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.src.is_empty()
    }

    /// The pairs `filter` keeps, in order, with their line numbers.
    pub fn filter_lengths(self, filter: LengthFilter) -> ParallelCorpus {
        let mut kept = ParallelCorpus::default();
        let pairs = self.src.into_iter().zip(self.tgt).zip(self.lines);
        for ((src, tgt), line) in pairs {
            if filter.keeps(src.len(), tgt.len()) {
                kept.src.push(src);
                kept.tgt.push(tgt);
                kept.lines.push(line);
            }
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_split_semantics() {
        assert_eq!(
            tokenize("  a\tb\u{a0}c\u{1f}d  ", false),
            ["a", "b", "c", "d"]
        );
        assert_eq!(tokenize("Él DIJO", true), ["él", "dijo"]);
        assert!(tokenize(" \t ", false).is_empty());
    }

    #[test]
    fn space_is_exactly_python_isspace() {
        // [hex(c) for c in range(0x110000) if chr(c).isspace()] under CPython 3.11
        let python: Vec<u32> = [0x9..=0xd, 0x1c..=0x20, 0x85..=0x85, 0xa0..=0xa0]
            .into_iter()
            .chain([0x1680..=0x1680, 0x2000..=0x200a, 0x2028..=0x2029])
            .chain([0x202f..=0x202f, 0x205f..=0x205f, 0x3000..=0x3000])
            .flatten()
            .collect();
        let ours: Vec<u32> = (0..=0x10ffff)
            .filter(|&c| char::from_u32(c).is_some_and(is_python_space))
            .collect();
        assert_eq!(ours, python);
    }

    #[test]
    fn lines_split_at_newline_only() {
        let p = Path::new("x");
        assert_eq!(split_lines(p, b"a\r\nb\n\nc").unwrap(), ["a", "b", "", "c"]);
        assert_eq!(split_lines(p, b"a\n").unwrap(), ["a"]);
        assert!(split_lines(p, b"").unwrap().is_empty());
        assert_eq!(split_lines(p, b"\n").unwrap(), [""]);
    }
}
