//! What becomes of recipients once an attempt is over: an outcome record
//! per recipient in the spool (group commit, like messages), deferrals to
//! the scheduled queue along the retry schedule (failures past `max_age`),
//! the logs (tracing and the JSON event log), and for failures one RFC 3464
//! notification to the sender, queued like any message.

#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;

use baton_spool::{NewMessage, NewRecipient, Outcome as SpoolOutcome, QueueId, Record, Status};

use crate::delivery::dsn::{self, Bounce, FailedRecipient};
use crate::delivery::events::{Event as LogEvent, EventKind};
use crate::delivery::retry::Retry;
use crate::outbound::Outcome;
use crate::queue::QueuedRecipient;
use crate::route::{destination_of, Destination};
use crate::server::unix_ms;
use crate::smtp::reply::Reply;
use crate::tls::TlsInfo;

use super::event_loop::{PendingStore, Shard};

impl Shard {
    /// The message's current record and recipient states, or `None` when
    /// it is gone from the spool.
    pub(super) fn load(&mut self, queue_id: QueueId) -> Option<(Record, Vec<Status>)> {
        let state = self.server.spool.message(queue_id)?;
        match self.server.spool.read(state.body) {
            Ok(record) => Some((record, state.statuses)),
            Err(err) => {
                if let Some(times) = self.logs.read_failed.hit() {
                    tracing::error!(%queue_id, %err, times, "delivery: cannot read a queued message");
                }
                None
            }
        }
    }

    /// Settles queued recipients that never reached a connection, grouped
    /// by message.
    pub(super) fn settle_items(
        &mut self,
        destination: &Destination,
        items: Vec<QueuedRecipient>,
        outcome: &Outcome,
    ) {
        let mut start = 0;
        while start < items.len() {
            let queue_id = items[start].queue_id;
            let end = items[start..]
                .iter()
                .position(|i| i.queue_id != queue_id)
                .map_or(items.len(), |n| start + n);
            if let Some((record, statuses)) = self.load(queue_id) {
                let results = items[start..end]
                    .iter()
                    .filter(|i| {
                        statuses
                            .get(i.recipient as usize)
                            .is_some_and(|s| !s.is_final())
                    })
                    .map(|i| (*i, outcome.clone()))
                    .collect();
                self.settle_message(destination, &record, results, None, None);
            }
            start = end;
        }
    }

    /// Records what became of each recipient of one message: the outcome
    /// goes to the spool, deferred recipients to the scheduled queue,
    /// failed ones into one notification to the sender.
    pub(super) fn settle_message(
        &mut self,
        destination: &Destination,
        record: &Record,
        results: Vec<(QueuedRecipient, Outcome)>,
        host: Option<&str>,
        tls: Option<&TlsInfo>,
    ) {
        let now_ms = unix_ms();
        let Ok(view) = record.message() else {
            return;
        };
        let addresses: Vec<&[u8]> = view.recipients().map(|r| r.address).collect();
        let address = |item: &QueuedRecipient| -> &[u8] {
            addresses
                .get(item.recipient as usize)
                .copied()
                .unwrap_or_default()
        };
        let server = self.server.clone();
        let metrics = &server.metrics;
        let mut failed: Vec<Failure> = Vec::new();
        for (item, outcome) in results {
            let attempts = item.attempts + 1;
            let mut note = Note {
                kind: EventKind::Delivered,
                destination,
                queue_id: item.queue_id,
                recipient: address(&item),
                attempt: attempts,
                host,
                tls,
                next_attempt_ms: None,
                reason: None,
                size: view.body.len() as u64,
            };
            match outcome {
                Outcome::Delivered(reply) => {
                    let text = reply_text(&reply);
                    let status = Status::Delivered { attempts };
                    self.record_outcome(&item, status, &with_tls(&text, tls), now_ms);
                    metrics.recipients_delivered.fetch_add(1, Ordering::Relaxed);
                    self.note(&note, &reply, &text, now_ms);
                }
                Outcome::Deferred(reply) => {
                    match server.delivery.retry(attempts, view.arrival_ms, now_ms) {
                        Retry::At {
                            attempts,
                            next_attempt_ms,
                        } => {
                            let status = Status::Deferred {
                                attempts,
                                next_attempt_ms,
                            };
                            let text = reply_text(&reply);
                            self.record_outcome(&item, status, &with_tls(&text, tls), now_ms);
                            metrics.recipients_deferred.fetch_add(1, Ordering::Relaxed);
                            note.kind = EventKind::Deferred;
                            note.next_attempt_ms = Some(next_attempt_ms);
                            self.note(&note, &reply, &text, now_ms);
                            let item = QueuedRecipient { attempts, ..item };
                            self.server
                                .queues
                                .schedule(destination, item, next_attempt_ms);
                        }
                        Retry::Expired { attempts } => {
                            // RFC 3463 X.4.7: delivery time expired.
                            let class = if reply.class() == 5 { 5 } else { 4 };
                            let text = format!(
                                "delivery time expired after {attempts} attempts; last reply: {}",
                                reply_text(&reply)
                            );
                            failed.push(Failure {
                                item: QueuedRecipient { attempts, ..item },
                                reply: Reply::new(reply.code.max(400), Some((class, 4, 7)), text),
                                expired: true,
                            });
                        }
                    }
                }
                Outcome::Failed(reply) => failed.push(Failure {
                    item: QueuedRecipient { attempts, ..item },
                    reply,
                    expired: false,
                }),
            }
        }
        for failure in &failed {
            let item = &failure.item;
            let text = reply_text(&failure.reply);
            let status = Status::Failed {
                attempts: item.attempts,
            };
            self.record_outcome(item, status, &with_tls(&text, tls), now_ms);
            metrics.recipients_failed.fetch_add(1, Ordering::Relaxed);
            let note = Note {
                kind: EventKind::Failed,
                destination,
                queue_id: item.queue_id,
                recipient: address(item),
                attempt: item.attempts,
                host,
                tls,
                next_attempt_ms: None,
                reason: failure.expired.then_some("expired"),
                size: view.body.len() as u64,
            };
            self.note(&note, &failure.reply, &text, now_ms);
        }
        if !failed.is_empty() {
            self.bounce(&view, &failed, host, now_ms);
        }
    }

