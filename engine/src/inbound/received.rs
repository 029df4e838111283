//! The `Received:` header baton prepends to every message (RFC 5321 §4.4,
//! RFC 5322 §3.6.7):
//!
//! ```text
//! Received: from <helo> (<peer address literal>)
//!     (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))
//!     by <hostname> (baton) with ESMTPS id <queue id>;
//!     <date>
//! ```
//!
//! The `using` line only over TLS, as Postfix writes it.
//!
//! (each continuation line starts with a tab: RFC 5322 §2.2.3 folding).

use std::fmt::Write as _;
use std::net::IpAddr;

use baton_spool::QueueId;

use super::session::{Auth, Session, Tls};
use crate::smtp::date::rfc5322_date;

impl Session {
    /// The header for a message that gets `queue_id` now, as the start of
    /// its wire form.
    pub(super) fn received_header(&self, queue_id: QueueId, now_unix_secs: u64) -> Vec<u8> {
        // EHLO/HELO names passed the domain grammar, so they hold no
        // spaces, parentheses or line breaks to confuse the header.
        let helo = self.helo_name().unwrap_or("unknown");
        // Written piece by piece: one `format!` of it was a sixtieth of
        // the simulator's time per message.
        let mut header = String::with_capacity(192);
        header.push_str("Received: from ");
        header.push_str(helo);
        header.push_str(" (");
        header.push_str(&address_literal(self.peer.ip()));
        header.push_str(")\r\n");
        if let Tls::Established(info) = &self.tls {
            let _ = write!(header, "\t(using {info})\r\n");
        }
        header.push_str("\tby ");
        header.push_str(&self.config.hostname);
        header.push_str(" (baton) with ");
        header.push_str(self.protocol());
        header.push_str(" id ");
        header.push_str(std::str::from_utf8(&queue_id.hex()).expect("hex digits are ASCII"));
        header.push_str(";\r\n\t");
        header.push_str(&rfc5322_date(now_unix_secs));
        header.push_str("\r\n");
        header.into_bytes()
    }

    /// The `with` protocol (RFC 5321 §4.4; IANA "Mail Transmission Types":
    /// RFC 3848 adds ESMTPS/ESMTPA/ESMTPSA with TLS and AUTH, RFC 6531
    /// UTF8SMTP for SMTPUTF8 over ESMTP).
    fn protocol(&self) -> &'static str {
        let extended = self
            .greeting
            .as_ref()
            .is_some_and(|greeting| greeting.extended);
        let tls = matches!(self.tls, Tls::Established(_));
        let auth = matches!(self.auth, Auth::Authenticated(_));
        match (extended, tls, auth) {
            (false, _, _) => "SMTP",
            // RFC 3848: AUTH over ESMTP, with and without TLS.
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
            (true, false, false) if self.smtputf8() => "UTF8SMTP",
            (true, false, false) => "ESMTP",
            // RFC 6531 §3.7.3 has UTF8SMTPS for SMTPUTF8 over TLS.
            (true, true, false) if self.smtputf8() => "UTF8SMTPS",
            (true, true, false) => "ESMTPS",
        }
    }
}

/// RFC 5321 §4.1.3 address literal: `[192.0.2.1]`, `[IPv6:2001:db8::1]`.
/// IPv4 clients of a dual-stack socket show as IPv4.
pub(crate) fn address_literal(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(address_literal("192.0.2.1".parse().unwrap()), "[192.0.2.1]");
        assert_eq!(
            address_literal("2001:db8::1".parse().unwrap()),
            "[IPv6:2001:db8::1]"
        );
        assert_eq!(
            address_literal("::ffff:192.0.2.1".parse().unwrap()),
            "[192.0.2.1]"
        );
    }
}
