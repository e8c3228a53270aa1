//! Training: the experiment runner behind `lit-engine train` ([`trainer`], [`Trainer`]), its
//! plan of steps, the epoch loop, checkpoints and the resumable run state, learning-rate
//! schedules, metrics and TensorBoard event files, the final report.
//!
//! Layering: `train` is the loop and sits above `distill` (the methods, one training step per
//! batch, built from a stage by `distill::method`). `train` imports `distill`; `distill` never
//! imports `train`. Below both: the optimizer ([`crate::optim`]), the checkpoint format
//! ([`crate::checkpoint`]) and durable writes ([`crate::durable`]).

mod checkpointer;
mod context;
mod epochs;
pub mod evaluate;
mod graphed_steps;
pub mod guards;
pub mod interrupt;
pub mod metrics_log;
pub mod plan;
pub mod progress;
mod ptq;
pub mod report;
pub mod resume;
pub mod run_state;
pub mod schedule;
pub mod setup;
pub mod step_graph;
pub mod summary;
mod teacher;
pub mod tensorboard;
pub mod trainer;

/// The checkpoint format lives below `train` (distillation and `models::info` use it too);
/// re-exported at its former path.
pub use crate::checkpoint;
/// The optimizer lives below `train` (the distillation methods step it); re-exported at its
/// former path.
pub use crate::optim;
pub use trainer::{run, run_with, RunOptions, RunSummary, Trainer};
