//! Timeouts (RFC 5321 §4.5.3.2): a client that stops sending gets
//! `421 4.4.2` and is disconnected, after `command_timeout` between
//! commands and after `data_timeout` in the middle of a message (then
//! nothing is queued); a client that stops reading its replies is
//! disconnected too. The two timeouts differ, to tell which one applied.

use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use baton_tests::{bound_socket, queued_id, Baton, Smtp, TestConfig};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
const DATA_TIMEOUT: Duration = Duration::from_secs(2);
/// Generous: the server checks timeouts every 250 ms, and a client that
/// does not read is dropped at the second check past its timeout.
const ENFORCED_WITHIN: Duration = Duration::from_secs(10);

fn short_timeouts() -> Baton {
    Baton::start_with(TestConfig {
        limits: vec![
            format!("command_timeout = \"{}s\"", COMMAND_TIMEOUT.as_secs()),
            format!("data_timeout = \"{}s\"", DATA_TIMEOUT.as_secs()),
            // So that the client that never reads meets the timeout first.
            "commands_per_session_max = 100000000".into(),
        ],
        ..TestConfig::default()
    })
}

/// Waits for the timeout's 421 and the close, which must come no sooner
/// than `after` past `since`, the client's last byte.
#[track_caller]
fn times_out(smtp: &mut Smtp, since: Instant, after: Duration) {
    smtp.expect(421, "4.4.2");
    let waited = since.elapsed();
    assert!(
        waited >= after,
        "421 after {waited:?}, sooner than {after:?}"
    );
    assert!(waited < ENFORCED_WITHIN, "421 after {waited:?}");
    assert!(smtp.closed());
}

/// Past this, a timeout is not sooner than `command_timeout` (allowing for
/// the client's own scheduling).
const COMMAND_TIMED_OUT: Duration = COMMAND_TIMEOUT.saturating_sub(Duration::from_millis(500));
/// Past this, it is `data_timeout` and not `command_timeout` (which fires
/// at most 250 ms late), allowing for the client's own scheduling.
const DATA_TIMED_OUT: Duration = DATA_TIMEOUT.saturating_sub(Duration::from_millis(500));

#[test]
fn an_idle_client_gets_421_and_is_disconnected() {
    let baton = short_timeouts();
    // Right after the greeting.
    let mut smtp = baton.connect();
    times_out(&mut smtp, Instant::now(), COMMAND_TIMED_OUT);
    // After a few commands, with a transaction open.
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    smtp.cmd("MAIL FROM:<a@example.com>")
        .assert_is(250, "2.1.0");
    smtp.cmd("RCPT TO:<b@example.org>").assert_is(250, "2.1.5");
    times_out(&mut smtp, Instant::now(), COMMAND_TIMED_OUT);
    assert_eq!(baton.queued_messages(), 0);
}

#[test]
fn a_client_stalling_mid_message_gets_421_and_nothing_is_queued() {
    let baton = short_timeouts();
    let mut kept = baton.connect();
    kept.ehlo("client.test");
    let kept_id = queued_id(&kept.send_message("a@example.com", &["b@example.org"], "hi\r\n"));

    // Three clients stall at once, each in another place of a message.
    let stall = |then: &dyn Fn(&mut Smtp)| {
        let mut smtp = baton.connect();
        smtp.ehlo("client.test");
        smtp.cmd("MAIL FROM:<a@example.com>")
            .assert_is(250, "2.1.0");
        smtp.cmd("RCPT TO:<c@example.net>").assert_is(250, "2.1.5");
        then(&mut smtp);
        (smtp, Instant::now())
    };
    let in_data = stall(&|smtp| {
        assert_eq!(smtp.cmd("DATA").code, 354);
        smtp.send(b"Subject: stalled\r\n\r\nthe first half of a");
    });
    let in_chunk = stall(&|smtp| smtp.send(b"BDAT 100 LAST\r\nthe first half"));
    let between_chunks = stall(&|smtp| {
        smtp.send(b"BDAT 5\r\nfirst");
        smtp.expect(250, "2.0.0");
    });
    for (mut smtp, since) in [in_data, in_chunk, between_chunks] {
        times_out(&mut smtp, since, DATA_TIMED_OUT);
    }

    // The session with nothing in progress timed out too, and its message
    // is the only one queued.
    kept.expect(421, "4.4.2");
    let queue = baton.queue();
    assert_eq!(queue["messages"], 1, "{queue}");
    assert_eq!(queue["recipients"], 1, "{queue}");
    assert_eq!(
        Baton::shown_recipients(&baton.show(&kept_id)),
        ["b@example.org"]
    );
}

