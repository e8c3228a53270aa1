//! The `lit-engine` command line. Every failure ends as one `error: …` line and a non-zero exit.

use clap::{Args, Parser, Subcommand};
use lit_engine::config::Config;
use lit_engine::device::DeviceRequest;
use lit_engine::{data, nmt, train, Device, Error, Precision, Result};
use std::path::{Path, PathBuf};

// The command line's own files (not part of the library).
#[path = "cli/bench.rs"]
mod bench_cli;
use bench_cli::{bench_command, BenchArgs};

#[derive(Parser)]
#[command(
    name = "lit-engine",
    version,
    about = "Model compression by distillation on its own GPU compute engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the experiment described by a YAML config (see configs/README.md).
    Train {
        config: PathBuf,
        /// cpu | cuda | emu | auto (overrides LIT_DEVICE and the config's `device`).
        #[arg(long)]
        device: Option<DeviceRequest>,
        /// Data root (default: LIT_DATA_DIR, else ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override the number of epochs of every stage.
        #[arg(long)]
        epochs: Option<usize>,
        /// Conv / GEMM operand precision: fp32 | tf32 | bf16 | fp16 (overrides the config's
        /// `precision`; default fp32).
        #[arg(long)]
        precision: Option<Precision>,
        /// Continue the run from its committed state (`<name>-last.state`). Changes of rate,
        /// schedule and epochs are applied; other config changes are refused.
        #[arg(long)]
        resume: bool,
        /// With --resume: accept config changes that make it another experiment (data set,
        /// architectures, batch size, method parameters).
        #[arg(long, requires = "resume")]
        allow_config_change: bool,
    },
    /// Evaluate a checkpoint on the test split of the config's data set.
    Eval {
        checkpoint: PathBuf,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        device: Option<DeviceRequest>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Translate the sentences on stdin (one a line) with a translation checkpoint; the
    /// vocabularies are read beside it. Beam search, `replace_unk` (SPEC-TRANSLATION §4).
    Translate {
        checkpoint: PathBuf,
        /// The translation config the checkpoint was trained with.
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        device: Option<DeviceRequest>,
        /// Hypotheses per sentence (1: greedy).
        #[arg(long, default_value_t = 5)]
        beam: usize,
        /// Sentences decoded together (default: the seed's, QD 1 and LMA's Transformer 10).
        #[arg(long)]
        batch_size: Option<usize>,
    },
    /// Score a file of translations (one a line) against one or more reference files: Moses
    /// `multi-bleu.perl -lc` (the seeds' number) and sacreBLEU (13a tokenisation, mixed case).
    Bleu {
        hypotheses: PathBuf,
        /// Reference files, line-aligned with the hypotheses.
        #[arg(required = true)]
        references: Vec<PathBuf>,
    },
    /// Show which devices are usable here, and why not.
    Devices,
    /// Time whole training steps (JSON lines); `--compare-pytorch` also runs the PyTorch reference
    /// (benches/pytorch_steps.py) on the same machine and prints the ratio.
    Bench(BenchArgs),
    /// Layers, parameters, multiply-adds/FLOPs per example and size of an architecture.
    Info {
        /// Architecture name, e.g. resnet20, wrn-16-4, vdcnn9-maxpool, cfn-spec0-lma8.
        arch: String,
        #[arg(long, default_value_t = 10)]
        num_classes: usize,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Run a campaign: base configs × a grid of config values × seeds, each trial in its own
    /// folder, resumable (see README.md, "Campaigns"); `sweep report` summarises one.
    Sweep(SweepArgs),
    /// Data set utilities.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

/// The options of `lit-engine sweep`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct SweepArgs {
    #[command(subcommand)]
    command: Option<SweepCommand>,
    /// The campaign file (YAML).
    campaign: Option<PathBuf>,
    /// Stop every trial cleanly (state saved) before this much time is spent, e.g. 9m, 1h30m.
    #[arg(long)]
    time_budget: Option<String>,
    /// Time kept back from --time-budget for the last batch, evaluation and save (default: a
    /// tenth of the budget, between 1s and 60s).
    #[arg(long)]
    reserve: Option<String>,
    /// Trials run side by side (threads; on the CPU they share the cores).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Run the trials that failed before again.
    #[arg(long)]
    retry_failed: bool,
    /// cpu | cuda | emu | auto (overrides LIT_DEVICE and the configs' `device`).
    #[arg(long)]
    device: Option<DeviceRequest>,
    /// Data root (default: LIT_DATA_DIR, else ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum SweepCommand {
    /// Results table (markdown, JSON) and learning curves (SVG) of a campaign, written into its
    /// output folder.
    Report {
        /// The campaign's output folder or its campaign file.
        campaign: PathBuf,
        /// Print JSON instead of markdown.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Write the first N train / M test examples of an idx data set (MNIST layout) as gzip'd idx.
    SubsetIdx {
        /// Folder with train-images-idx3-ubyte[.gz] and the three other canonical files.
        #[arg(long)]
        from: PathBuf,
        /// Output folder (created).
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        train: usize,
        #[arg(long)]
        test: usize,
    },
    /// Convert an image tree (train/<class>/*.jpg|png, test/<class>/…) or a .tar/.tar.xz of one
    /// into a binary data set under a data root (e.g. the CIFAR-10 JPEG copy → cifar-10-batches-bin/).
    Import {
        /// Folder, .tar or .tar.xz (read as a stream, never unpacked to disk).
        #[arg(long)]
        from: PathBuf,
        /// Data root to write into (the data set's canonical folder is created there).
        #[arg(long)]
        to: PathBuf,
        #[arg(long, value_enum, default_value_t = ImportFormat::Cifar10)]
        format: ImportFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ImportFormat {
    /// CIFAR-10 binary: cifar-10-batches-bin/{data_batch_1..5.bin,test_batch.bin}.
    Cifar10,
}

/// `--device` wins, then `LIT_DEVICE`, then the config's `device`, then auto.
fn pick_device(flag: Option<DeviceRequest>, config_device: Option<&str>) -> Result<Device> {
    let request = match flag {
        Some(r) => Some(r),
        None if std::env::var_os("LIT_DEVICE").is_some() => None,
        None => config_device.map(str::parse).transpose()?,
    };
    Device::select(request)
}

fn load_config(path: &Path, epochs: Option<usize>, precision: Option<Precision>) -> Result<Config> {
    let mut cfg = Config::load(path)?;
    if let Some(n) = epochs {
        cfg.override_epochs(n)?;
    }
    if let Some(p) = precision {
        cfg.override_precision(p)?;
    }
    Ok(cfg)
}

/// What `train` takes besides the config file and the run options.
struct TrainFlags {
    device: Option<DeviceRequest>,
    data_dir: Option<PathBuf>,
    epochs: Option<usize>,
    precision: Option<Precision>,
}

fn train_command(config: &Path, flags: TrainFlags, opts: train::trainer::RunOptions) -> Result<()> {
    let TrainFlags {
        device,
        data_dir,
        epochs,
        precision,
    } = flags;
    let root = data::data_root(data_dir.as_deref());
    if nmt::config::is_translation_file(config)? {
        let mut cfg = nmt::config::TranslationConfig::load(config)?;
        if let Some(p) = precision.filter(|p| *p != Precision::Fp32) {
            return Err(Error::Config(format!(
                "--precision {p:?}: translation configs train in fp32 only (the translation \
                 layers have no reduced-precision path yet); drop the flag"
            )));
        }
        if let Some(n) = epochs {
            cfg.override_epochs(n)?;
        }
        let dev = pick_device(device, cfg.device.as_deref())?;
        train::interrupt::install();
        let run = nmt::train::RunOptions {
            resume: opts.resume,
            stop_after_epochs: None,
        };
        let summary = nmt::train::run(&cfg, &dev, &root, run)?;
        println!("metrics: {}", summary.metrics_file.display());
        return Ok(());
    }
    let cfg = load_config(config, epochs, precision)?;
    train::trainer::check_runnable(&cfg)?;
    let dev = pick_device(device, cfg.device.as_deref())?;
    if cfg.params.evaluate {
        let ckpt = cfg
            .models
            .training_checkpoint
            .clone()
            .expect("validated: evaluate needs a checkpoint");
        let e = train::trainer::run_evaluation(&cfg, &ckpt, &dev, &root)?;
        print_evaluation(&ckpt, &e);
        return Ok(());
    }
    train::interrupt::install();
    let summary = match train::trainer::run_with(&cfg, &dev, &root, opts) {
        Err(Error::Interrupted { signal, message }) => {
            return Err(Error::Interrupted {
                signal,
                message: format!(
                    "{message} (`lit-engine train {} --resume`)",
                    config.display()
                ),
            })
        }
        other => other?,
    };
    print_summary(&summary);
    Ok(())
}

fn print_summary(summary: &train::trainer::RunSummary) {
    if !summary.report.rows.is_empty() {
        print!("{}", summary.report.render());
    }
    if let Some(last) = summary.epochs.last() {
        println!("final test accuracy {:.2}%", 100.0 * last.test_acc);
    }
    if let (Some(best), Some(path)) = (summary.best_test_acc, &summary.checkpoint) {
        println!(
            "best test accuracy {:.2}%: saved {} (+ sidecar {})",
            100.0 * best,
            path.display(),
            train::checkpoint::sidecar_path(path).display()
        );
    }
    if let Some((_, size)) = &summary.quantized_size {
        println!(
            "quantized student size: {} bytes packed ({} bytes in full precision)",
            size.packed_bytes, size.full_precision_bytes
        );
        if let Some((path, bytes)) = &size.file {
            println!("packed student on disk: {} ({bytes} bytes)", path.display());
        }
    }
    if let Some(last) = &summary.last_checkpoint {
        println!("resumable state: {}", last.display());
    }
    println!("metrics: {}", summary.metrics_file.display());
}

fn eval_command(
    checkpoint: &Path,
    config: &Path,
    device: Option<DeviceRequest>,
    data_dir: Option<PathBuf>,
) -> Result<()> {
    let cfg = load_config(config, None, None)?;
    let dev = pick_device(device, cfg.device.as_deref())?;
    let root = data::data_root(data_dir.as_deref());
    let e = train::trainer::run_evaluation(&cfg, checkpoint, &dev, &root)?;
    print_evaluation(checkpoint, &e);
    Ok(())
}

/// Config errors found after parsing (unknown data set, model…) get the config file in front.
fn in_config(path: &Path, r: Result<()>) -> Result<()> {
    match r {
        Err(Error::Config(m)) if !m.contains(&path.display().to_string()) => {
            Err(Error::Config(format!("{}: {m}", path.display())))
        }
        other => other,
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train {
            config,
            device,
            data_dir,
            epochs,
            precision,
            resume,
            allow_config_change,
        } => in_config(
            &config,
            train_command(
                &config,
                TrainFlags {
                    device,
                    data_dir,
                    epochs,
                    precision,
                },
                train::trainer::RunOptions {
                    resume,
                    allow_config_change,
                },
            ),
        ),
        Command::Eval {
            checkpoint,
            config,
            device,
            data_dir,
        } => in_config(
            &config,
            eval_command(&checkpoint, &config, device, data_dir),
        ),
        Command::Translate {
            checkpoint,
            config,
            device,
            beam,
            batch_size,
        } => {
            let cfg = nmt::config::TranslationConfig::load(&config)?;
            let dev = pick_device(device, cfg.device.as_deref())?;
            let out = nmt::train::translate::translate_text(
                &cfg,
                &checkpoint,
                &dev,
                std::io::stdin(),
                (beam, batch_size),
            )?;
            for line in out {
                println!("{line}");
            }
            Ok(())
        }
        Command::Bleu {
            hypotheses,
            references,
        } => {
            let (mb, sb) = nmt::bleu::score_files(&hypotheses, &references)?;
            println!("{}", mb.multi_bleu_line());
            let n = references.len();
            let noun = if n == 1 { "reference" } else { "references" };
            println!("sacreBLEU = {:.2} ({n} {noun})", sb.score);
            Ok(())
        }
        Command::Bench(args) => bench_command(args),
        Command::Info {
            arch,
            num_classes,
            json,
        } => {
            let info = lit_engine::models::info::model_info(&arch, num_classes)?;
            if json {
                println!("{:#}", info.to_json());
            } else {
                print!("{}", info.render());
            }
            Ok(())
        }
        Command::Devices => {
            devices_command();
            Ok(())
        }
        Command::Data { command } => data_command(command),
        Command::Sweep(args) => sweep_command(args),
    }
}

/// `lit-engine sweep <campaign>` and `lit-engine sweep report <folder|campaign>`.
fn sweep_command(args: SweepArgs) -> Result<()> {
    use lit_engine::sweep;
    if let Some(SweepCommand::Report { campaign, json }) = args.command {
        let output = match campaign.is_dir() {
            true => campaign,
            false => sweep::Campaign::load(&campaign)?.output,
        };
        let report = sweep::CampaignReport::read(&output)?;
        let files = report.write()?;
        match json {
            true => println!("{}", report.json()?),
            false => print!("{}", report.markdown()),
        }
        for f in files {
            eprintln!("wrote {}", f.display());
        }
        return Ok(());
    }
    let Some(file) = args.campaign else {
        return Err(Error::Config(
            "sweep: give a campaign file (`lit-engine sweep campaign.yml`) or `sweep report`"
                .into(),
        ));
    };
    let duration = |flag: &str, v: Option<String>| {
        v.map(|t| sweep::parse_duration(&t).map_err(|m| Error::Config(format!("{flag}: {m}"))))
            .transpose()
    };
    let parallel = lit_engine::limits::at_most(
        "--parallel",
        args.parallel,
        lit_engine::limits::MAX_PARALLEL_TRIALS,
    )?;
    let campaign = sweep::Campaign::load(&file)?;
    let opts = sweep::SweepOptions {
        device: args.device.map(|r| Device::select(Some(r))).transpose()?,
        data_root: args.data_dir,
        time_budget: duration("--time-budget", args.time_budget)?,
        reserve: duration("--reserve", args.reserve)?,
        parallel,
        retry_failed: args.retry_failed,
        clock: None,
    };
    train::interrupt::install();
    let outcome = sweep::run_campaign(&campaign, &opts)?;
    let (done, failed, total) = outcome.state.counts();
    let again = format!("`lit-engine sweep {}`", file.display());
    match outcome.stopped {
        Some(sweep::Stopped::Signal(signal)) => Err(Error::Interrupted {
            signal,
            message: format!("campaign stopped by a signal, state saved; {again} continues it"),
        }),
        Some(sweep::Stopped::TimeBudget) => {
            println!(
                "time budget reached: {done}/{total} trials done, state saved; {again} continues"
            );
            Ok(())
        }
        None if failed > 0 => Err(Error::Config(format!(
            "{failed} of {total} trials failed (errors in {}); `lit-engine sweep {} \
             --retry-failed` runs them again",
            campaign.output.join(sweep::STATE_FILE).display(),
            file.display()
        ))),
        None => {
            println!(
                "campaign complete: {done}/{total} trials; `lit-engine sweep report {}` for the table",
                campaign.output.display()
            );
            Ok(())
        }
    }
}

/// Whether two folder paths name the same existing folder.
fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn print_evaluation(checkpoint: &Path, e: &train::trainer::Evaluation) {
    println!(
        "{}: test loss {:.4}  test acc {:.2}% ({} examples)",
        checkpoint.display(),
        e.loss,
        100.0 * e.accuracy,
        e.examples
    );
}

/// Die quietly on a closed stdout (`lit-engine info resnet20 | head`) as command-line tools do,
/// instead of Rust's default of ignoring SIGPIPE and panicking in `println!`.
fn restore_sigpipe() {
    #[cfg(unix)]
    {
        extern "C" {
            fn signal(signum: std::ffi::c_int, handler: usize) -> usize;
        }
        const SIGPIPE: std::ffi::c_int = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: resetting one signal to its default disposition before any thread starts.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}

fn main() {
    restore_sigpipe();
    lit_engine::device::tune_host_allocator();
    // A panic is a bug, but the user still gets one line, not a backtrace dump.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error (a bug in lit-engine): {msg}{at}");
    }));
    let cli = Cli::parse();
    let result = std::panic::catch_unwind(|| run(cli));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(Error::Interrupted { signal, message })) => {
            eprintln!("{message}");
            std::process::exit(train::interrupt::exit_code(signal));
        }
        Ok(Err(e)) => {
            eprintln!("error: {}", e.one_line());
            std::process::exit(1);
        }
        Err(_) => std::process::exit(101),
    }
}

