//! baton's spool: a durable, append-only log of segment files.
//!
//! baton takes responsibility for a message the moment it answers `250`
//! after DATA (RFC 5321 §6.1). The spool is where that promise lives: a
//! message is acknowledged only once a sync covering its record has
//! completed, and it stays on disk until every recipient is final. The
//! spool knows nothing of SMTP.
//!
//! # Layout
//!
//! - [`record`]: framing (magic, CRC32C, segment id, sequence, type,
//!   length) and the payloads: [`NewMessage`]/[`MessageView`],
//!   [`Outcome`], [`Status`].
//! - [`segment`]: segment files (`<writer>-<seq>.seg`), zero-filled or
//!   recycled ahead of use, mapped read-only. The only `unsafe` in the crate
//!   is the mapping, there.
//! - [`writer`]: the sans-IO append side. One [`Writer`] per shard; it hands
//!   out writes and datasyncs for the caller to submit (the engine's
//!   io_uring ring) and learns their results; group commit lives here.
//! - [`driver`]: [`BlockingWriter`], a writer driven by system calls, for
//!   tests, tools and benchmarks.
//! - `index`: which messages and outcomes each segment still holds, and
//!   what keeps a segment on disk.
//! - [`recovery`]: scan, CRC check, torn-tail cut, quarantine, and the list
//!   of pending recipients.
//! - [`reclaim`]: deleting and recycling segments, compaction.
//! - [`spool`]: [`Spool`], the shared handle: the segment table, reads,
//!   the segment preparer thread.
//! - `settle`: [`Spool::settle`], which tells the one caller that settles
//!   a message's last recipient what failed, for one notification.
//! - [`config`]: [`SpoolConfig`], [`SyncMode`], the [`Clock`] seam.
//!
//! # Use
//!
//! ```no_run
//! use baton_spool::{BlockingWriter, NewMessage, NewRecipient, QueueId, Spool, SpoolConfig, Status};
//!
//! let (spool, recovered) = Spool::open(SpoolConfig::new("/var/spool/baton"))?;
//! println!("{} recipients still to deliver", recovered.pending.len());
//! let mut writer = BlockingWriter::new(spool.writer(0)?);
//! let rcpt = [NewRecipient { address: b"bob@example.org", params: b"", status: Status::Pending }];
//! let appended = writer.append_message(&NewMessage {
//!     queue_id: QueueId(recovered.queue_id_max.0 + 1),
//!     arrival_ms: 0,
//!     reverse_path: b"alice@example.com",
//!     mail_params: b"",
//!     identity: b"",
//!     peer: b"127.0.0.1:40000",
//!     transport: b"",
//!     recipients: &rcpt,
//!     body: b"Subject: hi\r\n\r\nhello\r\n",
//! })?;
//! writer.wait(appended.ticket)?; // now it is safe to answer 250
//! # Ok::<(), baton_spool::Error>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
// The mapping in `segment.rs` is the one exception, allowed there alone.
#![deny(unsafe_code)]

use std::fmt;

pub mod config;
pub mod directory;
pub mod driver;
pub mod error;
pub mod gate;
mod index;
pub mod reclaim;
pub mod record;
pub mod recovery;
pub mod segment;
mod settle;
pub mod spool;
pub mod writer;

pub use config::{Clock, SpoolConfig, SyncMode, SystemClock};
pub use directory::{Directory, SystemDirectory};
pub use driver::BlockingWriter;
pub use error::{Error, Result};
pub use gate::Gate;
pub use index::IndexCounts;
pub use reclaim::{CompactReport, CompactionCopies, CompactionWriter, ReclaimReport};
pub use record::{
    MessageView, NewMessage, NewRecipient, Outcome, RecipientView, RecordType, Status,
};
pub use recovery::{Damage, PendingRecipient, Recovered, RecoveryReport};
pub use segment::SegmentId;
pub use spool::{MessageState, Record, Spool, SpoolStats, COMPACTION_WRITER};
pub use writer::{Appended, Io, OpId, SyncOp, WriteOp, Writer};

