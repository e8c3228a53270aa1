//! The tape. A `Graph` records, for one step, every op applied to values that need a gradient;
//! `backward` walks it in reverse and accumulates gradients. A graph built with `record = false`
//! (teacher passes, evaluation) keeps nothing: each op's backward closure — and the activations it
//! captured — are dropped on the spot.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::elementwise::{add_forward, add_inplace};
use crate::params::ParamStore;
use crate::precision::Precision;
use crate::tensor::Tensor;

/// A value in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(usize);

/// Given the gradient of the op's output, the gradients of its inputs (in `inputs` order; `None`
/// where an input needs none).
pub type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    value: Tensor,
    grad: Option<Tensor>,
    requires_grad: bool,
    inputs: Vec<Var>,
    backward: Option<BackwardFn>,
    param: Option<String>,
}

/// The tape of one step: the values ops produced, their inputs and backward closures, and the
/// gradients `backward` accumulates. [`Var`]s index into it and are only valid for this graph.
pub struct Graph {
    device: Device,
    record: bool,
    /// How conv / GEMM ops round their operands (the run's `precision`).
    precision: Precision,
    nodes: Vec<Node>,
    /// Named observations made during the forward pass (e.g. LMA batch statistics), for logs
    /// and tests. Not part of the tape.
    stats: Vec<(String, Tensor)>,
    /// Whether layers also record per-element observations (LMA segment indices) in `stats`.
    detail: bool,
}

impl Graph {
    /// A graph that records ops for `backward`.
    pub fn new(device: &Device) -> Self {
        Graph {
            device: device.clone(),
            record: true,
            precision: Precision::Fp32,
            nodes: Vec::new(),
            stats: Vec::new(),
            detail: false,
        }
    }

    /// A graph that records nothing (inference, frozen teachers).
    pub fn no_grad(device: &Device) -> Self {
        Graph {
            device: device.clone(),
            record: false,
            precision: Precision::Fp32,
            nodes: Vec::new(),
            stats: Vec::new(),
            detail: false,
        }
    }

    /// The device every value on this graph lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The same graph with conv / GEMM operands rounded to `precision` (default fp32).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The precision conv / GEMM ops of this graph use.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The same graph with layers also recording per-element observations (LMA segment indices)
    /// in [`Graph::stats`]: for golden checks, off in training (a copy per call).
    pub fn with_detail(mut self) -> Self {
        self.detail = true;
        self
    }

    /// Whether layers record per-element observations (see [`Graph::with_detail`]).
    pub fn records_detail(&self) -> bool {
        self.detail
    }

    /// Whether ops keep their inputs and backward closures (false for a [`Graph::no_grad`] graph).
    pub fn is_recording(&self) -> bool {
        self.record
    }

    fn push(
        &mut self,
        value: Tensor,
        requires_grad: bool,
        inputs: Vec<Var>,
        backward: Option<BackwardFn>,
        param: Option<String>,
    ) -> Var {
        self.nodes.push(Node {
            value,
            grad: None,
            requires_grad,
            inputs,
            backward,
            param,
        });
        Var(self.nodes.len() - 1)
    }

    /// An input that needs no gradient (data, teacher outputs, targets).
    pub fn constant(&mut self, value: Tensor) -> Var {
        self.push(value, false, Vec::new(), None, None)
    }

    /// A leaf whose gradient is wanted (when recording).
    pub fn leaf(&mut self, value: Tensor) -> Var {
        let rg = self.record;
        self.push(value, rg, Vec::new(), None, None)
    }

    /// The parameter `name` of `store`. Trainable parameters get gradients, which
    /// [`Graph::accumulate_param_grads`] adds into the store after `backward`.
    pub fn param(&mut self, store: &ParamStore, name: &str) -> Result<Var> {
        let p = store.get(name)?;
        let rg = self.record && p.trainable;
        Ok(self.push(
            p.value.clone(),
            rg,
            Vec::new(),
            None,
            Some(name.to_string()),
        ))
    }

    /// Record an op: `value` is its output, `backward` maps the output gradient to input gradients.
    /// When no input requires a gradient the closure is dropped at once.
    pub fn op(
        &mut self,
        value: Tensor,
        inputs: &[Var],
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        let rg = self.record && inputs.iter().any(|v| self.nodes[v.0].requires_grad);
        let bw: Option<BackwardFn> = if rg { Some(Box::new(backward)) } else { None };
        self.push(
            value,
            rg,
            if rg { inputs.to_vec() } else { Vec::new() },
            bw,
            None,
        )
    }

