//! Polino, Pascanu & Alistarh (ICLR 2018), "Model compression via distillation and quantization":
//!
//! - **Quantized distillation** ([`qd_step`]): per batch, the chosen parameters are replaced by
//!   their uniform quantization (`quantize_uniform`, SPEC-NOTES §8), the student runs forward and
//!   backward *at the quantized point* with the KD loss, the full-precision shadow weights are
//!   restored, and SGD applies the quantized-point gradients to them (straight-through).
//! - **Differentiable quantization** ([`DqState`]): the weights stay fixed; each quantized layer
//!   has its own sorted quantization points `p_1 < … < p_s` in [0, 1]. A weight is scaled into
//!   [0, 1] by its bucket (`u = (v − beta)/alpha`, beta = min, alpha = max − min) and replaced by
//!   the nearest point: `v̂ = p_j·alpha + beta`. `∂v̂_i/∂p_j = alpha_i` when `v_i` went to `p_j`,
//!   so `∂L/∂p_j = Σ_{i→j} alpha_i·∂L/∂v̂_i`, and the points are learned by SGD (momentum) on
//!   the KD loss against the teacher (the full-precision model itself when there is no
//!   `base_architecture`). Before training, bits are allocated per layer from gradient norms
//!   ([`allocate_bits`]) within the average budget `bits`; points start uniform
//!   (`j/(s − 1)`), i.e. at the uniform quantizer.
//! - **Post-training quantization**: quantize the trained model once (uniform) and evaluate.
//!
//! Which parameters are quantized ([`quantized_parameter_names`]): the `Param` entries in
//! registration order (= PyTorch `named_parameters()`, biases and BN affine included, BN running
//! statistics never); with `quantize_first_and_last_layer: false` index 0 and the last index are
//! kept in full precision (SPEC-NOTES §8), then an optional name-prefix filter.

use super::export::PackSpec;
use super::kd::Teacher;
use super::quantize::{bucket_rows, point_gradients, quantize_to_points, quantize_uniform};
use super::step::{finish_step, restore, PendingStep, StepEnv};
use super::{model_input, Batch, Compute};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::nn::{EntryKind, ParamStore};
use crate::ops::kd::{kd_loss, KdLoss};
use crate::optim::Sgd;
use crate::tensor::{IndexTensor, Tensor};
use serde::{Deserialize, Serialize};

/// Polino's default: keep the first and last parameter in full precision.
pub const DEFAULT_QUANTIZE_FIRST_AND_LAST: bool = false;

/// The parameters to quantize, in registration order (see the module documentation).
pub fn quantized_parameter_names(
    store: &ParamStore,
    quantize_first_and_last_layer: bool,
    prefixes: Option<&[String]>,
) -> Vec<String> {
    let params: Vec<&str> = store
        .iter()
        .filter(|(_, p)| p.kind == EntryKind::Param)
        .map(|(n, _)| n)
        .collect();
    let last = params.len().saturating_sub(1);
    params
        .iter()
        .enumerate()
        .filter(|&(i, _)| quantize_first_and_last_layer || (i != 0 && i != last))
        .map(|(_, n)| n.to_string())
        .filter(|n| prefixes.is_none_or(|ps| ps.iter().any(|p| n.starts_with(p.as_str()))))
        .collect()
}

/// Uniform quantization of a set of parameters.
#[derive(Clone, Debug)]
pub struct QuantSpec {
    /// Bits per quantized weight.
    pub bits: u32,
    /// Elements per bucket (`None`: one bucket per tensor).
    pub bucket: Option<usize>,
    /// The quantized parameters, in registration order.
    pub names: Vec<String>,
}

impl QuantSpec {
    /// The parameters of `store` chosen by the stage's settings (an error naming `key` when none
    /// is).
    pub fn new(
        store: &ParamStore,
        bits: u32,
        bucket: Option<usize>,
        quantize_first_and_last_layer: Option<bool>,
        prefixes: Option<&[String]>,
        key: &str,
    ) -> Result<QuantSpec> {
        let names = quantized_parameter_names(
            store,
            quantize_first_and_last_layer.unwrap_or(DEFAULT_QUANTIZE_FIRST_AND_LAST),
            prefixes,
        );
        if names.is_empty() {
            return Err(Error::Config(format!(
                "{key}: no parameter is selected for quantization (check quantized_layers: {:?})",
                prefixes.unwrap_or(&[])
            )));
        }
        Ok(QuantSpec {
            bits,
            bucket,
            names,
        })
    }

