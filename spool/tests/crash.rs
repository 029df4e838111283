//! Crash recovery with real crashes: a child process (this test binary,
//! re-executed) appends as fast as it can and reports each record the
//! moment it is durable; the parent kills it with SIGKILL at a random point
//! and checks that the recovered spool holds everything the child reported.
//! Several generations run on one directory, each child continuing on what
//! the previous crash left. As in the engine, the child reclaims beside its
//! writers, and between some generations the parent delivers, compacts and
//! reclaims.
//!
//! A kill keeps the page cache, so this exercises the crash of the process
//! (torn writes, interrupted roll-overs, segment preparation, recycling and
//! reclamation, and recovery over recovery), not the loss of power.
//!
//! Set `BATON_SPOOL_CRASH_SEED` to replay a failing seed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::env;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use baton_spool::{
    BlockingWriter, NewMessage, NewRecipient, Outcome, PendingRecipient, QueueId, RecordRef,
    Recovered, Spool, SpoolConfig, Status, SyncMode, Ticket,
};
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

mod common;

use common::{assert_message, numbered_addresses, outcome, recipient, XorShift as Rng};

/// Set (to the spool directory) in the child's environment only.
const CHILD_DIR_ENV: &str = "BATON_SPOOL_CRASH_CHILD";
const SEED_ENV: &str = "BATON_SPOOL_CRASH_SEED";
const SEED_DEFAULT: u64 = 0x5eed_ba70_0c4a_5401;
/// The name of the test that is the child, for `--exact`.
const CHILD_TEST: &str = "child_appends_until_killed";
/// Every line the child means for the parent starts with this.
const ACK_PREFIX: &str = "ack ";

const GENERATIONS: u64 = 4;
/// The parent kills the child once it has reported this many durable
/// messages, drawn between the two.
const KILL_AFTER_MESSAGES_MIN: u64 = 500;
const KILL_AFTER_MESSAGES_MAX: u64 = 5000;
/// Everything, every generation included, or the test fails.
const TEST_DURATION_MAX: Duration = Duration::from_secs(60);
/// A child left alone stops by itself after this long.
const CHILD_DURATION_MAX: Duration = Duration::from_secs(90);

const SEGMENT_BYTES: u64 = 1 << 20;
const CHILD_WRITERS: u16 = 2;
/// The parent's writer id, apart from the children's.
const PARENT_WRITER: u16 = 7;
/// Segments the parent compacts in one pass.
const COMPACT_SEGMENTS_MAX: usize = 16;
/// Queue ids of one child writer: a disjoint range per writer.
const IDS_PER_WRITER: u64 = 1 << 24;
const MESSAGES_PER_WRITER_MAX: u64 = 1 << 20;
/// Appends a child writer may have ahead of its durable point.
const AWAITING_MAX: usize = 512;
const BODY_BYTES_MAX: u64 = 20 << 10;
/// The child's reclaimer: passes at most, and the pause between two.
const RECLAIM_PASSES_MAX: u64 = 100_000;
const RECLAIM_INTERVAL: Duration = Duration::from_millis(2);
const RECIPIENTS_MAX: u64 = 5;

/// The child: runs only when re-executed by [`crash_generations_lose_nothing_acknowledged`].
#[test]
fn child_appends_until_killed() {
    let Some(dir) = env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    child::run(Path::new(&dir));
}

