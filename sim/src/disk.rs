//! The simulated disk under the spool's writes: the page cache is the
//! file, and what a power cut does to it is decided here.
//!
//! Every write the spool's writer asks for goes to its file at once, as to
//! the page cache (the spool reads records back through its memory maps),
//! and is remembered with the bytes it covered until a datasync of its
//! segment completes. A power cut then takes back, sector by sector and
//! independently, a random part of what was not synced: a write lost
//! whole, torn (some sectors kept), or a later write kept where an earlier
//! one was lost (reordering). A process crash keeps everything (the page
//! cache survives it). A datasync may fail (EIO); the writes it would have
//! covered then stay unsynced.

use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

use std::path::Path;

use baton_spool::record::decode_frame;
use baton_spool::segment::Segment;
use baton_spool::{MessageView, Outcome, QueueId, RecordRef, RecordType, SyncOp, WriteOp};

use crate::rng::Rng;

/// The unit a power cut keeps or loses: a disk writes sectors whole.
pub const SECTOR_BYTES: u64 = 512;

/// A write not yet covered by a datasync.
struct Unsynced {
    /// The file's inode: a datasync covers the file, whatever segment id
    /// it carries now (the spool recycles files).
    inode: u64,
    segment: Arc<Segment>,
    offset: u64,
    len: usize,
    /// What the file held there before: `None` for zeroes (most writes
    /// land on a fresh file's zero-filled space, and a copy of every write
    /// was a fiftieth of a seed).
    before: Option<Vec<u8>>,
    /// What the write put there, as a CRC32C per sector: enough to tell
    /// whether something else has written the sector since.
    after: Vec<u32>,
}

impl Unsynced {
    /// The bytes the file held at `range` of this write before it.
    fn before(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        match &self.before {
            Some(bytes) => bytes[range].to_vec(),
            None => vec![0; range.len()],
        }
    }
}

/// Whether every byte of `bytes` is zero.
fn all_zero(bytes: &[u8]) -> bool {
    let chunks = bytes.chunks_exact(16);
    let rest = chunks.remainder();
    chunks
        .map(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")))
        .all(|word| word == 0)
        && rest.iter().all(|&b| b == 0)
}

#[derive(Default)]
pub struct Disk {
    /// In the order written.
    unsynced: Vec<Unsynced>,
    /// Each segment's file's inode, asked once: an id is never reused.
    inodes: std::collections::HashMap<baton_spool::SegmentId, u64>,
    /// Writes and datasyncs done, and sectors a power cut took back.
    pub writes: u64,
    pub syncs: u64,
    pub sync_failures: u64,
    pub sectors_lost: u64,
    pub short_writes: u64,
    pub no_space: u64,
    pub bit_flips: u64,
}

/// What a write does besides writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFault {
    None,
    /// Writes only this many bytes (a signal, a full pipe of a device):
    /// the caller must write the rest.
    Short(usize),
    /// Fails with ENOSPC, writing nothing.
    NoSpace,
}

/// `ENOSPC` on Linux.
const ENOSPC: i32 = 28;

