//! Message ids and timestamps that `send` writes into each message and the
//! sink reads back, and the set of messages a receiving server accepted,
//! against which the sink checks for loss and duplicates.
//!
//! An id is `<run>-<seq>`: the run's 64-bit id in hex, and the message's
//! number in the run (0, 1, 2, ... in the order the schedule handed them
//! out). Numbers make the accepted set compact: runs of consecutive
//! numbers with the same count of accepted recipients.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The header that carries a message's id.
pub const ID_HEADER: &str = "X-Loadgen-Id";
/// The header that carries the time the message was due to be sent, in
/// microseconds since the Unix epoch.
pub const SENT_HEADER: &str = "X-Loadgen-Sent";
/// Header lines the sink looks through for the two above.
const HEADER_LINES_MAX: usize = 200;

/// One message of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub run: u64,
    pub seq: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.run, self.seq)
    }
}

impl MessageId {
    pub fn parse(text: &[u8]) -> Option<MessageId> {
        let text = std::str::from_utf8(text).ok()?.trim();
        let (run, seq) = text.split_once('-')?;
        Some(MessageId {
            run: parse_run_id(run)?,
            seq: seq.parse().ok()?,
        })
    }
}

/// A run id as written: up to 16 hex digits.
pub fn parse_run_id(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// Microseconds since the Unix epoch, now.
pub fn unix_micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What the sink finds in a message's header section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// None when the header is missing (a message from another tool).
    pub id: Option<MessageId>,
    /// True when the id header is there but is not loadgen's form.
    pub id_malformed: bool,
    pub sent_unix_micros: Option<u64>,
}

/// Reads the id and the timestamp from the header section of a message in
/// wire form (CRLF line ends); stops at the empty line.
pub fn read_stamp(wire: &[u8]) -> Stamp {
    let mut stamp = Stamp::default();
    for line in wire.split(|&b| b == b'\n').take(HEADER_LINES_MAX) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(ID_HEADER.as_bytes()) {
            stamp.id = MessageId::parse(value);
            stamp.id_malformed = stamp.id.is_none();
        } else if name.eq_ignore_ascii_case(SENT_HEADER.as_bytes()) {
            stamp.sent_unix_micros = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
    }
    stamp
}

/// The messages of one run that the receiving server accepted, with the
/// count of recipients it accepted for each: runs of `[first, end, rcpts]`
/// (`end` excluded), sorted, not overlapping.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AcceptedSet(Vec<[u64; 3]>);

impl AcceptedSet {
    /// From `(seq, recipients)` pairs in any order; a seq given twice is
    /// counted once, with the larger count.
    pub fn from_pairs(mut pairs: Vec<(u64, u16)>) -> AcceptedSet {
        pairs.sort_unstable();
        // Sorted by (seq, rcpts): of equal seqs, the last has the most.
        pairs.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            if same {
                kept.1 = next.1;
            }
            same
        });
        let mut runs: Vec<[u64; 3]> = Vec::new();
        for (seq, rcpts) in pairs {
            let rcpts = u64::from(rcpts);
            match runs.last_mut() {
                Some(last) if last[1] == seq && last[2] == rcpts => last[1] = seq + 1,
                _ => runs.push([seq, seq + 1, rcpts]),
            }
        }
        AcceptedSet(runs)
    }

    /// Every `(seq, recipients)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0
            .iter()
            .flat_map(|&[first, end, rcpts]| (first..end).map(move |seq| (seq, rcpts)))
    }

    pub fn messages(&self) -> u64 {
        self.0.iter().map(|[first, end, _]| end - first).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trip() {
        let id = MessageId {
            run: 0xfeed,
            seq: 42,
        };
        assert_eq!(id.to_string(), "000000000000feed-42");
        assert_eq!(MessageId::parse(id.to_string().as_bytes()), Some(id));
        assert_eq!(
            MessageId::parse(b" 1-2 "),
            Some(MessageId { run: 1, seq: 2 })
        );
        assert_eq!(MessageId::parse(b"x-2"), None);
        assert_eq!(MessageId::parse(b"12"), None);
    }

    #[test]
    fn stamp_from_headers_only() {
        let wire = b"From: a\r\nx-loadgen-id: 00000000000000ff-7\r\nX-Loadgen-Sent: 123\r\n\r\nX-Loadgen-Id: 1-1\r\n";
        let stamp = read_stamp(wire);
        assert_eq!(stamp.id, Some(MessageId { run: 255, seq: 7 }));
        assert_eq!(stamp.sent_unix_micros, Some(123));
        let none = read_stamp(b"Subject: hi\r\n\r\nX-Loadgen-Id: 1-1\r\n");
        assert_eq!(none, Stamp::default());
        let malformed = read_stamp(b"X-Loadgen-Id: what\r\n\r\n");
        assert!(malformed.id_malformed);
    }

    #[test]
    fn accepted_set_compresses_runs() {
        let set = AcceptedSet::from_pairs(vec![
            (3, 1),
            (0, 1),
            (1, 1),
            (2, 2),
            (4, 1),
            (9, 1),
            (4, 1),
            (9, 0),
        ]);
        assert_eq!(set.0, vec![[0, 2, 1], [2, 3, 2], [3, 5, 1], [9, 10, 1]]);
        assert_eq!(set.messages(), 6);
        let all: Vec<_> = set.iter().collect();
        assert_eq!(all, vec![(0, 1), (1, 1), (2, 2), (3, 1), (4, 1), (9, 1)]);
    }
}
