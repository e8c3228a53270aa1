//! On-disk cache of NVRTC output, so a kernel file is compiled once per (source, options,
//! architecture, NVRTC version) and not on every run.
//!
//! Folder: `LIT_CACHE_DIR`, else `$XDG_CACHE_HOME/lit-engine/kernels`, else
//! `$HOME/.cache/lit-engine/kernels`. One file per entry, `<stem>.<arch>.<key>.<cubin|ptx>`, holding
//! a magic tag, the SHA-256 of the payload and the payload. Entries are written to a temporary
//! file and renamed into place, so readers never see half an entry; an entry that fails its
//! checksum (or that the driver refuses) is deleted and recompiled, never fatal.

use super::nvrtc::{self, Target};
use crate::error::Result;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const MAGIC: &[u8; 8] = b"LITKC1\0\0";
const HEADER_LEN: usize = MAGIC.len() + 32;

/// An on-disk cache of compiled kernel images, keyed by everything that changes NVRTC's output.
#[derive(Clone, Debug)]
pub struct KernelCache {
    dir: PathBuf,
}

/// Where an image came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read from the on-disk cache.
    Cache,
    /// Compiled by NVRTC in this process.
    Compiled,
}

impl KernelCache {
    /// A cache in `dir` (created on first write).
    pub fn at(dir: impl Into<PathBuf>) -> KernelCache {
        KernelCache { dir: dir.into() }
    }

