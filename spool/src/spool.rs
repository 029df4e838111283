//! The spool as a whole: the directory, the table of mapped segments shared
//! by every thread, the index, and the thread that prepares segments ahead
//! of the writers.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use crate::config::SpoolConfig;
use crate::directory::Directory;
use crate::error::{io_err, Error, Result};
use crate::index::{Index, IndexCounts};
use crate::record::{decode_frame, Link, MessageView, Outcome, RecordType, Status};
use crate::recovery::{self, Recovered};
use crate::segment::{sync_dir, Segment, SegmentHeader, SegmentId, SEGMENT_HEADER_BYTES};
use crate::writer::Writer;
use crate::{QueueId, RecordRef};

/// Writer id reserved for compaction and recovery's copies.
pub const COMPACTION_WRITER: u16 = 999;

/// State shared by the [`Spool`] handle, its writers and the preparer.
pub(crate) struct Shared {
    pub config: SpoolConfig,
    /// Looked up on every read: by an id baton hands out, so a fast hasher.
    pub segments: RwLock<foldhash::HashMap<SegmentId, Arc<Segment>>>,
    pub index: Mutex<Index>,
    /// Capacity of every segment in the table.
    pub used_bytes: AtomicU64,
    next_segment_id: Arc<AtomicU64>,
    /// Whether new messages wait for room; see [`SpaceWatch`].
    pub(crate) space: Arc<SpaceWatch>,
    /// Per writer id, the next seq for its file names.
    writer_seqs: Mutex<HashMap<u16, u64>>,
    open_writers: Mutex<HashSet<u16>>,
    /// Per writer id, the last segment it (or the run before) filled and
    /// its last frame's seq: the writer's next segment links to it.
    writer_tails: Mutex<HashMap<u16, Link>>,
    pub spares: Arc<Mutex<Vec<PathBuf>>>,
    /// `None` only while dropping, to stop the preparer.
    prepare_tx: Option<Sender<PrepareRequest>>,
    preparer: Option<thread::JoinHandle<()>>,
    /// Serialises reclamation passes.
    pub reclaim_lock: Mutex<()>,
    /// Held open with an exclusive `flock` for the spool's lifetime.
    _dir_lock: fs::File,
}

struct PrepareRequest {
    header: SegmentHeader,
    reply: Sender<Result<Arc<Segment>>>,
}

impl Shared {
    pub(crate) fn new(
        dir_lock: fs::File,
        config: SpoolConfig,
        next_segment_id: u64,
        writer_seqs: HashMap<u16, u64>,
        spares: Vec<PathBuf>,
    ) -> Arc<Shared> {
        let (prepare_tx, prepare_rx) = unbounded();
        let spares = Arc::new(Mutex::new(spares));
        let next_segment_id = Arc::new(AtomicU64::new(next_segment_id));
        let space = Arc::new(SpaceWatch {
            low: AtomicBool::new(false),
            available: AtomicU64::new(0),
        });
        let preparer = Preparer {
            dir: config.path.clone(),
            segment_bytes: config.segment_bytes,
            reserve: config.reserve_segments,
            free_bytes_min: config.free_bytes_min,
            spares: spares.clone(),
            next_segment_id: next_segment_id.clone(),
            space: space.clone(),
            clock: config.clock.clone(),
            names: config.directory.clone(),
            reserve_failed: false,
        };
        let preparer = thread::Builder::new()
            .name("spool-prepare".into())
            .spawn(move || preparer.run(prepare_rx))
            .expect("spawn the segment preparer");
        Arc::new(Shared {
            config,
            segments: RwLock::new(foldhash::HashMap::default()),
            index: Mutex::new(Index::default()),
            used_bytes: AtomicU64::new(0),
            next_segment_id,
            space,
            writer_seqs: Mutex::new(writer_seqs),
            open_writers: Mutex::new(HashSet::new()),
            writer_tails: Mutex::new(HashMap::new()),
            spares,
            prepare_tx: Some(prepare_tx),
            preparer: Some(preparer),
            reclaim_lock: Mutex::new(()),
            _dir_lock: dir_lock,
        })
    }

    /// Most spares kept: `spares_max` for reuse, plus the reserve.
    pub(crate) fn spares_cap(&self) -> usize {
        self.config.spares_max + self.config.reserve_segments
    }