    /// Record a named observation of this pass (a later one with the same name replaces it).
    pub fn record_stat(&mut self, name: impl Into<String>, value: Tensor) {
        let name = name.into();
        self.stats.retain(|(n, _)| *n != name);
        self.stats.push((name, value));
    }

    /// Observations recorded during this pass, in recording order.
    pub fn stats(&self) -> &[(String, Tensor)] {
        &self.stats
    }

    /// The forward value of `v`. Panics if `v` belongs to another graph.
    pub fn value(&self, v: Var) -> &Tensor {
        &self.nodes[v.0].value
    }
    /// Whether `v` depends on a leaf or parameter, so `backward` computes a gradient for it.
    pub fn requires_grad(&self, v: Var) -> bool {
        self.nodes[v.0].requires_grad
    }
    /// The gradient of the loss with respect to `v`, same shape as its value. `None` before
    /// `backward`, for values that need no gradient, and for intermediate values (their
    /// gradients are dropped once propagated; parameters and the root keep theirs).
    pub fn grad(&self, v: Var) -> Option<&Tensor> {
        self.nodes[v.0].grad.as_ref()
    }

    /// Back-propagate from `root`, seeded with `seed` (ones of the root's shape when `None`).
    pub fn backward_with(&mut self, root: Var, seed: Option<Tensor>) -> Result<()> {
        if !self.record {
            return Err(Error::op_arg(
                "backward",
                "backward on a graph built with no_grad",
            ));
        }
        let seed = match seed {
            Some(s) => {
                s.expect_shape("backward seed", self.nodes[root.0].value.shape())?;
                s
            }
            None => Tensor::full(self.nodes[root.0].value.shape(), 1.0, &self.device)?,
        };
        self.nodes[root.0].grad = Some(seed);
        for i in (0..=root.0).rev() {
            let Some(bw) = self.nodes[i].backward.take() else {
                continue;
            };
            let Some(gy) = self.nodes[i].grad.clone() else {
                continue;
            };
            let inputs = std::mem::take(&mut self.nodes[i].inputs);
            let grads = bw(&gy)?;
            if grads.len() != inputs.len() {
                return Err(Error::op_arg(
                    "backward",
                    format!(
                        "op at tape position {i} returned {} gradients for {} inputs",
                        grads.len(),
                        inputs.len()
                    ),
                ));
            }
            for (inp, g) in inputs.into_iter().zip(grads) {
                let Some(g) = g else { continue };
                let node = &mut self.nodes[inp.0];
                if !node.requires_grad {
                    continue;
                }
                g.expect_shape("gradient", node.value.shape())?;
                match &mut node.grad {
                    None => node.grad = Some(g),
                    // Sum into whichever buffer is not shared: adding into a shared one would
                    // first copy it (float addition commutes, so the result is the same).
                    Some(acc) if acc.is_unique() => add_inplace(acc, &g)?,
                    Some(acc) if g.is_unique() => {
                        let mut g = g;
                        add_inplace(&mut g, acc)?;
                        *acc = g;
                    }
                    Some(acc) => *acc = add_forward(acc, &g)?,
                }
            }
            // Intermediate gradients are not needed once propagated.
            if self.nodes[i].param.is_none() && i != root.0 {
                self.nodes[i].grad = None;
            }
        }
        Ok(())
    }

    /// Back-propagate from a scalar loss.
    pub fn backward(&mut self, loss: Var) -> Result<()> {
        if self.nodes[loss.0].value.numel() != 1 {
            return Err(Error::Shape(format!(
                "backward() needs a scalar loss, got shape {:?}",
                self.nodes[loss.0].value.shape()
            )));
        }
        self.backward_with(loss, None)
    }

    /// Add every parameter gradient of this graph into `store` (`+=`, so several graphs can share a step).
    pub fn accumulate_param_grads(&mut self, store: &mut ParamStore) -> Result<()> {
        for node in &mut self.nodes {
            let (Some(name), Some(g)) = (&node.param, node.grad.take()) else {
                continue;
            };
            store.accumulate_grad(name, g)?;
        }
        Ok(())
    }

    /// Drop the tape (every recorded value and backward closure), keeping the device, the
    /// precision and the statistics: after the backward pass the parameters it held are no
    /// longer shared, so the optimizer updates them in place instead of copying them first.
    pub fn release_tape(&mut self) {
        self.nodes = Vec::new();
    }
}
