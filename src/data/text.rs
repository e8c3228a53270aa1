//! Zhang et al. (2015) CSV text sets for VDCNN (`ag_news_csv`, `amazon_review_full_csv`, …), read
//! and tokenised into characters the way the LIT repository's VDCNN trainer does it.
//!
//! **File format.** UTF-8, one record per line, no header: `"class index","title","text"` (some
//! sets have one text field, `yahoo_answers` three). Fields are enclosed in double quotes with a
//! doubled `""` for a quote inside (unquoted fields are accepted too); a quoted field may span
//! lines. The class index is 1-based: label = index − 1. Blank lines are skipped (as pandas does).
//! A malformed record is an error naming `file:line`.
//!
//! **Text → ids.** The text fields are joined with one space (title + " " + text), the two
//! characters `\n` become a newline (Zhang's escape for line breaks), the result is lowercased
//! (Unicode lowercase, like Python's `str.lower`), then every character (code point) maps to an
//! id, and the sequence is cut or padded to [`SEQUENCE_LENGTH`] = 1014:
//!
//! | id | meaning |
//! |---|---|
//! | 0 | padding (after the end of the text) |
//! | 1 | any character not in the alphabet (newline, `@`, `\`, ASCII `^`, non-ASCII, …) |
//! | 2 + k | character k of [`ALPHABET`] |
//!
//! [`ALPHABET`] is the LIT repository's vocabulary string, character for character: the 26
//! lowercase letters, the 10 digits, `-,;.!?:'"/|_#$%ˆ&*~` + "`" + `+=<>()[]{}` and the space —
//! 67 characters, so ids span 0..69 ([`VOCAB_SIZE`], the rows of VDCNN's `Embedding(69, 16)`).
//! It is Zhang's char-CNN alphabet without `@` and `\` and with the space added; its circumflex is
//! U+02C6 (modifier letter circumflex), not ASCII `^`, exactly as in LIT, so a model trained there
//! sees the same ids.

use super::{Dataset, Split};
use crate::error::{Error, Result};
use crate::limits;
use std::path::{Path, PathBuf};

/// Characters per document fed to VDCNN.
pub const SEQUENCE_LENGTH: usize = 1014;
/// The LIT VDCNN vocabulary, in id order from [`FIRST_CHAR_ID`].
pub const ALPHABET: &str =
    "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/|_#$%\u{02c6}&*~`+=<>()[]{} ";
/// Token id of the padding after a short document.
pub const PAD_ID: u8 = 0;
/// Token id of a character outside [`ALPHABET`].
pub const UNKNOWN_ID: u8 = 1;
/// Token id of the first [`ALPHABET`] character; character i has id `FIRST_CHAR_ID + i`.
pub const FIRST_CHAR_ID: u8 = 2;
/// Number of distinct ids (embedding rows): padding + unknown + the 67 alphabet characters.
pub const VOCAB_SIZE: usize = 69;

/// Id of each ASCII character (unknown where not in the alphabet).
fn ascii_table() -> &'static [u8; 128] {
    static TABLE: std::sync::OnceLock<[u8; 128]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [UNKNOWN_ID; 128];
        for (k, c) in ALPHABET.chars().enumerate() {
            if c.is_ascii() {
                t[c as usize] = FIRST_CHAR_ID + k as u8;
            }
        }
        t
    })
}

/// The id of one (already lowercased) character.
pub fn char_id(c: char) -> u8 {
    if c.is_ascii() {
        ascii_table()[c as usize]
    } else {
        ALPHABET
            .chars()
            .position(|a| a == c)
            .map_or(UNKNOWN_ID, |k| FIRST_CHAR_ID + k as u8)
    }
}

/// Lowercase `text` and write its ids into `out` (truncated, or padded with [`PAD_ID`]).
pub fn encode_into(text: &str, out: &mut [u8]) {
    let table = ascii_table();
    let mut n = 0;
    'chars: for c in text.chars() {
        if c.is_ascii() {
            if n == out.len() {
                break;
            }
            out[n] = table[c.to_ascii_lowercase() as usize];
            n += 1;
        } else {
            for l in c.to_lowercase() {
                if n == out.len() {
                    break 'chars;
                }
                out[n] = char_id(l);
                n += 1;
            }
        }
    }
    out[n..].fill(PAD_ID);
}

/// [`encode_into`] a new sequence of [`SEQUENCE_LENGTH`] ids.
pub fn encode(text: &str) -> Vec<u8> {
    let mut out = vec![PAD_ID; SEQUENCE_LENGTH];
    encode_into(text, &mut out);
    out
}

