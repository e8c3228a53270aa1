//! Training: optimizer, learning-rate schedules, the experiment runner, checkpoints.

pub mod checkpoint;
pub mod optim;
pub mod schedule;
pub mod trainer;
