//! The append side: one [`Writer`] per shard, a sans-IO state machine.
//!
//! An append encodes the record into a staging buffer and returns at once
//! with the record's [`RecordRef`] and a [`Ticket`]. The writer does no I/O
//! itself: the caller asks [`Writer::next_io`] for the operations to submit
//! (positional writes and `fdatasync`s, each owning its buffer and holding
//! its segment, hence its file descriptor, until completion) and reports
//! their results with [`Writer::complete_write`] and
//! [`Writer::complete_sync`]. The engine submits them on its io_uring ring;
//! [`crate::BlockingWriter`] performs them with plain system calls.
//!
//! Durability follows from one rule: a datasync covers every write that
//! completed before it was submitted. The writer tracks `written`, the
//! highest ticket below which every write has completed, and a commit
//! started now covers exactly that. In `group` mode one commit is in flight
//! at a time and the next starts the moment it ends, so a commit covers all
//! that arrived while the previous one ran: batches grow with load and no
//! timer adds latency. Writes never wait for commits.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::config::SyncMode;
use crate::error::{Error, Result};
use crate::record::{encode_frame, frame_len, Link, NewMessage, Outcome, RecordType, Status};
use crate::segment::{Segment, SEGMENT_HEADER_BYTES};
use crate::spool::Shared;
use crate::{QueueId, RecordRef, Ticket};

/// Staging buffers kept for reuse.
const BUFFERS_SPARE_MAX: usize = 8;
/// A staging buffer is handed out for writing once it holds this much, even
/// within one turn of the caller's loop, so one write stays a sane size.
const WRITE_BYTES_MAX: usize = 4 << 20;

/// Identifies one submitted operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(u64);

/// An operation the caller must submit, then report with the matching
/// `complete_*` call.
#[derive(Debug)]
pub enum Io {
    Write(WriteOp),
    Sync(SyncOp),
}

/// Write `buf` at `offset` of the segment's file. The caller owns `buf`
/// until it hands it back with [`Writer::complete_write`].
#[derive(Debug)]
pub struct WriteOp {
    pub id: OpId,
    pub segment: Arc<Segment>,
    pub offset: u64,
    pub buf: Vec<u8>,
}

impl WriteOp {
    pub fn fd(&self) -> RawFd {
        self.segment.file().as_raw_fd()
    }
}

/// `fdatasync` the segment's file.
#[derive(Debug)]
pub struct SyncOp {
    pub id: OpId,
    pub segment: Arc<Segment>,
}

impl SyncOp {
    pub fn fd(&self) -> RawFd {
        self.segment.file().as_raw_fd()
    }
}

/// What an append returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Where the record is; readable once its write has completed.
    pub at: RecordRef,
    /// Durable once [`Writer::durable`] reaches it.
    pub ticket: Ticket,
}

/// Bytes bound for one place in one segment.
#[derive(Debug)]
struct Chunk {
    segment: Arc<Segment>,
    offset: u64,
    buf: Vec<u8>,
    /// Ticket of the last record in `buf`.
    last_ticket: u64,
}

#[derive(Debug)]
struct InFlightWrite {
    id: OpId,
    segment: Arc<Segment>,
    /// Where the part not yet written starts.
    offset: u64,
    last_ticket: u64,
    done: bool,
}

#[derive(Debug)]
struct Commit {
    covers: u64,
    syncs_pending: Vec<OpId>,
}

