//! Many threads on one spool at once: writers that append messages and
//! record outcomes for each other's messages, readers that check every
//! durable message as it comes, and a reclaimer deleting what is done, all
//! at the same time. At the end the spool, and the spool reopened, must
//! hold exactly what the threads recorded.

use std::collections::VecDeque;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use baton_spool::{
    BlockingWriter, Error, NewMessage, NewRecipient, QueueId, RecordRef, Spool, SpoolConfig,
    Status, SyncMode, Ticket, COMPACTION_WRITER,
};
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

mod common;

use common::{assert_message, numbered_addresses, outcome, pending_recipients, XorShift};

const WRITERS: u16 = 4;
const READERS: usize = 4;
const MESSAGES_PER_WRITER: u64 = 1500;
/// Appends a writer may have ahead of its durable point.
const AWAITING_MAX: usize = 64;
/// Small segments, so that writers roll over and reclamation has work.
const SEGMENT_BYTES: u64 = 256 << 10;
const BODY_BYTES_MAX: u64 = 8 << 10;
const RECIPIENTS_MAX: u64 = 4;
/// Messages come in runs of this many ids, every other run delivered
/// whole, so that whole segments become free while the readers run.
const DELIVERED_RUN: u64 = 100;
const TEST_DURATION_MAX: Duration = Duration::from_secs(60);
/// Messages a reader holds back to read again.
const REREAD_BACKLOG: usize = 200;
const RECLAIM_PASSES_MAX: u64 = 100_000;
const RECLAIM_INTERVAL: Duration = Duration::from_millis(1);

/// A durable message, passed from its writer to the others.
#[derive(Clone, Copy, Debug)]
struct Durable {
    id: u64,
    at: RecordRef,
}

#[test]
fn writers_readers_and_reclaimer_agree_on_every_message() {
    let started = Instant::now();
    let deadline = started + TEST_DURATION_MAX;
    let dir = tempfile::tempdir().unwrap();
    let (spool, recovered) = Spool::open(config(dir.path())).unwrap();
    assert!(recovered.pending.is_empty());

    // Writer t records the outcomes of writer t-1's messages.
    let (inbox_txs, inbox_rxs): (Vec<Sender<Durable>>, Vec<Receiver<Durable>>) =
        (0..WRITERS).map(|_| unbounded()).unzip();
    let (reads_tx, reads_rx) = unbounded::<Durable>();
    // Never sent on: dropping the sender stops the reclaimer.
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let (handled, reads, deleted) = thread::scope(|s| {
        let reclaimer = s.spawn(|| reclaim_until_stopped(&spool, &stop_rx, deadline));
        let readers: Vec<_> = (0..READERS)
            .map(|_| s.spawn(|| read_until_done(&spool, &reads_rx, deadline)))
            .collect();
        let writers: Vec<_> = inbox_rxs
            .into_iter()
            .enumerate()
            .map(|(t, inbox)| {
                let outbox = inbox_txs[(t + 1) % WRITERS as usize].clone();
                let reads = reads_tx.clone();
                let spool = &spool;
                s.spawn(move || write(spool, t as u16, inbox, outbox, reads, deadline))
            })
            .collect();
        // The writers hold the only senders now.
        drop(inbox_txs);
        drop(reads_tx);
        let handled: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        let reads = readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .fold(ReadCounts::default(), ReadCounts::add);
        drop(stop_tx);
        let deleted = reclaimer.join().unwrap();
        (handled, reads, deleted)
    });
    let messages = u64::from(WRITERS) * MESSAGES_PER_WRITER;
    assert_eq!(
        handled, messages,
        "every message had its outcomes recorded once"
    );
    assert_eq!(
        reads.read + reads.reclaimed,
        2 * messages,
        "every message was read twice"
    );
    let deleted_while_running = deleted;
    let deleted = deleted + spool.reclaim().unwrap().segments_deleted;
    assert!(deleted > 0, "delivered runs free whole segments");

    // What the spool says now is what the threads recorded.
    let mut live_recipients = 0;
    for id in all_ids() {
        let expected = expected_statuses(id);
        live_recipients += expected.iter().filter(|s| !s.is_final()).count() as u64;
        match spool.message(QueueId(id)) {
            Some(state) => {
                assert_eq!(state.statuses, expected, "message {id}");
                check_message(&spool, id, state.body).expect("a message still indexed is readable");
            }
            None => assert!(
                expected.iter().all(|s| s.is_final()),
                "message {id} is gone with recipients pending: {expected:?}"
            ),
        }
    }
    assert_eq!(spool.stats().counts.live_recipients, live_recipients);
    drop(spool);

    // And what a restart finds.
    let (spool, recovered) = Spool::open(config(dir.path())).unwrap();
    assert!(
        recovered.report.damaged.is_empty(),
        "{:?}",
        recovered.report
    );
    let mut pending: Vec<(u64, u32, Status)> = recovered
        .pending
        .iter()
        .map(|p| (p.queue_id.0, p.recipient, p.status))
        .collect();
    pending.sort_by_key(|&(id, rcpt, _)| (id, rcpt));
    let mut expected = Vec::new();
    for id in all_ids() {
        for (rcpt, status) in expected_statuses(id).into_iter().enumerate() {
            if !status.is_final() {
                expected.push((id, rcpt as u32, status));
            }
        }
    }
    assert_eq!(pending.len(), expected.len());
    assert_eq!(pending, expected);
    for p in &recovered.pending {
        check_message(&spool, p.queue_id.0, p.message).expect("a pending message is readable");
    }
    eprintln!(
        "{messages} messages, {} reads, {} found reclaimed, {deleted_while_running} segments deleted while running, \
         {deleted} in all, in {:?}",
        reads.read,
        reads.reclaimed,
        started.elapsed()
    );
}

