//! Spool settings, and the clock and directory seams.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::directory::{Directory, SystemDirectory};
use crate::error::{Error, Result};
use crate::segment::SEGMENT_HEADER_BYTES;

/// When a record counts as durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// One `fdatasync` covers every write completed before it started; the
    /// next starts as soon as the previous one ends, so batches grow with
    /// load and no timer adds latency.
    #[default]
    Group,
    /// One write and one `fdatasync` per record, one after the other.
    Always,
    /// No sync: durable once written to the page cache. Loses acknowledged
    /// records on power loss. Benchmarks only.
    None,
}

impl SyncMode {
    /// Parses the configuration spelling.
    pub fn parse(s: &str) -> Option<SyncMode> {
        match s {
            "group" => Some(SyncMode::Group),
            "always" => Some(SyncMode::Always),
            "none" => Some(SyncMode::None),
            _ => None,
        }
    }
}

/// Unix time in milliseconds. Everything in the spool that needs the time
/// asks this, so tests can run hours of traffic without waiting.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Default segment capacity: 64 MiB.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Default largest record: 256 MiB.
pub const RECORD_BYTES_MAX_DEFAULT: u64 = 256 << 20;
/// Default number of deleted segments kept for reuse.
pub const SPARES_MAX_DEFAULT: usize = 4;
/// Default live fraction under which a sealed segment is compacted.
pub const COMPACT_LIVE_RATIO_DEFAULT: f64 = 0.25;
/// Default age of a segment before it may be compacted: 10 minutes.
pub const COMPACT_AGE_MS_MIN_DEFAULT: u64 = 10 * 60 * 1000;
/// Default spares kept on hand for outcomes: a writer's first segment and
/// the one prepared after it, so a spool restarted on a full disk can
/// record deliveries.
pub const RESERVE_SEGMENTS_DEFAULT: usize = 2;
/// Smallest segment we accept: header plus a useful amount of records.
const SEGMENT_BYTES_MIN: u64 = 64 << 10;

/// Everything the spool needs to know.
#[derive(Clone)]
pub struct SpoolConfig {
    /// The spool directory; created if missing.
    pub path: PathBuf,
    /// Capacity of one segment file (`segment_bytes`).
    pub segment_bytes: u64,
    pub sync: SyncMode,
    /// Appending a message fails with [`Error::Full`] past this many bytes of
    /// segments in use (`size_bytes_max`). `None`: no limit.
    pub size_bytes_max: Option<u64>,
    /// Largest record accepted (`record_bytes_max`).
    pub record_bytes_max: u64,
    /// Deleted segments kept as spares for reuse (`spares_max`).
    pub spares_max: usize,
    /// A sealed segment whose live bytes are at most this fraction of its
    /// capacity is compacted (`compact_live_ratio`).
    pub compact_live_ratio: f64,
    /// ... once it is at least this old (`compact_age_ms_min`).
    pub compact_age_ms_min: u64,
    /// New messages are refused ([`crate::Error::LowDisk`]) while the
    /// filesystem has fewer bytes available than this, counting spares
    /// beyond the reserve (`free_bytes_min`). Outcomes are never refused:
    /// this margin is their room. 0: no margin.
    pub free_bytes_min: u64,
    /// Spares the spool keeps ready, making them while there is room, so
    /// that outcomes can still roll over to a new segment, and a restart
    /// can open its writers, on a full disk (`reserve_segments`).
    pub reserve_segments: usize,
    pub clock: Arc<dyn Clock>,
    /// Where the spool creates, renames, removes and syncs its files'
    /// names: the filesystem, or the simulator's.
    pub directory: Arc<dyn Directory>,
}

impl fmt::Debug for SpoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolConfig")
            .field("path", &self.path)
            .field("segment_bytes", &self.segment_bytes)
            .field("sync", &self.sync)
            .field("size_bytes_max", &self.size_bytes_max)
            .field("record_bytes_max", &self.record_bytes_max)
            .field("spares_max", &self.spares_max)
            .field("compact_live_ratio", &self.compact_live_ratio)
            .field("compact_age_ms_min", &self.compact_age_ms_min)
            .field("free_bytes_min", &self.free_bytes_min)
            .field("reserve_segments", &self.reserve_segments)
            .finish_non_exhaustive()
    }
}

impl SpoolConfig {
    /// Defaults for a spool in `path`.
    pub fn new(path: impl Into<PathBuf>) -> SpoolConfig {
        SpoolConfig {
            path: path.into(),
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            sync: SyncMode::Group,
            size_bytes_max: None,
            record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
            spares_max: SPARES_MAX_DEFAULT,
            compact_live_ratio: COMPACT_LIVE_RATIO_DEFAULT,
            compact_age_ms_min: COMPACT_AGE_MS_MIN_DEFAULT,
            free_bytes_min: 0,
            reserve_segments: RESERVE_SEGMENTS_DEFAULT,
            clock: Arc::new(SystemClock),
            directory: Arc::new(SystemDirectory),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.segment_bytes < SEGMENT_BYTES_MIN || !self.segment_bytes.is_multiple_of(4096) {
            return Err(Error::Config(format!(
                "segment_bytes must be a multiple of 4096 and at least {SEGMENT_BYTES_MIN}, got {}",
                self.segment_bytes
            )));
        }
        if self.record_bytes_max < 1024
            || self.record_bytes_max > u32::MAX as u64 - SEGMENT_HEADER_BYTES
        {
            return Err(Error::Config(format!(
                "record_bytes_max must be between 1024 and {}, got {}",
                u32::MAX as u64 - SEGMENT_HEADER_BYTES,
                self.record_bytes_max
            )));
        }
        if !(0.0..=1.0).contains(&self.compact_live_ratio) {
            return Err(Error::Config(format!(
                "compact_live_ratio must be between 0 and 1, got {}",
                self.compact_live_ratio
            )));
        }
        Ok(())
    }
}
