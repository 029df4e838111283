//! Address literals: destinations that name an IP address instead of a
//! domain, and so resolve to themselves without DNS. Sans IO.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a destination string turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Literal {
    /// A name to look up in DNS.
    Name,
    /// An address literal, already resolved.
    Ip(IpAddr),
    /// Bracketed like a literal but unparseable: no DNS lookup can help.
    Invalid,
}

/// The tag of an IPv6 address literal, matched case-insensitively
/// (RFC 5321 §4.1.3: `IPv6-address-literal = "IPv6:" IPv6-addr`).
const IPV6_TAG: &str = "ipv6:";

/// A mail domain: `[192.0.2.1]` or `[IPv6:2001:db8::1]` is a literal
/// (RFC 5321 §4.1.3); anything without brackets is a domain name.
/// General address literals (`[tag:content]`) have no meaning to us, so
/// they are `Invalid`.
pub(crate) fn mail_domain(domain: &str) -> Literal {
    match bracketed(domain) {
        None => Literal::Name,
        Some(inner) => match literal_address(inner) {
            Some(ip) => Literal::Ip(ip),
            None => Literal::Invalid,
        },
    }
}

/// A host name from a route: a bare IP address (`192.0.2.1`, `2001:db8::1`)
/// is a literal too, as well as the bracketed forms of [`mail_domain`].
pub(crate) fn host_name(host: &str) -> Literal {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Literal::Ip(ip);
    }
    mail_domain(host)
}

fn bracketed(text: &str) -> Option<&str> {
    text.strip_prefix('[')?.strip_suffix(']')
}

fn literal_address(inner: &str) -> Option<IpAddr> {
    let tagged = inner
        .get(..IPV6_TAG.len())
        .is_some_and(|tag| tag.eq_ignore_ascii_case(IPV6_TAG));
    if tagged {
        inner[IPV6_TAG.len()..]
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    } else {
        inner.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(text: &str) -> IpAddr {
        IpAddr::V4(text.parse().unwrap())
    }

    fn v6(text: &str) -> IpAddr {
        IpAddr::V6(text.parse().unwrap())
    }

    #[test]
    fn mail_domain_literals() {
        assert_eq!(mail_domain("[192.0.2.1]"), Literal::Ip(v4("192.0.2.1")));
        assert_eq!(
            mail_domain("[IPv6:2001:db8::1]"),
            Literal::Ip(v6("2001:db8::1"))
        );
        assert_eq!(mail_domain("[ipv6:::1]"), Literal::Ip(v6("::1")));
        assert_eq!(mail_domain("example.com"), Literal::Name);
        // A bare address is not a mail domain (RFC 5321 §4.1.3 wants brackets).
        assert_eq!(mail_domain("192.0.2.1"), Literal::Name);
    }

    #[test]
    fn malformed_literals_are_invalid() {
        for text in [
            "[]",
            "[example.com]",
            "[192.0.2]",
            "[192.0.2.256]",
            "[2001:db8::1]", // IPv6 without its tag
            "[IPv6:192.0.2.1]",
            "[IPv6:]",
            "[x-tag:stuff]",
        ] {
            assert_eq!(mail_domain(text), Literal::Invalid, "{text}");
        }
        // Half a bracket is not a literal; DNS will say it does not exist.
        assert_eq!(mail_domain("[192.0.2.1"), Literal::Name);
    }

    #[test]
    fn host_names_accept_bare_addresses() {
        assert_eq!(host_name("192.0.2.7"), Literal::Ip(v4("192.0.2.7")));
        assert_eq!(host_name("2001:db8::7"), Literal::Ip(v6("2001:db8::7")));
        assert_eq!(host_name("[192.0.2.7]"), Literal::Ip(v4("192.0.2.7")));
        assert_eq!(
            host_name("[IPv6:2001:db8::7]"),
            Literal::Ip(v6("2001:db8::7"))
        );
        assert_eq!(host_name("smarthost.example"), Literal::Name);
        assert_eq!(host_name("[nonsense]"), Literal::Invalid);
    }
}
