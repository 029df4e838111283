//! The resolver thread against a real DNS server on loopback: what each
//! kind of answer becomes for the queue (deliver, bounce, retry), in what
//! order MX hosts come, and what the cache saves the server.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use baton::dns::{MxHost, Query, Resolution, Resolver, ResolverConfig};
use baton_tests::dns::{DnsServer, Zone};

/// How long a test waits for one answer; every answer here comes much
/// sooner, so reaching it is a failure, not a slow machine.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

fn resolver_for(server: &DnsServer, timeout: Duration) -> Resolver {
    Resolver::start(ResolverConfig {
        nameservers: vec![server.addr],
        timeout,
        attempts: 1,
    })
    .expect("resolver starts")
}

fn resolver(server: &DnsServer) -> Resolver {
    resolver_for(server, Duration::from_secs(5))
}

/// Asks without waiting; the receiver gets the answer.
fn ask_async(resolver: &Resolver, query: Query) -> mpsc::Receiver<Resolution> {
    let (tx, rx) = mpsc::channel();
    resolver.resolve(
        query,
        Box::new(move |answer| {
            tx.send(answer).expect("test still listening");
        }),
    );
    rx
}

fn ask(resolver: &Resolver, query: Query) -> Resolution {
    ask_async(resolver, query)
        .recv_timeout(ANSWER_TIMEOUT)
        .expect("an answer in time")
}

fn mx(domain: &str) -> Query {
    Query::Mx(domain.to_string())
}

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, last)
}

fn host(name: &str, preference: u16, addresses: &[IpAddr]) -> MxHost {
    MxHost {
        name: name.to_string(),
        preference,
        addresses: addresses.to_vec(),
    }
}

fn hosts(answer: Resolution) -> Vec<MxHost> {
    match answer {
        Resolution::Hosts(hosts) => hosts,
        other => panic!("expected hosts, got {other:?}"),
    }
}

fn names(hosts: &[MxHost]) -> Vec<&str> {
    hosts.iter().map(|h| h.name.as_str()).collect()
}

#[test]
fn mx_hosts_come_by_preference_with_both_families() {
    let server = DnsServer::start(
        Zone::new()
            .mx("example.test", 20, "mx2.example.test")
            .mx("example.test", 10, "mx1.example.test")
            .mx("example.test", 30, "mx3.example.test")
            .a("mx1.example.test", v4(1))
            .aaaa(
                "mx1.example.test",
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            )
            .a("mx2.example.test", v4(2))
            .aaaa(
                "mx3.example.test",
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3),
            ),
    );
    let resolver = resolver(&server);
    assert_eq!(
        hosts(ask(&resolver, mx("example.test"))),
        [
            host(
                "mx1.example.test",
                10,
                &[v4(1).into(), "2001:db8::1".parse().unwrap()]
            ),
            host("mx2.example.test", 20, &[v4(2).into()]),
            host("mx3.example.test", 30, &["2001:db8::3".parse().unwrap()]),
        ]
    );
}

#[test]
fn equal_preferences_are_shuffled_on_every_answer() {
    let server = DnsServer::start(
        Zone::new()
            .mx("spread.test", 10, "a.spread.test")
            .mx("spread.test", 10, "b.spread.test")
            .mx("spread.test", 20, "backup.spread.test")
            .a("a.spread.test", v4(1))
            .a("b.spread.test", v4(2))
            .a("backup.spread.test", v4(3)),
    );
    // A fixed seed: the same answers on every run, so a failure repeats.
    let resolver = Resolver::start_seeded(
        ResolverConfig {
            nameservers: vec![server.addr],
            timeout: Duration::from_secs(5),
            attempts: 1,
        },
        0x5eed,
    )
    .expect("resolver starts");
    let mut orders = HashSet::new();
    let mut queries_after_first = None;
    for _ in 0..40 {
        let hosts = hosts(ask(&resolver, mx("spread.test")));
        let names = names(&hosts);
        assert_eq!(names.len(), 3);
        assert_eq!(names[2], "backup.spread.test", "preference order holds");
        orders.insert(names[..2].join(","));
        // Answers after the first come from the cache, shuffled anew.
        let queries = server.queries();
        assert_eq!(*queries_after_first.get_or_insert(queries), queries);
    }
    assert_eq!(
        orders,
        HashSet::from([
            "a.spread.test,b.spread.test".to_string(),
            "b.spread.test,a.spread.test".to_string(),
        ])
    );
}

