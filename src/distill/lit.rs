//! LIT (Koratana et al., ICML 2019): blockwise intermediate-representation training. Per batch
//! the teacher runs once (eval, no tape) giving features `f_0..f_n` and logits; the student runs
//! in full (`s = student(x)`), and each chosen student section `k` is also fed the teacher's
//! `f_{k-1}` and regressed onto `f_k`:
//!
//! `L = beta·KD(s, teacher logits) + (1 − beta)·Σ_k MSE(section_k(f_{k-1}), f_k)`, halved when
//! `divide_by_2` (SPEC-NOTES §9).
//!
//! Defaults by family (the LIT code): ResNets (`resnet*`, `takd-resnet*`, `wrn-*`) copy the stem
//! and head (everything outside the sections) from the teacher, freeze them and run them in eval
//! mode, and halve the loss; VDCNN and other families train every part and do not halve.

use super::kd::Teacher;
use super::step::{finish_step, PendingStep, StepEnv};
use super::{model_input, Batch};
use crate::autograd::Var;
use crate::config::{Hyperparameters, Stage};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::{EntryKind, ParamStore};
use crate::ops;
use crate::ops::kd::KdLoss;
use crate::optim::Sgd;

/// The resolved settings of a LIT stage.
#[derive(Clone, Debug)]
pub struct LitSetup {
    /// Weight of the KD term; `1 − beta` weighs the intermediate regressions.
    pub beta: f64,
    /// Halve the total loss (the LIT code does for ResNets).
    pub divide_by_2: bool,
    /// Copy the teacher's stem and head into the student and freeze them.
    pub freeze_stem_head: bool,
    /// 1-based sections trained by intermediate regression.
    pub sections: Vec<usize>,
    /// The KD loss on the logits.
    pub kd: KdLoss,
}

/// True for the ResNet families, whose LIT code halves the loss and freezes stem and head.
pub fn is_resnet_family(arch: &str) -> bool {
    let a = arch.trim();
    a.starts_with("resnet") || a.starts_with("takd-resnet") || a.starts_with("wrn-")
}

/// Default `beta` when neither the stage nor `hyperparameters.beta` sets one (LIT's ResNets).
pub const DEFAULT_BETA: f64 = 0.75;

impl LitSetup {
    /// The settings of a LIT stage for `student` learning from `teacher` (same number of sections).
    pub fn new(
        stage: &Stage,
        h: &Hyperparameters,
        kd: KdLoss,
        student: &dyn Model,
        teacher: &dyn Model,
    ) -> Result<LitSetup> {
        let n = student.num_sections();
        if n == 0 {
            return Err(Error::Config(format!(
                "sequence.lit: the student `{}` has no sections; LIT needs a sectioned model \
                 (resnet*, takd-resnet*, wrn-*, vdcnn*)",
                student.architecture()
            )));
        }
        if teacher.num_sections() != n {
            return Err(Error::Config(format!(
                "sequence.lit: the teacher `{}` has {} sections and the student `{}` {n}; \
                 LIT pairs them section by section",
                teacher.architecture(),
                teacher.num_sections(),
                student.architecture()
            )));
        }
        let sections = stage
            .sections()
            .map(<[usize]>::to_vec)
            .unwrap_or_else(|| (1..=n).collect());
        if let Some(&bad) = sections.iter().find(|&&k| k == 0 || k > n) {
            return Err(Error::Config(format!(
                "sequence.lit.sections: {bad} is not a section of `{}` (1..={n})",
                student.architecture()
            )));
        }
        let resnet = is_resnet_family(student.architecture());
        Ok(LitSetup {
            beta: stage.beta().or(h.beta).unwrap_or(DEFAULT_BETA),
            divide_by_2: stage.divide_by_2().unwrap_or(resnet),
            freeze_stem_head: stage.freeze_stem_head().unwrap_or(resnet),
            sections,
            kd,
        })
    }
}

