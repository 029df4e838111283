//! `[http]`: the HTTP injection listener (`POST /api/inject/v1`,
//! `crate::http::inject`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::de;

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The listener; `None` (`""`): no HTTP injection. Off loopback it
    /// speaks TLS with the `[tls]` certificate and wants credentials.
    #[serde(deserialize_with = "de::optional_socket_addr")]
    pub listen: Option<SocketAddr>,
    /// A file holding a bearer token injectors may send instead of an
    /// `[auth]` user's name and password; `None` (`""`): none. Read by
    /// `crate::admin::AdminToken::load_for`, at start and by `check-config`.
    #[serde(deserialize_with = "de::optional_path")]
    pub token_file: Option<PathBuf>,
    /// Ask for credentials on loopback too; off loopback they are always
    /// asked for.
    pub auth_required: bool,
    /// The largest request body; a larger one is answered 413.
    pub body_bytes_max: u64,
    /// Recipients in one request, at most; more are answered 400.
    pub recipients_per_request_max: usize,
}

impl HttpConfig {
    /// Whether a request must carry credentials: off loopback always, on
    /// loopback when asked or when a token is configured (a token that
    /// anyone may leave out would protect nothing).
    pub fn credentials_required(&self) -> bool {
        let off_loopback = self
            .listen
            .is_some_and(|address| !address.ip().to_canonical().is_loopback());
        off_loopback || self.auth_required || self.token_file.is_some()
    }

    /// Whether the listener speaks TLS: off loopback, where credentials
    /// travel.
    pub fn tls(&self) -> bool {
        self.listen
            .is_some_and(|address| !address.ip().to_canonical().is_loopback())
    }
}
