//! [`ServerTls`]: the server's certificates, chosen per handshake by SNI,
//! replaced on reload without a lock on the shards' path.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::certificate::{self, CertificateSummary};
use super::{TlsError, PROTOCOL_VERSIONS};
use crate::config::TlsConfig;

/// Buffered TLS bytes a connection may hold in each direction before it
/// stops reading (rustls' own default is 64 KiB; a session never needs
/// more than its pipelining window).
pub const TLS_BUFFER_BYTES_MAX: usize = 64 << 10;

/// The certificates in force: the default and one per SNI name.
#[derive(Debug)]
struct Certificates {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

/// Picks a certificate for each handshake from the snapshot in force.
#[derive(Debug)]
struct Resolver(Arc<ArcSwap<Certificates>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certificates = self.0.load();
        let by_name = hello
            .server_name()
            .and_then(|name| certificates.by_name.get(&name.to_ascii_lowercase()));
        Some(by_name.unwrap_or(&certificates.default).clone())
    }
}

/// The server side of TLS, shared by every shard.
pub struct ServerTls {
    certificates: Arc<ArcSwap<Certificates>>,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Loads `[tls]`'s certificates; `None` when it names none.
    pub fn load(tls: &TlsConfig) -> Result<Option<ServerTls>, TlsError> {
        let Some(certificates) = load_certificates(tls)?.0 else {
            return Ok(None);
        };
        let certificates = Arc::new(ArcSwap::from_pointee(certificates));
        let config = ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|err| TlsError::Config(err.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(certificates.clone())));
        let mut config = config;
        // The server's order of cipher suites (rustls': AEADs with forward
        // secrecy, AES-256-GCM first), not whatever a client lists first.
        config.ignore_client_order = true;
        Ok(Some(ServerTls {
            certificates,
            config: Arc::new(config),
        }))
    }

    /// The configuration each new connection is made from.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Reads the files again for a reload; [`ServerTls::install`] puts
    /// them in force. TLS cannot be turned off without a restart.
    pub fn load_for_reload(
        tls: &TlsConfig,
    ) -> Result<(NewCertificates, Vec<CertificateSummary>), TlsError> {
        let (certificates, summaries) = load_certificates(tls)?;
        let Some(certificates) = certificates else {
            return Err(TlsError::Config(
                "[tls] certificate is gone; TLS cannot be turned off without a restart".into(),
            ));
        };
        Ok((NewCertificates(certificates), summaries))
    }

    /// Makes `certificates` those of every new handshake.
    pub fn install(&self, certificates: NewCertificates) {
        self.certificates.store(Arc::new(certificates.0));
    }
}

/// Certificates loaded by [`ServerTls::load_for_reload`], not yet in force.
pub struct NewCertificates(Certificates);

fn load_certificates(
    tls: &TlsConfig,
) -> Result<(Option<Certificates>, Vec<CertificateSummary>), TlsError> {
    let (Some(certificate), Some(key)) = (&tls.certificate, &tls.key) else {
        return Ok((None, Vec::new()));
    };
    let now = certificate::unix_now();
    let (default, summary) = certificate::load(certificate, key, now)?;
    let mut summaries = vec![summary];
    let mut by_name = HashMap::new();
    for sni in &tls.sni {
        let (key, summary) = certificate::load(&sni.certificate, &sni.key, now)?;
        by_name.insert(sni.name.clone(), key);
        summaries.push(summary);
    }
    Ok((Some(Certificates { default, by_name }), summaries))
}
