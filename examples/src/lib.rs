//! Holds the examples; see `minimal.rs` and `submit.rs`.
