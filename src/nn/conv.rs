//! `Conv2d` and `Conv1d`: PyTorch's `nn.Conv2d` / `nn.Conv1d` (dilation 1, groups 1, zero
//! padding), weight `[out, in, kh, kw]` (`[out, in, k]`), optional bias `[out]`.

use crate::autograd::{Graph, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::init::{init_tensor, Init};
use crate::nn::ParamStore;
use crate::ops::conv::{conv1d, conv2d};
use crate::rng::Rng;

/// `<prefix>.<name>`, or `<name>` alone when the prefix is empty.
fn param_name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A conv kernel size: `usize` for 1-D, `(kh, kw)` for 2-D.
pub trait KernelSize: Copy {
    /// The size along each spatial axis.
    fn sizes(self) -> Vec<usize>;
}

impl KernelSize for usize {
    fn sizes(self) -> Vec<usize> {
        vec![self]
    }
}

impl KernelSize for (usize, usize) {
    fn sizes(self) -> Vec<usize> {
        vec![self.0, self.1]
    }
}

/// What a conv layer is made of besides its name: [`Conv1d::new`] / [`Conv2d::new`] (and the
/// models' `build`) take one. `K` is `usize` for 1-D and `(kh, kw)` for 2-D.
#[derive(Clone, Copy, Debug)]
pub struct ConvSpec<K> {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size per spatial axis.
    pub kernel: K,
    /// Stride, the same along every spatial axis.
    pub stride: usize,
    /// Zero padding per spatial axis.
    pub padding: K,
    /// Whether the layer has a bias `[out]`.
    pub bias: bool,
    /// Distribution of the weight.
    pub weight_init: Init,
    /// Distribution of the bias (with the weight's fans).
    pub bias_init: Init,
}

impl ConvSpec<(usize, usize)> {
    /// A bias-free `k`x`k` conv that keeps the size at stride 1 (padding `(k-1)/2`), its weight
    /// drawn from `weight_init` (a bias, if set afterwards, from PyTorch's default).
    pub fn same_size(
        in_channels: usize,
        out_channels: usize,
        k: usize,
        stride: usize,
        weight_init: Init,
    ) -> ConvSpec<(usize, usize)> {
        let p = k.saturating_sub(1) / 2;
        ConvSpec {
            in_channels,
            out_channels,
            kernel: (k, k),
            stride,
            padding: (p, p),
            bias: false,
            weight_init,
            bias_init: Init::PytorchDefault,
        }
    }
}

impl<K: KernelSize> ConvSpec<K> {
    /// The weight's shape `[out, in, *kernel]`, once channels, kernel and stride are checked to
    /// be positive.
    pub fn weight_shape(&self, prefix: &str) -> Result<Vec<usize>> {
        let (in_channels, out_channels, stride) =
            (self.in_channels, self.out_channels, self.stride);
        let kernel = self.kernel.sizes();
        if in_channels == 0 || out_channels == 0 || kernel.contains(&0) || stride == 0 {
            return Err(Error::Config(format!(
                "conv `{prefix}`: channels ({in_channels} -> {out_channels}), kernel {kernel:?} \
                 and stride {stride} must be positive"
            )));
        }
        let mut shape = vec![out_channels, in_channels];
        shape.extend(kernel);
        Ok(shape)
    }

    /// Register `<prefix>.weight` and, with a bias, `<prefix>.bias`, in that order.
    fn register(
        &self,
        store: &mut ParamStore,
        prefix: &str,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<()> {
        let shape = self.weight_shape(prefix)?;
        let (fan_in, fan_out) = crate::nn::init::fans(&shape);
        let w = init_tensor(self.weight_init, &shape, fan_in, fan_out, device, rng)?;
        store.add_param(&param_name(prefix, "weight"), w)?;
        if self.bias {
            let out = [self.out_channels];
            let b = init_tensor(self.bias_init, &out, fan_in, fan_out, device, rng)?;
            store.add_param(&param_name(prefix, "bias"), b)?;
        }
        Ok(())
    }
}

/// Redraw a registered bias `[out]` from `init` (fans of the layer's weight).
fn reinit_bias(
    store: &mut ParamStore,
    prefix: &str,
    weight_shape: &[usize],
    init: Init,
    rng: &mut Rng,
) -> Result<()> {
    let name = param_name(prefix, "bias");
    let device = store.get(&name)?.value.device().clone();
    let (fan_in, fan_out) = crate::nn::init::fans(weight_shape);
    let b = init_tensor(init, &[weight_shape[0]], fan_in, fan_out, &device, rng)?;
    store.set(&name, b)
}

/// A 2-D convolution layer: its geometry and the names of its parameters in the store.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// Parameter name prefix (`conv1` → `conv1.weight`, `conv1.bias`).
    pub prefix: String,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (filters).
    pub out_channels: usize,
    /// Kernel size `(height, width)`.
    pub kernel: (usize, usize),
    /// Stride `(vertical, horizontal)`.
    pub stride: (usize, usize),
    /// Zero padding `(rows, columns)` on each side.
    pub padding: (usize, usize),
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl Conv2d {
    /// The layer `spec` describes, its weight and (with a bias) bias registered in `store` under
    /// `prefix`.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        spec: ConvSpec<(usize, usize)>,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Conv2d> {
        spec.register(store, prefix, device, rng)?;
        Ok(Conv2d::of(prefix, spec))
    }

    /// The layer `spec` describes, registering nothing.
    pub fn of(prefix: &str, spec: ConvSpec<(usize, usize)>) -> Conv2d {
        Conv2d {
            prefix: prefix.to_string(),
            in_channels: spec.in_channels,
            out_channels: spec.out_channels,
            kernel: spec.kernel,
            stride: (spec.stride, spec.stride),
            padding: spec.padding,
            bias: spec.bias,
        }
    }

    /// The weight's full name in the store (`<prefix>.weight`).
    pub fn weight_name(&self) -> String {
        param_name(&self.prefix, "weight")
    }

    /// The bias's full name in the store, when the layer has one.
    pub fn bias_name(&self) -> Option<String> {
        self.bias.then(|| param_name(&self.prefix, "bias"))
    }

    fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels,
            self.kernel.0,
            self.kernel.1,
        ]
    }

    /// Redraw the bias from `init` (e.g. `Init::Constant(0.0)` for the WRN convs).
    pub fn reinit_bias(&self, store: &mut ParamStore, init: Init, rng: &mut Rng) -> Result<()> {
        reinit_bias(store, &self.prefix, &self.weight_shape(), init, rng)
    }

    /// `x [N, in, H, W]` → `[N, out, OH, OW]`.
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        _train: bool,
    ) -> Result<Var> {
        let w = g.param(store, &self.weight_name())?;
        let b = match self.bias_name() {
            Some(name) => Some(g.param(store, &name)?),
            None => None,
        };
        conv2d(g, x, w, b, self.stride, self.padding)
    }
}

