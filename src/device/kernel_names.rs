//! The one parser of kernel declarations. `build.rs` includes this file by path (it cannot use
//! the crate), so the build script and the runtime registry cannot disagree on which kernels a
//! source declares. Keep it free of crate imports.

/// Names of the `extern "C" __global__ void` kernels declared in a source, in file order.
pub fn kernel_names(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("__global__") {
        rest = &rest[i + "__global__".len()..];
        let Some(decl) = rest.trim_start().strip_prefix("void") else {
            continue;
        };
        let name: String = decl
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}
