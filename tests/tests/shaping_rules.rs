//! Shaping that listens: a next hop that answers Gmail's `421 4.7.28`
//! ("slow down") gets its site suspended for the rule's duration, then
//! mail flows again; another site is not affected; an operator sees the
//! suspension with `baton site list` and lifts one with `baton site
//! resume`. The reply is classified (`rate_limited`) in its event. After
//! the suspension the site starts again from one connection and grows by
//! one per good transaction, as Gmail asks.

use baton_tests::delivery::{route, wait_status, EventLog};
use baton_tests::sink::Sink;
use baton_tests::{Baton, TestConfig};

/// Unix ms of an event's RFC 3339 `time`.
fn event_ms(event: &serde_json::Value) -> i64 {
    let text = event["time"].as_str().expect("time");
    // 2026-12-06T13:48:10.033Z: seconds of the day are enough here.
    let clock = &text[11..23];
    let (h, rest) = clock.split_once(':').unwrap();
    let (m, s) = rest.split_once(':').unwrap();
    let seconds: f64 = s.parse().unwrap();
    (h.parse::<i64>().unwrap() * 3600 + m.parse::<i64>().unwrap() * 60) * 1000
        + (seconds * 1000.0) as i64
}

#[test]
fn a_421_4_7_28_suspends_its_site_then_mail_flows_and_other_sites_are_untouched() {
    // Each message takes the sink 300 ms, so connections that open
    // together deliver together, and one connection's turns show.
    let throttled = Sink::start("127.0.0.2", &["--delay-data", "300ms"]);
    let other = Sink::start("127.0.0.3", &[]);
    let events = EventLog::new();
    // The operator's rule comes before the shipped one (10 minutes).
    let rule = "[[shaping_rule]]\nenhanced = \"4.7.28\"\naction = \"suspend\"\nduration = \"3s\"\n";
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route("throttled.test", throttled.addr)
            + &route("other.test", other.addr)
            + &events.toml()
            + rule,
        ..TestConfig::default()
    });
    let first = server.submit(
        "alice@sender.test",
        &["throttle-a@throttled.test"],
        "Subject: one\r\n\r\nhi\r\n",
    );
    wait_status(&mut server, &first, "throttle-a@throttled.test", "deferred");
    server.wait_until("the deferred event", || {
        !events.events_of("deferred", &first).is_empty()
    });
    let deferred = events.events_of("deferred", &first)[0].clone();
    assert_eq!(deferred["category"], "rate_limited", "{deferred}");

    // The site (the route's next hop) is suspended, with the rule and
    // the reply as the reason.
    let (ok, list, err) = server.cli(&["site", "list"]);
    assert!(ok, "{err}");
    let site = throttled.addr.to_string();
    let line = list
        .lines()
        .find(|l| l.starts_with(&site))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("suspended") && line.contains("shaping_rule[0]: 421 4.7.28"),
        "{list}"
    );

    // Mail for the suspended site waits; mail for another site does not.
    let waiting: Vec<(String, String)> = (0..6)
        .map(|n| {
            let rcpt = format!("ok{n}@throttled.test");
            let id = server.submit("alice@sender.test", &[&rcpt], "Subject: two\r\n\r\nhi\r\n");
            (id, rcpt)
        })
        .collect();
    let elsewhere = server.submit(
        "alice@sender.test",
        &["ok@other.test"],
        "Subject: three\r\n\r\nhi\r\n",
    );
    wait_status(&mut server, &elsewhere, "ok@other.test", "delivered");
    assert_eq!(throttled.count(), 0, "delivered during the suspension");
    for (id, rcpt) in &waiting {
        wait_status(&mut server, id, rcpt, "delivered");
    }
    server.wait_until("the delivered events", || {
        waiting
            .iter()
            .all(|(id, _)| !events.events_of("delivered", id).is_empty())
    });
    let delivered: Vec<serde_json::Value> = waiting
        .iter()
        .map(|(id, _)| events.events_of("delivered", id)[0].clone())
        .collect();
    let times: Vec<i64> = delivered.iter().map(event_ms).collect();
    let (first_ms, last_ms) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let waited = first_ms - event_ms(&deferred);
    assert!(
        waited >= 2_500,
        "delivered {waited} ms after the 421, inside the 3 s suspension"
    );
    // From one connection, growing: the six go out in turns (1, then 2,
    // then 3 at once), not all six together on six connections, and over
    // more than one connection.
    let connections: std::collections::BTreeSet<&str> = delivered
        .iter()
        .map(|e| e["local"].as_str().expect("local"))
        .collect();
    assert!(
        last_ms - first_ms >= 500,
        "six messages of 300 ms each within {} ms: more than one connection at the start",
        last_ms - first_ms
    );
    assert!(
        connections.len() >= 2,
        "never grew past one connection: {connections:?}"
    );

    // An operator suspends a domain by hand, and lifts it.
    let (ok, out, err) = server.cli(&[
        "site",
        "suspend",
        "other.test",
        "--for",
        "1h",
        "--reason",
        "maintenance",
    ]);
    assert!(ok, "{out}{err}");
    let held = server.submit(
        "alice@sender.test",
        &["held@other.test"],
        "Subject: four\r\n\r\nhi\r\n",
    );
    let (_, list, _) = server.cli(&["site", "show", "other.test"]);
    assert!(list.contains("operator: maintenance"), "{list}");
    assert_eq!(
        other.count(),
        1,
        "only the first message reached other.test"
    );
    let (ok, out, err) = server.cli(&["site", "resume", "other.test"]);
    assert!(ok && out.contains("resumed"), "{out}{err}");
    wait_status(&mut server, &held, "held@other.test", "delivered");
    let (ok, _, err) = server.cli(&["site", "resume", "nowhere.test"]);
    assert!(!ok && err.contains("no queue"), "{err}");
}
