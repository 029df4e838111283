//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use crate::segment::SegmentId;

/// Everything the spool can fail with.
///
/// The engine maps each variant to one SMTP reply: [`Error::Full`] to
/// `452 4.3.1`, everything else that happens while accepting a message to
/// `451 4.3.0`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a spool file failed.
    #[error("spool I/O error: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A write or a datasync submitted by the writer's driver failed. The
    /// writer cannot tell what reached the disk (see "fsyncgate"), so it
    /// refuses every later append; the process must restart and recover.
    #[error("spool writer {writer} failed: {what}: {source}")]
    WriterFailed {
        writer: u16,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Appending would take the spool past `size_bytes_max`.
    #[error("spool is full: {used_bytes} bytes in use, limit {limit_bytes}")]
    Full { used_bytes: u64, limit_bytes: u64 },
    /// The spool's filesystem has less room than `free_bytes_min`: new
    /// messages wait, so that outcomes (which free space) always find
    /// room.
    #[error("spool filesystem low on space: {available_bytes} bytes available, {min_bytes} kept free for outcomes")]
    LowDisk {
        available_bytes: u64,
        min_bytes: u64,
    },
    /// A record is larger than `record_bytes_max`.
    #[error("record of {len} bytes is larger than the limit of {limit} bytes")]
    RecordTooLarge { len: u64, limit: u64 },
    /// A record reference does not resolve to a valid record.
    #[error("no valid record at segment {segment} offset {offset}")]
    BadReference { segment: SegmentId, offset: u64 },
    /// A record's payload does not decode.
    #[error("malformed {what} record: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
    /// The configuration is unusable.
    #[error("spool configuration: {0}")]
    Config(String),
    /// Another spool (in this process or another) has the directory.
    #[error("spool directory {} is in use by another process or spool", .0.display())]
    Locked(PathBuf),
    /// A writer id is already in use, or out of range.
    #[error("spool writer {0} is already open or out of range")]
    WriterInUse(u16),
}

impl Error {
    /// Whether the disk (or a quota) is out of space, or the spool at its
    /// `size_bytes_max`: the engine answers these with `452 4.3.1`, a
    /// condition that passes, not a failure of the system.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Error::Full { .. } | Error::LowDisk { .. } => true,
            Error::Io { source, .. } | Error::WriterFailed { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}

/// Short for `Result<T, spool::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an `io::Error` with the operation and the path it concerned.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_space_is_told_from_other_failures() {
        let io = |kind: io::ErrorKind| Error::Io {
            op: "zero-fill",
            path: PathBuf::from("/spool/tmp-1.seg"),
            source: io::Error::from(kind),
        };
        assert!(io(io::ErrorKind::StorageFull).is_out_of_space());
        assert!(io(io::ErrorKind::QuotaExceeded).is_out_of_space());
        assert!(!io(io::ErrorKind::PermissionDenied).is_out_of_space());
        let enospc = io::Error::from_raw_os_error(28);
        assert!(Error::WriterFailed {
            writer: 0,
            what: "write",
            source: enospc,
        }
        .is_out_of_space());
        assert!(Error::Full {
            used_bytes: 2,
            limit_bytes: 1
        }
        .is_out_of_space());
        assert!(!Error::Config("x".into()).is_out_of_space());
    }
}
