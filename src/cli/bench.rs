//! `lit-engine bench`: whole training steps timed on one device (optionally against the PyTorch
//! reference script), and `bench kernels`, the kernel lab. Part of the command line, not of the
//! library.

use clap::Args;
use lit_engine::device::DeviceRequest;
use lit_engine::{Device, Error, Precision, Result};
use std::path::{Path, PathBuf};

const DEFAULT_PYTORCH_SCRIPT: &str = "benches/pytorch_steps.py";

/// The options of `lit-engine bench`.
#[derive(Args)]
pub(crate) struct BenchArgs {
    /// step (one SGD step of --student), kd (--teacher forward + --student KD step),
    /// forward (--teacher forward alone, eval mode, no tape), all, or kernels (the kernel lab:
    /// each op on the seed models' shapes, checked against a reference, then timed).
    #[arg(default_value = "all")]
    what: String,
    #[command(flatten)]
    kernels: KernelLabArgs,
    #[arg(long, default_value = "resnet20")]
    student: String,
    #[arg(long, default_value = "resnet56")]
    teacher: String,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, default_value_t = 10)]
    num_classes: usize,
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    device: Option<DeviceRequest>,
    /// Conv / GEMM operand precision (fp32, tf32, bf16, fp16).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Also run the PyTorch reference script with python3 and print lit-engine / PyTorch's best
    /// configuration of the same precision (named in the output).
    #[arg(long)]
    compare_pytorch: bool,
    /// Capture each step once as a CUDA graph (emu: its model) and time one graph launch per
    /// step.
    #[arg(long)]
    graph: bool,
    /// The PyTorch script (kernels: benches/pytorch_kernels.py unless another is named).
    #[arg(long, default_value = DEFAULT_PYTORCH_SCRIPT)]
    pytorch_script: PathBuf,
}

/// The options only `bench kernels` reads.
#[derive(Args)]
struct KernelLabArgs {
    /// kernels: run the cases whose name contains this, or that a model of this name runs
    /// (comma-separated alternatives, e.g. `resnet20` or `conv2d_fwd,bn_train`).
    filter: Option<String>,
    /// kernels: JSON lines instead of the table.
    #[arg(long)]
    json: bool,
    /// kernels: batch 2 and small peak measurements (a smoke run).
    #[arg(long)]
    quick: bool,
    /// kernels: print the selected cases as the JSON lines benches/pytorch_kernels.py reads.
    #[arg(long)]
    list: bool,
    /// kernels: PyTorch's timings, written earlier by benches/pytorch_kernels.py.
    #[arg(long)]
    pytorch_results: Option<PathBuf>,
}

/// `LIT_KERNEL_TIMES=1`: where a step's GPU time goes, per kernel, and how much of the step's
/// wall time no kernel was running (launch gaps and host work).
fn kernel_time_table(
    times: &[lit_engine::device::cuda::KernelTime],
    steps: usize,
    step_ms: f64,
) -> String {
    let per_step = |x: f64| x / steps.max(1) as f64;
    let busy: f64 = times.iter().map(|t| per_step(t.total_ms)).sum();
    let mut out = format!(
        "GPU busy {busy:.3} ms of a {step_ms:.3} ms step (median); idle {:.3} ms\n\
         {:<44} {:>9} {:>10} {:>6}\n",
        step_ms - busy,
        "kernel",
        "launches",
        "ms/step",
        "share"
    );
    for t in times {
        out += &format!(
            "{:<44} {:>9} {:>10.3} {:>5.1}%\n",
            t.kernel,
            t.launches / steps.max(1),
            per_step(t.total_ms),
            100.0 * per_step(t.total_ms) / busy.max(1e-12)
        );
    }
    out
}

/// The PyTorch reference's fastest configuration for `kind` at `spec`'s precision.
fn pytorch_reference(
    script: &Path,
    kind: &str,
    spec: &lit_engine::bench::BenchSpec,
    threads: usize,
    torch_device: &str,
) -> Result<lit_engine::bench::TorchTiming> {
    if spec.student != "resnet20" || spec.teacher.as_deref().is_some_and(|t| t != "resnet56") {
        return Err(Error::Config(
            "--compare-pytorch: the PyTorch script times resnet20 (and resnet56 -> resnet20) only"
                .into(),
        ));
    }
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--bench", kind, "--threads", &threads.to_string()])
        .args(["--device", torch_device])
        .args([
            "--batch",
            &spec.batch.to_string(),
            "--steps",
            &spec.steps.to_string(),
        ])
        .args(["--warmup", &spec.warmup.to_string()])
        .args(["--precisions", spec.precision.name()])
        .output()
        .map_err(|e| Error::io(script, e))?;
    let stdout = lit_engine::kernel_lab::pytorch::script_stdout(script, &out)?;
    let timings = lit_engine::bench::parse_pytorch_timings(&stdout);
    let bench = lit_engine::bench::bench_name(spec);
    lit_engine::bench::best_pytorch_config(&timings, &bench, spec.precision)
        .cloned()
        .ok_or_else(|| {
            Error::External(format!(
                "{}: no {bench} timing in {} precision on {torch_device} in its output",
                script.display(),
                spec.precision
            ))
        })
}

