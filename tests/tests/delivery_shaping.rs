//! Traffic shaping per destination (`[shaping]`, `[[destination]]`): the
//! connection limit holds across shards, recipients are split into
//! transactions of at most the configured size, a remote `421` makes baton
//! back off without losing mail, and the message rate spreads delivery
//! over time. The next hop is a real `loadgen sink`, reached through a
//! `[[route]]` for a.test; `loadgen send` numbers its messages, and the
//! sink's `--verify` counts what was lost or duplicated.

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use baton_tests::delivery::{
    get_json, metric, recipient, route, send, send_report, unix_ms, wait_queue_empty, SendRun,
};
use baton_tests::sink::Sink;
use baton_tests::{Baton, TestConfig, STARTUP_TIMEOUT};

/// Baton routing a.test to `sink`, with `delivery` lines in `[delivery]`
/// and `toml` added to the file.
fn baton_to(sink: &Sink, delivery: &[&str], toml: &str) -> Baton {
    Baton::start_with(TestConfig {
        deliver: true,
        delivery: delivery.iter().map(|line| line.to_string()).collect(),
        extra_toml: format!("{}\n{toml}", route("a.test", sink.addr)),
        ..TestConfig::default()
    })
}

/// A sink on 127.0.0.2 that checks, when stopped, what arrived against
/// the send report that will be in `dir`; `args` script it further.
fn verifying_sink(dir: &Path, args: &[&str]) -> Sink {
    let report = send_report(dir);
    let mut all = vec!["--verify", report.to_str().expect("UTF-8 path")];
    all.extend_from_slice(args);
    Sink::start("127.0.0.2", &all)
}

/// Sends `count` messages to a.test over `connections` connections to
/// baton at `smtp`; the report is written into `dir`.
fn send_to_a(smtp: SocketAddr, dir: &Path, count: usize, connections: usize) -> SendRun {
    let count_arg = count.to_string();
    let connections_arg = connections.to_string();
    let args = [
        "-n",
        &count_arg,
        "-c",
        &connections_arg,
        "--domains",
        "a.test",
    ];
    let run = send(smtp, &args, dir);
    assert_eq!(run.path, send_report(dir));
    assert_eq!(
        run.report["messages_accepted"], count as u64,
        "{}",
        run.report
    );
    run
}

/// Waits until the sink holds `count` messages and the queue is empty,
/// stops the sink and checks that each arrived exactly once. The sink's
/// report.
fn collect(baton: &mut Baton, sink: Sink, count: usize) -> serde_json::Value {
    baton.wait_until(&format!("{count} messages at the sink"), || {
        sink.count() >= count
    });
    wait_queue_empty(baton);
    let report = sink.stop();
    assert_exactly_once(baton, &report, count);
    report
}

/// [`send_to_a`], then [`collect`].
fn deliver_all(
    baton: &mut Baton,
    sink: Sink,
    dir: &Path,
    count: usize,
    connections: usize,
) -> serde_json::Value {
    send_to_a(baton.smtp, dir, count, connections);
    collect(baton, sink, count)
}

/// The sink's `--verify`: nothing lost, nothing duplicated or unexpected.
fn assert_exactly_once(baton: &Baton, report: &serde_json::Value, count: usize) {
    let verify = &report["ids"]["verify"];
    assert!(report["verify_error"].is_null(), "{report}");
    assert_eq!(verify["expected_messages"], count as u64, "{report}");
    for key in ["messages_lost", "recipients_lost", "messages_unexpected"] {
        assert_eq!(verify[key], 0, "{key}: {report}\n{}", baton.log());
    }
    assert_eq!(report["ids"]["duplicated_deliveries"], 0, "{report}");
    assert_eq!(report["messages_accepted"], count as u64, "{report}");
}

/// Checks that the sink never had more than `max` connections from baton
/// at once, and had at least two: delivery did run in parallel.
fn assert_peak_within(report: &serde_json::Value, max: u64) {
    let peak = report["connections_peak"]
        .as_u64()
        .expect("connections_peak");
    assert!(
        peak <= max,
        "{peak} connections at once, limit {max}: {report}"
    );
    assert!(peak >= 2, "never more than {peak} connection: {report}");
}

#[test]
fn a_destinations_connection_limit_is_never_exceeded() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A slow answer to each message makes the ready queue grow, so
    // baton wants as many connections as it may have.
    let sink = verifying_sink(dir.path(), &["--delay-data", "50ms"]);
    let mut baton = baton_to(
        &sink,
        &[],
        "[shaping]\nconnections_max = 20\n\n\
         [[destination]]\ndomain = \"a.test\"\nconnections_max = 3\n",
    );
    let report = deliver_all(&mut baton, sink, dir.path(), 150, 20);
    assert_peak_within(&report, 3);
}

#[test]
fn the_global_connection_limit_holds_across_shards() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = verifying_sink(dir.path(), &["--delay-data", "50ms"]);
    // Two shards (the harness's default), one limit for both.
    let mut baton = baton_to(&sink, &[], "[shaping]\nconnections_max = 3\n");
    let report = deliver_all(&mut baton, sink, dir.path(), 150, 20);
    assert_peak_within(&report, 3);
}