    /// Replace the selected parameters by their quantization; returns the full-precision values.
    pub fn quantize_in_place(&self, store: &mut ParamStore) -> Result<Vec<(String, Tensor)>> {
        let mut saved = Vec::with_capacity(self.names.len());
        for name in &self.names {
            let value = store.get(name)?.value.clone();
            let q = quantize_uniform(&value, self.bits, self.bucket)?;
            store.get_mut(name)?.value = q.values;
            saved.push((name.clone(), value));
        }
        Ok(saved)
    }

    /// A copy of `store` with the selected parameters quantized (the deployable student).
    pub fn quantized_copy(&self, store: &ParamStore) -> Result<ParamStore> {
        let mut copy = store.clone();
        self.quantize_in_place(&mut copy)?;
        Ok(copy)
    }

    /// Bits of each quantized parameter (all the same).
    pub fn bits_of(&self) -> Vec<(String, u32)> {
        self.names.iter().map(|n| (n.clone(), self.bits)).collect()
    }
}

/// One quantized-distillation step (see the module documentation).
#[allow(clippy::too_many_arguments)]
pub fn qd_step(
    student: &dyn Model,
    store: &mut ParamStore,
    opt: &mut Sgd,
    batch: &Batch,
    teacher_logits: &Tensor,
    loss: KdLoss,
    spec: &QuantSpec,
    env: &mut StepEnv,
) -> Result<PendingStep> {
    let saved = spec.quantize_in_place(store)?;
    let mut g = env.at.graph();
    let x = model_input(&mut g, batch);
    let s = student.forward(&mut g, store, x, true);
    let s = match s {
        Ok(s) => s,
        Err(e) => {
            restore(store, saved)?;
            return Err(e);
        }
    };
    let kd = kd_loss(&mut g, s, teacher_logits, &batch.y, loss)?;
    // Straight-through: the gradients taken at the quantized point update the shadow weights.
    finish_step(
        &mut g,
        kd.loss,
        s,
        batch,
        store,
        saved,
        env,
        |store, skip| opt.step_unless(store, skip),
    )
}

/// Bytes of a model stored with `bits` bits per weight for the named parameters (packed levels
/// plus one f32 scale and one f32 offset per bucket, and the f32 point table for non-uniform
/// points), and 4-byte floats for every other state_dict entry (BatchNorm counters excluded).
#[derive(Clone, Debug, Serialize)]
pub struct SizeReport {
    /// Bytes of the packed model.
    pub packed_bytes: usize,
    /// Bytes of the model in f32.
    pub full_precision_bytes: usize,
    /// The packed export written to disk and its size in bytes (header included), when there is
    /// one.
    pub file: Option<(std::path::PathBuf, u64)>,
}

/// The size of `store` packed with `bits` per named parameter (see [`SizeReport`]).
pub fn packed_size(
    store: &ParamStore,
    bits: &[(String, u32)],
    bucket: Option<usize>,
    point_tables: bool,
) -> SizeReport {
    let mut packed = 0usize;
    let mut full = 0usize;
    for (name, p) in store.iter() {
        if p.kind == EntryKind::State || crate::checkpoint::is_batch_counter(name) {
            continue;
        }
        let n = p.value.numel();
        full += 4 * n;
        packed += match bits.iter().find(|(q, _)| q == name) {
            Some(&(_, b)) => {
                let (rows, _) = bucket_rows(n, bucket);
                let table = if point_tables { 4usize << b } else { 0 };
                (n * b as usize).div_ceil(8) + 8 * rows + table
            }
            None => 4 * n,
        };
    }
    SizeReport {
        packed_bytes: packed,
        full_precision_bytes: full,
        file: None,
    }
}

// ---------- differentiable quantization ----------

/// One layer's learned quantization points (sorted, in [0, 1]) and their momentum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DqLayer {
    /// The parameter's store name.
    pub name: String,
    /// Bits per weight (the layer has `2^bits` points).
    pub bits: u32,
    /// The points, sorted, in [0, 1].
    pub points: Vec<f32>,
    /// Momentum of each point.
    pub velocity: Vec<f32>,
}

impl DqLayer {
    /// `2^bits` points spread evenly over [0, 1] (the uniform quantizer), no momentum.
    pub fn uniform(name: &str, bits: u32) -> DqLayer {
        let s = 1usize << bits;
        DqLayer {
            name: name.to_string(),
            bits,
            points: (0..s).map(|j| j as f32 / (s - 1) as f32).collect(),
            velocity: vec![0.0; s],
        }
    }
}

