//! Data sets: a registry of names, the on-disk formats, an in-memory [`Dataset`], and the batch
//! [`Loader`] (seeded shuffling, CIFAR augmentation, normalisation, a prefetch thread).
//!
//! The data root is `--data-dir`, else `LIT_DATA_DIR`, else `./data`; each data set lives in
//! `<root>/<folder>/` under its canonical folder and file names:
//!
//! | config name | folder | files | classes |
//! |---|---|---|---|
//! | `mnist` | `mnist/` | `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` | 10 |
//! | `fashion_mnist` | `fashion-mnist/` | same as MNIST | 10 |
//! | `cifar10` | `cifar-10-batches-bin/` | `data_batch_{1..5}.bin`, `test_batch.bin` | 10 |
//! | `cifar100` | `cifar-100-binary/` | `train.bin`, `test.bin` (fine labels) | 100 |
//! | `ag_news`, `amazon_review_full`, … | `<name>_csv/` | `train.csv`, `test.csv` (Zhang et al.) | see [`REGISTRY`] |
//!
//! Images are kept as u8 `[N, C, H, W]`, text as u8 token ids `[N, L]` (see [`text`]); the loader
//! turns them into float / index tensors batch by batch — on the host, or, for a data set placed
//! in device memory ([`Dataset::place_on`], [`resident`]), on the device by kernels.

pub mod augment;
pub mod cifar;
pub mod idx;
/// Image folders and `data import` (JPEG / PNG decoders, tar / xz readers): only with the
/// `images` feature (part of the default `cli`), so a library build without it does not
/// compile the decoders at all.
#[cfg(feature = "images")]
pub mod images;
pub mod loader;
pub mod resident;
pub mod text;

pub use loader::{Batch, Loader};
pub use resident::DeviceDataset;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::rng::Rng;
use resident::Placement;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a data set is stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// idx files (MNIST layout), gzip'd or plain.
    Idx,
    /// CIFAR-10 binary batches: records of 1 label byte + 3072 pixel bytes.
    Cifar10,
    /// CIFAR-100 binary: records of coarse label, fine label, 3072 pixel bytes.
    Cifar100,
    /// Zhang et al. CSV (`"class","title","text"`), tokenised into characters for VDCNN.
    ZhangCsv,
}

/// One registry entry: what a config name means.
#[derive(Debug, PartialEq)]
pub struct DatasetSpec {
    /// The name a config uses (`models.dataset`).
    pub name: &'static str,
    /// Folder under the data root.
    pub folder: &'static str,
    /// How the files are stored.
    pub format: Format,
    /// Number of classes (labels are `0..num_classes`).
    pub num_classes: usize,
    /// Per-channel mean / std of the training pixels scaled to [0, 1] (empty for text).
    pub mean: &'static [f32],
    /// Per-channel standard deviation, as `mean`.
    pub std: &'static [f32],
}

const fn text_set(name: &'static str, folder: &'static str, num_classes: usize) -> DatasetSpec {
    DatasetSpec {
        name,
        folder,
        format: Format::ZhangCsv,
        num_classes,
        mean: &[],
        std: &[],
    }
}

/// Every data set a config can name. Normalisation constants: MNIST / Fashion-MNIST as the
/// torchvision examples; CIFAR-10/100 the per-channel statistics of the training set (as in the
/// TAKD / RKD CIFAR repositories). The LIT repository normalises CIFAR with the ImageNet constants
/// instead ([`LIT_CIFAR_MEAN`], [`LIT_CIFAR_STD`]); [`Dataset::with_normalization`] selects those.
pub const REGISTRY: &[DatasetSpec] = &[
    DatasetSpec {
        name: "mnist",
        folder: "mnist",
        format: Format::Idx,
        num_classes: 10,
        mean: &[0.1307],
        std: &[0.3081],
    },
    DatasetSpec {
        name: "fashion_mnist",
        folder: "fashion-mnist",
        format: Format::Idx,
        num_classes: 10,
        mean: &[0.2860],
        std: &[0.3530],
    },
    DatasetSpec {
        name: "cifar10",
        folder: "cifar-10-batches-bin",
        format: Format::Cifar10,
        num_classes: 10,
        mean: &[0.4914, 0.4822, 0.4465],
        std: &[0.2470, 0.2435, 0.2616],
    },
    DatasetSpec {
        name: "cifar100",
        folder: "cifar-100-binary",
        format: Format::Cifar100,
        num_classes: 100,
        mean: &[0.5071, 0.4865, 0.4409],
        std: &[0.2673, 0.2564, 0.2762],
    },
    text_set("ag_news", "ag_news_csv", 4),
    text_set("amazon_review_full", "amazon_review_full_csv", 5),
    text_set("amazon_review_polarity", "amazon_review_polarity_csv", 2),
    text_set("dbpedia", "dbpedia_csv", 14),
    text_set("sogou_news", "sogou_news_csv", 5),
    text_set("yahoo_answers", "yahoo_answers_csv", 10),
    text_set("yelp_review_full", "yelp_review_full_csv", 5),
    text_set("yelp_review_polarity", "yelp_review_polarity_csv", 2),
    // The two small real text sets of ../shared/data/text, placed under Zhang-style names.
    text_set("amazon_fine_foods", "amazon_fine_foods_csv", 2),
    text_set("tweets_sentiment", "tweets_sentiment_csv", 3),
];

