//! DATA (RFC 5321 §4.1.1.4), and the end of every message, DATA's or
//! BDAT's.

use std::mem;

use baton_spool::QueueId;

use super::budget::Held;
use super::replies;
use super::session::{DataBody, Session, State};
use super::transaction::Transaction;
use super::{AcceptedRecipient, ReceivedMessage, SessionContext};
use crate::auth::verify::Identity;
use crate::smtp::data::{Body, DataReader};

impl Session {
    pub(super) fn data(&mut self, args: &[u8], ctx: &mut dyn SessionContext) {
        let Some(transaction) = &self.transaction else {
            return self.refuse(replies::NEED_MAIL);
        };
        if !args.is_empty() {
            return self.refuse(replies::DATA_SYNTAX);
        }
        // RFC 3030 §2: a message is sent with DATA or with BDAT, not both.
        if transaction.chunks.is_some() {
            return self.refuse(replies::DATA_AFTER_BDAT);
        }
        if transaction.has_no_recipients() {
            return self.refuse(replies::NO_VALID_RECIPIENTS);
        }
        let queue_id = ctx.next_queue_id();
        let wire = self.received_header(queue_id, ctx.now_unix_secs());
        let reader = DataReader::new(self.config.body_limits(), wire);
        let mut body = DataBody {
            queue_id,
            reader,
            held: Held::new(&self.config.data_budget),
        };
        body.account();
        self.state = State::Data(Box::new(body));
        self.reply(replies::START_DATA);
    }

    /// The DATA reader found the final `.` CRLF.
    pub(super) fn end_of_data(&mut self, ctx: &mut dyn SessionContext) {
        let State::Data(data) = mem::replace(&mut self.state, State::Command) else {
            return;
        };
        let DataBody {
            queue_id,
            reader,
            held,
        } = *data;
        let body = reader.finish();
        if let Some(transaction) = self.transaction.take() {
            self.message_complete(transaction, queue_id, body, held, ctx);
        }
    }

    /// The transaction is over (§4.1.1.4: whatever the outcome, the next
    /// message starts with MAIL). A sound message waits for the spool.
    pub(super) fn message_complete(
        &mut self,
        transaction: Transaction,
        queue_id: QueueId,
        body: Body,
        held: Held,
        ctx: &mut dyn SessionContext,
    ) {
        if let Some(violation) = body.violation {
            return self.refuse(replies::body_violation(violation));
        }
        if body.discarded {
            // The server's data budget had no room for it: not the
            // client's error, and worth another try later.
            return self.reply(replies::DATA_IN_FLIGHT_FULL);
        }
        if received_headers(&body.wire) > self.config.limits.received_headers_max {
            return self.refuse(replies::TOO_MANY_HOPS);
        }
        if let Some(identity) = self.identity() {
            let allowed = from_domains(&body.wire)
                .iter()
                .all(|domain| identity.policy.allows_sender_domain(domain));
            if !allowed {
                return self.refuse(replies::FROM_NOT_ALLOWED);
            }
        }
        if transaction.recipients.is_empty() {
            // Every recipient was suppressed and dropped: the client is
            // told what it would have been, and nothing is stored.
            return self.reply(&replies::queued(queue_id));
        }
        // Clients baton trusts get their headers fixed up and their mail
        // signed for its From: domain; others neither.
        let trusted = self.relay_allowed || self.identity().is_some();
        let mut wire = body.wire;
        let (sign_domain, dkim) = if trusted {
            let identity = self.identity().map(|i| &**i);
            let message = Trusted {
                queue_id,
                reverse_path: &transaction.reverse_path,
                recipients: &transaction.recipients,
                identity,
                hostname: &self.config.hostname,
            };
            message.finish(&mut wire, ctx)
        } else {
            (None, None)
        };
        let message = ReceivedMessage {
            queue_id,
            reverse_path: transaction.reverse_path,
            mail_params: transaction.mail_params,
            recipients: transaction.recipients,
            body: wire,
            sign_domain,
            dkim,
            peer: self.peer,
            helo: self.helo_name().unwrap_or_default().to_owned(),
            tls: self.tls_info().cloned(),
            identity: self.identity().cloned(),
        };
        self.state = State::AwaitingStore(Some(message));
        self.message_held = Some(held);
    }
}