#[test]
fn a_writer_id_is_open_once_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(dir.path())).unwrap();
    let first = spool.writer(3).unwrap();
    assert!(matches!(spool.writer(3), Err(Error::WriterInUse(3))));
    assert!(
        matches!(spool.clone().writer(3), Err(Error::WriterInUse(3))),
        "a clone of the handle shares the claim"
    );
    let other = spool.writer(4).expect("other ids are free");
    assert!(matches!(
        spool.writer(COMPACTION_WRITER),
        Err(Error::WriterInUse(COMPACTION_WRITER))
    ));
    drop(first);
    let again = spool.writer(3).expect("dropping a writer frees its id");
    drop((again, other));

    // Threads racing for one id: exactly one wins, and holds it until all
    // have tried.
    const RACERS: usize = 8;
    let barrier = Barrier::new(RACERS);
    let wins = thread::scope(|s| {
        let racers: Vec<_> = (0..RACERS)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let writer = spool.writer(5);
                    barrier.wait();
                    match writer {
                        Ok(_) => true,
                        Err(Error::WriterInUse(5)) => false,
                        Err(e) => panic!("unexpected error {e}"),
                    }
                })
            })
            .collect();
        racers
            .into_iter()
            .map(|r| r.join().unwrap())
            .filter(|&won| won)
            .count()
    });
    assert_eq!(wins, 1);
    spool.writer(5).expect("the winner's writer is dropped");
}

