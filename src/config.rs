//! The YAML config schema (being implemented).
