//! The delivery client's timeouts (`[delivery]`, RFC 5321 §4.5.3.2) and
//! its idle connections: an MX host that greets too slowly is left for
//! the next one, a next hop that never answers the final dot defers the
//! recipient instead of holding it, and a connection with nothing to do
//! waits `idle_timeout` for more mail, takes it if it comes, then QUITs.
//!
//! The next hops are `loadgen sink`s told to be slow: `--delay-reply`
//! before every reply but the one after the content (the greeting
//! included), `--delay-data` before that one.

use std::thread;
use std::time::{Duration, Instant};

use baton_tests::delivery::{
    at, backup_mx_zone, metric, mx_baton, recipient_named, route, shared_port, unix_ms,
    wait_status, EventLog,
};
use baton_tests::dns::DnsServer;
use baton_tests::sink::{replies, Sink, PROBE_CONNECTIONS};
use baton_tests::{Baton, TestConfig};

/// How long the slow sinks wait before the reply they delay: well past
/// the timeouts under test (1 s), so that a client without them would
/// still be waiting at the deadlines below.
const SINK_DELAY: &str = "5s";
/// The greeting and final-dot timeouts under test.
const TIMEOUT: &str = "1s";
/// How long a test gives baton to act on a timeout of [`TIMEOUT`]: the
/// timeout, its timer's granularity and a slow machine's margin, and
/// still less than [`SINK_DELAY`], after which the slow reply would come.
const TIMEOUT_ACTED_WITHIN: Duration = Duration::from_secs(4);
/// How long after its last message an idle connection may take to QUIT,
/// beyond `idle_timeout`.
const QUIT_MARGIN: Duration = Duration::from_secs(4);
/// How often a test looks at the sink's connections.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The recipient of every test message.
const TO: &str = "bob@a.test";

/// A one-line test message, recognised at the sink by its `X-Test` value.
fn body(x_test: &str) -> String {
    format!("Subject: timeouts\r\nX-Test: {x_test}\r\n\r\nhello\r\n")
}

/// Baton delivering with these `[delivery]` lines and `extra_toml`.
fn baton(delivery: &[&str], extra_toml: String) -> Baton {
    Baton::start_with(TestConfig {
        deliver: true,
        delivery: delivery.iter().map(|line| line.to_string()).collect(),
        extra_toml,
        ..TestConfig::default()
    })
}

#[test]
fn a_first_mx_that_greets_too_slowly_is_left_for_the_second() {
    let port = shared_port(&["127.0.0.2", "127.0.0.3"]);
    let slow = Sink::start_on(at("127.0.0.2", port), &["--delay-reply", SINK_DELAY]);
    let backup = Sink::start_on(at("127.0.0.3", port), &[]);
    let dns = DnsServer::start(backup_mx_zone());
    // A deferral would wait an hour: only moving on delivers in time.
    let greeting_timeout = format!("greeting_timeout = \"{TIMEOUT}\"");
    let delivery = [greeting_timeout.as_str(), "retry_schedule = [\"1h\"]"];
    let mut baton = mx_baton(&dns, port, &delivery, "");
    let started = Instant::now();
    let id = baton.submit("alice@sender.test", &[TO], &body("slow-greeting"));
    baton.wait_for_within("the message at the second MX", TIMEOUT_ACTED_WITHIN, |_| {
        backup.count() >= 1
    });
    let delivered_after = started.elapsed();
    wait_status(&mut baton, &id, TO, "delivered");

    let message = backup.only_message();
    assert!(message.contains("X-Test: slow-greeting\r\n"), "{message}");
    assert_eq!(slow.count(), 0, "the slow MX got the message");
    assert_eq!(metric(&baton, "baton_recipients_deferred_total"), 0);
    let slow = slow.stop();
    assert_eq!(slow["messages_accepted"], 0, "{slow}");
    // Baton did try the preferred host first.
    let tried = slow["connections"].as_u64().expect("connections");
    assert!(tried > PROBE_CONNECTIONS, "baton never asked mx1: {slow}");
    let backup = backup.stop();
    assert_eq!(backup["messages_accepted"], 1, "{backup}");
    assert_eq!(backup["ids"]["duplicated_deliveries"], 0, "{backup}");
    eprintln!("delivered through the second MX {delivered_after:?} after submission");
}

