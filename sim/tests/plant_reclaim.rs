//! A bug planted on purpose must be caught: reclamation that deletes a
//! segment still holding a pending recipient (`baton_spool::plant`). Its
//! own test binary: the switch is global to the process.

use std::sync::atomic::Ordering;

use baton_sim::{run, Params};

/// The plant must be caught within this many seeds.
const SEEDS_MAX: u64 = 20;

#[test]
fn reclaiming_a_segment_with_a_pending_recipient_is_caught() {
    baton_spool::plant::RECLAIM_PENDING.store(true, Ordering::Relaxed);
    let caught = (1..=SEEDS_MAX).find_map(|seed| run(&Params::scenario(seed)).err());
    baton_spool::plant::RECLAIM_PENDING.store(false, Ordering::Relaxed);
    let failure = caught.expect("the planted reclamation bug went unnoticed");
    eprintln!("caught at seed {:#x}: {}", failure.seed, failure.invariant);
    assert!(
        failure.invariant.contains("reclamation took message")
            || failure.invariant.contains("lost"),
        "{failure}"
    );
}
