//! [`Client`]: the connection's states and the dispatch of replies.

use std::collections::VecDeque;
use std::mem;
use std::sync::Arc;

use crate::smtp::command::Command;
use crate::smtp::reply::{parse_reply, Reply, ReplyLimits};

use super::auth::{AuthStep, Credentials, Mechanism};
use super::transaction::{Body, Step, Transaction};
use super::{Awaiting, ClientConfig, CloseReason, Envelope, Event, Extensions, SendError};

/// Whether this connection upgrades with STARTTLS (RFC 3207). The shard
/// decides from the destination's policy and what it knows of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Never: plain text.
    Off,
    /// When the server offers it.
    Opportunistic,
    /// Always; a server that does not offer it, or refuses it, is not
    /// given the mail.
    Required,
}

/// Where the connection stands.
enum State {
    /// Connected; the greeting has not come yet.
    Greeting,
    /// EHLO or HELO sent.
    Hello,
    /// STARTTLS sent.
    StartTls,
    /// `220` to STARTTLS: the shard runs the handshake.
    Handshake,
    /// In the AUTH exchange.
    Auth(AuthStep),
    /// Takes an envelope.
    Idle,
    Transaction(Box<Transaction>),
    /// QUIT sent.
    Quitting,
    Closed,
}

/// A transaction queued behind the one under way.
enum Next {
    Started(Box<Transaction>),
    /// Refused locally (SIZE, SMTPUTF8): reported after the current one.
    Refused(Vec<super::Outcome>),
}

/// One SMTP client connection, sans IO. See the [module](super) docs.
pub struct Client {
    config: Arc<ClientConfig>,
    reply_limits: ReplyLimits,
    state: State,
    extensions: Extensions,
    /// Received bytes not yet a whole reply; below
    /// `reply_line_bytes_max * reply_lines_max`.
    input: Vec<u8>,
    /// Commands to send. At most one transaction's worth.
    output: Vec<u8>,
    /// The replies due, in order: more than one only when pipelining.
    awaiting: VecDeque<Awaiting>,
    events: VecDeque<Event>,
    /// The next transaction, sent behind the current one's end of data
    /// (RFC 2920 §3.1: the message content may start a group, so the next
    /// MAIL, RCPTs and DATA can follow the `.` in the same write).
    next: Option<Next>,
    /// The last transaction ended before its end of data.
    rset_needed: bool,
    quit_requested: bool,
    tls_mode: TlsMode,
    /// The TLS handshake is done: the connection is encrypted.
    tls_active: bool,
    /// AUTH before the connection is ready, when the route says so.
    auth: Option<Arc<Credentials>>,
}

impl Client {
    /// A client for a freshly connected socket: it awaits the greeting.
    pub fn new(config: Arc<ClientConfig>, tls_mode: TlsMode) -> Client {
        let reply_limits = ReplyLimits {
            line_bytes_max: config.limits.reply_line_bytes_max.max(1),
            lines_max: config.limits.reply_lines_max.max(1),
        };
        Client {
            config,
            reply_limits,
            state: State::Greeting,
            extensions: Extensions::default(),
            input: Vec::new(),
            output: Vec::new(),
            awaiting: VecDeque::from([Awaiting::Greeting]),
            events: VecDeque::new(),
            next: None,
            rset_needed: false,
            quit_requested: false,
            tls_mode,
            tls_active: false,
            auth: None,
        }
    }

    /// Authenticates with `credentials` before [`Event::Ready`] (see the
    /// [module](super) docs for when they are withheld).
    pub fn with_auth(mut self, credentials: Option<Arc<Credentials>>) -> Client {
        self.auth = credentials;
        self
    }

    /// The SASL mechanism used, once chosen.
    pub fn auth_mechanism(&self) -> Option<Mechanism> {
        match self.state {
            State::Auth(AuthStep::Plain) => Some(Mechanism::Plain),
            State::Auth(_) => Some(Mechanism::Login),
            _ => None,
        }
    }

    /// Takes bytes from the server, in any chunking.
    pub fn receive(&mut self, mut bytes: &[u8]) {
        let input_bytes_max = self
            .reply_limits
            .line_bytes_max
            .saturating_mul(self.reply_limits.lines_max);
        while !bytes.is_empty() && !self.is_closed() && !self.in_handshake() {
            // parse_reply refuses a reply before it reaches this size, so
            // there is always room; the bound keeps one call from growing
            // the buffer by whatever the socket delivered.
            let room = input_bytes_max.saturating_sub(self.input.len()).max(1);
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.input.extend_from_slice(now);
            bytes = later;
            self.parse_input();
        }
    }