/// One writer thread: appends its messages, passes each durable one on to
/// the next writer and to the readers, and records the outcomes of the
/// previous writer's messages. Returns how many messages it recorded
/// outcomes for.
fn write(
    spool: &Spool,
    writer_id: u16,
    inbox: Receiver<Durable>,
    outbox: Sender<Durable>,
    reads: Sender<Durable>,
    deadline: Instant,
) -> u64 {
    let mut writer = BlockingWriter::new(spool.writer(writer_id).unwrap());
    let mut awaiting: VecDeque<(Ticket, Durable)> = VecDeque::new();
    let mut handled = 0;
    let first = 1 + u64::from(writer_id) * MESSAGES_PER_WRITER;
    for id in first..first + MESSAGES_PER_WRITER {
        assert!(
            Instant::now() < deadline,
            "writer {writer_id} ran past {TEST_DURATION_MAX:?}"
        );
        let addresses = recipient_addresses(id);
        let rcpts = pending_recipients(&addresses);
        let body = body(id);
        let appended = writer.append_message(&message(id, &rcpts, &body)).unwrap();
        let durable = Durable {
            id,
            at: appended.at,
        };
        awaiting.push_back((appended.ticket, durable));
        if awaiting.len() > AWAITING_MAX {
            writer.wait(awaiting[0].0).unwrap();
        }
        pass_on_durable(&mut writer, &mut awaiting, &outbox, &reads);
        while let Ok(theirs) = inbox.try_recv() {
            record_outcomes(&mut writer, theirs);
            handled += 1;
        }
    }
    writer.flush().unwrap();
    pass_on_durable(&mut writer, &mut awaiting, &outbox, &reads);
    assert!(awaiting.is_empty());
    // The next writer and the readers have all of ours.
    drop(outbox);
    drop(reads);
    loop {
        match inbox.recv_deadline(deadline) {
            Ok(theirs) => {
                record_outcomes(&mut writer, theirs);
                handled += 1;
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                panic!("writer {writer_id} ran past {TEST_DURATION_MAX:?}")
            }
        }
    }
    writer.flush().unwrap();
    handled
}

fn pass_on_durable(
    writer: &mut BlockingWriter,
    awaiting: &mut VecDeque<(Ticket, Durable)>,
    outbox: &Sender<Durable>,
    reads: &Sender<Durable>,
) {
    let durable = writer.durable().unwrap();
    while awaiting
        .front()
        .is_some_and(|&(ticket, _)| ticket <= durable)
    {
        let (_, message) = awaiting.pop_front().unwrap();
        outbox.send(message).unwrap();
        reads.send(message).unwrap();
    }
}

