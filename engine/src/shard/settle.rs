//! What becomes of recipients once an attempt is over: an outcome record
//! per recipient in the spool (group commit, like messages), deferrals to
//! the scheduled queue along the retry schedule (failures past `max_age`),
//! the logs (tracing and the JSON event log), and once every recipient of a
//! message is final, one RFC 3464 notification to the sender listing all
//! that failed, queued like any message.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton_spool::{NewMessage, NewRecipient, Outcome as SpoolOutcome, QueueId, Record, Status};

use crate::delivery::dsn::{self, Bounce, FailedRecipient};
use crate::delivery::events::{Event as LogEvent, EventKind};
use crate::delivery::retry::{DeliverySettings, Retry};
use crate::metrics::SiteOutcome;
use crate::outbound::Outcome;
use crate::policy::suppression::{self, Entry, Source};
use crate::queue::QueuedRecipient;
use crate::route::{destination_of, Destination};
use crate::server::unix_ms;
use crate::shaping::classify::{self, Category};
use crate::smtp::reply::{parse_reply_text, Reply};
use crate::tls::TlsInfo;

use super::event_loop::{PendingStore, Shard, Waiter};

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
        lane: Option<&Arc<str>>,
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
                self.settle_message(destination, lane, &record, results, Via::default());
            }
            start = end;
        }
    }

    /// Records what became of each recipient of one message: the outcome
    /// goes to the spool, deferred recipients to the scheduled queue. When
    /// this batch makes the message's last recipient final, the sender gets
    /// one notification listing every recipient of the message that failed,
    /// in this batch or an earlier one, on any shard.
    ///
    /// The order of appends is what makes that notification survive a
    /// crash: the spool settles the final recipients first (only one
    /// caller learns the message is done), the notification is appended
    /// next, and the outcomes after it, to the same writer. A writer makes a
    /// prefix of its appends durable, so a final outcome on disk means the
    /// notification is too; a crash between the two leaves the recipient to
    /// be tried again, and at worst a second notification.
    pub(super) fn settle_message(
        &mut self,
        destination: &Destination,
        lane: Option<&Arc<str>>,
        record: &Record,
        results: Vec<(QueuedRecipient, Outcome)>,
        via: Via<'_>,
    ) {
        let Via { host, tls, .. } = via;
        let now_ms = unix_ms();
        let Ok(view) = record.message() else {
            return;
        };
        let server = self.server.clone();
        let live = server.live();
        let (delivery, arrival_ms) = (&live.delivery, view.arrival_ms);
        // Delivered recipients settle without a reply, so a message that
        // only succeeds costs no allocation here; deferred ones are not
        // final, and a batch of deferrals alone does not take the lock.
        let failures = server.spool.settle(
            view.queue_id,
            results.iter().filter_map(|(item, outcome)| {
                match fate(delivery, arrival_ms, now_ms, item.attempts + 1, outcome).1 {
                    Fate::Deferred { .. } => None,
                    Fate::Delivered(_) => Some((item.recipient, None)),
                    Fate::Failed { reply, .. } => {
                        Some((item.recipient, Some(failure_note(&reply, host))))
                    }
                }
            }),
        );
        let notice = failures.and_then(|failures| self.notify(&view, &failures, now_ms));

        let addresses: Vec<&[u8]> = view.recipients().map(|r| r.address).collect();
        let address = |item: &QueuedRecipient| -> &[u8] {
            addresses
                .get(item.recipient as usize)
                .copied()
                .unwrap_or_default()
        };
        let metrics = &server.metrics;
        // Per site: counted once for the batch, one lock.
        let mut by_outcome = [0u64; 3];
        for (item, outcome) in &results {
            let (attempts, decided) =
                fate(delivery, arrival_ms, now_ms, item.attempts + 1, outcome);
            // An operator's bounce settles a message's recipients at once,
            // whatever their domains: each event names its own.
            let own;
            let destination = match lane {
                None if destination_of(address(item)).as_str() != destination.as_str() => {
                    own = destination_of(address(item));
                    &own
                }
                _ => destination,
            };
            let mut note = Note {
                kind: EventKind::Delivered,
                destination,
                queue_id: item.queue_id,
                recipient: address(item),
                attempt: attempts,
                host,
                tls,
                local: via.local,
                latency_ms: via.latency_ms,
                next_attempt_ms: None,
                reason: None,
                category: None,
                size: view.body.len() as u64,
                user: std::str::from_utf8(view.identity)
                    .ok()
                    .filter(|user| !user.is_empty()),
                queue_time_ms: now_ms.saturating_sub(arrival_ms),
                source: lane.map(|l| &**l).filter(|l| !l.is_empty()),
            };
            let item = QueuedRecipient { attempts, ..*item };
            match decided {
                Fate::Delivered(reply) => {
                    let text = reply_text(reply);
                    let status = Status::Delivered { attempts };
                    self.record_outcome(&item, status, &with_tls(&text, tls), now_ms);
                    metrics.recipients_delivered.fetch_add(1, Ordering::Relaxed);
                    metrics.histograms.queue_time.observe(note.queue_time_ms);
                    by_outcome[SiteOutcome::Delivered as usize] += 1;
                    self.note(&note, reply, &text, now_ms);
                }
                Fate::Deferred {
                    reply,
                    next_attempt_ms,
                    soft,
                } => {
                    let status = Status::Deferred {
                        attempts,
                        next_attempt_ms,
                    };
                    let text = reply_text(reply);
                    self.record_outcome(&item, status, &with_tls(&text, tls), now_ms);
                    metrics.recipients_deferred.fetch_add(1, Ordering::Relaxed);
                    by_outcome[SiteOutcome::Deferred as usize] += 1;
                    note.kind = EventKind::Deferred;
                    note.next_attempt_ms = Some(next_attempt_ms);
                    note.reason = soft.then_some("soft_bounce");
                    let category = self.classify(reply);
                    note.category = Some(category);
                    self.listen(destination, lane, reply, category, now_ms);
                    self.note(&note, reply, &text, now_ms);
                    self.server
                        .queues
                        .schedule(destination, item, next_attempt_ms);
                }
                Fate::Failed { reply, expired } => {
                    let text = reply_text(&reply);
                    let status = Status::Failed { attempts };
                    self.record_outcome(&item, status, &with_tls(&text, tls), now_ms);
                    metrics.recipients_failed.fetch_add(1, Ordering::Relaxed);
                    by_outcome[SiteOutcome::Failed as usize] += 1;
                    // Past `max_age`: an event of its own, so a consumer
                    // tells "gave up waiting" from "refused".
                    note.kind = if expired {
                        EventKind::Expired
                    } else {
                        EventKind::Failed
                    };
                    let category = self.classify(&reply);
                    note.category = Some(category);
                    if !expired {
                        self.listen(destination, lane, &reply, category, now_ms);
                    }
                    self.note(&note, &reply, &text, now_ms);
                    if !expired && classify::is_hard_bounce(&reply, category) {
                        self.suppress_hard_bounce(note.recipient, &text, now_ms);
                    }
                }
            }
        }
        // A batch over a connection is one domain's (an operator's bounce
        // has no connection and no site, and is not counted here).
        if let Some(site) = via.site {
            for outcome in [
                SiteOutcome::Delivered,
                SiteOutcome::Deferred,
                SiteOutcome::Failed,
            ] {
                let n = by_outcome[outcome as usize];
                if n > 0 {
                    metrics.outcomes.by_site.add(site, outcome, n);
                    metrics
                        .outcomes
                        .by_domain
                        .add(destination.as_str(), outcome, n);
                }
            }
        }
        if let Some(notice) = notice {
            self.note_bounce(&view, &notice, now_ms);
        }
    }

    /// Settles recipients the operator removes (`baton queue delete`): no
    /// notification for them, but if they were the last of the message, the
    /// one for its earlier failures is made now. Call it before appending
    /// their outcomes, for the reason `settle_message` gives.
    pub(super) fn settle_removed(&mut self, record: &Record, recipients: &[u32]) {
        let now_ms = unix_ms();
        let Ok(view) = record.message() else {
            return;
        };
        // One `deleted` line per recipient, under its own domain.
        let events = &self.server.events;
        if events.is_enabled() {
            let queue_id = view.queue_id.to_string();
            let addresses: Vec<&[u8]> = view.recipients().map(|r| r.address).collect();
            for &r in recipients {
                let Some(address) = addresses.get(r as usize).copied() else {
                    continue;
                };
                let destination = destination_of(address);
                let mut event = LogEvent::new(EventKind::Deleted, now_ms, &queue_id);
                event.recipient = Some(address);
                event.destination = Some(destination.as_str());
                event.reason = Some("deleted by the administrator");
                events.record(&event);
            }
        }
        let removed = recipients.iter().map(|&r| (r, None::<&[u8]>));
        let Some(failures) = self.server.spool.settle(view.queue_id, removed) else {
            return;
        };
        if let Some(notice) = self.notify(&view, &failures, now_ms) {
            self.note_bounce(&view, &notice, now_ms);
        }
    }

    /// A bounce that says the mailbox or its domain does not exist puts
    /// the address on the suppression list (scope global: no sender can
    /// reach it), so the next message to it is refused at `RCPT` instead
    /// of bouncing again. Handed to the list's writer without waiting.
    /// The category of a deferral's or failure's reply, counted.
    fn classify(&self, reply: &Reply) -> Category {
        let category = self.server.live().classifier.classify(reply);
        self.server.metrics.recipients_by_category[category.index()]
            .fetch_add(1, Ordering::Relaxed);
        category
    }

    /// Shaping that listens: a rule that matches the reply acts on the
    /// destination (`crate::shaping`), and says so at WARN.
    pub(super) fn listen(
        &self,
        destination: &Destination,
        lane: Option<&Arc<str>>,
        reply: &Reply,
        category: Category,
        now_ms: u64,
    ) {
        // An operator's action or a local failure has no source to act on.
        let Some(lane) = lane else {
            return;
        };
        let live = self.server.live();
        let rules = &live.shaping_rules;
        // Logged when the state changes: once per suspension, however
        // many recipients the same reply defers.
        let queues = &self.server.queues;
        if let Some(done) = rules.apply(queues, destination, lane, reply, category, now_ms) {
            if lane.is_empty() {
                tracing::warn!(%destination, "shaping rule: {done}");
            } else {
                tracing::warn!(%destination, source = %lane, "shaping rule: {done}");
            }
        }
    }

    /// Adds a recipient that failed for good as `invalid_recipient` or
    /// `bad_domain` to the suppression list (`from_bounces`).
    fn suppress_hard_bounce(&self, recipient: &[u8], text: &str, now_ms: u64) {
        let Some(list) = &self.server.suppression else {
            return;
        };
        if !self.server.live().config.suppression.from_bounces {
            return;
        }
        let address = String::from_utf8_lossy(recipient);
        match Entry::new(&address, suppression::GLOBAL, text, now_ms, Source::Bounce) {
            Ok(entry) => {
                if !list.add_soon(entry) {
                    tracing::warn!(to = %address, "suppression list: writer behind, bounce not added");
                }
            }
            Err(err) => tracing::debug!(%err, "suppression list: bounce not added"),
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
            event.category = note.category.map(Category::as_str);
            event.size = Some(note.size);
            event.user = note.user;
            event.queue_time_ms = Some(note.queue_time_ms);
            event.egress = note.source;
            event.local = note.local;
            event.latency_ms = note.latency_ms;
            events.record(&event);
        }
        // Deliveries at INFO (off with `[log] per_message = false`);
        // deferrals and failures at WARN, always.
        macro_rules! outcome {
            ($level:ident, $what:literal) => {
                tracing::$level!(
                    target: crate::config::PER_MESSAGE_TARGET,
                    queue_id = %note.queue_id,
                    to = %String::from_utf8_lossy(note.recipient),
                    destination = %note.destination,
                    host = note.host.unwrap_or("-"),
                    tls = note.tls.map_or("none", |tls| &**tls.label()),
                    attempt = note.attempt,
                    reply = text,
                    category = note.category.map_or("-", Category::as_str),
                    next_attempt_ms = note.next_attempt_ms,
                    $what
                )
            };
        }
        match note.kind {
            EventKind::Delivered => outcome!(info, "delivered"),
            EventKind::Deferred => outcome!(warn, "deferred"),
            EventKind::Expired => outcome!(warn, "expired"),
            _ => outcome!(warn, "failed"),
        }
    }

    /// Appends one notification (RFC 3464) to the sender listing the
    /// failures of a settled message (as `Spool::settle` returns them),
    /// unless the sender is the null path (never a bounce for a bounce) or
    /// none of the failed recipients asked for one (NOTIFY).
    fn notify(
        &mut self,
        view: &baton_spool::MessageView<'_>,
        failures: &[(u32, Vec<u8>)],
        now_ms: u64,
    ) -> Option<Notice> {
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
                self.stores.push(
                    appended.ticket,
                    PendingStore {
                        waiter: Waiter::Nobody,
                        queue_id,
                        recipients: vec![(destination_of(view.reverse_path), 0)],
                        size: body.len(),
                        sender: String::new(),
                        peer: None,
                        tls: None,
                        user: String::new(),
                        dkim: None,
                        about: None,
                    },
                );
                self.server
                    .metrics
                    .bounces_generated
                    .fetch_add(1, Ordering::Relaxed);
                Some(Notice {
                    unique,
                    recipients: listed.len(),
                    size: body.len() as u64,
                })
            }
            Err(err) => {
                // The failures are recorded; only the notice is lost.
                if let Some(times) = self.logs.bounce_failed.hit() {
                    tracing::error!(queue_id = %original_id, %err, times, "spool: cannot queue a bounce");
                }
                None
            }
        }
    }

    /// Logs a notification made, after the outcomes that led to it.
    fn note_bounce(&self, view: &baton_spool::MessageView<'_>, notice: &Notice, now_ms: u64) {
        let original_id = view.queue_id.to_string();
        let events = &self.server.events;
        if events.is_enabled() {
            // The original message's sender, to whom the notice goes.
            let mut event = LogEvent::new(EventKind::Bounce, now_ms, &original_id);
            event.sender = Some(view.reverse_path);
            event.recipient = Some(view.reverse_path);
            event.bounce_queue_id = Some(&notice.unique);
            event.size = Some(notice.size);
            events.record(&event);
        }
        tracing::info!(
            queue_id = %original_id,
            bounce = %notice.unique,
            to = %String::from_utf8_lossy(view.reverse_path),
            recipients = notice.recipients,
            "bounce generated"
        );
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

/// What an attempt's outcome makes of a recipient.
enum Fate<'r> {
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

/// The fate of a recipient on its `attempts`-th attempt, and the attempt
/// count to record. The same inputs give the same fate: `settle_message`
/// asks twice rather than keep a list.
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

/// A notification appended, for the log.
struct Notice {
    /// Its queue id.
    unique: String,
    recipients: usize,
    size: u64,
}

/// The connection an attempt went over, as its outcome events tell it;
/// all `None` for outcomes of no connection (an operator's bounce, a DNS
/// failure).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Via<'a> {
    /// The remote host, `name [address]:port`.
    pub host: Option<&'a str>,
    pub tls: Option<&'a TlsInfo>,
    /// The local address, `ip:port`.
    pub local: Option<&'a str>,
    /// MAIL FROM to the final reply, in milliseconds.
    pub latency_ms: Option<u64>,
    /// The connection's site, for the per-site metrics.
    pub site: Option<&'a Arc<str>>,
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
    /// The local address the connection left from, `ip:port`.
    local: Option<&'a str>,
    /// The transaction's time, MAIL FROM to the final reply.
    latency_ms: Option<u64>,
    next_attempt_ms: Option<u64>,
    reason: Option<&'static str>,
    /// Of a deferral or failure.
    category: Option<Category>,
    /// Of the message, wire form.
    size: u64,
    /// The user the message's client authenticated as.
    user: Option<&'a str>,
    /// How long the message had been queued.
    queue_time_ms: u64,
    /// The egress source the attempt left from, if a pool chose one.
    source: Option<&'a str>,
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
