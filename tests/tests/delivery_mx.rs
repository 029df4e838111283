//! Delivery by MX records (RFC 5321 §5.1): a real DNS server in the test
//! process answers for the test domains, and each MX host is a real
//! `loadgen sink` on its own loopback address (127.0.0.2, 127.0.0.3, ...),
//! all on the one port baton contacts MX hosts on (`delivery.mx_port`).
//!
//! Mail goes to the most preferred host that takes it, is spread over
//! hosts of equal preference, goes to the domain's own address when it
//! has no MX; a null MX (RFC 7505) or a domain that does not exist fails
//! at once with a bounce, while a DNS failure (SERVFAIL, no answer) only
//! defers.

use std::collections::BTreeSet;

use baton_tests::delivery::{
    arrivals, at, backup_mx_zone, dns_toml, get_json, header, id_counts, ipv4, metric, mx_baton,
    mx_baton_with, recipient, send, shared_port, unix_ms, wait_queue_empty, EventLog, SendRun,
    DNS_TIMEOUT,
};
use baton_tests::dns::{DnsServer, Zone};
use baton_tests::sink::{replies, Sink, PROBE_CONNECTIONS};
use baton_tests::Baton;

/// Waits until `sinks` together hold every message of `run`, and the queue
/// is empty; then checks each arrived exactly once.
fn wait_all_delivered_once(baton: &mut Baton, run: &SendRun, sinks: &[&Sink]) {
    let expected: BTreeSet<String> = run.accepted_ids().into_iter().collect();
    let total = || sinks.iter().map(|s| s.count()).sum::<usize>();
    baton.wait_until(
        &format!("{} messages at the MX hosts", expected.len()),
        || total() >= expected.len(),
    );
    wait_queue_empty(baton);
    let counts = id_counts(sinks.iter().copied());
    let lost: Vec<_> = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let unexpected: Vec<_> = counts.keys().filter(|id| !expected.contains(*id)).collect();
    assert!(
        lost.is_empty() && duplicated.is_empty() && unexpected.is_empty(),
        "lost {lost:?}, duplicated {duplicated:?}, unexpected {unexpected:?}\n{}",
        baton.log()
    );
}

