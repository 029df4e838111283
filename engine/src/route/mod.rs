//! Routing: which destination a recipient belongs to, and where mail for
//! a destination goes.
//!
//! A destination is the recipient's domain, lowercased: every recipient of
//! one domain shares one ready queue, one set of connections and one set of
//! limits. Mail for a destination goes to its MX hosts (RFC 5321 §5.1) on
//! the configured port, unless a route in the config names a next hop for
//! the domain, or for every domain (`*`, smart-host mode).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::outbound::Credentials;

pub mod sites;

/// The unit of queueing: a recipient domain, and the `[[pool]]` its
/// sender chose, if one did (`[[sender_pool]]`, a user's `pool`): mail
/// of one domain from two pools waits in two queues, each leaving from
/// its own pool's sources.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    domain: String,
    pool: Option<Arc<str>>,
}

impl Destination {
    /// The recipient domain.
    pub fn as_str(&self) -> &str {
        &self.domain
    }

    /// The pool the sender chose; `None`: the route's or the default.
    pub fn pool(&self) -> Option<&str> {
        self.pool.as_deref()
    }

    /// The same domain, for mail whose sender chose `pool`.
    pub fn with_pool(mut self, pool: Option<Arc<str>>) -> Destination {
        self.pool = pool;
        self
    }
}

/// `domain`, or `domain/pool` when the sender chose a pool.
impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pool {
            None => f.write_str(&self.domain),
            Some(pool) => write!(f, "{}/{pool}", self.domain),
        }
    }
}

impl Destination {
    /// A destination by name (already lowercase): `domain` or
    /// `domain/pool`, as it is displayed.
    pub fn new(name: impl Into<String>) -> Destination {
        let name = name.into();
        match name.split_once('/') {
            Some((domain, pool)) if !pool.is_empty() => Destination {
                domain: domain.to_owned(),
                pool: Some(pool.into()),
            },
            _ => Destination {
                domain: name,
                pool: None,
            },
        }
    }
}

/// A next hop named by a route: a host name or IP address, and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub host: String,
    pub port: u16,
    /// SMTP AUTH to this hop, when the route gives credentials.
    pub auth: Option<Arc<Credentials>>,
    /// The `[[pool]]` the route's connections leave from; `None`: the
    /// default (`crate::shaping::egress`).
    pub pool: Option<String>,
}

/// Where mail for one destination goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The domain's MX hosts (or its address: implicit MX), on this port.
    Mx { port: u16 },
    /// A configured next hop; MX records are not consulted.
    NextHop(NextHop),
}

/// Values by domain, as Postfix's tables key them: `example.com` that
/// domain exactly, `.example.com` any subdomain of it; a domain's own
/// entry wins, then the longest parent. Keys are lowercased; the first
/// entry for a key is kept (configurations refuse duplicates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainTable<T> {
    exact: HashMap<String, T>,
    /// Longest first, so the most specific wins.
    subdomains: Vec<(String, T)>,
}

impl<T> Default for DomainTable<T> {
    fn default() -> Self {
        DomainTable {
            exact: HashMap::new(),
            subdomains: Vec::new(),
        }
    }
}

impl<T> DomainTable<T> {
    pub fn new(entries: impl IntoIterator<Item = (String, T)>) -> DomainTable<T> {
        let mut out = DomainTable::default();
        for (domain, value) in entries {
            let domain = domain.to_ascii_lowercase();
            if domain.starts_with('.') {
                if !out.subdomains.iter().any(|(d, _)| *d == domain) {
                    out.subdomains.push((domain, value));
                }
            } else {
                out.exact.entry(domain).or_insert(value);
            }
        }
        out.subdomains
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        out
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.subdomains.is_empty()
    }

    /// The entry for `domain` (lowercase): its own, else its longest
    /// `.parent`.
    pub fn get(&self, domain: &str) -> Option<&T> {
        self.exact.get(domain).or_else(|| {
            self.subdomains
                .iter()
                .find(|(suffix, _)| {
                    domain.len() > suffix.len() && domain.ends_with(suffix.as_str())
                })
                .map(|(_, value)| value)
        })
    }
}

