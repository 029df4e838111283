//! A bug planted on purpose must be caught: baton's SMTP client takes a
//! recipient's `250` to RCPT for its delivery (`baton_spool::plant`, read
//! by `baton::outbound`), so the outcome `delivered` is recorded before
//! the delivery it records, the `250` to the end of data, which a next hop
//! that answers `451` there, or drops the connection, never gives. Its own
//! test binary: the switch is global to the process.

use std::sync::atomic::Ordering;

use baton_sim::{run, Params};

/// The plant must be caught within this many seeds.
const SEEDS_MAX: u64 = 20;

#[test]
fn an_outcome_recorded_before_its_delivery_is_caught() {
    baton_spool::plant::DELIVERED_AT_RCPT.store(true, Ordering::Relaxed);
    let caught = (1..=SEEDS_MAX).find_map(|seed| run(&Params::scenario(seed)).err());
    baton_spool::plant::DELIVERED_AT_RCPT.store(false, Ordering::Relaxed);
    let failure = caught.expect("the planted early outcome went unnoticed");
    eprintln!("caught at seed {:#x}: {}", failure.seed, failure.invariant);
    assert!(
        failure
            .invariant
            .contains("recorded delivered, but the next hop never took it"),
        "{failure}"
    );
}
