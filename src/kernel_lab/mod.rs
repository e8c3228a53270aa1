//! Kernel lab: `lit-engine bench kernels [FILTER]`, in the manner of llm.c's `dev/cuda` files.
//! Each case is one pass of one op on a shape a seed model runs (every conv layer shape forward,
//! input gradient and weight gradient; BatchNorm; the Linear GEMMs; softmax and the KD loss; LMA;
//! quantization; an SGD step). A case is first checked against a reference — the cpu device's
//! result for cuda and emu, the engine's generic f64 CPU code for the cpu device's conv and GEMM
//! paths — and only a case that passes is timed (warm-up, then repetitions with the device
//! synchronised after each), reported as TFLOP/s or GB/s and as a fraction of the device's
//! measured peak ([`peak`]).
//!
//! Files: `shapes` (the op shapes, from traced forwards of the seed models), `cases` (operands,
//! the device run, work and tolerance of each pass), `peak` (copy bandwidth, GEMM peak),
//! `report` (table and JSON lines), `pytorch` (the `benches/pytorch_kernels.py` column).

mod cases;
pub mod peak;
pub mod pytorch;
mod report;
pub mod shapes;

pub use cases::{Case, Kernel, Work};
pub use report::{CaseResult, LabReport, Reference};

use crate::bench::BenchResult;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::limits;
use crate::precision::Precision;
use std::time::Instant;

/// What `bench kernels` runs.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Comma-separated alternatives: a case runs when its name contains one, or a model that
    /// runs it is named by one (`resnet20`, `conv2d_fwd,bn_train`).
    pub filter: Option<String>,
    /// The batch of every activation shape.
    pub batch: usize,
    /// Untimed runs before timing.
    pub warmup: usize,
    /// Timed runs.
    pub reps: usize,
    /// Requested precision of the conv and GEMM operands ([`wired_precision`]).
    pub precision: Precision,
    /// Smoke-test sizes: batch [`QUICK_BATCH`] and small peak measurements.
    pub quick: bool,
    /// Test hook: the device results of cases whose name contains this are perturbed before
    /// the check, which must then report FAIL (proves the check is not vacuous).
    pub corrupt: Option<String>,
}

/// Most timed runs per case (each one's time is kept).
pub const MAX_REPS: usize = 1 << 20;

/// The batch of `--quick`.
pub const QUICK_BATCH: usize = 2;

impl LabOptions {
    /// Every case at `batch`, 2 warm-up runs, 10 timed runs, fp32.
    pub fn new(batch: usize) -> LabOptions {
        LabOptions {
            filter: None,
            batch,
            warmup: 2,
            reps: 10,
            precision: Precision::Fp32,
            quick: false,
            corrupt: None,
        }
    }

    /// The batch the shapes are built at.
    pub fn effective_batch(&self) -> usize {
        if self.quick {
            QUICK_BATCH
        } else {
            self.batch
        }
    }

    fn selects(&self, case: &Case) -> bool {
        let Some(filter) = &self.filter else {
            return true;
        };
        filter.split(',').map(str::trim).any(|f| {
            !f.is_empty() && (case.name.contains(f) || case.used_by.iter().any(|(m, _)| m == f))
        })
    }
}

/// The precision the conv and Linear cases run in when `requested` is asked for on `dev` (always
/// `requested`: the ops take it), and a note on how a rounding precision ran there: the
/// tensor-core kernels on kernel devices, rounded copies + the fp32 kernels on cpu (the paths
/// training takes, `ops::tensor_core::wired`). Either is checked against a reference on the
/// operands rounded the same way.
pub fn wired_precision(requested: Precision, dev: &Device) -> (Precision, Option<String>) {
    if !requested.rounds_operands() {
        return (requested, None);
    }
    let path = match crate::ops::tensor_core::wired(dev, requested) {
        Some(_) => {
            let suffix = crate::ops::tensor_core::kernel_suffix(requested).unwrap_or("?");
            format!(
                "ran the tensor-core kernels (gemm_tc_{suffix}, conv2d_tc_*_{suffix}), operands \
                 rounded as they are staged"
            )
        }
        None => "ran round_operands_f32 on the operands (timed), then the fp32 kernels".into(),
    };
    let note = format!(
        "precision {requested}: conv and Linear cases {path}; each checked against the cpu \
         reference on operands rounded to {requested} (the Linear bias stays fp32)"
    );
    (requested, Some(note))
}

/// The cases `opts` selects, in the order of the seed models' first use.
pub fn select_cases(opts: &LabOptions) -> Result<Vec<Case>> {
    let batch = limits::at_most(
        "bench kernels: --batch",
        opts.effective_batch(),
        limits::MAX_BATCH,
    )?;
    if batch == 0 {
        return Err(Error::Config("bench kernels: --batch must be > 0".into()));
    }
    let uses = shapes::seed_shapes(shapes::SEED_MODELS, batch)?;
    let cases: Vec<Case> = cases::expand(&uses)
        .into_iter()
        .filter(|c| opts.selects(c))
        .collect();
    if cases.is_empty() {
        return Err(Error::Config(format!(
            "bench kernels: no case matches `{}` (try a model such as resnet20, or a stem such \
             as conv2d_fwd, bn_train, linear, lma, kd, softmax, quantize, sgd_step)",
            opts.filter.as_deref().unwrap_or("")
        )));
    }
    Ok(cases)
}

