//! One connection of `send`, from connect to QUIT, over and over until the
//! schedule runs out: the transactions, pipelined when the server offers
//! PIPELINING (RFC 2920): MAIL, every RCPT and DATA in one write, then the
//! content and its `.`, with the next message's MAIL, RCPT and DATA right
//! behind it when that message is already due.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::smtp::address::{ForwardPath, Path};
use baton::smtp::command::{Command, Param};
use baton::smtp::reply::Reply;
use tokio::sync::watch;

use super::client::{self, ReplyTally, Session, SessionError, Stage};
use super::schedule::Ticket;
use super::RunContext;
use crate::ids::MessageId;
use crate::latency::LatencyRecorder;
use crate::message::MessageFields;
use crate::rng::Rng;

/// First pause after a failed connection; doubled up to the maximum.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Failed connections in a row after which a connection gives up the run.
const CONSECUTIVE_FAILURES_MAX: u32 = 20;
/// A message due this soon is sent now, pipelined behind the previous one.
const PIPELINE_AHEAD: Duration = Duration::from_millis(1);

/// Connection errors by kind: count and the first message.
#[derive(Debug, Default)]
pub struct ErrorTally(pub BTreeMap<&'static str, (u64, String)>);

impl ErrorTally {
    fn count(&mut self, error: &SessionError) {
        let entry = self
            .0
            .entry(error.kind())
            .or_insert_with(|| (0, error.to_string()));
        entry.0 += 1;
    }

    pub fn merge(&mut self, other: ErrorTally) {
        for (kind, (count, first)) in other.0 {
            self.0.entry(kind).or_insert((0, first)).0 += count;
        }
    }
}

/// What one connection brings back at the end of the run.
#[derive(Debug, Default)]
pub struct WorkerOutcome {
    pub tally: ReplyTally,
    pub errors: ErrorTally,
    /// (seq, recipients accepted) of each message the server accepted.
    pub accepted: Vec<(u64, u16)>,
}

/// A message on its way: its commands, already formatted.
struct Envelope {
    ticket: Ticket,
    /// The first recipient's address, for `To:`.
    to: String,
    /// MAIL, each RCPT, DATA; CRLF included.
    commands: Vec<Vec<u8>>,
    size: usize,
    /// When its MAIL was written.
    started: Instant,
}

/// How the envelope went.
enum EnvelopeResult {
    /// 354: the content may follow; recipients accepted.
    Ready(u16),
    /// No content; a transaction left open (MAIL accepted) needs RSET.
    Refused { transaction_open: bool },
}

/// One connection's loop.
pub struct Worker {
    ctx: Arc<RunContext>,
    stop: watch::Receiver<bool>,
    outcome: WorkerOutcome,
    /// A ticket taken but not yet due.
    held: Option<Ticket>,
    current: Option<Envelope>,
    /// The envelope written behind the current message's content.
    next: Option<Envelope>,
    connect_latency: LatencyRecorder,
    transaction_latency: LatencyRecorder,
    message_latency: LatencyRecorder,
}

impl Worker {
    pub fn new(ctx: Arc<RunContext>) -> Worker {
        Worker {
            stop: ctx.stop.subscribe(),
            outcome: WorkerOutcome::default(),
            held: None,
            current: None,
            next: None,
            connect_latency: ctx.latency.connect.recorder(),
            transaction_latency: ctx.latency.transaction.recorder(),
            message_latency: ctx.latency.message.recorder(),
            ctx,
        }
    }

    /// Sessions, one after the other, until the run is over.
    pub async fn run(mut self) -> WorkerOutcome {
        let mut backoff = RECONNECT_BACKOFF_MIN;
        let mut failures = 0;
        while self.held.is_some() || self.ctx.schedule.is_open(Instant::now()) {
            let started = Instant::now();
            self.ctx
                .counters
                .connections
                .fetch_add(1, Ordering::Relaxed);
            match client::open(&self.ctx.session, &mut self.outcome.tally).await {
                Ok(mut session) => {
                    self.connect_latency.record(started.elapsed());
                    self.ctx.counters.sessions.fetch_add(1, Ordering::Relaxed);
                    backoff = RECONNECT_BACKOFF_MIN;
                    failures = 0;
                    match self.transactions(&mut session).await {
                        Ok(()) => session.wire.quit(&mut self.outcome.tally).await,
                        Err(error) => {
                            self.fail_in_flight();
                            self.count_error(&error);
                        }
                    }
                }
                Err(error) => {
                    self.count_error(&error);
                    failures += 1;
                    let opened = self.ctx.counters.sessions.load(Ordering::Relaxed) > 0;
                    if error.is_fatal(opened) {
                        self.ctx.abort(error.to_string());
                        break;
                    }
                    if failures >= CONSECUTIVE_FAILURES_MAX {
                        self.ctx.abort(format!(
                            "giving up after {failures} failed connections in a row; last: {error}"
                        ));
                        break;
                    }
                    if self.pause(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                }
            }
        }
        // A held ticket was never due before the run stopped: not sent,
        // not failed.
        self.connect_latency.flush();
        self.transaction_latency.flush();
        self.message_latency.flush();
        self.outcome
    }

    /// Sleeps; true if the run was stopped meanwhile.
    async fn pause(&mut self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => false,
            _ = self.stop.wait_for(|stopped| *stopped) => true,
        }
    }

    fn count_error(&mut self, error: &SessionError) {
        self.ctx
            .counters
            .connection_errors
            .fetch_add(1, Ordering::Relaxed);
        self.outcome.errors.count(error);
    }

    /// Transactions on one session until its message limit or the end of
    /// the run.
    async fn transactions(&mut self, session: &mut Session) -> Result<(), SessionError> {
        let pipelining = self.ctx.pipelining && session.caps.pipelining;
        let limit = self.ctx.messages_per_connection.unwrap_or(u32::MAX);
        let mut begun: u32 = 0;
        let mut rset_needed = false;
        loop {
            match self.next.take() {
                Some(next) => self.current = Some(next),
                None => {
                    if begun >= limit {
                        return Ok(());
                    }
                    let Some(ticket) = self.take_ticket().await else {
                        return Ok(());
                    };
                    begun += 1;
                    // In `current` at once: if the connection fails from
                    // here on, the message is counted as failed.
                    self.current = Some(self.envelope(ticket, session));
                    let wire = &mut session.wire;
                    if rset_needed {
                        wire.push(&Command::Rset);
                    }
                    if pipelining {
                        let envelope = self.current.as_ref().expect("just set");
                        envelope
                            .commands
                            .iter()
                            .for_each(|c| wire.out.extend_from_slice(c));
                    }
                    if pipelining {
                        wire.send(Stage::Mail).await?;
                    } else if rset_needed {
                        wire.send(Stage::Rset).await?;
                    }
                    if rset_needed {
                        let reply = wire.reply(Stage::Rset).await?;
                        self.outcome.tally.count(Stage::Rset, &reply);
                    }
                    self.current_mut().started = Instant::now();
                }
            }
            rset_needed = false;
            let result = if pipelining {
                self.envelope_pipelined(session).await?
            } else {
                self.envelope_lockstep(session).await?
            };
            let recipients = match result {
                EnvelopeResult::Ready(recipients) => recipients,
                EnvelopeResult::Refused { transaction_open } => {
                    self.finish(None, 0);
                    rset_needed = transaction_open;
                    continue;
                }
            };
            self.write_content(session);
            if pipelining && begun < limit {
                if let Some(ticket) = self.take_ticket_if_due() {
                    begun += 1;
                    let envelope = self.envelope(ticket, session);
                    envelope
                        .commands
                        .iter()
                        .for_each(|c| session.wire.out.extend_from_slice(c));
                    self.next = Some(envelope);
                }
            }
            session.wire.send(Stage::DataEnd).await?;
            if let Some(next) = &mut self.next {
                next.started = Instant::now();
            }
            let reply = session.wire.reply(Stage::DataEnd).await?;
            self.outcome.tally.count(Stage::DataEnd, &reply);
            self.finish(Some(&reply), recipients);
        }
    }

    fn current_mut(&mut self) -> &mut Envelope {
        self.current.as_mut().expect("a transaction in progress")
    }

    /// The replies to a pipelined MAIL, RCPTs and DATA.
    async fn envelope_pipelined(
        &mut self,
        session: &mut Session,
    ) -> Result<EnvelopeResult, SessionError> {
        let wire = &mut session.wire;
        let rcpts = self.current_mut().commands.len() - 2;
        let mail = wire.reply(Stage::Mail).await?;
        self.outcome.tally.count(Stage::Mail, &mail);
        let mut accepted: u16 = 0;
        for _ in 0..rcpts {
            let reply = wire.reply(Stage::Rcpt).await?;
            accepted += u16::from(self.count_rcpt(&reply));
        }
        let data = wire.reply(Stage::Data).await?;
        self.outcome.tally.count(Stage::Data, &data);
        Ok(if data.code == 354 {
            EnvelopeResult::Ready(accepted)
        } else {
            EnvelopeResult::Refused {
                transaction_open: mail.class() == 2,
            }
        })
    }

    /// MAIL, RCPTs and DATA one at a time, for servers without PIPELINING.
    async fn envelope_lockstep(
        &mut self,
        session: &mut Session,
    ) -> Result<EnvelopeResult, SessionError> {
        // Borrowed out of the envelope while `self` counts the replies.
        let commands = std::mem::take(&mut self.current_mut().commands);
        let result = self.lockstep(session, &commands).await;
        self.current_mut().commands = commands;
        result
    }

    async fn lockstep(
        &mut self,
        session: &mut Session,
        commands: &[Vec<u8>],
    ) -> Result<EnvelopeResult, SessionError> {
        let wire = &mut session.wire;
        let (mail, rest) = commands.split_first().expect("MAIL");
        let (data, rcpts) = rest.split_last().expect("DATA");
        wire.out.extend_from_slice(mail);
        wire.send(Stage::Mail).await?;
        let reply = wire.reply(Stage::Mail).await?;
        self.outcome.tally.count(Stage::Mail, &reply);
        if reply.class() != 2 {
            return Ok(EnvelopeResult::Refused {
                transaction_open: false,
            });
        }
        let mut accepted: u16 = 0;
        for rcpt in rcpts {
            wire.out.extend_from_slice(rcpt);
            wire.send(Stage::Rcpt).await?;
            let reply = wire.reply(Stage::Rcpt).await?;
            accepted += u16::from(self.count_rcpt(&reply));
        }
        if accepted == 0 {
            return Ok(EnvelopeResult::Refused {
                transaction_open: true,
            });
        }
        wire.out.extend_from_slice(data);
        wire.send(Stage::Data).await?;
        let reply = wire.reply(Stage::Data).await?;
        self.outcome.tally.count(Stage::Data, &reply);
        Ok(if reply.code == 354 {
            EnvelopeResult::Ready(accepted)
        } else {
            EnvelopeResult::Refused {
                transaction_open: true,
            }
        })
    }

    /// Counts a RCPT reply; true if the recipient was accepted.
    fn count_rcpt(&mut self, reply: &Reply) -> bool {
        self.outcome.tally.count(Stage::Rcpt, reply);
        let accepted = reply.class() == 2;
        if !accepted {
            self.ctx
                .counters
                .recipients_refused
                .fetch_add(1, Ordering::Relaxed);
        }
        accepted
    }

    /// The current message's content and final `.`, into the write buffer.
    fn write_content(&mut self, session: &mut Session) {
        let envelope = self.current.as_ref().expect("a transaction in progress");
        let fields = MessageFields {
            id: MessageId {
                run: self.ctx.run_id,
                seq: envelope.ticket.seq,
            },
            sent_unix_micros: self.ctx.clock.unix_micros(envelope.ticket.due),
            to: &envelope.to,
            size: envelope.size,
        };
        self.ctx.template.write(&mut session.wire.out, &fields);
    }

    /// Ends the current transaction with the server's last word on it.
    fn finish(&mut self, reply: Option<&Reply>, recipients: u16) {
        let envelope = self.current.take().expect("a transaction in progress");
        let counters = &self.ctx.counters;
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        if reply.is_some_and(|r| r.class() == 2) {
            let now = Instant::now();
            counters.messages_accepted.fetch_add(1, Ordering::Relaxed);
            counters
                .recipients_accepted
                .fetch_add(u64::from(recipients), Ordering::Relaxed);
            counters
                .bytes_accepted
                .fetch_add(envelope.size as u64, Ordering::Relaxed);
            self.outcome
                .accepted
                .push((envelope.ticket.seq, recipients));
            self.transaction_latency.record(now - envelope.started);
            self.message_latency
                .record(now.saturating_duration_since(envelope.ticket.due));
        } else {
            counters.messages_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The connection failed: what was on it failed too.
    fn fail_in_flight(&mut self) {
        let lost = [self.current.take(), self.next.take()];
        for _ in lost.iter().flatten() {
            self.ctx.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.ctx
                .counters
                .messages_failed
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The next message, waiting until it is due; None at the end.
    async fn take_ticket(&mut self) -> Option<Ticket> {
        let ticket = match self.held.take() {
            Some(ticket) => ticket,
            None => self.ctx.schedule.take(Instant::now())?,
        };
        if ticket.due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(ticket.due.into()) => {}
                _ = self.stop.wait_for(|stopped| *stopped) => return None,
            }
        }
        Some(ticket)
    }

    /// The next message if it is due now; a later one is held.
    fn take_ticket_if_due(&mut self) -> Option<Ticket> {
        let now = Instant::now();
        let ticket = match self.held.take() {
            Some(ticket) => ticket,
            None => self.ctx.schedule.take(now)?,
        };
        if ticket.due <= now + PIPELINE_AHEAD {
            Some(ticket)
        } else {
            self.held = Some(ticket);
            None
        }
    }

    /// Draws a message's recipients and size and formats its commands.
    /// The draws depend on the seed and the message's number only, not on
    /// which connection sends it: message n of a seed is always the same.
    fn envelope(&mut self, ticket: Ticket, session: &Session) -> Envelope {
        let mut rng = Rng::derive(self.ctx.seed, ticket.seq);
        let size = self.ctx.template.draw_size(&mut rng);
        let recipients = self.ctx.recipients.draw(&mut rng);
        let mut params = Vec::new();
        if session.caps.size.is_some() {
            params.push(Param {
                keyword: "SIZE".into(),
                value: Some(size.to_string()),
            });
        }
        let mut commands = Vec::with_capacity(recipients.len() + 2);
        commands.push(
            Command::Mail {
                path: self.ctx.sender.clone(),
                params,
            }
            .to_bytes(),
        );
        let to = recipients[0].address();
        for path in recipients {
            commands.push(
                Command::Rcpt {
                    path: ForwardPath::Path(path),
                    params: Vec::new(),
                }
                .to_bytes(),
            );
        }
        commands.push(Command::Data.to_bytes());
        self.ctx.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        Envelope {
            ticket,
            to,
            commands,
            size,
            started: Instant::now(),
        }
    }
}

/// Recipients of a message: local parts and domains drawn by weight.
#[derive(Clone, Debug)]
pub struct RecipientSpec {
    /// Local-part patterns, `{n}` replaced by a user number.
    pub locals: crate::rng::Weighted<LocalPattern>,
    /// `{n}` is drawn from `0..users`.
    pub users: u64,
    pub domains: crate::rng::Weighted<String>,
    pub per_message: u16,
}

/// A local part with at most one `{n}`.
#[derive(Clone, Debug)]
pub struct LocalPattern {
    prefix: String,
    /// After `{n}`; None when there is no `{n}`.
    suffix: Option<String>,
}

impl LocalPattern {
    pub fn new(pattern: &str) -> LocalPattern {
        match pattern.split_once("{n}") {
            Some((prefix, suffix)) => LocalPattern {
                prefix: prefix.into(),
                suffix: Some(suffix.into()),
            },
            None => LocalPattern {
                prefix: pattern.into(),
                suffix: None,
            },
        }
    }

    pub fn render(&self, n: u64) -> String {
        match &self.suffix {
            Some(suffix) => format!("{}{n}{suffix}", self.prefix),
            None => self.prefix.clone(),
        }
    }
}

/// Draws that land on a recipient already in the message are retried up
/// to this many times (a server counts a recipient once per transaction).
const DISTINCT_RECIPIENT_TRIES: usize = 8;

impl RecipientSpec {
    /// The recipients of one message, distinct where the space allows.
    pub fn draw(&self, rng: &mut Rng) -> Vec<Path> {
        let mut paths: Vec<Path> = Vec::with_capacity(usize::from(self.per_message));
        for _ in 0..self.per_message.max(1) {
            let mut path = self.draw_one(rng);
            for _ in 0..DISTINCT_RECIPIENT_TRIES {
                if !paths.contains(&path) {
                    break;
                }
                path = self.draw_one(rng);
            }
            paths.push(path);
        }
        paths
    }

    fn draw_one(&self, rng: &mut Rng) -> Path {
        Path {
            local: self.locals.pick(rng).render(rng.below(self.users)),
            domain: self.domains.pick(rng).clone(),
        }
    }
}