    fn parse_input(&mut self) {
        while !self.is_closed() {
            match parse_reply(&self.input, &self.reply_limits) {
                Ok(Some((reply, used))) => {
                    self.input.drain(..used);
                    self.handle(reply);
                    if self.in_handshake() {
                        // RFC 3207 §4.2: nothing that came in plain text
                        // after the `220` may be taken as a reply.
                        self.input.clear();
                        return;
                    }
                }
                Ok(None) => return,
                Err(error) => return self.close(CloseReason::Malformed(error)),
            }
        }
    }

    /// Whether the shard is to run (or is running) the TLS handshake.
    pub fn in_handshake(&self) -> bool {
        matches!(self.state, State::Handshake)
    }

    /// Whether the connection is encrypted.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The handshake is done: EHLO again, over TLS (RFC 3207 §4.2: the
    /// client must discard what it knew of the server).
    pub fn tls_established(&mut self) {
        if !self.in_handshake() {
            return;
        }
        self.tls_active = true;
        self.extensions = Extensions::default();
        let ehlo = Command::Ehlo(self.config.helo_name.clone());
        self.send(Awaiting::Ehlo, &ehlo.to_bytes());
        self.state = State::Hello;
    }

    /// The handshake failed: the connection is over.
    pub fn tls_failed(&mut self, why: String) {
        if !self.is_closed() {
            self.close(CloseReason::TlsFailed(why));
        }
    }

    /// The commands to send.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// `n` bytes of [`Client::output`] were written.
    pub fn consume_output(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
    }

    /// What the server offered (all false until [`Event::Ready`], or after
    /// HELO).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The reply the client waits for, to choose a timeout. `None` while
    /// the body is wanted, when idle, and once closed.
    pub fn awaiting(&self) -> Option<Awaiting> {
        self.awaiting.front().copied()
    }

