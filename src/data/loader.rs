//! Mini-batches over a [`Dataset`]: an order (shuffled by a seeded [`Rng`] or sequential), a
//! fixed batch size with the last partial batch kept, images normalised per channel (and, on
//! request, augmented with a random crop + flip), token ids widened to i32.
//!
//! Host-side work (gather, augment, normalise into one `Vec`) runs on a prefetch thread that
//! stays up to [`PREFETCH_DEPTH`] batches ahead, so the device never waits for it; the upload to
//! the device happens on the caller's thread when the batch is taken. When the data set is
//! resident on the loader's device ([`Dataset::place_on`]), batches are made there instead by
//! kernels, and only the example indices are uploaded ([`super::resident`]); the batches are the
//! same bit for bit.
//!
//! The order is a permutation drawn from the run's [`Rng`] (PCG) on the host. Augmentation is
//! keyed, not drawn in sequence: example `i`'s crop and flip are a Philox function of
//! ([`AugmentKey`], `i`) ([`CropFlip::keyed`]), so batches are the same with or without the
//! prefetch thread, on the host or the device, and when a resumed epoch starts mid-way.
//!
//! ```ignore
//! let loader = Loader::shuffled(&train, 128, &mut rng, &device)?.augment(&mut rng)?;
//! for item in loader {
//!     let (x, y) = item?;
//!     // `distill::model_input` turns the batch into a model input on a tape.
//!     let logits = model.forward(&mut g, &mut store, model_input(&mut g, &Batch { x, y }), true)?;
//! }
//! ```

use super::augment::{
    crop_flip_normalize_into, normalize_into, AugmentKey, CropFlip, Normalizer, CROP_PADDING,
};
use super::resident::DeviceDataset;
use super::{Dataset, ExampleKind};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{IndexTensor, Tensor};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Batches the prefetch thread prepares ahead of the consumer.
pub const PREFETCH_DEPTH: usize = 2;

/// The inputs of one batch on a device: images / features `[B, …]` as floats, or token ids `[B, L]`.
#[derive(Clone)]
pub enum Batch {
    /// Images or features, `[B, …]` f32, normalized as the loader was told.
    Float(Tensor),
    /// Token ids `[B, L]`, each below the vocabulary size.
    Ids(IndexTensor),
}

impl Batch {
    /// Examples in the batch.
    pub fn len(&self) -> usize {
        self.shape()[0]
    }
    /// Whether the batch holds no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The input's shape, batch dimension first.
    pub fn shape(&self) -> &[usize] {
        match self {
            Batch::Float(t) => t.shape(),
            Batch::Ids(t) => t.shape(),
        }
    }
    /// The float tensor (an error for token ids).
    pub fn float(&self) -> Result<&Tensor> {
        match self {
            Batch::Float(t) => Ok(t),
            Batch::Ids(_) => Err(Error::Shape("batch holds token ids, not floats".into())),
        }
    }
}

/// The inputs of a [`HostBatch`], flattened row-major in the order of its `shape`.
#[derive(Clone, Debug, PartialEq)]
pub enum HostInput {
    /// Images or features, already normalized (and augmented, when the loader augments).
    Float(Vec<f32>),
    /// Token ids.
    Ids(Vec<i32>),
}

/// A batch prepared on the host, ready to upload.
#[derive(Clone, Debug, PartialEq)]
pub struct HostBatch {
    /// Shape of the inputs, `[B, …]`; `x` holds its product of values.
    pub shape: Vec<usize>,
    /// The inputs.
    pub x: HostInput,
    /// One class label per example (length `B`).
    pub y: Vec<i32>,
}

impl HostBatch {
    fn upload(self, device: &Device) -> Result<(Batch, IndexTensor)> {
        let b = self.shape[0];
        let x = match self.x {
            HostInput::Float(v) => Batch::Float(Tensor::from_vec(&self.shape, v, device)?),
            HostInput::Ids(v) => Batch::Ids(IndexTensor::from_vec(&self.shape, v, device)?),
        };
        Ok((x, IndexTensor::from_vec(&[b], self.y, device)?))
    }
}

/// What the host side needs to build any batch; owned, so it can move to the prefetch thread.
#[derive(Clone)]
struct Plan {
    data: Dataset,
    order: Vec<usize>,
    batch_size: usize,
    /// Shape of one example in the output (the data set's, or the model's when reshaped).
    example_shape: Vec<usize>,
    augment: Option<AugmentKey>,
    norm: Normalizer,
}

impl Plan {
    fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// The data set indices of batch `index`'s examples.
    fn indices(&self, index: usize) -> &[usize] {
        let start = index * self.batch_size;
        &self.order[start..(start + self.batch_size).min(self.order.len())]
    }

