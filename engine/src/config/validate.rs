//! The rules a configuration must meet beyond its types. Each failure names
//! the key at fault; [`super::Config::parse`] adds the line.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};

use super::{
    AuthConfig, Config, DeliveryConfig, DestinationConfig, DnsConfig, Limits, ListenerConfig,
    ListenerTls, RouteConfig, ServerConfig, Shaping, SpoolSettings, TlsConfig,
};

/// A rule `key` breaks. `also` is the other key of a rule between two
/// (`pause <= pause_max`): the error names it instead when the file writes
/// only that one.
#[derive(Debug)]
pub(super) struct Invalid {
    pub key: String,
    pub message: String,
    pub also: Option<String>,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
        also: None,
    }
}

/// A rule between `key` and `also`.
fn invalid_pair(key: &str, also: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        also: Some(also.to_owned()),
        ..invalid(key, message)
    }
}

fn at_least<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
    why: &str,
) -> Result<(), Invalid> {
    if value < min {
        return Err(invalid(
            key,
            format!("must be at least {min}{why}, not {value}"),
        ));
    }
    Ok(())
}

fn at_most<T: PartialOrd + std::fmt::Display>(key: &str, value: T, max: T) -> Result<(), Invalid> {
    if value > max {
        return Err(invalid(key, format!("must be at most {max}, not {value}")));
    }
    Ok(())
}

/// Shard threads at most; far more than any machine has cores.
pub(super) const SHARDS_MAX: usize = 1024;
/// io_uring submission queue entries, smallest and largest accepted.
pub(super) const RING_ENTRIES_MIN: u32 = 8;
pub(super) const RING_ENTRIES_MAX: u32 = 32768;
/// Spool segments: page-aligned, at least as the spool itself requires
/// (64 KiB), and at most 4 GiB so one segment stays a sane mapping.
pub(super) const SEGMENT_ALIGN_BYTES: u64 = 4096;
pub(super) const SEGMENT_BYTES_MIN: u64 = 64 << 10;
pub(super) const SEGMENT_BYTES_MAX: u64 = 4 << 30;
/// More spare segments than this is a typo, not a reserve.
pub(super) const RESERVE_SEGMENTS_MAX: u64 = 1024;
/// RFC 5321 §4.5.3.1.4: a server must accept command lines of 512 octets.
pub(super) const COMMAND_LINE_BYTES_MIN: usize = 512;
/// RFC 5321 §4.5.3.1.6: a server must accept text lines of 1000 octets.
pub(super) const TEXT_LINE_BYTES_MIN: usize = 1000;
/// Lines are buffered whole; bound the buffer.
pub(super) const LINE_BYTES_MAX: usize = 1 << 20;
/// A message and its envelope are one spool record, and the spool refuses
/// records over `baton_spool::config::RECORD_BYTES_MAX_DEFAULT` (256 MiB);
/// keep a quarter of that for the envelope.
pub(super) const MESSAGE_BYTES_MAX: u64 = baton_spool::config::RECORD_BYTES_MAX_DEFAULT / 4 * 3;
/// RFC 5321 §4.5.3.1.8: a server must accept 100 recipients per message.
pub(super) const RECIPIENTS_PER_MESSAGE_MIN: usize = 100;
/// Recipients are held in memory for the whole transaction; bound them.
pub(super) const RECIPIENTS_PER_MESSAGE_MAX: usize = 100_000;
/// Smallest `limits.data_in_flight_max`: a message's buffer starts with
/// baton's `Received:` header and grows by doubling, so less would refuse
/// even small messages.
pub(super) const DATA_IN_FLIGHT_MAX_MIN: u64 = 64 * 1024;
/// RFC 1035 §2.3.4: 255 octets on the wire leave 253 characters of name.
const HOSTNAME_BYTES_MAX: usize = 253;
const HOSTNAME_LABEL_BYTES_MAX: usize = 63;
/// Steps in `delivery.retry_schedule`; the last one repeats, so a long
/// list is never needed.
pub(super) const RETRY_SCHEDULE_STEPS_MAX: usize = 64;
/// Tries per DNS query; each waits up to `dns.timeout`.
pub(super) const DNS_ATTEMPTS_MAX: usize = 16;

/// The longest a shaping rule may suspend or throttle a destination.
const SHAPING_RULE_DURATION_MAX: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Checks every rule, stopping at the first that fails.
pub(super) fn validate(config: &Config) -> Result<(), Invalid> {
    server(&config.server)?;
    listeners(config)?;
    tls(&config.tls)?;
    spool(&config.spool)?;
    limits(&config.limits)?;
    auth(&config.auth)?;
    delivery(&config.delivery)?;
    dns(&config.dns)?;
    shaping(&config.shaping)?;
    routes(&config.routes)?;
    destinations(&config.destinations)?;
    unsubscribe(config)?;
    http(config)?;
    cluster(config)?;
    egress(config)?;
    if let Err((name, message)) =
        crate::route::sites::SiteTable::new(&config.sites, config.shaping.connections_max)
    {
        return Err(invalid(name, message));
    }
    if let Err((name, message)) = crate::shaping::ShapingRules::new(&config.shaping_rules) {
        return Err(invalid(name, message));
    }
    if let Some(i) = config
        .shaping_rules
        .iter()
        .position(|r| r.duration > SHAPING_RULE_DURATION_MAX)
    {
        return Err(invalid(
            format!("shaping_rule[{i}].duration"),
            "at most 7 days: a longer pause is an operator's decision (baton site suspend)",
        ));
    }
    log(&config.log)?;
    super::webhook::validate(config)?;
    Ok(())
}

