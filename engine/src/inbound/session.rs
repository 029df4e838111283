//! [`Session`]: one SMTP connection's server side, its states, the input
//! loop and the dispatch of command lines to the verbs' files.

use std::mem;
use std::net::SocketAddr;
use std::sync::Arc;

use baton_spool::QueueId;

use super::auth::Sasl;
use super::budget::Held;
use super::config::{
    SessionConfig, IDLE_BUFFER_KEEP_BYTES, PENDING_OUTPUT_BYTES_MAX, PIPELINED_INPUT_BYTES_MAX,
};
use super::replies::{self, closing};
use super::transaction::Transaction;
use super::{ReceivedMessage, SessionContext, StoreError};
use crate::auth::verify::{Credentials, Identity};
use crate::smtp::command::{self, Verb};
use crate::smtp::data::DataReader;
use crate::tls::TlsInfo;

/// What the session is doing, for the shard to choose a timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a command.
    Command,
    /// Inside DATA, or between the chunks of a BDAT transaction.
    Data,
    /// A complete message is with the spool; no timeout should run.
    AwaitingStore,
    /// Credentials are being verified; no timeout should run.
    AwaitingAuth,
    /// Send the remaining output, then close.
    Closing,
    /// `220 Ready to start TLS` is queued: send it, then run the TLS
    /// handshake; the session reads nothing until it is done.
    StartTls,
}

/// The input loop's state.
pub(super) enum State {
    /// Reading command lines.
    Command,
    /// Skipping the rest of an overlong command line, through its LF.
    DiscardLine,
    /// Reading DATA content.
    Data(Box<DataBody>),
    /// Reading the octets of one BDAT chunk.
    Chunk(Chunk),
    /// A complete message, until `take_message` (then None) and `stored`.
    AwaitingStore(Option<ReceivedMessage>),
    /// A `334` challenge is out: the next line is a SASL response.
    Sasl(Sasl),
    /// Credentials, until `take_credentials` (then None) and
    /// `auth_verdict`.
    AwaitingAuth(Option<Credentials>),
    /// STARTTLS accepted: until [`Session::tls_established`], input is
    /// discarded (RFC 3207 §4.2, CVE-2011-0411).
    StartTls,
    Closing,
}

/// DATA content on its way into a message.
pub(super) struct DataBody {
    pub queue_id: QueueId,
    pub reader: DataReader,
    /// What the reader's buffer holds of the server's data budget.
    pub held: Held,
}

impl DataBody {
    /// Reserves what the body's buffer grew to; when the server's data
    /// budget has no room, the body is dropped (the rest of the data is
    /// still read) and the message will be refused with `452 4.3.1`.
    pub fn account(&mut self) {
        let bytes = self.reader.held_bytes() as u64;
        if !self.reader.is_discarded() && !self.held.resize(bytes) {
            self.reader.discard();
        }
    }
}

/// One BDAT chunk being read. RFC 3030 §2: its octets follow the command
/// and are read even when the command is refused, because they are not
/// commands.
pub(super) struct Chunk {
    pub remaining: u64,
    pub size: u64,
    pub last: bool,
    /// Set when the chunk is refused: the octets are skipped and this is
    /// the reply once they are.
    pub refusal: Option<ChunkRefusal>,
}

#[derive(Clone, Copy)]
pub(super) struct ChunkRefusal {
    pub reply: &'static str,
    /// The message can no longer succeed: drop the transaction.
    pub ends_transaction: bool,
}

/// The client's EHLO/HELO.
pub(super) struct Greeting {
    pub name: String,
    /// EHLO: ESMTP, with parameters and extensions.
    pub extended: bool,
}

/// Where the connection stands on TLS; see `starttls.rs`. The handshake
/// itself is rustls' sans-IO connection, beside the session in the shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Tls {
    Plain,
    /// STARTTLS accepted, or an implicit-TLS listener: the handshake is
    /// under way.
    Starting,
    Established(Box<TlsInfo>),
}

/// Who the client is; see `auth.rs`. `Authenticated` may relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Auth {
    Anonymous,
    Authenticated(Arc<Identity>),
}

/// Why the session must close once the spool has answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingClose {
    Timeout,
    Shutdown,
}

