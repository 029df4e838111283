//! rustls configurations (ring provider) for `send`'s STARTTLS and the
//! sink's: system roots, a given CA, or no verification at all on the
//! client; a generated self-signed certificate or given files on the sink.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How `send` checks the server's certificate.
#[derive(Clone, Debug)]
pub enum ServerVerification {
    /// Against the system's trusted roots.
    SystemRoots,
    /// Against the certificates in this PEM file.
    CaFile(std::path::PathBuf),
    /// Not at all: for test servers with self-signed certificates.
    None,
}

/// The client configuration for STARTTLS.
pub fn client_config(verification: &ServerVerification) -> anyhow::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match verification {
        ServerVerification::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
        ServerVerification::SystemRoots => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(anyhow!(
                    "no trusted root certificates found on this system; \
                     give --tls-ca FILE or --tls-no-verify"
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerVerification::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                roots
                    .add(cert)
                    .with_context(|| format!("bad CA certificate in {}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// A server name for SNI and verification: a DNS name or an IP address.
pub fn server_name(name: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(name.to_string()).map_err(|_| anyhow!("bad TLS server name {name:?}"))
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad PEM in {}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The sink's certificate: from files, or generated for `localhost` and
/// 127.0.0.1 at start. Returns the configuration and the certificate's PEM
/// (so that a client may trust it).
pub fn server_config(
    files: Option<(&Path, &Path)>,
) -> anyhow::Result<(Arc<ServerConfig>, Option<String>)> {
    let (certs, key, pem) = match files {
        Some((cert_path, key_path)) => {
            let certs = read_certs(cert_path)?;
            let key = PrivateKeyDer::from_pem_file(key_path).with_context(|| {
                format!("cannot read a private key from {}", key_path.display())
            })?;
            (certs, key, None)
        }
        None => {
            let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            let generated = rcgen::generate_simple_self_signed(names)
                .context("cannot generate a self-signed certificate")?;
            let pem = generated.cert.pem();
            let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
                .map_err(|e| anyhow!("generated key: {e}"))?;
            (vec![generated.cert.der().clone()], key, Some(pem))
        }
    };
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    Ok((Arc::new(config), pem))
}

/// Accepts any certificate, still checking the handshake signatures.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
