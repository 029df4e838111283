//! AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms.
//!
//! - Offered in the EHLO reply only when the listener has users, over TLS
//!   unless it says `auth_plaintext`; AUTH where it is not offered gets
//!   `503`, or `538 5.7.11` before STARTTLS on a listener that would offer
//!   it over TLS.
//! - AUTH before EHLO, inside a transaction, or after a success gets `503`.
//! - The exchange is a state of its own: `334` challenges, each response a
//!   base64 line, `*` cancels (`501 5.7.0`).
//! - With the credentials in hand, the session waits (like a message with
//!   the spool): the shard takes them with [`Session::take_credentials`],
//!   has them verified off the shard, and reports the verdict with
//!   [`Session::auth_verdict`]. `235 2.7.0` makes the session
//!   `Authenticated`: it may relay to any domain, `Received:` says
//!   ESMTPA/ESMTPSA, and its messages carry the user. Failures get
//!   `535 5.7.8` (never saying whether the user exists), `454 4.7.0` for a
//!   user name under attack, and a client past the failure limit is cut off
//!   with `421 4.7.0`.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::replies::{self, closing};
use super::session::{Auth, Session, State, Tls};
use super::SessionContext;
use crate::auth::verify::{Credentials, Verdict};

/// Where an exchange stands after a `334` challenge.
#[derive(Debug)]
pub(super) enum Sasl {
    /// PLAIN without an initial response: the whole response comes next.
    Plain,
    /// LOGIN: the user name comes next.
    LoginUser,
    /// LOGIN: the password comes next.
    LoginPassword { user: String },
}

/// `334` with an empty challenge (PLAIN).
const CHALLENGE_EMPTY: &str = "334 \r\n";
/// LOGIN's challenges: "Username:" and "Password:" in base64.
const CHALLENGE_USERNAME: &str = "334 VXNlcm5hbWU6\r\n";
const CHALLENGE_PASSWORD: &str = "334 UGFzc3dvcmQ6\r\n";

impl Session {
    /// Whether AUTH may be offered on this connection now.
    pub(super) fn auth_offered(&self) -> bool {
        let auth = &self.config.auth;
        auth.available && (auth.plaintext || matches!(self.tls, Tls::Established(_)))
    }

    pub(super) fn auth(&mut self, args: &[u8]) {
        if !self.config.auth.available {
            return self.refuse(replies::AUTH_NOT_ENABLED);
        }
        if !self.auth_offered() {
            // RFC 4954 §4: the mechanisms need an encrypted connection.
            return self.refuse(replies::AUTH_ENCRYPTION_REQUIRED);
        }
        if self.greeting.as_ref().is_none_or(|g| !g.extended) {
            return self.refuse(replies::SEND_EHLO_FIRST);
        }
        if matches!(self.auth, Auth::Authenticated(_)) {
            return self.refuse(replies::AUTH_ALREADY);
        }
        if self.transaction.is_some() {
            return self.refuse(replies::AUTH_IN_TRANSACTION);
        }
        let text = String::from_utf8_lossy(args);
        let mut words = text.split(' ');
        let mechanism = words.next().unwrap_or_default();
        let initial = words.next();
        if mechanism.is_empty() || words.next().is_some() {
            return self.refuse(replies::AUTH_SYNTAX);
        }
        if mechanism.eq_ignore_ascii_case("PLAIN") {
            match initial {
                None => self.challenge(Sasl::Plain, CHALLENGE_EMPTY),
                Some(response) => self.sasl_response(Sasl::Plain, response.as_bytes()),
            }
        } else if mechanism.eq_ignore_ascii_case("LOGIN") {
            match initial {
                None => self.challenge(Sasl::LoginUser, CHALLENGE_USERNAME),
                Some(response) => self.sasl_response(Sasl::LoginUser, response.as_bytes()),
            }
        } else {
            self.refuse(replies::AUTH_MECHANISM)
        }
    }

    fn challenge(&mut self, next: Sasl, challenge: &str) {
        self.reply(challenge);
        self.state = State::Sasl(next);
    }

