//! Spool benchmarks: durable appends per second, and recovery time.
//!
//! ```text
//! cargo bench -p baton-spool                     # everything: about 4.5 minutes
//! cargo bench -p baton-spool -- 'append(-recycled)?/group/.w/5KiB'   # the headline
//! cargo bench -p baton-spool -- recovery         # 1,000,000 pending recipients
//! ```
//!
//! - `append/<sync>/<writers>w/<body>`: a new spool that grows, so every
//!   segment is created (zero-filled) on the way.
//! - `append-recycled/group/...`: the same appends in a spool in its steady
//!   state, whose segments are recycled spares.
//! - `append-recycled-evicted/group/2w/5KiB`: the same, with the spares
//!   evicted from the page cache before use.
//! - `recovery/1M-pending/{warm,cold}`: `Spool::open` with the segments in
//!   the page cache, and evicted from it first.
//!
//! Spools live under `target/bench-spool/` (a real disk, not tmpfs) and are
//! removed when a benchmark ends. Figures, the machine and what they mean:
//! `bench/README.md`.

use std::cell::OnceCell;
use std::collections::VecDeque;
use std::fs;
use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use baton_spool::{
    BlockingWriter, NewMessage, NewRecipient, Outcome, QueueId, Spool, SpoolConfig, Status,
    SyncMode, Ticket,
};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};

/// Appended-but-not-durable records a shard keeps outstanding: the SMTP
/// sessions waiting for their `250` after DATA.
const WINDOW_RECORDS: usize = 256;
const BODY_BYTES: [usize; 3] = [1 << 10, 5 << 10, 100 << 10];
const WRITER_COUNTS: [u16; 2] = [1, 2];
const MODES: [(SyncMode, &str); 3] = [
    (SyncMode::Group, "group"),
    (SyncMode::Always, "always"),
    (SyncMode::None, "none"),
];
/// Queue ids of writer `i` start at `i * QUEUE_IDS_PER_WRITER`, so writers
/// never collide.
const QUEUE_IDS_PER_WRITER: u64 = 1 << 40;
/// Writers and body size of the headline figure.
const HEADLINE: (u16, usize) = (2, 5 << 10);
/// Spares kept by the steady-state spool: more 64 MiB segments than the
/// largest sample (about half a second of appends) fills.
const SPARES_RECYCLED: usize = 32;
/// Bytes of messages appended, delivered and reclaimed before measuring the
/// steady state, to make its first spares: 16 segments.
const PREFILL_BYTES: u64 = 1 << 30;

/// Pending recipients in the recovery benchmark's spool.
const RECOVERY_MESSAGES: u64 = 1_000_000;
const RECOVERY_BODY_BYTES: usize = 1 << 10;
/// Writers that build the recovery spool, as two shards would.
const RECOVERY_WRITERS: u16 = 2;

/// Where the benchmark spools go: under the workspace's `target/`.
fn spool_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-spool")
}

/// `dir`, emptied.
fn empty_dir(dir: &Path) -> PathBuf {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("create the benchmark spool directory");
    dir.to_path_buf()
}

fn config(dir: &Path, sync: SyncMode) -> SpoolConfig {
    let mut config = SpoolConfig::new(dir);
    config.sync = sync;
    config
}

/// How the spool comes by the segments it appends to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Segments {
    /// A new spool that grows: every segment is created and zero-filled.
    Created,
    /// A spool in its steady state, as in a relay whose deliveries keep up:
    /// segments are spares recycled. Between samples, untimed, everything
    /// appended is delivered and reclaimed.
    Recycled,
    /// As `Recycled`, but the spares also leave the page cache between
    /// samples, as when they wait long on a machine short of memory.
    Evicted,
}

impl Segments {
    fn recycled(self) -> bool {
        self != Segments::Created
    }
}

/// One shard: a writer and the queue ids it hands out.
struct Shard {
    writer: BlockingWriter,
    queue_id_next: u64,
    /// Messages from this id on are not delivered yet.
    queue_id_undelivered: u64,
}

impl Shard {
    fn new(spool: &Spool, id: u16) -> Shard {
        let queue_id_first = u64::from(id) * QUEUE_IDS_PER_WRITER + 1;
        Shard {
            writer: BlockingWriter::new(spool.writer(id).expect("open a writer")),
            queue_id_next: queue_id_first,
            queue_id_undelivered: queue_id_first,
        }
    }

