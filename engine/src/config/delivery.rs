//! The sections delivery reads: `[delivery]` (the client, retries,
//! timeouts), `[dns]`, `[shaping]`, and the per-domain tables `[[route]]`
//! and `[[destination]]`, with the lookups that resolve them for one
//! destination domain ([`Config::route_for`], [`Config::shaping_for`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{de, Config};

/// `[delivery]`: how mail leaves: the client's name, retries, timeouts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Queue mail but open no delivery connection (maintenance, or a
    /// server that only accepts).
    pub hold: bool,
    /// Sent with EHLO/HELO. Never empty once loaded: `""` in the file is
    /// replaced by `server.hostname`.
    pub helo_name: String,
    /// Port of MX hosts, 1..=65535; 25 except in tests.
    pub mx_port: u16,
    /// Waits between attempts after a temporary failure; the last repeats.
    /// Never empty, no step 0.
    #[serde(deserialize_with = "de::durations")]
    pub retry_schedule: Vec<Duration>,
    /// An operator's bounce classification rules (TOML `[[rule]]`s,
    /// `crate::shaping::classify`), tried before the shipped ones;
    /// `None` (`""`): the shipped rules alone.
    #[serde(deserialize_with = "de::optional_path")]
    pub classify_rules: Option<PathBuf>,
    /// The `[[pool]]` delivery connections leave from unless their route
    /// names one; `None` (`""`): the host's default address.
    #[serde(deserialize_with = "de::optional_string")]
    pub pool: Option<String>,
    /// Every permanent failure is a deferral instead (Postfix's
    /// `soft_bounce`): a safety net while a new setup is checked.
    pub soft_bounce: bool,
    /// Age (since arrival) past which a message fails and bounces.
    #[serde(deserialize_with = "de::duration")]
    pub max_age: Duration,
    /// CA certificates (PEM) that `required-verified` trusts; `None`: the
    /// system's roots.
    #[serde(deserialize_with = "de::optional_path")]
    pub tls_ca: Option<PathBuf>,
    /// How long a host whose opportunistic TLS handshake failed gets plain
    /// text (KumoMTA's `remember_broken_tls`), so that one bad certificate
    /// does not defer a domain's mail for days.
    #[serde(deserialize_with = "de::duration")]
    pub remember_broken_tls: Duration,
    /// HTTPS port of `mta-sts.<domain>` policy hosts: 443 (RFC 8461
    /// §3.3) but in tests.
    pub mta_sts_port: u16,
    // The client's timeouts, each over 0; RFC 5321 §4.5.3.2 gives the
    // minimums a client should allow, which are the defaults.
    /// Wait for the TCP connection to open.
    #[serde(deserialize_with = "de::duration")]
    pub connect_timeout: Duration,
    /// Wait for the 220 greeting (§4.5.3.2.1).
    #[serde(deserialize_with = "de::duration")]
    pub greeting_timeout: Duration,
    /// Wait for the reply to EHLO or HELO.
    #[serde(deserialize_with = "de::duration")]
    pub helo_timeout: Duration,
    /// Wait for the reply to MAIL (§4.5.3.2.2).
    #[serde(deserialize_with = "de::duration")]
    pub mail_timeout: Duration,
    /// Wait for the reply to each RCPT (§4.5.3.2.3).
    #[serde(deserialize_with = "de::duration")]
    pub rcpt_timeout: Duration,
    /// Wait for the 354 reply to DATA (§4.5.3.2.4).
    #[serde(deserialize_with = "de::duration")]
    pub data_timeout: Duration,
    /// Wait for each block of message data to be sent (§4.5.3.2.5).
    #[serde(deserialize_with = "de::duration")]
    pub data_block_timeout: Duration,
    /// Wait for the reply to the final dot (§4.5.3.2.6).
    #[serde(deserialize_with = "de::duration")]
    pub dot_timeout: Duration,
    /// How long an idle connection waits for more mail before QUIT.
    #[serde(deserialize_with = "de::duration")]
    pub idle_timeout: Duration,
    /// Rest of a destination after a failed connection or a 421, doubling
    /// on each repeat up to `pause_max`; `pause <= pause_max`.
    #[serde(deserialize_with = "de::duration")]
    pub pause: Duration,
    /// The longest a destination's pause doubles up to.
    #[serde(deserialize_with = "de::duration")]
    pub pause_max: Duration,
}

