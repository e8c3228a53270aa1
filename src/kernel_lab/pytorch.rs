//! The PyTorch column: `benches/pytorch_kernels.py` reads the lab's cases (JSON lines, one per
//! case, with its shapes — so both engines time exactly the same list under the same names) and
//! prints one JSON line per case with its median time. The lab either runs the script itself
//! (`--compare-pytorch`) or reads a file of its output written earlier, e.g. on a GPU machine
//! (`--pytorch-results FILE.jsonl`).

use super::cases::Case;
use crate::error::{Error, Result};
use crate::limits;
use crate::precision::Precision;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Largest results file read (a few hundred short lines are expected).
const MAX_RESULTS_BYTES: u64 = 16 << 20;

/// The cases as the script reads them: one JSON object per line.
pub fn cases_jsonl(cases: &[Case], precision: Precision) -> String {
    cases
        .iter()
        .map(|c| c.spec(precision).to_string() + "\n")
        .collect()
}

/// `case` → `median_ms` of each line of the script's output that has both (others are skipped:
/// the script also prints a header line).
pub fn parse_results(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["case"].as_str()?.to_string(), v["median_ms"].as_f64()?)))
        .collect()
}

/// The results in a file the script wrote.
pub fn read_results(path: &Path) -> Result<HashMap<String, f64>> {
    let bytes = limits::read_file_at_most(path, MAX_RESULTS_BYTES, "PyTorch kernel results")?;
    let results = parse_results(&String::from_utf8_lossy(&bytes));
    if results.is_empty() {
        return Err(Error::data(
            path,
            "no line with `case` and `median_ms` (write it with benches/pytorch_kernels.py)",
        ));
    }
    Ok(results)
}

/// The standard output of a PyTorch reference script that succeeded; for one that failed, an
/// error with the last line it wrote to stderr (`bench --compare-pytorch` reads its step script
/// through this too).
pub fn script_stdout(script: &Path, out: &Output) -> Result<String> {
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(Error::External(format!(
            "{} failed (is PyTorch installed? `pip install torch`): {last}",
            script.display()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How the script is run.
#[derive(Clone, Debug)]
pub struct ScriptRun<'a> {
    /// `benches/pytorch_kernels.py`.
    pub script: &'a Path,
    /// `cpu` or `cuda`.
    pub torch_device: &'a str,
    /// CPU threads PyTorch may use.
    pub threads: usize,
    /// Untimed runs per case.
    pub warmup: usize,
    /// Timed runs per case.
    pub reps: usize,
}

/// Runs the script with `python3` on `cases` (given on its standard input) and returns its
/// results.
pub fn run_script(
    run: &ScriptRun,
    cases: &[Case],
    precision: Precision,
) -> Result<HashMap<String, f64>> {
    let script = run.script;
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--cases", "-", "--device", run.torch_device])
        .args(["--threads", &run.threads.to_string()])
        .args(["--warmup", &run.warmup.to_string()])
        .args(["--reps", &run.reps.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(script, e))?;
    let input = cases_jsonl(cases, precision);
    if let Some(mut stdin) = child.stdin.take() {
        // A script that exits early closes the pipe; its status and stderr tell why.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| Error::io(script, e))?;
    let results = parse_results(&script_stdout(script, &out)?);
    if results.is_empty() {
        return Err(Error::External(format!(
            "{}: no timings in its output",
            script.display()
        )));
    }
    Ok(results)
}
