//! The memory of message data in flight (issue 10): `[limits]
//! data_in_flight_max` caps what all sessions hold of messages not yet in
//! the spool. Past it a message is read to its end and refused with
//! `452 4.3.1`; the session stays in step and goes on, and the messages
//! that fit are queued.

use baton_tests::{Baton, Smtp, TestConfig};

/// The cap for the test: 1 MiB.
const DATA_IN_FLIGHT_MAX: usize = 1 << 20;
/// Messages sent at once, their data interleaved so all are in flight
/// together.
const SESSIONS: usize = 4;
/// Each message's size: its buffer grows to about 512 KiB, so two fit
/// under the cap and four cannot.
const MESSAGE_BYTES: usize = 400 * 1024;
/// Bytes written to each session in turn.
const SLICE_BYTES: usize = 16 * 1024;

#[test]
fn past_the_cap_messages_get_452_and_sessions_go_on() {
    let mut baton = Baton::start_with(TestConfig {
        limits: vec![format!("data_in_flight_max = {DATA_IN_FLIGHT_MAX}")],
        ..TestConfig::default()
    });
    let mut sessions: Vec<Smtp> = (0..SESSIONS)
        .map(|i| {
            let mut smtp = baton.connect();
            smtp.ehlo("client.test");
            assert_eq!(smtp.cmd("MAIL FROM:<a@client.test>").code, 250);
            assert_eq!(smtp.cmd(&format!("RCPT TO:<r{i}@d.example>")).code, 250);
            assert_eq!(smtp.cmd("DATA").code, 354);
            smtp
        })
        .collect();
    let line = format!("{}\r\n", "m".repeat(78));
    let body = line.repeat(MESSAGE_BYTES / line.len());
    for slice in body.as_bytes().chunks(SLICE_BYTES) {
        for smtp in &mut sessions {
            smtp.send(slice);
        }
    }
    let mut accepted = 0;
    let mut refused = 0;
    for smtp in &mut sessions {
        smtp.send(b".\r\n");
        let reply = smtp.reply();
        match reply.code {
            250 => accepted += 1,
            452 => {
                reply.assert_is(452, "4.3.1");
                refused += 1;
            }
            _ => panic!("unexpected reply to the end of data: {reply:?}"),
        }
    }
    assert!(
        refused >= 1,
        "{SESSIONS} messages of {MESSAGE_BYTES} bytes all fit"
    );
    assert!(accepted >= 1, "no message fit under the cap");
    // Every session is in step and takes a message that fits now.
    for smtp in &mut sessions {
        assert_eq!(smtp.cmd("RSET").code, 250);
        let reply = smtp.send_message("a@client.test", &["s@d.example"], "small\r\n");
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    let queued = (accepted + SESSIONS) as u64;
    baton.wait_for("the accepted messages queued", |b| {
        b.queued_messages() == queued
    });
    assert!(baton.is_running());
    // The operator sees the refusals, and every reservation came back.
    let (status, metrics) = baton.admin_request("GET", "/metrics");
    assert_eq!(status, 200);
    for line in [
        format!("baton_data_in_flight_refusals_total {refused}"),
        "baton_data_in_flight_bytes 0".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    assert!(
        baton.log().contains("accepted"),
        "accepted messages are logged\n{}",
        baton.log()
    );
}
