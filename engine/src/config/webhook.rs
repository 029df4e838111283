//! `[[webhook]]`: endpoints the event log is posted to, in batches of
//! JSON (`crate::delivery::webhook`), and the rules they must meet.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de;
use super::validate::Invalid;
use super::{Config, Secret};
use crate::delivery::events::EventKind;

/// `batch_size` unless set: a few tens of kilobytes of JSON a post.
pub const BATCH_SIZE_DEFAULT: usize = 100;
/// The most events one post may carry: a body stays some megabytes.
pub const BATCH_SIZE_MAX: usize = 10_000;
/// `batch_wait` unless set.
pub const BATCH_WAIT_DEFAULT: Duration = Duration::from_secs(1);
/// `timeout` unless set.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// A name is a file name (the cursor) and a metric label: kept short.
pub const NAME_BYTES_MAX: usize = 64;
/// The header baton signs the body in; configured headers may not set it.
pub const SIGNATURE_HEADER: &str = "X-Baton-Signature";
/// The header naming a batch: the same batch posted again carries the
/// same value, so a receiver can drop a repeat.
pub const BATCH_HEADER: &str = "X-Baton-Batch";

/// `[[webhook]]`: one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Labels its metrics and names its cursor file; `""` (the default):
    /// `webhook<N>`, N counting the tables from 1 (see
    /// [`WebhookConfig::label`]).
    #[serde(default)]
    pub name: String,
    /// `http://` or `https://`.
    pub url: String,
    /// Event kinds posted (`"delivered"`, ...); empty (the default): all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Events per post at most.
    #[serde(default = "batch_size_default")]
    pub batch_size: usize,
    /// How long the first event of a batch waits for the batch to fill.
    #[serde(default = "batch_wait_default", deserialize_with = "de::duration")]
    pub batch_wait: Duration,
    /// Longest one post may take, connection included.
    #[serde(default = "timeout_default", deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// Sent with every post, e.g. `Authorization`; values never shown.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// The HMAC-SHA256 key the body is signed with ([`SIGNATURE_HEADER`]).
    #[serde(default)]
    pub secret: Option<Secret>,
    /// A file holding the key (one trailing newline stripped), read into
    /// `secret` at load.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// PEM CA certificates an `https://` endpoint's chain is checked
    /// against; `None`: the system's trusted roots.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
}

fn batch_size_default() -> usize {
    BATCH_SIZE_DEFAULT
}

fn batch_wait_default() -> Duration {
    BATCH_WAIT_DEFAULT
}

fn timeout_default() -> Duration {
    TIMEOUT_DEFAULT
}

impl WebhookConfig {
    /// The name, or `webhook<index + 1>` when none is given.
    pub fn label(&self, index: usize) -> String {
        if self.name.is_empty() {
            format!("webhook{}", index + 1)
        } else {
            self.name.clone()
        }
    }

    /// Whether events of `kind` (its name in the log) are posted.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|k| k == kind)
    }
}

fn invalid(key: String, message: impl Into<String>) -> Invalid {
    Invalid {
        key,
        message: message.into(),
        also: None,
    }
}

/// Headers baton writes itself; a table that set them would contradict
/// the body or the signature.
const RESERVED_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "x-baton-signature",
    "x-baton-batch",
];

