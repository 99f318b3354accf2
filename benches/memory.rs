//! Memory benchmarks (being written).

fn main() {}