const LOG_LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// `[log]`: a filter made of levels and `target=level` directives (a
/// typo must not leave the server logging nothing).
fn log(log: &crate::config::LogConfig) -> Result<(), Invalid> {
    let level_ok = |l: &str| LOG_LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    let target_ok = |t: &str| {
        let t = t.trim();
        !t.is_empty()
            && t.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for directive in log.level.split(',').filter(|d| !d.trim().is_empty()) {
        let ok = match directive.split_once('=') {
            Some((target, level)) => target_ok(target) && level_ok(level),
            None => level_ok(directive),
        };
        if !ok {
            return Err(invalid(
                "log.level",
                format!(
                    "{directive:?}: a level ({}) or target=level, such as \"baton=debug\"",
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
    }
    if log.level.trim().is_empty() {
        return Err(invalid("log.level", "empty: \"info\" is the default"));
    }
    Ok(())
}

/// `[[source]]`, `[[pool]]` and the pools routes and `[delivery]` name:
/// unique names, sources that exist, EHLO names that are domains.
fn egress(config: &Config) -> Result<(), Invalid> {
    let mut sources = HashMap::new();
    for (i, source) in config.sources.iter().enumerate() {
        if source.name.is_empty() {
            return Err(invalid(format!("source[{i}].name"), "must not be empty"));
        }
        if let Some(first) = sources.insert(source.name.as_str(), i) {
            return Err(invalid(
                format!("source[{i}].name"),
                format!("{:?} is already source[{first}]", source.name),
            ));
        }
        if source.address.is_unspecified() || source.address.is_multicast() {
            return Err(invalid(
                format!("source[{i}].address"),
                "a local unicast address to bind",
            ));
        }
        if !source.ehlo.is_empty() {
            hostname(&source.ehlo).map_err(|m| invalid(format!("source[{i}].ehlo"), m))?;
        }
        let mut last_day = 0;
        for (j, entry) in source.warmup.iter().enumerate() {
            let key = format!("source[{i}].warmup[{j}]");
            let day = crate::shaping::egress::parse_step(entry)
                .map_err(|m| invalid(&key, m))?
                .day;
            if day <= last_day {
                return Err(invalid(key, "days must go up, one entry per day"));
            }
            last_day = day;
        }
    }
    let mut pools = HashMap::new();
    for (i, pool) in config.pools.iter().enumerate() {
        if let Some(first) = pools.insert(pool.name.as_str(), i) {
            return Err(invalid(
                format!("pool[{i}].name"),
                format!("{:?} is already pool[{first}]", pool.name),
            ));
        }
        if pool.sources.is_empty() {
            return Err(invalid(
                format!("pool[{i}].sources"),
                "names at least one source",
            ));
        }
        for (j, entry) in pool.sources.iter().enumerate() {
            let key = format!("pool[{i}].sources[{j}]");
            let (name, _) =
                crate::shaping::egress::parse_entry(entry).map_err(|m| invalid(&key, m))?;
            if !sources.contains_key(name) {
                return Err(invalid(key, format!("no [[source]] is named {name:?}")));
            }
        }
    }
    let known = |key: String, name: &str| {
        if pools.contains_key(name) {
            Ok(())
        } else {
            Err(invalid(key, format!("no [[pool]] is named {name:?}")))
        }
    };
    if let Some(name) = &config.delivery.pool {
        known("delivery.pool".into(), name)?;
    }
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(name) = &route.pool {
            known(format!("route[{i}].pool"), name)?;
        }
    }
    for (i, sender) in config.sender_pools.iter().enumerate() {
        known(format!("sender_pool[{i}].pool"), &sender.pool)?;
        crate::auth::users::check_sender_domain(&sender.domain.to_ascii_lowercase())
            .map_err(|m| invalid(format!("sender_pool[{i}].domain"), m))?;
    }
    Ok(())
}

/// `[unsubscribe]`: its links are HTTPS, and what they do is add to the
/// suppression list, so both must be there when the listener is on.
fn unsubscribe(config: &Config) -> Result<(), Invalid> {
    let u = &config.unsubscribe;
    for entry in &u.domains {
        let name = entry.strip_prefix('.').unwrap_or(entry);
        if entry != "*" {
            hostname(name).map_err(|message| invalid("unsubscribe.domains", message))?;
        }
    }
    if let Some(url) = &u.url {
        let host = url.strip_prefix("https://").unwrap_or_default();
        if host.is_empty() || host.starts_with('/') || url.contains(char::is_whitespace) {
            return Err(invalid(
                "unsubscribe.url",
                format!("{url:?} is not an https:// URL such as \"https://unsub.example.com\""),
            ));
        }
    }
    if let Some(mailto) = &u.mailto {
        let ok = mailto
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && hostname(domain).is_ok())
            && !mailto.contains(|c: char| c.is_whitespace() || "<>?,\"".contains(c));
        if !ok {
            return Err(invalid(
                "unsubscribe.mailto",
                format!("{mailto:?} is not an address such as \"unsubscribe@example.com\""),
            ));
        }
    }
    if u.token_ttl.is_zero() {
        return Err(invalid("unsubscribe.token_ttl", "must be more than zero"));
    }
    if u.listen.is_some() {
        if config.tls.certificate.is_none() {
            return Err(invalid(
                "unsubscribe.listen",
                "the links are HTTPS: set [tls] certificate and key",
            ));
        }
        if !config.suppression.enabled {
            return Err(invalid(
                "unsubscribe.listen",
                "an unsubscribe adds to the suppression list: set [suppression] enabled = true",
            ));
        }
    }
    Ok(())
}

/// The shortest `cluster.lease_ttl`: a lease is renewed three times per
/// life, and a renewal is a round trip to Redis.
const CLUSTER_LEASE_TTL_MIN: std::time::Duration = std::time::Duration::from_secs(1);
/// The fewest suppression changes the shared stream keeps.
const CLUSTER_STREAM_ENTRIES_MIN: u64 = 1000;
/// A node's name is a Redis key part and a metrics label.
const CLUSTER_NODE_BYTES_MAX: usize = 64;

/// `[cluster]`.
fn cluster(config: &Config) -> Result<(), Invalid> {
    let c = &config.cluster;
    let Some(url) = &c.redis else {
        return Ok(());
    };
    if !url.starts_with("redis://") {
        return Err(invalid(
            "cluster.redis",
            "must be a redis:// URL, such as redis://127.0.0.1:6379/0",
        ));
    }
    let node = c.node_name(&config.server.hostname);
    if node.is_empty()
        || node.len() > CLUSTER_NODE_BYTES_MAX
        || !node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(invalid(
            "cluster.node",
            format!(
                "a node name is 1 to {CLUSTER_NODE_BYTES_MAX} letters, digits, '.', '_' or '-': {node:?}"
            ),
        ));
    }
    if c.lease_ttl < CLUSTER_LEASE_TTL_MIN {
        return Err(invalid("cluster.lease_ttl", "must be at least 1s"));
    }
    if c.heartbeat.is_zero() || c.heartbeat * 3 > c.lease_ttl {
        return Err(invalid_pair(
            "cluster.heartbeat",
            "cluster.lease_ttl",
            "the heartbeat must be more than zero and at most a third of the lease's life",
        ));
    }
    if c.timeout.is_zero() || c.timeout >= c.heartbeat * 3 {
        return Err(invalid_pair(
            "cluster.timeout",
            "cluster.heartbeat",
            "the timeout must be more than zero and less than three heartbeats",
        ));
    }
    if c.stream_entries_max < CLUSTER_STREAM_ENTRIES_MIN {
        return Err(invalid(
            "cluster.stream_entries_max",
            format!("must be at least {CLUSTER_STREAM_ENTRIES_MIN}"),
        ));
    }
    Ok(())
}

/// Smallest `http.body_bytes_max`: a request with one short message.
const HTTP_BODY_BYTES_MIN: u64 = 4096;

/// `[http]`: injection takes mail like an authenticated SMTP client, so
/// off loopback the listener speaks TLS and has credentials to check.
fn http(config: &Config) -> Result<(), Invalid> {
    let h = &config.http;
    if h.body_bytes_max < HTTP_BODY_BYTES_MIN {
        return Err(invalid(
            "http.body_bytes_max",
            format!("must be at least {HTTP_BODY_BYTES_MIN}"),
        ));
    }
    if h.recipients_per_request_max == 0 {
        return Err(invalid(
            "http.recipients_per_request_max",
            "must be more than zero",
        ));
    }
    if h.recipients_per_request_max > RECIPIENTS_PER_MESSAGE_MAX {
        return Err(invalid(
            "http.recipients_per_request_max",
            format!("must be at most {RECIPIENTS_PER_MESSAGE_MAX}"),
        ));
    }
    let Some(address) = h.listen else {
        return Ok(());
    };
    let smtp = config.listeners.iter().any(|l| l.address == address);
    if smtp || config.admin.address == Some(address) || config.unsubscribe.listen == Some(address) {
        return Err(invalid(
            "http.listen",
            format!("{address} is also another listener's"),
        ));
    }
    if h.tls() && config.tls.certificate.is_none() {
        return Err(invalid(
            "http.listen",
            format!(
                "{address} is not a loopback address, so injection needs TLS: \
                 set [tls] certificate and key, or listen on 127.0.0.1 or [::1]"
            ),
        ));
    }
    if h.credentials_required() && h.token_file.is_none() && config.auth.users.is_none() {
        return Err(invalid_pair(
            "http.listen",
            "http.token_file",
            "injection needs credentials here (off loopback, or http.auth_required): \
             set http.token_file or [auth] users",
        ));
    }
    Ok(())
}

/// `[auth]`. The users file itself is read by `check-config` and at start
/// (`crate::auth::Users::load`), not here: parsing the configuration reads
/// no other file.
fn auth(auth: &AuthConfig) -> Result<(), Invalid> {
    if let Some(users) = &auth.users {
        // `baton user add` writes the file by renaming a new one over it,
        // so the path must name a file, not a directory.
        if users.as_os_str().as_encoded_bytes().ends_with(b"/") {
            return Err(invalid(
                "auth.users",
                "names a directory; give the path of the users file",
            ));
        }
    }
    Ok(())
}

fn server(server: &ServerConfig) -> Result<(), Invalid> {
    // An empty hostname is filled in from the machine after validation.
    if !server.hostname.is_empty() {
        hostname(&server.hostname).map_err(|message| invalid("server.hostname", message))?;
    }
    at_most("server.shards", server.shards, SHARDS_MAX)?;
    let ring_entries = server.ring_entries;
    if !ring_entries.is_power_of_two()
        || !(RING_ENTRIES_MIN..=RING_ENTRIES_MAX).contains(&ring_entries)
    {
        return Err(invalid(
            "server.ring_entries",
            format!("must be a power of two from {RING_ENTRIES_MIN} to {RING_ENTRIES_MAX}, not {ring_entries}"),
        ));
    }
    Ok(())
}

/// A domain name as EHLO and the greeting announce it: letters, digits and
/// hyphens in dot-separated labels (RFC 5321 §4.1.2 `Domain`).
fn hostname(name: &str) -> Result<(), String> {
    if name.len() > HOSTNAME_BYTES_MAX {
        return Err(format!("longer than {HOSTNAME_BYTES_MAX} bytes"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= HOSTNAME_LABEL_BYTES_MAX
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{name:?} is not a domain name (dot-separated labels of letters, digits and inner hyphens)"
            ));
        }
    }
    Ok(())
}

/// A domain as a destination or EHLO names it: a domain name, or an
/// address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, RFC 5321 §4.1.3).
fn domain(name: &str) -> Result<(), String> {
    let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) else {
        return hostname(name);
    };
    let v6 = literal
        .get(..5)
        .filter(|tag| tag.eq_ignore_ascii_case("ipv6:"))
        .map(|_| &literal[5..]);
    let ok = match v6 {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => literal.parse::<Ipv4Addr>().is_ok(),
    };
    if !ok {
        return Err(format!(
            "{name:?} is not an address literal such as \"[192.0.2.1]\" or \"[IPv6:2001:db8::1]\""
        ));
    }
    Ok(())
}

