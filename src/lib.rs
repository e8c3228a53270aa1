//! lit-engine: model compression by distillation on its own GPU compute engine.
//!
//! Layers, bottom up: [`device`] (cpu | cuda | emu, buffers, kernel launches) → [`tensor`] →
//! [`ops`] (one module per op: CPU reference + kernel launch + backward) → [`params`] (the
//! parameter store) → [`autograd`] (the tape) → [`nn`] (layers) → [`models`] → [`optim`], [`checkpoint`] (below both of the
//! next two) → [`distill`] (the methods, one training step each) → [`train`] (the runner: epochs,
//! checkpoints, run state, resume) → [`config`]; beside them [`data`], [`golden`],
//! [`bench`](mod@bench), [`kernel_lab`], [`durable`], [`limits`], [`units`], and [`precision`] (the
//! conv / GEMM operand rounding of the fp32, tf32, bf16 and fp16 modes, which the graph carries to
//! the ops). ARCHITECTURE.md in the repository
//! describes each layer and where new ops, kernels, models, methods and data formats go.
//!
//! Cargo features: `cli` (default; the `lit-engine` binary, with `progress` and `images`),
//! `progress` (progress bars), `images` ([`data`]`::images`: image folders and archives). With
//! `default-features = false` the library keeps the engine, every model and method, the idx,
//! CIFAR and CSV readers and the runner. `examples/train_mlp.rs`, `examples/distill.rs` and
//! `examples/time_kernel.rs` show it used from Rust.

#![warn(missing_docs)]

pub mod autograd;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod cpu_time;
pub mod data;
pub mod device;
pub mod distill;
pub mod durable;
pub mod error;
pub mod golden;
pub mod kernel_lab;
pub mod limits;
pub mod models;
pub mod nmt;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod params;
pub mod precision;
pub mod rng;
pub mod sweep;
pub mod tensor;
pub mod testing;
pub mod train;
pub mod units;

pub use autograd::{Graph, Var};
pub use device::Device;
pub use error::{Error, Result};
pub use precision::Precision;
pub use tensor::{IndexTensor, Tensor};
