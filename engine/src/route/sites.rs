//! Sites by name: which site the hosts of a destination make, and its
//! limits.
//!
//! A route's next hop is one site, whatever the recipient domains. For MX
//! delivery the site is the set of MX host names (MX rollup), named by the
//! first `[[site]]` table (the operator's, then `sites.toml`'s) with a
//! pattern matching one of the hosts, in preference order: every domain
//! Google hosts is `google`. Hosts no table names make a site named by the
//! sorted host names themselves (`mx1.example.net,mx2.example.net`), so
//! domains that share their MX hosts still share a site.

#![forbid(unsafe_code)]

use std::collections::HashSet;

use serde::Deserialize;

use crate::config::SiteConfig;
use crate::queue::SiteShaping;

const SHIPPED_SITES: &str = include_str!("sites.toml");

/// The most host names a site named by its hosts spells out; the rest
/// are counted (`…,+3`). Enough for any real MX set.
pub const SITE_NAME_HOSTS_MAX: usize = 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Shipped {
    site: Vec<SiteConfig>,
}

/// A pattern on host names: `*.google.com` (any subdomain) or one host.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `.google.com`: the host ends with it (and is longer).
    Subdomains(String),
}

impl HostPattern {
    fn parse(text: &str) -> Result<HostPattern, String> {
        let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let (pattern, name) = match text.strip_prefix("*.") {
            Some(parent) => (HostPattern::Subdomains(format!(".{parent}")), parent),
            None => (HostPattern::Exact(text.clone()), text.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!("{text:?} is not a host name or *.parent pattern"));
        }
        Ok(pattern)
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

#[derive(Clone, Debug)]
struct SiteRule {
    name: String,
    patterns: Vec<HostPattern>,
    shaping: SiteShaping,
}

/// The sites of the configuration and the shipped ones.
#[derive(Clone, Debug)]
pub struct SiteTable {
    rules: Vec<SiteRule>,
    /// A site no table sets limits for: `[shaping] connections_max`.
    default: SiteShaping,
}

impl SiteTable {
    /// The operator's `[[site]]` tables, then the shipped ones;
    /// `Err((key, why))` names the table's key at fault.
    pub fn new(
        configured: &[SiteConfig],
        connections_max: usize,
    ) -> Result<SiteTable, (String, String)> {
        let default = SiteShaping {
            connections_max,
            message_rate_max: 0,
        };
        let shipped: Shipped = toml::from_str(SHIPPED_SITES)
            .map_err(|e| ("site".to_owned(), format!("the shipped sites.toml: {e}")))?;
        let mut rules = Vec::new();
        let mut names = HashSet::new();
        for (i, site) in configured.iter().enumerate() {
            let key = |field: &str| format!("site[{i}].{field}");
            let name = site.name.trim().to_ascii_lowercase();
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !name_ok {
                return Err((
                    key("name"),
                    "1 to 64 letters, digits, '-', '.' or '_'".into(),
                ));
            }
            if !names.insert(name.clone()) {
                return Err((
                    key("name"),
                    format!("{name:?} is named by an earlier [[site]]"),
                ));
            }
            let mx: Vec<String> = if site.mx.is_empty() {
                match shipped.site.iter().find(|s| s.name == name) {
                    Some(s) => s.mx.clone(),
                    None => {
                        return Err((
                            key("mx"),
                            format!("name the host patterns: baton ships no site called {name:?}"),
                        ))
                    }
                }
            } else {
                site.mx.clone()
            };
            let patterns = mx
                .iter()
                .map(|p| HostPattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|why| (key("mx"), why))?;
            if site.connections_max == Some(0) {
                return Err((key("connections_max"), "at least 1".into()));
            }
            rules.push(SiteRule {
                name,
                patterns,
                shaping: SiteShaping {
                    connections_max: site.connections_max.unwrap_or(connections_max),
                    message_rate_max: site.message_rate_max.unwrap_or(0),
                },
            });
        }
        for site in &shipped.site {
            if names.contains(&site.name) {
                continue;
            }
            let patterns = site
                .mx
                .iter()
                .map(|p| HostPattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|why| ("site".to_owned(), format!("the shipped sites.toml: {why}")))?;
            rules.push(SiteRule {
                name: site.name.clone(),
                patterns,
                shaping: default,
            });
        }
        Ok(SiteTable { rules, default })
    }

    fn rule_for(&self, host: &str) -> Option<&SiteRule> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.rules
            .iter()
            .find(|rule| rule.patterns.iter().any(|p| p.matches(&host)))
    }

    /// The site of a domain whose MX hosts are `hosts`, in preference
    /// order.
    pub fn for_mx<'h>(&self, hosts: impl IntoIterator<Item = &'h str>) -> (String, SiteShaping) {
        let mut names: Vec<String> = Vec::new();
        for host in hosts {
            if let Some(rule) = self.rule_for(host) {
                return (rule.name.clone(), rule.shaping);
            }
            names.push(host.trim_end_matches('.').to_ascii_lowercase());
        }
        names.sort();
        names.dedup();
        let extra = names.len().saturating_sub(SITE_NAME_HOSTS_MAX);
        names.truncate(SITE_NAME_HOSTS_MAX);
        let mut name = names.join(",");
        if extra > 0 {
            name.push_str(&format!(",+{extra}"));
        }
        (name, self.default)
    }

