//! What the sink received, by loadgen id and recipient: enough to tell
//! duplicates (the same recipient of the same message delivered twice)
//! and, against `send`'s report, losses (an accepted recipient never
//! delivered). A relay may split a message by recipient domain into
//! several transactions; that is neither loss nor duplication.

use serde::{Deserialize, Serialize};

use crate::ids::{parse_run_id, Stamp};
use crate::send::report::AcceptedRun;

/// Deliveries kept (16 bytes each); past this the sink stops recording
/// and says so in its summary.
pub const RECORDS_MAX: usize = 100_000_000;
/// Distinct runs told apart.
const RUNS_MAX: usize = 1 << 16;
/// Bits of a record key for the message number within its run.
const SEQ_BITS: u32 = 48;

/// Received deliveries.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Run ids seen; a record keeps the index.
    runs: Vec<u64>,
    /// `(run index << 48 | seq) << 32 | recipient hash`.
    records: Vec<u128>,
    pub messages_with_id: u64,
    pub messages_without_id: u64,
    pub ids_malformed: u64,
    pub truncated: bool,
}

/// FNV-1a of an address, case-folded.
fn recipient_hash(address: &str) -> u32 {
    address.bytes().fold(0x811C_9DC5_u32, |hash, byte| {
        (hash ^ u32::from(byte.to_ascii_lowercase())).wrapping_mul(0x0100_0193)
    })
}

impl Recorder {
    /// Records one accepted message for its recipients.
    pub fn record(&mut self, stamp: &Stamp, recipients: &[String]) {
        let Some(id) = stamp.id else {
            if stamp.id_malformed {
                self.ids_malformed += 1;
            } else {
                self.messages_without_id += 1;
            }
            return;
        };
        self.messages_with_id += 1;
        let run = match self.runs.iter().position(|&r| r == id.run) {
            Some(index) => index,
            None if self.runs.len() < RUNS_MAX => {
                self.runs.push(id.run);
                self.runs.len() - 1
            }
            None => {
                self.truncated = true;
                return;
            }
        };
        if id.seq >= 1 << SEQ_BITS || self.records.len() + recipients.len() > RECORDS_MAX {
            self.truncated = true;
            return;
        }
        let key = u128::from((run as u64) << SEQ_BITS | id.seq) << 32;
        let start = self.records.len();
        self.records.extend(
            recipients
                .iter()
                .map(|r| key | u128::from(recipient_hash(r))),
        );
        // A recipient named twice in one transaction is one delivery.
        self.records[start..].sort_unstable();
        let mut kept = start;
        for index in start..self.records.len() {
            if index == start || self.records[index] != self.records[kept - 1] {
                self.records[kept] = self.records[index];
                kept += 1;
            }
        }
        self.records.truncate(kept);
    }

    /// Counts duplicates and, given `send`'s report, losses.
    pub fn summarize(mut self, expected: Option<&AcceptedRun>) -> IdSummary {
        self.records.sort_unstable();
        let mut summary = IdSummary {
            messages_with_id: self.messages_with_id,
            messages_without_id: self.messages_without_id,
            ids_malformed: self.ids_malformed,
            records_truncated: self.truncated,
            ..IdSummary::default()
        };
        let verify_run = expected.and_then(|e| parse_run_id(&e.run_id));
        let verify_index = verify_run.and_then(|run| self.runs.iter().position(|&r| r == run));
        // (seq, distinct recipients) of the run being verified.
        let mut received: Vec<(u64, u64)> = Vec::new();
        let mut index = 0;
        while index < self.records.len() {
            let key = self.records[index] >> 32;
            let mut end = index;
            let mut distinct = 0;
            while end < self.records.len() && self.records[end] >> 32 == key {
                if end == index || self.records[end] != self.records[end - 1] {
                    distinct += 1;
                }
                end += 1;
            }
            let deliveries = (end - index) as u64;
            summary.distinct_ids += 1;
            summary.deliveries += deliveries;
            if deliveries > distinct {
                summary.duplicated_deliveries += deliveries - distinct;
                summary.duplicated_messages += 1;
            }
            let key = key as u64;
            if verify_index.is_some_and(|run| (key >> SEQ_BITS) as usize == run) {
                received.push((key & ((1 << SEQ_BITS) - 1), distinct));
            }
            index = end;
        }
        if let Some(expected) = expected {
            summary.verify = Some(verify(expected, &received));
        }
        summary
    }
}

