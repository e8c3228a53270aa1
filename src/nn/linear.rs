//! Linear layer (placeholder, being implemented).
