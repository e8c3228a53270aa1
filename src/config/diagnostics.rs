//! Config errors that a user can act on: the file and line of the key at fault (found in the
//! YAML text), and for an unknown key the closest valid one, or the section or stage kind where
//! the key belongs.

use super::{Config, Hyperparameters, Models, Params, Sequence, StageKind, TeacherCacheSetting};
use crate::error::Error;

impl Config {
    /// A config error found after parsing, whose message starts with its key path
    /// (`sequence.takd.chain[1]: …`, `models.dataset must …`), with the file and the line where
    /// that key (or, for `chain[i]`, that list entry) is written in front. Other errors, and
    /// configs not read from a file, pass through unchanged.
    pub fn locate(&self, e: Error) -> Error {
        let (Error::Config(m), Some(src)) = (&e, &self.source) else {
            return e;
        };
        let file = src.path.display().to_string();
        if m.starts_with(&file) {
            return e;
        }
        let key = m
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches(':');
        // A key path has a dot, or is one of the top-level keys that are values.
        let is_key = key.contains('.') || ["device", "precision"].contains(&key);
        let line = if !is_key {
            None
        } else {
            match key.strip_suffix(']').and_then(|k| k.split_once('[')) {
                Some((list, i)) => i
                    .parse::<usize>()
                    .ok()
                    .zip(self.list_entries(list))
                    .and_then(|(i, entries)| locate_entry(&src.text, list, entries, i))
                    .or_else(|| locate_key(&src.text, list)),
                None => locate_key(&src.text, key),
            }
        };
        match line {
            Some(line) => Error::Config(format!("{file} line {line}: {m}")),
            None => Error::Config(format!("{file}: {m}")),
        }
    }

    /// The entries of a list-valued key (the TAKD chain).
    fn list_entries(&self, key: &str) -> Option<&[String]> {
        match key {
            "sequence.takd.chain" => self.sequence.takd.as_ref()?.chain.as_deref(),
            _ => None,
        }
    }
}

/// The 1-based line where the dotted `key` (e.g. `sequence.lit.epochs`) is written in `text`:
/// each component is searched as `name:` after the previous one. `None` when a component is not
/// written (a default value).
pub fn locate_key(text: &str, key: &str) -> Option<usize> {
    locate_key_offset(text, key).map(|pos| line_of(text, pos))
}

/// The 1-based line of byte offset `pos`.
fn line_of(text: &str, pos: usize) -> usize {
    text[..pos].matches('\n').count() + 1
}

/// Byte offset of the last component of `key` (see [`locate_key`]).
fn locate_key_offset(text: &str, key: &str) -> Option<usize> {
    let mut pos = 0;
    for part in key.split('.') {
        let mut found = None;
        let mut from = pos;
        while let Some(i) = text[from..].find(part) {
            let at = from + i;
            let before_ok = at == 0 || {
                let c = text.as_bytes()[at - 1];
                !(c.is_ascii_alphanumeric() || c == b'_')
            };
            let rest = text[at + part.len()..].trim_start_matches([' ', '\t']);
            if before_ok && rest.starts_with(':') {
                found = Some(at);
                break;
            }
            from = at + part.len();
        }
        pos = found?;
    }
    Some(pos)
}

/// The line of `entries[index]` in the list under `key`, in flow (`[a, b]`) or block (`- a`
/// lines) style: its occurrence as a whole word after the key, after as many occurrences as
/// there are equal entries before it.
pub fn locate_entry(text: &str, key: &str, entries: &[String], index: usize) -> Option<usize> {
    let entry = entries.get(index)?.trim();
    if entry.is_empty() {
        return None;
    }
    let start = locate_key_offset(text, key)?;
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.';
    let bytes = text.as_bytes();
    let mut from = start + key.rsplit('.').next().unwrap_or(key).len();
    let mut skip = entries[..index]
        .iter()
        .filter(|e| e.trim() == entry)
        .count();
    while let Some(i) = text[from..].find(entry) {
        let at = from + i;
        let end = at + entry.len();
        let whole = !word(bytes[at - 1]) && (end == bytes.len() || !word(bytes[end]));
        if whole {
            if skip == 0 {
                return Some(line_of(text, at));
            }
            skip -= 1;
        }
        from = end;
    }
    None
}

/// Turn a serde/YAML error into `origin line L: message`, with a suggestion for unknown keys.
pub(crate) fn describe_yaml_error(e: &serde_norway::Error, origin: &str) -> String {
    let full = e.to_string();
    // serde_norway appends " at line L column C"; we print the location in front instead.
    let msg = match (e.location(), full.rfind(" at line ")) {
        (Some(_), Some(i)) => full[..i].to_string(),
        _ => full.clone(),
    };
    let location = match e.location() {
        Some(l) => format!("{origin} line {}", l.line()),
        None => origin.to_string(),
    };
    match explain_unknown_field(&msg) {
        Some(better) => format!("{location}: {better}"),
        None => format!("{location}: {msg}"),
    }
}

