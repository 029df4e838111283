//! Configuration: one TOML file, validated at start.
//!
//! The built-in defaults are [`DEFAULT_CONFIG`] itself, the text that
//! `baton --print-default-config` prints: a file is laid over it key by key
//! (tables merge, arrays such as `[[listener]]` replace), so each default is
//! written once, next to its comment, and `baton` starts with no file at all.
//!
//! Every problem is a [`ConfigError`] that names the file, line, column and
//! key: `baton.toml:7:1: server.shardz: unknown key, expected one of ...`.
//! Unknown keys are errors, so a typo cannot silently leave a default in
//! place.
//!
//! - `auth`: `[auth]`, SMTP AUTH; the users file it names is read by
//!   `crate::auth`, which reports its errors as this module does
//!   ([`parse_toml`]).
//! - `delivery`: the sections delivery reads (`[delivery]`, `[dns]`,
//!   `[shaping]`, `[[route]]`, `[[destination]]`) and the per-domain
//!   lookups over them.
//! - `http`: `[http]`, the HTTP injection listener.
//! - `de`: the merge, and the values TOML has no type for (durations,
//!   addresses, networks, next hops).
//! - `validate`: the rules beyond types (RFC 5321 minimums, alignment).
//! - `error`: [`ConfigError`], and mapping byte offsets to keys and lines.

#![forbid(unsafe_code)]

mod auth;
mod cluster;
mod de;
mod delivery;
mod dkim;
mod duration;
mod error;
mod http;
mod reload;
mod validate;
mod webhook;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_spool::SyncMode;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::DeTable;

pub use auth::{AuthConfig, ListenerAuth};
pub use delivery::{
    DeliveryConfig, DestinationConfig, DnsConfig, NextHop, PoolConfig, RouteConfig, Secret,
    SenderPoolConfig, Shaping, ShapingAction, ShapingRuleConfig, SiteConfig, SourceConfig,
    TlsPolicy,
};

pub use cluster::ClusterConfig;
pub use de::parse_next_hop;
pub use dkim::{DkimAlgorithm, DkimDefaults, DkimKeyConfig};
pub use duration::parse_duration;
pub use error::{ConfigError, Position};
pub use http::HttpConfig;
pub use webhook::{WebhookConfig, BATCH_HEADER, SIGNATURE_HEADER};

/// The default configuration: every key with its default value and a
/// one-line comment. Printed by `baton --print-default-config`.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Where `server.hostname = ""` looks for the machine's name.
const HOSTNAME_PATH: &str = "/proc/sys/kernel/hostname";

/// The whole configuration. See [`DEFAULT_CONFIG`] for what each key means.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    /// `[[listener]]` tables; at least one, addresses unique.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    pub spool: SpoolSettings,
    pub limits: Limits,
    pub smtp: SmtpSettings,
    pub relay: RelayConfig,
    pub delivery: DeliveryConfig,
    pub dns: DnsConfig,
    pub shaping: Shaping,
    /// `[[route]]` tables; none by default. See [`Config::route_for`].
    #[serde(rename = "route", default)]
    pub routes: Vec<RouteConfig>,
    /// `[[source]]` tables: local addresses to send from; none by default.
    #[serde(rename = "source", default)]
    pub sources: Vec<SourceConfig>,
    /// `[[pool]]` tables: weighted sources; none by default.
    #[serde(rename = "pool", default)]
    pub pools: Vec<PoolConfig>,
    /// `[[sender_pool]]` tables: pools by MAIL FROM domain; none by default.
    #[serde(rename = "sender_pool", default)]
    pub sender_pools: Vec<SenderPoolConfig>,
    /// `[[site]]` tables: sites by MX host name patterns, before the
    /// shipped ones (`crate::route::sites`).
    #[serde(rename = "site", default)]
    pub sites: Vec<SiteConfig>,
    /// `[[shaping_rule]]` tables: the operator's rules for a receiver's
    /// "slow down", before the shipped ones (`crate::shaping`).
    #[serde(rename = "shaping_rule", default)]
    pub shaping_rules: Vec<ShapingRuleConfig>,
    /// `[[destination]]` tables; none by default. See [`Config::shaping_for`].
    #[serde(rename = "destination", default)]
    pub destinations: Vec<DestinationConfig>,
    pub tls: TlsConfig,
    /// `[[dkim]]` keys; none by default.
    #[serde(rename = "dkim", default)]
    pub dkim: Vec<DkimKeyConfig>,
    pub dkim_defaults: DkimDefaults,
    pub admin: AdminConfig,
    pub auth: AuthConfig,
    pub suppression: SuppressionConfig,
    pub unsubscribe: UnsubscribeConfig,
    pub http: HttpConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
    /// `[[webhook]]` tables: where the event log is posted; none by default.
    #[serde(rename = "webhook", default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// `[server]`: the process and its shards.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Announced in the greeting and EHLO reply. Never empty once loaded:
    /// `""` in the file is replaced by the machine's hostname.
    pub hostname: String,
    /// Shard threads; 0 = one per available core (see [`Config::shard_count`]).
    pub shards: usize,
    /// Pin each shard thread to a core.
    pub pin_cores: bool,
    /// io_uring submission queue entries per shard: a power of two, 8..=32768.
    pub ring_entries: u32,
    /// io_uring SQPOLL.
    pub sqpoll: bool,
}

