//! Open loop: latency is measured from each message's due time, so a sink
//! with a known delay shows that delay, and a server too slow for the rate
//! shows in the message latency (no coordinated omission).

mod common;

use common::*;

#[test]
fn a_known_delay_shows_in_the_latency() {
    let sink = Sink::start(&["--delay-data", "100ms"]);
    let run = sink.send(&["--rate", "100", "-n", "150", "-c", "30"]);
    assert!(run.status.success());
    let sent = &run.report;
    assert_eq!(sent["mode"], "open");
    assert_eq!(num(sent, "/messages_accepted"), 150);
    let p50 = float(sent, "/latency/message/p50_ms");
    let transaction_p50 = float(sent, "/latency/transaction/p50_ms");
    assert!((100.0..250.0).contains(&p50), "message p50 {p50} ms");
    assert!(
        (100.0..250.0).contains(&transaction_p50),
        "transaction p50 {transaction_p50} ms"
    );
    // 150 messages at 100/s: about 1.5 s, whatever the delay.
    let seconds = float(sent, "/duration_seconds");
    assert!((1.4..4.0).contains(&seconds), "{seconds} s");
    let got = sink.stop();
    assert_eq!(num(&got, "/messages_accepted"), 150);
    // The sink accepts before it delays its reply: its end-to-end
    // latency (from the due time in X-Loadgen-Sent) does not include it.
    assert!(float(&got, "/latency_end_to_end/p50_ms") < 100.0);
}

#[test]
fn a_server_slower_than_the_rate_shows_in_message_latency() {
    // One connection, 50 ms per message: 20/s at most, asked for 100/s.
    let sink = Sink::start(&["--delay-data", "50ms"]);
    let run = sink.send(&["--rate", "100", "-n", "60", "-c", "1", "--no-pipelining"]);
    assert!(run.status.success());
    let sent = &run.report;
    let transaction_p99 = float(sent, "/latency/transaction/p99_ms");
    let message_max = float(sent, "/latency/message/max_ms");
    assert!(
        transaction_p99 < 500.0,
        "each transaction is quick: {transaction_p99} ms"
    );
    // The last message was due at 0.59 s and sent after ~3 s.
    assert!(message_max > 1500.0, "waiting counts: {message_max} ms");
    let got = sink.stop();
    assert!(float(&got, "/latency_end_to_end/max_ms") > 1500.0);
}
