//! Settlement without I/O: what an attempt's outcomes make of each
//! recipient (the retry schedule, `max_age`, `soft_bounce`), and the
//! order in which that reaches the spool, so that a crash at any point
//! loses no failure notification and undoes no final outcome.
//!
//! The shard runs it after every transaction (`shard/settle.rs` adds the
//! logs, metrics, shaping rules, suppression and the queue), and the
//! simulator (`baton-sim`) runs the same code under its simulated disk:
//! the order below is what both check.

#![forbid(unsafe_code)]

use std::borrow::Cow;

use baton_spool::{
    Appended, Error as SpoolError, MessageView, NewMessage, NewRecipient, Outcome as SpoolOutcome,
    QueueId, RecordRef, Spool, Status, Ticket, Writer,
};

use crate::delivery::dsn::{self, Bounce, FailedRecipient};
use crate::delivery::retry::{DeliverySettings, Retry};
use crate::outbound::Outcome;
use crate::queue::QueuedRecipient;
use crate::smtp::reply::{parse_reply_text, Reply};
use crate::tls::TlsInfo;

/// What settlement writes through: the spool (which knows when a message
/// is settled) and one writer (whose appends become durable in order).
pub struct Ledger<'a> {
    pub spool: &'a Spool,
    pub writer: &'a mut Writer,
    pub delivery: &'a DeliverySettings,
    /// Notifications come from `MAILER-DAEMON@hostname`.
    pub hostname: &'a str,
}

/// What an attempt's outcome makes of a recipient.
pub enum Fate<'r> {
    Delivered(&'r Reply),
    Deferred {
        reply: &'r Reply,
        next_attempt_ms: u64,
        /// A permanent failure deferred by `soft_bounce`.
        soft: bool,
    },
    /// Refused, or deferred past `max_age` (`expired`, with a reply of
    /// baton's own that quotes the last one).
    Failed {
        reply: Cow<'r, Reply>,
        expired: bool,
    },
}

/// One recipient settled: its fate, and what was recorded.
pub struct Decided<'r> {
    /// With the attempt count recorded.
    pub item: QueuedRecipient,
    pub fate: Fate<'r>,
    pub status: Status,
    /// Its outcome record, when it was appended.
    pub appended: Option<Appended>,
    /// The reply on one line ([`reply_text`]); the record adds how the
    /// connection was encrypted ([`with_tls`]).
    pub text: String,
}

/// A notification appended to the spool, queued like any message once
/// durable.
#[derive(Clone, Debug)]
pub struct Notification {
    pub queue_id: QueueId,
    pub at: RecordRef,
    pub ticket: Ticket,
    /// Its one recipient: the original message's sender.
    pub to: Vec<u8>,
    /// Failed recipients it lists.
    pub recipients: usize,
    pub size: usize,
}

/// Outcomes that wait for a notification to be durable.
#[derive(Debug)]
pub struct Held {
    /// The notification's ticket.
    pub after: Ticket,
    pub time_ms: u64,
    pub outcomes: Vec<HeldOutcome>,
}

#[derive(Debug)]
pub struct HeldOutcome {
    pub item: QueuedRecipient,
    pub status: Status,
    /// The reply as recorded.
    pub reply: String,
}

/// What settling one batch did.
pub struct Settled<'r> {
    /// In the order of the results given.
    pub decided: Vec<Decided<'r>>,
    /// The message's notification, when this batch settled its last
    /// recipient with failures; an error when it could not be appended
    /// (the failures are recorded; only the notice is lost).
    pub notification: Option<Result<Notification, SpoolError>>,
    /// Outcomes that wait for the notification's datasync: the caller
    /// appends them with [`Ledger::record_held`] once it is durable.
    pub held: Option<Held>,
    /// Outcomes that could not be appended (the recipient is tried again
    /// after a restart).
    pub unrecorded: Vec<(QueueId, SpoolError)>,
    /// The last append's ticket: durable once the writer reaches it.
    pub last_ticket: Option<Ticket>,
}

