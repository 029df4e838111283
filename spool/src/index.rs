//! What the spool knows about its records while it runs: every message that
//! still has a file, each recipient's status and where its latest outcome
//! record lives, and per segment what keeps it on disk.
//!
//! A segment may be deleted when it is sealed and nothing in it matters
//! any more:
//! - no live recipient: every recipient of every message whose body is in
//!   it is final;
//! - no pin: no recipient whose message lives in *another* segment has its
//!   latest outcome record here. Deleting such a segment first would bring
//!   the recipient back to an older state after a restart: worst of all, a
//!   delivered recipient would be delivered again.
//!
//! When a segment is deleted, the messages whose body was in it go, and so do
//! the pins they held on other segments. The directory is synced between
//! the two, so a crash never leaves an outcome deleted while its message is
//! still on disk.

// Keyed by queue and segment ids, which baton hands out itself: a fast
// hasher (SipHash took a tenth of the simulator's time in these maps and
// the queue's).
use foldhash::HashMap;

use crate::record::Status;
use crate::segment::SegmentId;
use crate::{QueueId, RecordRef};

#[derive(Debug, Default)]
pub(crate) struct Index {
    messages: HashMap<QueueId, MessageState>,
    segments: HashMap<SegmentId, SegmentState>,
}

#[derive(Debug)]
pub(crate) struct MessageState {
    pub body: RecordRef,
    pub recipients: Box<[RecipientState]>,
    /// Recipients not yet final.
    pub live: u32,
    /// Recipients not yet settled (see [`RecipientState::settled`]).
    pub unsettled: u32,
    /// Failure replies of the recipients settled as failed, kept until the
    /// last recipient settles (`Spool::settle`). Empty, hence no allocation,
    /// for a message without failures.
    pub failures: Vec<(u32, Vec<u8>)>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct RecipientState {
    pub status: Status,
    /// Where the outcome record that set `status` lives; `None` when the
    /// status came with the message record itself.
    pub outcome: Option<SegmentId>,
    /// The outcome record itself, for its reply (`baton queue show`); `None`
    /// as for `outcome`.
    pub outcome_at: Option<RecordRef>,
    /// Final as far as the notification is concerned: its final outcome is
    /// appended (`Spool::settle`), durable or not yet. `status` follows
    /// durability instead, and lags behind.
    pub settled: bool,
}

/// Per segment: what keeps it on disk.
#[derive(Debug, Default, Clone)]
pub(crate) struct SegmentState {
    /// Live recipients of messages whose body is here.
    pub live_recipients: u64,
    /// Frame bytes of messages here with at least one live recipient.
    pub live_bytes: u64,
    /// Latest outcomes here of recipients whose message is elsewhere.
    pub pins: u64,
    /// Messages whose body was put here. Kept lazily: a message relocated by
    /// compaction stays listed, and is skipped when its body is elsewhere.
    pub messages: Vec<QueueId>,
}

/// Counts for reports and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexCounts {
    pub messages: u64,
    pub live_messages: u64,
    pub live_recipients: u64,
    /// The lowest queue id of a message with a live recipient: queue ids
    /// rise with time, so this is the oldest message still queued.
    pub oldest_live: Option<QueueId>,
    /// Frame bytes of messages with a live recipient, over all segments
    /// (segments are preallocated: their capacity is more).
    pub live_bytes: u64,
}

/// A live message as compaction copies it.
#[derive(Debug)]
pub(crate) struct LiveMessage {
    pub queue_id: QueueId,
    pub body: RecordRef,
    pub statuses: Vec<Status>,
    pub outcomes: Vec<Option<SegmentId>>,
}

/// A recipient whose latest outcome pins a segment.
#[derive(Debug)]
pub(crate) struct PinnedOutcome {
    pub queue_id: QueueId,
    pub recipient: u32,
    pub status: Status,
}

