//! `loadgen bench`: one scenario, one table: the direct path (send → sink,
//! the machine's limit) and the same load through a relay under test
//! (send → relay → sink).
//!
//! Not built yet: this is where it goes. The pieces it needs are in place:
//! [`crate::sink::run`] and [`crate::send::run`] return their summaries as
//! values, and the sink's `--verify` reads `send`'s report for loss and
//! duplicates. The plan: start a sink on a free loopback port, run `send`
//! against it (direct), start the relay configured to relay everything to
//! the sink, run `send` against the relay, verify both, and print
//! messages/s, p50/p99 end to end, lost and duplicated, and the ratio of
//! each relay to the direct path; write the same as JSON under
//! `bench/results/`.

/// `loadgen bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {}

/// Says what is missing, for now.
pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "loadgen bench is not built yet; run `loadgen sink` and `loadgen send` \
         by hand (see loadgen/README.md)"
    )
}
