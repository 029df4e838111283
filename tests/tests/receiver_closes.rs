//! A next hop that closes the connection, without an error, right after
//! answering its Nth message (Yahoo does this on purpose) is not failing:
//! baton reconnects at once, with no pause, no cut in its connection
//! limit, and no deferral for what it had pipelined behind the last
//! message. With retries an hour apart, any deferral would leave mail
//! undelivered for the rest of the test.

use baton_tests::delivery::{route, wait_queue_empty, EventLog};
use baton_tests::sink::Sink;
use baton_tests::{Baton, TestConfig};

#[test]
fn a_next_hop_that_closes_after_n_messages_gets_every_message_without_deferrals() {
    let sink = Sink::start("127.0.0.2", &["--close-after", "3"]);
    let events = EventLog::new();
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        delivery: vec!["retry_schedule = [\"1h\"]".into()],
        extra_toml: route("*", sink.addr) + &events.toml(),
        ..TestConfig::default()
    });
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    for i in 0..30 {
        let reply = smtp.send_message(
            "alice@sender.test",
            &[&format!("r{i}@one.test")],
            &format!("Subject: m{i}\r\n\r\nhi\r\n"),
        );
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    server.wait_until("30 messages at the sink", || sink.count() >= 30);
    wait_queue_empty(&mut server);
    let deferred: Vec<_> = events
        .events()
        .into_iter()
        .filter(|e| e["event"] == "deferred")
        .collect();
    assert!(deferred.is_empty(), "{deferred:?}");
    let report = sink.stop();
    assert_eq!(report["messages_accepted"], 30, "{report}");
    // The sink did close connections: at least one per three messages.
    assert!(
        report["closed_after"].as_u64().unwrap_or(0) >= 10,
        "{report}"
    );
}
