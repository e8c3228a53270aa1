//! `cargo test --release --test golden [filter]`: every golden case that
//! `lit_engine::golden::locate` finds — the op cases vendored in `tests/golden-ops` (always) and
//! the full set (`LIT_GOLDEN_DIR`, else `../shared/golden`, when present) — on cpu and on the
//! emulator in both thread orders, plus cuda when usable (`LIT_GOLDEN_DEVICES=cpu,emu,emu-rev,cuda`
//! to choose; `name?` = optional). Ends with `golden: N passed, M failed, K skipped` (cases; a case
//! passes when it passes on every device it ran on) and exits non-zero on any failure, on a run that
//! finds or runs fewer cases than it must (see [`minimum`]), or when a filter matches no case.

use lit_engine::device::{Device, EmuOrder};
use lit_engine::golden::locate;
use lit_engine::golden::{run_case_measured, Case, Outcome};

fn fail(msg: &str) -> ! {
    println!("golden: FAILED: {msg}");
    std::process::exit(1);
}

/// The devices of `LIT_GOLDEN_DEVICES`, each with the name the output uses.
fn devices() -> Vec<(String, Device)> {
    let names =
        std::env::var("LIT_GOLDEN_DEVICES").unwrap_or_else(|_| "cpu,emu,emu-rev,cuda?".into());
    let mut devices = Vec::new();
    for name in names.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let optional = name.ends_with('?');
        let name = name.trim_end_matches('?');
        let dev = match name {
            "cpu" => Ok(Device::Cpu),
            "emu" => Device::emu_with_order(EmuOrder::Forward),
            "emu-rev" => Device::emu_with_order(EmuOrder::Reverse),
            "cuda" => Device::cuda(),
            other => fail(&format!(
                "LIT_GOLDEN_DEVICES: unknown device `{other}` (cpu, emu, emu-rev, cuda)"
            )),
        };
        let required = !optional || std::env::var("LIT_REQUIRE_GPU").as_deref() == Ok("1");
        match dev {
            Ok(d) => devices.push((name.to_string(), d)),
            Err(e) if required => fail(&format!("device `{name}` unusable: {e}")),
            Err(e) => println!("golden: SKIP device {name}: {e}"),
        }
    }
    if devices.is_empty() {
        fail("no device to run on");
    }
    devices
}

/// The vendored op cases, and those of them this engine implements (all, translation ops
/// included).
const VENDORED_OP_CASES: usize = 69;
const VENDORED_OP_CASES_IMPLEMENTED: usize = 69;
/// (cases that must be found, cases that must run — pass or fail — on some device): a run that
/// finds nothing, or under `LIT_REQUIRE_GOLDEN=1` finds no model-level case beside the vendored
/// op cases, cannot pass. The bound stays generic (any case set, e.g. the 87 cases of
/// `../shared/golden`, all 87 implemented): `LIT_GOLDEN_MIN_CASES=N` asks for N of each.
fn minimum() -> (usize, usize) {
    match std::env::var("LIT_GOLDEN_MIN_CASES") {
        Ok(v) => {
            let n = v
                .parse()
                .unwrap_or_else(|_| fail(&format!("LIT_GOLDEN_MIN_CASES=`{v}` is not a count")));
            (n, n)
        }
        Err(_) if locate::required() => (VENDORED_OP_CASES + 1, VENDORED_OP_CASES_IMPLEMENTED + 1),
        Err(_) => (VENDORED_OP_CASES, VENDORED_OP_CASES_IMPLEMENTED),
    }
}

/// The largest margin ratio seen so far and where.
#[derive(Default)]
struct Worst {
    ratio: f64,
    at: String,
}

impl Worst {
    fn see(&mut self, ratio: f64, at: impl FnOnce() -> String) {
        if ratio > self.ratio {
            self.ratio = ratio;
            self.at = at();
        }
    }
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let devices = devices();
    match locate::full_dir() {
        Err(e) => fail(&e),
        Ok(Some(dir)) => println!("golden: vendored op cases + the full set in {}", dir.display()),
        Ok(None) if locate::required() => {
            fail("LIT_REQUIRE_GOLDEN=1 but the full golden set (LIT_GOLDEN_DIR or ../shared/golden) is absent")
        }
        Ok(None) => println!(
            "golden: WARNING: SKIP the model-level cases: the full golden set (LIT_GOLDEN_DIR or \
             ../shared/golden) is absent; only the vendored op cases run"
        ),
    }
    let described: Vec<String> = devices
        .iter()
        .map(|(n, d)| format!("{n} = {}", d.name()))
        .collect();
    println!("golden: devices: {}", described.join(", "));
    let files = locate::all_cases().unwrap_or_else(|e| fail(&e));
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    // Per device: the largest L2 error and single-element error relative to their units.
    let mut worst: Vec<(Worst, Worst)> = devices.iter().map(|_| Default::default()).collect();
    let t0 = std::time::Instant::now();
    for path in &files {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        if filter.as_ref().is_some_and(|f| !stem.contains(f.as_str())) {
            continue;
        }
        let case = match Case::load(path) {
            Ok(c) => c,
            Err(e) => {
                println!("FAIL {stem}: cannot load: {e}");
                failed += 1;
                continue;
            }
        };
        let (mut ran, mut bad, mut skip_reason) = (0, false, None);
        for ((dev_name, dev), (worst_l2, worst_element)) in devices.iter().zip(&mut worst) {
            let t = std::time::Instant::now();
            let (outcome, margins) = run_case_measured(&case, dev);
            for m in &margins {
                let at = || format!("{stem} {}", m.tensor);
                worst_element.see(m.closeness.worst_ratio(), at);
                worst_l2.see(m.closeness.l2_ratio(), at);
            }
            match outcome {
                Outcome::Passed => {
                    ran += 1;
                    println!(
                        "ok   {stem} [{dev_name}] ({:.0} ms)",
                        t.elapsed().as_secs_f64() * 1e3
                    );
                }
                Outcome::Failed(msgs) => {
                    ran += 1;
                    bad = true;
                    println!("FAIL {stem} [{dev_name}]");
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
            println!("SKIP {stem}: {}", skip_reason.unwrap_or_default());
        }
    }
    let names: Vec<&str> = devices.iter().map(|(n, _)| n.as_str()).collect();
    println!(
        "golden: {:.1} s on {}",
        t0.elapsed().as_secs_f64(),
        names.join(", ")
    );
    for ((dev_name, _), (l2, element)) in devices.iter().zip(&worst) {
        println!(
            "golden: [{dev_name}] largest L2 error {:.3} of its bound ({}); largest single-element \
             error {:.3} x (rel x max|b-d| + abs), bound {} x ({})",
            l2.ratio,
            l2.at,
            element.ratio,
            lit_engine::testing::WORST_ELEMENT_FACTOR,
            element.at
        );
    }
    println!("golden: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        std::process::exit(1);
    }
    let ran = passed + failed;
    if let Some(f) = &filter {
        if ran == 0 {
            fail(&format!("no case matching `{f}` ran"));
        }
    } else {
        let (min_found, min_ran) = minimum();
        if files.len() < min_found || ran < min_ran {
            fail(&format!(
                "{} cases found, {ran} ran; at least {min_found} must be found and {min_ran} run \
                 (LIT_GOLDEN_MIN_CASES)",
                files.len()
            ));
        }
    }
}