#[test]
fn five_recipients_go_in_three_transactions_of_at_most_two() {
    let sink = Sink::start("127.0.0.2", &[]);
    let mut baton = baton_to(
        &sink,
        &[],
        "[[destination]]\ndomain = \"a.test\"\nrecipients_per_transaction_max = 2\n",
    );
    let recipients: Vec<String> = (1..=5).map(|i| format!("user{i}@a.test")).collect();
    let to: Vec<&str> = recipients.iter().map(String::as_str).collect();
    // A loadgen id, so that the sink counts deliveries per recipient.
    let body = "Subject: five\r\nX-Loadgen-Id: 00000000000000ab-1\r\n\r\nhello\r\n";
    let id = baton.submit("alice@sender.test", &to, body);
    baton.wait_for("all five delivered", |b| {
        (0..5).all(|i| recipient(b, &id, i)["status"] == "delivered")
    });
    let copies = sink.messages();
    let report = sink.stop();
    assert_eq!(report["messages_accepted"], 3, "{report}");
    assert_eq!(report["recipients_accepted"], 5, "{report}");
    assert_eq!(report["ids"]["distinct_ids"], 1, "{report}");
    assert_eq!(report["ids"]["deliveries"], 5, "{report}");
    assert_eq!(report["ids"]["duplicated_deliveries"], 0, "{report}");
    assert!(
        copies
            .iter()
            .all(|m| m.contains("X-Loadgen-Id: 00000000000000ab-1\r\n")),
        "{copies:?}"
    );
}

#[test]
fn a_remote_421_slows_the_destination_down_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Past two connections the sink greets with 421 and closes.
    let sink = verifying_sink(
        dir.path(),
        &["--max-connections", "2", "--delay-data", "20ms"],
    );
    let connections_max = 10;
    let mut baton = baton_to(
        &sink,
        &["retry_schedule = [\"1s\"]", "pause = \"1s\""],
        &format!("[shaping]\nconnections_max = {connections_max}\n"),
    );
    let started = Instant::now();
    // While the mail goes out, watch GET /queue for a pause in force.
    let mut pauses_seen = 0;
    let mut watch = |baton: &Baton| {
        assert!(
            started.elapsed() < STARTUP_TIMEOUT,
            "not delivered within {STARTUP_TIMEOUT:?}\n{}",
            baton.log()
        );
        let queue = get_json(baton, "/queue");
        let now_ms = unix_ms();
        let paused = queue["destinations"]
            .as_array()
            .expect("destinations")
            .iter()
            .any(|d| d["destination"] == "a.test" && d["paused_until_ms"].as_u64() > Some(now_ms));
        pauses_seen += usize::from(paused);
        thread::sleep(Duration::from_millis(10));
    };
    thread::scope(|scope| {
        let sending = scope.spawn(|| send_to_a(baton.smtp, dir.path(), 100, 10));
        while !sending.is_finished() {
            watch(&baton);
        }
        sending.join().expect("loadgen send");
    });
    while sink.count() < 100 {
        watch(&baton);
    }
    let report = collect(&mut baton, sink, 100);
    let elapsed = started.elapsed();

    let refused = report["connections_over_limit"]
        .as_u64()
        .expect("connections_over_limit");
    assert!(refused > 0, "baton never went past 2 connections: {report}");
    assert!(
        pauses_seen > 0,
        "{refused} connections refused, and a.test was never paused\n{}",
        baton.log()
    );
    assert_eq!(metric(&baton, "baton_recipients_failed_total"), 0);
    assert_eq!(metric(&baton, "baton_bounces_generated_total"), 0);
    // Each refusal pauses the destination for at least `pause` (1 s), and
    // in one go baton can open no more than its limit: so at most
    // (limit - 2) refusals per second, not one per message.
    let bursts = elapsed.as_secs() + 1;
    let refusals_max = (connections_max - 2) * bursts;
    assert!(
        refused <= refusals_max,
        "{refused} connections refused in {elapsed:?}, at most {refusals_max} expected\n{}",
        baton.log()
    );
}

#[test]
fn message_rate_max_spreads_delivery_over_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = verifying_sink(dir.path(), &[]);
    let mut baton = baton_to(
        &sink,
        &[],
        "[[destination]]\ndomain = \"a.test\"\nmessage_rate_max = 20\n",
    );
    let report = deliver_all(&mut baton, sink, dir.path(), 60, 10);
    // 60 messages at 20 a second: at most a second's worth (20) at once,
    // the other 40 over two seconds. A lower bound only, with a margin
    // for the first message being slower than the last.
    let busy = Duration::from_secs_f64(report["busy_seconds"].as_f64().expect("busy_seconds"));
    assert!(
        busy >= Duration::from_millis(1800),
        "60 messages at 20/s arrived within {busy:?}: {report}"
    );
}
