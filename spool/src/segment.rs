//! Segment files: naming, preallocation, the read-only mapping.
//!
//! A segment is one file of fixed capacity, `<writer>-<seq>.seg`, written by
//! one writer from start to end and then sealed. It is created zero-filled
//! (or recycled from a deleted segment) and synced before any record goes
//! into it, so that a record's `fdatasync` writes data blocks only, never
//! file metadata: no size change, no extent conversion.
//!
//! The whole file is mapped read-only once, when the segment is created or
//! opened, and the mapping is shared by every thread through an
//! `Arc<Segment>`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::{Advice, Mmap};

use crate::directory::Directory;
use crate::error::{io_err, Result};

/// `b"BATONSEG"`.
const SEGMENT_MAGIC: [u8; 8] = *b"BATONSEG";
/// Version 2 segments start with a link frame when their writer filled a
/// segment before them, and have their header's capacity rewritten when
/// recovery cuts a torn tail: so a file shorter than its header says, or a
/// linked segment missing frames, is damage. Version 1 files are still read.
const SEGMENT_VERSION: u32 = 2;
/// The first version, still read: no links, cut tails not recorded.
const SEGMENT_VERSION_V1: u32 = 1;
/// Bytes at the start of a segment before its first record.
pub const SEGMENT_HEADER_BYTES: u64 = 64;
/// Zeroes are written in chunks of this size when a segment is created.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// While zero-filling, the file is synced every this many bytes, so the
/// disk takes the zeroes in slices between the writers' datasyncs instead
/// of one flush of a whole segment that the datasyncs queue behind (an A/B
/// run: p99 accept latency 18-31 ms instead of 20-58 ms).
const ZERO_SYNC_BYTES: u64 = 8 << 20;
/// Name of the folder that damaged segments are moved into.
pub const QUARANTINE_DIR: &str = "quarantine";
/// Segments are asked into the page cache in chunks of this size:
/// the kernel reads at most one read-ahead window (128 KiB by default) or
/// one largest device I/O, whichever is larger, per request.
const PREFETCH_CHUNK_BYTES: usize = 128 << 10;
/// Header byte that is 1 in a recycled file: frames of its earlier lives
/// may follow its own, so bytes after its last frame are no sign of a torn
/// write. Older files have 0 there.
const HEADER_RECYCLED_AT: usize = 56;

/// Unique id of a segment, never reused while a file that carries it exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the first bytes of a segment file say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub id: SegmentId,
    pub writer: u16,
    pub seq: u64,
    pub capacity: u64,
    pub created_ms: u64,
}

/// What recovery learns of a segment's header beyond its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderState {
    /// Written by a version that links segments and records cuts.
    pub linked_version: bool,
    /// The file is shorter than its header says: something cut it.
    pub truncated: bool,
}

impl SegmentHeader {
    fn encode(&self, recycled: bool) -> [u8; SEGMENT_HEADER_BYTES as usize] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES as usize];
        out[HEADER_RECYCLED_AT] = u8::from(recycled);
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.id.0.to_le_bytes());
        out[24..26].copy_from_slice(&self.writer.to_le_bytes());
        out[32..40].copy_from_slice(&self.seq.to_le_bytes());
        out[40..48].copy_from_slice(&self.capacity.to_le_bytes());
        out[48..56].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32c::crc32c(&out[16..]);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and checks a header; `None` if the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<SegmentHeader> {
        let bytes = bytes.get(..SEGMENT_HEADER_BYTES as usize)?;
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if bytes[0..8] != SEGMENT_MAGIC
            || !(version == SEGMENT_VERSION || version == SEGMENT_VERSION_V1)
            || crc32c::crc32c(&bytes[16..]) != crc
        {
            return None;
        }
        Some(SegmentHeader {
            id: SegmentId(u64_at(16)),
            writer: u16::from_le_bytes(bytes[24..26].try_into().expect("2 bytes")),
            seq: u64_at(32),
            capacity: u64_at(40),
            created_ms: u64_at(48),
        })
    }
}

/// File name of a writer's segment.
pub fn segment_file_name(writer: u16, seq: u64) -> String {
    format!("{writer:03}-{seq:010}.seg")
}

