//! What becomes of recipients once an attempt is over: an outcome record
//! per recipient in the spool (group commit, like messages), deferrals to
//! the scheduled queue along the retry schedule (failures past `max_age`),
//! the logs (tracing and the JSON event log), and once every recipient of a
//! message is final, one RFC 3464 notification to the sender listing all
//! that failed, queued like any message.

#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton_spool::{QueueId, Record, Status, Ticket};

use crate::delivery::events::{Event as LogEvent, EventKind};
pub(crate) use crate::delivery::settle::reply_text;
use crate::delivery::settle::{Decided, Fate, Held, Ledger, Notification};
use crate::metrics::SiteOutcome;
use crate::outbound::Outcome;
use crate::policy::suppression::{self, Entry, Source};
use crate::queue::QueuedRecipient;
use crate::route::{destination_of, Destination};
use crate::server::unix_ms;
use crate::shaping::classify::{self, Category};
use crate::smtp::reply::Reply;
use crate::tls::TlsInfo;

use super::event_loop::{PendingStore, Shard, Waiter};
use super::queue_id::QueueIdGen;

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

    /// Records what became of each recipient of one message
    /// ([`Ledger::settle`]: outcomes to the spool, and the message's one
    /// notification when this batch finishes it with failures), then
    /// sends deferred recipients to the scheduled queue and tells the
    /// logs, metrics, shaping rules and suppression list.
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
        let settled = self.with_ledger(|ledger, ids| {
            ledger.settle(&view, &results, (host, tls), now_ms, || ids.next(now_ms))
        });
        let server = self.server.clone();
        self.appended(&settled.unrecorded, settled.last_ticket);
        if let Some(held) = settled.held {
            self.held.push(held.after, held);
        }
        let notice = settled
            .notification
            .and_then(|notification| self.queue_notification(&view, notification));

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
        for Decided {
            item, fate, text, ..
        } in settled.decided
        {
            // An operator's bounce settles a message's recipients at once,
            // whatever their domains: each event names its own.
            let own;
            let destination = match lane {
                None if destination_of(address(&item)).as_str() != destination.as_str() => {
                    own = destination_of(address(&item));
                    &own
                }
                _ => destination,
            };
            let mut note = Note {
                kind: EventKind::Delivered,
                destination,
                queue_id: item.queue_id,
                recipient: address(&item),
                attempt: item.attempts,
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
                queue_time_ms: now_ms.saturating_sub(view.arrival_ms),
                source: lane.map(|l| &**l).filter(|l| !l.is_empty()),
            };
            match fate {
                Fate::Delivered(reply) => {
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
    /// one for its earlier failures is made now, and their `Removed`
    /// outcomes (`reply`) wait for it ([`Ledger::remove`]).
    pub(super) fn settle_removed(&mut self, record: &Record, recipients: &[u32], reply: &str) {
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
        let settled = self.with_ledger(|ledger, ids| {
            ledger.remove(&view, recipients, reply, now_ms, || ids.next(now_ms))
        });
        self.appended(&settled.unrecorded, settled.last_ticket);
        if let Some(held) = settled.held {
            self.held.push(held.after, held);
        }
        if let Some(notice) = settled
            .notification
            .and_then(|notification| self.queue_notification(&view, notification))
        {
            self.note_bounce(&view, &notice, now_ms);
        }
    }

    /// Runs `f` on this shard's ledger: the spool, its writer, the live
    /// delivery settings; with the shard's queue ids for notifications.
    fn with_ledger<R>(&mut self, f: impl FnOnce(&mut Ledger<'_>, &mut QueueIdGen) -> R) -> R {
        let server = self.server.clone();
        let live = server.live();
        let mut ledger = Ledger {
            spool: &server.spool,
            writer: &mut self.writer,
            delivery: &live.delivery,
            hostname: &server.config.server.hostname,
        };
        f(&mut ledger, &mut self.queue_ids)
    }

    /// Appends outcomes that waited for their notification's datasync;
    /// the last one's ticket.
    pub(super) fn record_held(&mut self, held: Held) -> Option<Ticket> {
        let recorded = self.with_ledger(|ledger, _| ledger.record_held(&held));
        let (last, unrecorded) = Ledger::appended(recorded);
        self.appended(&unrecorded, last);
        last
    }

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
    /// `bad_domain` to the suppression list (`from_bounces`; scope global:
    /// no sender can reach it), so the next message to it is refused at
    /// `RCPT` instead of bouncing again. Handed to the list's writer
    /// without waiting.
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

    /// A notification appended by the ledger waits for its datasync like
    /// any message, then is queued to the original sender.
    fn queue_notification(
        &mut self,
        view: &baton_spool::MessageView<'_>,
        notification: Result<Notification, baton_spool::Error>,
    ) -> Option<Notice> {
        match notification {
            Ok(notification) => {
                self.last_ticket = self.last_ticket.max(notification.ticket);
                self.stores.push(
                    notification.ticket,
                    PendingStore {
                        waiter: Waiter::Nobody,
                        queue_id: notification.queue_id,
                        recipients: vec![(destination_of(&notification.to), 0)],
                        size: notification.size,
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
                    unique: notification.queue_id.to_string(),
                    recipients: notification.recipients,
                    size: notification.size as u64,
                })
            }
            Err(err) => {
                // The failures are recorded; only the notice is lost.
                if let Some(times) = self.logs.bounce_failed.hit() {
                    tracing::error!(queue_id = %view.queue_id, %err, times, "spool: cannot queue a bounce");
                }
                None
            }
        }
    }

    /// What the ledger appended: its last ticket, and the outcomes it
    /// could not.
    fn appended(&mut self, unrecorded: &[(QueueId, baton_spool::Error)], last: Option<Ticket>) {
        if let Some(ticket) = last {
            self.last_ticket = self.last_ticket.max(ticket);
        }
        for (queue_id, err) in unrecorded {
            if let Some(times) = self.logs.outcome_failed.hit() {
                tracing::error!(%queue_id, %err, times, "spool: cannot record an outcome");
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
