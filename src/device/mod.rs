//! Devices and buffers. Device dispatch lives here and in each op's `forward`/`backward` match;
//! nowhere else.
//!
//! * `cpu`  — plain Rust (the readable reference, also the fallback when no GPU is found);
//! * `cuda` — kernels from `kernels/*.cu` compiled by NVRTC and launched through cudarc;
//! * `emu`  — the very same `.cu` sources compiled by g++ against `kernels/emu/`, each CUDA thread a
//!   fiber. Memory is host memory, launches are synchronous.
//!
//! cuda and emu share everything above the launch: an op builds one [`KernelArgs`] and calls
//! [`Gpu::launch`], which ends in `cuLaunchKernel` or in the emulator's entry point.

pub mod cuda;
pub mod emu;
pub mod graph;
pub mod kernel_cache;
mod kernel_names;
pub mod kernels;
pub mod launch_record;
pub mod nvrtc;

use crate::error::{Error, Result};
use graph::{Node, Op};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Thread order used by the emulator inside a block (a missing `__syncthreads` shows up in one of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmuOrder {
    /// Thread 0 first.
    Forward = 0,
    /// Last thread first.
    Reverse = 1,
    /// A new permutation per launch, reproducible.
    Random = 2,
}

/// Where tensors live and ops run. Cheap to clone: a GPU is shared behind an `Arc`.
#[derive(Clone)]
pub enum Device {
    /// Plain Rust on the host (the reference implementations).
    Cpu,
    /// A kernel-executing device: CUDA or the emulator.
    Gpu(Arc<Gpu>),
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Gpu(a), Device::Gpu(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// What a user asked for (`--device`, `LIT_DEVICE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA when usable, else cpu with a notice.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA (an error when no usable GPU).
    Cuda,
    /// The kernel emulator.
    Emu,
}

impl std::str::FromStr for DeviceRequest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda),
            "emu" => Ok(DeviceRequest::Emu),
            other => Err(Error::Config(format!(
                "unknown device `{other}`: expected one of auto, cpu, cuda, emu"
            ))),
        }
    }
}

fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

impl Device {
    /// The CPU device.
    pub fn cpu() -> Device {
        Device::Cpu
    }

    /// The process-wide CUDA device (ordinal 0). Error value (never a panic) when no driver/GPU/NVRTC.
    pub fn cuda() -> Result<Device> {
        static CUDA: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();
        CUDA.get_or_init(|| {
            cuda::CudaBackend::new(0)
                .map(|b| Arc::new(Gpu::new(GpuBackend::Cuda(b))))
                // Keep the bare message: it is wrapped in `Error::Device` again below.
                .map_err(|e| match e {
                    Error::Device(msg) => msg,
                    other => other.to_string(),
                })
        })
        .clone()
        .map(Device::Gpu)
        .map_err(Error::Device)
    }

    /// An emulator device with the given thread order.
    pub fn emu_with_order(order: EmuOrder) -> Result<Device> {
        let backend = GpuBackend::Emu(emu::EmuBackend::new(order)?);
        Ok(Device::Gpu(Arc::new(Gpu::new(backend))))
    }

    /// An emulator device that launches at most `cap` blocks in x for grid-stride launches
    /// ([`LaunchCfg::grid_stride`]): tests reach the loops' wrap iterations with little work,
    /// where the real caps (1024 or 65535 blocks) would need millions of emulated threads.
    pub fn emu_with_grid_stride_cap(order: EmuOrder, cap: u32) -> Result<Device> {
        let backend = GpuBackend::Emu(emu::EmuBackend::new(order)?.with_grid_stride_cap(cap));
        Ok(Device::Gpu(Arc::new(Gpu::new(backend))))
    }

    /// An emulator device; the order comes from `LIT_EMU_ORDER` (forward | reverse | random).
    pub fn emu() -> Result<Device> {
        let order = match std::env::var("LIT_EMU_ORDER").as_deref() {
            Ok("reverse") => EmuOrder::Reverse,
            Ok("random") => EmuOrder::Random,
            _ => EmuOrder::Forward,
        };
        Device::emu_with_order(order)
    }