/// The server side of one SMTP connection. See the [module](super) docs.
pub struct Session {
    pub(super) config: Arc<SessionConfig>,
    pub(super) peer: SocketAddr,
    local: SocketAddr,
    pub(super) relay_allowed: bool,
    pub(super) state: State,
    pub(super) greeting: Option<Greeting>,
    pub(super) tls: Tls,
    pub(super) auth: Auth,
    pub(super) transaction: Option<Transaction>,
    /// Input received and not yet processed.
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
    commands: u32,
    pub(super) errors: u32,
    /// More input arrived than [`PIPELINED_INPUT_BYTES_MAX`] allows.
    input_overflow: bool,
    pending_close: Option<PendingClose>,
    /// What a complete message's body holds of the data budget, until the
    /// shard takes the message.
    pub(super) message_held: Option<Held>,
}

impl Session {
    /// A session for an accepted connection; the greeting
    /// (`220 <hostname> ESMTP baton`) is queued at once.
    pub fn new(
        config: Arc<SessionConfig>,
        peer: SocketAddr,
        local: SocketAddr,
        relay_allowed: bool,
    ) -> Session {
        let greeting = replies::greeting(&config.hostname);
        let mut session = Session {
            config,
            peer,
            local,
            relay_allowed,
            state: State::Command,
            greeting: None,
            tls: Tls::Plain,
            auth: Auth::Anonymous,
            transaction: None,
            input: Vec::new(),
            output: Vec::new(),
            commands: 0,
            errors: 0,
            input_overflow: false,
            pending_close: None,
            message_held: None,
        };
        session.reply(&greeting);
        session
    }

    /// A connection refused at once (connection limits): its only output
    /// is `421 4.7.0 <hostname> <reason>` (RFC 5321 §3.1), then it closes.
    pub fn refused(config: Arc<SessionConfig>, reason: &str) -> Session {
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let reply = closing::refused(&config.hostname, reason);
        let mut session = Session::new(config, unknown, unknown, false);
        session.output.clear();
        session.close(&reply);
        session
    }

    /// Feeds bytes read from the socket and processes as much as possible.
    /// Processing stops at a complete message (see
    /// [`take_message`](Self::take_message)); what follows stays buffered.
    pub fn receive(&mut self, input: &[u8], ctx: &mut dyn SessionContext) {
        match self.state {
            // RFC 5321 §4.1.1.10: after QUIT (or a 421) nothing is read;
            // RFC 3207 §4.2: nothing sent before the handshake is kept.
            State::Closing | State::StartTls => return,
            State::AwaitingStore(_) | State::AwaitingAuth(_) => return self.keep(input),
            _ => {}
        }
        if self.input.is_empty() {
            // The common case: nothing buffered, so message content goes
            // straight from the caller's buffer into the body.
            let used = self.process(input, ctx);
            self.keep(&input[used..]);
        } else {
            let mut pending = mem::take(&mut self.input);
            pending.extend_from_slice(input);
            let used = self.process(&pending, ctx);
            self.keep(&pending[used..]);
        }
        // Over the bound outside a wait for the spool: nothing parsable
        // made room, so the client is not speaking SMTP.
        let waiting = matches!(
            self.state,
            State::AwaitingStore(_) | State::AwaitingAuth(_) | State::Closing | State::StartTls
        );
        if self.input_overflow && !waiting {
            self.close(replies::PIPELINED_INPUT_OVERFLOW);
        }
    }

    /// Replies to send, in order. RFC 2920: the shard flushes them once it
    /// has fed all the input it had.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// `n` bytes of [`output`](Self::output) were sent.
    pub fn consume_output(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
        if self.output.is_empty() && self.output.capacity() > IDLE_BUFFER_KEEP_BYTES {
            self.output = Vec::new();
        }
    }

    /// A complete message to store durably. Until [`stored`](Self::stored)
    /// is called, the session processes no input and sends no reply.
    pub fn take_message(&mut self) -> Option<ReceivedMessage> {
        match &mut self.state {
            State::AwaitingStore(message) => {
                // The shard copies the body into the spool's buffers and
                // drops it at once.
                self.message_held = None;
                message.take()
            }
            _ => None,
        }
    }

    /// The spool's answer for the message taken: `250` with the queue id,
    /// or a transient failure. Then processing resumes with the input that
    /// arrived meanwhile.
    pub fn stored(&mut self, result: Result<QueueId, StoreError>, ctx: &mut dyn SessionContext) {
        if !matches!(self.state, State::AwaitingStore(_)) {
            return;
        }
        self.state = State::Command;
        match result {
            Ok(queue_id) => self.reply(&replies::queued(queue_id)),
            Err(StoreError::Full) => self.reply(replies::STORE_FULL),
            Err(StoreError::Failed) => self.reply(replies::STORE_FAILED),
        }
        self.resume(ctx);
    }

