//! No open relay: only clients in `[relay] networks` may send mail on. A
//! client outside them is refused at RCPT with `554 5.7.1` naming the
//! recipient, and nothing is queued; a client inside is served.

use std::net::IpAddr;

use baton_tests::{queued_id, Baton, TestConfig};

#[test]
fn a_client_outside_the_relay_networks_is_denied_at_rcpt() {
    let baton = Baton::start_with(TestConfig {
        relay_networks: Some(vec!["127.0.0.1/32".into()]),
        ..TestConfig::default()
    });

    let outsider: IpAddr = "127.0.0.2".parse().unwrap();
    let (mut smtp, greeting) = baton.connect_from(outsider);
    assert_eq!(greeting.code, 220, "{greeting:?}");
    smtp.ehlo("outsider.test");
    smtp.cmd("MAIL FROM:<spammer@example.com>")
        .assert_is(250, "2.1.0");
    let denied = smtp.cmd("RCPT TO:<victim@example.org>");
    denied.assert_is(554, "5.7.1");
    assert!(
        denied.text().contains("<victim@example.org>"),
        "names the recipient: {denied:?}"
    );
    // Pipelined recipients: each one refused, in order.
    smtp.send(b"RCPT TO:<one@example.net>\r\nRCPT TO:<two@example.com>\r\nDATA\r\n");
    assert!(smtp
        .expect(554, "5.7.1")
        .text()
        .contains("<one@example.net>"));
    assert!(smtp
        .expect(554, "5.7.1")
        .text()
        .contains("<two@example.com>"));
    smtp.expect(554, "5.5.1");
    smtp.cmd("QUIT").assert_is(221, "2.0.0");
    assert_eq!(baton.queued_messages(), 0);

    let insider: IpAddr = "127.0.0.1".parse().unwrap();
    let (mut smtp, greeting) = baton.connect_from(insider);
    assert_eq!(greeting.code, 220, "{greeting:?}");
    smtp.ehlo("insider.test");
    let id = queued_id(&smtp.send_message(
        "sender@example.com",
        &["friend@example.org"],
        "Subject: relayed\r\n\r\nhi\r\n",
    ));
    smtp.cmd("QUIT").assert_is(221, "2.0.0");

    let queue = baton.queue();
    assert_eq!(queue["messages"], 1, "{queue}");
    let message = baton.show(&id);
    assert_eq!(Baton::shown_recipients(&message), ["friend@example.org"]);
    assert!(
        message["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{message}"
    );
}
