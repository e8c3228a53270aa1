//! NVRTC: finding the library, compiling one kernel file for one GPU architecture, and reading
//! ptxas's register/spill/shared-memory report. The cuda device and the CI compile check
//! (`tests/nvrtc.rs`) both go through [`compile`], so CI checks exactly what the GPU runs.
//!
//! Where NVRTC comes from, first match wins:
//! 1. `LIT_NVRTC_LIB`: a `libnvrtc.so*` file, or a folder holding one;
//! 2. the dynamic loader's search (`LD_LIBRARY_PATH`, `ldconfig`), by the names cudarc tries;
//! 3. `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`, `/usr/local/cuda-X.Y/lib64`
//!    (newest first), then the pip wheel folder `.cuda/nvidia/cu13/lib` (CI) under the current
//!    directory and under the source checkout.
//!
//! For 1 and 3 the library is loaded here by its path; cudarc then asks the loader for
//! `libnvrtc.so.13` by name, and glibc answers with the library already loaded under that soname.
//! libnvrtc opens `libnvrtc-builtins.so.X.Y` by name at compile time, so that one is loaded first
//! from the same folder for the same reason.

use super::cuda::catch_library_panic;
use crate::error::{Error, Result};
use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys};
use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Options every kernel is compiled with (all of them are part of the disk-cache key).
/// Line info costs nothing at run time and lets profilers and compute-sanitizer point at source lines.
pub const BASE_OPTIONS: &[&str] = &["--std=c++17", "--generate-line-info"];

/// What to ask NVRTC for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Machine code for exactly this `sm_XX` (e.g. 90): loads without a driver JIT step, and
    /// ptxas reports registers and spills.
    Cubin(u32),
    /// PTX for `compute_XX`, JIT-compiled by the driver: for a GPU newer than this NVRTC knows.
    Ptx(u32),
}

impl Target {
    /// `sm_90` / `compute_90`.
    pub fn label(&self) -> String {
        match self {
            Target::Cubin(a) => format!("sm_{a}"),
            Target::Ptx(a) => format!("compute_{a}"),
        }
    }

    /// The NVRTC option selecting this target (`--gpu-architecture=sm_90`).
    pub fn option(&self) -> String {
        format!("--gpu-architecture={}", self.label())
    }