/// Store entries outside every section (the stem and the head).
pub fn stem_and_head_entries(model: &dyn Model, store: &ParamStore) -> Vec<String> {
    let prefixes: Vec<String> = model
        .section_names()
        .into_iter()
        .map(|s| format!("{s}."))
        .collect();
    store
        .names()
        .into_iter()
        .filter(|n| !prefixes.iter().any(|p| n.starts_with(p)))
        .collect()
}

/// Copy the teacher's stem and head into the student and freeze their parameters.
pub fn copy_and_freeze_stem_head(
    student: &dyn Model,
    store: &mut ParamStore,
    teacher: &Teacher,
) -> Result<()> {
    let names = stem_and_head_entries(student, store);
    for name in &names {
        let t = teacher.store.get(name).map_err(|_| {
            Error::Config(format!(
                "sequence.lit: the teacher `{}` has no `{name}` to copy into the student's stem/head; \
                 set `freeze_stem_head: false`",
                teacher.model.architecture()
            ))
        })?;
        let s = store.get(name)?;
        if t.value.shape() != s.value.shape() {
            return Err(Error::Config(format!(
                "sequence.lit: `{name}` is {:?} in the teacher and {:?} in the student, so the stem/head \
                 cannot be copied; set `freeze_stem_head: false`",
                t.value.shape(),
                s.value.shape()
            )));
        }
        let value = t.value.to_device(s.value.device())?;
        store.set(name, value)?;
        if store.get(name)?.kind == EntryKind::Param {
            store.set_trainable(name, false)?;
        }
    }
    Ok(())
}

/// Make every parameter trainable again (after a LIT stage, for `full_model`).
pub fn unfreeze_all(store: &mut ParamStore) -> Result<()> {
    for name in store.names() {
        store.set_trainable(&name, true)?;
    }
    Ok(())
}

/// One LIT step (see the module documentation).
pub fn lit_step(
    student: &dyn Model,
    store: &mut ParamStore,
    opt: &mut Sgd,
    batch: &Batch,
    teacher: &mut Teacher,
    setup: &LitSetup,
    env: &mut StepEnv,
) -> Result<PendingStep> {
    let (features, teacher_logits) = teacher.features_and_logits(batch, env.at)?;
    let outer_train = !setup.freeze_stem_head;
    let mut g = env.at.graph();
    let x = model_input(&mut g, batch);
    let mut h = student.stem(&mut g, store, x, outer_train)?;
    for i in 0..student.num_sections() {
        let train = outer_train || setup.sections.contains(&(i + 1));
        h = student.forward_section(i, &mut g, store, h, train)?;
    }
    let s = student.head(&mut g, store, h, outer_train)?;
    let kd = ops::kd::kd_loss(&mut g, s, &teacher_logits, &batch.y, setup.kd)?;

    let mut ir_total: Option<Var> = None;
    for &k in &setup.sections {
        let fed = g.constant(features[k - 1].clone());
        let out = student.forward_section(k - 1, &mut g, store, fed, true)?;
        if g.value(out).shape() != features[k].shape() {
            return Err(Error::Shape(format!(
                "LIT: student section {k} gives {:?} but the teacher's feature {k} is {:?}; \
                 the two models' sections must have the same output shapes",
                g.value(out).shape(),
                features[k].shape()
            )));
        }
        let ir = ops::kd::mse(&mut g, out, &features[k])?;
        ir_total = Some(match ir_total {
            None => ir,
            Some(t) => ops::elementwise::add(&mut g, t, ir)?,
        });
    }
    let beta = setup.beta as f32;
    let mut loss = ops::elementwise::scale(&mut g, kd.loss, beta)?;
    if let Some(ir) = ir_total {
        let ir = ops::elementwise::scale(&mut g, ir, 1.0 - beta)?;
        loss = ops::elementwise::add(&mut g, loss, ir)?;
    }
    if setup.divide_by_2 {
        loss = ops::elementwise::scale(&mut g, loss, 0.5)?;
    }
    finish_step(
        &mut g,
        loss,
        s,
        batch,
        store,
        Vec::new(),
        env,
        |store, skip| opt.step_unless(store, skip),
    )
}
