//! Commands out of order, unknown commands, bad addresses and the simple
//! verbs (RFC 5321 §4.1.1, §4.1.4, §4.2.2): each gets its reply code and
//! enhanced code, the session goes on, and nothing half-made is queued.

use baton_tests::{queued_id, Baton};

#[test]
fn commands_out_of_order_get_503_and_the_session_goes_on() {
    let baton = Baton::start();
    let mut smtp = baton.connect();
    let reply = smtp.cmd("MAIL FROM:<a@example.com>");
    reply.assert_is(503, "5.5.1");
    assert!(reply.text().contains("HELO/EHLO"), "{reply:?}");
    smtp.ehlo("client.test");
    smtp.cmd("RCPT TO:<b@example.org>").assert_is(503, "5.5.1");
    smtp.cmd("DATA").assert_is(503, "5.5.1");
    smtp.cmd("MAIL FROM:<a@example.com>")
        .assert_is(250, "2.1.0");
    smtp.cmd("MAIL FROM:<a@example.com>")
        .assert_is(503, "5.5.1");
    // MAIL without a single accepted recipient.
    smtp.cmd("DATA").assert_is(554, "5.5.1");
    // Still usable: the transaction is whole once it has a recipient.
    smtp.cmd("RCPT TO:<b@example.org>").assert_is(250, "2.1.5");
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(b"Subject: after errors\r\n\r\nhi\r\n.\r\n");
    let id = queued_id(&smtp.reply());
    smtp.cmd("QUIT").assert_is(221, "2.0.0");
    assert!(smtp.closed());
    assert_eq!(baton.queued_messages(), 1);
    baton.show(&id);
}

#[test]
fn unknown_commands_get_500_and_unimplemented_ones_502() {
    let baton = Baton::start();
    let mut smtp = baton.connect();
    smtp.cmd("FOO bar").assert_is(500, "5.5.2");
    smtp.cmd("MAILFROM:<a@example.com>").assert_is(500, "5.5.2");
    smtp.cmd("").assert_is(500, "5.5.2");
    smtp.cmd("EXPN staff").assert_is(502, "5.5.1");
    // A command line must end in CRLF, and hold no NUL or bare CR.
    for line in [&b"NOOP\n"[..], b"NO\0OP\r\n", b"NOOP\rNOOP\r\n"] {
        smtp.send(line);
        let reply = smtp.reply();
        assert!(
            reply.code == 500 && reply.enhanced() == Some("5.5.2"),
            "{line:?}: {reply:?}"
        );
    }
    smtp.cmd("NOOP").assert_is(250, "2.0.0");
}

#[test]
fn rset_clears_the_transaction() {
    let baton = Baton::start();
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    smtp.cmd("MAIL FROM:<a@example.com>")
        .assert_is(250, "2.1.0");
    smtp.cmd("RCPT TO:<b@example.org>").assert_is(250, "2.1.5");
    smtp.cmd("RSET").assert_is(250, "2.0.0");
    // No transaction any more: DATA needs MAIL, and MAIL is not nested.
    smtp.cmd("DATA").assert_is(503, "5.5.1");
    smtp.cmd("MAIL FROM:<c@example.com>")
        .assert_is(250, "2.1.0");
    smtp.cmd("RCPT TO:<d@example.net>").assert_is(250, "2.1.5");
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(b"Subject: after RSET\r\n\r\nhi\r\n.\r\n");
    let id = queued_id(&smtp.reply());
    // A second EHLO resets too (§4.1.4).
    smtp.cmd("MAIL FROM:<e@example.com>")
        .assert_is(250, "2.1.0");
    smtp.ehlo("client.test");
    smtp.cmd("RCPT TO:<f@example.org>").assert_is(503, "5.5.1");
    smtp.cmd("RSET extra").assert_is(501, "5.5.4");
    smtp.cmd("QUIT").assert_is(221, "2.0.0");

    // Only the recipient given after RSET is queued.
    let message = baton.show(&id);
    assert_eq!(message["sender"], "c@example.com");
    assert_eq!(Baton::shown_recipients(&message), ["d@example.net"]);
    assert_eq!(baton.queued_recipients(), 1);
}

#[test]
fn vrfy_noop_help_and_quit() {
    let baton = Baton::start();
    let mut smtp = baton.connect();
    smtp.cmd("VRFY postmaster").assert_is(252, "2.0.0");
    smtp.cmd("VRFY").assert_is(501, "5.5.4");
    smtp.cmd("NOOP").assert_is(250, "2.0.0");
    smtp.cmd("NOOP anything at all").assert_is(250, "2.0.0");
    let help = smtp.cmd("HELP");
    help.assert_is(214, "2.0.0");
    assert!(help.text().contains("EHLO"), "{help:?}");
    smtp.cmd("QUIT now").assert_is(501, "5.5.4");
    smtp.cmd("quit").assert_is(221, "2.0.0");
    assert!(smtp.closed());
}

#[test]
fn bad_addresses_get_501() {
    let baton = Baton::start();
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    for sender in [
        "MAIL FROM:a@example.com>",
        "MAIL FROM:<a@example..com>",
        "MAIL FROM:<a@example.com",
        "MAIL FROM:<a b@example.com>",
    ] {
        let reply = smtp.cmd(sender);
        assert!(
            reply.code == 501 && reply.enhanced() == Some("5.1.7"),
            "{sender}: {reply:?}"
        );
    }
    smtp.cmd("MAIL TO:<a@example.com>").assert_is(501, "5.5.4");
    smtp.cmd("MAIL FROM:<a@example.com>")
        .assert_is(250, "2.1.0");
    for recipient in [
        "RCPT TO:<>",
        "RCPT TO:b@example.org>",
        "RCPT TO:<b@>",
        "RCPT TO:<@example.org>",
    ] {
        let reply = smtp.cmd(recipient);
        assert!(
            reply.code == 501 && reply.enhanced() == Some("5.1.3"),
            "{recipient}: {reply:?}"
        );
    }
    smtp.cmd("RCPT FROM:<b@example.org>")
        .assert_is(501, "5.5.4");
    smtp.cmd("EHLO").assert_is(501, "5.5.4");
    smtp.cmd("QUIT").assert_is(221, "2.0.0");
    assert_eq!(baton.queued_messages(), 0);
}

/// Printers and old scripts leave out the angle brackets; like Postfix by
/// default, baton takes one bare address as if bracketed.
#[test]
fn bare_addresses_are_accepted_as_if_bracketed() {
    let baton = Baton::start();
    let mut smtp = baton.connect();
    smtp.ehlo("printer.test");
    smtp.cmd("MAIL FROM:scanner@example.com")
        .assert_is(250, "2.1.0");
    smtp.cmd("RCPT TO:bob@example.org").assert_is(250, "2.1.5");
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(b"Subject: scan\r\n\r\npage 1\r\n.\r\n");
    smtp.reply().assert_is(250, "2.0.0");
    assert_eq!(baton.queued_messages(), 1);
}
