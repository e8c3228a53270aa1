//! Teacher-output caching: when a teacher's inputs are deterministic (no augmentation), its
//! logits for training example `i` are the same in every epoch, stage, student and seed, so they
//! are computed once and looked up by example index afterwards.
//!
//! A cache belongs to one [`CacheKey`]: the teacher checkpoint's content (SHA-256 of the file)
//! and architecture, the training set's identity (name, split, size, shape and a SHA-256 of its
//! examples and labels), its normalisation, the input shape the batches are given, the
//! precision and the device. Rows are filled from the live teacher passes of the first epoch
//! (every batch the trainer runs); once every row is filled the cache is written, atomically,
//! to `<dir>/<hash of the key>.logits` and later runs with the same key load it instead.
//!
//! File layout (little endian): [`MAGIC`], the key's length (u64) and text, rows (u64), classes
//! (u64), `rows * classes` f32 logits, then the SHA-256 of everything before it. A file that is
//! truncated, corrupt, of another key or of other sizes is ignored with a warning and the
//! logits are recomputed; every size read from it is checked against the expected one before
//! anything is allocated.
//!
//! The cached rows equal the live teacher pass bit for bit as long as the teacher's eval-mode
//! output for one example does not depend on the other examples of its batch — true of the
//! models here in eval mode (BatchNorm uses its running statistics), except LMA activations,
//! whose running statistics change on every call: a teacher with such state is never cached.

use crate::data::Dataset;
use crate::device::Device;
use crate::durable;
use crate::error::{Error, Result};
use crate::limits;
use crate::nn::{EntryKind, ParamStore};
use crate::precision::Precision;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The first bytes of a cache file (format version 1).
pub const MAGIC: &[u8; 8] = b"LITTC\x00\x00\x01";

/// Bytes of the trailing SHA-256.
const DIGEST_BYTES: usize = 32;

/// What a cache's logits depend on, as one canonical text (stored in the file's header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    text: String,
}

/// The inputs of a [`CacheKey`].
pub struct KeyParts<'a> {
    /// The teacher's architecture name.
    pub teacher_architecture: &'a str,
    /// The teacher's weights file (its content is hashed).
    pub teacher_file: &'a Path,
    /// The training split the batches come from.
    pub data: &'a Dataset,
    /// The shape each example is given in a batch (the student's input shape).
    pub input_shape: &'a [usize],
    /// The conv / GEMM precision of the teacher passes.
    pub precision: Precision,
    /// The device the teacher runs on.
    pub device: &'a Device,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's content, read as a stream.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 of a data set's examples and labels.
pub fn dataset_sha256(data: &Dataset) -> String {
    let mut hasher = Sha256::new();
    hasher.update(data.data.as_slice());
    for label in data.labels.iter() {
        hasher.update(label.to_le_bytes());
    }
    hex(&hasher.finalize())
}

impl CacheKey {
    /// The key of `parts` (hashes the teacher file and the data set).
    pub fn new(parts: &KeyParts) -> Result<CacheKey> {
        let d = parts.data;
        let text = format!(
            "lit-engine teacher logits v1\nteacher {} sha256 {}\ndata {} {:?} n={} shape={:?} \
             classes={} sha256 {}\nnormalisation mean={:?} std={:?} augment=none\ninput {:?}\n\
             precision {:?}\ndevice {}\n",
            parts.teacher_architecture,
            file_sha256(parts.teacher_file)?,
            d.name,
            d.split,
            d.len(),
            d.shape,
            d.num_classes,
            dataset_sha256(d),
            d.mean,
            d.std,
            parts.input_shape,
            parts.precision,
            parts.device.name(),
        );
        Ok(CacheKey { text })
    }

    /// The canonical text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The cache's file name: a prefix of the key's SHA-256.
    pub fn file_name(&self) -> String {
        format!(
            "{}.logits",
            &hex(&Sha256::digest(self.text.as_bytes()))[..24]
        )
    }
}

/// Why a teacher's outputs cannot be cached, if they cannot: a teacher with state that changes
/// on every call (LMA's running statistics).
pub fn uncachable_reason(store: &ParamStore) -> Option<String> {
    store
        .iter()
        .find(|(_, p)| p.kind == EntryKind::State)
        .map(|(name, _)| {
            format!("its output depends on state updated by every call (`{name}`, LMA)")
        })
}

