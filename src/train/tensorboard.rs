//! TensorBoard event files, written by hand: no protobuf or TensorFlow dependency.
//!
//! A file `events.out.tfevents.<unix seconds>.<hostname>` in the log folder holds TFRecords:
//!
//! ```text
//! u64 length (LE) | u32 masked CRC32C of those 8 bytes | data | u32 masked CRC32C of data
//! ```
//!
//! where each `data` is a protobuf `tensorflow.Event`. The first event carries
//! `file_version = "brain.Event:2"`; every later one a `Summary` with one scalar:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; }
//! ```
//!
//! Use: [`EventWriter::create`] once per run, [`EventWriter::scalar`] per metric, and
//! [`EventWriter::flush`] at the end of each epoch (dropping the writer flushes too). [`read_events`]
//! decodes such a file back, checking every CRC (tests and tools).

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

// ---------- CRC32C (Castagnoli), as TFRecord framing needs ----------

/// Reflected form of the Castagnoli polynomial 0x1EDC6F41.
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// Byte-at-a-time lookup table, built at compile time.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ CRC32C_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC32C of `data` (init and final XOR 0xFFFFFFFF; `crc32c(b"123456789") == 0xE3069283`).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: rotate right by 15 and add a constant, so a CRC of data that itself
/// contains CRCs stays well distributed.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

// ---------- protobuf wire format (the few field kinds an Event needs) ----------

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, ((field as u64) << 3) | wire as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The protobuf encoding of one `Event` (file-version event when `file_version` is set, scalar
/// event when `scalar` is).
fn encode_event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalar: Option<(&str, f32)>,
) -> Vec<u8> {
    let mut event = Vec::with_capacity(64);
    put_key(&mut event, 1, WIRE_FIXED64);
    event.extend_from_slice(&wall_time.to_le_bytes());
    // int64 is a plain varint: a negative step takes ten bytes (two's complement), as in protobuf.
    put_key(&mut event, 2, WIRE_VARINT);
    put_varint(&mut event, step as u64);
    if let Some(version) = file_version {
        put_bytes(&mut event, 3, version.as_bytes());
    }
    if let Some((tag, value)) = scalar {
        let mut val = Vec::with_capacity(tag.len() + 8);
        put_bytes(&mut val, 1, tag.as_bytes());
        put_key(&mut val, 2, WIRE_FIXED32);
        val.extend_from_slice(&value.to_le_bytes());
        let mut summary = Vec::with_capacity(val.len() + 4);
        put_bytes(&mut summary, 1, &val);
        put_bytes(&mut event, 5, &summary);
    }
    event
}

/// One TFRecord around `data`.
fn frame_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut rec = Vec::with_capacity(data.len() + 16);
    rec.extend_from_slice(&len);
    rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    rec.extend_from_slice(data);
    rec.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    rec
}

// ---------- writer ----------

/// The version string TensorBoard expects in the first event of a file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Appends scalar summaries to one TensorBoard event file.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// This machine's name, as TensorBoard's own writers put it in the file name (characters that
/// could upset a file system replaced by `_`).
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

impl EventWriter {
    /// Create `logdir` if needed and start a new event file in it. Two writers started in the
    /// same second never share a file: the second gets a `.1` suffix (TensorBoard reads every
    /// file whose name contains `tfevents`).
    pub fn create(logdir: impl AsRef<Path>) -> Result<Self> {
        let logdir = logdir.as_ref();
        loop {
            match Self::create_file(&Self::free_path(logdir)?) {
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                other => return other,
            }
        }
    }

    /// A name for a new event file in `logdir` (created if needed) that no file has yet: TensorBoard's
    /// `events.out.tfevents.<unix seconds>.<hostname>`, with `.1`, `.2`… for more in one second.
    pub fn free_path(logdir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(logdir).map_err(|e| Error::io(logdir, e))?;
        let base = format!(
            "events.out.tfevents.{}.{}",
            now_seconds() as u64,
            hostname()
        );
        (0..1000)
            .map(|n| match n {
                0 => logdir.join(&base),
                n => logdir.join(format!("{base}.{n}")),
            })
            .find(|p| !p.exists())
            .ok_or_else(|| {
                Error::io(
                    logdir,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "no free event file name",
                    ),
                )
            })
    }

    /// Start the event file `path`, which must not exist yet.
    pub fn create_file(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let mut writer = EventWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        };
        writer.write_event(&encode_event(now_seconds(), 0, Some(FILE_VERSION), None))?;
        writer.flush()?;
        Ok(writer)
    }

    /// Replace the event file `path` atomically with one holding `scalars` (`(step, tag,
    /// value)`), then keep appending to it. A resumed run uses this to drop the epochs logged
    /// after its committed state, so no step is shown twice.
    pub fn replace(path: &Path, scalars: &[(i64, String, f32)]) -> Result<Self> {
        let wall_time = now_seconds();
        let mut bytes = frame_record(&encode_event(wall_time, 0, Some(FILE_VERSION), None));
        for (step, tag, value) in scalars {
            bytes.extend(frame_record(&encode_event(
                wall_time,
                *step,
                None,
                Some((tag, *value)),
            )));
        }
        crate::durable::write_atomic(path, &bytes)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(EventWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, data: &[u8]) -> Result<()> {
        self.out
            .write_all(&frame_record(data))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Record `value` for `tag` (e.g. `train/loss`, `test/acc`) at `step` (an epoch or a batch
    /// count). Buffered: call [`flush`](Self::flush) at the end of an epoch.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32) -> Result<()> {
        self.write_event(&encode_event(now_seconds(), step, None, Some((tag, value))))
    }

    /// Push everything written so far to the file, so TensorBoard sees it while the run goes on.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

// ---------- reader (checks the framing; used by tests and tools) ----------

/// One decoded event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Unix time of the event, in seconds.
    pub wall_time: f64,
    /// The global step.
    pub step: i64,
    /// The file-version record's text (first event).
    pub file_version: Option<String>,
    /// `(tag, simple_value)` of each summary value.
    pub scalars: Vec<(String, f32)>,
}

/// A protobuf reader over one message; errors name the event file.
struct Fields<'a> {
    data: &'a [u8],
    pos: usize,
}

