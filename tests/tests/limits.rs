//! Every limit a client can reach earns its reply code (RFC 5321 §4.5.3.1,
//! RFC 1870), never a crash or a silent drop: line lengths, message size,
//! recipients, errors and commands per session, connections per address.

use std::net::IpAddr;

use baton_tests::{queued_id, Baton, TestConfig};

fn limits(lines: &[&str]) -> TestConfig {
    TestConfig {
        limits: lines.iter().map(|l| l.to_string()).collect(),
        ..TestConfig::default()
    }
}

/// `count` text lines of `width` octets each, CRLF included.
fn lines(count: usize, width: usize) -> String {
    let line = format!("{}\r\n", "x".repeat(width - 2));
    line.repeat(count)
}

#[test]
fn an_overlong_command_line_gets_500_and_the_session_goes_on() {
    // The default limit: 2048 octets, CRLF included.
    let baton = Baton::start();
    let mut smtp = baton.connect();
    let at_limit = format!("NOOP {}", "x".repeat(2048 - "NOOP \r\n".len()));
    smtp.cmd(&at_limit).assert_is(250, "2.0.0");
    let over = format!("{at_limit}x");
    smtp.cmd(&over).assert_is(500, "5.5.2");
    // Far over: one reply for the whole line, however long.
    let far_over = format!("NOOP {}", "x".repeat(100_000));
    smtp.cmd(&far_over).assert_is(500, "5.5.2");
    smtp.cmd("NOOP").assert_is(250, "2.0.0");
    smtp.cmd("QUIT").assert_is(221, "2.0.0");
}

#[test]
fn an_overlong_text_line_refuses_the_message_after_its_end() {
    // The default limit: 1000 octets, CRLF included (§4.5.3.1.6).
    let baton = Baton::start();
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    let at_limit = lines(3, 1000);
    let id = queued_id(&smtp.send_message("a@example.com", &["b@example.org"], &at_limit));
    let over = format!("{}{}", lines(1, 1001), lines(2, 80));
    smtp.send_message("a@example.com", &["b@example.org"], &over)
        .assert_is(500, "5.5.2");
    smtp.cmd("NOOP").assert_is(250, "2.0.0");
    assert_eq!(baton.queued_messages(), 1);
    baton.show(&id);
}

#[test]
fn an_oversize_message_gets_552_at_mail_or_after_its_data() {
    let baton = Baton::start_with(limits(&["message_bytes_max = 10000"]));
    let mut smtp = baton.connect();
    let ehlo = smtp.ehlo("client.test");
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 10000"), "{ehlo:?}");

    // Declared with SIZE (RFC 1870 §6): refused at MAIL.
    smtp.cmd("MAIL FROM:<a@example.com> SIZE=10001")
        .assert_is(552, "5.3.4");
    smtp.cmd("MAIL FROM:<a@example.com> SIZE=10000")
        .assert_is(250, "2.1.0");
    smtp.cmd("RSET").assert_is(250, "2.0.0");

    // Not declared: found at the end of the data, which is read through.
    let over = lines(100, 100) + "x\r\n";
    smtp.send_message("a@example.com", &["b@example.org"], &over)
        .assert_is(552, "5.3.4");
    // A BDAT chunk over the limit: refused, consumed, transaction over.
    smtp.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nBDAT 10001 LAST\r\n");
    smtp.send(lines(100, 100).as_bytes());
    smtp.send(b"x");
    smtp.expect(250, "2.1.0");
    smtp.expect(250, "2.1.5");
    smtp.expect(552, "5.3.4");
    smtp.cmd("RCPT TO:<b@example.org>").assert_is(503, "5.5.1");
    // Exactly at the limit is fine, and the session goes on.
    let id = queued_id(&smtp.send_message("a@example.com", &["b@example.org"], &lines(100, 100)));
    smtp.cmd("QUIT").assert_is(221, "2.0.0");

    assert_eq!(baton.queued_messages(), 1);
    let size = baton.show(&id)["size"].as_u64().expect("size");
    assert!(size > 10000, "stored with baton's Received: header: {size}");
}

#[test]
fn the_recipient_past_the_limit_gets_452_and_the_rest_are_queued() {
    let baton = Baton::start_with(limits(&["recipients_per_message_max = 100"]));
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    let mut group = String::from("MAIL FROM:<a@example.com>\r\n");
    for i in 1..=101 {
        group.push_str(&format!("RCPT TO:<user{i}@example.org>\r\n"));
    }
    smtp.send(group.as_bytes());
    smtp.expect(250, "2.1.0");
    for _ in 1..=100 {
        smtp.expect(250, "2.1.5");
    }
    smtp.expect(452, "4.5.3");
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(b"Subject: many\r\n\r\nhi\r\n.\r\n");
    let id = queued_id(&smtp.reply());
    let recipients = Baton::shown_recipients(&baton.show(&id));
    assert_eq!(recipients.len(), 100);
    assert_eq!(recipients[99], "user100@example.org");
    assert_eq!(baton.queued_recipients(), 100);
}

#[test]
fn too_many_errors_end_the_session_with_421() {
    let baton = Baton::start_with(limits(&["errors_per_session_max = 3"]));
    let mut smtp = baton.connect();
    smtp.cmd("FOO").assert_is(500, "5.5.2");
    // Good commands in between do not reset the count.
    smtp.cmd("NOOP").assert_is(250, "2.0.0");
    smtp.cmd("MAIL FROM:<a@example.com>")
        .assert_is(503, "5.5.1");
    smtp.cmd("BAR").assert_is(500, "5.5.2");
    smtp.expect(421, "4.7.0");
    assert!(smtp.closed());
    // Counted per session: the next one starts afresh.
    let mut smtp = baton.connect();
    smtp.cmd("FOO").assert_is(500, "5.5.2");
    smtp.cmd("NOOP").assert_is(250, "2.0.0");
}

#[test]
fn too_many_commands_end_the_session_with_421() {
    let baton = Baton::start_with(limits(&["commands_per_session_max = 5"]));
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    for _ in 0..4 {
        smtp.cmd("NOOP").assert_is(250, "2.0.0");
    }
    // The sixth is not run.
    smtp.cmd("NOOP").assert_is(421, "4.7.0");
    assert!(smtp.closed());
}

#[test]
fn a_third_connection_from_one_address_gets_421() {
    let baton = Baton::start_with(limits(&["connections_per_ip_max = 2"]));
    // An address of its own, so that the check below that 127.0.0.1 is
    // unaffected means something.
    let client: IpAddr = "127.0.0.3".parse().unwrap();
    let (mut first, greeting) = baton.connect_from(client);
    assert_eq!(greeting.code, 220, "{greeting:?}");
    let (mut second, greeting) = baton.connect_from(client);
    assert_eq!(greeting.code, 220, "{greeting:?}");
    let (mut third, greeting) = baton.connect_from(client);
    greeting.assert_is(421, "4.7.0");
    assert!(third.closed());
    // Other addresses are not affected.
    let mut other = baton.connect();
    other.cmd("NOOP").assert_is(250, "2.0.0");
    // Both admitted sessions work.
    first.cmd("NOOP").assert_is(250, "2.0.0");
    second.cmd("NOOP").assert_is(250, "2.0.0");
    // Once one closes, its place is free again.
    first.cmd("QUIT").assert_is(221, "2.0.0");
    assert!(first.closed());
    let mut again = baton.admitted_from(client);
    again.cmd("NOOP").assert_is(250, "2.0.0");
}
