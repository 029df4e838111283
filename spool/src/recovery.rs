//! Recovery: from the files in the spool directory back to the index and
//! the list of recipients still to deliver.
//!
//! Every segment is read whole and every frame's CRC verified. Within a
//! segment, frames follow one another; what follows the last good frame is
//! one of:
//! - zeroes: the unwritten part of the segment. Nothing to do.
//! - in a recycled file, frames of its earlier lives: nothing to do either.
//! - a *torn tail*: bytes of writes that were in flight at the crash and
//!   never covered by a sync, so never acknowledged. They are cut off (and
//!   the header rewritten to the new length). Only a writer's newest
//!   segment can have one: every segment a writer moves to starts with a
//!   link frame naming the one it filled and how many frames that one
//!   holds. A linked segment missing frames, a file shorter than its
//!   header says, or bytes after the end of a segment its writer moved on
//!   from, are damage: reported at ERROR with the count of records lost
//!   when a link gives it, the intact frames copied forward and the file
//!   quarantined.
//! - *damage*: a bad frame followed, further on, by good frames of the same
//!   segment. Every good frame on either side is recovered; the bad range is
//!   reported as an error, and the segment is quarantined: its live messages
//!   are copied into a fresh segment and the file is moved to
//!   `quarantine/` for the operator. Never a silent skip, never a panic.
//!
//! Damage can also be the trace of a crash when the kernel wrote back a
//! later page of unsynced writes before an earlier one; the frames after the
//! hole were never acknowledged, and recovering them loses nothing. It does
//! undo "a prefix of the appends is durable" for them: what must not
//! survive without an earlier record (an outcome without the notification
//! before it) waits for that record's datasync (`delivery::settle` in the
//! engine).
//!
//! Outcomes merge by rank (see [`Status::merge`]), so segments can be
//! applied in any order; messages are read first and outcomes applied after,
//! because a compacted copy of a message can sit in a newer segment than an
//! outcome that concerns it.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SpoolConfig;
use crate::directory::Directory;
use crate::error::{io_err, Result};
use crate::record::{
    decode_frame, Link, MessageView, Outcome, RecordType, Status, FRAME_ALIGN, FRAME_HEADER_BYTES,
    FRAME_MAGIC,
};
use crate::segment::{
    parse_segment_file_name, sync_dir, Segment, SegmentHeader, SegmentId, QUARANTINE_DIR,
    SEGMENT_HEADER_BYTES,
};
use crate::spool::{Shared, Spool, COMPACTION_WRITER};
use crate::{BlockingWriter, QueueId, RecordRef};

/// Most messages (and outcomes) recovery makes room for ahead, from what
/// the first segment held: a million index entries are about 100 MB.
const RECOVERY_RESERVE_MAX: usize = 1 << 20;

/// A recipient still to be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingRecipient {
    pub queue_id: QueueId,
    /// Index in the message's RCPT order.
    pub recipient: u32,
    /// [`Status::Pending`] or [`Status::Deferred`] with the attempt count and
    /// the time of the next attempt.
    pub status: Status,
    /// The message record.
    pub message: RecordRef,
}

/// A range of a segment that did not read as records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    /// Records known to be lost: a segment's successor says how many it
    /// held. `None` when nothing says.
    pub records_lost: Option<u64>,
}

/// What recovery found.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub segments: u64,
    pub bytes_scanned: u64,
    pub messages: u64,
    pub outcomes: u64,
    /// Outcomes for messages no longer on disk (already reclaimed): normal.
    pub outcomes_orphaned: u64,
    pub torn_tails: Vec<Damage>,
    pub damaged: Vec<Damage>,
    /// Where quarantined files were moved.
    pub quarantined: Vec<PathBuf>,
    pub segments_reclaimed: u64,
    pub elapsed: Duration,
}

/// The result of opening a spool.
#[derive(Debug)]
pub struct Recovered {
    /// Every recipient acknowledged and not final, in no particular order.
    pub pending: Vec<PendingRecipient>,
    /// The highest queue id on disk, in a message or an outcome record, so
    /// new ids can continue above it.
    pub queue_id_max: QueueId,
    pub report: RecoveryReport,
}

