//! The cuda device: cudarc (dynamic loading) for the driver, NVRTC for the kernels
//! ([`super::nvrtc`]), compiled modules cached on disk ([`super::kernel_cache`]).
//!
//! * One context (the device's primary context) and one stream; everything is ordered by that
//!   stream, so buffers need no event bookkeeping (see [`CudaBackend::raw_ptr`]).
//! * A kernel file is compiled and loaded the first time one of its kernels is launched; all of its
//!   kernels are then cached by name.
//! * Launches go through `cuLaunchKernel` with the very [`KernelArgs`] array the emulator gets.
//! * cudarc panics when `libcuda` cannot be loaded or lacks a symbol: the library is probed first
//!   and the driver is opened under `catch_library_panic`, so a machine without a driver or GPU
//!   gets an `Error::Device` with a one-line reason.

use super::kernel_cache::{KernelCache, Origin};
use super::kernels;
use super::nvrtc::{self, Nvrtc, Target};
use super::{Elem, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use cudarc::driver::sys::{self as cu, CUfunction_attribute, CUresult};
use cudarc::driver::{
    result as cu_result, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DriverError,
};
use cudarc::nvrtc::Ptx;
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Dynamic shared memory a kernel may use without opting in (`cuFuncSetAttribute`).
const DEFAULT_DYNAMIC_SHARED_LIMIT: u32 = 48 * 1024;

/// A CUDA context and stream on one GPU, with its NVRTC-compiled kernels (cached on disk
/// and in memory) and optional per-kernel timing.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    compute_capability: (i32, i32),
    /// `cuDriverGetVersion`: 13000 for CUDA 13.0.
    driver_version: i32,
    nvrtc: &'static Nvrtc,
    target: Target,
    cache: Option<KernelCache>,
    kernels: Mutex<HashMap<String, Arc<Kernel>>>,
    /// Held while a kernel file compiles, so two threads never compile the same file twice.
    compiling: Mutex<()>,
    /// `LIT_KERNEL_TIMES=1`: an event pair around every launch, read by [`CudaBackend::take_kernel_times`].
    timer: Option<Mutex<KernelTimer>>,
}

/// Launches bracketed by events and not read yet, and the totals of those already read.
#[derive(Default)]
struct KernelTimer {
    pending: Vec<TimedLaunch>,
    totals: HashMap<String, KernelTime>,
}

/// Pending launches after which their events are read and freed, so a long run with
/// `LIT_KERNEL_TIMES=1` (a whole training, not only `bench`) does not pile up events.
const TIMER_FOLD_AT: usize = 1 << 16;

/// One launch bracketed by two events on the stream.
struct TimedLaunch {
    kernel: String,
    start: cudarc::driver::sys::CUevent,
    end: cudarc::driver::sys::CUevent,
}

// SAFETY: CUevent handles are plain driver handles, usable from any thread of the context.
unsafe impl Send for TimedLaunch {}

/// Time spent in one kernel (by name) over the launches since the last read.
#[derive(Clone, Debug)]
pub struct KernelTime {
    /// Kernel name.
    pub kernel: String,
    /// Launches timed.
    pub launches: usize,
    /// GPU time of those launches, in milliseconds.
    pub total_ms: f64,
}