/// Bits per layer: every layer starts at `min_bits`; then, while the budget
/// `budget_bits·Σ sizes` allows, one more bit goes to the layer with the largest
/// `norm·2^(−bits)` whose size still fits (the loss change a layer's quantization error causes
/// scales with its gradient norm, and the error halves with each bit), up to `max_bits`. With
/// all norms zero every layer gets `budget_bits`.
pub fn allocate_bits(
    norms: &[f64],
    sizes: &[usize],
    budget_bits: u32,
    min_bits: u32,
    max_bits: u32,
) -> Vec<u32> {
    if norms.iter().all(|&n| n == 0.0) || min_bits > budget_bits {
        return vec![budget_bits.clamp(min_bits, max_bits); sizes.len()];
    }
    let total: usize = sizes.iter().sum();
    let mut left = (budget_bits as usize * total) as i64 - (min_bits as usize * total) as i64;
    let mut bits = vec![min_bits; sizes.len()];
    loop {
        let best = (0..sizes.len())
            .filter(|&l| bits[l] < max_bits && sizes[l] as i64 <= left)
            .max_by(|&a, &b| {
                let pa = norms[a] * 0.5f64.powi(bits[a] as i32);
                let pb = norms[b] * 0.5f64.powi(bits[b] as i32);
                pa.total_cmp(&pb).then(b.cmp(&a))
            });
        match best {
            Some(l) => {
                bits[l] += 1;
                left -= sizes[l] as i64;
            }
            None => return bits,
        }
    }
}

/// The learned points of every quantized layer (resumable: plain data).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DqState {
    /// Elements per bucket (`None`: one bucket per tensor).
    pub bucket: Option<usize>,
    /// The quantized layers, in registration order.
    pub layers: Vec<DqLayer>,
}

impl DqState {
    /// Quantize every layer to its points in place (on the store's device); returns the
    /// full-precision values and, per layer, the point index of each element and the bucket
    /// scales.
    #[allow(clippy::type_complexity)]
    fn quantize_in_place(
        &self,
        store: &mut ParamStore,
    ) -> Result<(Vec<(String, Tensor)>, Vec<(IndexTensor, Tensor)>)> {
        let mut saved = Vec::new();
        let mut assignment = Vec::new();
        for layer in &self.layers {
            let value = store.get(&layer.name)?.value.clone();
            let points = Tensor::from_slice(&[layer.points.len()], &layer.points, value.device())?;
            let q = quantize_to_points(&value, &points, self.bucket)?;
            store.get_mut(&layer.name)?.value = q.values;
            saved.push((layer.name.clone(), value));
            assignment.push((q.levels, q.alpha));
        }
        Ok((saved, assignment))
    }

    /// A copy of `store` with every layer at its points (the deployable student).
    pub fn quantized_copy(&self, store: &ParamStore) -> Result<ParamStore> {
        let mut copy = store.clone();
        self.quantize_in_place(&mut copy)?;
        Ok(copy)
    }

    /// Gradient norm of the loss with respect to each layer's quantized weights over `batches`
    /// (layers at uniform points), then [`allocate_bits`], then uniform points at those bits.
    #[allow(clippy::too_many_arguments)]
    pub fn allocate(
        names: &[String],
        bucket: Option<usize>,
        bits: u32,
        min_bits: u32,
        max_bits: u32,
        student: &dyn Model,
        store: &mut ParamStore,
        teacher: &mut Teacher,
        batches: &[Batch],
        loss: KdLoss,
        at: Compute,
    ) -> Result<DqState> {
        let probe = DqState {
            bucket,
            layers: names.iter().map(|n| DqLayer::uniform(n, bits)).collect(),
        };
        let mut sq = vec![0.0f64; names.len()];
        let buffers = save_buffers(store);
        for batch in batches {
            let t = teacher.logits(batch, at)?;
            let (saved, _) = probe.quantize_in_place(store)?;
            let mut g = at.graph();
            let x = model_input(&mut g, batch);
            let s = student.forward(&mut g, store, x, true)?;
            let kd = kd_loss(&mut g, s, &t, &batch.y, loss)?;
            g.backward(kd.loss)?;
            g.accumulate_param_grads(store)?;
            for (l, name) in names.iter().enumerate() {
                if let Some(gr) = &store.get(name)?.grad {
                    sq[l] += gr
                        .to_vec()?
                        .iter()
                        .map(|&v| (v as f64) * (v as f64))
                        .sum::<f64>();
                }
            }
            store.zero_grads();
            restore(store, saved)?;
        }
        // The probe passes must not move BatchNorm statistics.
        restore(store, buffers)?;
        let norms: Vec<f64> = sq.iter().map(|s| s.sqrt()).collect();
        let sizes: Vec<usize> = names
            .iter()
            .map(|n| store.get(n).map(|p| p.value.numel()))
            .collect::<Result<_>>()?;
        let alloc = allocate_bits(&norms, &sizes, bits, min_bits, max_bits);
        Ok(DqState {
            bucket,
            layers: names
                .iter()
                .zip(alloc)
                .map(|(n, b)| DqLayer::uniform(n, b))
                .collect(),
        })
    }