#[test]
fn crash_generations_lose_nothing_acknowledged() {
    let seed = env::var(SEED_ENV)
        .ok()
        .map(|s| s.parse().expect("BATON_SPOOL_CRASH_SEED is a u64"))
        .unwrap_or(SEED_DEFAULT);
    eprintln!("crash test seed {seed} (replay with {SEED_ENV}={seed})");
    let started = Instant::now();
    let deadline = started + TEST_DURATION_MAX;
    // Kill points come from their own stream, so a seed replays them
    // whatever the deliveries drew.
    let mut kill_rng = Rng::new(seed);
    let mut rng = Rng::new(seed ^ 0xde11_7e12);
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    let mut parent_delivered = false;
    for generation in 0..GENERATIONS {
        let kill_after = KILL_AFTER_MESSAGES_MIN
            + kill_rng.below(KILL_AFTER_MESSAGES_MAX - KILL_AFTER_MESSAGES_MIN + 1);
        let acks = run_child(dir.path(), kill_after, deadline);
        model.apply(&acks, generation);
        let (spool, recovered) = Spool::open(config(dir.path())).unwrap();
        model.check(&spool, &recovered, generation);
        let report = &recovered.report;
        eprintln!(
            "generation {generation}: killed after {kill_after} messages; {} acks, {} pending, \
             {} segments, {} torn tails, {} reclaimed, recovered in {:?}",
            acks.len(),
            recovered.pending.len(),
            report.segments,
            report.torn_tails.len(),
            report.segments_reclaimed,
            report.elapsed
        );
        // Deliver some, as the engine would between crashes, at least once.
        if kill_rng.below(2) == 0 || (generation == GENERATIONS - 1 && !parent_delivered) {
            parent_delivered = true;
            model.deliver_and_reclaim(&spool, &recovered, &mut rng);
        }
        drop(spool);
    }
    // Recovery is idempotent: twice more, the same pending set, nothing to cut.
    let (spool, first) = Spool::open(config(dir.path())).unwrap();
    model.check(&spool, &first, GENERATIONS);
    drop(spool);
    let (spool, second) = Spool::open(config(dir.path())).unwrap();
    model.check(&spool, &second, GENERATIONS);
    assert!(second.report.torn_tails.is_empty(), "{:?}", second.report);
    assert_eq!(sorted(&first.pending), sorted(&second.pending));
    eprintln!(
        "crash test: {} messages acknowledged over {GENERATIONS} generations in {:?}",
        model.messages.len(),
        started.elapsed()
    );
}

/// Regression: `queue_id_max` counted message records only. When the
/// message with the highest id had been reclaimed while an outcome for it
/// survived in a segment kept by other messages, the next run reused the
/// id, and the old outcome applied to the new message at the next recovery:
/// a pending recipient silently became delivered.
#[test]
fn queue_id_max_covers_outcomes_of_reclaimed_messages() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(dir.path(), 64 << 10);
    let rcpt = [recipient(b"rcpt@example.org")];
    {
        let (spool, _) = Spool::open(config.clone()).unwrap();
        let mut writer = BlockingWriter::new(spool.writer(0).unwrap());
        // Message 100 nearly fills the first segment; message 50 and the
        // outcome for 100 go to the second.
        let big = vec![b'x'; 60 << 10];
        let first = writer.append_message(&message(100, &rcpt, &big)).unwrap();
        let second = writer
            .append_message(&message(50, &rcpt, &[b'y'; 8 << 10]))
            .unwrap();
        assert_ne!(first.at.segment, second.at.segment);
        writer.append_outcome(&delivered(100, 0)).unwrap();
        writer.flush().unwrap();
        drop(writer);
        spool.reclaim().unwrap();
        assert!(
            spool.message(QueueId(100)).is_none(),
            "message 100 is reclaimed"
        );
    }
    let (spool, recovered) = Spool::open(config.clone()).unwrap();
    assert_eq!(recovered.report.outcomes_orphaned, 1);
    let queue_id_max = recovered.queue_id_max;
    // The engine hands out ids above queue_id_max; every new message must
    // stay pending over the next restart.
    let new_ids = queue_id_max.0 + 1..=queue_id_max.0 + 60;
    let mut writer = BlockingWriter::new(spool.writer(0).unwrap());
    for id in new_ids.clone() {
        writer.append_message(&message(id, &rcpt, b"new")).unwrap();
    }
    writer.flush().unwrap();
    drop(writer);
    drop(spool);
    let (_, recovered) = Spool::open(config).unwrap();
    for id in new_ids {
        assert!(
            recovered
                .pending
                .iter()
                .any(|p| p.queue_id == QueueId(id) && p.status == Status::Pending),
            "new message {id} lost its recipient to the old outcome"
        );
    }
    assert_eq!(
        queue_id_max,
        QueueId(100),
        "the orphaned outcome for 100 is still on disk"
    );
}

