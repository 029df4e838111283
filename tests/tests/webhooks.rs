//! Webhooks (`[[webhook]]`) against a real HTTP server (Python's
//! `http.server`): the endpoint answers 500 for a while, then is down
//! across a baton restart; every event of baton's event log arrives all
//! the same, once, in the log's order, signed with the configured secret
//! and carrying the configured `Authorization` header; a webhook that asks
//! for some kinds of event gets those and no others. Over HTTPS, the
//! endpoint's certificate is checked against `tls_ca`. A log rotated
//! while the endpoint is down, across a restart, is finished, then the new
//! one posted.

use std::collections::BTreeMap;

use baton_tests::delivery::{route, wait_queue_empty, EventLog};
use baton_tests::sink::Sink;
use baton_tests::tls::TestCa;
use baton_tests::webhook::{Post, Receiver};
use baton_tests::{Baton, TestConfig};
use ring::hmac;

const SECRET: &str = "webhook test secret";
const AUTHORIZATION: &str = "Bearer test-token";
/// Messages sent in each phase, each to two recipients.
const MESSAGES_PER_PHASE: usize = 6;

/// The two webhooks: `all` (every event, small batches, signed, with a
/// header) and `outcomes` (`delivered` and `failed` only).
fn webhooks_toml(receiver: &Receiver) -> String {
    format!(
        "[[webhook]]\nname = \"all\"\nurl = \"{}\"\nbatch_size = 5\nbatch_wait = \"200ms\"\n\
         secret = \"{SECRET}\"\nheaders = {{ Authorization = \"{AUTHORIZATION}\" }}\n\
         [[webhook]]\nname = \"outcomes\"\nurl = \"{}\"\nevents = [\"delivered\", \"failed\"]\n\
         batch_wait = \"200ms\"\n",
        receiver.url("/all"),
        receiver.url("/outcomes"),
    )
}

