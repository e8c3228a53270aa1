//! Packed low-bit export of a quantized student: one safetensors file that stores each quantized
//! parameter as its levels packed `bits` to a value ([`pack_levels`]) plus the per-bucket scale
//! and offset, and everything else as f32 — the real size of the compressed model. Levels are
//! either uniform (quantized distillation, `quantize_uniform`) or indices into a per-parameter
//! table of points (differentiable quantization, `quantize_to_points`; each parameter may have
//! its own bit width).
//!
//! Layout, for a quantized parameter `p` (shape `S`, `bits`, bucket size `B`):
//!
//! | tensor | dtype | shape |
//! |---|---|---|
//! | `p.levels` | U8 | `[ceil(numel(S)·bits / 8)]` |
//! | `p.alpha`, `p.beta` | F32 | `[rows]` (`distill::quantize::bucket_rows`) |
//! | `p.points` (point tables only) | F32 | `[number of points]`, at most `2^bits` |
//!
//! and metadata `lit.quant.p = {"shape": S, "bits": bits, "bucket": B or null}` (plus
//! `"points": count` with a point table). Every other store entry (parameters, BatchNorm buffers,
//! LMA running statistics) is an F32 tensor under its own name. Metadata
//! `format = "lit-engine-packed/1"`, and `lit.info` holds the caller's JSON.
//!
//! [`load_packed`] dequantizes back into a [`ParamStore`] of the same architecture, exactly as the
//! quantizer computed the values (`(level/(2^bits-1))·alpha + beta`, or `points[level]·alpha +
//! beta`, f32), so a reloaded student gives the same outputs as the quantized student that was
//! trained.

use crate::distill::quantize::{
    bucket_rows, dequantize_cpu, dequantize_points_cpu, pack_levels, quantize_to_points_cpu,
    quantize_uniform, unpack_levels, MAX_BITS,
};
use crate::durable::write_atomic;
use crate::error::{Error, Result};
use crate::nn::{EntryKind, ParamStore};
use crate::tensor::Tensor;
use crate::Device;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Value of the `format` metadata key.
pub const FORMAT: &str = "lit-engine-packed/1";
const QUANT_PREFIX: &str = "lit.quant.";

/// How one parameter is quantized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackSpec {
    /// Store name of the parameter (`layer1.0.conv1.weight`).
    pub name: String,
    /// Bits per level.
    pub bits: u32,
    /// Elements per bucket (`None`: the whole tensor is one bucket).
    pub bucket: Option<usize>,
    /// The sorted points in [0, 1] of a non-uniform quantizer (at most `2^bits`); `None`: the
    /// uniform levels `j/(2^bits - 1)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<Vec<f32>>,
}

impl PackSpec {
    /// The same `bits` and `bucket` for every name (the usual QD setting).
    pub fn uniform(names: &[String], bits: u32, bucket: Option<usize>) -> Vec<PackSpec> {
        names
            .iter()
            .map(|name| PackSpec {
                name: name.clone(),
                bits,
                bucket,
                points: None,
            })
            .collect()
    }
}

/// Bytes of a packed student (tensor data, not the file header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PackedSize {
    /// Trained parameters: packed levels + alpha/beta of the quantized ones, 4 bytes per value
    /// for the others. Compare with `4 × parameters` of a float model.
    pub parameters: u64,
    /// BatchNorm buffers and LMA running statistics, 4 bytes per value.
    pub buffers: u64,
}

impl PackedSize {
    /// Parameters and buffers together.
    pub fn total(&self) -> u64 {
        self.parameters + self.buffers
    }
}

/// [`PackedSize`] plus the bytes of the written file (header and metadata included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PackedExport {
    /// The tensor data.
    pub size: PackedSize,
    /// The file on disk, header and metadata included.
    pub file_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct QuantMeta {
    shape: Vec<usize>,
    bits: u32,
    bucket: Option<usize>,
    /// Number of points of a point table (`p.points`); absent for uniform levels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    points: Option<usize>,
}

/// A point table must index with `bits`-bit levels and be what the quantizer searches: sorted,
/// finite, in [0, 1].
fn check_points(spec: &PackSpec) -> Result<()> {
    if !(1..=MAX_BITS).contains(&spec.bits) {
        return Err(Error::Config(format!(
            "packed export: `{}`: bits must be in 1..={MAX_BITS}, got {}",
            spec.name, spec.bits
        )));
    }
    let Some(points) = &spec.points else {
        return Ok(());
    };
    if points.is_empty() || points.len() > 1 << spec.bits {
        return Err(Error::Config(format!(
            "packed export: `{}` has {} points; {} bits index 1 to {}",
            spec.name,
            points.len(),
            spec.bits,
            1u32 << spec.bits
        )));
    }
    if !points.iter().all(|p| (0.0..=1.0).contains(p)) || !points.windows(2).all(|w| w[0] <= w[1]) {
        return Err(Error::Numeric(format!(
            "packed export: the points of `{}` must be sorted and in [0, 1], got {points:?}",
            spec.name
        )));
    }
    Ok(())
}

