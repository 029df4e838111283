//! Routing: which destination a recipient belongs to.
//!
//! A destination is, for now, the recipient's domain, lowercased: every
//! recipient of one domain shares one ready queue and, once delivery
//! exists, one set of connections and limits. Static routes (smart hosts)
//! and MX resolution arrive with delivery.

use std::fmt;

/// The unit of queueing and traffic shaping.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination(String);

impl Destination {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The destination of a recipient address (`local@domain`). An address
/// literal (`user@[192.0.2.1]`) is its own destination.
pub fn destination_of(address: &[u8]) -> Destination {
    let domain = match address.iter().rposition(|&b| b == b'@') {
        Some(at) => &address[at + 1..],
        None => &[][..],
    };
    Destination(String::from_utf8_lossy(domain).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_decides_and_case_does_not() {
        assert_eq!(destination_of(b"Bob@Example.ORG").as_str(), "example.org");
        assert_eq!(destination_of(b"\"a@b\"@x.net").as_str(), "x.net");
        assert_eq!(destination_of(b"u@[192.0.2.1]").as_str(), "[192.0.2.1]");
    }
}