#[test]
fn a_client_that_never_reads_is_disconnected() {
    let baton = short_timeouts();
    let client: IpAddr = "127.0.0.1".parse().unwrap();
    // Small buffers on the client's side so that both directions fill up
    // soon: the server's replies back up, it stops reading, and the
    // client's writes block.
    let mut stream = bound_socket(client, baton.smtp, |socket| {
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket.set_send_buffer_size(4096).expect("SO_SNDBUF");
    });
    stream
        .set_write_timeout(Some(ENFORCED_WITHIN))
        .expect("write timeout");
    let commands = b"NOOP\r\n".repeat(10_000);
    let started = Instant::now();
    // Bounded: the server buffers a bounded amount (its socket buffers and
    // 64 KiB of replies), so 1 GiB of commands is far more than it reads.
    let mut written = 0usize;
    let error = loop {
        assert!(
            written < 1 << 30,
            "the server read 1 GiB of NOOPs unanswered"
        );
        match stream.write(&commands) {
            Ok(n) => written += n,
            Err(err) => break err,
        }
    };
    assert!(
        matches!(
            error.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
        ),
        "the server should have dropped the connection: {error} after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < ENFORCED_WITHIN);
    // The server still serves others.
    let mut smtp = baton.connect();
    smtp.cmd("NOOP").assert_is(250, "2.0.0");
}

/// Issue 10: a client dribbling a command a byte at a time outlived
/// `command_timeout`, which each byte renewed. It runs for the whole
/// command now, from the last reply.
#[test]
fn a_command_dribbled_a_byte_at_a_time_times_out_as_a_whole() {
    let baton = short_timeouts();
    let mut smtp = baton.connect();
    let since = Instant::now();
    let mut writer = smtp.stream().try_clone().unwrap();
    let dribbler = std::thread::spawn(move || {
        // Never a whole line: "NOOPNOOP..." one byte every 200 ms, for at
        // most the time the test allows.
        for byte in b"NOOP".iter().cycle().take(50) {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    times_out(&mut smtp, since, COMMAND_TIMED_OUT);
    assert!(
        since.elapsed() < COMMAND_TIMEOUT * 4,
        "{:?}",
        since.elapsed()
    );
    drop(smtp);
    dribbler.join().unwrap();
}

/// Issue 10: message data trickled in small pieces restarted
/// `data_timeout` with each read; `data_rate_min` ends it.
#[test]
fn message_data_below_the_minimum_rate_gets_421() {
    let baton = Baton::start_with(TestConfig {
        limits: vec![
            format!("data_timeout = \"{}s\"", DATA_TIMEOUT.as_secs()),
            "data_rate_min = 1000".into(),
        ],
        ..TestConfig::default()
    });
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    smtp.cmd("MAIL FROM:<a@example.com>")
        .assert_is(250, "2.1.0");
    smtp.cmd("RCPT TO:<b@example.org>").assert_is(250, "2.1.5");
    assert_eq!(smtp.cmd("DATA").code, 354);
    let since = Instant::now();
    let mut writer = smtp.stream().try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        // 40 bytes every 500 ms: 80 bytes/s, each read well inside
        // data_timeout, for at most 30 s.
        for _ in 0..60 {
            if writer.write_all(&[b'x'; 38]).is_err() || writer.write_all(b"\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    smtp.expect(421, "4.4.2");
    let waited = since.elapsed();
    assert!(waited >= Duration::from_secs(9), "421 after {waited:?}");
    assert!(waited < Duration::from_secs(20), "421 after {waited:?}");
    drop(smtp);
    trickle.join().unwrap();
    assert_eq!(baton.queued_messages(), 0);
}
