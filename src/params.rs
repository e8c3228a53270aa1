//! The parameter store: parameters, buffers and state under their PyTorch `state_dict` names,
//! in registration order, so checkpoints round-trip with PyTorch and order-dependent rules (the
//! QD quantizer's first/last exclusion) can be applied. It sits below the tape
//! ([`crate::autograd`] reads parameters from it) and the layers ([`crate::nn`], which
//! re-exports it).

use crate::error::{Error, Result};
use crate::ops::elementwise::add_inplace;
use crate::tensor::Tensor;

/// What an entry of the store is, which decides where it is saved and whether it is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Trained by the optimizer.
    Param,
    /// State that is saved but not trained (BatchNorm running statistics…), in the state_dict.
    Buffer,
    /// State outside PyTorch's state_dict (LMA running mean/std): saved in the sidecar only.
    State,
}

/// One entry of the store.
#[derive(Clone, Debug)]
pub struct Param {
    /// Its current value.
    pub value: Tensor,
    /// The gradient accumulated since the last [`ParamStore::zero_grads`].
    pub grad: Option<Tensor>,
    /// Parameter, buffer or state.
    pub kind: EntryKind,
    /// False for frozen parameters: no gradient, skipped by the optimizer.
    pub trainable: bool,
}

/// Named entries in registration order (a name is registered once).
#[derive(Default, Clone, Debug)]
pub struct ParamStore {
    entries: Vec<(String, Param)>,
    index: std::collections::HashMap<String, usize>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, name: &str, value: Tensor, kind: EntryKind) -> Result<()> {
        if self.index.contains_key(name) {
            return Err(Error::Param(format!("parameter `{name}` registered twice")));
        }
        self.index.insert(name.to_string(), self.entries.len());
        self.entries.push((
            name.to_string(),
            Param {
                value,
                grad: None,
                kind,
                trainable: kind == EntryKind::Param,
            },
        ));
        Ok(())
    }

    /// Register a trained parameter.
    pub fn add_param(&mut self, name: &str, value: Tensor) -> Result<()> {
        self.insert(name, value, EntryKind::Param)
    }
    /// Register a state_dict buffer.
    pub fn add_buffer(&mut self, name: &str, value: Tensor) -> Result<()> {
        self.insert(name, value, EntryKind::Buffer)
    }
    /// Register state saved outside the state_dict.
    pub fn add_state(&mut self, name: &str, value: Tensor) -> Result<()> {
        self.insert(name, value, EntryKind::State)
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Result<&Param> {
        self.index
            .get(name)
            .map(|&i| &self.entries[i].1)
            .ok_or_else(|| Error::Param(format!("no parameter named `{name}`")))
    }
    /// The entry named `name`, to change.
    pub fn get_mut(&mut self, name: &str) -> Result<&mut Param> {
        match self.index.get(name) {
            Some(&i) => Ok(&mut self.entries[i].1),
            None => Err(Error::Param(format!("no parameter named `{name}`"))),
        }
    }
    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Replace a value (same shape required).
    pub fn set(&mut self, name: &str, value: Tensor) -> Result<()> {
        let p = self.get_mut(name)?;
        value.expect_shape(name, p.value.shape())?;
        p.value = value;
        Ok(())
    }

    /// Freeze (`false`) or unfreeze a parameter; buffers and state stay untrained.
    pub fn set_trainable(&mut self, name: &str, trainable: bool) -> Result<()> {
        let p = self.get_mut(name)?;
        p.trainable = trainable && p.kind == EntryKind::Param;
        Ok(())
    }

    /// Entries in registration order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Param)> {
        self.entries.iter().map(|(n, p)| (n.as_str(), p))
    }
    /// Entries in registration order, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Param)> {
        self.entries.iter_mut().map(|(n, p)| (n.as_str(), p))
    }
    /// Names in registration order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|(n, _)| n.clone()).collect()
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of trainable-kind scalars (buffers excluded), as PyTorch counts parameters.
    pub fn num_parameters(&self) -> usize {
        self.entries
            .iter()
            .filter(|(_, p)| p.kind == EntryKind::Param)
            .map(|(_, p)| p.value.numel())
            .sum()
    }

    /// Add `g` to the entry's gradient (set it when there is none).
    pub fn accumulate_grad(&mut self, name: &str, g: Tensor) -> Result<()> {
        let p = self.get_mut(name)?;
        match &mut p.grad {
            None => p.grad = Some(g),
            Some(acc) => add_inplace(acc, &g)?,
        }
        Ok(())
    }

    /// Drop every gradient.
    pub fn zero_grads(&mut self) {
        for (_, p) in &mut self.entries {
            p.grad = None;
        }
    }
}
