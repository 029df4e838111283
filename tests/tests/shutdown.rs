//! SIGTERM: baton tells every open session `421 4.3.2` (RFC 5321 §3.8),
//! closes it, and exits 0; a message in the middle of DATA is not
//! accepted. After a restart the queue is as it was, and new mail gets new
//! queue ids.

use baton_tests::{queued_id, Baton};

#[test]
fn sigterm_closes_sessions_with_421_exits_0_and_the_queue_survives() {
    let mut baton = Baton::start();
    let mut sender = baton.connect();
    sender.ehlo("client.test");
    let accepted: Vec<String> = (0..2)
        .map(|i| {
            let body = format!("Subject: before shutdown {i}\r\n\r\nhi\r\n");
            queued_id(&sender.send_message(
                "a@example.com",
                &["b@example.org", "c@example.net"],
                &body,
            ))
        })
        .collect();
    // Idle with a transaction open.
    sender
        .cmd("MAIL FROM:<a@example.com>")
        .assert_is(250, "2.1.0");
    // Idle right after the greeting.
    let mut greeted = baton.connect();
    // In the middle of a message.
    let mut in_data = baton.connect();
    in_data.ehlo("client.test");
    in_data
        .cmd("MAIL FROM:<a@example.com>")
        .assert_is(250, "2.1.0");
    in_data
        .cmd("RCPT TO:<d@example.org>")
        .assert_is(250, "2.1.5");
    assert_eq!(in_data.cmd("DATA").code, 354);
    in_data.send(b"Subject: cut short\r\n\r\nthe first half");

    let status = baton.terminate();
    assert!(status.success(), "exit status {status}\n{}", baton.log());
    for smtp in [&mut sender, &mut greeted, &mut in_data] {
        smtp.expect(421, "4.3.2");
        assert!(smtp.closed());
    }

    baton.spawn();
    let queue = baton.queue();
    assert_eq!(queue["messages"], 2, "{queue}");
    assert_eq!(queue["recipients"], 4, "{queue}");
    for id in &accepted {
        assert_eq!(
            Baton::shown_recipients(&baton.show(id)),
            ["b@example.org", "c@example.net"]
        );
    }

    // Served again, with a queue id never handed out before.
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    let id = queued_id(&smtp.send_message("a@example.com", &["e@example.org"], "hi\r\n"));
    assert!(!accepted.contains(&id), "{id} reused");
    assert_eq!(baton.queued_messages(), 3);
    let status = baton.terminate();
    assert!(status.success(), "exit status {status}\n{}", baton.log());
}
