//! Smart-host delivery: a `[[route]]` for every domain sends all mail to
//! one next hop, a real `loadgen sink`; each message arrives exactly once,
//! as it was stored.

use baton_tests::delivery::{route, wait_queue_empty};
use baton_tests::sink::Sink;
use baton_tests::{Baton, TestConfig};

#[test]
fn every_message_reaches_the_next_hop_once_and_the_queue_empties() {
    let sink = Sink::start("127.0.0.2", &[]);
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route("*", sink.addr),
        ..TestConfig::default()
    });
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    for i in 0..20 {
        // Wire form: the helper sends the body as it is, so the dot is doubled.
        let body = format!("Subject: m{i}\r\nX-Test: {i}\r\n\r\n..leading dot\r\nline {i}\r\n");
        let reply = smtp.send_message(
            "alice@sender.test",
            &[&format!("r{i}@x{}.test", i % 3)],
            &body,
        );
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    server.wait_until("20 messages at the sink", || sink.count() >= 20);
    wait_queue_empty(&mut server);
    let messages = sink.messages();
    assert_eq!(messages.len(), 20);
    for i in 0..20 {
        let matching: Vec<_> = messages
            .iter()
            .filter(|m| m.contains(&format!("X-Test: {i}\r\n")))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "message {i} arrived {} times",
            matching.len()
        );
        // Dot-stuffing undone by the sink: the line is back as sent.
        assert!(
            matching[0].contains("\r\n.leading dot\r\n"),
            "{}",
            matching[0]
        );
    }
    let report = sink.stop();
    assert_eq!(report["messages_accepted"], 20, "{report}");
}
