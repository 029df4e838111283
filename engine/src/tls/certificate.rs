//! Loading one certificate chain and its key from PEM files, with the
//! checks an operator wants before a restart: readable, parsable, the key
//! matching the certificate, and the certificate in date.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::TlsError;
use crate::config::TlsConfig;

/// What `check-config` reports of one loaded certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateSummary {
    pub path: PathBuf,
    /// The leaf's subject.
    pub subject: String,
    /// The leaf's DNS names (subjectAltName).
    pub names: Vec<String>,
    /// `notAfter`, as x509 prints it.
    pub not_after: String,
    /// Seconds from now until `notAfter`.
    pub remaining_secs: i64,
}

/// Loads a chain and its key, checked. `now_unix` is the seam for time.
pub(super) fn load(
    certificate: &Path,
    key: &Path,
    now_unix: i64,
) -> Result<(Arc<CertifiedKey>, CertificateSummary), TlsError> {
    let chain = read_chain(certificate)?;
    let summary = in_date(certificate, &chain[0], now_unix)?;
    let key_pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| TlsError::NoKey {
        path: key.to_owned(),
        why: err.to_string(),
    })?;
    let signing = super::provider()
        .key_provider
        .load_private_key(private)
        .map_err(|err| TlsError::BadKey {
            path: key.to_owned(),
            why: err.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                certificate: certificate.to_owned(),
                key: key.to_owned(),
            })
        }
    }
    Ok((Arc::new(certified), summary))
}

/// Loads and checks every certificate `[tls]` names (the default, then
/// each `[[tls.sni]]`), for `check-config` and for start.
pub fn check(tls: &TlsConfig) -> Result<Vec<CertificateSummary>, TlsError> {
    let now = unix_now();
    let mut summaries = Vec::new();
    if let (Some(certificate), Some(key)) = (&tls.certificate, &tls.key) {
        summaries.push(load(certificate, key, now)?.1);
    }
    for sni in &tls.sni {
        summaries.push(load(&sni.certificate, &sni.key, now)?.1);
    }
    Ok(summaries)
}

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of a PEM file, leaf first.
pub(super) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::BadCertificate {
            path: path.to_owned(),
            why: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// The leaf parses and `now` is within its validity.
fn in_date(
    path: &Path,
    leaf: &CertificateDer<'_>,
    now_unix: i64,
) -> Result<CertificateSummary, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|err| TlsError::BadCertificate {
            path: path.to_owned(),
            why: err.to_string(),
        })?;
    let validity = cert.validity();
    if now_unix > validity.not_after.timestamp() {
        return Err(TlsError::Expired {
            path: path.to_owned(),
            not_after: validity.not_after.to_string(),
        });
    }
    if now_unix < validity.not_before.timestamp() {
        return Err(TlsError::NotYetValid {
            path: path.to_owned(),
            not_before: validity.not_before.to_string(),
        });
    }
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertificateSummary {
        path: path.to_owned(),
        subject: cert.subject().to_string(),
        names,
        not_after: validity.not_after.to_string(),
        remaining_secs: validity.not_after.timestamp() - now_unix,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names`, valid from `not_before` to
    /// `not_after` (unix seconds), written as PEM into `dir`.
    pub(crate) fn write_certificate(
        dir: &Path,
        stem: &str,
        names: &[&str],
        not_before: i64,
        not_after: i64,
    ) -> (PathBuf, PathBuf) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs(not_before.max(0) as u64);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs(not_after.max(0) as u64);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    const DAY: i64 = 86_400;

    #[test]
    fn a_good_pair_loads_with_its_names_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let now = unix_now();
        let (cert, key) = write_certificate(
            dir.path(),
            "mx",
            &["mx.example.org"],
            now - DAY,
            now + 90 * DAY,
        );
        let (_, summary) = load(&cert, &key, now).unwrap();
        assert_eq!(summary.names, ["mx.example.org"]);
        assert!(summary.remaining_secs > 89 * DAY, "{summary:?}");
    }

    #[test]
    fn each_problem_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let now = unix_now();
        let (cert, key) = write_certificate(dir.path(), "a", &["a.example"], now - DAY, now + DAY);
        let (_, other_key) =
            write_certificate(dir.path(), "b", &["b.example"], now - DAY, now + DAY);
        let (old, old_key) = write_certificate(
            dir.path(),
            "old",
            &["old.example"],
            now - 9 * DAY,
            now - DAY,
        );
        let (early, early_key) = write_certificate(
            dir.path(),
            "early",
            &["e.example"],
            now + DAY,
            now + 9 * DAY,
        );
        let missing = dir.path().join("missing.pem");

        let err = load(&cert, &other_key, now).err().unwrap();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("b.key"), "{err}");
        let err = load(&old, &old_key, now).err().unwrap();
        assert!(
            err.to_string().contains("old.pem: the certificate expired"),
            "{err}"
        );
        let err = load(&early, &early_key, now).err().unwrap();
        assert!(matches!(err, TlsError::NotYetValid { .. }), "{err}");
        let err = load(&missing, &key, now).err().unwrap();
        assert!(
            err.to_string().contains("missing.pem: cannot read"),
            "{err}"
        );
        // The key file where the certificate should be, and the reverse.
        let err = load(&key, &key, now).err().unwrap();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        let err = load(&cert, &cert, now).err().unwrap();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
    }
}
