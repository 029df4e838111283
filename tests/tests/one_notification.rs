//! One notification per message: the recipients of one message can fail
//! on different attempts, at different destinations, on different shards,
//! and the sender still hears once, when every recipient is final, in one
//! RFC 3464 notification listing all that failed (none that were
//! delivered). Each test waits for a sign that the old behaviour (one
//! notification per settled batch) would already have shown.

use std::net::SocketAddr;

use baton_tests::delivery::{
    at, field, metric, recipient_named, route, wait_queue_empty, wait_status, EventLog, Fields,
    Notification,
};
use baton_tests::sink::Sink;
use baton_tests::{free_port, Baton, TestConfig};

/// `one.test` refuses `bounce-` recipients with 550 at once; `two.test` is
/// `two` (a sink, or nothing listening yet); notifications go to the sink
/// for `sender.test`.
struct Setup {
    server: Baton,
    _one: Sink,
    senders: Sink,
    events: EventLog,
}

impl Setup {
    fn start(two: SocketAddr, delivery: &[&str]) -> Setup {
        let one = Sink::start("127.0.0.2", &[]);
        let senders = Sink::start("127.0.0.3", &[]);
        let events = EventLog::new();
        let server = Baton::start_with(TestConfig {
            deliver: true,
            delivery: delivery.iter().map(|line| line.to_string()).collect(),
            extra_toml: route("one.test", one.addr)
                + &route("two.test", two)
                + &route("sender.test", senders.addr)
                + &events.toml(),
            ..TestConfig::default()
        });
        Setup {
            server,
            _one: one,
            senders,
            events,
        }
    }

    /// The notifications the sender got, once nothing is left to deliver
    /// (a notification is queued before the outcome that settles its
    /// message, so an empty queue means every one made was delivered).
    fn notifications(&mut self) -> Vec<String> {
        wait_queue_empty(&mut self.server);
        self.senders.messages()
    }
}

/// The recipient groups of a notification to alice@sender.test.
#[track_caller]
fn recipient_groups(text: &str) -> Vec<Fields> {
    assert!(text.contains("To: <alice@sender.test>\r\n"), "{text}");
    let mut groups = Notification::parse(text).status_groups();
    assert!(!groups.is_empty(), "{text}");
    groups.remove(0);
    groups
}

fn listed(groups: &[Fields]) -> Vec<&str> {
    groups.iter().map(|g| field(g, "Final-Recipient")).collect()
}

#[test]
fn recipients_failing_on_different_attempts_at_two_destinations_make_one_notification() {
    let two = Sink::start("127.0.0.4", &[]);
    // `tempfail-` is refused with 451 at every attempt, until max_age.
    let mut setup = Setup::start(
        two.addr,
        &["retry_schedule = [\"500ms\"]", "max_age = \"3s\""],
    );
    let body = "Subject: to two domains\r\n\r\nhello\r\n";
    let id = setup.server.submit(
        "alice@sender.test",
        &["bounce-a@one.test", "tempfail-b@two.test"],
        body,
    );
    wait_status(&mut setup.server, &id, "bounce-a@one.test", "failed");
    wait_status(&mut setup.server, &id, "tempfail-b@two.test", "failed");

    let notices = setup.notifications();
    assert_eq!(notices.len(), 1, "one notification: {notices:?}");
    let groups = recipient_groups(&notices[0]);
    assert_eq!(
        listed(&groups),
        ["rfc822; bounce-a@one.test", "rfc822; tempfail-b@two.test"],
        "{groups:?}"
    );
    // Each with its own reply: the first refused on the first attempt,
    // by the host that said so; the second expired.
    assert_eq!(field(&groups[0], "Status"), "5.1.1", "{groups:?}");
    assert_eq!(field(&groups[0], "Remote-MTA"), "dns; 127.0.0.2");
    assert_eq!(
        field(&groups[0], "Diagnostic-Code"),
        "smtp; 550 5.1.1 scripted: no such user"
    );
    assert_eq!(field(&groups[1], "Status"), "4.4.7", "{groups:?}");
    assert!(
        field(&groups[1], "Diagnostic-Code").contains("expired"),
        "{groups:?}"
    );
    assert_eq!(metric(&setup.server, "baton_bounces_generated_total"), 1);
    assert_eq!(metric(&setup.server, "baton_recipients_failed_total"), 2);
    // An event per recipient (`failed`, and `expired` for the one that
    // ran out of time), one `bounce` event.
    let events = &setup.events;
    setup.server.wait_until("the bounce event", || {
        !events.events_of("bounce", &id).is_empty()
    });
    assert_eq!(setup.events.events_of("failed", &id).len(), 1);
    assert_eq!(setup.events.events_of("expired", &id).len(), 1);
    assert_eq!(setup.events.events_of("bounce", &id).len(), 1);
    let senders = setup.senders.stop();
    assert_eq!(senders["messages_accepted"], 1, "{senders}");
}

