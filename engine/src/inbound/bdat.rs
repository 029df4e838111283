//! BDAT (RFC 3030, CHUNKING): `BDAT <size> [LAST]`, then exactly `size`
//! octets of raw content, which baton dot-stuffs into wire form as they
//! arrive.
//!
//! The octets are read even when the command is refused: they are content,
//! and reading them as commands would let a client smuggle commands in a
//! chunk. For the same reason a BDAT whose size cannot be read ends the
//! session: where its chunk ends is unknowable.

use std::mem;

use super::budget::Held;
use super::replies;
use super::session::{Chunk, ChunkRefusal, Session, State};
use super::transaction::ChunkedBody;
use super::SessionContext;
use crate::smtp::command;
use crate::smtp::data::DotStuffer;

impl Session {
    pub(super) fn bdat(&mut self, args: &[u8], ctx: &mut dyn SessionContext) {
        let Ok((size, last)) = command::parse_bdat(args) else {
            self.errors = self.errors.saturating_add(1);
            return self.close(replies::BDAT_SYNTAX);
        };
        let refusal = self.chunk_refusal(size);
        if refusal.is_none() {
            self.start_chunks(ctx);
        }
        self.state = State::Chunk(Chunk {
            remaining: size,
            size,
            last,
            refusal,
        });
    }

    /// Why this chunk cannot be taken, if it cannot.
    fn chunk_refusal(&self, size: u64) -> Option<ChunkRefusal> {
        let keep = |reply| {
            Some(ChunkRefusal {
                reply,
                ends_transaction: false,
            })
        };
        if !self.config.chunking {
            return keep(replies::NOT_IMPLEMENTED);
        }
        let Some(transaction) = &self.transaction else {
            return keep(replies::NEED_MAIL);
        };
        if transaction.has_no_recipients() {
            return keep(replies::NEED_RCPT);
        }
        // The size limit holds across chunks; a chunk that would break it
        // is refused before a byte of it is stored.
        let so_far = transaction
            .chunks
            .as_ref()
            .map_or(0, |body| body.stuffer.message_bytes());
        if so_far.saturating_add(size) > self.config.limits.message_bytes_max {
            return Some(ChunkRefusal {
                reply: replies::MESSAGE_TOO_BIG,
                ends_transaction: true,
            });
        }
        None
    }

    /// The first chunk takes the queue id and starts the body with the
    /// `Received:` header.
    fn start_chunks(&mut self, ctx: &mut dyn SessionContext) {
        if self.transaction.as_ref().is_none_or(|t| t.chunks.is_some()) {
            return;
        }
        let queue_id = ctx.next_queue_id();
        let wire = self.received_header(queue_id, ctx.now_unix_secs());
        let stuffer = DotStuffer::new(self.config.body_limits(), wire);
        let mut body = ChunkedBody {
            queue_id,
            stuffer,
            held: Held::new(&self.config.data_budget),
        };
        body.account();
        if let Some(transaction) = self.transaction.as_mut() {
            transaction.chunks = Some(body);
        }
    }

    /// Takes chunk octets from `rest`; returns how many.
    pub(super) fn chunk_step(&mut self, rest: &[u8]) -> usize {
        let State::Chunk(chunk) = &mut self.state else {
            return 0;
        };
        let take = usize::try_from(chunk.remaining).map_or(rest.len(), |r| r.min(rest.len()));
        chunk.remaining -= take as u64;
        if chunk.refusal.is_none() {
            let body = self.transaction.as_mut().and_then(|t| t.chunks.as_mut());
            if let Some(body) = body {
                body.stuffer.feed(&rest[..take]);
                body.account();
            }
        }
        take
    }

