//! STARTTLS (RFC 3207) and implicit TLS (RFC 8314).
//!
//! The session never touches TLS bytes: rustls' sans-IO connection lives
//! beside it in the shard's connection slot. The session's part is the
//! protocol around the handshake:
//!
//! - EHLO advertises STARTTLS while the connection is plain and the
//!   listener has a certificate (`ehlo.rs`).
//! - `STARTTLS` without an argument (501 otherwise) queues
//!   `220 2.0.0 Ready to start TLS` and moves the session to
//!   [`State::StartTls`]: everything the client pipelined behind the
//!   command is discarded (RFC 3207 §4.2, CVE-2011-0411), and nothing more
//!   is read until the shard reports the handshake with
//!   [`Session::tls_established`]. The shard sees the request through
//!   [`Session::starttls_requested`] and starts the handshake once the
//!   `220` has left in plain text.
//! - After the handshake the session forgets the EHLO and any transaction
//!   (RFC 3207 §4.2): nothing said in plain text carries over.
//! - A second STARTTLS, or one over an implicit-TLS connection, gets 503.
//! - With `tls_required`, MAIL before TLS gets `530 5.7.0` (`mail.rs`).
//! - On an implicit-TLS listener the shard calls [`Session::tls_started`]
//!   at accept; the greeting waits in rustls until the handshake is done.

use super::replies;
use super::session::{Session, State, Tls};
use crate::tls::TlsInfo;

impl Session {
    pub(super) fn starttls(&mut self, args: &[u8]) {
        match self.tls {
            Tls::Established(_) | Tls::Starting => return self.refuse(replies::TLS_ALREADY_ACTIVE),
            Tls::Plain if !self.config.starttls => return self.refuse(replies::NOT_IMPLEMENTED),
            Tls::Plain => {}
        }
        if !args.is_empty() {
            return self.refuse(replies::STARTTLS_SYNTAX);
        }
        self.reply(replies::READY_TO_START_TLS);
        self.tls = Tls::Starting;
        self.state = State::StartTls;
        // Whatever followed the command in the same read is dropped by
        // `receive`, which keeps nothing in this state.
        self.input.clear();
    }

    /// Whether the session waits for the shard to run the TLS handshake
    /// (its `220` is the last of its output).
    pub fn starttls_requested(&self) -> bool {
        matches!(self.state, State::StartTls)
    }

    /// An implicit-TLS connection: the handshake comes first, and the
    /// greeting waits in rustls until it is done (RFC 8314 §3.3).
    pub fn tls_started(&mut self) {
        self.tls = Tls::Starting;
    }

    /// The handshake is done: the session starts afresh, encrypted, with
    /// no EHLO and no transaction (RFC 3207 §4.2).
    pub fn tls_established(&mut self, info: TlsInfo) {
        self.tls = Tls::Established(Box::new(info));
        self.greeting = None;
        self.transaction = None;
        self.input.clear();
        if matches!(self.state, State::StartTls) {
            self.state = State::Command;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use crate::inbound::testing::{transcript, TestContext};
    use crate::inbound::{Session, SessionConfig};
    use crate::tls::TlsInfo;

    fn info() -> TlsInfo {
        TlsInfo::new("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, false)
    }

    fn session(starttls: bool, tls_required: bool) -> Session {
        let mut config = SessionConfig::new("mx.example.net");
        config.starttls = starttls;
        config.tls_required = tls_required;
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let local: SocketAddr = "192.0.2.2:25".parse().unwrap();
        let mut session = Session::new(Arc::new(config), peer, local, true);
        let n = session.output().len();
        session.consume_output(n);
        session
    }

    fn say(session: &mut Session, input: &[u8]) -> String {
        session.receive(input, &mut TestContext { last_id: 0 });
        let out = String::from_utf8(session.output().to_vec()).unwrap();
        let n = out.len();
        session.consume_output(n);
        out
    }

    #[test]
    fn not_offered_without_a_certificate() {
        let out = transcript(b"EHLO c.example\r\nSTARTTLS\r\n");
        assert!(!out.contains("STARTTLS"), "{out}");
        assert!(
            out.ends_with("502 5.5.1 Error: command not implemented\r\n"),
            "{out}"
        );
    }

    #[test]
    fn pipelined_commands_behind_starttls_are_discarded() {
        let mut s = session(true, false);
        let ehlo = say(&mut s, b"EHLO c.example\r\n");
        assert!(ehlo.contains("250-STARTTLS\r\n"), "{ehlo}");
        // CVE-2011-0411: the injected MAIL must never be answered.
        let out = say(
            &mut s,
            b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.org>\r\n",
        );
        assert_eq!(out, "220 2.0.0 Ready to start TLS\r\n");
        assert!(s.starttls_requested());
        assert!(!s.wants_input());
        assert_eq!(say(&mut s, b"NOOP\r\n"), "");
        s.tls_established(info());
        assert!(!s.starttls_requested());
        // The EHLO is forgotten, and so is anything said before.
        assert_eq!(
            say(&mut s, b"MAIL FROM:<a@example.org>\r\n"),
            "503 5.5.1 Error: send HELO/EHLO first\r\n"
        );
        let ehlo = say(&mut s, b"EHLO c.example\r\n");
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
        assert_eq!(
            say(&mut s, b"STARTTLS\r\n"),
            "503 5.5.1 Error: TLS already active\r\n"
        );
        assert_eq!(
            say(&mut s, b"MAIL FROM:<a@example.org>\r\n"),
            "250 2.1.0 Ok\r\n"
        );
    }

    #[test]
    fn starttls_takes_no_argument() {
        let mut s = session(true, false);
        say(&mut s, b"EHLO c.example\r\n");
        assert_eq!(
            say(&mut s, b"STARTTLS now\r\n"),
            "501 5.5.4 Syntax: STARTTLS\r\n"
        );
        assert!(!s.starttls_requested());
    }

    #[test]
    fn tls_required_refuses_mail_in_plain_text() {
        let mut s = session(true, true);
        say(&mut s, b"EHLO c.example\r\n");
        assert_eq!(
            say(&mut s, b"MAIL FROM:<a@example.org>\r\n"),
            "530 5.7.0 Must issue a STARTTLS command first\r\n"
        );
        say(&mut s, b"STARTTLS\r\n");
        s.tls_established(info());
        say(&mut s, b"EHLO c.example\r\n");
        assert_eq!(
            say(&mut s, b"MAIL FROM:<a@example.org>\r\n"),
            "250 2.1.0 Ok\r\n"
        );
    }

    #[test]
    fn received_header_says_esmtps_with_the_cipher() {
        let mut s = session(true, false);
        say(&mut s, b"EHLO c.example\r\nSTARTTLS\r\n");
        s.tls_established(info());
        let out = say(
            &mut s,
            b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
        );
        assert!(
            out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"),
            "{out}"
        );
        let message = s.take_message().expect("a message");
        let body = String::from_utf8(message.body).unwrap();
        assert!(
            body.starts_with("Received: from c.example ([192.0.2.1])\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n\tby mx.example.net (baton) with ESMTPS id "),
            "{body}"
        );
        assert_eq!(message.tls, Some(info()));
    }
}
