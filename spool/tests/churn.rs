//! Reclamation under churn: hours of traffic on a fake clock. Most
//! recipients are delivered seconds after arrival; a few are deferred again
//! and again for hours before they are delivered or fail, and pin the
//! segments they arrived in. With periodic reclamation and compaction, the
//! spool directory must stay within a bound set by the live data, and once
//! everything is final it must shrink to the active segments and spares.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton_spool::{BlockingWriter, Clock, Spool, Status};

mod common;

use common::{message, outcome, recipient, FakeClock, SplitMix};

const SEGMENT_BYTES: u64 = 64 << 10;
const SPARES_MAX: usize = 4;
const COMPACT_LIVE_RATIO: f64 = 0.25;
const COMPACT_AGE_MS_MIN: u64 = 60_000;
/// Segments one compaction pass takes.
const COMPACT_SEGMENTS_MAX: usize = 8;

const START_MS: u64 = 1_700_000_000_000;
const TICK_MS: u64 = 1_000;
/// Three simulated hours.
const TICKS: u64 = 3 * 3600;
const MESSAGES_PER_TICK: u64 = 2;
const RECLAIM_EVERY_TICKS: u64 = 10;
const COMPACT_EVERY_TICKS: u64 = 30;
const BODY_BYTES_MIN: u64 = 500;
const BODY_BYTES_MAX: u64 = 1_500;
/// One recipient in this many is deferred for hours.
const DEFERRED_ONE_IN: u64 = 20;
const DELIVERY_DELAY_MS_MAX: u64 = 5_000;
/// The retry schedule: the first retry after a minute, then doubling, at
/// most half an hour apart; final after one to two and a half hours.
const RETRY_MS_FIRST: u64 = 60_000;
const RETRY_MS_MAX: u64 = 30 * 60_000;
const DEFERRED_LIFE_MS_MIN: u64 = 3_600_000;
const DEFERRED_LIFE_MS_MAX: u64 = 9_000_000;
/// Writers: traffic and compaction, each with an active and a prepared
/// segment.
const WRITERS: u64 = 2;
/// Segments of slack: those written since the last compaction could reach
/// the ones old enough, and one being filled per writer.
const SLACK_SEGMENTS: u64 = 4;
/// Attempts at listing the directory while a file is renamed in it.
const LISTINGS_MAX: usize = 100;
/// Compaction passes at the end, after which nothing is left to compact.
const FINAL_COMPACTIONS_MAX: usize = 64;

/// What happens to a recipient next.
#[derive(Clone, Copy, Debug)]
enum Next {
    Deliver,
    Fail,
    Defer {
        attempts: u32,
        retry_ms: u64,
        final_at_ms: u64,
    },
}

struct Live {
    /// Frame bytes of the message record.
    bytes: u64,
    recipients_live: u32,
}

struct Traffic {
    /// Seeded: the traffic is the same run after run.
    rng: SplitMix,
    clock: FakeClock,
    writer: BlockingWriter,
    /// Due time to the outcomes due then.
    due: BTreeMap<u64, Vec<(u64, u32, Next)>>,
    live: HashMap<u64, Live>,
    live_bytes: u64,
    queue_id_next: u64,
}