/// Starts a child on `dir`, kills it after `kill_after` durable messages,
/// and returns every acknowledgement it printed before it died.
fn run_child(dir: &Path, kill_after: u64, deadline: Instant) -> Vec<Ack> {
    let mut child = Command::new(env::current_exe().unwrap())
        .args([
            CHILD_TEST,
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
            "-q",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-execute the test binary");
    let (acks_tx, acks_rx) = unbounded();
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = thread::spawn(move || read_acks(stdout, acks_tx));
    let mut acks = Vec::new();
    let mut messages = 0;
    let mut killed = false;
    loop {
        let ack = match acks_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ack) => ack,
            // The pipe closed: the child is dead and every line is read.
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                kill(&mut child);
                panic!("the crash test ran past {TEST_DURATION_MAX:?}");
            }
        };
        messages += u64::from(matches!(ack, Ack::Message(_)));
        acks.push(ack);
        if !killed && messages >= kill_after {
            kill(&mut child);
            killed = true;
        }
    }
    if !killed {
        // Ended by itself, or the reader failed: make sure it is gone.
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    reader.join().expect("the ack reader does not panic");
    assert!(
        killed && was_killed(status),
        "the child ended by itself ({status}) after {messages} messages"
    );
    acks
}

fn kill(child: &mut Child) {
    // SIGKILL on Unix.
    child.kill().expect("kill the child");
}

fn was_killed(status: ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

/// Reads the child's acknowledgements. A line cut short by the kill has no
/// newline: it was never complete, so it does not count.
fn read_acks(stdout: ChildStdout, acks: Sender<Ack>) {
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    // Bounded by the pipe: it closes when the child dies.
    loop {
        line.clear();
        if stdout
            .read_line(&mut line)
            .expect("read the child's stdout")
            == 0
        {
            return;
        }
        let Some(ack) = line.strip_prefix(ACK_PREFIX) else {
            continue; // the test harness's own lines
        };
        if !line.ends_with('\n') {
            continue;
        }
        let ack = Ack::parse(ack.trim_end()).unwrap_or_else(|| panic!("bad ack line {line:?}"));
        if acks.send(ack).is_err() {
            return;
        }
    }
}

/// What the child reports once it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ack {
    /// `M <queue id>`: the message record.
    Message(u64),
    /// `O <queue id> <recipient>`: the planned outcome of the recipient
    /// (see [`planned_outcome`]).
    Outcome(u64, u32),
}

impl Ack {
    fn line(self) -> String {
        match self {
            Ack::Message(id) => format!("{ACK_PREFIX}M {id}\n"),
            Ack::Outcome(id, rcpt) => format!("{ACK_PREFIX}O {id} {rcpt}\n"),
        }
    }

    fn parse(s: &str) -> Option<Ack> {
        let mut words = s.split(' ');
        let ack = match words.next()? {
            "M" => Ack::Message(words.next()?.parse().ok()?),
            "O" => Ack::Outcome(words.next()?.parse().ok()?, words.next()?.parse().ok()?),
            _ => return None,
        };
        words.next().is_none().then_some(ack)
    }
}

/// What the parent knows is durable.
#[derive(Default)]
struct Model {
    /// Per acknowledged message, the acknowledged status of each recipient
    /// (`None`: still pending as far as the parent knows).
    messages: HashMap<u64, Vec<Option<Status>>>,
}

impl Model {
    fn apply(&mut self, acks: &[Ack], generation: u64) {
        for &ack in acks {
            match ack {
                Ack::Message(id) => {
                    if let Some(old) = self.messages.get(&id) {
                        // A spool may hand an id out again only once nothing
                        // of the old message is left to apply to the new one.
                        assert!(
                            old.iter().all(|s| s.is_some_and(Status::is_final)),
                            "generation {generation}: queue id {id} reused while the old message is live: {old:?}"
                        );
                    }
                    self.messages
                        .insert(id, vec![None; recipient_count(id) as usize]);
                }
                Ack::Outcome(id, rcpt) => {
                    let statuses = self.messages.get_mut(&id).unwrap_or_else(|| {
                        panic!("generation {generation}: outcome for {id} before its message")
                    });
                    let planned = planned_outcome(id, rcpt).expect("an outcome the child plans");
                    statuses[rcpt as usize] = Some(planned);
                }
            }
        }
    }