impl Index {
    /// Room for `more` messages.
    pub fn reserve_messages(&mut self, more: usize) {
        self.messages.reserve(more);
    }

    pub fn add_segment(&mut self, id: SegmentId) {
        self.segments.entry(id).or_default();
    }

    pub fn segment(&self, id: SegmentId) -> Option<&SegmentState> {
        self.segments.get(&id)
    }

    pub fn message(&self, id: QueueId) -> Option<&MessageState> {
        self.messages.get(&id)
    }

    pub fn messages(&self) -> impl Iterator<Item = (&QueueId, &MessageState)> {
        self.messages.iter()
    }

    pub fn counts(&self) -> IndexCounts {
        let mut counts = IndexCounts {
            messages: self.messages.len() as u64,
            ..IndexCounts::default()
        };
        // One pass over what `counts` walks anyway (a scrape's cost).
        for (id, m) in &self.messages {
            counts.live_messages += u64::from(m.live > 0);
            counts.live_recipients += u64::from(m.live);
            if m.live > 0 && counts.oldest_live.is_none_or(|oldest| *id < oldest) {
                counts.oldest_live = Some(*id);
            }
        }
        counts.live_bytes = self.segments.values().map(|s| s.live_bytes).sum();
        counts
    }

    /// Records a message whose record is at `body`. If the queue id is
    /// already known (recovery meeting a compacted copy), the states merge
    /// and the body moves to whichever record is in the newer segment.
    pub fn insert_message(&mut self, queue_id: QueueId, body: RecordRef, statuses: &[Status]) {
        if let Some(old) = self.messages.get(&queue_id) {
            let old_body = old.body;
            let outcomes: Vec<_> = old.recipients.iter().map(|r| r.outcome).collect();
            for (i, &status) in statuses.iter().enumerate() {
                self.merge_status(queue_id, i as u32, status, None);
            }
            if body.segment > old_body.segment {
                self.relocate(queue_id, old_body.segment, body, &outcomes, false);
            }
            return;
        }
        let recipients: Box<[RecipientState]> = statuses
            .iter()
            .map(|&status| RecipientState {
                status,
                outcome: None,
                outcome_at: None,
                settled: status.is_final(),
            })
            .collect();
        let live = recipients.iter().filter(|r| !r.status.is_final()).count() as u32;
        let seg = self.segments.entry(body.segment).or_default();
        seg.messages.push(queue_id);
        if live > 0 {
            seg.live_recipients += u64::from(live);
            seg.live_bytes += u64::from(body.len);
        }
        self.messages.insert(
            queue_id,
            MessageState {
                body,
                recipients,
                live,
                unsettled: live,
                failures: Vec::new(),
            },
        );
    }

    /// Marks a recipient settled, keeping its failure reply if it failed.
    /// Returns whether this call settled the message's last unsettled
    /// recipient: true once per message at most, because a recipient
    /// already settled (by another shard, an operator, or a repeated call)
    /// changes nothing.
    pub fn settle(&mut self, queue_id: QueueId, recipient: u32, failure: Option<&[u8]>) -> bool {
        let Some(m) = self.messages.get_mut(&queue_id) else {
            return false;
        };
        let Some(r) = m.recipients.get_mut(recipient as usize) else {
            return false;
        };
        if r.settled {
            return false;
        }
        r.settled = true;
        if let Some(reply) = failure {
            m.failures.push((recipient, reply.to_vec()));
        }
        m.unsettled -= 1;
        m.unsettled == 0
    }

    /// Takes the failure replies kept for a message, in recipient order.
    pub fn take_failures(&mut self, queue_id: QueueId) -> Vec<(u32, Vec<u8>)> {
        let Some(m) = self.messages.get_mut(&queue_id) else {
            return Vec::new();
        };
        let mut failures = std::mem::take(&mut m.failures);
        failures.sort_by_key(|f| f.0);
        failures
    }

