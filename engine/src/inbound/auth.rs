//! AUTH (RFC 4954). Not enabled yet.
//!
//! When it lands: EHLO advertises AUTH only over TLS (unless a listener
//! says otherwise), the exchange runs as its own session state
//! (334 challenges, `*` to cancel), success moves `Auth::Anonymous` to
//! `Authenticated`, which allows relaying and makes `Received:` say
//! ESMTPA/ESMTPSA (RFC 3848); repeated failures slow down, then close.
//! AUTH inside a transaction gets 503 (§4).

use super::replies;
use super::session::{Auth, Session};

impl Session {
    pub(super) fn auth(&mut self, _args: &[u8]) {
        match self.auth {
            Auth::Anonymous => self.refuse(replies::AUTH_NOT_ENABLED),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::inbound::testing::transcript;

    #[test]
    fn not_enabled_yet() {
        assert_eq!(
            transcript(b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n"),
            "503 5.5.1 Error: authentication not enabled\r\n"
        );
    }
}