/// `[[listener]]`: one address accepting SMTP.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(deserialize_with = "de::socket_addr")]
    pub address: SocketAddr,
    /// A file's `[[listener]]` replaces the default one whole, so the keys
    /// an operator leaves out take their defaults here.
    #[serde(default)]
    pub tls: ListenerTls,
    /// Refuse MAIL before STARTTLS (`530 5.7.0`, RFC 3207 §4).
    #[serde(default)]
    pub tls_required: bool,
    /// SMTP AUTH on this listener.
    #[serde(default)]
    pub auth: ListenerAuth,
    /// Offer AUTH over connections without TLS (tests, trusted networks).
    #[serde(default)]
    pub auth_plaintext: bool,
}

impl ListenerConfig {
    /// What this listener does about TLS, `auto` resolved: STARTTLS when
    /// `[tls]` has a certificate.
    pub fn tls_mode(&self, tls: &TlsConfig) -> ListenerTls {
        match self.tls {
            ListenerTls::Auto if tls.certificate.is_some() => ListenerTls::StartTls,
            ListenerTls::Auto => ListenerTls::None,
            mode => mode,
        }
    }
}

/// `[[listener]] tls`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// STARTTLS when `[tls]` has a certificate, else none.
    #[default]
    Auto,
    /// Plain text only; STARTTLS is not offered.
    None,
    /// STARTTLS offered (RFC 3207).
    #[serde(rename = "starttls")]
    StartTls,
    /// The TLS handshake comes before the greeting (RFC 8314, port 465).
    Implicit,
}

/// `[tls]`: the server's certificates (one place owns them: `crate::tls`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first; `None` = no TLS (`""`).
    #[serde(deserialize_with = "de::optional_path")]
    pub certificate: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `certificate`.
    #[serde(deserialize_with = "de::optional_path")]
    pub key: Option<PathBuf>,
    /// Longest a client may take over the handshake, inbound and out.
    #[serde(deserialize_with = "de::duration")]
    pub handshake_timeout: Duration,
    /// `[[tls.sni]]`: other certificates, chosen by the name the client
    /// asks for (SNI, RFC 6066 §3).
    #[serde(default)]
    pub sni: Vec<SniCertificate>,
}

/// `[[tls.sni]]`: one name's certificate.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// Lowercased host name.
    #[serde(deserialize_with = "de::lowercase")]
    pub name: String,
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// `[spool]`: where and how messages are stored before delivery.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSettings {
    pub path: PathBuf,
    /// Segment file size: a multiple of 4096, at least 65536.
    pub segment_bytes: u64,
    #[serde(deserialize_with = "de::sync_mode")]
    pub sync: SyncMode,
    /// `None`: no limit (`0` in the file).
    #[serde(deserialize_with = "de::zero_is_none")]
    pub size_bytes_max: Option<u64>,
    /// New messages wait while the filesystem has less room; 0: off.
    pub free_bytes_min: u64,
    /// Spare segment files kept for outcomes on a full disk.
    pub reserve_segments: usize,
}

/// `[limits]`: every per-session and per-connection bound.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// At least 512 (RFC 5321 §4.5.3.1.4), CRLF included.
    pub command_line_bytes_max: usize,
    /// At least 1000 (RFC 5321 §4.5.3.1.6), CRLF included.
    pub text_line_bytes_max: usize,
    /// Advertised with SIZE (RFC 1870).
    pub message_bytes_max: u64,
    /// At least 100 (RFC 5321 §4.5.3.1.8).
    pub recipients_per_message_max: usize,
    pub commands_per_session_max: u32,
    pub errors_per_session_max: u32,
    /// `Received:` headers a message may carry (RFC 5321 §6.3: loops).
    pub received_headers_max: usize,
    pub connections_per_shard_max: usize,
    pub connections_per_ip_max: usize,
    #[serde(deserialize_with = "de::duration")]
    pub command_timeout: Duration,
    #[serde(deserialize_with = "de::duration")]
    pub data_timeout: Duration,
    /// Message data slower than this (bytes per second, averaged from the
    /// start of the message once it has taken `DATA_RATE_GRACE`) ends the
    /// session with `421 4.4.2`; 0 = no minimum.
    pub data_rate_min: u64,
    /// Bytes of message data all sessions may hold in memory at once (the
    /// buffers of messages not yet in the spool); past it, `452 4.3.1`.
    pub data_in_flight_max: u64,
}

/// `[smtp]`: protocol behaviour.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub bare_line_endings: BareLineEndingsSetting,
    /// Advertise CHUNKING and accept BDAT (RFC 3030).
    pub chunking: bool,
}

/// What to do with a bare CR or LF in message data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndingsSetting {
    /// Refuse the message: a bare line ending is how SMTP smuggling hides a
    /// second message inside the first.
    Reject,
    /// Rewrite to CRLF, for legacy senders.
    Normalize,
}

/// `[relay]`: who may send to any domain.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Client networks allowed to relay.
    #[serde(deserialize_with = "de::networks")]
    pub networks: Vec<IpNet>,
}

impl RelayConfig {
    /// Whether a client at `ip` may relay. An IPv4-mapped IPv6 address
    /// (`::ffff:127.0.0.1`, as a dual-stack socket reports IPv4 clients) is
    /// checked as the IPv4 address it carries.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let unmapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        self.networks
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&unmapped))
    }
}

/// `[admin]`: the admin HTTP listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `None`: no admin listener (`""` in the file).
    #[serde(deserialize_with = "de::optional_socket_addr")]
    pub address: Option<SocketAddr>,
    /// A file holding the bearer token every request but `GET /health`
    /// must carry; `None` (`""`): no token, allowed on loopback only. Read
    /// by `crate::admin::AdminToken::load`, at start and by `check-config`.
    #[serde(deserialize_with = "de::optional_path")]
    pub token_file: Option<PathBuf>,
}