/// `--threads` for the whole process; the number of CPU threads in use.
fn init_threads(threads: Option<usize>) -> Result<usize> {
    let threads = threads
        .map(|n| lit_engine::limits::thread_count("--threads", n))
        .transpose()?;
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::Config(format!("--threads {n}: {e}")))?;
    }
    Ok(threads.unwrap_or_else(rayon::current_num_threads))
}

/// `lit-engine bench kernels`: the kernel lab's table (or JSON lines); fails when a check fails.
fn kernels_command(args: BenchArgs) -> Result<()> {
    use lit_engine::kernel_lab::{self, pytorch};
    let k = args.kernels;
    let opts = kernel_lab::LabOptions {
        filter: k.filter,
        batch: args.batch,
        warmup: args.warmup,
        reps: args.steps,
        precision: args.precision,
        quick: k.quick,
        corrupt: None,
    };
    if k.list {
        print!(
            "{}",
            pytorch::cases_jsonl(&kernel_lab::select_cases(&opts)?, opts.precision)
        );
        return Ok(());
    }
    let threads = init_threads(args.threads)?;
    let dev = Device::select(args.device)?;
    let mut report = kernel_lab::run(&opts, &dev)?;
    if let Some(path) = &k.pytorch_results {
        report.attach_pytorch(&pytorch::read_results(path)?);
    } else if args.compare_pytorch {
        let cases: Vec<_> = report.results.iter().map(|r| r.case.clone()).collect();
        let script = match args.pytorch_script.as_path() {
            p if p == Path::new(DEFAULT_PYTORCH_SCRIPT) => Path::new("benches/pytorch_kernels.py"),
            p => p,
        };
        let run = pytorch::ScriptRun {
            script,
            torch_device: if dev.is_cuda() { "cuda" } else { "cpu" },
            threads,
            warmup: args.warmup,
            reps: args.steps,
        };
        report.attach_pytorch(&pytorch::run_script(&run, &cases, report.run_precision)?);
    }
    if k.json {
        report.json_lines().iter().for_each(|l| println!("{l}"));
    } else {
        print!("{}", report.render());
    }
    match report.failures() {
        0 => Ok(()),
        n => Err(Error::Device(format!(
            "bench kernels: {n} case(s) disagree with the reference on {}",
            dev.name()
        ))),
    }
}

/// `lit-engine bench`: times each requested kind of step and prints JSON lines.
pub(crate) fn bench_command(args: BenchArgs) -> Result<()> {
    if args.what == "kernels" {
        return kernels_command(args);
    }
    let BenchArgs {
        what,
        student,
        teacher,
        batch,
        num_classes,
        steps,
        warmup,
        threads,
        device,
        precision,
        compare_pytorch,
        graph,
        pytorch_script,
        kernels,
    } = args;
    if let Some(f) = kernels.filter {
        return Err(Error::Config(format!(
            "bench {what}: unexpected argument `{f}` (a FILTER is for `bench kernels`)"
        )));
    }
    let threads = init_threads(threads)?;
    let dev = Device::select(device)?;
    let kinds: Vec<&str> = match what.as_str() {
        "all" => vec!["step", "kd", "forward"],
        "step" | "kd" | "forward" => vec![what.as_str()],
        other => {
            return Err(Error::Config(format!(
            "bench: unknown benchmark `{other}`: expected step, kd, forward or all (or kernels, \
                 the kernel lab)"
        )))
        }
    };
    for kind in kinds {
        let spec = lit_engine::bench::BenchSpec {
            student: student.clone(),
            teacher: (kind != "step").then(|| teacher.clone()),
            batch,
            num_classes,
            warmup,
            steps,
            forward_only: kind == "forward",
            precision,
            graph,
        };
        let r = lit_engine::bench::run(&spec, &dev)?;
        println!(
            "{}",
            serde_json::json!({"bench": r.name, "engine": "lit-engine", "device": dev.name(),
                "batch": batch, "threads": threads, "precision": precision.name(), "best_ms": r.best_ms(),
                "median_ms": r.median_ms(), "launches_per_step": r.launches_per_step,
                "graph_kernels": r.graph_kernels})
        );
        if let Some(times) = &r.kernel_times {
            eprint!(
                "{}",
                kernel_time_table(times, r.times_ms.len(), r.median_ms())
            );
        }
        if compare_pytorch {
            // The emulator runs on the CPU, so its reference is PyTorch on the CPU.
            let torch_device = if dev.is_cuda() { "cuda" } else { "cpu" };
            let torch = pytorch_reference(&pytorch_script, kind, &spec, threads, torch_device)?;
            println!(
                "{}",
                serde_json::json!({"bench": r.name, "engine": "pytorch (best configuration)",
                    "config": torch.config, "precision": torch.precision, "best_ms": torch.ms,
                    "ratio_lit_over_pytorch": r.best_ms() / torch.ms})
            );
        }
    }
    Ok(())
}