/// ImageNet constants the LIT repository's CIFAR loaders normalise with.
pub const LIT_CIFAR_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet constants the LIT repository's CIFAR loaders normalise with (standard deviation).
pub const LIT_CIFAR_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A registered data set (a handle on its [`REGISTRY`] entry).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DatasetKind(&'static DatasetSpec);

impl DatasetKind {
    /// Every registered data set, in registry order.
    pub fn all() -> impl Iterator<Item = DatasetKind> {
        REGISTRY.iter().map(DatasetKind)
    }

    /// The registered data set called `name` (case-insensitive, `-` and `_` alike); an unknown
    /// name is a config error listing the valid ones.
    pub fn from_name(name: &str) -> Result<DatasetKind> {
        let wanted = name.trim().to_ascii_lowercase().replace('-', "_");
        DatasetKind::all()
            .find(|k| k.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<&str> = DatasetKind::all().map(|k| k.name()).collect();
                Error::Config(format!(
                    "unknown dataset `{name}`; valid datasets: {}",
                    names.join(", ")
                ))
            })
    }

    /// The registry entry.
    pub fn spec(self) -> &'static DatasetSpec {
        self.0
    }
    /// The name used in configs.
    pub fn name(self) -> &'static str {
        self.0.name
    }
    /// The folder under the data root.
    pub fn folder(self) -> &'static str {
        self.0.folder
    }
    /// How its files are stored.
    pub fn format(self) -> Format {
        self.0.format
    }
    /// Number of classes.
    pub fn num_classes(self) -> usize {
        self.0.num_classes
    }
    /// True for text (token id) data sets.
    pub fn is_text(self) -> bool {
        self.0.format == Format::ZhangCsv
    }

    /// What the folder must contain and how to get it, for "not found" errors.
    fn how_to_get(self) -> String {
        match self.format() {
            Format::Idx => "expected the four idx files (train-images-idx3-ubyte[.gz], \
                train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) \
                there; copy them from the data set's distribution"
                .into(),
            Format::Cifar10 => "expected the CIFAR-10 binary version there (data_batch_1.bin … \
                data_batch_5.bin, test_batch.bin); to build it from a tree of images \
                (train/<class>/*.jpg|png, test/<class>/…) or its .tar.xz, run \
                `lit-engine data import --from <folder|.tar.xz> --to <data root> --format cifar10`"
                .into(),
            Format::Cifar100 => {
                "expected the CIFAR-100 binary version there (train.bin, test.bin)".into()
            }
            Format::ZhangCsv => format!(
                "expected train.csv and test.csv in the Zhang et al. CSV format \
                 (\"class\",\"title\",\"text\"; 1-based class index, {} classes) there",
                self.num_classes()
            ),
        }
    }
}

/// Which half of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training split.
    Train,
    /// The test split.
    Test,
}

impl Split {
    /// `train` or `test`, as in file names and messages.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// What one example is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExampleKind {
    /// u8 pixels, shape `[C, H, W]` (channel planes, row-major).
    Image,
    /// u8 token ids, shape `[L]`.
    Tokens,
}

