//! The private-key half of DKIM on aws-lc-rs, plugged into mail-auth
//! through its `SigningKey` trait: mail-auth canonicalizes and hashes,
//! these sign. aws-lc has RSA with AVX-512 IFMA and a fast Ed25519; on
//! this project's 2-core machine RSA-2048 takes 260 µs against ring's
//! 600 µs (`engine/benches/dkim.rs`), and RSA is what most senders sign
//! with.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use mail_auth::common::crypto::CryptoError;
use mail_auth::common::crypto::{Algorithm, HashContext, HashImpl, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use mail_auth::Error;
use rustls::pki_types::PrivateKeyDer;

/// An RSA private key (PKCS#1 v1.5 with SHA-256, `rsa-sha256`).
pub struct RsaKey {
    inner: RsaKeyPair,
    rng: SystemRandom,
}

impl RsaKey {
    /// From PKCS#8 or PKCS#1 DER.
    pub fn from_der(der: &PrivateKeyDer<'_>) -> Result<RsaKey, String> {
        let inner = match der {
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            _ => return Err("not an RSA key (PKCS#8 or PKCS#1 expected)".into()),
        }
        .map_err(|e| format!("not an RSA key: {e}"))?;
        Ok(RsaKey {
            inner,
            rng: SystemRandom::new(),
        })
    }

    pub fn modulus_bits(&self) -> usize {
        self.inner.public_modulus_len() * 8
    }
}

impl SigningKey for RsaKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        // What mail-auth hands over is the header fields being signed, a
        // few hundred bytes; aws-lc hashes them.
        let mut data = Vec::with_capacity(512);
        input.write(&mut data);
        let mut signature = vec![0; self.inner.public_modulus_len()];
        self.inner
            .sign(&RSA_PKCS1_SHA256, &self.rng, &data, &mut signature)
            .map_err(|e| Error::Crypto(CryptoError::Library(e.to_string())))?;
        Ok(signature)
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::RsaSha256
    }
}

/// An Ed25519 private key (`ed25519-sha256`, RFC 8463: the signature is
/// over the SHA-256 of the signed data).
pub struct Ed25519Key {
    inner: Ed25519KeyPair,
}

impl Ed25519Key {
    /// From PKCS#8 DER (v1 or v2, as `baton dkim keygen` and openssl write).
    pub fn from_pkcs8(der: &[u8]) -> Result<Ed25519Key, String> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(|inner| Ed25519Key { inner })
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))
    }

    /// A new key as PKCS#8 v2 DER, and its raw public key.
    pub fn generate() -> Result<(Vec<u8>, Vec<u8>), String> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| format!("cannot make a key: {e}"))?;
        let key = Ed25519KeyPair::from_pkcs8(document.as_ref())
            .map_err(|e| format!("cannot read the new key: {e}"))?;
        Ok((
            document.as_ref().to_vec(),
            key.public_key().as_ref().to_vec(),
        ))
    }
}

impl SigningKey for Ed25519Key {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        let mut hasher = Sha256::hasher();
        input.write(&mut hasher);
        Ok(self
            .inner
            .sign(hasher.complete().as_ref())
            .as_ref()
            .to_vec())
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::Ed25519Sha256
    }
}
