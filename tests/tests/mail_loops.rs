//! Mail loops (RFC 5321 §6.3): a message that has crossed too many relays,
//! and a route that points back at baton itself, are refused instead of
//! circling; an EHLO name no domain can be is refused before it reaches a
//! `Received:` header.

use baton_tests::delivery::{route, EventLog};
use baton_tests::{free_port, Baton, TestConfig};

#[test]
fn a_message_with_too_many_received_headers_is_refused() {
    let baton = Baton::start();
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    let hops =
        "Received: from a.example by b.example; Sat, 5 Dec 2026 10:00:00 +0000\r\n".repeat(60);
    let reply = smtp.send_message(
        "a@example.com",
        &["b@example.org"],
        &format!("{hops}Subject: loop\r\n\r\nround and round\r\n"),
    );
    reply.assert_is(554, "5.4.6");
    // 49 prior hops plus baton's own: within the default limit of 50.
    let hops =
        "Received: from a.example by b.example; Sat, 5 Dec 2026 10:00:00 +0000\r\n".repeat(49);
    let reply = smtp.send_message(
        "a@example.com",
        &["b@example.org"],
        &format!("{hops}\r\nx\r\n"),
    );
    assert_eq!(reply.code, 250, "{}", reply.text());
    assert_eq!(baton.queued_messages(), 1);
}

#[test]
fn a_route_back_to_baton_itself_fails_as_a_loop() {
    // A second listener of baton's own, and every domain routed to it.
    let port = free_port("127.0.0.1");
    let own = format!("127.0.0.1:{port}").parse().unwrap();
    let events = EventLog::new();
    let mut baton = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: format!(
            "[[listener]]\naddress = \"127.0.0.1:{port}\"\n\n{}{}",
            route("*", own),
            events.toml()
        ),
        ..TestConfig::default()
    });
    let id = baton.submit(
        "a@example.com",
        &["b@example.org"],
        "Subject: x\r\n\r\nx\r\n",
    );
    baton.wait_for("the loop found", |_| {
        !events.events_of("failed", &id).is_empty()
    });
    let failed = &events.events_of("failed", &id)[0];
    assert_eq!(
        failed["reply"], "554 5.4.6 mail for example.org loops back to myself",
        "{failed}"
    );
    // Nothing came back in through the second listener.
    assert!(
        events
            .events()
            .iter()
            .filter(|e| e["event"] == "received")
            .count()
            <= 2
    );
}

#[test]
fn an_ehlo_name_longer_than_255_octets_is_refused() {
    let baton = Baton::start();
    let mut smtp = baton.connect();
    let reply = smtp.cmd(&format!("EHLO {}", "h".repeat(300)));
    reply.assert_is(501, "5.5.4");
    let reply = smtp.ehlo("client.test");
    assert_eq!(reply.code, 250);
}
