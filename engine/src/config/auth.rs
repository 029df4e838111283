//! `[auth]`: SMTP AUTH (RFC 4954) for clients that submit with a user name
//! and password. The users themselves live in their own file
//! (`crate::auth::Users`), so `baton user` can rewrite it without touching
//! the configuration, and so the hashes can be kept readable by fewer
//! accounts than the configuration is.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de;

/// `[auth]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The users file; `None`: no users, AUTH is not offered (`""`).
    #[serde(deserialize_with = "de::optional_path")]
    pub users: Option<PathBuf>,
    /// Threads that verify password hashes, off the shards.
    pub verify_threads: usize,
    /// How long a successful verification is remembered, so a client that
    /// reconnects for every message does not cost a hash each time;
    /// zero: never.
    #[serde(deserialize_with = "de::duration")]
    pub cache_ttl: Duration,
    /// Failures from one client address, or for one user name, within
    /// `failure_window` before each further failure waits.
    pub failures_before_delay: u32,
    /// The first wait; it doubles with each further failure.
    #[serde(deserialize_with = "de::duration")]
    pub failure_delay: Duration,
    /// Failures within the window after which the client is cut off
    /// (`421 4.7.0`, and every AUTH from it refused until the window
    /// passes).
    pub failures_max: u32,
    #[serde(deserialize_with = "de::duration")]
    pub failure_window: Duration,
}

/// `[[listener]] auth`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerAuth {
    /// Offered where it may be (over TLS, or `auth_plaintext`), not
    /// required.
    #[default]
    Optional,
    /// MAIL before AUTH gets `530 5.7.0` (a submission port).
    Required,
    /// Never offered.
    Off,
}
