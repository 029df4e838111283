//! DKIM signing keys and the signatures they make (RFC 6376, RFC 8463),
//! with mail-auth doing the canonicalization and the signature fields,
//! and aws-lc-rs the public-key arithmetic (`keys.rs`, through mail-auth's
//! `SigningKey` trait): measured here, RSA-2048 signs in 260 µs with
//! aws-lc against 600 µs with ring, and Ed25519 in 8 µs against 20 µs.
//!
//! A message is signed by every key whose domain is its `From:` domain
//! (several keys: dual signing, RSA and Ed25519), or failing that by the
//! keys of a parent domain that allow `subdomains`. The message baton
//! holds is in wire form (dot-stuffed); it is signed as the next hop will
//! read it, unstuffed.

use std::fs;
use std::time::Duration;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

use super::keys::{Ed25519Key, RsaKey};
use crate::config::{DkimAlgorithm, DkimDefaults, DkimKeyConfig};

/// RSA keys shorter than this are refused (RFC 8301 §3.2 requires at
/// least 1024 bits), and longer than the largest a receiver must verify.
const RSA_BITS_MIN: usize = 1024;
const RSA_BITS_MAX: usize = 4096;

/// Why a key cannot be used: names the key's file and domain.
#[derive(Debug, thiserror::Error)]
#[error("[[dkim]] {domain} s={selector}: {path}: {why}")]
pub struct KeyError {
    pub domain: String,
    pub selector: String,
    pub path: String,
    pub why: String,
}

