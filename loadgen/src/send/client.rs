//! The client side of one SMTP connection: reading replies, writing
//! commands, and the session's opening (greeting, EHLO, STARTTLS, AUTH).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use baton::smtp::command::Command;
use baton::smtp::reply::{parse_reply, Reply, ReplyError, ReplyLimits};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::base64;
use crate::stream::Stream;

/// Bytes asked of the socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// How long QUIT may take before the connection is just closed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// The step of a session a reply answers, for counting and for errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Rset,
    Mail,
    Rcpt,
    Data,
    /// The reply to the message content, after the final `.`.
    DataEnd,
    Quit,
}

impl Stage {
    /// In the order of a session.
    pub const ALL: [Stage; 10] = [
        Stage::Greeting,
        Stage::Ehlo,
        Stage::StartTls,
        Stage::Auth,
        Stage::Rset,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
        Stage::DataEnd,
        Stage::Quit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Rset => "RSET",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::DataEnd => "DATA-END",
            Stage::Quit => "QUIT",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session ended early.
#[derive(Debug)]
pub enum SessionError {
    Connect(io::Error),
    Timeout(Stage),
    Closed(Stage),
    Io(Stage, io::Error),
    Protocol(Stage, ReplyError),
    Tls(io::Error),
    /// The server answered the greeting or EHLO with an error.
    Refused(Stage, Reply),
    StartTlsNotOffered,
    /// Bytes after the 220 to STARTTLS, before the handshake (RFC 3207 §5).
    StartTlsInjection,
    AuthNotOffered,
    AuthFailed(Reply),
}

impl SessionError {
    /// A short name for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionError::Connect(_) => "connect",
            SessionError::Timeout(_) => "timeout",
            SessionError::Closed(_) => "closed",
            SessionError::Io(..) => "io",
            SessionError::Protocol(..) => "protocol",
            SessionError::Tls(_) => "tls",
            SessionError::Refused(..) => "refused",
            SessionError::StartTlsNotOffered | SessionError::StartTlsInjection => "starttls",
            SessionError::AuthNotOffered | SessionError::AuthFailed(_) => "auth",
        }
    }

    /// Errors that will not go away by trying again: the run stops on
    /// them. A refused connection or failed TLS handshake counts only when
    /// no session could be opened yet (before that, it is a setup mistake;
    /// after, it is the server under load).
    pub fn is_fatal(&self, any_session_opened: bool) -> bool {
        match self {
            SessionError::StartTlsNotOffered
            | SessionError::AuthNotOffered
            | SessionError::AuthFailed(_) => true,
            SessionError::Connect(_) | SessionError::Tls(_) => !any_session_opened,
            _ => false,
        }
    }
}

fn reply_text(reply: &Reply) -> String {
    let text = reply.lines.join(" ");
    match reply.enhanced {
        Some((class, subject, detail)) => {
            format!("{} {class}.{subject}.{detail} {text}", reply.code)
        }
        None => format!("{} {text}", reply.code),
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Connect(e) => write!(f, "cannot connect: {e}"),
            SessionError::Timeout(stage) => write!(f, "timed out waiting for the {stage} reply"),
            SessionError::Closed(stage) => {
                write!(
                    f,
                    "server closed the connection (waiting for the {stage} reply)"
                )
            }
            SessionError::Io(stage, e) => write!(f, "connection failed at {stage}: {e}"),
            SessionError::Protocol(stage, e) => write!(f, "bad reply to {stage}: {e}"),
            SessionError::Tls(e) => write!(f, "TLS failed: {e}"),
            SessionError::Refused(stage, reply) => {
                write!(f, "server refused the {stage}: {}", reply_text(reply))
            }
            SessionError::StartTlsNotOffered => {
                f.write_str("server does not offer STARTTLS (asked for with --starttls)")
            }
            SessionError::StartTlsInjection => {
                f.write_str("server sent data after its STARTTLS reply, before TLS")
            }
            SessionError::AuthNotOffered => {
                f.write_str("server offers neither AUTH PLAIN nor AUTH LOGIN")
            }
            SessionError::AuthFailed(reply) => {
                write!(f, "authentication failed: {}", reply_text(reply))
            }
        }
    }
}