impl Traffic {
    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn append_message(&mut self) {
        let queue_id = self.queue_id_next;
        self.queue_id_next += 1;
        let recipients = self.rng.range(1, 3) as u32;
        let body = vec![b'x'; self.rng.range(BODY_BYTES_MIN, BODY_BYTES_MAX) as usize];
        let rcpts = vec![recipient(b"rcpt@example.org"); recipients as usize];
        let appended = self
            .writer
            .append_message(&message(queue_id, self.now(), &rcpts, &body))
            .unwrap();
        let bytes = u64::from(appended.at.len);
        self.live.insert(
            queue_id,
            Live {
                bytes,
                recipients_live: recipients,
            },
        );
        self.live_bytes += bytes;
        for recipient in 0..recipients {
            let now = self.now();
            let (at, next) = if self.rng.range(0, DEFERRED_ONE_IN) == 0 {
                let final_at_ms = now + self.rng.range(DEFERRED_LIFE_MS_MIN, DEFERRED_LIFE_MS_MAX);
                let retry_ms = RETRY_MS_FIRST;
                (
                    now + self.rng.range(0, DELIVERY_DELAY_MS_MAX),
                    Next::Defer {
                        attempts: 1,
                        retry_ms,
                        final_at_ms,
                    },
                )
            } else {
                let next = if self.rng.range(0, 50) == 0 {
                    Next::Fail
                } else {
                    Next::Deliver
                };
                (now + self.rng.range(0, DELIVERY_DELAY_MS_MAX), next)
            };
            self.due
                .entry(at)
                .or_default()
                .push((queue_id, recipient, next));
        }
    }

    /// Records every outcome due by now.
    fn run_due(&mut self) {
        let now = self.now();
        let later = self.due.split_off(&(now + 1));
        let due = std::mem::replace(&mut self.due, later);
        for (queue_id, recipient, next) in due.into_values().flatten() {
            self.outcome(queue_id, recipient, next);
        }
    }

    fn outcome(&mut self, queue_id: u64, recipient: u32, next: Next) {
        let now = self.now();
        let status = match next {
            Next::Deliver => Status::Delivered { attempts: 1 },
            Next::Fail => Status::Failed { attempts: 1 },
            Next::Defer {
                attempts,
                retry_ms,
                final_at_ms,
            } => {
                let at = now + retry_ms;
                let then = if at >= final_at_ms {
                    if attempts % 3 == 0 {
                        Next::Fail
                    } else {
                        Next::Deliver
                    }
                } else {
                    Next::Defer {
                        attempts: attempts + 1,
                        retry_ms: (retry_ms * 2).min(RETRY_MS_MAX),
                        final_at_ms,
                    }
                };
                self.due
                    .entry(at)
                    .or_default()
                    .push((queue_id, recipient, then));
                Status::Deferred {
                    attempts,
                    next_attempt_ms: at,
                }
            }
        };
        self.writer
            .append_outcome(&outcome(queue_id, recipient, status, now, b"250 2.0.0 ok"))
            .unwrap();
        if status.is_final() {
            let live = self.live.get_mut(&queue_id).expect("a live message");
            live.recipients_live -= 1;
            if live.recipients_live == 0 {
                self.live_bytes -= live.bytes;
                self.live.remove(&queue_id);
            }
        }
    }
}

/// Bytes of every file in the spool directory, as the disk counts them.
/// The preparer thread may rename a file while it is listed; then the
/// listing is taken again.
fn dir_bytes(dir: &Path) -> u64 {
    for _ in 0..LISTINGS_MAX {
        let sizes: std::io::Result<Vec<fs::Metadata>> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.and_then(|e| e.metadata()))
            .collect();
        match sizes {
            Ok(sizes) => return sizes.iter().filter(|m| m.is_file()).map(|m| m.len()).sum(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("listing {}: {e}", dir.display()),
        }
    }
    panic!(
        "{} changed under {LISTINGS_MAX} listings in a row",
        dir.display()
    );
}

