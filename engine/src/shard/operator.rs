//! Operator requests that change the queue (`baton queue flush`, `delete`,
//! `bounce`), run on a shard because recording their outcomes needs a
//! spool writer. The admin thread waits for the answer, which the shard
//! sends once those outcomes are durable (`event_loop.rs`).

#![forbid(unsafe_code)]

use crate::admin::{AdminReply, AdminRequest};
use crate::outbound::Outcome;
use crate::queue::QueuedRecipient;
use crate::route::Destination;
use crate::server::unix_ms;
use crate::smtp::reply::Reply;

use super::event_loop::Shard;
use super::settle::{reply_text, Via};

impl Shard {
    /// An operator's request, run on this shard for its spool writer.
    pub(super) fn admin(&mut self, request: AdminRequest) -> AdminReply {
        let now_ms = unix_ms();
        match request {
            AdminRequest::Flush(domain) => {
                let destination = domain.map(|d| Destination::new(d.to_ascii_lowercase()));
                let moved = self.server.queues.flush(destination.as_ref(), now_ms);
                let actions = self.server.queues.plan(now_ms);
                self.act(actions);
                AdminReply {
                    ok: true,
                    recipients: moved,
                    message: format!("{moved} deferred recipients due now"),
                }
            }
            AdminRequest::Delete(queue_id, ref domain)
            | AdminRequest::Bounce(queue_id, ref domain) => {
                let bounce = matches!(request, AdminRequest::Bounce(..));
                let Some((record, statuses)) = self.load(queue_id) else {
                    return AdminReply {
                        ok: false,
                        recipients: 0,
                        message: format!("no message {queue_id} in the queue"),
                    };
                };
                // With a domain: its recipients alone.
                let at_domain = |i: u32| {
                    let Some(domain) = domain else {
                        return true;
                    };
                    let view = record.message().ok();
                    let address = view
                        .as_ref()
                        .and_then(|v| v.recipients().nth(i as usize))
                        .map(|r| r.address)
                        .unwrap_or_default();
                    crate::route::destination_of(address).as_str() == domain.as_str()
                };
                let open: Vec<u32> = (0..statuses.len() as u32)
                    .filter(|&i| !statuses[i as usize].is_final() && at_domain(i))
                    .collect();
                let queued = self.server.queues.remove(queue_id, domain.as_deref());
                if open.is_empty() {
                    return AdminReply {
                        ok: false,
                        recipients: 0,
                        message: format!("{queue_id} has no recipient left to deliver"),
                    };
                }
                let item_of = |recipient: u32| {
                    queued
                        .iter()
                        .find(|(_, q)| q.recipient == recipient)
                        .map(|(_, q)| *q)
                        .unwrap_or(QueuedRecipient {
                            queue_id,
                            recipient,
                            attempts: 0,
                        })
                };
                if bounce {
                    let reply = Reply::new(550, Some((5, 0, 0)), "bounced by the administrator");
                    let mut by_destination: Vec<(Destination, Vec<(QueuedRecipient, Outcome)>)> =
                        Vec::new();
                    let view = record.message().ok();
                    for &recipient in &open {
                        let address = view
                            .as_ref()
                            .and_then(|v| v.recipients().nth(recipient as usize))
                            .map(|r| r.address)
                            .unwrap_or_default();
                        let destination = crate::route::destination_of(address);
                        let entry = match by_destination.iter_mut().find(|(d, _)| *d == destination)
                        {
                            Some(entry) => entry,
                            None => {
                                by_destination.push((destination, Vec::new()));
                                by_destination.last_mut().expect("pushed")
                            }
                        };
                        entry
                            .1
                            .push((item_of(recipient), Outcome::Failed(reply.clone())));
                    }
                    // One notification for the message: settle it as one
                    // batch under the first destination's name.
                    let destination = by_destination
                        .first()
                        .map(|(d, _)| d.clone())
                        .unwrap_or_else(|| Destination::new(""));
                    let results = by_destination.into_iter().flat_map(|(_, r)| r).collect();
                    self.settle_message(&destination, None, &record, results, Via::default());
                } else {
                    let reply = Reply::new(250, None, "removed by the administrator");
                    self.settle_removed(&record, &open, &reply_text(&reply));
                    tracing::info!(%queue_id, recipients = open.len(), "deleted by the administrator");
                }
                AdminReply {
                    ok: true,
                    recipients: open.len(),
                    message: format!(
                        "{} {} recipients of {queue_id}",
                        if bounce { "bounced" } else { "deleted" },
                        open.len()
                    ),
                }
            }
        }
    }
}
