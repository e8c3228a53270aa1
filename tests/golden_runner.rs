//! The golden runner must be able to fail: a case whose expectation is perturbed beyond its
//! tolerance fails, one perturbed well inside it passes, and a case needing an unknown op is skipped.

use lit_engine::device::Device;
use lit_engine::golden::{locate, Case, Data, Outcome};

/// The case with every element of `tensor` scaled by 1 ± `rel` (alternating), or `None` after a
/// printed `SKIP` for a model-level case when the full golden set is absent.
fn perturbed(case: &str, tensor: &str, rel: f32) -> Option<Case> {
    let path = locate::case_or_skip(case)?;
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
        return;
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

#[test]
fn a_translation_step_with_a_wrong_clip_or_update_fails() {
    let case = "nmt_qd_l2_e7_h16_v27x23_b4_nll_clip";
    let Some(bad) = perturbed(case, "expect.clip_coef", 1e-3) else {
        return;
    };
    assert!(matches!(
        lit_engine::golden::run_case(&bad, &Device::Cpu),
        Outcome::Failed(_)
    ));
    let bad = perturbed(case, "expect.param_after_step.generator.0.weight", 1e-3).unwrap();
    assert!(matches!(
        lit_engine::golden::run_case(&bad, &Device::Cpu),
        Outcome::Failed(_)
    ));
    let ok = perturbed(case, "expect.param_after_step.generator.0.weight", 0.0).unwrap();
    assert!(matches!(
        lit_engine::golden::run_case(&ok, &Device::Cpu),
        Outcome::Passed
    ));
}

#[test]
fn a_transformer_step_with_a_wrong_rate_or_segment_fails() {
    let case = "nmt_lma_lma_d8_l1_ff64_b3_kd";
    let Some(bad) = perturbed(case, "expect.lr", 1e-3) else {
        return;
    };
    assert!(matches!(
        lit_engine::golden::run_case(&bad, &Device::Cpu),
        Outcome::Failed(_)
    ));
    let mut bad = perturbed(case, "expect.lr", 0.0).unwrap();
    let name = "expect.lma_segment_index.encoder.transformer.0.feed_forward.act";
    let Some(Data::I64 { values, .. }) = bad.tensors.get_mut(name) else {
        panic!("{name} missing")
    };
    values[7] = (values[7] + 1) % 8;
    match lit_engine::golden::run_case(&bad, &Device::Cpu) {
        Outcome::Failed(msgs) => assert!(msgs.iter().any(|m| m.contains(name)), "{msgs:?}"),
        _ => panic!("one wrong segment index must fail"),
    }
}

/// The name of a case's largest F32 expectation.
fn largest_expectation(c: &Case) -> String {
    c.tensors
        .iter()
        .filter(|(n, d)| n.starts_with("expect.") && matches!(d, Data::F32 { .. }))
        .max_by_key(|(n, d)| (d.shape().iter().product::<usize>(), n.to_string()))
        .map(|(n, _)| n.clone())
        .expect("an F32 expectation")
}

/// One wrong element that the whole-tensor L2 rule alone lets through (it adds 0.8 of the L2
/// bound) fails the case by the worst-element bound, on a vendored op case (always) and on a model
/// case (with the full set).
#[test]
fn a_single_wrong_element_fails_although_the_l2_error_is_within_its_bound() {
    use lit_engine::testing::{closeness, WORST_ELEMENT_FACTOR};
    for case in ["op_quantize_b2_n1000", "model_takd_resnet8_c10"] {
        let Some(path) = locate::case_or_skip(case) else {
            continue;
        };
        let mut c = Case::load(&path).unwrap();
        assert!(matches!(
            lit_engine::golden::run_case(&c, &Device::Cpu),
            Outcome::Passed
        ));
        let name = largest_expectation(&c);
        let meta = c.json["tensors"][&name].clone();
        let (rel, abs) = (meta["rel"].as_f64().unwrap(), meta["abs"].as_f64().unwrap());
        let delta = meta["delta_from"].as_str().map(|d| match &c.tensors[d] {
            Data::F32 { values, .. } => values.clone(),
            Data::I64 { .. } => panic!("{d} is not F32"),
        });
        let Some(Data::F32 { values, .. }) = c.tensors.get_mut(&name) else {
            unreachable!()
        };
        let bounds = closeness(values, values, delta.as_deref(), rel, abs).unwrap();
        let shift = 0.8 * bounds.l2_bound;
        assert!(
            shift > 1.5 * WORST_ELEMENT_FACTOR * bounds.worst_unit,
            "{case} {name}: too small for this test ({} elements)",
            values.len()
        );
        let i = values.len() / 2;
        values[i] += shift as f32;
        let (outcome, margins) = lit_engine::golden::run_case_measured(&c, &Device::Cpu);
        let m = margins.iter().find(|m| m.tensor == name).unwrap();
        assert!(
            m.closeness.l2_ratio() <= 1.0,
            "{case} {name}: the L2 rule alone must let this error through"
        );
        match outcome {
            Outcome::Failed(msgs) => assert!(
                msgs.iter()
                    .any(|m| m.contains(&name) && m.contains(&format!("worst at [{i}]"))),
                "{msgs:?}"
            ),
            _ => panic!("{case}: one element off by {shift:e} in {name} must fail"),
        }
    }
}
