//! One-click unsubscribe (RFC 8058): which messages get the headers, the
//! links in them, and the tokens those links carry.
//!
//! A token is the recipient, the suppression scope an unsubscribe adds it
//! to, the message's queue id and an expiry time, signed with HMAC-SHA256
//! under a secret only baton knows. Verifying one needs no database, so
//! the links of a billion messages cost nothing to keep, and a forged or
//! altered link is refused before anything is written. The secret lives in
//! a file (`[unsubscribe] secret_file`); servers that share it honour each
//! other's links.
//!
//! Token: `base64url(payload) "." base64url(mac[..16])`, payload
//! `version(1) expires(u64 BE, unix s) queue_id(u64 BE) scope_len(1) scope
//! recipient`. The first 128 bits of the MAC are kept (RFC 2104 §5 allows
//! truncation to half the output): forging one is a 2^-128 guess.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use baton_spool::QueueId;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::auth::verify::Identity;
use crate::config::UnsubscribeConfig;

/// The token format's version byte.
const VERSION: u8 = 1;
/// MAC bytes kept in a token.
const MAC_BYTES: usize = 16;
/// The shortest secret accepted: HMAC-SHA256's block of security.
pub const SECRET_BYTES_MIN: usize = 32;
/// The longest token accepted: a 256-byte address, a 300-byte scope and
/// the fixed parts, in base64; anything longer is not one of ours.
pub const TOKEN_BYTES_MAX: usize = 1024;
/// The file name of a secret made at first start, in the spool directory.
const SECRET_FILE: &str = "unsubscribe.key";

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub recipient: String,
    /// A suppression scope: `domain:<sender domain>` or `user:<name>`.
    pub scope: String,
    pub queue_id: QueueId,
    pub expires_unix_secs: u64,
}

/// Why a token is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token baton made, or altered since.
    Invalid,
    /// Made by baton, but past its expiry.
    Expired,
}

/// The configured one-click unsubscribe, with its secret loaded.
pub struct Unsubscribe {
    key: hmac::Key,
    /// `https://host[:port][/prefix]`, without a trailing slash.
    url: String,
    mailto: Option<String>,
    /// Lowercase sender domains (`.example.com`: any subdomain; `*`: all).
    domains: Vec<String>,
    ttl: Duration,
}

