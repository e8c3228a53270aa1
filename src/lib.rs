//! lit-engine: model compression by distillation on its own GPU compute engine.
//!
//! Layers, bottom up: [`device`] (cpu | cuda | emu, buffers, kernel launches) → [`tensor`] →
//! [`ops`] (one module per op: CPU reference + kernel launch + backward) → [`params`] (the parameter
//! store) → [`autograd`] (the tape) → [`nn`] (layers) → [`models`] → [`train`], [`data`], [`config`].

pub mod autograd;
pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod distill;
pub mod durable;
pub mod error;
pub mod golden;
pub mod limits;
pub mod models;
pub mod nn;
pub mod ops;
pub mod params;
pub mod rng;
pub mod tensor;
pub mod testing;
pub mod train;

pub use autograd::{Graph, Var};
pub use device::Device;
pub use error::{Error, Result};
pub use tensor::{IndexTensor, Tensor};
