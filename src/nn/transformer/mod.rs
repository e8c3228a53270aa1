//! Layers of LMA's early-OpenNMT-py Transformer (SPEC-TRANSLATION §5): multi-head attention with
//! its masks (no output projection, post-norm onmt LayerNorm) and the non-standard sinusoidal
//! position encoding. Tensors are batch-major `[B, L, d]` inside the layers.

pub mod attention;
pub mod mask;
pub mod position;
