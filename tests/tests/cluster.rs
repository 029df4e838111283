//! baton nodes sharing one Redis (Debian's `redis-server`, started on a
//! loopback port): a site's connection limit holds for the whole cluster,
//! a `421 4.7.28` heard by one node suspends the site on every node, a
//! hard bounce on one node makes the others refuse the address, a node
//! killed with `kill -9` gives its connections back when its leases
//! lapse, and with Redis gone each node keeps to its share of the limit
//! and loses nothing. Each test skips, saying so, without `redis-server`.

use std::time::{Duration, Instant};

use baton::cluster::leases::Claim;
use baton::cluster::rates::RateAsk;
use baton::cluster::store::{Model, RedisStore, Store};
use baton_tests::delivery::{get_json, id_counts, metric, route, send, unix_ms, wait_status};
use baton_tests::redis::Redis;
use baton_tests::sink::Sink;
use baton_tests::{Baton, TestConfig};

/// The site limit the cluster shares.
const SITE_CONNECTIONS_MAX: u64 = 6;

/// A node of the cluster on `redis`, routing everything to `sink`.
fn node(redis: &Redis, name: &str, sink: &Sink, extra: &str) -> Baton {
    node_with(redis, name, sink, extra, &[])
}

/// [`node`] with more `[delivery]` lines.
fn node_with(redis: &Redis, name: &str, sink: &Sink, extra: &str, delivery: &[&str]) -> Baton {
    let mut lines = vec!["retry_schedule = [\"1s\"]".to_owned()];
    lines.extend(delivery.iter().map(|l| l.to_string()));
    Baton::start_with(TestConfig {
        deliver: true,
        shards: Some(1),
        delivery: lines,
        extra_toml: route("*", sink.addr)
            + &format!("[shaping]\nconnections_max = {SITE_CONNECTIONS_MAX}\n")
            + &format!(
                "[cluster]\nredis = \"{}\"\nnode = \"{name}\"\nlease_ttl = \"3s\"\nheartbeat = \"500ms\"\n",
                redis.url()
            )
            + extra,
        ..TestConfig::default()
    })
}

fn cluster_status(baton: &Baton) -> serde_json::Value {
    get_json(baton, "/cluster")
}

/// Waits until every node sees all of them alive.
fn wait_joined(nodes: &mut [&mut Baton], count: usize) {
    for n in nodes.iter_mut() {
        n.wait_for("every node's heartbeat", |b| {
            let status = cluster_status(b);
            status["connected"] == true && status["nodes"].as_array().map_or(0, Vec::len) == count
        });
    }
}

#[test]
fn three_nodes_never_open_more_connections_to_a_site_than_its_limit() {
    let Some(redis) = Redis::start() else { return };
    // Each message takes the sink 200 ms: every node has more to send
    // than its connections can carry, so each wants the whole limit.
    let sink = Sink::start("127.0.0.2", &["--delay-data", "200ms"]);
    let mut a = node(&redis, "a", &sink, "");
    let mut b = node(&redis, "b", &sink, "");
    let mut c = node(&redis, "c", &sink, "");
    wait_joined(&mut [&mut a, &mut b, &mut c], 3);

    let dir = tempfile::tempdir().unwrap();
    let per_node = 40;
    for (n, run) in [(&a, "a1"), (&b, "b1"), (&c, "c1")] {
        let count = per_node.to_string();
        send(
            n.smtp,
            &["-n", &count, "-c", "4", "--run-id", run],
            dir.path(),
        );
    }
    for n in [&mut a, &mut b, &mut c] {
        n.wait_for_within("its queue delivered", Duration::from_secs(60), |b| {
            metric(b, "baton_queue_recipients") == 0
        });
    }
    // The nodes report their leases to each other through heartbeats.
    let status = cluster_status(&a);
    assert_eq!(status["live_nodes"], 3, "{status}");
    let counts = id_counts([&sink]);
    let report = sink.stop();
    assert_eq!(report["messages_accepted"], 3 * per_node, "{report}");
    assert!(
        counts.values().all(|&n| n == 1),
        "a message delivered twice"
    );
    let peak = report["connections_peak"].as_u64().unwrap();
    assert!(
        peak <= SITE_CONNECTIONS_MAX,
        "{peak} connections at once across the nodes, over the site's limit of {SITE_CONNECTIONS_MAX}"
    );
    // Alone, each node would have opened six: the three shared them, and
    // used more than one node's share.
    assert!(
        peak > SITE_CONNECTIONS_MAX / 3,
        "peak {peak}: the limit was never used"
    );
}