/// Replies counted by stage and code, with the text of the first of each
/// error code seen.
#[derive(Debug, Default)]
pub struct ReplyTally {
    pub counts: BTreeMap<(Stage, u16), u64>,
    pub samples: BTreeMap<(Stage, u16), String>,
}

impl ReplyTally {
    pub fn count(&mut self, stage: Stage, reply: &Reply) {
        *self.counts.entry((stage, reply.code)).or_default() += 1;
        if reply.code >= 400 && !self.samples.contains_key(&(stage, reply.code)) {
            self.samples.insert((stage, reply.code), reply_text(reply));
        }
    }

    pub fn merge(&mut self, other: ReplyTally) {
        for (key, count) in other.counts {
            *self.counts.entry(key).or_default() += count;
        }
        for (key, sample) in other.samples {
            self.samples.entry(key).or_insert(sample);
        }
    }
}

/// What the server said it supports (RFC 5321 §4.1.1.1, the EHLO reply).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    pub starttls: bool,
    /// RFC 1870; None when not offered, Some(0) for "no fixed limit".
    pub size: Option<u64>,
    /// AUTH mechanisms in upper case (RFC 4954).
    pub auth: Vec<String>,
}

impl Capabilities {
    /// From the lines of an EHLO reply (the first is the server's name).
    pub fn parse(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "SIZE" => caps.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "AUTH" => caps.auth.extend(words.map(|w| w.to_ascii_uppercase())),
                _ => {
                    // Old servers (and old Outlook clients) use `AUTH=`.
                    if let Some(mechanisms) = keyword.strip_prefix("AUTH=") {
                        caps.auth.push(mechanisms.to_string());
                        caps.auth.extend(words.map(|w| w.to_ascii_uppercase()));
                    }
                }
            }
        }
        caps.auth.sort();
        caps.auth.dedup();
        caps
    }
}

/// One connection: buffered replies in, commands out.
pub struct Wire {
    stream: Stream,
    input: Vec<u8>,
    /// Bytes of `input` already parsed.
    consumed: usize,
    /// What the next [`send`](Self::send) writes.
    pub out: Vec<u8>,
    timeout: Duration,
    limits: ReplyLimits,
}

impl Wire {
    pub fn new(stream: Stream, timeout: Duration) -> Wire {
        Wire {
            stream,
            input: Vec::with_capacity(READ_CHUNK_BYTES),
            consumed: 0,
            out: Vec::with_capacity(READ_CHUNK_BYTES),
            timeout,
            limits: ReplyLimits::default(),
        }
    }

    /// Appends a command to what the next `send` writes.
    pub fn push(&mut self, command: &Command) {
        self.out.extend_from_slice(&command.to_bytes());
    }

    /// Writes everything pushed so far.
    pub async fn send(&mut self, stage: Stage) -> Result<(), SessionError> {
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match timeout(self.timeout, write).await {
            Err(_) => return Err(SessionError::Timeout(stage)),
            Ok(Err(e)) => return Err(SessionError::Io(stage, e)),
            Ok(Ok(())) => {}
        }
        self.out.clear();
        Ok(())
    }