    /// Appends one message with one recipient; returns its ticket.
    fn append(&mut self, body: &[u8]) -> Ticket {
        let rcpt = [NewRecipient {
            address: b"rcpt@example.org",
            params: b"",
            status: Status::Pending,
        }];
        let message = NewMessage {
            queue_id: QueueId(self.queue_id_next),
            arrival_ms: 0,
            reverse_path: b"sender@example.com",
            mail_params: b"BODY=8BITMIME",
            identity: b"",
            peer: b"192.0.2.1:40000",
            transport: b"",
            recipients: &rcpt,
            body,
        };
        self.queue_id_next += 1;
        self.writer.append_message(&message).expect("append").ticket
    }

    /// Appends `count` messages as a shard full of sessions would: at most
    /// [`WINDOW_RECORDS`] wait for durability at once. Returns when all are
    /// durable.
    fn run(&mut self, count: u64, body: &[u8]) {
        let mut outstanding = VecDeque::with_capacity(WINDOW_RECORDS + 1);
        for _ in 0..count {
            outstanding.push_back(self.append(body));
            if outstanding.len() > WINDOW_RECORDS {
                let oldest = outstanding.pop_front().expect("over the window");
                self.writer.wait(oldest).expect("wait for durability");
            }
        }
        self.writer.flush().expect("flush");
    }

    /// Durably records every message appended so far as delivered.
    fn deliver_all(&mut self) {
        for queue_id in self.queue_id_undelivered..self.queue_id_next {
            let outcome = Outcome {
                queue_id: QueueId(queue_id),
                recipient: 0,
                status: Status::Delivered { attempts: 1 },
                time_ms: 0,
                reply: b"250 2.0.0 Ok",
            };
            self.writer
                .append_outcome(&outcome)
                .expect("append an outcome");
        }
        self.queue_id_undelivered = self.queue_id_next;
        self.writer.flush().expect("flush");
    }
}

