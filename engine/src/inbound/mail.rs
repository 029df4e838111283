//! MAIL (RFC 5321 §4.1.1.2) and its parameters: SIZE (RFC 1870), BODY
//! (RFC 6152), SMTPUTF8 (RFC 6531).

use super::replies;
use super::session::Session;
use super::transaction::Transaction;
use super::SessionContext;
use crate::smtp::address::PathError;
use crate::smtp::command::{self, CommandError, Param};

impl Session {
    pub(super) fn mail(&mut self, args: &[u8], ctx: &mut dyn SessionContext) {
        let Some(greeting) = &self.greeting else {
            return self.refuse(replies::SEND_HELO_FIRST);
        };
        let extended = greeting.extended;
        if self.config.tls_required && self.tls_info().is_none() {
            return self.refuse(replies::TLS_REQUIRED);
        }
        if self.config.auth.required && self.identity().is_none() {
            return self.refuse(replies::AUTH_REQUIRED);
        }
        if self.transaction.is_some() {
            return self.refuse(replies::NESTED_MAIL);
        }
        let (path, params) = match command::parse_mail(args) {
            Ok(parsed) => parsed,
            Err(error) => return self.refuse(mail_error(error)),
        };
        if let Some(identity) = self.identity().cloned() {
            // The user's policy: which sender domains, how many messages
            // an hour. The null path names no domain to check.
            let address = path.address();
            let domain = address.rsplit_once('@').map(|(_, d)| d);
            if domain.is_some_and(|d| !identity.policy.allows_sender_domain(d)) {
                return self.refuse(&replies::sender_not_allowed(&address));
            }
            if !ctx.take_user_message(&identity) {
                return self.reply(replies::USER_RATE_REACHED);
            }
        }
        let size_max = self.config.limits.message_bytes_max;
        let smtputf8 = match check_params(&params, extended, size_max) {
            Ok(smtputf8) => smtputf8,
            Err(reply) => return self.refuse(&reply),
        };
        let params = command::format_params(&params).into_bytes();
        let reverse_path = path.address().into_bytes();
        self.transaction = Some(Transaction::new(reverse_path, params, smtputf8));
        self.reply(replies::MAIL_OK);
    }
}

fn mail_error(error: CommandError) -> &'static str {
    match error {
        CommandError::Path(PathError::Utf8NotDeclared) => replies::UTF8_NOT_DECLARED,
        CommandError::Path(_) => replies::BAD_SENDER,
        CommandError::ParamSyntax => replies::PARAM_SYNTAX,
        CommandError::Syntax | CommandError::InvalidByte => replies::MAIL_SYNTAX,
    }
}

/// Checks MAIL's parameters; returns whether SMTPUTF8 was declared.
///
/// Parameters exist only after EHLO (§4.1.1.11: a server must not accept
/// parameters it did not advertise), and each must be one baton offers.
/// BODY=8BITMIME and 7BIT need nothing: baton stores the octets as they
/// come and relays them the same way.
fn check_params(params: &[Param], extended: bool, size_max: u64) -> Result<bool, String> {
    let mut smtputf8 = false;
    for param in params {
        if !extended {
            return Err(replies::unsupported_param(&param.keyword));
        }
        match (param.keyword.as_str(), param.value.as_deref()) {
            ("SIZE", Some(value)) => check_size(value, size_max)?,
            ("BODY", Some(value))
                if value.eq_ignore_ascii_case("7BIT") || value.eq_ignore_ascii_case("8BITMIME") => {
            }
            ("SMTPUTF8", None) => smtputf8 = true,
            ("SIZE", None) | ("SMTPUTF8", Some(_)) => return Err(replies::PARAM_SYNTAX.to_owned()),
            // BODY=BINARYMIME (RFC 3030), DSN's RET/ENVID, AUTH=...: not offered.
            _ => return Err(replies::unsupported_param(&param.keyword)),
        }
    }
    Ok(smtputf8)
}

