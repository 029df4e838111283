//! HTTP injection (`POST /api/inject/v1`, KumoMTA's shape) as an injector
//! uses it, with curl: a complete message, a template for three
//! recipients each with its own substitutions, and a message built from
//! parts (text, HTML, an attachment) reach the next hop with the right
//! content, signed and with a `received` event that says `http`; a
//! suppressed recipient is a failed recipient. Malformed JSON, a missing
//! field, a wrong token and a body over the limit are refused (400, 401,
//! 413) and queue nothing. Off loopback the listener speaks HTTPS and
//! wants credentials: an `[auth]` user's by HTTP Basic.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use baton_tests::delivery::{route, EventLog};
use baton_tests::sink::Sink;
use baton_tests::tls::{tls_toml, TestCa};
use baton_tests::{baton_bin, free_port, Baton, TestConfig};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn curl_installed() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// baton with HTTP injection on loopback, a token, and the event log;
/// requests of at most 8 KiB and 3 recipients.
fn start(port: u16, dir: &Path, events: &EventLog, extra: &str, deliver: bool) -> Baton {
    let token = dir.join("inject.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    Baton::start_with(TestConfig {
        deliver,
        extra_toml: format!(
            "{}\n[http]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n\
             body_bytes_max = 8192\nrecipients_per_request_max = 3\n\n{extra}",
            events.toml(),
            token.display()
        ),
        ..TestConfig::default()
    })
}

/// POSTs `body` to the injection API with the bearer `token`: the status
/// and the body.
fn inject(port: u16, token: &str, body: &str) -> (u16, String) {
    inject_as(port, &format!("Bearer {token}"), body)
}

/// POSTs `body` with `Authorization: <authorization>`.
fn inject_as(port: u16, authorization: &str, body: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}/api/inject/v1");
    post(&url, &[], Some(authorization), body)
}

/// POSTs `body` (JSON) to `url` with curl and `curl_args`: the status and
/// the body of the answer.
fn post(url: &str, curl_args: &[&str], authorization: Option<&str>, body: &str) -> (u16, String) {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "30", "-X", "POST"])
        .args(["-H", "Content-Type: application/json"])
        .args(curl_args)
        .args(["--data-binary", "@-"])
        .args(["-w", "\n%{http_code}"])
        .arg(url);
    if let Some(authorization) = authorization {
        curl.args(["-H", &format!("Authorization: {authorization}")]);
    }
    let out = curl
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run curl");
    baton_tests::curl_answer(&out)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("{text:?}: {err}"))
}