/// serde's "[path: ]unknown field `x`, expected one of `a`, `b`" rewritten with a suggestion and
/// the keys accepted there.
fn explain_unknown_field(msg: &str) -> Option<String> {
    let i = msg.find("unknown field `")?;
    let section = msg[..i].trim_end().trim_end_matches(':');
    let rest = &msg[i + "unknown field `".len()..];
    let end = rest.find('`')?;
    let key = &rest[..end];
    let valid: Vec<&str> = rest[end + 1..].split('`').skip(1).step_by(2).collect();
    let place = if section.is_empty() {
        "at the top level".to_string()
    } else {
        format!("in `{section}`")
    };
    let out = match misplaced_stage_key(section, key) {
        Some(misplaced) => misplaced,
        None => unknown_key(section, key, &valid),
    };
    Some(format!(
        "{out}; keys accepted {place}: {}",
        valid.join(", ")
    ))
}

/// `unknown key `section.key``, with the closest valid key or the section the key belongs in.
fn unknown_key(section: &str, key: &str, valid: &[&str]) -> String {
    let full_key = if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    };
    let mut out = format!("unknown key `{full_key}`");
    if let Some(best) = closest(key, valid) {
        out += &format!(" (did you mean `{best}`?)");
    } else if let Some(home) = key_paths()
        .into_iter()
        .find(|p| p.rsplit('.').next() == Some(key))
    {
        out += &format!(" (did you mean `{home}`? it belongs in another section)");
    }
    out
}

/// For a key of another stage kind written in a stage (`bits` under `sequence.kd`): which kinds
/// take it.
fn misplaced_stage_key(section: &str, key: &str) -> Option<String> {
    let kind = section.strip_prefix("sequence.")?;
    let paths = key_paths();
    let homes: Vec<&str> = StageKind::ALL
        .iter()
        .map(|k| k.name())
        .chain(["post_training_quantization"])
        .filter(|home| paths.contains(&format!("sequence.{home}.{key}")))
        .collect();
    if homes.is_empty() {
        return None;
    }
    Some(format!(
        "{section}.{key} is not a key of a `{kind}` stage (it belongs to: {})",
        homes.join(", ")
    ))
}

/// Every key path of the schema (`hyperparameters.batch_size`, …), from a config with every
/// optional section present, so the list cannot drift from the structs.
pub fn key_paths() -> Vec<String> {
    let full = Config {
        models: Models {
            dataset: String::new(),
            training_architecture: String::new(),
            training_checkpoint: None,
            base_architecture: None,
            base_model_path: None,
            student_activation: None,
        },
        sequence: Sequence {
            teacher: Some(Default::default()),
            train: Some(Default::default()),
            takd: Some(Default::default()),
            kd: Some(Default::default()),
            lit: Some(Default::default()),
            full_model: Some(Default::default()),
            quantized_distillation: Some(Default::default()),
            differentiable_quantization: Some(Default::default()),
            post_training_quantization: Some(Default::default()),
        },
        params: Params {
            teacher_cache: Some(TeacherCacheSetting::On(true)),
            ..Params::default()
        },
        hyperparameters: Hyperparameters::default(),
        device: None,
        precision: Some(String::new()),
        source: None,
    };
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, child) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&path, child, out);
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(&full).unwrap_or_default(),
        &mut out,
    );
    out
}

/// Levenshtein distance (bytes; config keys are ASCII).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word_l = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&word_l, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_cover_every_section() {
        let paths = key_paths();
        for want in [
            "models.dataset",
            "sequence.train.milestones",
            "params.logdir",
            "hyperparameters.seed",
            "device",
        ] {
            assert!(
                paths.iter().any(|p| p == want),
                "{want} missing from {paths:?}"
            );
        }
        assert!(paths.len() > 25, "{paths:?}");
    }

    #[test]
    fn list_entries_are_located_on_their_own_line() {
        let text =
            "sequence:\n  takd:\n    chain:\n      - a-1\n      - b\n      - a-1\n    lr: 1\n";
        let chain: Vec<String> = ["a-1", "b", "a-1"].map(String::from).to_vec();
        let at = |i| locate_entry(text, "sequence.takd.chain", &chain, i);
        assert_eq!((at(0), at(1), at(2)), (Some(4), Some(5), Some(6)));
        // `a` is not a whole word of `a-1`; an entry that is not written is not found.
        let other: Vec<String> = vec!["a".into()];
        assert_eq!(locate_entry(text, "sequence.takd.chain", &other, 0), None);
        assert_eq!(locate_entry(text, "sequence.takd.chain", &chain, 3), None);
    }

    #[test]
    fn closest_key_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            closest("lerning_rate", &["lr", "learning_rate"]),
            Some("learning_rate")
        );
        assert_eq!(closest("xyz", &["dataset", "models"]), None);
    }
}