/// The document a record stands for: text fields joined by a space, `\n` escapes turned into
/// newlines (not yet lowercased).
pub fn document(text_fields: &[String]) -> String {
    text_fields.join(" ").replace("\\n", "\n")
}

/// `path:line`, the place an error points at.
fn at(path: &Path, line: usize) -> PathBuf {
    PathBuf::from(format!("{}:{line}", path.display()))
}

/// Split CSV `bytes` into records; calls `record(line, fields)` with the line each starts on.
pub fn parse_csv(
    path: &Path,
    bytes: &[u8],
    mut record: impl FnMut(usize, Vec<String>) -> Result<()>,
) -> Result<()> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let (mut i, mut line) = (0usize, 1usize);
    while i < bytes.len() {
        // Blank line.
        if bytes[i] == b'\n' || bytes[i..].starts_with(b"\r\n") {
            i += if bytes[i] == b'\n' { 1 } else { 2 };
            line += 1;
            continue;
        }
        let start_line = line;
        let mut fields = Vec::new();
        loop {
            let mut field = Vec::new();
            if bytes.get(i) == Some(&b'"') {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => {
                            return Err(Error::data(
                                at(path, start_line),
                                format!(
                                    "field {} opens a quote that is never closed",
                                    fields.len() + 1
                                ),
                            ))
                        }
                        Some(b'"') if bytes.get(i + 1) == Some(&b'"') => {
                            field.push(b'"');
                            i += 2;
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(&b) => {
                            if b == b'\n' {
                                line += 1;
                            }
                            field.push(b);
                            i += 1;
                        }
                    }
                }
                match bytes.get(i) {
                    None | Some(b',') | Some(b'\n') => {}
                    Some(b'\r') if matches!(bytes.get(i + 1), None | Some(b'\n')) => i += 1,
                    Some(&b) => {
                        return Err(Error::data(
                            at(path, line),
                            format!(
                                "unexpected {:?} after the closing quote of field {} \
                                 (a quote inside a field must be doubled: \"\")",
                                b as char,
                                fields.len() + 1
                            ),
                        ))
                    }
                }
            } else {
                while let Some(&b) = bytes.get(i) {
                    if b == b',' || b == b'\n' {
                        break;
                    }
                    field.push(b);
                    i += 1;
                }
                if field.last() == Some(&b'\r') {
                    field.pop();
                }
            }
            fields.push(String::from_utf8_lossy(&field).into_owned());
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'\n') => {
                    i += 1;
                    line += 1;
                    break;
                }
                _ => break,
            }
        }
        record(start_line, fields)?;
    }
    Ok(())
}