/// A labelled split held in memory. The pixel / token buffer and the labels are shared
/// (`Arc`), so cloning a data set (e.g. into the prefetch thread) costs nothing.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The data set's name (in errors and logs).
    pub name: String,
    /// Which split this is.
    pub split: Split,
    /// Number of classes; every label is below it.
    pub num_classes: usize,
    /// Images or token ids.
    pub kind: ExampleKind,
    /// Shape of one example: `[C, H, W]` or `[L]`.
    pub shape: Vec<usize>,
    /// `len() * example_len()` bytes, example after example.
    pub data: Arc<Vec<u8>>,
    /// One label per example, in `0..num_classes`.
    pub labels: Arc<Vec<i32>>,
    /// Per-channel normalisation of images (pixels scaled to [0, 1] first); empty: no
    /// normalisation beyond the scaling.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, as `mean`.
    pub std: Vec<f32>,
    /// The copy of `data` and `labels` in device memory, when [`Dataset::place_on`] made one:
    /// loaders on that device then make their batches there.
    pub resident: Option<Arc<DeviceDataset>>,
}

impl Dataset {
    /// An image set from u8 pixels `[N, C, H, W]`; checks the buffer length and the labels.
    pub fn images(
        name: &str,
        split: Split,
        num_classes: usize,
        chw: [usize; 3],
        pixels: Vec<u8>,
        labels: Vec<i32>,
    ) -> Result<Self> {
        Self::new(
            name,
            split,
            num_classes,
            ExampleKind::Image,
            chw.to_vec(),
            pixels,
            labels,
        )
    }

    /// A text set from u8 token ids `[N, L]`.
    pub fn tokens(
        name: &str,
        split: Split,
        num_classes: usize,
        length: usize,
        ids: Vec<u8>,
        labels: Vec<i32>,
    ) -> Result<Self> {
        Self::new(
            name,
            split,
            num_classes,
            ExampleKind::Tokens,
            vec![length],
            ids,
            labels,
        )
    }

    fn new(
        name: &str,
        split: Split,
        num_classes: usize,
        kind: ExampleKind,
        shape: Vec<usize>,
        data: Vec<u8>,
        labels: Vec<i32>,
    ) -> Result<Self> {
        let per: usize = shape.iter().product();
        if per == 0 || data.len() != labels.len() * per {
            return Err(Error::Shape(format!(
                "{name} {}: {} bytes for {} examples of shape {shape:?}",
                split.name(),
                data.len(),
                labels.len()
            )));
        }
        if let Some(i) = labels
            .iter()
            .position(|&l| l < 0 || l as usize >= num_classes)
        {
            return Err(Error::Dataset(format!(
                "{name} {}: label {} of example {i} is not a class index (0..{num_classes})",
                split.name(),
                labels[i]
            )));
        }
        Ok(Dataset {
            name: name.to_string(),
            split,
            num_classes,
            kind,
            shape,
            data: Arc::new(data),
            labels: Arc::new(labels),
            mean: Vec::new(),
            std: Vec::new(),
            resident: None,
        })
    }

    /// Upload this split to `device` once, so that loaders there make its batches with kernels,
    /// when `device` runs kernels and the copy fits its data budget
    /// ([`resident::device_data_budget`]). Otherwise the split stays in host memory — with a
    /// one-line notice on a kernel device — and batches are made on the host, as on cpu.
    pub fn place_on(mut self, device: &Device) -> Result<Self> {
        let Some(budget) = resident::device_data_budget(device) else {
            return Ok(self);
        };
        match DeviceDataset::place(&self, device, budget)? {
            Placement::Resident(d) => self.resident = Some(d),
            Placement::Host(why) => eprintln!(
                "lit-engine: the {} {} split stays in host memory ({why}); its batches are made \
                 on the host",
                self.name,
                self.split.name()
            ),
        }
        Ok(self)
    }