/// `[dns]`: the resolver for MX and address lookups.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Empty: the system's nameservers (`/etc/resolv.conf`).
    #[serde(deserialize_with = "de::socket_addrs")]
    pub nameservers: Vec<SocketAddr>,
    /// Wait for one answer from one nameserver; over 0.
    #[serde(deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// Tries per query, at least 1.
    pub attempts: usize,
}

/// `[shaping]`: how hard baton pushes one destination (one recipient
/// domain); [`Config::shaping_for`] applies the `[[destination]]` overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shaping {
    /// Open connections, across all shards; at least 1.
    pub connections_max: usize,
    /// Messages over one connection; at least 1.
    pub messages_per_connection_max: usize,
    /// Recipients per transaction; at least 1. RFC 5321 §4.5.3.1.8 has
    /// servers take 100, so past 100 a peer may refuse the rest (with 452,
    /// a temporary failure: RFC 5321 §4.5.3.1.10).
    pub recipients_per_transaction_max: usize,
    /// Messages started per second, across all shards; 0 = no limit.
    pub message_rate_max: u32,
    /// STARTTLS to the destination's hosts.
    pub tls: TlsPolicy,
    /// Look up and apply the domain's MTA-STS policy (RFC 8461) when
    /// delivering by MX.
    pub mta_sts: bool,
}

/// Whether and how delivery connections use STARTTLS (RFC 3207).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsPolicy {
    /// When the host offers it, without checking its certificate; a failed
    /// handshake retries in plain text (Postfix's `may`).
    #[default]
    Opportunistic,
    /// Always, without checking the certificate (Postfix's `encrypt`); a
    /// host without TLS defers.
    Required,
    /// Always, with the chain checked against the trusted roots and the
    /// host name against the certificate (Postfix's `secure`).
    RequiredVerified,
    /// Never.
    Disabled,
}

impl TlsPolicy {
    /// As the configuration writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Required => "required",
            TlsPolicy::RequiredVerified => "required-verified",
            TlsPolicy::Disabled => "disabled",
        }
    }

    /// Whether a host without TLS must not get the mail.
    pub fn is_required(self) -> bool {
        matches!(self, TlsPolicy::Required | TlsPolicy::RequiredVerified)
    }
}

/// `[[route]]`: where mail for a domain goes instead of its MX hosts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A domain (lowercased), or `"*"` for every domain without its own
    /// route.
    #[serde(deserialize_with = "de::lowercase")]
    pub domain: String,
    #[serde(deserialize_with = "de::next_hop")]
    pub next_hop: NextHop,
    /// Overrides `[shaping] tls` for this route.
    #[serde(default)]
    pub tls: Option<TlsPolicy>,
    /// SMTP AUTH (RFC 4954) to the next hop as this user, after STARTTLS.
    #[serde(default)]
    pub auth_user: Option<String>,
    /// The password for `auth_user`. After [`Config::load`] this holds the
    /// password whichever key gave it (`auth_password_file` is read then).
    #[serde(default)]
    pub auth_password: Option<Secret>,
    /// A file holding the password (one trailing newline stripped), so
    /// that the configuration itself can be world-readable.
    #[serde(default)]
    pub auth_password_file: Option<PathBuf>,
    /// Send the credentials over a connection without TLS too. Off: a
    /// next hop without STARTTLS gets no credentials and the mail waits.
    #[serde(default)]
    pub auth_plaintext: bool,
    /// The `[[pool]]` whose sources this route's connections leave from;
    /// `None`: `[delivery] pool`.
    #[serde(default)]
    pub pool: Option<String>,
}

/// `[[source]]`: a local address delivery connections may leave from,
/// with the name they say EHLO with from it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// Bound before connecting; IPv4 or IPv6.
    pub address: std::net::IpAddr,
    /// `""` (the default): `delivery.helo_name`.
    #[serde(default)]
    pub ehlo: String,
    /// Warm-up: `"Nd:M"` entries, at most M messages on day N of the
    /// source's use (`crate::shaping::egress::Warmup`); none = no cap.
    #[serde(default)]
    pub warmup: Vec<String>,
}

