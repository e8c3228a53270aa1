//! What the translation tests share: where the Bible corpus of ../shared/data is.

use std::path::PathBuf;

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
