//! A data set resident in device memory: its bytes (pixels or token ids) and labels uploaded once,
//! and every batch made on the device by the kernels of `kernels/augment.cu` — gather, random
//! crop + flip, normalisation — so that only the batch's example indices cross from the host.
//!
//! The batches are bit for bit those of the host path ([`super::augment`] is the specification:
//! the same keyed Philox draws, the same per-channel lookup tables), so whether a data set is
//! resident changes the speed of a run, never its numbers. A data set goes resident only on a
//! kernel device (cuda, emu) and within a memory budget ([`device_data_budget`]); otherwise it
//! stays on the host and the loader prepares batches there as before.

use super::augment::{AugmentKey, Normalizer, CROP_PADDING};
use super::loader::Batch;
use super::{Dataset, ExampleKind};
use crate::device::{Buffer, Device, Gpu, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::tensor::{IndexTensor, Tensor};
use std::sync::Arc;

/// Device memory a resident data set may take when `LIT_DEVICE_DATA_BYTES` does not say: 4 GiB
/// (CIFAR-10's training split is 150 MiB, MNIST's 45 MiB, a 120 000-review text set 120 MiB).
pub const DEFAULT_DEVICE_DATA_BUDGET: u64 = 4 << 30;

/// Mirrors `AugmentImagesParams` in `kernels/augment.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AugmentImagesParams {
    /// Examples in the batch.
    pub batch: i32,
    /// Image channels.
    pub channels: i32,
    /// Image height.
    pub height: i32,
    /// Image width.
    pub width: i32,
    /// Zero padding of the random crop.
    pub padding: i32,
    /// 1: crop + flip before normalising; 0: normalise only.
    pub augment: i32,
    /// Examples in the resident data set (every index is below it).
    pub num_examples: i32,
    /// The epoch word of the augmentation key.
    pub epoch: u32,
    /// Low word of the augmentation seed.
    pub seed_lo: u32,
    /// High word of the augmentation seed.
    pub seed_hi: u32,
}

/// Mirrors `GatherParams` in `kernels/augment.cu` (token ids and labels).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GatherParams {
    /// Examples in the batch.
    pub batch: i32,
    /// Values per example (1 for labels).
    pub length: i32,
    /// Examples in the resident data set.
    pub num_examples: i32,
}

/// Mirrors `PhiloxParams` in `kernels/augment.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PhiloxParams {
    /// Number of (counter, key) inputs.
    pub draws: i32,
}

/// Bytes of device memory a resident data set may take on `device`: `LIT_DEVICE_DATA_BYTES` when
/// set, else [`DEFAULT_DEVICE_DATA_BUDGET`], and on cuda at most half the memory free now (the
/// model, its activations and the optimizer need the rest). `None` on cpu (no device memory).
pub fn device_data_budget(device: &Device) -> Option<u64> {
    let gpu = device.gpu()?;
    let configured = std::env::var("LIT_DEVICE_DATA_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_DEVICE_DATA_BUDGET);
    let free = match &gpu.backend {
        crate::device::GpuBackend::Cuda(c) => c
            .stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _)| free as u64 / 2),
        crate::device::GpuBackend::Emu(_) => None,
    };
    Some(free.map_or(configured, |f| f.min(configured)))
}

/// Where a data set's batches are made.
pub enum Placement {
    /// In device memory: batches are made there.
    Resident(Arc<DeviceDataset>),
    /// On the host, for the reason given (cpu device, over the budget, upload failed).
    Host(String),
}

/// A [`Dataset`] uploaded to a kernel device: bytes, labels and normalisation tables.
pub struct DeviceDataset {
    /// The host bytes it is a copy of (identity check: a loader only uses the copy of its data).
    source: Arc<Vec<u8>>,
    gpu: Arc<Gpu>,
    /// The u8 bytes packed four to a word (the kernels read them as bytes).
    bytes: Buffer<i32>,
    labels: Buffer<i32>,
    /// `C × 256` normalised values (images only): the host loader's [`Normalizer`] tables.
    lut: Option<Buffer<f32>>,
    kind: ExampleKind,
    shape: Vec<usize>,
    len: usize,
}

impl std::fmt::Debug for DeviceDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceDataset({} examples of {:?} on {})",
            self.len,
            self.shape,
            self.gpu.name()
        )
    }
}

