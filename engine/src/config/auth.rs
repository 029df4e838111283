//! `[auth]`: SMTP AUTH (RFC 4954) for clients that submit with a user name
//! and password. The users themselves live in their own file
//! (`crate::auth::Users`), so `baton user` can rewrite it without touching
//! the configuration, and so the hashes can be kept readable by fewer
//! accounts than the configuration is.

use std::path::PathBuf;

use serde::Deserialize;

use super::de;

/// `[auth]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The users file; `None` (`""` in the file): no users, AUTH is not
    /// offered.
    #[serde(deserialize_with = "de::optional_path")]
    pub users: Option<PathBuf>,
}