    fn batch(&self, index: usize) -> HostBatch {
        let indices = self.indices(index);
        let n = self.data.example_len();
        let mut shape = vec![indices.len()];
        shape.extend_from_slice(&self.example_shape);
        let y = indices.iter().map(|&i| self.data.labels[i]).collect();
        let x = match self.data.kind {
            ExampleKind::Tokens => HostInput::Ids(
                indices
                    .iter()
                    .flat_map(|&i| self.data.example(i).iter().map(|&t| t as i32))
                    .collect(),
            ),
            ExampleKind::Image => {
                let chw = [self.data.shape[0], self.data.shape[1], self.data.shape[2]];
                let mut x = vec![0f32; indices.len() * n];
                for (&i, out) in indices.iter().zip(x.chunks_mut(n)) {
                    let src = self.data.example(i);
                    match self.augment {
                        Some(key) => {
                            let t = CropFlip::keyed(key, i as u64, CROP_PADDING);
                            crop_flip_normalize_into(src, chw, t, &self.norm, out)
                        }
                        None => normalize_into(src, chw, &self.norm, out),
                    }
                }
                HostInput::Float(x)
            }
        };
        HostBatch { shape, x, y }
    }
}

/// Where the next batch comes from: the host (inline or prefetched) or the resident device copy.
enum Source {
    NotStarted,
    Inline {
        next: usize,
    },
    /// Made on the device from the resident data set.
    Device {
        resident: Arc<DeviceDataset>,
        next: usize,
    },
    Prefetch {
        rx: Receiver<HostBatch>,
        handle: Option<JoinHandle<()>>,
    },
    Done,
}

/// One epoch of batches. Configure with the builder methods, then iterate: items are
/// `(inputs, labels)` on the device given at construction.
pub struct Loader {
    plan: Plan,
    device: Device,
    prefetch: bool,
    /// The data set's device copy, when it is resident on `device` (and not [`Loader::host_only`]).
    resident: Option<Arc<DeviceDataset>>,
    /// Index of the first batch to yield (a run resumed inside an epoch).
    first_batch: usize,
    source: Source,
}