    /// After a wait (the spool, the verifier): a close that was put off,
    /// or the input that arrived meanwhile.
    pub(super) fn resume(&mut self, ctx: &mut dyn SessionContext) {
        if let Some(why) = self.pending_close.take() {
            return self.close_now(why);
        }
        if self.input_overflow {
            return self.close(replies::PIPELINED_INPUT_OVERFLOW);
        }
        let pending = mem::take(&mut self.input);
        let used = self.process(&pending, ctx);
        self.keep(&pending[used..]);
    }

    /// The idle, command or data timeout fired: `421 4.4.2`, closing. While
    /// a message is with the spool, this waits for its answer.
    pub fn timed_out(&mut self) {
        self.close_when_possible(PendingClose::Timeout);
    }

    /// The server is stopping: `421 4.3.2`, closing. While a message is
    /// with the spool, this waits for its answer.
    pub fn shut_down(&mut self) {
        self.close_when_possible(PendingClose::Shutdown);
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            State::Command | State::DiscardLine if self.in_chunks() => Phase::Data,
            State::Command | State::DiscardLine => Phase::Command,
            State::Data(_) | State::Chunk(_) => Phase::Data,
            State::Sasl(_) => Phase::Command,
            State::AwaitingStore(_) => Phase::AwaitingStore,
            State::AwaitingAuth(_) => Phase::AwaitingAuth,
            State::Closing => Phase::Closing,
            State::StartTls => Phase::StartTls,
        }
    }

    /// Whether the shard should read: not while the spool has a message,
    /// not when closing, not with too much input buffered or too many
    /// replies unsent (ask again after [`consume_output`](Self::consume_output)).
    pub fn wants_input(&self) -> bool {
        let reading = matches!(
            self.state,
            State::Command | State::DiscardLine | State::Sasl(_) | State::Data(_) | State::Chunk(_)
        );
        reading
            && self.input.len() < PIPELINED_INPUT_BYTES_MAX
            && self.output.len() < PENDING_OUTPUT_BYTES_MAX
    }

    /// Send the remaining output, then close the connection.
    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing)
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// What the TLS handshake negotiated, once it is done.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        match &self.tls {
            Tls::Established(info) => Some(info),
            Tls::Plain | Tls::Starting => None,
        }
    }

    /// The client's EHLO/HELO argument, once given.
    pub fn helo_name(&self) -> Option<&str> {
        self.greeting
            .as_ref()
            .map(|greeting| greeting.name.as_str())
    }

    fn in_chunks(&self) -> bool {
        self.transaction
            .as_ref()
            .is_some_and(|transaction| transaction.chunks.is_some())
    }

    fn close_when_possible(&mut self, why: PendingClose) {
        match self.state {
            State::Closing => {}
            State::AwaitingStore(_) | State::AwaitingAuth(_) => self.pending_close = Some(why),
            _ => self.close_now(why),
        }
    }

    fn close_now(&mut self, why: PendingClose) {
        let reply = match why {
            PendingClose::Timeout => closing::timeout(&self.config.hostname),
            PendingClose::Shutdown => closing::shutting_down(&self.config.hostname),
        };
        self.close(&reply);
    }

    /// Buffers unprocessed input, up to the bound; past it, the rest is
    /// dropped and the session will close.
    fn keep(&mut self, rest: &[u8]) {
        if matches!(self.state, State::Closing | State::StartTls) {
            return;
        }
        let room = PIPELINED_INPUT_BYTES_MAX.saturating_sub(self.input.len());
        if rest.len() > room {
            self.input_overflow = true;
        }
        self.input.extend_from_slice(&rest[..rest.len().min(room)]);
    }

    /// Runs the input loop over `input`; returns the bytes consumed.
    fn process(&mut self, input: &[u8], ctx: &mut dyn SessionContext) -> usize {
        let mut pos = 0;
        while let Some(used) = self.step(&input[pos..], ctx) {
            pos += used;
        }
        pos
    }

    /// One step: consumes some input, or changes state, or returns None to
    /// wait for more input (or for the spool).
    fn step(&mut self, rest: &[u8], ctx: &mut dyn SessionContext) -> Option<usize> {
        match &mut self.state {
            State::Closing | State::AwaitingStore(_) | State::AwaitingAuth(_) | State::StartTls => {
                None
            }
            // BDAT 0, or a chunk just completed: no input needed.
            State::Chunk(chunk) if chunk.remaining == 0 => {
                self.chunk_complete(ctx);
                Some(0)
            }
            _ if rest.is_empty() => None,
            State::Command | State::Sasl(_) => self.command_step(rest, ctx),
            State::DiscardLine => Some(self.discard_step(rest)),
            State::Data(body) => {
                let used = body.reader.feed(rest);
                body.account();
                if body.reader.is_done() {
                    self.end_of_data(ctx);
                }
                Some(used)
            }
            State::Chunk(_) => Some(self.chunk_step(rest)),
        }
    }

    /// Takes one command line if a whole one is there.
    fn command_step(&mut self, rest: &[u8], ctx: &mut dyn SessionContext) -> Option<usize> {
        let line_max = self.config.limits.command_line_bytes_max;
        let window = &rest[..rest.len().min(line_max)];
        if let Some(lf) = memchr::memchr(b'\n', window) {
            self.command_line(&rest[..=lf], ctx);
            return Some(lf + 1);
        }
        if rest.len() < line_max {
            return None;
        }
        // RFC 5321 §4.5.3.1.4: too long. Answered now, and the rest of the
        // line skipped as it comes, so memory stays bounded.
        if self.count_command(b"") {
            self.state = State::DiscardLine;
            self.refuse(replies::LINE_TOO_LONG);
        }
        Some(window.len())
    }

    fn discard_step(&mut self, rest: &[u8]) -> usize {
        match memchr::memchr(b'\n', rest) {
            Some(lf) => {
                self.state = State::Command;
                lf + 1
            }
            None => rest.len(),
        }
    }

    /// Counts a command outside a transaction's MAIL, RCPT, DATA and BDAT
    /// (so an injector that keeps its connection for millions of messages
    /// is never cut off, while a client that loops on NOOP, RSET or VRFY
    /// is); past `commands_per_session_max` the session closes and the
    /// command is not run.
    fn count_command(&mut self, line: &[u8]) -> bool {
        let verb = line.get(..4).map(<[u8]>::to_ascii_uppercase);
        if matches!(verb.as_deref(), Some(b"MAIL" | b"RCPT" | b"DATA" | b"BDAT")) {
            return true;
        }
        self.commands = self.commands.saturating_add(1);
        if self.commands > self.config.limits.commands_per_session_max {
            let reply = closing::too_many_commands(&self.config.hostname);
            self.close(&reply);
            return false;
        }
        true
    }

    /// One command line, LF included.
    fn command_line(&mut self, raw: &[u8], ctx: &mut dyn SessionContext) {
        if !self.count_command(raw) {
            return;
        }
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        // RFC 5321 §2.3.8: lines end in CRLF; a bare LF is how line-ending
        // confusion starts.
        let sasl = match mem::replace(&mut self.state, State::Command) {
            State::Sasl(step) => Some(step),
            other => {
                self.state = other;
                None
            }
        };
        let Some(line) = line.strip_suffix(b"\r") else {
            return self.refuse(replies::BARE_LF_IN_COMMAND);
        };
        if let Some(step) = sasl {
            // A response to a challenge, not a command (RFC 4954 §4).
            return self.sasl_line(step, line);
        }
        if command::check_line(line).is_err() {
            return self.refuse(replies::INVALID_CHARACTER);
        }
        let (word, args) = command::split_verb(line);
        let Some(verb) = Verb::from_word(word) else {
            return self.refuse(replies::UNRECOGNIZED);
        };
        // RFC 6531 §3.3: UTF-8 only within an SMTPUTF8 transaction; MAIL
        // and RCPT judge their paths themselves (553 5.6.7).
        if !verb.takes_path() && !line.is_ascii() && !self.smtputf8() {
            return self.refuse(replies::INVALID_CHARACTER);
        }
        self.dispatch(verb, args, ctx);
    }

    fn dispatch(&mut self, verb: Verb, args: &[u8], ctx: &mut dyn SessionContext) {
        match verb {
            Verb::Ehlo => self.ehlo(args),
            Verb::Helo => self.helo(args),
            Verb::Mail => self.mail(args, ctx),
            Verb::Rcpt => self.rcpt(args, ctx),
            Verb::Data => self.data(args, ctx),
            Verb::Bdat => self.bdat(args, ctx),
            Verb::Rset => self.rset(args),
            Verb::Noop => self.noop(),
            Verb::Quit => self.quit(args),
            Verb::Vrfy => self.vrfy(args),
            Verb::Expn => self.expn(),
            Verb::Help => self.help(),
            Verb::StartTls => self.starttls(args),
            Verb::Auth => self.auth(args),
        }
    }

    /// Whether the current transaction declared SMTPUTF8.
    pub(super) fn smtputf8(&self) -> bool {
        self.transaction
            .as_ref()
            .is_some_and(|transaction| transaction.smtputf8)
    }
}

#[cfg(test)]
mod tests;
