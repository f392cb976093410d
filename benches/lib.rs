//! Benchmarks live in `benches/`; run `cargo bench -p ringleader-benches`.
