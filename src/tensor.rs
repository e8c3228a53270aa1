//! Tensors: a shape and shared storage — a buffer together with the device that owns it, so the
//! two cannot disagree. Immutable once made, except through [`Tensor::try_buffer_mut`]
//! (optimizer updates), which copies only if the storage is shared.

use crate::device::{host_copy, Buffer, Device, Elem, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use crate::ops::elementwise::ElementwiseParams;
use std::sync::Arc;

/// A dense row-major tensor of `T` (f32 data by default; i32 for labels and indices).
#[derive(Clone)]
pub struct Tensor<T: Elem = f32> {
    shape: Vec<usize>,
    storage: Arc<Storage<T>>,
}

/// A buffer and the device it belongs to, made together (by the device, or checked in
/// [`Tensor::from_buffer`]) and shared together: cpu and emu storage is host memory, cuda storage
/// device memory.
struct Storage<T: Elem> {
    buffer: Buffer<T>,
    device: Device,
}

impl<T: Elem> Storage<T> {
    fn new(buffer: Buffer<T>, device: &Device) -> Arc<Self> {
        Arc::new(Storage {
            buffer,
            device: device.clone(),
        })
    }
}

/// Labels, token ids and other integer data.
pub type IndexTensor = Tensor<i32>;

impl<T: Elem> std::fmt::Debug for Tensor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?} on {}", self.shape, self.device().name())
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
            storage: Storage::new(buf, device),
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
            storage: Storage::new(buf, device),
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
            storage: Storage::new(device.zeros(n)?, device),
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
        &self.storage.device
    }
    /// The underlying buffer.
    pub fn buffer(&self) -> &Buffer<T> {
        &self.storage.buffer
    }

    /// Whether no other tensor shares this one's buffer (so [`Tensor::try_buffer_mut`] copies nothing).
    pub fn is_unique(&self) -> bool {
        Arc::strong_count(&self.storage) == 1 && Arc::weak_count(&self.storage) == 0
    }

    /// Mutable access for in-place updates; copies the buffer first if another tensor shares it.
    /// A failed copy (device out of memory) is an error.
    pub fn try_buffer_mut(&mut self) -> Result<&mut Buffer<T>> {
        if !self.is_unique() {
            let device = self.device();
            self.storage = Storage::new(device.copy(self.buffer())?, device);
        }
        // Cannot fail: the storage was unique or is a fresh copy, and `&mut self` keeps anyone
        // from sharing it meanwhile (tensors never hold weak references).
        let storage = Arc::get_mut(&mut self.storage).expect("unique storage");
        Ok(&mut storage.buffer)
    }

    /// Host slice when the tensor lives in host memory (cpu and emu devices).
    pub fn host(&self) -> Option<&[T]> {
        self.buffer().as_host()
    }

    /// The values in host memory, for the cpu paths of ops: an error (not a panic) for a tensor
    /// in device memory, e.g. a cuda operand handed to a cpu op.
    pub fn host_data(&self) -> Result<&[T]> {
        self.host().ok_or_else(|| {
            Error::Device(format!(
                "a {:?} tensor on {} is not in host memory",
                self.shape,
                self.device().name()
            ))
        })
    }

    /// Mutable values in host memory (copied first if shared), for the cpu paths of in-place
    /// updates; an error for a tensor in device memory.
    pub fn host_data_mut(&mut self) -> Result<&mut [T]> {
        self.host_data()?;
        let shape = format!("{:?}", self.shape);
        self.try_buffer_mut()?
            .as_host_mut()
            .ok_or_else(|| Error::Internal(format!("the {shape} host tensor lost its host memory")))
    }

    /// The data as a host vector (a download on cuda).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        match (self.buffer(), self.device()) {
            // Through the device on emu too (host memory there), so a read inside a captured step
            // is refused there as on cuda, and the read count sees it.
            (b, Device::Gpu(g)) => g.download(b),
            (Buffer::Host(v), _) => host_copy(v),
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
            storage: self.storage.clone(),
        })
    }

    /// Copy onto another device.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        if self.device() == device {
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
    /// A tensor filled with `value`; on cuda and emu by a kernel (`fill_f32`), so that nothing
    /// is uploaded from the host (a training step may then be queued or captured whole).
    pub fn full(shape: &[usize], value: f32, device: &Device) -> Result<Self> {
        let n: usize = shape.iter().product();
        let Device::Gpu(g) = device else {
            return Self::from_vec(shape, vec![value; n], device);
        };
        let count = i32::try_from(n)
            .map_err(|_| Error::op_arg("full", format!("{n} elements, above 2^31 - 1")))?;
        let mut y = g.zeros::<f32>(n)?;
        if n > 0 {
            let mut args = KernelArgs::new();
            args.ptr(g.addr_mut(&mut y)).value(&ElementwiseParams {
                n: count,
                alpha: value,
            });
            g.launch("fill_f32", LaunchCfg::for_elements(n), &mut args)?;
        }
        Self::from_buffer(shape, y, device)
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
