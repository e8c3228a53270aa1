//! What the lab prints: a header with the device and its peaks, then one table row (or one JSON
//! line) per case: check, time, rate, fraction of peak and, when given, PyTorch's time.

use super::cases::{Case, Work};
use super::peak::Peaks;
use crate::bench::BenchResult;
use crate::precision::Precision;
use serde_json::json;
use std::collections::HashMap;

/// What a case's result was checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// The same op on the cpu device (cuda and emu runs).
    Cpu,
    /// The engine's generic CPU code in f64 (the cpu device's conv and GEMM passes).
    CpuF64,
    /// Nothing: on the cpu device this op's code is the plain reference itself.
    SelfIsReference,
}

impl Reference {
    /// How the table and the JSON name it.
    pub fn name(self) -> &'static str {
        match self {
            Reference::Cpu => "cpu",
            Reference::CpuF64 => "cpu-f64",
            Reference::SelfIsReference => "self",
        }
    }
}

/// One case's outcome.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// Its work (FLOPs or bytes).
    pub work: Work,
    /// What it was checked against.
    pub reference: Reference,
    /// Relative L2 error from the reference (`None` when there is none).
    pub rel_err: Option<f64>,
    /// Within the case's tolerance (or not checked).
    pub passed: bool,
    /// The timed runs; `None` when the check failed (a wrong kernel is not timed).
    pub timing: Option<BenchResult>,
    /// PyTorch's median time for the same case, when known.
    pub pytorch_ms: Option<f64>,
}

impl CaseResult {
    /// `PASS`, `FAIL`, or `n/a` when there was no reference.
    pub fn verdict(&self) -> &'static str {
        match (self.rel_err, self.passed) {
            (None, _) => "n/a",
            (Some(_), true) => "PASS",
            (Some(_), false) => "FAIL",
        }
    }

    /// TFLOP/s or GB/s at the median time, with its unit and the fraction of the matching peak.
    pub fn rate(&self, peaks: &Peaks) -> Option<(f64, &'static str, f64)> {
        let s = self.timing.as_ref()?.median_ms() * 1e-3;
        Some(match self.work {
            Work::Flops(f) => {
                let r = f as f64 / s / 1e12;
                (r, "TFLOP/s", r / peaks.gemm_tflops)
            }
            Work::Bytes(b) => {
                let r = b as f64 / s / 1e9;
                (r, "GB/s", r / peaks.copy_gbs)
            }
        })
    }

    /// lit-engine's median over PyTorch's.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.timing.as_ref()?.median_ms() / self.pytorch_ms?)
    }

    fn used_by(&self) -> String {
        let parts: Vec<String> = self
            .case
            .used_by
            .iter()
            .map(|(m, n)| format!("{m}x{n}"))
            .collect();
        parts.join(",")
    }
}

/// `v` with about three significant digits (rates span 1e-4 on emu to 1e3 on a GPU).
fn sig3(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 1.0 => format!("{v:.2}"),
        a if a >= 0.001 => format!("{v:.4}"),
        _ => format!("{v:.2e}"),
    }
}

/// A whole lab run.
#[derive(Clone, Debug)]
pub struct LabReport {
    /// The device's name.
    pub device: String,
    /// The host's ISA and cores (what every CPU figure must name).
    pub host: String,
    /// CPU worker threads.
    pub threads: usize,
    /// Batch of the activation shapes.
    pub batch: usize,
    /// The precision asked for.
    pub precision: Precision,
    /// The precision the ops ran in.
    pub run_precision: Precision,
    /// Why they differ, when they do.
    pub notice: Option<String>,
    /// The device's measured peaks.
    pub peaks: Peaks,
    /// One per case, in order.
    pub results: Vec<CaseResult>,
}

impl LabReport {
    /// Set each case's PyTorch time from `times` (case name → median ms).
    pub fn attach_pytorch(&mut self, times: &HashMap<String, f64>) {
        for r in &mut self.results {
            r.pytorch_ms = times.get(&r.case.name).copied();
        }
    }

    /// Cases whose check failed.
    pub fn failures(&self) -> usize {
        self.results.iter().filter(|r| !r.passed).count()
    }

