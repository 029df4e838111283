//! The SMTP client, sans IO: what baton speaks to the next hop.
//!
//! A [`Client`] takes the bytes the server sent and gives back the bytes to
//! send and [`Event`]s for the queue. It reads no socket, starts no thread
//! and reads no clock: the shard connects, feeds [`Client::receive`], writes
//! [`Client::output`], writes the stored body when [`Client::body_needed`],
//! enforces the timeouts of RFC 5321 §4.5.3.2 (keyed by
//! [`Client::awaiting`]) and calls [`Client::connection_lost`] when the
//! socket ends.
//!
//! # The life of a connection
//!
//! 1. Greeting: `220` goes on to EHLO; anything else (a `421`, a `554`)
//!    ends in [`Event::Closed`] so the caller tries the next MX host.
//! 2. EHLO, or HELO when EHLO gets a `5xx` (RFC 5321 §3.2). The EHLO
//!    keywords become [`Extensions`]. When the server offers STARTTLS and
//!    the [`TlsMode`] wants it, STARTTLS; after `220` the shard runs the
//!    handshake ([`Event::StartTls`]), the client discards any bytes that
//!    followed the `220` and, once told [`Client::tls_established`], sends
//!    EHLO again (RFC 3207 §4.2). A required TLS that is not offered or
//!    is refused ends the connection ([`CloseReason::TlsUnavailable`]).
//! 3. AUTH (RFC 4954), when the route gives [`Credentials`]
//!    ([`Client::with_auth`]): over TLS only, unless the credentials allow
//!    plain text; otherwise they are withheld and the connection ends
//!    ([`CloseReason::AuthUnavailable`]), as it does when the server
//!    offers neither PLAIN nor LOGIN. PLAIN goes with its initial
//!    response; LOGIN answers two `334` challenges. A refusal (`535`, any
//!    `4xx`/`5xx`) ends the connection too ([`CloseReason::AuthRefused`]):
//!    the shard defers, never bounces, since the fault is the route's.
//!    Then [`Event::Ready`].
//! 4. [`Client::send_message`] takes one [`Envelope`]. With PIPELINING
//!    (RFC 2920) `MAIL`, every `RCPT` and `DATA` go out in one write
//!    (preceded by `RSET` when the previous transaction ended early);
//!    without it, one command per reply.
//! 5. After `354` the shard writes the body exactly as stored (wire form,
//!    dot-stuffed, CRLF line ends) and calls [`Client::body_sent`]; the
//!    client adds the terminating `.` CRLF.
//! 6. [`Event::TransactionDone`] gives one [`Outcome`] per recipient, in
//!    the envelope's order. The client is idle again and takes the next
//!    envelope (connection reuse) or [`Client::quit`].
//!
//! # Replies and outcomes
//!
//! - A `RCPT` refused with `4xx`/`5xx` is final at once (deferred/failed).
//!   An accepted recipient takes the outcome of the reply to `DATA` (when
//!   `DATA` is refused) or to the final `.`.
//! - A refused `MAIL` gives its reply to every recipient.
//! - No recipient accepted: without pipelining `DATA` is not sent. With
//!   pipelining `DATA` was already sent; if the server answers it with
//!   `354` anyway, the client sends a lone `.` (RFC 2920 §3.1: "if the
//!   DATA command was accepted the client SMTP should send a single dot"),
//!   never the message.
//! - `421` anywhere, a reply that fits no command, or a reply the parser
//!   refuses: every recipient not yet final is deferred and the connection
//!   is [`Event::Closed`]. A peer never makes the client panic.
//! - Refused locally, before anything is sent (all recipients failed):
//!   a message larger than the server's SIZE (RFC 1870, synthetic
//!   `552 5.3.4`), SMTPUTF8 required but not offered (RFC 6531 §3.2,
//!   `553 5.6.7`), an invalid reverse path or MAIL parameters. One invalid
//!   recipient fails alone (`553 5.1.3`).
//!
//! # Layout
//!
//! - `client.rs`: [`Client`], its states, reply dispatch.
//! - `transaction.rs`: one mail transaction: the commands, the outcomes.
//! - `extensions.rs`: the EHLO keywords.
//! - `auth.rs`: credentials, SASL PLAIN and LOGIN.

#![forbid(unsafe_code)]

mod auth;
mod client;
mod extensions;
mod transaction;

#[cfg(test)]
mod tests;

