//! The non-uniform quantizer of differentiable quantization (`quantize_to_points`): the CPU
//! reference by hand, the kernels against it (bit-exact forward, both emu thread orders, odd sizes
//! and partial buckets), the f64 finite-difference check of the gradient with respect to the
//! points, and the packed export of mixed-bit students with their point tables (pack → unpack
//! gives exactly the quantized weights).

use lit_engine::distill::export::{load_packed, packed_size, save_packed, PackSpec};
use lit_engine::distill::quantize::{
    dequantize_points_cpu, pack_levels, point_gradients, point_gradients_cpu, quantize_to_points,
    quantize_to_points_cpu, unpack_levels,
};
use lit_engine::nn::{EntryKind, ParamStore};
use lit_engine::rng::Rng;
use lit_engine::testing::{assert_devices_agree, assert_gradient, random_f32, random_f64};
use lit_engine::{Device, IndexTensor, Tensor};
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("quantize-points")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `count` sorted, non-uniform points in [0, 1], both ends included.
fn skewed_points(count: usize) -> Vec<f32> {
    (0..count)
        .map(|j| {
            let t = j as f32 / (count - 1).max(1) as f32;
            t * t * (3.0 - 2.0 * t)
        })
        .collect()
}

#[test]
fn points_quantizer_by_hand() {
    let points = [0.0f32, 0.2, 1.0];
    // One bucket: beta = -1, alpha = 2; u = 0, 0.25, 0.5, 1 (0.5 is nearer 0.2 than 1).
    let (q, alpha, beta, index) = quantize_to_points_cpu(&[-1.0f32, -0.5, 0.0, 1.0], &points, None);
    assert_eq!((alpha, beta), (vec![2.0], vec![-1.0]));
    assert_eq!(index, vec![0, 1, 1, 2]);
    assert_eq!(q, vec![-1.0, 0.2 * 2.0 - 1.0, 0.2 * 2.0 - 1.0, 1.0]);
    // A tie (u = 0.5 between 0 and 1) goes to the lower point; a constant bucket gets alpha = 1.
    let (_, alpha, beta, index) =
        quantize_to_points_cpu(&[0.0f32, 0.5, 1.0, 3.0, 3.0], &[0.0, 1.0], Some(3));
    assert_eq!(index, vec![0, 0, 1, 0, 0]);
    assert_eq!((alpha, beta), (vec![1.0, 1.0], vec![0.0, 3.0]));
}

#[test]
fn dequantize_points_reproduces_the_quantizer_and_rejects_bad_indices() {
    let v = random_f32(3, 203);
    let points = skewed_points(8);
    let (q, alpha, beta, index) = quantize_to_points_cpu(&v, &points, Some(50));
    assert_eq!(
        dequantize_points_cpu(&index, &points, &alpha, &beta, Some(50)).unwrap(),
        q
    );
    assert!(dequantize_points_cpu(&[8], &points, &[1.0], &[0.0], None).is_err());
    assert!(dequantize_points_cpu(&[-1], &points, &[1.0], &[0.0], None).is_err());
    assert!(dequantize_points_cpu(&index, &points, &alpha[..2], &beta, Some(50)).is_err());
}

#[test]
fn packed_point_indices_round_trip_exactly() {
    for bits in [1u32, 2, 3, 5, 8] {
        let v = random_f32(bits as u64, 301);
        let points = skewed_points(1 << bits);
        let (q, alpha, beta, index) = quantize_to_points_cpu(&v, &points, Some(64));
        let back = unpack_levels(&pack_levels(&index, bits).unwrap(), bits, v.len()).unwrap();
        assert_eq!(back, index, "bits={bits}");
        let values = dequantize_points_cpu(&back, &points, &alpha, &beta, Some(64)).unwrap();
        assert_eq!(values, q, "bits={bits}");
    }
}

fn built(arch: &str, seed: u64) -> ParamStore {
    let mut store = ParamStore::new();
    lit_engine::models::build(arch, 10, &mut store, &Device::Cpu, &mut Rng::new(seed)).unwrap();
    store
}