impl Disk {
    /// Does `op` (to the page cache) and remembers it until a datasync.
    pub fn write(&mut self, op: &WriteOp, fault: WriteFault) -> io::Result<usize> {
        let len = match fault {
            WriteFault::None => op.buf.len(),
            // At least a byte, never all: the writer writes the rest.
            WriteFault::Short(n) => n.clamp(1, op.buf.len().max(2) - 1).min(op.buf.len()),
            WriteFault::NoSpace => {
                self.no_space += 1;
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
        };
        let buf = &op.buf[..len];
        let file = op.segment.file();
        // What the page cache held there, read through the spool's own
        // mapping of the file (no read, no zeroed buffer).
        let at = op.offset as usize;
        let before = match op.segment.bytes().get(at..at + buf.len()) {
            Some(bytes) if all_zero(bytes) => None,
            Some(bytes) => Some(bytes.to_vec()),
            None => {
                let mut before = vec![0; buf.len()];
                file.read_exact_at(&mut before, op.offset)?;
                Some(before)
            }
        };
        file.write_all_at(buf, op.offset)?;
        self.writes += 1;
        let inode = match self.inodes.get(&op.segment.id()) {
            Some(&inode) => inode,
            None => {
                let inode = file.metadata()?.ino();
                self.inodes.insert(op.segment.id(), inode);
                inode
            }
        };
        self.unsynced.push(Unsynced {
            inode,
            segment: op.segment.clone(),
            offset: op.offset,
            len: buf.len(),
            before,
            after: buf
                .chunks(SECTOR_BYTES as usize)
                .map(crc32c::crc32c)
                .collect(),
        });
        if len < op.buf.len() {
            self.short_writes += 1;
        }
        Ok(len)
    }

    /// A datasync of `op`'s segment; `fail`: it reports EIO and covers
    /// nothing.
    pub fn sync(&mut self, op: &SyncOp, fail: bool) -> io::Result<()> {
        if fail {
            self.sync_failures += 1;
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        self.syncs += 1;
        let inode = match self.inodes.get(&op.segment.id()) {
            Some(&inode) => inode,
            None => op.segment.file().metadata()?.ino(),
        };
        self.unsynced.retain(|w| w.inode != inode);
        Ok(())
    }

    /// The process died: the page cache, hence every write, survives.
    pub fn crash(&mut self) {
        self.unsynced.clear();
    }

    /// Bit rot while baton is down: flips one bit of the record at `at`
    /// (in the spool directory `dir`), if a record of message `queue_id`
    /// is still there, intact. `false`: nothing was flipped (the file was
    /// reclaimed, compacted or recycled since).
    pub fn flip_bit(
        &mut self,
        dir: &Path,
        at: RecordRef,
        queue_id: QueueId,
        rng: &mut Rng,
    ) -> io::Result<bool> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "seg") {
                continue;
            }
            let Some(segment) = Segment::open(&path).map_err(io::Error::other)? else {
                continue;
            };
            if segment.id() != at.segment {
                continue;
            }
            let Some(bytes) = segment.bytes().get(at.offset as usize..) else {
                return Ok(false);
            };
            let Ok(frame) = decode_frame(bytes, at.segment) else {
                return Ok(false);
            };
            let its_own = match frame.kind {
                RecordType::Message | RecordType::MessageV2 => {
                    MessageView::decode_kind(frame.kind, frame.payload)
                        .is_ok_and(|m| m.queue_id == queue_id)
                }
                RecordType::Outcome => {
                    Outcome::decode(frame.payload).is_ok_and(|o| o.queue_id == queue_id)
                }
                RecordType::Link => false,
            };
            if !its_own || frame.len as u32 != at.len {
                return Ok(false);
            }
            let byte = at.offset + rng.range(0, u64::from(at.len));
            let mut one = [0u8];
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)?;
            file.read_exact_at(&mut one, byte)?;
            one[0] ^= 1 << rng.range(0, 8);
            file.write_all_at(&one, byte)?;
            self.bit_flips += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// The power went. `reorder`: each sector of each unsynced write is
    /// lost or kept at random (lost, torn, and later writes kept where
    /// earlier ones were lost); otherwise each file keeps a prefix of its
    /// unsynced sectors, in the order written, and loses the rest (a torn
    /// tail). Undone newest write first, so a lost sector gets back what its
    /// write found there; a sector something else has written since (the
    /// spool prepares and recycles files directly) is left alone.
    pub fn power_cut(&mut self, rng: &mut Rng, reorder: bool) -> io::Result<()> {
        let writes = std::mem::take(&mut self.unsynced);
        // Without reordering: per file, the sector count it keeps, drawn in
        // the order the files were first written (never a hash order: a
        // seed must replay exactly).
        let mut keep: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        if !reorder {
            let mut files: Vec<(u64, u64)> = Vec::new();
            for w in &writes {
                let sectors = (w.len as u64).div_ceil(SECTOR_BYTES);
                match files.iter_mut().find(|(inode, _)| *inode == w.inode) {
                    Some((_, total)) => *total += sectors,
                    None => files.push((w.inode, sectors)),
                }
            }
            for (inode, total) in files {
                keep.insert(inode, rng.range(0, total + 1));
            }
        }
        // Sectors of each file seen so far, oldest write first.
        let mut seen: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        let mut lose: Vec<(usize, usize, usize)> = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            let mut at = 0usize;
            while at < write.len {
                let end = (at + SECTOR_BYTES as usize).min(write.len);
                let n = seen.entry(write.inode).or_default();
                let lost = if reorder {
                    rng.chance(1, 2)
                } else {
                    *n >= keep[&write.inode]
                };
                *n += 1;
                if lost {
                    lose.push((i, at, end));
                }
                at = end;
            }
        }
        for (i, at, end) in lose.into_iter().rev() {
            let write = &writes[i];
            let file = write.segment.file();
            let mut now = vec![0; end - at];
            file.read_exact_at(&mut now, write.offset + at as u64)?;
            if crc32c::crc32c(&now) == write.after[at / SECTOR_BYTES as usize] {
                file.write_all_at(&write.before(at..end), write.offset + at as u64)?;
                self.sectors_lost += 1;
            }
        }
        Ok(())
    }
}

/// EIO, as `fdatasync` reports a failed write-back.
fn libc_eio() -> i32 {
    5
}
