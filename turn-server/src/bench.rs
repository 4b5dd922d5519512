//! `turn-server bench`: relay throughput and added latency, side by side with coturn.

/// Benchmark options.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {}

pub(crate) fn run(_args: &BenchArgs) -> Result<(), String> {
    Err("the benchmark is not written yet".into())
}
