//! RCPT (RFC 5321 §4.1.1.3).
//!
//! Open question: `<Postmaster>` without a domain must be accepted
//! (§4.5.1), but it names a local mailbox and baton has no local delivery
//! yet; it is refused with 550 until there is somewhere to put it.

use super::replies;
use super::session::Session;
use super::{AcceptedRecipient, SessionContext, Suppression};
use crate::smtp::address::{ForwardPath, PathError};
use crate::smtp::command::{self, CommandError};

impl Session {
    pub(super) fn rcpt(&mut self, args: &[u8], ctx: &mut dyn SessionContext) {
        let Some(transaction) = &self.transaction else {
            return self.refuse(replies::NEED_MAIL);
        };
        // RFC 3030 §2: the envelope is complete once the body has begun.
        if transaction.chunks.is_some() {
            return self.refuse(replies::RCPT_AFTER_BDAT);
        }
        let accepted = transaction.recipients.len() + transaction.dropped;
        let (path, params) = match command::parse_rcpt(args, transaction.smtputf8) {
            Ok(parsed) => parsed,
            Err(error) => return self.refuse(rcpt_error(error)),
        };
        // No RCPT parameter is advertised (no DSN yet): §4.1.1.11.
        if let Some(param) = params.first() {
            return self.refuse(&replies::unsupported_param(&param.keyword));
        }
        let path = match path {
            ForwardPath::Postmaster => return self.refuse(replies::NO_LOCAL_POSTMASTER),
            ForwardPath::Path(path) => path,
        };
        if accepted >= self.config.limits.recipients_per_message_max {
            // §4.5.3.1.10: a transient 452; the client sends the rest in
            // another transaction. Normal flow control, not an error.
            return self.reply(replies::TOO_MANY_RECIPIENTS);
        }
        let user_max = self
            .identity()
            .and_then(|identity| identity.policy.recipients_per_message_max);
        if user_max.is_some_and(|max| accepted >= max as usize) {
            return self.reply(replies::USER_TOO_MANY_RECIPIENTS);
        }
        // No open relay: baton has no local domains yet, so every
        // recipient is relayed, and only for allowed or authenticated
        // clients.
        if !self.relay_allowed && self.identity().is_none() {
            return self.refuse(&replies::relay_denied(&path.address()));
        }
        // After the relay check: a client that may not send here learns
        // nothing about the list.
        let address = path.address();
        let sender = self
            .transaction
            .as_ref()
            .map_or(&b""[..], |t| t.reverse_path.as_slice());
        let sender_domain = sender
            .iter()
            .rposition(|&b| b == b'@')
            .map_or(&b""[..], |at| &sender[at + 1..]);
        let user = self.identity().map(|identity| identity.name.as_str());
        match ctx.suppressed(address.as_bytes(), sender_domain, user) {
            None => {}
            // Not counted as the client's error: a bulk sender's list holds
            // suppressed addresses as a matter of course, and must not be
            // cut off for them (`limits.errors_per_session_max`).
            Some(Suppression::Reject) => return self.reply(&replies::suppressed(&address)),
            Some(Suppression::Drop) => {
                if let Some(transaction) = self.transaction.as_mut() {
                    transaction.dropped += 1;
                }
                return self.reply(replies::RCPT_OK);
            }
        }
        let recipient = AcceptedRecipient {
            address: address.into_bytes(),
            domain: path.routing_domain(),
            params: Vec::new(),
        };
        if let Some(transaction) = self.transaction.as_mut() {
            transaction.recipients.push(recipient);
        }
        self.reply(replies::RCPT_OK);
    }
}

fn rcpt_error(error: CommandError) -> &'static str {
    match error {
        CommandError::Path(PathError::Utf8NotDeclared) => replies::UTF8_NOT_DECLARED,
        CommandError::Path(_) => replies::BAD_RECIPIENT,
        CommandError::ParamSyntax => replies::PARAM_SYNTAX,
        CommandError::Syntax | CommandError::InvalidByte => replies::RCPT_SYNTAX,
    }
}

#[cfg(test)]
mod tests {
    use crate::inbound::testing::{transcript, transcript_with, Driver};
    use crate::inbound::SessionConfig;

    const START: &str = "HELO c.example\r\nMAIL FROM:<a@b.example>\r\n";

    fn after_mail(lines: &str) -> String {
        let out = transcript(format!("{START}{lines}").as_bytes());
        out.split_once("250 2.1.0 Ok\r\n").unwrap().1.to_owned()
    }

    #[test]
    fn ok() {
        assert_eq!(after_mail("RCPT TO:<c@d.example>\r\n"), "250 2.1.5 Ok\r\n");
        assert_eq!(after_mail("rcpt to: <c@d.example>\r\n"), "250 2.1.5 Ok\r\n");
        assert_eq!(
            after_mail("RCPT TO:<\"c d\"@[192.0.2.1]>\r\n"),
            "250 2.1.5 Ok\r\n"
        );
    }

    #[test]
    fn recipients_are_recorded() {
        let mut driver = Driver::new(true);
        driver.feed(
            format!(
                "{START}RCPT TO:<C@D.Example>\r\nRCPT TO:<@r.example:e@F.example>\r\nDATA\r\n.\r\n"
            )
            .as_bytes(),
        );
        let message = &driver.messages[0];
        let addresses: Vec<_> = message
            .recipients
            .iter()
            .map(|r| r.address.as_slice())
            .collect();
        assert_eq!(addresses, [b"C@D.Example".as_slice(), b"e@F.example"]);
        let domains: Vec<_> = message
            .recipients
            .iter()
            .map(|r| r.domain.as_str())
            .collect();
        assert_eq!(domains, ["d.example", "f.example"]);
    }