    /// Checks a freshly recovered spool against what was acknowledged.
    fn check(&self, spool: &Spool, recovered: &Recovered, generation: u64) {
        let report = &recovered.report;
        assert!(
            report.damaged.is_empty(),
            "generation {generation}: {report:?}"
        );
        assert!(
            report.quarantined.is_empty(),
            "generation {generation}: {report:?}"
        );
        let mut pending: HashMap<(u64, u32), PendingRecipient> = HashMap::new();
        for p in &recovered.pending {
            let previous = pending.insert((p.queue_id.0, p.recipient), *p);
            assert!(
                previous.is_none(),
                "generation {generation}: {p:?} listed twice"
            );
            // Unacknowledged records may survive too; whatever survives is whole.
            assert!(p.recipient < recipient_count(p.queue_id.0), "{p:?}");
            let allowed = [
                Some(Status::Pending),
                planned_outcome(p.queue_id.0, p.recipient),
            ];
            assert!(
                allowed.contains(&Some(p.status)),
                "generation {generation}: {p:?}"
            );
            check_message_record(spool, p.queue_id.0, p.message);
        }
        let mut live_id_max = 0;
        for (&id, statuses) in &self.messages {
            for (rcpt, acked) in statuses.iter().enumerate() {
                let found = pending.get(&(id, rcpt as u32));
                let planned = planned_outcome(id, rcpt as u32);
                match (acked, found) {
                    (Some(status), found) if status.is_final() => assert!(
                        found.is_none(),
                        "generation {generation}: message {id} recipient {rcpt} was acknowledged {status:?}, is {found:?}"
                    ),
                    (Some(status), Some(p)) => assert_eq!(p.status, *status, "generation {generation}: {p:?}"),
                    (None, Some(_)) => {}
                    // An outcome written but not acknowledged before the kill.
                    (None, None) if planned.is_some_and(Status::is_final) => {}
                    (_, None) => {
                        panic!("generation {generation}: message {id} recipient {rcpt} ({acked:?}) is lost")
                    }
                }
                if found.is_some() {
                    live_id_max = live_id_max.max(id);
                }
            }
        }
        assert!(
            recovered.queue_id_max.0 >= live_id_max,
            "generation {generation}: queue_id_max {} below live message {live_id_max}",
            recovered.queue_id_max.0
        );
    }

    /// What the engine does between crashes: delivers every pending
    /// recipient of about a quarter of the messages with the parent's own
    /// writer, compacts, reclaims. Returns the segments deleted.
    fn deliver_and_reclaim(&mut self, spool: &Spool, recovered: &Recovered, rng: &mut Rng) {
        let mut ids: Vec<u64> = recovered.pending.iter().map(|p| p.queue_id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let chosen: HashSet<u64> = ids.into_iter().filter(|_| rng.below(4) == 0).collect();
        let is_chosen = |p: &&PendingRecipient| chosen.contains(&p.queue_id.0);
        let mut writer = BlockingWriter::new(spool.writer(PARENT_WRITER).unwrap());
        for p in recovered.pending.iter().filter(is_chosen) {
            writer
                .append_outcome(&delivered(p.queue_id.0, p.recipient))
                .unwrap();
        }
        writer.flush().unwrap();
        for p in recovered.pending.iter().filter(is_chosen) {
            if let Some(statuses) = self.messages.get_mut(&p.queue_id.0) {
                statuses[p.recipient as usize] = Some(Status::Delivered { attempts: 1 });
            }
        }
        // Runs of delivered messages pin one another's segments through
        // their trailing outcomes; compaction breaks the chains.
        let before = spool.stats();
        let compacted = spool.compact(&mut writer, COMPACT_SEGMENTS_MAX).unwrap();
        drop(writer);
        spool.reclaim().unwrap();
        let after = spool.stats();
        assert!(compacted.segments <= COMPACT_SEGMENTS_MAX as u64);
        for &id in &chosen {
            if let Some(state) = spool.message(QueueId(id)) {
                assert!(
                    state.statuses.iter().all(|s| s.is_final()),
                    "{id}: {state:?}"
                );
            }
        }
        // Compaction and reclamation kept everything still needed, intact.
        for p in recovered.pending.iter().filter(|p| !is_chosen(p)) {
            let state = spool.message(p.queue_id).expect("a live message stays");
            assert_eq!(state.statuses[p.recipient as usize], p.status, "{p:?}");
            check_message_record(spool, p.queue_id.0, state.body);
        }
        eprintln!(
            "  delivered {} messages; compacted {} segments ({} messages copied); \
             segments {} -> {}, {} spares",
            chosen.len(),
            compacted.segments,
            compacted.messages_copied,
            before.segments,
            after.segments,
            after.spares
        );
    }
}

/// A message record reads back exactly as written.
fn check_message_record(spool: &Spool, id: u64, at: RecordRef) {
    let record = spool
        .read(at)
        .unwrap_or_else(|e| panic!("message {id} at {at:?}: {e}"));
    let view = record
        .message()
        .unwrap_or_else(|e| panic!("message {id} at {at:?}: {e}"));
    assert_message(&view, id, &body(id), &recipient_addresses(id));
}

fn sorted(pending: &[PendingRecipient]) -> Vec<(u64, u32, String)> {
    let mut out: Vec<_> = pending
        .iter()
        .map(|p| {
            (
                p.queue_id.0,
                p.recipient,
                format!("{:?} {:?}", p.status, p.message),
            )
        })
        .collect();
    out.sort();
    out
}

mod child {
    //! The child's side: open, append from several threads, report what is
    //! durable, until killed.

