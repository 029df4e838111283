//! PIPELINING (RFC 2920): a client sends a group of commands in one write
//! and reads the replies afterwards. Every command gets its reply, in the
//! order sent, and a transaction pipelined right after the previous
//! message's final `.` is a transaction of its own.

use baton_tests::{queued_id, Baton, Smtp};

/// Reads one reply per expected `(code, enhanced)`, in order.
#[track_caller]
fn expect_all(smtp: &mut Smtp, expected: &[(u16, &str)]) {
    for (i, &(code, enhanced)) in expected.iter().enumerate() {
        let reply = smtp.reply();
        assert!(
            reply.code == code && reply.enhanced() == Some(enhanced),
            "reply {i}: expected {code} {enhanced}, got {reply:?}"
        );
    }
}

#[test]
fn two_pipelined_transactions_are_answered_in_order_and_both_queued() {
    let baton = Baton::start();
    let mut smtp = baton.connect();

    // EHLO, MAIL, three RCPTs and DATA in one write.
    smtp.send(
        b"EHLO client.test\r\n\
          MAIL FROM:<alice@example.com>\r\n\
          RCPT TO:<bob@example.org>\r\n\
          RCPT TO:<carol@example.org>\r\n\
          RCPT TO:<dave@example.net>\r\n\
          DATA\r\n",
    );
    let ehlo = smtp.reply();
    assert_eq!(ehlo.code, 250, "{ehlo:?}");
    assert!(ehlo.lines.iter().any(|l| l == "PIPELINING"), "{ehlo:?}");
    expect_all(
        &mut smtp,
        &[
            (250, "2.1.0"),
            (250, "2.1.5"),
            (250, "2.1.5"),
            (250, "2.1.5"),
        ],
    );
    assert_eq!(smtp.reply().code, 354);

    // The body, its end, and the whole next envelope in one write.
    smtp.send(
        b"Subject: first\r\n\r\none\r\n.\r\n\
          MAIL FROM:<erin@example.com>\r\n\
          RCPT TO:<frank@example.org>\r\n\
          DATA\r\n",
    );
    let first = smtp.reply();
    first.assert_is(250, "2.0.0");
    let first = queued_id(&first);
    expect_all(&mut smtp, &[(250, "2.1.0"), (250, "2.1.5")]);
    assert_eq!(smtp.reply().code, 354);

    // The second body, its end and QUIT in one write.
    smtp.send(b"Subject: second\r\n\r\ntwo\r\n.\r\nQUIT\r\n");
    let second = queued_id(&smtp.reply());
    assert_ne!(first, second);
    smtp.expect(221, "2.0.0");
    assert!(smtp.closed());

    let queue = baton.queue();
    assert_eq!(queue["messages"], 2, "{queue}");
    assert_eq!(queue["recipients"], 4, "{queue}");
    let first = baton.show(&first);
    assert_eq!(first["sender"], "alice@example.com");
    assert_eq!(
        Baton::shown_recipients(&first),
        ["bob@example.org", "carol@example.org", "dave@example.net"]
    );
    let second = baton.show(&second);
    assert_eq!(second["sender"], "erin@example.com");
    assert_eq!(Baton::shown_recipients(&second), ["frank@example.org"]);
}

#[test]
fn a_refused_command_in_a_group_does_not_disturb_the_others() {
    let baton = Baton::start();
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    smtp.send(
        b"MAIL FROM:<alice@example.com>\r\n\
          RCPT TO:<bob@example.org>\r\n\
          RCPT TO:<not an address>\r\n\
          RCPT TO:<carol@example.org>\r\n\
          NOOP\r\n\
          DATA\r\n",
    );
    expect_all(
        &mut smtp,
        &[
            (250, "2.1.0"),
            (250, "2.1.5"),
            (501, "5.1.3"),
            (250, "2.1.5"),
            (250, "2.0.0"),
        ],
    );
    assert_eq!(smtp.reply().code, 354);
    smtp.send(b"Subject: partly refused\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    let id = queued_id(&smtp.reply());
    smtp.expect(221, "2.0.0");
    assert_eq!(
        Baton::shown_recipients(&baton.show(&id)),
        ["bob@example.org", "carol@example.org"]
    );
    assert_eq!(baton.queued_messages(), 1);
}