/// Device memory a resident copy of `data` takes: the bytes (rounded up to whole words), the
/// labels and the normalisation tables; `None` on overflow.
pub fn resident_bytes(data: &Dataset) -> Option<u64> {
    let bytes = (data.data.len() as u64).div_ceil(4).checked_mul(4)?;
    let labels = (data.len() as u64).checked_mul(4)?;
    let luts = (data.channels() as u64).checked_mul(256 * 4)?;
    bytes.checked_add(labels)?.checked_add(luts)
}

/// Why `data` cannot go resident whatever the memory: indices or a batch's values beyond the
/// kernels' 32-bit range.
fn out_of_kernel_range(data: &Dataset) -> Option<String> {
    (data.len() > i32::MAX as usize || data.example_len() > i32::MAX as usize).then(|| {
        format!(
            "{} examples of {} values are beyond the kernels' 32-bit index range",
            data.len(),
            data.example_len()
        )
    })
}

impl DeviceDataset {
    /// Upload `data` to `device` if it is a kernel device and the copy fits in `budget` bytes;
    /// otherwise (or if the upload fails for want of memory) say why it stays on the host.
    pub fn place(data: &Dataset, device: &Device, budget: u64) -> Result<Placement> {
        let Some(gpu) = device.gpu() else {
            return Ok(Placement::Host(
                "the cpu device has no device memory".into(),
            ));
        };
        if let Some(why) = out_of_kernel_range(data) {
            return Ok(Placement::Host(why));
        }
        let need = resident_bytes(data).unwrap_or(u64::MAX);
        if need > budget {
            return Ok(Placement::Host(format!(
                "{need} bytes, over the device data budget of {budget} (LIT_DEVICE_DATA_BYTES)"
            )));
        }
        match Self::upload(data, device, gpu) {
            Ok(d) => Ok(Placement::Resident(Arc::new(d))),
            Err(Error::Device(e)) => Ok(Placement::Host(format!("upload failed: {e}"))),
            Err(e) => Err(e),
        }
    }

