//! The emu device: `kernels/*.cu` compiled by g++ as C++ against `kernels/emu/` (build.rs), each
//! CUDA thread a user-mode fiber. Memory is host memory, launches are synchronous.
//!
//! What it checks beyond the results: a barrier or warp operation that not every participating
//! thread reaches (deadlock), threads of a block at different `__syncthreads`, launch limits, the
//! argument count. What it cannot see: data races between blocks, memory-ordering bugs, inline PTX.
//!
//! Environment: `LIT_EMU_ORDER` (forward | reverse | random, for [`Device::emu`](super::Device::emu)),
//! `LIT_EMU_THREADS` (OS threads running blocks; default: the number of cores),
//! `LIT_EMU_STACK_KIB` (fiber stack size, default 64).

use super::{EmuOrder, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Dynamic shared memory a launch may use without opting in, as on CUDA.
pub const MAX_DYNAMIC_SHARED_BYTES: usize = 48 * 1024;

extern "C" {
    fn lit_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: usize,
        max_shared_bytes: usize,
        args: *mut *mut c_void,
        nargs: usize,
        order: c_int,
        seed: u64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn lit_emu_kernel_count() -> usize;
    fn lit_emu_kernel_name(i: usize) -> *const c_char;
    fn lit_emu_thread_cpu_seconds() -> f64;
}

/// The emulator: kernels compiled by the host C++ compiler, each CUDA thread a fiber, the
/// threads of a block run in a chosen order.
pub struct EmuBackend {
    order: EmuOrder,
    /// Most blocks in x of a grid-stride launch (tests only; `None`: the launch's own grid).
    grid_stride_cap: Option<u32>,
    /// Launches so far: the random order draws a new permutation per launch, reproducibly.
    launches: AtomicU64,
    /// Bytes that allocations may still take (tests: provoke out of memory); `usize::MAX`: no limit.
    alloc_budget: AtomicUsize,
}

impl EmuBackend {
    /// An emulator running block threads in `order`.
    pub fn new(order: EmuOrder) -> Result<Self> {
        Ok(EmuBackend {
            order,
            grid_stride_cap: None,
            launches: AtomicU64::new(0),
            alloc_budget: AtomicUsize::new(usize::MAX),
        })
    }

    /// Fail allocations once they have taken `bytes` in all (frees give nothing back), the way a
    /// full GPU fails them: lets tests check that out of memory comes back as an error.
    pub fn with_alloc_budget(self, bytes: usize) -> Self {
        self.alloc_budget.store(bytes, Ordering::Relaxed);
        self
    }

    /// Takes an allocation of `n` elements of `T` from the budget, or fails as out of memory.
    pub fn reserve<T>(&self, n: usize) -> Result<()> {
        let bytes = n.saturating_mul(std::mem::size_of::<T>());
        self.alloc_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                if left == usize::MAX {
                    Some(left)
                } else {
                    left.checked_sub(bytes)
                }
            })
            .map(|_| ())
            .map_err(|left| {
                Error::Device(format!(
                    "emulator out of memory: allocation of {bytes} bytes, {left} bytes left"
                ))
            })
    }

    /// Launch at most `cap` (>= 1) blocks in x where the launch is marked grid-stride.
    pub fn with_grid_stride_cap(mut self, cap: u32) -> Self {
        self.grid_stride_cap = Some(cap.max(1));
        self
    }

    /// The thread order inside a block.
    pub fn order(&self) -> EmuOrder {
        self.order
    }

    /// Runs `kernel` to completion. `args` holds host addresses for pointer parameters.
    pub fn launch(&self, kernel: &str, cfg: LaunchCfg, args: &mut KernelArgs) -> Result<()> {
        let fail = |msg: String| Error::Launch {
            kernel: kernel.into(),
            msg,
        };
        let name =
            CString::new(kernel).map_err(|_| fail("kernel name contains a NUL byte".into()))?;
        let grid_x = match self.grid_stride_cap {
            Some(cap) if cfg.grid_stride => cfg.grid.0.min(cap),
            _ => cfg.grid.0,
        };
        let grid = [grid_x, cfg.grid.1, cfg.grid.2];
        let block = [cfg.block.0, cfg.block.1, cfg.block.2];
        let mut pointers = args.pointers();
        let seed = 0x5eed_0000_0000 ^ self.launches.fetch_add(1, Ordering::Relaxed);
        let mut err = vec![0u8; 1024];
        // SAFETY: every pointer argument is a host address the caller keeps alive for the call,
        // `pointers` points at argument slots owned by `args`, the error buffer's length is passed.
        let rc = unsafe {
            lit_emu_launch(
                name.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                cfg.shared_bytes as usize,
                MAX_DYNAMIC_SHARED_BYTES,
                pointers.as_mut_ptr(),
                pointers.len(),
                self.order as c_int,
                seed,
                err.as_mut_ptr() as *mut c_char,
                err.len(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let msg = CStr::from_bytes_until_nul(&err).map(|m| m.to_string_lossy().into_owned());
        Err(fail(msg.unwrap_or_else(|_| "emulator failure".into())))
    }
}

/// Names of every kernel compiled into the emulator (including its self-test kernels).
pub fn kernel_names() -> Vec<String> {
    // SAFETY: the table is static; names are NUL-terminated literals.
    unsafe {
        (0..lit_emu_kernel_count())
            .map(|i| {
                CStr::from_ptr(lit_emu_kernel_name(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}

/// CPU seconds the calling thread has run (`CLOCK_THREAD_CPUTIME_ID`), for emulator timing reports
/// that other processes on the same cores do not distort. `None` where the clock is unavailable.
pub fn thread_cpu_seconds() -> Option<f64> {
    // SAFETY: no arguments, no shared state.
    let t = unsafe { lit_emu_thread_cpu_seconds() };
    (t >= 0.0).then_some(t)
}
