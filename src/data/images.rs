//! Image-folder data sets (`<root>/<split>/<class>/*.jpg|jpeg|png`) and `lit-engine data import`,
//! which converts such a tree — or a `.tar` / `.tar.xz` of one, read as a stream — into the
//! CIFAR-10 binary format.
//!
//! Classes are the sub-folders of the train split in alphabetical (byte) order: class k is
//! label k; the test split may not have a class the train split lacks. Inside a class, files are
//! taken in alphabetical order, and the classes are interleaved round-robin (first file of every
//! class, then the second, …), so every prefix of a split is class-balanced, as in the canonical
//! CIFAR batches, and the order is the same for a folder and for an archive of it, whatever the
//! archive's entry order. All images of a data set
//! must have one size and one channel count (1 for grayscale, 3 for colour; alpha is dropped);
//! the first file that differs is named in the error. Decoding: `zune-jpeg` (baseline and
//! progressive JPEG) and `png` (every PNG colour type, 16-bit reduced to 8).

use super::{cifar, Dataset, Split};
use crate::error::{Error, Result};
use crate::limits;
use progress_bar::{bar, ProgressBar};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A decoded image: `channels` planes of `height × width` u8 values (`[C, H, W]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// 1 (grayscale) or 3 (colour; alpha dropped).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `channels × height × width` bytes, plane after plane.
    pub pixels: Vec<u8>,
}

/// Interleaved `HWC` pixels → planar `CHW`.
fn planar(hwc: &[u8], channels: usize) -> Vec<u8> {
    let plane = hwc.len() / channels;
    let mut out = vec![0u8; hwc.len()];
    for (i, px) in hwc.chunks_exact(channels).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            out[c * plane + i] = v;
        }
    }
    out
}

fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".jpg") || lower.ends_with(".jpeg") || lower.ends_with(".png")
}

/// Refuse an image whose header claims more than [`limits::MAX_IMAGE_SIDE`] pixels a side or
/// more than [`limits::MAX_IMAGE_BYTES`] decoded bytes, before its pixels are allocated.
fn check_image_size(
    name: &Path,
    format: &str,
    width: usize,
    height: usize,
    channels: usize,
) -> Result<()> {
    let bytes = limits::checked_product(&[width, height, channels]);
    let side = limits::MAX_IMAGE_SIDE;
    if width > side || height > side || bytes.is_none_or(|b| b > limits::MAX_IMAGE_BYTES) {
        return Err(Error::data(
            name,
            format!(
                "{format} header claims {width}×{height} pixels; the limit is {side} a side and \
                 {} decoded bytes",
                limits::MAX_IMAGE_BYTES
            ),
        ));
    }
    Ok(())
}

/// Decode a JPEG or PNG (recognised by its first bytes); `name` is only used in errors.
pub fn decode(name: &Path, bytes: &[u8]) -> Result<Image> {
    if bytes.starts_with(&[0xff, 0xd8]) {
        decode_jpeg(name, bytes)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(name, bytes)
    } else {
        Err(Error::data(name, "neither a JPEG nor a PNG file"))
    }
}

fn decode_jpeg(name: &Path, bytes: &[u8]) -> Result<Image> {
    use zune_jpeg::zune_core::bytestream::ZCursor;
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let bad = |e: &dyn std::fmt::Debug| Error::data(name, format!("corrupt JPEG: {e:?}"));
    let limited = DecoderOptions::default()
        .set_max_width(limits::MAX_IMAGE_SIDE)
        .set_max_height(limits::MAX_IMAGE_SIDE);
    let mut probe = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), limited);
    probe.decode_headers().map_err(|e| bad(&e))?;
    let gray = matches!(probe.input_colorspace(), Some(ColorSpace::Luma));
    let (space, channels) = if gray {
        (ColorSpace::Luma, 1)
    } else {
        (ColorSpace::RGB, 3)
    };
    if let Some((width, height)) = probe.dimensions() {
        check_image_size(name, "JPEG", width, height, channels)?;
    }
    let options = limited.jpeg_set_out_colorspace(space);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let hwc = dec.decode().map_err(|e| bad(&e))?;
    let info = dec
        .info()
        .ok_or_else(|| Error::data(name, "JPEG without image information"))?;
    let (height, width) = (info.height as usize, info.width as usize);
    if hwc.len() != height * width * channels {
        return Err(Error::data(
            name,
            format!(
                "JPEG decoded to {} bytes, expected {height}×{width}×{channels}",
                hwc.len()
            ),
        ));
    }
    Ok(Image {
        channels,
        height,
        width,
        pixels: planar(&hwc, channels),
    })
}

fn decode_png(name: &Path, bytes: &[u8]) -> Result<Image> {
    let bad = |e: png::DecodingError| match e {
        png::DecodingError::LimitsExceeded => Error::data(
            name,
            format!(
                "PNG header claims an image above the limit of {} pixels a side and {} \
                 decoded bytes",
                limits::MAX_IMAGE_SIDE,
                limits::MAX_IMAGE_BYTES
            ),
        ),
        e => Error::data(name, format!("corrupt PNG: {e}")),
    };
    let decoder_limits = png::Limits {
        bytes: limits::MAX_IMAGE_BYTES,
    };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), decoder_limits);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(bad)?;
    let (width, height) = (reader.info().width, reader.info().height);
    // The output buffer holds up to 4 channels (RGBA) after expansion.
    check_image_size(name, "PNG", width as usize, height as usize, 4)?;
    let size = reader
        .output_buffer_size()
        .filter(|&n| n <= limits::MAX_IMAGE_BYTES)
        .ok_or_else(|| Error::data(name, "PNG too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    buf.truncate(info.buffer_size());
    let (height, width) = (info.height as usize, info.width as usize);
    let (stride, keep) = match info.color_type {
        png::ColorType::Grayscale => (1, 1),
        png::ColorType::GrayscaleAlpha => (2, 1),
        png::ColorType::Rgb => (3, 3),
        png::ColorType::Rgba => (4, 3),
        png::ColorType::Indexed => {
            return Err(Error::data(name, "indexed PNG left unexpanded"));
        }
    };
    if buf.len() != height * width * stride {
        return Err(Error::data(
            name,
            format!(
                "PNG decoded to {} bytes, expected {height}×{width}×{stride}",
                buf.len()
            ),
        ));
    }
    let hwc: Vec<u8> = if stride == keep {
        buf
    } else {
        buf.chunks_exact(stride)
            .flat_map(|px| px[..keep].iter().copied())
            .collect()
    };
    Ok(Image {
        channels: keep,
        height,
        width,
        pixels: planar(&hwc, keep),
    })
}

/// Encoded image files of one tree, grouped by split and class, each class's files by name.
#[derive(Default)]
struct Tree {
    /// split → class → (file name → bytes).
    splits: BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<u8>>>>,
    /// Encoded bytes added so far.
    bytes: u64,
}

impl Tree {
    /// Add `split/class/file` (any leading folders before the split are ignored).
    fn add(&mut self, rel: &[&str], bytes: Vec<u8>) {
        let [.., split, class, file] = rel else {
            return;
        };
        self.splits
            .entry(split.to_string())
            .or_default()
            .entry(class.to_string())
            .or_default()
            .insert(file.to_string(), bytes);
    }

    /// [`Tree::add`], keeping the encoded bytes of the whole tree within
    /// [`limits::MAX_IMPORT_BYTES`]; `origin` names the source in the error.
    fn add_within_limit(&mut self, rel: &[&str], bytes: Vec<u8>, origin: &Path) -> Result<()> {
        self.bytes = self.bytes.saturating_add(bytes.len() as u64);
        if self.bytes > limits::MAX_IMPORT_BYTES {
            return Err(Error::data(
                origin,
                format!(
                    "the images add up to more than the limit of {} bytes",
                    limits::MAX_IMPORT_BYTES
                ),
            ));
        }
        self.add(rel, bytes);
        Ok(())
    }

    fn count(&self) -> usize {
        self.splits
            .values()
            .flat_map(|c| c.values())
            .map(|f| f.len())
            .sum()
    }
}

/// A decoded tree: class names (alphabetical) and the train / test data sets.
pub struct ImageTree {
    /// Class names; class k is label k.
    pub classes: Vec<String>,
    /// The `train/` split, classes interleaved round-robin.
    pub train: Dataset,
    /// The `test/` split, in the same order.
    pub test: Dataset,
}

/// Decode every image of `tree` (in parallel) into data sets; `origin` names the source in
/// errors. Class names come from the train split.
fn decode_tree(tree: Tree, origin: &Path, name: &str, pb: &ProgressBar) -> Result<ImageTree> {
    let train_classes: Vec<String> = tree
        .splits
        .get("train")
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default();
    if train_classes.is_empty() {
        return Err(Error::data(
            origin,
            "no train/<class>/<image> files found (expected train/<class>/*.jpg|png and \
             test/<class>/*.jpg|png)",
        ));
    }
    let mut sets = Vec::new();
    let mut reference: Option<(PathBuf, [usize; 3])> = None;
    for split in [Split::Train, Split::Test] {
        let classes = tree.splits.get(split.name()).ok_or_else(|| {
            Error::data(
                origin.join(split.name()),
                "split folder not found or without images",
            )
        })?;
        let mut per_class = Vec::new();
        for (class, names) in classes {
            let label = train_classes.binary_search(class).map_err(|_| {
                Error::data(
                    origin.join(split.name()).join(class),
                    format!(
                        "class `{class}` has no images in train/ (train classes: {})",
                        train_classes.join(", ")
                    ),
                )
            })?;
            let class_dir = origin.join(split.name()).join(class);
            let files: Vec<_> = names
                .iter()
                .map(|(file, bytes)| (class_dir.join(file), bytes, label as i32))
                .collect();
            per_class.push(files);
        }
        let files = interleave(per_class);
        let images: Vec<Image> = files
            .par_iter()
            .map(|(path, bytes, _)| {
                let img = decode(path, bytes);
                pb.inc(1);
                img
            })
            .collect::<Result<_>>()?;
        let mut pixels = Vec::with_capacity(images.iter().map(|i| i.pixels.len()).sum());
        for (img, (path, ..)) in images.iter().zip(&files) {
            let chw = [img.channels, img.height, img.width];
            match &reference {
                None => reference = Some((path.clone(), chw)),
                Some((first, want)) if *want != chw => {
                    return Err(Error::data(
                        path,
                        format!(
                            "image is {}×{} with {} channel(s), but {} is {}×{} with {}: all \
                             images of a data set must share one size and channel count",
                            img.height,
                            img.width,
                            img.channels,
                            first.display(),
                            want[1],
                            want[2],
                            want[0]
                        ),
                    ));
                }
                Some(_) => {}
            }
            pixels.extend_from_slice(&img.pixels);
        }
        let chw = reference.as_ref().map(|r| r.1).unwrap_or([3, 1, 1]);
        let labels = files.iter().map(|f| f.2).collect();
        sets.push(Dataset::images(
            name,
            split,
            train_classes.len(),
            chw,
            pixels,
            labels,
        )?);
    }
    let test = sets.pop().expect("two splits");
    let train = sets.pop().expect("two splits");
    Ok(ImageTree {
        classes: train_classes,
        train,
        test,
    })
}

/// Round-robin over the classes: the first file of each class, then the second of each, …, so
/// that every prefix of the data set (a data batch file, a quick run's first N examples or
/// evaluation batches) has the classes in proportion.
fn interleave<T>(per_class: Vec<Vec<T>>) -> Vec<T> {
    let total = per_class.iter().map(Vec::len).sum();
    let mut iters: Vec<_> = per_class.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        for it in iters.iter_mut() {
            out.extend(it.next());
        }
    }
    out
}

/// Read the encoded images of a folder tree `<dir>/{train,test}/<class>/*`.
fn read_folder(dir: &Path, pb: &ProgressBar) -> Result<Tree> {
    let mut tree = Tree::default();
    for split in ["train", "test"] {
        let split_dir = dir.join(split);
        if !split_dir.is_dir() {
            continue;
        }
        for class in sorted_entries(&split_dir)? {
            let class_dir = split_dir.join(&class);
            if !class_dir.is_dir() {
                continue;
            }
            for file in sorted_entries(&class_dir)? {
                if !is_image_name(&file) {
                    continue;
                }
                let path = class_dir.join(&file);
                let bytes =
                    limits::read_file_at_most(&path, limits::MAX_IMAGE_FILE_BYTES, "image file")?;
                pb.inc(bytes.len() as u64);
                tree.add_within_limit(&[split, &class, &file], bytes, dir)?;
            }
        }
    }
    Ok(tree)
}

fn sorted_entries(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Read the encoded images of a `.tar` or `.tar.xz` archive entry by entry (never unpacked to
/// disk). xz is decompressed on a second thread that feeds the tar reader through a pipe, so
/// decompression and tar parsing overlap.
fn read_archive(path: &Path, pb: &ProgressBar) -> Result<Tree> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let counted = pb.wrap_read(file);
    let name = path.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".tar") {
        return read_tar(path, counted);
    }
    if !(name.ends_with(".tar.xz") || name.ends_with(".txz")) {
        return Err(Error::data(
            path,
            "expected a folder, a .tar or a .tar.xz archive",
        ));
    }
    let (reader, writer) = std::io::pipe().map_err(|e| Error::io(path, e))?;
    let decompressor = std::thread::spawn(move || {
        let mut input = BufReader::with_capacity(1 << 20, counted);
        let mut output = std::io::BufWriter::with_capacity(1 << 20, writer);
        lzma_rs::xz_decompress(&mut input, &mut output)
            .map_err(|e| e.to_string())
            .and_then(|_| output.into_inner().map(drop).map_err(|e| e.to_string()))
    });
    let tree = read_tar(path, reader);
    let xz = decompressor
        .join()
        .map_err(|_| Error::data(path, "xz decompression thread panicked"))?;
    match (tree, xz) {
        // A tar error caused by broken xz data is better explained by the xz error.
        (_, Err(e)) if !e.contains("Broken pipe") => {
            Err(Error::data(path, format!("corrupt xz stream: {e}")))
        }
        (tree, _) => tree,
    }
}

fn read_tar(path: &Path, input: impl Read) -> Result<Tree> {
    let bad = |e: std::io::Error| Error::data(path, format!("corrupt tar archive: {e}"));
    let mut tree = Tree::default();
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let entry_path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let parts: Vec<&str> = entry_path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let Some(split_at) = parts.iter().rposition(|p| *p == "train" || *p == "test") else {
            continue;
        };
        if parts.len() != split_at + 3 || !is_image_name(parts[split_at + 2]) {
            continue;
        }
        let entry_name = path.join(&entry_path);
        let claimed = entry.size();
        if claimed > limits::MAX_IMAGE_FILE_BYTES {
            return Err(Error::data(
                entry_name,
                format!(
                    "tar entry claims {claimed} bytes, above the limit of {} bytes for an image",
                    limits::MAX_IMAGE_FILE_BYTES
                ),
            ));
        }
        let bytes = limits::read_at_most(
            &entry_name,
            &mut entry,
            limits::MAX_IMAGE_FILE_BYTES,
            "tar entry",
        )?;
        tree.add_within_limit(&parts[split_at..], bytes, path)?;
    }
    Ok(tree)
}

/// Load an image tree (`<dir>/{train,test}/<class>/*`) or an archive of one.
pub fn load_tree(from: &Path, name: &str, progress: bool) -> Result<ImageTree> {
    if !from.exists() {
        return Err(Error::data(
            from,
            "not found: expected a folder with train/<class>/*.jpg|png and test/<class>/…, \
             or a .tar / .tar.xz archive of one",
        ));
    }
    let read_bar = bar(
        progress,
        "reading",
        if from.is_dir() { 0 } else { file_len(from) },
        true,
    );
    let tree = if from.is_dir() {
        read_folder(from, &read_bar)?
    } else {
        read_archive(from, &read_bar)?
    };
    read_bar.finish_and_clear();
    let decode_bar = bar(progress, "decoding", tree.count() as u64, false);
    let decoded = decode_tree(tree, from, name, &decode_bar)?;
    decode_bar.finish_and_clear();
    Ok(decoded)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Progress bars on stderr with the `progress` feature; without it, a stand-in with the same calls
/// that shows nothing, so the readers below are written once.
#[cfg(feature = "progress")]
mod progress_bar {
    pub(super) use indicatif::ProgressBar;
    use indicatif::ProgressStyle;

    /// A bar titled `what` over `len` units (bytes or images; 0: a spinner), hidden unless `show`.
    pub(super) fn bar(show: bool, what: &str, len: u64, bytes: bool) -> ProgressBar {
        if !show {
            return ProgressBar::hidden();
        }
        let pb = if len == 0 {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::new(len)
        };
        let template = if bytes {
            "{prefix:>9} [{bar:30}] {bytes}/{total_bytes} ({elapsed}<{eta})"
        } else {
            "{prefix:>9} [{bar:30}] {pos}/{len} images ({elapsed}<{eta})"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_prefix(what.to_string());
        pb
    }
}

#[cfg(not(feature = "progress"))]
mod progress_bar {
    /// Stands in for `indicatif::ProgressBar` when the `progress` feature is off.
    pub(super) struct ProgressBar;

    impl ProgressBar {
        pub(super) fn inc(&self, _delta: u64) {}
        pub(super) fn finish_and_clear(&self) {}
        pub(super) fn wrap_read<R: std::io::Read>(&self, read: R) -> R {
            read
        }
    }

    /// No bar to show without the `progress` feature.
    pub(super) fn bar(_show: bool, _what: &str, _len: u64, _bytes: bool) -> ProgressBar {
        ProgressBar
    }
}

/// Output formats of `data import`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportFormat {
    /// `<root>/cifar-10-batches-bin/` (32×32 RGB, at most 10 classes).
    Cifar10,
}

/// What an import produced.
#[derive(Debug)]
pub struct ImportReport {
    /// Class names in label order.
    pub classes: Vec<String>,
    /// Training images written.
    pub train: usize,
    /// Test images written.
    pub test: usize,
    /// Training images per label.
    pub train_per_class: Vec<usize>,
    /// Test images per label.
    pub test_per_class: Vec<usize>,
    /// The files written.
    pub files: Vec<PathBuf>,
    /// Wall time of the whole import.
    pub seconds: f64,
}

/// Convert the image tree or archive `from` into `format` under the data root `to`.
pub fn import(
    from: &Path,
    to: &Path,
    format: ImportFormat,
    progress: bool,
) -> Result<ImportReport> {
    let started = Instant::now();
    let ImportFormat::Cifar10 = format;
    let tree = load_tree(from, "cifar10", progress)?;
    let dir = to.join(super::DatasetKind::from_name("cifar10")?.folder());
    if tree.train.shape != [3, cifar::IMAGE_SIZE, cifar::IMAGE_SIZE] {
        return Err(Error::data(
            from,
            format!(
                "images are {}×{} with {} channel(s); the CIFAR-10 format needs 32×32 RGB",
                tree.train.shape[1], tree.train.shape[2], tree.train.shape[0]
            ),
        ));
    }
    if tree.classes.len() > 10 {
        return Err(Error::data(
            from,
            format!(
                "{} classes; the CIFAR-10 format holds at most 10 (one label byte per class \
                 0..9)",
                tree.classes.len()
            ),
        ));
    }
    let files = cifar::write_cifar10(&dir, &tree.train, &tree.test, &tree.classes)?;
    Ok(ImportReport {
        train_per_class: tree.train.class_counts(),
        test_per_class: tree.test.class_counts(),
        classes: tree.classes,
        train: tree.train.len(),
        test: tree.test.len(),
        files,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleave_takes_classes_round_robin_until_each_runs_out() {
        let out = interleave(vec![vec!["a0", "a1"], vec!["b0"], vec!["c0", "c1", "c2"]]);
        assert_eq!(out, vec!["a0", "b0", "c0", "a1", "c1", "c2"]);
    }

    #[test]
    fn planar_splits_interleaved_channels() {
        assert_eq!(planar(&[1, 2, 3, 4, 5, 6], 3), vec![1, 4, 2, 5, 3, 6]);
    }

    #[test]
    fn tree_ignores_leading_folders_and_non_images() {
        let mut t = Tree::default();
        t.add(&["cifar", "train", "cat", "1.png"], vec![1]);
        t.add(&["train", "cat"], vec![2]);
        assert_eq!(t.count(), 1);
        assert!(is_image_name("A.JPG") && is_image_name("b.jpeg") && !is_image_name("c.txt"));
    }
}
