//! Bounds on every size that comes from outside (config files, architecture names, CLI flags,
//! image headers, archives, data files), checked before anything of that size is allocated or
//! looped over, so that no input can abort on allocation, panic or hang. One place for the limits
//! and the checked arithmetic that enforces them.

use crate::error::{Error, Result};
use std::path::Path;

/// Parameter, buffer and state elements of one model (2^31 f32 = 8 GiB): WRN-28-20, the largest
/// model of the seed papers, has 145M.
pub const MAX_MODEL_ELEMENTS: usize = 1 << 31;
/// Width of one layer: MLP layer size, Wide ResNet widen factor, activation bins.
pub const MAX_LAYER_WIDTH: usize = 1 << 20;
/// Wide ResNet depth and number of MLP layers (the seed papers go to 110 layers).
pub const MAX_DEPTH: usize = 1000;
/// Classes of a model (`--num-classes`, descriptor `num_classes`).
pub const MAX_CLASSES: usize = 1 << 20;
/// Bins of an APLU / LMA activation (the LMA paper uses 4 to 16).
pub const MAX_ACTIVATION_BINS: usize = 1 << 12;

/// Config file size (the shipped configs are under 2 KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Nesting of YAML collections (a config has four levels).
pub const MAX_YAML_DEPTH: usize = 32;
/// YAML anchors (`&name`) plus aliases (`*name`) in one config.
pub const MAX_YAML_ALIASES: usize = 64;

/// Width or height of one decoded image (CIFAR is 32, ImageNet crops a few hundred).
pub const MAX_IMAGE_SIDE: usize = 1 << 14;
/// Bytes of one decoded image (`width × height × channels`, before dropping alpha).
pub const MAX_IMAGE_BYTES: usize = 64 << 20;
/// Bytes of one encoded image file, from a folder or an archive entry.
pub const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;
/// Bytes of all encoded images of one import (the CIFAR-10 JPEG tree is ~130 MiB).
pub const MAX_IMPORT_BYTES: u64 = 4 << 30;

/// Bytes of one data file as read, after gzip decompression for idx (MNIST's largest is 47 MB, a
/// CIFAR batch 30 MB, Zhang's largest CSV, amazon_review_full train.csv, 1.5 GB).
pub const MAX_DATA_FILE_BYTES: u64 = 4 << 30;

/// Token ids of one text split (each record becomes 1014 ids whatever its length; the largest
/// Zhang set, amazon_review_polarity, has 3.6M training records = 3.7 GB).
pub const MAX_TOKEN_BYTES: usize = 8 << 30;

/// Bytes of a safetensors checkpoint for a model of `elements` values: safetensors' own header
/// limit (100 MB) plus 8 bytes (F64/I64, the widest dtype read) per value, and at least 256 MiB so
/// that a checkpoint of a somewhat larger model still gets the "unexpected keys" diagnosis.
pub fn max_checkpoint_bytes(elements: usize) -> u64 {
    (elements as u64)
        .saturating_mul(8)
        .saturating_add(100_000_000)
        .max(256 << 20)
}

/// Bytes of one side of a parallel text corpus (one sentence a line; Europarl v7 de-en, the
/// largest corpus of the translation papers, has about 330 MB a side).
pub const MAX_CORPUS_FILE_BYTES: u64 = 1 << 30;
/// Bytes of one sentence (line) of a parallel corpus (the longest Bible verse has about 600).
pub const MAX_SENTENCE_BYTES: usize = 1 << 16;
/// Sentences (lines) of one corpus file.
pub const MAX_CORPUS_SENTENCES: usize = 1 << 25;
/// Entries of a translation vocabulary (the seed papers use 50,000 words plus the specials).
pub const MAX_VOCAB_SIZE: usize = 1 << 22;
/// Bytes of a saved translation vocabulary read back.
pub const MAX_VOCAB_FILE_BYTES: u64 = 256 << 20;
/// Token budget of one translation batch (LMA uses 3192 for training).
pub const MAX_BATCH_TOKENS: usize = 1 << 24;

/// Largest in-memory teacher-output cache (`rows * classes` f32 logits), in bytes.
pub const MAX_TEACHER_CACHE_BYTES: usize = 1 << 30;

/// Examples in one batch given on the command line (`bench --batch`); the seed papers use 128.
pub const MAX_BATCH: usize = 1 << 16;

/// Bytes of a run's `metrics.jsonl` read back (one ~300-byte line per epoch).
pub const MAX_METRICS_LOG_BYTES: u64 = 64 << 20;