/// `[suppression]`: the list of addresses not to mail
/// (`crate::policy::suppression`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionConfig {
    pub enabled: bool,
    /// The database file; `None` (`""`): `suppression.redb` in the spool
    /// directory. See [`SuppressionConfig::file`].
    #[serde(deserialize_with = "de::optional_path")]
    pub path: Option<PathBuf>,
    pub action: SuppressionAction,
    /// Hard bounces (5.1.1, 5.1.2, 5.1.10) add the address, scope global.
    pub from_bounces: bool,
}

impl SuppressionConfig {
    /// Where the list is kept.
    pub fn file(&self, spool: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| spool.join("suppression.redb"))
    }
}

/// `[unsubscribe]`: one-click unsubscribe links (RFC 8058,
/// `crate::policy::unsubscribe`) and the HTTPS listener that serves them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeConfig {
    /// The HTTPS listener; `None` (`""`): off, and no message gets links.
    #[serde(deserialize_with = "de::optional_socket_addr")]
    pub listen: Option<SocketAddr>,
    /// The links' base, `https://name[:port][/prefix]`; `None` (`""`):
    /// `https://<server.hostname>` and the listener's port unless 443.
    #[serde(deserialize_with = "de::optional_string")]
    pub url: Option<String>,
    /// Envelope sender domains whose mail (from trusted clients) gets
    /// links: `"example.com"`, `".example.com"` (subdomains), `"*"` (all).
    #[serde(deserialize_with = "de::lowercase_list")]
    pub domains: Vec<String>,
    /// An address offered as a `mailto:` link too; `None` (`""`): none.
    #[serde(deserialize_with = "de::optional_string")]
    pub mailto: Option<String>,
    /// How long a link works after its message was accepted.
    #[serde(deserialize_with = "de::duration")]
    pub token_ttl: Duration,
    /// The HMAC secret (at least 32 bytes of text); `None` (`""`):
    /// `unsubscribe.key` in the spool directory, made at first start.
    #[serde(deserialize_with = "de::optional_path")]
    pub secret_file: Option<PathBuf>,
}

/// What `RCPT` does with a suppressed recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SuppressionAction {
    /// `550 5.7.1`: the client learns it.
    Reject,
    /// `250`, then nothing sent, and a `suppressed` event.
    Drop,
}

/// The tracing target of the lines written per message (accepted,
/// delivered, deferred, failed), which `[log] per_message = false` turns
/// down to WARN.
pub const PER_MESSAGE_TARGET: &str = "baton::message";

/// `[log] format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing `EnvFilter` directive, e.g. `"info"` or `"baton=debug,warn"`.
    pub level: String,
    /// Lines as text, or one JSON object each.
    pub format: LogFormat,
    /// A line per accepted message and per delivery at INFO; `false`
    /// keeps only deferrals and failures (WARN), for high rates.
    pub per_message: bool,
    /// The delivery event log (JSON lines); `None` = none (`""` in the file).
    #[serde(deserialize_with = "de::optional_path")]
    pub events: Option<PathBuf>,
}