    /// The cache in the folder the environment names (see the module docs); `None` when no
    /// folder can be named (no `LIT_CACHE_DIR`, `XDG_CACHE_HOME` or `HOME`).
    pub fn from_env() -> Option<KernelCache> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let dir = var("LIT_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("lit-engine/kernels")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/lit-engine/kernels")))?;
        Some(KernelCache::at(dir))
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry for this exact compile: the key covers everything that changes NVRTC's output.
    pub fn entry_path(
        &self,
        file: &str,
        source: &str,
        options: &[String],
        target: Target,
        nvrtc_version: (i32, i32),
    ) -> PathBuf {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(b"lit-engine kernel cache v1");
        field(file.as_bytes());
        field(source.as_bytes());
        for o in options {
            field(o.as_bytes());
        }
        field(target.label().as_bytes());
        field(format!("nvrtc {}.{}", nvrtc_version.0, nvrtc_version.1).as_bytes());
        let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let stem = file.strip_suffix(".cu").unwrap_or(file);
        let ext = match target {
            Target::Cubin(_) => "cubin",
            Target::Ptx(_) => "ptx",
        };
        self.dir
            .join(format!("{stem}.{}.{key}.{ext}", target.label()))
    }

    /// The payload of a valid entry; `None` on a miss. A corrupt entry is deleted.
    pub fn read(path: &Path) -> Option<Vec<u8>> {
        let bytes = std::fs::read(path).ok()?;
        let valid = bytes.len() > HEADER_LEN
            && &bytes[..MAGIC.len()] == MAGIC
            && Sha256::digest(&bytes[HEADER_LEN..]).as_slice() == &bytes[MAGIC.len()..HEADER_LEN];
        if valid {
            Some(bytes[HEADER_LEN..].to_vec())
        } else {
            let _ = std::fs::remove_file(path);
            None
        }
    }

    /// Write an entry atomically (temporary file in the same folder, then rename).
    pub fn write(path: &Path, payload: &[u8]) -> std::io::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&Sha256::digest(payload));
        bytes.extend_from_slice(payload);
        let written = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// The compiled image of kernel file `file` for `target`: a valid cache entry as is, else a
    /// fresh NVRTC compile, stored for next time.
    pub fn get_or_compile(
        &self,
        file: &str,
        source: &str,
        target: Target,
    ) -> Result<(Vec<u8>, Origin)> {
        let path = self.path_for(file, source, target)?;
        if let Some(image) = Self::read(&path) {
            return Ok((image, Origin::Cache));
        }
        Ok((
            self.compile_and_store(&path, file, source, target)?,
            Origin::Compiled,
        ))
    }

    /// Compile again and overwrite the entry: for an entry that passed its checksum but that the
    /// driver refused (e.g. written by a different driver setup).
    pub fn recompile(&self, file: &str, source: &str, target: Target) -> Result<Vec<u8>> {
        let path = self.path_for(file, source, target)?;
        let _ = std::fs::remove_file(&path);
        self.compile_and_store(&path, file, source, target)
    }

    fn path_for(&self, file: &str, source: &str, target: Target) -> Result<PathBuf> {
        let nv = nvrtc::nvrtc()?;
        let options = nvrtc::compile_options(nv, target, &[]);
        Ok(self.entry_path(file, source, &options, target, nv.version))
    }

    fn compile_and_store(
        &self,
        path: &Path,
        file: &str,
        source: &str,
        target: Target,
    ) -> Result<Vec<u8>> {
        let compiled = nvrtc::compile(file, source, target, &[])?;
        if let Err(e) = Self::write(path, &compiled.image) {
            // A read-only or full disk only costs compile time: say so once, carry on.
            static TOLD: AtomicBool = AtomicBool::new(false);
            if !TOLD.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "lit-engine: cannot write the kernel cache in {} ({e}); kernels will be \
                     recompiled on every run (set LIT_CACHE_DIR to a writable folder)",
                    self.dir.display()
                );
            }
        }
        Ok(compiled.image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lit-kcache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn entries_round_trip_and_corrupt_ones_are_misses_and_deleted() {
        let dir = temp_dir("roundtrip");
        let cache = KernelCache::at(&dir);
        let opts = vec!["--std=c++17".to_string()];
        let path = cache.entry_path("gemm.cu", "src", &opts, Target::Cubin(90), (13, 0));
        assert!(path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("gemm.sm_90."));
        assert_eq!(KernelCache::read(&path), None, "miss before any write");

        KernelCache::write(&path, b"\x7fELF payload").unwrap();
        assert_eq!(
            KernelCache::read(&path).as_deref(),
            Some(&b"\x7fELF payload"[..])
        );
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

        // Flip one payload byte: the checksum catches it, the entry is removed.
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(KernelCache::read(&path), None);
        assert!(!path.exists(), "a corrupt entry is deleted");

        // Truncated to less than the header.
        KernelCache::write(&path, b"x").unwrap();
        std::fs::write(&path, &std::fs::read(&path).unwrap()[..10]).unwrap();
        assert_eq!(KernelCache::read(&path), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_key_changes_with_every_input() {
        let cache = KernelCache::at("/nonexistent");
        let o = |s: &str| vec![s.to_string()];
        let base = cache.entry_path("a.cu", "src", &o("-x"), Target::Cubin(90), (13, 0));
        let variants = [
            cache.entry_path("b.cu", "src", &o("-x"), Target::Cubin(90), (13, 0)),
            cache.entry_path("a.cu", "src2", &o("-x"), Target::Cubin(90), (13, 0)),
            cache.entry_path("a.cu", "src", &o("-y"), Target::Cubin(90), (13, 0)),
            cache.entry_path("a.cu", "src", &o("-x"), Target::Cubin(80), (13, 0)),
            cache.entry_path("a.cu", "src", &o("-x"), Target::Ptx(90), (13, 0)),
            cache.entry_path("a.cu", "src", &o("-x"), Target::Cubin(90), (13, 1)),
            // Field boundaries matter: ("ab", "c") is not ("a", "bc").
            cache.entry_path(
                "a.cu",
                "src",
                &["-x".into(), "".into()],
                Target::Cubin(90),
                (13, 0),
            ),
        ];
        for v in &variants {
            assert_ne!(&base, v);
        }
        assert_eq!(
            base,
            cache.entry_path("a.cu", "src", &o("-x"), Target::Cubin(90), (13, 0))
        );
    }
}