    /// Cubin for the device's own architecture when NVRTC supports it, else PTX for the newest
    /// architecture NVRTC knows that the device can run (PTX is forward compatible).
    pub fn for_device(
        compute_capability: (i32, i32),
        supported: &[u32],
    ) -> std::result::Result<Target, String> {
        let (major, minor) = compute_capability;
        let arch = (major.max(0) * 10 + minor.max(0)) as u32;
        if supported.contains(&arch) {
            return Ok(Target::Cubin(arch));
        }
        match supported.iter().copied().filter(|&a| a <= arch).max() {
            Some(a) => Ok(Target::Ptx(a)),
            None => Err(format!(
                "GPU compute capability {major}.{minor} is older than every architecture this \
                 NVRTC supports ({})",
                supported
                    .iter()
                    .map(|a| format!("sm_{a}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// The NVRTC loaded in this process.
#[derive(Clone, Debug)]
pub struct Nvrtc {
    /// (major, minor), e.g. (13, 0).
    pub version: (i32, i32),
    /// The file it was loaded from, or the folder the dynamic loader most likely used.
    pub origin: String,
    /// Real architectures it can emit a cubin for (75, 80, 86, 89, 90, ...).
    pub archs: Vec<u32>,
    /// CUDA headers beside the library (`lib/../include`): an include path for kernels that
    /// include `cuda_fp16.h` and friends.
    pub include_dir: Option<PathBuf>,
}

/// NVRTC, found and loaded on first use. `Error::Device` with a one-line reason when absent.
pub fn nvrtc() -> Result<&'static Nvrtc> {
    static NVRTC: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
    NVRTC
        .get_or_init(locate_and_load)
        .as_ref()
        .map_err(|e| Error::Device(e.clone()))
}

const NOT_FOUND: &str = "libnvrtc not found: install the CUDA toolkit (or the pinned NVRTC wheel \
     into .cuda, see .ci/run), or set LIT_NVRTC_LIB=/path/to/libnvrtc.so.13 or LD_LIBRARY_PATH";

fn locate_and_load() -> std::result::Result<Nvrtc, String> {
    let library: Option<PathBuf> = match std::env::var_os("LIT_NVRTC_LIB").filter(|s| !s.is_empty())
    {
        Some(spec) => {
            let spec = PathBuf::from(spec);
            let lib = if spec.is_dir() {
                nvrtc_in_dir(&spec).ok_or_else(|| {
                    format!(
                        "LIT_NVRTC_LIB={}: no libnvrtc.so* in that folder",
                        spec.display()
                    )
                })?
            } else {
                spec.clone()
            };
            preload(&lib).map_err(|e| format!("LIT_NVRTC_LIB={}: {e}", spec.display()))?;
            Some(lib)
        }
        None if unsafe { nvrtc_sys::is_culib_present() } => None,
        None => {
            let mut loaded = None;
            let mut failures = Vec::new();
            for lib in search_dirs().iter().filter_map(|d| nvrtc_in_dir(d)) {
                match preload(&lib) {
                    Ok(()) => {
                        loaded = Some(lib);
                        break;
                    }
                    Err(e) => failures.push(e),
                }
            }
            match loaded {
                Some(lib) => Some(lib),
                None if failures.is_empty() => return Err(NOT_FOUND.into()),
                None => return Err(format!("{NOT_FOUND} ({})", failures.join("; "))),
            }
        }
    };
    if !unsafe { nvrtc_sys::is_culib_present() } {
        return Err(format!(
            "{} was loaded, but not under a soname cudarc looks for (libnvrtc.so.13, .12, ...)",
            library
                .as_deref()
                .map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        ));
    }
    let (version, archs) = catch_library_panic(|| unsafe { version_and_archs() })
        .map_err(|p| format!("libnvrtc is unusable: {p}"))?
        .map_err(|e| format!("libnvrtc is unusable: {e:?}"))?;
    let dir = match &library {
        Some(lib) => lib.parent().map(Path::to_path_buf),
        None => loader_path_dirs()
            .into_iter()
            .find(|d| nvrtc_in_dir(d).is_some()),
    };
    let include_dir = dir
        .as_ref()
        .map(|d| d.join("../include"))
        .filter(|inc| inc.join("cuda_fp16.h").is_file());
    let origin = match (&library, &dir) {
        (Some(lib), _) => lib.display().to_string(),
        (None, Some(d)) => format!("{} (via the dynamic loader)", d.display()),
        (None, None) => "the dynamic loader's default search path".into(),
    };
    Ok(Nvrtc {
        version,
        origin,
        archs,
        include_dir,
    })
}

unsafe fn version_and_archs(
) -> std::result::Result<((i32, i32), Vec<u32>), nvrtc_result::NvrtcError> {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    nvrtc_sys::nvrtcVersion(&mut major, &mut minor).result()?;
    let mut n: c_int = 0;
    nvrtc_sys::nvrtcGetNumSupportedArchs(&mut n).result()?;
    let mut archs = vec![0 as c_int; n.max(0) as usize];
    if !archs.is_empty() {
        nvrtc_sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()).result()?;
    }
    Ok((
        (major, minor),
        archs.into_iter().map(|a| a as u32).collect(),
    ))
}

/// Load a library by path and keep it loaded for the life of the process (cudarc looks it up by
/// soname later; unloading it would pull it from under cudarc).
fn load_forever(path: &Path) -> std::result::Result<(), String> {
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        // libloading's message is just "dlopen failed"; the reason is in its source.
        match std::error::Error::source(&e) {
            Some(reason) => reason.to_string(),
            None => e.to_string(),
        }
    })?;
    std::mem::forget(lib);
    Ok(())
}

fn preload(nvrtc_lib: &Path) -> std::result::Result<(), String> {
    if let Some(builtins) = nvrtc_lib.parent().and_then(builtins_in_dir) {
        load_forever(&builtins)?;
    }
    load_forever(nvrtc_lib)
}

/// Shortest matching file name wins: `libnvrtc.so` / `libnvrtc.so.13` rather than the fully
/// versioned copy (they are the same library); the wheels' `*.alt.so*` variants are skipped.
fn library_in_dir(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix) && !n.contains(".alt."))
        .collect();
    names.sort_by_key(|n| (n.len(), n.clone()));
    names.first().map(|n| dir.join(n))
}

/// `libnvrtc.so*` in `dir` (not the builtins, not the `.alt` copies).
pub fn nvrtc_in_dir(dir: &Path) -> Option<PathBuf> {
    library_in_dir(dir, "libnvrtc.so")
}

/// `libnvrtc-builtins.so*` in `dir`.
pub fn builtins_in_dir(dir: &Path) -> Option<PathBuf> {
    library_in_dir(dir, "libnvrtc-builtins.so")
}

fn loader_path_dirs() -> Vec<PathBuf> {
    std::env::var_os("LD_LIBRARY_PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| !d.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Folders searched when the dynamic loader does not find NVRTC by itself (see the module docs).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(root) = std::env::var_os(var).filter(|s| !s.is_empty()) {
            dirs.push(PathBuf::from(&root).join("lib64"));
            dirs.push(PathBuf::from(&root).join("lib"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs.extend(versioned_cuda_dirs(Path::new("/usr/local")));
    let wheel = Path::new(".cuda/nvidia/cu13/lib");
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join(wheel));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(wheel));
    dirs
}

/// `root/cuda-X.Y/lib64`, newest version first.
fn versioned_cuda_dirs(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let version: Vec<u32> = name
                    .strip_prefix("cuda-")?
                    .split('.')
                    .map(|p| p.parse().ok())
                    .collect::<Option<_>>()?;
                Some((version, root.join(name).join("lib64")))
            })
            .collect()
        })
        .unwrap_or_default();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, d)| d).collect()
}