/// The delivered message that contains `needle`, once it is there.
fn delivered(sink: &Sink, baton: &Baton, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(message) = sink.messages().into_iter().find(|m| m.contains(needle)) {
            return message;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not delivered\n{}",
            baton.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An RSA DKIM key for `domain`, made by `baton dkim keygen`: RSA signs
/// on the signing threads, so injected messages leave the shard and come
/// back through its inbox before they are stored.
fn dkim_key(dir: &Path, domain: &str) -> String {
    let key = dir.join(format!("{domain}.s1.pem"));
    let keygen = Command::new(baton_bin())
        .args([
            "dkim",
            "keygen",
            domain,
            "s1",
            "--algorithm",
            "rsa-sha256",
            "--out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        keygen.status.success(),
        "{}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    format!(
        "[[dkim]]\ndomain = \"{domain}\"\nselector = \"s1\"\nalgorithm = \"rsa-sha256\"\nkey = \"{}\"\n",
        key.display()
    )
}

/// `[auth]` with one user, `app`, made as an operator makes one: `baton
/// user add`, the password on standard input.
fn users_toml(dir: &Path, password: &str) -> String {
    let toml = format!("[auth]\nusers = \"{}\"\n", dir.join("users.toml").display());
    let config = dir.join("cli.toml");
    std::fs::write(&config, &toml).unwrap();
    let mut child = Command::new(baton_bin())
        .args(["user", "add", "app", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run baton user add");
    {
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml
}

/// The parts of a MIME body delimited by `boundary`, each as text.
fn parts<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    body.split(delimiter.as_str())
        .skip(1)
        .filter(|part| !part.starts_with("--"))
        .collect()
}

/// The `boundary` parameter of the `Content-Type` in `head`.
fn boundary(head: &str) -> String {
    let at = head.find("boundary=").expect("a boundary") + "boundary=".len();
    head[at..]
        .trim_start_matches('"')
        .split(['"', ';', '\r'])
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn injected_messages_reach_the_next_hop_as_smtp_mail_does() {
    if !curl_installed() {
        eprintln!("skipped: the curl command is needed (apt-get install curl)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port("127.0.0.1");
    let sink = Sink::start("127.0.0.2", &["--no-starttls"]);
    let events = EventLog::new();
    let extra = format!(
        "{}{}",
        route("*", sink.addr),
        dkim_key(dir.path(), "shop.test")
    );
    let mut baton = start(port, dir.path(), &events, &extra, true);

    // A complete message to two recipients: one message.
    let (code, answer) = inject(
        port,
        TOKEN,
        r#"{"envelope_sender": "news@shop.test",
            "recipients": [{"email": "ann@example.org"}, {"email": "bob@example.org"}],
            "content": "From: Shop <news@shop.test>\nTo: friends@example.org\nSubject: complete\n\nA whole message.\n.with a leading dot\n"}"#,
    );
    assert_eq!(code, 200, "{answer}");
    let answer = json(&answer);
    assert_eq!(answer["success_count"], 2, "{answer}");
    assert_eq!(answer["fail_count"], 0, "{answer}");
    let complete = delivered(&sink, &baton, "Subject: complete\r\n");
    assert!(
        complete.contains("\r\nA whole message.\r\n.with a leading dot\r\n"),
        "{complete}"
    );
    assert!(complete.contains("DKIM-Signature:"), "signed: {complete}");
    assert!(
        complete.contains("Message-ID: <") && complete.contains("Date: "),
        "{complete}"
    );
    assert!(complete.contains("(baton) with HTTP id "), "{complete}");

    // A template for three recipients, each with its own substitutions,
    // over the request's own.
    let (code, answer) = inject(
        port,
        TOKEN,
        r#"{"envelope_sender": "news@shop.test",
            "substitutions": {"shop": "Acme", "code": "NONE"},
            "recipients": [
                {"email": "r1@example.org", "name": "Rita", "substitutions": {"code": "C-111"}},
                {"email": "r2@example.org", "name": "Raj", "substitutions": {"code": "C-222"}},
                {"email": "r3@example.org", "substitutions": {"code": "C-333"}}],
            "content": "From: news@shop.test\nTo: {{ to_header }}\nSubject: templated for {{ email }}\n\nHello {{ name }}, {{ shop }} code {{ code }}.\n"}"#,
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(json(&answer)["success_count"], 3, "{answer}");
    for (email, line) in [
        ("r1@example.org", "Hello Rita, Acme code C-111."),
        ("r2@example.org", "Hello Raj, Acme code C-222."),
        ("r3@example.org", "Hello , Acme code C-333."),
    ] {
        let message = delivered(
            &sink,
            &baton,
            &format!("Subject: templated for {email}\r\n"),
        );
        assert!(
            message.contains(&format!("\r\n{line}\r\n")),
            "{email}: {message}"
        );
        assert!(message.contains("DKIM-Signature:"), "{message}");
    }

    // Parts built into MIME: text and HTML as alternatives, an attachment.
    let (code, answer) = inject(
        port,
        TOKEN,
        r#"{"envelope_sender": "news@shop.test",
            "recipients": [{"email": "carol@example.org", "name": "Carol"}],
            "content": {"from": {"email": "news@shop.test", "name": "Shop"},
                        "subject": "built for {{ name }}",
                        "text_body": "Plain for {{ name }}",
                        "html_body": "<p>HTML for {{ name }}</p>",
                        "headers": {"X-Campaign": "june"},
                        "attachments": [{"data": "iVBORw0KGgo=", "base64": true,
                                         "content_type": "image/png", "file_name": "logo.png"}]}}"#,
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(json(&answer)["success_count"], 1, "{answer}");
    let built = delivered(&sink, &baton, "Subject: built for Carol\r\n");
    let (head, body) = built.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("To: \"Carol\" <carol@example.org>"), "{head}");
    assert!(head.contains("X-Campaign: june"), "{head}");
    assert!(head.contains("Content-Type: multipart/mixed"), "{head}");
    let mixed = parts(body, &boundary(head));
    assert_eq!(mixed.len(), 2, "alternatives and the attachment: {body}");
    assert!(
        mixed[0].contains("Content-Type: multipart/alternative"),
        "{}",
        mixed[0]
    );
    let alternatives = parts(mixed[0], &boundary(mixed[0]));
    assert_eq!(alternatives.len(), 2, "{}", mixed[0]);
    assert!(
        alternatives[0].contains("Content-Type: text/plain"),
        "{}",
        alternatives[0]
    );
    assert!(
        alternatives[0].contains("Plain for Carol"),
        "{}",
        alternatives[0]
    );
    assert!(
        alternatives[1].contains("Content-Type: text/html"),
        "{}",
        alternatives[1]
    );
    assert!(
        alternatives[1].contains("<p>HTML for Carol</p>"),
        "{}",
        alternatives[1]
    );
    assert!(mixed[1].contains("Content-Type: image/png"), "{}", mixed[1]);
    assert!(
        mixed[1].contains("attachment; filename=\"logo.png\""),
        "{}",
        mixed[1]
    );
    assert!(
        mixed[1].contains("Content-Transfer-Encoding: base64"),
        "{}",
        mixed[1]
    );
    assert!(mixed[1].contains("\r\n\r\niVBORw0KGgo="), "{}", mixed[1]);

    // Events: `received`, marked as HTTP, signed.
    baton.wait_until("five received events", || {
        events
            .events()
            .iter()
            .filter(|e| e["event"] == "received")
            .count()
            == 5
    });
    for event in events.events().iter().filter(|e| e["event"] == "received") {
        assert_eq!(event["protocol"], "http", "{event}");
        assert!(
            event["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{event}"
        );
        assert!(
            event["dkim"]
                .as_str()
                .unwrap()
                .contains("d=shop.test s=s1 a=rsa-sha256"),
            "{event}"
        );
    }

    // A suppressed recipient fails with the reason; the other is sent.
    let (code, reply) = baton.admin_request_with_body(
        "POST",
        "/suppression",
        r#"{"address": "gone@example.org", "scope": "global", "reason": "asked to leave"}"#,
    );
    assert_eq!(code, 200, "{reply}");
    let (code, answer) = inject(
        port,
        TOKEN,
        r#"{"envelope_sender": "news@shop.test",
            "recipients": [{"email": "gone@example.org"}, {"email": "stays@example.org"}, {"email": "not an address"}],
            "content": "From: news@shop.test\nSubject: partly\n\nhi\n"}"#,
    );
    assert_eq!(code, 200, "{answer}");
    let answer = json(&answer);
    assert_eq!(answer["success_count"], 1, "{answer}");
    assert_eq!(answer["fail_count"], 2, "{answer}");
    assert_eq!(
        answer["failed_recipients"],
        serde_json::json!(["gone@example.org", "not an address"])
    );
    let errors = answer["errors"].to_string();
    assert!(
        errors.contains("suppressed (global): asked to leave"),
        "{errors}"
    );
    delivered(&sink, &baton, "Subject: partly\r\n");
}

#[test]
fn bad_requests_are_refused_and_queue_nothing() {
    if !curl_installed() {
        eprintln!("skipped: the curl command is needed (apt-get install curl)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port("127.0.0.1");
    let events = EventLog::new();
    // "app:s3cret-password" and "app:wrong", for HTTP Basic.
    let users = users_toml(dir.path(), "s3cret-password");
    let mut baton = start(port, dir.path(), &events, &users, false);
    let good = r#"{"envelope_sender": "a@shop.test", "recipients": [{"email": "b@example.org"}],
                   "content": "Subject: x\n\nhi\n"}"#;

    let (code, answer) = inject(port, TOKEN, r#"{"envelope_sender": "a@shop.test", "recip"#);
    assert_eq!(code, 400, "{answer}");
    assert!(
        json(&answer)["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON"),
        "{answer}"
    );

    let (code, answer) = inject(
        port,
        TOKEN,
        r#"{"envelope_sender": "a@shop.test", "content": "Subject: x\n\nhi\n"}"#,
    );
    assert_eq!(code, 400, "{answer}");
    assert_eq!(json(&answer)["error"], "recipients: missing", "{answer}");

    let (code, answer) = inject(port, "not-the-token-0000000000000000", good);
    assert_eq!(code, 401, "{answer}");
    let (code, answer) = inject_as(port, "Basic YXBwOndyb25n", good);
    assert_eq!(code, 401, "{answer}");

    let large = format!(
        r#"{{"envelope_sender": "a@shop.test", "recipients": [{{"email": "b@example.org"}}],
            "content": "Subject: x\n\n{}\n"}}"#,
        "a".repeat(9000)
    );
    let (code, answer) = inject(port, TOKEN, &large);
    assert_eq!(code, 413, "{answer}");

    let four = r#"{"envelope_sender": "a@shop.test", "content": "Subject: x\n\nhi\n",
                   "recipients": [{"email": "b@example.org"}, {"email": "c@example.org"},
                                  {"email": "d@example.org"}, {"email": "e@example.org"}]}"#;
    let (code, answer) = inject(port, TOKEN, four);
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer.contains("over http.recipients_per_request_max (3)"),
        "{answer}"
    );

    // Nothing of these was queued or logged as received; a good request
    // after them is, so the check above is not vacuous.
    assert_eq!(baton.queued_messages(), 0);
    assert!(events.events().iter().all(|e| e["event"] != "received"));
    let (code, answer) = inject(port, TOKEN, good);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(baton.queued_messages(), 1);

    // An [auth] user by HTTP Basic: the user goes with the message, as
    // after SMTP AUTH.
    let (code, answer) = inject_as(port, "Basic YXBwOnMzY3JldC1wYXNzd29yZA==", good);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(baton.queued_messages(), 2);
    let received = || -> Vec<serde_json::Value> {
        let events = events.events().into_iter();
        events.filter(|e| e["event"] == "received").collect()
    };
    baton.wait_until("two received events", || received().len() == 2);
    let received = received();
    assert!(received[0].get("user").is_none(), "{}", received[0]);
    assert_eq!(received[1]["user"], "app", "{}", received[1]);
}

/// A local address that is not loopback, if this host has one: the
/// address a UDP socket would send from towards a documentation network
/// (nothing is sent).
fn address_off_loopback() -> Option<std::net::IpAddr> {
    [
        "192.0.2.1:9",
        "198.51.100.1:9",
        "203.0.113.1:9",
        "10.255.255.1:9",
    ]
    .iter()
    .filter_map(|target| {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect(target).ok()?;
        socket.local_addr().ok().map(|local| local.ip())
    })
    .find(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

#[test]
fn off_loopback_injection_is_https_with_credentials() {
    if !curl_installed() {
        eprintln!("skipped: the curl command is needed (apt-get install curl)");
        return;
    }
    let Some(ip) = address_off_loopback() else {
        eprintln!("skipped: this host has no address but loopback to listen on");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let ip_text = ip.to_string();
    let leaf = ca.leaf("server", &["inject.test", &ip_text]);
    let port = free_port(&ip_text);
    let events = EventLog::new();
    let users = users_toml(dir.path(), "s3cret-password");
    let mut baton = Baton::start_with(TestConfig {
        extra_toml: format!(
            "{}{}{users}\n[http]\nlisten = \"{ip_text}:{port}\"\n",
            events.toml(),
            tls_toml(&leaf)
        ),
        ..TestConfig::default()
    });
    let url = format!("https://inject.test:{port}/api/inject/v1");
    let resolve = format!("inject.test:{port}:{ip_text}");
    let cacert = ca.cert.display().to_string();
    let https = ["--cacert", cacert.as_str(), "--resolve", resolve.as_str()];
    let good = r#"{"envelope_sender": "a@shop.test", "recipients": [{"email": "b@example.org"}],
                   "content": "Subject: over TLS\n\nhi\n"}"#;

    // No credentials, or wrong ones: 401 with the challenge, nothing queued.
    let (code, answer) = post(&url, &https, None, good);
    assert_eq!(code, 401, "{answer}");
    let (code, answer) = post(&url, &https, Some("Basic YXBwOndyb25n"), good);
    assert_eq!(code, 401, "{answer}");
    assert_eq!(baton.queued_messages(), 0);

    // The user's password, over TLS: queued as the user's.
    let (code, answer) = post(
        &url,
        &https,
        Some("Basic YXBwOnMzY3JldC1wYXNzd29yZA=="),
        good,
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(json(&answer)["success_count"], 1, "{answer}");
    assert_eq!(baton.queued_messages(), 1);
    let received = || -> Vec<serde_json::Value> {
        let events = events.events().into_iter();
        events.filter(|e| e["event"] == "received").collect()
    };
    baton.wait_until("a received event", || received().len() == 1);
    assert_eq!(received()[0]["user"], "app", "{}", received()[0]);
    assert_eq!(received()[0]["protocol"], "http", "{}", received()[0]);
}
