//! One connection to the sink: ESMTP with PIPELINING, SIZE, 8BITMIME,
//! STARTTLS and AUTH PLAIN/LOGIN; replies batched until the client's
//! pipelined commands are all answered (RFC 2920 §3.2); the script's
//! delays and failures applied on the way.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use baton::smtp::command::{Command, CommandError};
use baton::smtp::data::{dot_unstuff, BareLineEndings, BodyLimits, DataReader};
use baton::smtp::reply::{EnhancedCode, Reply};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use super::script::{ConnectVerdict, LocalScript, MessageVerdict, RcptVerdict};
use super::SinkContext;
use crate::base64;
use crate::ids::{read_stamp, unix_micros_now};
use crate::latency::LatencyRecorder;
use crate::rng::Rng;
use crate::stream::Stream;

/// A command line, CRLF included. RFC 5321 §4.5.3.1.4 says 512; the sink
/// is liberal, as a test peer should be.
const COMMAND_LINE_BYTES_MAX: usize = 4096;
/// Recipients of one transaction (RFC 5321 §4.5.3.1.8 asks for 100 at least).
const RECIPIENTS_PER_TRANSACTION_MAX: usize = 10_000;
/// A client silent this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Bytes asked of the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// After a command: go on, close, or start TLS.
enum Flow {
    Continue,
    Close,
    StartTls,
}

/// What the next input is.
enum Mode {
    Command,
    Data(Box<DataReader>),
    /// AUTH PLAIN without an initial response: the next line is it.
    AuthPlain,
    /// AUTH LOGIN: the next line is the user name.
    AuthLoginUser,
    /// AUTH LOGIN: the next line is the password.
    AuthLoginPassword(String),
}

/// The open transaction.
#[derive(Default)]
struct Transaction {
    recipients: Vec<String>,
    /// A message-level outcome asked for by a recipient's local part.
    scripted: Option<MessageVerdict>,
}

/// One client connection.
pub struct Session {
    ctx: Arc<SinkContext>,
    stream: Stream,
    input: Vec<u8>,
    consumed: usize,
    out: Vec<u8>,
    rng: Rng,
    shutdown: watch::Receiver<bool>,
    mode: Mode,
    transaction: Option<Transaction>,
    authenticated: bool,
    latency: LatencyRecorder,
    /// The last message's buffer, reused for the next.
    spare: Vec<u8>,
    /// Messages answered on this connection (`--close-after`).
    messages: u64,
    /// The client's address and the name it gave with EHLO or HELO: whom
    /// accepted messages came from (`SinkSummary::sources`).
    peer: String,
    helo: String,
}

/// Serves a connection to its end.
pub async fn serve(tcp: TcpStream, ctx: Arc<SinkContext>, index: u64) {
    let peer = tcp
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let mut session = Session {
        rng: Rng::derive(ctx.seed, index),
        shutdown: ctx.shutdown.subscribe(),
        latency: ctx.latency.recorder(),
        stream: Stream::Plain(tcp),
        input: Vec::with_capacity(READ_CHUNK_BYTES),
        consumed: 0,
        out: Vec::with_capacity(4096),
        mode: Mode::Command,
        transaction: None,
        authenticated: false,
        spare: Vec::new(),
        messages: 0,
        peer,
        helo: String::new(),
        ctx,
    };
    // A failed connection is the client's business; the counts say enough.
    let _ = session.run().await;
    let _ = session.stream.shutdown().await;
}

impl Session {
    async fn run(&mut self) -> io::Result<()> {
        match self.ctx.config.script.connect(&mut self.rng) {
            ConnectVerdict::Tempfail => {
                self.reply(421, (4, 3, 2), "scripted: try again later")
                    .await?;
                return self.flush().await;
            }
            ConnectVerdict::Reject => {
                self.reply(554, (5, 7, 1), "scripted: no service").await?;
                return self.flush().await;
            }
            ConnectVerdict::Accept => {}
        }
        let greeting = format!("{} ESMTP loadgen sink", self.ctx.config.hostname);
        self.reply_text(220, None, &greeting).await?;
        loop {
            match self.process().await? {
                Flow::Continue => {}
                Flow::Close => return self.flush().await,
                Flow::StartTls => {
                    self.flush().await?;
                    self.start_tls().await?;
                    continue;
                }
            }
            self.flush().await?;
            if !self.read_more().await? {
                return Ok(());
            }
        }
    }

