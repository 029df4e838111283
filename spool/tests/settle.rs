//! Settlement: the one caller that settles a message's last recipient,
//! whichever writer or thread it is, learns every failure of the message,
//! once; and after a restart the failures of messages still live are
//! rebuilt from their outcome records.

use std::sync::{Arc, Barrier};
use std::thread;

use baton_spool::{BlockingWriter, QueueId, Spool, Status};

mod common;

use common::{config, message, outcome, recipient};

const SEGMENT_BYTES: u64 = 256 << 10;

type Failures = Option<Vec<(u32, Vec<u8>)>>;

fn failed(reply: &[u8]) -> (u32, Option<&[u8]>) {
    (0, Some(reply))
}

fn failures(list: &[(u32, &[u8])]) -> Failures {
    Some(list.iter().map(|(r, t)| (*r, t.to_vec())).collect())
}

#[test]
fn the_last_settler_gets_every_failure_once_and_repeats_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(dir.path(), SEGMENT_BYTES)).unwrap();
    let mut w = BlockingWriter::new(spool.writer(0).unwrap());
    let rcpts = [recipient(b"a@x"), recipient(b"b@x"), recipient(b"c@x")];
    w.append_message(&message(1, 0, &rcpts, b"hi\r\n")).unwrap();
    let none: Option<&[u8]> = None;

    assert_eq!(spool.settle(QueueId(1), [failed(b"550 a")]), None);
    // Settled again (another shard, an operator): it counts once, and its
    // first reply stays.
    assert_eq!(spool.settle(QueueId(1), [failed(b"550 again")]), None);
    assert_eq!(spool.settle(QueueId(1), [(1, none)]), None);
    assert_eq!(spool.settle(QueueId(1), [(1, none)]), None);
    assert_eq!(
        spool.settle(QueueId(1), [(2, Some(&b"554 c"[..]))]),
        failures(&[(0, b"550 a"), (2, b"554 c")])
    );
    // Already told: never again.
    assert_eq!(spool.settle(QueueId(1), [(2, Some(&b"554 c"[..]))]), None);
    assert_eq!(spool.settle(QueueId(1), [failed(b"550 a")]), None);
    // Nothing to settle (deferrals only) is not a settlement.
    assert_eq!(
        spool.settle(QueueId(1), std::iter::empty::<(u32, Option<&[u8]>)>()),
        None
    );
    // Unknown messages and recipients are ignored.
    assert_eq!(spool.settle(QueueId(9), [failed(b"550")]), None);
    assert_eq!(spool.settle(QueueId(1), [(7, none)]), None);

    // Delivered everywhere: no failures, nothing returned.
    w.append_message(&message(2, 0, &rcpts, b"hi\r\n")).unwrap();
    assert_eq!(spool.settle(QueueId(2), [(0, none), (1, none)]), None);
    assert_eq!(spool.settle(QueueId(2), [(2, none)]), None);
}

#[test]
fn two_writers_settling_one_message_concurrently_notify_exactly_once() {
    const MESSAGES: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(dir.path(), SEGMENT_BYTES)).unwrap();
    {
        let mut w = BlockingWriter::new(spool.writer(0).unwrap());
        let rcpts = [recipient(b"a@x"), recipient(b"b@y")];
        for id in 1..=MESSAGES {
            w.append_message(&message(id, 0, &rcpts, b"hi\r\n"))
                .unwrap();
        }
        w.flush().unwrap();
    }
    let barrier = Arc::new(Barrier::new(2));
    let shards: Vec<_> = (0..2u16)
        .map(|shard| {
            let spool = spool.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut w = BlockingWriter::new(spool.writer(shard + 1).unwrap());
                barrier.wait();
                let mut told = Vec::new();
                for id in 1..=MESSAGES {
                    // Each shard settles "its" recipient, then, for one
                    // message in three, the other's too (an operator's
                    // bounce racing a delivery).
                    let mine = u32::from(shard);
                    let mut settle = vec![mine];
                    if id % 3 == 0 {
                        settle.push(1 - mine);
                    }
                    let reply = format!("550 {id}.{shard}");
                    // Recipient 0 fails on even messages, recipient 1 on
                    // messages divisible by 5.
                    let fails = |r: u32| if r == 0 { id % 2 == 0 } else { id % 5 == 0 };
                    let got = spool.settle(
                        QueueId(id),
                        settle
                            .iter()
                            .map(|&r| (r, fails(r).then_some(reply.as_bytes()))),
                    );
                    for r in settle {
                        let status = if fails(r) {
                            Status::Failed { attempts: 1 }
                        } else {
                            Status::Delivered { attempts: 1 }
                        };
                        w.append_outcome(&outcome(id, r, status, 1, reply.as_bytes()))
                            .unwrap();
                    }
                    if let Some(failures) = got {
                        told.push((id, failures));
                    }
                }
                w.flush().unwrap();
                told
            })
        })
        .collect();
    let mut told: Vec<_> = shards.into_iter().flat_map(|t| t.join().unwrap()).collect();
    told.sort_by_key(|(id, _)| *id);
    let expected: Vec<u64> = (1..=MESSAGES)
        .filter(|id| id % 2 == 0 || id % 5 == 0)
        .collect();
    let ids: Vec<u64> = told.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, expected, "one notification per message with a failure");
    for (id, failures) in &told {
        let recipients: Vec<u32> = failures.iter().map(|f| f.0).collect();
        let want: Vec<u32> = [(0, id % 2 == 0), (1, id % 5 == 0)]
            .iter()
            .filter(|(_, f)| *f)
            .map(|(r, _)| *r)
            .collect();
        assert_eq!(recipients, want, "message {id}");
    }
}