    /// Measures the room left and says whether new messages must wait.
    pub(crate) fn refresh_space(&self) -> bool {
        let spares = self.spares.lock().expect("spares lock").len();
        self.space.refresh(
            &self.config.path,
            self.config.free_bytes_min,
            spares.saturating_sub(self.config.reserve_segments) as u64 * self.config.segment_bytes,
        )
    }

    /// Fills the reserve of spares now, on the caller's thread: recovery
    /// does, so that the first start does not make them while it takes
    /// traffic.
    pub(crate) fn refill_reserve(&self) -> Result<()> {
        refill_reserve(
            &self.config.path,
            self.config.segment_bytes,
            self.config.reserve_segments,
            &self.spares,
            &self.next_segment_id,
            &*self.config.clock,
            &*self.config.directory,
        )
    }

    /// Fails while the filesystem is below `free_bytes_min`, or while the
    /// spool is past `size_bytes_max`: outcomes, notifications and
    /// recovery's copies may take a segment past the limit, and new mail
    /// must not fill it (it did, a segment per roll-over, until the
    /// simulator's longer runs found the spool at twice its limit).
    pub(crate) fn check_room_for_messages(&self) -> Result<()> {
        if let Some(limit_bytes) = self.config.size_bytes_max {
            let used_bytes = self.used_bytes.load(Ordering::Relaxed);
            if used_bytes > limit_bytes {
                return Err(Error::Full {
                    used_bytes,
                    limit_bytes,
                });
            }
        }
        if self.space.low.load(Ordering::Relaxed) {
            return Err(Error::LowDisk {
                available_bytes: self.space.available.load(Ordering::Relaxed),
                min_bytes: self.config.free_bytes_min,
            });
        }
        Ok(())
    }

    pub(crate) fn next_writer_seq(&self, writer: u16) -> u64 {
        *self
            .writer_seqs
            .lock()
            .expect("seq lock")
            .get(&writer)
            .unwrap_or(&1)
    }

    /// Asks the preparer for a segment; the answer arrives on the receiver.
    pub(crate) fn prepare(
        &self,
        writer: u16,
        seq: u64,
        capacity: u64,
    ) -> Receiver<Result<Arc<Segment>>> {
        let id = SegmentId(self.next_segment_id.fetch_add(1, Ordering::Relaxed));
        {
            let mut seqs = self.writer_seqs.lock().expect("seq lock");
            let next = seqs.entry(writer).or_insert(1);
            *next = (*next).max(seq + 1);
        }
        let header = SegmentHeader {
            id,
            writer,
            seq,
            capacity,
            created_ms: self.config.clock.now_ms(),
        };
        let (reply, rx) = bounded(1);
        let request = PrepareRequest { header, reply };
        // If the preparer is gone, the reply channel is dropped with the
        // request, and the receiver reports a disconnected channel.
        let _ = self
            .prepare_tx
            .as_ref()
            .expect("preparer runs")
            .send(request);
        rx
    }

    /// Puts a segment in the table, ready for appends or reads.
    pub(crate) fn activate(&self, segment: &Arc<Segment>) {
        self.segments
            .write()
            .expect("segments lock")
            .insert(segment.id(), segment.clone());
        self.index
            .lock()
            .expect("index lock")
            .add_segment(segment.id());
        self.used_bytes
            .fetch_add(segment.capacity(), Ordering::Relaxed);
    }

    /// Whether a message may take a new segment of `capacity` bytes:
    /// within `size_bytes_max`, and with the filesystem above
    /// `free_bytes_min` (measured now: a writer rolls over once per
    /// segment).
    pub(crate) fn check_space(&self, capacity: u64) -> Result<()> {
        if let Some(limit_bytes) = self.config.size_bytes_max {
            let used_bytes = self.used_bytes.load(Ordering::Relaxed);
            if used_bytes + capacity > limit_bytes {
                return Err(Error::Full {
                    used_bytes,
                    limit_bytes,
                });
            }
        }
        self.refresh_space();
        self.check_room_for_messages()
    }

    /// Remembers the last segment a writer id filled; see `writer_tails`.
    pub(crate) fn set_writer_tail(&self, writer: u16, link: Link) {
        self.writer_tails
            .lock()
            .expect("tails lock")
            .insert(writer, link);
    }

    /// What a new writer with this id links its first segment to.
    pub(crate) fn take_writer_tail(&self, writer: u16) -> Option<Link> {
        self.writer_tails
            .lock()
            .expect("tails lock")
            .remove(&writer)
    }