/// A loaded kernel. The `CudaFunction` keeps its module loaded.
struct Kernel {
    function: CudaFunction,
    /// Byte size of each parameter, when the driver can tell (`cuFuncGetParamInfo`, CUDA 12.4+).
    param_sizes: Option<Vec<usize>>,
    /// The largest dynamic shared memory this kernel has been opted in to.
    dynamic_shared_limit: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the map itself consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn driver_error(what: &str, e: DriverError) -> Error {
    Error::Device(format!("CUDA driver: {what}: {e:?}"))
}

impl CudaBackend {
    /// Open device `ordinal`. Never panics: no driver, no GPU, no NVRTC or an unusable driver
    /// library all come back as `Error::Device` with a one-line reason.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !unsafe { cu::is_culib_present() } {
            return Err(Error::Device(
                "libcuda.so not found: no NVIDIA driver".into(),
            ));
        }
        // Everything that calls into libcuda runs under the catch: a driver library lacking a
        // symbol makes cudarc panic at the first call of it.
        let opened = catch_library_panic(|| -> Result<_> {
            let (ctx, stream) = Self::open_context(ordinal)?;
            let name = ctx.name().map_err(|e| driver_error("device name", e))?;
            let compute_capability = ctx
                .compute_capability()
                .map_err(|e| driver_error("compute capability", e))?;
            let mut driver_version = 0;
            unsafe { cu::cuDriverGetVersion(&mut driver_version) }
                .result()
                .map_err(|e| driver_error("driver version", e))?;
            Ok((ctx, stream, name, compute_capability, driver_version))
        })
        .map_err(|p| Error::Device(format!("the CUDA driver library is unusable: {p}")))?;
        let (ctx, stream, name, compute_capability, driver_version) = opened?;
        let nvrtc = nvrtc::nvrtc()?;
        let target = Target::for_device(compute_capability, &nvrtc.archs).map_err(Error::Device)?;
        Ok(CudaBackend {
            ctx,
            stream,
            name,
            compute_capability,
            driver_version,
            nvrtc,
            target,
            cache: KernelCache::from_env(),
            kernels: Mutex::new(HashMap::new()),
            compiling: Mutex::new(()),
            timer: matches!(std::env::var("LIT_KERNEL_TIMES").as_deref(), Ok("1"))
                .then(|| Mutex::new(KernelTimer::default())),
        })
    }

    fn open_context(ordinal: usize) -> Result<(Arc<CudaContext>, Arc<CudaStream>)> {
        let no_device = || Error::Device("no CUDA device: the NVIDIA driver found no GPU".into());
        match cu_result::init() {
            Ok(()) => {}
            Err(DriverError(CUresult::CUDA_ERROR_NO_DEVICE)) => return Err(no_device()),
            Err(e) => return Err(driver_error("cuInit", e)),
        }
        let count = cu_result::device::get_count().map_err(|e| driver_error("device count", e))?;
        if count <= 0 {
            return Err(no_device());
        }
        if ordinal >= count as usize {
            return Err(Error::Device(format!(
                "CUDA device {ordinal} does not exist ({count} found)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| driver_error("opening the context", e))?;
        // Before any allocation: with one stream, stream order already orders every use of a
        // buffer, so the per-buffer read/write events cudarc would create and record are pure
        // overhead. Slices allocated from here on carry no events, which is what makes the bare
        // pointer of `raw_ptr` safe to hand to a launch.
        unsafe { ctx.disable_event_tracking() };
        // An owned (non-default) stream: unlike the legacy default stream it can be captured into
        // a CUDA graph later.
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_error("creating a stream", e))?;
        Ok((ctx, stream))
    }

    /// E.g. `NVIDIA H100 80GB HBM3, sm_90, driver 13.0, NVRTC 13.0`.
    pub fn device_name(&self) -> String {
        let (major, minor) = self.compute_capability;
        format!(
            "{}, sm_{major}{minor}, driver {}.{}, NVRTC {}.{}",
            self.name,
            self.driver_version / 1000,
            self.driver_version % 1000 / 10,
            self.nvrtc.version.0,
            self.nvrtc.version.1
        )
    }

    /// What kernels are compiled to on this device.
    pub fn target(&self) -> Target {
        self.target
    }

    /// `cuDriverGetVersion`: 13000 for CUDA 13.0.
    pub fn driver_version(&self) -> i32 {
        self.driver_version
    }

    /// The GPU's compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// The stream every launch and copy goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Copy `data` into a new device allocation.
    pub fn upload<T: Elem>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            return self.empty();
        }
        self.stream
            .clone_htod(data)
            .map_err(|e| driver_error(&format!("upload of {} elements", data.len()), e))
    }

    /// Copy `data` into `dst` (same length), queued on the stream.
    pub fn upload_into<T: Elem>(&self, dst: &mut CudaSlice<T>, data: &[T]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_htod(data, dst)
            .map_err(|e| driver_error(&format!("upload of {} elements", data.len()), e))
    }

    /// A new device allocation of `n` zeroed elements.
    pub fn zeros<T: Elem>(&self, n: usize) -> Result<CudaSlice<T>> {
        if n == 0 {
            return self.empty();
        }
        self.stream
            .alloc_zeros(n)
            .map_err(|e| driver_error(&format!("allocation of {n} elements"), e))
    }

    /// A new device allocation holding a copy of `s` (queued on the stream like any launch).
    pub fn copy<T: Elem>(&self, s: &CudaSlice<T>) -> Result<CudaSlice<T>> {
        if s.is_empty() {
            return self.empty();
        }
        // SAFETY: the uninitialized allocation is completely overwritten by the copy queued right
        // after it on the same stream, before any later use of it can run.
        let mut dst = unsafe { self.stream.alloc::<T>(s.len()) }.map_err(|e| {
            driver_error(&format!("allocation of {} elements for a copy", s.len()), e)
        })?;
        self.stream
            .memcpy_dtod(s, &mut dst)
            .map_err(|e| driver_error(&format!("device copy of {} elements", s.len()), e))?;
        Ok(dst)
    }

    /// Copy `src` into `dst` (same length), queued on the stream.
    pub fn copy_into<T: Elem>(&self, src: &CudaSlice<T>, dst: &mut CudaSlice<T>) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_dtod(src, dst)
            .map_err(|e| driver_error(&format!("device copy of {} elements", src.len()), e))
    }

    /// A zero-length buffer. Some drivers refuse 0-byte allocations (`cuMemAlloc` documents
    /// CUDA_ERROR_INVALID_VALUE), so one element is allocated and the slice claims length 0;
    /// dropping it frees that one-element allocation as usual.
    fn empty<T: Elem>(&self) -> Result<CudaSlice<T>> {
        let one = self
            .stream
            .alloc_zeros::<T>(1)
            .map_err(|e| driver_error("allocation of an empty buffer", e))?;
        let ptr = one.leak();
        // Safety: `ptr` was allocated on this stream and is now owned by the new slice alone.
        Ok(unsafe { self.stream.upgrade_device_ptr(ptr, 0) })
    }

    /// Copy to the host, after all queued work. A fault in an earlier kernel surfaces here.
    pub fn download<T: Elem>(&self, s: &CudaSlice<T>) -> Result<Vec<T>> {
        if s.is_empty() {
            self.synchronize()?;
            return Ok(Vec::new());
        }
        let v = self
            .stream
            .clone_dtoh(s)
            .map_err(|e| driver_error("copy to host (an earlier kernel may have failed)", e))?;
        self.synchronize()?;
        Ok(v)
    }

    /// The `CUdeviceptr` of a buffer, for a kernel argument.
    ///
    /// `device_ptr` hands back a `SyncOnDrop` guard that would record the slice's read event on
    /// the stream. Our slices have no events (event tracking is disabled before the first
    /// allocation, see `open_context`), so the guard is a no-op and dropping it right away loses
    /// nothing: the launch that uses the pointer is queued on the same single stream as every
    /// other use of the buffer, and stream order is the synchronization. The buffer must outlive
    /// the launch's queueing, which the `&` borrow in the op code guarantees; freeing it later is
    /// stream-ordered too (`cuMemFreeAsync` on the same stream).
    pub fn raw_ptr<T: Elem>(s: &CudaSlice<T>) -> u64 {
        let (ptr, _no_event_to_record) = s.device_ptr(s.stream());
        ptr
    }

    /// Start capturing the stream's work into a graph (thread-local mode: other threads' driver
    /// calls stay legal; [`super::graph`] keeps their work off the stream meanwhile).
    pub fn begin_capture(&self) -> Result<()> {
        if self.timer.is_some() {
            return Err(Error::Device(
                "a step cannot be captured while LIT_KERNEL_TIMES=1 times every launch".into(),
            ));
        }
        self.stream
            .begin_capture(cu::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| driver_error("beginning a step capture", e))
    }

    /// End the capture and instantiate it. Auto-free-on-launch: a buffer the step allocated and
    /// did not free is released when the graph is launched again, so replays never pile up.
    pub fn end_capture(&self) -> Result<CapturedGraph> {
        let flags = cu::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
        match self.stream.end_capture(flags) {
            Ok(Some(graph)) => Ok(CapturedGraph { graph }),
            Ok(None) => Err(Error::Device("the step capture recorded nothing".into())),
            Err(e) => Err(driver_error(
                "ending a step capture (an operation inside it was not capturable)",
                e,
            )),
        }
    }

    /// Launch `kernel` (compiling and loading its file on first use) with `args` as its
    /// `void**` argument array.
    pub fn launch(&self, kernel: &str, cfg: LaunchCfg, args: &mut KernelArgs) -> Result<()> {
        let k = self.kernel(kernel)?;
        let launch_error = |msg: String| Error::Launch {
            kernel: kernel.to_string(),
            msg,
        };
        if let Some(sizes) = &k.param_sizes {
            let given = args.slot_bytes();
            let fits = given.len() == sizes.len() && sizes.iter().zip(&given).all(|(p, g)| p <= g);
            if !fits {
                return Err(launch_error(format!(
                    "the kernel takes {} arguments of {sizes:?} bytes, the launch gives {} \
                     (slots of {given:?} bytes)",
                    sizes.len(),
                    given.len()
                )));
            }
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("binding the context", e))?;
        if cfg.shared_bytes > DEFAULT_DYNAMIC_SHARED_LIMIT
            && k.dynamic_shared_limit.load(Ordering::Relaxed) < cfg.shared_bytes
        {
            // Above 48 KiB a kernel must opt in; the limit only ever grows, so a concurrent
            // launch with a smaller request stays valid.
            let limit = k
                .dynamic_shared_limit
                .fetch_max(cfg.shared_bytes, Ordering::Relaxed);
            let limit = limit.max(cfg.shared_bytes);
            k.function
                .set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    limit as i32,
                )
                .map_err(|e| {
                    launch_error(format!("{limit} bytes of dynamic shared memory: {e:?}"))
                })?;
        }
        let timed = match &self.timer {
            Some(_) => Some(self.record_event()?),
            None => None,
        };
        let mut pointers = args.pointers();
        let launched = unsafe {
            cu_result::launch_kernel(
                k.function.cu_function(),
                cfg.grid,
                cfg.block,
                cfg.shared_bytes,
                self.stream.cu_stream(),
                &mut pointers,
            )
        }
        .map_err(|e| {
            launch_error(format!(
                "{e:?} (grid {:?}, block {:?}, {} bytes dynamic shared memory)",
                cfg.grid, cfg.block, cfg.shared_bytes
            ))
        });
        if let (Some(start), Some(timer)) = (timed, &self.timer) {
            let end = self.record_event()?;
            let mut timer = lock(timer);
            timer.pending.push(TimedLaunch {
                kernel: kernel.to_string(),
                start,
                end,
            });
            if timer.pending.len() >= TIMER_FOLD_AT {
                self.fold_timed_launches(&mut timer)?;
            }
        }
        launched
    }

    /// Read and free the events of the pending launches into the per-kernel totals (waits for
    /// the stream).
    fn fold_timed_launches(&self, timer: &mut KernelTimer) -> Result<()> {
        self.synchronize()?;
        let mut failure = None;
        for l in std::mem::take(&mut timer.pending) {
            match unsafe { cu_result::event::elapsed(l.start, l.end) } {
                Ok(ms) => {
                    let t = timer.totals.entry(l.kernel.clone()).or_insert(KernelTime {
                        kernel: l.kernel,
                        launches: 0,
                        total_ms: 0.0,
                    });
                    t.launches += 1;
                    t.total_ms += ms as f64;
                }
                Err(e) => failure = Some(driver_error("reading a timing event", e)),
            }
            unsafe {
                let _ = cu_result::event::destroy(l.start);
                let _ = cu_result::event::destroy(l.end);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn record_event(&self) -> Result<cudarc::driver::sys::CUevent> {
        let event = cu_result::event::create(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)
            .map_err(|e| driver_error("creating a timing event", e))?;
        unsafe { cu_result::event::record(event, self.stream.cu_stream()) }
            .map_err(|e| driver_error("recording a timing event", e))?;
        Ok(event)
    }

    /// With `LIT_KERNEL_TIMES=1`: the GPU time of every kernel launched since the last call,
    /// summed by kernel name, longest first (waits for the stream). `None` when timing is off.
    pub fn take_kernel_times(&self) -> Result<Option<Vec<KernelTime>>> {
        let Some(timer) = &self.timer else {
            return Ok(None);
        };
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("binding the context", e))?;
        let mut timer = lock(timer);
        self.fold_timed_launches(&mut timer)?;
        let by_name = std::mem::take(&mut timer.totals);
        let mut times: Vec<KernelTime> = by_name.into_values().collect();
        times.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        Ok(Some(times))
    }

    /// Wait for all queued work; reports a kernel fault or an error recorded by a `Drop`.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_error("synchronize (a kernel may have failed)", e))?;
        self.ctx
            .check_err()
            .map_err(|e| driver_error("deferred error", e))
    }

    fn kernel(&self, name: &str) -> Result<Arc<Kernel>> {
        if let Some(k) = lock(&self.kernels).get(name) {
            return Ok(k.clone());
        }
        let not_found = |msg: String| Error::Launch {
            kernel: name.to_string(),
            msg,
        };
        let file = kernels::file_of(name)
            .ok_or_else(|| not_found("no kernels/*.cu file defines this kernel".into()))?;
        let _compiling = lock(&self.compiling);
        if let Some(k) = lock(&self.kernels).get(name) {
            return Ok(k.clone()); // another thread compiled the file meanwhile
        }
        let module = self.load_file(file)?;
        let source = kernels::KERNEL_SOURCES
            .iter()
            .find(|(f, _)| *f == file)
            .map(|(_, s)| *s)
            .unwrap_or_default();
        let mut map = lock(&self.kernels);
        for kernel in kernels::kernel_names(source) {
            // A name the parser picked up that the module lacks (e.g. from a comment) is skipped;
            // only the requested kernel must exist.
            if let Ok(function) = module.load_function(&kernel) {
                let param_sizes = self.param_sizes(&function);
                map.insert(
                    kernel,
                    Arc::new(Kernel {
                        function,
                        param_sizes,
                        dynamic_shared_limit: AtomicU32::new(DEFAULT_DYNAMIC_SHARED_LIMIT),
                    }),
                );
            }
        }
        map.get(name).cloned().ok_or_else(|| {
            not_found(format!(
                "{file} was compiled but its module has no such function"
            ))
        })
    }

    /// Compile (or fetch from the disk cache) and load one kernel file.
    fn load_file(&self, file: &str) -> Result<Arc<CudaModule>> {
        let source = kernels::expanded_source(file).ok_or_else(|| Error::KernelCompile {
            file: file.to_string(),
            log: "not among the embedded kernels/*.cu sources".into(),
        })?;
        let Some(cache) = &self.cache else {
            let compiled = nvrtc::compile(file, &source, self.target, &[])?;
            return self.load_image(file, compiled.image);
        };
        match cache.get_or_compile(file, &source, self.target)? {
            (image, Origin::Compiled) => self.load_image(file, image),
            // A checksummed entry the driver still refuses (written by another setup): redo it.
            (image, Origin::Cache) => self.load_image(file, image).or_else(|_| {
                let image = cache.recompile(file, &source, self.target)?;
                self.load_image(file, image)
            }),
        }
    }

    fn load_image(&self, file: &str, image: Vec<u8>) -> Result<Arc<CudaModule>> {
        let refuse = |why: String| {
            Error::Device(format!(
                "loading {file} ({}, NVRTC {}.{}) into the CUDA {}.{} driver: {why}",
                self.target.label(),
                self.nvrtc.version.0,
                self.nvrtc.version.1,
                self.driver_version / 1000,
                self.driver_version % 1000 / 10
            ))
        };
        // cudarc hands the image pointer straight to cuModuleLoadData, which trusts it: check the
        // shape first (ELF magic for a cubin; NUL-free text for PTX, which cudarc also requires).
        let ptx = match self.target {
            Target::Cubin(_) if image.starts_with(b"\x7fELF") => Ptx::from_binary(image),
            Target::Cubin(_) => return Err(refuse("the cubin is not an ELF image".into())),
            Target::Ptx(_) => match String::from_utf8(image) {
                Ok(text) if !text.contains('\0') => Ptx::from_src(text),
                _ => return Err(refuse("the PTX is not NUL-free UTF-8 text".into())),
            },
        };
        self.ctx
            .load_module(ptx)
            .map_err(|e| refuse(format!("{e:?}")))
    }

    /// Parameter sizes of a kernel, for checking a launch's argument array before the driver
    /// reads it. `None` where the driver cannot tell (before CUDA 12.4): the check is skipped.
    fn param_sizes(&self, function: &CudaFunction) -> Option<Vec<usize>> {
        if self.driver_version < 12040 {
            return None;
        }
        let mut sizes = Vec::new();
        loop {
            let (mut offset, mut size) = (0usize, 0usize);
            let status = unsafe {
                cu::cuFuncGetParamInfo(function.cu_function(), sizes.len(), &mut offset, &mut size)
            };
            match status {
                CUresult::CUDA_SUCCESS => sizes.push(size),
                // Past the last parameter.
                // A kernel without parameters cannot be told from a driver that answers
                // nothing: only a non-empty list is trusted, so the check never refuses wrongly.
                CUresult::CUDA_ERROR_INVALID_VALUE if sizes.is_empty() => return None,
                CUresult::CUDA_ERROR_INVALID_VALUE => return Some(sizes),
                _ => return None,
            }
            if sizes.len() > 1024 {
                return None;
            }
        }
    }
}