    use super::*;

    pub fn run(dir: &Path) {
        let (spool, recovered) = Spool::open(config(dir)).expect("child: open the spool");
        let report = &recovered.report;
        assert!(report.damaged.is_empty(), "child: {report:?}");
        let first_id = recovered.queue_id_max.0 + 1;
        let deadline = Instant::now() + CHILD_DURATION_MAX;
        let (acks_tx, acks_rx) = unbounded::<Ack>();
        let printer = thread::spawn(move || print_acks(acks_rx));
        // Never sent on: dropping the sender stops the reclaimer.
        let (stop_tx, stop_rx) = bounded::<()>(0);
        thread::scope(|s| {
            // As in the engine, reclamation runs beside the writers, so kills
            // land in the middle of it too.
            s.spawn(|| reclaim_until_stopped(&spool, &stop_rx));
            let writers: Vec<_> = (0..CHILD_WRITERS)
                .map(|writer_id| {
                    let spool = &spool;
                    let acks = acks_tx.clone();
                    let first_id = first_id + u64::from(writer_id) * IDS_PER_WRITER;
                    s.spawn(move || {
                        append_until_killed(spool, writer_id, first_id, deadline, &acks)
                    })
                })
                .collect();
            for writer in writers {
                writer.join().expect("a writer does not panic");
            }
            drop(stop_tx);
        });
        drop(acks_tx);
        printer.join().expect("the printer does not panic");
    }