#[test]
fn domain_without_mx_is_its_own_host() {
    let server = DnsServer::start(
        Zone::new()
            .a("plain.test", v4(7))
            .aaaa("plain.test", Ipv6Addr::LOCALHOST),
    );
    let resolver = resolver(&server);
    assert_eq!(
        hosts(ask(&resolver, mx("plain.test"))),
        [host(
            "plain.test",
            0,
            &[v4(7).into(), Ipv6Addr::LOCALHOST.into()]
        )]
    );
}

#[test]
fn null_mx_bounces() {
    let server = DnsServer::start(
        Zone::new()
            .mx("nomail.test", 0, ".")
            .a("nomail.test", v4(1)),
    );
    let resolver = resolver(&server);
    assert_eq!(ask(&resolver, mx("nomail.test")), Resolution::NullMx);
}

#[test]
fn nxdomain_bounces_and_is_cached() {
    let server = DnsServer::start(Zone::new().a("other.test", v4(1)));
    let resolver = resolver(&server);
    let answer = ask(&resolver, mx("nowhere.test"));
    assert!(
        matches!(&answer, Resolution::NoSuchDomain(text) if text.contains("nowhere.test")),
        "{answer:?}"
    );
    let queries = server.queries();
    assert_eq!(queries, 1, "NXDOMAIN for the MX ends the lookup");
    assert_eq!(ask(&resolver, mx("nowhere.test")), answer);
    assert_eq!(server.queries(), queries, "the negative answer was cached");
}

#[test]
fn name_with_no_address_records_bounces() {
    // The name exists (it has an MX) but no A/AAAA: NODATA for both.
    let server = DnsServer::start(Zone::new().mx("mxonly.test", 10, "mx.elsewhere.test"));
    let resolver = resolver(&server);
    let answer = ask(&resolver, Query::Host("mxonly.test".to_string()));
    assert!(matches!(answer, Resolution::NoSuchDomain(_)), "{answer:?}");
}

#[test]
fn servfail_is_temporary_and_not_cached() {
    let server = DnsServer::start(Zone::new().servfail("broken.test"));
    let resolver = resolver(&server);
    let answer = ask(&resolver, mx("broken.test"));
    assert!(
        matches!(&answer, Resolution::TempFail(text) if text.contains("SERVFAIL")),
        "{answer:?}"
    );
    let queries = server.queries();
    assert!(queries >= 1);
    assert!(matches!(
        ask(&resolver, mx("broken.test")),
        Resolution::TempFail(_)
    ));
    assert!(server.queries() > queries, "SERVFAIL must be asked again");
}

#[test]
fn silent_server_is_temporary_within_the_timeout() {
    let server = DnsServer::start(Zone::new().silent("slow.test"));
    let timeout = Duration::from_millis(300);
    let resolver = resolver_for(&server, timeout);
    let started = Instant::now();
    let answer = ask(&resolver, mx("slow.test"));
    let elapsed = started.elapsed();
    assert!(
        matches!(&answer, Resolution::TempFail(text) if text.contains("timed out")),
        "{answer:?}"
    );
    assert!(
        elapsed >= timeout,
        "answered before the timeout: {elapsed:?}"
    );
    // One try (attempts = 1): exactly one query reached the server.
    assert_eq!(server.queries(), 1);
}

