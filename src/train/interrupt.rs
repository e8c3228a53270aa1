//! Ctrl-C and SIGTERM during training: the first signal asks the run to stop at the next batch
//! boundary and save a resumable state; a second one exits at once (the committed state on disk
//! is always complete, so exiting mid-write loses only the step in flight).
//!
//! The handlers are installed by the `lit-engine` binary ([`install`]); a library user who never
//! installs them keeps the default behaviour of their program.
//!
//! Besides signals, the code that runs training on a thread can give it a stop check
//! ([`with_stop_check`], e.g. the time budgets of `lit-engine sweep`): it is polled at the same
//! batch boundaries and stops only the runs on that thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that asked the run to stop (0: none).
static REQUESTED: AtomicI32 = AtomicI32::new(0);

/// Interrupt (Ctrl-C).
pub const SIGINT: i32 = 2;
/// Termination request (`kill`).
pub const SIGTERM: i32 = 15;

/// A thread's stop check: the signal number to stop as, or `None` to go on.
type StopCheck = Box<dyn Fn() -> Option<i32>>;

thread_local! {
    /// The stop check of the runs on this thread ([`with_stop_check`]).
    static STOP_CHECK: RefCell<Option<StopCheck>> = const { RefCell::new(None) };
}

/// The signal received, or the stop this thread's check asks for, if any: the trainer polls
/// this between batches.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => STOP_CHECK.with(|c| c.borrow().as_ref().and_then(|check| check())),
        s => Some(s),
    }
}

/// Run `f` (a training run) with `check` polled between its batches: when it returns a signal
/// number, the run saves its state and stops as if that signal had arrived, without touching
/// other threads' runs. The thread's previous check is restored afterwards.
pub fn with_stop_check<R>(check: impl Fn() -> Option<i32> + 'static, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<StopCheck>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            STOP_CHECK.with(|c| *c.borrow_mut() = previous);
        }
    }
    let previous = STOP_CHECK.with(|c| c.borrow_mut().replace(Box::new(check)));
    let _restore = Restore(previous);
    f()
}

/// Ask the run to stop as if `signal` had arrived (tests, embedding programs).
pub fn request_stop(signal: i32) {
    REQUESTED.store(signal, Ordering::SeqCst);
}

/// Test hook: `LIT_FAULT=interrupt-at-batch:K` acts as if SIGINT arrived just before the K-th
/// training batch of the process (1-based), so tests can stop a run at an exact batch.
pub fn before_batch() {
    use std::sync::atomic::AtomicU64;
    use std::sync::OnceLock;
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    static BATCHES: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        let spec = std::env::var("LIT_FAULT").ok()?;
        spec.strip_prefix("interrupt-at-batch:")?
            .trim()
            .parse()
            .ok()
    });
    if let Some(at) = *at {
        if BATCHES.fetch_add(1, Ordering::SeqCst) + 1 == at {
            request_stop(SIGINT);
        }
    }
}

/// The exit status of a process stopped by `signal`: 128 + the signal number (130, 143).
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

#[cfg(unix)]
extern "C" fn on_signal(signal: std::ffi::c_int) {
    extern "C" {
        fn _exit(status: std::ffi::c_int) -> !;
    }
    if REQUESTED.swap(signal, Ordering::SeqCst) != 0 {
        // Second signal: only async-signal-safe calls here.
        // SAFETY: `_exit` is async-signal-safe and ends the process without unwinding.
        unsafe { _exit(exit_code(signal)) }
    }
}

/// Install the SIGINT/SIGTERM handlers (Unix; elsewhere the default handlers stay).
pub fn install() {
    #[cfg(unix)]
    {
        extern "C" {
            fn signal(signum: std::ffi::c_int, handler: extern "C" fn(std::ffi::c_int)) -> usize;
        }
        // SAFETY: the handler only touches an atomic and calls `_exit`.
        unsafe {
            signal(SIGINT, on_signal);
            signal(SIGTERM, on_signal);
        }
    }
}