/// `[[site]]`: a site named by patterns on its host names (MX hosts, or
/// a route's next hop), with limits for all its domains together.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub name: String,
    /// `"*.google.com"` (any subdomain) or an exact host name. Empty with
    /// the name of a shipped site: its patterns (`crate::route::sites`).
    #[serde(default)]
    pub mx: Vec<String>,
    /// `None`: `[shaping] connections_max`.
    #[serde(default)]
    pub connections_max: Option<usize>,
    /// `None`: no site rate (0 = none).
    #[serde(default)]
    pub message_rate_max: Option<u32>,
}

/// `[[sender_pool]]`: mail from a sender domain leaves from a pool.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderPoolConfig {
    /// The MAIL FROM domain: `"example.com"`, or `".example.com"` for its
    /// subdomains.
    pub domain: String,
    pub pool: String,
}

/// `[[pool]]`: sources with weights; a connection leaves from one of
/// them, chosen in proportion to the weights.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// `"name"` or `"name:weight"` (weight 1 to 1000, default 1).
    pub sources: Vec<String>,
}

/// A value that must not be shown: its `Debug` says `"<redacted>"`, so a
/// configuration or route printed in a log or an error never carries it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// A host and port to deliver to: `"smtp.example.net:587"`,
/// `"192.0.2.1:25"`, `"[2001:db8::1]:25"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// A domain name (lowercased) or an IP address, without brackets.
    pub host: String,
    /// 1..=65535.
    pub port: u16,
}

impl NextHop {
    /// The host as an IP address, if it is one rather than a name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl std::fmt::Display for NextHop {
    /// As the file writes it: `host:port`, `[v6]:port`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// `[[destination]]`: shaping for one domain; a key not given (`None`)
/// falls back to `[shaping]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Lowercased.
    #[serde(deserialize_with = "de::lowercase")]
    pub domain: String,
    pub connections_max: Option<usize>,
    pub messages_per_connection_max: Option<usize>,
    pub recipients_per_transaction_max: Option<usize>,
    pub message_rate_max: Option<u32>,
    pub tls: Option<TlsPolicy>,
    pub mta_sts: Option<bool>,
}

/// `[[shaping_rule]]`: on a reply that matches, act on its destination
/// for a while (`crate::shaping`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingRuleConfig {
    /// A bounce classification category (`crate::shaping::classify`).
    pub category: Option<String>,
    /// `"421"`, `"4xx"`.
    pub code: Option<String>,
    /// `"4.7.28"`, `"*"` for a group.
    pub enhanced: Option<String>,
    /// An expression on the reply's text, case-insensitive.
    pub text: Option<String>,
    /// One destination, `.parent` for its subdomains; `None`: any.
    pub destination: Option<String>,
    pub action: ShapingAction,
    #[serde(deserialize_with = "de::duration")]
    pub duration: Duration,
    pub connections_max: Option<usize>,
    pub message_rate_max: Option<u32>,
}

/// What a shaping rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShapingAction {
    /// No new connection for the duration; then one, growing.
    Suspend,
    /// At most `connections_max` connections.
    Connections,
    /// At most `message_rate_max` messages a second.
    Rate,
}

impl Config {
    /// The route for a destination domain: its own `[[route]]` first, then
    /// the longest `".parent"` route it is a subdomain of, then the `"*"`
    /// route, else `None` (deliver by MX). Case does not matter.
    pub fn route_for(&self, domain: &str) -> Option<&NextHop> {
        let domain = domain.to_ascii_lowercase();
        let exact = self.routes.iter().find(|route| route.domain == domain);
        let subdomain = || {
            self.routes
                .iter()
                .filter(|route| {
                    route.domain.starts_with('.')
                        && domain.len() > route.domain.len()
                        && domain.ends_with(route.domain.as_str())
                })
                .max_by_key(|route| route.domain.len())
        };
        exact
            .or_else(subdomain)
            .or_else(|| self.routes.iter().find(|route| route.domain == "*"))
            .map(|route| &route.next_hop)
    }