/// `lit-engine devices`: which devices are usable here, and why not.
fn devices_command() {
    println!("cpu: usable");
    match Device::cuda() {
        Ok(d) => println!("cuda: usable ({})", d.name()),
        Err(e) => println!("cuda: not usable: {e}"),
    }
    match Device::emu() {
        Ok(d) => println!("emu: usable ({})", d.name()),
        Err(e) => println!("emu: not usable: {e}"),
    }
    match std::env::var("LIT_DEVICE") {
        Ok(v) => println!("LIT_DEVICE={v}"),
        Err(_) => {
            println!("LIT_DEVICE is not set: `auto` picks cuda when usable, else cpu")
        }
    }
}

/// `lit-engine data …`.
fn data_command(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::SubsetIdx {
            from,
            to,
            train,
            test,
        } => {
            if same_folder(&from, &to) {
                return Err(Error::Config(format!(
                    "data subset-idx: --to {} is the source folder; the subset would replace \
                 the full data set (choose another folder)",
                    to.display()
                )));
            }
            let report = data::subset_idx(&from, &to, train, test)?;
            for (path, n) in report.files {
                println!("wrote {} ({n} examples)", path.display());
            }
            Ok(())
        }
        DataCommand::Import { from, to, format } => {
            let format = match format {
                ImportFormat::Cifar10 => data::images::ImportFormat::Cifar10,
            };
            let r = data::images::import(&from, &to, format, true)?;
            println!(
                "imported {} train / {} test images of {} classes in {:.1} s",
                r.train,
                r.test,
                r.classes.len(),
                r.seconds
            );
            for (k, class) in r.classes.iter().enumerate() {
                println!(
                    "  {k}: {class} ({} train, {} test)",
                    r.train_per_class[k], r.test_per_class[k]
                );
            }
            for path in &r.files {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}