/// Runs `f` `warmup` times, then `reps` times timed, synchronising `dev` before each clock read.
pub(crate) fn time_reps<T>(
    name: &str,
    dev: &Device,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<T>,
) -> Result<BenchResult> {
    for _ in 0..warmup {
        f()?;
    }
    dev.synchronize()?;
    let mut times_ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        let out = f()?;
        dev.synchronize()?;
        times_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(out);
    }
    Ok(BenchResult {
        name: name.to_string(),
        times_ms,
        kernel_times: None,
        launches_per_step: None,
        graph_kernels: None,
    })
}

/// `‖got − want‖₂ / ‖want‖₂` (the absolute norm when `want` is all zeros; infinite when the
/// lengths differ, NaN when `got` holds a NaN).
pub fn relative_l2(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        num += (g - w) * (g - w);
        den += w * w;
    }
    if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    }
}

fn flatten(ts: &[crate::tensor::Tensor]) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for t in ts {
        out.extend(t.to_vec()?.into_iter().map(f64::from));
    }
    Ok(out)
}

/// Check one case on `dev`, then time it if it passed.
fn run_case(case: &Case, dev: &Device, opts: &LabOptions, run: Precision) -> Result<CaseResult> {
    let ops = cases::operands(case)?;
    let mut runner = cases::prepare(case, &ops, dev, run)?;
    let mut got = flatten(&runner()?)?;
    if opts
        .corrupt
        .as_deref()
        .is_some_and(|c| case.name.contains(c))
    {
        got.iter_mut().for_each(|v| *v = *v * 1.01 + 1e-3);
    }
    let reference_ops = ops.rounded(case, run);
    let (reference, want) = if dev.is_cpu() {
        match cases::reference_f64(case, &reference_ops)? {
            Some(want) => (Reference::CpuF64, Some(want)),
            None => (Reference::SelfIsReference, None),
        }
    } else {
        // The fp32 ops on the rounded operands: the rounding-aware reference.
        let mut cpu = cases::prepare(case, &reference_ops, &Device::Cpu, Precision::Fp32)?;
        (Reference::Cpu, Some(flatten(&cpu()?)?))
    };
    let rel_err = want.map(|w| relative_l2(&got, &w));
    let passed = rel_err.is_none_or(|e| e <= case.tolerance());
    let timing = if passed {
        Some(time_reps(
            &case.name,
            dev,
            opts.warmup,
            opts.reps,
            &mut runner,
        )?)
    } else {
        None
    };
    Ok(CaseResult {
        case: case.clone(),
        work: case.work()?,
        reference,
        rel_err,
        passed,
        timing,
        pytorch_ms: None,
    })
}

/// The host's vector ISA as the CPU figures name it.
pub fn host_isa() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let isa = if std::arch::is_x86_feature_detected!("avx512f") {
            "AVX-512"
        } else if std::arch::is_x86_feature_detected!("avx2") {
            "AVX2"
        } else {
            "SSE2"
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        format!("x86_64 {isa}, {cores} cores")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// Runs the selected cases on `dev`: peaks first, then each case checked and timed.
pub fn run(opts: &LabOptions, dev: &Device) -> Result<LabReport> {
    if opts.reps == 0 {
        return Err(Error::Config(
            "bench kernels: --steps (timed runs) must be > 0".into(),
        ));
    }
    limits::at_most("bench kernels: --steps", opts.reps, MAX_REPS)?;
    let cases = select_cases(opts)?;
    let (run_precision, notice) = wired_precision(opts.precision, dev);
    let peaks = peak::measure(dev, opts.quick, opts.reps.clamp(1, 5), run_precision)?;
    let results = cases
        .iter()
        .map(|c| run_case(c, dev, opts, run_precision))
        .collect::<Result<Vec<_>>>()?;
    Ok(LabReport {
        device: dev.name(),
        host: host_isa(),
        threads: rayon::current_num_threads(),
        batch: opts.effective_batch(),
        precision: opts.precision,
        run_precision,
        notice,
        peaks,
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_l2_measures_the_difference() {
        assert_eq!(relative_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!(
            (relative_l2(&[3.0, 4.0], &[0.0, 5.0]) - (9.0f64 + 1.0).sqrt() / 5.0).abs() < 1e-12
        );
        assert_eq!(relative_l2(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert!(relative_l2(&[f64::NAN], &[1.0]).is_nan());
        assert_eq!(relative_l2(&[0.5], &[0.0]), 0.5);
    }

    #[test]
    fn the_precision_runs_and_its_path_is_named() {
        let emu = Device::emu_with_order(crate::device::EmuOrder::Forward).unwrap();
        for dev in [Device::Cpu, emu.clone()] {
            assert_eq!(
                wired_precision(Precision::Fp32, &dev),
                (Precision::Fp32, None)
            );
        }
        let (run, notice) = wired_precision(Precision::Bf16, &emu);
        assert_eq!(run, Precision::Bf16);
        assert!(notice
            .unwrap()
            .contains("tensor-core kernels (gemm_tc_bf16"));
        let (run, notice) = wired_precision(Precision::Tf32, &Device::Cpu);
        assert_eq!(run, Precision::Tf32);
        assert!(notice.unwrap().contains("round_operands_f32"));
    }

    #[test]
    fn filters_pick_by_name_or_model() {
        let mut opts = LabOptions::new(4);
        opts.filter = Some("linear_fwd, vdcnn9-maxpool".into());
        let cases = select_cases(&opts).unwrap();
        assert!(cases.iter().all(|c| c.name.starts_with("linear_fwd")
            || c.used_by.iter().any(|(m, _)| m == "vdcnn9-maxpool")));
        assert!(cases.iter().any(|c| c.name.starts_with("conv1d_dw")));
        opts.filter = Some("no_such_case".into());
        assert!(matches!(select_cases(&opts), Err(Error::Config(_))));
    }
}
