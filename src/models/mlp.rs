//! Multilayer perceptron `mlp-784-256-10`: Linear layers `fc1`, `fc2`, … with ReLU between them
//! (none after the last), as `nn.Sequential`-free PyTorch code names them.

use super::builder::Builder;
use super::layers::Linear;
use super::{Input, Model};
use crate::autograd::{Graph, Var};
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::init::Init;
use crate::nn::ParamStore;
use crate::ops::elementwise::relu;

/// An `mlp-<in>-<hidden>…-<out>` model: input `[in]` features, `out` logits.
pub struct Mlp {
    name: String,
    sizes: Vec<usize>,
    layers: Vec<Linear>,
}

/// `mlp-784-256-10` → `[784, 256, 10]` (at least an input and an output size, all > 0).
pub fn parse_sizes(name: &str) -> Result<Vec<usize>> {
    let bad = |why: String| {
        Error::Config(format!(
            "architecture `{name}`: {why}; an MLP is named mlp-<in>-<hidden>…-<out>, e.g. mlp-784-256-10"
        ))
    };
    let rest = name
        .strip_prefix("mlp-")
        .ok_or_else(|| bad("missing the layer sizes".into()))?;
    let sizes = rest
        .split('-')
        .map(|s| match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(format!("`{s}` is not a layer size > 0"))),
        })
        .collect::<Result<Vec<usize>>>()?;
    if sizes.len() < 2 {
        return Err(bad("needs at least an input and an output size".into()));
    }
    check_sizes(name, &sizes)?;
    Ok(sizes)
}

/// At most [`limits::MAX_DEPTH`] layers of at most [`limits::MAX_LAYER_WIDTH`] units each.
fn check_sizes(name: &str, sizes: &[usize]) -> Result<()> {
    limits::at_most(
        &format!("architecture `{name}`: the number of layer sizes"),
        sizes.len(),
        limits::MAX_DEPTH,
    )?;
    for &n in sizes {
        limits::at_most(
            &format!("architecture `{name}`: a layer size"),
            n,
            limits::MAX_LAYER_WIDTH,
        )?;
    }
    Ok(())
}

impl Mlp {
    /// Register `fc1`, `fc2`, … (PyTorch default init) for layer sizes `sizes`.
    pub fn new(b: &mut Builder, name: &str, sizes: &[usize]) -> Result<Mlp> {
        check_sizes(name, sizes)?;
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                Linear::build(b, &format!("fc{}", i + 1), w[0], w[1], Init::PytorchDefault)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Mlp {
            name: name.to_string(),
            sizes: sizes.to_vec(),
            layers,
        })
    }
}

impl Model for Mlp {
    fn architecture(&self) -> &str {
        &self.name
    }
    fn input_shape(&self) -> Vec<usize> {
        vec![self.sizes[0]]
    }
    fn num_classes(&self) -> usize {
        *self.sizes.last().expect("at least two sizes")
    }
    fn forward(
        &self,
        g: &mut Graph,
        store: &mut ParamStore,
        x: Input,
        _train: bool,
    ) -> Result<Var> {
        let mut h = x.float(&self.name)?;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.traced_forward(g, store, h)?;
            if i + 1 < self.layers.len() {
                h = relu(g, h)?;
            }
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use crate::models::build;
    use crate::rng::Rng;
    use crate::tensor::Tensor;

    #[test]
    fn names_parse_into_layer_sizes_and_bad_names_explain_the_format() {
        assert_eq!(parse_sizes("mlp-784-256-10").unwrap(), vec![784, 256, 10]);
        assert_eq!(parse_sizes("mlp-4-3").unwrap(), vec![4, 3]);
        for bad in ["mlp", "mlp-784", "mlp-784-x-10", "mlp-784-0-10"] {
            let msg = parse_sizes(bad).unwrap_err().to_string();
            assert!(msg.contains(bad) && msg.contains("mlp-784-256-10"), "{msg}");
        }
        let msg = build(
            "vdcnn9-avgpool",
            10,
            &mut ParamStore::new(),
            &Device::Cpu,
            &mut Rng::new(0),
        )
        .err()
        .expect("unknown architecture")
        .to_string();
        assert!(
            msg.contains("vdcnn9-avgpool") && msg.contains("mlp-<in>"),
            "{msg}"
        );
    }

    #[test]
    fn parameters_have_pytorch_names_and_forward_gives_logits() {
        let mut store = ParamStore::new();
        let model = build(
            "mlp-784-256-10",
            10,
            &mut store,
            &Device::Cpu,
            &mut Rng::new(0),
        )
        .unwrap();
        assert_eq!(
            store.names(),
            ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
        );
        // As torch counts them: 784*256 + 256 + 256*10 + 10.
        assert_eq!(store.num_parameters(), 203_530);
        assert_eq!((model.input_features(), model.num_classes()), (784, 10));

        let mut store = ParamStore::new();
        let model = build("mlp-5-4-3-2", 2, &mut store, &Device::Cpu, &mut Rng::new(1)).unwrap();
        let mut g = Graph::new(&Device::Cpu);
        let x = g.constant(
            Tensor::from_vec(
                &[3, 5],
                (0..15).map(|v| v as f32 * 0.1 - 0.7).collect(),
                &Device::Cpu,
            )
            .unwrap(),
        );
        let y = model
            .forward(&mut g, &mut store, Input::Float(x), true)
            .unwrap();
        assert_eq!(g.value(y).shape(), &[3, 2]);

        // Reference: the same layers by hand on the host (ReLU between layers, none at the end).
        let p = |n: &str| store.get(n).unwrap().value.to_vec().unwrap();
        let mut h: Vec<Vec<f32>> = (0..3)
            .map(|r| (0..5).map(|c| (r * 5 + c) as f32 * 0.1 - 0.7).collect())
            .collect();
        for (i, (inp, out)) in [(5, 4), (4, 3), (3, 2)].into_iter().enumerate() {
            let (w, b) = (
                p(&format!("fc{}.weight", i + 1)),
                p(&format!("fc{}.bias", i + 1)),
            );
            h = h
                .iter()
                .map(|row| {
                    (0..out)
                        .map(|o| {
                            let v = b[o] + (0..inp).map(|k| w[o * inp + k] * row[k]).sum::<f32>();
                            if i < 2 {
                                v.max(0.0)
                            } else {
                                v
                            }
                        })
                        .collect()
                })
                .collect();
        }
        let want: Vec<f32> = h.concat();
        crate::testing::assert_close(
            "mlp forward",
            &g.value(y).to_vec().unwrap(),
            &want,
            1e-5,
            1e-6,
        );
    }
}
