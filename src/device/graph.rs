//! One graph per training step: the launches of a step are captured once and replayed as a
//! single graph launch ([`Gpu::begin_capture`], [`Gpu::end_capture`], [`StepGraph::launch`]).
//!
//! * **cuda**: stream capture (`cuStreamBeginCapture` in thread-local mode, instantiated with
//!   auto-free-on-launch). Allocations and frees inside the step become the graph's memory nodes,
//!   so buffers the step creates and drops live at the same addresses at every replay.
//! * **emu**: the same contract, modelled. While capturing nothing runs: launches, zero-fills and
//!   device copies are recorded. At the end every buffer allocated during the capture gets a
//!   graph-owned twin, and each recorded address that falls inside such a buffer (an 8-byte word
//!   of a pointer argument or of a by-value params struct, which may embed pointers) is moved to
//!   the twin, as CUDA's graph memory keeps them at fixed addresses. A replay runs the records.
//!
//! What a captured step may do, on both (the emulator refuses the same things CUDA does, so a
//! step that captures on emu captures on cuda): launch kernels, allocate (zeroed) buffers, copy
//! device buffers. It may not copy from or to the host or synchronize — the capture fails with
//! [`Error::Device`] naming what was tried. Its results must land in buffers allocated before the
//! capture: a buffer it allocates is the graph's, and is not updated by later replays on emu.
//! Other threads' device work waits until the capture ends, so nothing foreign enters the graph.

use super::{cuda, emu, Elem, Gpu, GpuBackend, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;

/// A captured step, replayed by [`StepGraph::launch`]. Tied to the [`Gpu`] that captured it.
pub struct StepGraph {
    replay: Replay,
    kernels: usize,
}

enum Replay {
    Cuda(cuda::CapturedGraph),
    Emu(EmuGraph),
}

impl StepGraph {
    /// Kernel launches the graph replays with one launch.
    pub fn kernels(&self) -> usize {
        self.kernels
    }

    /// Replay the captured step on `gpu` (the device that captured it): one graph launch.
    pub fn launch(&self, gpu: &Gpu) -> Result<()> {
        let _op = gpu.capture.enter(Op::Launch)?;
        match (&self.replay, &gpu.backend) {
            (Replay::Cuda(g), GpuBackend::Cuda(_)) => g.launch()?,
            (Replay::Emu(g), GpuBackend::Emu(e)) => g.replay(e)?,
            _ => {
                return Err(Error::Device(
                    "a step graph was launched on another kind of device than captured it".into(),
                ))
            }
        }
        gpu.count_launch();
        Ok(())
    }
}

/// What a device operation is, for the capture rules.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// A kernel launch (or a graph launch).
    Launch,
    /// A new zeroed device buffer.
    Zeros,
    /// A device-to-device copy into a new buffer.
    Copy,
    /// A host-to-device copy.
    Upload,
    /// A device-to-host copy.
    Download,
    /// Waiting for the device.
    Synchronize,
}

impl Op {
    /// CUDA refuses these inside a stream capture (host copies of pageable memory, waits).
    fn capturable(self) -> bool {
        matches!(self, Op::Launch | Op::Zeros | Op::Copy)
    }

    fn describe(self) -> &'static str {
        match self {
            Op::Launch => "a kernel launch",
            Op::Zeros => "an allocation",
            Op::Copy => "a device copy",
            Op::Upload => "a copy from the host (upload)",
            Op::Download => "a copy to the host (a value read back, e.g. a loss or an accuracy)",
            Op::Synchronize => "a synchronize",
        }
    }
}

/// The capture state of one [`Gpu`]: who captures, and the device work other threads have in
/// flight (a capture starts only when none is).
#[derive(Default)]
pub(crate) struct CaptureGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    capture: Option<Capture>,
    /// Device operations of threads other than a capturing one, in progress.
    in_flight: usize,
}

/// The capture in progress.
struct Capture {
    thread: ThreadId,
    kernels: usize,
    /// The emulator's records (`None` on cuda, where the driver records).
    emu: Option<EmuRecording>,
}

/// A device operation admitted by the gate: `capturing` says whether it belongs to a capture.
pub(crate) struct Admitted<'a> {
    gate: &'a CaptureGate,
    /// The operation runs inside a capture (on the capturing thread).
    pub capturing: bool,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.capturing {
            let mut s = self.gate.lock();
            s.in_flight -= 1;
            if s.in_flight == 0 {
                self.gate.changed.notify_all();
            }
        }
    }
}

