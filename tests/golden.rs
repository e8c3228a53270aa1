//! `cargo test --release --test golden`: every case in `LIT_GOLDEN_DIR` (default `../shared/golden`)
//! on cpu and on the emulator (plus cuda when usable; `LIT_GOLDEN_DEVICES=cpu,emu,cuda` to choose).
//! Ends with `golden: N passed, M failed, K skipped` (cases; a case passes when it passes on every
//! device it ran on) and exits non-zero on any failure.

use lit_engine::device::Device;
use lit_engine::golden::{case_files, run_case, Case, Outcome};
use std::path::PathBuf;

fn main() {
    let dir = std::env::var("LIT_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"));
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let device_names =
        std::env::var("LIT_GOLDEN_DEVICES").unwrap_or_else(|_| "cpu,emu,cuda?".into());
    let mut devices = Vec::new();
    for name in device_names
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let optional = name.ends_with('?');
        let dev = match name.trim_end_matches('?') {
            "cpu" => Ok(Device::Cpu),
            "emu" => Device::emu(),
            "cuda" => Device::cuda(),
            other => panic!("LIT_GOLDEN_DEVICES: unknown device `{other}`"),
        };
        let required = !optional || std::env::var("LIT_REQUIRE_GPU").as_deref() == Ok("1");
        match dev {
            Ok(d) => devices.push(d),
            Err(e) if required => {
                eprintln!("golden: device `{name}` unusable: {e}");
                std::process::exit(1);
            }
            Err(e) => println!(
                "golden: skipping device {}: {e}",
                name.trim_end_matches('?')
            ),
        }
    }
    let files = match case_files(&dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("golden: cannot list {}: {e}", dir.display());
            std::process::exit(1);
        }
    };
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let t0 = std::time::Instant::now();
    for path in files {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        if filter.as_ref().is_some_and(|f| !stem.contains(f.as_str())) {
            continue;
        }
        let case = match Case::load(&path) {
            Ok(c) => c,
            Err(e) => {
                println!("FAIL {stem}: cannot load: {e}");
                failed += 1;
                continue;
            }
        };
        let (mut ran, mut bad, mut skip_reason) = (0, false, None);
        for dev in &devices {
            let t = std::time::Instant::now();
            match run_case(&case, dev) {
                Outcome::Passed => {
                    ran += 1;
                    println!(
                        "ok   {stem} [{}] ({:.0} ms)",
                        dev.name(),
                        t.elapsed().as_secs_f64() * 1e3
                    );
                }
                Outcome::Failed(msgs) => {
                    ran += 1;
                    bad = true;
                    println!("FAIL {stem} [{}]", dev.name());
                    for m in msgs {
                        println!("       {m}");
                    }
                }
                Outcome::Skipped(r) => skip_reason = Some(r),
            }
        }
        if bad {
            failed += 1;
        } else if ran > 0 {
            passed += 1;
        } else {
            skipped += 1;
            println!("skip {stem}: {}", skip_reason.unwrap_or_default());
        }
    }
    println!(
        "golden: {:.1} s on {}",
        t0.elapsed().as_secs_f64(),
        devices
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("golden: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        std::process::exit(1);
    }
}