impl Ledger<'_> {
    /// Settles one message's batch: decides each recipient's fate, then
    /// writes, in this order:
    /// 1. the spool learns which recipients become final
    ///    ([`Spool::settle`]; only one caller learns the message is done);
    /// 2. the notification, when this batch finished a message with
    ///    failures;
    /// 3. each recipient's outcome.
    ///
    /// The outcomes of a batch that made a notification are not appended
    /// at once: they are [`Settled::held`] until the notification is
    /// durable. A writer makes a prefix of its appends durable, but a
    /// power cut can keep a later unsynced sector and lose an earlier one
    /// (a disk's cache writes back in any order), so only a datasync
    /// between them makes "a final outcome on disk" mean "its
    /// notification too" (found by the simulator with `--reorder`). A
    /// crash before the outcomes are durable leaves the recipients to be
    /// tried again, and at worst a second notification.
    pub fn settle<'r>(
        &mut self,
        view: &MessageView<'_>,
        results: &'r [(QueuedRecipient, Outcome)],
        via: (Option<&str>, Option<&TlsInfo>),
        now_ms: u64,
        next_queue_id: impl FnOnce() -> QueueId,
    ) -> Settled<'r> {
        let (host, tls) = via;
        let decided: Vec<(QueuedRecipient, Fate<'r>)> = results
            .iter()
            .map(|(item, outcome)| {
                let (attempts, fate) = fate(
                    self.delivery,
                    view.arrival_ms,
                    now_ms,
                    item.attempts + 1,
                    outcome,
                );
                (QueuedRecipient { attempts, ..*item }, fate)
            })
            .collect();
        // Delivered recipients settle without a reply, so a message that
        // only succeeds costs no allocation here; deferred ones are not
        // final, and a batch of deferrals alone does not take the lock.
        let failures = self.spool.settle(
            view.queue_id,
            decided.iter().filter_map(|(item, fate)| match fate {
                Fate::Deferred { .. } => None,
                Fate::Delivered(_) => Some((item.recipient, None)),
                Fate::Failed { reply, .. } => {
                    Some((item.recipient, Some(failure_note(reply, host))))
                }
            }),
        );
        let mut settled = Settled {
            decided: Vec::with_capacity(decided.len()),
            notification: None,
            held: None,
            unrecorded: Vec::new(),
            last_ticket: None,
        };
        if let Some(failures) = failures {
            settled.notification = self.notify(view, &failures, now_ms, next_queue_id);
            if let Some(Ok(notification)) = &settled.notification {
                settled.last_ticket = Some(notification.ticket);
                settled.held = Some(Held {
                    after: notification.ticket,
                    time_ms: now_ms,
                    outcomes: Vec::with_capacity(decided.len()),
                });
            }
        }
        for (item, fate) in decided {
            let (status, reply) = match &fate {
                Fate::Delivered(reply) => (
                    Status::Delivered {
                        attempts: item.attempts,
                    },
                    *reply,
                ),
                Fate::Deferred {
                    reply,
                    next_attempt_ms,
                    ..
                } => (
                    Status::Deferred {
                        attempts: item.attempts,
                        next_attempt_ms: *next_attempt_ms,
                    },
                    *reply,
                ),
                Fate::Failed { reply, .. } => (
                    Status::Failed {
                        attempts: item.attempts,
                    },
                    &**reply,
                ),
            };
            let text = reply_text(reply);
            let recorded = with_tls(&text, tls);
            let ticket = match &mut settled.held {
                Some(held) => {
                    held.outcomes.push(HeldOutcome {
                        item,
                        status,
                        reply: recorded.into_owned(),
                    });
                    None
                }
                None => match self.record(&item, status, &recorded, now_ms) {
                    Ok(appended) => {
                        settled.last_ticket = Some(appended.ticket);
                        Some(appended)
                    }
                    Err(err) => {
                        settled.unrecorded.push((item.queue_id, err));
                        None
                    }
                },
            };
            settled.decided.push(Decided {
                item,
                fate,
                status,
                appended: ticket,
                text,
            });
        }
        settled
    }

    /// Settles recipients an operator removes and records them as
    /// `Removed`: no notification for them, but if they were the last of
    /// the message, the one for its earlier failures is appended first,
    /// and their outcomes are held for it as in [`Ledger::settle`].
    pub fn remove(
        &mut self,
        view: &MessageView<'_>,
        recipients: &[u32],
        reply: &str,
        now_ms: u64,
        next_queue_id: impl FnOnce() -> QueueId,
    ) -> Settled<'static> {
        let removed = recipients.iter().map(|&r| (r, None::<&[u8]>));
        let failures = self.spool.settle(view.queue_id, removed);
        let notification =
            failures.and_then(|failures| self.notify(view, &failures, now_ms, next_queue_id));
        let outcomes: Vec<HeldOutcome> = recipients
            .iter()
            .map(|&recipient| HeldOutcome {
                item: QueuedRecipient {
                    queue_id: view.queue_id,
                    recipient,
                    attempts: 0,
                },
                status: Status::Removed,
                reply: reply.to_owned(),
            })
            .collect();
        let mut settled = Settled {
            decided: Vec::new(),
            notification: None,
            held: None,
            unrecorded: Vec::new(),
            last_ticket: None,
        };
        match &notification {
            Some(Ok(notification)) => {
                settled.last_ticket = Some(notification.ticket);
                settled.held = Some(Held {
                    after: notification.ticket,
                    time_ms: now_ms,
                    outcomes,
                });
            }
            _ => {
                let now = Held {
                    after: Ticket(0),
                    time_ms: now_ms,
                    outcomes,
                };
                (settled.last_ticket, settled.unrecorded) =
                    Ledger::appended(self.record_held(&now));
            }
        }
        settled.notification = notification;
        settled
    }

    /// Appends outcomes held for a notification, once it is durable:
    /// each recipient with its status and its record's ticket, or why it
    /// could not be appended.
    pub fn record_held(
        &mut self,
        held: &Held,
    ) -> Vec<(QueuedRecipient, Status, Result<Appended, SpoolError>)> {
        held.outcomes
            .iter()
            .map(|o| {
                let appended = self.record(&o.item, o.status, &o.reply, held.time_ms);
                (o.item, o.status, appended)
            })
            .collect()
    }

    /// The last ticket of [`Ledger::record_held`]'s appends, and those
    /// that failed.
    pub fn appended(
        recorded: Vec<(QueuedRecipient, Status, Result<Appended, SpoolError>)>,
    ) -> (Option<Ticket>, Vec<(QueueId, SpoolError)>) {
        let mut last = None;
        let mut unrecorded = Vec::new();
        for (item, _, appended) in recorded {
            match appended {
                Ok(appended) => last = Some(appended.ticket),
                Err(err) => unrecorded.push((item.queue_id, err)),
            }
        }
        (last, unrecorded)
    }

    /// Appends one recipient's outcome.
    pub fn record(
        &mut self,
        item: &QueuedRecipient,
        status: Status,
        text: &str,
        now_ms: u64,
    ) -> Result<Appended, SpoolError> {
        let outcome = SpoolOutcome {
            queue_id: item.queue_id,
            recipient: item.recipient,
            status,
            time_ms: now_ms,
            reply: text.as_bytes(),
        };
        self.writer.append_outcome(&outcome)
    }

    /// Appends one notification (RFC 3464) to the sender listing the
    /// failures of a settled message (as [`Spool::settle`] returns them),
    /// unless the sender is the null path (never a bounce for a bounce) or
    /// none of the failed recipients asked for one (NOTIFY).
    fn notify(
        &mut self,
        view: &MessageView<'_>,
        failures: &[(u32, Vec<u8>)],
        now_ms: u64,
        next_queue_id: impl FnOnce() -> QueueId,
    ) -> Option<Result<Notification, SpoolError>> {
        let recipients: Vec<_> = view.recipients().collect();
        let parsed: Vec<_> = failures
            .iter()
            .filter_map(|(i, note)| {
                let r = recipients.get(*i as usize)?;
                dsn::wants_notification(view.reverse_path, r.params)
                    .then(|| (r, parse_failure_note(note)))
            })
            .collect();
        let listed: Vec<FailedRecipient<'_>> = parsed
            .iter()
            .map(|(r, (reply, host))| FailedRecipient {
                address: r.address,
                params: r.params,
                reply,
                remote_host: *host,
            })
            .collect();
        if listed.is_empty() {
            return None;
        }
        let original_id = view.queue_id.to_string();
        let queue_id = next_queue_id();
        let unique = queue_id.to_string();
        let body = dsn::build(&Bounce {
            hostname: self.hostname,
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
        Some(
            self.writer
                .append_notification(&record)
                .map(|appended| Notification {
                    queue_id,
                    at: appended.at,
                    ticket: appended.ticket,
                    to: view.reverse_path.to_vec(),
                    recipients: listed.len(),
                    size: body.len(),
                }),
        )
    }
}

/// The fate of a recipient on its `attempts`-th attempt, and the attempt
/// count to record.
fn fate<'r>(
    delivery: &DeliverySettings,
    arrival_ms: u64,
    now_ms: u64,
    attempts: u32,
    outcome: &'r Outcome,
) -> (u32, Fate<'r>) {
    match outcome {
        Outcome::Delivered(reply) => (attempts, Fate::Delivered(reply)),
        Outcome::Failed(reply) if delivery.soft_bounce => {
            deferred(delivery, arrival_ms, now_ms, attempts, reply, true)
        }
        Outcome::Failed(reply) => (
            attempts,
            Fate::Failed {
                reply: Cow::Borrowed(reply),
                expired: false,
            },
        ),
        Outcome::Deferred(reply) => deferred(delivery, arrival_ms, now_ms, attempts, reply, false),
    }
}

