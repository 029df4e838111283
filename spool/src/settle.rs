//! Settlement: knowing when every recipient of a message is final, so that
//! the sender hears of its failures once, in one notification.
//!
//! A recipient's durable `status` changes only once its outcome record is
//! durable, later than the shard that appended it moves on. Settlement runs
//! ahead of it: the engine calls [`Spool::settle`] with the recipients it is
//! about to make final, *before* appending their outcomes, and the call that
//! settles a message's last recipient gets the failures of all of them.
//! The index lock makes that one call, whichever shard or operator request
//! makes it.
//!
//! The failure replies are opaque bytes to the spool. They are kept in
//! memory until the message is settled; after a restart they are rebuilt
//! from the durable outcome records of the failed recipients of messages
//! still live (the reply is in the record). A reply that compaction folded
//! into a copy of the message, or moved, is no longer known: it comes back
//! empty, and the engine words the notification without it.

use crate::record::Status;
use crate::spool::Spool;
use crate::QueueId;

impl Spool {
    /// Marks these recipients of a message settled, each with its failure
    /// reply if it failed (`None`: delivered or removed). Settling a
    /// recipient already settled changes nothing.
    ///
    /// Returns the failures of the whole message, in recipient order, to
    /// the one call that settles its last unsettled recipient, if there is
    /// at least one failure; `None` otherwise. An empty list of recipients
    /// returns `None` without taking the index lock.
    pub fn settle<R: AsRef<[u8]>>(
        &self,
        queue_id: QueueId,
        recipients: impl IntoIterator<Item = (u32, Option<R>)>,
    ) -> Option<Vec<(u32, Vec<u8>)>> {
        let mut recipients = recipients.into_iter().peekable();
        recipients.peek()?;
        let mut index = self.shared.index.lock().expect("index lock");
        let mut last = false;
        for (recipient, failure) in recipients {
            last |= index.settle(queue_id, recipient, failure.as_ref().map(AsRef::as_ref));
        }
        if !last {
            return None;
        }
        let failures = index.take_failures(queue_id);
        (!failures.is_empty()).then_some(failures)
    }

    /// Rebuilds settlement after recovery (see the module documentation).
    /// The records are read without the index lock: elsewhere the segment
    /// table's lock is taken first.
    pub(crate) fn resettle(&self) {
        let failed = self.shared.index.lock().expect("index lock").resettle();
        let replies: Vec<_> = failed
            .into_iter()
            .map(|(queue_id, recipient, at)| {
                let reply = at
                    .and_then(|at| self.read(at).ok())
                    .and_then(|record| {
                        let o = record.outcome().ok()?;
                        (o.queue_id == queue_id
                            && o.recipient == recipient
                            && matches!(o.status, Status::Failed { .. }))
                        .then(|| o.reply.to_vec())
                    })
                    .unwrap_or_default();
                (queue_id, recipient, reply)
            })
            .collect();
        let mut index = self.shared.index.lock().expect("index lock");
        for (queue_id, recipient, reply) in replies {
            index.keep_failure(queue_id, recipient, reply);
        }
    }
}
