//! A simulated next hop: the server side of SMTP as bytes, scripted by
//! the simulation's seed. It reads what baton's real client
//! (`baton::outbound::Client`) writes and answers each command: the
//! greeting, EHLO with PIPELINING, `250`/`451`/`550`/`421` per RCPT as
//! told, `354` to DATA, and at the end of data `250`, or a `451` or a
//! `421` for the whole message. After a `421` it says nothing more: the
//! service is closing (RFC 5321 §3.8). The message body never crosses (the shard writes it from the
//! spool); the client's `.` line ends it.

/// What the next hop answers to one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Defer,
    Refuse,
    /// Gmail's "slow down": `450 4.7.28`, a deferral the shaping rules
    /// act on.
    Throttle,
    /// `421`: the server is closing the connection, whatever was asked.
    Closing,
}

/// The conversation as the next hop sees it.
#[derive(Default)]
pub struct Hop {
    /// A smart host's AUTH: `None` when it asks for none.
    pub auth: Option<HopAuth>,
    /// MAIL came before AUTH where AUTH is required: the client is wrong
    /// (the simulation's checker reports it).
    pub unauthenticated_mail: bool,
    line: Vec<u8>,
    /// The verdicts of this transaction's recipients, in RCPT order.
    rcpts: Vec<Verdict>,
    /// The last transaction's: whether its data was accepted, with the
    /// verdict of each recipient (what was delivered).
    pub done: Option<(bool, Vec<Verdict>)>,
    /// The end of data gets a `421` (the message not taken), set by the
    /// simulation before the client's bytes arrive.
    pub close_at_dot: bool,
    /// A `421` went out: nothing more is answered.
    pub closed: bool,
}

pub const GREETING: &[u8] = b"220 hop.sim ESMTP\r\n";

/// What a next hop that requires AUTH expects, and whether it refuses.
pub struct HopAuth {
    /// The `AUTH PLAIN` line it accepts, base64 and all.
    pub expected: String,
    /// Answer `535` even to the right credentials (an expired password).
    pub refuse: bool,
    pub done: bool,
}

impl Hop {
    /// Reads the client's bytes; returns the replies. `rcpt` decides each
    /// recipient, `data` whether the end of data is accepted.
    pub fn input(
        &mut self,
        bytes: &[u8],
        rcpt: &mut dyn FnMut() -> Verdict,
        data: &mut dyn FnMut() -> bool,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut bytes = bytes;
        while !bytes.is_empty() && !self.closed {
            // A line at a time: up to its LF, or what there is of it.
            let end = bytes.iter().position(|&b| b == b'\n').map(|i| i + 1);
            let (now, rest) = bytes.split_at(end.unwrap_or(bytes.len()));
            self.line.extend_from_slice(now);
            bytes = rest;
            if !self.line.ends_with(b"\r\n") {
                continue;
            }
            let mut verb = [0u8; 4];
            for (v, c) in verb.iter_mut().zip(&self.line) {
                *v = c.to_ascii_uppercase();
            }
            let dot = self.line == b".\r\n";
            let text = if &verb == b"AUTH" {
                String::from_utf8_lossy(&self.line).into_owned()
            } else {
                String::new()
            };
            self.line.clear();
            let reply: &[u8] = match &verb {
                b"EHLO" if self.auth.is_some() => {
                    b"250-hop.sim\r\n250-PIPELINING\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"
                }
                b"EHLO" => b"250-hop.sim\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                b"AUTH" => match &mut self.auth {
                    Some(auth) if !auth.refuse && text.trim_end() == auth.expected => {
                        auth.done = true;
                        b"235 2.7.0 authenticated\r\n"
                    }
                    Some(_) => b"535 5.7.8 authentication credentials invalid\r\n",
                    None => b"503 5.5.1 no AUTH here\r\n",
                },
                b"MAIL" if self.auth.as_ref().is_some_and(|a| !a.done) => {
                    self.unauthenticated_mail = true;
                    b"530 5.7.0 authentication required\r\n"
                }
                b"HELO" | b"RSET" | b"NOOP" => b"250 ok\r\n",
                b"MAIL" => {
                    self.rcpts.clear();
                    b"250 2.1.0 ok\r\n"
                }
                b"RCPT" => {
                    let verdict = rcpt();
                    self.rcpts.push(verdict);
                    match verdict {
                        Verdict::Accept => b"250 2.1.5 ok\r\n",
                        Verdict::Defer => b"451 4.3.0 try later\r\n",
                        Verdict::Refuse => b"550 5.1.1 no such user\r\n",
                        Verdict::Throttle => b"450 4.7.28 unusual rate of mail, slow down\r\n",
                        Verdict::Closing => {
                            self.closed = true;
                            self.rcpts.clear();
                            b"421 4.7.0 too many connections, closing\r\n"
                        }
                    }
                }
                b"DATA" if self.rcpts.contains(&Verdict::Accept) => b"354 go on\r\n",
                b"DATA" => b"554 5.5.1 no valid recipients\r\n",
                b"QUIT" => b"221 2.0.0 bye\r\n",
                _ if dot && self.close_at_dot => {
                    self.closed = true;
                    self.done = Some((false, std::mem::take(&mut self.rcpts)));
                    b"421 4.4.2 closing for now\r\n"
                }
                _ if dot => {
                    let accepted = data();
                    self.done = Some((accepted, std::mem::take(&mut self.rcpts)));
                    if accepted {
                        b"250 2.0.0 queued\r\n"
                    } else {
                        b"451 4.3.0 data refused for now\r\n"
                    }
                }
                _ => b"500 5.5.2 what\r\n",
            };
            out.extend_from_slice(reply);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipelined_transaction_gets_its_replies_in_order() {
        let mut hop = Hop::default();
        let mut verdicts = [Verdict::Accept, Verdict::Refuse].into_iter();
        let out = hop.input(
            b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n.\r\n",
            &mut || verdicts.next().unwrap(),
            &mut || true,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go on\r\n250 2.0.0 queued\r\n"
        );
        assert_eq!(
            hop.done,
            Some((true, vec![Verdict::Accept, Verdict::Refuse]))
        );
    }
}