    /// Normalise channel `c` as `(x / 255 - mean[c]) / std[c]`; one value per channel.
    pub fn with_normalization(mut self, mean: &[f32], std: &[f32]) -> Result<Self> {
        let channels = self.channels();
        if self.kind != ExampleKind::Image
            || mean.len() != channels
            || std.len() != channels
            || std.iter().any(|&s| s <= 0.0 || !s.is_finite())
        {
            return Err(Error::Config(format!(
                "normalisation of {}: need one mean and one positive std per channel \
                 ({channels} channels of an image set), got mean {mean:?}, std {std:?}",
                self.name
            )));
        }
        self.mean = mean.to_vec();
        self.std = std.to_vec();
        Ok(self)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when the split holds no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Values per example (3072 for CIFAR, 784 for MNIST, 1014 for text).
    pub fn example_len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Image channels (1 for text).
    pub fn channels(&self) -> usize {
        match self.kind {
            ExampleKind::Image => self.shape[0],
            ExampleKind::Tokens => 1,
        }
    }
    /// The raw bytes of example `i`.
    pub fn example(&self, i: usize) -> &[u8] {
        let n = self.example_len();
        &self.data[i * n..(i + 1) * n]
    }
    /// Examples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in self.labels.iter() {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let n = self.example_len();
        let mut data = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            data.extend_from_slice(self.example(i));
        }
        Dataset {
            data: Arc::new(data),
            labels: Arc::new(indices.iter().map(|&i| self.labels[i]).collect()),
            resident: None,
            ..self.clone()
        }
    }

    /// The first `n` examples (all when `n >= len`).
    pub fn first(&self, n: usize) -> Dataset {
        self.select(&(0..n.min(self.len())).collect::<Vec<_>>())
    }

    /// A seeded, class-stratified subset of `n` examples (all when `n >= len`), kept in data set
    /// order. Each class gets its proportional share (largest remainders round up), chosen at
    /// random inside the class — unlike "the first `n`", this stays balanced whatever the file
    /// order (some distributions sort examples by class).
    pub fn stratified_subset(&self, n: usize, seed: u64) -> Dataset {
        if n >= self.len() {
            return self.clone();
        }
        let counts = self.class_counts();
        let total = self.len();
        let mut quota: Vec<usize> = counts.iter().map(|&c| c * n / total).collect();
        let mut by_remainder: Vec<usize> = (0..counts.len()).collect();
        by_remainder.sort_by_key(|&c| std::cmp::Reverse((counts[c] * n) % total));
        let missing = n - quota.iter().sum::<usize>();
        for &c in by_remainder.iter().take(missing) {
            quota[c] += 1;
        }
        let mut rng = Rng::new(seed);
        let mut chosen = Vec::with_capacity(n);
        for (class, &q) in quota.iter().enumerate() {
            let mut members: Vec<usize> = (0..total)
                .filter(|&i| self.labels[i] as usize == class)
                .collect();
            rng.shuffle(&mut members);
            chosen.extend_from_slice(&members[..q]);
        }
        chosen.sort_unstable();
        self.select(&chosen)
    }
}

/// `--data-dir`, else `LIT_DATA_DIR`, else `./data`.
pub fn data_root(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("LIT_DATA_DIR") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("data"),
    }
}

/// `<root>/<folder>` of a data set, or an error saying where it looked and how to get the data.
pub fn dataset_dir(root: &Path, kind: DatasetKind) -> Result<PathBuf> {
    let dir = root.join(kind.folder());
    if dir.is_dir() {
        return Ok(dir);
    }
    Err(Error::data(
        &dir,
        format!(
            "data folder for `{}` not found (the data root `{}` comes from --data-dir, else \
             LIT_DATA_DIR, else ./data); {}",
            kind.name(),
            root.display(),
            kind.how_to_get()
        ),
    ))
}

/// Load one split of a registered data set from `<root>/<folder>/`, with the registry's
/// normalisation for images.
pub fn load(root: &Path, kind: DatasetKind, split: Split) -> Result<Dataset> {
    let dir = dataset_dir(root, kind)?;
    let data = match kind.format() {
        Format::Idx => load_idx(&dir, kind, split)?,
        Format::Cifar10 => cifar::load_cifar10(&dir, kind.name(), split)?,
        Format::Cifar100 => cifar::load_cifar100(&dir, kind.name(), split)?,
        Format::ZhangCsv => {
            let path = dir.join(format!("{}.csv", split.name()));
            return text::load_csv(&path, kind.name(), split, kind.num_classes());
        }
    };
    data.with_normalization(kind.spec().mean, kind.spec().std)
}

/// The canonical idx file names of a split: (images, labels), without `.gz`.
pub fn idx_file_names(split: Split) -> (String, String) {
    let p = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    (
        format!("{p}-images-idx3-ubyte"),
        format!("{p}-labels-idx1-ubyte"),
    )
}

