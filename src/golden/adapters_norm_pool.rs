//! Golden op adapters for batchnorm, pooling, k-max, option-A shortcut, embedding.

#[allow(unused_imports)]
use super::{outputs, Case, OpArgs, OpTable};

pub fn register(_t: &mut OpTable) {}
