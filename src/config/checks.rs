//! Range checks of config values. Each error message starts with the value's key path
//! (`sequence.kd.temperature must be …`), which [`Config::locate`](super::Config::locate) turns
//! into a file line.

use crate::error::{Error, Result};

/// The error `<key> <msg>`.
pub(super) fn bad(key: &str, msg: impl Into<String>) -> Result<()> {
    Err(Error::Config(format!("{key} {}", msg.into())))
}

/// `v`, when given, is finite and > 0.
pub(super) fn positive(key: &str, v: Option<f64>) -> Result<()> {
    match v {
        Some(v) if !(v.is_finite() && v > 0.0) => {
            bad(key, format!("must be a finite number > 0 (got {v})"))
        }
        _ => Ok(()),
    }
}

/// `v`, when given, is in [0, 1].
pub(super) fn unit(key: &str, v: Option<f64>) -> Result<()> {
    match v {
        Some(v) if !(0.0..=1.0).contains(&v) => bad(key, format!("must be in [0, 1] (got {v})")),
        _ => Ok(()),
    }
}

/// `v`, when given, is a momentum: finite and in [0, 1).
pub(super) fn momentum(key: &str, v: Option<f64>) -> Result<()> {
    match v {
        Some(m) if !(m.is_finite() && (0.0..1.0).contains(&m)) => {
            bad(key, format!("must be in [0, 1) (got {m})"))
        }
        _ => Ok(()),
    }
}

/// `v`, when given, is a weight decay: finite and >= 0.
pub(super) fn weight_decay(key: &str, v: Option<f64>) -> Result<()> {
    match v {
        Some(w) if !(w.is_finite() && w >= 0.0) => bad(key, format!("must be >= 0 (got {w})")),
        _ => Ok(()),
    }
}

/// `b`, when given, is a bit width in 1..=16.
pub(super) fn bits(key: &str, b: Option<u32>) -> Result<()> {
    match b {
        Some(b) if !(1..=16).contains(&b) => bad(key, format!("must be in 1..=16 (got {b})")),
        _ => Ok(()),
    }
}

/// `v`, when given, is not 0 (`what` follows "must be > 0", e.g. " when given").
pub(super) fn nonzero(key: &str, v: Option<usize>, what: &str) -> Result<()> {
    match v {
        Some(0) => bad(key, format!("must be > 0{what} (got 0)")),
        _ => Ok(()),
    }
}