#[test]
fn three_nodes_keep_to_a_site_message_rate_within_ten_percent() {
    let Some(redis) = Redis::start() else { return };
    let sink = Sink::start("127.0.0.2", &[]);
    let rate = 40.0;
    let site =
        format!("[[site]]\nname = \"sink\"\nmx = [\"127.0.0.2\"]\nmessage_rate_max = {rate}\n");
    let mut a = node(&redis, "a", &sink, &site);
    let mut b = node(&redis, "b", &sink, &site);
    let mut c = node(&redis, "c", &sink, &site);
    wait_joined(&mut [&mut a, &mut b, &mut c], 3);
    let dir = tempfile::tempdir().unwrap();
    let per_node = 80;
    for (n, run) in [(&a, "a1"), (&b, "b1"), (&c, "c1")] {
        let count = per_node.to_string();
        send(
            n.smtp,
            &["-n", &count, "-c", "4", "--run-id", run],
            dir.path(),
        );
    }
    // The rate over the run, from the first message the sink counts to
    // the last (alone, each node would send at the whole rate: 120/s).
    let total = 3 * per_node;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first: Option<(Instant, usize)> = None;
    let last = loop {
        let count = sink.count();
        let now = Instant::now();
        if first.is_none() && count > 0 {
            first = Some((now, count));
        }
        if count >= total {
            break now;
        }
        assert!(now < deadline, "{count} of {total} delivered in 60 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    let (start, counted) = first.unwrap();
    let measured = (total - counted) as f64 / (last - start).as_secs_f64();
    eprintln!("{measured:.1} messages/s across the nodes, for a site rate of {rate}");
    assert!(
        (rate * 0.9..=rate * 1.1).contains(&measured),
        "{measured:.1} messages/s across the three nodes, for a site rate of {rate}"
    );
    let counts = id_counts([&sink]);
    assert_eq!(counts.len(), total);
    assert!(
        counts.values().all(|&n| n == 1),
        "a message delivered twice"
    );
}

#[test]
fn two_nodes_sending_from_one_source_keep_to_its_warm_up_cap_together() {
    let Some(redis) = Redis::start() else { return };
    let sink = Sink::start("127.0.0.2", &[]);
    // One source name on both nodes (a floating address, say), 10
    // messages on its first day.
    let egress = "[[source]]\nname = \"ip1\"\naddress = \"127.0.0.1\"\nwarmup = [\"1d:10\"]\n\n\
                  [[pool]]\nname = \"warm\"\nsources = [\"ip1\"]\n";
    let pool = ["pool = \"warm\""];
    let mut a = node_with(&redis, "a", &sink, egress, &pool);
    let mut b = node_with(&redis, "b", &sink, egress, &pool);
    wait_joined(&mut [&mut a, &mut b], 2);
    let dir = tempfile::tempdir().unwrap();
    for (n, run) in [(&a, "a1"), (&b, "b1")] {
        send(
            n.smtp,
            &["-n", "10", "-c", "2", "--run-id", run],
            dir.path(),
        );
    }
    // Both nodes stop at the cap: each suspends the source's lane until
    // the next hour, the rest of the mail waiting.
    let site = sink.addr.to_string();
    for n in [&mut a, &mut b] {
        n.wait_for_within("the source's lane rested", Duration::from_secs(30), |b| {
            get_json(b, "/sites")
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| {
                    s["site"] == site.as_str() && s["paused_until_ms"].as_u64().unwrap_or(0) > 0
                })
        });
    }
    assert_eq!(
        sink.count(),
        10,
        "the two nodes sent more than the source's cap"
    );
    let waiting = metric(&a, "baton_queue_recipients") + metric(&b, "baton_queue_recipients");
    assert_eq!(waiting, 10);
    let today = unix_ms() / 86_400_000;
    let counted = redis.command(&["GET", &format!("baton:warmup:ip1:day:{today}")]);
    assert_eq!(
        counted.as_deref(),
        Some("10"),
        "the cluster's count of the day"
    );
}

#[test]
fn a_4_7_28_heard_by_one_node_suspends_the_site_on_every_node_within_a_second() {
    let Some(redis) = Redis::start() else { return };
    let sink = Sink::start("127.0.0.2", &[]);
    let rule =
        "[[shaping_rule]]\nenhanced = \"4.7.28\"\naction = \"suspend\"\nduration = \"60s\"\n";
    let mut a = node(&redis, "a", &sink, rule);
    let mut b = node(&redis, "b", &sink, rule);
    let mut c = node(&redis, "c", &sink, rule);
    wait_joined(&mut [&mut a, &mut b, &mut c], 3);

    let id = a.submit(
        "alice@sender.test",
        &["throttle-1@gmail.test"],
        "Subject: x\r\n\r\nhi\r\n",
    );
    wait_status(&mut a, &id, "throttle-1@gmail.test", "deferred");
    let suspended_on_a = Instant::now();
    let site = sink.addr.to_string();
    let suspended = |b: &Baton| {
        get_json(b, "/sites")
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["site"] == site.as_str() && s["paused_until_ms"].as_u64().unwrap_or(0) > 0)
    };
    for other in [&mut b, &mut c] {
        other.wait_for_within(
            "the site suspended here too",
            Duration::from_secs(5),
            suspended,
        );
    }
    let took = suspended_on_a.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the suspension took {took:?} to reach the others"
    );

    // The others hold their mail for the site too.
    let held = b.submit(
        "bob@sender.test",
        &["ok@gmail.test"],
        "Subject: y\r\n\r\nhi\r\n",
    );
    wait_status(&mut b, &held, "ok@gmail.test", "pending");
    let (ok, list, err) = c.cli(&["site", "list"]);
    assert!(ok, "{err}");
    assert!(list.contains("4.7.28"), "{list}");
    assert_eq!(sink.count(), 0, "delivered during the suspension");

    // An operator's resume on one node resumes every node.
    let (ok, _, err) = c.cli(&["site", "resume", &site]);
    assert!(ok, "{err}");
    wait_status(&mut b, &held, "ok@gmail.test", "delivered");
}

