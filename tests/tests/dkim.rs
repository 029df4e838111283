//! DKIM signing (RFC 6376, RFC 8463) checked by a verifier written by
//! others: Python's dkimpy, reading the public keys from the test's DNS
//! server, over the bytes the next hop received. Keys are made with
//! `baton dkim keygen`; RSA-2048 and Ed25519 sign each message (dual
//! signing), relaxed and simple canonicalization; header fix-ups add a
//! missing Message-ID and Date before signing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use baton_tests::delivery::{route, EventLog};
use baton_tests::dns::{DnsServer, Zone};
use baton_tests::sink::Sink;
use baton_tests::{baton_bin, Baton, TestConfig};

/// `baton dkim keygen`: the key file, and the TXT record's strings.
fn keygen(dir: &Path, domain: &str, selector: &str, algorithm: &str) -> (String, Vec<String>) {
    let key = dir.join(format!("{domain}.{selector}.pem"));
    let out = Command::new(baton_bin())
        .args([
            "dkim",
            "keygen",
            domain,
            selector,
            "--algorithm",
            algorithm,
            "--out",
        ])
        .arg(&key)
        .output()
        .expect("run baton dkim keygen");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{selector}._domainkey.{domain}. IN TXT (")))
        .unwrap_or_else(|| panic!("no TXT record printed: {text}"));
    let strings = line
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect();
    (key.display().to_string(), strings)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn python_verify(dns_port: u16, message: &Path) -> String {
    let script = format!(
        "import dkim, dns.resolver\n\
r = dns.resolver.Resolver(configure=False)\n\
r.nameservers = ['127.0.0.1']\n\
r.port = {dns_port}\n\
def dnsfunc(name, timeout=5):\n    name = name.decode() if isinstance(name, bytes) else name\n    answer = r.resolve(name, 'TXT')\n    return b''.join(b''.join(rd.strings) for rd in answer)\n\
msg = open('{}', 'rb').read()\n\
d = dkim.DKIM(msg)\n\
count = sum(1 for line in msg.split(b'\\r\\n\\r\\n')[0].split(b'\\r\\n') if line.lower().startswith(b'dkim-signature:'))\n\
for i in range(count):\n    print(i, d.verify(idx=i, dnsfunc=dnsfunc), d.domain.decode(), d.selector.decode())\n",
        message.display()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "dkimpy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dkimpy_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import dkim, dns.resolver, nacl"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn signatures_verify_with_dkimpy_after_delivery() {
    if !dkimpy_installed() {
        eprintln!("skipped: python3 with dkimpy, dnspython and pynacl is needed (pip install dkimpy dnspython pynacl)");
        return;
    }
    if !Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!(
            "skipped: baton dkim keygen makes RSA keys with the openssl command, which is missing"
        );
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let (rsa, rsa_txt) = keygen(keys.path(), "signer.test", "rsa", "rsa-sha256");
    let (ed, ed_txt) = keygen(keys.path(), "signer.test", "ed", "ed25519-sha256");
    let (simple, simple_txt) = keygen(keys.path(), "simple.test", "s1", "rsa-sha256");
    let dns = DnsServer::start(
        Zone::new()
            .txt_strings("rsa._domainkey.signer.test", &strs(&rsa_txt))
            .txt_strings("ed._domainkey.signer.test", &strs(&ed_txt))
            .txt_strings("s1._domainkey.simple.test", &strs(&simple_txt)),
    );
    let sink = Sink::start("127.0.0.2", &["--no-starttls"]);
    let events = EventLog::new();
    let dkim = format!(
        "[[dkim]]\ndomain = \"signer.test\"\nselector = \"rsa\"\nkey = \"{rsa}\"\n\n\
         [[dkim]]\ndomain = \"signer.test\"\nselector = \"ed\"\nalgorithm = \"ed25519-sha256\"\nkey = \"{ed}\"\n\n\
         [[dkim]]\ndomain = \"simple.test\"\nselector = \"s1\"\nkey = \"{simple}\"\ncanonicalization = \"simple/simple\"\n"
    );
    let mut baton = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: format!("{dkim}\n{}{}", route("*", sink.addr), events.toml()),
        ..TestConfig::default()
    });
    // No Message-ID, no Date: added before signing. A dot-stuffed line
    // must be signed as the next hop reads it.
    let signed = baton.submit(
        "a@signer.test",
        &["b@example.org"],
        "From: A <a@signer.test>\r\nTo: b@example.org\r\nSubject: signed\r\n\r\n.leading dot\r\nbody\r\n",
    );
    let simple_id = baton.submit(
        "a@simple.test",
        &["b@example.org"],
        "From: a@simple.test\r\nTo: b@example.org\r\nSubject: simple\r\nDate: Sun, 6 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@simple.test>\r\n\r\nbody  with  spaces\r\n",
    );
    let unsigned = baton.submit(
        "a@nokey.test",
        &["b@example.org"],
        "From: a@nokey.test\r\nSubject: no key\r\n\r\nbody\r\n",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.messages().len() < 3 {
        assert!(Instant::now() < deadline, "not delivered\n{}", baton.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut files: Vec<_> = std::fs::read_dir(sink.dump_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut verified = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let out = python_verify(dns.addr.port(), file);
        if text.contains("Subject: signed") {
            assert!(out.contains("0 True signer.test"), "{out}\n{text}");
            assert!(out.contains("1 True signer.test"), "{out}\n{text}");
            assert!(
                out.contains(" rsa") && out.contains(" ed"),
                "dual signing: {out}"
            );
            assert!(text.contains("\r\nMessage-ID: <"), "{text}");
            assert!(text.contains("\r\nDate: "), "{text}");
            assert!(text.contains("a=ed25519-sha256"), "{text}");
            verified.push("signed");
        } else if text.contains("Subject: simple") {
            assert!(out.contains("0 True simple.test s1"), "{out}\n{text}");
            assert!(text.contains("c=simple/simple"), "{text}");
            assert_eq!(text.matches("\r\nMessage-ID: <").count(), 1, "{text}");
            verified.push("simple");
        } else {
            assert!(!text.contains("DKIM-Signature"), "{text}");
            assert!(out.is_empty(), "{out}");
            verified.push("unsigned");
        }
    }
    verified.sort();
    assert_eq!(verified, ["signed", "simple", "unsigned"]);
    // The received events say how each was signed, or why not.
    baton_tests::delivery::wait_queue_empty(&mut baton);
    let dkim_of = |id: &str| {
        events.events_of("received", id)[0]["dkim"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(dkim_of(&signed).contains("d=signer.test s=rsa a=rsa-sha256"));
    assert!(dkim_of(&signed).contains("d=signer.test s=ed a=ed25519-sha256"));
    assert!(dkim_of(&simple_id).contains("d=simple.test s=s1"));
    assert_eq!(dkim_of(&unsigned), "none: no key for nokey.test");
}

#[test]
fn mail_from_a_client_baton_does_not_trust_is_neither_signed_nor_fixed_up() {
    // Relaying only for 10.0.0.0/8: a loopback client can send nothing
    // but is still answered; with no AUTH it is never signed for. The
    // session's own unit tests cover the decision; here the configuration
    // with keys must start and refuse the relay as before.
    let keys = tempfile::tempdir().unwrap();
    let (ed, _) = keygen(keys.path(), "signer.test", "ed", "ed25519-sha256");
    let baton = Baton::start_with(TestConfig {
        relay_networks: Some(vec!["10.0.0.0/8".into()]),
        extra_toml: format!(
            "[[dkim]]\ndomain = \"signer.test\"\nselector = \"ed\"\nalgorithm = \"ed25519-sha256\"\nkey = \"{ed}\"\n"
        ),
        ..TestConfig::default()
    });
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    smtp.cmd("MAIL FROM:<a@signer.test>")
        .assert_is(250, "2.1.0");
    smtp.cmd("RCPT TO:<b@example.org>").assert_is(554, "5.7.1");
}

#[test]
fn a_key_that_does_not_load_is_refused_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("broken.pem");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let config = dir.path().join("baton.toml");
    std::fs::write(
        &config,
        format!(
            "[[dkim]]\ndomain = \"signer.test\"\nselector = \"x\"\nkey = \"{}\"\n",
            key.display()
        ),
    )
    .unwrap();
    let out = Command::new(baton_bin())
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("broken.pem") && text.contains("signer.test"),
        "{text}"
    );
}