/// Each shard appends `count` messages on its own thread; returns the wall
/// time from the common start until the last shard's records are durable.
fn run_shards(shards: &mut [Shard], count: u64, body: &[u8]) -> Duration {
    let start_line = Barrier::new(shards.len() + 1);
    thread::scope(|s| {
        let runs: Vec<_> = shards
            .iter_mut()
            .map(|shard| {
                let start_line = &start_line;
                s.spawn(move || {
                    start_line.wait();
                    shard.run(count, body);
                    Instant::now()
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        let ends = runs
            .into_iter()
            .map(|run| run.join().expect("shard thread"));
        ends.max().expect("at least one shard") - start
    })
}

/// Delivers everything and reclaims, so the segments become spares.
fn deliver_and_reclaim(spool: &Spool, shards: &mut [Shard]) {
    thread::scope(|s| {
        for shard in shards.iter_mut() {
            s.spawn(|| shard.deliver_all());
        }
    });
    spool.reclaim().expect("reclaim");
}

/// A new spool in `dir` with `writers` shards; with recycled segments,
/// with spares for more than one sample's appends.
fn open_shards(
    dir: &Path,
    sync: SyncMode,
    writers: u16,
    segments: Segments,
    body: &[u8],
) -> (Spool, Vec<Shard>) {
    let mut config = config(dir, sync);
    if segments.recycled() {
        config.spares_max = SPARES_RECYCLED;
    }
    let (spool, _) = Spool::open(config).expect("open the spool");
    let mut shards: Vec<Shard> = (0..writers).map(|id| Shard::new(&spool, id)).collect();
    if segments.recycled() {
        let count = PREFILL_BYTES / (u64::from(writers) * body.len() as u64);
        run_shards(&mut shards, count, body);
        deliver_and_reclaim(&spool, &mut shards);
    }
    (spool, shards)
}

/// Durable appends per second. One iteration is one message per writer.
/// The spool persists across samples, so with [`Segments::Created`]
/// segment creation is paid at its steady rate (one zero-filled 64 MiB file
/// per 64 MiB appended).
fn bench_append(group: &mut BenchmarkGroup<'_, WallTime>, sync: SyncMode, segments: Segments) {
    for writers in WRITER_COUNTS {
        for body_bytes in BODY_BYTES {
            if segments == Segments::Evicted && (writers, body_bytes) != HEADLINE {
                continue;
            }
            let name = format!("{}w/{}KiB", writers, body_bytes >> 10);
            let dir = spool_root().join("append");
            let body = vec![b'x'; body_bytes];
            // Opened on first use, so that a filter that skips this
            // benchmark skips its setup too.
            let mut opened: Option<(Spool, Vec<Shard>)> = None;
            group.throughput(Throughput::Elements(u64::from(writers)));
            group.bench_function(&name, |b| {
                let (spool, shards) = opened.get_or_insert_with(|| {
                    open_shards(&empty_dir(&dir), sync, writers, segments, &body)
                });
                b.iter_custom(|iters| {
                    let elapsed = run_shards(shards, iters, &body);
                    if segments.recycled() {
                        deliver_and_reclaim(spool, shards);
                    }
                    if segments == Segments::Evicted {
                        evict_from_page_cache(
                            spool_files(&dir).into_iter().filter(|p| is_spare(p)),
                        );
                    }
                    elapsed
                })
            });
            if opened.take().is_some() {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
}

fn append(c: &mut Criterion) {
    let variants = MODES
        .map(|(sync, name)| (sync, Segments::Created, format!("append/{name}")))
        .into_iter()
        .chain([
            (
                SyncMode::Group,
                Segments::Recycled,
                "append-recycled/group".to_string(),
            ),
            (
                SyncMode::Group,
                Segments::Evicted,
                "append-recycled-evicted/group".to_string(),
            ),
        ]);
    for (sync, segments, group_name) in variants {
        let mut group = c.benchmark_group(group_name);
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        // One fdatasync per record: each sample is small, so fewer of them.
        let measurement = if sync == SyncMode::Always { 2 } else { 3 };
        group.measurement_time(Duration::from_secs(measurement));
        bench_append(&mut group, sync, segments);
        group.finish();
    }
}

/// Builds a spool holding [`RECOVERY_MESSAGES`] messages of one pending
/// recipient each, as fast as possible (no syncs), then syncs its files once
/// so the cold variant can drop them from the page cache.
fn build_recovery_spool(dir: &Path) {
    let body = vec![b'x'; RECOVERY_BODY_BYTES];
    let (spool, mut shards) = open_shards(
        dir,
        SyncMode::None,
        RECOVERY_WRITERS,
        Segments::Created,
        &body,
    );
    run_shards(
        &mut shards,
        RECOVERY_MESSAGES / u64::from(RECOVERY_WRITERS),
        &body,
    );
    drop(shards);
    drop(spool);
    for file in spool_files(dir) {
        fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .expect("sync a segment");
    }
}

fn spool_files(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).expect("read the spool directory");
    entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect()
}

fn is_spare(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("spare-"))
}

/// Drops the files' clean pages from the page cache, without touching the
/// rest of the machine's cache.
fn evict_from_page_cache(paths: impl IntoIterator<Item = PathBuf>) {
    for path in paths {
        let file = fs::File::open(&path).expect("open a segment");
        // SAFETY: posix_fadvise only reads its integer arguments.
        let err = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(err, 0, "posix_fadvise({})", path.display());
    }
}

/// Time for `Spool::open` to scan, CRC-check and index the spool and list
/// its 1,000,000 pending recipients; with the segments in the page cache
/// (`warm`) and read from the disk (`cold`).
fn recovery(c: &mut Criterion) {
    let dir = spool_root().join("recovery");
    // Built on first use, so that a filter that skips recovery skips this.
    let built = OnceCell::new();
    let build = || {
        built.get_or_init(|| {
            let started = Instant::now();
            build_recovery_spool(&empty_dir(&dir));
            eprintln!(
                "recovery: built {RECOVERY_MESSAGES} messages in {:.1?}",
                started.elapsed()
            );
            // The first open seals the writers' unused prepared segments
            // into spares; every later open then finds the same files.
            drop(Spool::open(config(&dir, SyncMode::Group)).expect("first open"));
        })
    };

    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(RECOVERY_MESSAGES));
    for (name, cold) in [("1M-pending/warm", false), ("1M-pending/cold", true)] {
        group.bench_function(name, |b| {
            build();
            b.iter_custom(|iters| (0..iters).map(|_| time_recovery(&dir, cold)).sum())
        });
    }
    group.finish();
    let _ = fs::remove_dir_all(&dir);
}

/// One `Spool::open`, from the page cache or (`cold`) from the disk.
fn time_recovery(dir: &Path, cold: bool) -> Duration {
    if cold {
        // As after a reboot.
        evict_from_page_cache(spool_files(dir));
    }
    let start = Instant::now();
    let (spool, recovered) = Spool::open(config(dir, SyncMode::Group)).expect("recover");
    let elapsed = start.elapsed();
    assert_eq!(recovered.pending.len() as u64, RECOVERY_MESSAGES);
    drop(black_box((spool, recovered)));
    elapsed
}

criterion_group!(benches, append, recovery);
criterion_main!(benches);
