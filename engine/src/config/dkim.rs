//! `[[dkim]]` keys and `[dkim_defaults]`: DKIM signing (RFC 6376, RFC 8463).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::de;

/// `[[dkim]]`: one signing key. Dual signing (RSA and Ed25519 for one
/// domain) is two tables with the same domain.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// The `d=` domain: messages whose `From:` domain it is are signed.
    #[serde(deserialize_with = "de::lowercase")]
    pub domain: String,
    /// The `s=` selector: the key is published at
    /// `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// Overrides `[dkim_defaults] algorithm`.
    #[serde(default)]
    pub algorithm: Option<DkimAlgorithm>,
    /// The private key, PEM (PKCS#8, or PKCS#1 for RSA).
    pub key: PathBuf,
    /// Also sign for subdomains of `domain` (d= stays `domain`, which
    /// DMARC's relaxed alignment accepts).
    #[serde(default)]
    pub subdomains: bool,
    /// Override `[dkim_defaults]`.
    #[serde(default)]
    pub headers: Option<Vec<String>>,
    #[serde(default)]
    pub canonicalization: Option<String>,
    #[serde(default, deserialize_with = "de::optional_duration")]
    pub expire: Option<Duration>,
}

/// `[dkim_defaults]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimDefaults {
    pub algorithm: DkimAlgorithm,
    /// Header fields to sign; a name listed twice is oversigned (a second
    /// field of that name added later breaks the signature).
    pub headers: Vec<String>,
    /// `header/body`: "relaxed/relaxed", "simple/simple", ...
    pub canonicalization: String,
    /// The signature's lifetime (`x=`); zero: none.
    #[serde(deserialize_with = "de::duration")]
    pub expire: Duration,
    /// Threads that sign, off the shards (RSA-2048 costs about a
    /// millisecond a message).
    pub sign_threads: usize,
}

/// A DKIM signing algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum DkimAlgorithm {
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}