/// A kernel file compiled for one target.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The architecture it was compiled for.
    pub target: Target,
    /// A cubin (ELF) for [`Target::Cubin`], PTX text (no trailing NUL) for [`Target::Ptx`].
    pub image: Vec<u8>,
    /// NVRTC's log: warnings, and with `--ptxas-options=-v` the resource report.
    pub log: String,
}

/// The full option list for a compile: [`BASE_OPTIONS`], the CUDA include folder when there is
/// one, the architecture, then `extra`.
pub fn compile_options(nvrtc: &Nvrtc, target: Target, extra: &[&str]) -> Vec<String> {
    let mut options: Vec<String> = BASE_OPTIONS.iter().map(|s| s.to_string()).collect();
    if let Some(inc) = &nvrtc.include_dir {
        options.push(format!("--include-path={}", inc.display()));
    }
    options.push(target.option());
    options.extend(extra.iter().map(|s| s.to_string()));
    options
}

/// Compile the (include-expanded) source of kernel file `file` for `target`. A compile error is
/// [`Error::KernelCompile`] carrying NVRTC's log.
pub fn compile(file: &str, source: &str, target: Target, extra: &[&str]) -> Result<Compiled> {
    let nvrtc = nvrtc()?;
    let options = compile_options(nvrtc, target, extra);
    let fail = |log: String| Error::KernelCompile {
        file: file.to_string(),
        log,
    };
    let source_c =
        CString::new(source).map_err(|_| fail("the source contains a NUL byte".into()))?;
    let name_c =
        CString::new(file).map_err(|_| fail("the file name contains a NUL byte".into()))?;
    catch_library_panic(|| -> Result<Compiled> {
        let program = Program(
            nvrtc_result::create_program(&source_c, Some(&name_c))
                .map_err(|e| fail(format!("nvrtcCreateProgram: {e:?}")))?,
        );
        let status = unsafe { nvrtc_result::compile_program(program.0, &options) };
        let log = unsafe { program_log(program.0) };
        if let Err(e) = status {
            return Err(fail(format!(
                "{e:?} (options: {})\n{log}",
                options.join(" ")
            )));
        }
        let image = match target {
            Target::Cubin(_) => unsafe { cubin(program.0) },
            Target::Ptx(_) => unsafe { ptx(program.0) },
        }
        .map_err(|e| fail(format!("reading the compiled {}: {e:?}", target.label())))?;
        Ok(Compiled { target, image, log })
    })
    .map_err(|p| fail(format!("NVRTC failed: {p}")))?
}