/// The routes of the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    domains: DomainTable<NextHop>,
    wildcard: Option<NextHop>,
    mx_port: u16,
}

impl Routes {
    /// Routes by exact domain, with `*` standing for every other domain;
    /// MX delivery uses `mx_port`.
    pub fn new(routes: impl IntoIterator<Item = (String, NextHop)>, mx_port: u16) -> Routes {
        let mut wildcard = None;
        let domains = DomainTable::new(routes.into_iter().filter_map(|(domain, hop)| {
            if domain == "*" {
                wildcard = Some(hop);
                None
            } else {
                Some((domain, hop))
            }
        }));
        Routes {
            domains,
            wildcard,
            mx_port,
        }
    }

    /// The route for a destination: its own entry, else the longest
    /// `.parent` entry it is a subdomain of (as Postfix's transport maps
    /// match `.example.com`), else `*`, else MX.
    pub fn route(&self, destination: &Destination) -> Route {
        match self
            .domains
            .get(destination.as_str())
            .or(self.wildcard.as_ref())
        {
            Some(hop) => Route::NextHop(hop.clone()),
            None => Route::Mx { port: self.mx_port },
        }
    }
}

/// The destination of a recipient address (`local@domain`). An address
/// literal (`user@[192.0.2.1]`) is its own destination.
pub fn destination_of(address: &[u8]) -> Destination {
    let domain = match address.iter().rposition(|&b| b == b'@') {
        Some(at) => &address[at + 1..],
        None => &[][..],
    };
    Destination {
        domain: String::from_utf8_lossy(domain).to_ascii_lowercase(),
        pool: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_the_longest_parent_then_star() {
        let hop = |host: &str| NextHop {
            host: host.into(),
            port: 25,
            auth: None,
            pool: None,
        };
        let routes = Routes::new(
            [
                ("*".to_owned(), hop("star")),
                (".example.com".to_owned(), hop("parent")),
                (".eu.example.com".to_owned(), hop("eu")),
                ("mail.eu.example.com".to_owned(), hop("exact")),
            ],
            25,
        );
        let host = |domain: &str| match routes.route(&Destination::new(domain)) {
            Route::NextHop(hop) => hop.host,
            Route::Mx { .. } => "mx".into(),
        };
        assert_eq!(host("a.example.com"), "parent");
        assert_eq!(host("x.y.example.com"), "parent");
        assert_eq!(host("a.eu.example.com"), "eu");
        assert_eq!(host("mail.eu.example.com"), "exact");
        // The parent itself is not its own subdomain.
        assert_eq!(host("example.com"), "star");
        assert_eq!(host("badexample.com"), "star");
        assert_eq!(
            Routes::new([], 25).route(&Destination::new("a.org")),
            Route::Mx { port: 25 }
        );
    }

    #[test]
    fn the_domain_decides_and_case_does_not() {
        assert_eq!(destination_of(b"Bob@Example.ORG").as_str(), "example.org");
        assert_eq!(destination_of(b"\"a@b\"@x.net").as_str(), "x.net");
        assert_eq!(destination_of(b"u@[192.0.2.1]").as_str(), "[192.0.2.1]");
    }

    #[test]
    fn exact_routes_beat_the_wildcard_and_mx_is_the_fallback() {
        let hop = |port| NextHop {
            host: "127.0.0.1".into(),
            port,
            auth: None,
            pool: None,
        };
        let routes = Routes::new([("Example.org".into(), hop(1)), ("*".into(), hop(2))], 25);
        let route = |d: &str| routes.route(&Destination::new(d));
        assert_eq!(route("example.org"), Route::NextHop(hop(1)));
        assert_eq!(route("other.net"), Route::NextHop(hop(2)));
        let mx_only = Routes::new([("example.org".into(), hop(1))], 2525);
        assert_eq!(
            mx_only.route(&Destination::new("other.net")),
            Route::Mx { port: 2525 }
        );
    }
}