/// The specs by name, after checking each names a trained parameter of `store` once.
fn check_specs<'a>(
    store: &ParamStore,
    specs: &'a [PackSpec],
) -> Result<HashMap<&'a str, &'a PackSpec>> {
    let mut by_name = HashMap::new();
    for s in specs {
        let p = store.get(&s.name).map_err(|_| {
            Error::Config(format!(
                "packed export: `{}` is not an entry of this model",
                s.name
            ))
        })?;
        if p.kind != EntryKind::Param {
            return Err(Error::Config(format!(
                "packed export: `{}` is a buffer, not a trained parameter; only parameters are \
                 quantized",
                s.name
            )));
        }
        check_points(s)?;
        if by_name.insert(s.name.as_str(), s).is_some() {
            return Err(Error::Config(format!(
                "packed export: `{}` is listed twice",
                s.name
            )));
        }
    }
    Ok(by_name)
}

/// Bytes of one quantized tensor: packed levels, one f32 alpha and beta per bucket, and the f32
/// point table if any.
fn quantized_bytes(numel: usize, spec: &PackSpec) -> u64 {
    let (rows, _) = bucket_rows(numel, spec.bucket);
    let table = spec.points.as_ref().map_or(0, |p| 4 * p.len());
    ((numel * spec.bits as usize).div_ceil(8) + 8 * rows + table) as u64
}

/// The size `store` takes when exported with `specs`, without writing anything.
pub fn packed_size(store: &ParamStore, specs: &[PackSpec]) -> Result<PackedSize> {
    let by_name = check_specs(store, specs)?;
    let mut size = PackedSize::default();
    for (name, p) in store.iter() {
        let n = p.value.numel();
        match (p.kind, by_name.get(name)) {
            (EntryKind::Param, Some(spec)) => size.parameters += quantized_bytes(n, spec),
            (EntryKind::Param, None) => size.parameters += 4 * n as u64,
            _ => size.buffers += 4 * n as u64,
        }
    }
    Ok(size)
}

/// Write `store` to `path` (atomically) with the parameters of `specs` quantized and packed;
/// `info` (any JSON: architecture, accuracy, …) goes into the metadata.
pub fn save_packed(
    path: &Path,
    store: &ParamStore,
    specs: &[PackSpec],
    info: serde_json::Value,
) -> Result<PackedExport> {
    let by_name = check_specs(store, specs)?;
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("lit.info".to_string(), info.to_string()),
    ]);
    for (name, p) in store.iter() {
        let cpu = p.value.to_device(&Device::Cpu)?;
        let Some(spec) = by_name.get(name) else {
            let values = cpu.to_vec()?;
            let bytes = bytemuck::cast_slice(&values).to_vec();
            tensors.push((
                name.to_string(),
                Dtype::F32,
                p.value.shape().to_vec(),
                bytes,
            ));
            continue;
        };
        let (levels, alpha, beta) = match &spec.points {
            None => {
                let q = quantize_uniform(&cpu, spec.bits, spec.bucket)?;
                (q.levels.to_vec()?, q.alpha.to_vec()?, q.beta.to_vec()?)
            }
            Some(points) => {
                let (_, alpha, beta, index) =
                    quantize_to_points_cpu(&cpu.to_vec()?, points, spec.bucket);
                (index, alpha, beta)
            }
        };
        let packed = pack_levels(&levels, spec.bits)?;
        tensors.push((
            format!("{name}.levels"),
            Dtype::U8,
            vec![packed.len()],
            packed,
        ));
        let table = spec.points.clone().map(|p| ("points", p));
        for (leaf, v) in [("alpha", alpha), ("beta", beta)].into_iter().chain(table) {
            let bytes = bytemuck::cast_slice(&v).to_vec();
            tensors.push((format!("{name}.{leaf}"), Dtype::F32, vec![v.len()], bytes));
        }
        let meta = QuantMeta {
            shape: p.value.shape().to_vec(),
            bits: spec.bits,
            bucket: spec.bucket,
            points: spec.points.as_ref().map(Vec::len),
        };
        metadata.insert(
            format!("{QUANT_PREFIX}{name}"),
            serde_json::to_string(&meta).expect("plain data"),
        );
    }
    let mut seen = HashSet::new();
    if let Some(dup) = tensors.iter().find(|t| !seen.insert(t.0.as_str())) {
        return Err(Error::Checkpoint(format!(
            "{}: tensor name `{}` would be written twice (a model entry collides with a packed \
             tensor's name)",
            path.display(),
            dup.0
        )));
    }
    let views = tensors
        .iter()
        .map(|(n, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Checkpoint(format!("{}: tensor `{n}`: {e}", path.display())))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, &Some(metadata))
        .map_err(|e| Error::Checkpoint(format!("{}: cannot serialize: {e}", path.display())))?;
    write_atomic(path, &bytes)?;
    Ok(PackedExport {
        size: packed_size(store, specs)?,
        file_bytes: bytes.len() as u64,
    })
}