/// Parses `<writer>-<seq>.seg`.
pub fn parse_segment_file_name(name: &str) -> Option<(u16, u64)> {
    let stem = name.strip_suffix(".seg")?;
    let (writer, seq) = stem.split_once('-')?;
    Some((writer.parse().ok()?, seq.parse().ok()?))
}

/// File name of a spare: a deleted segment kept for reuse.
pub fn spare_file_name(id: SegmentId) -> String {
    format!("spare-{:016x}.seg", id.0)
}

/// One segment file and its read-only mapping.
pub struct Segment {
    pub header: SegmentHeader,
    path: PathBuf,
    file: File,
    map: Mmap,
    /// Set once every record of the segment is durable and no writer will
    /// append to it again.
    sealed: AtomicBool,
    /// The file had earlier lives; see `HEADER_RECYCLED_AT`.
    recycled: bool,
    state: HeaderState,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("header", &self.header)
            .field("path", &self.path)
            .field("sealed", &self.is_sealed())
            .finish()
    }
}

impl Segment {
    /// Creates a zero-filled segment, synced, under a temporary name, then
    /// renames it into place. The caller syncs the directory.
    pub fn create(names: &dyn Directory, dir: &Path, header: SegmentHeader) -> Result<Segment> {
        let path = dir.join(segment_file_name(header.writer, header.seq));
        let file = make_file(names, dir, &header, &path)?;
        Segment::from_file(
            file,
            path,
            header,
            false,
            HeaderState {
                linked_version: true,
                truncated: false,
            },
        )
    }

    /// Creates a spare: a zero-filled file kept for a later segment (the
    /// outcome reserve). Its header names a fresh id, so that no segment
    /// reuses that id while the file exists. The caller syncs the
    /// directory.
    pub fn create_spare(
        names: &dyn Directory,
        dir: &Path,
        header: SegmentHeader,
    ) -> Result<PathBuf> {
        let path = dir.join(spare_file_name(header.id));
        make_file(names, dir, &header, &path)?;
        Ok(path)
    }

    /// Gives a spare file a new life under a new header. Frames of its old
    /// life remain in it but carry the old segment id, so no scan will take
    /// them for records of the new segment. The caller syncs the directory.
    pub fn recycle(
        names: &dyn Directory,
        dir: &Path,
        spare: &Path,
        header: SegmentHeader,
    ) -> Result<Segment> {
        let path = dir.join(segment_file_name(header.writer, header.seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(spare)
            .map_err(io_err("open spare", spare))?;
        let len = file.metadata().map_err(io_err("stat", spare))?.len();
        if len != header.capacity {
            return Err(crate::Error::Config(format!(
                "spare {} has {len} bytes, expected {}",
                spare.display(),
                header.capacity
            )));
        }
        file.write_all_at(&header.encode(true), 0)
            .map_err(io_err("write header", spare))?;
        file.sync_data().map_err(io_err("fdatasync", spare))?;
        names
            .rename(spare, &path)
            .map_err(io_err("rename", &path))?;
        let segment = Segment::from_file(
            file,
            path,
            header,
            true,
            HeaderState {
                linked_version: true,
                truncated: false,
            },
        )?;
        // A spare's pages may have left the page cache while it waited. An
        // append rarely covers whole pages, and writing part of a page that
        // is not cached first reads that page from the disk, synchronously,
        // on the shard's thread: with evicted spares, two writers appended
        // 5 KiB records at 13,000/s instead of 130,000/s, and at 70,000 to
        // 90,000/s with this (bench/README.md). The writer comes to this
        // segment only once it has filled its current one, which leaves the
        // reads time to finish. A created segment needs none of this: its
        // zero-fill leaves it in the cache.
        segment.prefetch();
        Ok(segment)
    }

    /// Starts reading the whole file into the page cache, without waiting.
    pub(crate) fn prefetch(&self) {
        for offset in (0..self.map.len()).step_by(PREFETCH_CHUNK_BYTES) {
            let len = PREFETCH_CHUNK_BYTES.min(self.map.len() - offset);
            // Only a hint: should it fail, reads are slower, not wrong.
            let _ = self.map.advise_range(Advice::WillNeed, offset, len);
        }
    }

    /// Opens an existing segment read-write (recovery may cut its tail) and
    /// maps it. Returns `Ok(None)` when the header is not valid.
    pub fn open(path: &Path) -> Result<Option<Segment>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("open", path))?;
        let mut first = [0u8; SEGMENT_HEADER_BYTES as usize];
        if file.read_exact_at(&mut first, 0).is_err() {
            return Ok(None);
        }
        let Some(header) = SegmentHeader::decode(&first) else {
            return Ok(None);
        };
        let len = file.metadata().map_err(io_err("stat", path))?.len();
        if len < SEGMENT_HEADER_BYTES {
            return Ok(None);
        }
        // A cut tail makes the file shorter than its capacity. A version 2
        // file says so in its header when recovery cut it; shorter than
        // that, something else did.
        let state = HeaderState {
            linked_version: u32::from_le_bytes(first[8..12].try_into().expect("4 bytes"))
                == SEGMENT_VERSION,
            truncated: len < header.capacity,
        };
        let header = SegmentHeader {
            capacity: len.min(header.capacity),
            ..header
        };
        let recycled = first[HEADER_RECYCLED_AT] != 0;
        Segment::from_file(file, path.to_path_buf(), header, recycled, state).map(Some)
    }