/// RFC 1870 §6: a declared size over the limit is refused at once with
/// 552. A number too large for u64 is certainly over.
fn check_size(value: &str, size_max: u64) -> Result<(), String> {
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(replies::PARAM_SYNTAX.to_owned());
    }
    match command::parse_decimal(digits) {
        Some(size) if size <= size_max => Ok(()),
        _ => Err(replies::MESSAGE_TOO_BIG.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use crate::inbound::testing::{transcript, transcript_with};
    use crate::inbound::SessionConfig;

    fn after_ehlo(lines: &str) -> String {
        let out = transcript(format!("EHLO c.example\r\n{lines}").as_bytes());
        out.split_once("250 CHUNKING\r\n").unwrap().1.to_owned()
    }

    #[test]
    fn ok() {
        assert_eq!(
            after_ehlo("MAIL FROM:<a@b.example>\r\n"),
            "250 2.1.0 Ok\r\n"
        );
        assert_eq!(after_ehlo("mail from:<>\r\n"), "250 2.1.0 Ok\r\n");
        assert_eq!(
            after_ehlo("MAIL FROM: <a@b.example>\r\n"),
            "250 2.1.0 Ok\r\n"
        );
        assert_eq!(
            after_ehlo("MAIL FROM:<a@b.example> SIZE=123 BODY=8BITMIME SMTPUTF8\r\n"),
            "250 2.1.0 Ok\r\n"
        );
        assert_eq!(
            after_ehlo("MAIL FROM:<a@b.example> body=7bit\r\n"),
            "250 2.1.0 Ok\r\n"
        );
        assert_eq!(
            after_ehlo("MAIL FROM:<@relay.example:a@b.example>\r\n"),
            "250 2.1.0 Ok\r\n"
        );
    }

    #[test]
    fn needs_helo_first() {
        assert_eq!(
            transcript(b"MAIL FROM:<a@b.example>\r\n"),
            "503 5.5.1 Error: send HELO/EHLO first\r\n"
        );
        // Sequence comes before syntax.
        assert_eq!(
            transcript(b"MAIL junk\r\n"),
            "503 5.5.1 Error: send HELO/EHLO first\r\n"
        );
    }

    #[test]
    fn nested() {
        assert_eq!(
            after_ehlo("MAIL FROM:<a@b.example>\r\nMAIL FROM:<c@d.example>\r\n"),
            "250 2.1.0 Ok\r\n503 5.5.1 Error: nested MAIL command\r\n"
        );
    }

    /// Like Postfix's default, a bare address is taken as bracketed.
    #[test]
    fn a_bare_address_is_accepted() {
        assert_eq!(
            after_ehlo("MAIL FROM:a@b.example SIZE=10\r\n"),
            "250 2.1.0 Ok\r\n"
        );
    }

    #[test]
    fn bad_path() {
        for line in [
            "MAIL FROM:a@b.example>\r\n",
            "MAIL FROM:<a@b..example>\r\n",
            "MAIL FROM:<a@b.example\r\n",
            "MAIL FROM:<a@b.example>x\r\n",
            "MAIL FROM:<Postmaster>\r\n",
        ] {
            assert_eq!(
                after_ehlo(line),
                "501 5.1.7 Bad sender address syntax\r\n",
                "{line}"
            );
        }
        assert_eq!(
            after_ehlo("MAIL TO:<a@b.example>\r\n"),
            "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"
        );
    }

    #[test]
    fn size() {
        let mut config = SessionConfig::new("mx.example.net");
        config.limits.message_bytes_max = 1000;
        let out = transcript_with(
            config,
            b"HELO c.example\r\nMAIL FROM:<a@b.example>\r\nRSET\r\n",
        );
        assert!(out.ends_with("250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n"));
        let mut config = SessionConfig::new("mx.example.net");
        config.limits.message_bytes_max = 1000;
        let out = transcript_with(
            config,
            b"EHLO c.example\r\nMAIL FROM:<a@b.example> SIZE=1000\r\nRSET\r\n\
              MAIL FROM:<a@b.example> SIZE=1001\r\nMAIL FROM:<a@b.example> SIZE=99999999999999999999999\r\n\
              MAIL FROM:<a@b.example> SIZE=12x\r\nMAIL FROM:<a@b.example> SIZE\r\n",
        );
        let tail = out.split_once("250 CHUNKING\r\n").unwrap().1;
        assert_eq!(
            tail,
            "250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n\
             552 5.3.4 Message size exceeds fixed maximum message size\r\n\
             552 5.3.4 Message size exceeds fixed maximum message size\r\n\
             501 5.5.4 Error: bad parameter syntax\r\n501 5.5.4 Error: bad parameter syntax\r\n"
        );
    }

    #[test]
    fn unsupported_parameters() {
        assert_eq!(
            after_ehlo("MAIL FROM:<a@b.example> RET=HDRS\r\n"),
            "555 5.5.4 Unsupported option: RET\r\n"
        );
        assert_eq!(
            after_ehlo("MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n"),
            "555 5.5.4 Unsupported option: BODY\r\n"
        );
        assert_eq!(
            after_ehlo("MAIL FROM:<a@b.example> SMTPUTF8=yes\r\n"),
            "501 5.5.4 Error: bad parameter syntax\r\n"
        );
        assert_eq!(
            after_ehlo("MAIL FROM:<a@b.example> SIZE=1 size=2\r\n"),
            "501 5.5.4 Error: bad parameter syntax\r\n"
        );
        // No ESMTP parameters after HELO.
        assert_eq!(
            transcript(b"HELO c.example\r\nMAIL FROM:<a@b.example> SIZE=10\r\n"),
            "250 mx.example.net\r\n555 5.5.4 Unsupported option: SIZE\r\n"
        );
    }

    #[test]
    fn utf8_needs_smtputf8() {
        assert_eq!(
            after_ehlo("MAIL FROM:<jös@b.example>\r\n"),
            "553 5.6.7 Error: non-ASCII address requires SMTPUTF8\r\n"
        );
        assert_eq!(
            after_ehlo("MAIL FROM:<jös@b.example> SMTPUTF8\r\n"),
            "250 2.1.0 Ok\r\n"
        );
        assert_eq!(
            after_ehlo("MAIL FROM:<a@b.example> BODY=\u{e9}\r\n"),
            "555 5.5.4 Unsupported option: BODY\r\n"
        );
    }
}
