//! EHLO and HELO (RFC 5321 §4.1.1.1).

use super::replies;
use super::session::{Greeting, Session, Tls};
use crate::smtp::command;
use crate::smtp::reply::Reply;

impl Session {
    pub(super) fn ehlo(&mut self, args: &[u8]) {
        self.hello(args, true);
    }

    pub(super) fn helo(&mut self, args: &[u8]) {
        self.hello(args, false);
    }

    fn hello(&mut self, args: &[u8], extended: bool) {
        let Ok(name) = command::parse_hello(args) else {
            let usage = if extended {
                replies::EHLO_SYNTAX
            } else {
                replies::HELO_SYNTAX
            };
            return self.refuse(usage);
        };
        // §4.1.4: a second EHLO/HELO is an implicit RSET, and resets the
        // session's extensions as well.
        self.transaction = None;
        self.greeting = Some(Greeting { name, extended });
        if extended {
            let reply = self.ehlo_reply();
            reply.write_to(&mut self.output);
        } else {
            let reply = replies::helo_ok(&self.config.hostname);
            self.reply(&reply);
        }
    }

    /// `250-<hostname>` then one extension per line (§4.1.1.1). No
    /// enhanced codes here: they would read as keywords (RFC 2034 §3).
    fn ehlo_reply(&self) -> Reply {
        let mut lines = vec![
            self.config.hostname.clone(),
            "PIPELINING".to_owned(), // RFC 2920
            format!("SIZE {}", self.config.limits.message_bytes_max), // RFC 1870
            "8BITMIME".to_owned(),   // RFC 6152
            "SMTPUTF8".to_owned(),   // RFC 6531
            "ENHANCEDSTATUSCODES".to_owned(), // RFC 2034
        ];
        // STARTTLS (RFC 3207 §4.2) only while the connection is plain;
        // AUTH (RFC 4954) over TLS, unless the listener allows plain text.
        if self.config.starttls && matches!(self.tls, Tls::Plain) {
            lines.push("STARTTLS".to_owned());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        if self.config.chunking {
            lines.push("CHUNKING".to_owned()); // RFC 3030
        }
        Reply {
            code: 250,
            enhanced: None,
            lines,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::inbound::testing::{transcript, transcript_with, EHLO_REPLY};
    use crate::inbound::SessionConfig;

    #[test]
    fn names_over_255_octets_are_refused() {
        let long = "a".repeat(256);
        assert_eq!(
            transcript(format!("EHLO {long}\r\n").as_bytes()),
            "501 5.5.4 Syntax: EHLO hostname\r\n"
        );
        let fits = "a".repeat(255);
        assert!(transcript(format!("HELO {fits}\r\n").as_bytes()).starts_with("250 "));
    }

    #[test]
    fn ehlo_lists_extensions() {
        assert_eq!(transcript(b"EHLO client.example\r\n"), EHLO_REPLY);
        assert_eq!(transcript(b"ehlo [192.0.2.1]\r\n"), EHLO_REPLY);
    }

    #[test]
    fn ehlo_without_chunking() {
        let mut config = SessionConfig::new("mx.example.net");
        config.chunking = false;
        config.limits.message_bytes_max = 1000;
        assert_eq!(
            transcript_with(config, b"EHLO c.example\r\n"),
            "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
             250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"
        );
    }

    #[test]
    fn helo() {
        assert_eq!(
            transcript(b"HELO client.example\r\n"),
            "250 mx.example.net\r\n"
        );
    }

    #[test]
    fn bad_arguments() {
        assert_eq!(
            transcript(b"EHLO\r\n"),
            "501 5.5.4 Syntax: EHLO hostname\r\n"
        );
        assert_eq!(
            transcript(b"EHLO \r\n"),
            "501 5.5.4 Syntax: EHLO hostname\r\n"
        );
        assert_eq!(
            transcript(b"HELO \x01\r\n"),
            "501 5.5.4 Syntax: HELO hostname\r\n"
        );
    }

    /// Sloppy names are accepted: refusing them would refuse the mail of
    /// printers and Windows hosts (`MY_PC`), as Postfix does not.
    #[test]
    fn sloppy_names_are_accepted() {
        assert!(transcript(b"EHLO MY_PC\r\n").starts_with("250-"));
        assert!(transcript(b"HELO a..b\r\n").starts_with("250 "));
    }

    #[test]
    fn ehlo_resets_the_transaction() {
        let out = transcript(
            b"HELO a.example\r\nMAIL FROM:<a@b.example>\r\nEHLO a.example\r\nRCPT TO:<c@d.example>\r\n",
        );
        let expected = format!(
            "250 mx.example.net\r\n250 2.1.0 Ok\r\n{EHLO_REPLY}503 5.5.1 Error: need MAIL command\r\n"
        );
        assert_eq!(out, expected);
    }
}
