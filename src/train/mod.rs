//! Training: optimizer, the trainer loop, checkpoints.

pub mod checkpoint;
pub mod optim;
pub mod report;
pub mod tensorboard;
pub mod trainer;