    /// After recovery: settled is what is durably final, and nothing is
    /// kept. Returns the failed recipients of the messages still live, with
    /// their outcome records, whose replies the caller reads and hands to
    /// [`Index::keep_failure`]. A message with every recipient final needs
    /// none: its notification, if it had one, was appended before its last
    /// outcome, so it is on disk too.
    pub fn resettle(&mut self) -> Vec<(QueueId, u32, Option<RecordRef>)> {
        let mut failed = Vec::new();
        for (&queue_id, m) in self.messages.iter_mut() {
            m.unsettled = m.live;
            m.failures = Vec::new();
            for (i, r) in m.recipients.iter_mut().enumerate() {
                r.settled = r.status.is_final();
                if m.live > 0 && matches!(r.status, Status::Failed { .. }) {
                    failed.push((queue_id, i as u32, r.outcome_at));
                }
            }
        }
        failed
    }

    /// Keeps a failure reply for a message not yet settled.
    pub fn keep_failure(&mut self, queue_id: QueueId, recipient: u32, reply: Vec<u8>) {
        if let Some(m) = self.messages.get_mut(&queue_id).filter(|m| m.unsettled > 0) {
            m.failures.push((recipient, reply));
        }
    }

    /// Applies the outcome record at `at`. Returns `false` when the
    /// message is unknown (already reclaimed) or the recipient index is out
    /// of range.
    pub fn apply_outcome(
        &mut self,
        queue_id: QueueId,
        recipient: u32,
        status: Status,
        at: RecordRef,
    ) -> bool {
        self.merge_status(queue_id, recipient, status, Some(at))
    }

    fn merge_status(
        &mut self,
        queue_id: QueueId,
        recipient: u32,
        status: Status,
        record: Option<RecordRef>,
    ) -> bool {
        let at = record.map(|r| r.segment);
        let Some(m) = self.messages.get_mut(&queue_id) else {
            return false;
        };
        let body_segment = m.body.segment;
        let body_len = u64::from(m.body.len);
        let Some(r) = m.recipients.get_mut(recipient as usize) else {
            return false;
        };
        let merged = r.status.merge(status);
        if merged.rank() == r.status.rank() {
            // Nothing new: an older or repeated outcome.
            return true;
        }
        let became_final = merged.is_final() && !r.status.is_final();
        let old_outcome = std::mem::replace(&mut r.outcome, at);
        r.outcome_at = record;
        r.status = merged;
        if became_final {
            m.live -= 1;
        }
        let message_done = m.live == 0;
        unpin(&mut self.segments, old_outcome, body_segment);
        pin(&mut self.segments, at, body_segment);
        if became_final {
            let seg = self
                .segments
                .get_mut(&body_segment)
                .expect("body segment is indexed");
            seg.live_recipients -= 1;
            if message_done {
                seg.live_bytes -= body_len;
            }
        }
        true
    }

    /// Moves a message's body to `to` (a compacted copy, durable). Outcomes
    /// that were folded into the copy (the recipient's outcome segment is
    /// still the one in `folded`) stop mattering; newer ones stay pinned.
    pub fn relocate(
        &mut self,
        queue_id: QueueId,
        from: SegmentId,
        to: RecordRef,
        folded: &[Option<SegmentId>],
        copy_embeds_outcomes: bool,
    ) {
        let Some(m) = self.messages.get_mut(&queue_id) else {
            return;
        };
        if m.body.segment != from {
            return;
        }
        let old_len = u64::from(m.body.len);
        let live = u64::from(m.live);
        let mut moves = Vec::with_capacity(m.recipients.len());
        for (i, r) in m.recipients.iter_mut().enumerate() {
            let folded_here = copy_embeds_outcomes && folded.get(i).copied().flatten() == r.outcome;
            let old = r.outcome;
            if folded_here {
                r.outcome = None;
                r.outcome_at = None;
            }
            moves.push((old, r.outcome));
        }
        m.body = to;
        for (old, new) in moves {
            unpin(&mut self.segments, old, from);
            pin(&mut self.segments, new, to.segment);
        }
        if live > 0 {
            let src = self
                .segments
                .get_mut(&from)
                .expect("body segment is indexed");
            src.live_recipients -= live;
            src.live_bytes -= old_len;
            let dst = self.segments.entry(to.segment).or_default();
            dst.live_recipients += live;
            dst.live_bytes += u64::from(to.len);
        }
        self.segments
            .entry(to.segment)
            .or_default()
            .messages
            .push(queue_id);
    }

