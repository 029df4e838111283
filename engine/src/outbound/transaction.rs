//! One mail transaction (RFC 5321 §3.3): the commands to send and what
//! each recipient's fate is so far.

use std::collections::VecDeque;

use crate::smtp::address::{parse_forward_path, parse_reverse_path};
use crate::smtp::command::{parse_params, Command, Param};
use crate::smtp::reply::Reply;

use super::{Awaiting, Envelope, Event, Extensions, Outcome};

/// What the client does after a reply in the transaction.
#[derive(Debug)]
pub(super) enum Step {
    /// Wait for the next reply (after sending the next command, unpipelined).
    Continue,
    /// `354` with accepted recipients: the shard writes the body.
    BodyNeeded,
    /// `354` with nobody accepted (pipelined): send a lone `.`.
    EmptyBody,
    /// The transaction is over; `rset_needed` when the server may still
    /// hold some of it.
    Done { rset_needed: bool },
    /// A reply the command cannot get.
    Unexpected(Reply),
}

/// Where the body stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Body {
    NotYet,
    /// After `354`, until [`super::Client::body_sent`].
    Needed,
    /// The terminating `.` is out; `empty` when it ended an empty body
    /// (RFC 2920 §3.1), whose reply decides nothing.
    Ended {
        empty: bool,
    },
}

pub(super) struct Transaction {
    /// One per recipient; `None` while not final.
    outcomes: Vec<Option<Outcome>>,
    /// Recipients whose RCPT got `2xx`, awaiting the end of data.
    accepted: Vec<usize>,
    mail_refused: bool,
    pub(super) body: Body,
    pub(super) pipelined: bool,
    /// Commands not yet written, with the reply each awaits.
    unsent: VecDeque<(Awaiting, Vec<u8>)>,
}

impl Transaction {
    /// Builds the commands for `envelope`, or refuses it locally with one
    /// outcome per recipient.
    pub(super) fn start(
        envelope: &Envelope,
        extensions: &Extensions,
        rset_needed: bool,
    ) -> Result<Transaction, Vec<Outcome>> {
        let count = envelope.recipients.len();
        let refuse = |code, enhanced, text: &str| {
            vec![Outcome::Failed(Reply::new(code, Some(enhanced), text)); count]
        };
        let Ok(mut params) = parse_params(&envelope.mail_params) else {
            return Err(refuse(555, (5, 5, 4), "invalid MAIL parameters"));
        };
        let smtputf8 = params.iter().any(|param| param.keyword == "SMTPUTF8");
        if smtputf8 && !extensions.smtputf8 {
            // RFC 6531 §3.2: no downgrade; the message is not delivered.
            return Err(refuse(553, (5, 6, 7), "server does not offer SMTPUTF8"));
        }
        if extensions.size_max.is_some_and(|max| envelope.size > max) {
            // RFC 1870 §6.1: do not send what the server said it refuses.
            return Err(refuse(
                552,
                (5, 3, 4),
                "message larger than the server takes",
            ));
        }
        params.retain(|param| param.keyword != "SIZE");
        if extensions.size {
            params.push(Param {
                keyword: "SIZE".into(),
                value: Some(envelope.size.to_string()),
            });
        }
        let Some(path) = bracketed(&envelope.reverse_path, |input| {
            parse_reverse_path(input, smtputf8).ok()
        }) else {
            return Err(refuse(553, (5, 1, 7), "invalid sender address"));
        };
        let mut unsent = VecDeque::with_capacity(count + 2);
        unsent.push_back((Awaiting::Mail, Command::Mail { path, params }.to_bytes()));
        let mut outcomes = vec![None; count];
        for (index, recipient) in envelope.recipients.iter().enumerate() {
            match bracketed(recipient, |input| parse_forward_path(input, smtputf8).ok()) {
                Some(path) => {
                    let params = Vec::new();
                    let line = Command::Rcpt { path, params }.to_bytes();
                    unsent.push_back((Awaiting::Rcpt(index), line));
                }
                None => {
                    let reply = Reply::new(553, Some((5, 1, 3)), "invalid recipient address");
                    outcomes[index] = Some(Outcome::Failed(reply));
                }
            }
        }
        if unsent.len() == 1 {
            return Err(outcomes.into_iter().flatten().collect());
        }
        unsent.push_back((Awaiting::Data, Command::Data.to_bytes()));
        if rset_needed {
            unsent.push_front((Awaiting::Rset, Command::Rset.to_bytes()));
        }
        Ok(Transaction {
            outcomes,
            accepted: Vec::with_capacity(count),
            mail_refused: false,
            body: Body::NotYet,
            pipelined: extensions.pipelining,
            unsent,
        })
    }