    /// All of a chunk's octets are in: reply, and on LAST finish the
    /// message.
    pub(super) fn chunk_complete(&mut self, ctx: &mut dyn SessionContext) {
        let State::Chunk(chunk) = mem::replace(&mut self.state, State::Command) else {
            return;
        };
        if let Some(refusal) = chunk.refusal {
            if refusal.ends_transaction {
                self.transaction = None;
            }
            return self.refuse(refusal.reply);
        }
        let violation = self
            .transaction
            .as_ref()
            .and_then(|t| t.chunks.as_ref())
            .and_then(|body| body.stuffer.violation());
        if let Some(violation) = violation {
            // The message cannot succeed: say so now rather than after
            // more chunks, and end the transaction.
            self.transaction = None;
            return self.refuse(replies::body_violation(violation));
        }
        let discarded = self
            .transaction
            .as_ref()
            .and_then(|t| t.chunks.as_ref())
            .is_some_and(|body| body.stuffer.is_discarded());
        if discarded {
            // No room in the server's data budget: the message is dropped
            // now (RFC 3030 §2: a failed chunk ends the transaction) and
            // its memory released; a later try may fit.
            self.transaction = None;
            return self.reply(replies::DATA_IN_FLIGHT_FULL);
        }
        if !chunk.last {
            return self.reply(&replies::chunk_received(chunk.size));
        }
        let Some(mut transaction) = self.transaction.take() else {
            return;
        };
        if let Some(body) = transaction.chunks.take() {
            let ChunkedBody {
                queue_id,
                stuffer,
                held,
            } = body;
            self.message_complete(transaction, queue_id, stuffer.finish(), held, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::inbound::testing::{
        fixups, received, transcript_with, Driver, ENVELOPE, ENVELOPE_REPLIES,
    };
    use crate::inbound::{Phase, SessionConfig};

    #[test]
    fn chunks_make_a_message() {
        let mut driver = Driver::new(true);
        driver.feed(format!("{ENVELOPE}BDAT 6\r\nhello\nBDAT 9 LAST\r\n.dot\r\nend").as_bytes());
        driver.feed(b"NOOP\r\n");
        assert_eq!(
            driver.output(),
            format!(
                "220 mx.example.net ESMTP baton\r\n{ENVELOPE_REPLIES}\
                 550 5.6.11 Error: bare CR or LF in message; see SMTP smuggling\r\n\
                 503 5.5.1 Error: need MAIL command\r\n250 2.0.0 Ok\r\n"
            )
        );
        let mut driver = Driver::new(true);
        driver.feed(format!("{ENVELOPE}BDAT 7\r\nhello\r\nBDAT 9 LAST\r\n.dot\r\nend").as_bytes());
        assert_eq!(
            driver.output(),
            format!(
                "220 mx.example.net ESMTP baton\r\n{ENVELOPE_REPLIES}\
                 250 2.0.0 7 octets received\r\n250 2.0.0 Ok: queued as 0000000000000001\r\n"
            )
        );
        let body = String::from_utf8_lossy(&driver.messages[0].body).into_owned();
        assert_eq!(
            body,
            format!(
                "{}{}hello\r\n..dot\r\nend\r\n",
                received("ESMTP", 1),
                fixups(1)
            )
        );
    }

    #[test]
    fn zero_last_and_split_input() {
        let mut driver = Driver::new(true);
        let input = format!("{ENVELOPE}BDAT 3\r\nabcBDAT 0 LAST\r\nQUIT\r\n");
        for byte in input.as_bytes() {
            driver.feed(std::slice::from_ref(byte));
        }
        assert!(driver.output().ends_with(
            "250 2.0.0 3 octets received\r\n250 2.0.0 Ok: queued as 0000000000000001\r\n221 2.0.0 Bye\r\n"
        ));
        let body = String::from_utf8_lossy(&driver.messages[0].body).into_owned();
        assert_eq!(
            body,
            format!("{}{}abc\r\n", received("ESMTP", 1), fixups(1))
        );
    }

    #[test]
    fn refused_chunks_are_consumed() {
        let mut driver = Driver::new(true);
        driver.feed(b"EHLO c.example\r\nBDAT 12\r\nRSET\r\nQUIT\r\nMAIL FROM:<a@b.example>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
        assert!(driver.output().ends_with(
            "250 CHUNKING\r\n503 5.5.1 Error: need MAIL command\r\n250 2.1.0 Ok\r\n\
             503 5.5.1 Error: need RCPT command\r\n250 2.0.0 Ok\r\n"
        ));
        assert!(!driver.session.is_closing());
    }

    #[test]
    fn data_after_bdat() {
        let mut driver = Driver::new(true);
        driver.feed(
            format!("{ENVELOPE}BDAT 2\r\nabDATA\r\nRCPT TO:<x@y.example>\r\nBDAT 0 LAST\r\n")
                .as_bytes(),
        );
        assert!(driver.output().ends_with(
            "250 2.0.0 2 octets received\r\n503 5.5.1 Error: DATA after BDAT\r\n\
             503 5.5.1 Error: RCPT after BDAT\r\n250 2.0.0 Ok: queued as 0000000000000001\r\n"
        ));
    }

    #[test]
    fn size_limit_across_chunks() {
        let mut config = SessionConfig::new("mx.example.net");
        config.limits.message_bytes_max = 10;
        let mut driver = Driver::with_config(config, true);
        driver.feed(
            format!("{ENVELOPE}BDAT 6\r\nabcd\r\nBDAT 6\r\nefgh\r\nBDAT 0 LAST\r\n").as_bytes(),
        );
        assert!(driver.output().ends_with(
            "250 2.0.0 6 octets received\r\n\
             552 5.3.4 Message size exceeds fixed maximum message size\r\n\
             503 5.5.1 Error: need MAIL command\r\n"
        ));
        // Stuffing can push a message over the limit too.
        let mut config = SessionConfig::new("mx.example.net");
        config.limits.message_bytes_max = 10;
        let mut driver = Driver::with_config(config, true);
        driver.feed(format!("{ENVELOPE}BDAT 10 LAST\r\n.a\r\n.b\r\n.c").as_bytes());
        assert!(driver
            .output()
            .ends_with("552 5.3.4 Message size exceeds fixed maximum message size\r\n"));
    }

    /// Past the server's data budget, the chunk is read to its end, then
    /// refused with 452 4.3.1, ending the transaction.
    #[test]
    fn data_budget_refuses_the_chunk() {
        let budget = crate::inbound::DataBudget::new(64 * 1024);
        let mut config = SessionConfig::new("mx.example.net");
        config.data_budget = budget.clone();
        let mut driver = Driver::with_config(config, true);
        let chunk = "y".repeat(98) + "\r\n";
        let chunk = chunk.repeat(1000);
        driver.feed(format!("{ENVELOPE}BDAT {}\r\n{chunk}", chunk.len()).as_bytes());
        assert_eq!(budget.held(), 0);
        driver.feed(b"BDAT 0 LAST\r\nRSET\r\n");
        assert!(
            driver.output().ends_with(
                "452 4.3.1 Insufficient system storage: too much mail in transit, try again later\r\n\
                 503 5.5.1 Error: need MAIL command\r\n250 2.0.0 Ok\r\n"
            ),
            "{}",
            driver.output()
        );
        driver.feed(format!("{ENVELOPE}BDAT 5 LAST\r\nsmall").as_bytes());
        assert_eq!(driver.messages.len(), 1);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn bad_size_closes() {
        let mut driver = Driver::new(true);
        driver.feed(format!("{ENVELOPE}BDAT ten\r\nNOOP\r\n").as_bytes());
        assert!(driver
            .output()
            .ends_with("501 5.5.4 Syntax: BDAT count [LAST]\r\n"));
        assert!(driver.session.is_closing());
    }

    #[test]
    fn chunking_disabled() {
        let mut config = SessionConfig::new("mx.example.net");
        config.chunking = false;
        let out = transcript_with(
            config,
            format!("{ENVELOPE}BDAT 4 LAST\r\nNOOPNOOP\r\n").as_bytes(),
        );
        assert!(
            out.ends_with("502 5.5.1 Error: command not implemented\r\n250 2.0.0 Ok\r\n"),
            "{out}"
        );
    }

    #[test]
    fn phase_between_chunks() {
        let mut driver = Driver::new(true);
        driver.feed(format!("{ENVELOPE}BDAT 2\r\na").as_bytes());
        assert_eq!(driver.session.phase(), Phase::Data);
        driver.feed(b"b");
        assert_eq!(driver.session.phase(), Phase::Data);
        driver.feed(b"RSET\r\n");
        assert_eq!(driver.session.phase(), Phase::Command);
    }
}