/// Campaign (`lit-engine sweep`) sizes: trials (bases × grid points × seeds), values of one grid
/// key, grid keys, seeds, base configs, and trials run side by side.
pub const MAX_CAMPAIGN_TRIALS: usize = 10_000;
/// Values of one grid key of a campaign.
pub const MAX_GRID_VALUES: usize = 1000;
/// Grid keys of a campaign.
pub const MAX_GRID_KEYS: usize = 16;
/// Seeds of a campaign.
pub const MAX_CAMPAIGN_SEEDS: usize = 1000;
/// Base configs of a campaign.
pub const MAX_CAMPAIGN_BASES: usize = 100;
/// `lit-engine sweep --parallel` upper bound.
pub const MAX_PARALLEL_TRIALS: usize = 64;
/// Bytes of a campaign's state file read back.
pub const MAX_CAMPAIGN_STATE_BYTES: u64 = 64 << 20;

/// `--threads` upper bound.
pub const MAX_THREADS: usize = 1024;

/// Product of `dims`, or `None` on overflow.
pub fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// `value` when it is at most `limit`, else a config error naming `what` and the limit.
pub fn at_most(what: &str, value: usize, limit: usize) -> Result<usize> {
    if value > limit {
        return Err(Error::Config(format!(
            "{what} is {value}, above the limit of {limit}"
        )));
    }
    Ok(value)
}

