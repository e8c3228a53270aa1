//! Data sets. For now the idx image sets (MNIST, Fashion-MNIST) and a batch loader over them.
//!
//! The data root is `--data-dir`, else `LIT_DATA_DIR`, else `./data`; a data set lives in
//! `<root>/<folder>/` under its canonical file names (`train-images-idx3-ubyte[.gz]`, …).

pub mod idx;
pub mod loader;

pub use loader::{Batch, Loader};

use crate::error::{Error, Result};
use idx::IdxImages;
use std::path::{Path, PathBuf};

/// The image data sets this build can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    Mnist,
    FashionMnist,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 2] = [DatasetKind::Mnist, DatasetKind::FashionMnist];

    /// The name used in configs.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion_mnist",
        }
    }

    /// The folder under the data root.
    pub fn folder(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }

    /// Per-pixel mean and standard deviation of the training set (after scaling to [0, 1]),
    /// the constants torchvision examples normalise with.
    pub fn mean_std(self) -> (f32, f32) {
        match self {
            DatasetKind::Mnist => (0.1307, 0.3081),
            DatasetKind::FashionMnist => (0.2860, 0.3530),
        }
    }

    pub fn num_classes(self) -> usize {
        10
    }

    pub fn from_name(name: &str) -> Result<DatasetKind> {
        let wanted = name.trim().to_ascii_lowercase().replace('-', "_");
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
                Error::Config(format!(
                    "unknown or unsupported dataset `{name}`: this build trains on {}",
                    names.join(", ")
                ))
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// File name stem prefix of the idx files.
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// A labelled image split held as raw u8 pixels (normalised per batch by the loader).
#[derive(Clone, Debug)]
pub struct ImageDataset {
    pub kind: DatasetKind,
    pub split: Split,
    pub images: IdxImages,
    pub labels: Vec<u8>,
}

impl ImageDataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Features per example (784 for MNIST).
    pub fn feature_len(&self) -> usize {
        self.images.image_len()
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

/// The canonical idx file names of a split: (images, labels), without `.gz`.
pub fn idx_file_names(split: Split) -> (String, String) {
    let p = split.prefix();
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

/// Load one split of an idx data set from `<root>/<folder>/`.
pub fn load_idx_split(root: &Path, kind: DatasetKind, split: Split) -> Result<ImageDataset> {
    let dir = root.join(kind.folder());
    if !dir.is_dir() {
        return Err(Error::data(
            &dir,
            format!(
                "data folder for `{}` not found (data root `{}` comes from --data-dir, else LIT_DATA_DIR, \
                 else ./data; run from the repository root or point one of them at the data)",
                kind.name(),
                root.display()
            ),
        ));
    }
    let (img_name, lbl_name) = idx_file_names(split);
    let img_path = find_idx_file(&dir, &img_name)?;
    let lbl_path = find_idx_file(&dir, &lbl_name)?;
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
    Ok(ImageDataset {
        kind,
        split,
        images,
        labels,
    })
}

/// What [`subset_idx`] wrote.
#[derive(Debug)]
pub struct SubsetReport {
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
            return Err(Error::Other(format!(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write_set(dir: &Path, split: Split, n: usize, n_labels: usize) {
        let (img, lbl) = idx_file_names(split);
        let images = IdxImages {
            count: n,
            rows: 28,
            cols: 28,
            pixels: vec![0; n * 784],
        };
        idx::write_gz(&dir.join(format!("{img}.gz")), &idx::encode_images(&images)).unwrap();
        std::fs::write(dir.join(lbl), idx::encode_labels(&vec![3; n_labels])).unwrap();
    }

    #[test]
    fn dataset_names_and_folders() {
        assert_eq!(DatasetKind::from_name("mnist").unwrap(), DatasetKind::Mnist);
        assert_eq!(
            DatasetKind::from_name("fashion-mnist").unwrap().folder(),
            "fashion-mnist"
        );
        let msg = DatasetKind::from_name("cifar10").unwrap_err().to_string();
        assert!(
            msg.contains("cifar10") && msg.contains("mnist, fashion_mnist"),
            "{msg}"
        );
    }

    #[test]
    fn loads_gz_and_plain_and_reports_count_mismatch_and_missing_folder() {
        let root = std::env::temp_dir().join(format!("lit-data-test-{}", std::process::id()));
        let dir = root.join("mnist");
        std::fs::create_dir_all(&dir).unwrap();
        write_set(&dir, Split::Train, 5, 5);
        write_set(&dir, Split::Test, 4, 3);
        let train = load_idx_split(&root, DatasetKind::Mnist, Split::Train).unwrap();
        assert_eq!((train.len(), train.feature_len()), (5, 784));
        let msg = load_idx_split(&root, DatasetKind::Mnist, Split::Test)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("count mismatch") && msg.contains("3 labels") && msg.contains("4 images"),
            "{msg}"
        );
        let msg = load_idx_split(&root, DatasetKind::FashionMnist, Split::Train)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("fashion-mnist") && msg.contains("not found"),
            "{msg}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
