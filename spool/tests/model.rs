//! Model-based test: random sequences of appends, outcomes, flushes,
//! reclamation, compaction and crashes, checked against a model of what the
//! spool promised.
//!
//! The promise: after any crash, recovery returns exactly the recipients
//! whose message record was durable and who have no durable final outcome,
//! each with the highest durable deferral (statuses merge by rank, see
//! `Status`), and every one of them reads back with its body.
//!
//! A crash drops every handle without flushing, then zeroes the bytes of
//! every record that was not durable, as if none of the unsynced writes had
//! reached the disk. Durability is a prefix of each writer's tickets, so the
//! zeroed records are always a suffix of their segments. The traffic writer
//! is driven by hand, so what is durable at a crash follows from the
//! operations alone and a failing case shrinks and replays.
//!
//! Regressions pinned here: reclamation acted on outcomes as soon as they
//! were appended, so a message whose last recipient was delivered (or the
//! segment of a deferral it superseded) could be deleted before that outcome
//! was durable, and a crash then lost the recipient or set it back; and
//! recycled segments were reported as torn tails after a clean shutdown.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton_spool::{
    record::{decode_frame, Link},
    BlockingWriter, Io, QueueId, RecordRef, RecordType, SegmentId, Spool, SpoolConfig, Status,
    SyncOp, Ticket, Writer,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

mod common;

use common::{
    addresses, merge, message, outcome, patterned_body, pending_recipients, pending_statuses, rank,
    segment_paths, unfinished, FakeClock,
};

/// Test cases per run, and operations per case: enough to roll over, seal,
/// delete, recycle and compact segments several times in a case, small
/// enough to run in seconds in debug builds.
const CASES: u32 = 64;
const OPS_MAX: usize = 120;
/// The smallest segment the spool accepts, so that a case fills several.
const SEGMENT_BYTES: u64 = 64 << 10;
const COMPACT_AGE_MS_MIN: u64 = 1_000;
/// Compactions per `Compact` operation.
const COMPACT_SEGMENTS_MAX: usize = 4;
/// The writer that takes traffic, and the one compaction uses.
const TRAFFIC_WRITER: u16 = 0;
const COMPACTION_WRITER: u16 = 1;

#[derive(Clone, Debug)]
enum Op {
    Append {
        recipients: usize,
        body_len: usize,
    },
    Outcome {
        message: Index,
        recipient: usize,
        status: Status,
    },
    /// Completes the oldest datasync the traffic writer submitted.
    Sync,
    Flush,
    Reclaim,
    Compact {
        advance_ms: u64,
    },
    Crash {
        flush_first: bool,
    },
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        3 => Just(Status::Delivered { attempts: 1 }),
        1 => Just(Status::Failed { attempts: 1 }),
        3 => (1u32..5, 0u64..4).prop_map(|(attempts, next)| Status::Deferred {
            attempts,
            next_attempt_ms: next * 1000,
        }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (1usize..4, 0usize..12_000).prop_map(|(recipients, body_len)| Op::Append { recipients, body_len }),
        // A record larger than a segment gets a segment of its own.
        1 => (1usize..3, 65_000usize..70_000).prop_map(|(recipients, body_len)| Op::Append { recipients, body_len }),
        40 => (any::<Index>(), 0usize..4, status()).prop_map(|(message, recipient, status)| Op::Outcome {
            message,
            recipient,
            status,
        }),
        8 => Just(Op::Sync),
        8 => Just(Op::Flush),
        8 => Just(Op::Reclaim),
        8 => (0u64..3_000).prop_map(|advance_ms| Op::Compact { advance_ms }),
        3 => any::<bool>().prop_map(|flush_first| Op::Crash { flush_first }),
    ]
}

fn body(queue_id: u64, len: usize) -> Vec<u8> {
    patterned_body(queue_id, len as u64)
}

#[derive(Debug)]
struct ModelMessage {
    body_len: usize,
    /// The message record is durable.
    acked: bool,
    /// Per recipient, the merge of every durable status.
    durable: Vec<Status>,
}

/// A record of the traffic writer not yet known to be durable.
#[derive(Debug)]
struct Unconfirmed {
    ticket: Ticket,
    at: RecordRef,
    queue_id: u64,
    /// `None` for the message record itself.
    outcome: Option<(usize, Status)>,
}

/// Drives the traffic writer by hand, so which records are durable at a
/// crash depends on the operations alone, never on a thread's timing:
/// writes are done at once, datasyncs wait for `Sync` or `Flush`.
struct Traffic {
    writer: Writer,
    syncs: VecDeque<SyncOp>,
}

impl Traffic {
    fn pump(&mut self) {
        while let Some(io) = self.writer.next_io() {
            match io {
                Io::Write(op) => {
                    let result = op
                        .segment
                        .file()
                        .write_all_at(&op.buf, op.offset)
                        .map(|()| op.buf.len());
                    self.writer.complete_write(op.id, result, op.buf);
                }
                Io::Sync(op) => self.syncs.push_back(op),
            }
        }
        assert!(
            self.writer.failure().is_none(),
            "{:?}",
            self.writer.failure()
        );
    }