/// Appends records for one writer id. See the module documentation.
pub struct Writer {
    shared: Arc<Shared>,
    id: u16,
    mode: SyncMode,
    active: Arc<Segment>,
    /// Where the next frame goes in `active`.
    append_offset: u64,
    /// Sequence number of the last frame in `active`.
    frame_seq: u64,
    /// The next seq, in the writer's file names, not yet asked for.
    seq_next: u64,
    next_segment: Receiver<Result<Arc<Segment>>>,
    /// Frames not yet handed out, for `active`.
    staging: Option<Chunk>,
    /// Closed chunks waiting to be handed out, oldest first.
    queued: VecDeque<Chunk>,
    /// Remainders of short writes, to hand out again first.
    retries: VecDeque<WriteOp>,
    inflight: VecDeque<InFlightWrite>,
    /// Segments with completed writes no started commit covers.
    dirty: Vec<Arc<Segment>>,
    syncs_to_issue: VecDeque<SyncOp>,
    commit: Option<Commit>,
    /// Rolled-over segments, sealed once `durable` reaches their last ticket.
    sealing: VecDeque<(Arc<Segment>, u64)>,
    /// Outcomes appended and not yet durable, with their tickets, applied to
    /// the index once `durable` reaches them.
    outcomes_undurable: VecDeque<(u64, QueueId, u32, Status, RecordRef)>,
    next_op: u64,
    last_ticket: u64,
    written: u64,
    durable: u64,
    buffers: Vec<Vec<u8>>,
    failed: Option<(&'static str, io::ErrorKind, String)>,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, id: u16) -> Result<Writer> {
        let seq = shared.next_writer_seq(id);
        let first = shared
            .prepare(id, seq, shared.config.segment_bytes)
            .recv()
            .map_err(|_| Error::Config("the segment preparer has stopped".into()))??;
        shared.activate(&first);
        let next_segment = shared.prepare(id, seq + 1, shared.config.segment_bytes);
        let tail = shared.take_writer_tail(id);
        let mut writer = Writer {
            mode: shared.config.sync,
            shared,
            id,
            active: first,
            append_offset: SEGMENT_HEADER_BYTES,
            frame_seq: 0,
            seq_next: seq + 2,
            next_segment,
            staging: None,
            queued: VecDeque::new(),
            retries: VecDeque::new(),
            inflight: VecDeque::new(),
            dirty: Vec::new(),
            syncs_to_issue: VecDeque::new(),
            commit: None,
            sealing: VecDeque::new(),
            outcomes_undurable: VecDeque::new(),
            next_op: 0,
            last_ticket: 0,
            written: 0,
            durable: 0,
            buffers: Vec::new(),
            failed: None,
        };
        if let Some(link) = tail {
            writer.append_link(link)?;
        }
        Ok(writer)
    }

    /// Starts the active segment with a link to the one before it; see
    /// [`RecordType::Link`]. Nothing waits on its ticket: the next commit
    /// covers it with whatever follows.
    fn append_link(&mut self, link: Link) -> Result<()> {
        self.append(RecordType::Link, Link::PAYLOAD_BYTES, |out| {
            link.encode(out)
        })
        .map(|_| ())
    }

    /// This writer's id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Every ticket up to this one is durable.
    pub fn durable(&self) -> Ticket {
        Ticket(self.durable)
    }

    /// The ticket of the last append.
    pub fn last_ticket(&self) -> Ticket {
        Ticket(self.last_ticket)
    }

    /// Whether operations are submitted and not yet completed.
    pub fn io_in_flight(&self) -> bool {
        !self.inflight.is_empty() || self.commit.is_some()
    }

    /// The failure that stopped this writer, if any.
    pub fn failure(&self) -> Option<Error> {
        self.failed
            .as_ref()
            .map(|(what, kind, msg)| Error::WriterFailed {
                writer: self.id,
                what,
                source: io::Error::new(*kind, msg.clone()),
            })
    }

    /// Appends a message record and registers it as queued.
    /// Refused while the filesystem is below `free_bytes_min`, or when it
    /// would take the spool past `size_bytes_max`.
    pub fn append_message(&mut self, message: &NewMessage<'_>) -> Result<Appended> {
        self.shared.check_room_for_messages()?;
        self.append_message_as(message, true)
    }

    /// Appends a delivery status notification, a message that settles
    /// mail already accepted: like an outcome, never refused for space (a
    /// full spool lost bounces until the simulator found it).
    pub fn append_notification(&mut self, message: &NewMessage<'_>) -> Result<Appended> {
        self.append_message_as(message, false)
    }

