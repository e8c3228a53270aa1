//! Reading one golden case (`<case>.json` + `<case>.safetensors`) for op-level tests; where cases
//! are found is `lit_engine::golden::locate` (vendored op cases first, then the full set).
#![allow(dead_code)]

use lit_engine::golden::locate;
use lit_engine::testing::check_close_delta;
use lit_engine::{Device, IndexTensor, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

pub struct GoldenCase {
    pub name: String,
    pub json_path: PathBuf,
    pub json: serde_json::Value,
    bytes: Vec<u8>,
}

/// The case, or `None` after a printed `SKIP` when it is a model-level case and the full golden set
/// is absent (a failure under `LIT_REQUIRE_GOLDEN=1`; vendored op cases are always there).
pub fn load(name: &str) -> Option<GoldenCase> {
    let json_path = locate::case_or_skip(name)?;
    let text = std::fs::read_to_string(&json_path)
        .unwrap_or_else(|e| panic!("{}: {e}", json_path.display()));
    let json =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", json_path.display()));
    let st_path = json_path.with_extension("safetensors");
    let bytes = std::fs::read(&st_path).unwrap_or_else(|e| panic!("{}: {e}", st_path.display()));
    Some(GoldenCase {
        name: name.to_string(),
        json_path,
        json,
        bytes,
    })
}

impl GoldenCase {
    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    pub fn has(&self, tensor: &str) -> bool {
        self.view().names().iter().any(|n| *n == tensor)
    }

    pub fn attr_f64(&self, key: &str) -> f64 {
        self.json["attrs"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: attrs.{key} is not a number", self.name))
    }

    pub fn attr_str(&self, key: &str) -> String {
        self.json["attrs"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: attrs.{key} is not a string", self.name))
            .into()
    }

    /// An F32 tensor's shape and values.
    pub fn f32(&self, tensor: &str) -> (Vec<usize>, Vec<f32>) {
        let st = self.view();
        let t = st
            .tensor(tensor)
            .unwrap_or_else(|e| panic!("{}: tensor {tensor}: {e}", self.name));
        assert_eq!(t.dtype(), Dtype::F32, "{}: {tensor} is not F32", self.name);
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), v)
    }

    pub fn tensor(&self, tensor: &str, dev: &Device) -> Tensor {
        let (shape, v) = self.f32(tensor);
        Tensor::from_vec(&shape, v, dev).unwrap()
    }

    /// An I64 tensor (labels) as i32.
    pub fn index_tensor(&self, tensor: &str, dev: &Device) -> IndexTensor {
        let st = self.view();
        let t = st
            .tensor(tensor)
            .unwrap_or_else(|e| panic!("{}: tensor {tensor}: {e}", self.name));
        assert_eq!(t.dtype(), Dtype::I64, "{}: {tensor} is not I64", self.name);
        let v: Vec<i32> = t
            .data()
            .chunks_exact(8)
            .map(|b| {
                let x = i64::from_le_bytes(b.try_into().unwrap());
                i32::try_from(x).unwrap_or_else(|_| {
                    panic!("{}: {tensor} value {x} does not fit i32", self.name)
                })
            })
            .collect();
        IndexTensor::from_vec(t.shape(), v, dev).unwrap()
    }

    /// Compare with expectation `tensor` by the golden rule (its `rel`, `abs`, `delta_from`).
    #[track_caller]
    pub fn check(&self, tensor: &str, got: &Tensor, dev: &Device) {
        let spec = &self.json["tensors"][tensor];
        let rel = spec["rel"]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: {tensor} has no rel", self.name));
        let abs = spec["abs"]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: {tensor} has no abs", self.name));
        let (shape, want) = self.f32(tensor);
        assert_eq!(
            got.shape(),
            &shape[..],
            "{} on {}: {tensor} shape",
            self.name,
            dev.name()
        );
        let delta = spec["delta_from"].as_str().map(|d| self.f32(d).1);
        let got = got.to_vec().unwrap();
        if let Err(e) = check_close_delta(&got, &want, delta.as_deref(), rel, abs) {
            panic!("{} on {}: {tensor}: {e}", self.name, dev.name());
        }
    }
}
