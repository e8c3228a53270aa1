//! Layers with parameters. The parameter store they live in is [`crate::params`], re-exported
//! here (it sits below the tape, which reads parameters from it).

pub mod activation;
pub mod batchnorm;
pub mod conv;
pub mod embedding;
pub mod global_attention;
pub mod init;
pub mod linear;
pub mod lstm;
pub mod transformer;

pub use crate::params::{EntryKind, Param, ParamStore};
