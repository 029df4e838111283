//! [`TlsInfo`]: what a finished handshake negotiated.

use std::fmt;
use std::sync::Arc;

use rustls::{CommonState, ProtocolVersion};

/// The protocol and cipher of a TLS connection, and whether the peer's
/// certificate was verified. Shown as Postfix shows it in `Received:`:
/// `TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: &'static str,
    /// The IANA name of the cipher suite.
    pub cipher: &'static str,
    /// The symmetric cipher's key length.
    pub bits: u16,
    /// The peer's chain and name were checked (outbound
    /// `required-verified`; inbound clients present no certificate).
    pub verified: bool,
    /// The `Display` text, made once per connection: logs, records and
    /// headers of every message over it share it.
    #[serde(skip)]
    label: Arc<str>,
}

impl TlsInfo {
    pub fn new(version: &'static str, cipher: &'static str, bits: u16, verified: bool) -> TlsInfo {
        let label = format!("{version} with cipher {cipher} ({bits}/{bits} bits)").into();
        TlsInfo {
            version,
            cipher,
            bits,
            verified,
            label,
        }
    }

    /// As `Received:` writes it: `TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128/128 bits)`.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// What `state` negotiated; `None` while it is still handshaking.
    pub fn of(state: &CommonState, verified: bool) -> Option<TlsInfo> {
        if state.is_handshaking() {
            return None;
        }
        let version = match state.protocol_version()? {
            ProtocolVersion::TLSv1_3 => "TLSv1.3",
            ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        };
        let suite = state.negotiated_cipher_suite()?.suite();
        let cipher = iana_name(suite.as_str().unwrap_or("unknown"));
        Some(TlsInfo::new(version, cipher, key_bits(cipher), verified))
    }
}

impl fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// rustls names TLS 1.3 suites `TLS13_...`; their IANA names (RFC 8446
/// §B.4) start `TLS_`. TLS 1.2 names are IANA's already.
fn iana_name(rustls_name: &'static str) -> &'static str {
    match rustls_name {
        "TLS13_AES_128_GCM_SHA256" => "TLS_AES_128_GCM_SHA256",
        "TLS13_AES_256_GCM_SHA384" => "TLS_AES_256_GCM_SHA384",
        "TLS13_CHACHA20_POLY1305_SHA256" => "TLS_CHACHA20_POLY1305_SHA256",
        other => other,
    }
}

fn key_bits(cipher: &str) -> u16 {
    if cipher.contains("AES_128") {
        128
    } else {
        256 // AES-256 and ChaCha20, the only others rustls offers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_postfix_shows_it() {
        let info = TlsInfo::new(
            "TLSv1.3",
            iana_name("TLS13_AES_256_GCM_SHA384"),
            key_bits("TLS_AES_256_GCM_SHA384"),
            false,
        );
        assert_eq!(
            info.to_string(),
            "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
        );
        assert_eq!(key_bits("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"), 128);
        assert_eq!(
            iana_name("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        );
    }
}