    /// One step: forward/backward at the points, SGD with momentum on the points (kept sorted
    /// in [0, 1]); weights unchanged (BatchNorm running statistics follow the quantized model).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        student: &dyn Model,
        store: &mut ParamStore,
        batch: &Batch,
        teacher_logits: &Tensor,
        loss: KdLoss,
        lr: f32,
        momentum: f32,
        env: &mut StepEnv,
    ) -> Result<PendingStep> {
        let (saved, assignment) = self.quantize_in_place(store)?;
        let mut g = env.at.graph();
        let x = model_input(&mut g, batch);
        let s = student.forward(&mut g, store, x, true)?;
        let kd = kd_loss(&mut g, s, teacher_logits, &batch.y, loss)?;
        let (layers, bucket) = (&mut self.layers, self.bucket);
        // The points learn from the gradients at the quantized weights (read after the restore,
        // which changes values only).
        finish_step(
            &mut g,
            kd.loss,
            s,
            batch,
            store,
            saved,
            env,
            |store, skip| {
                // The points live on the host: the update reads the flag (and the gradients).
                if let Some(flag) = skip {
                    if flag.item()? != 0.0 {
                        return Ok(());
                    }
                }
                for (layer, (index, alphas)) in layers.iter_mut().zip(&assignment) {
                    let Some(grad) = &store.get(&layer.name)?.grad else {
                        continue;
                    };
                    let pg = point_gradients(grad, index, alphas, bucket, layer.points.len())?
                        .to_vec()?;
                    for ((p, v), gj) in layer.points.iter_mut().zip(&mut layer.velocity).zip(pg) {
                        *v = momentum * *v + gj;
                        *p = (*p - lr * *v).clamp(0.0, 1.0);
                    }
                    sort_points(layer);
                }
                Ok(())
            },
        )
    }

    /// Bits of each quantized layer.
    pub fn bits_of(&self) -> Vec<(String, u32)> {
        self.layers
            .iter()
            .map(|l| (l.name.clone(), l.bits))
            .collect()
    }

    /// The packed export of the quantized student: each layer's point indices at its own bits,
    /// with its point table.
    pub fn pack_specs(&self) -> Vec<PackSpec> {
        self.layers
            .iter()
            .map(|l| PackSpec {
                name: l.name.clone(),
                bits: l.bits,
                bucket: self.bucket,
                points: Some(l.points.clone()),
            })
            .collect()
    }
}

/// Keep points sorted (nearest-point search needs it), each with its own velocity.
fn sort_points(layer: &mut DqLayer) {
    let mut pairs: Vec<(f32, f32)> = layer
        .points
        .iter()
        .copied()
        .zip(layer.velocity.iter().copied())
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (j, (p, v)) in pairs.into_iter().enumerate() {
        layer.points[j] = p;
        layer.velocity[j] = v;
    }
}