/// A mixed-bit student as differentiable quantization leaves it: each quantized parameter with
/// its own bits and learned points, one uniform parameter beside them, the rest f32.
#[test]
fn mixed_bit_point_tables_export_and_reload_exactly() {
    let dir = scratch("mixed");
    let path = dir.join("dq-packed.safetensors");
    let arch = "cfn-spec0";
    let store = built(arch, 4);
    let params: Vec<String> = store
        .iter()
        .filter(|(_, p)| p.kind == EntryKind::Param && p.value.numel() > 1)
        .map(|(n, _)| n.to_string())
        .collect();
    assert!(params.len() >= 4, "{params:?}");
    let mut specs = Vec::new();
    for (k, name) in params.iter().take(3).enumerate() {
        let bits = [2u32, 5, 3][k];
        specs.push(PackSpec {
            name: name.clone(),
            bits,
            bucket: [Some(64), None, Some(7)][k],
            points: Some(skewed_points(1 << bits)),
        });
    }
    // Fewer points than 2^bits is fine (levels index the table).
    specs[2].points = Some(skewed_points(5));
    specs.push(PackSpec {
        name: params[3].clone(),
        bits: 4,
        bucket: Some(32),
        points: None,
    });
    let export = save_packed(&path, &store, &specs, serde_json::json!({"arch": arch})).unwrap();
    assert_eq!(export.file_bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(packed_size(&store, &specs).unwrap(), export.size);

    // Size by hand: the point tables count.
    let mut params_bytes = 0u64;
    for (name, p) in store.iter().filter(|(_, p)| p.kind == EntryKind::Param) {
        let n = p.value.numel() as u64;
        params_bytes += match specs.iter().find(|s| s.name == name) {
            Some(s) => {
                let rows = match s.bucket {
                    Some(b) if n as usize > b => n.div_ceil(b as u64),
                    _ => 1,
                };
                let table = s.points.as_ref().map_or(0, |p| 4 * p.len() as u64);
                (n * s.bits as u64).div_ceil(8) + 8 * rows + table
            }
            None => 4 * n,
        };
    }
    assert_eq!(export.size.parameters, params_bytes);

    let mut reloaded = built(arch, 99);
    let info = load_packed(&path, &mut reloaded).unwrap();
    assert_eq!(
        info.specs, specs,
        "bits, buckets and point tables come back"
    );
    assert_eq!(info.info["arch"], arch);
    for (name, p) in store.iter() {
        let original = p.value.to_vec().unwrap();
        let want = match specs.iter().find(|s| s.name == name) {
            Some(PackSpec {
                points: Some(points),
                bucket,
                ..
            }) => quantize_to_points_cpu(&original, points, *bucket).0,
            Some(s) => {
                lit_engine::distill::quantize::quantize_uniform_cpu(&original, s.bits, s.bucket).0
            }
            None => original,
        };
        let got = reloaded.get(name).unwrap().value.to_vec().unwrap();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn bad_point_tables_are_errors() {
    let dir = scratch("bad");
    let path = dir.join("bad.safetensors");
    let store = built("mlp-784-32-10", 1);
    let spec = |bits: u32, points: Vec<f32>| {
        vec![PackSpec {
            name: "fc2.weight".into(),
            bits,
            bucket: None,
            points: Some(points),
        }]
    };
    let cases = [
        spec(1, vec![0.0, 0.5, 1.0]),
        spec(2, vec![0.0, 0.7, 0.3, 1.0]),
        spec(2, vec![0.0, 1.5]),
        spec(2, vec![]),
        spec(2, vec![0.0, f32::NAN]),
    ];
    for specs in cases {
        let err = save_packed(&path, &store, &specs, serde_json::Value::Null).unwrap_err();
        assert!(err.to_string().contains("fc2.weight"), "{err}");
        assert!(!path.exists());
    }
    // The metadata's point count must match the stored table.
    let good = spec(2, vec![0.0, 0.3, 1.0]);
    save_packed(&path, &store, &good, serde_json::Value::Null).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let key = br#"\"points\":3"#;
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("point count in the metadata");
    let mut edited = bytes.clone();
    edited[at + key.len() - 1] = b'2';
    std::fs::write(&path, &edited).unwrap();
    let mut reloaded = built("mlp-784-32-10", 2);
    let err = load_packed(&path, &mut reloaded).unwrap_err().to_string();
    assert!(
        err.contains("fc2.weight.points") && err.contains("says 2"),
        "{err}"
    );
}

/// (elements, points, bucket): odd sizes, a last bucket shorter than the others, one bucket, a
/// bucket longer than the tensor, buckets of a few elements, tables of 2 to 256 points (not only
/// powers of two).
const CASES: [(usize, usize, Option<usize>); 5] = [
    (1000, 16, Some(256)),
    (777, 5, None),
    (5, 4, Some(256)),
    (513, 2, Some(7)),
    (300, 256, Some(64)),
];

#[test]
fn quantize_points_kernel_matches_cpu_bit_for_bit() {
    for (n, count, bucket) in CASES {
        let v = random_f32(n as u64 + 7, n);
        let points = skewed_points(count);
        // Exact (rel = abs = 0): the kernel does the same f32 operations in the same order.
        assert_devices_agree(
            &format!("quantize_to_points n={n} points={count} bucket={bucket:?}"),
            0.0,
            0.0,
            |dev| {
                let x = Tensor::from_slice(&[n], &v, dev)?;
                let p = Tensor::from_slice(&[count], &points, dev)?;
                let q = quantize_to_points(&x, &p, bucket)?;
                let index: Vec<f32> = q.levels.to_vec()?.iter().map(|&j| j as f32).collect();
                Ok(vec![
                    q.values,
                    q.alpha,
                    q.beta,
                    Tensor::from_vec(&[n], index, &Device::Cpu)?,
                ])
            },
        );
    }
}

#[test]
fn point_gradients_kernel_matches_cpu() {
    for (n, count, bucket) in CASES {
        let v = random_f32(n as u64 + 11, n);
        let dy = random_f32(n as u64 + 13, n);
        let points = skewed_points(count);
        let (_, alpha, _, index) = quantize_to_points_cpu(&v, &points, bucket);
        assert_devices_agree(
            &format!("point_gradients n={n} points={count} bucket={bucket:?}"),
            1e-6,
            1e-7,
            |dev| {
                let g = Tensor::from_slice(&[n], &dy, dev)?;
                let idx = IndexTensor::from_slice(&[n], &index, dev)?;
                let a = Tensor::from_slice(&[alpha.len()], &alpha, dev)?;
                Ok(vec![point_gradients(&g, &idx, &a, bucket, count)?])
            },
        );
    }
}

/// L(p) = sum_i c_i * Q(w; p)_i is linear in the points while no element changes its nearest
/// point, so central differences in f64 give the gradient the backward computes.
#[test]
fn point_gradients_match_finite_differences_in_f64() {
    for (n, count, bucket) in [(23usize, 4usize, Some(8)), (61, 7, None), (40, 16, Some(9))] {
        let w = random_f64(n as u64, n);
        let c = random_f64(n as u64 + 1, n);
        let points: Vec<f64> = skewed_points(count).iter().map(|&p| p as f64).collect();
        let loss = |p: &[f64]| -> f64 {
            let (q, _, _, _) = quantize_to_points_cpu(&w, p, bucket);
            q.iter().zip(&c).map(|(a, b)| a * b).sum()
        };
        let (_, alpha, _, index) = quantize_to_points_cpu(&w, &points, bucket);
        let analytic = point_gradients_cpu(&c, &index, &alpha, bucket, count);
        assert!(analytic.iter().any(|&g| g != 0.0));
        assert_gradient(
            &format!("dL/dpoints n={n} points={count} bucket={bucket:?}"),
            &loss,
            &points,
            &analytic,
            1e-6,
        );
    }
}

#[test]
fn bad_point_arguments_are_errors() {
    let dev = Device::Cpu;
    let v = Tensor::from_slice(&[3], &[1.0, 2.0, 3.0], &dev).unwrap();
    let no_points = Tensor::zeros(&[0], &dev).unwrap();
    let matrix = Tensor::zeros(&[2, 2], &dev).unwrap();
    let points = Tensor::from_slice(&[2], &[0.0, 1.0], &dev).unwrap();
    assert!(quantize_to_points(&v, &no_points, None).is_err());
    assert!(quantize_to_points(&v, &matrix, None).is_err());
    assert!(quantize_to_points(&v, &points, Some(0)).is_err());
    let q = quantize_to_points(&v, &points, None).unwrap();
    assert!(point_gradients(&v, &q.levels, &q.alpha, None, 0).is_err());
    assert!(
        point_gradients(&v, &q.levels, &q.alpha, Some(2), 2).is_err(),
        "2 buckets, 1 alpha"
    );
    let short = IndexTensor::from_slice(&[2], &[0, 1], &dev).unwrap();
    assert!(point_gradients(&v, &short, &q.alpha, None, 2).is_err());
}
