//! What a run returns: its metrics, where its checkpoints are, the quantized size, and the
//! final report table (teacher, assistants, student).

use super::context::RunContext;
use super::metrics_log::EpochMetrics;
use super::plan::PlanStep;
use super::ptq::PtqResult;
use super::report::{Report, ReportRow, Role};
use super::setup::Built;
use crate::distill::qd::SizeReport;
use crate::nn::ParamStore;
use std::path::PathBuf;

/// What a finished run returns.
pub struct RunSummary {
    /// Every epoch of every step, in order.
    pub epochs: Vec<EpochMetrics>,
    /// The best checkpoint of the last student stage (absent when no student stage ran).
    pub checkpoint: Option<PathBuf>,
    /// The `-last` copy of the committed run state (absent when nothing was committed).
    pub last_checkpoint: Option<PathBuf>,
    /// `metrics.jsonl`.
    pub metrics_file: PathBuf,
    /// The best test accuracy of the last student stage.
    pub best_test_acc: Option<f64>,
    /// The post-training quantization results, one per bit width.
    pub ptq: Vec<PtqResult>,
    /// Size of the quantized student when the last stage quantized it.
    pub quantized_size: Option<(Vec<(String, u32)>, SizeReport)>,
    /// Parameters of the student.
    pub student_parameters: usize,
    /// Teacher, assistants and student: parameters, bytes, accuracy (best and last epoch).
    pub report: Report,
}

fn b_numel(store: &ParamStore, name: &str) -> usize {
    store.get(name).map_or(0, |p| p.value.numel())
}

/// The final table: the base teacher, the assistants, and the student (its last stage's
/// accuracies; quantized: the packed size and bits; PTQ rows when there is no trained stage).
pub(super) fn build_report(
    run: &RunContext,
    steps: &[PlanStep],
    student: Option<&Built>,
    quantized: &Option<(Vec<(String, u32)>, SizeReport)>,
    ptq: &[PtqResult],
) -> Report {
    let mut report = Report::new();
    let accuracies = |step: usize| -> Vec<f64> {
        run.history
            .iter()
            .filter(|m| m.step == step)
            .map(|m| m.test_acc)
            .collect()
    };
    let base = run.cfg.models.base_architecture.as_deref();
    for (arch, params, acc) in &run.teachers {
        let role = if Some(arch.as_str()) == base {
            Role::Teacher
        } else {
            Role::Assistant
        };
        // A teacher trained in this run reports its own epochs.
        let trained = steps
            .iter()
            .position(|s| !s.is_student() && s.architecture == *arch)
            .map(accuracies)
            .filter(|a| !a.is_empty());
        let accs = trained.unwrap_or_else(|| vec![*acc]);
        report.push(ReportRow::float(role, arch, *params, &accs));
    }
    if let Some(b) = student {
        let params = b.store.num_parameters();
        let arch = b.model.architecture();
        if let Some(last_student) = steps.iter().rposition(PlanStep::is_student) {
            let accs = accuracies(last_student);
            match quantized {
                Some((bits, size)) => {
                    // Mixed precision (differentiable quantization): the size-weighted mean.
                    let (mut sum, mut count) = (0.0f64, 0usize);
                    for (name, layer_bits) in bits {
                        let n = b_numel(&b.store, name);
                        sum += (*layer_bits as f64) * n as f64;
                        count += n;
                    }
                    let mean_bits = (sum / count.max(1) as f64).round() as u32;
                    report.push(ReportRow::quantized(
                        arch,
                        params,
                        size.packed_bytes as u64,
                        mean_bits,
                        &accs,
                    ));
                }
                None => {
                    report.push(ReportRow::float(Role::Student, arch, params, &accs));
                }
            }
        }
        for r in ptq {
            report.push(ReportRow::quantized(
                &format!("{arch} PTQ"),
                params,
                r.packed_bytes as u64,
                r.bits,
                &[r.test_acc],
            ));
        }
    }
    report
}
