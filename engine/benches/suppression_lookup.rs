//! Suppression list lookups with 10 million entries: what one `RCPT`
//! costs a shard. Not criterion: the figure that matters is the tail of
//! single lookups (p99), which criterion's means hide, so each lookup is
//! timed on its own into a histogram.
//!
//! ```sh
//! cargo bench -p baton --bench suppression_lookup            # 10,000,000 entries
//! SUPPRESSION_ENTRIES=1000000 cargo bench -p baton --bench suppression_lookup
//! ```
//!
//! The database goes in `target/bench-suppression/` (the disk, not a
//! tmpfs) and is removed at the end. See bench/README.md for results.

use std::path::PathBuf;
use std::time::Instant;

use baton::policy::suppression::{Entry, Source, SuppressionList};
use hdrhistogram::Histogram;

// As the baton binary: allocation costs are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LOOKUPS: u64 = 1_000_000;
const DOMAINS: u64 = 10_000;

fn address(i: u64) -> String {
    format!(
        "user{i}.{}@domain{}.example",
        i.wrapping_mul(2654435761) % 9973,
        i % DOMAINS
    )
}

/// xorshift64*: a reproducible spread of indexes, so lookups jump all over
/// the B-tree instead of walking it in order.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn main() {
    let entries: u64 = std::env::var("SUPPRESSION_ENTRIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000_000);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-suppression");
    std::fs::create_dir_all(&dir).unwrap();
    // SUPPRESSION_KEEP=1 leaves the filled file in place, for an end-to-end
    // run with a full list (`[suppression] path`).
    let keep = std::env::var_os("SUPPRESSION_KEEP").is_some();
    let path = dir.join("suppression.redb");
    let _ = std::fs::remove_file(&path);
    let list = SuppressionList::open(&path, Box::new(|_, _, _| {})).unwrap();

    let started = Instant::now();
    let chunk = 100_000;
    for start in (0..entries).step_by(chunk as usize) {
        let batch = (start..(start + chunk).min(entries))
            .map(|i| {
                // Every tenth entry is scoped to a sender domain: lookups
                // must skip it for other senders.
                let scope = if i % 10 == 0 {
                    "domain:shop.example"
                } else {
                    "global"
                };
                Entry::new(
                    &address(i),
                    scope,
                    "550 5.1.1 no such user",
                    1_700_000_000_000 + i,
                    Source::Import,
                )
                .unwrap()
            })
            .collect();
        list.add(batch).unwrap();
    }
    let filled = started.elapsed();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "filled {entries} entries in {:.1} s ({:.0} MiB on disk)",
        filled.as_secs_f64(),
        bytes as f64 / (1 << 20) as f64
    );

    // The writer builds the filter in front of redb at open and rebuilds
    // it as the list grows; lookups below go through it.
    assert!(list.filter_built(), "the suppression filter was not built");
    let mut reader = list.reader();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for (label, listed) in [("listed", true), ("not listed", false)] {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).unwrap();
        let mut found = 0u64;
        // Warm-up: the pages a lookup touches come into the page cache
        // and redb's cache, as they would on a running server.
        for pass in 0..2 {
            for _ in 0..LOOKUPS {
                let i = next(&mut state) % entries;
                let rcpt = if listed {
                    address(i)
                } else {
                    address(i + entries)
                };
                let t = Instant::now();
                let hit = reader.lookup(rcpt.as_bytes(), b"sender.example", None);
                let ns = t.elapsed().as_nanos() as u64;
                if pass == 1 {
                    histogram.saturating_record(ns.max(1));
                    found += hit.is_some() as u64;
                }
            }
        }
        println!(
            "{label:>10}: {LOOKUPS} lookups, {found} suppressed; p50 {:.2} µs, p99 {:.2} µs, \
             p99.9 {:.2} µs, max {:.1} µs",
            histogram.value_at_quantile(0.50) as f64 / 1000.0,
            histogram.value_at_quantile(0.99) as f64 / 1000.0,
            histogram.value_at_quantile(0.999) as f64 / 1000.0,
            histogram.max() as f64 / 1000.0,
        );
    }

    // The first lookup after a commit opens a new read snapshot.
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).unwrap();
    for k in 0..200u64 {
        let entry = Entry::new(
            &format!("new{k}@x.example"),
            "global",
            "",
            0,
            Source::Operator,
        )
        .unwrap();
        list.add(vec![entry]).unwrap();
        let rcpt = address(next(&mut state) % entries);
        let t = Instant::now();
        reader.lookup(rcpt.as_bytes(), b"sender.example", None);
        histogram.saturating_record((t.elapsed().as_nanos() as u64).max(1));
    }
    println!(
        "after a commit (new snapshot): p50 {:.2} µs, p99 {:.2} µs over 200",
        histogram.value_at_quantile(0.50) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
    );
    drop(reader);
    drop(list);
    if !keep {
        let _ = std::fs::remove_file(&path);
    }
}