impl CaptureGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The state stays consistent across a panic elsewhere: every update is one assignment.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit `op` from the calling thread: other threads wait while a capture runs; inside a
    /// capture only capturable operations pass.
    pub(crate) fn enter(&self, op: Op) -> Result<Admitted<'_>> {
        let me = std::thread::current().id();
        let mut s = self.lock();
        // Another thread's capture: wait for its end (on cuda the work would land in the graph).
        while s.capture.as_ref().is_some_and(|c| c.thread != me) {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        // Like CUDA's stream capture: while a capture is active, work is captured.
        if s.capture.is_some() {
            if !op.capturable() {
                return Err(not_capturable(op));
            }
            return Ok(Admitted {
                gate: self,
                capturing: true,
            });
        }
        s.in_flight += 1;
        Ok(Admitted {
            gate: self,
            capturing: false,
        })
    }

    /// Count a kernel launch captured by the driver (cuda).
    pub(crate) fn count_kernel(&self) {
        if let Some(c) = self.lock().capture.as_mut() {
            c.kernels += 1;
        }
    }

    /// Record an operation on the emulator's capture (launches are counted too).
    pub(crate) fn record(&self, node: Node) {
        let mut s = self.lock();
        if let Some(c) = s.capture.as_mut() {
            if let Node::Launch { .. } = node {
                c.kernels += 1;
            }
            if let Some(rec) = c.emu.as_mut() {
                rec.nodes.push(node);
            }
        }
    }

    /// Register a buffer the emulator allocated during the capture.
    pub(crate) fn record_alloc(&self, addr: u64, bytes: usize) {
        let mut s = self.lock();
        if let Some(rec) = s.capture.as_mut().and_then(|c| c.emu.as_mut()) {
            if bytes > 0 {
                let node = rec.nodes.len();
                rec.allocs.push(CaptureAlloc { addr, bytes, node });
            }
        }
    }

    fn begin(&self, emu: bool) -> Result<()> {
        let me = std::thread::current().id();
        let mut s = self.lock();
        if s.capture.is_some() {
            return Err(Error::Device(
                "a step capture is already in progress on this device".into(),
            ));
        }
        while s.in_flight > 0 {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.capture = Some(Capture {
            thread: me,
            kernels: 0,
            emu: emu.then(EmuRecording::default),
        });
        Ok(())
    }

    fn end(&self) -> Result<Capture> {
        let me = std::thread::current().id();
        let mut s = self.lock();
        match &s.capture {
            Some(c) if c.thread == me => {}
            _ => {
                return Err(Error::Device(
                    "end of a step capture that this thread did not begin".into(),
                ))
            }
        }
        let capture = s.capture.take().expect("checked above");
        self.changed.notify_all();
        Ok(capture)
    }
}

fn not_capturable(op: Op) -> Error {
    Error::Device(format!(
        "{} inside a captured step: a step graph may only launch kernels, allocate and copy on \
         the device (read values back after the replay, upload inputs before it)",
        op.describe()
    ))
}

impl Gpu {
    /// Start capturing this thread's device work into a [`StepGraph`] (see the module
    /// documentation for what a captured step may do). Not while kernel timing is on.
    pub fn begin_capture(&self) -> Result<()> {
        if let GpuBackend::Cuda(c) = &self.backend {
            // Before the gate closes: the driver must see no other thread's work meanwhile.
            self.capture.begin(false)?;
            if let Err(e) = c.begin_capture() {
                let _ = self.capture.end();
                return Err(e);
            }
            return Ok(());
        }
        self.capture.begin(true)
    }

    /// Finish the capture begun by [`Gpu::begin_capture`] on this thread. Nothing captured has
    /// run yet: launch the graph to run the step. After an error the device is out of capture
    /// mode and usable as before.
    pub fn end_capture(&self) -> Result<StepGraph> {
        let capture = self.capture.end()?;
        let replay = match (&self.backend, capture.emu) {
            (GpuBackend::Cuda(c), _) => Replay::Cuda(c.end_capture()?),
            (GpuBackend::Emu(_), Some(rec)) => Replay::Emu(EmuGraph::build(rec)?),
            (GpuBackend::Emu(_), None) => {
                return Err(Error::Device("emulator capture without records".into()))
            }
        };
        Ok(StepGraph {
            replay,
            kernels: capture.kernels,
        })
    }

    /// Abandon a capture after an error inside the step: the device leaves capture mode and
    /// whatever was recorded is dropped.
    pub fn abort_capture(&self) {
        if let Ok(capture) = self.capture.end() {
            if let (GpuBackend::Cuda(c), None) = (&self.backend, capture.emu) {
                let _ = c.end_capture();
            }
        }
    }
}