enum FieldValue<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.data.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= ((b & 0x7F) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| format!("field of {n} bytes runs past the message"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next_field(&mut self) -> std::result::Result<Option<(u64, FieldValue<'a>)>, String> {
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match (key & 7) as u8 {
            WIRE_VARINT => FieldValue::Varint(self.varint()?),
            WIRE_FIXED64 => FieldValue::Fixed64(self.take(8)?.try_into().expect("8 bytes")),
            WIRE_FIXED32 => FieldValue::Fixed32(self.take(4)?.try_into().expect("4 bytes")),
            WIRE_LEN => {
                let n = self.varint()? as usize;
                FieldValue::Bytes(self.take(n)?)
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn fields(data: &[u8]) -> Fields<'_> {
    Fields { data, pos: 0 }
}

fn decode_value(data: &[u8]) -> std::result::Result<Option<(String, f32)>, String> {
    let (mut tag, mut simple) = (String::new(), None);
    let mut f = fields(data);
    while let Some((field, v)) = f.next_field()? {
        match (field, v) {
            (1, FieldValue::Bytes(b)) => {
                tag = String::from_utf8(b.to_vec()).map_err(|_| "tag is not UTF-8")?
            }
            (2, FieldValue::Fixed32(b)) => simple = Some(f32::from_le_bytes(b)),
            _ => {}
        }
    }
    Ok(simple.map(|v| (tag, v)))
}

/// Decode one `Event` message (unknown fields skipped).
fn decode_event(data: &[u8]) -> std::result::Result<Event, String> {
    let mut event = Event {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        scalars: Vec::new(),
    };
    let mut f = fields(data);
    while let Some((field, v)) = f.next_field()? {
        match (field, v) {
            (1, FieldValue::Fixed64(b)) => event.wall_time = f64::from_le_bytes(b),
            (2, FieldValue::Varint(v)) => event.step = v as i64,
            (3, FieldValue::Bytes(b)) => {
                event.file_version =
                    Some(String::from_utf8(b.to_vec()).map_err(|_| "file_version is not UTF-8")?)
            }
            (5, FieldValue::Bytes(summary)) => {
                let mut s = fields(summary);
                while let Some((field, v)) = s.next_field()? {
                    if let (1, FieldValue::Bytes(value)) = (field, v) {
                        event.scalars.extend(decode_value(value)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(event)
}

/// Every event of an event file, checking the length and data CRC of each record.
pub fn read_events(path: impl AsRef<Path>) -> Result<Vec<Event>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |at: usize, msg: String| {
        Error::data(
            path,
            format!("TFRecord at byte {at}: {msg} (not an intact event file)"),
        )
    };
    let mut events = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let header = bytes
            .get(pos..pos + 12)
            .ok_or_else(|| bad(pos, "truncated header".into()))?;
        let len_bytes: [u8; 8] = header[..8].try_into().expect("8 bytes");
        let len_crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if len_crc != masked_crc32c(&len_bytes) {
            return Err(bad(pos, "length CRC mismatch".into()));
        }
        let len = usize::try_from(u64::from_le_bytes(len_bytes))
            .map_err(|_| bad(pos, "length does not fit in memory".into()))?;
        let start = pos + 12;
        let end = start
            .checked_add(len)
            .filter(|&e| e + 4 <= bytes.len())
            .ok_or_else(|| bad(pos, format!("record of {len} bytes runs past the file")))?;
        let data = &bytes[start..end];
        let data_crc = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
        if data_crc != masked_crc32c(data) {
            return Err(bad(pos, "data CRC mismatch".into()));
        }
        events.push(decode_event(data).map_err(|m| bad(pos, m))?);
        pos = end + 4;
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// iSCSI test vectors (RFC 3720, B.4) and the common check value.
    #[test]
    fn crc32c_known_vectors() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        let descending: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&descending), 0x113F_DB5C);
        assert_eq!(crc32c(b""), 0);
    }

    /// Bytes produced by the official protobuf classes
    /// (`tensorboard.compat.proto.event_pb2.Event(...).SerializeToString()`).
    #[test]
    fn event_encoding_matches_protobuf() {
        let scalar = encode_event(1.5, 3, None, Some(("loss", 0.25)));
        assert_eq!(
            scalar,
            [
                9, 0, 0, 0, 0, 0, 0, 248, 63, 16, 3, 42, 13, 10, 11, 10, 4, 108, 111, 115, 115, 21,
                0, 0, 128, 62
            ]
        );
        let version = encode_event(1.5, -1, Some(FILE_VERSION), None);
        assert_eq!(
            version,
            [
                9, 0, 0, 0, 0, 0, 0, 248, 63, 16, 255, 255, 255, 255, 255, 255, 255, 255, 255, 1,
                26, 13, 98, 114, 97, 105, 110, 46, 69, 118, 101, 110, 116, 58, 50
            ]
        );
        let back = decode_event(&version).unwrap();
        assert_eq!(back.step, -1);
        assert_eq!(back.file_version.as_deref(), Some(FILE_VERSION));
    }

    #[test]
    fn masked_crc_is_rotated_and_offset() {
        let crc = crc32c(b"abc");
        assert_eq!(
            masked_crc32c(b"abc"),
            ((crc >> 15) | (crc << 17)).wrapping_add(0xA282_EAD8)
        );
    }
}