    fn append_message_as(&mut self, message: &NewMessage<'_>, refusable: bool) -> Result<Appended> {
        let statuses: Vec<Status> = message.recipients.iter().map(|r| r.status).collect();
        let kind = RecordType::MessageV2;
        let appended = self.append_as(kind, message.payload_len(), refusable, |out| {
            message.encode(out)
        })?;
        self.shared
            .index
            .lock()
            .expect("index lock")
            .insert_message(message.queue_id, appended.at, &statuses);
        Ok(appended)
    }

    /// Appends an outcome record; it is applied to the index once durable.
    /// Outcomes are never refused for lack of space: recording a delivery is
    /// what frees space.
    ///
    /// Applying it earlier would let reclamation act on it before it can
    /// survive a crash: delete the message it makes final, or the segment
    /// holding the older outcome it supersedes, and after a crash the
    /// recipient is lost, or back to an older state (regression test:
    /// `tests/model.rs`).
    pub fn append_outcome(&mut self, outcome: &Outcome<'_>) -> Result<Appended> {
        if outcome.status == Status::Pending {
            return Err(Error::Malformed {
                what: "outcome",
                why: "an outcome cannot be pending",
            });
        }
        let appended = self.append(RecordType::Outcome, outcome.payload_len(), |out| {
            outcome.encode(out)
        })?;
        self.outcomes_undurable.push_back((
            appended.ticket.0,
            outcome.queue_id,
            outcome.recipient,
            outcome.status,
            appended.at,
        ));
        Ok(appended)
    }

    /// Appends a message without touching the index: compaction's and
    /// recovery's copies, indexed once durable. Never refused for space:
    /// they move mail already accepted, and compaction is what frees a
    /// full spool (a recovery that had to copy a damaged segment's frames
    /// on a spool past its limit refused to start until the simulator
    /// found it).
    pub(crate) fn append_message_unindexed(
        &mut self,
        message: &NewMessage<'_>,
    ) -> Result<Appended> {
        let kind = RecordType::MessageV2;
        self.append_as(kind, message.payload_len(), false, |out| {
            message.encode(out)
        })
    }

    /// Appends an outcome without touching the index (see above).
    pub(crate) fn append_outcome_unindexed(&mut self, outcome: &Outcome<'_>) -> Result<Appended> {
        self.append(RecordType::Outcome, outcome.payload_len(), |out| {
            outcome.encode(out)
        })
    }