    /// The site of a route's next hop: `host:port`, or the `[[site]]`
    /// whose pattern names the host.
    pub fn for_next_hop(&self, host: &str, port: u16) -> (String, SiteShaping) {
        if let Some(rule) = self.rule_for(host) {
            return (rule.name.clone(), rule.shaping);
        }
        let name = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        (name, self.default)
    }

    /// The limits of a site no table names: `[shaping] connections_max`.
    pub fn default_shaping(&self) -> SiteShaping {
        self.default
    }

    /// A named site's limits (an operator may suspend `google` before any
    /// mail for it is queued).
    pub fn named(&self, name: &str) -> Option<SiteShaping> {
        self.rules
            .iter()
            .find(|rule| rule.name == name)
            .map(|rule| rule.shaping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, mx: &[&str], connections_max: Option<usize>) -> SiteConfig {
        SiteConfig {
            name: name.into(),
            mx: mx.iter().map(|s| s.to_string()).collect(),
            connections_max,
            message_rate_max: None,
        }
    }

    #[test]
    fn providers_roll_up_under_readable_names() {
        let table = SiteTable::new(&[], 20).unwrap();
        let name = |hosts: &[&str]| table.for_mx(hosts.iter().copied()).0;
        assert_eq!(
            name(&[
                "gmail-smtp-in.l.google.com",
                "alt1.gmail-smtp-in.l.google.com"
            ]),
            "google"
        );
        // A Workspace domain's MX set is Google's too.
        assert_eq!(
            name(&["aspmx.l.google.com", "alt4.aspmx.l.google.com."]),
            "google"
        );
        assert_eq!(
            name(&["example-com.mail.protection.outlook.com"]),
            "outlook"
        );
        assert_eq!(name(&["hotmail-com.olc.protection.outlook.com"]), "outlook");
        assert_eq!(name(&["mta5.am0.yahoodns.net"]), "yahoo");
        // Unknown hosts: the set, sorted, whatever the order.
        assert_eq!(
            name(&["mx2.example.net", "MX1.example.net"]),
            "mx1.example.net,mx2.example.net"
        );
        assert_eq!(
            name(&["mx1.example.net", "mx2.example.net"]),
            name(&["mx2.example.net", "mx1.example.net"])
        );
        // A look-alike is not Google.
        assert_eq!(
            name(&["google.com.evil.example"]),
            "google.com.evil.example"
        );
        assert_eq!(table.named("google").unwrap().connections_max, 20);
        assert!(table.named("nowhere").is_none());
    }

    #[test]
    fn an_operators_site_comes_first_and_may_keep_shipped_patterns() {
        let table = SiteTable::new(
            &[
                site("google", &[], Some(5)),
                site("relay", &["relay.example.net"], Some(3)),
                site("hosting", &["*.hosting.example"], None),
            ],
            20,
        )
        .unwrap();
        let (name, shaping) = table.for_mx(["alt1.aspmx.l.google.com"]);
        assert_eq!((name.as_str(), shaping.connections_max), ("google", 5));
        assert_eq!(table.for_mx(["mx.hosting.example"]).0, "hosting");
        assert_eq!(table.for_next_hop("relay.example.net", 25).0, "relay");
        assert_eq!(table.for_next_hop("127.0.0.2", 2525).0, "127.0.0.2:2525");
        assert_eq!(table.for_next_hop("::1", 25).0, "[::1]:25");
    }

    #[test]
    fn bad_site_tables_are_named() {
        let err = |sites: &[SiteConfig]| SiteTable::new(sites, 20).unwrap_err().0;
        assert_eq!(err(&[site("mine", &[], None)]), "site[0].mx");
        assert_eq!(err(&[site("x", &["*."], None)]), "site[0].mx");
        assert_eq!(err(&[site("x", &["a b"], None)]), "site[0].mx");
        assert_eq!(err(&[site("", &["a.example"], None)]), "site[0].name");
        assert_eq!(
            err(&[
                site("x", &["a.example"], None),
                site("X", &["b.example"], None)
            ]),
            "site[1].name"
        );
        assert_eq!(
            err(&[site("x", &["a.example"], Some(0))]),
            "site[0].connections_max"
        );
    }
}