    /// Logs an outcome, and writes it to the event log.
    fn note(&self, note: &Note<'_>, reply: &Reply, text: &str, now_ms: u64) {
        let events = &self.server.events;
        if events.is_enabled() {
            let queue_id = note.queue_id.to_string();
            let mut event = LogEvent::new(note.kind, now_ms, &queue_id);
            event.recipient = Some(note.recipient);
            event.destination = Some(note.destination.as_str());
            event.host = note.host;
            event.tls = note.tls;
            event.reply = Some(reply);
            event.attempt = Some(note.attempt);
            event.next_attempt_unix_ms = note.next_attempt_ms;
            event.reason = note.reason;
            event.size = Some(note.size);
            events.record(&event);
        }
        tracing::info!(
            queue_id = %note.queue_id,
            to = %String::from_utf8_lossy(note.recipient),
            destination = %note.destination,
            host = note.host.unwrap_or("-"),
            tls = note.tls.map_or("none", |tls| &**tls.label()),
            attempt = note.attempt,
            reply = text,
            next_attempt_ms = note.next_attempt_ms,
            "{}",
            match note.kind {
                EventKind::Delivered => "delivered",
                EventKind::Deferred => "deferred",
                _ => "failed",
            }
        );
    }

    /// Queues one notification (RFC 3464) to the sender listing every
    /// recipient of the message that failed here, unless the sender is
    /// the null path (never a bounce for a bounce) or the recipients asked
    /// for none (NOTIFY).
    fn bounce(
        &mut self,
        view: &baton_spool::MessageView<'_>,
        failed: &[Failure],
        host: Option<&str>,
        now_ms: u64,
    ) {
        let recipients: Vec<_> = view.recipients().collect();
        let listed: Vec<FailedRecipient<'_>> = failed
            .iter()
            .filter_map(|f| {
                let r = recipients.get(f.item.recipient as usize)?;
                dsn::wants_notification(view.reverse_path, r.params).then_some(FailedRecipient {
                    address: r.address,
                    params: r.params,
                    reply: &f.reply,
                    remote_host: host,
                })
            })
            .collect();
        if listed.is_empty() {
            return;
        }
        let original_id = view.queue_id.to_string();
        let queue_id = self.queue_ids.next(now_ms);
        let unique = queue_id.to_string();
        let body = dsn::build(&Bounce {
            hostname: &self.server.config.server.hostname,
            queue_id: &original_id,
            original_sender: view.reverse_path,
            original_mail_params: view.mail_params,
            arrival_unix_secs: view.arrival_ms / 1000,
            now_unix_secs: now_ms / 1000,
            original: view.body,
            failed: &listed,
            unique: &unique,
        });
        // 8-bit content (an SMTPUTF8 address, an 8-bit original) needs
        // BODY=8BITMIME; a non-ASCII recipient address needs SMTPUTF8.
        let mut mail_params = Vec::new();
        if !body.is_ascii() {
            mail_params.extend_from_slice(b"BODY=8BITMIME");
        }
        if !view.reverse_path.is_ascii() {
            if !mail_params.is_empty() {
                mail_params.push(b' ');
            }
            mail_params.extend_from_slice(b"SMTPUTF8");
        }
        let rcpt = [NewRecipient {
            address: view.reverse_path,
            params: b"",
            status: Status::Pending,
        }];
        let record = NewMessage {
            queue_id,
            arrival_ms: now_ms,
            reverse_path: b"",
            mail_params: &mail_params,
            identity: b"",
            peer: b"",
            transport: b"",
            recipients: &rcpt,
            body: &body,
        };
        match self.writer.append_message(&record) {
            Ok(appended) => {
                self.last_ticket = self.last_ticket.max(appended.ticket);
                self.stores.push_back(PendingStore {
                    ticket: appended.ticket,
                    conn: None,
                    queue_id,
                    recipients: vec![(destination_of(view.reverse_path), 0)],
                    size: body.len(),
                    sender: String::new(),
                    peer: None,
                    tls: None,
                });
                self.server
                    .metrics
                    .bounces_generated
                    .fetch_add(1, Ordering::Relaxed);
                let events = &self.server.events;
                if events.is_enabled() {
                    // The original message's sender, to whom the notice goes.
                    let mut event = LogEvent::new(EventKind::Bounce, now_ms, &original_id);
                    event.sender = Some(view.reverse_path);
                    event.recipient = Some(view.reverse_path);
                    event.bounce_queue_id = Some(&unique);
                    event.size = Some(body.len() as u64);
                    events.record(&event);
                }
                tracing::info!(
                    queue_id = %original_id,
                    bounce = %unique,
                    to = %String::from_utf8_lossy(view.reverse_path),
                    recipients = listed.len(),
                    "bounce generated"
                );
            }
            Err(err) => {
                // The failures are recorded; only the notice is lost.
                if let Some(times) = self.logs.bounce_failed.hit() {
                    tracing::error!(queue_id = %original_id, %err, times, "spool: cannot queue a bounce");
                }
            }
        }
    }

