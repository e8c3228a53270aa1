//! Durable file writes: every file the program keeps is written to a temp name in its folder,
//! fsynced, renamed into place and the folder fsynced, so a crash leaves the old file or the new
//! one, never half of one.
//!
//! Fault injection for tests: `LIT_FAULT=checkpoint-write:N` aborts the process (as `kill -9`
//! would stop it: no destructors, no cleanup) at the N-th fault point of the run, and
//! `LIT_FAULT=checkpoint-fail:N` makes that point fail with an I/O error, as a full disk would.
//! The fault points are: half-way through writing a file's bytes, and just before each rename
//! or link that publishes a file. Counting starts at 1 for each process.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq)]
enum FaultKind {
    Abort,
    Fail,
}

fn fault_plan() -> Option<(FaultKind, u64)> {
    static PLAN: OnceLock<Option<(FaultKind, u64)>> = OnceLock::new();
    *PLAN.get_or_init(|| {
        let spec = std::env::var("LIT_FAULT").ok()?;
        let (kind, n) = spec.split_once(':')?;
        let kind = match kind {
            "checkpoint-write" => FaultKind::Abort,
            "checkpoint-fail" => FaultKind::Fail,
            _ => return None,
        };
        Some((kind, n.trim().parse().ok()?))
    })
}

static FAULT_POINTS: AtomicU64 = AtomicU64::new(0);

/// One fault point: aborts or fails here when `LIT_FAULT` names this point's number.
fn fault_point(what: &str, path: &Path) -> std::io::Result<()> {
    let Some((kind, at)) = fault_plan() else {
        return Ok(());
    };
    let n = FAULT_POINTS.fetch_add(1, Ordering::SeqCst) + 1;
    if n != at {
        return Ok(());
    }
    eprintln!("LIT_FAULT: fault point {n} ({what} {})", path.display());
    match kind {
        FaultKind::Abort => std::process::abort(),
        FaultKind::Fail => Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("injected fault at point {n}"),
        )),
    }
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Make the folder's entries (a rename, a new file) durable; not every platform lets a folder be
/// opened for sync, and that is not an error.
pub fn sync_folder(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The mark of every temp file this module creates: `.<name>.tmp-<pid>`, so that the ones of
/// dead runs can be found and removed ([`remove_stray_temp_files`]).
const TEMP_MARK: &str = ".tmp-";

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    folder_of(path).join(format!(".{name}{TEMP_MARK}{}", std::process::id()))
}

/// Create `path` (which must not be read by anyone until it is complete) with `bytes`, fsynced.
pub fn write_new_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let result = (|| {
        let mut f = std::fs::File::create(path)?;
        let half = bytes.len() / 2;
        f.write_all(&bytes[..half])?;
        f.flush()?;
        fault_point("writing", path)?;
        f.write_all(&bytes[half..])?;
        f.sync_all()
    })();
    result.map_err(|e| Error::io(path, e))
}

/// Write `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = folder_of(path);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = temp_path(path);
    let result = write_new_file(&tmp, bytes).and_then(|()| rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Rename `from` to `to` (replacing it) and make it durable.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fault_point("renaming to", to)
        .and_then(|()| std::fs::rename(from, to))
        .map_err(|e| Error::io(to, e))?;
    sync_folder(&folder_of(to));
    Ok(())
}

/// Make `to` name the same bytes as the complete file `from`, atomically: a hard link under a
/// temp name renamed into place (a copy where the file system has no hard links).
pub fn publish_copy(from: &Path, to: &Path) -> Result<()> {
    let tmp = temp_path(to);
    let _ = std::fs::remove_file(&tmp);
    let linked = std::fs::hard_link(from, &tmp).or_else(|_| {
        std::fs::copy(from, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()
    });
    let result = linked
        .map_err(|e| Error::io(to, e))
        .and_then(|()| rename(&tmp, to));
    // Also after a success: renaming a link onto another link of the same file does nothing
    // (POSIX), which leaves the temp name behind when `to` already was this file.
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Whether process `pid` is alive, where the system says (`/proc`); `None` elsewhere.
fn process_alive(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    proc.join("self")
        .exists()
        .then(|| proc.join(pid.to_string()).exists())
}

/// Which temp files [`remove_stray_temp_files`] may remove.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stray {
    /// Those of every other process: only for a folder whose run lock this process holds.
    AllOthers,
    /// Those of processes known to be dead (a folder other runs may share, like a logdir).
    DeadOnly,
}

/// Remove the temp files of [`write_atomic`] left in `dir` by processes that died mid-write.
/// Returns the files removed.
pub fn remove_stray_temp_files(dir: &Path, which: Stray) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(TEMP_MARK))
            .and_then(|(_, pid)| pid.parse::<u32>().ok());
        let Some(pid) = owner else { continue };
        let stray = pid != std::process::id()
            && match which {
                Stray::AllOthers => true,
                Stray::DeadOnly => process_alive(pid) == Some(false),
            };
        if stray && std::fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lit-durable-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let d = tmp_dir("atomic");
        let p = d.join("a.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two!").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two!");
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn published_copy_has_the_same_bytes_and_survives_the_source() {
        let d = tmp_dir("publish");
        let (a, b) = (d.join("a"), d.join("b"));
        write_atomic(&a, b"weights").unwrap();
        write_atomic(&b, b"old").unwrap();
        publish_copy(&a, &b).unwrap();
        std::fs::remove_file(&a).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"weights");
    }

    #[test]
    fn publishing_the_same_file_again_leaves_no_temp_file() {
        let d = tmp_dir("republish");
        let (a, b) = (d.join("a"), d.join("b"));
        write_atomic(&a, b"weights").unwrap();
        publish_copy(&a, &b).unwrap();
        publish_copy(&a, &b).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn only_temp_files_of_other_processes_are_stray() {
        let d = tmp_dir("stray");
        for name in [".m.safetensors.tmp-1", ".x.tmp-", "keep.tmp-12", ".keep"] {
            std::fs::write(d.join(name), b"").unwrap();
        }
        std::fs::write(temp_path(&d.join("mine")), b"").unwrap();
        // pid 1 is alive: only a folder this process holds the lock of loses its file.
        assert!(remove_stray_temp_files(&d, Stray::DeadOnly).is_empty());
        let removed = remove_stray_temp_files(&d, Stray::AllOthers);
        assert_eq!(removed, vec![d.join(".m.safetensors.tmp-1")]);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 4);
        // A process id no process has (above Linux's pid_max) is dead.
        std::fs::write(d.join(".m.tmp-4999999"), b"").unwrap();
        assert_eq!(
            remove_stray_temp_files(&d, Stray::DeadOnly),
            vec![d.join(".m.tmp-4999999")]
        );
    }
}
