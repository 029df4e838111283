//! The certificates of a `bench --tls` run: a private CA and one server
//! certificate it signed, for `localhost` and 127.0.0.1, written as PEM
//! files that every TLS server of the run presents (the sink, baton,
//! Postfix, kumod) and that `send` verifies against the CA.
//!
//! One CA rather than a self-signed leaf: webpki (rustls) does not accept
//! an end-entity certificate as its own trust anchor, and `send` should
//! verify what it can, so that a relay presenting the wrong certificate
//! shows up as a failed run instead of passing unnoticed.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// The names the server certificate is valid for: every server of a
/// bench listens on loopback.
pub const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// The PEM texts of a bench's certificates.
pub struct CertPems {
    /// The CA that signed the server certificate (for `send --tls-ca`).
    pub ca: String,
    /// The server certificate followed by the CA: the chain servers send.
    pub chain: String,
    /// The server certificate's private key (PKCS #8).
    pub key: String,
}

impl CertPems {
    /// A fresh CA and a server certificate signed by it (ECDSA P-256).
    pub fn generate() -> anyhow::Result<CertPems> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "loadgen bench CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)
            .context("cannot generate the bench's CA")?;
        let names: Vec<String> = SERVER_NAMES.iter().map(|n| n.to_string()).collect();
        let mut server_params = CertificateParams::new(names)?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAMES[0]);
        let server_key = KeyPair::generate()?;
        let server = server_params
            .signed_by(&server_key, &ca)
            .context("cannot sign the bench's server certificate")?;
        let ca_pem = ca.pem();
        Ok(CertPems {
            chain: format!("{}{ca_pem}", server.pem()),
            ca: ca_pem,
            key: server_key.serialize_pem(),
        })
    }
}

/// Where a bench's certificate files are.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub ca: PathBuf,
    pub chain: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// Generates the certificates and writes them to `dir` (the key
    /// readable by its owner only: Postfix warns otherwise).
    pub fn create(dir: &Path) -> anyhow::Result<CertFiles> {
        use std::os::unix::fs::OpenOptionsExt as _;

        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let pems = CertPems::generate()?;
        let files = CertFiles {
            ca: dir.join("ca.pem"),
            chain: dir.join("chain.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.ca, &pems.ca)
            .with_context(|| format!("cannot write {}", files.ca.display()))?;
        std::fs::write(&files.chain, &pems.chain)
            .with_context(|| format!("cannot write {}", files.chain.display()))?;
        let mut key = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&files.key)
            .with_context(|| format!("cannot create {}", files.key.display()))?;
        std::io::Write::write_all(&mut key, pems.key.as_bytes())
            .with_context(|| format!("cannot write {}", files.key.display()))?;
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_the_server_certificate_then_the_ca() {
        let pems = CertPems::generate().expect("certificates");
        assert_eq!(pems.chain.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(pems.chain.ends_with(&pems.ca), "the CA comes last");
        assert!(pems.key.contains("BEGIN PRIVATE KEY"), "{}", pems.key);
    }

    #[test]
    fn rustls_verifies_the_server_certificate_against_the_ca() {
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, UnixTime};

        let pems = CertPems::generate().expect("certificates");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pems.ca.as_bytes()).expect("CA PEM"))
            .expect("a CA");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .expect("verifier");
        let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(pems.chain.as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain PEM");
        for name in SERVER_NAMES {
            let name = crate::tls::server_name(name).expect("name");
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
                .expect("valid for every server name");
        }
        let other = crate::tls::server_name("example.com").expect("name");
        let wrong = verifier.verify_server_cert(&chain[0], &[], &other, &[], UnixTime::now());
        assert!(wrong.is_err(), "not valid for other names");
    }
}