thread_local! {
    /// Set while this thread runs under [`catch_library_panic`]: its panics are expected.
    static EXPECTING_PANIC: Cell<bool> = const { Cell::new(false) };
}

type PanicHook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Run `f`, turning a panic into `Err(first line of its message)`. cudarc panics (instead of
/// returning an error) when a CUDA library or one of its symbols cannot be loaded. The panic
/// hook is wrapped for the duration so this thread's expected panic prints nothing, while a panic
/// on any other thread still reports as usual; the previous hook is restored afterwards.
pub(crate) fn catch_library_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    if EXPECTING_PANIC.get() {
        // Nested call: the hook is already wrapped.
        return std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(&*p));
    }
    static HOOK: Mutex<()> = Mutex::new(());
    let _one_swap_at_a_time = lock(&HOOK);
    let previous: Arc<PanicHook> = Arc::new(std::panic::take_hook());
    let chained = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        if !EXPECTING_PANIC.get() {
            chained(info)
        }
    }));
    EXPECTING_PANIC.set(true);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
    EXPECTING_PANIC.set(false);
    drop(std::panic::take_hook()); // the wrapper, and with it the second reference to `previous`
    match Arc::try_unwrap(previous) {
        Ok(hook) => std::panic::set_hook(hook),
        Err(shared) => std::panic::set_hook(Box::new(move |info| shared(info))),
    }
    outcome.map_err(|p| panic_message(&*p))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    text.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_panics_become_one_line_errors_and_the_hook_is_restored() {
        let r: std::result::Result<(), String> =
            catch_library_panic(|| panic!("Unable to load libcuda\nsecond line"));
        assert_eq!(r, Err("Unable to load libcuda".to_string()));
        // Nested use and the Ok path.
        assert_eq!(catch_library_panic(|| catch_library_panic(|| 7)), Ok(Ok(7)));
        let nested: std::result::Result<std::result::Result<(), String>, String> =
            catch_library_panic(|| catch_library_panic(|| panic!("inner")));
        assert_eq!(nested, Ok(Err("inner".to_string())));
        // Ordinary panics still unwind through catch_unwind as before.
        assert!(std::panic::catch_unwind(|| panic!("after")).is_err());
    }
}

/// An instantiated CUDA graph of one step (see [`super::graph`]).
pub struct CapturedGraph {
    graph: cudarc::driver::CudaGraph,
}

impl CapturedGraph {
    /// Queue one replay on the stream.
    pub fn launch(&self) -> Result<()> {
        self.graph
            .launch()
            .map_err(|e| driver_error("launching a step graph", e))
    }
}