    #[test]
    fn needs_mail() {
        assert_eq!(
            transcript(b"HELO c.example\r\nRCPT TO:<c@d.example>\r\n"),
            "250 mx.example.net\r\n503 5.5.1 Error: need MAIL command\r\n"
        );
    }

    /// Like Postfix's default, a bare address is taken as bracketed.
    #[test]
    fn a_bare_address_is_accepted() {
        assert_eq!(after_mail("RCPT TO:c@d.example\r\n"), "250 2.1.5 Ok\r\n");
    }

    #[test]
    fn bad_paths() {
        for line in [
            "RCPT TO:<>\r\n",
            "RCPT TO:c@d.example>\r\n",
            "RCPT TO:<c@>\r\n",
            "RCPT TO:<c@d.example> \"\r\n",
        ] {
            let out = after_mail(line);
            assert!(out.starts_with("501 "), "{line}: {out}");
        }
        assert_eq!(
            after_mail("RCPT TO:<>\r\n"),
            "501 5.1.3 Bad recipient address syntax\r\n"
        );
        assert_eq!(
            after_mail("RCPT <c@d.example>\r\n"),
            "501 5.5.4 Syntax: RCPT TO:<address>\r\n"
        );
        assert_eq!(
            after_mail("RCPT TO:<c@d.example> NOTIFY=NEVER\r\n"),
            "555 5.5.4 Unsupported option: NOTIFY\r\n"
        );
        assert_eq!(
            after_mail("RCPT TO:<Postmaster>\r\n"),
            "550 5.1.1 <Postmaster>: Recipient address rejected: no local mailboxes\r\n"
        );
    }

    #[test]
    fn utf8() {
        assert_eq!(
            after_mail("RCPT TO:<jös@d.example>\r\n"),
            "553 5.6.7 Error: non-ASCII address requires SMTPUTF8\r\n"
        );
        let out = transcript(
            "EHLO c.example\r\nMAIL FROM:<a@b.example> SMTPUTF8\r\nRCPT TO:<jös@dé.example>\r\n"
                .as_bytes(),
        );
        assert!(out.ends_with("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"), "{out}");
    }

    #[test]
    fn suppressed_recipients_are_refused_without_counting_as_errors() {
        let mut config = SessionConfig::new("mx.example.net");
        config.limits.errors_per_session_max = 2;
        let out = transcript_with(
            config,
            format!(
                "{START}RCPT TO:<rejected@d.example>\r\nRCPT TO:<rejected@d.example>\r\n\
                 RCPT TO:<shop-only@d.example>\r\nRCPT TO:<c@d.example>\r\n"
            )
            .as_bytes(),
        );
        let reply = "550 5.7.1 <rejected@d.example>: Recipient address rejected: suppressed\r\n";
        assert!(
            out.ends_with(&format!(
                "250 2.1.0 Ok\r\n{reply}{reply}250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
            )),
            "{out}"
        );
        let shop = transcript(
            b"HELO c.example\r\nMAIL FROM:<a@shop.example>\r\nRCPT TO:<shop-only@d.example>\r\n",
        );
        assert!(shop.ends_with("rejected: suppressed\r\n"), "{shop}");
    }

    #[test]
    fn dropped_recipients_are_accepted_and_left_out() {
        let mut driver = Driver::new(true);
        driver.feed(
            format!("{START}RCPT TO:<dropped@d.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n.\r\n")
                .as_bytes(),
        );
        assert_eq!(driver.messages.len(), 1);
        let addresses: Vec<_> = driver.messages[0]
            .recipients
            .iter()
            .map(|r| r.address.as_slice())
            .collect();
        assert_eq!(addresses, [b"c@d.example".as_slice()]);

        // With every recipient dropped, the message is answered as
        // queued and never handed over.
        let mut driver = Driver::new(true);
        driver.feed(format!("{START}RCPT TO:<dropped@d.example>\r\nDATA\r\n.\r\n").as_bytes());
        assert!(driver.messages.is_empty());
        let out = driver.output();
        assert!(out.contains("250 2.1.5 Ok\r\n354 "), "{out}");
        assert!(out.contains("250 2.0.0 Ok: queued as "), "{out}");
    }

    #[test]
    fn relay_denied() {
        let mut driver = Driver::new(false);
        driver.feed(format!("{START}RCPT TO:<c@d.example>\r\n").as_bytes());
        assert!(driver
            .output()
            .ends_with("250 2.1.0 Ok\r\n554 5.7.1 <c@d.example>: Relay access denied\r\n"));
    }

    #[test]
    fn too_many_recipients() {
        let mut config = SessionConfig::new("mx.example.net");
        config.limits.recipients_per_message_max = 2;
        let out = transcript_with(
            config,
            format!(
                "{START}RCPT TO:<a@d.example>\r\nRCPT TO:<b@d.example>\r\nRCPT TO:<c@d.example>\r\n\
                 RCPT TO:<bad>\r\n"
            )
            .as_bytes(),
        );
        assert!(out.ends_with(
            "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Error: too many recipients\r\n\
             501 5.1.3 Bad recipient address syntax\r\n"
        ));
    }
}