/// The domain part of every message's `To:` at `sink`.
fn domains_at(sink: &Sink) -> BTreeSet<String> {
    arrivals(sink)
        .iter()
        .map(|a| a.to.rsplit('@').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn each_domain_goes_to_its_most_preferred_mx_exactly_once() {
    let port = shared_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let mx1 = Sink::start_on(at("127.0.0.2", port), &[]);
    let mx2 = Sink::start_on(at("127.0.0.3", port), &[]);
    let b_mx = Sink::start_on(at("127.0.0.4", port), &[]);
    let dns = DnsServer::start(
        Zone::new()
            // Listed backup first: order in DNS must not matter.
            .mx("a.test", 20, "mx2.a.test")
            .mx("a.test", 10, "mx1.a.test")
            .a("mx1.a.test", ipv4("127.0.0.2"))
            .a("mx2.a.test", ipv4("127.0.0.3"))
            .mx("b.test", 10, "mx.b.test")
            .a("mx.b.test", ipv4("127.0.0.4")),
    );
    let mut baton = mx_baton(&dns, port, &[], "");
    let dir = tempfile::tempdir().expect("temp dir");
    let run = send(
        baton.smtp,
        &["-n", "200", "-c", "4", "--domains", "a.test,b.test"],
        dir.path(),
    );
    assert_eq!(run.report["messages_accepted"], 200, "{}", run.report);

    wait_all_delivered_once(&mut baton, &run, &[&mx1, &mx2, &b_mx]);
    assert_eq!(domains_at(&mx1), BTreeSet::from(["a.test".to_string()]));
    assert_eq!(domains_at(&b_mx), BTreeSet::from(["b.test".to_string()]));
    assert_eq!(mx2.count(), 0, "the backup MX got mail while mx1 was up");
    let backup = mx2.stop();
    assert_eq!(backup["connections"], PROBE_CONNECTIONS, "{backup}");
    for (name, sink) in [("mx1.a.test", mx1), ("mx.b.test", b_mx)] {
        let report = sink.stop();
        assert_eq!(
            report["ids"]["duplicated_deliveries"], 0,
            "{name}: {report}"
        );
    }
}

/// Sends 20 messages to a.test, whose MX 10 is `primary` (127.0.0.2;
/// `None`: nothing listens there) and MX 20 a sink on 127.0.0.3: all
/// must arrive at the latter, once. Returns the primary's report.
fn the_backup_mx_gets_everything(primary: Option<&[&str]>) -> Option<serde_json::Value> {
    let port = shared_port(&["127.0.0.2", "127.0.0.3"]);
    let primary = primary.map(|args| Sink::start_on(at("127.0.0.2", port), args));
    let backup = Sink::start_on(at("127.0.0.3", port), &[]);
    let dns = DnsServer::start(backup_mx_zone());
    // A deferral would wait an hour: only moving on delivers in time.
    let mut baton = mx_baton(&dns, port, &["retry_schedule = [\"1h\"]"], "");
    let dir = tempfile::tempdir().expect("temp dir");
    let run = send(
        baton.smtp,
        &["-n", "20", "-c", "2", "--domains", "a.test"],
        dir.path(),
    );
    let mut sinks = vec![&backup];
    sinks.extend(primary.as_ref());
    wait_all_delivered_once(&mut baton, &run, &sinks);
    assert_eq!(backup.count(), 20);
    assert_eq!(metric(&baton, "baton_recipients_deferred_total"), 0);
    primary.map(Sink::stop)
}

#[test]
fn a_refused_connection_to_the_first_mx_moves_on_to_the_second() {
    the_backup_mx_gets_everything(None);
}

#[test]
fn a_421_greeting_from_the_first_mx_moves_on_to_the_second() {
    let primary =
        the_backup_mx_gets_everything(Some(&["--connect-tempfail", "1"])).expect("primary report");
    assert_eq!(primary["messages_accepted"], 0, "{primary}");
    // Baton did try the preferred host first, and heard its 421.
    let refusals = replies(&primary, 421);
    assert!(
        refusals > PROBE_CONNECTIONS,
        "baton never asked mx1: {primary}"
    );
}

#[test]
fn mx_hosts_of_equal_preference_share_the_mail() {
    let port = shared_port(&["127.0.0.2", "127.0.0.3"]);
    let left = Sink::start_on(at("127.0.0.2", port), &[]);
    let right = Sink::start_on(at("127.0.0.3", port), &[]);
    let dns = DnsServer::start(
        Zone::new()
            .mx("a.test", 10, "left.a.test")
            .mx("a.test", 10, "right.a.test")
            .a("left.a.test", ipv4("127.0.0.2"))
            .a("right.a.test", ipv4("127.0.0.3")),
    );
    // One message per connection: 40 connections, each with its own
    // shuffle of the two hosts. A fair shuffle puts all 40 on one side
    // with probability 2^-39.
    let mut baton = mx_baton(
        &dns,
        port,
        &[],
        "[shaping]\nmessages_per_connection_max = 1\n",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let run = send(
        baton.smtp,
        &["-n", "40", "-c", "4", "--domains", "a.test"],
        dir.path(),
    );
    wait_all_delivered_once(&mut baton, &run, &[&left, &right]);
    let (l, r) = (left.count(), right.count());
    assert!(l > 0 && r > 0, "all on one host: {l} at left, {r} at right");
    let connections: u64 = [left.stop(), right.stop()]
        .iter()
        .map(|report| report["connections"].as_u64().expect("connections") - PROBE_CONNECTIONS)
        .sum();
    assert!(
        connections >= 40,
        "{connections} connections for 40 messages at one per connection"
    );
}

#[test]
fn a_domain_without_mx_gets_mail_at_its_own_address() {
    let sink = Sink::start("127.0.0.2", &[]);
    let dns = DnsServer::start(Zone::new().a("implicit.test", ipv4("127.0.0.2")));
    let mut baton = mx_baton(&dns, sink.addr.port(), &[], "");
    let body = "Subject: implicit\r\nX-Test: implicit-mx\r\n\r\nhello\r\n";
    let id = baton.submit("alice@sender.test", &["bob@implicit.test"], body);
    baton.wait_until("the message at 127.0.0.2", || sink.count() >= 1);
    let message = sink.only_message();
    assert!(message.contains("X-Test: implicit-mx\r\n"), "{message}");
    baton.wait_for("bob@implicit.test delivered", |b| {
        recipient(b, &id, 0)["status"] == "delivered"
    });
}

/// What a test of an immediate failure needs: baton with an event log,
/// and the sender's domain (`sender.test`) routed by MX to a sink, for
/// the bounce.
struct BounceSetup {
    baton: Baton,
    sender_mx: Sink,
    events: EventLog,
}

impl BounceSetup {
    /// `zone` gets sender.test's records added.
    fn start(zone: Zone, retry_schedule: &str, dns_timeout: &str) -> (BounceSetup, DnsServer) {
        let sender_mx = Sink::start("127.0.0.2", &[]);
        let dns = DnsServer::start(
            zone.mx("sender.test", 10, "mx.sender.test")
                .a("mx.sender.test", ipv4("127.0.0.2")),
        );
        let events = EventLog::new();
        let baton = mx_baton_with(
            &dns_toml(&dns, dns_timeout),
            sender_mx.addr.port(),
            &[&format!("retry_schedule = {retry_schedule}")],
            &events.toml(),
        );
        let setup = BounceSetup {
            baton,
            sender_mx,
            events,
        };
        (setup, dns)
    }

    /// Sends one message from alice@sender.test to `to`; its queue id.
    fn send(&self, to: &str) -> String {
        let body = "Subject: to fail\r\nX-Test: original\r\n\r\nhello\r\n";
        self.baton.submit("alice@sender.test", &[to], body)
    }

    /// Checks that `to` of message `id` failed on its first attempt, for
    /// good, and that the bounce reached the sender with `status`.
    fn assert_failed_at_once_with_bounce(&mut self, id: &str, to: &str, status: &str) {
        self.baton.wait_for(&format!("{to} failed"), |b| {
            recipient(b, id, 0)["status"] == "failed"
        });
        let shown = recipient(&self.baton, id, 0);
        assert!(shown["next_attempt_ms"].is_null(), "{shown}");

        let sink = &self.sender_mx;
        self.baton
            .wait_until("the bounce at sender.test's MX", || sink.count() >= 1);
        let bounce = &sink.messages()[0];
        let content_type = header(bounce, "Content-Type").unwrap_or_default();
        assert!(
            content_type.starts_with("multipart/report")
                && content_type.contains("report-type=delivery-status"),
            "{bounce}"
        );
        let from = header(bounce, "From").unwrap_or_default();
        assert!(from.contains("MAILER-DAEMON@baton.test"), "{bounce}");
        assert_eq!(
            header(bounce, "To"),
            Some("<alice@sender.test>"),
            "{bounce}"
        );
        for line in [
            format!("Final-Recipient: rfc822; {to}\r\n"),
            "Action: failed\r\n".to_string(),
            format!("Status: {status}\r\n"),
        ] {
            assert!(bounce.contains(&line), "no {line:?} in\n{bounce}");
        }

        // One attempt, and no other: the event log has exactly one
        // outcome for the recipient, and nothing waits for a retry.
        let log = &self.events;
        let bounced =
            |event: &serde_json::Value| event["event"] == "bounce" && event["queue_id"] == id;
        self.baton
            .wait_until("the failure and the bounce in the event log", || {
                let events = log.events();
                events.iter().any(|e| e["recipient"] == to) && events.iter().any(bounced)
            });
        let all = log.events();
        let outcomes: Vec<_> = all.iter().filter(|e| e["recipient"] == to).collect();
        assert_eq!(outcomes.len(), 1, "{outcomes:?}");
        assert_eq!(outcomes[0]["event"], "failed", "{outcomes:?}");
        assert_eq!(outcomes[0]["attempt"], 1, "{outcomes:?}");

        // The bounce itself has the null reverse path (RFC 5321 §4.5.5),
        // so that it can never cause another.
        let bounce_event = all.iter().find(|e| bounced(e)).expect("bounce event");
        let bounce_id = bounce_event["bounce_queue_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no bounce_queue_id: {bounce_event}"));
        let queued_bounce = get_json(&self.baton, &format!("/queue/{bounce_id}"));
        assert_eq!(queued_bounce["sender"], "", "{queued_bounce}");
        assert_eq!(
            queued_bounce["recipients"][0]["address"], "alice@sender.test",
            "{queued_bounce}"
        );
        assert_eq!(metric(&self.baton, "baton_recipients_deferred_total"), 0);
        assert_eq!(metric(&self.baton, "baton_bounces_generated_total"), 1);
        let queue = get_json(&self.baton, "/queue");
        let domain = to.rsplit('@').next().expect("domain");
        let waiting = queue["destinations"]
            .as_array()
            .expect("destinations")
            .iter()
            .any(|d| d["destination"] == domain && d["scheduled"] != 0);
        assert!(!waiting, "{to} is scheduled for a retry: {queue}");
    }
}

#[test]
fn a_null_mx_fails_at_once_and_bounces_to_the_sender() {
    let zone = Zone::new().mx("nullmx.test", 0, ".");
    let (mut setup, _dns) = BounceSetup::start(zone, "[\"1s\"]", DNS_TIMEOUT);
    let id = setup.send("bob@nullmx.test");
    setup.assert_failed_at_once_with_bounce(&id, "bob@nullmx.test", "5.1.10");
}

/// `GET /queue/<id>` shows a recipient that failed as final: the attempt
/// that decided it (a null MX fails on the first), no next attempt, and
/// the reason.
#[test]
fn the_api_shows_a_failed_recipient_as_final() {
    let zone = Zone::new().mx("nullmx.test", 0, ".");
    let (mut setup, _dns) = BounceSetup::start(zone, "[\"1s\"]", DNS_TIMEOUT);
    let id = setup.send("bob@nullmx.test");
    setup.baton.wait_for("bob@nullmx.test failed", |b| {
        recipient(b, &id, 0)["status"] == "failed"
    });
    let shown = recipient(&setup.baton, &id, 0);
    assert_eq!(shown["attempts"], 1, "GET /queue/{id}: {shown}");
    assert!(
        shown["next_attempt_ms"].is_null(),
        "GET /queue/{id}: {shown}"
    );
    let reply = shown["last_reply"].as_str().unwrap_or_default();
    assert!(reply.starts_with("556 5.1.10"), "GET /queue/{id}: {shown}");
}

#[test]
fn a_domain_that_does_not_exist_fails_at_once_and_bounces() {
    let (mut setup, _dns) = BounceSetup::start(Zone::new(), "[\"1s\"]", DNS_TIMEOUT);
    let id = setup.send("bob@nowhere.test");
    setup.assert_failed_at_once_with_bounce(&id, "bob@nowhere.test", "5.1.2");
}

/// A DNS failure for `to`'s domain defers it, by the retry schedule (one
/// hour), with no bounce; baton waits `dns_timeout` for each answer.
fn a_dns_failure_defers(zone: Zone, to: &str, dns_timeout: &str) {
    let (mut setup, _dns) = BounceSetup::start(zone, "[\"1h\"]", dns_timeout);
    let before_ms = unix_ms();
    let id = setup.send(to);
    setup.baton.wait_for(&format!("{to} deferred"), |b| {
        recipient(b, &id, 0)["status"] == "deferred"
    });
    let after_ms = unix_ms();
    let shown = recipient(&setup.baton, &id, 0);
    assert_eq!(shown["attempts"], 1, "{shown}");
    let next = shown["next_attempt_ms"].as_u64().expect("next_attempt_ms");
    let hour_ms = 3_600_000;
    assert!(
        (before_ms + hour_ms..=after_ms + hour_ms).contains(&next),
        "next attempt at {next}, expected an hour after {before_ms}..{after_ms}: {shown}"
    );
    assert_eq!(metric(&setup.baton, "baton_bounces_generated_total"), 0);
    assert_eq!(metric(&setup.baton, "baton_recipients_failed_total"), 0);
    assert_eq!(setup.sender_mx.count(), 0, "a bounce reached the sender");
}

#[test]
fn a_servfail_defers_without_a_bounce() {
    a_dns_failure_defers(
        Zone::new().servfail("broken.test"),
        "bob@broken.test",
        DNS_TIMEOUT,
    );
}

#[test]
fn a_nameserver_that_never_answers_defers_without_a_bounce() {
    a_dns_failure_defers(
        Zone::new().silent("silent.test"),
        "bob@silent.test",
        "500ms",
    );
}