fn dir_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn hours_of_churn_stay_within_a_bound_set_by_live_data() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::at(START_MS);
    let mut config = common::config(dir.path(), SEGMENT_BYTES);
    config.spares_max = SPARES_MAX;
    config.compact_live_ratio = COMPACT_LIVE_RATIO;
    config.compact_age_ms_min = COMPACT_AGE_MS_MIN;
    config.clock = Arc::new(clock.clone());
    // Fixed segments: active and prepared per writer, the spares, and the
    // outcome reserve (spares too).
    let fixed_bytes =
        (WRITERS * 2 + SPARES_MAX as u64 + config.reserve_segments as u64) * SEGMENT_BYTES;

    let (spool, recovered) = Spool::open(config.clone()).unwrap();
    assert!(recovered.pending.is_empty());
    let mut compactor = BlockingWriter::new(spool.writer(1).unwrap());
    let mut traffic = Traffic {
        rng: SplitMix(0xC4_0C4),
        clock: clock.clone(),
        writer: BlockingWriter::new(spool.writer(0).unwrap()),
        due: BTreeMap::new(),
        live: HashMap::new(),
        live_bytes: 0,
        queue_id_next: 1,
    };
    // Bytes appended per window of compaction age plus one compaction
    // interval: segments that young may not be compacted yet.
    let young_bytes = (COMPACT_AGE_MS_MIN / TICK_MS + COMPACT_EVERY_TICKS)
        * MESSAGES_PER_TICK
        * (BODY_BYTES_MAX + 512)
        + SLACK_SEGMENTS * SEGMENT_BYTES;
    let mut dir_bytes_max = 0;
    let mut compacted = 0;
    for tick in 1..=TICKS {
        clock.0.fetch_add(TICK_MS, Ordering::SeqCst);
        for _ in 0..MESSAGES_PER_TICK {
            traffic.append_message();
        }
        traffic.run_due();
        if tick % RECLAIM_EVERY_TICKS == 0 {
            // Outcomes count once durable; the writer commits in the
            // background, a flush makes sure of it.
            traffic.writer.flush().unwrap();
            spool.reclaim().unwrap();
        }
        if tick % COMPACT_EVERY_TICKS == 0 {
            compacted += spool
                .compact(&mut compactor, COMPACT_SEGMENTS_MAX)
                .unwrap()
                .segments;
        }
        let used = dir_bytes(dir.path());
        let bound =
            (traffic.live_bytes as f64 / COMPACT_LIVE_RATIO) as u64 + young_bytes + fixed_bytes;
        assert!(
            used <= bound,
            "tick {tick}: {used} bytes on disk, bound {bound} ({} live bytes): {:?}",
            traffic.live_bytes,
            dir_files(dir.path())
        );
        dir_bytes_max = dir_bytes_max.max(used);
    }
    assert!(compacted > 0, "long deferrals made compaction necessary");
    eprintln!("churn: {compacted} segments compacted, {dir_bytes_max} bytes on disk at most");

    // No more traffic: play out every retry until all is final.
    while let Some((&at, _)) = traffic.due.first_key_value() {
        clock.0.store(at.max(clock.now_ms()), Ordering::SeqCst);
        traffic.run_due();
    }
    traffic.writer.flush().unwrap();
    assert!(traffic.live.is_empty() && traffic.live_bytes == 0);
    // Compaction moves the last outcomes out of segments that only a final
    // message in an active segment still pins.
    clock.0.fetch_add(COMPACT_AGE_MS_MIN, Ordering::SeqCst);
    for pass in 0.. {
        assert!(pass < FINAL_COMPACTIONS_MAX, "compaction does not converge");
        if spool
            .compact(&mut compactor, COMPACT_SEGMENTS_MAX)
            .unwrap()
            .segments
            == 0
        {
            break;
        }
    }
    spool.reclaim().unwrap();
    let used = dir_bytes(dir.path());
    assert!(
        used <= fixed_bytes,
        "all final: {used} bytes on disk, expected at most the active segments and spares ({fixed_bytes}): {:?}",
        dir_files(dir.path())
    );
    assert_eq!(spool.stats().counts.live_recipients, 0);

    drop(traffic);
    drop(compactor);
    drop(spool);
    let (_spool, recovered) = Spool::open(config).unwrap();
    assert!(
        recovered.pending.is_empty(),
        "{} recipients pending",
        recovered.pending.len()
    );
    let report = &recovered.report;
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    // Regression: recycled segments hold frames of their earlier lives after
    // their own, and recovery used to report them as torn tails (and cut
    // the files) after every clean shutdown.
    assert!(
        report.torn_tails.is_empty(),
        "a clean shutdown leaves no torn tail: {:?}",
        report.torn_tails
    );
}
