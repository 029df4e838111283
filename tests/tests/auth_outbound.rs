//! AUTH out (issue 11): a `[[route]]` with credentials authenticates to
//! `loadgen sink --auth` after STARTTLS; a wrong password defers (never
//! bounces) and is logged; credentials never go over a connection without
//! TLS unless the route sets `auth_plaintext`. The sink's report counts
//! what it was sent: AUTH attempts, successes, failures.

use baton_tests::delivery::{recipient_named, route, wait_status, EventLog};
use baton_tests::sink::Sink;
use baton_tests::{Baton, TestConfig};

const PASSWORD: &str = "correct horse";

/// A baton delivering everything to `next_hop` with these extra lines in
/// its route (credentials), retrying only after an hour so that one
/// attempt is what the test sees.
fn relay(next_hop: std::net::SocketAddr, route_lines: &str, events: &EventLog) -> Baton {
    Baton::start_with(TestConfig {
        deliver: true,
        delivery: vec![
            "retry_schedule = [\"1h\"]".to_owned(),
            "pause = \"0s\"".to_owned(),
            "pause_max = \"0s\"".to_owned(),
        ],
        extra_toml: format!("{}{route_lines}\n{}", route("*", next_hop), events.toml()),
        ..TestConfig::default()
    })
}

fn credentials(password: &str) -> String {
    format!("auth_user = \"relay\"\nauth_password = \"{password}\"\n")
}

fn submit(baton: &Baton) -> String {
    baton.submit(
        "a@example.com",
        &["b@example.org"],
        "Subject: auth\r\n\r\nauthenticated\r\n",
    )
}

fn num(report: &serde_json::Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {report}"))
}

/// The deferral of `b@example.org`, once it is deferred: its last reply.
fn deferred_reply(baton: &mut Baton, id: &str) -> String {
    wait_status(baton, id, "b@example.org", "deferred");
    let shown = recipient_named(baton, id, "b@example.org");
    shown["last_reply"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn credentials_from_a_file_authenticate_over_starttls_and_deliver_once() {
    let sink = Sink::start("127.0.0.1", &["--auth", &format!("relay:{PASSWORD}")]);
    let events = EventLog::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    // As `echo` writes it: the newline is not part of the password.
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let lines = format!(
        "auth_user = \"relay\"\nauth_password_file = \"{}\"\n",
        file.display()
    );
    let mut baton = relay(sink.addr, &lines, &events);
    let id = submit(&baton);
    baton.wait_until("delivered", || {
        !events.events_of("delivered", &id).is_empty()
    });
    let event = events.events_of("delivered", &id).remove(0);
    assert!(event.get("tls").is_some(), "over TLS: {event}");
    assert!(sink.only_message().contains("authenticated"));
    drop(baton);
    let report = sink.stop();
    assert_eq!(num(&report, "messages_accepted"), 1, "{report}");
    assert_eq!(num(&report, "messages_tls"), 1, "{report}");
    assert_eq!(num(&report, "auth_successes"), 1, "{report}");
    assert_eq!(num(&report, "auth_failures"), 0, "{report}");
}

#[test]
fn a_wrong_password_defers_and_is_logged_never_bounces() {
    let sink = Sink::start("127.0.0.1", &["--auth", &format!("relay:{PASSWORD}")]);
    let events = EventLog::new();
    let wrong = "wrong-Pa55word";
    let mut baton = relay(sink.addr, &credentials(wrong), &events);
    let id = submit(&baton);
    let reply = deferred_reply(&mut baton, &id);
    assert!(reply.starts_with("454 4.7.8 "), "{reply}");
    assert!(reply.contains("535 5.7.8"), "quotes the next hop: {reply}");
    // `baton queue show` says the same, and never the password.
    let shown = baton.show(&id);
    let text = shown.to_string();
    assert!(text.contains("535 5.7.8"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    baton.wait_for("the error in the log", |b| {
        b.log().contains("refused the route's credentials")
    });
    let log = baton.log();
    assert!(log.contains("ERROR"), "{log}");
    assert!(!log.contains(wrong), "the password is never logged:\n{log}");
    assert!(
        events.events_of("bounced", &id).is_empty() && events.events_of("failed", &id).is_empty(),
        "not bounced: {:?}",
        events.events()
    );
    assert_eq!(
        recipient_named(&baton, &id, "b@example.org")["status"],
        "deferred"
    );
    let events_text = std::fs::read_to_string(events.path()).unwrap_or_default();
    assert!(!events_text.contains(wrong), "{events_text}");
    drop(baton);
    let report = sink.stop();
    assert_eq!(num(&report, "messages_accepted"), 0, "{report}");
    assert_eq!(num(&report, "auth_successes"), 0, "{report}");
    assert!(num(&report, "auth_failures") >= 1, "{report}");
}

#[test]
fn no_credentials_over_plain_text_unless_the_route_allows_it() {
    let args = ["--no-starttls", "--auth", "relay:correct horse"];
    let sink = Sink::start("127.0.0.1", &args);
    let events = EventLog::new();
    let mut baton = relay(sink.addr, &credentials(PASSWORD), &events);
    let id = submit(&baton);
    let reply = deferred_reply(&mut baton, &id);
    assert!(reply.starts_with("454 4.7.0 "), "{reply}");
    assert!(reply.contains("credentials withheld"), "{reply}");
    assert!(reply.contains("auth_plaintext"), "{reply}");
    drop(baton);
    let report = sink.stop();
    assert_eq!(num(&report, "auth_attempts"), 0, "no AUTH sent: {report}");
    assert_eq!(num(&report, "messages_accepted"), 0, "{report}");

    let sink = Sink::start("127.0.0.1", &args);
    let events = EventLog::new();
    let lines = credentials(PASSWORD) + "auth_plaintext = true\n";
    let mut baton = relay(sink.addr, &lines, &events);
    let id = submit(&baton);
    baton.wait_until("delivered in plain text", || {
        !events.events_of("delivered", &id).is_empty()
    });
    drop(baton);
    let report = sink.stop();
    assert_eq!(num(&report, "messages_accepted"), 1, "{report}");
    assert_eq!(num(&report, "messages_tls"), 0, "{report}");
    assert_eq!(num(&report, "auth_successes"), 1, "{report}");
}

#[test]
fn a_route_with_tls_disabled_withholds_credentials_from_a_starttls_server() {
    let sink = Sink::start("127.0.0.1", &["--auth", &format!("relay:{PASSWORD}")]);
    let events = EventLog::new();
    let lines = credentials(PASSWORD) + "tls = \"disabled\"\n";
    let mut baton = relay(sink.addr, &lines, &events);
    let id = submit(&baton);
    let reply = deferred_reply(&mut baton, &id);
    assert!(reply.contains("credentials withheld"), "{reply}");
    assert!(reply.contains("TLS is off"), "{reply}");
    drop(baton);
    let report = sink.stop();
    assert_eq!(num(&report, "auth_attempts"), 0, "{report}");
}