/// A deferral: tried again on the retry schedule, or failed once
/// `max_age` has passed. `soft`: a permanent failure that `soft_bounce`
/// turned into this.
fn deferred<'r>(
    delivery: &DeliverySettings,
    arrival_ms: u64,
    now_ms: u64,
    attempts: u32,
    reply: &'r Reply,
    soft: bool,
) -> (u32, Fate<'r>) {
    match delivery.retry(attempts, arrival_ms, now_ms) {
        Retry::At {
            attempts,
            next_attempt_ms,
        } => (
            attempts,
            Fate::Deferred {
                reply,
                next_attempt_ms,
                soft,
            },
        ),
        Retry::Expired { attempts } => {
            // RFC 3463 X.4.7: delivery time expired.
            let class = if reply.class() == 5 { 5 } else { 4 };
            let text = format!(
                "delivery time expired after {attempts} attempts; last reply: {}",
                reply_text(reply)
            );
            let reply = Reply::new(reply.code.max(400), Some((class, 4, 7)), text);
            (
                attempts,
                Fate::Failed {
                    reply: Cow::Owned(reply),
                    expired: true,
                },
            )
        }
    }
}

/// Separates the reply from the remote host in a failure note.
const NOTE_HOST_SEPARATOR: char = '\0';

/// What the spool keeps of a failure until the message is settled: the
/// reply as [`reply_text`] writes it, then, when a remote host gave it, a
/// NUL and the host's label. (`reply_text` turns control characters into
/// spaces, so the NUL is unambiguous.) After a restart the spool rebuilds
/// the note from the outcome record, which holds the reply alone (with
/// [`with_tls`]'s addition), or nothing when compaction took the record.
fn failure_note(reply: &Reply, host: Option<&str>) -> String {
    let mut note = reply_text(reply);
    if let Some(host) = host {
        note.push(NOTE_HOST_SEPARATOR);
        note.push_str(host);
    }
    note
}

