//! TLS out: STARTTLS to next hops under each policy, against `loadgen
//! sink` with certificates the test makes (verified against a test CA,
//! self-signed, for the wrong name, none at all), and against a man in
//! the middle that breaks the handshake or injects replies after `220`.

use baton_tests::delivery::{metric, recipient_named, route, wait_status, EventLog};
use baton_tests::sink::Sink;
use baton_tests::tls::{HostileProxy, Hostility, TestCa};
use baton_tests::{Baton, TestConfig};

/// A baton delivering everything to `next_hop` with `[shaping] tls =
/// policy`, trusting `ca` for `required-verified`.
fn relay(
    next_hop: std::net::SocketAddr,
    policy: &str,
    ca: Option<&TestCa>,
    events: &EventLog,
) -> Baton {
    let mut delivery = vec![
        "retry_schedule = [\"1h\"]".to_owned(),
        "pause = \"0s\"".to_owned(),
        "pause_max = \"0s\"".to_owned(),
    ];
    if let Some(ca) = ca {
        delivery.push(format!("tls_ca = \"{}\"", ca.cert.display()));
    }
    Baton::start_with(TestConfig {
        deliver: true,
        delivery,
        extra_toml: format!(
            "{}[shaping]\ntls = \"{policy}\"\n\n{}",
            route("*", next_hop),
            events.toml()
        ),
        ..TestConfig::default()
    })
}

fn sink_with(files: &baton_tests::tls::CertFiles) -> Sink {
    Sink::start(
        "127.0.0.1",
        &[
            "--tls-cert",
            files.cert.to_str().unwrap(),
            "--tls-key",
            files.key.to_str().unwrap(),
        ],
    )
}

/// Waits for the delivered event of `id` and returns it.
fn delivered(baton: &mut Baton, events: &EventLog, id: &str) -> serde_json::Value {
    baton.wait_until("delivered", || {
        !events.events_of("delivered", id).is_empty()
    });
    events.events_of("delivered", id).remove(0)
}

#[test]
fn required_verified_delivers_to_a_certificate_the_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let sink = sink_with(&ca.leaf("sink", &["127.0.0.1"]));
    let events = EventLog::new();
    let mut baton = relay(sink.addr, "required-verified", Some(&ca), &events);
    let id = baton.submit(
        "a@example.com",
        &["b@example.org"],
        "Subject: v\r\n\r\nverified\r\n",
    );
    let event = delivered(&mut baton, &events, &id);
    assert_eq!(event["tls"]["version"], "TLSv1.3", "{event}");
    assert_eq!(event["tls"]["verified"], true, "{event}");
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(metric(&baton, "baton_tls_handshakes_outbound_total"), 1);
}

#[test]
fn opportunistic_and_required_take_a_self_signed_certificate_unverified() {
    for policy in ["opportunistic", "required"] {
        // The sink's own generated, self-signed certificate.
        let sink = Sink::start("127.0.0.1", &[]);
        let events = EventLog::new();
        let mut baton = relay(sink.addr, policy, None, &events);
        let id = baton.submit(
            "a@example.com",
            &["b@example.org"],
            "Subject: u\r\n\r\nx\r\n",
        );
        let event = delivered(&mut baton, &events, &id);
        assert_eq!(event["tls"]["verified"], false, "{policy}: {event}");
        let shown = recipient_named(&baton, &id, "b@example.org");
        let reply = shown["last_reply"].as_str().unwrap_or_default().to_owned();
        assert!(
            reply.contains("(TLSv1.3 with cipher TLS_")
                && reply.ends_with("certificate not verified)"),
            "{policy}: queue show says how it went: {shown}"
        );
    }
}

#[test]
fn a_host_without_starttls_gets_plain_text_unless_tls_is_required() {
    let sink = Sink::start("127.0.0.1", &["--no-starttls"]);
    let events = EventLog::new();
    let mut baton = relay(sink.addr, "opportunistic", None, &events);
    let id = baton.submit(
        "a@example.com",
        &["b@example.org"],
        "Subject: p\r\n\r\nplain\r\n",
    );
    let event = delivered(&mut baton, &events, &id);
    assert!(event.get("tls").is_none(), "plain text: {event}");
    drop(baton);

    for policy in ["required", "required-verified"] {
        let events = EventLog::new();
        let mut baton = relay(sink.addr, policy, None, &events);
        let id = baton.submit(
            "a@example.com",
            &["b@example.org"],
            "Subject: r\r\n\r\nx\r\n",
        );
        wait_status(&mut baton, &id, "b@example.org", "deferred");
        let shown = recipient_named(&baton, &id, "b@example.org");
        let reply = shown["last_reply"].as_str().unwrap_or_default();
        assert!(
            reply.starts_with("451 4.7.5 TLS is required, but "),
            "{policy}: {shown}"
        );
        assert!(
            reply.contains("did not offer STARTTLS"),
            "{policy}: {shown}"
        );
    }
    assert_eq!(sink.messages().len(), 1, "only the opportunistic message");
}

