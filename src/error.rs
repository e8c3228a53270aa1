//! Errors as values, each carrying enough context to tell the user what to do.

use std::path::PathBuf;

/// Every failure of the library, by kind; the message says what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device could not be opened or used (no GPU, missing driver/NVRTC, emulator failure…).
    #[error("device error: {0}")]
    Device(String),
    /// A kernel failed to compile (the message carries the NVRTC log and the kernel file name).
    #[error("kernel compile error in {file}: {log}")]
    KernelCompile {
        /// The kernel file.
        file: String,
        /// NVRTC's (or the host compiler's) log.
        log: String,
    },
    /// A kernel launch failed (CUDA error, emulator deadlock, unknown kernel…).
    #[error("kernel launch error in `{kernel}`: {msg}")]
    Launch {
        /// The kernel's name.
        kernel: String,
        /// What failed.
        msg: String,
    },
    /// Tensor shapes that do not fit the operation.
    #[error("shape error: {0}")]
    Shape(String),
    /// An op or layer called with arguments it cannot take: a mistake in the calling code (or in
    /// what the code derived from the data), not in the YAML config.
    #[error("invalid arguments to {op}: {msg}")]
    OpArg {
        /// The op or layer constructor (`lma`, `batch_norm`, `Linear::new`, …).
        op: String,
        /// What was wrong with the arguments (the values, the shapes).
        msg: String,
    },
    /// A bad or inconsistent configuration value.
    #[error("config error: {0}")]
    Config(String),
    /// Malformed data file (wrong magic, truncated, …).
    #[error("data error in {path}: {msg}")]
    Data {
        /// The file (or folder) at fault.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// I/O error with the path that caused it.
    #[error("{path}: {source}")]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// The operating system's error.
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
    Interrupted {
        /// The signal number.
        signal: i32,
        /// What was saved and how to resume.
        message: String,
    },
    /// A golden case that is malformed or asks for something this engine does not implement.
    #[error("{0}")]
    Golden(String),
    /// A parameter store used wrongly: a name registered twice, or one that is not there.
    #[error("parameter error: {0}")]
    Param(String),
    /// A dataset whose contents do not fit what is asked of it (labels, sizes, a format's limits).
    #[error("dataset error: {0}")]
    Dataset(String),
    /// A value that could not be encoded for a file (JSON of the resume state, metrics, config).
    #[error("cannot encode {0}")]
    Encode(String),
    /// An external program the command runs (the PyTorch benchmark script) failed.
    #[error("{0}")]
    External(String),
    /// A bug in lit-engine (a worker thread panicked, …); please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// Arguments that `op` cannot take.
    pub fn op_arg(op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::OpArg {
            op: op.into(),
            msg: msg.into(),
        }
    }
    /// A data error in the file `path`.
    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// The error and its causes on one line, without repeating a cause the message already
    /// contains (the command line's `error: …`, a failed trial's record).
    pub fn one_line(&self) -> String {
        let mut msg = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let text = s.to_string();
            if !msg.contains(&text) {
                msg += &format!(": {text}");
            }
            source = s.source();
        }
        msg.replace('\n', " ")
    }
}

/// `bail_shape!("linear: x is {:?}", shape)` returns a shape error.
#[macro_export]
macro_rules! shape_err {
    ($($arg:tt)*) => { return Err($crate::error::Error::Shape(format!($($arg)*))) };
}