/// The reply and remote host of a failure note. A note without a reply
/// (its record compacted away before a restart) or one that does not read
/// as a reply gives a generic permanent failure, so the recipient is still
/// listed.
fn parse_failure_note(note: &[u8]) -> (Reply, Option<&str>) {
    let note = std::str::from_utf8(note).unwrap_or_default();
    let (text, host) = match note.split_once(NOTE_HOST_SEPARATOR) {
        Some((text, host)) => (text, Some(host).filter(|h| !h.is_empty())),
        None => (note, None),
    };
    let reply = match parse_reply_text(text) {
        Some(reply) if reply.code >= 400 => reply,
        _ if text.is_empty() => Reply::new(
            550,
            Some((5, 0, 0)),
            "delivery failed (the reply was not kept across a restart)",
        ),
        _ => Reply::new(550, Some((5, 0, 0)), text),
    };
    (reply, host)
}

/// The reply as recorded for `queue show`: with how the connection was
/// encrypted, `250 2.0.0 Ok (TLSv1.3 with cipher TLS_AES_256_GCM_SHA384
/// (256/256 bits), certificate verified)`.
pub fn with_tls<'t>(text: &'t str, tls: Option<&TlsInfo>) -> Cow<'t, str> {
    match tls {
        None => Cow::Borrowed(text),
        Some(tls) => Cow::Owned(format!(
            "{text} ({tls}, certificate {})",
            if tls.verified {
                "verified"
            } else {
                "not verified"
            }
        )),
    }
}

