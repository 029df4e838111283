//! TLS: the one place that owns certificates and keys, their loading and
//! checking, SNI, replacement on SIGHUP, and the rustls configurations the
//! shards share.
//!
//! The shards never see a file: they get `Arc`s of rustls configurations
//! built here and run rustls' own sans-IO connections beside their SMTP
//! state machines (`shard/conn.rs`, `shard/outbound.rs`).
//!
//! - [`ServerTls`]: the server's certificates behind an [`arc_swap`]
//!   snapshot that rustls' certificate resolver reads at each handshake.
//!   [`ServerTls::reload`] swaps in new files; handshakes already under
//!   way keep the key they started with, new ones take the new one, and no
//!   lock is taken on the way.
//! - [`ClientTls`]: the delivery side's two configurations: one that
//!   verifies chain and host name (`required-verified`), one that takes
//!   any certificate (opportunistic and `required`, as Postfix's `may`
//!   and `encrypt` do).
//! - [`TlsInfo`]: what a handshake negotiated, for `Received:`, the spool
//!   record, events and logs.
//!
//! TLS 1.2 and 1.3 only, with rustls' default cipher suites on `ring`.

#![forbid(unsafe_code)]

mod certificate;
mod client;
mod info;
pub mod mta_sts;
mod server;

pub use certificate::{check, CertificateSummary};
pub use client::{https_client, ClientTls};
pub use info::TlsInfo;
pub use server::{ServerTls, TLS_BUFFER_BYTES_MAX};

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// Why certificates or keys could not be used. Every variant names the
/// file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM certificate chain: {why}")]
    BadCertificate { path: PathBuf, why: String },
    #[error("{path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file: {why}")]
    NoKey { path: PathBuf, why: String },
    #[error("{path}: the private key cannot be used: {why}")]
    BadKey { path: PathBuf, why: String },
    #[error("{key}: this key does not belong to the certificate in {certificate}")]
    KeyMismatch { certificate: PathBuf, key: PathBuf },
    #[error("{path}: the certificate expired on {not_after}")]
    Expired { path: PathBuf, not_after: String },
    #[error("{path}: the certificate is not valid before {not_before}")]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The cryptography every configuration uses: rustls on `ring`, with
/// AES-128-GCM preferred (the server picks by its own order, and baton's
/// client offers it first): as secure for mail as AES-256-GCM and about a
/// third cheaper per byte, for baton and for the peers at both ends of
/// its hops. TLS 1.3 suites before TLS 1.2 ones, as rustls orders them.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        let tls12 = matches!(suite, rustls::SupportedCipherSuite::Tls12(_));
        let aes128 = suite
            .suite()
            .as_str()
            .is_some_and(|name| name.contains("AES_128"));
        (tls12, !aes128)
    });
    Arc::new(provider)
}

/// TLS 1.2 and 1.3, nothing older (RFC 8996 deprecates 1.0 and 1.1).
const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