impl Default for Config {
    /// [`DEFAULT_CONFIG`], parsed.
    fn default() -> Config {
        Config::parse(DEFAULT_CONFIG, "<built-in defaults>")
            .expect("the built-in default configuration is valid (see tests)")
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`; a relative
    /// `spool.path` is taken from the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_warnings(path).map(|(config, _)| config)
    }

    /// [`Config::load`], and the file's warnings as in
    /// [`Config::parse_with_warnings`].
    pub fn load_with_warnings(path: &Path) -> Result<(Config, Vec<ConfigError>), ConfigError> {
        let origin = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(&origin, &e))?;
        let (mut config, warnings) = Config::parse_with_warnings(&text, &origin)?;
        // A relative spool path means beside the file, not wherever the
        // server happens to be started from (systemd starts it in `/`).
        if config.spool.path.is_relative() {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            config.spool.path = dir.unwrap_or(Path::new(".")).join(&config.spool.path);
        }
        Ok((config, warnings))
    }

    /// Parses and validates `text`, laid over the defaults; `origin` (a file
    /// name) starts every error message.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_with_warnings(text, origin).map(|(config, _)| config)
    }

    /// [`Config::parse`], and what the file allows but most likely should
    /// not (an open relay, passwords in clear text), each as a
    /// [`ConfigError`] naming the key and its line, for `check-config` to
    /// print and `baton run` to log.
    pub fn parse_with_warnings(
        text: &str,
        origin: &str,
    ) -> Result<(Config, Vec<ConfigError>), ConfigError> {
        let file = DeTable::parse(text).map_err(|e| ConfigError::syntax(origin, text, &e))?;
        let mut merged = DeTable::parse(DEFAULT_CONFIG).expect("the default config is TOML");
        de::merge(merged.get_mut(), file.get_ref().clone());
        // Every span in `merged` that a file's key or value can cause an
        // error at points into `text`; the defaults are tested valid.
        let mut config = Config::deserialize(toml::de::Deserializer::from(merged))
            .map_err(|e| ConfigError::deserialize(origin, text, file.get_ref(), &e))?;
        validate::validate(&config)
            .map_err(|invalid| ConfigError::invalid(origin, text, file.get_ref(), invalid))?;
        validate::read_password_files(&mut config)
            .map_err(|invalid| ConfigError::invalid(origin, text, file.get_ref(), invalid))?;
        webhook::read_secret_files(&mut config)
            .map_err(|invalid| ConfigError::invalid(origin, text, file.get_ref(), invalid))?;
        let warnings = validate::warnings(&config)
            .into_iter()
            .map(|warning| ConfigError::invalid(origin, text, file.get_ref(), warning))
            .collect();
        if config.server.hostname.is_empty() {
            config.server.hostname = machine_hostname();
        }
        if config.delivery.helo_name.is_empty() {
            config.delivery.helo_name = config.server.hostname.clone();
        }
        Ok((config, warnings))
    }

    /// Shard threads to run: `server.shards`, or one per available core if
    /// that is 0.
    pub fn shard_count(&self) -> usize {
        match self.server.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Parses `text`, a TOML file other than the configuration (the users
/// file), into `T`, with errors as the configuration's: file, line, column
/// and key. `check` holds the rules beyond types; it names the key at fault
/// as a path (`user[2].name`, `user[0].sender_domains[1]`) so the error can
/// point at the line that writes it.
pub(crate) fn parse_toml<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    check: impl FnOnce(&T) -> Result<(), (String, String)>,
) -> Result<T, ConfigError> {
    let file = DeTable::parse(text).map_err(|e| ConfigError::syntax(origin, text, &e))?;
    let value = T::deserialize(toml::de::Deserializer::from(file.clone()))
        .map_err(|e| ConfigError::deserialize(origin, text, file.get_ref(), &e))?;
    check(&value).map_err(|(key, message)| {
        let invalid = validate::Invalid {
            key,
            message,
            also: None,
        };
        ConfigError::invalid(origin, text, file.get_ref(), invalid)
    })?;
    Ok(value)
}

/// [`ConfigError`] for a file that cannot be read, for [`parse_toml`]'s
/// callers.
pub(crate) fn unreadable(origin: &str, error: &std::io::Error) -> ConfigError {
    ConfigError::unreadable(origin, error)
}

/// The kernel's hostname, or `localhost` if it cannot be read.
fn machine_hostname() -> String {
    std::fs::read_to_string(HOSTNAME_PATH)
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What the configuration's tests share.
#[cfg(test)]
mod testing {
    use super::Config;

    /// Parses `text` and expects an error on `key` at `line`, whose message
    /// contains `needle`.
    #[track_caller]
    pub fn rejects(text: &str, key: &str, line: usize, needle: &str) {
        let error = Config::parse(text, "test.toml").expect_err(text);
        assert_eq!(error.key(), key, "{error}");
        assert_eq!(error.line(), Some(line), "{error}");
        assert!(error.message().contains(needle), "{error}");
        assert!(
            error.to_string().starts_with(&format!("test.toml:{line}:")),
            "{error}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    #[test]
    fn default_config_parses_to_default() {
        assert_eq!(parse(DEFAULT_CONFIG).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing\n\n").unwrap(), Config::default());
    }

    #[test]
    fn defaults_are_as_documented() {
        let c = Config::default();
        assert_eq!(c.server.hostname, machine_hostname());
        assert!(!c.server.hostname.is_empty());
        assert_eq!(c.server.shards, 0);
        assert!(!c.server.pin_cores);
        assert_eq!(c.server.ring_entries, 1024);
        assert!(!c.server.sqpoll);
        assert_eq!(
            c.listeners,
            [ListenerConfig {
                address: "127.0.0.1:2525".parse().unwrap(),
                tls: ListenerTls::Auto,
                tls_required: false,
                auth: ListenerAuth::Optional,
                auth_plaintext: false,
            }]
        );
        assert_eq!(c.auth.users, None);
        assert_eq!(c.auth.verify_threads, 2);
        assert_eq!(c.listeners[0].tls_mode(&c.tls), ListenerTls::None);
        assert_eq!(c.tls.certificate, None);
        assert_eq!(c.tls.key, None);
        assert_eq!(c.tls.handshake_timeout, Duration::from_secs(10));
        assert!(c.tls.sni.is_empty());
        assert_eq!(c.spool.path, PathBuf::from("./baton-spool"));
        assert_eq!(c.spool.segment_bytes, 64 << 20);
        assert_eq!(c.spool.sync, SyncMode::Group);
        assert_eq!(c.spool.size_bytes_max, None);
        let l = &c.limits;
        assert_eq!(l.command_line_bytes_max, 2048);
        assert_eq!(l.text_line_bytes_max, 1000);
        assert_eq!(l.message_bytes_max, 52_428_800);
        assert_eq!(l.recipients_per_message_max, 1000);
        assert_eq!(l.commands_per_session_max, 10_000);
        assert_eq!(l.errors_per_session_max, 20);
        assert_eq!(l.received_headers_max, 50);
        assert_eq!(l.connections_per_shard_max, 10_000);
        assert_eq!(l.connections_per_ip_max, 500);
        assert_eq!(l.command_timeout, Duration::from_secs(300));
        assert_eq!(l.data_timeout, Duration::from_secs(180));
        assert_eq!(l.data_rate_min, 256);
        assert_eq!(
            l.data_in_flight_max,
            crate::inbound::DATA_IN_FLIGHT_MAX_DEFAULT
        );
        assert_eq!(c.smtp.bare_line_endings, BareLineEndingsSetting::Reject);
        assert!(c.smtp.chunking);
        let networks: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert_eq!(c.relay.networks, networks);
        assert_eq!(c.auth.users, None);
        let d = &c.delivery;
        assert_eq!(d.helo_name, c.server.hostname);
        assert_eq!(d.mx_port, 25);
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(d.retry_schedule, [1, 5, 15, 30, 60, 120, 240].map(minutes));
        assert_eq!(d.max_age, Duration::from_secs(5 * 86_400));
        assert_eq!(d.connect_timeout, Duration::from_secs(30));
        assert_eq!(d.greeting_timeout, minutes(5));
        assert_eq!(d.helo_timeout, minutes(5));
        assert_eq!(d.mail_timeout, minutes(5));
        assert_eq!(d.rcpt_timeout, minutes(5));
        assert_eq!(d.data_timeout, minutes(2));
        assert_eq!(d.data_block_timeout, minutes(3));
        assert_eq!(d.dot_timeout, minutes(10));
        assert_eq!(d.idle_timeout, Duration::from_secs(2));
        assert_eq!(d.pause, Duration::from_secs(1));
        assert_eq!(d.pause_max, minutes(5));
        assert!(c.dns.nameservers.is_empty());
        assert_eq!(c.dns.timeout, Duration::from_secs(5));
        assert_eq!(c.dns.attempts, 2);
        assert_eq!(
            c.shaping,
            Shaping {
                connections_max: 20,
                messages_per_connection_max: 1000,
                recipients_per_transaction_max: 100,
                message_rate_max: 0,
                tls: TlsPolicy::Opportunistic,
                mta_sts: true,
            }
        );
        assert_eq!(d.mta_sts_port, 443);
        assert_eq!(d.tls_ca, None);
        assert_eq!(d.remember_broken_tls, Duration::from_secs(3600));
        assert_eq!(c.tls_policy_for("example.org"), TlsPolicy::Opportunistic);
        assert!(c.routes.is_empty());
        assert!(c.destinations.is_empty());
        assert_eq!(c.route_for("example.org"), None);
        assert_eq!(c.shaping_for("example.org"), c.shaping);
        assert_eq!(c.admin.address, Some("127.0.0.1:8025".parse().unwrap()));
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.events, None);
        assert!(c.webhooks.is_empty());
    }

    /// The arrays of tables that are empty by default, so `DEFAULT_CONFIG`
    /// shows them only as commented-out examples; the only fields with a
    /// serde default (and, in `[[destination]]`, the optional keys).
    const COMMENTED_ARRAY_TABLES: [&str; 10] = [
        "tls.sni",
        "route",
        "destination",
        "site",
        "sender_pool",
        "shaping_rule",
        "source",
        "pool",
        "dkim",
        "webhook",
    ];

    /// Deserialized without the merge, so a key missing from
    /// `DEFAULT_CONFIG` fails here (no field has a serde default but
    /// [`COMMENTED_ARRAY_TABLES`]).
    #[test]
    fn a_relative_spool_path_is_beside_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.toml");
        std::fs::write(&path, "[spool]\npath = \"spool\"\n").unwrap();
        assert_eq!(
            Config::load(&path).unwrap().spool.path,
            dir.path().join("spool")
        );
        std::fs::write(&path, "[spool]\npath = \"/var/spool/baton\"\n").unwrap();
        assert_eq!(
            Config::load(&path).unwrap().spool.path,
            Path::new("/var/spool/baton")
        );
    }

    #[test]
    fn default_config_has_every_key() {
        let strict: Config = toml::from_str(DEFAULT_CONFIG).unwrap();
        let mut strict_resolved = strict.clone();
        strict_resolved.server.hostname = machine_hostname();
        strict_resolved.delivery.helo_name = machine_hostname();
        assert_eq!(strict_resolved, Config::default());
        assert_eq!(strict.server.hostname, "");
        assert_eq!(strict.delivery.helo_name, "");
    }

    /// The commented-out example of one of [`COMMENTED_ARRAY_TABLES`],
    /// uncommented: from its `# [[name]]` line to the next line that is not
    /// a `#` comment.
    fn commented_example(name: &str) -> String {
        let header = format!("# [[{name}]]");
        let lines: Vec<&str> = DEFAULT_CONFIG
            .lines()
            .skip_while(|line| !line.starts_with(&header))
            .take_while(|line| line.starts_with('#'))
            .map(|line| line.strip_prefix("# ").unwrap_or(""))
            .collect();
        assert!(!lines.is_empty(), "no example of [[{name}]]");
        lines.join("\n")
    }

    /// Each array of tables left out of `DEFAULT_CONFIG` has an example
    /// there that sets every key it has, and the example is valid.
    #[test]
    fn default_config_shows_commented_array_tables() {
        let route = commented_example("route");
        let c = parse(&route).unwrap();
        assert_eq!(
            c.routes,
            [RouteConfig {
                domain: "*".into(),
                next_hop: NextHop {
                    host: "smtp.example.net".into(),
                    port: 587
                },
                tls: Some(TlsPolicy::RequiredVerified),
                auth_user: Some("relay@example.org".into()),
                auth_password: Some(Secret::new("change me")),
                auth_password_file: None,
                auth_plaintext: false,
                pool: None,
            }]
        );
        let destination = commented_example("destination");
        let c = parse(&destination).unwrap();
        assert_eq!(
            c.destinations,
            [DestinationConfig {
                domain: "gmail.com".into(),
                connections_max: Some(10),
                messages_per_connection_max: Some(100),
                recipients_per_transaction_max: Some(100),
                message_rate_max: Some(50),
                tls: Some(TlsPolicy::Required),
                mta_sts: Some(false),
            }]
        );
        let sender = commented_example("sender_pool");
        let c = parse(&format!(
            "[[source]]\nname = \"ip1\"\naddress = \"192.0.2.10\"\n\
             [[pool]]\nname = \"bulk\"\nsources = [\"ip1\"]\n{sender}"
        ))
        .unwrap();
        assert_eq!(
            c.sender_pools,
            [SenderPoolConfig {
                domain: "news.example.com".into(),
                pool: "bulk".into(),
            }]
        );
        let site = commented_example("site");
        let c = parse(&site).unwrap();
        assert_eq!(
            c.sites,
            [SiteConfig {
                name: "google".into(),
                mx: vec!["*.google.com".into(), "*.googlemail.com".into()],
                connections_max: Some(40),
                message_rate_max: Some(200),
            }]
        );
        let sni = commented_example("tls.sni");
        let c = parse(&format!(
            "[tls]\ncertificate = \"/c.pem\"\nkey = \"/k.pem\"\n{sni}"
        ))
        .unwrap();
        assert_eq!(
            c.tls.sni,
            [SniCertificate {
                name: "mx.example.org".into(),
                certificate: "/etc/baton/mx.example.org.pem".into(),
                key: "/etc/baton/mx.example.org.key".into(),
            }]
        );
        let dkim = commented_example("dkim");
        let c = parse(&dkim).unwrap();
        assert_eq!(c.dkim.len(), 1);
        assert_eq!(c.dkim[0].domain, "example.com");
        assert_eq!(c.dkim[0].algorithm, Some(DkimAlgorithm::RsaSha256));
        assert_eq!(c.dkim[0].expire, Some(Duration::from_secs(30 * 86400)));
        let webhook = commented_example("webhook");
        let c = parse(&format!(
            "[log]\nevents = \"/var/log/baton/events.jsonl\"\n{webhook}"
        ))
        .unwrap();
        assert_eq!(
            c.webhooks,
            [WebhookConfig {
                name: "crm".into(),
                url: "https://hooks.example.com/baton".into(),
                events: vec!["delivered".into(), "failed".into(), "bounce".into()],
                batch_size: 100,
                batch_wait: Duration::from_secs(1),
                timeout: Duration::from_secs(10),
                headers: [("Authorization".to_owned(), Secret::new("Bearer change-me"))].into(),
                secret: Some(Secret::new("change me too")),
                secret_file: None,
                tls_ca: None,
            }]
        );
        // Nothing else in the file is an example of an array of tables.
        let examples = DEFAULT_CONFIG
            .lines()
            .filter(|line| line.starts_with("# [["))
            .count();
        assert_eq!(examples, COMMENTED_ARRAY_TABLES.len());
    }

    /// Every key in `DEFAULT_CONFIG`, flattened, each with a comment on the
    /// line above; and the list is exactly the keys `Config` reads.
    #[test]
    fn default_config_comments_every_key() {
        let mut keys = Vec::new();
        let mut section = String::new();
        let lines: Vec<&str> = DEFAULT_CONFIG.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('[') {
                section = line.trim_matches(|c| c == '[' || c == ']').to_owned();
            } else if let Some((key, _)) = line.split_once(" = ") {
                assert!(lines[i - 1].starts_with("# "), "no comment above {line}");
                assert!(
                    lines[i - 1].len() <= 100,
                    "comment too long: {}",
                    lines[i - 1]
                );
                keys.push(format!("{section}.{key}"));
            }
        }
        let expected = [
            "server.hostname",
            "server.shards",
            "server.pin_cores",
            "server.ring_entries",
            "server.sqpoll",
            "listener.address",
            "listener.tls",
            "listener.tls_required",
            "listener.auth",
            "listener.auth_plaintext",
            "tls.certificate",
            "tls.key",
            "tls.handshake_timeout",
            "auth.users",
            "auth.verify_threads",
            "auth.cache_ttl",
            "auth.failures_before_delay",
            "auth.failure_delay",
            "auth.failures_max",
            "auth.failure_window",
            "spool.path",
            "spool.segment_bytes",
            "spool.sync",
            "spool.size_bytes_max",
            "spool.free_bytes_min",
            "spool.reserve_segments",
            "limits.command_line_bytes_max",
            "limits.text_line_bytes_max",
            "limits.message_bytes_max",
            "limits.recipients_per_message_max",
            "limits.commands_per_session_max",
            "limits.errors_per_session_max",
            "limits.received_headers_max",
            "limits.connections_per_shard_max",
            "limits.connections_per_ip_max",
            "limits.command_timeout",
            "limits.data_timeout",
            "limits.data_rate_min",
            "limits.data_in_flight_max",
            "smtp.bare_line_endings",
            "smtp.chunking",
            "relay.networks",
            "delivery.hold",
            "delivery.helo_name",
            "delivery.mx_port",
            "delivery.retry_schedule",
            "delivery.pool",
            "delivery.classify_rules",
            "delivery.soft_bounce",
            "delivery.max_age",
            "delivery.tls_ca",
            "delivery.remember_broken_tls",
            "delivery.mta_sts_port",
            "delivery.connect_timeout",
            "delivery.greeting_timeout",
            "delivery.helo_timeout",
            "delivery.mail_timeout",
            "delivery.rcpt_timeout",
            "delivery.data_timeout",
            "delivery.data_block_timeout",
            "delivery.dot_timeout",
            "delivery.idle_timeout",
            "delivery.pause",
            "delivery.pause_max",
            "dns.nameservers",
            "dns.timeout",
            "dns.attempts",
            "dkim_defaults.algorithm",
            "dkim_defaults.headers",
            "dkim_defaults.canonicalization",
            "dkim_defaults.expire",
            "dkim_defaults.sign_threads",
            "shaping.connections_max",
            "shaping.messages_per_connection_max",
            "shaping.recipients_per_transaction_max",
            "shaping.message_rate_max",
            "shaping.tls",
            "shaping.mta_sts",
            "admin.address",
            "admin.token_file",
            "suppression.enabled",
            "suppression.path",
            "suppression.action",
            "suppression.from_bounces",
            "unsubscribe.listen",
            "unsubscribe.url",
            "unsubscribe.domains",
            "unsubscribe.mailto",
            "unsubscribe.token_ttl",
            "unsubscribe.secret_file",
            "http.listen",
            "http.token_file",
            "http.auth_required",
            "http.body_bytes_max",
            "http.recipients_per_request_max",
            "cluster.redis",
            "cluster.node",
            "cluster.lease_ttl",
            "cluster.heartbeat",
            "cluster.timeout",
            "cluster.stream_entries_max",
            "log.level",
            "log.format",
            "log.per_message",
            "log.events",
        ];
        assert_eq!(keys, expected);
    }

