//! What an operator's Prometheus reads off `/metrics` about delivery: the
//! latency and queue-time histograms, outcomes per site and per domain, DNS failures,
//! the oldest queued message, the spool's live data against its capacity.

use baton_tests::delivery::{metric, route, wait_queue_empty};
use baton_tests::sink::Sink;
use baton_tests::{free_port, Baton, TestConfig};

#[test]
fn deliveries_fill_the_histograms_and_the_site_counters() {
    let sink = Sink::start("127.0.0.2", &[]);
    let mut baton = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route("metrics.test", sink.addr),
        ..TestConfig::default()
    });
    for i in 0..5 {
        baton.submit(
            "a@sender.test",
            &[&format!("r{i}@metrics.test")],
            "Subject: m\r\n\r\nhi\r\n",
        );
    }
    baton.wait_until("five at the sink", || sink.count() == 5);
    wait_queue_empty(&mut baton);
    let site = format!("{}:{}", sink.addr.ip(), sink.addr.port());
    let delivered = format!("baton_site_recipients_total{{site=\"{site}\",outcome=\"delivered\"}}");
    baton.wait_for("the site's count", |b| metric(b, &delivered) == 5);
    assert_eq!(
        metric(
            &baton,
            "baton_domain_recipients_total{domain=\"metrics.test\",outcome=\"delivered\"}"
        ),
        5
    );
    assert_eq!(
        metric(
            &baton,
            &format!("baton_site_recipients_total{{site=\"{site}\",outcome=\"failed\"}}")
        ),
        0
    );
    // One transaction per message (one recipient each).
    assert_eq!(metric(&baton, "baton_delivery_latency_seconds_count"), 5);
    assert_eq!(
        metric(&baton, "baton_delivery_latency_seconds_bucket{le=\"+Inf\"}"),
        5
    );
    assert_eq!(metric(&baton, "baton_queue_time_seconds_count"), 5);
    // Nothing left to deliver: no live data, no oldest message; the
    // segments stay preallocated.
    assert_eq!(metric(&baton, "baton_spool_used_bytes"), 0);
    assert!(metric(&baton, "baton_spool_capacity_bytes") > 0);
    assert_eq!(metric(&baton, "baton_queue_oldest_message_age_seconds"), 0);
    // The log writer kept up with a handful of lines.
    assert_eq!(metric(&baton, "baton_log_lines_dropped_total"), 0);
}

#[test]
fn a_held_message_ages_and_a_dead_resolver_counts_as_dns_failures() {
    // Nothing answers DNS on this port: every MX lookup fails for now.
    let dead = free_port("127.0.0.1");
    let mut baton = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: format!(
            "[dns]\nnameservers = [\"127.0.0.1:{dead}\"]\ntimeout = \"200ms\"\nattempts = 1\n"
        ),
        ..TestConfig::default()
    });
    baton.submit(
        "a@sender.test",
        &["r@nowhere.test"],
        "Subject: m\r\n\r\nhi\r\n",
    );
    baton.wait_for("a DNS failure counted", |b| {
        metric(b, "baton_dns_failures_total") >= 1
    });
    assert!(
        metric(&baton, "baton_spool_used_bytes") > 0,
        "one live message"
    );
    baton.wait_for("the message a second old", |b| {
        metric(b, "baton_queue_oldest_message_age_seconds") >= 1
    });
}
