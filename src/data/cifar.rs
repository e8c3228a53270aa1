//! The CIFAR binary formats (Krizhevsky 2009), as distributed in `cifar-10-binary.tar.gz` and
//! `cifar-100-binary.tar.gz`:
//!
//! - CIFAR-10, `cifar-10-batches-bin/`: `data_batch_1.bin` … `data_batch_5.bin` (train, read in
//!   that order) and `test_batch.bin`; each a sequence of 3073-byte records: 1 label byte (0..9),
//!   then 3072 pixel bytes: the 1024 red, then green, then blue values of a 32×32 image, row-major.
//! - CIFAR-100, `cifar-100-binary/`: `train.bin`, `test.bin`; 3074-byte records: coarse label
//!   (0..19), fine label (0..99), 3072 pixel bytes. The fine label is the class.

use super::{write_atomic, Dataset, Split};
use crate::error::{Error, Result};
use crate::limits;
use std::path::{Path, PathBuf};

/// Side of a CIFAR image, in pixels.
pub const IMAGE_SIZE: usize = 32;
/// Bytes of one CIFAR image: 3 planes of 32 × 32.
pub const IMAGE_BYTES: usize = 3 * IMAGE_SIZE * IMAGE_SIZE;
/// The five training batch files of the CIFAR-10 binary version, in order.
pub const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch file of the CIFAR-10 binary version.
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";

/// Records of `label_bytes` label bytes + an image; the class is label byte `label_index`.
/// Appends pixels and labels; checks the size and every label against `num_classes`.
fn read_records(
    path: &Path,
    label_bytes: usize,
    label_index: usize,
    num_classes: usize,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<i32>,
) -> Result<()> {
    let file = limits::read_file_at_most(path, limits::MAX_DATA_FILE_BYTES, "CIFAR file");
    let bytes = file.map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Error::data(
            path,
            format!(
                "file not found; a CIFAR binary file of {}-byte records \
                     ({label_bytes} label byte(s) + {IMAGE_BYTES} pixel bytes) was expected here",
                label_bytes + IMAGE_BYTES
            ),
        ),
        e => e,
    })?;
    let record = label_bytes + IMAGE_BYTES;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(Error::data(
            path,
            format!(
                "{} bytes is not a whole number of {record}-byte records \
                 ({label_bytes} label byte(s) + {IMAGE_BYTES} pixel bytes); the file is truncated \
                 or not in the CIFAR binary format",
                bytes.len()
            ),
        ));
    }
    pixels.reserve(bytes.len() / record * IMAGE_BYTES);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[label_index] as usize;
        if label >= num_classes {
            return Err(Error::data(
                path,
                format!(
                    "record {i} has label {label}, not a class index (0..{num_classes}); \
                     is this the right CIFAR variant?"
                ),
            ));
        }
        labels.push(label as i32);
        pixels.extend_from_slice(&rec[label_bytes..]);
    }
    Ok(())
}

/// The files of a CIFAR-10 split, in reading order.
pub fn cifar10_files(split: Split) -> Vec<&'static str> {
    match split {
        Split::Train => CIFAR10_TRAIN_FILES.to_vec(),
        Split::Test => vec![CIFAR10_TEST_FILE],
    }
}

/// One split of CIFAR-10 from `dir` (`cifar-10-batches-bin/`), as `[N, 3, 32, 32]`.
pub fn load_cifar10(dir: &Path, name: &str, split: Split) -> Result<Dataset> {
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for file in cifar10_files(split) {
        read_records(&dir.join(file), 1, 0, 10, &mut pixels, &mut labels)?;
    }
    Dataset::images(name, split, 10, [3, IMAGE_SIZE, IMAGE_SIZE], pixels, labels)
}

/// One split of CIFAR-100 from `dir` (`cifar-100-binary/`), fine labels, as `[N, 3, 32, 32]`.
pub fn load_cifar100(dir: &Path, name: &str, split: Split) -> Result<Dataset> {
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    let path = dir.join(format!("{}.bin", split.name()));
    read_records(&path, 2, 1, 100, &mut pixels, &mut labels)?;
    Dataset::images(
        name,
        split,
        100,
        [3, IMAGE_SIZE, IMAGE_SIZE],
        pixels,
        labels,
    )
}

/// CIFAR-10 records (label byte + CHW pixels) of `pixels` `[N, 3, 32, 32]` with labels 0..9.
pub fn encode_cifar10(pixels: &[u8], labels: &[i32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels.len() * (1 + IMAGE_BYTES));
    for (img, &label) in pixels.chunks_exact(IMAGE_BYTES).zip(labels) {
        out.push(label as u8);
        out.extend_from_slice(img);
    }
    out
}

/// Write `train` and `test` as the CIFAR-10 binary set in `dir` (created): the train examples in
/// order over the five `data_batch_*.bin` (shares that differ by at most one example; 10 000 each
/// for CIFAR-10 itself), the test examples in `test_batch.bin`, and `batches.meta.txt` with one
/// class name per line. Each file is written atomically. Every file must hold a record (the
/// reader refuses empty ones), so at least 5 train and 1 test example are needed.
pub fn write_cifar10(
    dir: &Path,
    train: &Dataset,
    test: &Dataset,
    class_names: &[String],
) -> Result<Vec<PathBuf>> {
    for d in [train, test] {
        if d.shape != [3, IMAGE_SIZE, IMAGE_SIZE] || d.num_classes > 10 {
            return Err(Error::Dataset(format!(
                "the CIFAR-10 format holds 32×32 RGB images of at most 10 classes; the {} split \
                 has images of shape {:?} (C, H, W) and {} classes",
                d.split.name(),
                d.shape,
                d.num_classes
            )));
        }
    }
    let files = CIFAR10_TRAIN_FILES.len();
    if train.len() < files || test.is_empty() {
        return Err(Error::data(
            dir,
            format!(
                "the CIFAR-10 format needs at least {files} train images (one per data_batch file) \
                 and 1 test image; got {} train and {} test",
                train.len(),
                test.len()
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut written = Vec::new();
    for (k, file) in CIFAR10_TRAIN_FILES.iter().enumerate() {
        let start = k * train.len() / files;
        let end = (k + 1) * train.len() / files;
        let bytes = encode_cifar10(
            &train.data[start * IMAGE_BYTES..end * IMAGE_BYTES],
            &train.labels[start..end],
        );
        let path = dir.join(file);
        write_atomic(&path, &bytes)?;
        written.push(path);
    }
    let path = dir.join(CIFAR10_TEST_FILE);
    write_atomic(&path, &encode_cifar10(&test.data, &test.labels))?;
    written.push(path);
    let path = dir.join("batches.meta.txt");
    write_atomic(&path, format!("{}\n", class_names.join("\n")).as_bytes())?;
    written.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lit-cifar-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn cifar100_uses_the_fine_label_and_checks_the_record_size() {
        let dir = temp_dir("c100");
        let mut bytes = Vec::new();
        for (coarse, fine) in [(3u8, 42u8), (19, 99)] {
            bytes.extend([coarse, fine]);
            bytes.extend(std::iter::repeat_n(fine, IMAGE_BYTES));
        }
        std::fs::write(dir.join("train.bin"), &bytes).unwrap();
        let d = load_cifar100(&dir, "cifar100", Split::Train).unwrap();
        assert_eq!(d.labels.to_vec(), vec![42, 99]);
        assert_eq!(d.example(1)[0], 99);
        std::fs::write(dir.join("test.bin"), &bytes[..3073]).unwrap();
        let msg = load_cifar100(&dir, "cifar100", Split::Test)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("test.bin") && msg.contains("3074-byte records"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
