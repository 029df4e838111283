//! DKIM signing alone, one thread: RSA-2048 and Ed25519 over a 5 KiB
//! message, through the same `Keys` baton signs with. The rate per core
//! is what end-to-end signing is measured against.
//!
//! `cargo bench -p baton --bench dkim` (needs the `openssl` command to
//! make the RSA key).

use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use baton::config::{DkimAlgorithm, DkimDefaults, DkimKeyConfig};
use baton::sign::Keys;

const MESSAGE_BYTES: usize = 5 * 1024;

fn message() -> Vec<u8> {
    let mut text = String::from(
        "From: A <a@bench.test>\r\nTo: b@example.org\r\nSubject: bench\r\n\
         Date: Sun, 6 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@bench.test>\r\n\r\n",
    );
    while text.len() < MESSAGE_BYTES {
        text.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    text.into_bytes()
}

fn keys(dir: &std::path::Path, algorithm: DkimAlgorithm) -> Keys {
    let key = dir.join(format!("{}.pem", algorithm.as_str()));
    let made = match algorithm {
        DkimAlgorithm::RsaSha256 => Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .status(),
        DkimAlgorithm::Ed25519Sha256 => Command::new("openssl")
            .args(["genpkey", "-algorithm", "ED25519", "-out"])
            .arg(&key)
            .status(),
    };
    assert!(made.is_ok_and(|s| s.success()), "openssl genpkey");
    let defaults = DkimDefaults {
        algorithm,
        headers: ["From", "From", "To", "Subject", "Date", "Message-ID"]
            .map(String::from)
            .to_vec(),
        canonicalization: "relaxed/relaxed".into(),
        expire: std::time::Duration::ZERO,
        sign_threads: 1,
    };
    let config = DkimKeyConfig {
        domain: "bench.test".into(),
        selector: "b".into(),
        algorithm: None,
        key,
        subdomains: false,
        headers: None,
        canonicalization: None,
        expire: None,
    };
    Keys::load(&[config], &defaults).expect("the key loads")
}

fn signing(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let message = message();
    let mut group = c.benchmark_group("dkim_sign_5KiB");
    group.throughput(Throughput::Elements(1));
    for algorithm in [DkimAlgorithm::RsaSha256, DkimAlgorithm::Ed25519Sha256] {
        let keys = keys(dir.path(), algorithm);
        let key = keys.for_domain("bench.test")[0];
        group.bench_function(algorithm.as_str(), |b| {
            b.iter(|| key.sign(&message).expect("signed"))
        });
    }
    group.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
