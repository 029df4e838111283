//! [`ClientTls`]: the configurations of delivery connections.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{certificate, TlsError, PROTOCOL_VERSIONS};

/// The two ways baton checks a next hop's certificate.
pub struct ClientTls {
    /// Chain against the trusted roots, name against the certificate.
    pub verified: Arc<ClientConfig>,
    /// Any certificate: opportunistic TLS and `required` (encryption
    /// against passive listening; RFC 7435's opportunistic security).
    pub unverified: Arc<ClientConfig>,
    /// Trusted roots in `verified`; 0 makes every verification fail.
    pub roots: usize,
}

impl ClientTls {
    /// Trusts `ca`'s certificates, or else the system's roots.
    pub fn load(ca: Option<&Path>) -> Result<ClientTls, TlsError> {
        let roots = root_store(ca)?;
        let count = roots.len();
        let builder = || {
            ClientConfig::builder_with_provider(super::provider())
                .with_protocol_versions(PROTOCOL_VERSIONS)
                .map_err(|err| TlsError::Config(err.to_string()))
        };
        let verified = builder()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let unverified = builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(super::provider())))
            .with_no_client_auth();
        Ok(ClientTls {
            verified: Arc::new(verified),
            unverified: Arc::new(unverified),
            roots: count,
        })
    }
}

/// `ca`'s certificates, or else the system's roots, as a store.
fn root_store(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificate::read_chain(path)? {
                roots.add(cert).map_err(|err| TlsError::BadCertificate {
                    path: path.to_owned(),
                    why: err.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// The TLS of an HTTPS client off the shards (webhooks, on ureq): chain
/// and host name verified against `ca`'s certificates, or else the
/// system's roots; the same provider and versions as every configuration.
pub fn https_client(ca: Option<&Path>) -> Result<ureq::tls::TlsConfig, TlsError> {
    let roots: Vec<ureq::tls::Certificate<'static>> = match ca {
        Some(path) => certificate::read_chain(path)?
            .iter()
            .map(|cert| ureq::tls::Certificate::from_der(cert.as_ref()).to_owned())
            .collect(),
        None => rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|cert| ureq::tls::Certificate::from_der(cert.as_ref()).to_owned())
            .collect(),
    };
    Ok(ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(super::provider())
        .build())
}

/// Takes any certificate, but still checks that the server holds its key
/// (the handshake signature), so the session is encrypted to whoever
/// answered.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