    fn upload(data: &Dataset, device: &Device, gpu: &Arc<Gpu>) -> Result<Self> {
        let mut words: Vec<i32> = Vec::new();
        words
            .try_reserve_exact(data.data.len().div_ceil(4))
            .map_err(|e| Error::Device(format!("out of host memory packing the data set: {e}")))?;
        words.resize(data.data.len().div_ceil(4), 0);
        bytemuck::cast_slice_mut::<i32, u8>(&mut words)[..data.data.len()]
            .copy_from_slice(&data.data);
        let lut = match data.kind {
            ExampleKind::Image => {
                let norm = Normalizer::new(data.channels(), &data.mean, &data.std);
                let flat: Vec<f32> = (0..data.channels())
                    .flat_map(|c| norm.lut(c).iter().copied())
                    .collect();
                Some(device.upload_vec(flat)?)
            }
            ExampleKind::Tokens => None,
        };
        Ok(DeviceDataset {
            source: data.data.clone(),
            gpu: gpu.clone(),
            bytes: device.upload_vec(words)?,
            labels: device.upload(&data.labels)?,
            lut,
            kind: data.kind,
            shape: data.shape.clone(),
            len: data.len(),
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no example.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this is the device copy of `data` on `device`.
    pub fn holds(&self, data: &Dataset, device: &Device) -> bool {
        Arc::ptr_eq(&self.source, &data.data)
            && matches!(device.gpu(), Some(g) if Arc::ptr_eq(g, &self.gpu))
    }

    /// The batch of examples `indices` with each example shaped `example_shape` (as many values
    /// as the data set's): images normalised, and cropped + flipped under `augment` when given;
    /// token ids widened to i32; labels gathered. Equal bit for bit to the host loader's batch.
    pub fn batch(
        &self,
        device: &Device,
        indices: &[usize],
        example_shape: &[usize],
        augment: Option<AugmentKey>,
    ) -> Result<(Batch, IndexTensor)> {
        let per: usize = self.shape.iter().product();
        if example_shape.iter().product::<usize>() != per {
            return Err(Error::Shape(format!(
                "resident batch: examples of shape {:?} cannot be shaped {example_shape:?}",
                self.shape
            )));
        }
        let b = indices.len();
        let values = b
            .checked_mul(per)
            .filter(|&n| n <= i32::MAX as usize)
            .ok_or_else(|| {
                Error::Shape(format!(
                    "resident batch of {b} examples of {per} values is beyond the kernels' \
                     32-bit index range"
                ))
            })?;
        if let Some(&i) = indices.iter().find(|&&i| i >= self.len) {
            return Err(Error::Shape(format!(
                "resident batch: example {i} of a data set of {}",
                self.len
            )));
        }
        let idx: Vec<i32> = indices.iter().map(|&i| i as i32).collect();
        let idx = device.upload_vec(idx)?;
        let g = &self.gpu;
        let mut shape = vec![b];
        shape.extend_from_slice(example_shape);
        let gather_ids = GatherParams {
            batch: b as i32,
            length: per as i32,
            num_examples: self.len as i32,
        };
        let x = match (self.kind, &self.lut) {
            (ExampleKind::Image, Some(lut)) => {
                let mut out = g.zeros::<f32>(values)?;
                let key = augment.unwrap_or(AugmentKey { seed: 0, epoch: 0 });
                let params = AugmentImagesParams {
                    batch: b as i32,
                    channels: self.shape[0] as i32,
                    height: self.shape[1] as i32,
                    width: self.shape[2] as i32,
                    padding: CROP_PADDING as i32,
                    augment: augment.is_some() as i32,
                    num_examples: self.len as i32,
                    epoch: key.epoch,
                    seed_lo: key.seed as u32,
                    seed_hi: (key.seed >> 32) as u32,
                };
                let mut args = KernelArgs::new();
                args.ptr(g.addr(&self.bytes))
                    .ptr(g.addr(&idx))
                    .ptr(g.addr(lut))
                    .ptr(g.addr_mut(&mut out))
                    .value(&params);
                launch_over(g, "augment_images_u8_f32", values, &mut args)?;
                Batch::Float(Tensor::from_buffer(&shape, out, device)?)
            }
            _ => {
                if augment.is_some() {
                    return Err(Error::Config(
                        "augmentation (random crop + flip) needs an image data set".into(),
                    ));
                }
                let out = gather(
                    g,
                    "gather_tokens_u8_i32",
                    g.addr(&self.bytes),
                    &idx,
                    gather_ids,
                )?;
                Batch::Ids(Tensor::from_buffer(&shape, out, device)?)
            }
        };
        let labels = GatherParams {
            length: 1,
            ..gather_ids
        };
        let y = gather(g, "gather_labels_i32", g.addr(&self.labels), &idx, labels)?;
        Ok((x, Tensor::from_buffer(&[b], y, device)?))
    }
}

/// Launch the grid-stride `kernel` over `n` elements (nothing to do for none).
fn launch_over(g: &Gpu, kernel: &str, n: usize, args: &mut KernelArgs) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    g.launch(kernel, LaunchCfg::for_elements(n), args)
}

/// `kernel(source, indices, out, params)` of `kernels/augment.cu`: `params.batch × params.length`
/// i32 values gathered from the examples `indices` of `source` (a device address).
fn gather(
    g: &Gpu,
    kernel: &str,
    source: u64,
    indices: &Buffer<i32>,
    params: GatherParams,
) -> Result<Buffer<i32>> {
    let n = params.batch as usize * params.length as usize;
    let mut out = g.zeros::<i32>(n)?;
    let mut args = KernelArgs::new();
    args.ptr(source)
        .ptr(g.addr(indices))
        .ptr(g.addr_mut(&mut out))
        .value(&params);
    launch_over(g, kernel, n, &mut args)?;
    Ok(out)
}

/// Philox4x32-10 of each `(counter, key)` computed by the device's `kernels/philox.cuh` (on cpu,
/// by [`crate::rng::philox::philox4x32_10`]): lets tests hold the two implementations equal.
pub fn philox_on_device(device: &Device, inputs: &[([u32; 4], [u32; 2])]) -> Result<Vec<[u32; 4]>> {
    let Some(g) = device.gpu() else {
        return Ok(inputs
            .iter()
            .map(|&(c, k)| crate::rng::philox::philox4x32_10(c, k))
            .collect());
    };
    let draws = i32::try_from(inputs.len())
        .ok()
        .filter(|&d| d < i32::MAX / 6)
        .ok_or_else(|| Error::Shape(format!("{} Philox draws in one launch", inputs.len())))?;
    let flat: Vec<i32> = inputs
        .iter()
        .flat_map(|(c, k)| c.iter().chain(k).map(|&w| w as i32))
        .collect();
    let input = device.upload_vec(flat)?;
    let mut out = g.zeros::<i32>(inputs.len() * 4)?;
    let mut args = KernelArgs::new();
    args.ptr(g.addr(&input))
        .ptr(g.addr_mut(&mut out))
        .value(&PhiloxParams { draws });
    launch_over(g, "philox4x32_10_words", inputs.len(), &mut args)?;
    Ok(g.download(&out)?
        .chunks(4)
        .map(|w| std::array::from_fn(|k| w[k] as u32))
        .collect())
}