/// Copies of the buffer entries (BatchNorm running statistics, LMA state).
fn save_buffers(store: &ParamStore) -> Vec<(String, Tensor)> {
    store
        .iter()
        .filter(|(_, p)| p.kind != EntryKind::Param)
        .map(|(n, p)| (n.to_string(), p.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use crate::distill::quantize::{point_gradients_cpu, quantize_to_points_cpu};
    use crate::rng::Rng;

    fn store_of(arch: &str) -> ParamStore {
        let mut s = ParamStore::new();
        crate::models::build(arch, 10, &mut s, &Device::Cpu, &mut Rng::new(0)).unwrap();
        s
    }

    #[test]
    fn exclusion_rule_skips_index_0_and_the_last_named_parameter() {
        // SPEC-NOTES §8: ConvForwardNet registers out_layer first, so index 0 is out_layer.weight
        // and the last index is the last BatchNorm's bias.
        let s = store_of("cfn-spec0");
        let params: Vec<String> = s
            .iter()
            .filter(|(_, p)| p.kind == EntryKind::Param)
            .map(|(n, _)| n.to_string())
            .collect();
        let q = quantized_parameter_names(&s, false, None);
        assert_eq!(q.len(), params.len() - 2);
        assert!(!q.contains(&"out_layer.weight".to_string()));
        assert!(q.contains(&"out_layer.bias".to_string()));
        let last = params.last().unwrap();
        assert!(last.starts_with("batchNormalizationLayers.") && last.ends_with(".bias"));
        assert!(!q.contains(last));
        assert!(q.iter().all(|n| !n.contains("running_")));
        assert_eq!(quantized_parameter_names(&s, true, None), params);

        let w = store_of("wrn-16-1");
        let q = quantized_parameter_names(&w, false, None);
        assert!(!q.contains(&"conv1.weight".to_string()));
        assert!(!q.contains(&"linear.bias".to_string()));
        assert!(q.contains(&"linear.weight".to_string()));

        let only = quantized_parameter_names(&s, false, Some(&["conv_layers.".to_string()]));
        assert!(!only.is_empty() && only.iter().all(|n| n.starts_with("conv_layers.")));
    }

    #[test]
    fn nearest_point_quantizer_and_its_point_gradients() {
        let points = [0.0, 0.2, 1.0];
        // One bucket: beta = -1, alpha = 2; u = 0, 0.25, 0.5, 1.
        let w = [-1.0, -0.5, 0.0, 1.0];
        let (q, alphas, betas, idx) = quantize_to_points_cpu(&w, &points, None);
        assert_eq!(idx, vec![0, 1, 1, 2]);
        assert_eq!((alphas.clone(), betas), (vec![2.0], vec![-1.0]));
        assert_eq!(q, vec![-1.0, 0.2 * 2.0 - 1.0, 0.2 * 2.0 - 1.0, 1.0]);
        let g = point_gradients_cpu(&[1.0, 2.0, 3.0, 4.0], &idx, &alphas, None, 3);
        assert_eq!(g, vec![2.0, 10.0, 8.0]);

        // Buckets of 2: each has its own scale.
        let (_, alphas, _, idx) = quantize_to_points_cpu(&[0.0, 4.0, 1.0, 2.0], &points, Some(2));
        assert_eq!((idx, alphas), (vec![0, 2, 0, 2], vec![4.0, 1.0]));

        // Uniform points reproduce the uniform quantizer away from rounding ties.
        let v: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7371).sin() * 3.0).collect();
        let layer = DqLayer::uniform("w", 3);
        let (q, _, _, _) = quantize_to_points_cpu(&v, &layer.points, Some(16));
        let (u, _, _, _) = super::super::quantize::quantize_uniform_cpu(&v, 3, Some(16));
        for (a, b) in q.iter().zip(&u) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn bit_allocation_favours_large_gradients_within_the_budget() {
        let sizes = [100, 100, 100];
        let bits = allocate_bits(&[10.0, 1.0, 0.1], &sizes, 4, 2, 8);
        assert_eq!(bits.iter().map(|&b| b as usize * 100).sum::<usize>(), 1200);
        assert!(bits[0] > bits[1] && bits[1] >= bits[2], "{bits:?}");
        assert!(bits.iter().all(|&b| (2..=8).contains(&b)));
        // No gradient information: the budget everywhere.
        assert_eq!(allocate_bits(&[0.0, 0.0], &[5, 7], 3, 1, 8), vec![3, 3]);
        // Caps hold.
        let capped = allocate_bits(&[1e9, 1.0], &[10, 1000], 4, 2, 6);
        assert_eq!(capped[0], 6);
        assert!(10 * capped[0] as usize + 1000 * capped[1] as usize <= 4 * 1010);
    }

    #[test]
    fn packed_size_counts_levels_scales_and_full_precision_rest() {
        let mut s = ParamStore::new();
        s.add_param("a", Tensor::zeros(&[10], &Device::Cpu).unwrap())
            .unwrap();
        s.add_param("b", Tensor::zeros(&[3], &Device::Cpu).unwrap())
            .unwrap();
        s.add_buffer(
            "num_batches_tracked",
            Tensor::zeros(&[], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let r = packed_size(&s, &[("a".into(), 2)], Some(4), false);
        // a: 20 bits = 3 bytes + 3 buckets * 8; b: 12 bytes.
        assert_eq!((r.packed_bytes, r.full_precision_bytes), (3 + 24 + 12, 52));
    }
}
