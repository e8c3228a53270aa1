//! What the translation tests share: where the Bible corpus of ../shared/data is, and reading a
//! run's metrics and saved tensors.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The Bible corpus folder of ../shared/data (`LIT_SHARED_DATA` overrides the data folder), or
/// `None` after a printed SKIP when it is not there; a failure under `LIT_REQUIRE_SHARED_DATA=1`
/// (the rule of tests/data.rs).
pub fn bible_dir() -> Option<PathBuf> {
    let dir = std::env::var("LIT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let bible = dir.join("text/bible-es-en");
    if bible.join("README.md").is_file() {
        return Some(bible);
    }
    lit_engine::testing::skip_unless_required(
        "LIT_REQUIRE_SHARED_DATA",
        &format!(
            "the Bible corpus is not in {} (set LIT_SHARED_DATA)",
            bible.display()
        ),
    );
    None
}

/// A run's `metrics.jsonl` lines without their wall-clock `seconds` (what two equal runs share).
pub fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

/// The tensors of a safetensors file as (name, shape, bytes), sorted by name.
pub fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The numbers under `key` in metrics lines that have it, in order (e.g. `valid_ppl`, `lr`).
pub fn column(lines: &[serde_json::Value], key: &str) -> Vec<f64> {
    lines.iter().filter_map(|l| l[key].as_f64()).collect()
}

/// Index ids of `shape` on `dev`.
pub fn ids(shape: &[usize], v: &[i32], dev: &lit_engine::Device) -> lit_engine::IndexTensor {
    lit_engine::IndexTensor::from_vec(shape, v.to_vec(), dev).unwrap()
}

/// Each of `got` within `tol` of `want`.
pub fn within(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}