/// A message from a client baton trusts (an authenticated user, `[relay]
/// networks`, an HTTP injector), on its way to the spool: SMTP's and HTTP
/// injection's one way to finish it.
pub(crate) struct Trusted<'a> {
    pub queue_id: QueueId,
    pub reverse_path: &'a [u8],
    pub recipients: &'a [AcceptedRecipient],
    pub identity: Option<&'a Identity>,
    pub hostname: &'a str,
}

impl Trusted<'_> {
    /// Fixes up `wire`'s header (`Message-ID`, `Date`, unsubscribe links)
    /// and picks the domain that signs it: `(sign_domain, dkim)`, the
    /// latter saying why there is no signature when the user may not sign
    /// for its `From:` domain.
    pub(crate) fn finish(
        &self,
        wire: &mut Vec<u8>,
        ctx: &mut dyn SessionContext,
    ) -> (Option<String>, Option<String>) {
        let queue_id = self.queue_id;
        crate::sign::fixups::fix_up(wire, queue_id, ctx.now_unix_secs(), self.hostname);
        // Links only in mail to one recipient: a link names whom it
        // unsubscribes, and one message carries one link.
        if let [recipient] = self.recipients {
            let sender = self.reverse_path;
            let sender_domain = sender
                .iter()
                .rposition(|&b| b == b'@')
                .map_or(&[][..], |at| &sender[at + 1..]);
            if let Some(fields) =
                ctx.unsubscribe_fields(&recipient.address, sender_domain, self.identity, queue_id)
            {
                crate::sign::fixups::add_unsubscribe(wire, &fields);
            }
        }
        let domain = from_domains(wire).into_iter().next();
        match (domain, self.identity) {
            (Some(domain), Some(identity)) if !identity.policy.allows_signing_for(&domain) => {
                let why = format!("none: user {} may not sign for {domain}", identity.name);
                (None, Some(why))
            }
            (domain, _) => (domain, None),
        }
    }
}

/// `Received:` fields in the header section of a message in wire form
/// (each one a line that starts the field; folded lines continue it).
pub(crate) fn received_headers(wire: &[u8]) -> usize {
    const NAME: &[u8] = b"received:";
    let mut count = 0;
    let mut rest = wire;
    while let Some(lf) = memchr::memchr(b'\n', rest) {
        let line = &rest[..lf];
        if line == b"\r" || line.is_empty() {
            break; // the end of the header section
        }
        if line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            count += 1;
        }
        rest = &rest[lf + 1..];
    }
    count
}

/// Lines of `From:` fields this long at most are read; a longer one is
/// judged by what it holds so far (RFC 5322 allows 998 octets a line).
const FROM_FIELD_BYTES_MAX: usize = 16 * 1024;

/// The domains of the mailboxes in the message's `From:` fields (RFC 5322
/// §3.6.2), lowercased: what an authenticated user's `sender_domains`
/// must allow. Display names and comments are skipped, so a name such as
/// `"ceo@bank.example" <x@allowed.example>` is judged by its address.
pub(crate) fn from_domains(wire: &[u8]) -> Vec<String> {
    let mut domains = Vec::new();
    let mut field: Option<Vec<u8>> = None;
    let mut rest = wire;
    let finish = |field: Option<Vec<u8>>, domains: &mut Vec<String>| {
        if let Some(value) = field {
            domains.extend(mailbox_domains(&value));
        }
    };
    while let Some(lf) = memchr::memchr(b'\n', rest) {
        let line = &rest[..lf];
        rest = &rest[lf + 1..];
        if line == b"\r" || line.is_empty() {
            break;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            if let Some(value) = field.as_mut() {
                if value.len() < FROM_FIELD_BYTES_MAX {
                    value.extend_from_slice(line);
                }
            }
            continue;
        }
        finish(field.take(), &mut domains);
        if line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"from:") {
            field = Some(line[5..line.len().min(FROM_FIELD_BYTES_MAX)].to_vec());
        }
    }
    finish(field, &mut domains);
    domains
}

