//! Append, commit, reopen: the basic promise.

use baton_spool::{BlockingWriter, QueueId, Spool, SpoolConfig, Status, SyncMode};

mod common;

use common::{message, outcome, recipient};

#[test]
fn appended_messages_survive_a_reopen_and_delivered_ones_do_not_return() {
    for mode in [SyncMode::Group, SyncMode::Always, SyncMode::None] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SpoolConfig::new(dir.path());
        config.segment_bytes = 256 << 10;
        config.sync = mode;
        let rcpts = [recipient(b"a@x.org"), recipient(b"b@y.org")];
        let body = vec![b'x'; 5000];
        {
            let (spool, recovered) = Spool::open(config.clone()).unwrap();
            assert!(recovered.pending.is_empty());
            let mut w = BlockingWriter::new(spool.writer(0).unwrap());
            let mut last = None;
            for id in 1..=200 {
                last = Some(
                    w.append_message(&message(id, 1000 + id, &rcpts, &body))
                        .unwrap(),
                );
            }
            w.wait(last.unwrap().ticket).unwrap();
            let rec = spool.read(last.unwrap().at).unwrap();
            assert_eq!(rec.message().unwrap().body, &body[..]);
            for id in 1..=100 {
                w.append_outcome(&outcome(
                    id,
                    0,
                    Status::Delivered { attempts: 1 },
                    5,
                    b"250 ok",
                ))
                .unwrap();
                w.append_outcome(&outcome(
                    id,
                    1,
                    Status::Failed { attempts: 1 },
                    5,
                    b"550 no",
                ))
                .unwrap();
            }
            let deferred = Status::Deferred {
                attempts: 2,
                next_attempt_ms: 77,
            };
            w.append_outcome(&outcome(150, 1, deferred, 5, b"451 later"))
                .unwrap();
            w.flush().unwrap();
            assert!(
                spool.stats().segments > 2,
                "{mode:?}: records span several segments"
            );
        }
        let (spool, recovered) = Spool::open(config.clone()).unwrap();
        assert_eq!(recovered.pending.len(), 200, "{mode:?}");
        assert!(recovered.pending.iter().all(|p| p.queue_id.0 > 100));
        let deferred = recovered
            .pending
            .iter()
            .find(|p| p.queue_id == QueueId(150) && p.recipient == 1)
            .unwrap();
        assert_eq!(
            deferred.status,
            Status::Deferred {
                attempts: 2,
                next_attempt_ms: 77
            }
        );
        assert_eq!(recovered.queue_id_max, QueueId(200));
        for p in &recovered.pending {
            let rec = spool.read(p.message).unwrap();
            assert_eq!(rec.message().unwrap().queue_id, p.queue_id);
        }
        assert!(recovered.report.torn_tails.is_empty() && recovered.report.damaged.is_empty());
    }
}

#[test]
fn a_spool_directory_is_opened_by_one_spool_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig::new(dir.path());
    let (first, _) = Spool::open(config.clone()).unwrap();
    assert!(matches!(
        Spool::open(config.clone()),
        Err(baton_spool::Error::Locked(_))
    ));
    drop(first);
    Spool::open(config).unwrap();
}

/// The latest outcome of each recipient can be read back, for its reply,
/// while the writer runs and after a reopen.
#[test]
fn the_latest_outcome_of_a_recipient_is_found_with_its_reply() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig::new(dir.path());
    let rcpts = [recipient(b"a@x.org"), recipient(b"b@y.org")];
    let reply_of = |spool: &Spool, recipient: usize| {
        let at = spool.latest_outcomes(QueueId(7)).unwrap()[recipient]?;
        let record = spool.read(at).unwrap();
        let outcome = record.outcome().unwrap();
        assert_eq!(outcome.queue_id, QueueId(7));
        assert_eq!(outcome.recipient as usize, recipient);
        Some(String::from_utf8(outcome.reply.to_vec()).unwrap())
    };
    {
        let (spool, _) = Spool::open(config.clone()).unwrap();
        let mut w = BlockingWriter::new(spool.writer(0).unwrap());
        w.append_message(&message(7, 1000, &rcpts, b"body\r\n"))
            .unwrap();
        let first = Status::Deferred {
            attempts: 1,
            next_attempt_ms: 10,
        };
        let second = Status::Deferred {
            attempts: 2,
            next_attempt_ms: 20,
        };
        w.append_outcome(&outcome(7, 1, first, 5, b"451 first"))
            .unwrap();
        let last = w
            .append_outcome(&outcome(7, 1, second, 6, b"451 second"))
            .unwrap();
        w.wait(last.ticket).unwrap();
        assert_eq!(reply_of(&spool, 0), None, "no outcome yet");
        assert_eq!(reply_of(&spool, 1).as_deref(), Some("451 second"));
    }
    let (spool, _) = Spool::open(config).unwrap();
    assert_eq!(reply_of(&spool, 1).as_deref(), Some("451 second"));
}