    /// Completes the oldest submitted datasync; `false` if there is none.
    fn sync_one(&mut self) -> bool {
        let Some(op) = self.syncs.pop_front() else {
            return false;
        };
        let result = op.segment.file().sync_data();
        self.writer.complete_sync(op.id, result);
        self.pump();
        true
    }

    fn flush(&mut self) {
        self.pump();
        while self.writer.durable() < self.writer.last_ticket() {
            // Each sync completes a commit or part of one; a commit covers
            // every completed write, so this ends.
            assert!(
                self.sync_one(),
                "appends are not durable and no sync is pending"
            );
        }
    }
}

struct Open {
    spool: Spool,
    traffic: Traffic,
    compactor: BlockingWriter,
}

struct Harness {
    _dir: tempfile::TempDir,
    config: SpoolConfig,
    clock: FakeClock,
    open: Option<Open>,
    messages: BTreeMap<u64, ModelMessage>,
    unconfirmed: Vec<Unconfirmed>,
    queue_id_next: u64,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::at(1_000_000);
        let mut config = common::config(dir.path(), SEGMENT_BYTES);
        config.compact_age_ms_min = COMPACT_AGE_MS_MIN;
        config.compact_live_ratio = 0.5;
        config.spares_max = 2;
        config.clock = Arc::new(clock.clone());
        let mut harness = Harness {
            _dir: dir,
            config,
            clock,
            open: None,
            messages: BTreeMap::new(),
            unconfirmed: Vec::new(),
            queue_id_next: 1,
        };
        harness.reopen_and_check();
        harness
    }

    fn open(&mut self) -> &mut Open {
        self.open.as_mut().expect("spool is open")
    }

    fn apply(&mut self, op: &Op) {
        match op.clone() {
            Op::Append {
                recipients,
                body_len,
            } => self.append(recipients, body_len),
            Op::Outcome {
                message,
                recipient,
                status,
            } => self.outcome(message, recipient, status),
            Op::Sync => {
                self.open().traffic.sync_one();
                self.confirm();
            }
            Op::Flush => {
                self.open().traffic.flush();
                self.confirm();
            }
            Op::Reclaim => {
                self.open().spool.reclaim().unwrap();
            }
            Op::Compact { advance_ms } => self.compact(advance_ms),
            Op::Crash { flush_first } => {
                if flush_first {
                    self.open().traffic.flush();
                }
                self.crash();
                self.reopen_and_check();
            }
        }
    }

    fn append(&mut self, recipients: usize, body_len: usize) {
        let queue_id = self.queue_id_next;
        self.queue_id_next += 1;
        let addresses = addresses(recipients);
        let rcpts = pending_recipients(&addresses);
        let body = body(queue_id, body_len);
        let traffic = &mut self.open().traffic;
        let appended = traffic
            .writer
            .append_message(&message(queue_id, 0, &rcpts, &body))
            .unwrap();
        traffic.pump();
        self.messages.insert(
            queue_id,
            ModelMessage {
                body_len,
                acked: false,
                durable: vec![Status::Pending; recipients],
            },
        );
        self.unconfirmed.push(Unconfirmed {
            ticket: appended.ticket,
            at: appended.at,
            queue_id,
            outcome: None,
        });
    }

    fn outcome(&mut self, pick: Index, recipient: usize, status: Status) {
        if self.messages.is_empty() {
            return;
        }
        let (&queue_id, message) = self
            .messages
            .iter()
            .nth(pick.index(self.messages.len()))
            .expect("in range");
        let recipient = recipient % message.durable.len();
        let traffic = &mut self.open().traffic;
        let appended = traffic
            .writer
            .append_outcome(&outcome(
                queue_id,
                recipient as u32,
                status,
                0,
                b"250 2.0.0 ok",
            ))
            .unwrap();
        traffic.pump();
        self.unconfirmed.push(Unconfirmed {
            ticket: appended.ticket,
            at: appended.at,
            queue_id,
            outcome: Some((recipient, status)),
        });
    }

    /// Folds into the model every record the traffic writer has made durable.
    fn confirm(&mut self) {
        let durable = self.open().traffic.writer.durable();
        let (done, rest) = std::mem::take(&mut self.unconfirmed)
            .into_iter()
            .partition(|u| u.ticket <= durable);
        self.unconfirmed = rest;
        for u in done {
            let message = self
                .messages
                .get_mut(&u.queue_id)
                .expect("confirmed record of a known message");
            match u.outcome {
                None => message.acked = true,
                Some((recipient, status)) => {
                    message.durable[recipient] = merge(message.durable[recipient], status)
                }
            }
        }
    }

    /// Compaction copies each live message of the segments it takes, with
    /// every recipient's status as the durable records have it: no outcome
    /// that a crash could still take back may become durable through a copy.
    fn compact(&mut self, advance_ms: u64) {
        self.clock.0.fetch_add(advance_ms, Ordering::SeqCst);
        self.confirm();
        let open = self.open.as_mut().expect("spool is open");
        let before: HashMap<u64, RecordRef> = self
            .messages
            .keys()
            .filter_map(|&id| open.spool.message(QueueId(id)).map(|m| (id, m.body)))
            .collect();
        open.spool
            .compact(&mut open.compactor, COMPACT_SEGMENTS_MAX)
            .unwrap();
        for (id, old) in before {
            let Some(now) = open.spool.message(QueueId(id)) else {
                continue;
            };
            if now.body == old {
                continue;
            }
            let record = open.spool.read(now.body).unwrap();
            let copy = record.message().unwrap();
            let model = &self.messages[&id];
            assert!(model.acked, "copied {id} before its record was durable");
            assert!(
                copy.body == body(id, model.body_len),
                "body of the copy of {id}"
            );
            // Which final status wins when two arrive is not specified.
            let ranks: Vec<_> = copy.recipients().map(|r| rank(r.status)).collect();
            let expected: Vec<_> = model.durable.iter().map(|&s| rank(s)).collect();
            assert_eq!(ranks, expected, "statuses in the copy of {id}");
        }
    }

    /// Drops everything without flushing and wipes what was not durable.
    fn crash(&mut self) {
        self.confirm();
        let open = self.open.take().expect("spool is open");
        drop(open);
        let paths = segment_paths(&self.config.path);
        // The writer starts each segment it moves to with a link to the one
        // it filled. Appended after that one's last record, the link is
        // lost too when any record of it was.
        let torn: std::collections::HashSet<u64> =
            self.unconfirmed.iter().map(|u| u.at.segment.0).collect();
        for (&id, path) in &paths {
            let mut bytes = vec![0u8; 128];
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            file.read_exact_at(&mut bytes, 64).unwrap();
            let Ok(frame) = decode_frame(&bytes, SegmentId(id)) else {
                continue;
            };
            if frame.kind == RecordType::Link
                && torn.contains(&Link::decode(frame.payload).unwrap().previous.0)
            {
                file.write_all_at(&vec![0; frame.len], 64).unwrap();
            }
        }
        for u in std::mem::take(&mut self.unconfirmed) {
            let path = paths
                .get(&u.at.segment.0)
                .expect("an unsynced record's segment is on disk");
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.write_all_at(&vec![0; u.at.len as usize], u.at.offset)
                .unwrap();
            if u.outcome.is_none() {
                // Lost with the crash: never acknowledged.
                self.messages.remove(&u.queue_id);
            }
        }
    }

    fn reopen_and_check(&mut self) {
        let (spool, recovered) = Spool::open(self.config.clone()).unwrap();
        let expected = unfinished(
            self.messages
                .iter()
                .filter(|(_, m)| m.acked)
                .map(|(&id, m)| (id, &m.durable[..])),
        );
        let got = pending_statuses(&recovered, "a recipient is pending twice");
        assert_eq!(
            got, expected,
            "pending after recovery differs from the model"
        );
        // Nothing was torn: unsynced records were wiped whole.
        assert!(
            recovered.report.damaged.is_empty(),
            "{:?}",
            recovered.report.damaged
        );
        assert!(
            recovered.report.torn_tails.is_empty(),
            "{:?}",
            recovered.report.torn_tails
        );
        for p in &recovered.pending {
            let record = spool.read(p.message).unwrap();
            let view = record.message().unwrap();
            let model = &self.messages[&p.queue_id.0];
            assert_eq!(view.queue_id, p.queue_id);
            assert_eq!(view.recipient_count() as usize, model.durable.len());
            assert!(
                view.body == body(p.queue_id.0, model.body_len),
                "body of {}",
                p.queue_id
            );
        }
        // Final messages may be gone from disk; drop them from the model.
        self.messages
            .retain(|_, m| !m.durable.iter().all(|s| s.is_final()));
        self.queue_id_next = self.queue_id_next.max(recovered.queue_id_max.0 + 1);
        let traffic = Traffic {
            writer: spool.writer(TRAFFIC_WRITER).unwrap(),
            syncs: VecDeque::new(),
        };
        let compactor = BlockingWriter::new(spool.writer(COMPACTION_WRITER).unwrap());
        self.open = Some(Open {
            spool,
            traffic,
            compactor,
        });
    }
}

fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: CASES,
        // A fixed seed unless PROPTEST_RNG_SEED says otherwise: a failure
        // reproduces run after run.
        rng_seed: match default.rng_seed {
            RngSeed::Random => RngSeed::Fixed(0xBA70_5900),
            seed => seed,
        },
        failure_persistence: None,
        ..default
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn recovery_returns_exactly_the_acknowledged_unfinished_recipients(
        ops in proptest::collection::vec(op(), 1..OPS_MAX),
    ) {
        let mut harness = Harness::new();
        for op in &ops {
            harness.apply(op);
        }
        harness.apply(&Op::Crash { flush_first: false });
    }
}