/// `[tls]`: a certificate goes with its key. Whether the files load, match
/// and are in date is `crate::tls`'s check, which `check-config` runs too.
fn tls(tls: &TlsConfig) -> Result<(), Invalid> {
    match (&tls.certificate, &tls.key) {
        (Some(_), None) => return Err(invalid("tls.key", "a certificate needs its key")),
        (None, Some(_)) => return Err(invalid("tls.certificate", "a key needs its certificate")),
        _ => {}
    }
    if !tls.sni.is_empty() && tls.certificate.is_none() {
        return Err(invalid(
            "tls.certificate",
            "[[tls.sni]] certificates need a default [tls] certificate",
        ));
    }
    let mut names = HashSet::new();
    for (i, sni) in tls.sni.iter().enumerate() {
        hostname(&sni.name).map_err(|message| invalid(format!("tls.sni[{i}].name"), message))?;
        if !names.insert(sni.name.as_str()) {
            return Err(invalid(
                format!("tls.sni[{i}].name"),
                format!("{} has a certificate already", sni.name),
            ));
        }
    }
    if tls.handshake_timeout.is_zero() {
        return Err(invalid("tls.handshake_timeout", "must be over 0"));
    }
    Ok(())
}

fn listeners(config: &Config) -> Result<(), Invalid> {
    if config.listeners.is_empty() {
        return Err(invalid("listener", "at least one [[listener]] is needed"));
    }
    let mut seen = HashSet::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        if !seen.insert(listener.address) {
            return Err(invalid(
                format!("listener[{i}].address"),
                format!("{} is already a listener", listener.address),
            ));
        }
        let explicit = matches!(listener.tls, ListenerTls::StartTls | ListenerTls::Implicit);
        if explicit && config.tls.certificate.is_none() {
            return Err(invalid(
                format!("listener[{i}].tls"),
                "TLS needs a certificate: set [tls] certificate and key",
            ));
        }
        if listener.tls_required && listener.tls_mode(&config.tls) == ListenerTls::None {
            return Err(invalid(
                format!("listener[{i}].tls_required"),
                "this listener offers no TLS: set [tls] certificate and key, and tls",
            ));
        }
    }
    if let Some(admin) = config.admin.address {
        if seen.contains(&admin) {
            return Err(invalid(
                "admin.address",
                format!("{admin} is also an SMTP listener"),
            ));
        }
        // The API deletes and bounces mail: reachable from other hosts, it
        // must not be open to whoever connects.
        if !is_loopback(admin.ip()) && config.admin.token_file.is_none() {
            return Err(invalid_pair(
                "admin.address",
                "admin.token_file",
                format!(
                    "{admin} is not a loopback address, so the admin API needs a token: \
                     set admin.token_file, or listen on 127.0.0.1 or [::1]"
                ),
            ));
        }
    }
    Ok(())
}

/// Loopback, IPv4-mapped loopback (`::ffff:127.0.0.1`) included. The
/// unspecified addresses (`0.0.0.0`, `::`) are every interface: not loopback.
pub(super) fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