/// `<dir>/<name>.gz` if it exists, else `<dir>/<name>`, else an error naming both.
fn find_idx_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    Err(Error::data(
        dir,
        format!("neither {name}.gz nor {name} found in this folder"),
    ))
}

/// One split of an idx image set in `dir`, as `[N, 1, rows, cols]`.
fn load_idx(dir: &Path, kind: DatasetKind, split: Split) -> Result<Dataset> {
    let (img_name, lbl_name) = idx_file_names(split);
    let img_path = find_idx_file(dir, &img_name)?;
    let lbl_path = find_idx_file(dir, &lbl_name)?;
    let images = idx::read_images(&img_path)?;
    let labels = idx::read_labels(&lbl_path)?;
    if images.count != labels.len() {
        return Err(Error::data(
            &lbl_path,
            format!(
                "count mismatch: {} labels but {} has {} images",
                labels.len(),
                img_path.display(),
                images.count
            ),
        ));
    }
    if let Some(i) = labels
        .iter()
        .position(|&l| l as usize >= kind.num_classes())
    {
        return Err(Error::data(
            &lbl_path,
            format!(
                "label {} at index {i} is not a class of {} (0..{})",
                labels[i],
                kind.name(),
                kind.num_classes()
            ),
        ));
    }
    Dataset::images(
        kind.name(),
        split,
        kind.num_classes(),
        [1, images.rows, images.cols],
        images.pixels,
        labels.into_iter().map(i32::from).collect(),
    )
}

/// What [`subset_idx`] wrote.
#[derive(Debug)]
pub struct SubsetReport {
    /// Each file written, with the number of examples it holds.
    pub files: Vec<(PathBuf, usize)>,
}

/// Write the first `train_n` training and `test_n` test examples of the idx set in `src` to `dst`
/// as gzip'd idx files with the canonical names (deterministic bytes: level 9, no name, mtime 0).
pub fn subset_idx(src: &Path, dst: &Path, train_n: usize, test_n: usize) -> Result<SubsetReport> {
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    let mut files = Vec::new();
    for (split, n) in [(Split::Train, train_n), (Split::Test, test_n)] {
        let (img_name, lbl_name) = idx_file_names(split);
        let img_path = find_idx_file(src, &img_name)?;
        let lbl_path = find_idx_file(src, &lbl_name)?;
        let images = idx::read_images(&img_path)?;
        let labels = idx::read_labels(&lbl_path)?;
        if images.count != labels.len() {
            return Err(Error::data(
                &lbl_path,
                format!(
                    "count mismatch: {} labels, {} images",
                    labels.len(),
                    images.count
                ),
            ));
        }
        if n > images.count {
            return Err(Error::Dataset(format!(
                "asked for {n} {} examples but {} has only {}",
                split.name(),
                img_path.display(),
                images.count
            )));
        }
        let out_img = dst.join(format!("{img_name}.gz"));
        let out_lbl = dst.join(format!("{lbl_name}.gz"));
        idx::write_gz(&out_img, &idx::encode_images(&images.first(n)))?;
        idx::write_gz(&out_lbl, &idx::encode_labels(&labels[..n]))?;
        files.push((out_img, n));
        files.push((out_lbl, n));
    }
    Ok(SubsetReport { files })
}

