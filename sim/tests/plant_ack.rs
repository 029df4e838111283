//! A bug planted on purpose must be caught: a client's `250` one message
//! before the datasync that covers it (`baton_spool::plant`, in the gate
//! the shard and the simulator share). A power cut then loses a message
//! baton acknowledged, or, since outcomes held for a notification wait in
//! a gate too, a notification whose failed outcome is on disk. Its own
//! test binary: the switch is global.

use std::sync::atomic::Ordering;

use baton_sim::{run, Params};

/// The plant must be caught within this many seeds.
const SEEDS_MAX: u64 = 30;

#[test]
fn a_250_before_the_datasync_is_caught() {
    baton_spool::plant::ACK_BEFORE_SYNC.store(true, Ordering::Relaxed);
    // Frequent power cuts that lose sectors anywhere in what was not
    // synced: the early `250`'s record, the oldest not covered, is then
    // lost as often as any other. (Without the plant these seeds pass:
    // `baton-sim --reorder --power-cuts 300`.)
    let params = |seed| Params {
        reorder: true,
        power_cut_per_10k: 300,
        sim_seconds: 5,
        ..Params::scenario(seed)
    };
    let caught = (1..=SEEDS_MAX).find_map(|seed| run(&params(seed)).err());
    baton_spool::plant::ACK_BEFORE_SYNC.store(false, Ordering::Relaxed);
    let failure = caught.expect("the planted early 250 went unnoticed");
    eprintln!("caught at seed {:#x}: {}", failure.seed, failure.invariant);
    assert!(
        failure.invariant.contains("lost")
            || failure.invariant.contains("queues it again")
            || failure.invariant.contains("got no notification"),
        "{failure}"
    );
}