    pub(super) fn record_outcome(
        &mut self,
        item: &QueuedRecipient,
        status: Status,
        text: &str,
        now_ms: u64,
    ) {
        let outcome = SpoolOutcome {
            queue_id: item.queue_id,
            recipient: item.recipient,
            status,
            time_ms: now_ms,
            reply: text.as_bytes(),
        };
        match self.writer.append_outcome(&outcome) {
            Ok(appended) => self.last_ticket = self.last_ticket.max(appended.ticket),
            Err(err) => {
                if let Some(times) = self.logs.outcome_failed.hit() {
                    tracing::error!(queue_id = %item.queue_id, %err, times, "spool: cannot record an outcome");
                }
            }
        }
    }
}

/// A recipient that failed, for the notification.
struct Failure {
    item: QueuedRecipient,
    reply: Reply,
    /// Failed because it waited longer than `max_age`.
    expired: bool,
}

/// What the log says about one outcome.
struct Note<'a> {
    kind: EventKind,
    destination: &'a Destination,
    queue_id: QueueId,
    recipient: &'a [u8],
    attempt: u32,
    host: Option<&'a str>,
    /// How the connection was encrypted, if it was.
    tls: Option<&'a TlsInfo>,
    next_attempt_ms: Option<u64>,
    reason: Option<&'static str>,
    /// Of the message, wire form.
    size: u64,
}

/// The reply as recorded for `queue show`: with how the connection was
/// encrypted, `250 2.0.0 Ok (TLSv1.3 with cipher TLS_AES_256_GCM_SHA384
/// (256/256 bits), certificate verified)`.
fn with_tls(text: &str, tls: Option<&TlsInfo>) -> String {
    match tls {
        None => text.to_owned(),
        Some(tls) => format!(
            "{text} ({tls}, certificate {})",
            if tls.verified {
                "verified"
            } else {
                "not verified"
            }
        ),
    }
}

/// A reply on one line: `550 5.1.1 No such user`.
pub(crate) fn reply_text(reply: &Reply) -> String {
    let mut text = format!("{}", reply.code);
    if let Some((a, b, c)) = reply.enhanced {
        text.push_str(&format!(" {a}.{b}.{c}"));
    }
    for line in &reply.lines {
        if !line.is_empty() {
            text.push(' ');
            text.extend(line.chars().map(|c| if c.is_control() { ' ' } else { c }));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_fit_one_line() {
        let reply = Reply {
            code: 550,
            enhanced: Some((5, 1, 1)),
            lines: vec!["No such\r\nuser".into(), "here".into()],
        };
        assert_eq!(reply_text(&reply), "550 5.1.1 No such  user here");
    }
}
