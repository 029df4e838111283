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

/// `baton queue list` shows the queue per recipient domain; with
/// `--by-site`, the domains routed to one next hop add up to one row.
#[test]
fn queue_list_by_site_adds_up_the_domains_of_a_smart_host() {
    let sink = Sink::start("127.0.0.2", &[]);
    // Held: nothing is delivered, so the queue keeps what it got.
    let server = Baton::start_with(TestConfig {
        extra_toml: route("*", sink.addr),
        ..TestConfig::default()
    });
    for domain in ["a.test", "b.test", "c.test"] {
        server.submit(
            "alice@sender.test",
            &[&format!("r@{domain}")],
            "Subject: held\r\n\r\nhi\r\n",
        );
    }
    let (ok, by_domain, err) = server.cli(&["queue", "list"]);
    assert!(ok, "{err}");
    for domain in ["a.test", "b.test", "c.test"] {
        assert!(by_domain.contains(domain), "{by_domain}");
    }
    let (ok, by_site, err) = server.cli(&["queue", "list", "--by-site"]);
    assert!(ok, "{err}");
    let site = sink.addr.to_string();
    let row = by_site
        .lines()
        .find(|l| l.starts_with(&site))
        .unwrap_or_else(|| panic!("no row for {site}:\n{by_site}"));
    let ready: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(ready[1], "3", "{row}");
    assert!(!by_site.contains("a.test"), "{by_site}");
}
