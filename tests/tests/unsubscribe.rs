//! One-click unsubscribe (RFC 8058), as a recipient's mailbox provider
//! uses it: baton adds `List-Unsubscribe` and `List-Unsubscribe-Post` to
//! single-recipient mail from a configured sender domain, before DKIM
//! signs it; curl (the HTTP client here) follows the link from the bytes
//! the next hop received, over HTTPS with a certificate from the test's
//! CA: a GET shows a page and changes nothing, a tampered link gets 400,
//! the POST suppresses the recipient in the sender domain's scope, and
//! the next message to them from that domain is refused at RCPT.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use baton_tests::delivery::{route, EventLog};
use baton_tests::sink::Sink;
use baton_tests::tls::{tls_toml, TestCa};
use baton_tests::{baton_bin, free_port, Baton, TestConfig};

fn curl_installed() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// curl against the listener, trusting the test CA, with `unsub.test`
/// resolved to the listener: the status code and the body.
fn curl(ca: &Path, port: u16, args: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("unsub.test:{port}:127.0.0.4")])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    baton_tests::curl_answer(&out)
}

/// The delivered message whose `Subject:` is `subject`, once it is there.
fn delivered(sink: &Sink, baton: &Baton, subject: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for entry in std::fs::read_dir(sink.dump_dir()).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
            if text.contains(&format!("\r\nSubject: {subject}\r\n")) {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{subject:?} not delivered\n{}",
            baton.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the `name:` field in `message`'s header, unfolded.
fn header(message: &str, name: &str) -> Option<String> {
    let head = message.split("\r\n\r\n").next().unwrap();
    let mut lines = head.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        if field.eq_ignore_ascii_case(name) {
            let mut value = value.trim().to_owned();
            while let Some(next) = lines.next_if(|l| l.starts_with([' ', '\t'])) {
                value.push(' ');
                value.push_str(next.trim());
            }
            return Some(value);
        }
    }
    None
}

fn rcpt_code(baton: &Baton, from: &str, to: &str) -> u16 {
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    assert_eq!(smtp.cmd(&format!("MAIL FROM:<{from}>")).code, 250);
    smtp.cmd(&format!("RCPT TO:<{to}>")).code
}

#[test]
fn curl_unsubscribes_with_the_delivered_link_and_the_next_message_is_refused() {
    if !curl_installed() {
        eprintln!("skipped: the curl command is needed (apt-get install curl)");
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path());
    let leaf = ca.leaf("server", &["unsub.test", "127.0.0.1"]);
    // An Ed25519 DKIM key for the sender domain: the signature must cover
    // both unsubscribe fields (RFC 8058 §4).
    let key = certs.path().join("shop.test.s1.pem");
    let keygen = Command::new(baton_bin())
        .args([
            "dkim",
            "keygen",
            "shop.test",
            "s1",
            "--algorithm",
            "ed25519-sha256",
            "--out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let port = free_port("127.0.0.4");
    let sink = Sink::start("127.0.0.2", &["--no-starttls"]);
    let events = EventLog::new();
    let mut baton = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: format!(
            "{}{}{}\n[unsubscribe]\nlisten = \"127.0.0.4:{port}\"\nurl = \"https://unsub.test:{port}\"\n\
             domains = [\"shop.test\"]\nmailto = \"unsubscribe@shop.test\"\n\n\
             [[dkim]]\ndomain = \"shop.test\"\nselector = \"s1\"\nalgorithm = \"ed25519-sha256\"\nkey = \"{}\"\n",
            tls_toml(&leaf),
            route("*", sink.addr),
            events.toml(),
            key.display()
        ),
        ..TestConfig::default()
    });
    let body = |subject: &str| {
        format!("From: Shop <news@shop.test>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n\r\nHello\r\n")
    };
    baton.submit("news@shop.test", &["bob@example.org"], &body("one"));
    baton.submit(
        "news@shop.test",
        &["bob@example.org", "carol@example.org"],
        &body("two"),
    );
    baton.submit("news@other.test", &["bob@example.org"], &body("other"));
    baton.submit(
        "news@shop.test",
        &["bob@example.org"],
        "From: news@shop.test\r\nSubject: own\r\nList-Unsubscribe: <mailto:own@shop.test>\r\n\r\nHi\r\n",
    );

    let one = delivered(&sink, &baton, "one");
    let link =
        header(&one, "List-Unsubscribe").expect("List-Unsubscribe on a one-recipient message");
    assert_eq!(
        header(&one, "List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    assert!(
        link.contains("<mailto:unsubscribe@shop.test?subject=unsubscribe%20"),
        "{link}"
    );
    let signature = header(&one, "DKIM-Signature").expect("signed");
    let signed: String = signature
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        signed.contains("list-unsubscribe") && signed.contains("list-unsubscribe-post"),
        "the signature must cover both fields: h={signed}"
    );
    // Two recipients, another sender domain, the sender's own link: none
    // gets baton's.
    assert!(header(&delivered(&sink, &baton, "two"), "List-Unsubscribe").is_none());
    assert!(header(&delivered(&sink, &baton, "other"), "List-Unsubscribe").is_none());
    assert_eq!(
        header(&delivered(&sink, &baton, "own"), "List-Unsubscribe").as_deref(),
        Some("<mailto:own@shop.test>")
    );

    let url = link
        .split(['<', '>'])
        .find(|part| part.starts_with("https://"))
        .expect("an https link")
        .to_owned();
    assert!(
        url.starts_with(&format!("https://unsub.test:{port}/u/")),
        "{url}"
    );
    let ca_pem = ca.cert.clone();

    // A GET (a link scanner, or the user's browser) shows a confirmation
    // page and unsubscribes no one.
    let (code, page) = curl(&ca_pem, port, &[], &url);
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("bob@example.org") && page.contains("<form method=\"post\">"),
        "{page}"
    );
    assert_eq!(rcpt_code(&baton, "news@shop.test", "bob@example.org"), 250);

    // A tampered token: 400, and nothing changes.
    let (prefix, token) = url.rsplit_once("/u/").unwrap();
    let mut forged = token.as_bytes().to_vec();
    forged[5] = if forged[5] == b'A' { b'B' } else { b'A' };
    let forged = format!("{prefix}/u/{}", String::from_utf8(forged).unwrap());
    let (code, page) = curl(
        &ca_pem,
        port,
        &["-d", "List-Unsubscribe=One-Click"],
        &forged,
    );
    assert_eq!(code, 400, "{page}");
    assert_eq!(rcpt_code(&baton, "news@shop.test", "bob@example.org"), 250);
    // A POST without the one-click form is not an unsubscribe either.
    let (code, _) = curl(&ca_pem, port, &["-d", "hello=1"], &url);
    assert_eq!(code, 400);
    assert_eq!(rcpt_code(&baton, "news@shop.test", "bob@example.org"), 250);

    // The mailbox provider's POST (RFC 8058 §3.1).
    let (code, page) = curl(&ca_pem, port, &["-d", "List-Unsubscribe=One-Click"], &url);
    assert_eq!(code, 200, "{page}");
    // Suppressed for shop.test's mail, not for other senders'.
    assert_eq!(rcpt_code(&baton, "news@shop.test", "bob@example.org"), 550);
    assert_eq!(rcpt_code(&baton, "news@other.test", "bob@example.org"), 250);
    // Honoured twice is still 200 (a user clicking again).
    let (code, _) = curl(&ca_pem, port, &["-F", "List-Unsubscribe=One-Click"], &url);
    assert_eq!(code, 200);

    // The event log is written in batches: wait for the lines.
    let unsubscribed = || -> Vec<serde_json::Value> {
        events
            .events()
            .into_iter()
            .filter(|e| e["event"] == "unsubscribed")
            .collect()
    };
    baton.wait_until("two unsubscribed events", || unsubscribed().len() == 2);
    let unsubscribed = unsubscribed();
    assert_eq!(unsubscribed[0]["recipient"], "bob@example.org");
    assert_eq!(unsubscribed[0]["scope"], "domain:shop.test");
    assert!(events
        .events()
        .iter()
        .any(|e| e["event"] == "suppression_added"
            && e["address"] == "bob@example.org"
            && e["source"] == "unsubscribe"));
    let show = Command::new(baton_bin())
        .args(["suppression", "show", "bob@example.org", "--config"])
        .arg(&baton.config_path)
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.contains("domain:shop.test") && show.contains("unsubscribe"),
        "{show}"
    );
}

#[test]
fn the_listener_needs_a_certificate_and_the_suppression_list() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(baton_bin())
            .arg("check-config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = check("[unsubscribe]\nlisten = \"127.0.0.1:8443\"\n");
    assert!(
        !ok && text.contains("unsubscribe.listen") && text.contains("[tls] certificate"),
        "{text}"
    );
    let (ok, text) = check("[unsubscribe]\nurl = \"http://plain.example\"\n");
    assert!(!ok && text.contains("unsubscribe.url"), "{text}");
    let (ok, text) = check("[unsubscribe]\ndomains = [\"not a domain\"]\n");
    assert!(!ok && text.contains("unsubscribe.domains"), "{text}");
}