    pub(crate) fn claim_writer(&self, id: u16) -> Result<()> {
        if !self.open_writers.lock().expect("writers lock").insert(id) {
            return Err(Error::WriterInUse(id));
        }
        Ok(())
    }

    pub(crate) fn release_writer(&self, id: u16) {
        self.open_writers.lock().expect("writers lock").remove(&id);
    }

    pub(crate) fn segment(&self, id: SegmentId) -> Option<Arc<Segment>> {
        self.segments
            .read()
            .expect("segments lock")
            .get(&id)
            .cloned()
    }
}

impl Drop for Shared {
    /// Stops the preparer and waits for it, so no segment file is still
    /// being made when the spool directory is opened again.
    fn drop(&mut self) {
        self.prepare_tx = None;
        if let Some(preparer) = self.preparer.take() {
            let _ = preparer.join();
        }
    }
}

/// Name of the lock file in the spool directory.
pub const LOCK_FILE: &str = "lock";

/// Takes the spool directory for this process: two spools on one directory
/// would write segment files of the same names over each other.
pub(crate) fn lock_dir(dir: &Path) -> Result<fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.to_path_buf())),
        Err(fs::TryLockError::Error(err)) => Err(io_err("lock", &path)(err)),
    }
}

/// How often the preparer, when idle, refills the reserve and measures the
/// room left: space comes back when segments are deleted, or when the
/// operator frees some, with nothing else to say so.
const SPACE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The room left on the spool's filesystem, as the preparer and
/// reclamation last measured it.
pub(crate) struct SpaceWatch {
    /// Below `free_bytes_min`: new messages wait.
    pub low: AtomicBool,
    /// Bytes available when last measured, spares beyond the reserve
    /// included.
    pub available: AtomicU64,
}

impl SpaceWatch {
    /// Measures with `statvfs`; returns whether space is low. Logs each
    /// change of state once.
    pub fn refresh(&self, dir: &Path, free_bytes_min: u64, spare_bytes: u64) -> bool {
        let Some(available) = available_bytes(dir) else {
            return self.low.load(Ordering::Relaxed);
        };
        let available = available + spare_bytes;
        self.available.store(available, Ordering::Relaxed);
        let low = free_bytes_min > 0 && available < free_bytes_min;
        let was = self.low.swap(low, Ordering::Relaxed);
        if low && !was {
            tracing::warn!(
                available_bytes = available,
                free_bytes_min,
                dir = %dir.display(),
                "spool filesystem low on space: new messages get 452 4.3.1; deliveries and their outcomes go on"
            );
        } else if was && !low {
            tracing::info!(
                available_bytes = available,
                "spool filesystem has room again: taking new messages"
            );
        }
        low
    }
}

/// Bytes an unprivileged process may still write on `dir`'s filesystem.
fn available_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The thread that makes segment files ahead of the writers, and keeps the
/// reserve of spares.
struct Preparer {
    dir: PathBuf,
    segment_bytes: u64,
    reserve: usize,
    free_bytes_min: u64,
    spares: Arc<Mutex<Vec<PathBuf>>>,
    next_segment_id: Arc<AtomicU64>,
    space: Arc<SpaceWatch>,
    clock: Arc<dyn crate::config::Clock>,
    names: Arc<dyn Directory>,
    /// The last attempt to refill the reserve failed (logged once).
    reserve_failed: bool,
}

