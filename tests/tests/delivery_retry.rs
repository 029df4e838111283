//! Temporary failures are retried on `[delivery] retry_schedule`: a `451`
//! after the content and a refused connection each defer the recipient
//! (GET /queue/<id> says `deferred`, with the next attempt in the future),
//! and the next attempt, not an earlier one, delivers it once the next hop
//! takes mail. A recipient still deferred past `max_age` fails instead,
//! and its sender gets a notification that says the delivery time expired
//! (RFC 3463 X.4.7) and quotes the last reply.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use baton_tests::sink::Sink;
use baton_tests::{free_port, queued_id, Baton, TestConfig};

/// `[[route]]` tables sending `domain` to `next_hop`.
fn route(domain: &str, next_hop: SocketAddr) -> String {
    format!("[[route]]\ndomain = \"{domain}\"\nnext_hop = \"{next_hop}\"\n")
}

/// The `[log]` table writing the delivery event log to `path`.
fn event_log(path: &Path) -> String {
    format!("[log]\nevents = \"{}\"\n", path.display())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// `GET /queue/<id>`: the message with the state of each recipient.
fn message(server: &Baton, id: &str) -> serde_json::Value {
    let (status, body) = server.admin_request("GET", &format!("/queue/{id}"));
    assert_eq!(status, 200, "GET /queue/{id}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET /queue/{id}: {err}: {body}"))
}

/// The state of `address` in `GET /queue/<id>`.
fn recipient(server: &Baton, id: &str, address: &str) -> serde_json::Value {
    let message = message(server, id);
    message["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .find(|r| r["address"] == address)
        .unwrap_or_else(|| panic!("{address} is not a recipient of {id}: {message}"))
        .clone()
}

/// Every line of the event log so far, parsed.
fn events(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("event {line:?}: {err}"))
        })
        .collect()
}

/// The events of `kind` about message `id`.
fn events_of(path: &Path, kind: &str, id: &str) -> Vec<serde_json::Value> {
    events(path)
        .into_iter()
        .filter(|e| e["event"] == kind && e["queue_id"] == id)
        .collect()
}

/// Sends one message on a new connection and returns its queue id.
fn send(server: &Baton, from: &str, to: &[&str], body: &str) -> String {
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    queued_id(&smtp.send_message(from, to, body))
}

/// How many times the sink answered with `code`.
fn replies(report: &serde_json::Value, code: u16) -> u64 {
    report["replies"][code.to_string()].as_u64().unwrap_or(0)
}

/// Waits until `address` of message `id` is deferred after its first
/// attempt, and returns when the next attempt is due (Unix ms).
fn first_deferral(server: &mut Baton, id: &str, address: &str) -> u64 {
    server.wait_for("the recipient deferred after attempt 1", |s| {
        recipient(s, id, address)["status"] == "deferred"
    });
    let state = recipient(server, id, address);
    assert_eq!(state["attempts"], 1, "{state}");
    let next_attempt_ms = state["next_attempt_ms"].as_u64().expect("next_attempt_ms");
    let now = now_ms();
    assert!(
        next_attempt_ms > now,
        "the next attempt is not in the future: {next_attempt_ms} <= {now}"
    );
    next_attempt_ms
}