    /// Resolve a request: an explicit one (flag) wins over `LIT_DEVICE`; `auto` picks cuda when usable,
    /// else cpu with a one-line notice on stderr. `LIT_REQUIRE_GPU=1` turns the fallback into an error.
    pub fn select(flag: Option<DeviceRequest>) -> Result<Device> {
        let req = match flag {
            Some(r) if r != DeviceRequest::Auto => r,
            _ => match std::env::var("LIT_DEVICE") {
                Ok(s) => s.parse::<DeviceRequest>().map_err(|_| {
                    Error::Config(format!(
                        "LIT_DEVICE=`{s}` is not a device: expected one of auto, cpu, cuda, emu"
                    ))
                })?,
                Err(_) => DeviceRequest::Auto,
            },
        };
        let require_gpu = env_flag("LIT_REQUIRE_GPU");
        match req {
            DeviceRequest::Cpu => {
                if require_gpu {
                    return Err(Error::Device(
                        "LIT_REQUIRE_GPU=1 but the cpu device was requested".into(),
                    ));
                }
                Ok(Device::Cpu)
            }
            DeviceRequest::Emu => Device::emu(),
            DeviceRequest::Cuda => Device::cuda(),
            DeviceRequest::Auto => match Device::cuda() {
                Ok(d) => Ok(d),
                Err(e) if require_gpu => Err(Error::Device(format!(
                    "LIT_REQUIRE_GPU=1 and no usable GPU: {e}"
                ))),
                Err(e) => {
                    eprintln!("lit-engine: no usable GPU ({e}); running on cpu");
                    Ok(Device::Cpu)
                }
            },
        }
    }

    /// `cpu`, or the GPU's name (`emu`, the CUDA device name).
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Gpu(g) => g.name(),
        }
    }

    /// True for the CPU device.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// GPU time per kernel since the last call, when `LIT_KERNEL_TIMES=1` on a cuda device;
    /// `None` elsewhere (see [`cuda::CudaBackend::take_kernel_times`]).
    pub fn take_kernel_times(&self) -> Result<Option<Vec<cuda::KernelTime>>> {
        match self {
            Device::Gpu(g) => match &g.backend {
                GpuBackend::Cuda(c) => c.take_kernel_times(),
                GpuBackend::Emu(_) => Ok(None),
            },
            Device::Cpu => Ok(None),
        }
    }

    /// Kernels launched on this device so far ([`Gpu::launches`]); `None` on cpu, which launches none.
    pub fn launches(&self) -> Option<u64> {
        self.gpu().map(|g| g.launches())
    }

    /// A real GPU (not the CPU, not the emulator).
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Gpu(g) if matches!(g.backend, GpuBackend::Cuda(_)))
    }

    /// The GPU behind a cuda or emu device; `None` on cpu.
    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        match self {
            Device::Gpu(g) => Some(g),
            Device::Cpu => None,
        }
    }

    /// Copy host data onto this device.
    pub fn upload<T: Elem>(&self, data: &[T]) -> Result<Buffer<T>> {
        match self {
            Device::Cpu => Ok(Buffer::Host(data.to_vec())),
            Device::Gpu(g) => g.upload(data),
        }
    }

    /// Move `data` onto the device (no copy on cpu and emu).
    pub fn upload_vec<T: Elem>(&self, data: Vec<T>) -> Result<Buffer<T>> {
        match self {
            Device::Cpu => Ok(Buffer::Host(data)),
            Device::Gpu(g) => g.upload_vec(data),
        }
    }

    /// `n` zeroed elements on the device.
    pub fn zeros<T: Elem>(&self, n: usize) -> Result<Buffer<T>> {
        match self {
            Device::Cpu => Ok(Buffer::Host(vec![T::default(); n])),
            Device::Gpu(g) => g.zeros(n),
        }
    }

    /// A new buffer on this device holding a copy of `buf`; out of memory is an error, not a panic.
    pub fn copy<T: Elem>(&self, buf: &Buffer<T>) -> Result<Buffer<T>> {
        match (self, buf) {
            (Device::Cpu, Buffer::Host(v)) => Ok(Buffer::Host(host_copy(v)?)),
            (Device::Cpu, Buffer::Cuda(_)) => Err(Error::Device(
                "a cuda buffer was given to the cpu device".into(),
            )),
            (Device::Gpu(g), _) => g.copy(buf),
        }
    }

    /// Wait for all queued work (no-op on cpu and emu).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Gpu(g) => g.synchronize(),
        }
    }
}

