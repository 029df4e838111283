//! Every reply the server session sends, in one table, with the helpers
//! that queue them.
//!
//! Texts follow Postfix where it has one, so that operators and client
//! libraries see familiar words. Codes: RFC 5321 §4.2.2 and §4.3.2;
//! enhanced codes: RFC 3463 and the IANA registry (RFC 5248). No reply
//! carries an enhanced code before the client could have seen
//! ENHANCEDSTATUSCODES (the greeting), nor in the EHLO keyword lines
//! (RFC 2034 §3).

use baton_spool::QueueId;

use super::session::{Session, State};
use crate::smtp::data::BodyViolation;

// Success and intermediate.
pub(super) const OK: &str = "250 2.0.0 Ok\r\n";
pub(super) const MAIL_OK: &str = "250 2.1.0 Ok\r\n";
pub(super) const RCPT_OK: &str = "250 2.1.5 Ok\r\n";
pub(super) const START_DATA: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";
pub(super) const BYE: &str = "221 2.0.0 Bye\r\n";
/// RFC 5321 §3.5.3: 252 when a server will not verify but will try.
pub(super) const CANNOT_VRFY: &str = "252 2.0.0 Cannot VRFY user, but will accept message\r\n";
pub(super) const HELP: &str =
    "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n";

// Command line errors (RFC 5321 §4.1.1, §4.5.3.1.4, §2.3.8).
pub(super) const UNRECOGNIZED: &str = "500 5.5.2 Error: command not recognized\r\n";
pub(super) const LINE_TOO_LONG: &str = "500 5.5.2 Error: line too long\r\n";
pub(super) const BARE_LF_IN_COMMAND: &str = "500 5.5.2 Error: command must end with <CR><LF>\r\n";
/// NUL, a bare CR, or non-ASCII outside an SMTPUTF8 transaction.
pub(super) const INVALID_CHARACTER: &str = "500 5.5.2 Error: invalid character in command\r\n";
pub(super) const PIPELINED_INPUT_OVERFLOW: &str = "500 5.5.2 Error: too much pipelined input\r\n";
pub(super) const NOT_IMPLEMENTED: &str = "502 5.5.1 Error: command not implemented\r\n";

// STARTTLS (RFC 3207 §4, §4.1; Postfix's texts).
pub(super) const READY_TO_START_TLS: &str = "220 2.0.0 Ready to start TLS\r\n";
pub(super) const STARTTLS_SYNTAX: &str = "501 5.5.4 Syntax: STARTTLS\r\n";
pub(super) const TLS_ALREADY_ACTIVE: &str = "503 5.5.1 Error: TLS already active\r\n";
pub(super) const TLS_REQUIRED: &str = "530 5.7.0 Must issue a STARTTLS command first\r\n";

// Greeting.
pub(super) const EHLO_SYNTAX: &str = "501 5.5.4 Syntax: EHLO hostname\r\n";
pub(super) const HELO_SYNTAX: &str = "501 5.5.4 Syntax: HELO hostname\r\n";

// MAIL (RFC 5321 §4.1.1.2, §4.1.4; RFC 1870; RFC 6531 §3.5).
pub(super) const SEND_HELO_FIRST: &str = "503 5.5.1 Error: send HELO/EHLO first\r\n";
pub(super) const NESTED_MAIL: &str = "503 5.5.1 Error: nested MAIL command\r\n";
pub(super) const MAIL_SYNTAX: &str = "501 5.5.4 Syntax: MAIL FROM:<address>\r\n";
pub(super) const BAD_SENDER: &str = "501 5.1.7 Bad sender address syntax\r\n";
pub(super) const UTF8_NOT_DECLARED: &str =
    "553 5.6.7 Error: non-ASCII address requires SMTPUTF8\r\n";
pub(super) const PARAM_SYNTAX: &str = "501 5.5.4 Error: bad parameter syntax\r\n";
/// Declared with SIZE (RFC 1870 §6) or found at the end of the data.
pub(super) const MESSAGE_TOO_BIG: &str =
    "552 5.3.4 Message size exceeds fixed maximum message size\r\n";

