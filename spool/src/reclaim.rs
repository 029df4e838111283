//! Reclamation: deleting segments nothing needs, and compacting segments
//! that little still needs.
//!
//! Deletion follows the rules in [`crate::index`]. A deleted segment becomes
//! a spare (renamed, kept for reuse: its blocks are already allocated, so
//! reusing it costs no zero-filling) while there are fewer than
//! `spares_max` spares and no reader holds its mapping; otherwise it is
//! unlinked.
//!
//! Compaction copies what still matters out of an old segment, so that a
//! few long-deferred messages do not pin gigabytes: every live message (its
//! record rewritten with the current state of each recipient) and every
//! latest outcome it holds for a message elsewhere. The copies are made
//! durable first; only then does the index move the messages and pins to
//! the new segment, and the old one becomes deletable.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::{io_err, Result};
use crate::record::{NewMessage, NewRecipient, Outcome};
use crate::segment::{spare_file_name, sync_dir, SegmentId};
use crate::spool::Spool;
use crate::writer::Writer;
use crate::{BlockingWriter, QueueId, RecordRef, Ticket};

/// What a reclamation pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    pub segments_deleted: u64,
    pub segments_recycled: u64,
    pub bytes_freed: u64,
}

/// Compaction's copies of one segment, appended and not yet known durable.
#[derive(Debug)]
pub struct CompactionCopies {
    segment: SegmentId,
    moved: Vec<(QueueId, RecordRef, Vec<Option<SegmentId>>)>,
    repointed: Vec<(QueueId, u32, SegmentId)>,
    /// The last copy's: once durable, apply them.
    pub ticket: Ticket,
    pub report: CompactReport,
}

impl CompactionCopies {
    /// The segment they copy from.
    pub fn segment(&self) -> SegmentId {
        self.segment
    }
}

/// The writer compaction appends its copies with, and how its writes go
/// out: at once ([`BlockingWriter`]), or later, by whoever drives a
/// sans-IO [`Writer`].
pub trait CompactionWriter {
    fn writer_mut(&mut self) -> &mut Writer;
    /// Submits what can be submitted (nothing, for a bare [`Writer`]).
    fn pump(&mut self) -> Result<()>;
}

impl CompactionWriter for BlockingWriter {
    fn writer_mut(&mut self) -> &mut Writer {
        BlockingWriter::writer_mut(self)
    }

    fn pump(&mut self) -> Result<()> {
        BlockingWriter::pump(self)
    }
}

impl CompactionWriter for Writer {
    fn writer_mut(&mut self) -> &mut Writer {
        self
    }

    fn pump(&mut self) -> Result<()> {
        match self.failure() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

/// What compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub segments: u64,
    pub messages_copied: u64,
    pub outcomes_copied: u64,
    pub bytes_copied: u64,
}

impl Spool {
    /// Deletes every sealed segment that nothing needs, repeating while a
    /// deletion frees further segments. Blocking: run it off the hot path.
    pub fn reclaim(&self) -> Result<ReclaimReport> {
        let shared = &self.shared;
        let _one_at_a_time = shared.reclaim_lock.lock().expect("reclaim lock");
        let mut report = ReclaimReport::default();
        let names = &*shared.config.directory;
        loop {
            let deletable = {
                let segments = shared.segments.read().expect("segments lock");
                let index = shared.index.lock().expect("index lock");
                index.deletable(|id| segments.get(&id).is_some_and(|s| s.is_sealed()))
            };
            if deletable.is_empty() {
                if report.segments_deleted > 0 {
                    shared.refresh_space();
                }
                return Ok(report);
            }
            for &id in &deletable {
                let Some(segment) = shared.segments.write().expect("segments lock").remove(&id)
                else {
                    continue;
                };
                shared
                    .used_bytes
                    .fetch_sub(segment.capacity(), Ordering::Relaxed);
                report.segments_deleted += 1;
                report.bytes_freed += segment.capacity();
                let path = segment.path().to_path_buf();
                let mut spares = shared.spares.lock().expect("spares lock");
                let recyclable = segment.capacity() == shared.config.segment_bytes
                    && spares.len() < shared.spares_cap()
                    && Arc::strong_count(&segment) == 1;
                if recyclable {
                    let spare = shared.config.path.join(spare_file_name(id));
                    names
                        .rename(&path, &spare)
                        .map_err(io_err("rename", &spare))?;
                    spares.push(spare);
                    report.segments_recycled += 1;
                } else {
                    names.remove_file(&path).map_err(io_err("remove", &path))?;
                }
            }
            // The deletions must be durable before the pins they held are
            // released: see the index's module documentation.
            sync_dir(names, &shared.config.path)?;
            let mut index = shared.index.lock().expect("index lock");
            for id in deletable {
                index.remove_segment(id);
            }
        }
    }

