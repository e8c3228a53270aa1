//! Mini-batches over an [`ImageDataset`]: an order (shuffled by a seeded [`Rng`] or sequential),
//! a fixed batch size with the last partial batch kept, pixels scaled to [0, 1] and normalised
//! with the data set's mean/std, uploaded to the chosen device.

use super::ImageDataset;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{IndexTensor, Tensor};

/// Inputs `[B, features]` and labels `[B]` on one device.
pub struct Batch {
    pub x: Tensor,
    pub y: IndexTensor,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.y.numel()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Loader<'a> {
    data: &'a ImageDataset,
    order: Vec<usize>,
    batch_size: usize,
    next: usize,
    device: Device,
    /// u8 pixel value → normalised f32.
    lut: [f32; 256],
}

impl<'a> Loader<'a> {
    /// Batches in a random order drawn from `rng` (one epoch).
    pub fn shuffled(
        data: &'a ImageDataset,
        batch_size: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self> {
        let mut order: Vec<usize> = (0..data.len()).collect();
        rng.shuffle(&mut order);
        Self::with_order(data, order, batch_size, device)
    }

    /// Batches in data set order.
    pub fn sequential(data: &'a ImageDataset, batch_size: usize, device: &Device) -> Result<Self> {
        Self::with_order(data, (0..data.len()).collect(), batch_size, device)
    }

    fn with_order(
        data: &'a ImageDataset,
        order: Vec<usize>,
        batch_size: usize,
        device: &Device,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::Config("batch size must be > 0".into()));
        }
        let (mean, std) = data.kind.mean_std();
        let lut = std::array::from_fn(|v| (v as f32 / 255.0 - mean) / std);
        Ok(Loader {
            data,
            order,
            batch_size,
            next: 0,
            device: device.clone(),
            lut,
        })
    }

    /// Keep only the first `n` batches (a quick run); `None` keeps all.
    pub fn limit(mut self, n: Option<usize>) -> Self {
        if let Some(n) = n {
            self.order.truncate(n.saturating_mul(self.batch_size));
        }
        self
    }

    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// Number of examples this loader yields.
    pub fn num_examples(&self) -> usize {
        self.order.len()
    }

    fn make_batch(&self, indices: &[usize]) -> Result<Batch> {
        let f = self.data.feature_len();
        let mut x = Vec::with_capacity(indices.len() * f);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            x.extend(
                self.data.images.pixels[i * f..(i + 1) * f]
                    .iter()
                    .map(|&p| self.lut[p as usize]),
            );
            y.push(self.data.labels[i] as i32);
        }
        Ok(Batch {
            x: Tensor::from_vec(&[indices.len(), f], x, &self.device)?,
            y: IndexTensor::from_vec(&[indices.len()], y, &self.device)?,
        })
    }
}

impl Iterator for Loader<'_> {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.order.len() {
            return None;
        }
        let end = (self.next + self.batch_size).min(self.order.len());
        let batch = self.make_batch(&self.order[self.next..end]);
        self.next = end;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{idx::IdxImages, DatasetKind, Split};

    fn dataset(n: usize) -> ImageDataset {
        // Image i has every pixel equal to i, label i % 10: lets a test trace each example.
        let pixels = (0..n)
            .flat_map(|i| std::iter::repeat_n(i as u8, 4))
            .collect();
        ImageDataset {
            kind: DatasetKind::Mnist,
            split: Split::Train,
            images: IdxImages {
                count: n,
                rows: 2,
                cols: 2,
                pixels,
            },
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
        }
    }

    fn batch_ids(b: &Batch) -> Vec<usize> {
        let (mean, std) = DatasetKind::Mnist.mean_std();
        b.x.to_vec()
            .unwrap()
            .chunks(4)
            .map(|c| ((c[0] * std + mean) * 255.0).round() as usize)
            .collect()
    }

    #[test]
    fn sequential_batches_keep_the_last_partial_batch_and_normalise() {
        let data = dataset(10);
        let batches: Vec<Batch> = Loader::sequential(&data, 4, &Device::Cpu)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(
            batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert_eq!(batches[2].x.shape(), &[2, 4]);
        assert_eq!(batch_ids(&batches[1]), vec![4, 5, 6, 7]);
        assert_eq!(batches[1].y.to_vec().unwrap(), vec![4, 5, 6, 7]);
        let x0 = batches[0].x.to_vec().unwrap()[0];
        assert!((x0 - (0.0 - 0.1307) / 0.3081).abs() < 1e-6, "{x0}");
    }

    #[test]
    fn shuffle_is_a_seeded_permutation_and_limit_cuts_batches() {
        let data = dataset(23);
        let ids = |seed| -> Vec<usize> {
            Loader::shuffled(&data, 5, &mut Rng::new(seed), &Device::Cpu)
                .unwrap()
                .flat_map(|b| {
                    let b = b.unwrap();
                    let ids = batch_ids(&b);
                    let labels = b.y.to_vec().unwrap();
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
        assert!(Loader::sequential(&data, 0, &Device::Cpu).is_err());
    }
}