    /// The header lines: device, host, precision, peaks.
    pub fn header(&self) -> String {
        let p = &self.peaks;
        let mut s = format!(
            "kernel lab on {} (host {}, {} threads), batch {}, precision {} (ran {})\n",
            self.device, self.host, self.threads, self.batch, self.precision, self.run_precision
        );
        if let Some(n) = &self.notice {
            s += &format!("note: {n}\n");
        }
        s += &format!(
            "peaks: copy {:.1} GB/s ({} MiB buffer), GEMM {:.3} TFLOP/s ({} n={})\n",
            p.copy_gbs,
            p.copy_bytes >> 20,
            p.gemm_tflops,
            p.gemm_kernel,
            p.gemm_n
        );
        if self.device.starts_with("emu") {
            s += "note: emu runs every CUDA thread as a fiber on the CPU: its timings check the \
                  harness, they say nothing about kernel speed\n";
        }
        s
    }

    /// Header and an aligned table, one row per case.
    pub fn render(&self) -> String {
        let head = [
            "case",
            "check",
            "rel err",
            "ref",
            "median ms",
            "best ms",
            "rate",
            "% peak",
            "torch ms",
            "lit/torch",
            "used by",
        ];
        let rows: Vec<Vec<String>> = self
            .results
            .iter()
            .map(|r| {
                let t = r.timing.as_ref();
                let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
                let (rate, peak) = match r.rate(&self.peaks) {
                    Some((v, unit, f)) => {
                        (format!("{} {unit}", sig3(v)), format!("{:.1}", 100.0 * f))
                    }
                    None => ("-".into(), "-".into()),
                };
                vec![
                    r.case.name.clone(),
                    r.verdict().into(),
                    r.rel_err.map_or("-".into(), |e| format!("{e:.1e}")),
                    r.reference.name().into(),
                    ms(t.map(|t| t.median_ms())),
                    ms(t.map(|t| t.best_ms())),
                    rate,
                    peak,
                    ms(r.pytorch_ms),
                    r.ratio().map_or("-".into(), |v| format!("{v:.2}")),
                    r.used_by(),
                ]
            })
            .collect();
        let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.len());
            }
        }
        let line = |cells: &[String]| -> String {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, &w))| match i {
                    0 | 1 | 3 | 10 => format!("{c:<w$}"),
                    _ => format!("{c:>w$}"),
                })
                .collect();
            parts.join("  ").trim_end().to_string() + "\n"
        };
        let mut out = self.header();
        out += &line(&head.map(String::from));
        for row in &rows {
            out += &line(row);
        }
        let failed = self.failures();
        if failed > 0 {
            out += &format!("{failed} case(s) FAILED their check and were not timed\n");
        }
        out
    }

    /// One JSON object for the header, then one per case.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        let mut lines = vec![json!({
            "kind": "kernel_lab", "engine": "lit-engine", "device": self.device,
            "host": self.host, "threads": self.threads, "batch": self.batch,
            "precision": self.precision.name(), "run_precision": self.run_precision.name(),
            "notice": self.notice, "peaks": self.peaks,
        })];
        for r in &self.results {
            let t = r.timing.as_ref();
            let mut v = json!({
                "case": r.case.name, "kernel": r.case.kernel.label(&r.case.shape),
                "engine": "lit-engine", "device": self.device,
                "precision": self.run_precision.name(),
                "check": r.verdict(), "rel_err": r.rel_err, "tolerance": r.case.tolerance(),
                "reference": r.reference.name(),
                "median_ms": t.map(|t| t.median_ms()), "best_ms": t.map(|t| t.best_ms()),
                "used_by": r.case.used_by.iter().map(|(m, n)| json!({"model": m, "calls": n}))
                    .collect::<Vec<_>>(),
                "pytorch_ms": r.pytorch_ms, "ratio_lit_over_pytorch": r.ratio(),
            });
            match r.work {
                Work::Flops(f) => v["flops"] = f.into(),
                Work::Bytes(b) => v["bytes"] = b.into(),
            }
            if let Some((rate, unit, frac)) = r.rate(&self.peaks) {
                let key = if unit == "GB/s" { "gbs" } else { "tflops" };
                v[key] = rate.into();
                v["peak_fraction"] = frac.into();
            }
            lines.push(v);
        }
        lines
    }
}
