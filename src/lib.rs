//! lit-engine: model compression by distillation on its own GPU compute engine.
//!
//! Layers, bottom up: [`device`] (cpu | cuda | emu, buffers, kernel launches) → [`tensor`] →
//! [`ops`] (one module per op: CPU reference + kernel launch + backward) → [`autograd`] (the tape) →
//! [`nn`] (layers, parameter store) → [`optim`], [`checkpoint`] (below both of the next two) →
//! [`distill`] (the methods, one training step each) → [`train`] (the loop, checkpoints,
//! resume), beside [`data`] and [`config`].

pub mod autograd;
pub mod bench;
pub mod checkpoint;
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
pub mod optim;
pub mod rng;
pub mod tensor;
pub mod testing;
pub mod train;
pub mod units;

pub use autograd::{Graph, Var};
pub use device::Device;
pub use error::{Error, Result};
pub use tensor::{IndexTensor, Tensor};
