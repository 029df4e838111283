//! The admin API's bearer token, `[admin] token_file` (issue 11: an admin
//! API on `0.0.0.0` let anyone who reached it delete or bounce mail).
//!
//! The file holds one token, surrounding whitespace ignored. The server
//! wants `Authorization: Bearer <token>` on every request but `GET
//! /health`; `baton queue` reads the same file from the configuration it
//! is given and sends it.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::AdminConfig;

/// Shortest token accepted: 16 characters of a random hex string are 64
/// bits, past guessing over HTTP; `openssl rand -hex 32` gives 64.
pub const TOKEN_CHARS_MIN: usize = 16;

/// Permission bits that let the group or others read the file.
const GROUP_OTHER_READ: u32 = 0o044;

/// A token read from `[admin] token_file`. Its `Debug` does not show it,
/// so that it never reaches a log.
/// No `PartialEq`: [`AdminToken::matches`] is the one comparison.
#[derive(Clone)]
pub struct AdminToken(String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Reads and checks the token in `path`. Errors name the key and the
    /// file, never the token.
    pub fn load(path: &Path) -> Result<AdminToken, String> {
        AdminToken::load_for(path, "admin.token_file")
    }

    /// Reads and checks a token in `path` named by the key `key`
    /// (`http.token_file` holds the injection listener's, of the same kind).
    pub fn load_for(path: &Path, key: &str) -> Result<AdminToken, String> {
        let at = |what: String| format!("{key}: {}: {what}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| at(format!("cannot read: {e}")))?;
        AdminToken::parse(&text).map_err(at)
    }

    /// The token in a file's `text`: one word of visible ASCII, since it
    /// travels in an HTTP header, of at least [`TOKEN_CHARS_MIN`].
    pub(super) fn parse(text: &str) -> Result<AdminToken, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err("is empty; put a token in it, e.g. `openssl rand -hex 32`".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token must be one word of visible ASCII characters (it is sent in an HTTP header)"
                    .into(),
            );
        }
        let chars = token.len();
        if chars < TOKEN_CHARS_MIN {
            return Err(format!(
                "the token has {chars} characters; at least {TOKEN_CHARS_MIN} are needed, \
                 e.g. `openssl rand -hex 32`"
            ));
        }
        Ok(AdminToken(token.to_owned()))
    }

    /// The token, for a client's `Authorization` header.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token, in time that does not depend on
    /// where they first differ: a byte-by-byte early exit would let a
    /// client find the token one byte at a time by timing the answers.
    /// Only the length may show, which says little of a random token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let token = self.0.as_bytes();
        if token.len() != presented.len() {
            return false;
        }
        let difference = token
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // Keeps the compiler from turning the fold into an early exit.
        std::hint::black_box(difference) == 0
    }
}

/// The token `config` asks for, if any. Refuses an admin address off
/// loopback without one: configuration validation refuses that already,
/// and this keeps a `Config` built in code from getting past it.
pub fn load_token(config: &AdminConfig) -> Result<Option<AdminToken>, String> {
    let Some(path) = &config.token_file else {
        if let Some(address) = config.address.filter(|a| !is_loopback(*a)) {
            return Err(format!(
                "admin.address: {address} is not a loopback address, so the admin API needs \
                 a token: set admin.token_file"
            ));
        }
        return Ok(None);
    };
    AdminToken::load(path).map(Some)
}

fn is_loopback(address: SocketAddr) -> bool {
    address.ip().to_canonical().is_loopback()
}

/// A warning when the token file's group or others may read it: any local
/// user could then drive the API. `None` when it is private (or cannot be
/// examined; reading it reports that).
pub fn permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & GROUP_OTHER_READ != 0).then(|| {
        format!(
            "admin.token_file: {} is readable by its group or others (mode {:o}); \
             chmod 600 it so only baton's user can read the token",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn a_token_is_one_trimmed_word_of_sixteen_or_more() {
        assert_eq!(
            AdminToken::parse(&format!("  {TOKEN}\n")).unwrap().as_str(),
            TOKEN
        );
        for (bad, why) in [
            ("", "empty"),
            (" \n", "empty"),
            ("short-token", "at least 16"),
            ("0123456789 abcdef0123", "one word"),
            ("0123456789abcdéf0123", "visible ASCII"),
        ] {
            let error = AdminToken::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn only_the_token_itself_matches() {
        let token = AdminToken::parse(TOKEN).unwrap();
        assert!(token.matches(TOKEN.as_bytes()));
        assert!(!token.matches(b""));
        assert!(!token.matches(&TOKEN.as_bytes()[1..]));
        assert!(!token.matches(format!("{TOKEN}0").as_bytes()));
        assert!(!token.matches(TOKEN.to_uppercase().as_bytes()));
        assert!(!format!("{token:?}").contains(TOKEN));
    }

    #[test]
    fn load_names_the_key_and_the_file_but_not_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "too-short\n").unwrap();
        let error = AdminToken::load(&path).unwrap_err();
        assert!(error.starts_with("admin.token_file: "), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(!error.contains("too-short"), "{error}");
        let missing = AdminToken::load(&dir.path().join("missing")).unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
    }

    #[test]
    fn a_file_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, TOKEN).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(permission_warning(&path), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = permission_warning(&path).expect("a warning");
        assert!(warning.contains("admin.token_file") && warning.contains("644"));
    }

    #[test]
    fn off_loopback_there_must_be_a_token() {
        let config = |address: &str| AdminConfig {
            address: Some(address.parse().unwrap()),
            token_file: None,
        };
        for open in ["127.0.0.1:8025", "[::1]:8025", "[::ffff:127.0.0.1]:8025"] {
            assert!(matches!(load_token(&config(open)), Ok(None)), "{open}");
        }
        for exposed in ["0.0.0.0:8025", "[::]:8025", "192.0.2.1:8025"] {
            let error = load_token(&config(exposed)).unwrap_err();
            assert!(error.contains("admin.token_file"), "{exposed}: {error}");
        }
    }
}