/// Element types that live in buffers: f32 data, i32 indices/labels, f64 partial sums of
/// deterministic reductions.
/// A host vector of `n` elements that `write` fills completely, without zeroing it first: CPU op
/// outputs are overwritten anyway, and zeroing them cost ~5% of a CPU training step (memset).
///
/// # Safety
/// `write` must assign every element of the slice it gets, and read none before assigning it.
pub unsafe fn host_vec_written<T: Copy>(n: usize, write: impl FnOnce(&mut [T])) -> Vec<T> {
    let mut v = Vec::<T>::with_capacity(n);
    // Debug builds pre-fill all-ones bytes (NaN for floats) so an element left unwritten shows.
    if cfg!(debug_assertions) {
        // SAFETY: the allocation holds `n` elements.
        unsafe { v.as_mut_ptr().write_bytes(0xFF, n) };
    }
    // SAFETY: the allocation holds `n` elements (aligned, not aliased); the caller guarantees
    // `write` only assigns them. Should it panic, `v` still has length 0 and frees nothing else.
    write(unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr(), n) });
    // SAFETY: `write` assigned all `n` elements.
    unsafe { v.set_len(n) };
    v
}

/// Element types a [`Buffer`] can hold: plain data that CUDA can copy and zero.
pub trait Elem:
    Copy
    + Default
    + Send
    + Sync
    + bytemuck::Pod
    + cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
    + 'static
{
}
impl Elem for f32 {}
impl Elem for i32 {}
impl Elem for f64 {}

/// Device memory. Emu memory is host memory, so cpu and emu share `Host`.
pub enum Buffer<T: Elem> {
    /// Host memory (cpu and emu).
    Host(Vec<T>),
    /// CUDA device memory.
    Cuda(cudarc::driver::CudaSlice<T>),
}

impl<T: Elem> Buffer<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Buffer::Host(v) => v.len(),
            Buffer::Cuda(s) => s.len(),
        }
    }
    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The host slice; `None` for CUDA memory.
    pub fn as_host(&self) -> Option<&[T]> {
        match self {
            Buffer::Host(v) => Some(v),
            Buffer::Cuda(_) => None,
        }
    }
    /// The host slice, mutable; `None` for CUDA memory.
    pub fn as_host_mut(&mut self) -> Option<&mut [T]> {
        match self {
            Buffer::Host(v) => Some(v),
            Buffer::Cuda(_) => None,
        }
    }
}

/// A host copy of `v` that reports a failed allocation as an error instead of aborting.
pub(crate) fn host_copy<T: Elem>(v: &[T]) -> Result<Vec<T>> {
    let mut copy = Vec::new();
    copy.try_reserve_exact(v.len()).map_err(|e| {
        Error::Device(format!(
            "out of host memory copying {} elements: {e}",
            v.len()
        ))
    })?;
    copy.extend_from_slice(v);
    Ok(copy)
}

/// Grid, block and dynamic shared memory of a launch.
#[derive(Clone, Copy, Debug)]
pub struct LaunchCfg {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory per block, in bytes.
    pub shared_bytes: u32,
    /// The kernel loops over its work in steps of `gridDim.x`, so any `grid.x >= 1` computes the
    /// same result. Lets a test emulator launch fewer blocks ([`Device::emu_with_grid_stride_cap`]).
    pub grid_stride: bool,
}

impl LaunchCfg {
    /// A 1-D grid-stride launch for `n` elements: 256 threads per block, at most 1024 blocks.
    pub fn for_elements(n: usize) -> LaunchCfg {
        let threads = 256u32;
        let blocks = n.div_ceil(threads as usize).clamp(1, 1024) as u32;
        LaunchCfg::new((blocks, 1, 1), (threads, 1, 1)).grid_stride()
    }
    /// A launch of `grid` blocks of `block` threads, without dynamic shared memory.
    pub fn new(grid: (u32, u32, u32), block: (u32, u32, u32)) -> LaunchCfg {
        LaunchCfg {
            grid,
            block,
            shared_bytes: 0,
            grid_stride: false,
        }
    }
    /// Marks `grid.x` as a grid-stride size (see [`LaunchCfg::grid_stride`]).
    pub fn grid_stride(mut self) -> LaunchCfg {
        self.grid_stride = true;
        self
    }
    /// Ask for `bytes` of dynamic shared memory per block.
    pub fn with_shared(mut self, bytes: u32) -> LaunchCfg {
        self.shared_bytes = bytes;
        self
    }
}