/// Identifies a message for its whole life, across restarts and
/// compaction. The engine chooses it; the spool only requires uniqueness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct QueueId(pub u64);

impl QueueId {
    /// The id as it is shown: sixteen uppercase hex digits.
    pub fn hex(self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [0u8; 16];
        for (i, digit) in out.iter_mut().enumerate() {
            *digit = DIGITS[(self.0 >> (60 - 4 * i) & 0xF) as usize];
        }
        out
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: every message's `Received:`, `Message-ID` and `250`
        // show one, and `{:016X}` went through the padding machinery.
        let hex = self.hex();
        f.write_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
    }
}

/// Where a record lives: resolve it with [`Spool::read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordRef {
    pub segment: SegmentId,
    /// Offset of the frame in the segment file.
    pub offset: u64,
    /// Length of the frame, padding included.
    pub len: u32,
}

/// Orders the appends of one writer. A ticket is durable once
/// [`Writer::durable`] has reached it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ticket(pub u64);

/// Bugs planted on purpose for the simulator (`baton-sim`) to find: each
/// is off unless a test turns it on, and compiled in only with the `plant`
/// feature (otherwise every switch reads `false`, a constant).
pub mod plant {
    #[cfg(feature = "plant")]
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Reclamation deletes sealed segments that still hold a pending
    /// recipient.
    #[cfg(feature = "plant")]
    pub static RECLAIM_PENDING: AtomicBool = AtomicBool::new(false);

    /// A `250` (any answer that waits for durability, [`crate::Gate`])
    /// goes out one entry before the datasync that covers it.
    #[cfg(feature = "plant")]
    pub static ACK_BEFORE_SYNC: AtomicBool = AtomicBool::new(false);

    /// baton's SMTP client (`baton::outbound`) takes a recipient's `250`
    /// to RCPT for its delivery, so its outcome is recorded before the
    /// delivery it records (the `250` to the end of data), which may never
    /// come. Here because this is where the switches live; the engine
    /// reads it.
    #[cfg(feature = "plant")]
    pub static DELIVERED_AT_RCPT: AtomicBool = AtomicBool::new(false);

    /// The preparer hands a writer its new segment without syncing the
    /// directory that names it: a power cut may take the name back (a
    /// created file gone, a recycled one a spare again) with what the
    /// writer acknowledged in it.
    #[cfg(feature = "plant")]
    pub static SEGMENT_NAME_UNSYNCED: AtomicBool = AtomicBool::new(false);

    /// Whether [`SEGMENT_NAME_UNSYNCED`] is on.
    #[inline]
    pub fn segment_name_unsynced() -> bool {
        #[cfg(feature = "plant")]
        return SEGMENT_NAME_UNSYNCED.load(Ordering::Relaxed);
        #[cfg(not(feature = "plant"))]
        false
    }

    /// Whether [`DELIVERED_AT_RCPT`] is on.
    #[inline]
    pub fn delivered_at_rcpt() -> bool {
        #[cfg(feature = "plant")]
        return DELIVERED_AT_RCPT.load(Ordering::Relaxed);
        #[cfg(not(feature = "plant"))]
        false
    }

    /// Whether [`ACK_BEFORE_SYNC`] is on.
    #[inline]
    pub fn ack_before_sync() -> bool {
        #[cfg(feature = "plant")]
        return ACK_BEFORE_SYNC.load(Ordering::Relaxed);
        #[cfg(not(feature = "plant"))]
        false
    }

    /// Whether [`RECLAIM_PENDING`] is on.
    #[inline]
    pub fn reclaim_pending() -> bool {
        #[cfg(feature = "plant")]
        return RECLAIM_PENDING.load(Ordering::Relaxed);
        #[cfg(not(feature = "plant"))]
        false
    }
}

#[cfg(test)]
mod tests {
    use super::QueueId;

    #[test]
    fn a_queue_id_shows_as_sixteen_uppercase_hex_digits() {
        for id in [0, 1, 0xABC, 0x0123_4567_89AB_CDEF, u64::MAX, 1 << 63] {
            assert_eq!(QueueId(id).to_string(), format!("{id:016X}"));
        }
    }
}