#[test]
fn a_message_refused_with_451_after_its_content_is_delivered_on_the_retry() {
    let first = Sink::start("127.0.0.2", &["--message-tempfail", "1"]);
    let logs = tempfile::tempdir().expect("event log directory");
    let events_path = logs.path().join("events.jsonl");
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        // Long enough that the second sink is up before the retry.
        delivery: vec!["retry_schedule = [\"2s\"]".into()],
        extra_toml: route("*", first.addr) + &event_log(&events_path),
        ..TestConfig::default()
    });
    let body = "Subject: try again\r\nX-Test: retry-451\r\n\r\nhello\r\n";
    let id = send(&server, "alice@sender.test", &["bob@dest.test"], body);
    let next_attempt_ms = first_deferral(&mut server, &id, "bob@dest.test");

    let addr = first.addr;
    let first = first.stop();
    let second = Sink::start_on(addr, &[]);
    let started_ms = now_ms();
    assert!(
        started_ms < next_attempt_ms,
        "the second sink was up only at {started_ms}, after the retry was due \
         ({next_attempt_ms}): the machine is too slow for this test's schedule"
    );

    server.wait_until("the message at the second sink", || second.count() >= 1);
    server.wait_for("the recipient delivered", |s| {
        recipient(s, &id, "bob@dest.test")["status"] == "delivered"
    });
    let delivered_ms = now_ms();
    assert!(
        delivered_ms >= next_attempt_ms,
        "delivered at {delivered_ms}, before the retry was due at {next_attempt_ms}"
    );
    server.wait_until("the delivered event", || {
        !events_of(&events_path, "delivered", &id).is_empty()
    });
    let deferred = events_of(&events_path, "deferred", &id);
    assert_eq!(deferred.len(), 1, "{deferred:?}");
    assert_eq!(deferred[0]["attempt"], 1, "{:?}", deferred[0]);
    let reply = deferred[0]["reply"].as_str().expect("reply");
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    let delivered = events_of(&events_path, "delivered", &id);
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["attempt"], 2, "{:?}", delivered[0]);

    let messages = second.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0].contains("X-Test: retry-451\r\n"),
        "{}",
        messages[0]
    );
    let second = second.stop();
    assert_eq!(second["messages_accepted"], 1, "{second}");
    // The first sink took the content and refused it: nothing stayed there.
    assert_eq!(first["messages_accepted"], 0, "{first}");
    assert_eq!(replies(&first, 451), 1, "{first}");
}

#[test]
fn a_message_whose_next_hop_refused_the_connection_is_delivered_once_it_listens() {
    let addr: SocketAddr = format!("127.0.0.3:{}", free_port("127.0.0.3"))
        .parse()
        .expect("address");
    let logs = tempfile::tempdir().expect("event log directory");
    let events_path = logs.path().join("events.jsonl");
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        delivery: vec!["retry_schedule = [\"2s\"]".into()],
        extra_toml: route("*", addr) + &event_log(&events_path),
        ..TestConfig::default()
    });
    let body = "Subject: anyone there\r\nX-Test: refused\r\n\r\nhello\r\n";
    let id = send(&server, "alice@sender.test", &["bob@dest.test"], body);
    let next_attempt_ms = first_deferral(&mut server, &id, "bob@dest.test");
    server.wait_until("the deferred event", || {
        !events_of(&events_path, "deferred", &id).is_empty()
    });
    let deferred = events_of(&events_path, "deferred", &id);
    let reply = deferred
        .first()
        .and_then(|e| e["reply"].as_str())
        .unwrap_or_else(|| panic!("a deferred event with a reply: {deferred:?}"));
    assert!(reply.starts_with("451 4.4.1"), "{reply}");

    let sink = Sink::start_on(addr, &[]);
    server.wait_until("the message at the sink", || sink.count() >= 1);
    server.wait_for("the recipient delivered", |s| {
        recipient(s, &id, "bob@dest.test")["status"] == "delivered"
    });
    assert!(now_ms() >= next_attempt_ms);
    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0].contains("X-Test: refused\r\n"),
        "{}",
        messages[0]
    );
    let report = sink.stop();
    assert_eq!(report["messages_accepted"], 1, "{report}");
}

