//! The spool gives its disk back: a burst queued while the next hop is
//! down fills many segments; once it is delivered, the housekeeper deletes
//! (or keeps as spares, up to `spares_max`) every segment nothing needs
//! any more, and the spool directory shrinks to the few segments a running
//! server keeps: each writer's open segment and the one prepared for it,
//! and the spares.

use std::path::Path;

use baton_tests::delivery::{at, route, send_sized, wait_queue_empty};
use baton_tests::sink::Sink;
use baton_tests::{free_port, Baton, TestConfig, TEST_SEGMENT_BYTES};

const MESSAGES: u64 = 3000;
/// About 24 MiB in all: two dozen of the harness's 1 MiB segments.
const MESSAGE_SIZE: &str = "8KiB";
/// `TestConfig::shards`' default.
const SHARDS: u64 = 2;
/// Segments each spool writer (one per shard) has on disk: the one it
/// appends to, and the next, prepared ahead.
const SEGMENTS_PER_WRITER: u64 = 2;
/// `baton_spool::config::SPARES_MAX_DEFAULT`: deleted segments kept for
/// reuse.
const SPARES_MAX: u64 = 4;
/// `[spool] reserve_segments`' default: spares kept for outcomes on a full
/// disk, on top of `SPARES_MAX`.
const RESERVE_SEGMENTS: u64 = 3;
/// Room for a segment that just filled up and waits for the housekeeper's
/// next pass, and for the compactor's own writer.
const SEGMENTS_SLACK: u64 = 2;

/// The segment files in the spool directory (spares included) and their
/// total size in bytes.
fn spool_segments(dir: &Path) -> (u64, u64) {
    let entries = std::fs::read_dir(dir).expect("spool directory");
    let mut count = 0;
    let mut bytes = 0;
    for entry in entries {
        let entry = entry.expect("spool directory entry");
        if entry.path().extension().is_some_and(|e| e == "seg") {
            count += 1;
            // Gone between listing and stat: deleted by the housekeeper.
            bytes += entry.metadata().map_or(0, |m| m.len());
        }
    }
    (count, bytes)
}

#[test]
fn the_spool_directory_shrinks_back_once_a_burst_is_delivered() {
    // Nothing listens there until the burst is queued.
    let next_hop = at("127.0.0.2", free_port("127.0.0.2"));
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        delivery: vec!["retry_schedule = [\"1h\"]".into()],
        extra_toml: route("*", next_hop),
        ..TestConfig::default()
    });
    let spool = server.dir.path().join("spool");
    let reports = tempfile::tempdir().expect("report directory");
    let count = MESSAGES.to_string();
    let args = ["-n", &count, "-c", "10", "--domains", "reclaim.test"];
    let sent = send_sized(server.smtp, MESSAGE_SIZE, &args, reports.path()).report;
    assert_eq!(sent["messages_accepted"], MESSAGES, "{sent}");
    assert_eq!(server.queued_recipients(), MESSAGES);
    let (peak_count, peak_bytes) = spool_segments(&spool);
    let sent_bytes = sent["bytes_accepted"].as_u64().expect("bytes_accepted");
    assert!(
        peak_bytes >= sent_bytes,
        "{peak_bytes} bytes of segments hold {sent_bytes} bytes of mail"
    );

    let sink = Sink::start_on(next_hop, &[]);
    let (ok, stdout, stderr) = server.cli(&["queue", "flush"]);
    assert!(ok, "baton queue flush: {stdout}{stderr}");
    server.wait_until("every message at the sink", || {
        sink.count() >= MESSAGES as usize
    });
    wait_queue_empty(&mut server);

    let kept_max = SHARDS * SEGMENTS_PER_WRITER + SPARES_MAX + RESERVE_SEGMENTS + SEGMENTS_SLACK;
    let mut now = (peak_count, peak_bytes);
    server.wait_until("the spool directory to shrink", || {
        now = spool_segments(&spool);
        now.0 <= kept_max
    });
    let (count, bytes) = now;
    eprintln!(
        "spool: {peak_count} segments ({peak_bytes} bytes) with the burst queued, \
         {count} ({bytes} bytes) once it was delivered"
    );
    assert!(bytes <= kept_max * TEST_SEGMENT_BYTES, "{bytes} bytes");
    assert!(
        count * 2 <= peak_count,
        "{count} segments left of {peak_count}: not well below the peak"
    );
    let report = sink.stop();
    assert_eq!(report["messages_accepted"], MESSAGES, "{report}");
}
