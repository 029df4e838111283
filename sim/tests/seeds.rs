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
/// before a notification's outcomes waited for its datasync, seeds 1 and 3
/// lost a notification (its failed outcome on disk, the notification
/// before it not).
#[test]
fn reordered_power_cuts_lose_no_notification() {
    for seed in 1..=3 {
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
/// copies refusable again, this seed fails at 19 s: `recovery failed:
/// spool is full`. Seed `0x13` caught it before the spool refused new
/// mail outright past its limit; now the first seed that catches it is
/// `0x82`.)
#[test]
fn a_full_spool_recovers_a_damaged_segment() {
    let params = Params {
        reorder: true,
        ..Params::scenario(0x82)
    };
    if let Err(failure) = run(&params) {
        panic!("{failure}");
    }
}

/// Seed 7 fills the spool to its limit while recipients fail: when a full
/// spool refused notifications, it failed with `append a notification
/// about ...: spool is full`.
#[test]
fn a_full_spool_takes_every_notification() {
    if let Err(failure) = run(&Params::scenario(7)) {
        panic!("{failure}");
    }
}

/// Thirty seconds of traffic keep the spool full: outcomes take segments
/// past `size_bytes_max`, and new mail filled each one, until the spool
/// took half as much again as its limit by 27 s (seed 1: `the spool's
/// segments take 44623080 bytes, over its bound of 44040192`), and
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
/// transaction for d5.test at site s2, suspended by a 4.7.28`.)
#[test]
fn a_suspended_site_takes_no_more_mail() {
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
    let (mut in_calls, mut names_lost) = (0, 0);
    for seed in 3..=4 {
        match run(&Params::scenario(seed)) {
            Ok(report) => {
                in_calls += report.power_cuts_in_calls;
                names_lost += report.name_changes_lost;
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    assert!(in_calls > 0, "no power cut fell inside a call");
    assert!(names_lost > 0, "no power cut took back a change to a name");
}

#[test]
fn a_seed_replays_exactly() {
    let first = run(&Params::scenario(42)).expect("seed 42");
    let again = run(&Params::scenario(42)).expect("seed 42 again");
    assert_eq!(format!("{first:?}"), format!("{again:?}"));
}
