//! Training: optimizer, the trainer loop, checkpoints, TensorBoard event files, the final report.

pub mod checkpoint;
pub mod optim;
pub mod report;
pub mod tensorboard;
pub mod trainer;