/// Compares what `send` had accepted with what arrived.
fn verify(expected: &AcceptedRun, received: &[(u64, u64)]) -> Verification {
    let mut result = Verification {
        run_id: expected.run_id.clone(),
        ..Verification::default()
    };
    let mut got = received.iter().peekable();
    for (seq, recipients) in expected.accepted.iter() {
        result.expected_messages += 1;
        result.expected_recipients += recipients;
        while got.next_if(|(s, _)| *s < seq).is_some() {
            result.messages_unexpected += 1;
        }
        let distinct = got.next_if(|(s, _)| *s == seq).map_or(0, |&(_, d)| d);
        if distinct == 0 {
            result.messages_lost += 1;
        }
        result.recipients_lost += recipients.saturating_sub(distinct);
    }
    result.messages_unexpected += got.count() as u64;
    result
}

/// What the ids say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdSummary {
    pub messages_with_id: u64,
    /// Messages without an `X-Loadgen-Id` (from another tool).
    pub messages_without_id: u64,
    pub ids_malformed: u64,
    pub distinct_ids: u64,
    /// Recipient deliveries recorded (a message to 3 recipients: 3).
    pub deliveries: u64,
    /// Deliveries of a recipient of a message that had already arrived.
    pub duplicated_deliveries: u64,
    /// Messages with at least one duplicated delivery.
    pub duplicated_messages: u64,
    /// True when the sink stopped recording (over its limits).
    pub records_truncated: bool,
    pub verify: Option<Verification>,
}

/// The outcome of `--verify`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub run_id: String,
    pub expected_messages: u64,
    pub expected_recipients: u64,
    /// Accepted by the server under test, never seen here.
    pub messages_lost: u64,
    /// Accepted recipients never delivered here (includes lost messages).
    pub recipients_lost: u64,
    /// Seen here, of the same run, but not accepted according to `send`.
    pub messages_unexpected: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AcceptedSet, MessageId};

    fn stamp(seq: u64) -> Stamp {
        Stamp {
            id: Some(MessageId { run: 0xabc, seq }),
            ..Stamp::default()
        }
    }

    fn rcpts(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn split_deliveries_are_not_duplicates() {
        let mut recorder = Recorder::default();
        recorder.record(&stamp(0), &rcpts(&["a@x", "b@y"]));
        recorder.record(&stamp(1), &rcpts(&["a@x"]));
        recorder.record(&stamp(1), &rcpts(&["b@y", "B@Y"]));
        let summary = recorder.summarize(None);
        assert_eq!(summary.distinct_ids, 2);
        assert_eq!(summary.deliveries, 4);
        assert_eq!(summary.duplicated_deliveries, 0);
    }

    #[test]
    fn duplicates_and_losses_are_counted() {
        let mut recorder = Recorder::default();
        for seq in [0, 1, 1, 3, 7] {
            recorder.record(&stamp(seq), &rcpts(&["a@x"]));
        }
        recorder.record(&Stamp::default(), &rcpts(&["a@x"]));
        let expected = AcceptedRun {
            run_id: "0000000000000abc".into(),
            accepted: AcceptedSet::from_pairs(vec![(0, 1), (1, 1), (2, 1), (3, 2), (4, 1)]),
        };
        let summary = recorder.summarize(Some(&expected));
        assert_eq!(summary.duplicated_deliveries, 1);
        assert_eq!(summary.duplicated_messages, 1);
        assert_eq!(summary.messages_without_id, 1);
        let verify = summary.verify.unwrap();
        assert_eq!(verify.expected_messages, 5);
        assert_eq!(verify.expected_recipients, 6);
        assert_eq!(verify.messages_lost, 2, "2 and 4");
        assert_eq!(verify.recipients_lost, 3, "2, 4, and one of 3's two");
        assert_eq!(verify.messages_unexpected, 1, "7");
    }

    #[test]
    fn verify_of_a_run_never_seen_loses_everything() {
        let expected = AcceptedRun {
            run_id: "1".into(),
            accepted: AcceptedSet::from_pairs(vec![(0, 1), (1, 1)]),
        };
        let summary = Recorder::default().summarize(Some(&expected));
        assert_eq!(summary.verify.unwrap().messages_lost, 2);
    }
}
