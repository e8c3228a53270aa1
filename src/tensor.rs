//! Tensors: a shape and a shared device buffer. Immutable once made, except through
//! [`Tensor::try_buffer_mut`] (optimizer updates), which copies only if the buffer is shared.

use crate::device::{host_copy, Buffer, Device, Elem};
use crate::error::{Error, Result};
use std::sync::Arc;

/// A dense row-major tensor of `T` (f32 data by default; i32 for labels and indices).
#[derive(Clone)]
pub struct Tensor<T: Elem = f32> {
    shape: Vec<usize>,
    buf: Arc<Buffer<T>>,
    device: Device,
}

/// Labels, token ids and other integer data.
pub type IndexTensor = Tensor<i32>;

impl<T: Elem> std::fmt::Debug for Tensor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?} on {}", self.shape, self.device.name())
    }
}

impl<T: Elem> Tensor<T> {
    /// A tensor over an existing buffer, which must hold exactly the shape's elements.
    pub fn from_buffer(shape: &[usize], buf: Buffer<T>, device: &Device) -> Result<Self> {
        let n: usize = shape.iter().product();
        if buf.len() != n {
            return Err(Error::Shape(format!(
                "buffer of {} elements for shape {:?} ({n})",
                buf.len(),
                shape
            )));
        }
        // Ops rely on cpu and emu tensors holding host memory and cuda tensors device memory.
        if matches!(buf, Buffer::Cuda(_)) != device.is_cuda() {
            return Err(Error::Device(format!(
                "a {} buffer for a tensor on {}",
                if device.is_cuda() { "host" } else { "cuda" },
                device.name()
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            buf: Arc::new(buf),
            device: device.clone(),
        })
    }

    /// A tensor of `data` (row-major, exactly the shape's elements) on `device`.
    pub fn from_vec(shape: &[usize], data: Vec<T>, device: &Device) -> Result<Self> {
        let n: usize = shape.iter().product();
        if data.len() != n {
            return Err(Error::Shape(format!(
                "{} values for shape {:?} ({n})",
                data.len(),
                shape
            )));
        }
        let buf = device.upload_vec(data)?;
        Ok(Tensor {
            shape: shape.to_vec(),
            buf: Arc::new(buf),
            device: device.clone(),
        })
    }

    /// A tensor of a copy of `data` on `device`.
    pub fn from_slice(shape: &[usize], data: &[T], device: &Device) -> Result<Self> {
        Self::from_vec(shape, data.to_vec(), device)
    }

    /// A zero tensor.
    pub fn zeros(shape: &[usize], device: &Device) -> Result<Self> {
        let n = shape.iter().product();
        Ok(Tensor {
            shape: shape.to_vec(),
            buf: Arc::new(device.zeros(n)?),
            device: device.clone(),
        })
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of dimensions.
    pub fn dims(&self) -> usize {
        self.shape.len()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The device the buffer lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The underlying buffer.
    pub fn buffer(&self) -> &Buffer<T> {
        &self.buf
    }

    /// Whether no other tensor shares this one's buffer (so [`Tensor::try_buffer_mut`] copies nothing).
    pub fn is_unique(&self) -> bool {
        Arc::strong_count(&self.buf) == 1 && Arc::weak_count(&self.buf) == 0
    }

    /// Mutable access for in-place updates; copies the buffer first if another tensor shares it.
    /// A failed copy (device out of memory) is an error.
    pub fn try_buffer_mut(&mut self) -> Result<&mut Buffer<T>> {
        if !self.is_unique() {
            self.buf = Arc::new(self.device.copy(&self.buf)?);
        }
        // Cannot fail: the buffer was unique or is a fresh copy, and `&mut self` keeps anyone
        // from sharing it meanwhile (tensors never hold weak references).
        Ok(Arc::get_mut(&mut self.buf).expect("unique buffer"))
    }

    /// Host slice when the tensor lives in host memory (cpu and emu devices).
    pub fn host(&self) -> Option<&[T]> {
        self.buf.as_host()
    }

    /// The data as a host vector (a download on cuda).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        match (&*self.buf, &self.device) {
            (Buffer::Host(v), _) => host_copy(v),
            (b, Device::Gpu(g)) => g.download(b),
            (Buffer::Cuda(_), Device::Cpu) => {
                Err(Error::Device("cuda buffer on a cpu tensor".into()))
            }
        }
    }

    /// Same data, another shape with the same number of elements (shares the buffer).
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::Shape(format!(
                "cannot reshape {:?} into {:?}",
                self.shape, shape
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            buf: self.buf.clone(),
            device: self.device.clone(),
        })
    }

    /// Copy onto another device.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        if &self.device == device {
            return Ok(self.clone());
        }
        Self::from_vec(&self.shape, self.to_vec()?, device)
    }

    /// Fails with a shape error unless the shape is exactly `expect`.
    pub fn expect_shape(&self, what: &str, expect: &[usize]) -> Result<()> {
        if self.shape != expect {
            return Err(Error::Shape(format!(
                "{what}: expected shape {:?}, got {:?}",
                expect, self.shape
            )));
        }
        Ok(())
    }
}

impl Tensor<f32> {
    /// A tensor filled with `value`.
    pub fn full(shape: &[usize], value: f32, device: &Device) -> Result<Self> {
        let n = shape.iter().product();
        Self::from_vec(shape, vec![value; n], device)
    }
    /// A 0-dimensional tensor holding `value`.
    pub fn scalar(value: f32, device: &Device) -> Result<Self> {
        Self::from_vec(&[], vec![value], device)
    }
    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::Shape(format!(
                "item() of a tensor of shape {:?}",
                self.shape
            )));
        }
        Ok(self.to_vec()?[0])
    }
}

/// Check that two tensors live on the same device.
pub fn same_device<A: Elem, B: Elem>(op: &str, a: &Tensor<A>, b: &Tensor<B>) -> Result<()> {
    if a.device() != b.device() {
        return Err(Error::Device(format!(
            "{op}: operands on different devices ({} and {})",
            a.device().name(),
            b.device().name()
        )));
    }
    Ok(())
}
