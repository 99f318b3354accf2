//! Latency benchmarks (being written).

fn main() {}
