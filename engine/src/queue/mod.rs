//! The queues: one per destination, shared by every shard.
//!
//! Each destination has a *ready* queue (recipients to attempt now) and a
//! *scheduled* queue (deferred recipients, ordered by their next attempt).
//! Shards push accepted recipients here once their message is durable;
//! recovery pushes what the spool returned. Delivery (a later issue) drains
//! the ready queues and moves due scheduled entries over.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use baton_spool::{QueueId, RecordRef, Status};

use crate::route::Destination;

/// One recipient of one message, waiting for delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedRecipient {
    pub queue_id: QueueId,
    /// Index in the message's RCPT order.
    pub recipient: u32,
    /// The message record in the spool.
    pub message: RecordRef,
    /// Attempts so far.
    pub attempts: u32,
}

#[derive(Debug, Default)]
struct DestinationQueue {
    ready: VecDeque<QueuedRecipient>,
    /// Keyed by (next attempt in Unix ms, arrival order).
    scheduled: BTreeMap<(u64, u64), QueuedRecipient>,
    scheduled_seq: u64,
}

/// Counts for one destination.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DestinationSummary {
    pub destination: String,
    pub ready: usize,
    pub scheduled: usize,
}

/// Every destination's queues.
#[derive(Debug, Default)]
pub struct Queues {
    inner: Mutex<HashMap<Destination, DestinationQueue>>,
}

impl Queues {
    /// Queues a recipient according to its status: pending ones are ready,
    /// deferred ones wait for their next attempt.
    pub fn push(&self, destination: Destination, item: QueuedRecipient, status: Status) {
        let mut inner = self.inner.lock().expect("queues lock");
        let queue = inner.entry(destination).or_default();
        match status {
            Status::Deferred {
                attempts,
                next_attempt_ms,
            } => {
                queue.scheduled_seq += 1;
                let item = QueuedRecipient { attempts, ..item };
                queue
                    .scheduled
                    .insert((next_attempt_ms, queue.scheduled_seq), item);
            }
            _ => queue.ready.push_back(item),
        }
    }

    /// Per destination counts, sorted by destination.
    pub fn summary(&self) -> Vec<DestinationSummary> {
        let inner = self.inner.lock().expect("queues lock");
        let mut out: Vec<_> = inner
            .iter()
            .map(|(d, q)| DestinationSummary {
                destination: d.to_string(),
                ready: q.ready.len(),
                scheduled: q.scheduled.len(),
            })
            .collect();
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }
}

#[cfg(test)]
mod tests {
    use baton_spool::SegmentId;

    use super::*;
    use crate::route::destination_of;

    fn item(id: u64) -> QueuedRecipient {
        QueuedRecipient {
            queue_id: QueueId(id),
            recipient: 0,
            message: RecordRef {
                segment: SegmentId(1),
                offset: 64,
                len: 128,
            },
            attempts: 0,
        }
    }

    #[test]
    fn pending_is_ready_and_deferred_is_scheduled() {
        let queues = Queues::default();
        queues.push(destination_of(b"a@x.org"), item(1), Status::Pending);
        queues.push(destination_of(b"b@X.org"), item(2), Status::Pending);
        let deferred = Status::Deferred {
            attempts: 1,
            next_attempt_ms: 5,
        };
        queues.push(destination_of(b"c@y.org"), item(3), deferred);
        let summary = queues.summary();
        assert_eq!(summary.len(), 2);
        assert_eq!((summary[0].ready, summary[0].scheduled), (2, 0));
        assert_eq!((summary[1].ready, summary[1].scheduled), (0, 1));
    }
}