/// One argument array that serves both cuda (`cuLaunchKernel`'s `void**`) and emu.
/// Each argument is copied into its own 8-byte-aligned slot whose address does not move.
#[derive(Clone, Default)]
pub struct KernelArgs {
    slots: Vec<Box<[u64]>>,
}

impl KernelArgs {
    /// No arguments yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A plain value passed by value: an `i32`, an `f32`, or a `#[repr(C)]` params struct.
    pub fn value<V: bytemuck::Pod>(&mut self, v: &V) -> &mut Self {
        let bytes = bytemuck::bytes_of(v);
        let mut slot = vec![0u64; bytes.len().div_ceil(8).max(1)].into_boxed_slice();
        bytemuck::cast_slice_mut::<u64, u8>(&mut slot)[..bytes.len()].copy_from_slice(bytes);
        self.slots.push(slot);
        self
    }

    /// A device address (cuda) or host address (emu), as the kernel's pointer argument.
    pub fn ptr(&mut self, addr: u64) -> &mut Self {
        self.slots.push(vec![addr].into_boxed_slice());
        self
    }

    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    /// True when no argument was added.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes available in each slot (at least the size of the value it holds), for checking a
    /// launch against the kernel's parameter sizes.
    pub fn slot_bytes(&self) -> Vec<usize> {
        self.slots.iter().map(|s| s.len() * 8).collect()
    }

    /// Every 8-byte word of every argument: where the emulator's step graph finds the addresses
    /// to move, in pointer arguments and in params structs that embed pointers.
    pub(crate) fn words_mut(&mut self) -> impl Iterator<Item = &mut u64> {
        self.slots.iter_mut().flat_map(|s| s.iter_mut())
    }

    /// The `void**` array. Valid while `self` lives and is not pushed to.
    pub fn pointers(&mut self) -> Vec<*mut std::ffi::c_void> {
        self.slots
            .iter_mut()
            .map(|s| s.as_mut_ptr() as *mut std::ffi::c_void)
            .collect()
    }
}

/// The implementation behind a [`Gpu`].
pub enum GpuBackend {
    /// A real GPU through the CUDA driver.
    Cuda(cuda::CudaBackend),
    /// The host emulator.
    Emu(emu::EmuBackend),
}

/// A kernel-executing device: real CUDA or the emulator.
pub struct Gpu {
    /// The implementation that compiles and launches the kernels.
    pub backend: GpuBackend,
    /// Kernels launched so far (see [`Gpu::launches`]).
    launches: AtomicU64,
    /// Step capture ([`graph`]): who captures, and other threads' work in flight.
    capture: graph::CaptureGate,
    /// Downloads and synchronizations so far (see [`Gpu::host_reads`]).
    host_reads: AtomicU64,
    /// Host-to-device copies so far (see [`Gpu::uploads`]).
    uploads: AtomicU64,
}

impl Gpu {
    /// A device on `backend`, with no launch counted yet.
    pub fn new(backend: GpuBackend) -> Self {
        Gpu {
            backend,
            launches: AtomicU64::new(0),
            capture: graph::CaptureGate::default(),
            host_reads: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
        }
    }

    /// One more launch done (a kernel, or a step graph's replay).
    fn count_launch(&self) {
        self.launches.fetch_add(1, Ordering::Relaxed);
    }

    /// Downloads to the host and synchronizations since the device was created (counted on emu
    /// too, where both are free): a training step meant to run without waiting for the device
    /// (or to be captured in a CUDA graph) must leave this unchanged.
    pub fn host_reads(&self) -> u64 {
        self.host_reads.load(Ordering::Relaxed)
    }

    /// Copies of host data onto the device (counted on emu too) since the device was created.
    pub fn uploads(&self) -> u64 {
        self.uploads.load(Ordering::Relaxed)
    }