    /// Whether [`Client::send_message`] would take an envelope.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle) && !self.quit_requested
    }

    /// After [`Event::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether [`Client::send_message`] would take the next envelope now,
    /// behind the transaction under way: the server pipelines, and that
    /// transaction's end of data is already out.
    pub fn takes_next(&self) -> bool {
        match &self.state {
            State::Transaction(t) => {
                t.pipelined
                    && matches!(t.body, Body::Ended { empty: false })
                    && self.next.is_none()
                    && !self.quit_requested
            }
            _ => false,
        }
    }

    /// Starts a transaction, when idle or when [`Client::takes_next`]
    /// (then its [`Event::TransactionDone`] follows the current one's). A
    /// local refusal (SIZE, SMTPUTF8, bad paths) is reported with
    /// [`Event::TransactionDone`] in the same order.
    pub fn send_message(&mut self, envelope: Envelope) -> Result<(), SendError> {
        let behind = self.takes_next();
        if !self.is_idle() && !behind {
            return Err(SendError::NotReady);
        }
        if envelope.recipients.is_empty() {
            return Err(SendError::NoRecipients);
        }
        if envelope.recipients.len() > self.config.limits.recipients_per_transaction_max {
            return Err(SendError::TooManyRecipients);
        }
        if behind {
            // The current transaction ends with its dot: no RSET is due.
            self.next = Some(
                match Transaction::start(&envelope, &self.extensions, false) {
                    Err(per_recipient) => Next::Refused(per_recipient),
                    Ok(mut transaction) => {
                        for (awaiting, line) in transaction.take_all() {
                            self.send(awaiting, &line);
                        }
                        Next::Started(Box::new(transaction))
                    }
                },
            );
            return Ok(());
        }
        match Transaction::start(&envelope, &self.extensions, self.rset_needed) {
            Err(per_recipient) => self
                .events
                .push_back(Event::TransactionDone { per_recipient }),
            Ok(mut transaction) => {
                self.rset_needed = false;
                if transaction.pipelined {
                    for (awaiting, line) in transaction.take_all() {
                        self.send(awaiting, &line);
                    }
                    self.state = State::Transaction(Box::new(transaction));
                } else {
                    self.state = State::Transaction(Box::new(transaction));
                    self.step(Step::Continue);
                }
            }
        }
        Ok(())
    }

    /// After `354`: the shard writes [`Client::output`] (empty then), the
    /// stored body, then calls [`Client::body_sent`].
    pub fn body_needed(&self) -> bool {
        matches!(&self.state, State::Transaction(t) if t.body == Body::Needed)
    }

    /// The whole body is written (it ends in CRLF); the client adds the
    /// terminating `.` CRLF. Ignored unless [`Client::body_needed`].
    pub fn body_sent(&mut self) {
        if let State::Transaction(transaction) = &mut self.state {
            if transaction.body == Body::Needed {
                transaction.body = Body::Ended { empty: false };
                self.send(Awaiting::Dot, b".\r\n");
            }
        }
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Ends the connection politely: QUIT now when idle, else once the
    /// greeting or the transaction under way is over.
    pub fn quit(&mut self) {
        self.quit_requested = true;
        if matches!(self.state, State::Idle) {
            self.send_quit();
        }
    }

    /// The socket ended (EOF, error, timeout): whatever is not final is
    /// deferred.
    pub fn connection_lost(&mut self) {
        match self.state {
            State::Closed => {}
            State::Quitting => self.close(CloseReason::Quit),
            _ => self.close(CloseReason::ConnectionLost),
        }
    }

    /// The reply awaited did not come in time: whatever is not final is
    /// deferred with a reply that says so.
    pub fn timed_out(&mut self) {
        match self.state {
            State::Closed => {}
            State::Quitting => self.close(CloseReason::Quit),
            _ => {
                let awaiting = self.awaiting().unwrap_or(Awaiting::Dot);
                self.close(CloseReason::TimedOut(awaiting));
            }
        }
    }

    /// Bytes held waiting for the rest of a reply.
    #[cfg(test)]
    pub(super) fn input_len(&self) -> usize {
        self.input.len()
    }

    fn send(&mut self, awaiting: Awaiting, line: &[u8]) {
        self.output.extend_from_slice(line);
        self.awaiting.push_back(awaiting);
    }

    fn send_quit(&mut self) {
        self.send(Awaiting::Quit, &Command::Quit.to_bytes());
        self.state = State::Quitting;
    }

    fn handle(&mut self, reply: Reply) {
        let Some(awaiting) = self.awaiting.pop_front() else {
            let reason = if reply.code == 421 {
                CloseReason::ServiceClosing(reply)
            } else {
                CloseReason::UnexpectedReply(reply)
            };
            return self.close(reason);
        };
        match awaiting {
            Awaiting::Greeting => self.on_greeting(reply),
            Awaiting::Quit => self.close(CloseReason::Quit),
            // RFC 5321 §3.8: the server is going away, whatever was asked.
            _ if reply.code == 421 => self.close(CloseReason::ServiceClosing(reply)),
            Awaiting::Ehlo => self.on_ehlo(reply),
            Awaiting::Helo => self.on_helo(reply),
            Awaiting::StartTls => self.on_starttls(reply),
            Awaiting::Auth => self.on_auth(reply),
            Awaiting::Rset
            | Awaiting::Mail
            | Awaiting::Rcpt(_)
            | Awaiting::Data
            | Awaiting::Dot => self.on_transaction_reply(awaiting, reply),
        }
    }

    fn on_greeting(&mut self, reply: Reply) {
        if reply.code == 220 {
            let ehlo = Command::Ehlo(self.config.helo_name.clone());
            self.send(Awaiting::Ehlo, &ehlo.to_bytes());
            self.state = State::Hello;
            return;
        }
        let polite = reply.code != 421;
        self.close(CloseReason::GreetingRefused(reply));
        if polite {
            // RFC 5321 §3.1: after a 554 greeting the client sends QUIT.
            self.output.extend_from_slice(&Command::Quit.to_bytes());
        }
    }

    fn on_ehlo(&mut self, reply: Reply) {
        match reply.class() {
            2 => {
                self.extensions = Extensions::from_ehlo(&reply);
                let wanted = self.tls_mode != TlsMode::Off && !self.tls_active;
                if wanted && self.extensions.starttls {
                    self.send(Awaiting::StartTls, b"STARTTLS\r\n");
                    self.state = State::StartTls;
                    return;
                }
                self.ready_unless_tls_missing("did not offer STARTTLS");
            }
            // RFC 5321 §3.2: a server that does not know EHLO answers 5xx;
            // the client falls back to HELO.
            5 => {
                let helo = Command::Helo(self.config.helo_name.clone());
                self.send(Awaiting::Helo, &helo.to_bytes());
            }
            _ => self.refuse_hello(reply),
        }
    }

    fn on_helo(&mut self, reply: Reply) {
        if reply.class() == 2 {
            self.extensions = Extensions::default();
            self.ready_unless_tls_missing("did not offer STARTTLS (no EHLO)");
        } else {
            self.refuse_hello(reply);
        }
    }

    fn on_starttls(&mut self, reply: Reply) {
        if reply.code == 220 {
            self.state = State::Handshake;
            self.events.push_back(Event::StartTls);
            return;
        }
        // RFC 3207 §4: 454 (TLS not available now) or 501; the session
        // goes on in plain text, if that is allowed.
        let why = format!("refused STARTTLS: {}", reply_summary(&reply));
        self.ready_unless_tls_missing(&why);
    }

    /// Ready, unless TLS is required and the connection is still plain:
    /// then the server gets QUIT and not the mail. AUTH first when the
    /// route has credentials.
    fn ready_unless_tls_missing(&mut self, why: &str) {
        if self.tls_mode == TlsMode::Required && !self.tls_active {
            self.close(CloseReason::TlsUnavailable(why.to_owned()));
            self.output.extend_from_slice(&Command::Quit.to_bytes());
            return;
        }
        match self.auth.clone() {
            Some(credentials) => self.authenticate(&credentials, why),
            None => self.ready(),
        }
    }

    /// Starts AUTH, or ends the connection without sending the
    /// credentials. `why_plain` says why the connection is not encrypted,
    /// if it is not.
    fn authenticate(&mut self, credentials: &Credentials, why_plain: &str) {
        // Checked before what the server offers: a server that offers
        // AUTH in plain text must not get the password either.
        if !self.tls_active && !credentials.plaintext {
            let why = match self.tls_mode {
                TlsMode::Off => "TLS is off for this connection".to_owned(),
                _ => format!("the server {why_plain}"),
            };
            return self.refuse_auth(format!(
                "credentials withheld: the connection is not encrypted ({why}) and the route does not set auth_plaintext"
            ));
        }
        let extensions = self.extensions;
        let (line, step) = if extensions.auth_plain {
            (credentials.plain_command(), AuthStep::Plain)
        } else if extensions.auth_login {
            (b"AUTH LOGIN\r\n".to_vec(), AuthStep::LoginUser)
        } else if extensions.auth {
            return self
                .refuse_auth("the server offers neither AUTH PLAIN nor AUTH LOGIN".to_owned());
        } else {
            return self.refuse_auth("the server does not offer AUTH".to_owned());
        };
        self.send(Awaiting::Auth, &line);
        self.state = State::Auth(step);
    }

    fn refuse_auth(&mut self, why: String) {
        self.close(CloseReason::AuthUnavailable(why));
        self.output.extend_from_slice(&Command::Quit.to_bytes());
    }

    /// A reply in the AUTH exchange (RFC 4954 §4): `334` is a challenge,
    /// `235` success, anything else a refusal.
    fn on_auth(&mut self, reply: Reply) {
        let (State::Auth(step), Some(credentials)) = (&self.state, self.auth.clone()) else {
            return self.close(CloseReason::UnexpectedReply(reply));
        };
        match (*step, reply.code) {
            (AuthStep::Plain | AuthStep::LoginDone, 235) => self.ready(),
            (AuthStep::LoginUser, 334) => {
                self.send(Awaiting::Auth, &credentials.login_user());
                self.state = State::Auth(AuthStep::LoginPassword);
            }
            (AuthStep::LoginPassword, 334) => {
                self.send(Awaiting::Auth, &credentials.login_password());
                self.state = State::Auth(AuthStep::LoginDone);
            }
            // A challenge after everything was sent: the exchange went
            // wrong; cancel it (RFC 4954 §4: `*`) rather than guess.
            (_, 334) => {
                self.close(CloseReason::UnexpectedReply(reply));
                self.output.extend_from_slice(b"*\r\n");
            }
            (_, code) if (400..600).contains(&code) => {
                self.close(CloseReason::AuthRefused(reply));
                self.output.extend_from_slice(&Command::Quit.to_bytes());
            }
            _ => self.close(CloseReason::UnexpectedReply(reply)),
        }
    }

    fn refuse_hello(&mut self, reply: Reply) {
        self.close(CloseReason::HelloRefused(reply));
        self.output.extend_from_slice(&Command::Quit.to_bytes());
    }

    fn ready(&mut self) {
        self.state = State::Idle;
        self.events.push_back(Event::Ready);
        if self.quit_requested {
            self.send_quit();
        }
    }

    fn on_transaction_reply(&mut self, awaiting: Awaiting, reply: Reply) {
        let State::Transaction(transaction) = &mut self.state else {
            return self.close(CloseReason::UnexpectedReply(reply));
        };
        let step = match awaiting {
            Awaiting::Rset => transaction.on_rset(reply),
            Awaiting::Mail => transaction.on_mail(reply),
            Awaiting::Rcpt(index) => transaction.on_rcpt(index, reply, &mut self.events),
            Awaiting::Data => transaction.on_data(reply),
            Awaiting::Dot => transaction.on_dot(reply),
            Awaiting::Greeting
            | Awaiting::Ehlo
            | Awaiting::Helo
            | Awaiting::StartTls
            | Awaiting::Auth
            | Awaiting::Quit => Step::Unexpected(reply),
        };
        self.step(step);
    }

    /// Carries out what the transaction decided.
    fn step(&mut self, step: Step) {
        let State::Transaction(transaction) = &mut self.state else {
            return;
        };
        match step {
            Step::Continue if transaction.pipelined => {}
            Step::Continue => match transaction.take_next() {
                Ok((awaiting, line)) => self.send(awaiting, &line),
                Err(done) => self.step(done),
            },
            Step::BodyNeeded => {}
            Step::EmptyBody => self.send(Awaiting::Dot, b".\r\n"),
            Step::Done { rset_needed } => self.finish(rset_needed),
            Step::Unexpected(reply) => self.close(CloseReason::UnexpectedReply(reply)),
        }
    }

    fn finish(&mut self, rset_needed: bool) {
        let State::Transaction(transaction) = mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        let reply = CloseReason::ConnectionLost.deferral_reply();
        let per_recipient = transaction.into_outcomes(&reply);
        self.events
            .push_back(Event::TransactionDone { per_recipient });
        self.rset_needed = rset_needed;
        match self.next.take() {
            Some(Next::Started(next)) => {
                // Its commands are out and their replies are what comes.
                debug_assert!(!rset_needed, "a transaction with its dot out needs no RSET");
                self.state = State::Transaction(next);
                return;
            }
            Some(Next::Refused(per_recipient)) => self
                .events
                .push_back(Event::TransactionDone { per_recipient }),
            None => {}
        }
        // DATA ends every pipelined group, so nothing is still due.
        debug_assert!(self.awaiting.is_empty());
        if self.quit_requested {
            self.send_quit();
        }
    }

    /// Ends the connection: recipients not yet final are deferred.
    fn close(&mut self, reason: CloseReason) {
        if let State::Transaction(transaction) = mem::replace(&mut self.state, State::Closed) {
            let per_recipient = transaction.into_outcomes(&reason.deferral_reply());
            self.events
                .push_back(Event::TransactionDone { per_recipient });
        }
        match self.next.take() {
            Some(Next::Started(next)) => {
                let per_recipient = next.into_outcomes(&reason.deferral_reply());
                self.events
                    .push_back(Event::TransactionDone { per_recipient });
            }
            Some(Next::Refused(per_recipient)) => self
                .events
                .push_back(Event::TransactionDone { per_recipient }),
            None => {}
        }
        self.awaiting.clear();
        self.input.clear();
        self.output.clear();
        self.events.push_back(Event::Closed { reason });
    }
}

/// `454 4.7.0 TLS not available`, on one line.
pub(super) fn reply_summary(reply: &Reply) -> String {
    let mut text = reply.code.to_string();
    if let Some((a, b, c)) = reply.enhanced {
        text.push_str(&format!(" {a}.{b}.{c}"));
    }
    if let Some(line) = reply.lines.first() {
        text.push(' ');
        text.extend(line.chars().filter(|c| !c.is_control()));
    }
    text
}