enum Signer {
    Rsa(DkimSigner<RsaKey, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One loaded key with its signing settings.
pub struct Key {
    pub domain: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    subdomains: bool,
    signer: Signer,
}

/// Every `[[dkim]]` key, loaded.
#[derive(Default)]
pub struct Keys {
    keys: Vec<Key>,
}

impl Keys {
    /// Loads and checks every key; the first that does not load is the
    /// error (`check-config` and a start refuse the whole configuration).
    pub fn load(configs: &[DkimKeyConfig], defaults: &DkimDefaults) -> Result<Keys, KeyError> {
        let keys = configs
            .iter()
            .map(|config| Key::load(config, defaults))
            .collect::<Result<_, _>>()?;
        Ok(Keys { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that sign mail from `domain` (lowercase): its own, or if it
    /// has none, those of its nearest parent that allows subdomains.
    pub fn for_domain(&self, domain: &str) -> Vec<&Key> {
        let own: Vec<&Key> = self.keys.iter().filter(|k| k.domain == domain).collect();
        if !own.is_empty() {
            return own;
        }
        let mut parent = domain;
        while let Some((_, rest)) = parent.split_once('.') {
            let keys: Vec<&Key> = self
                .keys
                .iter()
                .filter(|k| k.subdomains && k.domain == rest)
                .collect();
            if !keys.is_empty() {
                return keys;
            }
            parent = rest;
        }
        Vec::new()
    }
}

impl Key {
    fn load(config: &DkimKeyConfig, defaults: &DkimDefaults) -> Result<Key, KeyError> {
        let error = |why: String| KeyError {
            domain: config.domain.clone(),
            selector: config.selector.clone(),
            path: config.key.display().to_string(),
            why,
        };
        let algorithm = config.algorithm.unwrap_or(defaults.algorithm);
        let pem = fs::read_to_string(&config.key).map_err(|e| error(e.to_string()))?;
        let headers = config
            .headers
            .clone()
            .unwrap_or_else(|| defaults.headers.clone());
        if !headers.iter().any(|h| h.eq_ignore_ascii_case("From")) {
            return Err(error(
                "the signed headers must include From (RFC 6376 §5.4)".into(),
            ));
        }
        let canonicalization = config
            .canonicalization
            .as_deref()
            .unwrap_or(&defaults.canonicalization);
        let (ch, cb) = parse_canonicalization(canonicalization).map_err(error)?;
        let expire = config.expire.unwrap_or(defaults.expire);
        let signer = match algorithm {
            DkimAlgorithm::RsaSha256 => {
                let key = rsa_key(&pem).map_err(error)?;
                let bits = key.modulus_bits();
                if !(RSA_BITS_MIN..=RSA_BITS_MAX).contains(&bits) {
                    return Err(error(format!(
                        "RSA keys of {RSA_BITS_MIN} to {RSA_BITS_MAX} bits only"
                    )));
                }
                Signer::Rsa(configure(key, config, &headers, (ch, cb), expire))
            }
            DkimAlgorithm::Ed25519Sha256 => {
                let der = pem_der(&pem, "PRIVATE KEY").map_err(error)?;
                let key = Ed25519Key::from_pkcs8(&der).map_err(error)?;
                Signer::Ed25519(configure(key, config, &headers, (ch, cb), expire))
            }
        };
        Ok(Key {
            domain: config.domain.clone(),
            selector: config.selector.clone(),
            algorithm,
            subdomains: config.subdomains,
            signer,
        })
    }

    /// The `DKIM-Signature:` field for `message` (unstuffed), CRLF ended.
    pub fn sign(&self, message: &[u8]) -> Result<String, String> {
        let signature = match &self.signer {
            Signer::Rsa(signer) => signer.sign(message),
            Signer::Ed25519(signer) => signer.sign(message),
        };
        signature.map(|s| s.to_header()).map_err(|e| e.to_string())
    }
}

fn configure<T: mail_auth::common::crypto::SigningKey>(
    key: T,
    config: &DkimKeyConfig,
    headers: &[String],
    (ch, cb): (Canonicalization, Canonicalization),
    expire: Duration,
) -> DkimSigner<T, Done> {
    let signer = DkimSigner::from_key(key)
        .domain(&config.domain)
        .selector(&config.selector)
        .headers(headers.iter().cloned())
        .header_canonicalization(ch)
        .body_canonicalization(cb);
    if expire.is_zero() {
        signer
    } else {
        signer.expiration(expire.as_secs())
    }
}

/// `"relaxed/simple"` → (header, body).
fn parse_canonicalization(text: &str) -> Result<(Canonicalization, Canonicalization), String> {
    let one = |word: &str| match word {
        "relaxed" => Ok(Canonicalization::Relaxed),
        "simple" => Ok(Canonicalization::Simple),
        _ => Err(format!(
            "canonicalization {text:?}: \"relaxed\" or \"simple\", as header/body"
        )),
    };
    match text.split_once('/') {
        Some((h, b)) => Ok((one(h)?, one(b)?)),
        None => Ok((one(text)?, one(text)?)),
    }
}

/// An RSA key from PEM: PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
fn rsa_key(pem: &str) -> Result<RsaKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("no private key in PEM: {e}"))?;
    RsaKey::from_der(&der)
}

/// The DER inside the first PEM block labelled `label`.
fn pem_der(pem: &str, label: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem
        .find(&begin)
        .ok_or_else(|| format!("no {begin} block"))?
        + begin.len();
    let stop = pem[start..].find(&end).ok_or_else(|| format!("no {end}"))? + start;
    let text: String = pem[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("bad PEM: {e}"))
}

/// The message as the next hop reads it: wire form (dot-stuffed) back to
/// the text, so that the signature covers what will be verified.
pub fn unstuff(wire: &[u8]) -> Vec<u8> {
    // Stuffed lines are rare: copy the runs between them whole (a byte
    // loop here cost 10 µs of a 5 KiB message, a third of an Ed25519
    // signature).
    let mut out = Vec::with_capacity(wire.len());
    let mut rest = wire;
    if let Some(after) = rest.strip_prefix(b".") {
        rest = after;
    }
    let finder = memchr::memmem::Finder::new(b"\n.");
    while let Some(at) = finder.find(rest) {
        out.extend_from_slice(&rest[..=at]);
        rest = &rest[at + 2..];
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unstuffing_removes_one_leading_dot_per_line() {
        assert_eq!(
            unstuff(b"a\r\n..b\r\n.\r\nc.\r\n"),
            b"a\r\n.b\r\n\r\nc.\r\n"
        );
    }

    #[test]
    fn canonicalization_pairs() {
        assert!(parse_canonicalization("relaxed/simple").is_ok());
        assert!(parse_canonicalization("simple").is_ok());
        assert!(parse_canonicalization("loose/simple").is_err());
    }
}