pub use auth::{Credentials, Mechanism};
pub use client::{Client, TlsMode};
pub use extensions::Extensions;

use thiserror::Error;

use crate::smtp::reply::{Reply, ReplyError};
use crate::smtp::reply::{REPLY_LINES_MAX_DEFAULT, REPLY_LINE_BYTES_MAX_DEFAULT};

/// RFC 5321 §4.5.3.1.8: a server must take at least 100 recipients.
pub const RECIPIENTS_PER_TRANSACTION_MAX_DEFAULT: usize = 100;

/// What every connection of one sender shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The domain sent with EHLO/HELO. The configuration checks it is a
    /// domain or an address literal (no CR, LF or space).
    pub helo_name: String,
    pub limits: ClientLimits,
}

/// Bounds on what a server can make the client hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// One reply line, CRLF included.
    pub reply_line_bytes_max: usize,
    /// Lines in one reply.
    pub reply_lines_max: usize,
    /// Recipients in one [`Envelope`]; the queue splits larger ones.
    pub recipients_per_transaction_max: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            reply_line_bytes_max: REPLY_LINE_BYTES_MAX_DEFAULT,
            reply_lines_max: REPLY_LINES_MAX_DEFAULT,
            recipients_per_transaction_max: RECIPIENTS_PER_TRANSACTION_MAX_DEFAULT,
        }
    }
}

/// One transaction to run: the message's envelope for one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// `local@domain` without brackets; empty for the null path `<>`.
    pub reverse_path: Vec<u8>,
    /// MAIL parameters as stored (`BODY=8BITMIME SMTPUTF8`), without SIZE:
    /// the client adds `SIZE=` itself when the server offers it.
    pub mail_params: Vec<u8>,
    /// `local@domain` without brackets, in the order outcomes are reported.
    pub recipients: Vec<Vec<u8>>,
    /// Octets of the body in wire form (RFC 1870 §3: the estimate to send).
    pub size: u64,
}

/// What happened, for the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Greeting, EHLO/HELO, STARTTLS and AUTH (as configured) done;
    /// [`Client::extensions`] is known and the client takes an envelope.
    Ready,
    /// The server said `220` to STARTTLS: the shard runs the TLS handshake
    /// on the socket and reports [`Client::tls_established`] or
    /// [`Client::tls_failed`]. Bytes that came after the `220` were
    /// discarded: they were not protected by TLS (RFC 3207 §4.2, response
    /// injection).
    StartTls,
    /// The server's reply to the RCPT of `recipients[index]`, as it comes.
    /// Informative: [`Event::TransactionDone`] has the final word.
    RecipientResult { index: usize, reply: Reply },
    /// The transaction is over, one outcome per recipient in envelope
    /// order. Unless [`Event::Closed`] follows, the client is idle.
    TransactionDone { per_recipient: Vec<Outcome> },
    /// The connection is over: write what [`Client::output`] still holds
    /// if convenient (a QUIT), then close the socket.
    Closed { reason: CloseReason },
}

/// The fate of one recipient on this attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `2xx` to the end of data.
    Delivered(Reply),
    /// `4xx`, or the connection ended first: try again later.
    Deferred(Reply),
    /// `5xx`: bounce.
    Failed(Reply),
}

impl Outcome {
    /// The reply this outcome carries (remote or synthetic).
    pub fn reply(&self) -> &Reply {
        match self {
            Outcome::Delivered(reply) | Outcome::Deferred(reply) | Outcome::Failed(reply) => reply,
        }
    }
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Anything but `220` at greeting (`421`, `554`): try the next MX.
    GreetingRefused(Reply),
    /// EHLO refused with other than `5xx`, or HELO refused too.
    HelloRefused(Reply),
    /// `421` after the greeting (RFC 5321 §3.8).
    ServiceClosing(Reply),
    /// A reply when none was due, or with a code the command cannot get.
    UnexpectedReply(Reply),
    /// The server's bytes are not a reply within the limits.
    Malformed(ReplyError),
    /// The shard saw the socket end (EOF or error).
    ConnectionLost,
    /// The reply awaited did not come within its timeout (RFC 5321
    /// §4.5.3.2); the shard closes the socket.
    TimedOut(Awaiting),
    /// QUIT answered (or the socket ended after QUIT).
    Quit,
    /// TLS is required and the server did not offer STARTTLS, or refused
    /// it; the text says which.
    TlsUnavailable(String),
    /// The TLS handshake failed (the shard's report).
    TlsFailed(String),
    /// The credentials were not sent: the connection is not encrypted and
    /// the route does not allow plain text, or the server offers no
    /// mechanism the client speaks. The text says which.
    AuthUnavailable(String),
    /// The server refused the AUTH exchange (`535` bad credentials, `454`
    /// temporary failure, `534` mechanism too weak ...).
    AuthRefused(Reply),
}