    /// Opens a segment whose header does not check out (issue 10: its
    /// intact frames were lost with it). The first frame of a segment's
    /// life sits right after the header and carries the segment id: if
    /// that frame checks out, the segment is rebuilt around it from what
    /// its file name says (writer, seq); otherwise `None`. Taken as
    /// recycled, so that bytes past its last frame are not taken for a
    /// torn tail: the caller copies its records out and quarantines it.
    pub fn open_headless(path: &Path, writer: u16, seq: u64) -> Result<Option<Segment>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("open", path))?;
        let len = file.metadata().map_err(io_err("stat", path))?.len();
        let first = SEGMENT_HEADER_BYTES;
        let mut head = [0u8; crate::record::FRAME_HEADER_BYTES];
        if len < first + head.len() as u64 || file.read_exact_at(&mut head, first).is_err() {
            return Ok(None);
        }
        if u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) != crate::record::FRAME_MAGIC
        {
            return Ok(None);
        }
        let id = SegmentId(u64::from_le_bytes(head[8..16].try_into().expect("8 bytes")));
        let header = SegmentHeader {
            id,
            writer,
            seq,
            capacity: len,
            created_ms: 0,
        };
        // Whether it was linked or cut, the header no longer says.
        let state = HeaderState {
            linked_version: false,
            truncated: false,
        };
        let segment = Segment::from_file(file, path.to_path_buf(), header, true, state)?;
        let frame_ok = crate::record::decode_frame(&segment.bytes()[first as usize..], id).is_ok();
        Ok(frame_ok.then_some(segment))
    }

    #[allow(unsafe_code)] // the mapping: see `map_read_only`
    fn from_file(
        file: File,
        path: PathBuf,
        header: SegmentHeader,
        recycled: bool,
        state: HeaderState,
    ) -> Result<Segment> {
        // SAFETY: the file is a segment: bytes are only ever added to it by
        // positional writes at offsets past every record handed out, and it
        // is never truncated below a record handed out (recovery cuts a torn
        // tail before any slice of it exists). So no `&[u8]` taken from the
        // mapping sees its bytes change. See `map_read_only`.
        let map = unsafe { map_read_only(&file) }.map_err(io_err("mmap", &path))?;
        Ok(Segment {
            header,
            path,
            file,
            map,
            sealed: AtomicBool::new(false),
            recycled,
            state,
        })
    }

    pub fn id(&self) -> SegmentId {
        self.header.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// The whole mapped file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn capacity(&self) -> u64 {
        self.header.capacity
    }

    /// Whether the file had earlier lives, whose frames may follow this
    /// segment's own.
    pub fn is_recycled(&self) -> bool {
        self.recycled
    }

    /// What the header said beyond its fields.
    pub fn header_state(&self) -> HeaderState {
        self.state
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub(crate) fn seal(&self) {
        self.sealed.store(true, Ordering::Release);
    }

    /// Cuts the file at `len` and syncs. Only recovery calls this, before any
    /// slice of the cut range has been handed out.
    /// The header is rewritten with the new length as its capacity, so a
    /// later recovery knows the file was cut on purpose: a version 2 file
    /// shorter than its header says was cut by something else.
    pub(crate) fn cut(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(io_err("truncate", &self.path))?;
        if self.state.linked_version {
            let header = SegmentHeader {
                capacity: len,
                ..self.header
            };
            self.file
                .write_all_at(&header.encode(self.recycled), 0)
                .map_err(io_err("write header", &self.path))?;
        }
        self.file.sync_all().map_err(io_err("fsync", &self.path))
    }
}