#[test]
fn mx_hosts_without_address_are_skipped() {
    let server = DnsServer::start(
        Zone::new()
            .mx("partial.test", 10, "gone.partial.test") // NXDOMAIN
            .mx("partial.test", 20, "partial.test") // exists, no address
            .mx("partial.test", 30, "ok.partial.test")
            .a("ok.partial.test", v4(30)),
    );
    let resolver = resolver(&server);
    assert_eq!(
        hosts(ask(&resolver, mx("partial.test"))),
        [host("ok.partial.test", 30, &[v4(30).into()])]
    );
}

#[test]
fn mx_hosts_all_without_address_is_temporary() {
    let server = DnsServer::start(
        Zone::new()
            .mx("dangling.test", 10, "gone1.dangling.test")
            .mx("dangling.test", 20, "gone2.dangling.test"),
    );
    let resolver = resolver(&server);
    assert_eq!(
        ask(&resolver, mx("dangling.test")),
        Resolution::TempFail("no address for any MX host of dangling.test".to_string())
    );
}

#[test]
fn answers_are_cached_for_their_ttl() {
    let server = DnsServer::start(
        Zone::new()
            .ttl(3600)
            .mx("cached.test", 10, "mx.cached.test")
            .a("mx.cached.test", v4(9)),
    );
    let resolver = resolver(&server);
    let first = ask(&resolver, mx("cached.test"));
    let queries = server.queries();
    assert_eq!(queries, 3, "MX, then A and AAAA of the exchange");
    assert_eq!(ask(&resolver, mx("cached.test")), first);
    assert_eq!(server.queries(), queries, "answered from the cache");
}

#[test]
fn identical_queries_at_once_share_one_lookup() {
    let server = DnsServer::start(
        Zone::new()
            .mx("busy.test", 10, "mx.busy.test")
            .a("mx.busy.test", v4(5)),
    );
    let resolver = resolver(&server);
    let pending: Vec<_> = (0..50)
        .map(|_| ask_async(&resolver, mx("busy.test")))
        .collect();
    for answer in pending {
        let answer = answer.recv_timeout(ANSWER_TIMEOUT).expect("an answer");
        assert_eq!(hosts(answer), [host("mx.busy.test", 10, &[v4(5).into()])]);
    }
    // Whether joined in flight or served from the cache: one lookup.
    assert_eq!(server.queries(), 3);
}

#[test]
fn host_query_resolves_one_name() {
    let server = DnsServer::start(Zone::new().a("relay.test", v4(25)));
    let resolver = resolver(&server);
    assert_eq!(
        hosts(ask(&resolver, Query::Host("relay.test".to_string()))),
        [host("relay.test", 0, &[v4(25).into()])]
    );
    assert!(matches!(
        ask(&resolver, Query::Host("missing.test".to_string())),
        Resolution::NoSuchDomain(_)
    ));
}

#[test]
fn truncated_answers_are_fetched_over_tcp() {
    let mut zone = Zone::new();
    for last in 0..120 {
        zone = zone.a("wide.test", v4(last));
    }
    let server = DnsServer::start(zone);
    let resolver = resolver(&server);
    let hosts = hosts(ask(&resolver, Query::Host("wide.test".to_string())));
    assert_eq!(hosts[0].addresses.len(), 120);
}

#[test]
fn literals_need_no_dns() {
    let server = DnsServer::start(Zone::new());
    let resolver = resolver(&server);
    assert_eq!(
        hosts(ask(&resolver, mx("[192.0.2.1]"))),
        [host("[192.0.2.1]", 0, &[v4(1).into()])]
    );
    assert_eq!(
        hosts(ask(&resolver, mx("[IPv6:2001:db8::1]"))),
        [host(
            "[IPv6:2001:db8::1]",
            0,
            &["2001:db8::1".parse().unwrap()]
        )]
    );
    assert_eq!(
        hosts(ask(&resolver, Query::Host("192.0.2.2".to_string()))),
        [host("192.0.2.2", 0, &[v4(2).into()])]
    );
    assert!(matches!(
        ask(&resolver, mx("[not-an-address]")),
        Resolution::NoSuchDomain(_)
    ));
    assert_eq!(server.queries(), 0);
}
