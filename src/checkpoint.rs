//! Checkpoints: safetensors files keyed by the PyTorch `state_dict` names of the [`ParamStore`]
//! (parameters and buffers), so `model.load_state_dict(safetensors.torch.load_file(path))` works in
//! PyTorch, plus a JSON sidecar `<name>.json` (config, epoch, metrics, seed, key order).
//!
//! Writes are atomic (temp file in the same folder, fsync, rename): a crash or a diverged run never
//! leaves a half-written checkpoint in place of the last good one. Loading checks every key and
//! shape and reports all problems at once; a corrupt file is an error, never a panic.

use crate::error::{Error, Result};
use crate::nn::{EntryKind, ParamStore};
use crate::tensor::Tensor;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `model.safetensors` → `model.json`.
pub fn sidecar_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("json")
}

use crate::durable::write_atomic;

/// The header metadata key of the run-state generation stamp (`train::run_state`): a
/// checkpoint file that carries it belongs to that generation of a committed state.
pub const GENERATION_KEY: &str = "lit_engine.generation";

/// The `lit_engine.generation` stamp in a safetensors header.
pub fn safetensors_generation(bytes: &[u8]) -> Option<u64> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).ok()?;
    meta.metadata().as_ref()?.get(GENERATION_KEY)?.parse().ok()
}

/// BatchNorm's batch counter: an integer in PyTorch (I64 in the file), an f32 in the store.
pub fn is_batch_counter(name: &str) -> bool {
    name == "num_batches_tracked" || name.ends_with(".num_batches_tracked")
}

/// A store encoded as a safetensors file: the bytes, the state_dict keys in registration order,
/// and the entries outside the state_dict (which go to the sidecar).
pub struct Encoded {
    /// The safetensors file.
    pub bytes: Vec<u8>,
    /// The state_dict keys in registration order.
    pub keys: Vec<String>,
    /// Entries outside the state_dict (LMA running statistics), for the sidecar.
    pub state: serde_json::Map<String, serde_json::Value>,
}

/// Encode the state_dict entries of `store` (parameters and buffers; `num_batches_tracked` as I64
/// like PyTorch), with `metadata` added to the header. `what` names the file in errors.
pub fn encode(store: &ParamStore, what: &Path, metadata: &[(&str, String)]) -> Result<Encoded> {
    let mut entries: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(store.len());
    let mut state = serde_json::Map::new();
    for (name, p) in store.iter() {
        let data = p.value.to_vec()?;
        if p.kind == EntryKind::State {
            state.insert(
                name.to_string(),
                serde_json::json!({"shape": p.value.shape(), "values": data}),
            );
            continue;
        }
        let (dtype, bytes) = if p.kind == EntryKind::Buffer && is_batch_counter(name) {
            let ints: Vec<i64> = data.iter().map(|&v| v.round() as i64).collect();
            (Dtype::I64, bytemuck::cast_slice(&ints).to_vec())
        } else {
            (Dtype::F32, bytemuck::cast_slice(&data).to_vec())
        };
        entries.push((name.to_string(), dtype, p.value.shape().to_vec(), bytes));
    }
    let views = entries
        .iter()
        .map(|(n, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Checkpoint(format!("{}: tensor `{n}`: {e}", what.display())))
        })
        .collect::<Result<Vec<_>>>()?;
    let keys: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
    let mut header = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "lit_engine.key_order".to_string(),
            serde_json::to_string(&keys).unwrap_or_default(),
        ),
    ]);
    header.extend(metadata.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let bytes = safetensors::serialize(views, &Some(header))
        .map_err(|e| Error::Checkpoint(format!("{}: cannot serialize: {e}", what.display())))?;
    Ok(Encoded { bytes, keys, state })
}

/// The sidecar of a checkpoint file named `file_name`: `info` (any object) plus `keys` and
/// `state` — the entries outside the state_dict (LMA running statistics), which PyTorch's
/// `load_state_dict` would reject in the safetensors.
pub fn sidecar_json(
    file_name: &str,
    encoded: &Encoded,
    info: serde_json::Value,
) -> Result<Vec<u8>> {
    let mut info = match info {
        serde_json::Value::Object(m) => m,
        other => serde_json::Map::from_iter([("info".to_string(), other)]),
    };
    info.insert("checkpoint".into(), file_name.into());
    info.insert("keys".into(), encoded.keys.clone().into());
    if !encoded.state.is_empty() {
        info.insert(
            "state".into(),
            serde_json::Value::Object(encoded.state.clone()),
        );
    }
    serde_json::to_vec_pretty(&serde_json::Value::Object(info))
        .map_err(|e| Error::Checkpoint(format!("sidecar for {file_name}: {e}")))
}

