//! Memory per connection (issue 10): an idle connection holds no receive
//! buffer (receives take one from the shard's buffer ring only when data
//! arrives), so hundreds of idle sessions grow baton's resident memory by
//! a few KiB each, not by the 64 KiB a buffer per connection costs.

use baton_tests::{Baton, Smtp, TestConfig};

/// Idle connections measured; few enough for a default limit of 1024
/// descriptors in the test process, enough to see the cost per connection.
const IDLE_CONNECTIONS: usize = 600;
/// Connections opened (and kept) before the first reading, so allocator
/// and ring warm-up is not counted as per-connection cost.
const WARM_UP_CONNECTIONS: usize = 50;
/// Resident memory allowed per idle connection, KiB. About 3 KiB is
/// measured; a 64 KiB receive buffer per connection would cost 65 or more,
/// so the bound leaves room for noise without letting that back in.
const RSS_PER_CONNECTION_KIB_MAX: u64 = 16;
/// VmRSS readings in a row (one per 20 ms poll) within
/// `SETTLED_SLACK_KIB` of each other that count as settled.
const SETTLED_READINGS: u32 = 10;
/// Movement of VmRSS that still counts as settled (timers allocate and
/// free a little), KiB; small beside the growth measured.
const SETTLED_SLACK_KIB: u64 = 64;

fn idle(baton: &Baton) -> Smtp {
    let mut smtp = baton.connect();
    // A reply read means the session has processed the command: the
    // memory it keeps is in place when VmRSS is read.
    smtp.ehlo("idle.test");
    smtp
}

#[test]
fn idle_connections_hold_no_receive_buffer() {
    let mut baton = Baton::start_with(TestConfig {
        limits: vec!["connections_per_ip_max = 2000".into()],
        // mimalloc commits its arena in steps of megabytes as the heap
        // grows, which over a few hundred connections would swamp the
        // figure per connection; committed on demand, VmRSS follows what
        // is in use.
        env: vec![("MIMALLOC_ARENA_EAGER_COMMIT".into(), "0".into())],
        ..TestConfig::default()
    });
    let mut held: Vec<Smtp> = (0..WARM_UP_CONNECTIONS).map(|_| idle(&baton)).collect();
    // Threads that start with the server (the resolver's runtime, the
    // admin API) are still growing right after startup: read VmRSS once it
    // stays the same for a while.
    let (mut anchor, mut steady) = (0, 0);
    baton.wait_for("VmRSS to settle after startup", |b| {
        let rss = b.rss_kib();
        if rss.abs_diff(anchor) <= SETTLED_SLACK_KIB {
            steady += 1;
        } else {
            (anchor, steady) = (rss, 0);
        }
        steady >= SETTLED_READINGS
    });
    let before = baton.rss_kib();
    held.extend((0..IDLE_CONNECTIONS).map(|_| idle(&baton)));
    let after = baton.rss_kib();
    let per_connection = after.saturating_sub(before) / IDLE_CONNECTIONS as u64;
    assert!(
        per_connection <= RSS_PER_CONNECTION_KIB_MAX,
        "{IDLE_CONNECTIONS} idle connections grew VmRSS from {before} KiB to {after} KiB: \
         {per_connection} KiB each, over {RSS_PER_CONNECTION_KIB_MAX}"
    );
    // Still sessions, and all at once: with baton stopped while every
    // client sends, more receives complete together than a shard's ring
    // has buffers (256), so some find it empty and must be armed again
    // when buffers come back, not lost.
    baton.signal("STOP");
    for smtp in &mut held {
        smtp.send(b"NOOP\r\n");
    }
    baton.signal("CONT");
    for smtp in &mut held {
        smtp.expect(250, "2.0.0");
    }
}
