//! The teacher of a step: loaded from its weights file (or, for differentiable quantization
//! without a teacher, the full-precision student itself), checked, and evaluated once.

use super::context::RunContext;
use super::guards::{check_finite, weights_file};
use super::plan::PlanStep;
use super::setup::{build_arch, resolve_weights, Built};
use crate::checkpoint;
use crate::config::StageKind;
use crate::distill::kd::Teacher;
use crate::distill::teacher_cache::{uncachable_reason, CacheKey, KeyParts, TeacherCache};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use std::path::Path;

/// The teacher of `step` and its test accuracy (both `None` for a step without a teacher).
/// `student` is the store of the model the step trains, `input_shape` the shape its batches give
/// each example (the teacher sees the same batches).
pub(super) fn step_teacher(
    run: &mut RunContext,
    step: &PlanStep,
    student: &ParamStore,
    input_shape: &[usize],
) -> Result<(Option<Teacher>, Option<f64>)> {
    let cfg = run.cfg;
    let teacher = match &step.teacher {
        Some((arch, path)) => load_teacher(
            run,
            arch,
            path,
            if cfg.sequence.teacher.is_some() || step.kind == StageKind::Takd {
                "teacher weights"
            } else {
                "models.base_model_path"
            },
        )?,
        None if step.kind == StageKind::DifferentiableQuantization => {
            // Distil from the full-precision student itself.
            let Built { model, .. } = build_arch(
                &step.architecture,
                "models.training_architecture",
                run.data.kind,
                run.data.train.example_len(),
                cfg.hyperparameters.seed,
                run.device,
            )?;
            Teacher::new(model, student.clone())
        }
        None => return Ok((None, None)),
    };
    let (mut teacher, accuracy) = evaluate_teacher(run, step, teacher)?;
    if let Some((arch, path)) = &step.teacher {
        teacher.cache = open_cache(run, arch, path, &teacher, input_shape)?;
    }
    Ok((Some(teacher), Some(accuracy)))
}

/// The cache of the teacher's logits on the training split, or `None` with the reason logged:
/// off in the config, augmentation on (the teacher's inputs change every epoch), or a teacher
/// whose output depends on its call history.
fn open_cache(
    run: &RunContext,
    arch: &str,
    path: &Path,
    teacher: &Teacher,
    input_shape: &[usize],
) -> Result<Option<TeacherCache>> {
    let cfg = run.cfg;
    let off = |why: &str| {
        println!("teacher cache: off ({why})");
        Ok(None)
    };
    let Some(dir) = cfg.params.teacher_cache_dir() else {
        return off("params.teacher_cache: false");
    };
    if cfg.hyperparameters.augment {
        return off("augmentation gives the teacher new inputs every epoch");
    }
    if let Some(why) = uncachable_reason(&teacher.store) {
        return off(&why);
    }
    let data = &run.data.train;
    let key = CacheKey::new(&KeyParts {
        teacher_architecture: arch,
        teacher_file: &resolve_weights(path, "teacher weights")?,
        data,
        input_shape,
        precision: run.precision,
        device: run.device,
    })?;
    let cache = TeacherCache::open(key, &dir, data.len(), data.num_classes)?;
    println!(
        "teacher cache: {} {}",
        if cache.is_complete() {
            "using"
        } else {
            "filling"
        },
        cache.path().display()
    );
    Ok(Some(cache))
}

/// A teacher from its weights file (`key` names the config key in errors).
fn load_teacher(run: &RunContext, arch: &str, path: &Path, key: &str) -> Result<Teacher> {
    let path = resolve_weights(path, key)?;
    let Built { model, mut store } = build_arch(
        arch,
        "models.base_architecture",
        run.data.kind,
        run.data.train.example_len(),
        run.cfg.hyperparameters.seed,
        run.device,
    )?;
    checkpoint::load_into(&path, &mut store)?;
    check_finite(&store).map_err(|name| {
        Error::Numeric(format!(
            "the teacher weights in {} hold non-finite values (`{name}`): the teacher file \
             is broken; re-export or retrain the teacher",
            path.display()
        ))
    })?;
    Ok(Teacher::new(model, store))
}

/// The teacher's test accuracy (printed, and recorded for the report); a teacher whose outputs
/// are not finite is an error.
fn evaluate_teacher(
    run: &mut RunContext,
    step: &PlanStep,
    mut t: Teacher,
) -> Result<(Teacher, f64)> {
    let e = run.eval(t.model.as_ref(), &mut t.store)?;
    if !e.loss.is_finite() {
        let file = step
            .teacher
            .as_ref()
            .map_or("the student's own weights".to_string(), |(_, p)| {
                weights_file(p).display().to_string()
            });
        return Err(Error::Numeric(format!(
            "the teacher {} gives non-finite outputs (test loss {}): its weights in \
             {file} are broken (this is not a learning-rate problem)",
            t.model.architecture(),
            e.loss
        )));
    }
    println!(
        "teacher {}: test acc {:.2}%",
        t.model.architecture(),
        100.0 * e.accuracy
    );
    let arch = t.model.architecture().to_string();
    if !run.teachers.iter().any(|(a, _, _)| *a == arch) {
        run.teachers
            .push((arch, t.store.num_parameters(), e.accuracy));
    }
    Ok((t, e.accuracy))
}
