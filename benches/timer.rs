//! Timer benchmarks (being written).

fn main() {}