/// The domain after each `@` of a header value, outside quoted strings and
/// comments.
fn mailbox_domains(value: &[u8]) -> Vec<String> {
    let mut plain = Vec::with_capacity(value.len());
    let (mut quoted, mut comment, mut escaped) = (false, 0u32, false);
    for &b in value {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if quoted || comment > 0 => escaped = true,
            b'"' if comment == 0 => quoted = !quoted,
            b'(' if !quoted => comment += 1,
            b')' if !quoted && comment > 0 => comment -= 1,
            _ if quoted || comment > 0 => {}
            _ => plain.push(b),
        }
    }
    plain
        .split(|&b| b == b'@')
        .skip(1)
        .map(|after| {
            let end = after
                .iter()
                .position(|b| matches!(b, b'>' | b',' | b';' | b' ' | b'\t' | b'<'))
                .unwrap_or(after.len());
            String::from_utf8_lossy(&after[..end]).to_ascii_lowercase()
        })
        .filter(|domain| !domain.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::inbound::testing::{
        fixups, received, transcript, Driver, ENVELOPE, ENVELOPE_REPLIES,
    };

    #[test]
    fn trusted_clients_get_fix_ups_and_a_signing_domain() {
        let body = "From: A <a@Signer.Test>\r\nSubject: s\r\n\r\nx\r\n.\r\n";
        let mut trusted = Driver::new(true);
        trusted.feed(format!("{ENVELOPE}DATA\r\n{body}").as_bytes());
        let message = &trusted.messages[0];
        assert_eq!(message.sign_domain.as_deref(), Some("signer.test"));
        let text = String::from_utf8_lossy(&message.body);
        assert!(
            text.contains("\r\nDate: ") && text.contains("\r\nMessage-ID: <"),
            "{text}"
        );
    }

    #[test]
    fn from_domains_skip_names_and_comments_and_follow_folding() {
        let wire = b"Received: x\r\nFrom: \"ceo@bank.example\" <Bob@Allowed.Example>,\r\n (c@d.example) ann@two.example\r\nSubject: s\r\n\r\nFrom: body@not.example\r\n";
        assert_eq!(
            super::from_domains(wire),
            vec!["allowed.example".to_owned(), "two.example".to_owned()]
        );
    }
    use crate::inbound::{BareLineEndings, Phase, SessionConfig, StoreError};
    use baton_spool::QueueId;

    #[test]
    fn one_message() {
        let mut driver = Driver::new(true);
        driver.feed(
            format!("{ENVELOPE}DATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n").as_bytes(),
        );
        assert_eq!(
            driver.output(),
            format!(
                "220 mx.example.net ESMTP baton\r\n{ENVELOPE_REPLIES}\
                 354 End data with <CR><LF>.<CR><LF>\r\n\
                 250 2.0.0 Ok: queued as 0000000000000001\r\n221 2.0.0 Bye\r\n"
            )
        );
        let message = &driver.messages[0];
        assert_eq!(message.queue_id, QueueId(1));
        assert_eq!(message.reverse_path, b"a@b.example");
        assert_eq!(message.mail_params, b"");
        assert_eq!(message.helo, "c.example");
        assert_eq!(message.peer, "192.0.2.7:40000".parse().unwrap());
        let expected = format!(
            "{}{}Subject: hi\r\n\r\n..dot\r\n",
            received("ESMTP", 1),
            fixups(1)
        );
        assert_eq!(String::from_utf8_lossy(&message.body), expected);
    }

    /// A mail loop (RFC 5321 §6.3): past `received_headers_max`
    /// `Received:` fields (baton's own counted), the message is refused;
    /// a folded field counts once, and `Received:` in the body not at all.
    #[test]
    fn too_many_hops_is_a_loop() {
        let mut config = SessionConfig::new("mx.example.net");
        config.limits.received_headers_max = 3;
        let hops = |n: usize| "Received: from a\r\n\tby b; x\r\n".repeat(n);
        let mut driver = Driver::with_config(config.clone(), true);
        driver.feed(
            format!(
                "{ENVELOPE}DATA\r\n{}Subject: x\r\n\r\nReceived: body\r\n.\r\n",
                hops(2)
            )
            .as_bytes(),
        );
        assert_eq!(driver.messages.len(), 1, "{}", driver.output());
        let mut driver = Driver::with_config(config, true);
        driver.feed(format!("{ENVELOPE}DATA\r\n{}\r\nx\r\n.\r\n", hops(3)).as_bytes());
        assert!(driver.messages.is_empty());
        assert!(
            driver
                .output()
                .ends_with("354 End data with <CR><LF>.<CR><LF>\r\n554 5.4.6 Too many hops\r\n"),
            "{}",
            driver.output()
        );
        assert_eq!(
            super::received_headers(b"RECEIVED: a\r\nreceived:b\r\n\r\nReceived: c\r\n"),
            2
        );
    }

    #[test]
    fn null_sender_and_params() {
        let mut driver = Driver::new(true);
        driver.feed(b"HELO c.example\r\nMAIL FROM:<>\r\nRCPT TO:<d@e.example>\r\nDATA\r\n.\r\n");
        let message = &driver.messages[0];
        assert_eq!(message.reverse_path, b"");
        assert_eq!(
            String::from_utf8_lossy(&message.body),
            received("SMTP", 1) + &fixups(1)
        );
        let mut driver = Driver::new(true);
        driver.feed(
            b"EHLO c.example\r\nMAIL FROM:<a@b.example> body=8bitmime SMTPUTF8 size=10\r\n\
              RCPT TO:<d@e.example>\r\nDATA\r\n.\r\n",
        );
        let message = &driver.messages[0];
        assert_eq!(message.mail_params, b"BODY=8bitmime SMTPUTF8 SIZE=10");
        assert!(String::from_utf8_lossy(&message.body).contains(" with UTF8SMTP id "));
    }

    #[test]
    fn sequence_errors() {
        assert_eq!(
            transcript(b"HELO c.example\r\nDATA\r\n"),
            "250 mx.example.net\r\n503 5.5.1 Error: need MAIL command\r\n"
        );
        let out =
            transcript(b"HELO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bad>\r\nDATA\r\n");
        assert!(
            out.ends_with("554 5.5.1 Error: no valid recipients\r\n"),
            "{out}"
        );
        let out = transcript(format!("{ENVELOPE}DATA x\r\n").as_bytes());
        assert!(out.ends_with("501 5.5.4 Syntax: DATA\r\n"), "{out}");
    }

    #[test]
    fn waits_for_the_spool() {
        let mut driver = Driver::new(true);
        driver.auto_store = false;
        driver.feed(format!("{ENVELOPE}DATA\r\nhi\r\n.\r\nNOOP\r\nQUIT\r\n").as_bytes());
        assert_eq!(driver.session.phase(), Phase::AwaitingStore);
        assert!(!driver.session.wants_input());
        let message = driver.session.take_message().unwrap();
        assert!(driver.session.take_message().is_none());
        // More input meanwhile is only buffered.
        driver.feed(b"NOOP\r\n");
        assert!(driver
            .output()
            .ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"));
        driver.session.stored(Ok(message.queue_id), &mut driver.ctx);
        driver.collect();
        assert!(driver.output().ends_with(
            "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 0000000000000001\r\n\
             250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"
        ));
        assert!(driver.session.is_closing());
    }

    #[test]
    fn store_errors() {
        for (error, reply) in [
            (
                StoreError::Full,
                "452 4.3.1 Insufficient system storage\r\n",
            ),
            (
                StoreError::Failed,
                "451 4.3.0 Error: queue file write error\r\n",
            ),
        ] {
            let mut driver = Driver::new(true);
            driver.auto_store = false;
            driver.feed(format!("{ENVELOPE}DATA\r\nhi\r\n.\r\nRSET\r\n").as_bytes());
            assert!(driver.session.take_message().is_some());
            driver.session.stored(Err(error), &mut driver.ctx);
            driver.collect();
            assert!(driver
                .output()
                .ends_with(&format!("{reply}250 2.0.0 Ok\r\n")));
        }
    }

    #[test]
    fn timeout_and_shutdown_wait_for_the_spool() {
        let mut driver = Driver::new(true);
        driver.auto_store = false;
        driver.feed(format!("{ENVELOPE}DATA\r\nhi\r\n.\r\nNOOP\r\n").as_bytes());
        driver.session.shut_down();
        assert!(!driver.session.is_closing());
        let message = driver.session.take_message().unwrap();
        driver.session.stored(Ok(message.queue_id), &mut driver.ctx);
        driver.collect();
        assert!(driver.output().ends_with(
            "250 2.0.0 Ok: queued as 0000000000000001\r\n\
             421 4.3.2 mx.example.net Service shutting down, closing transmission channel\r\n"
        ));
        assert!(driver.session.is_closing());
    }

    #[test]
    fn smuggling_is_refused() {
        for variant in ["\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\n", "\r\n.\r"] {
            let mut driver = Driver::new(true);
            driver.feed(
                format!(
                    "{ENVELOPE}DATA\r\nfirst{variant}MAIL FROM:<x@evil.example>\r\n\
                     RCPT TO:<victim@d.example>\r\nDATA\r\nforged\r\n.\r\nNOOP\r\n"
                )
                .as_bytes(),
            );
            assert!(driver.messages.is_empty(), "{variant:?}");
            assert!(
                driver.output().ends_with(
                    "354 End data with <CR><LF>.<CR><LF>\r\n\
                     550 5.6.11 Error: bare CR or LF in message; see SMTP smuggling\r\n\
                     250 2.0.0 Ok\r\n"
                ),
                "{variant:?}: {}",
                driver.output()
            );
        }
    }

    #[test]
    fn smuggling_is_defused_when_normalizing() {
        for variant in ["\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\n", "\r\n.\r"] {
            let mut config = SessionConfig::new("mx.example.net");
            config.bare_line_endings = BareLineEndings::Normalize;
            let mut driver = Driver::with_config(config, true);
            driver.feed(
                format!(
                    "{ENVELOPE}DATA\r\nfirst{variant}MAIL FROM:<x@evil.example>\r\n\
                     RCPT TO:<victim@d.example>\r\nDATA\r\nforged\r\n.\r\nNOOP\r\n"
                )
                .as_bytes(),
            );
            assert_eq!(driver.messages.len(), 1, "{variant:?}");
            let body = &driver.messages[0].body;
            assert!(!body.windows(5).any(|w| w == b"\r\n.\r\n"), "{variant:?}");
            assert!(driver.output().ends_with("250 2.0.0 Ok\r\n"));
        }
    }

    #[test]
    fn too_big_and_long_lines() {
        let mut config = SessionConfig::new("mx.example.net");
        config.limits.message_bytes_max = 20;
        config.limits.text_line_bytes_max = 10;
        let mut driver = Driver::with_config(config, true);
        driver.feed(
            format!(
                "{ENVELOPE}DATA\r\n0123456789\r\n0123456789\r\n.\r\n\
                 {ENVELOPE}DATA\r\n01234567890\r\n.\r\n{ENVELOPE}DATA\r\n01234567\r\n.\r\n"
            )
            .as_bytes(),
        );
        let out = driver.output();
        assert!(out.contains("354 End data with <CR><LF>.<CR><LF>\r\n552 5.3.4 Message size exceeds fixed maximum message size\r\n"), "{out}");
        assert!(
            out.contains(
                "354 End data with <CR><LF>.<CR><LF>\r\n500 5.5.2 Error: message line too long\r\n"
            ),
            "{out}"
        );
        assert!(
            out.ends_with("250 2.0.0 Ok: queued as 0000000000000003\r\n"),
            "{out}"
        );
        assert_eq!(driver.messages.len(), 1);
    }

    /// Past the server's data budget a message is read to its end and
    /// refused with 452 4.3.1; its memory comes back, the session goes on,
    /// and a message that fits is taken.
    #[test]
    fn data_budget_refuses_with_452() {
        let budget = crate::inbound::DataBudget::new(64 * 1024);
        let mut config = SessionConfig::new("mx.example.net");
        config.data_budget = budget.clone();
        let mut driver = Driver::with_config(config, true);
        driver.auto_store = false;
        let big = "x".repeat(998) + "\r\n";
        driver.feed(format!("{ENVELOPE}DATA\r\n").as_bytes());
        for _ in 0..100 {
            driver.feed(big.as_bytes());
        }
        assert_eq!(budget.held(), 0, "the body was dropped when it did not fit");
        driver.feed(b".\r\nRSET\r\n");
        assert!(
            driver.output().ends_with(
                "354 End data with <CR><LF>.<CR><LF>\r\n\
                 452 4.3.1 Insufficient system storage: too much mail in transit, try again later\r\n\
                 250 2.0.0 Ok\r\n"
            ),
            "{}",
            driver.output()
        );
        assert!(driver.messages.is_empty());
        driver.feed(format!("{ENVELOPE}DATA\r\nsmall\r\n.\r\n").as_bytes());
        assert!(budget.held() > 0, "held until the shard takes it");
        assert!(driver.session.take_message().is_some());
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn data_phase() {
        let mut driver = Driver::new(true);
        driver.feed(format!("{ENVELOPE}DATA\r\npart").as_bytes());
        assert_eq!(driver.session.phase(), Phase::Data);
        driver.feed(b"\r\n.\r\n");
        assert_eq!(driver.session.phase(), Phase::Command);
    }
}