#[test]
fn a_certificate_for_another_name_fails_verification_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let sink = sink_with(&ca.leaf("wrong", &["wrong.example"]));

    let events = EventLog::new();
    let mut baton = relay(sink.addr, "required-verified", Some(&ca), &events);
    let id = baton.submit(
        "a@example.com",
        &["b@example.org"],
        "Subject: w\r\n\r\nx\r\n",
    );
    wait_status(&mut baton, &id, "b@example.org", "deferred");
    let shown = recipient_named(&baton, &id, "b@example.org");
    let reply = shown["last_reply"].as_str().unwrap_or_default();
    assert!(
        reply.starts_with("451 4.7.5 TLS is required, but TLS handshake with"),
        "{shown}"
    );
    assert!(
        reply.contains("certificate"),
        "names the TLS error: {shown}"
    );
    assert!(sink.messages().is_empty());
    drop(baton);

    // Opportunistic TLS does not check names: delivered, encrypted.
    let events = EventLog::new();
    let mut baton = relay(sink.addr, "opportunistic", Some(&ca), &events);
    let id = baton.submit(
        "a@example.com",
        &["b@example.org"],
        "Subject: o\r\n\r\nx\r\n",
    );
    let event = delivered(&mut baton, &events, &id);
    assert_eq!(event["tls"]["verified"], false, "{event}");
}

#[test]
fn a_broken_handshake_goes_plain_and_is_remembered_unless_tls_is_required() {
    let sink = Sink::start("127.0.0.1", &[]);
    let proxy = HostileProxy::start(
        "127.0.0.1",
        sink.addr,
        Hostility::HangUpAfter220,
        usize::MAX,
    );
    let events = EventLog::new();
    let mut baton = relay(proxy.addr, "opportunistic", None, &events);
    let first = baton.submit(
        "a@example.com",
        &["b@example.org"],
        "Subject: 1\r\n\r\nx\r\n",
    );
    let event = delivered(&mut baton, &events, &first);
    assert!(event.get("tls").is_none(), "retried in plain text: {event}");
    assert!(
        baton.log().contains("retrying in plain text"),
        "{}",
        baton.log()
    );
    // The next connection remembers: no STARTTLS, no second failure.
    let second = baton.submit(
        "a@example.com",
        &["c@example.org"],
        "Subject: 2\r\n\r\nx\r\n",
    );
    delivered(&mut baton, &events, &second);
    assert_eq!(
        metric(&baton, "baton_tls_handshake_failures_outbound_total"),
        1
    );
    assert_eq!(
        proxy
            .starttls_seen
            .load(std::sync::atomic::Ordering::Acquire),
        1
    );
    assert_eq!(sink.messages().len(), 2);
    drop(baton);

    let events = EventLog::new();
    let mut baton = relay(proxy.addr, "required", None, &events);
    let id = baton.submit(
        "a@example.com",
        &["d@example.org"],
        "Subject: 3\r\n\r\nx\r\n",
    );
    wait_status(&mut baton, &id, "d@example.org", "deferred");
    let shown = recipient_named(&baton, &id, "d@example.org");
    let reply = shown["last_reply"].as_str().unwrap_or_default();
    assert!(
        reply.starts_with("451 4.7.5 TLS is required, but TLS handshake with"),
        "{shown}"
    );
    assert_eq!(sink.messages().len(), 2);
}

#[test]
fn replies_injected_after_220_are_not_taken_as_protected() {
    // A man in the middle puts replies behind the server's 220: were they
    // read after the handshake, they would answer baton's EHLO and MAIL
    // in the attacker's words.
    let sink = Sink::start("127.0.0.1", &[]);
    let proxy = HostileProxy::start("127.0.0.1", sink.addr, Hostility::InjectAfter220, 1);
    let events = EventLog::new();
    let mut baton = relay(proxy.addr, "required", None, &events);
    let id = baton.submit(
        "a@example.com",
        &["b@example.org"],
        "Subject: i\r\n\r\nx\r\n",
    );
    let event = delivered(&mut baton, &events, &id);
    assert_eq!(event["tls"]["version"], "TLSv1.3", "{event}");
    assert_eq!(
        event["reply"], "250 2.0.0 Ok: queued",
        "the sink's own reply: {event}"
    );
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(
        proxy
            .starttls_seen
            .load(std::sync::atomic::Ordering::Acquire),
        1
    );
    assert!(!baton.log().contains("injected"), "{}", baton.log());
}

#[test]
fn large_messages_go_through_tls_in_pieces_intact() {
    // 300 KiB bodies cross rustls in 64 KiB pieces, the last one in the
    // same record as the dot and the next envelope.
    let sink = Sink::start("127.0.0.1", &[]);
    let events = EventLog::new();
    let mut baton = relay(sink.addr, "required", None, &events);
    let dir = tempfile::tempdir().unwrap();
    let run = baton_tests::delivery::send_sized(
        baton.smtp,
        "300KiB",
        &["-n", "12", "-c", "3"],
        dir.path(),
    );
    assert_eq!(run.report["messages_accepted"], 12);
    baton.wait_for("all delivered", |_| sink.messages().len() == 12);
    let sent: std::collections::BTreeSet<String> = run.accepted_ids().into_iter().collect();
    let mut arrived = std::collections::BTreeSet::new();
    for message in sink.messages() {
        assert!(message.len() >= 300 * 1024, "{} bytes", message.len());
        let id = baton_tests::delivery::header(&message, "X-Loadgen-Id").expect("an id");
        arrived.insert(id.trim().to_owned());
    }
    assert_eq!(arrived, sent);
    assert!(events
        .events()
        .iter()
        .filter(|e| e["event"] == "delivered")
        .all(|e| e["tls"]["version"] == "TLSv1.3"));
}