/// `name{webhook="<webhook>"}` from `/metrics`.
fn webhook_metric(baton: &Baton, name: &str, webhook: &str) -> u64 {
    let (status, body) = baton.admin_request("GET", "/metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    let prefix = format!("{name}{{webhook=\"{webhook}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample of {prefix} in\n{body}"))
}

/// The events `path`'s webhook was sent and acknowledged, in order.
fn acknowledged(receiver: &Receiver, path: &str) -> Vec<serde_json::Value> {
    receiver
        .posts()
        .iter()
        .filter(|post| post.path == path && post.status == 200)
        .flat_map(Post::events)
        .collect()
}

/// Sends a phase's messages, each to two recipients, and waits until
/// every recipient was delivered and the log has every line so far:
/// a `received` and two `delivered` per message.
fn send_phase(baton: &mut Baton, log: &EventLog, phase: &str) {
    // Earlier phases are complete in the log.
    let received = |e: &serde_json::Value| e["event"] == "received";
    let before = log.events().into_iter().filter(received).count();
    for n in 0..MESSAGES_PER_PHASE {
        let body = format!("Subject: {phase} {n}\r\n\r\nhello\r\n");
        baton.submit(
            "alice@sender.test",
            &["bob@dest.test", "carol@dest.test"],
            &body,
        );
    }
    wait_queue_empty(baton);
    let lines = 3 * (before + MESSAGES_PER_PHASE);
    baton.wait_until("every line in the event log", || {
        log.events().len() == lines
    });
}

/// Waits until `path`'s webhook has been sent exactly the log's events
/// `wanted` keeps, and returns them.
fn wait_all_sent(
    baton: &mut Baton,
    receiver: &Receiver,
    log: &EventLog,
    path: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) {
    baton.wait_until(&format!("every event posted to {path}"), || {
        let expected: Vec<_> = log.events().into_iter().filter(&wanted).collect();
        !expected.is_empty() && acknowledged(receiver, path).len() >= expected.len()
    });
}

/// The events of each message (by queue id), in the order given.
fn by_message(events: &[serde_json::Value]) -> BTreeMap<String, Vec<&serde_json::Value>> {
    let mut messages: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for event in events {
        let id = event["queue_id"].as_str().unwrap_or_default().to_owned();
        messages.entry(id).or_default().push(event);
    }
    messages
}

#[test]
fn every_event_arrives_once_in_order_signed_through_failures_and_a_restart() {
    let mut receiver = Receiver::start();
    let sink = Sink::start("127.0.0.1", &[]);
    let log = EventLog::new();
    let mut baton = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route("*", sink.addr) + &log.toml() + &webhooks_toml(&receiver),
        ..TestConfig::default()
    });
    let is_outcome = |e: &serde_json::Value| e["event"] == "delivered" || e["event"] == "failed";

    // The endpoint takes everything.
    send_phase(&mut baton, &log, "first");
    wait_all_sent(&mut baton, &receiver, &log, "/all", |_| true);

    // It fails (500) for a while: baton retries the same batch.
    receiver.set_failing(true);
    send_phase(&mut baton, &log, "failing");
    baton.wait_for("posts refused and counted", |b| {
        webhook_metric(b, "baton_webhook_failed_total", "all") >= 2
            && webhook_metric(b, "baton_webhook_failed_total", "outcomes") >= 1
    });
    assert!(webhook_metric(&baton, "baton_webhook_lag_bytes", "all") > 0);
    receiver.set_failing(false);
    wait_all_sent(&mut baton, &receiver, &log, "/all", |_| true);

    // It is down, and stays down while baton stops and starts again.
    receiver.stop();
    send_phase(&mut baton, &log, "down");
    baton.wait_for("posts failing while the endpoint is down", |b| {
        webhook_metric(b, "baton_webhook_lag_bytes", "all") > 0
    });
    let status = baton.terminate();
    assert!(status.success(), "baton stopped with {status}");
    baton.spawn();
    send_phase(&mut baton, &log, "restarted");
    baton.wait_for("posts failing after the restart", |b| {
        webhook_metric(b, "baton_webhook_failed_total", "all") >= 1
    });
    receiver.spawn();
    wait_all_sent(&mut baton, &receiver, &log, "/all", |_| true);
    wait_all_sent(&mut baton, &receiver, &log, "/outcomes", is_outcome);
    baton.wait_for("no lag left", |b| {
        webhook_metric(b, "baton_webhook_lag_bytes", "all") == 0
            && webhook_metric(b, "baton_webhook_lag_bytes", "outcomes") == 0
    });

    // Every event of the log, once, in the log's order.
    let logged = log.events();
    let sent = acknowledged(&receiver, "/all");
    let received = logged.iter().filter(|e| e["event"] == "received").count();
    assert_eq!(received, 4 * MESSAGES_PER_PHASE, "messages in the log");
    assert_eq!(
        sent.len(),
        logged.len(),
        "events posted != events logged: duplicates or loss"
    );
    for (i, (sent, logged)) in sent.iter().zip(&logged).enumerate() {
        assert_eq!(sent, logged, "event {i} posted out of order or changed");
    }
    // In order per message, which the above implies; said plainly. (The
    // `received` line was once written after the message's recipients
    // were queued, so another shard's `delivered` could come first.)
    let logged_by_message = by_message(&logged);
    assert_eq!(by_message(&sent), logged_by_message);
    for (id, events) in &logged_by_message {
        let kinds: Vec<_> = events.iter().map(|e| e["event"].as_str()).collect();
        assert_eq!(
            kinds,
            [Some("received"), Some("delivered"), Some("delivered")],
            "{id}"
        );
    }

    // Signed, with the header, named.
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    for post in receiver.posts().iter().filter(|p| p.path == "/all") {
        let signature = post.header("x-baton-signature").expect("a signature");
        let hex = signature.strip_prefix("sha256=").expect("sha256=<hex>");
        let tag: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        assert!(
            hmac::verify(&key, &post.body, &tag).is_ok(),
            "a bad signature: {signature}"
        );
        assert_eq!(post.header("authorization"), Some(AUTHORIZATION));
        assert_eq!(post.header("content-type"), Some("application/json"));
        let batch = post.header("x-baton-batch").unwrap_or_default();
        assert!(batch.starts_with("all-"), "{batch:?}");
        assert!(post.events().len() <= 5, "batch_size = 5");
    }
    // A refused batch is posted again as it was: the same id and body.
    let posts = receiver.posts();
    let refused: Vec<_> = posts
        .iter()
        .filter(|p| p.path == "/all" && p.status == 500)
        .collect();
    assert!(!refused.is_empty());
    for post in refused {
        let batch = post.header("x-baton-batch");
        let taken = posts
            .iter()
            .find(|p| p.path == "/all" && p.status == 200 && p.header("x-baton-batch") == batch)
            .unwrap_or_else(|| panic!("batch {batch:?} refused, never taken"));
        assert_eq!(
            String::from_utf8_lossy(&taken.body),
            String::from_utf8_lossy(&post.body),
            "batch {batch:?} changed on retry"
        );
    }

    // The filtered webhook: the outcomes, all of them, nothing else; no
    // secret configured, no signature.
    let outcomes = acknowledged(&receiver, "/outcomes");
    let logged_outcomes: Vec<_> = logged.iter().filter(|e| is_outcome(e)).cloned().collect();
    assert_eq!(outcomes, logged_outcomes);
    assert!(posts
        .iter()
        .filter(|p| p.path == "/outcomes")
        .all(|p| p.header("x-baton-signature").is_none() && p.header("authorization").is_none()));
}

