//! Where golden cases are found; the one place for that logic (harness, runner tests, op tests).
//!
//! - The op-level cases (`op_*`, ~0.5 MB) are vendored in `tests/golden-ops/`: they ship with the
//!   repository, so a fresh clone tests every op against PyTorch with nothing beside it.
//! - The full set (model, distill, qd, nmt cases, ~24 MB) is `LIT_GOLDEN_DIR`, else
//!   `../shared/golden` beside the repository, when present.
//! - `LIT_REQUIRE_GOLDEN=1` (CI, when the full set is there) turns a missing directory or case into
//!   a failure instead of a printed `SKIP`.

use std::path::{Path, PathBuf};

/// The vendored op-level cases (always present: they are part of the repository).
pub fn vendored_op_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden-ops"))
}

/// Whether `LIT_REQUIRE_GOLDEN=1`: a missing golden directory or case is then a failure.
pub fn required() -> bool {
    std::env::var("LIT_REQUIRE_GOLDEN").as_deref() == Ok("1")
}

/// The full golden directory: `LIT_GOLDEN_DIR` (an error when it is set but not a directory), else
/// `../shared/golden` beside the repository when it exists, else `None`.
pub fn full_dir() -> Result<Option<PathBuf>, String> {
    match std::env::var("LIT_GOLDEN_DIR") {
        Ok(d) if Path::new(&d).is_dir() => Ok(Some(PathBuf::from(d))),
        Ok(d) => Err(format!("LIT_GOLDEN_DIR={d} is not a directory")),
        Err(_) => {
            let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/golden");
            Ok(beside.is_dir().then_some(beside))
        }
    }
}

/// `<name>.json` of a case: the vendored op directory first, then the full directory.
/// `Ok(None)` when the case is in neither (or the full directory is absent).
pub fn find_case(name: &str) -> Result<Option<PathBuf>, String> {
    let vendored = vendored_op_dir().join(format!("{name}.json"));
    if vendored.is_file() {
        return Ok(Some(vendored));
    }
    Ok(full_dir()?
        .map(|d| d.join(format!("{name}.json")))
        .filter(|p| p.is_file()))
}

/// For a test: the case's `.json` path, or `None` after a printed `SKIP <test>: <reason>` when
/// the full directory is absent or lacks the case. Panics (the test fails) when the case should be
/// there: under `LIT_REQUIRE_GOLDEN=1`, for a vendored `op_*` case, or for a bad `LIT_GOLDEN_DIR`.
#[track_caller]
pub fn case_or_skip(name: &str) -> Option<PathBuf> {
    match find_case(name) {
        Ok(Some(p)) => Some(p),
        Err(e) => panic!("golden case {name}: {e}"),
        Ok(None) if name.starts_with("op_") => panic!(
            "golden case {name} is missing from the vendored {}",
            vendored_op_dir().display()
        ),
        Ok(None) => {
            let why = match full_dir() {
                Ok(Some(d)) => format!("golden case {name} not in {}", d.display()),
                _ => format!(
                    "golden case {name} needs the full golden set (LIT_GOLDEN_DIR or ../shared/golden)"
                ),
            };
            crate::testing::skip_unless_required("LIT_REQUIRE_GOLDEN", &why);
            None
        }
    }
}

/// The case files a golden run covers, sorted by name: every vendored op case, and every case of
/// the full directory except byte-identical copies of a vendored one (a different set under the
/// same names, e.g. a hidden evaluation set, still runs in full).
pub fn all_cases() -> Result<Vec<PathBuf>, String> {
    let mut cases = case_files(&vendored_op_dir())?;
    if let Some(dir) = full_dir()? {
        for path in case_files(&dir)? {
            let twin = vendored_op_dir().join(path.file_name().unwrap());
            if !(same_bytes(&path, &twin)
                && same_bytes(&safetensors_of(&path), &safetensors_of(&twin)))
            {
                cases.push(path);
            }
        }
    }
    cases.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(cases)
}

/// Every `*.json` case in `dir`, sorted by name.
pub fn case_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    Ok(v)
}

fn safetensors_of(json: &Path) -> PathBuf {
    json.with_extension("safetensors")
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    match (std::fs::read(a), std::fs::read(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
