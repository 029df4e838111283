//! A bug planted on purpose must be caught: the preparer hands a writer a
//! new segment before the directory that names it is synced
//! (`baton_spool::plant`). A power cut then takes the name back (a created
//! segment gone, a recycled one a spare again) with the records the
//! writer put in it: acknowledged messages, or outcomes. Its own test
//! binary: the switch is global.

use std::sync::atomic::Ordering;

use baton_sim::{run, Params};

/// The plant must be caught within this many seeds.
const SEEDS_MAX: u64 = 20;

#[test]
fn a_segment_handed_over_before_its_name_is_durable_is_caught() {
    baton_spool::plant::SEGMENT_NAME_UNSYNCED.store(true, Ordering::Relaxed);
    let caught = (1..=SEEDS_MAX).find_map(|seed| run(&Params::scenario(seed)).err());
    baton_spool::plant::SEGMENT_NAME_UNSYNCED.store(false, Ordering::Relaxed);
    let failure = caught.expect("the planted unsynced segment name went unnoticed");
    eprintln!("caught at seed {:#x}: {}", failure.seed, failure.invariant);
    assert!(
        failure.invariant.contains("lost")
            || failure.invariant.contains("queues it again")
            || failure.invariant.contains("got no notification"),
        "{failure}"
    );
}
