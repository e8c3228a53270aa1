//! Models built from a name string (being implemented).