struct Found {
    segments: Vec<Segment>,
    spares: Vec<PathBuf>,
    /// Files with no valid segment header, and no frame to rebuild it from.
    unreadable: Vec<PathBuf>,
    /// Segments rebuilt around their first frame: their header was damaged.
    headless: Vec<SegmentId>,
    segment_id_max: u64,
    writer_seqs: HashMap<u16, u64>,
}

pub(crate) fn recover(config: SpoolConfig) -> Result<(Spool, Recovered)> {
    let started = Instant::now();
    let dir = config.path.clone();
    let dir_lock = crate::spool::lock_dir(&dir)?;
    let directory = config.directory.clone();
    let names = &*directory;
    let found = list(names, &dir, config.segment_bytes)?;
    let mut report = RecoveryReport::default();
    let shared = Shared::new(
        dir_lock,
        config,
        found.segment_id_max + 1,
        found.writer_seqs,
        found.spares,
    );
    let spool = Spool { shared };
    let mut queue_id_max = QueueId(0);

    for path in &found.unreadable {
        tracing::error!(path = %path.display(), "spool file has no valid segment header; quarantining it");
        report.quarantined.push(quarantine(names, &dir, path)?);
    }

    let mut segments = found.segments;
    segments.sort_by_key(|s| s.id());
    let mut outcomes = Vec::new();
    let mut damaged_segments = Vec::new();
    // First every segment is read, then each is judged: whether bytes
    // missing at its end are a torn tail or damage depends on its
    // writer's later segments (their links, whether they hold frames).
    let mut scanned: Vec<(Segment, Scan)> = Vec::with_capacity(segments.len());
    // Reading one segment ahead keeps the disk busy while the CPU checks
    // the current one: from a cold page cache, 1,000,000 messages took
    // 1.6 to 2.2 s to recover instead of 4.7 to 6 s (bench/README.md).
    let mut segments = segments.into_iter().peekable();
    if let Some(first) = segments.peek() {
        first.prefetch();
    }
    while let Some(segment) = segments.next() {
        if let Some(next) = segments.peek() {
            next.prefetch();
        }
        report.segments += 1;
        report.bytes_scanned += segment.capacity();
        let scan = {
            let mut index = spool.shared.index.lock().expect("index lock");
            index.add_segment(segment.id());
            scan(
                &segment,
                &mut index,
                &mut outcomes,
                &mut queue_id_max,
                &mut report,
            )
        };
        scanned.push((segment, scan));
        if scanned.len() == 1 {
            // The first segment says how full the others are likely to
            // be: room for that many, once, instead of the index and the
            // outcomes doubling their way there. Bounded, in case the
            // first is unlike the rest.
            let rest = segments.len();
            let guess = |first: usize| first.saturating_mul(rest).min(RECOVERY_RESERVE_MAX);
            spool
                .shared
                .index
                .lock()
                .expect("index lock")
                .reserve_messages(guess(report.messages as usize));
            outcomes.reserve(guess(outcomes.len()));
        }
    }
    // What the links say each linked segment holds; a link names a
    // segment by id and creation time, as ids are reused once their file
    // is gone.
    let expected: HashMap<(SegmentId, u64), u64> = scanned
        .iter()
        .filter_map(|(_, scan)| scan.link)
        .map(|link| ((link.previous, link.previous_created_ms), link.last_seq))
        .collect();
    let linked = |segment: &Segment| {
        expected
            .get(&(segment.id(), segment.header.created_ms))
            .copied()
    };
    // Per writer, its newest segment holding frames: the only place a
    // crash can leave a torn tail. The newest is the end of the chain of
    // links (no segment links it); a run's segments are not always used
    // in the order of their seq (a record larger than a segment gets one
    // of its own ahead of the one already prepared), but each run's seqs
    // are above every earlier file's.
    let mut newest: HashMap<u16, (u64, SegmentId)> = HashMap::new();
    for (segment, scan) in &scanned {
        if scan.frames > 0 && linked(segment).is_none() {
            let entry = newest
                .entry(segment.header.writer)
                .or_insert((segment.header.seq, segment.id()));
            if segment.header.seq >= entry.0 {
                *entry = (segment.header.seq, segment.id());
            }
        }
    }
    for (segment, scan) in scanned {
        let id = segment.id();
        let path = segment.path().to_path_buf();
        let headless = found.headless.contains(&id);
        let state = segment.header_state();
        let is_newest = newest.get(&segment.header.writer).map(|n| n.1) == Some(id);
        // Records a link says were here and are not.
        let missing = linked(&segment).map(|last_seq| last_seq.saturating_sub(scan.frames));
        if headless {
            tracing::error!(
                path = %path.display(),
                "damaged spool segment header; recovering its records and quarantining it"
            );
            report.damaged.push(Damage {
                path: path.clone(),
                offset: 0,
                bytes: crate::segment::SEGMENT_HEADER_BYTES,
                records_lost: None,
            });
        }
        for &(offset, bytes) in &scan.damage {
            tracing::error!(
                path = %path.display(), offset, bytes,
                "damaged records in the middle of a spool segment; recovering the records around them and quarantining the segment"
            );
            report.damaged.push(Damage {
                path: path.clone(),
                offset,
                bytes,
                records_lost: None,
            });
        }
        // A segment its writer moved on from, or one cut by something
        // other than recovery, lost its end to damage: a crash tears only
        // the end of a writer's newest segment, and never shortens a file.
        let end_damaged = match missing {
            Some(lost) => lost > 0,
            None => state.linked_version && (state.truncated || (scan.tail_dirty && !is_newest)),
        };
        if end_damaged {
            let records_lost = missing.filter(|&lost| lost > 0);
            tracing::error!(
                path = %path.display(),
                offset = scan.end,
                records_lost = records_lost.map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
                truncated = state.truncated,
                "a spool segment lost its end after it was written (truncated or damaged, not a torn tail); recovering the records before it and quarantining the segment"
            );
            report.damaged.push(Damage {
                path: path.clone(),
                offset: scan.end,
                bytes: segment.capacity().saturating_sub(scan.end),
                records_lost,
            });
        }
        let segment = if headless || !scan.damage.is_empty() || end_damaged {
            damaged_segments.push(id);
            segment
        } else if scan.tail_dirty {
            let cut = Damage {
                path: path.clone(),
                offset: scan.end,
                bytes: segment.capacity() - scan.end,
                records_lost: None,
            };
            tracing::warn!(path = %cut.path.display(), offset = cut.offset, "cutting a torn tail (unacknowledged writes in flight at a crash)");
            report.torn_tails.push(cut);
            segment.cut(scan.end)?;
            drop(segment);
            Segment::open(&path)?.expect("a segment whose header was just read")
        } else {
            segment
        };
        if is_newest && !damaged_segments.contains(&id) {
            // The writer's next segment links this one, so that a later
            // recovery can tell its end was reached.
            spool.shared.set_writer_tail(
                segment.header.writer,
                Link {
                    previous: id,
                    previous_created_ms: segment.header.created_ms,
                    last_seq: scan.last_seq,
                },
            );
        }
        segment.seal();
        spool.shared.activate(&Arc::new(segment));
    }

    {
        let mut index = spool.shared.index.lock().expect("index lock");
        for (queue_id, recipient, status, at) in outcomes {
            if !index.apply_outcome(queue_id, recipient, status, at) {
                report.outcomes_orphaned += 1;
            }
        }
    }

    if !damaged_segments.is_empty() {
        let mut copier = BlockingWriter::new(spool.internal_writer(COMPACTION_WRITER)?);
        for id in damaged_segments {
            spool.compact_segment(&mut copier, id)?;
            let segment = spool
                .shared
                .segment(id)
                .expect("recovered segment is in the table");
            report
                .quarantined
                .push(quarantine(names, &dir, segment.path())?);
            spool.forget(id);
        }
    }

    report.segments_reclaimed = spool.reclaim()?.segments_deleted;
    spool.resettle();
    // The reserve lets outcomes, and the next start, find a segment on a
    // full disk; failing to fill it now is no reason not to start.
    if let Err(err) = spool.shared.refill_reserve() {
        tracing::warn!(%err, "cannot fill the spool's outcome reserve; trying again when there is room");
    }
    spool.shared.refresh_space();
    let pending = pending(&spool);
    report.elapsed = started.elapsed();
    tracing::info!(
        segments = report.segments,
        pending = pending.len(),
        torn_tails = report.torn_tails.len(),
        damaged = report.damaged.len(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "spool recovered"
    );
    Ok((
        spool,
        Recovered {
            pending,
            queue_id_max,
            report,
        },
    ))
}

fn list(names: &dyn Directory, dir: &Path, segment_bytes: u64) -> Result<Found> {
    let mut found = Found {
        segments: Vec::new(),
        spares: Vec::new(),
        unreadable: Vec::new(),
        headless: Vec::new(),
        segment_id_max: 0,
        writer_seqs: HashMap::new(),
    };
    let entries = fs::read_dir(dir).map_err(io_err("read directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with("tmp-") && name.ends_with(".seg") {
            // A segment whose creation a crash interrupted; it never held a record.
            names.remove_file(&path).map_err(io_err("remove", &path))?;
        } else if name.starts_with("spare-") && name.ends_with(".seg") {
            // Its header still names its old id: no new segment may reuse
            // that id while its old frames exist.
            let header = spare_header(&path);
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match header {
                Some(h) if len == segment_bytes => {
                    found.segment_id_max = found.segment_id_max.max(h.id.0);
                    found.spares.push(path);
                }
                _ => names.remove_file(&path).map_err(io_err("remove", &path))?,
            }
        } else if let Some((writer, seq)) = parse_segment_file_name(name) {
            let next = found.writer_seqs.entry(writer).or_insert(1);
            *next = (*next).max(seq + 1);
            match Segment::open(&path)? {
                Some(segment) => {
                    found.segment_id_max = found.segment_id_max.max(segment.id().0);
                    found.segments.push(segment);
                }
                None => match Segment::open_headless(&path, writer, seq)? {
                    // Its frames are recovered like any, then it is
                    // copied forward and quarantined as damaged.
                    Some(segment) => {
                        found.segment_id_max = found.segment_id_max.max(segment.id().0);
                        found.headless.push(segment.id());
                        found.segments.push(segment);
                    }
                    None => found.unreadable.push(path),
                },
            }
        }
    }
    Ok(found)
}

/// A spare's header, read alone: the rest of the file (a whole segment)
/// would otherwise be read into memory at every start.
fn spare_header(path: &Path) -> Option<SegmentHeader> {
    let mut first = [0u8; SEGMENT_HEADER_BYTES as usize];
    fs::File::open(path)
        .and_then(|file| file.read_exact_at(&mut first, 0))
        .ok()?;
    SegmentHeader::decode(&first)
}

struct Scan {
    /// End of the last good frame.
    end: u64,
    /// Bad ranges followed by good frames.
    damage: Vec<(u64, u64)>,
    /// Bytes after the last good frame that a write of this segment may
    /// have left.
    tail_dirty: bool,
    /// Good frames, links included.
    frames: u64,
    /// Sequence number of the last good frame.
    last_seq: u64,
    /// The link this segment starts with, if any.
    link: Option<Link>,
}

fn scan(
    segment: &Segment,
    index: &mut crate::index::Index,
    outcomes: &mut Vec<(QueueId, u32, Status, RecordRef)>,
    queue_id_max: &mut QueueId,
    report: &mut RecoveryReport,
) -> Scan {
    let bytes = segment.bytes();
    let id = segment.id();
    let mut offset = SEGMENT_HEADER_BYTES as usize;
    let mut end = offset;
    let mut last_seq = 0;
    let mut frames = 0;
    let mut link = None;
    let mut damage = Vec::new();
    while offset + FRAME_HEADER_BYTES <= bytes.len() {
        let frame = decode_frame(&bytes[offset..], id)
            .ok()
            .filter(|f| f.seq > last_seq);
        let Some(frame) = frame else {
            match resync(bytes, offset + FRAME_ALIGN, id, last_seq) {
                Some(next) => {
                    damage.push((offset as u64, (next - offset) as u64));
                    offset = next;
                    continue;
                }
                None => break,
            }
        };
        let at = RecordRef {
            segment: id,
            offset: offset as u64,
            len: frame.len as u32,
        };
        let applied = match frame.kind {
            RecordType::Message | RecordType::MessageV2 => {
                MessageView::decode_kind(frame.kind, frame.payload).map(|m| {
                    let statuses: Vec<Status> = m.recipients().map(|r| r.status).collect();
                    *queue_id_max = (*queue_id_max).max(m.queue_id);
                    index.insert_message(m.queue_id, at, &statuses);
                    report.messages += 1;
                })
            }
            RecordType::Outcome => Outcome::decode(frame.payload).map(|o| {
                // An outcome can outlive its message (reclaimed): its id must
                // not be handed out again, or the outcome would apply to the
                // new message at the next recovery.
                *queue_id_max = (*queue_id_max).max(o.queue_id);
                outcomes.push((o.queue_id, o.recipient, o.status, at));
                report.outcomes += 1;
            }),
            RecordType::Link => Link::decode(frame.payload).map(|l| {
                if frame.seq == 1 {
                    link = Some(l);
                }
            }),
        };
        if applied.is_err() {
            // The CRC matched but the payload does not decode: written by a
            // buggy or foreign version. Damage, not a tail.
            damage.push((offset as u64, frame.len as u64));
        }
        last_seq = frame.seq;
        frames += 1;
        offset += frame.len;
        end = offset;
    }
    let tail_dirty = if segment.is_recycled() {
        // Earlier lives left their frames all over the file: only the
        // header of a next frame of this segment, right at the end, shows a
        // write of its own was torn (writes go on from the end). Counting
        // any byte would report a torn tail, and cut the file, after every
        // clean shutdown (regression test: `tests/churn.rs`).
        starts_with_own_frame(&bytes[end..], id)
    } else {
        bytes[end..].iter().any(|&b| b != 0)
    };
    Scan {
        end: end as u64,
        damage,
        tail_dirty,
        frames,
        last_seq,
        link,
    }
}

/// Whether `tail` starts with a frame of this segment, whole or torn: one
/// with its segment id, or one whose id field is damaged (the magic, but
/// not a good frame of the id it names, as a frame of an earlier life is).
fn starts_with_own_frame(tail: &[u8], id: SegmentId) -> bool {
    let Some(named) = tail.get(8..16) else {
        return false;
    };
    let named = SegmentId(u64::from_le_bytes(named.try_into().expect("8 bytes")));
    named == id || (tail[0..4] == FRAME_MAGIC.to_le_bytes() && decode_frame(tail, named).is_err())
}

/// The next offset after `from` where a good frame of this segment, later
/// than `last_seq`, starts.
fn resync(bytes: &[u8], from: usize, id: SegmentId, last_seq: u64) -> Option<usize> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut at = from.next_multiple_of(FRAME_ALIGN);
    while at + FRAME_HEADER_BYTES <= bytes.len() {
        if bytes[at..at + 4] == magic
            && decode_frame(&bytes[at..], id).is_ok_and(|f| f.seq > last_seq)
        {
            return Some(at);
        }
        at += FRAME_ALIGN;
    }
    None
}

