//! Errors as values, each carrying enough context to tell the user what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device could not be opened or used (no GPU, missing driver/NVRTC, emulator failure…).
    #[error("device error: {0}")]
    Device(String),
    /// A kernel failed to compile (the message carries the NVRTC log and the kernel file name).
    #[error("kernel compile error in {file}: {log}")]
    KernelCompile { file: String, log: String },
    /// A kernel launch failed (CUDA error, emulator deadlock, unknown kernel…).
    #[error("kernel launch error in `{kernel}`: {msg}")]
    Launch { kernel: String, msg: String },
    /// Tensor shapes that do not fit the operation.
    #[error("shape error: {0}")]
    Shape(String),
    /// A bad or inconsistent configuration value.
    #[error("config error: {0}")]
    Config(String),
    /// Malformed data file (wrong magic, truncated, …).
    #[error("data error in {path}: {msg}")]
    Data { path: PathBuf, msg: String },
    /// I/O error with the path that caused it.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Checkpoint problems (missing keys, wrong shapes, corrupt file).
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
    /// Training diverged or a numeric invariant broke.
    #[error("numeric error: {0}")]
    Numeric(String),
    /// The run stopped on a signal (SIGINT, SIGTERM) after saving what it says.
    #[error("{message}")]
    Interrupted { signal: i32, message: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// `bail_shape!("linear: x is {:?}", shape)` returns a shape error.
#[macro_export]
macro_rules! shape_err {
    ($($arg:tt)*) => { return Err($crate::error::Error::Shape(format!($($arg)*))) };
}
