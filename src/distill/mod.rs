//! Distillation methods that are more than a loss: Polino et al.'s quantized distillation
//! ([`quantize`]) and the packed low-bit export of its students ([`export`]). The KD losses
//! themselves are ops (`ops::kd`).

pub mod export;
pub mod quantize;