    /// Kernels this device has launched successfully since it was created: the difference over a
    /// training step is its launch count (what a CUDA graph would replace by one launch).
    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }

    /// The CUDA device name, or `emu`.
    pub fn name(&self) -> String {
        match &self.backend {
            GpuBackend::Cuda(c) => format!("cuda ({})", c.device_name()),
            GpuBackend::Emu(e) => format!("emu ({:?} thread order)", e.order()),
        }
    }

    /// True for the emulator.
    pub fn is_emu(&self) -> bool {
        matches!(self.backend, GpuBackend::Emu(_))
    }

    /// Copy `data` into a new device buffer.
    pub fn upload<T: Elem>(&self, data: &[T]) -> Result<Buffer<T>> {
        let _op = self.capture.enter(Op::Upload)?;
        self.uploads.fetch_add(1, Ordering::Relaxed);
        match &self.backend {
            GpuBackend::Cuda(c) => c.upload(data).map(Buffer::Cuda),
            GpuBackend::Emu(e) => {
                e.reserve::<T>(data.len())?;
                Ok(Buffer::Host(host_copy(data)?))
            }
        }
    }

    /// Move `data` onto the device (no copy on the emulator, whose memory is host memory).
    pub fn upload_vec<T: Elem>(&self, data: Vec<T>) -> Result<Buffer<T>> {
        match &self.backend {
            GpuBackend::Emu(e) => {
                let _op = self.capture.enter(Op::Upload)?;
                e.reserve::<T>(data.len())?;
                self.uploads.fetch_add(1, Ordering::Relaxed);
                Ok(Buffer::Host(data))
            }
            GpuBackend::Cuda(_) => self.upload(&data),
        }
    }

    /// Copy `data` into the existing buffer `buf` (same length): how a step graph's inputs get
    /// their next values, at addresses the graph already holds.
    pub fn upload_into<T: Elem>(&self, buf: &mut Buffer<T>, data: &[T]) -> Result<()> {
        let _op = self.capture.enter(Op::Upload)?;
        if buf.len() != data.len() {
            return Err(Error::Device(format!(
                "upload of {} elements into a buffer of {}",
                data.len(),
                buf.len()
            )));
        }
        match (&self.backend, buf) {
            (GpuBackend::Cuda(c), Buffer::Cuda(s)) => c.upload_into(s, data),
            (GpuBackend::Emu(_), Buffer::Host(v)) => {
                v.copy_from_slice(data);
                Ok(())
            }
            (GpuBackend::Cuda(_), Buffer::Host(_)) => Err(Error::Device(
                "a host buffer was given to the cuda device".into(),
            )),
            (GpuBackend::Emu(_), Buffer::Cuda(_)) => Err(Error::Device(
                "a cuda buffer was given to the emulator".into(),
            )),
        }
    }

    /// A new device buffer of `n` zeroed elements.
    pub fn zeros<T: Elem>(&self, n: usize) -> Result<Buffer<T>> {
        let op = self.capture.enter(Op::Zeros)?;
        match &self.backend {
            GpuBackend::Cuda(c) => c.zeros(n).map(Buffer::Cuda),
            GpuBackend::Emu(e) => {
                e.reserve::<T>(n)?;
                let v = vec![T::default(); n];
                if op.capturing {
                    self.capture
                        .record_alloc(v.as_ptr() as u64, std::mem::size_of_val(&v[..]));
                    self.capture.record(Node::zero(&v));
                }
                Ok(Buffer::Host(v))
            }
        }
    }

    /// A new device buffer holding a copy of `buf`; out of memory is an error, not a panic.
    pub fn copy<T: Elem>(&self, buf: &Buffer<T>) -> Result<Buffer<T>> {
        let op = self.capture.enter(Op::Copy)?;
        match (&self.backend, buf) {
            (GpuBackend::Cuda(c), Buffer::Cuda(s)) => c.copy(s).map(Buffer::Cuda),
            (GpuBackend::Emu(e), Buffer::Host(v)) if op.capturing => {
                // Recorded, not run: the copy happens when the graph replays.
                e.reserve::<T>(v.len())?;
                let dst = vec![T::default(); v.len()];
                self.capture
                    .record_alloc(dst.as_ptr() as u64, std::mem::size_of_val(&dst[..]));
                self.capture.record(Node::copy(v, &dst));
                Ok(Buffer::Host(dst))
            }
            (GpuBackend::Emu(e), Buffer::Host(v)) => {
                e.reserve::<T>(v.len())?;
                Ok(Buffer::Host(host_copy(v)?))
            }
            (GpuBackend::Cuda(_), Buffer::Host(_)) => Err(Error::Device(
                "a host buffer was given to the cuda device".into(),
            )),
            (GpuBackend::Emu(_), Buffer::Cuda(_)) => Err(Error::Device(
                "a cuda buffer was given to the emulator".into(),
            )),
        }
    }

    /// Copy `src` into the existing buffer `dst` (same length) on the device: a step graph puts
    /// its results back into buffers that outlive it this way.
    pub fn copy_into<T: Elem>(&self, src: &Buffer<T>, dst: &mut Buffer<T>) -> Result<()> {
        let op = self.capture.enter(Op::Copy)?;
        if src.len() != dst.len() {
            return Err(Error::Device(format!(
                "device copy of {} elements into a buffer of {}",
                src.len(),
                dst.len()
            )));
        }
        match (&self.backend, src, dst) {
            (GpuBackend::Cuda(c), Buffer::Cuda(s), Buffer::Cuda(d)) => c.copy_into(s, d),
            (GpuBackend::Emu(_), Buffer::Host(s), Buffer::Host(d)) => {
                if op.capturing {
                    self.capture.record(Node::copy(s, d));
                } else {
                    d.copy_from_slice(s);
                }
                Ok(())
            }
            _ => Err(Error::Device(
                "device copy between buffers of another device".into(),
            )),
        }
    }

    /// Copy a device buffer back to the host.
    pub fn download<T: Elem>(&self, buf: &Buffer<T>) -> Result<Vec<T>> {
        let _op = self.capture.enter(Op::Download)?;
        self.host_reads.fetch_add(1, Ordering::Relaxed);
        match buf {
            Buffer::Host(v) => host_copy(v),
            Buffer::Cuda(s) => match &self.backend {
                GpuBackend::Cuda(c) => c.download(s),
                GpuBackend::Emu(_) => Err(Error::Device(
                    "a cuda buffer was given to the emulator".into(),
                )),
            },
        }
    }

    /// Address of a buffer as a kernel pointer argument.
    pub fn addr<T: Elem>(&self, buf: &Buffer<T>) -> u64 {
        match buf {
            Buffer::Host(v) => v.as_ptr() as u64,
            Buffer::Cuda(s) => cuda::CudaBackend::raw_ptr(s),
        }
    }

    /// Address of a buffer the kernel writes to.
    pub fn addr_mut<T: Elem>(&self, buf: &mut Buffer<T>) -> u64 {
        match buf {
            Buffer::Host(v) => v.as_mut_ptr() as u64,
            Buffer::Cuda(s) => cuda::CudaBackend::raw_ptr(s),
        }
    }

    /// Launch `kernel` (its `extern "C"` name in `kernels/*.cu`).
    pub fn launch(&self, kernel: &str, cfg: LaunchCfg, args: &mut KernelArgs) -> Result<()> {
        let op = self.capture.enter(Op::Launch)?;
        match &self.backend {
            GpuBackend::Cuda(c) => c.launch(kernel, cfg, args)?,
            GpuBackend::Emu(e) if !op.capturing => e.launch(kernel, cfg, args)?,
            GpuBackend::Emu(_) => {
                // Recorded, not run, as CUDA's stream capture does.
                self.capture.record(Node::Launch {
                    kernel: kernel.to_string(),
                    cfg,
                    args: args.clone(),
                });
                return Ok(());
            }
        }
        if op.capturing {
            self.capture.count_kernel();
        } else {
            self.count_launch();
        }
        launch_record::note(kernel);
        Ok(())
    }

    /// Wait until every launch and copy queued so far has finished.
    pub fn synchronize(&self) -> Result<()> {
        let _op = self.capture.enter(Op::Synchronize)?;
        self.host_reads.fetch_add(1, Ordering::Relaxed);
        match &self.backend {
            GpuBackend::Cuda(c) => c.synchronize(),
            GpuBackend::Emu(_) => Ok(()),
        }
    }
}

/// Keep freed host memory in the process instead of returning it to the kernel after every op.
///
/// Every cpu op allocates its output; glibc serves large blocks with fresh `mmap`s (or trims the
/// heap top), so each training step used to page-fault its activations in again — about a tenth
/// of a ResNet-20 step. Called by the binary at start-up; a library user may call it too.
pub fn tune_host_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: mallopt only changes glibc's allocation policy; it is called before threads start.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20); // glibc's maximum: blocks up to 32 MiB come from the heap
            mallopt(M_TRIM_THRESHOLD, i32::MAX); // never give the heap top back
        }
    }
}