impl Preparer {
    fn run(mut self, requests: Receiver<PrepareRequest>) {
        loop {
            match requests.recv_timeout(SPACE_CHECK_INTERVAL) {
                Ok(request) => self.prepare(request),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if requests.is_empty() {
                self.refill_reserve();
                self.refresh();
            }
        }
    }

    fn refresh(&self) {
        let spares = self.spares.lock().expect("spares lock").len();
        self.space.refresh(
            &self.dir,
            self.free_bytes_min,
            spares.saturating_sub(self.reserve) as u64 * self.segment_bytes,
        );
    }

    /// A spare beyond the reserve is recycled first (no zero-fill); the
    /// reserve only when no new file can be made, so that outcomes, and a
    /// restart, still find a segment on a full disk.
    fn prepare(&mut self, PrepareRequest { header, reply }: PrepareRequest) {
        let take_spare = |beyond_reserve: bool| {
            let mut spares = self.spares.lock().expect("spares lock");
            (header.capacity == self.segment_bytes
                && (!beyond_reserve || spares.len() > self.reserve))
                .then(|| spares.pop())
                .flatten()
        };
        let dir = &self.dir;
        let names = &*self.names;
        let recycle = |spare: PathBuf| {
            Segment::recycle(names, dir, &spare, header).or_else(|err| {
                tracing::warn!(%err, spare = %spare.display(), "could not recycle a spare segment; creating one");
                let _ = names.remove_file(&spare);
                Segment::create(names, dir, header)
            })
        };
        let made = match take_spare(true) {
            Some(spare) => recycle(spare),
            None => Segment::create(names, dir, header).or_else(|err| match take_spare(false) {
                Some(spare) if err.is_out_of_space() => {
                    tracing::warn!(%err, "no room for a new segment: using the reserve");
                    recycle(spare)
                }
                _ => Err(err),
            }),
        };
        let made = made.and_then(|segment| {
            if crate::plant::segment_name_unsynced() {
                return Ok(Arc::new(segment));
            }
            sync_dir(names, dir).map(|()| Arc::new(segment))
        });
        if made.as_ref().is_err_and(|err| err.is_out_of_space()) {
            self.refresh();
        }
        // The writer may be gone; then the file is picked up at recovery.
        let _ = reply.send(made);
    }

    /// Makes spares until the reserve is full, while there is room.
    fn refill_reserve(&mut self) {
        let made = refill_reserve(
            &self.dir,
            self.segment_bytes,
            self.reserve,
            &self.spares,
            &self.next_segment_id,
            &*self.clock,
            &*self.names,
        );
        match made {
            Ok(()) => self.reserve_failed = false,
            Err(err) => {
                if !self.reserve_failed {
                    tracing::warn!(%err, "cannot refill the spool's outcome reserve; trying again when there is room");
                    self.reserve_failed = true;
                }
            }
        }
    }
}

/// Makes spares until there are `reserve` of them, while the filesystem
/// has room for one more.
fn refill_reserve(
    dir: &Path,
    segment_bytes: u64,
    reserve: usize,
    spares: &Mutex<Vec<PathBuf>>,
    next_segment_id: &AtomicU64,
    clock: &dyn crate::config::Clock,
    names: &dyn Directory,
) -> Result<()> {
    while spares.lock().expect("spares lock").len() < reserve {
        if available_bytes(dir).is_some_and(|n| n < segment_bytes) {
            return Ok(());
        }
        let header = SegmentHeader {
            id: SegmentId(next_segment_id.fetch_add(1, Ordering::Relaxed)),
            writer: COMPACTION_WRITER,
            seq: 0,
            capacity: segment_bytes,
            created_ms: clock.now_ms(),
        };
        let path = Segment::create_spare(names, dir, header)?;
        sync_dir(names, dir)?;
        spares.lock().expect("spares lock").push(path);
    }
    Ok(())
}

/// A handle on the spool; cheap to clone and share between threads.
#[derive(Clone)]
pub struct Spool {
    pub(crate) shared: Arc<Shared>,
}

/// A record read in place from its segment's mapping. A clone shares the
/// mapping, which stays until the last clone is dropped.
#[derive(Clone)]
pub struct Record {
    segment: Arc<Segment>,
    kind: RecordType,
    payload_start: usize,
    payload_end: usize,
}

impl Record {
    pub fn kind(&self) -> RecordType {
        self.kind
    }

    /// The payload, borrowed from the mapping.
    pub fn payload(&self) -> &[u8] {
        &self.segment.bytes()[self.payload_start..self.payload_end]
    }

    /// Decodes a message record.
    pub fn message(&self) -> Result<MessageView<'_>> {
        if !self.kind.is_message() {
            return Err(Error::Malformed {
                what: "message",
                why: "the record is not a message",
            });
        }
        MessageView::decode_kind(self.kind, self.payload())
    }

    /// Decodes an outcome record.
    pub fn outcome(&self) -> Result<Outcome<'_>> {
        if self.kind != RecordType::Outcome {
            return Err(Error::Malformed {
                what: "outcome",
                why: "the record is not an outcome",
            });
        }
        Outcome::decode(self.payload())
    }
}

/// A message's state as the spool knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageState {
    pub body: RecordRef,
    pub statuses: Vec<Status>,
}

/// Sizes, for reports and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub segments: u64,
    pub used_bytes: u64,
    pub spares: u64,
    pub counts: IndexCounts,
}

