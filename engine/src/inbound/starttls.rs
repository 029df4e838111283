//! STARTTLS (RFC 3207). Not offered yet: answered as not implemented.
//!
//! When TLS lands, this file takes the command while the session is
//! `Tls::Plain` and EHLO advertises it: no argument (501 otherwise), then
//! `220 2.0.0 Ready to start TLS`, and the session moves to
//! `Tls::Handshaking`, where rustls' sans-IO connection consumes the
//! socket bytes. RFC 3207 §4.2 and CVE-2011-0411: whatever the client
//! pipelined after STARTTLS is discarded, and once the handshake is done
//! the session forgets the EHLO and the transaction, so nothing said in
//! plain text carries over. A second STARTTLS over TLS gets 503.

use super::replies;
use super::session::{Session, Tls};

impl Session {
    pub(super) fn starttls(&mut self, _args: &[u8]) {
        match self.tls {
            Tls::Plain => self.refuse(replies::NOT_IMPLEMENTED),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::inbound::testing::transcript;

    #[test]
    fn not_implemented_yet() {
        assert_eq!(
            transcript(b"EHLO c.example\r\nSTARTTLS\r\n")
                .rsplit_once("CHUNKING\r\n")
                .unwrap()
                .1,
            "502 5.5.1 Error: command not implemented\r\n"
        );
    }
}
