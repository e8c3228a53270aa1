//! The idx format of MNIST and Fashion-MNIST: a big-endian u32 magic (`0x0803` images, `0x0801`
//! labels), big-endian u32 dimensions, then the u8 payload. Files may be gzip'd (detected by the gzip
//! magic bytes, not by the name) or plain.

use crate::error::{Error, Result};
use crate::limits;
use std::io::Write;
use std::path::Path;

/// Magic number of an idx image file (u8 data, 3 dimensions).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an idx label file (u8 data, 1 dimension).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A stack of `count` images of `rows × cols` u8 pixels, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows of each image.
    pub rows: usize,
    /// Columns of each image.
    pub cols: usize,
    /// `count × rows × cols` bytes, image after image.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// Bytes of one image (`rows × cols`).
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// The first `n` images (all of them when `n >= count`).
    pub fn first(&self, n: usize) -> IdxImages {
        let n = n.min(self.count);
        IdxImages {
            count: n,
            rows: self.rows,
            cols: self.cols,
            pixels: self.pixels[..n * self.image_len()].to_vec(),
        }
    }
}

/// The whole file, decompressed when it starts with the gzip magic.
pub fn read_file_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = limits::read_file_at_most(path, limits::MAX_DATA_FILE_BYTES, "idx file")?;
    if raw.len() >= 2 && raw[..2] == GZIP_MAGIC {
        // A small gzip stream can inflate to any size: stop at the limit.
        limits::read_at_most(
            path,
            flate2::read::GzDecoder::new(&raw[..]),
            limits::MAX_DATA_FILE_BYTES,
            "decompressed gzip stream",
        )
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Checks the header (magic and `ndims` dimensions) and the payload length; returns the dimensions.
fn parse_header(path: &Path, bytes: &[u8], magic: u32, what: &str) -> Result<Vec<usize>> {
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    if bytes.len() < 4 {
        return Err(Error::data(
            path,
            format!(
                "truncated: {} bytes, not even an idx magic number",
                bytes.len()
            ),
        ));
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(Error::data(
            path,
            format!("bad magic 0x{found:08x}: expected 0x{magic:08x} (an idx {what} file)"),
        ));
    }
    if bytes.len() < header_len {
        return Err(Error::data(
            path,
            format!(
                "truncated header: {} bytes, an idx {what} header has {header_len}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| be_u32(bytes, 4 + 4 * i) as usize)
        .collect();
    let payload = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::data(path, format!("dimensions {dims:?} overflow")))?;
    let found = bytes.len() - header_len;
    if found < payload {
        return Err(Error::data(
            path,
            format!("truncated: dimensions {dims:?} need {payload} bytes of data, found {found}"),
        ));
    }
    if found > payload {
        return Err(Error::data(
            path,
            format!(
                "{} unexpected trailing bytes after the {payload} bytes of data",
                found - payload
            ),
        ));
    }
    Ok(dims)
}

/// Parse an idx image file held in memory (gzip already removed); `path` names it in errors.
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<IdxImages> {
    let dims = parse_header(path, bytes, IMAGES_MAGIC, "images")?;
    Ok(IdxImages {
        count: dims[0],
        rows: dims[1],
        cols: dims[2],
        pixels: bytes[16..].to_vec(),
    })
}

/// Parse an idx label file held in memory (gzip already removed); `path` names it in errors.
pub fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    parse_header(path, bytes, LABELS_MAGIC, "labels")?;
    Ok(bytes[8..].to_vec())
}

/// Read an idx image file, gzip'd or plain, within the size limits.
pub fn read_images(path: &Path) -> Result<IdxImages> {
    parse_images(path, &read_file_bytes(path)?)
}

/// Read an idx label file, gzip'd or plain, within the size limits.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    parse_labels(path, &read_file_bytes(path)?)
}

/// The bytes of an idx image file (uncompressed) holding `images`.
pub fn encode_images(images: &IdxImages) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + images.pixels.len());
    for v in [
        IMAGES_MAGIC,
        images.count as u32,
        images.rows as u32,
        images.cols as u32,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&images.pixels);
    out
}

/// The bytes of an idx label file (uncompressed) holding `labels`.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// Gzip `bytes` into `path` at level 9 with no file name and mtime 0, so the output is reproducible.
pub fn write_gz(path: &Path, bytes: &[u8]) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(file, flate2::Compression::best());
    enc.write_all(bytes).map_err(|e| Error::io(path, e))?;
    enc.finish()
        .map_err(|e| Error::io(path, e))?
        .sync_all()
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_images() -> IdxImages {
        IdxImages {
            count: 3,
            rows: 2,
            cols: 2,
            pixels: (0..12).collect(),
        }
    }

    #[test]
    fn images_and_labels_round_trip_through_encode_and_parse() {
        let p = Path::new("mem.idx");
        let imgs = tiny_images();
        assert_eq!(parse_images(p, &encode_images(&imgs)).unwrap(), imgs);
        assert_eq!(
            parse_labels(p, &encode_labels(&[7, 0, 9])).unwrap(),
            vec![7, 0, 9]
        );
    }

    #[test]
    fn bad_magic_names_the_file_and_the_expected_magic() {
        let p = Path::new("some/labels.idx");
        let msg = parse_images(p, &encode_labels(&[1, 2]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("some/labels.idx"), "{msg}");
        assert!(
            msg.contains("bad magic 0x00000801") && msg.contains("0x00000803"),
            "{msg}"
        );
    }

    #[test]
    fn truncated_payload_and_header_are_reported() {
        let p = Path::new("x.idx");
        let mut bytes = encode_images(&tiny_images());
        bytes.pop();
        let msg = parse_images(p, &bytes).unwrap_err().to_string();
        assert!(
            msg.contains("truncated") && msg.contains("need 12 bytes") && msg.contains("found 11"),
            "{msg}"
        );
        let msg = parse_images(p, &bytes[..10]).unwrap_err().to_string();
        assert!(msg.contains("truncated header"), "{msg}");
        let msg = parse_labels(p, &[0, 0]).unwrap_err().to_string();
        assert!(msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn gzip_and_plain_files_read_the_same_and_corrupt_gzip_is_an_error() {
        let dir = std::env::temp_dir().join(format!("lit-idx-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let imgs = tiny_images();
        let plain = dir.join("imgs.idx");
        let gz = dir.join("imgs.idx.gz");
        std::fs::write(&plain, encode_images(&imgs)).unwrap();
        write_gz(&gz, &encode_images(&imgs)).unwrap();
        assert_eq!(read_images(&plain).unwrap(), imgs);
        assert_eq!(read_images(&gz).unwrap(), imgs);

        let mut broken = std::fs::read(&gz).unwrap();
        broken.truncate(broken.len() / 2);
        std::fs::write(&gz, &broken).unwrap();
        let msg = read_images(&gz).unwrap_err().to_string();
        assert!(msg.contains("imgs.idx.gz") && msg.contains("gzip"), "{msg}");

        let msg = read_images(&dir.join("missing.idx"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("missing.idx"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