/// The logits of a teacher for every training example, filled as the live passes meet them.
pub struct TeacherCache {
    key: CacheKey,
    /// Where the complete cache is written (or was loaded from).
    path: PathBuf,
    classes: usize,
    /// `rows * classes` logits, row `i` being training example `i`'s.
    logits: Vec<f32>,
    filled: Vec<bool>,
    missing: usize,
}

impl TeacherCache {
    /// The cache of `key` for `rows` examples of `classes` logits in folder `dir`: loaded from its
    /// file when a valid one is there, else empty (a bad file is reported on stderr and ignored).
    /// An error when `rows * classes` logits exceed [`limits::MAX_TEACHER_CACHE_BYTES`].
    pub fn open(key: CacheKey, dir: &Path, rows: usize, classes: usize) -> Result<TeacherCache> {
        let values = rows
            .checked_mul(classes)
            .filter(|&n| n.checked_mul(4).is_some_and(|b| b <= limits::MAX_TEACHER_CACHE_BYTES))
            .ok_or_else(|| {
                Error::Config(format!(
                    "teacher cache: {rows} examples x {classes} logits exceed the limit of {} bytes",
                    limits::MAX_TEACHER_CACHE_BYTES
                ))
            })?;
        let path = dir.join(key.file_name());
        let mut cache = TeacherCache {
            key,
            path,
            classes,
            logits: vec![0.0; values],
            filled: vec![false; rows],
            missing: rows,
        };
        if cache.path.exists() {
            match cache.read_file() {
                Ok(logits) => {
                    cache.logits = logits;
                    cache.filled.fill(true);
                    cache.missing = 0;
                }
                Err(e) => eprintln!(
                    "warning: ignoring the teacher cache {} ({e}); recomputing the teacher's \
                     logits",
                    cache.path.display()
                ),
            }
        }
        Ok(cache)
    }

