//! CDR write throughput of the store (placeholder while the benchmark is written).

fn main() {}
