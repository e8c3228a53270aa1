//! `BatchNorm`: PyTorch's `nn.BatchNorm1d` / `nn.BatchNorm2d` (the op handles `[N, F]`, `[N, C, L]`
//! and `[N, C, H, W]` alike). Entries, in PyTorch's registration order: `weight` (1), `bias` (0)
//! when affine, then the buffers `running_mean` (0), `running_var` (1), `num_batches_tracked` (an
//! f32 scalar holding an integer; checkpoints write it as I64).

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::batchnorm::{batch_norm, Activation, BatchNormArgs, Mode, RunningStats};
use crate::tensor::Tensor;

/// One BatchNorm layer: its entries' names and its configuration (the values live in the
/// store).
#[derive(Clone, Debug)]
pub struct BatchNorm {
    /// Name prefix (`layer1.0.bn1` → `layer1.0.bn1.weight`, …; empty → `weight`, …).
    pub prefix: String,
    /// `C`, dimension 1 of the input.
    pub channels: usize,
    /// With a learned per-channel weight and bias.
    pub affine: bool,
    /// PyTorch convention: `running <- (1-momentum)*running + momentum*batch` (default 0.1).
    pub momentum: f32,
    /// Added to the variance.
    pub eps: f32,
}

fn name(prefix: &str, entry: &str) -> String {
    if prefix.is_empty() {
        entry.to_string()
    } else {
        format!("{prefix}.{entry}")
    }
}

impl BatchNorm {
    /// The layer `prefix` over `channels` channels, registering nothing (the models register
    /// its entries through their builder): channels positive, momentum in `[0, 1]`, eps
    /// positive.
    pub fn config(
        prefix: &str,
        channels: usize,
        affine: bool,
        momentum: f32,
        eps: f32,
    ) -> Result<BatchNorm> {
        if channels == 0 {
            return Err(Error::op_arg(
                "BatchNorm::new",
                format!("batch norm `{prefix}`: the number of channels must be positive"),
            ));
        }
        if !(0.0..=1.0).contains(&momentum) || eps.is_nan() || eps <= 0.0 {
            return Err(Error::op_arg("BatchNorm::new", format!(
                "batch norm `{prefix}`: momentum {momentum} must be in [0, 1] and eps {eps} positive"
            )));
        }
        Ok(BatchNorm {
            prefix: prefix.to_string(),
            channels,
            affine,
            momentum,
            eps,
        })
    }

    /// [`BatchNorm::config`], with its entries registered in `store`: weight 1 and bias 0 when
    /// affine, running mean 0, running variance 1, counter 0.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        channels: usize,
        affine: bool,
        momentum: f32,
        eps: f32,
        device: &Device,
    ) -> Result<BatchNorm> {
        let bn = BatchNorm::config(prefix, channels, affine, momentum, eps)?;
        if affine {
            store.add_param(&bn.entry("weight"), Tensor::full(&[channels], 1.0, device)?)?;
            store.add_param(&bn.entry("bias"), Tensor::zeros(&[channels], device)?)?;
        }
        store.add_buffer(
            &bn.entry("running_mean"),
            Tensor::zeros(&[channels], device)?,
        )?;
        store.add_buffer(
            &bn.entry("running_var"),
            Tensor::full(&[channels], 1.0, device)?,
        )?;
        store.add_buffer(
            &bn.entry("num_batches_tracked"),
            Tensor::scalar(0.0, device)?,
        )?;
        Ok(bn)
    }

    /// Full name of one of this layer's entries (`weight`, `running_mean`, …).
    pub fn entry(&self, entry: &str) -> String {
        name(&self.prefix, entry)
    }

    /// `x [N, C, ...]` → same shape. Train mode normalises with the batch statistics and writes the
    /// updated running statistics (and counter) back into `store`; eval mode uses the stored ones.
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
    ) -> Result<Var> {
        self.forward_act(g, store, x, train, false, None)
    }

    /// `self.forward(x)`, then (fused into the same op) `+ residual` and a ReLU: with a residual
    /// the op is `relu(bn(x) + residual)`, else `relu(bn(x))` when `relu`. Same values and
    /// gradients as the separate ops, less CPU time.
    pub fn forward_act(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        train: bool,
        relu: bool,
        residual: Option<Var>,
    ) -> Result<Var> {
        let shape = g.value(x).shape().to_vec();
        if shape.len() < 2 || shape[1] != self.channels {
            return Err(Error::Shape(format!(
                "batch norm `{}`: input {shape:?} does not have {} channels in dim 1",
                self.prefix, self.channels
            )));
        }
        let affine = if self.affine {
            Some((
                g.param(store, &self.entry("weight"))?,
                g.param(store, &self.entry("bias"))?,
            ))
        } else {
            None
        };
        let count_name = self.entry("num_batches_tracked");
        let running = RunningStats {
            mean: store.get(&self.entry("running_mean"))?.value.clone(),
            var: store.get(&self.entry("running_var"))?.value.clone(),
            // A store loaded from an old checkpoint may lack the counter.
            num_batches_tracked: match store.contains(&count_name) {
                true => Some(store.get(&count_name)?.value.clone()),
                false => None,
            },
        };
        let args = BatchNormArgs {
            mode: if train { Mode::Train } else { Mode::Eval },
            // A residual comes with a ReLU: `relu(bn(x) + residual)`.
            activation: Activation::relu_if(relu || residual.is_some()),
            affine,
            residual,
            running: Some(&running),
            eps: self.eps,
            momentum: self.momentum,
            chunks: None,
        };
        let (y, updated) = batch_norm(g, x, &args)?;
        if let Some(r) = updated {
            store.set(&self.entry("running_mean"), r.mean)?;
            store.set(&self.entry("running_var"), r.var)?;
            if let Some(count) = r.num_batches_tracked {
                store.set(&count_name, count)?;
            }
        }
        Ok(y)
    }
}
