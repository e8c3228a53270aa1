//! Distillation methods that are more than a loss: Polino et al.'s quantized distillation
//! ([`quantize`]). The KD losses themselves are ops (`ops::kd`).

pub mod export;
pub mod quantize;