/// RFC 5321 §6.3: a message that has crossed too many relays is looping.
pub(super) const TOO_MANY_HOPS: &str = "554 5.4.6 Too many hops\r\n";

// RCPT (RFC 5321 §4.1.1.3, §4.5.3.1.10).
pub(super) const NEED_MAIL: &str = "503 5.5.1 Error: need MAIL command\r\n";
pub(super) const RCPT_SYNTAX: &str = "501 5.5.4 Syntax: RCPT TO:<address>\r\n";
pub(super) const BAD_RECIPIENT: &str = "501 5.1.3 Bad recipient address syntax\r\n";
pub(super) const TOO_MANY_RECIPIENTS: &str = "452 4.5.3 Error: too many recipients\r\n";
pub(super) const RCPT_AFTER_BDAT: &str = "503 5.5.1 Error: RCPT after BDAT\r\n";
/// `<Postmaster>` without a domain names a local mailbox; baton has none
/// yet (see the open question in `rcpt.rs`).
pub(super) const NO_LOCAL_POSTMASTER: &str =
    "550 5.1.1 <Postmaster>: Recipient address rejected: no local mailboxes\r\n";

// DATA and BDAT (RFC 5321 §4.1.1.4; RFC 3030).
pub(super) const DATA_SYNTAX: &str = "501 5.5.4 Syntax: DATA\r\n";
pub(super) const NO_VALID_RECIPIENTS: &str = "554 5.5.1 Error: no valid recipients\r\n";
pub(super) const DATA_AFTER_BDAT: &str = "503 5.5.1 Error: DATA after BDAT\r\n";
pub(super) const BDAT_SYNTAX: &str = "501 5.5.4 Syntax: BDAT count [LAST]\r\n";
pub(super) const NEED_RCPT: &str = "503 5.5.1 Error: need RCPT command\r\n";
/// RFC 5321 §2.3.8 forbids bare CR and LF; refusing them is the defence
/// against SMTP smuggling.
pub(super) const BARE_LINE_ENDING: &str =
    "550 5.6.11 Error: bare CR or LF in message; see SMTP smuggling\r\n";
/// RFC 5321 §4.5.3.1.6.
pub(super) const TEXT_LINE_TOO_LONG: &str = "500 5.5.2 Error: message line too long\r\n";

// The spool's answer (RFC 5321 §4.2.2).
pub(super) const STORE_FULL: &str = "452 4.3.1 Insufficient system storage\r\n";
/// Too much message data held in memory across all sessions
/// (`[limits] data_in_flight_max`).
pub(super) const DATA_IN_FLIGHT_FULL: &str =
    "452 4.3.1 Insufficient system storage: too much mail in transit, try again later\r\n";
pub(super) const STORE_FAILED: &str = "451 4.3.0 Error: queue file write error\r\n";

// AUTH (RFC 4954 §4, §6) and what a user may do.
pub(super) const AUTH_NOT_ENABLED: &str = "503 5.5.1 Error: authentication not enabled\r\n";
pub(super) const AUTH_OK: &str = "235 2.7.0 Authentication successful\r\n";
/// The same reply whether the user exists or not.
pub(super) const AUTH_FAILED: &str = "535 5.7.8 Authentication credentials invalid\r\n";
pub(super) const AUTH_THROTTLED: &str =
    "454 4.7.0 Temporary authentication failure, try again later\r\n";
pub(super) const AUTH_CANCELLED: &str = "501 5.7.0 Authentication cancelled\r\n";
pub(super) const AUTH_BAD_BASE64: &str = "501 5.5.2 Cannot decode the response\r\n";
pub(super) const AUTH_SYNTAX: &str = "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n";
pub(super) const AUTH_ALREADY: &str = "503 5.5.1 Already authenticated\r\n";
pub(super) const AUTH_IN_TRANSACTION: &str =
    "503 5.5.1 AUTH not permitted during a mail transaction\r\n";
pub(super) const AUTH_MECHANISM: &str = "504 5.5.4 Unrecognized authentication mechanism\r\n";
pub(super) const AUTH_ENCRYPTION_REQUIRED: &str =
    "538 5.7.11 Encryption required for requested authentication mechanism\r\n";