    /// Logits per example.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Where the cache is (or will be) stored.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True once every example's logits are known.
    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }

    /// The logits of `indices` (row after row), when every one is cached.
    pub fn lookup(&self, indices: &[usize]) -> Option<Vec<f32>> {
        let c = self.classes;
        let mut out = Vec::with_capacity(indices.len() * c);
        for &i in indices {
            if !*self.filled.get(i)? {
                return None;
            }
            out.extend_from_slice(&self.logits[i * c..(i + 1) * c]);
        }
        Some(out)
    }

    /// Record a live pass: `logits` holds `indices.len()` rows. When this completes the cache,
    /// it is written to its file (a failed write is a warning: the run goes on uncached on disk).
    pub fn fill(&mut self, indices: &[usize], logits: &[f32]) -> Result<()> {
        let c = self.classes;
        if logits.len() != indices.len() * c {
            return Err(Error::Shape(format!(
                "teacher cache: {} logits for {} examples of {c} classes",
                logits.len(),
                indices.len()
            )));
        }
        for (&i, row) in indices.iter().zip(logits.chunks_exact(c)) {
            let Some(filled) = self.filled.get_mut(i) else {
                return Err(Error::op_arg(
                    "teacher cache",
                    format!(
                        "example index {i} outside the {} cached examples",
                        self.filled.len()
                    ),
                ));
            };
            if !*filled {
                *filled = true;
                self.missing -= 1;
                self.logits[i * c..(i + 1) * c].copy_from_slice(row);
                if self.missing == 0 {
                    self.write_file();
                }
            }
        }
        Ok(())
    }

    /// The file's bytes for the current (complete) logits.
    fn encode(&self) -> Vec<u8> {
        let key = self.key.text.as_bytes();
        let mut out = Vec::with_capacity(self.expected_len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(key.len() as u64).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(self.filled.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.classes as u64).to_le_bytes());
        for v in &self.logits {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// The exact length of this cache's file.
    fn expected_len(&self) -> usize {
        MAGIC.len() + 8 + self.key.text.len() + 16 + self.logits.len() * 4 + DIGEST_BYTES
    }

    fn write_file(&self) {
        match durable::write_atomic(&self.path, &self.encode()) {
            Ok(()) => println!("teacher cache: wrote {}", self.path.display()),
            Err(e) => eprintln!("warning: could not write the teacher cache ({e}); going on"),
        }
    }

    /// The logits of the file at `path`, checked against this cache's key and sizes; a string
    /// saying what is wrong otherwise.
    fn read_file(&self) -> std::result::Result<Vec<f32>, String> {
        let want = self.expected_len();
        let bytes = limits::read_file_at_most(&self.path, want as u64, "the teacher cache")
            .map_err(|e| e.to_string())?;
        if bytes.len() != want {
            return Err(format!("{} bytes where {want} were expected", bytes.len()));
        }
        let (body, digest) = bytes.split_at(want - DIGEST_BYTES);
        if Sha256::digest(body).as_slice() != digest {
            return Err("its checksum does not match (corrupt)".into());
        }
        let key = self.key.text.as_bytes();
        let mut at = 0;
        let mut take = |n: usize| {
            at += n;
            &body[at - n..at]
        };
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0xff; 8]));
        if take(MAGIC.len()) != MAGIC {
            return Err("not a lit-engine teacher cache".into());
        }
        if u64_at(take(8)) != key.len() as u64 || take(key.len()) != key {
            return Err("it was written for another teacher, data set or setting".into());
        }
        let (rows, classes) = (u64_at(take(8)), u64_at(take(8)));
        if (rows, classes) != (self.filled.len() as u64, self.classes as u64) {
            return Err(format!("it holds {rows} x {classes} logits"));
        }
        Ok(body[at..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lit-tcache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn key(text: &str) -> CacheKey {
        CacheKey { text: text.into() }
    }

    fn filled(dir: &Path, k: &str) -> TeacherCache {
        let mut c = TeacherCache::open(key(k), dir, 3, 2).unwrap();
        c.fill(&[2, 0], &[5.0, 6.0, 1.0, 2.0]).unwrap();
        assert!(!c.is_complete() && !c.path().exists());
        assert_eq!(c.lookup(&[0, 2]), Some(vec![1.0, 2.0, 5.0, 6.0]));
        assert_eq!(c.lookup(&[0, 1]), None);
        c.fill(&[1], &[3.0, 4.0]).unwrap();
        assert!(c.is_complete() && c.path().exists());
        c
    }

    #[test]
    fn a_complete_cache_is_written_once_and_read_back() {
        let dir = temp_dir("teacher-cache-roundtrip");
        let mut c = filled(&dir, "k1");
        let again = TeacherCache::open(key("k1"), &dir, 3, 2).unwrap();
        assert!(again.is_complete());
        assert_eq!(
            again.lookup(&[1, 2, 0]),
            Some(vec![3.0, 4.0, 5.0, 6.0, 1.0, 2.0])
        );
        assert_eq!(again.path(), c.path());
        // Another key is another file; other sizes under the same key are refused.
        assert!(!TeacherCache::open(key("k2"), &dir, 3, 2)
            .unwrap()
            .is_complete());
        assert!(!TeacherCache::open(key("k1"), &dir, 4, 2)
            .unwrap()
            .is_complete());
        assert!(c.fill(&[3], &[0.0, 0.0]).is_err(), "index past the rows");
        assert!(c.lookup(&[7]).is_none());
    }

    #[test]
    fn a_corrupt_truncated_or_foreign_file_is_ignored() {
        let dir = temp_dir("teacher-cache-corrupt");
        let path = filled(&dir, "k1").path().to_path_buf();
        let good = std::fs::read(&path).unwrap();
        let reopen = || TeacherCache::open(key("k1"), &dir, 3, 2).unwrap();
        let mut flipped = good.clone();
        flipped[good.len() - DIGEST_BYTES - 3] ^= 0x40;
        // A well-formed file of another key under this key's name.
        let other = temp_dir("teacher-cache-foreign");
        let foreign = std::fs::read(filled(&other, "k2").path()).unwrap();
        let mut long = good.clone();
        long.push(0);
        let bad: [&[u8]; 5] = [&good[..good.len() / 2], &flipped, &foreign, &long, b""];
        for bytes in bad {
            std::fs::write(&path, bytes).unwrap();
            assert!(!reopen().is_complete(), "accepted {} bytes", bytes.len());
        }
        std::fs::write(&path, &good).unwrap();
        assert!(reopen().is_complete());
    }

    #[test]
    fn a_cache_larger_than_the_limit_is_refused_before_allocation() {
        let dir = temp_dir("teacher-cache-limit");
        assert!(TeacherCache::open(key("k"), &dir, usize::MAX / 2, 10).is_err());
        let rows = limits::MAX_TEACHER_CACHE_BYTES / 40 + 1;
        assert!(TeacherCache::open(key("k"), &dir, rows, 10).is_err());
    }
}