fn spool(spool: &SpoolSettings) -> Result<(), Invalid> {
    if spool.path.as_os_str().is_empty() {
        return Err(invalid("spool.path", "must not be empty"));
    }
    let segment_bytes = spool.segment_bytes;
    if !segment_bytes.is_multiple_of(SEGMENT_ALIGN_BYTES) {
        return Err(invalid(
            "spool.segment_bytes",
            format!("must be a multiple of {SEGMENT_ALIGN_BYTES}, not {segment_bytes}"),
        ));
    }
    at_least("spool.segment_bytes", segment_bytes, SEGMENT_BYTES_MIN, "")?;
    at_most("spool.segment_bytes", segment_bytes, SEGMENT_BYTES_MAX)?;
    if let Some(size_bytes_max) = spool.size_bytes_max {
        at_least(
            "spool.size_bytes_max",
            size_bytes_max,
            segment_bytes,
            " (one segment), or 0 for no limit",
        )?;
    }
    at_least(
        "spool.reserve_segments",
        spool.reserve_segments as u64,
        1,
        " (outcomes need room on a full disk)",
    )?;
    at_most(
        "spool.reserve_segments",
        spool.reserve_segments as u64,
        RESERVE_SEGMENTS_MAX,
    )?;
    Ok(())
}

fn limits(limits: &Limits) -> Result<(), Invalid> {
    let rfc = |section: &str| format!(" (RFC 5321 §{section})");
    at_least(
        "limits.command_line_bytes_max",
        limits.command_line_bytes_max,
        COMMAND_LINE_BYTES_MIN,
        &rfc("4.5.3.1.4"),
    )?;
    at_most(
        "limits.command_line_bytes_max",
        limits.command_line_bytes_max,
        LINE_BYTES_MAX,
    )?;
    at_least(
        "limits.text_line_bytes_max",
        limits.text_line_bytes_max,
        TEXT_LINE_BYTES_MIN,
        &rfc("4.5.3.1.6"),
    )?;
    at_most(
        "limits.text_line_bytes_max",
        limits.text_line_bytes_max,
        LINE_BYTES_MAX,
    )?;
    at_least("limits.message_bytes_max", limits.message_bytes_max, 1, "")?;
    at_most(
        "limits.message_bytes_max",
        limits.message_bytes_max,
        MESSAGE_BYTES_MAX,
    )?;
    at_least(
        "limits.recipients_per_message_max",
        limits.recipients_per_message_max,
        RECIPIENTS_PER_MESSAGE_MIN,
        &rfc("4.5.3.1.8"),
    )?;
    at_most(
        "limits.recipients_per_message_max",
        limits.recipients_per_message_max,
        RECIPIENTS_PER_MESSAGE_MAX,
    )?;
    at_least(
        "limits.commands_per_session_max",
        limits.commands_per_session_max,
        1,
        "",
    )?;
    at_least(
        "limits.errors_per_session_max",
        limits.errors_per_session_max,
        1,
        "",
    )?;
    at_least(
        "limits.received_headers_max",
        limits.received_headers_max,
        1,
        " (baton's own Received: header counts)",
    )?;
    at_least(
        "limits.connections_per_shard_max",
        limits.connections_per_shard_max,
        1,
        "",
    )?;
    at_least(
        "limits.connections_per_ip_max",
        limits.connections_per_ip_max,
        1,
        "",
    )?;
    at_least(
        "limits.data_in_flight_max",
        limits.data_in_flight_max,
        DATA_IN_FLIGHT_MAX_MIN,
        " (below it, not even a small message could be received)",
    )?;
    for (key, timeout) in [
        ("limits.command_timeout", limits.command_timeout),
        ("limits.data_timeout", limits.data_timeout),
    ] {
        if timeout.is_zero() {
            return Err(invalid(key, "must be longer than 0"));
        }
    }
    Ok(())
}

fn delivery(delivery: &DeliveryConfig) -> Result<(), Invalid> {
    // An empty name is filled in from `server.hostname` after validation.
    if !delivery.helo_name.is_empty() {
        domain(&delivery.helo_name).map_err(|message| invalid("delivery.helo_name", message))?;
    }
    at_least("delivery.mx_port", delivery.mx_port, 1, "")?;
    let schedule = &delivery.retry_schedule;
    if schedule.is_empty() {
        return Err(invalid(
            "delivery.retry_schedule",
            "needs at least one wait, such as [\"5m\"]",
        ));
    }
    if schedule.len() > RETRY_SCHEDULE_STEPS_MAX {
        return Err(invalid(
            "delivery.retry_schedule",
            format!(
                "must have at most {RETRY_SCHEDULE_STEPS_MAX} waits (the last repeats), not {}",
                schedule.len()
            ),
        ));
    }
    for (i, wait) in schedule.iter().enumerate() {
        positive(&format!("delivery.retry_schedule[{i}]"), *wait)?;
    }
    for (key, timeout) in [
        ("delivery.max_age", delivery.max_age),
        ("delivery.connect_timeout", delivery.connect_timeout),
        ("delivery.greeting_timeout", delivery.greeting_timeout),
        ("delivery.helo_timeout", delivery.helo_timeout),
        ("delivery.mail_timeout", delivery.mail_timeout),
        ("delivery.rcpt_timeout", delivery.rcpt_timeout),
        ("delivery.data_timeout", delivery.data_timeout),
        ("delivery.data_block_timeout", delivery.data_block_timeout),
        ("delivery.dot_timeout", delivery.dot_timeout),
    ] {
        positive(key, timeout)?;
    }
    // `idle_timeout` and `pause` may be 0: QUIT at once, retry at once.
    if delivery.pause > delivery.pause_max {
        return Err(invalid_pair(
            "delivery.pause",
            "delivery.pause_max",
            format!(
                "delivery.pause ({:?}) must not be longer than delivery.pause_max ({:?})",
                delivery.pause, delivery.pause_max
            ),
        ));
    }
    Ok(())
}

fn positive(key: &str, duration: Duration) -> Result<(), Invalid> {
    if duration.is_zero() {
        return Err(invalid(key, "must be longer than 0"));
    }
    Ok(())
}

fn dns(dns: &DnsConfig) -> Result<(), Invalid> {
    for (i, nameserver) in dns.nameservers.iter().enumerate() {
        if nameserver.port() == 0 {
            return Err(invalid(
                format!("dns.nameservers[{i}]"),
                format!("{nameserver} has port 0; DNS is on port 53"),
            ));
        }
    }
    positive("dns.timeout", dns.timeout)?;
    at_least("dns.attempts", dns.attempts, 1, "")?;
    at_most("dns.attempts", dns.attempts, DNS_ATTEMPTS_MAX)
}

fn shaping(shaping: &Shaping) -> Result<(), Invalid> {
    at_least("shaping.connections_max", shaping.connections_max, 1, "")?;
    at_least(
        "shaping.messages_per_connection_max",
        shaping.messages_per_connection_max,
        1,
        "",
    )?;
    // Over 100 is allowed: a peer that takes fewer answers 452 for the
    // rest, a temporary failure (RFC 5321 §4.5.3.1.10).
    at_least(
        "shaping.recipients_per_transaction_max",
        shaping.recipients_per_transaction_max,
        1,
        "",
    )
}