    /// One response line of the exchange (CRLF stripped).
    pub(super) fn sasl_line(&mut self, step: Sasl, line: &[u8]) {
        if line == b"*" {
            return self.refuse(replies::AUTH_CANCELLED);
        }
        self.sasl_response(step, line);
    }

    fn sasl_response(&mut self, step: Sasl, response: &[u8]) {
        // RFC 4954 §4: "=" is an empty initial response.
        let decoded = if response == b"=" {
            Ok(Vec::new())
        } else {
            STANDARD.decode(response)
        };
        let Ok(decoded) = decoded else {
            return self.refuse(replies::AUTH_BAD_BASE64);
        };
        match step {
            Sasl::Plain => {
                // authzid NUL authcid NUL passwd; acting for another user
                // (a different authzid) is not offered.
                let mut parts = decoded.splitn(3, |&b| b == 0);
                let (Some(authzid), Some(user), Some(password)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return self.refuse(replies::AUTH_FAILED);
                };
                if !authzid.is_empty() && authzid != user {
                    return self.refuse(replies::AUTH_FAILED);
                }
                let Ok(user) = String::from_utf8(user.to_vec()) else {
                    return self.refuse(replies::AUTH_FAILED);
                };
                self.credentials(user, password.to_vec());
            }
            Sasl::LoginUser => {
                let Ok(user) = String::from_utf8(decoded) else {
                    return self.refuse(replies::AUTH_FAILED);
                };
                self.challenge(Sasl::LoginPassword { user }, CHALLENGE_PASSWORD);
            }
            Sasl::LoginPassword { user } => self.credentials(user, decoded),
        }
    }

    fn credentials(&mut self, user: String, password: Vec<u8>) {
        self.state = State::AwaitingAuth(Some(Credentials {
            user,
            password,
            client: self.peer.ip(),
        }));
    }

    /// Credentials to verify. Until [`auth_verdict`](Self::auth_verdict)
    /// is called, the session processes no input and sends no reply.
    pub fn take_credentials(&mut self) -> Option<Credentials> {
        match &mut self.state {
            State::AwaitingAuth(credentials) => credentials.take(),
            _ => None,
        }
    }

    /// The verifier's answer; then processing resumes with the input that
    /// arrived meanwhile.
    pub fn auth_verdict(&mut self, verdict: Verdict, ctx: &mut dyn SessionContext) {
        if !matches!(self.state, State::AwaitingAuth(_)) {
            return;
        }
        self.state = State::Command;
        match verdict {
            Verdict::Accepted(identity) => {
                self.auth = Auth::Authenticated(identity);
                self.reply(replies::AUTH_OK);
            }
            Verdict::Refused => self.refuse(replies::AUTH_FAILED),
            Verdict::Throttled => self.refuse(replies::AUTH_THROTTLED),
            Verdict::CutOff => {
                let reply = closing::auth_cut_off(&self.config.hostname);
                return self.close(&reply);
            }
        }
        self.resume(ctx);
    }

