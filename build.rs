//! Build script:
//! 1. embeds every `kernels/*.cu` (and `kernels/*.cuh`) into the binary (`$OUT_DIR/kernel_sources.rs`),
//!    so the cuda device can NVRTC-compile them at run time with nothing beside the executable;
//! 2. compiles the same sources with the host C++ compiler against `kernels/emu/` into the `emu` device.

use std::path::{Path, PathBuf};

fn kernel_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("kernels/ folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// `extern "C" __global__ void name(` occurrences, in file order.
pub fn kernel_names(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("__global__") {
        rest = &rest[i + "__global__".len()..];
        let decl = rest.trim_start();
        let Some(decl) = decl.strip_prefix("void") else {
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

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let kdir = root.join("kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=kernels");

    let cu = kernel_files(&kdir, "cu");
    let cuh = kernel_files(&kdir, "cuh");

    // 1. embedded sources
    let mut s = String::from("/// (file name, source) of every kernels/*.cu\npub const KERNEL_SOURCES: &[(&str, &str)] = &[\n");
    for p in &cu {
        s += &format!(
            "    ({:?}, include_str!({:?})),\n",
            p.file_name().unwrap().to_str().unwrap(),
            p.display().to_string()
        );
    }
    s += "];\n/// (file name, source) of every kernels/*.cuh header\npub const KERNEL_HEADERS: &[(&str, &str)] = &[\n";
    for p in &cuh {
        s += &format!(
            "    ({:?}, include_str!({:?})),\n",
            p.file_name().unwrap().to_str().unwrap(),
            p.display().to_string()
        );
    }
    s += "];\n";
    std::fs::write(out.join("kernel_sources.rs"), s).unwrap();

    // 2. emulator
    build_emu(&root, &kdir, &cu, &out);
}

fn build_emu(_root: &Path, _kdir: &Path, _cu: &[PathBuf], _out: &Path) {
    // Filled in by the emulator: compiles kernels/*.cu + kernels/emu/runtime.cpp into liblit_emu.a.
}