fn f32_values(view: &safetensors::tensor::TensorView<'_>) -> std::result::Result<Vec<f32>, String> {
    if view.dtype() != Dtype::F32 {
        return Err(format!("dtype {:?}, expected F32", view.dtype()));
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Values of one quantized entry: unpack its levels and dequantize with its alpha/beta.
fn dequantize_entry(
    st: &SafeTensors<'_>,
    name: &str,
    meta: &QuantMeta,
) -> std::result::Result<Vec<f32>, String> {
    let get = |leaf: &str| {
        st.tensor(&format!("{name}.{leaf}"))
            .map_err(|_| format!("tensor `{name}.{leaf}` is missing"))
    };
    let levels_view = get("levels")?;
    if levels_view.dtype() != Dtype::U8 {
        return Err(format!(
            "`{name}.levels` is {:?}, expected U8",
            levels_view.dtype()
        ));
    }
    let numel: usize = meta.shape.iter().product();
    let levels = unpack_levels(levels_view.data(), meta.bits, numel).map_err(|e| e.to_string())?;
    let alpha = f32_values(&get("alpha")?).map_err(|e| format!("`{name}.alpha`: {e}"))?;
    let beta = f32_values(&get("beta")?).map_err(|e| format!("`{name}.beta`: {e}"))?;
    match meta.points {
        None => dequantize_cpu(&levels, &alpha, &beta, meta.bits, meta.bucket),
        Some(count) => {
            let points =
                f32_values(&get("points")?).map_err(|e| format!("`{name}.points`: {e}"))?;
            if points.len() != count {
                return Err(format!(
                    "`{name}.points` has {} points, the metadata says {count}",
                    points.len()
                ));
            }
            dequantize_points_cpu(&levels, &points, &alpha, &beta, meta.bucket)
        }
    }
    .map_err(|e| e.to_string())
}

/// The point table of a quantized entry, if it has one.
fn point_table(st: &SafeTensors<'_>, name: &str, meta: &QuantMeta) -> Option<Vec<f32>> {
    meta.points?;
    let view = st.tensor(&format!("{name}.points")).ok()?;
    f32_values(&view).ok()
}

/// What a packed file says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedInfo {
    /// The quantized parameters, in the store's order.
    pub specs: Vec<PackSpec>,
    /// The `info` JSON given to [`save_packed`].
    pub info: serde_json::Value,
}

/// Load a packed export into `store` (built for the same architecture; values keep each entry's
/// device), dequantizing the packed parameters. Nothing changes unless every entry matches.
pub fn load_packed(path: &Path, store: &mut ParamStore) -> Result<PackedInfo> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::Checkpoint(format!("{}: {msg}", path.display()));
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file ({e:?})")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(format!(
            "not a packed export (metadata `format` is {:?}, expected \"{FORMAT}\"); a plain \
             checkpoint loads with checkpoint::load_into",
            metadata.get("format")
        )));
    }
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a valid safetensors file ({e:?})")))?;

    let mut quant: HashMap<String, QuantMeta> = HashMap::new();
    for (key, value) in &metadata {
        if let Some(name) = key.strip_prefix(QUANT_PREFIX) {
            let meta: QuantMeta =
                serde_json::from_str(value).map_err(|e| bad(format!("metadata `{key}`: {e}")))?;
            quant.insert(name.to_string(), meta);
        }
    }

    let mut problems = Vec::new();
    let mut values = Vec::new();
    let mut specs = Vec::new();
    let mut used: HashSet<String> = HashSet::new();
    for (name, p) in store.iter() {
        let shape = p.value.shape();
        let result = if let Some(meta) = quant.get(name) {
            used.extend(["levels", "alpha", "beta"].map(|l| format!("{name}.{l}")));
            if meta.points.is_some() {
                used.insert(format!("{name}.points"));
            }
            specs.push(PackSpec {
                name: name.to_string(),
                bits: meta.bits,
                bucket: meta.bucket,
                points: point_table(&st, name, meta),
            });
            if meta.shape != shape {
                Err(format!("file {:?}, model {shape:?}", meta.shape))
            } else {
                dequantize_entry(&st, name, meta)
            }
        } else {
            used.insert(name.to_string());
            match st.tensor(name) {
                Err(_) => Err("missing".to_string()),
                Ok(view) if view.shape() != shape => {
                    Err(format!("file {:?}, model {shape:?}", view.shape()))
                }
                Ok(view) => f32_values(&view),
            }
        };
        match result {
            Ok(v) => values.push((name.to_string(), v)),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    let mut unexpected: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| !used.contains(*n))
        .cloned()
        .collect();
    unexpected.sort();
    if !unexpected.is_empty() {
        problems.push(format!("unexpected tensors: {}", unexpected.join(", ")));
    }
    if !problems.is_empty() {
        let n = problems.len();
        let mut msg = problems.into_iter().take(8).collect::<Vec<_>>().join("; ");
        if n > 8 {
            msg += &format!("; … ({n} problems in all)");
        }
        return Err(bad(format!(
            "does not match this model ({msg}); was it exported from the same architecture?"
        )));
    }
    for (name, v) in values {
        let p = store.get_mut(&name)?;
        let value = Tensor::from_vec(p.value.shape(), v, p.value.device())?;
        p.value = value;
    }
    let info = metadata
        .get("lit.info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok(PackedInfo { specs, info })
}
