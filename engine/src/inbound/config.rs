//! What a session needs to know: the host name it speaks for and every
//! limit a peer can reach. Defaults are named constants, qualifier last.

use std::sync::Arc;

use super::DataBudget;
use crate::smtp::data::{BareLineEndings, BodyLimits};

/// RFC 5321 §4.5.3.1.4 sets 512 octets; extensions make lines longer
/// (§4.5.3.1: "SHOULD allow"), and AUTH initial responses run long.
pub const COMMAND_LINE_BYTES_MAX_DEFAULT: usize = 2048;
/// RFC 5321 §4.5.3.1.6: 1000 octets including CRLF.
pub const TEXT_LINE_BYTES_MAX_DEFAULT: usize = 1000;
/// 50 MiB, advertised with SIZE (RFC 1870).
pub const MESSAGE_BYTES_MAX_DEFAULT: u64 = 50 * 1024 * 1024;
/// RFC 5321 §4.5.3.1.8 asks for at least 100; bulk senders batch more.
pub const RECIPIENTS_PER_MESSAGE_MAX_DEFAULT: usize = 1000;
pub const COMMANDS_PER_SESSION_MAX_DEFAULT: u32 = 10_000;
/// 256 MiB of message data held by all sessions at once: a few messages
/// of the largest size (a 50 MiB body grows a buffer of 64 MiB) beside
/// thousands of ordinary ones, on a host that has a few GiB for baton.
pub const DATA_IN_FLIGHT_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
pub const ERRORS_PER_SESSION_MAX_DEFAULT: u32 = 20;
/// Postfix's `hopcount_limit`.
pub const RECEIVED_HEADERS_MAX_DEFAULT: usize = 50;
/// Unprocessed input a session holds while it waits for the spool (the
/// only time input piles up: commands are parsed as they arrive and
/// message content streams into the body). A pipelining client may send
/// its next transaction meanwhile, and a read already in flight lands
/// here; past this the session stops wanting input, and input fed anyway
/// ends the session with `500` once the spool has answered.
pub const PIPELINED_INPUT_BYTES_MAX: usize = 256 * 1024;
/// Replies not yet taken by [`Session::consume_output`](super::Session::consume_output).
/// A client that pipelines without reading its replies (RFC 2920 §3.1
/// says it must not send more than a window ahead) stops being read past
/// this, instead of making the server buffer without end.
pub const PENDING_OUTPUT_BYTES_MAX: usize = 64 * 1024;
/// Capacity an emptied input or output buffer keeps. Replies to a few
/// pipelined commands fit, so a busy session does not reallocate; more (a
/// burst of pipelined input, a long EHLO reply queue) is freed once sent
/// or processed, so an idle session does not keep it.
pub const IDLE_BUFFER_KEEP_BYTES: usize = 1024;

/// One listener's session settings, shared by its sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// This server's name in the greeting, EHLO and `Received:`.
    pub hostname: String,
    pub limits: SessionLimits,
    pub bare_line_endings: BareLineEndings,
    /// Offer and accept BDAT (RFC 3030).
    pub chunking: bool,
    /// Offer STARTTLS (RFC 3207): the listener has a certificate.
    pub starttls: bool,
    /// Refuse MAIL until the connection is encrypted (`530 5.7.0`).
    pub tls_required: bool,
    /// Message data held by all sessions of the server (`[limits]
    /// data_in_flight_max`): past it a message is refused with `452 4.3.1`.
    pub data_budget: Arc<DataBudget>,
    pub auth: AuthSettings,
}

/// What a listener does about AUTH (RFC 4954).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// AUTH can be offered: the listener allows it and there are users.
    pub available: bool,
    /// MAIL before AUTH gets `530 5.7.0` (a submission port).
    pub required: bool,
    /// Offer it without TLS too.
    pub plaintext: bool,
}

impl SessionConfig {
    /// Default limits, bare line endings refused, CHUNKING on, no TLS.
    pub fn new(hostname: impl Into<String>) -> SessionConfig {
        SessionConfig {
            hostname: hostname.into(),
            limits: SessionLimits::default(),
            bare_line_endings: BareLineEndings::Reject,
            chunking: true,
            starttls: false,
            tls_required: false,
            auth: AuthSettings::default(),
            data_budget: DataBudget::unlimited(),
        }
    }

    pub(super) fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            text_line_bytes_max: self.limits.text_line_bytes_max,
            message_bytes_max: self.limits.message_bytes_max,
            bare_line_endings: self.bare_line_endings,
        }
    }
}

/// The limits of one session. Going over one earns a reply, never a panic
/// or a silent drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// One command line, CRLF included.
    pub command_line_bytes_max: usize,
    /// One line of message content, CRLF included.
    pub text_line_bytes_max: usize,
    /// One message in wire form, without baton's `Received:` header.
    pub message_bytes_max: u64,
    pub recipients_per_message_max: usize,
    pub commands_per_session_max: u32,
    /// Replies refusing something the client got wrong.
    pub errors_per_session_max: u32,
    /// `Received:` headers in a message, baton's own included; past it the
    /// message loops (RFC 5321 §6.3) and is refused with `554 5.4.6`.
    pub received_headers_max: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            command_line_bytes_max: COMMAND_LINE_BYTES_MAX_DEFAULT,
            text_line_bytes_max: TEXT_LINE_BYTES_MAX_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            recipients_per_message_max: RECIPIENTS_PER_MESSAGE_MAX_DEFAULT,
            commands_per_session_max: COMMANDS_PER_SESSION_MAX_DEFAULT,
            errors_per_session_max: ERRORS_PER_SESSION_MAX_DEFAULT,
            received_headers_max: RECEIVED_HEADERS_MAX_DEFAULT,
        }
    }
}