/// Makes a zero-filled, synced file with `header` under a temporary name
/// and renames it to `path`.
fn make_file(
    names: &dyn Directory,
    dir: &Path,
    header: &SegmentHeader,
    path: &Path,
) -> Result<File> {
    let tmp = dir.join(format!("tmp-{:016x}.seg", header.id.0));
    let file = names.create_new(&tmp).map_err(io_err("create", &tmp))?;
    let filled = (|| {
        let zeroes = vec![0u8; ZERO_CHUNK_BYTES];
        let mut written = 0u64;
        let mut writer = &file;
        while written < header.capacity {
            let n = (header.capacity - written).min(ZERO_CHUNK_BYTES as u64) as usize;
            writer
                .write_all(&zeroes[..n])
                .map_err(io_err("zero-fill", &tmp))?;
            written += n as u64;
            if written.is_multiple_of(ZERO_SYNC_BYTES) {
                file.sync_data().map_err(io_err("fdatasync", &tmp))?;
            }
        }
        file.write_all_at(&header.encode(false), 0)
            .map_err(io_err("write header", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        names.rename(&tmp, path).map_err(io_err("rename", path))
    })();
    if let Err(err) = filled {
        // A half-made file holds space the disk may be out of, and a
        // retry makes another: it goes (issue 10: 20,184 of them in 2 s
        // on a full disk).
        let _ = names.remove_file(&tmp);
        return Err(err);
    }
    Ok(file)
}

/// Maps a whole file read-only.
///
/// # Safety
///
/// The caller promises that no byte of the file that a slice of the mapping
/// is borrowed for will change, and that the file is not truncated below
/// such a byte, while the mapping lives: either would be undefined behaviour
/// (or SIGBUS) for the holder of the slice. The spool keeps the promise by
/// writing only past the records it has handed out, and cutting only during
/// recovery, before it hands out any.
#[allow(unsafe_code)]
unsafe fn map_read_only(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: passed on from the caller.
    unsafe { Mmap::map(file) }
}

/// Syncs a directory, so that creations, renames and unlinks in it survive a
/// crash.
pub fn sync_dir(names: &dyn Directory, dir: &Path) -> Result<()> {
    names.sync(dir).map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::SystemDirectory;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(segment_file_name(3, 17), "003-0000000017.seg");
        assert_eq!(parse_segment_file_name("003-0000000017.seg"), Some((3, 17)));
        assert_eq!(parse_segment_file_name("spare-00ff.seg"), None);
        assert_eq!(parse_segment_file_name("003-17.tmp"), None);
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = SegmentHeader {
            id: SegmentId(9),
            writer: 2,
            seq: 5,
            capacity: 1 << 20,
            created_ms: 123,
        };
        let bytes = header.encode(false);
        assert_eq!(SegmentHeader::decode(&bytes), Some(header));
        let mut bad = bytes;
        bad[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), None);
    }

    #[test]
    fn created_segment_is_zeroed_and_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let header = SegmentHeader {
            id: SegmentId(1),
            writer: 0,
            seq: 1,
            capacity: 3 << 20,
            created_ms: 0,
        };
        let seg = Segment::create(&SystemDirectory, dir.path(), header).unwrap();
        assert_eq!(seg.bytes().len() as u64, header.capacity);
        assert!(seg.bytes()[SEGMENT_HEADER_BYTES as usize..]
            .iter()
            .all(|&b| b == 0));
        let reopened = Segment::open(seg.path()).unwrap().unwrap();
        assert_eq!(reopened.header, header);
    }

    /// Issue 10: on a full disk a failed creation left its temporary file
    /// behind, and every retry another. Needs root (a 512 KiB tmpfs).
    #[test]
    fn a_failed_creation_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k", "baton-test"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return;
        }
        let header = SegmentHeader {
            id: SegmentId(1),
            writer: 0,
            seq: 1,
            capacity: 2 << 20,
            created_ms: 0,
        };
        let error = Segment::create(&SystemDirectory, dir.path(), header).err();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        let error = error.expect("no room for a 2 MiB segment in 512 KiB");
        assert!(error.to_string().contains("zero-fill"), "{error}");
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