impl Loader {
    /// Batches in a random order drawn from `rng` (one epoch).
    pub fn shuffled(
        data: &Dataset,
        batch_size: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self> {
        let mut order: Vec<usize> = (0..data.len()).collect();
        rng.shuffle(&mut order);
        Self::with_order(data, order, batch_size, device)
    }

    /// Batches in data set order.
    pub fn sequential(data: &Dataset, batch_size: usize, device: &Device) -> Result<Self> {
        Self::with_order(data, (0..data.len()).collect(), batch_size, device)
    }

    fn with_order(
        data: &Dataset,
        order: Vec<usize>,
        batch_size: usize,
        device: &Device,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::Config("batch size must be > 0".into()));
        }
        let norm = Normalizer::new(data.channels(), &data.mean, &data.std);
        let resident = data.resident.clone().filter(|r| r.holds(data, device));
        Ok(Loader {
            plan: Plan {
                data: data.clone(),
                order,
                batch_size,
                example_shape: data.shape.clone(),
                augment: None,
                norm,
            },
            device: device.clone(),
            prefetch: true,
            resident,
            first_batch: 0,
            source: Source::NotStarted,
        })
    }

    /// Random crop (padding 4) + horizontal flip for every image, keyed by a seed drawn from
    /// `rng` and epoch 0 (see [`Loader::augment_keyed`]). Only for image sets (`[C, H, W]`).
    pub fn augment(self, rng: &mut Rng) -> Result<Self> {
        self.augment_keyed(AugmentKey::draw(rng, 0))
    }

    /// Random crop (padding 4) + horizontal flip for every image, example `i`'s drawn from
    /// (`key`, `i`) by [`CropFlip::keyed`]. Only for image sets (`[C, H, W]`).
    pub fn augment_keyed(mut self, key: AugmentKey) -> Result<Self> {
        if self.plan.data.kind != ExampleKind::Image {
            return Err(Error::Config(format!(
                "augmentation (random crop + flip) needs an image data set; {} holds token ids",
                self.plan.data.name
            )));
        }
        self.plan.augment = Some(key);
        Ok(self)
    }

    /// Give each example this shape in the batch (e.g. a model's `[784]` for `[1, 28, 28]` images);
    /// the number of values must match.
    pub fn input_shape(mut self, shape: &[usize]) -> Result<Self> {
        let data = &self.plan.data;
        if shape.iter().product::<usize>() != data.example_len() {
            return Err(Error::Config(format!(
                "the model takes inputs of shape {shape:?} but {} examples have shape {:?}",
                data.name, data.shape
            )));
        }
        self.plan.example_shape = shape.to_vec();
        Ok(self)
    }

    /// Keep only the first `n` batches (a quick run); `None` keeps all.
    pub fn limit(mut self, n: Option<usize>) -> Self {
        if let Some(n) = n {
            self.plan
                .order
                .truncate(n.saturating_mul(self.plan.batch_size));
        }
        self
    }

    /// Start at batch `index` of the epoch: the earlier ones are skipped, and every later one is
    /// exactly what it is in a full pass (same examples, same augmentation).
    pub fn starting_at(mut self, index: usize) -> Self {
        self.first_batch = index;
        self
    }

    /// Make every batch on the host even when the data set is resident on the device (to compare
    /// or time the two paths).
    pub fn host_only(mut self) -> Self {
        self.resident = None;
        self
    }

    /// Whether batches are made on the device from a resident data set.
    pub fn on_device(&self) -> bool {
        self.resident.is_some()
    }

    /// Prepare batches on a background thread (the default) or on the caller's thread.
    pub fn prefetch(mut self, on: bool) -> Self {
        self.prefetch = on;
        self
    }

    /// Batches in a full epoch (the last may be short), counting any skipped by `starting_at`.
    pub fn num_batches(&self) -> usize {
        self.plan.num_batches()
    }

    /// The batches with the data set index of each example: items `(inputs, labels, indices)`.
    pub fn with_indices(self) -> WithIndices {
        let next = self.first_batch;
        WithIndices { loader: self, next }
    }

    /// Number of examples this loader yields.
    pub fn num_examples(&self) -> usize {
        self.plan.order.len()
    }

    /// The next batch prepared on the host (no upload), even for a loader on a resident data set;
    /// `None` at the end of the epoch.
    pub fn next_host(&mut self) -> Option<Result<HostBatch>> {
        self.start();
        if let Source::Device { next, .. } = &mut self.source {
            let index = *next;
            *next += 1;
            return (index < self.plan.num_batches()).then(|| Ok(self.plan.batch(index)));
        }
        self.next_prefetched()
    }

    /// Pick where batches come from, on the first call.
    fn start(&mut self) {
        if let Source::NotStarted = self.source {
            self.source = if let Some(resident) = &self.resident {
                // Device work is cheap to issue: no thread needed to keep ahead.
                Source::Device {
                    resident: resident.clone(),
                    next: self.first_batch,
                }
            } else if self.prefetch && self.plan.num_batches() > self.first_batch + 1 {
                self.spawn()
            } else {
                Source::Inline {
                    next: self.first_batch,
                }
            };
        }
    }

    /// The next host batch from the caller's thread or the prefetch thread.
    fn next_prefetched(&mut self) -> Option<Result<HostBatch>> {
        match &mut self.source {
            Source::NotStarted | Source::Done | Source::Device { .. } => None,
            Source::Inline { next } => {
                if *next >= self.plan.num_batches() {
                    self.source = Source::Done;
                    return None;
                }
                *next += 1;
                Some(Ok(self.plan.batch(*next - 1)))
            }
            Source::Prefetch { rx, handle } => match rx.recv() {
                Ok(b) => Some(Ok(b)),
                Err(_) => {
                    // The thread is done (all batches sent) or died; a panic becomes an error.
                    let panicked = handle.take().map(|h| h.join().is_err()).unwrap_or(false);
                    self.source = Source::Done;
                    panicked.then(|| {
                        Err(Error::Internal(
                            "the data prefetch thread panicked (a bug in lit-engine)".into(),
                        ))
                    })
                }
            },
        }
    }

    fn spawn(&self) -> Source {
        let plan = self.plan.clone();
        let first = self.first_batch;
        let (tx, rx) = sync_channel(PREFETCH_DEPTH);
        let spawned = std::thread::Builder::new()
            .name("lit-data-prefetch".into())
            .spawn(move || {
                for i in first..plan.num_batches() {
                    // The consumer hung up (loop ended early): stop quietly.
                    if tx.send(plan.batch(i)).is_err() {
                        return;
                    }
                }
            });
        match spawned {
            Ok(handle) => Source::Prefetch {
                rx,
                handle: Some(handle),
            },
            // No thread to be had: still correct, just not overlapped.
            Err(_) => Source::Inline { next: first },
        }
    }
}

impl Iterator for Loader {
    type Item = Result<(Batch, IndexTensor)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.start();
        if let Source::Device { resident, next } = &mut self.source {
            let index = *next;
            if index >= self.plan.num_batches() {
                return None;
            }
            *next += 1;
            let indices = self.plan.indices(index);
            return Some(resident.batch(
                &self.device,
                indices,
                &self.plan.example_shape,
                self.plan.augment,
            ));
        }
        let host = self.next_prefetched()?;
        Some(host.and_then(|b| b.upload(&self.device)))
    }
}