    /// Every command at once (pipelined).
    pub(super) fn take_all(&mut self) -> impl Iterator<Item = (Awaiting, Vec<u8>)> + '_ {
        self.unsent.drain(..)
    }

    /// The next command, unpipelined; `Err` when the transaction is over
    /// instead (MAIL refused, or nobody accepted before DATA).
    pub(super) fn take_next(&mut self) -> Result<(Awaiting, Vec<u8>), Step> {
        if self.mail_refused {
            return Err(Step::Done { rset_needed: false });
        }
        let data_next = matches!(self.unsent.front(), Some((Awaiting::Data, _)));
        if data_next && self.accepted.is_empty() {
            // RFC 5321 §3.3: no DATA without a recipient; the server still
            // holds the MAIL, hence RSET.
            return Err(Step::Done { rset_needed: true });
        }
        self.unsent
            .pop_front()
            .ok_or(Step::Done { rset_needed: true })
    }

    pub(super) fn on_rset(&mut self, reply: Reply) -> Step {
        if reply.class() == 2 {
            Step::Continue
        } else {
            Step::Unexpected(reply)
        }
    }

    pub(super) fn on_mail(&mut self, reply: Reply) -> Step {
        match reply.class() {
            2 => Step::Continue,
            4 | 5 => {
                self.mail_refused = true;
                self.settle_open(&reply);
                if self.pipelined {
                    // The RCPT and DATA replies still come; they change nothing.
                    Step::Continue
                } else {
                    Step::Done { rset_needed: false }
                }
            }
            _ => Step::Unexpected(reply),
        }
    }

    pub(super) fn on_rcpt(
        &mut self,
        index: usize,
        reply: Reply,
        events: &mut VecDeque<Event>,
    ) -> Step {
        if self.mail_refused {
            return Step::Continue;
        }
        match reply.class() {
            2 => {
                self.accepted.push(index);
                // A planted bug, off unless the simulator's test turns it
                // on: the RCPT's `250` taken for the delivery.
                if baton_spool::plant::delivered_at_rcpt() {
                    self.outcomes[index] = Some(Outcome::Delivered(reply.clone()));
                }
            }
            4 => self.outcomes[index] = Some(Outcome::Deferred(reply.clone())),
            5 => self.outcomes[index] = Some(Outcome::Failed(reply.clone())),
            _ => return Step::Unexpected(reply),
        }
        events.push_back(Event::RecipientResult { index, reply });
        Step::Continue
    }

    pub(super) fn on_data(&mut self, reply: Reply) -> Step {
        match reply.class() {
            3 if reply.code == 354 => {
                if self.mail_refused || self.accepted.is_empty() {
                    self.body = Body::Ended { empty: true };
                    Step::EmptyBody
                } else {
                    self.body = Body::Needed;
                    Step::BodyNeeded
                }
            }
            4 | 5 => {
                self.settle_open(&reply);
                Step::Done { rset_needed: true }
            }
            _ => Step::Unexpected(reply),
        }
    }

    pub(super) fn on_dot(&mut self, reply: Reply) -> Step {
        if self.body == (Body::Ended { empty: true }) {
            return Step::Done { rset_needed: false };
        }
        match reply.class() {
            2 | 4 | 5 => {
                self.settle_open(&reply);
                Step::Done { rset_needed: false }
            }
            _ => Step::Unexpected(reply),
        }
    }

    /// Gives `reply` to every recipient not yet final, by its class.
    fn settle_open(&mut self, reply: &Reply) {
        for outcome in self.outcomes.iter_mut().filter(|outcome| outcome.is_none()) {
            *outcome = Some(match reply.class() {
                2 => Outcome::Delivered(reply.clone()),
                5 => Outcome::Failed(reply.clone()),
                _ => Outcome::Deferred(reply.clone()),
            });
        }
    }

    /// The outcomes, deferring with `reply` whoever is not final yet.
    pub(super) fn into_outcomes(self, reply: &Reply) -> Vec<Outcome> {
        self.outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| Outcome::Deferred(reply.clone())))
            .collect()
    }
}

/// Parses `<address>` with `parse`, which must take all of it.
fn bracketed<P>(address: &[u8], parse: impl Fn(&[u8]) -> Option<(P, usize)>) -> Option<P> {
    let mut input = Vec::with_capacity(address.len() + 2);
    input.push(b'<');
    input.extend_from_slice(address);
    input.push(b'>');
    parse(&input).and_then(|(path, used)| (used == input.len()).then_some(path))
}