#[test]
fn a_hard_bounce_on_one_node_makes_another_refuse_the_address() {
    let Some(redis) = Redis::start() else { return };
    let sink = Sink::start("127.0.0.2", &[]);
    let mut a = node(&redis, "a", &sink, "");
    let mut b = node(&redis, "b", &sink, "");
    wait_joined(&mut [&mut a, &mut b], 2);

    let id = a.submit(
        "alice@sender.test",
        &["bounce-7@example.test"],
        "Subject: x\r\n\r\nhi\r\n",
    );
    wait_status(&mut a, &id, "bounce-7@example.test", "failed");
    b.wait_for_within("the bounce on b's list", Duration::from_secs(5), |b| {
        let (ok, out, _) = b.cli(&["suppression", "show", "bounce-7@example.test"]);
        ok && out.contains("bounce")
    });
    let mut smtp = b.connect();
    smtp.ehlo("client.test");
    assert_eq!(smtp.cmd("MAIL FROM:<alice@sender.test>").code, 250);
    let reply = smtp.cmd("RCPT TO:<bounce-7@example.test>");
    assert_eq!(
        reply.code, 550,
        "b took a recipient a saw hard-bounce: {reply:?}"
    );

    // An operator's removal on b reaches a.
    let (ok, _, err) = b.cli(&["suppression", "remove", "bounce-7@example.test"]);
    assert!(ok, "{err}");
    a.wait_for_within("the removal on a's list", Duration::from_secs(5), |a| {
        let (_, out, _) = a.cli(&["suppression", "show", "bounce-7@example.test"]);
        !out.contains("bounce")
    });
}