/// The `message/delivery-status` part of a notification, unfolded, as its
/// groups of fields: the per-message group first, then one per recipient.
fn delivery_status(notification: &str) -> Vec<Vec<(String, String)>> {
    let start = notification
        .find("Content-Type: message/delivery-status")
        .unwrap_or_else(|| panic!("no message/delivery-status part:\n{notification}"));
    let part = &notification[start..];
    let content_start = part.find("\r\n\r\n").expect("part headers end") + 4;
    let content = &part[content_start..];
    let end = content.find("\r\n--").expect("part ends at a boundary");
    let unfolded = content[..end].replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded
        .split("\r\n\r\n")
        .map(|group| {
            group
                .split("\r\n")
                .filter(|line| !line.is_empty())
                .map(|line| {
                    let (name, value) = line
                        .split_once(':')
                        .unwrap_or_else(|| panic!("not a field: {line:?}"));
                    (name.to_string(), value.trim().to_string())
                })
                .collect()
        })
        .collect()
}

/// The value of `name` in one group of fields.
fn field<'a>(group: &'a [(String, String)], name: &str) -> &'a str {
    group
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {group:?}"))
}

#[test]
fn a_recipient_deferred_past_max_age_fails_and_its_sender_hears_it_expired() {
    let refusing = Sink::start("127.0.0.2", &["--message-tempfail", "1"]);
    let senders = Sink::start("127.0.0.3", &[]);
    let logs = tempfile::tempdir().expect("event log directory");
    let events_path = logs.path().join("events.jsonl");
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        delivery: vec![
            "retry_schedule = [\"500ms\"]".into(),
            "max_age = \"2s\"".into(),
        ],
        extra_toml: route("dest.test", refusing.addr)
            + &route("sender.test", senders.addr)
            + &event_log(&events_path),
        ..TestConfig::default()
    });
    let body = "Subject: never arrives\r\nX-Test: expiry\r\n\r\nhello\r\n";
    let id = send(&server, "alice@sender.test", &["bob@dest.test"], body);
    server.wait_for("the recipient failed", |s| {
        let state = recipient(s, &id, "bob@dest.test");
        assert_ne!(state["status"], "delivered", "{state}");
        state["status"] == "failed"
    });
    server.wait_until("a notification at the sender's domain", || {
        senders.count() >= 1
    });
    server.wait_for("an empty queue", |s| s.queued_recipients() == 0);

    let notices = senders.messages();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let notice = &notices[0];
    assert!(notice.contains("To: <alice@sender.test>\r\n"), "{notice}");
    assert!(notice.contains("expired"), "{notice}");
    let groups = delivery_status(notice);
    assert_eq!(
        groups.len(),
        2,
        "one group for the message, one recipient: {groups:?}"
    );
    let failed = &groups[1];
    assert_eq!(field(failed, "Final-Recipient"), "rfc822; bob@dest.test");
    assert_eq!(field(failed, "Action"), "failed");
    assert_eq!(field(failed, "Status"), "4.4.7", "{failed:?}");
    let diagnostic = field(failed, "Diagnostic-Code");
    assert!(diagnostic.starts_with("smtp; 451"), "{diagnostic}");
    assert!(diagnostic.contains("expired"), "{diagnostic}");
    // The last reply the next hop gave.
    assert!(
        diagnostic.contains("451 4.3.0 scripted: try again later"),
        "{diagnostic}"
    );

    let senders = senders.stop();
    assert_eq!(senders["messages_accepted"], 1, "{senders}");
    let refusing = refusing.stop();
    assert_eq!(refusing["messages_accepted"], 0, "{refusing}");
    // At least the first attempt and a retry, all refused.
    let attempts = replies(&refusing, 451);
    assert!(attempts >= 2, "{refusing}");
    server.wait_until("the failed event", || {
        !events_of(&events_path, "failed", &id).is_empty()
    });
    let failed = events_of(&events_path, "failed", &id);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["reason"], "expired", "{:?}", failed[0]);
    assert_eq!(failed[0]["attempt"], attempts, "{:?}", failed[0]);
    let deferred = events_of(&events_path, "deferred", &id);
    assert_eq!(deferred.len() as u64, attempts - 1, "{deferred:?}");
}