    fn append(
        &mut self,
        kind: RecordType,
        payload_len: usize,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Appended> {
        self.append_as(kind, payload_len, kind.is_message(), encode)
    }

    /// `refusable`: a new segment for it must fit `size_bytes_max`.
    fn append_as(
        &mut self,
        kind: RecordType,
        payload_len: usize,
        refusable: bool,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Appended> {
        if let Some(err) = self.failure() {
            return Err(err);
        }
        let len = frame_len(payload_len) as u64;
        if len > self.shared.config.record_bytes_max {
            return Err(Error::RecordTooLarge {
                len,
                limit: self.shared.config.record_bytes_max,
            });
        }
        if self.append_offset + len > self.active.capacity() {
            self.roll_over(len, refusable)?;
        }
        let offset = self.append_offset;
        let staging = match &mut self.staging {
            Some(chunk) => chunk,
            None => {
                let buf = self.buffers.pop().unwrap_or_default();
                self.staging.insert(Chunk {
                    segment: self.active.clone(),
                    offset,
                    buf,
                    last_ticket: 0,
                })
            }
        };
        self.frame_seq += 1;
        let written = encode_frame(
            &mut staging.buf,
            self.active.id(),
            self.frame_seq,
            kind,
            encode,
        );
        debug_assert_eq!(written as u64, len);
        self.last_ticket += 1;
        staging.last_ticket = self.last_ticket;
        self.append_offset += len;
        if self.mode == SyncMode::Always || staging.buf.len() >= WRITE_BYTES_MAX {
            self.close_staging();
        }
        Ok(Appended {
            at: RecordRef {
                segment: self.active.id(),
                offset,
                len: len as u32,
            },
            ticket: Ticket(self.last_ticket),
        })
    }

    fn close_staging(&mut self) {
        if let Some(chunk) = self.staging.take() {
            self.queued.push_back(chunk);
        }
    }

    /// Moves to a new segment: the prepared one, or for a record larger
    /// than a segment, one of its own, made here (a blocking exception for
    /// records the engine's size limits normally rule out).
    fn roll_over(&mut self, len: u64, refusable: bool) -> Result<()> {
        let segment_bytes = self.shared.config.segment_bytes;
        let link_len = frame_len(Link::PAYLOAD_BYTES) as u64;
        let capacity = (SEGMENT_HEADER_BYTES + link_len + len)
            .next_multiple_of(4096)
            .max(segment_bytes);
        if refusable {
            self.shared.check_space(capacity)?;
        }
        let stopped = || Error::Config("the segment preparer has stopped".into());
        let next = if capacity == segment_bytes {
            let next = self.next_segment.recv().map_err(|_| stopped())?;
            self.next_segment = self.shared.prepare(self.id, self.seq_next, segment_bytes);
            self.seq_next += 1;
            next?
        } else {
            // The prepared segment stays prepared for the next roll-over.
            let dedicated = self.shared.prepare(self.id, self.seq_next, capacity);
            self.seq_next += 1;
            dedicated.recv().map_err(|_| stopped())??
        };
        self.close_staging();
        let old = std::mem::replace(&mut self.active, next);
        self.shared.activate(&self.active);
        let link = Link {
            previous: old.id(),
            previous_created_ms: old.header.created_ms,
            last_seq: self.frame_seq,
        };
        self.sealing.push_back((old, self.last_ticket));
        self.append_offset = SEGMENT_HEADER_BYTES;
        self.frame_seq = 0;
        self.seal_durable();
        self.append_link(link)
    }

    /// The next operation to submit, if any. Call until it returns `None`
    /// after appending and after completing operations.
    pub fn next_io(&mut self) -> Option<Io> {
        if self.failed.is_some() {
            return None;
        }
        if let Some(op) = self.retries.pop_front() {
            return Some(Io::Write(op));
        }
        if let Some(op) = self.syncs_to_issue.pop_front() {
            return Some(Io::Sync(op));
        }
        if let Some(op) = self.next_write() {
            return Some(Io::Write(op));
        }
        self.start_commit();
        self.syncs_to_issue.pop_front().map(Io::Sync)
    }

    fn next_write(&mut self) -> Option<WriteOp> {
        if self.mode == SyncMode::Always {
            // One record, one write, one sync, in turn.
            if !self.inflight.is_empty() || self.commit.is_some() || self.written != self.durable {
                return None;
            }
        }
        if self.queued.is_empty() {
            self.close_staging();
        }
        let chunk = self.queued.pop_front()?;
        let id = self.op_id();
        self.inflight.push_back(InFlightWrite {
            id,
            segment: chunk.segment.clone(),
            offset: chunk.offset,
            last_ticket: chunk.last_ticket,
            done: false,
        });
        Some(WriteOp {
            id,
            segment: chunk.segment,
            offset: chunk.offset,
            buf: chunk.buf,
        })
    }

    fn start_commit(&mut self) {
        if self.mode == SyncMode::None || self.commit.is_some() || self.dirty.is_empty() {
            return;
        }
        let mut syncs_pending = Vec::with_capacity(self.dirty.len());
        for segment in std::mem::take(&mut self.dirty) {
            let id = self.op_id();
            syncs_pending.push(id);
            self.syncs_to_issue.push_back(SyncOp { id, segment });
        }
        self.commit = Some(Commit {
            covers: self.written,
            syncs_pending,
        });
    }

    fn op_id(&mut self) -> OpId {
        self.next_op += 1;
        OpId(self.next_op)
    }

    /// Reports a write's result and hands its buffer back. A short write is
    /// resubmitted for the rest by the next `next_io`.
    pub fn complete_write(&mut self, id: OpId, result: io::Result<usize>, mut buf: Vec<u8>) {
        let Some(pos) = self.inflight.iter().position(|w| w.id == id) else {
            panic!("completion for unknown write {id:?}");
        };
        match result {
            Err(err) => return self.fail("write", err),
            Ok(n) if n < buf.len() => {
                if n == 0 {
                    return self.fail(
                        "write",
                        io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes"),
                    );
                }
                let entry = &mut self.inflight[pos];
                entry.offset += n as u64;
                let (segment, offset) = (entry.segment.clone(), entry.offset);
                buf.drain(..n);
                self.retries.push_back(WriteOp {
                    id,
                    segment,
                    offset,
                    buf,
                });
                return;
            }
            Ok(_) => {}
        }
        self.inflight[pos].done = true;
        if self.buffers.len() < BUFFERS_SPARE_MAX {
            buf.clear();
            self.buffers.push(buf);
        }
        while self.inflight.front().is_some_and(|w| w.done) {
            let write = self.inflight.pop_front().expect("front exists");
            self.written = self.written.max(write.last_ticket);
            if !self.dirty.iter().any(|s| s.id() == write.segment.id()) {
                self.dirty.push(write.segment);
            }
        }
        if self.mode == SyncMode::None {
            self.dirty.clear();
            self.durable = self.written;
            self.seal_durable();
        }
    }

    /// Reports a datasync's result.
    pub fn complete_sync(&mut self, id: OpId, result: io::Result<()>) {
        if let Err(err) = result {
            return self.fail("fdatasync", err);
        }
        let commit = self.commit.as_mut().expect("a sync completes a commit");
        let pos = commit
            .syncs_pending
            .iter()
            .position(|&op| op == id)
            .unwrap_or_else(|| panic!("completion for unknown sync {id:?}"));
        commit.syncs_pending.swap_remove(pos);
        if commit.syncs_pending.is_empty() {
            self.durable = commit.covers;
            self.commit = None;
            self.seal_durable();
        }
    }

    /// Applies the outcomes and seals the segments that `durable` now
    /// covers. Outcomes first: a sealed segment may be deleted at once, and
    /// the pins its outcomes hold must be counted by then.
    fn seal_durable(&mut self) {
        if self
            .outcomes_undurable
            .front()
            .is_some_and(|o| o.0 <= self.durable)
        {
            let mut index = self.shared.index.lock().expect("index lock");
            while self
                .outcomes_undurable
                .front()
                .is_some_and(|o| o.0 <= self.durable)
            {
                let (_, queue_id, recipient, status, at) =
                    self.outcomes_undurable.pop_front().expect("front exists");
                index.apply_outcome(queue_id, recipient, status, at);
            }
        }
        while self
            .sealing
            .front()
            .is_some_and(|(_, last)| *last <= self.durable)
        {
            let (segment, _) = self.sealing.pop_front().expect("front exists");
            segment.seal();
        }
    }

    fn fail(&mut self, what: &'static str, err: io::Error) {
        tracing::error!(writer = self.id, what, %err, "spool writer failed; no further appends");
        self.failed = Some((what, err.kind(), err.to_string()));
    }
}

impl Drop for Writer {
    /// Seals what can be sealed, so reclamation can take it, and gives back
    /// the writer id.
    fn drop(&mut self) {
        if self.failed.is_none() && self.durable == self.last_ticket && self.inflight.is_empty() {
            self.active.seal();
        }
        if self.frame_seq > 0 {
            self.shared.set_writer_tail(
                self.id,
                Link {
                    previous: self.active.id(),
                    previous_created_ms: self.active.header.created_ms,
                    last_seq: self.frame_seq,
                },
            );
        }
        // The prepared segment exists on disk: index it, empty and sealed,
        // so reclamation recycles it.
        if let Ok(Ok(prepared)) = self.next_segment.recv() {
            self.shared.activate(&prepared);
            prepared.seal();
        }
        self.shared.release_writer(self.id);
    }
}