#[test]
fn a_failure_is_notified_once_the_other_recipient_is_delivered_and_lists_only_the_failure() {
    // Nothing listens at two.test yet: its recipient is deferred until a
    // sink starts there.
    let two = at("127.0.0.4", free_port("127.0.0.4"));
    let mut setup = Setup::start(
        two,
        &[
            "retry_schedule = [\"300ms\"]",
            "pause = \"100ms\"",
            "pause_max = \"300ms\"",
        ],
    );
    let body = "Subject: one of two\r\n\r\nhello\r\n";
    let id = setup.server.submit(
        "alice@sender.test",
        &["bounce-a@one.test", "carol@two.test"],
        body,
    );
    wait_status(&mut setup.server, &id, "bounce-a@one.test", "failed");
    // Two attempts at carol after the failure was recorded: one batch per
    // attempt would have made its notification by now.
    setup.server.wait_for("carol tried twice", |s| {
        recipient_named(s, &id, "carol@two.test")["attempts"]
            .as_u64()
            .is_some_and(|n| n >= 2)
    });
    assert_eq!(
        metric(&setup.server, "baton_bounces_generated_total"),
        0,
        "no notification while carol is not final"
    );
    assert_eq!(setup.senders.count(), 0);

    let two = Sink::start_on(two, &[]);
    wait_status(&mut setup.server, &id, "carol@two.test", "delivered");
    let notices = setup.notifications();
    assert_eq!(notices.len(), 1, "one notification: {notices:?}");
    let groups = recipient_groups(&notices[0]);
    assert_eq!(listed(&groups), ["rfc822; bounce-a@one.test"]);
    assert!(!notices[0].contains("carol@two.test"), "{}", notices[0]);
    assert_eq!(two.messages().len(), 1);
    assert_eq!(metric(&setup.server, "baton_bounces_generated_total"), 1);

    // The notification was made when carol was delivered, not before.
    let events = &setup.events;
    setup.server.wait_until("the bounce event", || {
        !events.events_of("bounce", &id).is_empty()
    });
    let events = setup.events.events();
    let position = |kind: &str| {
        events
            .iter()
            .position(|e| e["event"] == kind && e["queue_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no {kind} event: {events:?}"))
    };
    assert!(position("delivered") < position("bounce"), "{events:?}");
}

#[test]
fn deleting_the_last_recipients_still_notifies_the_earlier_failure() {
    // Nothing ever listens at two.test: carol waits until deleted.
    let two = at("127.0.0.4", free_port("127.0.0.4"));
    let mut setup = Setup::start(two, &["retry_schedule = [\"1h\"]"]);
    let body = "Subject: then deleted\r\n\r\nhello\r\n";
    let id = setup.server.submit(
        "alice@sender.test",
        &["bounce-a@one.test", "carol@two.test"],
        body,
    );
    wait_status(&mut setup.server, &id, "bounce-a@one.test", "failed");
    wait_status(&mut setup.server, &id, "carol@two.test", "deferred");
    assert_eq!(metric(&setup.server, "baton_bounces_generated_total"), 0);

    let (status, reply) = setup
        .server
        .admin_request("POST", &format!("/queue/{id}/delete"));
    assert_eq!(status, 200, "{reply}");
    let notices = setup.notifications();
    assert_eq!(notices.len(), 1, "{notices:?}");
    // The deleted recipient is not reported; the failure is.
    let groups = recipient_groups(&notices[0]);
    assert_eq!(listed(&groups), ["rfc822; bounce-a@one.test"]);
    assert!(!notices[0].contains("carol@two.test"), "{}", notices[0]);
}
