//! The golden runner must be able to fail: a case whose expectation is perturbed beyond its
//! tolerance fails, one perturbed well inside it passes, and a case needing an unknown op is skipped.

use lit_engine::device::Device;
use lit_engine::golden::{Case, Data, Outcome};
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    std::env::var("LIT_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"))
}

fn perturbed(case: &str, tensor: &str, rel: f32) -> Option<Case> {
    let path = golden_dir().join(format!("{case}.json"));
    if !path.exists() {
        return None;
    }
    let mut c = Case::load(&path).unwrap();
    let Some(Data::F32 { values, .. }) = c.tensors.get_mut(tensor) else {
        panic!("{tensor} missing")
    };
    for (i, v) in values.iter_mut().enumerate() {
        *v *= 1.0 + if i % 2 == 0 { rel } else { -rel };
    }
    Some(c)
}

#[test]
fn a_perturbed_expectation_fails_and_a_tiny_perturbation_passes() {
    let Some(bad) = perturbed("op_linear", "expect.out", 1e-3) else {
        return eprintln!("golden dir absent: skipped");
    };
    assert!(
        matches!(
            lit_engine::golden::run_case(&bad, &Device::Cpu),
            Outcome::Failed(_)
        ),
        "a 1e-3 error must fail a rel=1e-5 case"
    );
    let ok = perturbed("op_linear", "expect.out", 1e-7).unwrap();
    assert!(matches!(
        lit_engine::golden::run_case(&ok, &Device::Cpu),
        Outcome::Passed
    ));
}

#[test]
fn a_wrong_gradient_fails() {
    let Some(bad) = perturbed("op_cross_entropy_mean", "expect.grad.logits", 1e-2) else {
        return;
    };
    assert!(matches!(
        lit_engine::golden::run_case(&bad, &Device::Cpu),
        Outcome::Failed(_)
    ));
}

#[test]
fn unknown_capabilities_are_skipped_with_a_reason() {
    let Some(mut c) = perturbed("op_relu", "expect.out", 0.0) else {
        return;
    };
    c.json["requires"] = serde_json::json!(["op:does_not_exist"]);
    match lit_engine::golden::run_case(&c, &Device::Cpu) {
        Outcome::Skipped(r) => assert!(r.contains("op:does_not_exist"), "{r}"),
        _ => panic!("expected a skip"),
    }
}

#[test]
fn a_model_case_with_a_wrong_sgd_step_or_bn_buffer_fails() {
    let Some(bad) = perturbed(
        "model_takd_resnet8_c10",
        "expect.param_after_step.fc.bias",
        1e-2,
    ) else {
        return;
    };
    assert!(matches!(
        lit_engine::golden::run_case(&bad, &Device::Cpu),
        Outcome::Failed(_)
    ));
    let bad = perturbed(
        "model_takd_resnet8_c10",
        "expect.buffer_after.bn1.running_var",
        1e-3,
    )
    .unwrap();
    assert!(matches!(
        lit_engine::golden::run_case(&bad, &Device::Cpu),
        Outcome::Failed(_)
    ));
}

#[test]
fn a_lit_case_with_a_wrong_section_output_fails() {
    let Some(bad) = perturbed(
        "distill_lit_r20_to_r20",
        "expect.student_section_out.2",
        1e-3,
    ) else {
        return;
    };
    assert!(matches!(
        lit_engine::golden::run_case(&bad, &Device::Cpu),
        Outcome::Failed(_)
    ));
}
