//! Benchmarks only: see `benches/hot_paths.rs`, `benches/e2e.rs` and BENCHMARKS.md.