/// A `[[route]]` or `[[destination]]` domain; `"*"` only where `wildcard`.
fn table_domain(key: &str, name: &str, wildcard: bool) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if name == "*" {
        if wildcard {
            return Ok(());
        }
        return Err(invalid(
            key,
            "\"*\" is not a domain; [shaping] covers every domain",
        ));
    }
    domain(name).map_err(|message| invalid(key, message))
}

/// Remembers the first table `i` of each domain; a second is an error.
fn unique_domain<'c>(
    seen: &mut HashMap<&'c str, usize>,
    table: &str,
    i: usize,
    name: &'c str,
) -> Result<(), Invalid> {
    if let Some(first) = seen.insert(name, i) {
        return Err(invalid(
            format!("{table}[{i}].domain"),
            format!("{name:?} is already the domain of {table}[{first}]"),
        ));
    }
    Ok(())
}

fn routes(routes: &[RouteConfig]) -> Result<(), Invalid> {
    let mut seen = HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        // `.example.com`: every subdomain of example.com (not itself).
        let name = route.domain.strip_prefix('.').unwrap_or(&route.domain);
        table_domain(&format!("route[{i}].domain"), name, true)?;
        if route.domain.starts_with('.') && name == "*" {
            return Err(invalid(
                format!("route[{i}].domain"),
                "\".*\" is not a domain; \"*\" is every domain",
            ));
        }
        unique_domain(&mut seen, "route", i, &route.domain)?;
        let key = format!("route[{i}].next_hop");
        let hop = &route.next_hop;
        if hop.ip().is_none() {
            hostname(&hop.host).map_err(|message| invalid(&key, message))?;
        }
        if hop.port == 0 {
            return Err(invalid(key, format!("{hop}: port 0 is not a port")));
        }
        route_auth(i, route)?;
    }
    Ok(())
}

/// A route's credentials: a user with exactly one source of password,
/// and nothing that SASL PLAIN (RFC 4616 §2: NUL separates the fields)
/// could not carry. Messages never quote the password.
fn route_auth(i: usize, route: &RouteConfig) -> Result<(), Invalid> {
    let key = |name: &str| format!("route[{i}].{name}");
    let password = route.auth_password.as_ref();
    let file = route.auth_password_file.as_ref();
    let Some(user) = &route.auth_user else {
        for (name, set) in [
            ("auth_password", password.is_some()),
            ("auth_password_file", file.is_some()),
            ("auth_plaintext", route.auth_plaintext),
        ] {
            if set {
                return Err(invalid(key(name), "needs auth_user"));
            }
        }
        return Ok(());
    };
    if user.is_empty() {
        return Err(invalid(key("auth_user"), "must not be empty"));
    }
    if user.contains(['\0', '\r', '\n']) {
        return Err(invalid(key("auth_user"), "must not contain NUL, CR or LF"));
    }
    match (password, file) {
        (None, None) => Err(invalid(
            key("auth_user"),
            "needs auth_password or auth_password_file",
        )),
        (Some(_), Some(_)) => Err(invalid_pair(
            &key("auth_password_file"),
            &key("auth_password"),
            "give auth_password or auth_password_file, not both",
        )),
        (Some(password), None) => password_text(&key("auth_password"), password.expose()),
        (None, Some(path)) if path.as_os_str().is_empty() => {
            Err(invalid(key("auth_password_file"), "must not be empty"))
        }
        (None, Some(_)) => Ok(()),
    }
}

/// A password SASL PLAIN can carry; the message does not show it.
fn password_text(key: &str, password: &str) -> Result<(), Invalid> {
    if password.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if password.contains('\0') {
        return Err(invalid(key, "must not contain NUL"));
    }
    Ok(())
}

/// Reads each route's `auth_password_file` into its `auth_password`, after
/// [`validate`]: the file's one trailing newline (`echo pw > file`) is not
/// part of the password. An error names the key and the file, never the
/// contents.
pub(super) fn read_password_files(config: &mut Config) -> Result<(), Invalid> {
    for (i, route) in config.routes.iter_mut().enumerate() {
        let Some(path) = &route.auth_password_file else {
            continue;
        };
        let key = format!("route[{i}].auth_password_file");
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(&key, format!("cannot read {}: {e}", path.display())))?;
        let password = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        password_text(&key, password).map_err(|e| {
            invalid(
                &key,
                format!("{}: the password {}", path.display(), e.message),
            )
        })?;
        route.auth_password = Some(super::Secret::new(password));
    }
    Ok(())
}

fn destinations(destinations: &[DestinationConfig]) -> Result<(), Invalid> {
    let mut seen = HashMap::new();
    for (i, destination) in destinations.iter().enumerate() {
        table_domain(
            &format!("destination[{i}].domain"),
            &destination.domain,
            false,
        )?;
        unique_domain(&mut seen, "destination", i, &destination.domain)?;
        for (name, value) in [
            ("connections_max", destination.connections_max),
            (
                "messages_per_connection_max",
                destination.messages_per_connection_max,
            ),
            (
                "recipients_per_transaction_max",
                destination.recipients_per_transaction_max,
            ),
        ] {
            if let Some(value) = value {
                at_least(&format!("destination[{i}].{name}"), value, 1, "")?;
            }
        }
    }
    Ok(())
}

/// Networks of this host or of a private network, whose clients may
/// reasonably relay: loopback, RFC 1918, shared address space (RFC 6598),
/// link-local, and IPv6 unique local (RFC 4193).
const PRIVATE_NETWORKS: [&str; 9] = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];

/// Whether every address of `net` is in a [`PRIVATE_NETWORKS`] range. An
/// IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is judged as the IPv4
/// network it carries, since [`super::RelayConfig::allows`] matches it so.
fn is_private(net: &IpNet) -> bool {
    let net = match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).unwrap_or_default()),
            None => *net,
        },
        _ => *net,
    };
    PRIVATE_NETWORKS
        .iter()
        .filter_map(|private| private.parse::<IpNet>().ok())
        .any(|private| private.contains(&net))
}

/// What a configuration may do but most likely should not. `check-config`
/// prints these and `baton run` logs them; neither refuses the file, since
/// each has a legitimate use (a relay behind a firewall, a test rig).
pub(super) fn warnings(config: &Config) -> Vec<Invalid> {
    let mut warnings = open_relay(config);
    for (i, listener) in config.listeners.iter().enumerate() {
        warnings.extend(clear_text_auth(
            i,
            listener,
            listener.auth_plaintext,
            config,
        ));
    }
    warnings
}

/// `relay.networks` wider than private ranges while a listener takes
/// connections from other hosts: anyone in those networks may relay. One
/// warning per network, at its line.
fn open_relay(config: &Config) -> Vec<Invalid> {
    let Some((i, exposed)) = config
        .listeners
        .iter()
        .enumerate()
        .find(|(_, l)| !is_loopback(l.address.ip()))
    else {
        return Vec::new();
    };
    config
        .relay
        .networks
        .iter()
        .enumerate()
        .filter(|(_, net)| !is_private(net))
        .map(|(n, net)| {
            invalid_pair(
                &format!("relay.networks[{n}]"),
                "relay.networks",
                format!(
                    "{net} reaches beyond loopback and private networks, and listener[{i}] \
                     ({}) is not on loopback: anyone there may relay mail (an open relay)",
                    exposed.address
                ),
            )
        })
        .collect()
}

