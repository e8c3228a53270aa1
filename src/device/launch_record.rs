//! Which kernels ran: [`record`] counts the launches the current thread makes while a closure
//! runs, by kernel name. Tests use it to prove a path ran the kernels it should (e.g. that a
//! bf16 training step on the emulator reached the tensor-core kernels). Off, it costs one
//! thread-local read per launch.

use std::cell::RefCell;
use std::collections::BTreeMap;

thread_local! {
    /// Launch counts by kernel name while a [`record`] is active on this thread.
    static ACTIVE: RefCell<Option<BTreeMap<String, u64>>> = const { RefCell::new(None) };
}

/// Counts one successful launch of `kernel` if this thread is recording (called by `Gpu::launch`).
pub(super) fn note(kernel: &str) {
    ACTIVE.with(|a| {
        if let Some(counts) = a.borrow_mut().as_mut() {
            *counts.entry(kernel.to_string()).or_insert(0) += 1;
        }
    });
}

/// Runs `f` and returns its result with the kernels this thread launched meanwhile, by name.
/// Nested records are not supported: the inner one takes over until it ends.
pub fn record<R>(f: impl FnOnce() -> R) -> (R, BTreeMap<String, u64>) {
    let outer = ACTIVE.with(|a| a.borrow_mut().replace(BTreeMap::new()));
    let out = f();
    let counts = ACTIVE.with(|a| std::mem::replace(&mut *a.borrow_mut(), outer));
    (out, counts.unwrap_or_default())
}