    /// Handles everything complete in the input.
    async fn process(&mut self) -> io::Result<Flow> {
        loop {
            if let Mode::Data(reader) = &mut self.mode {
                let used = reader.feed(&self.input[self.consumed..]);
                self.consumed += used;
                if !reader.is_done() {
                    return Ok(Flow::Continue);
                }
                let Mode::Data(reader) = std::mem::replace(&mut self.mode, Mode::Command) else {
                    unreachable!("in data mode");
                };
                match self.end_of_data(*reader).await? {
                    Flow::Continue => continue,
                    flow => return Ok(flow),
                }
            }
            let pending = &self.input[self.consumed..];
            let Some(lf) = pending.iter().position(|&b| b == b'\n') else {
                if pending.len() > COMMAND_LINE_BYTES_MAX {
                    self.reply(500, (5, 5, 6), "line too long").await?;
                    return Ok(Flow::Close);
                }
                return Ok(Flow::Continue);
            };
            let line = pending[..lf]
                .strip_suffix(b"\r")
                .unwrap_or(&pending[..lf])
                .to_vec();
            self.consumed += lf + 1;
            match self.line(&line).await? {
                Flow::Continue => {}
                flow => return Ok(flow),
            }
        }
    }

    /// Reads more input; false at the end of the connection.
    async fn read_more(&mut self) -> io::Result<bool> {
        if self.consumed == self.input.len() {
            self.input.clear();
        } else if self.consumed > 0 {
            self.input.drain(..self.consumed);
        }
        self.consumed = 0;
        self.input.reserve(READ_CHUNK_BYTES);
        /// Why the read ended.
        enum Outcome {
            Read(io::Result<usize>),
            Idle,
            Shutdown,
        }
        let outcome = tokio::select! {
            read = timeout(IDLE_TIMEOUT, self.stream.read_buf(&mut self.input)) => match read {
                Err(_) => Outcome::Idle,
                Ok(read) => Outcome::Read(read),
            },
            _ = self.shutdown.wait_for(|stop| *stop) => Outcome::Shutdown,
        };
        let (code, text) = match outcome {
            Outcome::Read(read) => return Ok(read? > 0),
            Outcome::Idle => (421, "idle too long"),
            Outcome::Shutdown => (421, "sink shutting down"),
        };
        self.reply(code, (4, 3, 2), text).await?;
        self.flush().await?;
        Ok(false)
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Queues a one-line reply, after the scripted delay.
    async fn reply(&mut self, code: u16, enhanced: EnhancedCode, text: &str) -> io::Result<()> {
        self.reply_text(code, Some(enhanced), text).await
    }

    async fn reply_text(
        &mut self,
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: &str,
    ) -> io::Result<()> {
        self.delay(self.ctx.config.script.reply_delay).await?;
        self.push_reply(&Reply::new(code, enhanced, text));
        Ok(())
    }

    /// Waits, after sending what is already queued (so that only the
    /// delayed reply is late).
    async fn delay(&mut self, delay: Option<Duration>) -> io::Result<()> {
        if let Some(delay) = delay {
            self.flush().await?;
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    fn push_reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
        self.ctx.count_reply(reply.code);
    }

    /// One line in command mode or in an AUTH exchange.
    async fn line(&mut self, line: &[u8]) -> io::Result<Flow> {
        match std::mem::replace(&mut self.mode, Mode::Command) {
            Mode::Command | Mode::Data(_) => self.command(line).await,
            Mode::AuthPlain => self.auth_plain(line).await,
            Mode::AuthLoginUser => {
                let user = decode_text(line);
                self.mode = Mode::AuthLoginPassword(user.unwrap_or_default());
                self.reply_text(334, None, "UGFzc3dvcmQ6").await?;
                Ok(Flow::Continue)
            }
            Mode::AuthLoginPassword(user) => {
                let password = decode_text(line).unwrap_or_default();
                self.auth_result(&user, &password).await
            }
        }
    }

    async fn command(&mut self, line: &[u8]) -> io::Result<Flow> {
        let command = match Command::parse(line, true) {
            Ok(command) => command,
            Err(CommandError::InvalidByte) => {
                self.reply(500, (5, 5, 2), "invalid character in command")
                    .await?;
                return Ok(Flow::Continue);
            }
            Err(e) => {
                self.reply(501, (5, 5, 4), &format!("syntax error: {e}"))
                    .await?;
                return Ok(Flow::Continue);
            }
        };
        match command {
            Command::Ehlo(name) => {
                self.transaction = None;
                self.helo = name.to_string();
                self.ehlo().await?;
            }
            Command::Helo(name) => {
                self.transaction = None;
                self.helo = name.to_string();
                let hostname = self.ctx.config.hostname.clone();
                self.reply_text(250, None, &hostname).await?;
            }
            Command::Mail { params, .. } => self.mail(&params).await?,
            Command::Rcpt { path, .. } => return self.rcpt(path).await,
            Command::Data => self.data().await?,
            Command::Bdat { .. } => self.reply(502, (5, 5, 1), "CHUNKING not offered").await?,
            Command::Rset => {
                self.transaction = None;
                self.reply(250, (2, 0, 0), "Ok").await?;
            }
            Command::Noop => self.reply(250, (2, 0, 0), "Ok").await?,
            Command::Quit => {
                self.reply(221, (2, 0, 0), "Bye").await?;
                return Ok(Flow::Close);
            }
            Command::Vrfy(_) | Command::Expn(_) => {
                self.reply(252, (2, 5, 2), "cannot verify, will accept")
                    .await?
            }
            Command::Help(_) => self.reply_text(214, None, "loadgen sink").await?,
            Command::StartTls => return self.starttls().await,
            Command::Auth {
                mechanism,
                initial_response,
            } => return self.auth(&mechanism, initial_response.as_deref()).await,
            Command::Unknown(_) => self.reply(500, (5, 5, 2), "command not recognised").await?,
        }
        Ok(Flow::Continue)
    }

    async fn ehlo(&mut self) -> io::Result<()> {
        let config = &self.ctx.config;
        let mut lines = vec![
            config.hostname.clone(),
            "PIPELINING".to_string(),
            format!("SIZE {}", config.max_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if config.tls.is_some() && !self.stream.is_tls() {
            lines.push("STARTTLS".to_string());
        }
        if config.auth.is_some() && self.auth_allowed() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        self.delay(config.script.reply_delay).await?;
        self.push_reply(&Reply {
            code: 250,
            enhanced: None,
            lines,
        });
        Ok(())
    }

    async fn mail(&mut self, params: &[baton::smtp::command::Param]) -> io::Result<()> {
        if self.transaction.is_some() {
            return self.reply(503, (5, 5, 1), "nested MAIL command").await;
        }
        if self.ctx.config.auth.is_some() && !self.authenticated {
            return self.reply(530, (5, 7, 0), "authentication required").await;
        }
        let declared = params
            .iter()
            .find(|p| p.keyword == "SIZE")
            .and_then(|p| p.value.as_deref()?.parse::<u64>().ok());
        if declared.is_some_and(|size| size > self.ctx.config.max_size) {
            return self.reply(552, (5, 3, 4), "message too big").await;
        }
        self.transaction = Some(Transaction::default());
        self.reply(250, (2, 1, 0), "Ok").await
    }

    async fn rcpt(&mut self, path: baton::smtp::address::ForwardPath) -> io::Result<Flow> {
        use baton::smtp::address::ForwardPath;
        let Some(transaction) = &self.transaction else {
            self.reply(503, (5, 5, 1), "need MAIL first").await?;
            return Ok(Flow::Continue);
        };
        if transaction.recipients.len() >= RECIPIENTS_PER_TRANSACTION_MAX {
            self.reply(452, (4, 5, 3), "too many recipients").await?;
            return Ok(Flow::Continue);
        }
        let (local, address) = match &path {
            ForwardPath::Postmaster => ("postmaster".to_string(), "postmaster".to_string()),
            ForwardPath::Path(path) => (path.local.clone(), path.address()),
        };
        let script = &self.ctx.config.script;
        let verdict = script.rcpt(&local, &mut self.rng);
        let scripted = match script.local(&local) {
            LocalScript::Message(verdict) => Some(verdict),
            _ => None,
        };
        match verdict {
            RcptVerdict::Drop => {
                self.ctx.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                return Ok(Flow::Close);
            }
            RcptVerdict::Tempfail => {
                self.ctx
                    .stats
                    .recipients_refused
                    .fetch_add(1, Ordering::Relaxed);
                self.reply(451, (4, 2, 0), "scripted: mailbox busy, try later")
                    .await?;
                return Ok(Flow::Continue);
            }
            RcptVerdict::Reject => {
                self.ctx
                    .stats
                    .recipients_refused
                    .fetch_add(1, Ordering::Relaxed);
                self.reply(550, (5, 1, 1), "scripted: no such user").await?;
                return Ok(Flow::Continue);
            }
            RcptVerdict::Throttle => {
                self.ctx
                    .stats
                    .recipients_refused
                    .fetch_add(1, Ordering::Relaxed);
                self.reply(
                    421,
                    (4, 7, 28),
                    "scripted: our system has detected an unusual rate of unsolicited mail, try again later",
                )
                .await?;
                return Ok(Flow::Close);
            }
            RcptVerdict::Slow(delay) => self.delay(Some(delay)).await?,
            RcptVerdict::Accept => {}
        }
        let transaction = self.transaction.as_mut().expect("checked above");
        transaction.recipients.push(address);
        if scripted.is_some() {
            transaction.scripted = scripted;
        }
        self.reply(250, (2, 1, 5), "Ok").await?;
        Ok(Flow::Continue)
    }

    async fn data(&mut self) -> io::Result<()> {
        match &self.transaction {
            None => return self.reply(503, (5, 5, 1), "need MAIL first").await,
            Some(t) if t.recipients.is_empty() => {
                return self.reply(554, (5, 5, 1), "no valid recipients").await;
            }
            Some(_) => {}
        }
        let limits = BodyLimits {
            text_line_bytes_max: usize::MAX,
            message_bytes_max: self.ctx.config.max_size,
            bare_line_endings: BareLineEndings::Normalize,
        };
        let mut buffer = std::mem::take(&mut self.spare);
        buffer.clear();
        self.mode = Mode::Data(Box::new(DataReader::new(limits, buffer)));
        self.reply_text(354, None, "End data with <CR><LF>.<CR><LF>")
            .await
    }

    /// The content is in: apply the script, record, reply.
    async fn end_of_data(&mut self, reader: DataReader) -> io::Result<Flow> {
        let body = reader.finish();
        let transaction = self.transaction.take().unwrap_or_default();
        let config = &self.ctx.config;
        let stats = &self.ctx.stats;
        let delay = config.script.data_delay;
        if body.violation.is_some() {
            stats.messages_refused.fetch_add(1, Ordering::Relaxed);
            self.spare = body.wire;
            self.delay(delay).await?;
            self.push_reply(&Reply::new(552, Some((5, 3, 4)), "message too big"));
            return Ok(Flow::Continue);
        }
        let verdict = config.script.message(transaction.scripted, &mut self.rng);
        let (code, enhanced, text) = match verdict {
            MessageVerdict::Drop => {
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
                return Ok(Flow::Close);
            }
            MessageVerdict::Tempfail => (451, (4, 3, 0), "scripted: try again later"),
            MessageVerdict::Reject => (554, (5, 6, 0), "scripted: message refused"),
            MessageVerdict::Accept => (250, (2, 0, 0), "Ok: queued"),
        };
        if verdict == MessageVerdict::Accept {
            self.accept(&body.wire, body.message_bytes, &transaction.recipients);
        } else {
            stats.messages_refused.fetch_add(1, Ordering::Relaxed);
        }
        self.spare = body.wire;
        self.delay(delay).await?;
        self.push_reply(&Reply::new(code, Some(enhanced), text));
        self.messages += 1;
        if self
            .ctx
            .config
            .script
            .close_after
            .is_some_and(|n| self.messages >= n)
        {
            // The reply goes out, then the connection closes: no 421,
            // whatever the client pipelined behind the content.
            self.ctx.stats.closed_after.fetch_add(1, Ordering::Relaxed);
            return Ok(Flow::Close);
        }
        Ok(Flow::Continue)
    }

    /// Counts and records an accepted message.
    fn accept(&mut self, wire: &[u8], bytes: u64, recipients: &[String]) {
        let ctx = &self.ctx;
        if let Ok(mut sources) = ctx.sources.lock() {
            *sources
                .entry(format!("{} {}", self.peer, self.helo))
                .or_default() += 1;
        }
        let stamp = read_stamp(wire);
        if let Some(sent) = stamp.sent_unix_micros {
            let micros = unix_micros_now().saturating_sub(sent);
            self.latency.record(Duration::from_micros(micros));
        }
        ctx.recorder
            .lock()
            .expect("recorder lock")
            .record(&stamp, recipients);
        ctx.note_message_time();
        let stats = &ctx.stats;
        let number = stats.messages.fetch_add(1, Ordering::Relaxed);
        if self.stream.is_tls() {
            stats.messages_tls.fetch_add(1, Ordering::Relaxed);
        }
        stats
            .recipients
            .fetch_add(recipients.len() as u64, Ordering::Relaxed);
        stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(dir) = &ctx.config.dump_dir {
            // A debugging aid: blocking writes are acceptable here.
            let name = match stamp.id {
                Some(id) => format!("{number:08}-{id}.eml"),
                None => format!("{number:08}.eml"),
            };
            if let Err(e) = std::fs::write(dir.join(name), dot_unstuff(wire)) {
                eprintln!(
                    "loadgen sink: cannot dump a message to {}: {e}",
                    dir.display()
                );
            }
        }
    }

    async fn starttls(&mut self) -> io::Result<Flow> {
        if self.ctx.config.tls.is_none() {
            self.reply(502, (5, 5, 1), "STARTTLS not offered").await?;
            return Ok(Flow::Continue);
        }
        if self.stream.is_tls() {
            self.reply(503, (5, 5, 1), "TLS already active").await?;
            return Ok(Flow::Continue);
        }
        self.reply(220, (2, 0, 0), "Ready to start TLS").await?;
        Ok(Flow::StartTls)
    }

    /// The handshake; what the client pipelined after STARTTLS is dropped
    /// (RFC 3207 §5, the command injection defence).
    async fn start_tls(&mut self) -> io::Result<()> {
        self.input.clear();
        self.consumed = 0;
        let config = self.ctx.config.tls.clone().expect("offered only with TLS");
        let stream = std::mem::replace(&mut self.stream, Stream::Detached);
        let Stream::Plain(tcp) = stream else {
            return Err(io::Error::other("TLS already active"));
        };
        let tls = timeout(IDLE_TIMEOUT, TlsAcceptor::from(config).accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake"))??;
        self.stream = Stream::Server(Box::new(tls));
        self.transaction = None;
        self.authenticated = false;
        Ok(())
    }

    /// Whether AUTH may happen now: a sink that offers STARTTLS takes
    /// credentials only over TLS, as a real submission server does (RFC
    /// 4954 §4, `538`), so that a client which sends them in plain text is
    /// caught; with `--no-starttls` it takes them in plain text.
    fn auth_allowed(&self) -> bool {
        self.ctx.config.tls.is_none() || self.stream.is_tls()
    }

    async fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> io::Result<Flow> {
        if self.ctx.config.auth.is_none() {
            self.reply(502, (5, 5, 1), "AUTH not offered").await?;
            return Ok(Flow::Continue);
        }
        self.ctx.stats.auth_attempts.fetch_add(1, Ordering::Relaxed);
        if self.authenticated {
            self.reply(503, (5, 5, 1), "already authenticated").await?;
            return Ok(Flow::Continue);
        }
        if !self.auth_allowed() {
            self.ctx.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            self.reply(538, (5, 7, 11), "encryption required: STARTTLS first")
                .await?;
            return Ok(Flow::Continue);
        }
        match (mechanism.to_ascii_uppercase().as_str(), initial) {
            ("PLAIN", Some(response)) => self.auth_plain(response.as_bytes()).await,
            ("PLAIN", None) => {
                self.mode = Mode::AuthPlain;
                self.reply_text(334, None, "").await?;
                Ok(Flow::Continue)
            }
            ("LOGIN", None) => {
                self.mode = Mode::AuthLoginUser;
                self.reply_text(334, None, "VXNlcm5hbWU6").await?;
                Ok(Flow::Continue)
            }
            ("LOGIN", Some(user)) => {
                self.mode =
                    Mode::AuthLoginPassword(decode_text(user.as_bytes()).unwrap_or_default());
                self.reply_text(334, None, "UGFzc3dvcmQ6").await?;
                Ok(Flow::Continue)
            }
            _ => {
                self.reply(504, (5, 5, 4), "mechanism not supported")
                    .await?;
                Ok(Flow::Continue)
            }
        }
    }

    /// `authzid NUL authcid NUL password` (RFC 4616 §2).
    async fn auth_plain(&mut self, response: &[u8]) -> io::Result<Flow> {
        if response == b"*" {
            self.reply(501, (5, 0, 0), "authentication cancelled")
                .await?;
            return Ok(Flow::Continue);
        }
        let decoded = decode_text(response).unwrap_or_default();
        let mut parts = decoded.split('\0');
        let (_authzid, user, password) = (parts.next(), parts.next(), parts.next());
        self.auth_result(user.unwrap_or_default(), password.unwrap_or_default())
            .await
    }

    async fn auth_result(&mut self, user: &str, password: &str) -> io::Result<Flow> {
        let good = self
            .ctx
            .config
            .auth
            .as_ref()
            .is_some_and(|(u, p)| u == user && p == password);
        let stats = &self.ctx.stats;
        if good {
            stats.auth_successes.fetch_add(1, Ordering::Relaxed);
            self.authenticated = true;
            self.reply(235, (2, 7, 0), "authentication succeeded")
                .await?;
        } else {
            stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            self.reply(535, (5, 7, 8), "authentication credentials invalid")
                .await?;
        }
        Ok(Flow::Continue)
    }
}

fn decode_text(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    String::from_utf8(base64::decode(text.trim())?).ok()
}