/// Bytes of host memory a run may plan for: `LIT_AVAILABLE_MEMORY` (bytes) when set, else the
/// system's available memory (`MemAvailable` of `/proc/meminfo`); `None` where neither is known.
pub fn available_host_memory() -> Option<u64> {
    if let Ok(v) = std::env::var("LIT_AVAILABLE_MEMORY") {
        return v.trim().parse().ok();
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Bytes a model of `elements` f32 values needs to train: the values, their gradients and the
/// SGD momentum buffers (activations come on top).
pub fn training_bytes(elements: usize) -> u64 {
    (elements as u64).saturating_mul(3 * 4)
}

/// Refuse a model whose training state alone does not fit in the host memory available, before
/// any of it is allocated (an allocation failure aborts the process).
pub fn check_model_fits(model: &str, elements: usize) -> Result<()> {
    let need = training_bytes(elements);
    match available_host_memory() {
        Some(available) if need > available => Err(Error::Config(format!(
            "architecture `{model}` has {elements} parameter and buffer values: training needs \
             about {:.2} GiB for them, their gradients and momentum buffers, but only {:.2} GiB \
             of memory is available here (LIT_AVAILABLE_MEMORY overrides the figure)",
            need as f64 / f64::from(1u32 << 30),
            available as f64 / f64::from(1u32 << 30)
        ))),
        _ => Ok(()),
    }
}

/// A CPU thread count from the command line: 1 ..= [`MAX_THREADS`].
pub fn thread_count(flag: &str, n: usize) -> Result<usize> {
    if n == 0 || n > MAX_THREADS {
        return Err(Error::Config(format!(
            "{flag} {n}: the number of CPU threads must be in 1..={MAX_THREADS}"
        )));
    }
    Ok(n)
}

/// The bytes of the file at `path`, at most `limit` of them: a larger file is a data error naming
/// it, refused from its metadata before reading when it says so, and in any case after `limit`
/// bytes (a device or a pipe such as `/dev/zero` reports no length).
pub fn read_file_at_most(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > limit {
        return Err(Error::data(
            path,
            format!("{what} is {len} bytes, above the limit of {limit} bytes"),
        ));
    }
    read_at_most(path, file, limit, what)
}

/// Read all of `reader` into memory, but at most `limit` bytes: a longer stream is a data error
/// naming `path` (a gzip bomb, an archive entry larger than its header said).
pub fn read_at_most(
    path: &Path,
    reader: impl std::io::Read,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| Error::data(path, format!("{what} could not be read ({e})")))?;
    if out.len() as u64 > limit {
        return Err(Error::data(
            path,
            format!("{what} is longer than the limit of {limit} bytes"),
        ));
    }
    Ok(out)
}

/// A cheap scan of YAML `text` before it is parsed (the parser has no limits of its own on
/// flow nesting, which takes it minutes, or on anchors): at most [`MAX_CONFIG_BYTES`], nesting
/// (flow brackets, indentation levels, `- ` entries) at most [`MAX_YAML_DEPTH`], and at most
/// [`MAX_YAML_ALIASES`] anchors and aliases. Quoted strings and comments are skipped; the scan
/// may over-count nesting inside block scalars, never under-count it elsewhere. Errors name
/// `origin` and the line.
pub fn check_yaml(text: &str, origin: &str) -> Result<()> {
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::Config(format!(
            "{origin}: {} bytes, above the limit of {MAX_CONFIG_BYTES} bytes for a config",
            text.len()
        )));
    }
    let too_much = |line: usize, what: &str, limit: usize| {
        Err(Error::Config(format!(
            "{origin} line {line}: more than {limit} {what}, the limit for a config"
        )))
    };
    let is_separator = |c: char| c.is_whitespace() || "[]{},:-".contains(c);
    let (mut flow_depth, mut aliases) = (0usize, 0usize);
    let mut indents: Vec<usize> = Vec::new();
    let mut quote: Option<char> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let body = line.trim_start_matches(' ');
        if quote.is_none() && flow_depth == 0 && !body.is_empty() && !body.starts_with('#') {
            let indent = line.len() - body.len();
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
            let dashes = body
                .split([' ', '\t'])
                .take_while(|token| *token == "-")
                .count();
            if indents.len() + dashes > MAX_YAML_DEPTH {
                return too_much(number, "levels of nesting", MAX_YAML_DEPTH);
            }
        }
        let (mut previous, mut escaped) = (' ', false);
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some('"') if escaped => escaped = false,
                Some('"') if c == '\\' => escaped = true,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '#' && previous.is_whitespace() => break,
                None if (c == '"' || c == '\'') && is_separator(previous) => quote = Some(c),
                None if c == '[' || c == '{' => {
                    flow_depth += 1;
                    if indents.len() + flow_depth > MAX_YAML_DEPTH {
                        return too_much(number, "levels of nesting", MAX_YAML_DEPTH);
                    }
                }
                None if c == ']' || c == '}' => flow_depth = flow_depth.saturating_sub(1),
                None if (c == '&' || c == '*')
                    && is_separator(previous)
                    && chars.peek().is_some_and(|&n| !is_separator(n)) =>
                {
                    aliases += 1;
                    if aliases > MAX_YAML_ALIASES {
                        return too_much(number, "anchors and aliases", MAX_YAML_ALIASES);
                    }
                }
                None => {}
            }
            previous = c;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_product_detects_overflow() {
        assert_eq!(checked_product(&[2, 3, 4]), Some(24));
        assert_eq!(checked_product(&[]), Some(1));
        assert_eq!(checked_product(&[usize::MAX, 2]), None);
    }

    #[test]
    fn thread_count_and_at_most_name_the_limit() {
        assert_eq!(thread_count("--threads", 4).unwrap(), 4);
        for bad in [0, MAX_THREADS + 1, usize::MAX] {
            let msg = thread_count("--threads", bad).unwrap_err().to_string();
            assert!(
                msg.contains("--threads") && msg.contains("1..=1024"),
                "{msg}"
            );
        }
        let msg = at_most("widen factor of `wrn-16-9`", 9, 8)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("wrn-16-9") && msg.contains("limit of 8"),
            "{msg}"
        );
    }

    #[test]
    fn yaml_scan_counts_nesting_and_aliases_outside_quotes_and_comments() {
        let ok = "a:\n  b: [1, {c: 2}]\n  d: \"[[[[ *x &y\"  # [[[[ *z\n  e:\n  - - 1\n";
        check_yaml(ok, "ok.yml").unwrap();
        let deep = format!("a: {}{}\n", "[".repeat(40), "]".repeat(40));
        let msg = check_yaml(&deep, "deep.yml").unwrap_err().to_string();
        assert!(
            msg.contains("deep.yml line 1") && msg.contains("32 levels"),
            "{msg}"
        );
        let indented: String = (0..40)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let msg = check_yaml(&indented, "ind.yml").unwrap_err().to_string();
        assert!(
            msg.contains("ind.yml line 33") && msg.contains("nesting"),
            "{msg}"
        );
        let dashes = format!("a:\n{}1\n", "- ".repeat(40));
        assert!(check_yaml(&dashes, "d.yml").is_err());
        let laughs: String = (0..70).map(|i| format!("k{i}: &a{i} *a0\n")).collect();
        let msg = check_yaml(&laughs, "l.yml").unwrap_err().to_string();
        assert!(
            msg.contains("l.yml line 33") && msg.contains("64 anchors"),
            "{msg}"
        );
        let big = "#".repeat(MAX_CONFIG_BYTES as usize + 1);
        let msg = check_yaml(&big, "big.yml").unwrap_err().to_string();
        assert!(msg.contains("big.yml") && msg.contains("1048576"), "{msg}");
    }

    #[test]
    fn read_at_most_stops_at_the_limit() {
        let p = Path::new("x.gz");
        assert_eq!(read_at_most(p, &[1u8, 2, 3][..], 3, "x").unwrap().len(), 3);
        let msg = read_at_most(p, &[0u8; 10][..], 3, "decompressed data")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("x.gz") && msg.contains("limit of 3 bytes"),
            "{msg}"
        );
    }
}
