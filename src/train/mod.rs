//! Training: optimizer, the trainer loop, checkpoints.

pub mod optim;