#[test]
fn a_node_killed_gives_its_connections_back_when_its_leases_lapse() {
    let Some(redis) = Redis::start() else { return };
    let sink = Sink::start("127.0.0.2", &["--delay-data", "300ms"]);
    let mut a = node(&redis, "a", &sink, "");
    let mut b = node(&redis, "b", &sink, "");
    wait_joined(&mut [&mut a, &mut b], 2);
    let dir = tempfile::tempdir().unwrap();
    // a takes the whole limit, then dies holding it.
    send(
        a.smtp,
        &["-n", "200", "-c", "8", "--run-id", "a1"],
        dir.path(),
    );
    a.wait_for("a holding every lease", |a| {
        cluster_status(a)["leases"][0]["leases"] == SITE_CONNECTIONS_MAX
    });
    a.kill9();
    let killed = Instant::now();
    send(
        b.smtp,
        &["-n", "200", "-c", "8", "--run-id", "b1"],
        dir.path(),
    );
    b.wait_for_within("b holding every lease", Duration::from_secs(10), |b| {
        cluster_status(b)["leases"][0]["leases"] == SITE_CONNECTIONS_MAX
    });
    let took = killed.elapsed();
    // The lease lives 3 s; b asks every 200 ms when refused.
    assert!(
        took < Duration::from_secs(5),
        "a's leases lapsed after {took:?}"
    );
    assert!(
        took >= Duration::from_secs(1),
        "b took a's leases at once ({took:?}): a's were never held"
    );
}

#[test]
fn with_redis_gone_nodes_keep_to_their_share_lose_nothing_and_share_again_when_it_is_back() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let sink = Sink::start("127.0.0.2", &["--delay-data", "100ms"]);
    let mut a = node(&redis, "a", &sink, "");
    let mut b = node(&redis, "b", &sink, "");
    wait_joined(&mut [&mut a, &mut b], 2);
    let dir = tempfile::tempdir().unwrap();

    redis.kill();
    for n in [&mut a, &mut b] {
        n.wait_for("the fallback to its share", |b| {
            metric(b, "baton_cluster_shared") == 0
                && metric(b, "baton_cluster_fallbacks_total") == 1
        });
    }
    assert!(a.log().contains("Redis out of reach"), "{}", a.log());
    // A change made meanwhile waits, and reaches the others later.
    let (ok, _, err) = a.cli(&["suppression", "add", "while-down@example.test"]);
    assert!(ok, "{err}");
    for (n, run) in [(&a, "a1"), (&b, "b1")] {
        send(
            n.smtp,
            &["-n", "60", "-c", "4", "--run-id", run],
            dir.path(),
        );
    }
    for n in [&mut a, &mut b] {
        n.wait_for_within(
            "its queue delivered without Redis",
            Duration::from_secs(60),
            |b| metric(b, "baton_queue_recipients") == 0,
        );
    }
    assert_eq!(sink.count(), 120);
    let status = cluster_status(&a);
    assert_eq!(status["connected"], false, "{status}");

    redis.spawn();
    for n in [&mut a, &mut b] {
        n.wait_for("limits shared again", |b| {
            metric(b, "baton_cluster_shared") == 1
        });
    }
    b.wait_for_within(
        "the suppression made during the outage",
        Duration::from_secs(5),
        |b| {
            let (ok, out, _) = b.cli(&["suppression", "show", "while-down@example.test"]);
            ok && out.contains("while-down@example.test")
        },
    );
    wait_joined(&mut [&mut a, &mut b], 2);
    for (n, run) in [(&a, "a2"), (&b, "b2")] {
        send(
            n.smtp,
            &["-n", "60", "-c", "4", "--run-id", run],
            dir.path(),
        );
    }
    for n in [&mut a, &mut b] {
        n.wait_for_within("its queue delivered", Duration::from_secs(60), |b| {
            metric(b, "baton_queue_recipients") == 0
        });
    }
    let counts = id_counts([&sink]);
    let report = sink.stop();
    assert_eq!(report["messages_accepted"], 240, "{report}");
    assert!(
        counts.values().all(|&n| n == 1),
        "a message delivered twice"
    );
    // Each node's share was 3 of 6: together never over the limit.
    let peak = report["connections_peak"].as_u64().unwrap();
    assert!(peak <= SITE_CONNECTIONS_MAX, "peak {peak}");
}

