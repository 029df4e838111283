//! Temporary failures are retried on `[delivery] retry_schedule`: a `451`
//! after the content and a refused connection each defer the recipient
//! (GET /queue/<id> says `deferred`, with the next attempt in the future),
//! and the next attempt, not an earlier one, delivers it once the next hop
//! takes mail. A recipient still deferred past `max_age` fails instead,
//! and its sender gets a notification that says the delivery time expired
//! (RFC 3463 X.4.7) and quotes the last reply.

use baton_tests::delivery::{
    at, field, recipient_named, route, unix_ms, wait_queue_empty, wait_status, EventLog,
    Notification,
};
use baton_tests::free_port;
use baton_tests::sink::{replies, Sink};
use baton_tests::{Baton, TestConfig};

/// Waits until `address` of message `id` is deferred after its first
/// attempt, and returns when the next attempt is due (Unix ms).
fn first_deferral(server: &mut Baton, id: &str, address: &str) -> u64 {
    wait_status(server, id, address, "deferred");
    let state = recipient_named(server, id, address);
    assert_eq!(state["attempts"], 1, "{state}");
    let next_attempt_ms = state["next_attempt_ms"].as_u64().expect("next_attempt_ms");
    let now = unix_ms();
    assert!(
        next_attempt_ms > now,
        "the next attempt is not in the future: {next_attempt_ms} <= {now}"
    );
    next_attempt_ms
}

#[test]
fn a_message_refused_with_451_after_its_content_is_delivered_on_the_retry() {
    let first = Sink::start("127.0.0.2", &["--message-tempfail", "1"]);
    let events = EventLog::new();
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        // Long enough that the second sink is up before the retry.
        delivery: vec!["retry_schedule = [\"2s\"]".into()],
        extra_toml: route("*", first.addr) + &events.toml(),
        ..TestConfig::default()
    });
    let body = "Subject: try again\r\nX-Test: retry-451\r\n\r\nhello\r\n";
    let id = server.submit("alice@sender.test", &["bob@dest.test"], body);
    let next_attempt_ms = first_deferral(&mut server, &id, "bob@dest.test");

    let addr = first.addr;
    let first = first.stop();
    let second = Sink::start_on(addr, &[]);
    let started_ms = unix_ms();
    assert!(
        started_ms < next_attempt_ms,
        "the second sink was up only at {started_ms}, after the retry was due \
         ({next_attempt_ms}): the machine is too slow for this test's schedule"
    );

    server.wait_until("the message at the second sink", || second.count() >= 1);
    wait_status(&mut server, &id, "bob@dest.test", "delivered");
    let delivered_ms = unix_ms();
    assert!(
        delivered_ms >= next_attempt_ms,
        "delivered at {delivered_ms}, before the retry was due at {next_attempt_ms}"
    );
    server.wait_until("the delivered event", || {
        !events.events_of("delivered", &id).is_empty()
    });
    let deferred = events.events_of("deferred", &id);
    assert_eq!(deferred.len(), 1, "{deferred:?}");
    assert_eq!(deferred[0]["attempt"], 1, "{:?}", deferred[0]);
    let reply = deferred[0]["reply"].as_str().expect("reply");
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    let delivered = events.events_of("delivered", &id);
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["attempt"], 2, "{:?}", delivered[0]);

    let message = second.only_message();
    assert!(message.contains("X-Test: retry-451\r\n"), "{message}");
    let second = second.stop();
    assert_eq!(second["messages_accepted"], 1, "{second}");
    // The first sink took the content and refused it: nothing stayed there.
    assert_eq!(first["messages_accepted"], 0, "{first}");
    assert_eq!(replies(&first, 451), 1, "{first}");
}

#[test]
fn a_message_whose_next_hop_refused_the_connection_is_delivered_once_it_listens() {
    let addr = at("127.0.0.3", free_port("127.0.0.3"));
    let events = EventLog::new();
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        delivery: vec!["retry_schedule = [\"2s\"]".into()],
        extra_toml: route("*", addr) + &events.toml(),
        ..TestConfig::default()
    });
    let body = "Subject: anyone there\r\nX-Test: refused\r\n\r\nhello\r\n";
    let id = server.submit("alice@sender.test", &["bob@dest.test"], body);
    let next_attempt_ms = first_deferral(&mut server, &id, "bob@dest.test");
    server.wait_until("the deferred event", || {
        !events.events_of("deferred", &id).is_empty()
    });
    let deferred = events.events_of("deferred", &id);
    let reply = deferred
        .first()
        .and_then(|e| e["reply"].as_str())
        .unwrap_or_else(|| panic!("a deferred event with a reply: {deferred:?}"));
    assert!(reply.starts_with("451 4.4.1"), "{reply}");
    // The operator sees why in `baton queue show`, once it is durable.
    server.wait_for("the deferral's reply in the queue", |b| {
        recipient_named(b, &id, "bob@dest.test")["last_reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("451 4.4.1") && r.contains("Connection refused"))
    });
    let (ok, shown, _) = server.cli(&["queue", "show", &id]);
    assert!(ok && shown.contains("Connection refused"), "{shown}");

    let sink = Sink::start_on(addr, &[]);
    server.wait_until("the message at the sink", || sink.count() >= 1);
    wait_status(&mut server, &id, "bob@dest.test", "delivered");
    assert!(unix_ms() >= next_attempt_ms);
    let message = sink.only_message();
    assert!(message.contains("X-Test: refused\r\n"), "{message}");
    let report = sink.stop();
    assert_eq!(report["messages_accepted"], 1, "{report}");
}

#[test]
fn a_recipient_deferred_past_max_age_fails_and_its_sender_hears_it_expired() {
    let refusing = Sink::start("127.0.0.2", &["--message-tempfail", "1"]);
    let senders = Sink::start("127.0.0.3", &[]);
    let events = EventLog::new();
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        delivery: vec![
            "retry_schedule = [\"500ms\"]".into(),
            "max_age = \"2s\"".into(),
        ],
        extra_toml: route("dest.test", refusing.addr)
            + &route("sender.test", senders.addr)
            + &events.toml(),
        ..TestConfig::default()
    });
    let body = "Subject: never arrives\r\nX-Test: expiry\r\n\r\nhello\r\n";
    let id = server.submit("alice@sender.test", &["bob@dest.test"], body);
    server.wait_for("the recipient failed", |s| {
        let state = recipient_named(s, &id, "bob@dest.test");
        assert_ne!(state["status"], "delivered", "{state}");
        state["status"] == "failed"
    });
    server.wait_until("a notification at the sender's domain", || {
        senders.count() >= 1
    });
    wait_queue_empty(&mut server);

    let notices = senders.messages();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let notice = &notices[0];
    assert!(notice.contains("To: <alice@sender.test>\r\n"), "{notice}");
    assert!(notice.contains("expired"), "{notice}");
    let groups = Notification::parse(notice).status_groups();
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
    server.wait_until("the expired event", || {
        !events.events_of("expired", &id).is_empty()
    });
    let expired = events.events_of("expired", &id);
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert!(
        events.events_of("failed", &id).is_empty(),
        "expired, not failed"
    );
    assert_eq!(expired[0]["attempt"], attempts, "{:?}", expired[0]);
    let deferred = events.events_of("deferred", &id);
    assert_eq!(deferred.len() as u64, attempts - 1, "{deferred:?}");
}