    #[test]
    fn file_overrides_only_what_it_sets() {
        let c = parse(
            "[server]\nhostname = \"mx.example.com\"\nshards = 4\n\n\
             [[listener]]\naddress = \"0.0.0.0:25\"\n[[listener]]\naddress = \"[::]:587\"\n\n\
             [spool]\nsync = \"always\"\nsize_bytes_max = 1073741824\n\n\
             [limits]\ncommand_timeout = \"30s\"\n\n\
             [smtp]\nbare_line_endings = \"normalize\"\n\n\
             [relay]\nnetworks = [\"10.0.0.0/8\"]\n\n\
             [admin]\naddress = \"\"\n",
        )
        .unwrap();
        assert_eq!(c.server.hostname, "mx.example.com");
        assert_eq!(c.server.shards, 4);
        assert_eq!(c.shard_count(), 4);
        assert_eq!(c.server.ring_entries, 1024);
        let addresses: Vec<String> = c.listeners.iter().map(|l| l.address.to_string()).collect();
        assert_eq!(addresses, ["0.0.0.0:25", "[::]:587"]);
        assert_eq!(c.spool.sync, SyncMode::Always);
        assert_eq!(c.spool.size_bytes_max, Some(1 << 30));
        assert_eq!(c.spool.segment_bytes, 64 << 20);
        assert_eq!(c.limits.command_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.data_timeout, Duration::from_secs(180));
        assert_eq!(c.smtp.bare_line_endings, BareLineEndingsSetting::Normalize);
        assert!(c.smtp.chunking);
        assert_eq!(c.relay.networks, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(c.admin.address, None);
    }

    #[test]
    fn delivery_dns_and_log_keys_override() {
        let c = parse(
            "[server]\nhostname = \"mx.example.com\"\n\n\
             [delivery]\nmx_port = 2526\nretry_schedule = [\"250ms\", \"1s\"]\n\
             max_age = \"5d\"\npause = \"0s\"\npause_max = \"0s\"\n\n\
             [dns]\nnameservers = [\"192.0.2.53:53\", \"[2001:db8::53]:5353\"]\nattempts = 1\n\n\
             [log]\nevents = \"/var/log/baton/events.jsonl\"\n",
        )
        .unwrap();
        let d = &c.delivery;
        assert_eq!(d.helo_name, "mx.example.com");
        assert_eq!(d.mx_port, 2526);
        assert_eq!(
            d.retry_schedule,
            [Duration::from_millis(250), Duration::from_secs(1)]
        );
        assert_eq!(d.max_age, Duration::from_secs(5 * 24 * 3600));
        assert_eq!((d.pause, d.pause_max), (Duration::ZERO, Duration::ZERO));
        assert_eq!(d.dot_timeout, Duration::from_secs(600));
        let nameservers: Vec<SocketAddr> = vec![
            "192.0.2.53:53".parse().unwrap(),
            "[2001:db8::53]:5353".parse().unwrap(),
        ];
        assert_eq!(c.dns.nameservers, nameservers);
        assert_eq!(c.dns.attempts, 1);
        assert_eq!(c.dns.timeout, Duration::from_secs(5));
        assert_eq!(
            c.log.events,
            Some(PathBuf::from("/var/log/baton/events.jsonl"))
        );

        let c = parse("delivery.helo_name = \"out.example.com\"\n").unwrap();
        assert_eq!(c.delivery.helo_name, "out.example.com");
        assert_eq!(c.server.hostname, machine_hostname());
    }

    #[test]
    fn dotted_keys_and_inline_tables_work() {
        let c = parse("limits.message_bytes_max = 1000\nlog = { level = \"debug\" }\n").unwrap();
        assert_eq!(c.limits.message_bytes_max, 1000);
        assert_eq!(c.log.level, "debug");
    }

    #[test]
    fn shard_count_resolves_zero() {
        let c = Config::default();
        assert_eq!(
            c.shard_count(),
            std::thread::available_parallelism().unwrap().get()
        );
    }

    #[test]
    fn typo_names_key_and_line() {
        let error = parse("[server]\nshards = 2\n\n[limits]\nmessage_byte_max = 10\n").unwrap_err();
        assert_eq!(error.key(), "limits.message_byte_max");
        assert_eq!(error.position(), Some(Position { line: 5, column: 1 }));
        assert!(error.message().starts_with("unknown key"), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("test.toml:5:1: limits.message_byte_max: unknown key"),
            "{error}"
        );
    }

    #[test]
    fn unknown_section_and_listener_key() {
        let error = parse("\n[servr]\nshards = 2\n").unwrap_err();
        assert_eq!((error.key(), error.line()), ("servr", Some(2)), "{error}");
        let error = parse("[[listener]]\naddress = \"127.0.0.1:25\"\nport = 25\n").unwrap_err();
        assert_eq!(
            (error.key(), error.line()),
            ("listener[0].port", Some(3)),
            "{error}"
        );
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let error = parse("[server]\n\nshards = \"four\"\n").unwrap_err();
        assert_eq!(error.key(), "server.shards", "{error}");
        assert_eq!(
            error.position(),
            Some(Position {
                line: 3,
                column: 10
            }),
            "{error}"
        );
        assert!(error.message().contains("invalid type"), "{error}");

        let error = parse("[limits]\ncommand_timeout = 300\n").unwrap_err();
        assert_eq!(
            (error.key(), error.line()),
            ("limits.command_timeout", Some(2)),
            "{error}"
        );
        assert!(error.message().contains("duration"), "{error}");

        let error = parse("[spool]\nsize_bytes_max = -1\n").unwrap_err();
        assert_eq!(
            (error.key(), error.line()),
            ("spool.size_bytes_max", Some(2)),
            "{error}"
        );
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let cases = [
            (
                "[limits]\ndata_timeout = \"3 minutes\"\n",
                "limits.data_timeout",
                2,
            ),
            (
                "[[listener]]\naddress = \"localhost:25\"\n",
                "listener[0].address",
                2,
            ),
            ("[admin]\naddress = \"8025\"\n", "admin.address", 2),
            ("[spool]\nsync = \"sometimes\"\n", "spool.sync", 2),
            (
                "[smtp]\nbare_line_endings = \"accept\"\n",
                "smtp.bare_line_endings",
                2,
            ),
            (
                "[relay]\nnetworks = [\"10.0.0.0/8\",\n  \"everyone\"]\n",
                "relay.networks[1]",
                3,
            ),
            (
                "[delivery]\nretry_schedule = [\"1m\",\n  \"5 minutes\"]\n",
                "delivery.retry_schedule[1]",
                3,
            ),
            (
                "[delivery]\nretry_schedule = \"1m\"\n",
                "delivery.retry_schedule",
                2,
            ),
            ("[delivery]\nmx_port = 65536\n", "delivery.mx_port", 2),
            (
                "[dns]\nnameservers = [\"192.0.2.53\"]\n",
                "dns.nameservers[0]",
                2,
            ),
            ("[log]\nevents = false\n", "log.events", 2),
            (
                "[[route]]\ndomain = \"*\"\nnext_hop = \"smtp.example.net\"\n",
                "route[0].next_hop",
                3,
            ),
            (
                "[[route]]\ndomain = \"*\"\nnext_hop = \"2001:db8::1:25\"\n",
                "route[0].next_hop",
                3,
            ),
            ("[[route]]\ndomain = \"*\"\n", "route[0]", 1),
            (
                "[[destination]]\ndomain = \"a.example\"\nconnection_max = 1\n",
                "destination[0].connection_max",
                3,
            ),
            (
                "[[destination]]\ndomain = \"a.example\"\nmessage_rate_max = -1\n",
                "destination[0].message_rate_max",
                3,
            ),
        ];
        for (text, key, line) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!((error.key(), error.line()), (key, Some(line)), "{error}");
        }
        let error = parse("[[route]]\ndomain = \"*\"\n").unwrap_err();
        assert_eq!(error.message(), "missing key `next_hop`", "{error}");
    }