    /// The user this session authenticated as.
    pub fn identity(&self) -> Option<&Arc<crate::auth::verify::Identity>> {
        match &self.auth {
            Auth::Authenticated(identity) => Some(identity),
            Auth::Anonymous => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::auth::users::UserPolicy;
    use crate::auth::verify::{Identity, Verdict};
    use crate::inbound::testing::{Driver, EHLO_REPLY};
    use crate::inbound::SessionConfig;

    fn driver(plaintext: bool) -> Driver {
        let mut config = SessionConfig::new("mx.test");
        config.auth.available = true;
        config.auth.plaintext = plaintext;
        Driver::with_config(config, false)
    }

    fn accepted() -> Verdict {
        Verdict::Accepted(Arc::new(Identity {
            name: "app".into(),
            policy: UserPolicy::default(),
        }))
    }

    #[test]
    fn plain_with_an_initial_response_then_relay_is_allowed() {
        let mut d = driver(true);
        let ehlo = d.send(b"EHLO c.test\r\n");
        assert!(ehlo.contains("250-AUTH PLAIN LOGIN\r\n"), "{ehlo}");
        // "\0app\0secret"
        assert_eq!(d.send(b"AUTH PLAIN AGFwcABzZWNyZXQ=\r\n"), "");
        let credentials = d.session.take_credentials().expect("credentials");
        assert_eq!(credentials.user, "app");
        assert_eq!(credentials.password, b"secret");
        assert_eq!(
            d.verdict(accepted()),
            "235 2.7.0 Authentication successful\r\n"
        );
        let out = d.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@elsewhere.test>\r\n");
        assert_eq!(out, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
        assert_eq!(
            d.send(b"AUTH PLAIN AGFwcABzZWNyZXQ=\r\n").get(..3),
            Some("503")
        );
    }

    #[test]
    fn login_asks_for_the_user_and_the_password() {
        let mut d = driver(true);
        d.send(b"EHLO c.test\r\n");
        assert_eq!(d.send(b"AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
        assert_eq!(d.send(b"YXBw\r\n"), "334 UGFzc3dvcmQ6\r\n");
        assert_eq!(d.send(b"c2VjcmV0\r\n"), "");
        let credentials = d.session.take_credentials().expect("credentials");
        assert_eq!(
            (credentials.user.as_str(), &credentials.password[..]),
            ("app", &b"secret"[..])
        );
        assert_eq!(
            d.verdict(Verdict::Refused),
            "535 5.7.8 Authentication credentials invalid\r\n"
        );
    }

    #[test]
    fn plain_without_an_initial_response_and_a_cancel() {
        let mut d = driver(true);
        d.send(b"EHLO c.test\r\n");
        assert_eq!(d.send(b"AUTH PLAIN\r\n"), "334 \r\n");
        assert_eq!(d.send(b"*\r\n"), "501 5.7.0 Authentication cancelled\r\n");
        assert_eq!(d.send(b"AUTH PLAIN\r\n"), "334 \r\n");
        assert_eq!(
            d.send(b"%%%\r\n"),
            "501 5.5.2 Cannot decode the response\r\n"
        );
    }

    #[test]
    fn not_before_tls_not_in_a_transaction_not_without_ehlo() {
        let mut d = driver(false);
        let ehlo = d.send(b"EHLO c.test\r\n");
        assert!(!ehlo.contains("AUTH"), "{ehlo}");
        assert_eq!(
            d.send(b"AUTH PLAIN AGFwcABzZWNyZXQ=\r\n"),
            "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
        );
        let mut d = driver(true);
        assert_eq!(d.send(b"AUTH LOGIN\r\n").get(..3), Some("503"));
        d.send(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n");
        assert_eq!(
            d.send(b"AUTH LOGIN\r\n"),
            "503 5.5.1 AUTH not permitted during a mail transaction\r\n"
        );
        assert_eq!(
            d.send(b"RSET\r\nAUTH CRAM-MD5\r\n"),
            "250 2.0.0 Ok\r\n504 5.5.4 Unrecognized authentication mechanism\r\n"
        );
    }

    #[test]
    fn without_users_auth_is_not_offered() {
        let mut d = Driver::new(true);
        assert_eq!(d.send(b"EHLO c.test\r\n"), EHLO_REPLY);
        assert_eq!(
            d.send(b"AUTH PLAIN AGFwcABzZWNyZXQ=\r\n"),
            "503 5.5.1 Error: authentication not enabled\r\n"
        );
    }

    #[test]
    fn required_refuses_mail_before_auth_and_a_cut_off_closes() {
        let mut config = SessionConfig::new("mx.test");
        config.auth.available = true;
        config.auth.plaintext = true;
        config.auth.required = true;
        let mut d = Driver::with_config(config, true);
        d.send(b"EHLO c.test\r\n");
        assert_eq!(
            d.send(b"MAIL FROM:<a@b.test>\r\n"),
            "530 5.7.0 Authentication required\r\n"
        );
        d.send(b"AUTH PLAIN AGFwcABzZWNyZXQ=\r\n");
        d.session.take_credentials().expect("credentials");
        let out = d.verdict(Verdict::CutOff);
        assert!(out.starts_with("421 4.7.0 "), "{out}");
        assert!(d.session.is_closing());
    }
}
