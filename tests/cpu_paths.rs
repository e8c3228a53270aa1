//! The CPU path of a machine without AVX-512, run on any machine: every golden case (the vendored
//! op cases, plus the full set when present) on cpu in a child process with `LIT_CPU_AVX512=off`,
//! which turns the AVX-512 GEMM, implicit-GEMM convolutions, Winograd and BatchNorm backward sums
//! off for that process (the `gemm` crate behind explicit im2col, and the generic loops, instead).
//! The normal path is the golden harness's `cpu` run; the GEMM paths themselves:
//! `src/ops/cpu_gemm/tests.rs`.

use lit_engine::device::Device;
use lit_engine::golden::{locate, run_case, Case, Outcome};
use lit_engine::ops::cpu_gemm::{fast_f32_available, GemmPath};
use std::process::Command;

const CHILD: &str = "LIT_CPU_PATHS_CHILD";

#[test]
fn every_golden_case_passes_on_cpu_with_the_portable_gemm_path() {
    if std::env::var(CHILD).is_err() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "every_golden_case_passes_on_cpu_with_the_portable_gemm_path",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env("LIT_CPU_AVX512", "off")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "the portable-path child failed:\n{text}"
        );
        assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
        return;
    }
    assert_eq!(GemmPath::active(), GemmPath::Portable);
    assert!(!fast_f32_available());
    let (mut passed, mut failures) = (0, Vec::new());
    for path in locate::all_cases().unwrap() {
        let case = Case::load(&path).unwrap();
        match run_case(&case, &Device::Cpu) {
            Outcome::Passed => passed += 1,
            Outcome::Failed(msgs) => failures.push(format!("{}: {}", case.name, msgs.join("; "))),
            Outcome::Skipped(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every implemented vendored op case at least (the golden harness holds the exact counts).
    assert!(passed >= 65, "only {passed} cases passed");
    eprintln!("{passed} golden cases passed on the portable cpu path");
}