    #[test]
    fn syntax_error_names_line() {
        let error = parse("[server]\nshards = = 2\n").unwrap_err();
        assert_eq!(error.line(), Some(2), "{error}");
        assert!(error.message().starts_with("invalid TOML"), "{error}");
        let error = parse("[server]\nshards = 1\nshards = 2\n").unwrap_err();
        assert_eq!(error.line(), Some(3), "{error}");
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.toml");
        std::fs::write(&path, "[server]\nshards = 3\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().server.shards, 3);
        std::fs::write(&path, "[server]\nshardz = 3\n").unwrap();
        let error = Config::load(&path).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}:2:1: server.shardz:", path.display())),
            "{error}"
        );
        let missing = dir.path().join("missing.toml");
        let error = Config::load(&missing).unwrap_err();
        assert_eq!(error.line(), None);
        assert!(error.to_string().contains("cannot read"), "{error}");
    }

    #[test]
    fn relay_allows_v4_v6_and_mapped_v4() {
        let relay = Config::default().relay;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(relay.allows(ip("127.0.0.1")));
        assert!(relay.allows(ip("127.255.0.9")));
        assert!(relay.allows(ip("::1")));
        assert!(relay.allows(ip("::ffff:127.0.0.1")));
        assert!(!relay.allows(ip("::ffff:10.0.0.1")));
        assert!(!relay.allows(ip("10.0.0.1")));
        assert!(!relay.allows(ip("::2")));
        assert!(!relay.allows(ip("2001:db8::1")));

        let relay = RelayConfig {
            networks: vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
        };
        assert!(relay.allows(ip("192.0.2.200")));
        assert!(relay.allows(ip("::ffff:192.0.2.1")));
        assert!(relay.allows(ip("2001:db8:1::5")));
        assert!(!relay.allows(ip("192.0.3.1")));
        assert!(!relay.allows(ip("127.0.0.1")));
        assert!(!RelayConfig { networks: vec![] }.allows(ip("127.0.0.1")));
    }
}