/// Destroys the NVRTC program on every exit path.
struct Program(nvrtc_sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        let _ = unsafe { nvrtc_result::destroy_program(self.0) };
    }
}

unsafe fn program_log(program: nvrtc_sys::nvrtcProgram) -> String {
    match nvrtc_result::get_program_log(program) {
        Ok(chars) => text_until_nul(&chars),
        Err(e) => format!("(no log: {e:?})"),
    }
}

unsafe fn cubin(
    program: nvrtc_sys::nvrtcProgram,
) -> std::result::Result<Vec<u8>, nvrtc_result::NvrtcError> {
    let mut size = 0usize;
    nvrtc_sys::nvrtcGetCUBINSize(program, &mut size).result()?;
    let mut image = vec![0u8; size];
    nvrtc_sys::nvrtcGetCUBIN(program, image.as_mut_ptr() as *mut c_char).result()?;
    Ok(image)
}

unsafe fn ptx(
    program: nvrtc_sys::nvrtcProgram,
) -> std::result::Result<Vec<u8>, nvrtc_result::NvrtcError> {
    let chars = nvrtc_result::get_ptx(program)?;
    Ok(text_until_nul(&chars).into_bytes())
}

fn text_until_nul(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// One function's resources as ptxas reports them with `--ptxas-options=-v`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionResources {
    /// The function's (mangled) name.
    pub function: String,
    /// Whether it is a `__global__` entry point (else a non-inlined device function).
    pub entry: bool,
    /// `sm_90`.
    pub arch: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes spilled to local memory by stores.
    pub spill_store_bytes: u32,
    /// Bytes reloaded from spilled local memory.
    pub spill_load_bytes: u32,
    /// Per-thread stack frame, in bytes.
    pub stack_frame_bytes: u32,
    /// Static shared memory.
    pub shared_bytes: u32,
}

