//! The SMTP server session, sans IO.
//!
//! A [`Session`] takes the bytes a client sent and gives back the bytes to
//! answer and the messages to store. It reads no socket, starts no thread
//! and reads no clock: the shard loop feeds it, writes its output, stores
//! what it hands over, and tells it the spool's answer. Time and queue ids
//! come in through [`SessionContext`], so a transcript replays identically.
//!
//! # The life of a message
//!
//! 1. `receive` parses commands as they arrive and queues each reply in
//!    order; replies to pipelined commands (RFC 2920) go out together when
//!    the shard has fed all the input it had.
//! 2. DATA or the first BDAT takes a queue id and starts the body with
//!    baton's `Received:` header; content streams into it in wire form.
//! 3. At the end of the data the session stops: [`Session::take_message`]
//!    hands the message over and, until [`Session::stored`] reports the
//!    spool's answer, no input is processed and nothing more is replied.
//!    The `250` is sent only once the message is durable (RFC 5321 §6.1).
//!
//! # Layout
//!
//! - `session.rs`: [`Session`], its states, the input loop, dispatch.
//! - One file per verb: `ehlo.rs` (EHLO, HELO), `mail.rs`, `rcpt.rs`,
//!   `data.rs` (DATA and the end of every message), `bdat.rs`, `basic.rs`
//!   (RSET, NOOP, QUIT, VRFY, EXPN, HELP), `starttls.rs` (STARTTLS: the
//!   session asks the shard for the handshake and is told its result), and
//!   `auth.rs` (AUTH: the session hands the credentials to the shard and is
//!   told the verdict).
//! - `transaction.rs`: the envelope being built.
//! - `received.rs`: the `Received:` header (RFC 5321 §4.4).
//! - `replies.rs`: every reply text, in one table.
//! - `config.rs`: [`SessionConfig`], [`SessionLimits`] and their defaults.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use baton_spool::{NewRecipient, QueueId, Status};
use thiserror::Error;

use crate::auth::verify::Identity;
use crate::tls::TlsInfo;

mod auth;
mod basic;
mod bdat;
mod budget;
mod config;
mod data;
mod ehlo;
mod mail;
mod rcpt;
mod received;
mod replies;
mod session;
mod starttls;
#[cfg(test)]
mod testing;
mod transaction;

pub use crate::smtp::data::BareLineEndings;
pub use budget::DataBudget;
pub(crate) use budget::Held;
pub use config::{AuthSettings, SessionConfig, SessionLimits};
pub use config::{
    COMMANDS_PER_SESSION_MAX_DEFAULT, COMMAND_LINE_BYTES_MAX_DEFAULT, DATA_IN_FLIGHT_MAX_DEFAULT,
    ERRORS_PER_SESSION_MAX_DEFAULT, IDLE_BUFFER_KEEP_BYTES, MESSAGE_BYTES_MAX_DEFAULT,
    PENDING_OUTPUT_BYTES_MAX, PIPELINED_INPUT_BYTES_MAX, RECIPIENTS_PER_MESSAGE_MAX_DEFAULT,
    TEXT_LINE_BYTES_MAX_DEFAULT,
};
pub(crate) use data::{from_domains, received_headers, Trusted};
pub(crate) use received::address_literal;
pub use session::{Phase, Session};

/// What a session needs from outside: the time and fresh queue ids. The
/// one seam for both, so tests can replay a session exactly.
pub trait SessionContext {
    fn now_unix_secs(&self) -> u64;
    /// A queue id never handed out before.
    fn next_queue_id(&mut self) -> QueueId;
    /// Counts a message against the user's `messages_per_hour`; `false`
    /// when its allowance is spent.
    fn take_user_message(&mut self, identity: &Identity) -> bool;
    /// Whether `recipient` is on the suppression list for mail from
    /// `sender_domain` (empty for `<>`) by `user`, and what to do. Called
    /// at every `RCPT` that would be accepted, so it must be quick: the
    /// shard answers from its own read snapshot of the list. In drop mode
    /// the context also records the `suppressed` event.
    fn suppressed(
        &mut self,
        recipient: &[u8],
        sender_domain: &[u8],
        user: Option<&str>,
    ) -> Option<Suppression> {
        let _ = (recipient, sender_domain, user);
        None
    }
    /// The one-click unsubscribe fields (`List-Unsubscribe`,
    /// `List-Unsubscribe-Post`, CRLF ended) for a message from a trusted
    /// client to one `recipient`, when `[unsubscribe]` covers its sender
    /// domain or user; `None`: no links.
    fn unsubscribe_fields(
        &mut self,
        recipient: &[u8],
        sender_domain: &[u8],
        identity: Option<&Identity>,
        queue_id: QueueId,
    ) -> Option<String> {
        let _ = (recipient, sender_domain, identity, queue_id);
        None
    }
}

/// What `RCPT` does with a suppressed recipient
/// (`suppression.action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suppression {
    /// `550 5.7.1`.
    Reject,
    /// `250`, and the recipient is left out of the message.
    Drop,
}

/// A complete message to store durably before answering `250`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub queue_id: QueueId,
    /// `local@domain` without brackets; empty for the null path `<>`.
    pub reverse_path: Vec<u8>,
    /// MAIL's parameters in canonical form (`SIZE=123 BODY=8BITMIME`).
    pub mail_params: Vec<u8>,
    pub recipients: Vec<AcceptedRecipient>,
    /// `Received:` header, then the message in wire form: CRLF line ends,
    /// dot-stuffed, without the final `.` CRLF.
    pub body: Vec<u8>,
    pub peer: SocketAddr,
    /// The EHLO/HELO argument.
    pub helo: String,
    /// How the message arrived over TLS; `None` in plain text.
    pub tls: Option<TlsInfo>,
    /// Who the client authenticated as (AUTH), if it did.
    pub identity: Option<Arc<Identity>>,
    /// From a trusted client: its `From:` domain, whose keys sign it.
    pub sign_domain: Option<String>,
    /// What DKIM signing did (`d=... s=... a=...`, or why not), for the
    /// event; set by the signer.
    pub dkim: Option<String>,
}

impl ReceivedMessage {
    /// Its recipients as the spool records them: each pending.
    pub fn spool_recipients(&self) -> Vec<NewRecipient<'_>> {
        self.recipients
            .iter()
            .map(|r| NewRecipient {
                address: &r.address,
                params: &r.params,
                status: Status::Pending,
            })
            .collect()
    }
}

/// One recipient the session answered `250` to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedRecipient {
    /// `local@domain`, without brackets, as the client wrote it.
    pub address: Vec<u8>,
    /// The domain in lower case, for routing.
    pub domain: String,
    /// RCPT's parameters in canonical form (none are accepted yet).
    pub params: Vec<u8>,
}

/// Why the spool could not take a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum StoreError {
    /// Out of space: `452 4.3.1`.
    #[error("spool full")]
    Full,
    /// Write or sync failed: `451 4.3.0`.
    #[error("spool write failed")]
    Failed,
}