/// A Zhang CSV split at `path` as token ids `[N, 1014]`; class indices must be in 1..=`num_classes`.
pub fn load_csv(path: &Path, name: &str, split: Split, num_classes: usize) -> Result<Dataset> {
    let file = limits::read_file_at_most(path, limits::MAX_DATA_FILE_BYTES, "CSV file");
    let bytes = file.map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Error::data(
            path,
            format!(
                "file not found; the {} split of `{name}` was expected here as a Zhang et al. \
                     CSV file (\"class\",\"title\",\"text\" per line, class 1..={num_classes})",
                split.name()
            ),
        ),
        e => e,
    })?;
    let (mut ids, mut labels) = (Vec::new(), Vec::new());
    parse_csv(path, &bytes, |line, fields| {
        if fields.len() < 2 {
            return Err(Error::data(
                at(path, line),
                format!(
                    "{} field(s); a record is a class index followed by text field(s)",
                    fields.len()
                ),
            ));
        }
        let class = fields[0].trim();
        let label = match class.parse::<usize>() {
            Ok(c) if (1..=num_classes).contains(&c) => c - 1,
            _ => {
                return Err(Error::data(
                    at(path, line),
                    format!(
                        "class index {class:?} is not an integer in 1..={num_classes} \
                         ({name} has {num_classes} classes)"
                    ),
                ))
            }
        };
        let start = ids.len();
        if start + SEQUENCE_LENGTH > limits::MAX_TOKEN_BYTES {
            return Err(Error::data(
                at(path, line),
                format!(
                    "more than {} records of {SEQUENCE_LENGTH} ids, the limit of {} bytes",
                    limits::MAX_TOKEN_BYTES / SEQUENCE_LENGTH,
                    limits::MAX_TOKEN_BYTES
                ),
            ));
        }
        ids.resize(start + SEQUENCE_LENGTH, PAD_ID);
        encode_into(&document(&fields[1..]), &mut ids[start..]);
        labels.push(label as i32);
        Ok(())
    })?;
    if labels.is_empty() {
        return Err(Error::data(path, "no records: the file is empty"));
    }
    Dataset::tokens(name, split, num_classes, SEQUENCE_LENGTH, ids, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Result<Vec<(usize, Vec<String>)>> {
        let mut out = Vec::new();
        parse_csv(Path::new("t.csv"), text.as_bytes(), |l, f| {
            out.push((l, f));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn alphabet_has_67_characters_and_ids_fill_0_to_69() {
        assert_eq!(ALPHABET.chars().count(), 67);
        assert_eq!(ALPHABET.chars().count() + 2, VOCAB_SIZE);
        let ids: Vec<u8> = ALPHABET.chars().map(char_id).collect();
        assert_eq!(ids, (2..69).collect::<Vec<u8>>());
        assert_eq!((char_id('a'), char_id('0'), char_id(' ')), (2, 28, 68));
        for c in ['\n', '@', '\\', '^', 'é', 'A'] {
            assert_eq!(char_id(c), UNKNOWN_ID, "{c:?}");
        }
    }

    #[test]
    fn encoding_lowercases_truncates_and_pads() {
        let ids = encode("Hi!\u{212a}");
        // KELVIN SIGN lowercases to ASCII 'k', as Python's str.lower does.
        assert_eq!(
            ids[..5],
            [
                char_id('h'),
                char_id('i'),
                char_id('!'),
                char_id('k'),
                PAD_ID
            ]
        );
        assert!(ids[4..].iter().all(|&i| i == PAD_ID));
        assert_eq!(ids.len(), SEQUENCE_LENGTH);
        let long = "ab".repeat(600);
        let ids = encode(&long);
        assert_eq!(ids.len(), SEQUENCE_LENGTH);
        assert_eq!(ids[1013], char_id('b'));
        assert_eq!(
            document(&["Title".into(), "a\\nb".into()]),
            "Title a\nb".to_string()
        );
    }

    #[test]
    fn csv_quotes_doubled_quotes_and_multiline_fields() {
        let r =
            records("\"1\",\"a, \"\"b\"\"\",\"c\"\n2,x,\"y\nz\"\r\n\n\"3\",\"\",\"w\"").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], (1, vec!["1".into(), "a, \"b\"".into(), "c".into()]));
        assert_eq!(r[1], (2, vec!["2".into(), "x".into(), "y\nz".into()]));
        assert_eq!(r[2], (5, vec!["3".into(), "".into(), "w".into()]));
    }

    #[test]
    fn malformed_csv_names_file_and_line() {
        let msg = records("\"1\",\"ok\"\n\"2\",\"bad\"x\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("t.csv:2") && msg.contains("after the closing quote"),
            "{msg}"
        );
        let msg = records("\"1\",\"ok\"\n\n\"2\",\"never closed\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("t.csv:3") && msg.contains("never closed"),
            "{msg}"
        );
    }

    #[test]
    fn load_checks_class_indices_and_field_counts() {
        let dir = std::env::temp_dir().join(format!("lit-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("train.csv");
        std::fs::write(&path, "\"2\",\"T\",\"Great\"\n\"1\",\"\",\"bad\\nday\"\n").unwrap();
        let d = load_csv(&path, "toy", Split::Train, 2).unwrap();
        assert_eq!(d.labels.to_vec(), vec![1, 0]);
        assert_eq!(d.example(0)[..7], encode("t great")[..7]);
        assert_eq!(d.example(1)[..9], encode(" bad\nday")[..9]);
        assert_eq!(d.example(1)[4], UNKNOWN_ID);

        std::fs::write(&path, "\"1\",\"a\",\"b\"\n\"3\",\"a\",\"b\"\n").unwrap();
        let msg = load_csv(&path, "toy", Split::Train, 2)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("train.csv:2") && msg.contains("1..=2"),
            "{msg}"
        );
        std::fs::write(&path, "\"1\"\n").unwrap();
        let msg = load_csv(&path, "toy", Split::Train, 2)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("train.csv:1") && msg.contains("1 field"),
            "{msg}"
        );
        let msg = load_csv(&dir.join("test.csv"), "toy", Split::Test, 2)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("test.csv") && msg.contains("not found"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
