//! The kernel lab (`lit-engine bench kernels`) on cpu and emu with tiny shapes: every selected
//! case passes its check, a wrong result is reported as FAIL and left untimed, and the JSON lines
//! parse. No timing is asserted.

mod cli_support;

use cli_support::{lit, work_dir};
use lit_engine::device::{launch_record, EmuOrder};
use lit_engine::kernel_lab::{self, LabOptions, Reference};
use lit_engine::{Device, Precision};

/// `--quick` options (batch 2), one warm-up and one timed run, the cases matching `filter`.
fn quick(filter: &str) -> LabOptions {
    let mut o = LabOptions::new(128);
    o.quick = true;
    o.warmup = 1;
    o.reps = 1;
    o.filter = Some(filter.into());
    o
}

fn emu_devices() -> [Device; 2] {
    [EmuOrder::Forward, EmuOrder::Reverse].map(|o| Device::emu_with_order(o).unwrap())
}

/// One pass of every op family, on the smallest shapes (and a 1-D conv, a strided conv, a
/// 1x1 shortcut conv).
const EVERY_FAMILY: &str = "conv2d_fwd_n2_c16_32x32_o32_k3_s2,conv2d_dx_n2_c64_8x8,\
    conv2d_dw_n2_c16_32x32_o64_k1,conv1d_dx_n2_c128_l254,bn_train_fwd_n2_c64_8x8,\
    bn_train_bwd_n2_c500,linear_fwd_n2_i64_o10,linear_dw_n2_i2048_o10,lma_fwd_n2_c25,\
    lma_bwd_n2_c500,softmax,kd_,quantize_u4_b256_16x3x3x3,sgd_step_resnet20";

#[test]
fn every_family_passes_on_emu_in_both_orders() {
    for dev in emu_devices() {
        let r = kernel_lab::run(&quick(EVERY_FAMILY), &dev).unwrap();
        let kernels: std::collections::HashSet<&str> = r
            .results
            .iter()
            .map(|c| c.case.kernel.label(&c.case.shape))
            .collect();
        assert!(kernels.len() >= 14, "{kernels:?}");
        for c in &r.results {
            assert_eq!(c.reference, Reference::Cpu, "{}", c.case.name);
            assert_eq!(
                c.verdict(),
                "PASS",
                "{} on {}: {:?}",
                c.case.name,
                dev.name(),
                c.rel_err
            );
            assert!(c.timing.is_some(), "{}", c.case.name);
        }
        assert_eq!(r.failures(), 0);
    }
}

#[test]
fn conv_and_gemm_pass_against_f64_on_cpu() {
    let r = kernel_lab::run(&quick(EVERY_FAMILY), &Device::Cpu).unwrap();
    for c in &r.results {
        let checked = c.case.rounds_operands();
        let want = if checked {
            Reference::CpuF64
        } else {
            Reference::SelfIsReference
        };
        assert_eq!(c.reference, want, "{}", c.case.name);
        assert_eq!(
            c.verdict(),
            if checked { "PASS" } else { "n/a" },
            "{}",
            c.case.name
        );
        assert!(c.timing.is_some());
    }
    assert!(r.results.iter().any(|c| c.case.rounds_operands()));
}

#[test]
fn a_wrong_result_is_reported_as_fail_and_not_timed() {
    let devices = [Device::Cpu, emu_devices()[0].clone()];
    for dev in devices {
        let mut o = quick("conv2d_dw_n2_c64_8x8,bn_train_fwd_n2_c64_8x8");
        o.corrupt = Some("conv2d_dw".into());
        let r = kernel_lab::run(&o, &dev).unwrap();
        let bad = r
            .results
            .iter()
            .find(|c| c.case.name.starts_with("conv2d_dw"))
            .unwrap();
        assert_eq!(bad.verdict(), "FAIL", "on {}", dev.name());
        assert!(bad.rel_err.unwrap() > bad.case.tolerance());
        assert!(bad.timing.is_none(), "a failed case must not be timed");
        assert_eq!(r.failures(), 1);
        assert!(r.render().contains("FAIL"));
        let line = r
            .json_lines()
            .into_iter()
            .find(|l| l["case"] == bad.case.name.as_str());
        assert_eq!(line.unwrap()["check"], "FAIL");
    }
}

