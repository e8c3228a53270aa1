//! Training: optimizer, learning-rate schedules, the experiment runner, checkpoints,
//! TensorBoard event files, the final report.

pub mod checkpoint;
pub mod guards;
pub mod interrupt;
pub mod metrics_log;
pub mod optim;
pub mod report;
pub mod resume;
pub mod run_state;
pub mod schedule;
pub mod tensorboard;
pub mod trainer;