/// Quarantined copies of one file name kept side by side.
const QUARANTINE_NAMES_MAX: u32 = 1000;

fn quarantine(names: &dyn Directory, dir: &Path, path: &Path) -> Result<PathBuf> {
    let qdir = dir.join(QUARANTINE_DIR);
    fs::create_dir_all(&qdir).map_err(io_err("create directory", &qdir))?;
    // Writer seqs can repeat across restarts: never overwrite what an
    // earlier recovery put aside.
    let name = path
        .file_name()
        .expect("a file")
        .to_string_lossy()
        .into_owned();
    let mut to = qdir.join(&name);
    for n in 1..=QUARANTINE_NAMES_MAX {
        if !to.exists() {
            break;
        }
        to = qdir.join(format!("{name}.{n}"));
    }
    if to.exists() {
        return Err(crate::Error::Config(format!(
            "{} already holds {QUARANTINE_NAMES_MAX} files named {name}: clean it up",
            qdir.display()
        )));
    }
    names.rename(path, &to).map_err(io_err("rename", &to))?;
    sync_dir(names, dir)?;
    sync_dir(names, &qdir)?;
    Ok(to)
}

fn pending(spool: &Spool) -> Vec<PendingRecipient> {
    let index = spool.shared.index.lock().expect("index lock");
    let mut pending = Vec::new();
    for (queue_id, m) in index.messages() {
        for (i, r) in m.recipients.iter().enumerate() {
            if !r.status.is_final() {
                pending.push(PendingRecipient {
                    queue_id: *queue_id,
                    recipient: i as u32,
                    status: r.status,
                    message: m.body,
                });
            }
        }
    }
    pending
}