    /// Sealed segments worth compacting: old enough, and holding live data
    /// of at most `compact_live_ratio` of their capacity. Also, whatever
    /// their age, segments kept only by pins: when writers record outcomes
    /// for each other's messages, two segments can pin each other (A holds
    /// the outcomes of B's messages and B those of A's) and neither would
    /// ever be deleted; copying the few pinned outcomes forward breaks the
    /// cycle.
    pub fn compaction_candidates(&self) -> Vec<SegmentId> {
        let shared = &self.shared;
        let now = shared.config.clock.now_ms();
        let segments = shared.segments.read().expect("segments lock");
        let index = shared.index.lock().expect("index lock");
        let mut candidates: Vec<_> = segments
            .values()
            .filter(|s| s.is_sealed())
            .filter_map(|s| {
                let state = index.segment(s.id())?;
                if state.live_recipients == 0 {
                    // Pins only: compact now. Nothing at all: reclaim()
                    // takes it as it is.
                    return (state.pins > 0).then_some(s.id());
                }
                if now.saturating_sub(s.header.created_ms) < shared.config.compact_age_ms_min {
                    return None;
                }
                // An outcome copy is small; count each pin as one frame.
                let live = state.live_bytes + state.pins * 64;
                (live as f64 <= s.capacity() as f64 * shared.config.compact_live_ratio)
                    .then_some(s.id())
            })
            .collect();
        candidates.sort();
        candidates
    }

    /// Compacts up to `segments_max` candidates with `writer`, then reclaims.
    pub fn compact(
        &self,
        writer: &mut BlockingWriter,
        segments_max: usize,
    ) -> Result<CompactReport> {
        let mut report = CompactReport::default();
        for id in self.compaction_candidates().into_iter().take(segments_max) {
            let one = self.compact_segment(writer, id)?;
            report.segments += 1;
            report.messages_copied += one.messages_copied;
            report.outcomes_copied += one.outcomes_copied;
            report.bytes_copied += one.bytes_copied;
        }
        if report.segments > 0 {
            self.reclaim()?;
        }
        Ok(report)
    }

    /// Copies what still matters out of one segment, and waits for the
    /// copies to be durable before the index moves to them; see the module
    /// documentation.
    pub fn compact_segment(
        &self,
        writer: &mut BlockingWriter,
        id: SegmentId,
    ) -> Result<CompactReport> {
        let copies = self.compact_copy(writer, id)?;
        writer.flush()?;
        Ok(self.compact_apply(copies))
    }

    /// The first half of compacting segment `id`, sans IO: appends the
    /// copies with `writer`, pumping it after each one (the shard's or the
    /// housekeeper's I/O, or the simulator's disk). Hand the result to
    /// [`Spool::compact_apply`] once its `ticket` is durable; dropped
    /// before then (a crash), the copies are only duplicates that recovery
    /// folds.
    pub fn compact_copy(
        &self,
        writer: &mut impl CompactionWriter,
        id: SegmentId,
    ) -> Result<CompactionCopies> {
        let (live, pinned) = self.shared.index.lock().expect("index lock").live_in(id);
        let now = self.shared.config.clock.now_ms();
        let mut copies = CompactionCopies {
            segment: id,
            moved: Vec::with_capacity(live.len()),
            repointed: Vec::with_capacity(pinned.len()),
            ticket: Ticket(0),
            report: CompactReport {
                segments: 1,
                ..CompactReport::default()
            },
        };
        for m in live {
            let record = self.read(m.body)?;
            let view = record.message()?;
            let recipients: Vec<NewRecipient<'_>> = view
                .recipients()
                .zip(&m.statuses)
                .map(|(r, &status)| NewRecipient {
                    address: r.address,
                    params: r.params,
                    status,
                })
                .collect();
            let copy = NewMessage {
                queue_id: m.queue_id,
                arrival_ms: view.arrival_ms,
                reverse_path: view.reverse_path,
                mail_params: view.mail_params,
                identity: view.identity,
                peer: view.peer,
                transport: view.transport,
                recipients: &recipients,
                body: view.body,
            };
            let appended = writer.writer_mut().append_message_unindexed(&copy)?;
            writer.pump()?;
            copies.ticket = appended.ticket;
            copies.report.messages_copied += 1;
            copies.report.bytes_copied += u64::from(appended.at.len);
            copies.moved.push((m.queue_id, appended.at, m.outcomes));
        }
        for p in pinned {
            let outcome = Outcome {
                queue_id: p.queue_id,
                recipient: p.recipient,
                status: p.status,
                time_ms: now,
                reply: b"",
            };
            let appended = writer.writer_mut().append_outcome_unindexed(&outcome)?;
            writer.pump()?;
            copies.ticket = appended.ticket;
            copies.report.outcomes_copied += 1;
            copies.report.bytes_copied += u64::from(appended.at.len);
            copies
                .repointed
                .push((p.queue_id, p.recipient, appended.at.segment));
        }
        Ok(copies)
    }

    /// The second half: the copies are durable, so the index moves the
    /// segment's messages and pins to them, and the segment becomes
    /// deletable.
    pub fn compact_apply(&self, copies: CompactionCopies) -> CompactReport {
        let mut index = self.shared.index.lock().expect("index lock");
        for (queue_id, at, folded) in copies.moved {
            index.relocate(queue_id, copies.segment, at, &folded, true);
        }
        for (queue_id, recipient, to) in copies.repointed {
            index.repoint(queue_id, recipient, copies.segment, to);
        }
        copies.report
    }

    /// Drops a segment that has been emptied and moved away (quarantine).
    pub(crate) fn forget(&self, id: SegmentId) {
        if let Some(segment) = self
            .shared
            .segments
            .write()
            .expect("segments lock")
            .remove(&id)
        {
            self.shared
                .used_bytes
                .fetch_sub(segment.capacity(), Ordering::Relaxed);
        }
        self.shared
            .index
            .lock()
            .expect("index lock")
            .remove_segment(id);
    }
}
