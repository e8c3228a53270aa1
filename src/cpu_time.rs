//! CPU time from the kernel's clocks (`clock_gettime`), for timings that other processes on a
//! shared machine do not inflate (thread) and for campaign reports (process). Linux only;
//! `None` elsewhere or when the clock fails.

/// CPU seconds the whole process has run.
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds(2) // CLOCK_PROCESS_CPUTIME_ID
}

/// CPU seconds the calling thread has run.
pub fn thread_cpu_seconds() -> Option<f64> {
    cpu_seconds(3) // CLOCK_THREAD_CPUTIME_ID
}

#[cfg(target_os = "linux")]
fn cpu_seconds(clock: i32) -> Option<f64> {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: a plain libc call writing into `ts`, valid for the call.
    let rc = unsafe { clock_gettime(clock, &mut ts) };
    (rc == 0).then_some(ts.sec as f64 + ts.nsec as f64 * 1e-9)
}

#[cfg(not(target_os = "linux"))]
fn cpu_seconds(_clock: i32) -> Option<f64> {
    None
}