/// Parse ptxas's `-v` report from an NVRTC log. Lines look like:
/// ```text
/// ptxas info    : Compiling entry function 'relu_forward_f32' for 'sm_90'
/// ptxas info    : Function properties for relu_forward_f32
/// ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 14 registers, used 0 barriers, 1024 bytes smem
/// ```
pub fn ptxas_report(log: &str) -> Vec<FunctionResources> {
    let mut out: Vec<FunctionResources> = Vec::new();
    // Index into `out` of the function the following lines describe.
    let mut current: Option<usize> = None;
    let quoted =
        |s: &str| -> Vec<String> { s.split('\'').skip(1).step_by(2).map(String::from).collect() };
    for line in log.lines() {
        let body = line.trim().strip_prefix("ptxas").map(str::trim_start);
        let body = body
            .and_then(|b| b.strip_prefix("info"))
            .and_then(|b| b.trim_start().strip_prefix(':'))
            .map(str::trim);
        if let Some(body) = body {
            if body.starts_with("Compiling entry function")
                || body.starts_with("Function properties for")
            {
                let entry = body.starts_with("Compiling entry function");
                let (name, arch) = if entry {
                    let q = quoted(body);
                    (
                        q.first().cloned().unwrap_or_default(),
                        q.get(1).cloned().unwrap_or_default(),
                    )
                } else {
                    let name = body.trim_start_matches("Function properties for").trim();
                    (name.trim_matches('\'').to_string(), String::new())
                };
                let i = match out.iter().position(|f| f.function == name) {
                    Some(i) => i,
                    None => {
                        out.push(FunctionResources {
                            function: name,
                            ..Default::default()
                        });
                        out.len() - 1
                    }
                };
                current = Some(i);
                let f = &mut out[i];
                if entry {
                    f.entry = true;
                    f.arch = arch;
                }
            } else if let (Some(rest), Some(i)) = (body.strip_prefix("Used"), current) {
                for part in rest.split(',') {
                    let words: Vec<&str> = part.split_whitespace().collect();
                    match words.as_slice() {
                        [n, "registers", ..] => out[i].registers = n.parse().unwrap_or(0),
                        [n, "bytes", "smem", ..] => out[i].shared_bytes = n.parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
        } else if let Some(i) = current {
            // The line after "Function properties for ...", prefixed `ptxas         .` by NVRTC.
            if line.contains("stack frame") {
                for part in line.split(',') {
                    let words: Vec<&str> = part.split_whitespace().collect();
                    let Some(at) = words.windows(2).position(|w| w[1] == "bytes") else {
                        continue;
                    };
                    let n = words[at].parse().unwrap_or(0);
                    match &words[at + 2..] {
                        ["stack", "frame", ..] => out[i].stack_frame_bytes = n,
                        ["spill", "stores", ..] => out[i].spill_store_bytes = n,
                        ["spill", "loads", ..] => out[i].spill_load_bytes = n,
                        _ => {}
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_is_a_cubin_for_a_supported_arch_and_ptx_for_a_newer_one() {
        let supported = [75, 80, 86, 89, 90, 100, 120];
        assert_eq!(
            Target::for_device((9, 0), &supported),
            Ok(Target::Cubin(90))
        );
        assert_eq!(
            Target::for_device((8, 6), &supported),
            Ok(Target::Cubin(86))
        );
        // 8.7 (Orin) is not in this list: the newest PTX it can run is compute_86.
        assert_eq!(Target::for_device((8, 7), &supported), Ok(Target::Ptx(86)));
        assert_eq!(
            Target::for_device((12, 1), &supported),
            Ok(Target::Ptx(120))
        );
        let err = Target::for_device((7, 0), &supported).unwrap_err();
        assert!(err.contains("7.0") && err.contains("sm_75"), "{err}");
        assert_eq!(Target::Cubin(90).option(), "--gpu-architecture=sm_90");
        assert_eq!(Target::Ptx(80).option(), "--gpu-architecture=compute_80");
    }

    #[test]
    fn ptxas_report_is_parsed_per_function() {
        let log = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'tiled_f32' for 'sm_90'
ptxas info    : Function properties for tiled_f32
ptxas         .     8 bytes stack frame, 12 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 8 bytes cumulative stack size, 8192 bytes smem
ptxas info    : Function properties for helper_fn
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'relu_forward_f32' for 'sm_90'
ptxas info    : Function properties for relu_forward_f32
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers, 368 bytes cmem[0]
";
        let r = ptxas_report(log);
        assert_eq!(r.len(), 3, "{r:?}");
        let tiled = &r[0];
        assert_eq!(
            (tiled.function.as_str(), tiled.entry, tiled.arch.as_str()),
            ("tiled_f32", true, "sm_90")
        );
        assert_eq!(
            (
                tiled.registers,
                tiled.spill_store_bytes,
                tiled.spill_load_bytes
            ),
            (64, 12, 4)
        );
        assert_eq!((tiled.stack_frame_bytes, tiled.shared_bytes), (8, 8192));
        assert!(!r[1].entry);
        assert_eq!(r[1].function, "helper_fn");
        assert_eq!(
            (r[2].function.as_str(), r[2].registers, r[2].shared_bytes),
            ("relu_forward_f32", 10, 0)
        );
    }

    #[test]
    fn libraries_are_found_by_prefix_skipping_alt_copies_and_preferring_short_names() {
        let dir = std::env::temp_dir().join(format!("lit-nvrtc-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "libnvrtc.alt.so.13",
            "libnvrtc.so.13.0.88",
            "libnvrtc.so.13",
            "libnvrtc-builtins.alt.so.13.0",
            "libnvrtc-builtins.so.13.0",
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(nvrtc_in_dir(&dir), Some(dir.join("libnvrtc.so.13")));
        assert_eq!(
            builtins_in_dir(&dir),
            Some(dir.join("libnvrtc-builtins.so.13.0"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(nvrtc_in_dir(&dir), None);
    }

    #[test]
    fn versioned_toolkits_are_searched_newest_first() {
        let root = std::env::temp_dir().join(format!("lit-nvrtc-cuda-{}", std::process::id()));
        for name in ["cuda-9.2", "cuda-13.0", "cuda-12.9", "cuda-x", "other"] {
            std::fs::create_dir_all(root.join(name)).unwrap();
        }
        let dirs = versioned_cuda_dirs(&root);
        std::fs::remove_dir_all(&root).unwrap();
        let names: Vec<_> = dirs
            .iter()
            .map(|d| {
                d.parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["cuda-13.0", "cuda-12.9", "cuda-9.2"]);
    }
}
