//! The table printed at the end of a run: one row per model of the experiment (teacher, any
//! assistants, the student) with its architecture, parameters, size in bytes and accuracy (best
//! and last epoch), as aligned plain text and as JSON for the sidecar.
//!
//! ```text
//! role       architecture      parameters   size         best acc  last acc
//! teacher    resnet56          855.77K      3.26 MiB     93.10%    92.95%
//! student    resnet20 (4-bit)  272.47K      138.01 KiB   91.02%    90.88%
//! ```
//!
//! Sizes: `4 × parameters` bytes for a float model; for a quantized student the real size of its
//! packed export (`distill::export::packed_size`).

use crate::units::{human_bytes, human_count};
use serde::Serialize;

/// What a row's model is in the experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The base teacher.
    Teacher,
    /// A TAKD teacher assistant.
    Assistant,
    /// The student.
    Student,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Teacher => "teacher",
            Role::Assistant => "assistant",
            Role::Student => "student",
        }
    }
}

/// One model of the experiment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportRow {
    /// What the model is in the experiment.
    pub role: Role,
    /// Its architecture (with the bits of a quantized student).
    pub architecture: String,
    /// Trained parameters (PyTorch's `sum(p.numel())`).
    pub parameters: usize,
    /// Bytes the weights take: `4 × parameters`, or the packed size for a quantized student.
    pub bytes: u64,
    /// Bits per quantized weight when the weights are packed (`None`: f32).
    pub bits: Option<u32>,
    /// Best test accuracy over the epochs (fraction), if the model was evaluated.
    pub best_accuracy: Option<f64>,
    /// Test accuracy after the last epoch (fraction), if the model was evaluated.
    pub last_accuracy: Option<f64>,
}

impl ReportRow {
    /// A float model: its size is 4 bytes per parameter. `accuracies` are the per-epoch test
    /// accuracies (fractions) in order; empty when the model was not evaluated.
    pub fn float(role: Role, architecture: &str, parameters: usize, accuracies: &[f64]) -> Self {
        ReportRow {
            role,
            architecture: architecture.to_string(),
            parameters,
            bytes: 4 * parameters as u64,
            bits: None,
            best_accuracy: accuracies.iter().copied().reduce(f64::max),
            last_accuracy: accuracies.last().copied(),
        }
    }

    /// A quantized student: `packed_bytes` from its packed export, `bits` per weight.
    pub fn quantized(
        architecture: &str,
        parameters: usize,
        packed_bytes: u64,
        bits: u32,
        accuracies: &[f64],
    ) -> Self {
        ReportRow {
            bytes: packed_bytes,
            bits: Some(bits),
            ..ReportRow::float(Role::Student, architecture, parameters, accuracies)
        }
    }
}

/// The final table of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// One row per model, teacher first.
    pub rows: Vec<ReportRow>,
}

fn percent(acc: Option<f64>) -> String {
    acc.map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a))
}

impl Report {
    /// An empty report.
    pub fn new() -> Self {
        Report::default()
    }

    /// Add a row.
    pub fn push(&mut self, row: ReportRow) -> &mut Self {
        self.rows.push(row);
        self
    }

    /// Aligned plain text, one header line and one line per row; a last line compares the
    /// student with the teacher (compression ratio of the bytes, accuracy difference) when the
    /// table has both.
    pub fn render(&self) -> String {
        let header = [
            "role",
            "architecture",
            "parameters",
            "size",
            "best acc",
            "last acc",
        ];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                let arch = match r.bits {
                    Some(b) => format!("{} ({b}-bit)", r.architecture),
                    None => r.architecture.clone(),
                };
                [
                    r.role.label().to_string(),
                    arch,
                    human_count(r.parameters as u64),
                    human_bytes(r.bytes),
                    percent(r.best_accuracy),
                    percent(r.last_accuracy),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |row: &[String]| -> String {
            let padded: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            padded.join("  ").trim_end().to_string()
        };
        let mut out = line(&header.map(String::from));
        out.push('\n');
        for row in &cells {
            out += &line(row);
            out.push('\n');
        }
        if let Some(summary) = self.comparison() {
            out += &summary;
            out.push('\n');
        }
        out
    }

    /// "student/teacher: 23.6x smaller, best accuracy -2.08 points", when both rows exist.
    fn comparison(&self) -> Option<String> {
        let teacher = self.rows.iter().find(|r| r.role == Role::Teacher)?;
        let student = self.rows.iter().rev().find(|r| r.role == Role::Student)?;
        if student.bytes == 0 {
            return None;
        }
        let ratio = teacher.bytes as f64 / student.bytes as f64;
        let mut s = format!("student vs teacher: {ratio:.1}x smaller");
        if let (Some(t), Some(st)) = (teacher.best_accuracy, student.best_accuracy) {
            s += &format!(", best accuracy {:+.2} points", 100.0 * (st - t));
        }
        Some(s)
    }

    /// The rows as JSON (for the run's sidecar): `{"rows": [{role, architecture, parameters,
    /// bytes, bits, best_accuracy, last_accuracy}, …]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a report is plain data")
    }
}
