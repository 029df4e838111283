//! A bounded number of seeds of the simulator's scenario (1,000 messages
//! a simulated second, power cuts, crashes, failed datasyncs, next hops
//! that defer, refuse and go down): every invariant holds. A failure
//! prints the seed and its history; `baton-sim --seed S` replays it.

use baton_sim::{run, Params};

/// Seeds per run of `cargo test`: a few seconds in a debug build. The
/// soak is `baton-sim --seeds N` or `--hours H` on a release build.
const SEEDS: u64 = 6;

#[test]
fn torn_power_cuts_keep_every_promise() {
    for seed in 1..=SEEDS {
        if let Err(failure) = run(&Params::scenario(seed)) {
            panic!("{failure}");
        }
    }
}

#[test]
fn power_cuts_that_reorder_writes_keep_every_promise() {
    for seed in 1_000..1_000 + SEEDS / 2 {
        let params = Params {
            reorder: true,
            ..Params::scenario(seed)
        };
        if let Err(failure) = run(&params) {
            panic!("{failure}");
        }
    }
}

/// Frequent power cuts that lose sectors anywhere in what was not synced:
/// before a notification's outcomes waited for its datasync, seed 2
/// loses a notification (its failed outcome on disk, the notification
/// before it not: `1248: a recipient failed and every one is final, but
/// the sender got no notification`).
#[test]
fn reordered_power_cuts_lose_no_notification() {
    for seed in 1..=4 {
        let params = Params {
            reorder: true,
            power_cut_per_10k: 300,
            sim_seconds: 5,
            ..Params::scenario(seed)
        };
        if let Err(failure) = run(&params) {
            panic!("{failure}");
        }
    }
}

/// A spool past `size_bytes_max` (outcomes and notifications are never
/// refused), a power cut, and a bit flipped in a sealed segment: recovery
/// must copy the damaged segment's good frames forward, and refused to,
/// the spool being full, so baton could not start. (With compaction's
/// copies refusable again, this seed fails at 17.1 s: `recovery failed:
/// spool is full`; the first seed that does in today's scenario, which
/// the seeds are searched again for whenever it changes.)
#[test]
fn a_full_spool_recovers_a_damaged_segment() {
    let params = Params {
        reorder: true,
        ..Params::scenario(0xca)
    };
    if let Err(failure) = run(&params) {
        panic!("{failure}");
    }
}

/// Seed 1 fills the spool to its limit while recipients fail: when a full
/// spool refused notifications, it failed with `append a notification
/// about 4820: spool is full`.
#[test]
fn a_full_spool_takes_every_notification() {
    if let Err(failure) = run(&Params::scenario(1)) {
        panic!("{failure}");
    }
}

/// Thirty seconds of traffic keep the spool full: outcomes take segments
/// past `size_bytes_max`, and new mail filled each one, until the spool
/// took half as much again as its limit (seed 1, at 29 s: `the spool's
/// segments take 45088768 bytes, over its bound of 44040192`), and
/// twice its limit by 32 s when the limit was 24 segments.
#[test]
fn a_full_spool_stays_near_its_limit() {
    let params = Params {
        sim_seconds: 30,
        ..Params::scenario(1)
    };
    if let Err(failure) = run(&params) {
        panic!("{failure}");
    }
}

/// Next hops answer `450 4.7.28` now and then: the shaping rule suspends
/// the site, and connections already open to it went on taking its mail.
/// (Without the fix in `Queues::take_in_site`, seed 1 fails: `a
/// transaction for d0.test at site s0 from source new, suspended by a
/// 4.7.28 until 2121 ms`.)
#[test]
fn a_suspended_site_takes_no_more_mail() {
    if let Err(failure) = run(&Params::scenario(1)) {
        panic!("{failure}");
    }
}

/// A site whose connections from a source failed (one of its next hops
/// down) pauses from that source, and its other next hops answer `4.7.28`
/// now and then: a suspension shorter than the pause in force was dropped,
/// and the lane's open connections went on taking the site's mail (with
/// `suspend_lane` as it was, seed 1 fails: `a transaction for d3.test at
/// site s0 from source warm, suspended by a 4.7.28 until 13752 ms`).
#[test]
fn a_suspension_inside_a_pause_takes_no_more_mail() {
    if let Err(failure) = run(&Params::scenario(1)) {
        panic!("{failure}");
    }
}

/// The power also goes in the middle of reclamations and recoveries,
/// among their renames, removals and directory syncs, and takes back the
/// changes to names not yet synced: every promise still holds, and the
/// seeds do meet such cuts (the counts would stay at zero if the
/// simulated directory were bypassed).
#[test]
fn power_cuts_inside_reclamation_and_recovery_keep_every_promise() {
    // Seed 2 meets four such cuts, three of which take a name back.
    let report = run(&Params::scenario(2)).unwrap_or_else(|failure| panic!("{failure}"));
    assert!(
        report.power_cuts_in_calls > 0,
        "no power cut fell inside a call"
    );
    assert!(
        report.name_changes_lost > 0,
        "no power cut took back a change to a name"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let first = run(&Params::scenario(42)).expect("seed 42");
    let again = run(&Params::scenario(42)).expect("seed 42 again");
    assert_eq!(format!("{first:?}"), format!("{again:?}"));
}
