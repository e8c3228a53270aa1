//! The plan of a run: the config's stages as steps in run order, each a stage applied to one
//! model (the teacher, a TAKD assistant, or the student) with the teacher it learns from.

use crate::config::{Config, Stage, StageKind};
use crate::distill::takd;
use crate::error::{Error, Result};
use std::path::PathBuf;

/// Where a `teacher` stage saves the teacher: `base_model_path` as `.safetensors`, else
/// `<save_directory>/teacher-<arch>.safetensors`.
pub fn teacher_output_path(cfg: &Config) -> PathBuf {
    match &cfg.models.base_model_path {
        Some(p) => p.with_extension("safetensors"),
        None => cfg.params.save_directory.join(format!(
            "teacher-{}.safetensors",
            cfg.models.base_architecture.as_deref().unwrap_or("model")
        )),
    }
}

/// One step of a run: a stage applied to one model.
#[derive(Clone, Debug)]
pub struct PlanStep {
    /// The stage's kind (its method).
    pub kind: StageKind,
    /// The stage's settings.
    pub stage: Stage,
    /// The model this step trains.
    pub architecture: String,
    /// The teacher's architecture and weights file (`None`: no teacher; for differentiable
    /// quantization, the full-precision student itself).
    pub teacher: Option<(String, PathBuf)>,
    /// An intermediate model (teacher, TAKD assistant) saved here when its step ends; `None` for
    /// the student's steps.
    pub save_to: Option<PathBuf>,
}

impl PlanStep {
    /// Epochs of the step's stage.
    pub fn epochs(&self) -> usize {
        self.stage.epochs
    }

    /// True for the student's steps (the model the run delivers).
    pub fn is_student(&self) -> bool {
        self.save_to.is_none()
    }
}

/// The steps of `cfg` in run order: the teacher, the TAKD assistants (they do not depend on the
/// student), then the student's stages.
pub fn plan(cfg: &Config) -> Result<Vec<PlanStep>> {
    let student = cfg.student_architecture()?;
    let m = &cfg.models;
    let teacher_weights = || -> PathBuf {
        if cfg.sequence.teacher.is_some() {
            teacher_output_path(cfg)
        } else {
            m.base_model_path.clone().unwrap_or_default()
        }
    };
    let base = m.base_architecture.clone();
    let mut steps = Vec::new();
    if let Some(stage) = &cfg.sequence.teacher {
        steps.push(PlanStep {
            kind: StageKind::Teacher,
            stage: Stage::Teacher(stage.clone()),
            architecture: base.clone().unwrap_or_default(),
            teacher: None,
            save_to: Some(teacher_output_path(cfg)),
        });
    }
    let mut student_steps = Vec::new();
    for (kind, stage) in cfg.sequence.stages() {
        let teacher = base.clone().map(|b| (b, teacher_weights()));
        match kind {
            StageKind::Teacher => {}
            StageKind::Train => student_steps.push(PlanStep {
                kind,
                stage: stage.clone(),
                architecture: student.clone(),
                teacher: None,
                save_to: None,
            }),
            StageKind::Takd => {
                let (t_arch, t_path) = teacher.ok_or_else(|| {
                    Error::Config("models.base_architecture is required by `takd`".into())
                })?;
                let best = cfg.params.checkpoint_path();
                let stem = best.file_stem().unwrap_or_default().to_string_lossy();
                let links = takd::chain_links(
                    &t_arch,
                    &t_path,
                    stage.chain().unwrap_or(&[]),
                    &student,
                    &cfg.params.save_directory,
                    &stem,
                );
                for link in links {
                    let step = PlanStep {
                        kind,
                        stage: stage.clone(),
                        architecture: link.architecture,
                        teacher: Some((link.teacher_architecture, link.teacher_weights)),
                        save_to: link.save_to.clone(),
                    };
                    if link.save_to.is_some() {
                        steps.push(step);
                    } else {
                        student_steps.push(step);
                    }
                }
            }
            _ => student_steps.push(PlanStep {
                kind,
                stage: stage.clone(),
                architecture: student.clone(),
                teacher,
                save_to: None,
            }),
        }
    }
    steps.extend(student_steps);
    Ok(steps)
}