#[test]
fn a_restart_rebuilds_the_failures_of_live_messages_from_their_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT_BYTES);
    let rcpts = [recipient(b"a@x"), recipient(b"b@x"), recipient(b"c@x")];
    let deferred = Status::Deferred {
        attempts: 1,
        next_attempt_ms: 5,
    };
    {
        let (spool, _) = Spool::open(cfg.clone()).unwrap();
        let mut w = BlockingWriter::new(spool.writer(0).unwrap());
        // 1: one failure, one delivery, one deferral: still live.
        w.append_message(&message(1, 0, &rcpts, b"hi\r\n")).unwrap();
        assert_eq!(spool.settle(QueueId(1), [failed(b"550 5.1.1 gone")]), None);
        w.append_outcome(&outcome(
            1,
            0,
            Status::Failed { attempts: 1 },
            1,
            b"550 5.1.1 gone",
        ))
        .unwrap();
        let none: Option<&[u8]> = None;
        assert_eq!(spool.settle(QueueId(1), [(1, none)]), None);
        w.append_outcome(&outcome(
            1,
            1,
            Status::Delivered { attempts: 1 },
            1,
            b"250 ok",
        ))
        .unwrap();
        w.append_outcome(&outcome(1, 2, deferred, 1, b"451 later"))
            .unwrap();
        // 2: every recipient final, its notification already made.
        w.append_message(&message(2, 0, &rcpts[..1], b"hi\r\n"))
            .unwrap();
        assert!(spool.settle(QueueId(2), [failed(b"550 x")]).is_some());
        w.append_outcome(&outcome(2, 0, Status::Failed { attempts: 1 }, 1, b"550 x"))
            .unwrap();
        w.flush().unwrap();
    }
    let (spool, _) = Spool::open(cfg.clone()).unwrap();
    let none: Option<&[u8]> = None;
    // Settled before the restart: settling again changes nothing.
    assert_eq!(spool.settle(QueueId(1), [(0, none), (1, none)]), None);
    assert_eq!(spool.settle(QueueId(2), [(0, none)]), None);
    assert_eq!(
        spool.settle(QueueId(1), [(2, Some(&b"550 late"[..]))]),
        failures(&[(0, b"550 5.1.1 gone"), (2, b"550 late")])
    );
}

#[test]
fn a_failure_folded_into_a_compacted_copy_comes_back_without_its_reply() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), SEGMENT_BYTES);
    let rcpts = [recipient(b"a@x"), recipient(b"b@x")];
    {
        let (spool, _) = Spool::open(cfg.clone()).unwrap();
        let body = {
            let mut w = BlockingWriter::new(spool.writer(0).unwrap());
            let at = w
                .append_message(&message(1, 0, &rcpts, b"hi\r\n"))
                .unwrap()
                .at;
            spool.settle(QueueId(1), [failed(b"550 5.1.1 gone")]);
            w.append_outcome(&outcome(
                1,
                0,
                Status::Failed { attempts: 1 },
                1,
                b"550 5.1.1 gone",
            ))
            .unwrap();
            w.flush().unwrap();
            at
        };
        // The writer is gone, its segment sealed: compaction copies the
        // message with recipient 0's status, not its reply.
        let mut compactor = BlockingWriter::new(spool.writer(1).unwrap());
        let report = spool.compact_segment(&mut compactor, body.segment).unwrap();
        assert_eq!(report.messages_copied, 1);
        spool.reclaim().unwrap();
    }
    let (spool, recovered) = Spool::open(cfg).unwrap();
    assert_eq!(recovered.pending.len(), 1);
    let none: Option<&[u8]> = None;
    assert_eq!(
        spool.settle(QueueId(1), [(1, none)]),
        failures(&[(0, b"")]),
        "the failure is known, its reply is not"
    );
}
