//! Layers with parameters, and the parameter store they live in.
//!
//! The store keeps parameters and buffers in registration order under their PyTorch `state_dict`
//! names, so checkpoints round-trip with PyTorch and order-dependent rules (the QD quantizer's
//! first/last exclusion) can be applied.

pub mod activation;
pub mod batchnorm;
pub mod conv;
pub mod embedding;
pub mod init;
pub mod linear;

use crate::error::{Error, Result};
use crate::ops::elementwise::add_inplace;
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Trained by the optimizer.
    Param,
    /// State that is saved but not trained (BatchNorm running statistics…), in the state_dict.
    Buffer,
    /// State outside PyTorch's state_dict (LMA running mean/std): saved in the sidecar only.
    State,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub value: Tensor,
    pub grad: Option<Tensor>,
    pub kind: EntryKind,
    /// False for frozen parameters: no gradient, skipped by the optimizer.
    pub trainable: bool,
}

#[derive(Default, Clone, Debug)]
pub struct ParamStore {
    entries: Vec<(String, Param)>,
    index: std::collections::HashMap<String, usize>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, name: &str, value: Tensor, kind: EntryKind) -> Result<()> {
        if self.index.contains_key(name) {
            return Err(Error::Other(format!("parameter `{name}` registered twice")));
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

    pub fn add_param(&mut self, name: &str, value: Tensor) -> Result<()> {
        self.insert(name, value, EntryKind::Param)
    }
    pub fn add_buffer(&mut self, name: &str, value: Tensor) -> Result<()> {
        self.insert(name, value, EntryKind::Buffer)
    }
    pub fn add_state(&mut self, name: &str, value: Tensor) -> Result<()> {
        self.insert(name, value, EntryKind::State)
    }

    pub fn get(&self, name: &str) -> Result<&Param> {
        self.index
            .get(name)
            .map(|&i| &self.entries[i].1)
            .ok_or_else(|| Error::Other(format!("no parameter named `{name}`")))
    }
    pub fn get_mut(&mut self, name: &str) -> Result<&mut Param> {
        match self.index.get(name) {
            Some(&i) => Ok(&mut self.entries[i].1),
            None => Err(Error::Other(format!("no parameter named `{name}`"))),
        }
    }
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

    pub fn set_trainable(&mut self, name: &str, trainable: bool) -> Result<()> {
        let p = self.get_mut(name)?;
        p.trainable = trainable && p.kind == EntryKind::Param;
        Ok(())
    }

    /// Entries in registration order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Param)> {
        self.entries.iter().map(|(n, p)| (n.as_str(), p))
    }
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Param)> {
        self.entries.iter_mut().map(|(n, p)| (n.as_str(), p))
    }
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|(n, _)| n.clone()).collect()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
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

    pub fn accumulate_grad(&mut self, name: &str, g: Tensor) -> Result<()> {
        let p = self.get_mut(name)?;
        match &mut p.grad {
            None => p.grad = Some(g),
            Some(acc) => add_inplace(acc, &g)?,
        }
        Ok(())
    }

    pub fn zero_grads(&mut self) {
        for (_, p) in &mut self.entries {
            p.grad = None;
        }
    }
}