    /// The next reply, reading as needed.
    pub async fn reply(&mut self, stage: Stage) -> Result<Reply, SessionError> {
        loop {
            match parse_reply(&self.input[self.consumed..], &self.limits) {
                Err(e) => return Err(SessionError::Protocol(stage, e)),
                Ok(Some((reply, used))) => {
                    self.consumed += used;
                    if self.consumed == self.input.len() {
                        self.input.clear();
                        self.consumed = 0;
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
            }
            if self.consumed > 0 {
                self.input.drain(..self.consumed);
                self.consumed = 0;
            }
            self.input.reserve(READ_CHUNK_BYTES);
            match timeout(self.timeout, self.stream.read_buf(&mut self.input)).await {
                Err(_) => return Err(SessionError::Timeout(stage)),
                Ok(Err(e)) => return Err(SessionError::Io(stage, e)),
                Ok(Ok(0)) => return Err(SessionError::Closed(stage)),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Sends one command and reads its reply.
    pub async fn command(
        &mut self,
        command: &Command,
        stage: Stage,
    ) -> Result<Reply, SessionError> {
        self.push(command);
        self.send(stage).await?;
        self.reply(stage).await
    }

    /// Sends one raw line (a SASL response) and reads the reply.
    async fn line(&mut self, line: &str, stage: Stage) -> Result<Reply, SessionError> {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.send(stage).await?;
        self.reply(stage).await
    }

    /// QUIT, politely but briefly, then close.
    pub async fn quit(mut self, tally: &mut ReplyTally) {
        let quit = async {
            let reply = self.command(&Command::Quit, Stage::Quit).await?;
            tally.count(Stage::Quit, &reply);
            let _ = self.stream.shutdown().await;
            Ok::<_, SessionError>(())
        };
        let _ = timeout(QUIT_TIMEOUT, quit).await;
    }

    /// The TLS handshake after a 220 to STARTTLS.
    async fn upgrade(
        self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Wire, SessionError> {
        if self.consumed != self.input.len() {
            return Err(SessionError::StartTlsInjection);
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(SessionError::Tls(io::Error::other("TLS is already on")));
        };
        let handshake = TlsConnector::from(config).connect(name, tcp);
        let tls = match timeout(self.timeout, handshake).await {
            Err(_) => return Err(SessionError::Timeout(Stage::StartTls)),
            Ok(Err(e)) => return Err(SessionError::Tls(e)),
            Ok(Ok(tls)) => tls,
        };
        Ok(Wire::new(Stream::Client(Box::new(tls)), self.timeout))
    }
}

/// TLS settings of a run.
#[derive(Clone)]
pub struct TlsPlan {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// SASL mechanisms `send` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMechanism {
    Plain,
    Login,
}

/// AUTH settings of a run.
#[derive(Clone, Debug)]
pub struct AuthPlan {
    pub user: String,
    pub password: String,
    /// None: PLAIN when offered, else LOGIN.
    pub mechanism: Option<AuthMechanism>,
}

/// How to open sessions.
#[derive(Clone)]
pub struct SessionPlan {
    pub addrs: Vec<std::net::SocketAddr>,
    pub ehlo: String,
    pub timeout: Duration,
    pub tls: Option<TlsPlan>,
    pub auth: Option<AuthPlan>,
}

/// An open session, ready for MAIL.
pub struct Session {
    pub wire: Wire,
    pub caps: Capabilities,
}

/// TCP connect to the first address that answers.
async fn connect(plan: &SessionPlan) -> Result<TcpStream, SessionError> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    for addr in &plan.addrs {
        match timeout(plan.timeout, TcpStream::connect(addr)).await {
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, format!("{addr}: timed out")),
            Ok(Err(e)) => last = io::Error::new(e.kind(), format!("{addr}: {e}")),
            Ok(Ok(tcp)) => {
                // Commands are small and latency is what is measured.
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
        }
    }
    Err(SessionError::Connect(last))
}

/// EHLO, or HELO for a server that does not know EHLO.
async fn hello(
    wire: &mut Wire,
    plan: &SessionPlan,
    tally: &mut ReplyTally,
) -> Result<Capabilities, SessionError> {
    let reply = wire
        .command(&Command::Ehlo(plan.ehlo.clone()), Stage::Ehlo)
        .await?;
    tally.count(Stage::Ehlo, &reply);
    if reply.class() == 2 {
        return Ok(Capabilities::parse(&reply));
    }
    if reply.class() == 5 {
        let reply = wire
            .command(&Command::Helo(plan.ehlo.clone()), Stage::Ehlo)
            .await?;
        tally.count(Stage::Ehlo, &reply);
        if reply.class() == 2 {
            return Ok(Capabilities::default());
        }
    }
    Err(SessionError::Refused(Stage::Ehlo, reply))
}

/// Connects and readies a session: greeting, EHLO, STARTTLS, AUTH.
pub async fn open(plan: &SessionPlan, tally: &mut ReplyTally) -> Result<Session, SessionError> {
    let tcp = connect(plan).await?;
    let mut wire = Wire::new(Stream::Plain(tcp), plan.timeout);
    let greeting = wire.reply(Stage::Greeting).await?;
    tally.count(Stage::Greeting, &greeting);
    if greeting.class() != 2 {
        return Err(SessionError::Refused(Stage::Greeting, greeting));
    }
    let mut caps = hello(&mut wire, plan, tally).await?;
    if let Some(tls) = &plan.tls {
        if !caps.starttls {
            return Err(SessionError::StartTlsNotOffered);
        }
        let reply = wire.command(&Command::StartTls, Stage::StartTls).await?;
        tally.count(Stage::StartTls, &reply);
        if reply.code != 220 {
            return Err(SessionError::Refused(Stage::StartTls, reply));
        }
        wire = wire
            .upgrade(tls.config.clone(), tls.server_name.clone())
            .await?;
        // RFC 3207 §4.2: forget what was learnt before TLS.
        caps = hello(&mut wire, plan, tally).await?;
    }
    if let Some(auth) = &plan.auth {
        authenticate(&mut wire, &caps, auth, tally).await?;
    }
    Ok(Session { wire, caps })
}

/// AUTH PLAIN (RFC 4616) or LOGIN, expecting 235.
async fn authenticate(
    wire: &mut Wire,
    caps: &Capabilities,
    auth: &AuthPlan,
    tally: &mut ReplyTally,
) -> Result<(), SessionError> {
    let offered = |name: &str| caps.auth.iter().any(|m| m == name);
    let mechanism = match auth.mechanism {
        Some(mechanism) => mechanism,
        None if offered("PLAIN") => AuthMechanism::Plain,
        None if offered("LOGIN") => AuthMechanism::Login,
        None => return Err(SessionError::AuthNotOffered),
    };
    let mut reply = match mechanism {
        AuthMechanism::Plain => {
            let response = format!("\0{}\0{}", auth.user, auth.password);
            let command = Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some(base64::encode(response.as_bytes())),
            };
            wire.command(&command, Stage::Auth).await?
        }
        AuthMechanism::Login => {
            let command = Command::Auth {
                mechanism: "LOGIN".into(),
                initial_response: None,
            };
            let mut reply = wire.command(&command, Stage::Auth).await?;
            for secret in [&auth.user, &auth.password] {
                if reply.code != 334 {
                    break;
                }
                tally.count(Stage::Auth, &reply);
                reply = wire
                    .line(&base64::encode(secret.as_bytes()), Stage::Auth)
                    .await?;
            }
            reply
        }
    };
    tally.count(Stage::Auth, &reply);
    if reply.code == 334 {
        // A challenge we have no answer for: cancel (RFC 4954 §4).
        reply = wire.line("*", Stage::Auth).await?;
        tally.count(Stage::Auth, &reply);
    }
    if reply.code != 235 {
        return Err(SessionError::AuthFailed(reply));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_from_ehlo() {
        let reply = Reply {
            code: 250,
            enhanced: None,
            lines: vec![
                "mx.example".into(),
                "PIPELINING".into(),
                "SIZE 10240000".into(),
                "starttls".into(),
                "AUTH PLAIN login".into(),
                "AUTH=CRAM-MD5".into(),
            ],
        };
        let caps = Capabilities::parse(&reply);
        assert!(caps.pipelining && caps.starttls);
        assert_eq!(caps.size, Some(10_240_000));
        assert_eq!(caps.auth, vec!["CRAM-MD5", "LOGIN", "PLAIN"]);
        let bare = Capabilities::parse(&Reply::new(250, None, "mx.example"));
        assert_eq!(bare, Capabilities::default());
    }

    #[test]
    fn fatal_errors() {
        let refused = || SessionError::Connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(refused().is_fatal(false));
        assert!(!refused().is_fatal(true));
        assert!(SessionError::StartTlsNotOffered.is_fatal(true));
        assert!(!SessionError::Closed(Stage::Mail).is_fatal(false));
        let text =
            SessionError::Refused(Stage::Greeting, Reply::new(554, Some((5, 7, 1)), "go away"));
        assert_eq!(
            text.to_string(),
            "server refused the greeting: 554 5.7.1 go away"
        );
    }
}
