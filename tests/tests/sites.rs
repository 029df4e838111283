//! A route's next hop is one site: many recipient domains routed to one
//! smart host share its connection limit (before, each domain had its
//! own, so 50 domains opened 50 times the limit to one host).

use baton_tests::delivery::{route, wait_queue_empty};
use baton_tests::sink::Sink;
use baton_tests::{Baton, TestConfig};

#[test]
fn domains_routed_to_one_smart_host_share_its_connection_limit() {
    // Each message holds its connection for a while, so that the
    // connections of all domains would overlap.
    let sink = Sink::start("127.0.0.2", &["--delay-data", "300ms"]);
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: format!(
            "[shaping]\nconnections_max = 3\n\n{}",
            route("*", sink.addr)
        ),
        ..TestConfig::default()
    });
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    for i in 0..20 {
        let reply = smtp.send_message(
            "alice@sender.test",
            &[&format!("r@d{i}.test")],
            &format!("Subject: m{i}\r\n\r\nhi\r\n"),
        );
        assert_eq!(reply.code, 250);
    }
    server.wait_until("20 messages delivered", || sink.count() >= 20);
    wait_queue_empty(&mut server);
    let report = sink.stop();
    assert_eq!(report["messages_accepted"], 20, "{report}");
    let peak = report["connections_peak"].as_u64().unwrap();
    assert!(
        peak <= 3,
        "20 domains, one smart host, limit 3: peak {peak}"
    );
    // Mail to several domains still went over several connections.
    assert!(peak >= 2, "peak {peak}");
}