impl Unsubscribe {
    /// Reads the secret (making one at first start when the file is the
    /// default one) and the settings. `None` when `[unsubscribe] listen`
    /// is off.
    pub fn load(
        config: &UnsubscribeConfig,
        hostname: &str,
        spool: &Path,
    ) -> Result<Option<Unsubscribe>, String> {
        let Some(listen) = config.listen else {
            return Ok(None);
        };
        let secret = match &config.secret_file {
            Some(path) => read_secret(path)?,
            None => read_or_make_secret(&spool.join(SECRET_FILE))?,
        };
        let url = match &config.url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if listen.port() == 443 => format!("https://{hostname}"),
            None => format!("https://{hostname}:{}", listen.port()),
        };
        Ok(Some(Unsubscribe::new(
            &secret,
            url,
            config.mailto.clone(),
            config.domains.clone(),
            config.token_ttl,
        )))
    }

    pub fn new(
        secret: &[u8],
        url: String,
        mailto: Option<String>,
        domains: Vec<String>,
        ttl: Duration,
    ) -> Unsubscribe {
        Unsubscribe {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            url,
            mailto,
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            ttl,
        }
    }

    /// The links' base.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The scope an unsubscribe from this mail suppresses in, when the
    /// mail gets the headers: the user's, when the user has `unsubscribe =
    /// true`; else the envelope sender's domain, when `[unsubscribe]
    /// domains` lists it (the domain the `RCPT` check sees, so the next
    /// message from that sender is the one refused). `None`: no headers.
    pub fn scope_for(&self, sender_domain: &str, identity: Option<&Identity>) -> Option<String> {
        if let Some(identity) = identity.filter(|i| i.policy.unsubscribe) {
            return Some(format!("user:{}", identity.name));
        }
        let domain = sender_domain
            .strip_suffix('.')
            .unwrap_or(sender_domain)
            .to_ascii_lowercase();
        if domain.is_empty() {
            return None; // `<>`: a notification, never a list's mail
        }
        let listed = self
            .domains
            .iter()
            .any(|entry| match entry.strip_prefix('.') {
                _ if entry == "*" => true,
                Some(parent) => domain.len() > parent.len() + 1 && domain.ends_with(entry.as_str()),
                None => domain == *entry,
            });
        listed.then(|| format!("domain:{domain}"))
    }

    /// The `List-Unsubscribe` and `List-Unsubscribe-Post` fields, CRLF
    /// ended, for one message to `recipient`.
    pub fn fields(
        &self,
        recipient: &str,
        scope: &str,
        queue_id: QueueId,
        now_unix_secs: u64,
    ) -> String {
        let token = self.token(&Token {
            recipient: recipient.to_owned(),
            scope: scope.to_owned(),
            queue_id,
            expires_unix_secs: now_unix_secs + self.ttl.as_secs(),
        });
        let mut fields = format!("List-Unsubscribe: <{}/u/{token}>", self.url);
        if let Some(mailto) = &self.mailto {
            // Folded: the line would pass 78 characters (RFC 5322 §2.1.1).
            let _ = write!(
                fields,
                ",\r\n <mailto:{mailto}?subject=unsubscribe%20{token}>"
            );
        }
        fields.push_str("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
        fields
    }

    pub fn token(&self, token: &Token) -> String {
        let scope = token.scope.as_bytes();
        let scope = &scope[..scope.len().min(255)];
        let mut payload = Vec::with_capacity(18 + scope.len() + token.recipient.len());
        payload.push(VERSION);
        payload.extend_from_slice(&token.expires_unix_secs.to_be_bytes());
        payload.extend_from_slice(&token.queue_id.0.to_be_bytes());
        payload.push(scope.len() as u8);
        payload.extend_from_slice(scope);
        payload.extend_from_slice(token.recipient.as_bytes());
        let mac = hmac::sign(&self.key, &payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(&mac.as_ref()[..MAC_BYTES])
        )
    }

    /// What `text` says, if baton made it, unaltered, and it has not
    /// expired at `now_unix_secs`.
    pub fn verify(&self, text: &str, now_unix_secs: u64) -> Result<Token, TokenError> {
        if text.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Invalid);
        }
        let (payload, mac) = text.split_once('.').ok_or(TokenError::Invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Invalid)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Invalid)?;
        let expected = hmac::sign(&self.key, &payload);
        // ring's verify compares the whole tag; a truncated one is
        // compared here, in constant time.
        if mac.len() != MAC_BYTES || !constant_time_eq(&mac, &expected.as_ref()[..MAC_BYTES]) {
            return Err(TokenError::Invalid);
        }
        let token = decode(&payload).ok_or(TokenError::Invalid)?;
        if token.expires_unix_secs <= now_unix_secs {
            return Err(TokenError::Expired);
        }
        Ok(token)
    }
}

