//! What a run is built from, before any training: the check that this build can run a config,
//! weights paths from the config, the data splits, and the models.

use crate::config::Config;
use crate::data::{self, Dataset, DatasetKind, Split};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::models::{self, Model};
use crate::nn::ParamStore;
use crate::rng::Rng;
use std::path::{Path, PathBuf};

/// A model with its parameters, built from a config on a device.
pub struct Built {
    /// The model (its layers).
    pub model: Box<dyn Model>,
    /// Its parameters and buffers.
    pub store: ParamStore,
}

fn strip_config_prefix(e: Error) -> String {
    match e {
        Error::Config(m) => m,
        other => other.to_string(),
    }
}

pub(super) fn config_error(key: &str, e: Error) -> Error {
    Error::Config(format!("{key}: {}", strip_config_prefix(e)))
}

/// Check what this build can run before any data is read: the data set and every architecture.
/// Errors name the config file and the line of the key.
pub fn check_runnable(cfg: &Config) -> Result<DatasetKind> {
    check_architectures(cfg).map_err(|e| cfg.locate(e))
}

fn check_architectures(cfg: &Config) -> Result<DatasetKind> {
    let kind = DatasetKind::from_name(&cfg.models.dataset)
        .map_err(|e| config_error("models.dataset", e))?;
    let classes = kind.num_classes();
    let student = cfg
        .student_architecture()
        .map_err(|e| config_error("models.student_activation", e))?;
    models::describe(&student, classes)
        .map_err(|e| config_error("models.training_architecture", e))?;
    if let Some(t) = &cfg.models.base_architecture {
        models::describe(t, classes).map_err(|e| config_error("models.base_architecture", e))?;
    }
    if let Some(chain) = cfg.sequence.takd.as_ref().and_then(|s| s.chain.as_ref()) {
        for (i, a) in chain.iter().enumerate() {
            models::describe(a, classes)
                .map_err(|e| config_error(&format!("sequence.takd.chain[{i}]"), e))?;
        }
    }
    Ok(kind)
}

/// A weights path from the config: a `.pth` resolves to the `.safetensors` beside it; a missing
/// file is an error naming `key` (and, for a lone `.pth`, how to convert it).
pub fn resolve_weights(path: &Path, key: &str) -> Result<PathBuf> {
    let is_pth = path.extension().is_some_and(|e| e == "pth" || e == "pt");
    let candidate = if is_pth {
        path.with_extension("safetensors")
    } else {
        path.to_path_buf()
    };
    if candidate.is_file() {
        return Ok(candidate);
    }
    if is_pth && path.is_file() {
        return Err(Error::Config(format!(
            "{key}: {} is a PyTorch pickle, which lit-engine does not read; convert it once with \
             python: `import torch, safetensors.torch` then \
             `safetensors.torch.save_file(torch.load('{p}', map_location='cpu'), '{s}')` \
             (if the file holds a whole model or a dict, save its state_dict)",
            path.display(),
            p = path.display(),
            s = candidate.display()
        )));
    }
    Err(Error::Config(format!(
        "{key}: {} not found{}",
        candidate.display(),
        if is_pth {
            format!(" (nor {})", path.display())
        } else {
            String::new()
        }
    )))
}

const SUBSET_SEED: u64 = 0x005e_b5e7;

/// The train and test splits, cut to `max_train_examples` / `max_test_examples`.
pub struct Splits {
    /// The data set.
    pub kind: DatasetKind,
    /// The training split.
    pub train: Dataset,
    /// The test split (evaluation after every epoch).
    pub test: Dataset,
}

impl Splits {
    /// Both splits in `device` memory when they fit there, so batches are made on the device
    /// ([`Dataset::place_on`]); on cpu, or when they do not fit, they stay on the host.
    pub fn place_on(self, device: &Device) -> Result<Splits> {
        Ok(Splits {
            train: self.train.place_on(device)?,
            test: self.test.place_on(device)?,
            ..self
        })
    }
}

/// A class-stratified subset of `n` examples, or all of them. The subset does not depend on
/// `hyperparameters.seed`, so runs with different seeds see the same examples.
pub(super) fn truncate(d: Dataset, n: Option<usize>) -> Dataset {
    match n.filter(|&n| n < d.len()) {
        Some(n) => d.stratified_subset(n, SUBSET_SEED),
        None => d,
    }
}

/// The train and test splits of `kind` under `root`, cut as the config says.
pub fn load_data(cfg: &Config, kind: DatasetKind, root: &Path) -> Result<Splits> {
    let h = &cfg.hyperparameters;
    Ok(Splits {
        kind,
        train: truncate(data::load(root, kind, Split::Train)?, h.max_train_examples),
        test: truncate(data::load(root, kind, Split::Test)?, h.max_test_examples),
    })
}

/// Build `arch` for the data set (seeded) and check it fits the data.
pub fn build_arch(
    arch: &str,
    key: &str,
    kind: DatasetKind,
    features: usize,
    seed: u64,
    device: &Device,
) -> Result<Built> {
    let mut store = ParamStore::new();
    let mut rng = Rng::new(seed);
    let model = models::build(arch, kind.num_classes(), &mut store, device, &mut rng)
        .map_err(|e| config_error(key, e))?;
    if model.input_features() != features || model.num_classes() != kind.num_classes() {
        return Err(Error::Config(format!(
            "{key}: `{}` takes {} features and predicts {} classes, \
             but {} has {features} features and {} classes",
            model.architecture(),
            model.input_features(),
            model.num_classes(),
            kind.name(),
            kind.num_classes()
        )));
    }
    Ok(Built { model, store })
}

/// Build the student (`models.training_architecture` with `student_activation`).
pub fn build_model(
    cfg: &Config,
    kind: DatasetKind,
    features: usize,
    device: &Device,
) -> Result<Built> {
    build_arch(
        &cfg.student_architecture()?,
        "models.training_architecture",
        kind,
        features,
        cfg.hyperparameters.seed,
        device,
    )
}