/// AUTH over a connection without TLS sends the password readable by
/// anyone on the path. `auth_plaintext` is the listener's setting; an
/// implicit-TLS listener has no such connection, so it is no risk there.
fn clear_text_auth(
    i: usize,
    listener: &ListenerConfig,
    auth_plaintext: bool,
    config: &Config,
) -> Option<Invalid> {
    let implicit = listener.tls_mode(&config.tls) == ListenerTls::Implicit;
    (auth_plaintext && !implicit).then(|| {
        invalid(
            format!("listener[{i}].auth_plaintext"),
            "AUTH is offered without TLS: passwords cross the network in clear text",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::rejects;
    use super::super::Config;
    use super::RETRY_SCHEDULE_STEPS_MAX;

    #[test]
    fn auth_users_names_a_file() {
        let c = Config::parse("[auth]\nusers = \"/etc/baton/users.toml\"\n", "test.toml").unwrap();
        assert_eq!(c.auth.users, Some("/etc/baton/users.toml".into()));
        rejects(
            "\n[auth]\nusers = \"/etc/baton/\"\n",
            "auth.users",
            3,
            "directory",
        );
        rejects("[auth]\nuser = \"u.toml\"\n", "auth.user", 2, "unknown key");
    }

    #[test]
    fn tls_listeners_need_a_certificate() {
        rejects(
            "[[listener]]\naddress = \"127.0.0.1:465\"\ntls = \"implicit\"\n",
            "listener[0].tls",
            3,
            "needs a certificate",
        );
        rejects(
            "[[listener]]\naddress = \"127.0.0.1:587\"\ntls_required = true\n",
            "listener[0].tls_required",
            3,
            "offers no TLS",
        );
        let error = Config::parse("[tls]\ncertificate = \"/c.pem\"\n", "test.toml").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("tls.key: a certificate needs its key"),
            "{error}"
        );
        rejects(
            "[tls]\ncertificate = \"/c.pem\"\nkey = \"/k.pem\"\n\
             [[tls.sni]]\nname = \"bad name\"\ncertificate = \"/c\"\nkey = \"/k\"\n",
            "tls.sni[0].name",
            5,
            "not a domain name",
        );
        rejects(
            "[[listener]]\naddress = \"127.0.0.1:25\"\ntls = \"sometimes\"\n",
            "listener[0].tls",
            3,
            "unknown variant",
        );
        rejects(
            "[shaping]\ntls = \"maybe\"\n",
            "shaping.tls",
            2,
            "unknown variant",
        );
        let c = Config::parse(
            "[tls]\ncertificate = \"/c.pem\"\nkey = \"/k.pem\"\n\
             [[listener]]\naddress = \"127.0.0.1:587\"\ntls_required = true\n",
            "test.toml",
        )
        .unwrap();
        assert_eq!(
            c.listeners[0].tls_mode(&c.tls),
            crate::config::ListenerTls::StartTls
        );
    }

    #[test]
    fn ring_entries_power_of_two_in_range() {
        rejects(
            "[server]\nring_entries = 1000\n",
            "server.ring_entries",
            2,
            "power of two",
        );
        rejects(
            "[server]\nring_entries = 4\n",
            "server.ring_entries",
            2,
            "power of two",
        );
        rejects(
            "[server]\nring_entries = 65536\n",
            "server.ring_entries",
            2,
            "32768",
        );
        for ok in [8, 1024, 32768] {
            Config::parse(&format!("server.ring_entries = {ok}"), "t").unwrap();
        }
    }

    #[test]
    fn shards_bounded() {
        rejects(
            "[server]\nshards = 100000\n",
            "server.shards",
            2,
            "at most 1024",
        );
    }

    #[test]
    fn hostname_is_a_domain() {
        rejects(
            "[server]\n\nhostname = \"mx one\"\n",
            "server.hostname",
            3,
            "domain",
        );
        rejects(
            "[server]\nhostname = \"a..b\"\n",
            "server.hostname",
            2,
            "domain",
        );
        rejects(
            "[server]\nhostname = \"-a.example\"\n",
            "server.hostname",
            2,
            "domain",
        );
        let config = Config::parse("server.hostname = \"mx1.example.com\"", "t").unwrap();
        assert_eq!(config.server.hostname, "mx1.example.com");
    }

    #[test]
    fn segment_bytes_aligned_and_large_enough() {
        rejects(
            "[spool]\nsegment_bytes = 100000\n",
            "spool.segment_bytes",
            2,
            "multiple of 4096",
        );
        rejects(
            "[spool]\nsegment_bytes = 61440\n",
            "spool.segment_bytes",
            2,
            "at least 65536",
        );
        rejects(
            "[spool]\nsegment_bytes = 8589934592\n",
            "spool.segment_bytes",
            2,
            "at most",
        );
        Config::parse("spool.segment_bytes = 65536", "t").unwrap();
    }

    #[test]
    fn spool_path_and_size() {
        rejects("[spool]\npath = \"\"\n", "spool.path", 2, "empty");
        rejects(
            "[spool]\nsize_bytes_max = 4096\n",
            "spool.size_bytes_max",
            2,
            "one segment",
        );
    }

    #[test]
    fn rfc_minimums() {
        rejects(
            "[limits]\ncommand_line_bytes_max = 511\n",
            "limits.command_line_bytes_max",
            2,
            "4.5.3.1.4",
        );
        rejects(
            "[limits]\ntext_line_bytes_max = 998\n",
            "limits.text_line_bytes_max",
            2,
            "4.5.3.1.6",
        );
        rejects(
            "[limits]\nrecipients_per_message_max = 99\n",
            "limits.recipients_per_message_max",
            2,
            "4.5.3.1.8",
        );
        Config::parse(
            "[limits]\ncommand_line_bytes_max = 512\ntext_line_bytes_max = 1000\n\
             recipients_per_message_max = 100\n",
            "t",
        )
        .unwrap();
    }

    #[test]
    fn limits_are_positive_and_bounded() {
        rejects(
            "[limits]\nmessage_bytes_max = 0\n",
            "limits.message_bytes_max",
            2,
            "at least 1",
        );
        rejects(
            "[limits]\nmessage_bytes_max = 10000000000\n",
            "limits.message_bytes_max",
            2,
            "at most",
        );
        rejects(
            "[limits]\ntext_line_bytes_max = 2000000\n",
            "limits.text_line_bytes_max",
            2,
            "at most",
        );
        for key in [
            "commands_per_session_max",
            "errors_per_session_max",
            "connections_per_shard_max",
            "connections_per_ip_max",
        ] {
            rejects(
                &format!("[limits]\n{key} = 0\n"),
                &format!("limits.{key}"),
                2,
                "at least 1",
            );
        }
        rejects(
            "[limits]\ndata_in_flight_max = 4096\n",
            "limits.data_in_flight_max",
            2,
            "at least 65536",
        );
    }

    #[test]
    fn timeouts_positive() {
        rejects(
            "[limits]\ncommand_timeout = \"0s\"\n",
            "limits.command_timeout",
            2,
            "longer than 0",
        );
        rejects(
            "[limits]\n\ndata_timeout = \"0ms\"\n",
            "limits.data_timeout",
            3,
            "longer than 0",
        );
    }

    #[test]
    fn at_least_one_listener() {
        rejects("listener = []\n", "listener", 1, "at least one");
    }

    #[test]
    fn listener_addresses_unique() {
        let text = "[[listener]]\naddress = \"127.0.0.1:25\"\n\
                    [[listener]]\naddress = \"[::1]:25\"\n\
                    [[listener]]\naddress = \"127.0.0.1:25\"\n";
        rejects(text, "listener[2].address", 6, "already a listener");
    }

    #[test]
    fn admin_is_not_a_listener() {
        rejects(
            "[admin]\naddress = \"127.0.0.1:2525\"\n",
            "admin.address",
            2,
            "also an SMTP listener",
        );
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        for address in [
            "0.0.0.0:8025",
            "[::]:8025",
            "192.0.2.1:8025",
            "[2001:db8::1]:8025",
        ] {
            rejects(
                &format!("[admin]\n\naddress = \"{address}\"\n"),
                "admin.address",
                3,
                "set admin.token_file",
            );
        }
        rejects(
            "[admin]\naddress = \"0.0.0.0:8025\"\ntoken_file = \"\"\n",
            "admin.address",
            2,
            "needs a token",
        );
        for address in ["127.0.0.1:8025", "127.0.0.2:8025", "[::1]:8025", ""] {
            Config::parse(&format!("admin.address = \"{address}\""), "t").unwrap();
        }
        let c = Config::parse(
            "[admin]\naddress = \"0.0.0.0:8025\"\ntoken_file = \"/etc/baton/admin.token\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            c.admin.token_file.as_deref(),
            Some(std::path::Path::new("/etc/baton/admin.token"))
        );
    }

    #[test]
    fn http_injection_off_loopback_needs_tls_and_credentials() {
        rejects(
            "[http]\nlisten = \"0.0.0.0:8026\"\ntoken_file = \"/etc/baton/inject.token\"\n",
            "http.listen",
            2,
            "needs TLS",
        );
        rejects(
            "[http]\nlisten = \"127.0.0.1:8026\"\nauth_required = true\n",
            "http.listen",
            2,
            "set http.token_file or [auth] users",
        );
        rejects(
            "[http]\nlisten = \"127.0.0.1:8025\"\n",
            "http.listen",
            2,
            "another listener",
        );
        rejects(
            "[http]\nbody_bytes_max = 10\n",
            "http.body_bytes_max",
            2,
            "at least",
        );
        rejects(
            "[http]\nrecipients_per_request_max = 0\n",
            "http.recipients_per_request_max",
            2,
            "more than zero",
        );
        let c = Config::parse("[http]\nlisten = \"127.0.0.1:8026\"\n", "t").unwrap();
        assert!(!c.http.credentials_required() && !c.http.tls());
    }

    /// The warnings of `text`, as `(key, line, message)`.
    fn warnings(text: &str) -> Vec<(String, Option<usize>, String)> {
        let (_, warnings) = Config::parse_with_warnings(text, "test.toml").expect(text);
        warnings
            .iter()
            .map(|w| (w.key().to_owned(), w.line(), w.message().to_owned()))
            .collect()
    }

    #[test]
    fn an_open_relay_is_warned_about_at_its_network() {
        let public = "[[listener]]\naddress = \"0.0.0.0:25\"\n\n[relay]\n";
        let found = warnings(&format!(
            "{public}networks = [\"10.0.0.0/8\",\n  \"0.0.0.0/0\"]\n"
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        let (key, line, message) = &found[0];
        assert_eq!((key.as_str(), *line), ("relay.networks[1]", Some(6)));
        assert!(message.contains("open relay"), "{message}");
        assert!(message.contains("0.0.0.0:25"), "{message}");
        for wide in [
            "192.0.2.0/24",
            "::/0",
            "2001:db8::/32",
            "::ffff:0.0.0.0/96",
            "8.8.8.8",
        ] {
            let found = warnings(&format!("{public}networks = [\"{wide}\"]\n"));
            assert_eq!(found.len(), 1, "{wide}: {found:?}");
        }
        // Private ranges, and a public network whose listeners are all on
        // loopback, are no open relay.
        let private = "[\"127.0.0.0/8\", \"10.1.0.0/16\", \"172.16.0.0/12\", \"192.168.1.0/24\", \
                       \"100.64.0.0/10\", \"169.254.0.0/16\", \"::1\", \"fd00::/8\", \"fe80::/64\", \
                       \"::ffff:10.0.0.0/104\"]";
        assert_eq!(warnings(&format!("{public}networks = {private}\n")), []);
        assert_eq!(warnings("[relay]\nnetworks = [\"0.0.0.0/0\"]\n"), []);
        assert_eq!(warnings(""), []);
    }

    #[test]
    fn auth_in_clear_text_is_warned_about() {
        let found = warnings(
            "[[listener]]\naddress = \"127.0.0.1:587\"\n\
             [[listener]]\naddress = \"127.0.0.1:2587\"\nauth_plaintext = true\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        let (key, line, message) = &found[0];
        assert_eq!(
            (key.as_str(), *line),
            ("listener[1].auth_plaintext", Some(5))
        );
        assert!(message.contains("clear text"), "{message}");
    }

    #[test]
    fn delivery_rules() {
        rejects(
            "[delivery]\nmx_port = 0\n",
            "delivery.mx_port",
            2,
            "at least 1",
        );
        rejects(
            "[delivery]\nhelo_name = \"out bound\"\n",
            "delivery.helo_name",
            2,
            "domain",
        );
        rejects(
            "[delivery]\nhelo_name = \"[192.0.2.300]\"\n",
            "delivery.helo_name",
            2,
            "address literal",
        );
        rejects(
            "[delivery]\nretry_schedule = []\n",
            "delivery.retry_schedule",
            2,
            "at least one",
        );
        rejects(
            "[delivery]\nretry_schedule = [\n  \"1m\",\n  \"0s\",\n]\n",
            "delivery.retry_schedule[1]",
            4,
            "longer than 0",
        );
        let too_many = vec!["\"1m\""; RETRY_SCHEDULE_STEPS_MAX + 1].join(", ");
        rejects(
            &format!("[delivery]\nretry_schedule = [{too_many}]\n"),
            "delivery.retry_schedule",
            2,
            "at most 64",
        );
        for key in [
            "max_age",
            "connect_timeout",
            "greeting_timeout",
            "helo_timeout",
            "mail_timeout",
            "rcpt_timeout",
            "data_timeout",
            "data_block_timeout",
            "dot_timeout",
        ] {
            rejects(
                &format!("[delivery]\n\n{key} = \"0s\"\n"),
                &format!("delivery.{key}"),
                3,
                "longer than 0",
            );
        }
        let c = Config::parse(
            "[delivery]\nhelo_name = \"[IPv6:2001:db8::1]\"\nidle_timeout = \"0s\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.delivery.helo_name, "[IPv6:2001:db8::1]");
    }

    #[test]
    fn pause_not_past_pause_max_names_the_key_written() {
        rejects(
            "[delivery]\npause = \"10m\"\n",
            "delivery.pause",
            2,
            "pause_max (300s)",
        );
        rejects(
            "[delivery]\n\npause_max = \"100ms\"\n",
            "delivery.pause_max",
            3,
            "pause (1s)",
        );
        rejects(
            "[delivery]\npause_max = \"1m\"\npause = \"2m\"\n",
            "delivery.pause",
            3,
            "longer than",
        );
        Config::parse("delivery.pause = \"5m\"", "t").unwrap();
    }

    #[test]
    fn dns_rules() {
        rejects("[dns]\nattempts = 0\n", "dns.attempts", 2, "at least 1");
        rejects("[dns]\nattempts = 17\n", "dns.attempts", 2, "at most 16");
        rejects(
            "[dns]\ntimeout = \"0s\"\n",
            "dns.timeout",
            2,
            "longer than 0",
        );
        rejects(
            "[dns]\nnameservers = [\"192.0.2.53:53\", \"192.0.2.54:0\"]\n",
            "dns.nameservers[1]",
            2,
            "port 0",
        );
    }

    #[test]
    fn shaping_minimums() {
        for key in [
            "connections_max",
            "messages_per_connection_max",
            "recipients_per_transaction_max",
        ] {
            rejects(
                &format!("[shaping]\n{key} = 0\n"),
                &format!("shaping.{key}"),
                2,
                "at least 1",
            );
            rejects(
                &format!("[[destination]]\ndomain = \"a.example\"\n{key} = 0\n"),
                &format!("destination[0].{key}"),
                3,
                "at least 1",
            );
        }
        // Past RFC 5321's 100 a peer may refuse recipients, but may not.
        Config::parse(
            "shaping.recipients_per_transaction_max = 1000\nshaping.message_rate_max = 0\n",
            "t",
        )
        .unwrap();
    }

    #[test]
    fn route_rules() {
        let route = |domain: &str, next_hop: &str| {
            format!("[[route]]\ndomain = \"{domain}\"\nnext_hop = \"{next_hop}\"\n")
        };
        rejects(&route("", "relay:25"), "route[0].domain", 2, "empty");
        rejects(
            &route("a..example", "relay:25"),
            "route[0].domain",
            2,
            "domain",
        );
        rejects(
            &route("a.example", "relay:0"),
            "route[0].next_hop",
            3,
            "port 0",
        );
        rejects(
            &route("a.example", "re lay:25"),
            "route[0].next_hop",
            3,
            "domain",
        );
        let twice = route("*", "a:25") + &route("b.example", "b:25") + &route("B.Example", "c:25");
        rejects(
            &twice,
            "route[2].domain",
            8,
            "already the domain of route[1]",
        );
        let literal = route("[192.0.2.1]", "[::1]:25");
        let c = Config::parse(&literal, "t").unwrap();
        assert_eq!(c.route_for("[192.0.2.1]").unwrap().port, 25);
    }

    #[test]
    fn route_credentials_need_a_user_and_one_password() {
        let route =
            |extra: &str| format!("[[route]]\ndomain = \"*\"\nnext_hop = \"relay:587\"\n{extra}");
        rejects(
            &route("auth_user = \"u\"\n"),
            "route[0].auth_user",
            4,
            "needs auth_password",
        );
        rejects(
            &route("auth_password = \"p\"\n"),
            "route[0].auth_password",
            4,
            "needs auth_user",
        );
        rejects(
            &route("auth_plaintext = true\n"),
            "route[0].auth_plaintext",
            4,
            "needs auth_user",
        );
        rejects(
            &route("auth_user = \"\"\nauth_password = \"p\"\n"),
            "route[0].auth_user",
            4,
            "empty",
        );
        rejects(
            &route("auth_user = \"u\"\nauth_password = \"p\"\nauth_password_file = \"/f\"\n"),
            "route[0].auth_password_file",
            6,
            "not both",
        );
        let error = Config::parse(
            &route("auth_user = \"u\"\nauth_password = \"sec\\u0000ret\"\n"),
            "test.toml",
        )
        .unwrap_err();
        assert_eq!(error.key(), "route[0].auth_password", "{error}");
        assert!(!error.to_string().contains("sec"), "never quoted: {error}");
        let c = Config::parse(&route("auth_user = \"u\"\nauth_password = \"p\"\n"), "t").unwrap();
        assert_eq!(c.routes[0].auth_password.as_ref().unwrap().expose(), "p");
        assert!(!c.routes[0].auth_plaintext);
    }

    #[test]
    fn a_password_file_is_read_at_load_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cret\n").unwrap();
        let text = format!(
            "[[route]]\ndomain = \"*\"\nnext_hop = \"relay:587\"\nauth_user = \"u\"\nauth_password_file = \"{}\"\n",
            path.display()
        );
        let c = Config::parse(&text, "t").unwrap();
        assert_eq!(
            c.routes[0].auth_password.as_ref().unwrap().expose(),
            "s3cret"
        );
        // Debug output (logs, errors) never shows it.
        assert!(!format!("{c:?}").contains("s3cret"));
        let missing = text.replace("password\"", "missing\"");
        rejects(&missing, "route[0].auth_password_file", 5, "cannot read");
        std::fs::write(&path, "\n").unwrap();
        rejects(&text, "route[0].auth_password_file", 5, "empty");
    }

    #[test]
    fn destination_rules() {
        let destination =
            |domain: &str| format!("[[destination]]\ndomain = \"{domain}\"\nconnections_max = 1\n");
        rejects(&destination(""), "destination[0].domain", 2, "empty");
        rejects(&destination("*"), "destination[0].domain", 2, "[shaping]");
        rejects(
            &destination("-bad.example"),
            "destination[0].domain",
            2,
            "domain",
        );
        let twice = destination("Gmail.com") + &destination("gmail.com");
        rejects(
            &twice,
            "destination[1].domain",
            5,
            "already the domain of destination[0]",
        );
    }

    #[test]
    fn log_level_is_a_filter() {
        rejects(
            "[log]\nlevel = \"baton=loud\"\n",
            "log.level",
            2,
            "target=level",
        );
        // A word that is no level passed as a target and logged nothing.
        rejects("[log]\nlevel = \"verbose!!\"\n", "log.level", 2, "a level");
        rejects("[log]\nlevel = \"verbose\"\n", "log.level", 2, "a level");
        Config::parse("log.level = \"baton=debug,warn\"", "t").unwrap();
        Config::parse("log.level = \"INFO\"", "t").unwrap();
    }
}
