//! The EHLO keywords the client acts on (RFC 5321 §4.1.1.1: one per line
//! after the first, `keyword *(SP param)`, case-insensitive).

use crate::smtp::command::parse_decimal;
use crate::smtp::reply::Reply;

/// What the server offered in its EHLO reply. All false after HELO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: SIZE offered (then the client sends `SIZE=` on MAIL).
    pub size: bool,
    /// RFC 1870: the server's fixed maximum; `None` when not offered or
    /// `SIZE 0` / bare `SIZE` (no fixed maximum).
    pub size_max: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3030 (recorded; the client sends DATA).
    pub chunking: bool,
    /// RFC 3207 (recorded; the TLS upgrade is not done yet).
    pub starttls: bool,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
    /// RFC 4954: AUTH offered, with whatever mechanisms.
    pub auth: bool,
    /// AUTH offers PLAIN (RFC 4616).
    pub auth_plain: bool,
    /// AUTH offers LOGIN.
    pub auth_login: bool,
}

impl Extensions {
    /// Reads the keywords of a `250` EHLO reply; unknown ones are ignored.
    pub fn from_ehlo(reply: &Reply) -> Extensions {
        let mut extensions = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            // Old servers (Outlook, early qmail patches) write the
            // keyword `AUTH=LOGIN PLAIN`, as drafts of RFC 2554 did.
            if let Some(first) = keyword.strip_prefix("AUTH=") {
                extensions.auth = true;
                for mechanism in std::iter::once(first).chain(words) {
                    extensions.offer_mechanism(mechanism);
                }
                continue;
            }
            match keyword.as_str() {
                "AUTH" => {
                    extensions.auth = true;
                    for mechanism in words.by_ref() {
                        extensions.offer_mechanism(mechanism);
                    }
                }
                "PIPELINING" => extensions.pipelining = true,
                "SIZE" => {
                    extensions.size = true;
                    extensions.size_max = words
                        .next()
                        .and_then(|value| parse_decimal(value.as_bytes()))
                        .filter(|&max| max > 0);
                }
                "8BITMIME" => extensions.eight_bit_mime = true,
                "SMTPUTF8" => extensions.smtputf8 = true,
                "CHUNKING" => extensions.chunking = true,
                "STARTTLS" => extensions.starttls = true,
                "ENHANCEDSTATUSCODES" => extensions.enhanced_status_codes = true,
                _ => {}
            }
        }
        extensions
    }

    fn offer_mechanism(&mut self, mechanism: &str) {
        if mechanism.eq_ignore_ascii_case("PLAIN") {
            self.auth_plain = true;
        } else if mechanism.eq_ignore_ascii_case("LOGIN") {
            self.auth_login = true;
        }
    }
}