/// Issue 10: below `free_bytes_min`, new messages wait (an error the engine
/// answers with `452 4.3.1`) while outcomes, which free space, are still
/// recorded; and the outcome reserve is on disk from the first open.
#[test]
fn below_the_free_space_margin_messages_wait_and_outcomes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SpoolConfig::new(dir.path());
    config.segment_bytes = 256 << 10;
    let rcpts = [recipient(b"a@x.org")];
    {
        let (spool, _) = Spool::open(config.clone()).unwrap();
        assert_eq!(
            spool.stats().spares,
            config.reserve_segments as u64,
            "the reserve is made at open"
        );
        let mut w = BlockingWriter::new(spool.writer(0).unwrap());
        let appended = w.append_message(&message(1, 1000, &rcpts, b"hi")).unwrap();
        w.wait(appended.ticket).unwrap();
    }
    // No filesystem has an exabyte free: every message is now refused.
    config.free_bytes_min = 1 << 60;
    let (spool, recovered) = Spool::open(config).unwrap();
    assert_eq!(recovered.pending.len(), 1);
    let mut w = BlockingWriter::new(spool.writer(0).unwrap());
    let err = w
        .append_message(&message(2, 1001, &rcpts, b"hi"))
        .unwrap_err();
    assert!(err.is_out_of_space(), "{err}");
    assert!(matches!(err, baton_spool::Error::LowDisk { .. }), "{err}");
    let done = w
        .append_outcome(&outcome(
            1,
            0,
            Status::Delivered { attempts: 1 },
            5,
            b"250 ok",
        ))
        .unwrap();
    w.wait(done.ticket).unwrap();
    assert_eq!(
        spool.message(QueueId(1)).unwrap().statuses,
        vec![Status::Delivered { attempts: 1 }]
    );
}

/// Outcomes may take the spool past `size_bytes_max` (recording a delivery
/// is what frees space); new mail must then not fill the segment they took.
/// It did, one segment per roll-over, until the simulator's longer runs
/// found a spool at twice its limit.
#[test]
fn past_its_size_limit_the_spool_takes_no_message_even_with_room_in_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SpoolConfig::new(dir.path());
    config.segment_bytes = 256 << 10;
    config.size_bytes_max = Some(2 * config.segment_bytes);
    let (spool, _) = Spool::open(config.clone()).unwrap();
    let mut w = BlockingWriter::new(spool.writer(0).unwrap());
    let rcpts = [recipient(b"a@x.org")];
    let body = vec![b'x'; 4000];
    let mut id = 0;
    let full = loop {
        id += 1;
        match w.append_message(&message(id, 1000, &rcpts, &body)) {
            Ok(_) => assert!(id < 1000, "a spool of two segments took {id} messages"),
            Err(err) => break err,
        }
    };
    assert!(matches!(full, baton_spool::Error::Full { .. }), "{full}");
    // Outcomes go on, into a third segment past the limit.
    let deferred = Status::Deferred {
        attempts: 1,
        next_attempt_ms: 5,
    };
    let reply = vec![b'4'; 2000];
    let segments = spool.stats().segments;
    let mut outcomes = 0;
    while spool.stats().segments == segments {
        outcomes += 1;
        assert!(outcomes < 1000, "outcomes never took a new segment");
        w.append_outcome(&outcome(1, 0, deferred, 5, &reply))
            .unwrap();
    }
    // The segment they took has room for a small message, which is refused.
    let err = w
        .append_message(&message(id + 1, 1000, &rcpts, b"hi"))
        .unwrap_err();
    assert!(matches!(err, baton_spool::Error::Full { .. }), "{err}");
    let done = w
        .append_outcome(&outcome(1, 0, deferred, 6, b"451 later"))
        .unwrap();
    w.wait(done.ticket).unwrap();
}