#[test]
fn json_lines_parse_and_carry_the_table() {
    let dev = emu_devices()[1].clone();
    let r = kernel_lab::run(&quick("conv2d_fwd_n2_c3,bn_train_bwd_n2_c16"), &dev).unwrap();
    let lines = r.json_lines();
    assert_eq!(lines.len(), 1 + r.results.len());
    let header: serde_json::Value = serde_json::from_str(&lines[0].to_string()).unwrap();
    assert_eq!(header["kind"], "kernel_lab");
    assert!(header["peaks"]["copy_gbs"].as_f64().unwrap() > 0.0);
    assert!(header["peaks"]["gemm_tflops"].as_f64().unwrap() > 0.0);
    for l in &lines[1..] {
        let v: serde_json::Value = serde_json::from_str(&l.to_string()).unwrap();
        assert_eq!(v["check"], "PASS");
        assert!(v["median_ms"].as_f64().is_some());
        assert!(v["flops"].as_u64().is_some() || v["bytes"].as_u64().is_some());
        assert!(v["peak_fraction"].as_f64().is_some());
    }
}

/// `--precision bf16` runs the path training takes — the tensor-core kernels on emu, rounding
/// then the fp32 kernels on cpu — checked against references on rounded operands, and says so.
#[test]
fn a_requested_precision_runs_its_wired_path_and_passes_the_rounded_check() {
    let mut o = quick("linear_fwd_n2_i64_o10,conv2d_dx_n2_c64_8x8,conv1d_dw_n2_c16_l1014");
    o.precision = Precision::Bf16;
    for dev in [Device::Cpu, emu_devices()[1].clone()] {
        let (r, launches) = launch_record::record(|| kernel_lab::run(&o, &dev).unwrap());
        assert_eq!(r.run_precision, Precision::Bf16);
        assert_eq!(r.results.len(), 3);
        for c in &r.results {
            assert_eq!(
                c.verdict(),
                "PASS",
                "{} on {}: {:?}",
                c.case.name,
                dev.name(),
                c.rel_err
            );
        }
        let text = r.render();
        assert!(text.contains("precision bf16 (ran bf16)"), "{text}");
        if dev.is_cpu() {
            assert!(text.contains("round_operands_f32"), "{text}");
            continue;
        }
        assert!(text.contains("tensor-core kernels"), "{text}");
        for k in [
            "gemm_tc_bf16",
            "conv2d_tc_data_grad_bf16",
            "conv2d_tc_weight_grad_bf16",
        ] {
            assert!(launches.contains_key(k), "{k} did not run: {launches:?}");
        }
        for k in [
            "round_operands_f32",
            "conv2d_implicit_flip_f32",
            "conv2d_weight_grad_f32",
        ] {
            assert!(!launches.contains_key(k), "{k} ran: {launches:?}");
        }
    }
}

#[test]
fn cli_lists_runs_and_attaches_pytorch_results() {
    let dir = work_dir("kernel-lab", "cli");
    let filter = "softmax_n2_c10,linear_dx_n2_i64_o10";
    let list = lit(&["bench", "kernels", filter, "--quick", "--list"], &[]);
    assert!(list.status.success());
    let cases: Vec<serde_json::Value> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cases.len(), 2);
    assert!(cases.iter().any(|c| c["kernel"] == "linear_dx"));
    // What benches/pytorch_kernels.py would print for those cases.
    let torch = dir.join("torch.jsonl");
    let fake: String = cases
        .iter()
        .map(|c| format!("{{\"case\": {}, \"median_ms\": 0.5}}\n", c["case"]))
        .collect();
    std::fs::write(&torch, fake).unwrap();
    let args = [
        "bench", "kernels", filter, "--quick", "--steps", "1", "--warmup", "0",
    ];
    let out = lit(
        &[
            &args[..],
            &["--json", "--pytorch-results", torch.to_str().unwrap()],
        ]
        .concat(),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines[1..] {
        assert_eq!(l["pytorch_ms"], 0.5);
        assert!(l["ratio_lit_over_pytorch"].as_f64().unwrap() > 0.0);
    }
    let table = lit(&[&args[..], &["--precision", "fp16"]].concat(), &[]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success());
    assert!(
        text.contains("precision fp16 (ran fp16)") && text.contains("PASS"),
        "{text}"
    );
}