/// Save the state_dict entries of `store` to `path` and its sidecar JSON `<stem>.json` (see
/// [`sidecar_json`]), each atomically.
pub fn save(path: &Path, store: &ParamStore, info: serde_json::Value) -> Result<()> {
    let encoded = encode(store, path, &[])?;
    write_atomic(path, &encoded.bytes)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_atomic(&sidecar_path(path), &sidecar_json(&name, &encoded, info)?)
}

/// The `state` object of the sidecar of `path` (empty when there is no sidecar or no state).
/// The sidecar must describe the same run-state generation as the weights when both carry one
/// (a published `-last` pair copied while a run was stopped between its two files would not).
fn sidecar_state(
    path: &Path,
    generation: Option<u64>,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let side = sidecar_path(path);
    let text = match std::fs::read_to_string(&side) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(Error::io(&side, e)),
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Checkpoint(format!("{}: invalid JSON: {e}", side.display())))?;
    if let (Some(file), Some(side_gen)) = (generation, json["generation"].as_u64()) {
        if file != side_gen {
            return Err(Error::Checkpoint(format!(
                "{} is of run-state generation {side_gen} but {} of generation {file}: they \
                 are not one pair (resume the run to publish a matching pair)",
                side.display(),
                path.display()
            )));
        }
    }
    Ok(match json.get("state") {
        Some(serde_json::Value::Object(m)) => m.clone(),
        _ => Default::default(),
    })
}

/// One sidecar state entry `{shape, values}` as f32 values of `shape`.
fn state_values(v: &serde_json::Value, shape: &[usize]) -> std::result::Result<Vec<f32>, String> {
    let file_shape: Option<Vec<usize>> = v["shape"]
        .as_array()
        .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect());
    let values: Option<Vec<f32>> = v["values"]
        .as_array()
        .and_then(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect());
    match (file_shape, values) {
        (Some(fs), Some(vals)) if fs == shape && vals.len() == shape.iter().product::<usize>() => {
            Ok(vals)
        }
        (Some(fs), Some(_)) if fs != shape => Err(format!("file {fs:?}, model {shape:?}")),
        _ => Err("expected {\"shape\": [..], \"values\": [..]}".into()),
    }
}

/// Decode one stored tensor to f32 (PyTorch may store buffers as int64 or halves as f16/bf16).
fn to_f32(view: &safetensors::tensor::TensorView<'_>) -> std::result::Result<Vec<f32>, String> {
    let b = view.data();
    let v = match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        other => return Err(format!("dtype {other:?} is not supported (expected F32)")),
    };
    Ok(v)
}