pub(super) const AUTH_REQUIRED: &str = "530 5.7.0 Authentication required\r\n";
pub(super) const SEND_EHLO_FIRST: &str = "503 5.5.1 Error: send EHLO first\r\n";
pub(super) const USER_RATE_REACHED: &str =
    "450 4.7.1 Message rate limit of this user reached, try again later\r\n";
pub(super) const USER_TOO_MANY_RECIPIENTS: &str = "452 4.5.3 Too many recipients for this user\r\n";
pub(super) const FROM_NOT_ALLOWED: &str =
    "550 5.7.1 The From: header's domain is not one this user may send from\r\n";

/// A MAIL FROM domain the authenticated user may not use.
pub(super) fn sender_not_allowed(address: &str) -> String {
    format!("550 5.7.1 Sender address <{address}> not allowed for this user\r\n")
}

pub(super) fn greeting(hostname: &str) -> String {
    format!("220 {hostname} ESMTP baton\r\n")
}

pub(super) fn helo_ok(hostname: &str) -> String {
    format!("250 {hostname}\r\n")
}

/// RFC 5321 §4.5.3.1.10 has no fixed text; the address lets a client
/// tell which of its pipelined recipients was refused.
/// A recipient on the suppression list (`suppression.action = "reject"`).
/// 5.7.1: refused by policy, not unknown; the text says which policy so
/// that a sender's tools can tell it from a bad mailbox.
pub(super) fn suppressed(address: &str) -> String {
    format!("550 5.7.1 <{address}>: Recipient address rejected: suppressed\r\n")
}

pub(super) fn relay_denied(address: &str) -> String {
    format!("554 5.7.1 <{address}>: Relay access denied\r\n")
}

/// RFC 5321 §4.1.1.11: a parameter the server did not advertise.
pub(super) fn unsupported_param(keyword: &str) -> String {
    format!("555 5.5.4 Unsupported option: {keyword}\r\n")
}

pub(super) fn syntax(usage: &str) -> String {
    format!("501 5.5.4 Syntax: {usage}\r\n")
}

/// RFC 3030 §2: each chunk but the last is acknowledged on its own.
pub(super) fn chunk_received(size: u64) -> String {
    format!("250 2.0.0 {size} octets received\r\n")
}

pub(super) fn queued(queue_id: QueueId) -> String {
    format!("250 2.0.0 Ok: queued as {queue_id}\r\n")
}

/// One reply per violation; which one wins when several occur is
/// [`BodyViolation`]'s order.
pub(super) fn body_violation(violation: BodyViolation) -> &'static str {
    match violation {
        BodyViolation::BareLineEnding => BARE_LINE_ENDING,
        BodyViolation::MessageTooBig => MESSAGE_TOO_BIG,
        BodyViolation::LineTooLong => TEXT_LINE_TOO_LONG,
    }
}

/// Replies that end the session: RFC 5321 §3.8, 421 with the server's
/// name.
pub(super) mod closing {
    pub(in crate::inbound) fn refused(hostname: &str, reason: &str) -> String {
        // The reason comes from the shard; keep it on one line.
        let reason: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("421 4.7.0 {hostname} {reason}\r\n")
    }

    pub(in crate::inbound) fn too_many_errors(hostname: &str) -> String {
        format!("421 4.7.0 {hostname} Error: too many errors\r\n")
    }

    pub(in crate::inbound) fn too_many_commands(hostname: &str) -> String {
        format!("421 4.7.0 {hostname} Error: too many commands\r\n")
    }

    pub(in crate::inbound) fn timeout(hostname: &str) -> String {
        format!("421 4.4.2 {hostname} Error: timeout exceeded\r\n")
    }

    pub(in crate::inbound) fn auth_cut_off(hostname: &str) -> String {
        format!("421 4.7.0 {hostname} Too many authentication failures, closing connection\r\n")
    }

    pub(in crate::inbound) fn shutting_down(hostname: &str) -> String {
        format!("421 4.3.2 {hostname} Service shutting down, closing transmission channel\r\n")
    }
}