    /// Shaping for a destination domain: `[shaping]`, with the keys its
    /// `[[destination]]` sets (if it has one) in place of those defaults.
    pub fn shaping_for(&self, domain: &str) -> Shaping {
        let base = self.shaping;
        let Some(over) = self
            .destinations
            .iter()
            .find(|destination| destination.domain.eq_ignore_ascii_case(domain))
        else {
            return base;
        };
        Shaping {
            connections_max: over.connections_max.unwrap_or(base.connections_max),
            messages_per_connection_max: over
                .messages_per_connection_max
                .unwrap_or(base.messages_per_connection_max),
            recipients_per_transaction_max: over
                .recipients_per_transaction_max
                .unwrap_or(base.recipients_per_transaction_max),
            message_rate_max: over.message_rate_max.unwrap_or(base.message_rate_max),
            tls: over.tls.unwrap_or(base.tls),
            mta_sts: over.mta_sts.unwrap_or(base.mta_sts),
        }
    }

    /// The TLS policy for a destination domain: its `[[destination]]`
    /// `tls`, else its route's, else `[shaping] tls`.
    pub fn tls_policy_for(&self, domain: &str) -> TlsPolicy {
        let destination = self
            .destinations
            .iter()
            .find(|destination| destination.domain.eq_ignore_ascii_case(domain))
            .and_then(|destination| destination.tls);
        let route = self
            .routes
            .iter()
            .find(|route| route.domain.eq_ignore_ascii_case(domain))
            .or_else(|| self.routes.iter().find(|route| route.domain == "*"))
            .and_then(|route| route.tls);
        destination.or(route).unwrap_or(self.shaping.tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, "test.toml").unwrap()
    }

    const ROUTES_AND_DESTINATIONS: &str = "\
[[route]]
domain = \"*\"
next_hop = \"smarthost.example.net:587\"

[[route]]
domain = \"Partner.Example\"
next_hop = \"[2001:db8::25]:2525\"

[shaping]
connections_max = 8

[[destination]]
domain = \"gmail.com\"
connections_max = 2
message_rate_max = 50

[[destination]]
domain = \"Slow.Example\"
recipients_per_transaction_max = 10
";

    #[test]
    fn route_for_prefers_exact_then_star() {
        let c = parse(ROUTES_AND_DESTINATIONS);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].domain, "partner.example");
        let partner = NextHop {
            host: "2001:db8::25".into(),
            port: 2525,
        };
        let smarthost = NextHop {
            host: "smarthost.example.net".into(),
            port: 587,
        };
        assert_eq!(c.route_for("partner.example"), Some(&partner));
        assert_eq!(c.route_for("PARTNER.example"), Some(&partner));
        assert_eq!(partner.ip(), Some("2001:db8::25".parse().unwrap()));
        assert_eq!(c.route_for("example.org"), Some(&smarthost));
        assert_eq!(smarthost.ip(), None);

        // Without the "*" route, other domains go by MX.
        let c = parse("[[route]]\ndomain = \"partner.example\"\nnext_hop = \"192.0.2.25:25\"\n");
        assert_eq!(c.route_for("partner.example").unwrap().host, "192.0.2.25");
        assert_eq!(c.route_for("example.org"), None);
        assert_eq!(c.route_for("sub.partner.example"), None);
    }

    #[test]
    fn shaping_for_lays_destination_over_shaping() {
        let c = parse(ROUTES_AND_DESTINATIONS);
        let base = Shaping {
            connections_max: 8,
            messages_per_connection_max: 1000,
            recipients_per_transaction_max: 100,
            message_rate_max: 0,
            tls: TlsPolicy::Opportunistic,
            mta_sts: true,
        };
        assert_eq!(c.shaping, base);
        assert_eq!(c.shaping_for("example.org"), base);
        assert_eq!(
            c.shaping_for("gmail.com"),
            Shaping {
                connections_max: 2,
                message_rate_max: 50,
                ..base
            }
        );
        assert_eq!(
            c.shaping_for("slow.example"),
            Shaping {
                recipients_per_transaction_max: 10,
                ..base
            }
        );
        assert_eq!(c.destinations[1].domain, "slow.example");
        assert_eq!(c.destinations[1].connections_max, None);
    }
}