    fn reclaim_until_stopped(spool: &Spool, stop: &Receiver<()>) {
        for _ in 0..RECLAIM_PASSES_MAX {
            spool.reclaim().expect("child: reclaim");
            match stop.recv_timeout(RECLAIM_INTERVAL) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// One printer thread, so lines never interleave; each batch is flushed
    /// at once.
    fn print_acks(acks: Receiver<Ack>) {
        let mut stdout = std::io::stdout().lock();
        let mut batch = String::new();
        // Bounded by the writers: they stop at their deadline.
        for ack in acks.iter() {
            batch.push_str(&ack.line());
            while let Ok(ack) = acks.try_recv() {
                batch.push_str(&ack.line());
            }
            stdout.write_all(batch.as_bytes()).expect("write acks");
            stdout.flush().expect("flush acks");
            batch.clear();
        }
    }

    fn append_until_killed(
        spool: &Spool,
        writer_id: u16,
        first_id: u64,
        deadline: Instant,
        acks: &Sender<Ack>,
    ) {
        let mut writer =
            BlockingWriter::new(spool.writer(writer_id).expect("child: open a writer"));
        // Appended, not yet durable, in ticket order.
        let mut awaiting: VecDeque<(Ticket, Ack)> = VecDeque::new();
        for n in 0..MESSAGES_PER_WRITER_MAX {
            if Instant::now() >= deadline {
                break;
            }
            let id = first_id + n;
            let addresses = recipient_addresses(id);
            let rcpts: Vec<NewRecipient<'_>> = addresses
                .iter()
                .map(|a| NewRecipient {
                    params: b"NOTIFY=FAILURE",
                    ..recipient(a)
                })
                .collect();
            let body = body(id);
            let appended = writer
                .append_message(&message(id, &rcpts, &body))
                .expect("append a message");
            awaiting.push_back((appended.ticket, Ack::Message(id)));
            if awaiting.len() > AWAITING_MAX {
                let (oldest, _) = awaiting[0];
                writer.wait(oldest).expect("wait for a commit");
            }
            report_durable(&mut writer, &mut awaiting, acks);
        }
        writer.flush().expect("flush");
        report_durable(&mut writer, &mut awaiting, acks);
    }

    /// Reports what became durable, and appends the planned outcomes of the
    /// messages among it.
    fn report_durable(
        writer: &mut BlockingWriter,
        awaiting: &mut VecDeque<(Ticket, Ack)>,
        acks: &Sender<Ack>,
    ) {
        let durable = writer.durable().expect("pump");
        let mut messages = Vec::new();
        while let Some(&(ticket, ack)) = awaiting.front() {
            if ticket > durable {
                break;
            }
            awaiting.pop_front();
            acks.send(ack).expect("the printer runs");
            if let Ack::Message(id) = ack {
                messages.push(id);
            }
        }
        for id in messages {
            for rcpt in 0..recipient_count(id) {
                let Some(status) = planned_outcome(id, rcpt) else {
                    continue;
                };
                let outcome = outcome(id, rcpt, status, id, b"250 2.0.0 ok");
                let appended = writer.append_outcome(&outcome).expect("append an outcome");
                awaiting.push_back((appended.ticket, Ack::Outcome(id, rcpt)));
            }
        }
    }
}

fn config(dir: &Path) -> SpoolConfig {
    let mut config = common::config(dir, SEGMENT_BYTES);
    config.sync = SyncMode::Group;
    // Only the parent compacts, and it compacts whatever qualifies.
    config.compact_age_ms_min = 0;
    config
}

/// The outcome the child appends for a recipient once its message is
/// durable, if any. Every other run of 1024 ids is delivered whole, so
/// that whole segments become free, are reclaimed and recycled; elsewhere
/// some first recipients are delivered and some second ones deferred, and
/// the messages stay.
fn planned_outcome(id: u64, rcpt: u32) -> Option<Status> {
    if (id >> 10) % 2 == 1 {
        return Some(Status::Delivered { attempts: 1 });
    }
    match rcpt {
        0 if id.is_multiple_of(3) => Some(Status::Delivered { attempts: 1 }),
        1 if id.is_multiple_of(5) => Some(Status::Deferred {
            attempts: 1,
            next_attempt_ms: id,
        }),
        _ => None,
    }
}

fn recipient_count(id: u64) -> u32 {
    2 + (id % (RECIPIENTS_MAX - 1)) as u32
}

fn recipient_addresses(id: u64) -> Vec<Vec<u8>> {
    numbered_addresses(id, recipient_count(id), "example.org")
}

/// The body of message `id`: mostly small, one in eight up to
/// [`BODY_BYTES_MAX`], its bytes drawn from the id.
fn body(id: u64) -> Vec<u8> {
    let mut rng = Rng::new(id);
    let len = if rng.below(8) == 0 {
        rng.below(BODY_BYTES_MAX)
    } else {
        64 + rng.below(4096)
    } as usize;
    let mut out = format!("Subject: message {id}\r\n\r\n").into_bytes();
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len.max(32));
    out
}

fn message<'a>(id: u64, rcpts: &'a [NewRecipient<'a>], body: &'a [u8]) -> NewMessage<'a> {
    NewMessage {
        mail_params: b"BODY=8BITMIME",
        peer: b"127.0.0.1:2525",
        transport: b"",
        ..common::message(id, id, rcpts, body)
    }
}

fn delivered(id: u64, rcpt: u32) -> Outcome<'static> {
    outcome(
        id,
        rcpt,
        Status::Delivered { attempts: 1 },
        1,
        b"250 2.0.0 ok",
    )
}
