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

/// `.example` routes take every subdomain, the longest parent wins, an
/// exact route wins over both, and the parent domain itself is not its
/// own subdomain (Postfix's transport maps): each message reaches the
/// sink its route names.
#[test]
fn subdomain_routes_match_subdomains_longest_first() {
    let parent = Sink::start("127.0.0.2", &[]);
    let eu = Sink::start("127.0.0.3", &[]);
    let exact = Sink::start("127.0.0.4", &[]);
    let star = Sink::start("127.0.0.5", &[]);
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route(".corp.test", parent.addr)
            + &route(".eu.corp.test", eu.addr)
            + &route("mail.eu.corp.test", exact.addr)
            + &route("*", star.addr),
        ..TestConfig::default()
    });
    let cases = [
        ("a.corp.test", &parent),
        ("x.y.corp.test", &parent),
        ("b.eu.corp.test", &eu),
        ("mail.eu.corp.test", &exact),
        ("corp.test", &star),
        ("notcorp.test", &star),
    ];
    for (domain, _) in &cases {
        server.submit(
            "alice@sender.test",
            &[&format!("bob@{domain}")],
            &format!("Subject: to {domain}\r\n\r\nhi\r\n"),
        );
    }
    server.wait_until("six messages delivered", || {
        parent.count() + eu.count() + exact.count() + star.count() >= 6
    });
    wait_queue_empty(&mut server);
    for (domain, sink) in &cases {
        let arrived = sink
            .messages()
            .iter()
            .filter(|m| m.contains(&format!("Subject: to {domain}\r\n")))
            .count();
        assert_eq!(arrived, 1, "{domain} did not reach its route's next hop");
    }
    assert_eq!(
        (parent.count(), eu.count(), exact.count(), star.count()),
        (2, 1, 1, 2)
    );
}

/// A next hop named by its host name is found through DNS (its A record),
/// not through MX: the smart host has no MX at all.
#[test]
fn a_next_hop_named_by_host_is_resolved_and_used() {
    use baton_tests::delivery::{dns_toml, ipv4};
    use baton_tests::dns::{DnsServer, Zone};

    let sink = Sink::start("127.0.0.3", &[]);
    let dns = DnsServer::start(Zone::new().a("smarthost.test", ipv4("127.0.0.3")));
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: format!(
            "{}[[route]]\ndomain = \"*\"\nnext_hop = \"smarthost.test:{}\"\n",
            dns_toml(&dns, "2s"),
            sink.addr.port()
        ),
        ..TestConfig::default()
    });
    let id = server.submit(
        "alice@sender.test",
        &["bob@anywhere.test"],
        "Subject: by name\r\n\r\nhi\r\n",
    );
    server.wait_until("the message at the smart host", || sink.count() >= 1);
    wait_queue_empty(&mut server);
    assert_eq!(sink.count(), 1, "{id} arrived more than once");
    assert!(sink.messages()[0].contains("Subject: by name\r\n"));
    assert!(dns.queries() >= 1, "the name was never looked up");
}

/// A next hop that announces a SIZE smaller than the message never gets
/// it (RFC 1870): the recipient fails at once with 552 5.3.4, and the
/// sender (routed elsewhere) is told.
#[test]
fn a_message_larger_than_the_next_hops_size_fails_without_being_sent() {
    use baton_tests::delivery::{recipient, wait_status};

    let small = Sink::start("127.0.0.2", &["--max-size", "1000"]);
    let sender = Sink::start("127.0.0.3", &[]);
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route("dest.test", small.addr) + &route("*", sender.addr),
        ..TestConfig::default()
    });
    let line = format!("{}\r\n", "x".repeat(75));
    let big = format!("Subject: big\r\n\r\n{}", line.repeat(40));
    let id = server.submit("alice@sender.test", &["bob@dest.test"], &big);
    wait_status(&mut server, &id, "bob@dest.test", "failed");
    server.wait_until("the notification", || sender.count() >= 1);
    assert_eq!(small.count(), 0, "the big message was sent");
    let messages = sender.messages();
    assert_eq!(messages.len(), 1, "one notification");
    assert!(messages[0].contains("Status: 5.3.4"), "{}", messages[0]);
    assert!(
        !messages[0].contains(&"x".repeat(3000)),
        "the big body was sent"
    );
    assert_eq!(recipient(&server, &id, 0)["status"], "failed");
}
