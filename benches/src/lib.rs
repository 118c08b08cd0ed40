//! Benchmarks for mesh live in `benches/`.
