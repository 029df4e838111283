//! A client that goes away in the middle of a message: the half message is
//! not queued, the server goes on serving others, and the messages it
//! accepted before are all still queued.
//!
//! With `connections_per_ip_max = 1`, a new connection from the client's
//! address is admitted only once the server has released the old one: that
//! is how the test knows the server has seen the disconnect before it
//! looks at the queue.

use std::net::IpAddr;
use std::time::Duration;

use baton_tests::{queued_id, Baton, Smtp, TestConfig};

const SENDER: &str = "127.0.0.4";
const QUITTER: &str = "127.0.0.5";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Starts a message from `QUITTER`, sends part of it with `partial`, and
/// returns the connection.
fn halfway(baton: &Baton, partial: impl FnOnce(&mut Smtp)) -> Smtp {
    let mut smtp = baton.admitted_from(ip(QUITTER));
    smtp.ehlo("quitter.test");
    smtp.cmd("MAIL FROM:<quitter@example.com>")
        .assert_is(250, "2.1.0");
    smtp.cmd("RCPT TO:<lost@example.net>")
        .assert_is(250, "2.1.5");
    partial(&mut smtp);
    smtp
}

fn in_data(smtp: &mut Smtp) {
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(b"Subject: never finished\r\n\r\nthe first half");
}

#[test]
fn a_client_gone_mid_message_leaves_nothing_and_the_server_goes_on() {
    let baton = Baton::start_with(TestConfig {
        limits: vec!["connections_per_ip_max = 1".into()],
        ..TestConfig::default()
    });
    let mut sender = baton.admitted_from(ip(SENDER));
    sender.ehlo("sender.test");
    let mut accepted: Vec<String> = (0..3)
        .map(|i| {
            let body = format!("Subject: kept {i}\r\n\r\nkept\r\n");
            queued_id(&sender.send_message("a@example.com", &["b@example.org"], &body))
        })
        .collect();

    // Closes in DATA (FIN).
    drop(halfway(&baton, in_data));
    // Resets in DATA (RST).
    let smtp = halfway(&baton, in_data);
    socket2::SockRef::from(smtp.stream())
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(smtp);
    // Closes in the middle of a BDAT chunk.
    drop(halfway(&baton, |smtp| {
        smtp.send(b"BDAT 100 LAST\r\nSubject: chunk\r\n\r\nthe first half")
    }));
    // Closes with the envelope given, before DATA.
    drop(halfway(&baton, |_| {}));

    // Admitted again: the server has released the last connection.
    let mut quitter = baton.admitted_from(ip(QUITTER));
    quitter.cmd("NOOP").assert_is(250, "2.0.0");
    // The sender's session was never disturbed.
    accepted.push(queued_id(&sender.send_message(
        "a@example.com",
        &["b@example.org"],
        "Subject: after\r\n\r\nstill here\r\n",
    )));
    sender.cmd("QUIT").assert_is(221, "2.0.0");

    let queue = baton.queue();
    assert_eq!(queue["messages"], accepted.len(), "{queue}");
    assert_eq!(queue["recipients"], accepted.len(), "{queue}");
    for id in &accepted {
        let message = baton.show(id);
        assert_eq!(Baton::shown_recipients(&message), ["b@example.org"]);
        assert_eq!(message["recipients"][0]["status"], "pending");
    }
}