    /// Moves a recipient's pin from `from` to `to`, if its latest outcome
    /// is still in `from` (compaction re-appended it in `to`).
    pub fn repoint(&mut self, queue_id: QueueId, recipient: u32, from: SegmentId, to: SegmentId) {
        let Some(m) = self.messages.get_mut(&queue_id) else {
            return;
        };
        let body = m.body.segment;
        let Some(r) = m.recipients.get_mut(recipient as usize) else {
            return;
        };
        if r.outcome != Some(from) {
            return;
        }
        r.outcome = Some(to);
        // The copy's place in `to` is not known here: its reply is no
        // longer shown.
        r.outcome_at = None;
        unpin(&mut self.segments, Some(from), body);
        pin(&mut self.segments, Some(to), body);
    }

    /// Segments that nothing keeps, among those `sealed` says are sealed.
    pub fn deletable(&self, sealed: impl Fn(SegmentId) -> bool) -> Vec<SegmentId> {
        let mut out: Vec<_> = self
            .segments
            .iter()
            .filter(|(id, s)| {
                (s.live_recipients == 0 || crate::plant::reclaim_pending())
                    && s.pins == 0
                    && sealed(**id)
            })
            .map(|(id, _)| *id)
            .collect();
        out.sort();
        out
    }

    /// Forgets a deleted segment and the messages whose body was in it,
    /// releasing the pins they held.
    pub fn remove_segment(&mut self, id: SegmentId) {
        let Some(seg) = self.segments.remove(&id) else {
            return;
        };
        // (The planted bug must stay silent, as a real one would.)
        assert!(
            seg.live_recipients == 0 || crate::plant::reclaim_pending(),
            "segment {id} removed with live recipients"
        );
        assert_eq!(seg.pins, 0, "segment {id} removed while pinned");
        for queue_id in seg.messages {
            let Some(m) = self.messages.get(&queue_id) else {
                continue;
            };
            if m.body.segment != id {
                continue;
            }
            let m = self.messages.remove(&queue_id).expect("just seen");
            for r in m.recipients.iter() {
                unpin(&mut self.segments, r.outcome, id);
            }
        }
    }

    /// What compaction must copy out of `id`: its live messages, and the
    /// latest outcomes it holds for messages elsewhere. The second part
    /// walks every message; compaction is rare and bounded per call.
    pub fn live_in(&self, id: SegmentId) -> (Vec<LiveMessage>, Vec<PinnedOutcome>) {
        let Some(seg) = self.segments.get(&id) else {
            return (Vec::new(), Vec::new());
        };
        let mut live = Vec::new();
        for queue_id in &seg.messages {
            let Some(m) = self.messages.get(queue_id) else {
                continue;
            };
            if m.body.segment != id || m.live == 0 {
                continue;
            }
            live.push(LiveMessage {
                queue_id: *queue_id,
                body: m.body,
                statuses: m.recipients.iter().map(|r| r.status).collect(),
                outcomes: m.recipients.iter().map(|r| r.outcome).collect(),
            });
        }
        let mut pinned = Vec::new();
        if seg.pins > 0 {
            for (queue_id, m) in &self.messages {
                if m.body.segment == id {
                    continue;
                }
                for (i, r) in m.recipients.iter().enumerate() {
                    if r.outcome == Some(id) {
                        pinned.push(PinnedOutcome {
                            queue_id: *queue_id,
                            recipient: i as u32,
                            status: r.status,
                        });
                    }
                }
            }
        }
        (live, pinned)
    }
}

