//! Where a model registers its parameters: a real [`ParamStore`] (tensors allocated and
//! initialised on a device), or a *meta* build that only records names, shapes and kinds — so
//! that the 145M-parameter WRN-28-20 can be counted and its state_dict keys listed without
//! allocating anything.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::init::{init_tensor, Init};
use crate::nn::{EntryKind, ParamStore};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// One registered entry of a meta build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaEntry {
    /// The PyTorch state_dict name (`layer1.0.conv1.weight`).
    pub name: String,
    /// The tensor's shape, as a real build would allocate it.
    pub shape: Vec<usize>,
    /// Trained parameter, state_dict buffer, or sidecar state.
    pub kind: EntryKind,
}

enum Target<'a> {
    Store {
        store: &'a mut ParamStore,
        device: &'a Device,
        rng: &'a mut Rng,
    },
    Meta(Vec<MetaEntry>),
}

/// What a model's constructor registers its parameters through: a real store or a meta build,
/// with the total size kept under [`limits::MAX_MODEL_ELEMENTS`].
pub struct Builder<'a> {
    target: Target<'a>,
    /// The architecture being built (named in the size-limit error).
    model: String,
    /// Elements registered so far (parameters, buffers, state), kept under
    /// [`limits::MAX_MODEL_ELEMENTS`].
    elements: usize,
}

impl<'a> Builder<'a> {
    /// Register into `store`, tensors initialised on `device` from `rng`.
    pub fn new(store: &'a mut ParamStore, device: &'a Device, rng: &'a mut Rng) -> Builder<'a> {
        Builder {
            target: Target::Store { store, device, rng },
            model: String::new(),
            elements: 0,
        }
    }

    /// Record names and shapes only.
    pub fn meta() -> Builder<'static> {
        Builder {
            target: Target::Meta(Vec::new()),
            model: String::new(),
            elements: 0,
        }
    }

    /// Name the architecture being built, for the size-limit error.
    pub fn set_model(&mut self, name: &str) {
        self.model = name.to_string();
    }

    /// Elements registered so far.
    pub fn elements(&self) -> usize {
        self.elements
    }

    /// Whether a store build keeps its tensors in host memory (cpu and the emulator).
    pub fn on_host(&self) -> bool {
        matches!(&self.target, Target::Store { device, .. } if !device.is_cuda())
    }

    /// True for a meta build (nothing is allocated).
    pub fn is_meta(&self) -> bool {
        matches!(self.target, Target::Meta(_))
    }

    /// Count the elements of entry `name` before anything is allocated for it: the model's total
    /// must stay within [`limits::MAX_MODEL_ELEMENTS`], computed without overflow.
    fn account(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        let total = limits::checked_product(shape).and_then(|n| self.elements.checked_add(n));
        match total {
            Some(total) if total <= limits::MAX_MODEL_ELEMENTS => {
                self.elements = total;
                Ok(())
            }
            _ => Err(Error::Config(format!(
                "architecture `{}` is too large: at `{name}` (shape {shape:?}) it passes the \
                 limit of {} parameter and buffer elements",
                self.model,
                limits::MAX_MODEL_ELEMENTS
            ))),
        }
    }

    /// The entries of a meta build, in registration order (empty for a store build).
    pub fn into_meta(self) -> Vec<MetaEntry> {
        match self.target {
            Target::Meta(v) => v,
            Target::Store { .. } => Vec::new(),
        }
    }

    /// A seed for the model's own random streams (dropout masks); 0 in a meta build.
    pub fn seed(&mut self) -> u64 {
        match &mut self.target {
            Target::Store { rng, .. } => ((rng.next_u32() as u64) << 32) | rng.next_u32() as u64,
            Target::Meta(_) => 0,
        }
    }

    fn record(&mut self, name: &str, shape: &[usize], kind: EntryKind) -> Result<()> {
        let Target::Meta(v) = &mut self.target else {
            unreachable!("record is only called on meta builds")
        };
        if v.iter().any(|e| e.name == name) {
            return Err(Error::Param(format!("parameter `{name}` registered twice")));
        }
        v.push(MetaEntry {
            name: name.to_string(),
            shape: shape.to_vec(),
            kind,
        });
        Ok(())
    }

    /// A trained parameter drawn from `init` (`fan_in`/`fan_out` as PyTorch computes them).
    pub fn param(
        &mut self,
        name: &str,
        shape: &[usize],
        init: Init,
        fan_in: usize,
        fan_out: usize,
    ) -> Result<()> {
        self.account(name, shape)?;
        match &mut self.target {
            Target::Store { store, device, rng } => {
                let t = init_tensor(init, shape, fan_in, fan_out, device, rng)?;
                store.add_param(name, t)
            }
            Target::Meta(_) => self.record(name, shape, EntryKind::Param),
        }
    }

    /// A state_dict buffer filled with `value` (BatchNorm running statistics, `num_batches_tracked`).
    pub fn buffer(&mut self, name: &str, shape: &[usize], value: f32) -> Result<()> {
        self.account(name, shape)?;
        match &mut self.target {
            Target::Store { store, device, .. } => {
                store.add_buffer(name, Tensor::full(shape, value, device)?)
            }
            Target::Meta(_) => self.record(name, shape, EntryKind::Buffer),
        }
    }

    /// State outside the state_dict (LMA running mean/std) filled with `value`.
    pub fn state(&mut self, name: &str, shape: &[usize], value: f32) -> Result<()> {
        self.account(name, shape)?;
        match &mut self.target {
            Target::Store { store, device, .. } => {
                store.add_state(name, Tensor::full(shape, value, device)?)
            }
            Target::Meta(_) => self.record(name, shape, EntryKind::State),
        }
    }
}

/// Number of trained scalars of a meta build, as `sum(p.numel() for p in model.parameters())`.
pub fn count_params(entries: &[MetaEntry]) -> usize {
    entries
        .iter()
        .filter(|e| e.kind == EntryKind::Param)
        .map(|e| e.shape.iter().product::<usize>())
        .sum()
}