/// One buffer the emulator allocated during a capture; `node` is the record count at the time,
/// so an address is matched to the buffer that held it when a record used it.
struct CaptureAlloc {
    addr: u64,
    bytes: usize,
    node: usize,
}

/// What the emulator records while capturing.
#[derive(Default)]
struct EmuRecording {
    nodes: Vec<Node>,
    allocs: Vec<CaptureAlloc>,
}

/// One recorded device operation.
pub(crate) enum Node {
    /// A kernel launch with its arguments as they were given.
    Launch {
        kernel: String,
        cfg: LaunchCfg,
        args: KernelArgs,
    },
    /// Zero `bytes` at `addr`.
    Zero { addr: u64, bytes: usize },
    /// Copy `bytes` from `src` to `dst`.
    Copy { src: u64, dst: u64, bytes: usize },
}

impl Node {
    /// A recorded zero-fill of a buffer the capture allocated.
    pub(crate) fn zero<T: Elem>(buf: &[T]) -> Node {
        Node::Zero {
            addr: buf.as_ptr() as u64,
            bytes: std::mem::size_of_val(buf),
        }
    }
    /// A recorded copy of `src` into `dst` (same length).
    pub(crate) fn copy<T: Elem>(src: &[T], dst: &[T]) -> Node {
        Node::Copy {
            src: src.as_ptr() as u64,
            dst: dst.as_ptr() as u64,
            bytes: std::mem::size_of_val(src),
        }
    }
}

/// 256-byte aligned storage, as `cuMemAlloc` aligns (kernels load `float4`).
#[derive(Clone, Copy)]
#[repr(C, align(256))]
struct Chunk([u8; 256]);

/// An emulator graph: the records with every capture-allocated address moved into one arena the
/// graph owns (each buffer at a 256-byte aligned offset). Behind a mutex: a replay writes it.
struct EmuGraph {
    nodes: Mutex<(Vec<Node>, Box<[Chunk]>)>,
}

impl EmuGraph {
    fn build(rec: EmuRecording) -> Result<EmuGraph> {
        let mut offsets = Vec::with_capacity(rec.allocs.len());
        let mut chunks = 0usize;
        for a in &rec.allocs {
            offsets.push(chunks * 256);
            chunks = chunks.saturating_add(a.bytes.div_ceil(256));
        }
        let mut arena = Vec::new();
        arena.try_reserve_exact(chunks).map_err(|_| {
            Error::Device(format!(
                "emulator out of memory: {} bytes for a step graph's buffers",
                chunks.saturating_mul(256)
            ))
        })?;
        arena.resize(chunks, Chunk([0; 256]));
        let arena = arena.into_boxed_slice();
        let base = arena.as_ptr() as u64;
        let twin = |word: u64, node: usize| -> u64 {
            // The newest buffer allocated before this record that holds the address.
            rec.allocs
                .iter()
                .zip(&offsets)
                .rev()
                .filter(|(a, _)| a.node <= node)
                .find(|(a, _)| word >= a.addr && word - a.addr < a.bytes as u64)
                .map_or(word, |(a, &off)| base + off as u64 + (word - a.addr))
        };
        let mut nodes = rec.nodes;
        for (i, node) in nodes.iter_mut().enumerate() {
            match node {
                Node::Launch { args, .. } => {
                    for w in args.words_mut() {
                        *w = twin(*w, i);
                    }
                }
                Node::Zero { addr, .. } => *addr = twin(*addr, i),
                Node::Copy { src, dst, .. } => {
                    *src = twin(*src, i);
                    *dst = twin(*dst, i);
                }
            }
        }
        Ok(EmuGraph {
            nodes: Mutex::new((nodes, arena)),
        })
    }

    fn replay(&self, e: &emu::EmuBackend) -> Result<()> {
        let mut guard = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let (nodes, _memory) = &mut *guard;
        for node in nodes.iter_mut() {
            match node {
                Node::Launch { kernel, cfg, args } => e.launch(kernel, *cfg, args)?,
                // SAFETY: both addresses are graph-owned buffers or buffers the capture saw alive
                // (kept so by the caller's contract), `bytes` long.
                Node::Zero { addr, bytes } => unsafe {
                    std::ptr::write_bytes(*addr as *mut u8, 0, *bytes)
                },
                Node::Copy { src, dst, bytes } => unsafe {
                    std::ptr::copy(*src as *const u8, *dst as *mut u8, *bytes)
                },
            }
        }
        Ok(())
    }
}
