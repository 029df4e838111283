//! The sink's scripted misbehaviour: delays, failures drawn with a
//! probability, and per-recipient outcomes chosen by the local part, so
//! that a test can ask for exactly the failure it wants:
//!
//! | local part starts with | the sink                                        |
//! |------------------------|-------------------------------------------------|
//! | `tempfail-`            | answers RCPT with 451 4.2.0                     |
//! | `bounce-`              | answers RCPT with 550 5.1.1                     |
//! | `slow-`                | answers RCPT after `--slow-delay`               |
//! | `drop-`                | closes the connection instead of answering RCPT |
//! | `throttle-`            | answers RCPT with Gmail's 421 4.7.28, closes    |
//! | `datafail-`            | answers the message's content with 451 4.3.0   |
//! | `databounce-`          | answers the message's content with 554 5.6.0    |

use std::time::Duration;

use crate::rng::Rng;

/// What the sink does wrong, and when.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// Before every reply but the one to the message content.
    pub reply_delay: Option<Duration>,
    /// Before the reply to the message content.
    pub data_delay: Option<Duration>,
    /// For `slow-` recipients.
    pub slow_delay: Duration,
    pub connect_tempfail: f64,
    pub connect_reject: f64,
    pub rcpt_tempfail: f64,
    pub rcpt_reject: f64,
    pub message_tempfail: f64,
    pub message_reject: f64,
    /// Closing the connection after the content, before its reply.
    pub disconnect: f64,
    /// Closing the connection, silently, after the reply to this many
    /// messages on it.
    pub close_after: Option<u64>,
}

/// How to greet a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectVerdict {
    Accept,
    /// 421, then close.
    Tempfail,
    /// 554, then close.
    Reject,
}

/// How to answer one RCPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RcptVerdict {
    Accept,
    Tempfail,
    Reject,
    /// Accept, after a delay.
    Slow(Duration),
    /// Close without a reply.
    Drop,
    /// `421 4.7.28` (Gmail's "slow down"), then close.
    Throttle,
}

/// How to answer a message's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageVerdict {
    Accept,
    Tempfail,
    Reject,
    /// Close without a reply.
    Drop,
}

/// A recipient's own part of the script, from its local part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalScript {
    None,
    Rcpt(RcptVerdict),
    Message(MessageVerdict),
}

impl Script {
    pub fn connect(&self, rng: &mut Rng) -> ConnectVerdict {
        if rng.chance(self.connect_tempfail) {
            ConnectVerdict::Tempfail
        } else if rng.chance(self.connect_reject) {
            ConnectVerdict::Reject
        } else {
            ConnectVerdict::Accept
        }
    }

    /// The script a local part asks for.
    pub fn local(&self, local: &str) -> LocalScript {
        let starts = |prefix: &str| {
            local.len() >= prefix.len() && local[..prefix.len()].eq_ignore_ascii_case(prefix)
        };
        if starts("tempfail-") {
            LocalScript::Rcpt(RcptVerdict::Tempfail)
        } else if starts("bounce-") {
            LocalScript::Rcpt(RcptVerdict::Reject)
        } else if starts("slow-") {
            LocalScript::Rcpt(RcptVerdict::Slow(self.slow_delay))
        } else if starts("drop-") {
            LocalScript::Rcpt(RcptVerdict::Drop)
        } else if starts("throttle-") {
            LocalScript::Rcpt(RcptVerdict::Throttle)
        } else if starts("datafail-") {
            LocalScript::Message(MessageVerdict::Tempfail)
        } else if starts("databounce-") {
            LocalScript::Message(MessageVerdict::Reject)
        } else {
            LocalScript::None
        }
    }

    /// The local part's verdict, else one drawn with the probabilities.
    pub fn rcpt(&self, local: &str, rng: &mut Rng) -> RcptVerdict {
        if let LocalScript::Rcpt(verdict) = self.local(local) {
            return verdict;
        }
        if rng.chance(self.rcpt_tempfail) {
            RcptVerdict::Tempfail
        } else if rng.chance(self.rcpt_reject) {
            RcptVerdict::Reject
        } else {
            RcptVerdict::Accept
        }
    }

    /// `scripted`: what a recipient's local part asked for, if anything.
    pub fn message(&self, scripted: Option<MessageVerdict>, rng: &mut Rng) -> MessageVerdict {
        if let Some(verdict) = scripted {
            return verdict;
        }
        if rng.chance(self.disconnect) {
            MessageVerdict::Drop
        } else if rng.chance(self.message_tempfail) {
            MessageVerdict::Tempfail
        } else if rng.chance(self.message_reject) {
            MessageVerdict::Reject
        } else {
            MessageVerdict::Accept
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_parts_choose_outcomes() {
        let script = Script {
            slow_delay: Duration::from_millis(5),
            ..Script::default()
        };
        let mut rng = Rng::new(1);
        assert_eq!(script.rcpt("tempfail-1", &mut rng), RcptVerdict::Tempfail);
        assert_eq!(script.rcpt("Bounce-x", &mut rng), RcptVerdict::Reject);
        assert_eq!(
            script.rcpt("slow-", &mut rng),
            RcptVerdict::Slow(Duration::from_millis(5))
        );
        assert_eq!(script.rcpt("drop-me", &mut rng), RcptVerdict::Drop);
        assert_eq!(script.rcpt("user1", &mut rng), RcptVerdict::Accept);
        assert_eq!(script.rcpt("datafail-1", &mut rng), RcptVerdict::Accept);
        assert_eq!(
            script.local("databounce-2"),
            LocalScript::Message(MessageVerdict::Reject)
        );
        assert_eq!(script.message(None, &mut rng), MessageVerdict::Accept);
    }

    #[test]
    fn probabilities_apply() {
        let script = Script {
            rcpt_reject: 1.0,
            message_tempfail: 1.0,
            connect_tempfail: 1.0,
            ..Script::default()
        };
        let mut rng = Rng::new(2);
        assert_eq!(script.rcpt("user", &mut rng), RcptVerdict::Reject);
        assert_eq!(script.message(None, &mut rng), MessageVerdict::Tempfail);
        assert_eq!(script.connect(&mut rng), ConnectVerdict::Tempfail);
    }
}
