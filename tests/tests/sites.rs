//! A route's next hop is one site: many recipient domains routed to one
//! smart host share its connection limit (before, each domain had its
//! own, so 50 domains opened 50 times the limit to one host). Domains
//! whose MX records name the same hosts share one site too (MX rollup),
//! named by a `[[site]]` table when one matches the hosts.

use baton_tests::delivery::{at, mx_baton, route, shared_port, wait_queue_empty};
use baton_tests::dns::{DnsServer, Zone};
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

/// Twenty domains hosted on one MX host (as thousands of Workspace
/// domains are on Google's): one site, one connection limit, whatever
/// the recipient domain; another provider's domain is not held by it.
fn mx_rollup(site_toml: &str, limit: u64, site_name: &str) {
    let port = shared_port(&["127.0.0.2", "127.0.0.3"]);
    let shared = Sink::start_on(at("127.0.0.2", port), &["--delay-data", "300ms"]);
    let other = Sink::start_on(at("127.0.0.3", port), &[]);
    let mut zone = Zone::new()
        .a("mx1.hosting.test", "127.0.0.2".parse().unwrap())
        .mx("other.test", 10, "mx.other.test")
        .a("mx.other.test", "127.0.0.3".parse().unwrap());
    for i in 0..20 {
        zone = zone.mx(&format!("d{i}.test"), 10, "mx1.hosting.test");
    }
    let dns = DnsServer::start(zone);
    let mut server = mx_baton(
        &dns,
        port,
        &[],
        &format!("[shaping]\nconnections_max = 3\n\n{site_toml}"),
    );
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    for i in 0..40 {
        let reply = smtp.send_message(
            "alice@sender.test",
            &[&format!("r@d{}.test", i % 20)],
            &format!("Subject: m{i}\r\n\r\nhi\r\n"),
        );
        assert_eq!(reply.code, 250);
    }
    // While the site works through its backlog, it is one row naming
    // many domains, and a domain names its site.
    server.wait_for("the site lists its domains", |server| {
        let (_, list, _) = server.cli(&["site", "list"]);
        list.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.first() == Some(&site_name)
                && cols
                    .get(1)
                    .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 2))
        })
    });
    let (ok, show, err) = server.cli(&["site", "show", site_name]);
    assert!(ok, "{err}");
    assert!(
        show.lines().nth(1).unwrap().starts_with(site_name),
        "{show}"
    );
    let domain_row = show
        .lines()
        .find(|l| l.starts_with('d') && l.contains(".test"))
        .unwrap_or_else(|| panic!("no domain rows:\n{show}"));
    assert!(domain_row.ends_with(&format!("site {site_name}")), "{show}");
    let reply = smtp.send_message(
        "alice@sender.test",
        &["r@other.test"],
        "Subject: other\r\n\r\nhi\r\n",
    );
    assert_eq!(reply.code, 250);
    server.wait_until("the other provider's message, without waiting", || {
        other.count() == 1
    });
    assert!(shared.count() < 40, "other.test waited for the shared site");
    server.wait_until("40 messages at the shared host", || shared.count() >= 40);
    wait_queue_empty(&mut server);
    let report = shared.stop();
    assert_eq!(report["messages_accepted"], 40, "{report}");
    let peak = report["connections_peak"].as_u64().unwrap();
    assert!(
        peak <= limit,
        "20 domains, one MX host, site limit {limit}: peak {peak}\n{}",
        server.log()
    );
    assert!(peak >= 2, "peak {peak}");
}

#[test]
fn domains_with_the_same_mx_hosts_share_one_site_and_its_limit() {
    // No [[site]] names the host: the site is named by it.
    mx_rollup("", 3, "mx1.hosting.test");
}

#[test]
fn a_site_table_names_the_site_by_its_mx_hosts_and_sets_its_limit() {
    mx_rollup(
        "[[site]]\nname = \"hosting\"\nmx = [\"*.hosting.test\"]\nconnections_max = 2\n",
        2,
        "hosting",
    );
}
