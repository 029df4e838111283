//! Certificates as an operator handles them: `check-config` finds a key
//! that does not match or a certificate out of date before a restart, and
//! SIGHUP puts renewed files in service under load without dropping a
//! connection (and without ending the process, as SIGHUP's default would).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::sink::loadgen_bin;
use baton_tests::tls::{self_signed, tls_toml};
use baton_tests::{baton_bin, Baton, TestConfig};

fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(baton_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_config_loads_and_checks_the_certificate_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = self_signed(dir.path(), "good", &["mx.baton.test"], (2020, 2100));
    let other = self_signed(dir.path(), "other", &["other.test"], (2020, 2100));
    let expired = self_signed(dir.path(), "expired", &["old.test"], (2001, 2002));

    let (ok, out) = check_config(&tls_toml(&good));
    assert!(ok, "{out}");
    assert!(
        out.contains("good.pem: CN=mx.baton.test (mx.baton.test), expires"),
        "{out}"
    );

    let mismatched = format!(
        "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n",
        good.cert.display(),
        other.key.display()
    );
    let (ok, out) = check_config(&mismatched);
    assert!(!ok, "{out}");
    assert!(
        out.contains("other.key: this key does not belong to the certificate in"),
        "{out}"
    );

    let (ok, out) = check_config(&tls_toml(&expired));
    assert!(!ok, "{out}");
    assert!(
        out.contains("expired.pem: the certificate expired on"),
        "{out}"
    );

    let missing =
        "[tls]\ncertificate = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n";
    let (ok, out) = check_config(missing);
    assert!(!ok, "{out}");
    assert!(out.contains("/nonexistent/cert.pem: cannot read"), "{out}");

    let (ok, out) = check_config("[[listener]]\naddress = \"127.0.0.1:465\"\ntls = \"implicit\"\n");
    assert!(!ok, "{out}");
    assert!(
        out.contains("listener[0].tls: TLS needs a certificate"),
        "{out}"
    );
}

/// The subject CN a fresh STARTTLS handshake sees.
fn served_name(port: u16) -> String {
    let script = format!(
        "import smtplib, ssl\n\
ctx = ssl.create_default_context()\n\
ctx.check_hostname = False\n\
ctx.verify_mode = ssl.CERT_NONE\n\
s = smtplib.SMTP('127.0.0.1', {port}, timeout=20)\n\
s.starttls(context=ctx)\n\
der = s.sock.getpeercert(binary_form=True)\n\
s.quit()\n\
import subprocess\n\
pem = ssl.DER_cert_to_PEM_cert(der)\n\
out = subprocess.run(['openssl', 'x509', '-noout', '-subject'], input=pem.encode(), capture_output=True)\n\
print(out.stdout.decode().strip())\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn sighup_replaces_certificates_under_load_without_dropping_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let files = self_signed(dir.path(), "live", &["old.baton.test"], (2020, 2100));
    let mut baton = Baton::start_with(TestConfig {
        extra_toml: tls_toml(&files),
        ..TestConfig::default()
    });
    let port = baton.smtp.port();
    assert!(served_name(port).contains("old.baton.test"));

    // Load over STARTTLS on persistent connections, bounded in count.
    let report = dir.path().join("send.json");
    let mut load = Command::new(loadgen_bin())
        .arg("send")
        .arg(baton.smtp.to_string())
        .args([
            "--quiet",
            "--starttls",
            "--tls-no-verify",
            "-c",
            "4",
            "-n",
            "4000",
        ])
        .args(["--size", "1KiB", "--timeout", "20s", "--report"])
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    baton.wait_for("load under way", |b| b.queued_messages() > 100);

    // The renewal: new files in place, then SIGHUP.
    let renewed = self_signed(dir.path(), "renewed", &["new.baton.test"], (2020, 2100));
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    baton.signal("HUP");
    baton.wait_for("the reload logged", |b| {
        b.log().contains("SIGHUP: configuration reloaded")
    });
    assert!(baton.is_running(), "SIGHUP must not end baton");
    assert!(served_name(port).contains("new.baton.test"));

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = load.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "loadgen send did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "loadgen send failed");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["messages_failed"], 0, "{report}");
    assert_eq!(report["messages_accepted"], 4000, "{report}");
    assert_eq!(baton.queued_messages(), 4000);

    // A bad renewal (a key that does not match) is refused; the
    // certificate in force stays.
    let other = self_signed(dir.path(), "other", &["other.test"], (2020, 2100));
    std::fs::copy(&other.key, &files.key).unwrap();
    baton.signal("HUP");
    baton.wait_for("the refusal logged", |b| {
        b.log().contains("SIGHUP: configuration refused")
    });
    assert!(served_name(port).contains("new.baton.test"));
}