/// A 1-D convolution layer: its geometry and the names of its parameters in the store.
#[derive(Clone, Debug)]
pub struct Conv1d {
    /// Parameter name prefix (`conv1` → `conv1.weight`, `conv1.bias`).
    pub prefix: String,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (filters).
    pub out_channels: usize,
    /// Kernel length.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl Conv1d {
    /// The layer `spec` describes, its weight and (with a bias) bias registered in `store` under
    /// `prefix`.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        spec: ConvSpec<usize>,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Conv1d> {
        spec.register(store, prefix, device, rng)?;
        Ok(Conv1d::of(prefix, spec))
    }

    /// The layer `spec` describes, registering nothing.
    pub fn of(prefix: &str, spec: ConvSpec<usize>) -> Conv1d {
        Conv1d {
            prefix: prefix.to_string(),
            in_channels: spec.in_channels,
            out_channels: spec.out_channels,
            kernel: spec.kernel,
            stride: spec.stride,
            padding: spec.padding,
            bias: spec.bias,
        }
    }

    /// The weight's full name in the store (`<prefix>.weight`).
    pub fn weight_name(&self) -> String {
        param_name(&self.prefix, "weight")
    }

    /// The bias's full name in the store, when the layer has one.
    pub fn bias_name(&self) -> Option<String> {
        self.bias.then(|| param_name(&self.prefix, "bias"))
    }

    /// Redraw the bias from `init`.
    pub fn reinit_bias(&self, store: &mut ParamStore, init: Init, rng: &mut Rng) -> Result<()> {
        let shape = [self.out_channels, self.in_channels, self.kernel];
        reinit_bias(store, &self.prefix, &shape, init, rng)
    }

    /// `x [N, in, L]` → `[N, out, OL]`.
    pub fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Var,
        _train: bool,
    ) -> Result<Var> {
        let w = g.param(store, &self.weight_name())?;
        let b = match self.bias_name() {
            Some(name) => Some(g.param(store, &name)?),
            None => None,
        };
        conv1d(g, x, w, b, self.stride, self.padding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{conv1d_forward, conv2d_forward};
    use crate::tensor::Tensor;
    use crate::testing::random_f32;

    /// Stride 1, `channels` = (in, out), the bias drawn with PyTorch's default.
    fn spec<K>(
        channels: (usize, usize),
        kernel: K,
        padding: K,
        bias: bool,
        weight_init: Init,
    ) -> ConvSpec<K> {
        ConvSpec {
            in_channels: channels.0,
            out_channels: channels.1,
            kernel,
            stride: 1,
            padding,
            bias,
            weight_init,
            bias_init: Init::PytorchDefault,
        }
    }

    #[test]
    fn conv2d_registers_pytorch_names_shapes_and_trains() {
        let dev = Device::Cpu;
        let mut store = ParamStore::new();
        let mut rng = Rng::new(3);
        let spec = ConvSpec {
            stride: 2,
            ..spec((3, 8), (3, 3), (1, 1), true, Init::KaimingNormalFanOut)
        };
        let conv = Conv2d::new(&mut store, "layer1.0.conv1", spec, &dev, &mut rng).unwrap();
        assert_eq!(
            store.names(),
            ["layer1.0.conv1.weight", "layer1.0.conv1.bias"]
        );
        assert_eq!(
            store.get("layer1.0.conv1.weight").unwrap().value.shape(),
            [8, 3, 3, 3]
        );
        assert_eq!(store.num_parameters(), 8 * 27 + 8);
        let bound = 1.0 / 27f32.sqrt();
        let b = store
            .get("layer1.0.conv1.bias")
            .unwrap()
            .value
            .to_vec()
            .unwrap();
        assert!(b.iter().all(|v| v.abs() <= bound) && b.iter().any(|&v| v != 0.0));

        let x = Tensor::from_vec(&[2, 3, 7, 7], random_f32(1, 294), &dev).unwrap();
        let mut g = Graph::new(&dev);
        let xv = g.constant(x.clone());
        let y = conv.forward(&mut g, &mut store, xv, true).unwrap();
        assert_eq!(g.value(y).shape(), [2, 8, 4, 4]);
        let want = conv2d_forward(
            &x,
            &store.get("layer1.0.conv1.weight").unwrap().value,
            Some(&store.get("layer1.0.conv1.bias").unwrap().value),
            (2, 2),
            (1, 1),
        )
        .unwrap();
        assert_eq!(g.value(y).to_vec().unwrap(), want.to_vec().unwrap());
        let loss = crate::ops::reduce::sum_all(&mut g, y).unwrap();
        g.backward(loss).unwrap();
        g.accumulate_param_grads(&mut store).unwrap();
        // d(sum y)/d bias = N·OH·OW for every output channel.
        let db = store
            .get("layer1.0.conv1.bias")
            .unwrap()
            .grad
            .as_ref()
            .unwrap();
        assert!(db.to_vec().unwrap().iter().all(|&v| v == 32.0));

        conv.reinit_bias(&mut store, Init::Constant(0.0), &mut rng)
            .unwrap();
        let b = store
            .get("layer1.0.conv1.bias")
            .unwrap()
            .value
            .to_vec()
            .unwrap();
        assert!(b.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn conv1d_layer_without_bias() {
        let dev = Device::Cpu;
        let mut store = ParamStore::new();
        let spec = spec((4, 6), 3, 1, false, Init::KaimingNormalFanIn);
        let conv = Conv1d::new(&mut store, "conv1", spec, &dev, &mut Rng::new(5)).unwrap();
        assert_eq!(store.names(), ["conv1.weight"]);
        let x = Tensor::from_vec(&[2, 4, 9], random_f32(2, 72), &dev).unwrap();
        let mut g = Graph::new(&dev);
        let xv = g.constant(x.clone());
        let y = conv.forward(&mut g, &mut store, xv, false).unwrap();
        let w = &store.get("conv1.weight").unwrap().value;
        let want = conv1d_forward(&x, w, None, 1, 1).unwrap();
        assert_eq!(g.value(y).shape(), [2, 6, 9]);
        assert_eq!(g.value(y).to_vec().unwrap(), want.to_vec().unwrap());
    }

    #[test]
    fn bad_layer_configs_are_errors() {
        let dev = Device::Cpu;
        let mut store = ParamStore::new();
        let mut rng = Rng::new(1);
        let init = Init::PytorchDefault;
        let zero_channels = spec((0, 4), (3, 3), (1, 1), true, init);
        assert!(Conv2d::new(&mut store, "a", zero_channels, &dev, &mut rng).is_err());
        let zero_stride = ConvSpec {
            stride: 0,
            ..spec((2, 4), 3, 1, true, init)
        };
        assert!(Conv1d::new(&mut store, "b", zero_stride, &dev, &mut rng).is_err());
        // A 3x3 kernel on a 1x1 image without padding: a shape error, not a panic.
        let no_padding = spec((2, 2), (3, 3), (0, 0), false, init);
        let conv = Conv2d::new(&mut store, "c", no_padding, &dev, &mut rng).unwrap();
        let mut g = Graph::new(&dev);
        let x = g.constant(Tensor::zeros(&[1, 2, 1, 1], &dev).unwrap());
        assert!(conv.forward(&mut g, &mut store, x, false).is_err());
    }
}