impl Spool {
    /// Opens (creating if needed) the spool directory, recovers it, and
    /// returns the handle and what is still to be delivered.
    pub fn open(config: SpoolConfig) -> Result<(Spool, Recovered)> {
        config.validate()?;
        fs::create_dir_all(&config.path).map_err(io_err("create directory", &config.path))?;
        recovery::recover(config)
    }

    /// Opens the writer with this id (0 to 998; one per shard). There can
    /// be one writer per id at a time.
    pub fn writer(&self, id: u16) -> Result<Writer> {
        if id >= COMPACTION_WRITER {
            return Err(Error::WriterInUse(id));
        }
        self.internal_writer(id)
    }

    pub(crate) fn internal_writer(&self, id: u16) -> Result<Writer> {
        self.shared.claim_writer(id)?;
        Writer::new(self.shared.clone(), id).inspect_err(|_| self.shared.release_writer(id))
    }

    /// Resolves a reference, checking the frame's CRC again.
    pub fn read(&self, at: RecordRef) -> Result<Record> {
        let bad = || Error::BadReference {
            segment: at.segment,
            offset: at.offset,
        };
        let segment = self.shared.segment(at.segment).ok_or_else(bad)?;
        let start = usize::try_from(at.offset).map_err(|_| bad())?;
        let end = start.checked_add(at.len as usize).ok_or_else(bad)?;
        let bytes = segment.bytes().get(start..end).ok_or_else(bad)?;
        let frame = decode_frame(bytes, at.segment).map_err(|_| bad())?;
        let payload_start = start + crate::record::FRAME_HEADER_BYTES;
        let payload_end = payload_start + frame.payload.len();
        Ok(Record {
            kind: frame.kind,
            segment,
            payload_start,
            payload_end,
        })
    }

    /// The queue ids of the messages with a recipient still to settle,
    /// ascending (the order they were queued in), after `after`: for an
    /// operator's listing, a page at a time.
    pub fn open_messages(&self, after: Option<QueueId>, max: usize) -> Vec<QueueId> {
        let index = self.shared.index.lock().expect("index lock");
        let mut ids: Vec<QueueId> = index
            .messages()
            .filter(|(id, m)| {
                after.is_none_or(|a| **id > a) && m.recipients.iter().any(|r| !r.status.is_final())
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.truncate(max);
        ids
    }

    /// What the spool knows of a message, if it still has it.
    pub fn message(&self, id: QueueId) -> Option<MessageState> {
        let index = self.shared.index.lock().expect("index lock");
        index.message(id).map(|m| MessageState {
            body: m.body,
            statuses: m.recipients.iter().map(|r| r.status).collect(),
        })
    }

    /// Where message `id`'s record is, if the spool still has it: what
    /// [`Spool::message`] says, without the statuses (and their copy).
    pub fn message_at(&self, id: QueueId) -> Option<RecordRef> {
        let index = self.shared.index.lock().expect("index lock");
        index.message(id).map(|m| m.body)
    }

    /// Per recipient of a message, the durable outcome record that set its
    /// status, for its reply; `None` when the status came with the message
    /// record, or after compaction folded or moved the outcome. Read it
    /// with [`Spool::read`] and check that it is this message's and
    /// recipient's. (Apart from [`Spool::message`], which delivery calls
    /// for every message and which needs none of this.)
    pub fn latest_outcomes(&self, id: QueueId) -> Option<Vec<Option<RecordRef>>> {
        let index = self.shared.index.lock().expect("index lock");
        index
            .message(id)
            .map(|m| m.recipients.iter().map(|r| r.outcome_at).collect())
    }

    /// Bytes the segments take, by the spool's own count: what
    /// [`Spool::stats`] says, without its walk of the index.
    pub fn used_bytes(&self) -> u64 {
        self.shared.used_bytes.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            segments: self.shared.segments.read().expect("segments lock").len() as u64,
            used_bytes: self.shared.used_bytes.load(Ordering::Relaxed),
            spares: self.shared.spares.lock().expect("spares lock").len() as u64,
            counts: self.shared.index.lock().expect("index lock").counts(),
        }
    }

    pub fn config(&self) -> &SpoolConfig {
        &self.shared.config
    }

    /// Bytes of records a segment can hold.
    pub fn segment_payload_bytes(&self) -> u64 {
        self.shared.config.segment_bytes - SEGMENT_HEADER_BYTES
    }
}