/// Load a checkpoint into `store` (values keep each entry's device). Keys may carry the
/// `module.` prefix of `nn.DataParallel`. PyTorch-converted files may lack the BatchNorm
/// `num_batches_tracked` counters (older PyTorch has none): those are set to 0. State outside the
/// state_dict (LMA running statistics) comes from the sidecar's `state` when present (or from the
/// file), else keeps its value. Nothing is changed unless every key matches.
pub fn load_into(path: &Path, store: &mut ParamStore) -> Result<()> {
    let elements = store.iter().map(|(_, p)| p.value.numel()).sum();
    let limit = crate::limits::max_checkpoint_bytes(elements);
    let bytes = crate::limits::read_file_at_most(path, limit, "checkpoint")?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::Checkpoint(format!(
            "{}: not a valid safetensors file ({e:?})",
            path.display()
        ))
    })?;
    let mut file: HashMap<String, safetensors::tensor::TensorView<'_>> = HashMap::new();
    for (name, view) in st.tensors() {
        let key = name.strip_prefix("module.").unwrap_or(&name).to_string();
        file.insert(key, view);
    }

    let state = sidecar_state(path, safetensors_generation(&bytes))?;

    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut values = Vec::new();
    for (name, p) in store.iter() {
        let Some(view) = file.get(name) else {
            if p.kind == EntryKind::State {
                if let Some(v) = state.get(name) {
                    match state_values(v, p.value.shape()) {
                        Ok(v) => values.push((name.to_string(), v)),
                        Err(e) => wrong.push(format!("{name} (sidecar state): {e}")),
                    }
                }
            } else if p.kind == EntryKind::Buffer && is_batch_counter(name) {
                values.push((name.to_string(), vec![0.0; p.value.numel()]));
            } else {
                missing.push(name.to_string());
            }
            continue;
        };
        if view.shape() != p.value.shape() {
            wrong.push(format!(
                "{name}: file {:?}, model {:?}",
                view.shape(),
                p.value.shape()
            ));
            continue;
        }
        match to_f32(view) {
            Ok(v) => values.push((name.to_string(), v)),
            Err(e) => wrong.push(format!("{name}: {e}")),
        }
    }
    let mut unexpected: Vec<&String> = file.keys().filter(|k| !store.contains(k)).collect();
    unexpected.sort();

    if !(missing.is_empty() && unexpected.is_empty() && wrong.is_empty()) {
        let list = |v: Vec<String>| {
            let n = v.len();
            let mut s = v.into_iter().take(8).collect::<Vec<_>>().join(", ");
            if n > 8 {
                s += &format!(", … ({n} in all)");
            }
            s
        };
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing keys: {}", list(missing)));
        }
        if !unexpected.is_empty() {
            parts.push(format!(
                "unexpected keys: {}",
                list(unexpected.into_iter().cloned().collect())
            ));
        }
        if !wrong.is_empty() {
            parts.push(format!("wrong shape or type: {}", list(wrong)));
        }
        return Err(Error::Checkpoint(format!(
            "{} does not fit the model: {}",
            path.display(),
            parts.join("; ")
        )));
    }
    for (name, v) in values {
        let p = store.get_mut(&name)?;
        p.value = Tensor::from_vec(p.value.shape(), v, p.value.device())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    fn store(prefix: &str, out: usize) -> ParamStore {
        let mut s = ParamStore::new();
        let w: Vec<f32> = (0..out * 3).map(|i| i as f32 * 0.5 - 1.0).collect();
        s.add_param(
            &format!("{prefix}weight"),
            Tensor::from_vec(&[out, 3], w, &Device::Cpu).unwrap(),
        )
        .unwrap();
        s.add_param(
            &format!("{prefix}bias"),
            Tensor::from_vec(&[out], vec![0.25; out], &Device::Cpu).unwrap(),
        )
        .unwrap();
        s.add_buffer(
            &format!("{prefix}running_mean"),
            Tensor::from_vec(&[out], vec![3.0; out], &Device::Cpu).unwrap(),
        )
        .unwrap();
        s
    }

    fn zeroed(s: &ParamStore) -> ParamStore {
        let mut z = s.clone();
        for (_, p) in z.iter_mut() {
            p.value = Tensor::zeros(p.value.shape(), &Device::Cpu).unwrap();
        }
        z
    }

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lit-ckpt-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn save_then_load_round_trips_params_buffers_and_sidecar() {
        let dir = tmp_dir("roundtrip");
        let path = dir.join("m.safetensors");
        let s = store("fc1.", 2);
        save(&path, &s, serde_json::json!({"epoch": 3})).unwrap();
        let mut z = zeroed(&s);
        load_into(&path, &mut z).unwrap();
        for ((n, a), (_, b)) in s.iter().zip(z.iter()) {
            assert_eq!(a.value.to_vec().unwrap(), b.value.to_vec().unwrap(), "{n}");
        }
        let side: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("m.json")).unwrap()).unwrap();
        assert_eq!(side["epoch"], 3);
        assert_eq!(
            side["keys"],
            serde_json::json!(["fc1.weight", "fc1.bias", "fc1.running_mean"])
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn module_prefix_is_accepted() {
        let dir = tmp_dir("prefix");
        let path = dir.join("m.safetensors");
        let s = store("module.fc1.", 2);
        save(&path, &s, serde_json::json!({})).unwrap();
        let mut plain = zeroed(&store("fc1.", 2));
        load_into(&path, &mut plain).unwrap();
        assert_eq!(
            plain.get("fc1.bias").unwrap().value.to_vec().unwrap(),
            vec![0.25, 0.25]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mismatches_are_all_reported_and_leave_the_store_unchanged() {
        let dir = tmp_dir("mismatch");
        let path = dir.join("m.safetensors");
        save(&path, &store("fc1.", 2), serde_json::json!({})).unwrap();
        let mut other = store("fc1.", 4);
        other
            .add_param("fc2.weight", Tensor::zeros(&[1, 1], &Device::Cpu).unwrap())
            .unwrap();
        let before = other.get("fc1.bias").unwrap().value.to_vec().unwrap();
        let msg = load_into(&path, &mut other).unwrap_err().to_string();
        assert!(msg.contains("missing keys: fc2.weight"), "{msg}");
        assert!(
            msg.contains("fc1.weight: file [2, 3], model [4, 3]"),
            "{msg}"
        );
        assert_eq!(
            other.get("fc1.bias").unwrap().value.to_vec().unwrap(),
            before
        );

        let mut fewer = ParamStore::new();
        fewer
            .add_param("fc1.weight", Tensor::zeros(&[2, 3], &Device::Cpu).unwrap())
            .unwrap();
        let msg = load_into(&path, &mut fewer).unwrap_err().to_string();
        assert!(
            msg.contains("unexpected keys: fc1.bias, fc1.running_mean"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_or_truncated_files_are_errors_not_panics() {
        let dir = tmp_dir("corrupt");
        let path = dir.join("m.safetensors");
        save(&path, &store("fc1.", 2), serde_json::json!({})).unwrap();
        let good = std::fs::read(&path).unwrap();
        let bad = dir.join("bad.safetensors");
        let mut cases: Vec<Vec<u8>> = vec![vec![], b"not a checkpoint".to_vec(), vec![0xff; 64]];
        for cut in [4, 8, 20, good.len() / 2, good.len() - 1] {
            cases.push(good[..cut].to_vec());
        }
        for bytes in cases {
            std::fs::write(&bad, &bytes).unwrap();
            let mut s = zeroed(&store("fc1.", 2));
            let msg = load_into(&bad, &mut s).unwrap_err().to_string();
            assert!(
                msg.contains("bad.safetensors"),
                "{} bytes: {msg}",
                bytes.len()
            );
        }
        let msg = load_into(&dir.join("nope.safetensors"), &mut store("fc1.", 2))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("nope.safetensors"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A freshly initialised store of `arch` (10 classes, cpu).
    fn built(arch: &str, seed: u64) -> ParamStore {
        let mut s = ParamStore::new();
        crate::models::build(
            arch,
            10,
            &mut s,
            &Device::Cpu,
            &mut crate::rng::Rng::new(seed),
        )
        .unwrap();
        s
    }

    /// A ResNet-20 store with every entry set to a distinct non-trivial value (counters to 7).
    fn resnet20(seed: u64) -> ParamStore {
        let mut s = built("resnet20", seed);
        for (i, (name, p)) in s.iter_mut().enumerate() {
            let n = p.value.numel();
            let v: Vec<f32> = if is_batch_counter(name) {
                vec![7.0]
            } else {
                (0..n).map(|j| (i * 31 + j) as f32 * 1e-3 - 0.5).collect()
            };
            p.value = Tensor::from_vec(p.value.shape(), v, &Device::Cpu).unwrap();
        }
        s
    }

    fn assert_same(a: &ParamStore, b: &ParamStore) {
        assert_eq!(a.names(), b.names());
        for ((n, x), (_, y)) in a.iter().zip(b.iter()) {
            assert_eq!(x.value.to_vec().unwrap(), y.value.to_vec().unwrap(), "{n}");
        }
    }

    #[test]
    fn resnet20_round_trips_with_integer_batch_counters() {
        let dir = tmp_dir("resnet20");
        let path = dir.join("r20.safetensors");
        let s = resnet20(1);
        save(&path, &s, serde_json::json!({})).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let counter = st.tensor("layer2.0.bn1.num_batches_tracked").unwrap();
        assert_eq!((counter.dtype(), counter.shape()), (Dtype::I64, &[][..]));
        assert_eq!(counter.data(), 7i64.to_le_bytes());
        assert_eq!(
            st.tensor("layer2.0.bn1.running_var").unwrap().dtype(),
            Dtype::F32
        );
        assert_eq!(st.names().len(), s.len());

        let mut fresh = resnet20(2);
        for (_, p) in fresh.iter_mut() {
            p.value = Tensor::zeros(p.value.shape(), &Device::Cpu).unwrap();
        }
        load_into(&path, &mut fresh).unwrap();
        assert_same(&s, &fresh);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Write `entries` as a safetensors file the way PyTorch tools do (F32 / I64 tensors).
    fn write_foreign(path: &Path, entries: &[(String, Vec<usize>, Vec<f32>)], int_counters: bool) {
        let bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = entries
            .iter()
            .map(|(n, shape, v)| {
                if int_counters && is_batch_counter(n) {
                    let ints: Vec<i64> = v.iter().map(|&x| x as i64).collect();
                    (
                        n.clone(),
                        Dtype::I64,
                        shape.clone(),
                        bytemuck::cast_slice(&ints).to_vec(),
                    )
                } else {
                    (
                        n.clone(),
                        Dtype::F32,
                        shape.clone(),
                        bytemuck::cast_slice(v).to_vec(),
                    )
                }
            })
            .collect();
        let views: Vec<_> = bufs
            .iter()
            .map(|(n, d, shape, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, shape.clone(), b).unwrap(),
                )
            })
            .collect();
        std::fs::write(path, safetensors::serialize(views, &None).unwrap()).unwrap();
    }

    #[test]
    fn pytorch_files_without_batch_counters_and_with_module_prefix_load() {
        let dir = tmp_dir("foreign");
        let path = dir.join("converted.safetensors");
        let s = resnet20(3);
        // Old PyTorch (< 0.4.1) state_dicts have no num_batches_tracked; DataParallel adds `module.`.
        let entries: Vec<(String, Vec<usize>, Vec<f32>)> = s
            .iter()
            .filter(|(n, _)| !is_batch_counter(n))
            .map(|(n, p)| {
                (
                    format!("module.{n}"),
                    p.value.shape().to_vec(),
                    p.value.to_vec().unwrap(),
                )
            })
            .collect();
        write_foreign(&path, &entries, true);
        let mut fresh = resnet20(4);
        load_into(&path, &mut fresh).unwrap();
        for (n, p) in fresh.iter() {
            let want = if is_batch_counter(n) {
                vec![0.0]
            } else {
                s.get(n).unwrap().value.to_vec().unwrap()
            };
            assert_eq!(p.value.to_vec().unwrap(), want, "{n}");
        }

        // With I64 counters (current PyTorch), they are read as integers.
        let entries: Vec<(String, Vec<usize>, Vec<f32>)> = s
            .iter()
            .map(|(n, p)| {
                (
                    n.to_string(),
                    p.value.shape().to_vec(),
                    p.value.to_vec().unwrap(),
                )
            })
            .collect();
        write_foreign(&path, &entries, true);
        let mut fresh = resnet20(5);
        load_into(&path, &mut fresh).unwrap();
        assert_same(&s, &fresh);

        // A missing weight is still an error.
        write_foreign(&path, &entries[1..], true);
        let msg = load_into(&path, &mut resnet20(6)).unwrap_err().to_string();
        assert!(msg.contains("missing keys: bn1.weight"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lma_state_lives_in_the_sidecar_not_the_state_dict() {
        let dir = tmp_dir("lma");
        let path = dir.join("lma.safetensors");
        let mut s = built("cfn-spec2-lma8", 1);
        s.set(
            "activations.3.mv_std",
            Tensor::scalar(0.625, &Device::Cpu).unwrap(),
        )
        .unwrap();
        s.set(
            "activations.0.mv_mean",
            Tensor::scalar(-1.5, &Device::Cpu).unwrap(),
        )
        .unwrap();
        save(&path, &s, serde_json::json!({})).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let names = SafeTensors::deserialize(&bytes).unwrap().names().len();
        let states = s.iter().filter(|(_, p)| p.kind == EntryKind::State).count();
        assert_eq!((names, states), (s.len() - 10, 10));
        let side: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("lma.json")).unwrap()).unwrap();
        assert_eq!(
            side["state"]["activations.3.mv_std"]["values"],
            serde_json::json!([0.625])
        );
        assert!(side["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| !k.as_str().unwrap().contains("mv_")));

        let mut fresh = built("cfn-spec2-lma8", 2);
        load_into(&path, &mut fresh).unwrap();
        assert_same(&s, &fresh);

        // Without the sidecar (a PyTorch state_dict) the state keeps its value.
        std::fs::remove_file(dir.join("lma.json")).unwrap();
        let mut fresh = built("cfn-spec2-lma8", 2);
        load_into(&path, &mut fresh).unwrap();
        assert_eq!(
            fresh
                .get("activations.3.mv_std")
                .unwrap()
                .value
                .item()
                .unwrap(),
            0.0
        );
        assert_eq!(
            fresh
                .get("activations.3.alphas")
                .unwrap()
                .value
                .to_vec()
                .unwrap(),
            s.get("activations.3.alphas")
                .unwrap()
                .value
                .to_vec()
                .unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