fn record_outcomes(writer: &mut BlockingWriter, message: Durable) {
    for rcpt in 0..recipient_count(message.id) {
        for status in planned_outcomes(message.id, rcpt) {
            writer
                .append_outcome(&outcome(
                    message.id,
                    rcpt,
                    status,
                    message.id,
                    b"250 2.0.0 ok",
                ))
                .unwrap();
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct ReadCounts {
    read: u64,
    /// Reads that found the message reclaimed, all recipients final.
    reclaimed: u64,
}

impl ReadCounts {
    fn add(self, other: ReadCounts) -> ReadCounts {
        ReadCounts {
            read: self.read + other.read,
            reclaimed: self.reclaimed + other.reclaimed,
        }
    }
}

/// One reader thread: reads every durable message it is handed, by its
/// reference and through the index, and once more a while later, when its
/// outcomes are likely recorded and its segment perhaps reclaimed.
fn read_until_done(spool: &Spool, reads: &Receiver<Durable>, deadline: Instant) -> ReadCounts {
    let mut counts = ReadCounts::default();
    let mut backlog: VecDeque<Durable> = VecDeque::with_capacity(REREAD_BACKLOG + 1);
    loop {
        let durable = match reads.recv_deadline(deadline) {
            Ok(durable) => durable,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("reader ran past {TEST_DURATION_MAX:?}"),
        };
        read_one(spool, durable, &mut counts);
        backlog.push_back(durable);
        if backlog.len() > REREAD_BACKLOG {
            read_one(spool, backlog.pop_front().unwrap(), &mut counts);
        }
    }
    for durable in backlog {
        read_one(spool, durable, &mut counts);
    }
    counts
}

fn read_one(spool: &Spool, durable: Durable, counts: &mut ReadCounts) {
    let id = durable.id;
    match check_message(spool, id, durable.at) {
        Ok(()) => counts.read += 1,
        Err(e) => {
            assert_reclaimable(spool, id, &e);
            counts.reclaimed += 1;
        }
    }
    if let Some(state) = spool.message(QueueId(id)) {
        assert_eq!(state.statuses.len(), recipient_count(id) as usize);
        if let Err(e) = check_message(spool, id, state.body) {
            assert_reclaimable(spool, id, &e);
        }
    }
}

/// A message may be gone only once every recipient is final.
fn assert_reclaimable(spool: &Spool, id: u64, err: &Error) {
    assert!(
        matches!(err, Error::BadReference { .. }),
        "message {id}: {err}"
    );
    let expected = expected_statuses(id);
    assert!(
        expected.iter().all(|s| s.is_final()),
        "message {id} unreadable ({err}) with recipients to deliver: {expected:?}"
    );
    if let Some(state) = spool.message(QueueId(id)) {
        assert_eq!(
            state.statuses, expected,
            "message {id} reclaimed before it was final"
        );
    }
}

/// Reads a message at `at` and checks it is message `id` exactly as written.
fn check_message(spool: &Spool, id: u64, at: RecordRef) -> Result<(), Error> {
    let record = spool.read(at)?;
    let view = record.message().expect("a message record");
    assert_message(&view, id, &body(id), &recipient_addresses(id));
    Ok(())
}

/// Reclaims in a loop until told to stop. Returns the segments deleted.
fn reclaim_until_stopped(spool: &Spool, stop: &Receiver<()>, deadline: Instant) -> u64 {
    let mut deleted = 0;
    for _ in 0..RECLAIM_PASSES_MAX {
        deleted += spool.reclaim().unwrap().segments_deleted;
        match stop.recv_timeout(RECLAIM_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return deleted,
        }
        assert!(
            Instant::now() < deadline,
            "reclaimer ran past {TEST_DURATION_MAX:?}"
        );
    }
    deleted
}

fn all_ids() -> impl Iterator<Item = u64> {
    1..=u64::from(WRITERS) * MESSAGES_PER_WRITER
}

/// The outcomes recorded for a recipient, in order. Ranks only rise, so
/// the last one is the final state.
fn planned_outcomes(id: u64, rcpt: u32) -> Vec<Status> {
    let deferred = |attempts| Status::Deferred {
        attempts,
        next_attempt_ms: id * 1000 + u64::from(attempts),
    };
    if (id / DELIVERED_RUN).is_multiple_of(2) {
        return vec![Status::Delivered { attempts: 1 }];
    }
    match (id + u64::from(rcpt)) % 5 {
        0 => vec![],
        1 => vec![Status::Delivered { attempts: 1 }],
        2 => vec![deferred(1)],
        3 => vec![deferred(1), deferred(2)],
        _ => vec![deferred(1), Status::Failed { attempts: 1 }],
    }
}

fn expected_statuses(id: u64) -> Vec<Status> {
    (0..recipient_count(id))
        .map(|rcpt| {
            planned_outcomes(id, rcpt)
                .last()
                .copied()
                .unwrap_or(Status::Pending)
        })
        .collect()
}

fn recipient_count(id: u64) -> u32 {
    1 + (id % RECIPIENTS_MAX) as u32
}

fn recipient_addresses(id: u64) -> Vec<Vec<u8>> {
    numbered_addresses(id, recipient_count(id), "example.net")
}

/// The body of message `id`, its length and bytes drawn from the id.
fn body(id: u64) -> Vec<u8> {
    let mut rng = XorShift::new(id);
    let len = 32 + rng.below(BODY_BYTES_MAX) as usize;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

fn message<'a>(id: u64, rcpts: &'a [NewRecipient<'a>], body: &'a [u8]) -> NewMessage<'a> {
    NewMessage {
        peer: b"[::1]:2525",
        transport: b"",
        ..common::message(id, id, rcpts, body)
    }
}

fn config(dir: &std::path::Path) -> SpoolConfig {
    let mut config = common::config(dir, SEGMENT_BYTES);
    config.sync = SyncMode::Group;
    config
}
