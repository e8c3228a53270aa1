//! Evaluation: loss and accuracy of a model over a split, and of a saved checkpoint
//! (`lit-engine train` with `params.evaluate`).

use super::guards::check_finite;
use super::setup::{build_model, check_runnable, resolve_weights, truncate, Built};
use crate::checkpoint;
use crate::config::Config;
use crate::data::{self, Dataset, Loader, Split};
use crate::device::Device;
use crate::distill::{model_input, Batch, Compute};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::{EntryKind, ParamStore};
use crate::ops::loss::{accuracy, cross_entropy, Reduction};
use std::path::Path;

/// Loss and accuracy (fraction) over a split.
#[derive(Clone, Copy, Debug)]
pub struct Evaluation {
    /// Mean cross-entropy per example.
    pub loss: f64,
    /// Fraction of examples classified correctly.
    pub accuracy: f64,
    /// Examples evaluated.
    pub examples: usize,
}

/// Mean loss and accuracy of `model` over `data` (no tape), its convs and GEMMs at `at`'s
/// precision.
pub fn evaluate(
    model: &dyn Model,
    store: &mut ParamStore,
    data: &Dataset,
    batch_size: usize,
    max_batches: Option<usize>,
    at: Compute,
) -> Result<Evaluation> {
    let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    let loader = Loader::sequential(data, batch_size, at.device)?
        .input_shape(&model.input_shape())?
        .limit(max_batches);
    for batch in loader {
        let (x, y) = batch?;
        let batch = Batch {
            x,
            y,
            indices: None,
        };
        let mut g = at.no_grad();
        let x = model_input(&mut g, &batch);
        let logits = model.forward(&mut g, store, x, false)?;
        let loss = cross_entropy(&mut g, logits, &batch.y, Reduction::Sum)?;
        loss_sum += g.value(loss).item()? as f64;
        correct += accuracy(g.value(logits), &batch.y)?;
        seen += batch.len();
    }
    if seen == 0 {
        return Err(Error::data(
            Path::new(&data.name),
            format!("the {} split is empty", data.split.name()),
        ));
    }
    Ok(Evaluation {
        loss: loss_sum / seen as f64,
        accuracy: correct as f64 / seen as f64,
        examples: seen,
    })
}

/// Evaluate `checkpoint` with the config's student architecture on the test split.
pub fn run_evaluation(
    cfg: &Config,
    checkpoint_path: &Path,
    device: &Device,
    data_root: &Path,
) -> Result<Evaluation> {
    evaluate_checkpoint(cfg, checkpoint_path, device, data_root).map_err(|e| cfg.locate(e))
}

fn evaluate_checkpoint(
    cfg: &Config,
    checkpoint_path: &Path,
    device: &Device,
    data_root: &Path,
) -> Result<Evaluation> {
    let kind = check_runnable(cfg)?;
    let test = truncate(
        data::load(data_root, kind, Split::Test)?,
        cfg.hyperparameters.max_test_examples,
    );
    let Built { model, mut store } = build_model(cfg, kind, test.example_len(), device)?;
    let path = resolve_weights(checkpoint_path, "checkpoint")?;
    checkpoint::load_into(&path, &mut store)?;
    check_finite(&store).map_err(|name| {
        Error::Numeric(format!(
            "{}: parameter `{name}` holds non-finite values",
            path.display()
        ))
    })?;
    let h = &cfg.hyperparameters;
    let e = evaluate(
        model.as_ref(),
        &mut store,
        &test,
        h.batch_size,
        h.max_eval_batches,
        Compute {
            device,
            precision: cfg.precision()?,
        },
    )?;
    if !e.loss.is_finite() {
        return Err(Error::Numeric(format!(
            "{}: the test loss is {} (the model's outputs are not finite)",
            path.display(),
            e.loss
        )));
    }
    Ok(e)
}

/// The state_dict entries of a store that are parameters (for reports).
pub fn parameter_count(store: &ParamStore) -> usize {
    store
        .iter()
        .filter(|(_, p)| p.kind == EntryKind::Param)
        .map(|(_, p)| p.value.numel())
        .sum()
}