/// Every `[[webhook]]`: the event log on, unique names, URLs, event kinds,
/// bounds, headers and the secret.
pub(super) fn validate(config: &Config) -> Result<(), Invalid> {
    let mut names = HashMap::new();
    for (i, hook) in config.webhooks.iter().enumerate() {
        let key = |k: &str| format!("webhook[{i}].{k}");
        if config.log.events.is_none() {
            return Err(invalid(
                key("url"),
                "webhooks post the event log: set [log] events",
            ));
        }
        let label = hook.label(i);
        let name_ok = label.len() <= NAME_BYTES_MAX
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(invalid(
                key("name"),
                format!("{label:?}: letters, digits, - and _, at most {NAME_BYTES_MAX}"),
            ));
        }
        if let Some(first) = names.insert(label.clone(), i) {
            return Err(invalid(
                key("name"),
                format!("{label:?} is already webhook[{first}]'s name"),
            ));
        }
        url(&hook.url).map_err(|m| invalid(key("url"), m))?;
        for (j, kind) in hook.events.iter().enumerate() {
            if !EventKind::ALL.iter().any(|k| k.name() == kind) {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
                return Err(invalid(
                    format!("webhook[{i}].events[{j}]"),
                    format!("{kind:?} is no event; one of {}", known.join(", ")),
                ));
            }
        }
        if !(1..=BATCH_SIZE_MAX).contains(&hook.batch_size) {
            return Err(invalid(
                key("batch_size"),
                format!("1 to {BATCH_SIZE_MAX}, not {}", hook.batch_size),
            ));
        }
        if hook.timeout.is_zero() {
            return Err(invalid(key("timeout"), "must be more than zero"));
        }
        for (name, value) in &hook.headers {
            let header = format!("webhook[{i}].headers.{name}");
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(invalid(header, "baton sets this header itself"));
            }
            if ureq::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(header, "not a header name"));
            }
            if ureq::http::HeaderValue::from_str(value.expose()).is_err() {
                return Err(invalid(header, "not a header value (one line of text)"));
            }
        }
        match (&hook.secret, &hook.secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("secret_file"),
                    "give secret or secret_file, not both",
                ))
            }
            (Some(secret), None) if secret.expose().is_empty() => {
                return Err(invalid(key("secret"), "must not be empty"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// An `http://` or `https://` URL with a host.
fn url(text: &str) -> Result<(), String> {
    let example = "such as \"https://hooks.example.com/baton\"";
    let uri: ureq::http::Uri = text
        .parse()
        .map_err(|_| format!("{text:?} is not a URL {example}"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "{text:?} is not an http:// or https:// URL {example}"
        ));
    }
    Ok(())
}

/// Reads each webhook's `secret_file` into its `secret`, after
/// validation; an error names the file, never its contents.
pub(super) fn read_secret_files(config: &mut Config) -> Result<(), Invalid> {
    for (i, hook) in config.webhooks.iter_mut().enumerate() {
        let Some(path) = &hook.secret_file else {
            continue;
        };
        let key = format!("webhook[{i}].secret_file");
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(key.clone(), format!("cannot read {}: {e}", path.display())))?;
        let secret = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        if secret.is_empty() {
            return Err(invalid(key, format!("{}: empty", path.display())));
        }
        hook.secret = Some(Secret::new(secret));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::rejects;
    use super::super::Config;
    use super::*;

    const LOG: &str = "[log]\nevents = \"/var/log/baton/events.jsonl\"\n";

    #[test]
    fn defaults_and_a_derived_name() {
        let c = Config::parse(
            &format!("{LOG}[[webhook]]\nurl = \"http://127.0.0.1:9/h\"\n"),
            "test.toml",
        )
        .unwrap();
        let hook = &c.webhooks[0];
        assert_eq!(hook.label(0), "webhook1");
        assert_eq!(hook.batch_size, BATCH_SIZE_DEFAULT);
        assert_eq!(hook.batch_wait, BATCH_WAIT_DEFAULT);
        assert_eq!(hook.timeout, TIMEOUT_DEFAULT);
        assert!(hook.wants("delivered") && hook.wants("received"));
        assert!(hook.secret.is_none() && hook.headers.is_empty());
    }

    #[test]
    fn webhooks_need_the_event_log() {
        rejects(
            "\n[[webhook]]\nurl = \"https://h.example/\"\n",
            "webhook[0].url",
            3,
            "[log] events",
        );
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let hook = |body: &str| format!("{LOG}[[webhook]]\nurl = \"http://h.example/\"\n{body}");
        rejects(
            &format!("{LOG}[[webhook]]\nurl = \"ftp://h.example/\"\n"),
            "webhook[0].url",
            4,
            "http://",
        );
        rejects(
            &format!("{LOG}[[webhook]]\nurl = \"h.example\"\n"),
            "webhook[0].url",
            4,
            "URL",
        );
        rejects(
            &hook("events = [\"delivered\", \"deliverd\"]\n"),
            "webhook[0].events[1]",
            5,
            "\"deliverd\" is no event",
        );
        rejects(
            &hook("batch_size = 0\n"),
            "webhook[0].batch_size",
            5,
            "1 to",
        );
        rejects(&hook("timeout = \"0s\"\n"), "webhook[0].timeout", 5, "zero");
        rejects(&hook("name = \"a/b\"\n"), "webhook[0].name", 5, "letters");
        rejects(
            &hook("headers = { Content-Type = \"text/plain\" }\n"),
            "webhook[0].headers.Content-Type",
            5,
            "itself",
        );
        rejects(
            &hook("headers = { Authorization = \"a\\nb\" }\n"),
            "webhook[0].headers.Authorization",
            5,
            "header value",
        );
        rejects(
            &hook("secret = \"s\"\nsecret_file = \"/k\"\n"),
            "webhook[0].secret_file",
            6,
            "not both",
        );
        rejects(
            &format!(
                "{LOG}[[webhook]]\nurl = \"http://a.example/\"\n\
                 [[webhook]]\nname = \"webhook1\"\nurl = \"http://b.example/\"\n"
            ),
            "webhook[1].name",
            6,
            "already webhook[0]",
        );
    }

    #[test]
    fn a_secret_file_is_read_at_load_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let text = format!(
            "{LOG}[[webhook]]\nurl = \"http://h.example/\"\nsecret_file = \"{}\"\n",
            path.display()
        );
        let c = Config::parse(&text, "test.toml").unwrap();
        assert_eq!(c.webhooks[0].secret, Some(Secret::new("s3cret")));
        assert!(!format!("{c:?}").contains("s3cret"), "shown in Debug");
        std::fs::remove_file(&path).unwrap();
        rejects(&text, "webhook[0].secret_file", 5, "cannot read");
    }
}
