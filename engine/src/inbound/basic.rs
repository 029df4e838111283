//! The verbs outside the transaction's path: RSET, NOOP, QUIT, VRFY,
//! EXPN, HELP (RFC 5321 §4.1.1.5 to §4.1.1.10).

use super::replies;
use super::session::Session;

impl Session {
    /// §4.1.1.5: aborts the transaction (a BDAT body too, RFC 3030 §2).
    pub(super) fn rset(&mut self, args: &[u8]) {
        if !args.is_empty() {
            return self.refuse(&replies::syntax("RSET"));
        }
        self.transaction = None;
        self.reply(replies::OK);
    }

    /// §4.1.1.9: any argument is ignored.
    pub(super) fn noop(&mut self) {
        self.reply(replies::OK);
    }

    /// §4.1.1.10: reply, then close; an open transaction is dropped.
    pub(super) fn quit(&mut self, args: &[u8]) {
        if !args.is_empty() {
            return self.refuse(&replies::syntax("QUIT"));
        }
        self.close(replies::BYE);
    }

    /// §3.5.3: verifying addresses helps harvesters and baton has no
    /// mailboxes of its own; 252 says "try sending".
    pub(super) fn vrfy(&mut self, args: &[u8]) {
        if args.is_empty() {
            return self.refuse(&replies::syntax("VRFY address"));
        }
        self.reply(replies::CANNOT_VRFY);
    }

    /// §3.5.2: baton expands no lists.
    pub(super) fn expn(&mut self) {
        self.refuse(replies::NOT_IMPLEMENTED);
    }

    pub(super) fn help(&mut self) {
        self.reply(replies::HELP);
    }
}

#[cfg(test)]
mod tests {
    use crate::inbound::testing::{transcript, Driver, ENVELOPE, ENVELOPE_REPLIES};

    #[test]
    fn rset_clears_the_transaction() {
        let out = transcript(format!("{ENVELOPE}RSET\r\nDATA\r\nRSET x\r\n").as_bytes());
        assert_eq!(
            out,
            format!(
                "{ENVELOPE_REPLIES}250 2.0.0 Ok\r\n503 5.5.1 Error: need MAIL command\r\n\
                 501 5.5.4 Syntax: RSET\r\n"
            )
        );
    }

    #[test]
    fn simple_verbs() {
        assert_eq!(
            transcript(b"NOOP\r\nnoop whatever\r\n"),
            "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"
        );
        assert_eq!(
            transcript(b"VRFY postmaster\r\nVRFY\r\n"),
            "252 2.0.0 Cannot VRFY user, but will accept message\r\n501 5.5.4 Syntax: VRFY address\r\n"
        );
        assert_eq!(
            transcript(b"EXPN list\r\n"),
            "502 5.5.1 Error: command not implemented\r\n"
        );
        assert_eq!(
            transcript(b"HELP\r\nHELP MAIL\r\n"),
            "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n"
                .repeat(2)
        );
    }

    #[test]
    fn quit_closes_and_ignores_the_rest() {
        let mut driver = Driver::new(true);
        driver.feed(b"QUIT now\r\nQUIT\r\nNOOP\r\n");
        assert_eq!(
            driver.output(),
            "220 mx.example.net ESMTP baton\r\n501 5.5.4 Syntax: QUIT\r\n221 2.0.0 Bye\r\n"
        );
        assert!(driver.session.is_closing());
        assert!(!driver.session.wants_input());
        driver.feed(b"NOOP\r\n");
        assert!(driver.output().ends_with("221 2.0.0 Bye\r\n"));
    }
}
