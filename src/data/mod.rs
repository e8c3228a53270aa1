//! Data sets (being implemented).