pub(crate) use crate::durable::write_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    fn write_set(dir: &Path, split: Split, n: usize, n_labels: usize) {
        let (img, lbl) = idx_file_names(split);
        let images = idx::IdxImages {
            count: n,
            rows: 28,
            cols: 28,
            pixels: vec![0; n * 784],
        };
        idx::write_gz(&dir.join(format!("{img}.gz")), &idx::encode_images(&images)).unwrap();
        std::fs::write(dir.join(lbl), idx::encode_labels(&vec![3; n_labels])).unwrap();
    }

    #[test]
    fn dataset_names_folders_and_unknown_names() {
        assert_eq!(DatasetKind::from_name("mnist").unwrap().folder(), "mnist");
        assert_eq!(
            DatasetKind::from_name("fashion-mnist").unwrap().folder(),
            "fashion-mnist"
        );
        let cifar = DatasetKind::from_name("CIFAR10").unwrap();
        assert_eq!(
            (cifar.folder(), cifar.num_classes()),
            ("cifar-10-batches-bin", 10)
        );
        let text = DatasetKind::from_name("amazon_review_full").unwrap();
        assert_eq!(
            (text.folder(), text.num_classes(), text.is_text()),
            ("amazon_review_full_csv", 5, true)
        );
        let msg = DatasetKind::from_name("imagenet").unwrap_err().to_string();
        assert!(
            msg.contains("`imagenet`") && msg.contains("mnist, fashion_mnist, cifar10, cifar100"),
            "{msg}"
        );
        for spec in REGISTRY {
            assert_eq!(spec.mean.len(), spec.std.len(), "{}", spec.name);
        }
    }

    #[test]
    fn missing_folder_says_where_it_looked_and_how_to_get_the_data() {
        let root = Path::new("/nonexistent-lit-root");
        let msg = load(
            root,
            DatasetKind::from_name("cifar10").unwrap(),
            Split::Train,
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("/nonexistent-lit-root/cifar-10-batches-bin")
                && msg.contains("lit-engine data import --from"),
            "{msg}"
        );
        let msg = load(
            root,
            DatasetKind::from_name("ag_news").unwrap(),
            Split::Test,
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("ag_news_csv") && msg.contains("train.csv and test.csv"),
            "{msg}"
        );
    }

    #[test]
    fn loads_gz_and_plain_idx_and_reports_count_mismatch() {
        let root = std::env::temp_dir().join(format!("lit-data-test-{}", std::process::id()));
        let dir = root.join("mnist");
        std::fs::create_dir_all(&dir).unwrap();
        write_set(&dir, Split::Train, 5, 5);
        write_set(&dir, Split::Test, 4, 3);
        let mnist = DatasetKind::from_name("mnist").unwrap();
        let train = load(&root, mnist, Split::Train).unwrap();
        assert_eq!((train.len(), train.shape.clone()), (5, vec![1, 28, 28]));
        assert_eq!(
            (train.mean.clone(), train.std.clone()),
            (vec![0.1307], vec![0.3081])
        );
        let msg = load(&root, mnist, Split::Test).unwrap_err().to_string();
        assert!(
            msg.contains("count mismatch") && msg.contains("3 labels") && msg.contains("4 images"),
            "{msg}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn labelled(labels: Vec<i32>) -> Dataset {
        let n = labels.len();
        let pixels = (0..n).map(|i| i as u8).collect();
        Dataset::images("t", Split::Train, 3, [1, 1, 1], pixels, labels).unwrap()
    }

    #[test]
    fn stratified_subset_is_seeded_balanced_and_in_order() {
        // 60 of class 0, 30 of class 1, 10 of class 2, sorted by class like an imported tree.
        let labels: Vec<i32> = [(0, 60), (1, 30), (2, 10)]
            .iter()
            .flat_map(|&(c, n)| std::iter::repeat_n(c, n))
            .collect();
        let data = labelled(labels);
        let sub = data.stratified_subset(20, 7);
        assert_eq!(sub.class_counts(), vec![12, 6, 2]);
        let ids: Vec<u8> = sub.data.to_vec();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "kept in order: {ids:?}"
        );
        assert!(sub
            .labels
            .iter()
            .zip(&ids)
            .all(|(&l, &i)| data.labels[i as usize] == l));
        assert_eq!(sub.data, data.stratified_subset(20, 7).data);
        assert_ne!(sub.data, data.stratified_subset(20, 8).data);
        // Shares that do not divide evenly still add up to n.
        assert_eq!(data.stratified_subset(7, 1).len(), 7);
        assert_eq!(data.stratified_subset(500, 1).len(), 100);
        assert_eq!(data.first(3).labels.to_vec(), vec![0, 0, 0]);
    }

    #[test]
    fn dataset_checks_buffer_length_labels_and_normalisation() {
        assert!(Dataset::images("t", Split::Train, 2, [1, 2, 2], vec![0; 7], vec![0, 1]).is_err());
        let msg = Dataset::images("t", Split::Train, 2, [1, 1, 1], vec![0; 2], vec![0, 2])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("label 2 of example 1"), "{msg}");
        let d = labelled(vec![0, 1]);
        assert!(d
            .clone()
            .with_normalization(&[0.5, 0.5], &[1.0, 1.0])
            .is_err());
        assert!(d.clone().with_normalization(&[0.5], &[0.0]).is_err());
        assert!(d.with_normalization(&[0.5], &[0.25]).is_ok());
    }
}