impl CloseReason {
    /// [`CloseReason::deferral_reply`], its text led by `host` (`name
    /// [ip]:port`): for the queue and notifications, which say where.
    pub fn deferral_reply_about(&self, host: &str) -> Reply {
        let mut reply = self.deferral_reply();
        if let Some(first) = reply.lines.first_mut() {
            *first = format!("{host}: {first}");
        }
        reply
    }

    /// What recipients still open when the connection ends are deferred
    /// with: the server's `421` itself, or a synthetic reply.
    pub fn deferral_reply(&self) -> Reply {
        match self {
            CloseReason::ServiceClosing(reply) => reply.clone(),
            CloseReason::UnexpectedReply(reply) => Reply::new(
                451,
                Some((4, 5, 0)),
                format!("unexpected reply from server: {}", reply.code),
            ),
            CloseReason::Malformed(error) => Reply::new(
                451,
                Some((4, 5, 0)),
                format!("bad reply from server: {error}"),
            ),
            CloseReason::TimedOut(awaiting) => Reply::new(
                421,
                Some((4, 4, 2)),
                format!("timed out waiting for the {}", awaiting.reply_name()),
            ),
            // RFC 3463 X.7.5: a cryptographic failure.
            CloseReason::TlsUnavailable(why) | CloseReason::TlsFailed(why) => {
                Reply::new(451, Some((4, 7, 5)), why.clone())
            }
            // Credentials are the route's business: a temporary failure
            // whatever the server said, so that a wrong password delays
            // the queue instead of bouncing all of it.
            CloseReason::AuthUnavailable(why) => Reply::new(454, Some((4, 7, 0)), why.clone()),
            CloseReason::AuthRefused(reply) => Reply::new(
                454,
                Some((4, 7, 8)),
                format!("authentication failed: {}", client::reply_summary(reply)),
            ),
            CloseReason::GreetingRefused(_)
            | CloseReason::HelloRefused(_)
            | CloseReason::ConnectionLost
            | CloseReason::Quit => Reply::new(421, Some((4, 4, 2)), "connection lost"),
        }
    }
}

/// Which reply the client waits for: the shard picks the timeout from it
/// (RFC 5321 §4.5.3.2: greeting 5 min, MAIL 5, RCPT 5, DATA initiation 2,
/// end of data 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaiting {
    Greeting,
    Ehlo,
    Helo,
    /// The reply to STARTTLS (RFC 3207).
    StartTls,
    /// A reply in the AUTH exchange (RFC 4954): `334` or the outcome.
    Auth,
    Rset,
    Mail,
    /// The RCPT of `recipients[index]`.
    Rcpt(usize),
    Data,
    /// The reply to the final `.`.
    Dot,
    Quit,
}

impl Awaiting {
    /// What is awaited, for a deferral reply: "timed out waiting for the
    /// reply to DATA".
    pub fn reply_name(self) -> &'static str {
        match self {
            Awaiting::Greeting => "greeting",
            Awaiting::Ehlo => "reply to EHLO",
            Awaiting::Helo => "reply to HELO",
            Awaiting::StartTls => "reply to STARTTLS",
            Awaiting::Auth => "reply to AUTH",
            Awaiting::Rset => "reply to RSET",
            Awaiting::Mail => "reply to MAIL",
            Awaiting::Rcpt(_) => "reply to RCPT",
            Awaiting::Data => "reply to DATA",
            Awaiting::Dot => "reply to the end of data",
            Awaiting::Quit => "reply to QUIT",
        }
    }
}

/// Why [`Client::send_message`] did not take an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum SendError {
    /// Not after [`Event::Ready`] or [`Event::TransactionDone`], or after
    /// [`Client::quit`] or [`Event::Closed`].
    #[error("client not idle")]
    NotReady,
    #[error("envelope without recipients")]
    NoRecipients,
    /// More than [`ClientLimits::recipients_per_transaction_max`].
    #[error("more recipients than one transaction takes")]
    TooManyRecipients,
}
