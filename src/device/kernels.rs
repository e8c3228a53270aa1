//! The kernel registry: every `kernels/*.cu` source embedded in the binary, and which file holds
//! which `extern "C" __global__` kernel.

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

pub use super::kernel_names::kernel_names;

/// The file (e.g. `elementwise.cu`) that defines `kernel`.
pub fn file_of(kernel: &str) -> Option<&'static str> {
    KERNEL_SOURCES
        .iter()
        .find(|(_, src)| kernel_names(src).iter().any(|k| k == kernel))
        .map(|(f, _)| *f)
}

/// Every kernel of every file: (file, kernel).
pub fn all_kernels() -> Vec<(&'static str, String)> {
    KERNEL_SOURCES
        .iter()
        .flat_map(|(f, src)| kernel_names(src).into_iter().map(move |k| (*f, k)))
        .collect()
}

/// Source with every `#include "x.cuh"` of a project header replaced by that header's text, so NVRTC
/// needs no include path for project headers.
pub fn expanded_source(file: &str) -> Option<String> {
    let (_, src) = KERNEL_SOURCES.iter().find(|(f, _)| *f == file)?;
    let mut out = String::with_capacity(src.len() + 4096);
    for line in src.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("#include") {
            let name = rest.trim().trim_matches('"');
            if let Some((_, h)) = KERNEL_HEADERS.iter().find(|(f, _)| *f == name) {
                out.push_str(&format!("// ---- begin {name}\n{h}\n// ---- end {name}\n"));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    Some(out)
}
