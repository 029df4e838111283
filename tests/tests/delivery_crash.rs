//! `kill -9` in the middle of heavy delivery loses nothing: after a
//! restart on the same spool, every message `loadgen send` saw a `250` for
//! reaches the next hop. Some may arrive twice, but only those in flight
//! at the kill: a transaction the next hop accepted whose outcome baton had
//! not yet made durable. With one recipient per message that is at most
//! one per delivery connection (`[shaping] connections_max`, 20).

use std::time::Instant;

use baton_tests::delivery::{route, send_report, send_sized, wait_queue_empty};
use baton_tests::sink::Sink;
use baton_tests::{Baton, TestConfig};

/// Messages sent before the kill.
const MESSAGES: u64 = 2000;
/// `[shaping] connections_max`, baton's default: transactions in flight
/// to one destination at most.
const CONNECTIONS_MAX: u64 = 20;
/// The next hop's wait before its reply to each message's content, so
/// that delivery is still going on well after the last message was
/// accepted (at 5ms it keeps up with acceptance on a fast machine, and a
/// kill before a tenth is delivered depends on luck). The sink records a
/// message before this wait: each connection holds one that will arrive
/// again after the kill.
const SINK_DATA_DELAY: &str = "20ms";

#[test]
fn kill_9_during_delivery_loses_nothing_and_duplicates_only_what_was_in_flight() {
    let dir = tempfile::tempdir().expect("report directory");
    let report = send_report(dir.path());
    let report_arg = report.to_str().expect("UTF-8 path");
    let sink = Sink::start(
        "127.0.0.2",
        &["--delay-data", SINK_DATA_DELAY, "--verify", report_arg],
    );
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route("*", sink.addr),
        ..TestConfig::default()
    });
    let started = Instant::now();
    let count = MESSAGES.to_string();
    let args = ["-n", &count, "-c", "10", "--domains", "crash.test"];
    let sent = send_sized(server.smtp, "5KiB", &args, dir.path()).report;
    assert_eq!(sent["messages_accepted"], MESSAGES, "{sent}");
    let sent_after = started.elapsed();

    // Some delivered, most not: kill in the thick of it.
    let low = (MESSAGES / 10) as usize;
    let high = (MESSAGES * 9 / 10) as usize;
    let at_send_end = sink.count();
    assert!(
        at_send_end < high,
        "{at_send_end} of {MESSAGES} already delivered when the last was accepted \
         ({sent_after:?}): delivery did not lag enough for a kill in the middle"
    );
    server.wait_until("a tenth of the messages at the sink", || {
        sink.count() >= low
    });
    server.kill9();
    let at_kill = sink.count();
    assert!(
        (low..high).contains(&at_kill),
        "{at_kill} of {MESSAGES} delivered at the kill"
    );

    server.spawn();
    let restarted = Instant::now();
    server.wait_until("every message at the sink", || {
        sink.count() >= MESSAGES as usize
    });
    wait_queue_empty(&mut server);
    let drained_after = restarted.elapsed();
    let summary = sink.stop();
    let ids = &summary["ids"];
    let verify = &ids["verify"];
    assert_eq!(verify["expected_messages"], MESSAGES, "{summary}");
    assert_eq!(verify["messages_lost"], 0, "{summary}");
    assert_eq!(verify["recipients_lost"], 0, "{summary}");
    assert_eq!(verify["messages_unexpected"], 0, "{summary}");
    assert_eq!(ids["distinct_ids"], MESSAGES, "{summary}");
    let duplicated = ids["duplicated_deliveries"]
        .as_u64()
        .expect("duplicated_deliveries");
    eprintln!(
        "sent in {sent_after:?}; kill -9 with {at_kill} of {MESSAGES} delivered; \
         the rest delivered {drained_after:?} after the restart; {duplicated} delivered \
         twice (bound {CONNECTIONS_MAX}); {} connections at the sink's peak",
        summary["connections_peak"]
    );
    assert!(
        duplicated <= CONNECTIONS_MAX,
        "{duplicated} duplicated deliveries, more than the {CONNECTIONS_MAX} \
         transactions that can be in flight\n{summary}\n{}",
        server.log()
    );
}

/// A recipient recorded as delivered is never delivered again: once the
/// API shows every message delivered (outcomes are applied only when
/// durable), `kill -9` and a restart find nothing to send, and the next
/// message (which takes the queue in order after anything recovered)
/// arrives alone.
#[test]
fn a_delivered_recipient_is_not_sent_again_after_kill_9() {
    use baton_tests::delivery::wait_status;

    let sink = Sink::start("127.0.0.2", &[]);
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route("*", sink.addr),
        ..TestConfig::default()
    });
    let ids: Vec<String> = (0..30)
        .map(|i| {
            let body = format!("Subject: before {i}\r\n\r\nbefore\r\n");
            server.submit("alice@sender.test", &["bob@dest.test"], &body)
        })
        .collect();
    for id in &ids {
        wait_status(&mut server, id, "bob@dest.test", "delivered");
    }
    assert_eq!(sink.count(), 30);
    server.kill9();
    let log_before = server.log().len();
    server.spawn();
    let restarted = server.log()[log_before..].to_string();
    assert!(
        restarted.contains("queue recovered recipients=0"),
        "delivered recipients came back as pending:\n{restarted}"
    );
    server.submit(
        "alice@sender.test",
        &["bob@dest.test"],
        "Subject: after\r\n\r\nafter\r\n",
    );
    server.wait_until("the message sent after the restart", || sink.count() >= 31);
    wait_queue_empty(&mut server);
    let messages = sink.messages();
    assert_eq!(messages.len(), 31, "something was delivered twice");
    assert!(
        messages[30].contains("Subject: after\r\n"),
        "{}",
        messages[30]
    );
}