impl Session {
    /// Queues a reply.
    pub(super) fn reply(&mut self, reply: &str) {
        self.output.extend_from_slice(reply.as_bytes());
    }

    /// Queues a reply to something the client got wrong. It counts against
    /// `errors_per_session_max`; the last one allowed closes the session.
    pub(super) fn refuse(&mut self, reply: &str) {
        self.reply(reply);
        self.errors = self.errors.saturating_add(1);
        if self.errors >= self.config.limits.errors_per_session_max {
            let last = closing::too_many_errors(&self.config.hostname);
            self.close(&last);
        }
    }

    /// Queues a last reply and ends the session: nothing more is read.
    pub(super) fn close(&mut self, reply: &str) {
        self.reply(reply);
        self.state = State::Closing;
        self.transaction = None;
        self.input.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::{parse_reply, ReplyLimits};

    /// Every reply is one well-formed line whose enhanced code agrees with
    /// its class (a 354 has none).
    #[test]
    fn every_reply_is_well_formed() {
        let fixed = [
            OK,
            MAIL_OK,
            RCPT_OK,
            START_DATA,
            BYE,
            CANNOT_VRFY,
            HELP,
            UNRECOGNIZED,
            LINE_TOO_LONG,
            BARE_LF_IN_COMMAND,
            INVALID_CHARACTER,
            PIPELINED_INPUT_OVERFLOW,
            NOT_IMPLEMENTED,
            EHLO_SYNTAX,
            HELO_SYNTAX,
            SEND_HELO_FIRST,
            NESTED_MAIL,
            MAIL_SYNTAX,
            BAD_SENDER,
            UTF8_NOT_DECLARED,
            PARAM_SYNTAX,
            MESSAGE_TOO_BIG,
            NEED_MAIL,
            RCPT_SYNTAX,
            BAD_RECIPIENT,
            TOO_MANY_RECIPIENTS,
            RCPT_AFTER_BDAT,
            NO_LOCAL_POSTMASTER,
            DATA_SYNTAX,
            NO_VALID_RECIPIENTS,
            DATA_AFTER_BDAT,
            BDAT_SYNTAX,
            NEED_RCPT,
            BARE_LINE_ENDING,
            TEXT_LINE_TOO_LONG,
            STORE_FULL,
            STORE_FAILED,
            DATA_IN_FLIGHT_FULL,
            AUTH_NOT_ENABLED,
            AUTH_OK,
            AUTH_FAILED,
            AUTH_THROTTLED,
            AUTH_CANCELLED,
            AUTH_BAD_BASE64,
            AUTH_SYNTAX,
            AUTH_ALREADY,
            AUTH_IN_TRANSACTION,
            AUTH_MECHANISM,
            AUTH_ENCRYPTION_REQUIRED,
            AUTH_REQUIRED,
            SEND_EHLO_FIRST,
            USER_RATE_REACHED,
            USER_TOO_MANY_RECIPIENTS,
            FROM_NOT_ALLOWED,
        ];
        let host = "mx.example";
        let built = [
            relay_denied("a@b.example"),
            unsupported_param("X"),
            syntax("QUIT"),
            chunk_received(10),
            queued(QueueId(1)),
            closing::refused(host, "Error: too\r\nmany"),
            closing::too_many_errors(host),
            closing::too_many_commands(host),
            closing::timeout(host),
            closing::shutting_down(host),
            closing::auth_cut_off(host),
            sender_not_allowed("a@b.example"),
        ];
        let all = fixed
            .iter()
            .copied()
            .chain(built.iter().map(String::as_str));
        for text in all {
            let (reply, used) = parse_reply(text.as_bytes(), &ReplyLimits::default())
                .unwrap()
                .unwrap();
            assert_eq!(used, text.len(), "{text}");
            assert_eq!(reply.lines.len(), 1, "{text}");
            assert!(text.len() <= 512, "RFC 5321 §4.5.3.1.5: {text}");
            if reply.code != 354 {
                let (class, _, _) = reply.enhanced.expect(text);
                assert_eq!(u16::from(class), reply.code / 100, "{text}");
            }
        }
    }
}