fn pin(
    segments: &mut HashMap<SegmentId, SegmentState>,
    outcome: Option<SegmentId>,
    body: SegmentId,
) {
    if let Some(at) = outcome.filter(|&at| at != body) {
        segments.entry(at).or_default().pins += 1;
    }
}

fn unpin(
    segments: &mut HashMap<SegmentId, SegmentState>,
    outcome: Option<SegmentId>,
    body: SegmentId,
) {
    if let Some(at) = outcome.filter(|&at| at != body) {
        let seg = segments.get_mut(&at).expect("a pinned segment is indexed");
        assert!(seg.pins > 0, "pin count of segment {at} would go negative");
        seg.pins -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seg: u64) -> RecordRef {
        RecordRef {
            segment: SegmentId(seg),
            offset: 64,
            len: 100,
        }
    }

    #[test]
    fn a_final_outcome_elsewhere_pins_until_the_message_goes() {
        let mut index = Index::default();
        index.add_segment(SegmentId(1));
        index.add_segment(SegmentId(2));
        index.insert_message(QueueId(1), at(1), &[Status::Pending, Status::Pending]);
        assert!(index.apply_outcome(QueueId(1), 0, Status::Delivered { attempts: 1 }, at(2)));
        let all_sealed = |_| true;
        assert!(
            index.deletable(all_sealed).is_empty(),
            "1 has a live rcpt, 2 is pinned"
        );
        index.apply_outcome(QueueId(1), 1, Status::Failed { attempts: 1 }, at(2));
        assert_eq!(index.deletable(all_sealed), vec![SegmentId(1)]);
        index.remove_segment(SegmentId(1));
        assert_eq!(index.deletable(all_sealed), vec![SegmentId(2)]);
        assert!(index.message(QueueId(1)).is_none());
    }

    #[test]
    fn a_newer_deferral_moves_the_pin() {
        let mut index = Index::default();
        index.insert_message(QueueId(1), at(1), &[Status::Pending]);
        let deferred = |n| Status::Deferred {
            attempts: n,
            next_attempt_ms: 0,
        };
        index.apply_outcome(QueueId(1), 0, deferred(1), at(2));
        index.apply_outcome(QueueId(1), 0, deferred(2), at(3));
        assert_eq!(index.segment(SegmentId(2)).unwrap().pins, 0);
        assert_eq!(index.segment(SegmentId(3)).unwrap().pins, 1);
        // An older outcome arriving late changes nothing.
        index.apply_outcome(QueueId(1), 0, deferred(1), at(4));
        assert_eq!(index.segment(SegmentId(3)).unwrap().pins, 1);
    }

    #[test]
    fn relocation_releases_folded_outcomes_and_keeps_newer_ones() {
        let mut index = Index::default();
        index.insert_message(QueueId(1), at(1), &[Status::Pending, Status::Pending]);
        let d1 = Status::Deferred {
            attempts: 1,
            next_attempt_ms: 0,
        };
        index.apply_outcome(QueueId(1), 0, d1, at(2));
        let folded: Vec<_> = index
            .message(QueueId(1))
            .unwrap()
            .recipients
            .iter()
            .map(|r| r.outcome)
            .collect();
        // A newer outcome lands after the copy was taken.
        index.apply_outcome(QueueId(1), 1, Status::Delivered { attempts: 1 }, at(3));
        index.relocate(QueueId(1), SegmentId(1), at(5), &folded, true);
        assert_eq!(index.segment(SegmentId(1)).unwrap().live_recipients, 0);
        assert_eq!(index.segment(SegmentId(5)).unwrap().live_recipients, 1);
        assert_eq!(index.segment(SegmentId(2)).unwrap().pins, 0);
        assert_eq!(index.segment(SegmentId(3)).unwrap().pins, 1);
    }
}