fn decode(payload: &[u8]) -> Option<Token> {
    let (&version, rest) = payload.split_first()?;
    if version != VERSION || rest.len() < 17 {
        return None;
    }
    let expires = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let queue_id = u64::from_be_bytes(rest[8..16].try_into().ok()?);
    let scope_len = rest[16] as usize;
    let rest = &rest[17..];
    if rest.len() < scope_len {
        return None;
    }
    let (scope, recipient) = rest.split_at(scope_len);
    Some(Token {
        recipient: String::from_utf8(recipient.to_vec()).ok()?,
        scope: String::from_utf8(scope.to_vec()).ok()?,
        queue_id: QueueId(queue_id),
        expires_unix_secs: expires,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `path` holds a usable secret (`check-config`).
pub fn check_secret(path: &Path) -> Result<(), String> {
    read_secret(path).map(|_| ())
}

/// The secret in `path`: its text, trimmed, at least
/// [`SECRET_BYTES_MIN`] bytes.
fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("unsubscribe.secret_file {}: {e}", path.display()))?;
    let secret = text.trim().as_bytes().to_vec();
    if secret.len() < SECRET_BYTES_MIN {
        return Err(format!(
            "unsubscribe.secret_file {}: {} bytes; at least {SECRET_BYTES_MIN} (e.g. `openssl rand -hex 32`)",
            path.display(),
            secret.len()
        ));
    }
    Ok(secret)
}

/// The default secret file: read, or made (64 random hex digits, mode
/// 0600) when there is none yet.
fn read_or_make_secret(path: &PathBuf) -> Result<Vec<u8>, String> {
    if path.exists() {
        return read_secret(path);
    }
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness for the unsubscribe secret".to_owned())?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| {
            file.write_all(hex.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()
        });
    match made {
        Ok(()) => {
            tracing::info!(file = %path.display(), "made the unsubscribe links' secret");
            Ok(hex.into_bytes())
        }
        // Another start made it meanwhile.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => read_secret(path),
        Err(err) => Err(format!("unsubscribe secret {}: {err}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::users::UserPolicy;

    fn links() -> Unsubscribe {
        Unsubscribe::new(
            &[7; 32],
            "https://unsub.example.com".into(),
            None,
            vec!["Shop.example".into(), ".news.example".into()],
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn a_token_round_trips_and_any_change_is_refused() {
        let links = links();
        let token = Token {
            recipient: "Bob@Example.org".into(),
            scope: "domain:shop.example".into(),
            queue_id: QueueId(0x1234),
            expires_unix_secs: 2_000,
        };
        let text = links.token(&token);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        assert_eq!(links.verify(&text, 1_999), Ok(token.clone()));
        assert_eq!(links.verify(&text, 2_000), Err(TokenError::Expired));
        // Every single-character change is refused.
        for i in 0..text.len() {
            let mut bytes = text.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(bytes).unwrap();
            if altered != text {
                assert_eq!(links.verify(&altered, 0), Err(TokenError::Invalid), "{i}");
            }
        }
        // Another secret's token is not ours.
        let other = Unsubscribe::new(&[8; 32], String::new(), None, vec![], Duration::ZERO);
        assert_eq!(
            links.verify(&other.token(&token), 0),
            Err(TokenError::Invalid)
        );
        assert_eq!(links.verify("", 0), Err(TokenError::Invalid));
        assert_eq!(links.verify(&"a".repeat(5000), 0), Err(TokenError::Invalid));
    }

    #[test]
    fn the_scope_is_the_users_or_a_listed_sender_domains() {
        let links = links();
        assert_eq!(
            links.scope_for("shop.EXAMPLE", None).as_deref(),
            Some("domain:shop.example")
        );
        assert_eq!(
            links.scope_for("a.news.example", None).as_deref(),
            Some("domain:a.news.example")
        );
        assert_eq!(links.scope_for("news.example", None), None);
        assert_eq!(links.scope_for("other.example", None), None);
        assert_eq!(links.scope_for("", None), None);
        let user = Identity {
            name: "app1".into(),
            policy: UserPolicy {
                unsubscribe: true,
                ..UserPolicy::default()
            },
        };
        assert_eq!(
            links.scope_for("other.example", Some(&user)).as_deref(),
            Some("user:app1")
        );
    }

    #[test]
    fn fields_carry_a_verifiable_link() {
        let mut links = links();
        links.mailto = Some("unsub@shop.example".into());
        let fields = links.fields("bob@example.org", "domain:shop.example", QueueId(9), 100);
        let url = fields
            .strip_prefix("List-Unsubscribe: <https://unsub.example.com/u/")
            .unwrap();
        let token = &url[..url.find('>').unwrap()];
        assert_eq!(
            links.verify(token, 100).unwrap().recipient,
            "bob@example.org"
        );
        assert!(fields.contains(",\r\n <mailto:unsub@shop.example?subject=unsubscribe%20"));
        assert!(fields.ends_with("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
    }
}