/// A reply on one line: `550 5.1.1 No such user`.
pub fn reply_text(reply: &Reply) -> String {
    use std::fmt::Write as _;
    // One per recipient settled: sized once, no `format!` per piece.
    let len = 16 + reply.lines.iter().map(|l| l.len() + 1).sum::<usize>();
    let mut text = String::with_capacity(len);
    let _ = write!(text, "{}", reply.code);
    if let Some((a, b, c)) = reply.enhanced {
        let _ = write!(text, " {a}.{b}.{c}");
    }
    for line in &reply.lines {
        if !line.is_empty() {
            text.push(' ');
            if line.bytes().any(|b| b.is_ascii_control()) || !line.is_ascii() {
                text.extend(line.chars().map(|c| if c.is_control() { ' ' } else { c }));
            } else {
                text.push_str(line);
            }
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

    #[test]
    fn a_failure_note_gives_back_its_reply_and_host() {
        let reply = Reply::new(550, Some((5, 1, 1)), "no such user");
        let note = failure_note(&reply, Some("mx1.example.org [192.0.2.1]"));
        let (parsed, host) = parse_failure_note(note.as_bytes());
        assert_eq!(parsed, reply);
        assert_eq!(host, Some("mx1.example.org [192.0.2.1]"));
        // As rebuilt after a restart: the outcome record's reply alone,
        // with how the connection was encrypted.
        let (parsed, host) = parse_failure_note(b"554 5.7.1 denied (TLSv1.3 with cipher X)");
        assert_eq!(parsed.code, 554);
        assert_eq!(parsed.enhanced, Some((5, 7, 1)));
        assert_eq!(parsed.lines, ["denied (TLSv1.3 with cipher X)"]);
        assert_eq!(host, None);
        // An expiry, which quotes the last temporary reply.
        let expired = Reply::new(
            451,
            Some((4, 4, 7)),
            "delivery time expired after 3 attempts; last reply: 451 4.3.0 busy",
        );
        let (parsed, _) = parse_failure_note(failure_note(&expired, None).as_bytes());
        assert_eq!(parsed, expired);
    }

    #[test]
    fn a_failure_note_without_a_reply_still_lists_the_recipient() {
        for note in [&b""[..], b"garbage", b"\xff\xfe"] {
            let (parsed, host) = parse_failure_note(note);
            assert_eq!(parsed.code, 550, "{note:?}");
            assert_eq!(parsed.enhanced, Some((5, 0, 0)), "{note:?}");
            assert_eq!(host, None);
        }
    }
}