#[test]
fn a_next_hop_that_never_answers_the_final_dot_defers_the_recipient() {
    let sink = Sink::start("127.0.0.2", &["--delay-data", SINK_DELAY]);
    let events = EventLog::new();
    let mut baton = baton(
        &[
            &format!("dot_timeout = \"{TIMEOUT}\""),
            "retry_schedule = [\"1h\"]",
        ],
        route("*", sink.addr) + &events.toml(),
    );
    let started = Instant::now();
    let before_ms = unix_ms();
    let id = baton.submit("alice@sender.test", &[TO], &body("slow-dot"));
    baton.wait_for_within("the recipient deferred", TIMEOUT_ACTED_WITHIN, |b| {
        let state = recipient_named(b, &id, TO);
        assert_ne!(state["status"], "delivered", "{state}");
        state["status"] == "deferred"
    });
    let deferred_after = started.elapsed();

    let state = recipient_named(&baton, &id, TO);
    assert_eq!(state["attempts"], 1, "{state}");
    // By the retry schedule: an hour on, not at once.
    let next_attempt_ms = state["next_attempt_ms"].as_u64().expect("next_attempt_ms");
    let hour_ms = 3_600_000;
    assert!(next_attempt_ms >= before_ms + hour_ms, "{state}");
    assert_eq!(metric(&baton, "baton_recipients_deferred_total"), 1);
    baton.wait_until("the deferred event", || {
        !events.events_of("deferred", &id).is_empty()
    });
    let deferred = events.events_of("deferred", &id);
    assert_eq!(deferred.len(), 1, "{deferred:?}");
    assert_eq!(deferred[0]["recipient"], TO, "{:?}", deferred[0]);
    assert_eq!(deferred[0]["attempt"], 1, "{:?}", deferred[0]);
    let reply = deferred[0]["reply"].as_str().expect("reply");
    assert!(reply.starts_with('4'), "not a temporary failure: {reply}");
    // The operator reads why: the timeout, and what was awaited.
    assert!(
        reply.contains("timed out waiting for the reply to the end of data"),
        "{reply}"
    );
    assert!(events.events_of("delivered", &id).is_empty());
    eprintln!("deferred {deferred_after:?} after submission, with {reply:?}");
}

/// Waits until baton has ended its connection to `sink`, at most
/// `within`; how long that took.
fn wait_hung_up(baton: &mut Baton, sink: &Sink, within: Duration) -> Duration {
    let started = Instant::now();
    baton.wait_for_within("baton to hang up on the sink", within, |_| {
        sink.open_connections() == 0
    });
    started.elapsed()
}

/// Baton keeping idle connections `idle_timeout`, routing all mail to a
/// new sink; and that sink.
fn idle_setup(idle_timeout: Duration) -> (Baton, Sink) {
    let sink = Sink::start("127.0.0.2", &[]);
    let idle = format!("idle_timeout = \"{}ms\"", idle_timeout.as_millis());
    (baton(&[&idle], route("*", sink.addr)), sink)
}

/// Sends one message marked `x_test` and waits until baton delivered it.
fn deliver(baton: &mut Baton, x_test: &str) {
    let id = baton.submit("alice@sender.test", &[TO], &body(x_test));
    wait_status(baton, &id, TO, "delivered");
}

/// Stops `sink` and checks that it got `messages` over one connection,
/// which baton ended with a QUIT, answered: not dropped or reset.
fn assert_one_connection_one_quit(sink: Sink, messages: u64) {
    let report = sink.stop();
    assert_eq!(report["messages_accepted"], messages, "{report}");
    assert_eq!(report["connections"], PROBE_CONNECTIONS + 1, "{report}");
    assert_eq!(replies(&report, 221), 1, "{report}");
}

#[test]
fn an_idle_connection_quits_after_idle_timeout() {
    let idle_timeout = Duration::from_millis(500);
    let (mut baton, sink) = idle_setup(idle_timeout);
    deliver(&mut baton, "idle");
    let hung_up_after = wait_hung_up(&mut baton, &sink, idle_timeout + QUIT_MARGIN);
    assert_one_connection_one_quit(sink, 1);
    eprintln!("QUIT {hung_up_after:?} after the delivery was seen");
}

/// Watches baton's connection to `sink` for `linger`: fails the test if
/// it closes meanwhile.
fn assert_lingers(sink: &Sink, linger: Duration) {
    let started = Instant::now();
    while started.elapsed() < linger {
        let open = sink.open_connections();
        let after = started.elapsed();
        assert_eq!(
            open, 1,
            "{open} connections open {after:?} into the idle time"
        );
        thread::sleep(POLL_INTERVAL);
    }
}

#[test]
fn an_idle_connection_lingers_and_takes_the_next_message() {
    let idle_timeout = Duration::from_secs(3);
    let (mut baton, sink) = idle_setup(idle_timeout);
    deliver(&mut baton, "first");
    let idle_since = Instant::now();
    // Well past baton's timer granularity, well within its idle time.
    assert_lingers(&sink, idle_timeout / 3);
    let second = baton.submit("alice@sender.test", &[TO], &body("second"));
    let gap = idle_since.elapsed();
    assert!(
        gap < idle_timeout * 2 / 3,
        "the second message came {gap:?} after the first was delivered: \
         the machine is too slow for this test's idle_timeout"
    );
    wait_status(&mut baton, &second, TO, "delivered");
    wait_hung_up(&mut baton, &sink, idle_timeout + QUIT_MARGIN);
    let messages = sink.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_one_connection_one_quit(sink, 2);
    eprintln!("the second message came {gap:?} into the idle time");
}