/// An `https://` endpoint is posted to with its chain checked against
/// `tls_ca`; without it (the system's roots), the test CA is not trusted
/// and nothing is sent, only failures counted.
#[test]
fn https_endpoints_are_verified_against_tls_ca() {
    let certs = tempfile::tempdir().expect("certificate directory");
    let ca = TestCa::new(certs.path());
    let receiver = Receiver::start_with(Some(ca.leaf("receiver", &["127.0.0.1"])));
    let sink = Sink::start("127.0.0.1", &[]);
    let log = EventLog::new();
    let hooks = format!(
        "[[webhook]]\nname = \"trusted\"\nurl = \"{}\"\ntls_ca = \"{}\"\nbatch_wait = \"100ms\"\n\
         [[webhook]]\nname = \"untrusted\"\nurl = \"{}\"\nbatch_wait = \"100ms\"\n",
        receiver.url("/trusted"),
        ca.cert.display(),
        receiver.url("/untrusted"),
    );
    let mut baton = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route("*", sink.addr) + &log.toml() + &hooks,
        ..TestConfig::default()
    });
    send_phase(&mut baton, &log, "tls");
    wait_all_sent(&mut baton, &receiver, &log, "/trusted", |_| true);
    baton.wait_for("the untrusted endpoint refused", |b| {
        webhook_metric(b, "baton_webhook_failed_total", "untrusted") >= 1
    });
    assert_eq!(acknowledged(&receiver, "/trusted"), log.events());
    assert!(receiver.posts().iter().all(|p| p.path != "/untrusted"));
    assert_eq!(
        webhook_metric(&baton, "baton_webhook_sent_total", "untrusted"),
        0
    );
    assert_eq!(
        webhook_metric(&baton, "baton_webhook_sent_total", "trusted"),
        log.events().len() as u64
    );
}

/// The event log rotated (`mv`, as logrotate without `copytruncate`)
/// while the endpoint is down, then baton restarted: the rotated file is
/// found by its inode and finished, then the new one is posted, nothing
/// lost, nothing twice.
#[test]
fn a_log_rotated_while_the_endpoint_is_down_is_finished_after_a_restart() {
    let mut receiver = Receiver::start();
    let sink = Sink::start("127.0.0.1", &[]);
    let log = EventLog::new();
    let hook = format!(
        "[[webhook]]\nname = \"all\"\nurl = \"{}\"\nbatch_size = 4\nbatch_wait = \"100ms\"\n",
        receiver.url("/all")
    );
    let mut baton = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route("*", sink.addr) + &log.toml() + &hook,
        ..TestConfig::default()
    });
    send_phase(&mut baton, &log, "before");
    wait_all_sent(&mut baton, &receiver, &log, "/all", |_| true);

    receiver.stop();
    send_phase(&mut baton, &log, "down");
    let rotated = log.path().with_extension("jsonl.1");
    std::fs::rename(log.path(), &rotated).expect("rotate the event log");
    // The writer opens (creates) the path again within a second.
    baton.wait_until("the event log opened again", || log.path().exists());
    let lines = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).expect("an event"))
            .collect::<Vec<serde_json::Value>>()
    };
    for n in 0..MESSAGES_PER_PHASE {
        let body = format!("Subject: after {n}\r\n\r\nhello\r\n");
        baton.submit("alice@sender.test", &["bob@dest.test"], &body);
    }
    wait_queue_empty(&mut baton);
    let total = 3 * 2 * MESSAGES_PER_PHASE + 2 * MESSAGES_PER_PHASE;
    baton.wait_until("every line in one file or the other", || {
        lines(&rotated).len() + lines(log.path()).len() == total
    });
    assert!(!lines(log.path()).is_empty(), "the writer never reopened");
    let status = baton.terminate();
    assert!(status.success(), "baton stopped with {status}");
    baton.spawn();
    receiver.spawn();
    let logged: Vec<_> = lines(&rotated)
        .into_iter()
        .chain(lines(log.path()))
        .collect();
    baton.wait_until("both files posted", || {
        acknowledged(&receiver, "/all").len() >= logged.len()
    });
    baton.wait_for("no lag left", |b| {
        webhook_metric(b, "baton_webhook_lag_bytes", "all") == 0
    });
    assert_eq!(acknowledged(&receiver, "/all"), logged);
    assert!(baton.log().contains("finishing a rotated event log first"));
}