/// The simulator's cluster runs against `store::Model`; this runs one
/// sequence of lease claims and rate asks through the real scripts in
/// Redis and through the model, and wants the same answers: leases shared
/// up to a limit, kept for open connections over it, given back, lapsed;
/// GCRA tokens granted up to the burst, then none until time passes.
#[test]
fn the_simulators_model_of_redis_answers_as_redis_does() {
    let Some(redis) = Redis::start() else { return };
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let mut real = RedisStore {
        con: &mut con,
        calls: 0,
    };
    let mut model = Model::default();
    let claim = |site: &str, want: usize, keep: usize, limit: usize| Claim {
        site: site.into(),
        lane: "ip1".into(),
        want,
        keep,
        limit,
    };
    let mut both = |node: &str, ttl: u64, claims: &[Claim], model: &mut Model| {
        model.now_ms = unix_ms();
        let expected = real.claim(node, ttl, claims).unwrap();
        let got = model.claim(node, ttl, claims).unwrap();
        assert_eq!(got, expected, "{node} claiming {claims:?}");
        got
    };
    const LONG: u64 = 60_000;
    assert_eq!(both("a", LONG, &[claim("s1", 4, 0, 6)], &mut model), [4]);
    assert_eq!(
        both(
            "b",
            LONG,
            &[claim("s1", 6, 0, 6), claim("s2", 3, 0, 6)],
            &mut model
        ),
        [2, 3]
    );
    // Over the limit only for what is open.
    assert_eq!(both("c", LONG, &[claim("s1", 5, 1, 6)], &mut model), [1]);
    // a lowers its limit and gives back; b then gets more.
    assert_eq!(both("a", LONG, &[claim("s1", 1, 1, 2)], &mut model), [1]);
    assert_eq!(both("b", LONG, &[claim("s1", 6, 0, 6)], &mut model), [4]);
    assert_eq!(both("b", LONG, &[claim("s2", 0, 0, 6)], &mut model), [0]);
    // A short lease lapses: d's three go to e once it has.
    assert_eq!(both("d", 300, &[claim("s3", 3, 0, 3)], &mut model), [3]);
    assert_eq!(both("e", LONG, &[claim("s3", 3, 0, 3)], &mut model), [0]);
    let lapsed = unix_ms() + 400;
    while unix_ms() < lapsed {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(both("e", LONG, &[claim("s3", 3, 0, 3)], &mut model), [3]);

    // GCRA at 1 token a second, a burst of 10: 4, then the 6 left, then
    // none until a second has passed.
    let ask = |want: u64| RateAsk {
        site: "s1".into(),
        rate: 1,
        burst: 10,
        want,
    };
    for (want, granted) in [(4, 4), (10, 6), (3, 0)] {
        model.now_ms = unix_ms();
        let expected = real.take_rates(&[ask(want)]).unwrap();
        let got = model.take_rates(&[ask(want)]).unwrap();
        assert_eq!(got, expected, "asking {want}");
        assert_eq!(got, [granted], "asking {want}");
    }
}