/// A [`Loader`] whose items also carry the data set indices of the batch's examples.
pub struct WithIndices {
    loader: Loader,
    /// The index in the epoch of the next batch.
    next: usize,
}

impl Iterator for WithIndices {
    type Item = Result<(Batch, IndexTensor, Vec<usize>)>;
    fn next(&mut self) -> Option<Self::Item> {
        let item = self.loader.next()?;
        let indices = self.loader.plan.indices(self.next).to_vec();
        self.next += 1;
        Some(item.map(|(x, y)| (x, y, indices)))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Source::Prefetch { rx, handle } = std::mem::replace(&mut self.source, Source::Done) {
            // Hang up first so a thread blocked on a full channel wakes and exits.
            drop(rx);
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;

    /// Image i has every pixel equal to i, label i % 10: lets a test trace each example.
    fn dataset(n: usize) -> Dataset {
        let pixels = (0..n)
            .flat_map(|i| std::iter::repeat_n(i as u8, 4))
            .collect();
        Dataset::images(
            "mnist",
            Split::Train,
            10,
            [1, 2, 2],
            pixels,
            (0..n).map(|i| (i % 10) as i32).collect(),
        )
        .unwrap()
        .with_normalization(&[0.1307], &[0.3081])
        .unwrap()
    }

    fn batch_ids(x: &Batch) -> Vec<usize> {
        x.float()
            .unwrap()
            .to_vec()
            .unwrap()
            .chunks(4)
            .map(|c| ((c[0] * 0.3081 + 0.1307) * 255.0).round() as usize)
            .collect()
    }

    #[test]
    fn sequential_batches_keep_the_last_partial_batch_and_normalise() {
        let data = dataset(10);
        for prefetch in [false, true] {
            let batches: Vec<(Batch, IndexTensor)> = Loader::sequential(&data, 4, &Device::Cpu)
                .unwrap()
                .prefetch(prefetch)
                .map(|b| b.unwrap())
                .collect();
            assert_eq!(
                batches.iter().map(|b| b.0.len()).collect::<Vec<_>>(),
                vec![4, 4, 2]
            );
            assert_eq!(batches[2].0.shape(), &[2, 1, 2, 2]);
            assert_eq!(batch_ids(&batches[1].0), vec![4, 5, 6, 7]);
            assert_eq!(batches[1].1.to_vec().unwrap(), vec![4, 5, 6, 7]);
            let x0 = batches[0].0.float().unwrap().to_vec().unwrap()[0];
            assert!((x0 - (0.0 - 0.1307) / 0.3081).abs() < 1e-6, "{x0}");
        }
    }

    #[test]
    fn shuffle_is_a_seeded_permutation_and_limit_cuts_batches() {
        let data = dataset(23);
        let ids = |seed| -> Vec<usize> {
            Loader::shuffled(&data, 5, &mut Rng::new(seed), &Device::Cpu)
                .unwrap()
                .flat_map(|b| {
                    let (x, y) = b.unwrap();
                    let ids = batch_ids(&x);
                    let labels = y.to_vec().unwrap();
                    assert!(ids.iter().zip(&labels).all(|(i, l)| (i % 10) as i32 == *l));
                    ids
                })
                .collect()
        };
        let a = ids(1);
        assert_eq!(a, ids(1));
        assert_ne!(a, ids(2));
        assert_ne!(a, (0..23).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..23).collect::<Vec<_>>());

        let limited = Loader::sequential(&data, 5, &Device::Cpu)
            .unwrap()
            .limit(Some(2));
        assert_eq!((limited.num_batches(), limited.num_examples()), (2, 10));
        assert_eq!(limited.count(), 2);
        assert!(Loader::sequential(&data, 0, &Device::Cpu).is_err());
    }

    #[test]
    fn input_shape_reshapes_and_rejects_a_wrong_size() {
        let data = dataset(3);
        let (x, _) = Loader::sequential(&data, 3, &Device::Cpu)
            .unwrap()
            .input_shape(&[4])
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(x.shape(), &[3, 4]);
        let msg = Loader::sequential(&data, 3, &Device::Cpu)
            .unwrap()
            .input_shape(&[784])
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("[784]") && msg.contains("[1, 2, 2]"), "{msg}");
    }

    #[test]
    fn dropping_a_loader_mid_epoch_stops_the_prefetch_thread() {
        let data = dataset(50);
        let mut loader = Loader::sequential(&data, 2, &Device::Cpu).unwrap();
        assert!(loader.next().unwrap().is_ok());
        drop(loader); // must not hang on the full channel
    }
}
