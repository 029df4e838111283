//! The destination table's rules, one behaviour per test.

use super::*;
use crate::route::destination_of;

fn item(id: u64, recipient: u32) -> QueuedRecipient {
    QueuedRecipient {
        queue_id: QueueId(id),
        recipient,
        attempts: 0,
    }
}

fn waiter(conn: u64) -> Waiter {
    Waiter { shard: 0, conn }
}

fn lane() -> Arc<str> {
    DEFAULT_LANE.into()
}

/// Open a connection to `d` from no particular source.
fn open(d: Destination) -> Action {
    Action::Open(d, lane())
}

fn three() -> SiteShaping {
    SiteShaping {
        connections_max: 3,
        message_rate_max: 0,
    }
}

/// Every destination is delivered by MX; the answers are given by hand.
fn mx_queues() -> Queues {
    Queues::new(Box::new(|_| Shaping::default()))
        .with_sites(Box::new(|_| SiteOf::Mx), Box::new(|_| None))
}

fn opens(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Open(..)))
        .count()
}

#[test]
fn mx_rollup_puts_domains_with_the_same_mx_in_one_site_under_its_limit() {
    let queues = mx_queues();
    let domains: Vec<Destination> = (0..6)
        .map(|i| Destination::new(format!("d{i}.example")))
        .collect();
    // Before their MX answers, each domain gets one connection: the one
    // that asks.
    let mut opened = 0;
    for (i, d) in domains.iter().enumerate() {
        for m in 0..5 {
            opened += opens(&queues.push(d, &[item(i as u64 * 10 + m, 0)], Status::Pending, 0));
        }
    }
    opened += opens(&queues.plan(0));
    assert_eq!(opened, 6, "one asking connection per domain");
    // The answers: all six share the MX hosts of one site of 3.
    let joined: Vec<bool> = domains
        .iter()
        .map(|d| queues.join(d, &lane(), "google", three(), 1))
        .collect();
    assert_eq!(joined, [true, true, true, false, false, false]);
    // The three refused close unused; the site stays at its limit.
    for d in &domains[3..] {
        assert!(queues.closed(d, &lane(), None, 2).is_empty(), "no room yet");
    }
    assert_eq!(opens(&queues.plan(3)), 0);
    let sites = queues.sites_at(0);
    let google = sites.iter().find(|s| s.site == "google").unwrap();
    assert_eq!(
        (google.domains, google.connections, google.ready),
        (6, 3, 30)
    );
    assert_eq!(google.waiting, 3, "{google:?}");
    // A connection of the site ends: the first domain in line gets it.
    assert_eq!(
        queues.closed(&domains[0], &lane(), None, 4),
        [open(domains[3].clone())]
    );
    // The domain keeps its own row, naming its site.
    let row = queues
        .summary_at(0)
        .into_iter()
        .find(|s| s.destination == "d4.example")
        .unwrap();
    assert_eq!(row.site.as_deref(), Some("google"));
}

#[test]
fn an_idle_connection_makes_room_for_a_domain_in_line() {
    let queues = mx_queues();
    let a = Destination::new("a.example");
    let b = Destination::new("b.example");
    queues.push(&a, &[item(1, 0)], Status::Pending, 0);
    assert!(queues.join(
        &a,
        &lane(),
        "site",
        SiteShaping {
            connections_max: 1,
            message_rate_max: 0
        },
        0
    ));
    // a's connection carries its message, then waits idle.
    assert!(matches!(
        queues.take(&a, waiter(1), true, 0),
        Take::Batch(_)
    ));
    assert_eq!(queues.take(&a, waiter(1), true, 0), Take::Idle);
    // b learned the same site earlier: it is queued straight into it, and
    // finds no room.
    queues.join(
        &b,
        &lane(),
        "site",
        SiteShaping {
            connections_max: 1,
            message_rate_max: 0,
        },
        0,
    );
    assert!(queues
        .push(&b, &[item(2, 0)], Status::Pending, 1)
        .is_empty());
    // The sweep puts b in line and wakes a's idle connection, which is
    // told to leave.
    assert_eq!(queues.plan(1), [Action::Wake(waiter(1))]);
    assert_eq!(queues.take(&a, waiter(1), true, 1), Take::Leave);
    assert_eq!(
        queues.closed(&a, &lane(), Some(waiter(1)), 2),
        [open(b.clone())]
    );
}

#[test]
fn a_learned_site_is_joined_at_once_the_next_time() {
    let queues = mx_queues();
    let d = Destination::new("d.example");
    queues.push(&d, &[item(1, 0)], Status::Pending, 0);
    queues.join(&d, &lane(), "big", SiteShaping::default(), 0);
    queues.take(&d, waiter(1), false, 0);
    queues.closed(&d, &lane(), None, 0);
    queues.plan(1);
    assert!(queues.summary_at(0).is_empty(), "forgotten");
    // Queued again: straight into its site, more than one connection.
    let mut opened = 0;
    for id in 2..12 {
        opened += opens(&queues.push(&d, &[item(id, 0)], Status::Pending, 2));
    }
    assert_eq!(opened, 10);
    assert_eq!(queues.summary_at(0)[0].site.as_deref(), Some("big"));
}

#[test]
fn a_site_suspension_holds_every_member_and_a_domain_pause_only_its_domain() {
    let queues = mx_queues();
    let a = Destination::new("a.example");
    let b = Destination::new("b.example");
    let c = Destination::new("c.example");
    for (i, d) in [&a, &b, &c].into_iter().enumerate() {
        queues.join(
            d,
            &lane(),
            if i < 2 { "google" } else { "other" },
            SiteShaping::default(),
            0,
        );
    }
    // A rule's suspension for a's site holds b too, not c.
    assert!(queues.suspend_site_of(&a, &lane(), 10_000, "421 4.7.28".into(), 0));
    let mut actions = Vec::new();
    for (i, d) in [&a, &b, &c].into_iter().enumerate() {
        actions.extend(queues.push(d, &[item(i as u64, 0)], Status::Pending, 1));
    }
    actions.extend(queues.plan(1));
    assert_eq!(actions, [open(c.clone())]);
    let google = queues
        .sites_at(0)
        .into_iter()
        .find(|s| s.site == "google")
        .unwrap();
    assert_eq!(google.suspended.as_deref(), Some("421 4.7.28"));
    // The operator lifts it by the site's name.
    assert!(queues.resume("google"));
    assert_eq!(opens(&queues.plan(2)), 2);
    // A DNS failure of b pauses b alone.
    queues.failed(&b, &lane(), false, 5_000, 60_000, 3);
    queues.closed(&b, &lane(), None, 3);
    queues.closed(&a, &lane(), None, 3);
    let mut actions = queues.push(&a, &[item(10, 0)], Status::Pending, 4);
    actions.extend(queues.push(&b, &[item(11, 0)], Status::Pending, 4));
    actions.extend(queues.plan(4));
    assert!(!actions.is_empty());
    assert!(
        actions.iter().all(|x| *x == open(a.clone())),
        "b is paused: {actions:?}"
    );
    // An operator's suspension of a configured site before any mail.
    let named = Queues::new(Box::new(|_| Shaping::default())).with_sites(
        Box::new(|_| SiteOf::Mx),
        Box::new(|name| (name == "yahoo").then(SiteShaping::default)),
    );
    named.suspend("yahoo", 10_000, "operator".into(), 0);
    let y = Destination::new("y.example");
    named.push(&y, &[item(1, 0)], Status::Pending, 1);
    assert!(
        !named.join(&y, &lane(), "yahoo", SiteShaping::default(), 1),
        "a suspended site takes no connection"
    );
    named.closed(&y, &lane(), None, 1);
    assert_eq!(opens(&named.plan(2)), 0);
}

#[test]
fn pending_is_ready_and_deferred_is_scheduled() {
    let queues = Queues::default();
    let x = destination_of(b"a@x.org");
    queues.push(&x, &[item(1, 0)], Status::Pending, 0);
    queues.push(
        &destination_of(b"b@X.org"),
        &[item(2, 0)],
        Status::Pending,
        0,
    );
    let deferred = Status::Deferred {
        attempts: 1,
        next_attempt_ms: 5,
    };
    queues.push(&destination_of(b"c@y.org"), &[item(3, 0)], deferred, 0);
    let summary = queues.summary_at(0);
    assert_eq!(summary.len(), 2);
    assert_eq!((summary[0].ready, summary[0].scheduled), (2, 0));
    assert_eq!((summary[1].ready, summary[1].scheduled), (0, 1));
}

#[test]
fn pushes_open_connections_up_to_the_limit() {
    let shaping = Shaping {
        connections_max: 2,
        ..Shaping::default()
    };
    let queues = Queues::new(Box::new(move |_| shaping));
    let d = destination_of(b"a@x.org");
    let mut opened = 0;
    for id in 0..10 {
        for action in queues.push(&d, &[item(id, 0)], Status::Pending, 0) {
            assert_eq!(action, open(d.clone()));
            opened += 1;
        }
    }
    assert_eq!(opened, 2);
    assert_eq!(queues.summary_at(0)[0].connections, 2);
}

#[test]
fn take_groups_one_message_and_idles_when_empty() {
    let queues = Queues::default();
    let d = destination_of(b"a@x.org");
    let one_message = [item(7, 0), item(7, 1), item(7, 2)];
    let actions = queues.push(&d, &one_message, Status::Pending, 0);
    assert_eq!(actions, [open(d.clone())], "one connection per message");
    queues.push(&d, &[item(8, 0)], Status::Pending, 0);
    let Take::Batch(batch) = queues.take(&d, waiter(1), true, 0) else {
        panic!("expected a batch");
    };
    assert_eq!(
        batch.iter().map(|i| i.recipient).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(matches!(queues.take(&d, waiter(1), true, 0), Take::Batch(b) if b.len() == 1));
    assert_eq!(queues.take(&d, waiter(1), true, 0), Take::Idle);
    // The next push wakes the idle connection instead of opening one.
    let actions = queues.push(&d, &[item(9, 0)], Status::Pending, 0);
    assert_eq!(actions, [Action::Wake(waiter(1))]);
}

#[test]
fn plan_promotes_due_recipients() {
    let queues = Queues::default();
    let d = destination_of(b"a@x.org");
    queues.schedule(&d, item(1, 0), 100);
    assert!(queues.plan(99).is_empty());
    assert_eq!(queues.plan(100), [open(d.clone())]);
    assert_eq!(queues.summary_at(0)[0].ready, 1);
}

#[test]
fn failures_pause_and_halve_then_recover() {
    let shaping = Shaping {
        connections_max: 8,
        ..Shaping::default()
    };
    let queues = Queues::new(Box::new(move |_| shaping));
    let d = destination_of(b"a@x.org");
    queues.push(&d, &[item(1, 0)], Status::Pending, 0);
    queues.failed(&d, &lane(), true, 1000, 60_000, 0);
    queues.closed(&d, &lane(), None, 0);
    for id in 2..20 {
        queues.push(&d, &[item(id, 0)], Status::Pending, 10);
    }
    assert!(queues.plan(500).is_empty(), "paused");
    let opened = queues.plan(1000).len();
    assert_eq!(opened, 4, "limit halved from 8");
    // A second failure doubles the pause.
    queues.failed(&d, &lane(), true, 1000, 60_000, 1000);
    assert!(queues.summary_at(0)[0].paused_until_ms >= 3000);
    queues.succeeded(&d, &lane(), 1000);
}

#[test]
fn a_suspension_stops_the_open_connections_of_its_site_too() {
    let shaping = Shaping {
        connections_max: 4,
        ..Shaping::default()
    };
    let queues = Queues::new(Box::new(move |_| shaping));
    let d = destination_of(b"a@x.org");
    for id in 0..10 {
        queues.push(&d, &[item(id, 0)], Status::Pending, 0);
    }
    // Two connections at work; one hears "slow down".
    let batch = |take| matches!(take, Take::Batch(_));
    assert!(batch(queues.take_in_site(
        &d,
        &lane(),
        waiter(1),
        true,
        0,
        &mut |_| false
    )));
    assert!(batch(queues.take_in_site(
        &d,
        &lane(),
        waiter(2),
        true,
        0,
        &mut |_| false
    )));
    queues.suspend_site_of(&d, &lane(), 10_000, "421 4.7.28".into(), 5);
    // Neither takes more: both leave, mail waits.
    for conn in [1, 2] {
        let take = queues.take_in_site(&d, &lane(), waiter(conn), true, 6, &mut |_| false);
        assert!(matches!(take, Take::Leave), "{take:?}");
    }
    // Over: work again. A pause after failures lets open connections finish.
    assert!(batch(queues.take_in_site(
        &d,
        &lane(),
        waiter(1),
        true,
        10_000,
        &mut |_| false
    )));
    queues.failed(&d, &lane(), true, 5_000, 60_000, 10_001);
    assert!(batch(queues.take_in_site(
        &d,
        &lane(),
        waiter(1),
        true,
        10_002,
        &mut |_| false
    )));
    // An operator's suspension of the site stops them too.
    queues.suspend("x.org", 900_000, "operator".into(), 10_003);
    let take = queues.take_in_site(&d, &lane(), waiter(1), true, 10_004, &mut |_| false);
    assert!(matches!(take, Take::Leave), "{take:?}");
}

/// A rule's suspension that falls inside a longer pause (connections to
/// the site failed from this source) still makes the open connections
/// leave, for as long as the suspension lasts; then, the pause going on,
/// they may finish their work again. (Found by the simulator: the
/// suspension was dropped, the pause being longer, and open connections
/// went on taking mail.)
#[test]
fn a_suspension_inside_a_longer_pause_still_stops_the_open_connections() {
    let queues = Queues::new(Box::new(|_| Shaping::default()));
    let d = destination_of(b"a@x.org");
    for id in 0..10 {
        queues.push(&d, &[item(id, 0)], Status::Pending, 0);
    }
    let take = |at| queues.take_in_site(&d, &lane(), waiter(1), true, at, &mut |_| false);
    assert!(matches!(take(0), Take::Batch(_)));
    // Failures in a row: a pause of 8 s from 3 s on.
    for at in 0..4 {
        queues.failed(&d, &lane(), true, 1_000, 60_000, at * 1_000);
    }
    assert!(
        matches!(take(3_001), Take::Batch(_)),
        "a pause lets it finish"
    );
    queues.suspend_site_of(&d, &lane(), 5_000, "421 4.7.28".into(), 3_002);
    let during = take(3_003);
    assert!(matches!(during, Take::Leave), "{during:?}");
    assert_eq!(
        queues.summary_at(3_003)[0].suspended.as_deref(),
        Some("421 4.7.28")
    );
    // The suspension over, the pause not: open connections finish.
    assert!(matches!(take(5_001), Take::Batch(_)));
    assert!(queues.summary_at(5_001)[0].suspended.is_none());
    assert!(queues.summary_at(5_001)[0].paused_until_ms > 5_001);
}

#[test]
fn a_suspension_pauses_then_restarts_from_one_connection() {
    let shaping = Shaping {
        connections_max: 8,
        ..Shaping::default()
    };
    let queues = Queues::new(Box::new(move |_| shaping));
    let d = destination_of(b"a@x.org");
    // Twenty ready, and the connections they opened gone again.
    let mut opened = 0;
    for id in 0..20 {
        opened += queues.push(&d, &[item(id, 0)], Status::Pending, 0).len();
    }
    assert_eq!(opened, 8);
    for _ in 0..opened {
        queues.closed(&d, &lane(), None, 0);
    }
    assert!(queues.suspend_site_of(&d, &lane(), 600_000, "421 4.7.28".into(), 0));
    assert!(
        !queues.suspend_site_of(&d, &lane(), 600_000, "421 4.7.28".into(), 1),
        "already"
    );
    assert!(queues.plan(599_999).is_empty(), "suspended");
    assert_eq!(
        queues.summary_at(0)[0].suspended.as_deref(),
        Some("421 4.7.28")
    );
    assert_eq!(queues.plan(600_000).len(), 1, "one connection after");
    // Each good transaction allows one more.
    queues.succeeded(&d, &lane(), 600_001);
    assert_eq!(queues.plan(600_001).len(), 1);
    // An operator lifts it all.
    queues.suspend_site_of(&d, &lane(), 900_000, "again".into(), 600_001);
    assert!(queues.resume("x.org"));
    assert!(queues.summary_at(0)[0].suspended.is_none());
    assert_eq!(queues.summary_at(0)[0].connections_limit, 8);
    assert!(!queues.resume("unknown.org"));
    // A suspension outlives an empty queue: an operator may suspend a
    // site before mail for it arrives.
    queues.suspend("quiet.org", 900_000, "operator".into(), 600_001);
    queues.plan(600_002);
    assert!(queues
        .summary_at(0)
        .iter()
        .any(|s| s.destination == "quiet.org"));
}

#[test]
fn a_sweep_visits_what_changed_and_what_came_due_and_nothing_else() {
    let queues = Queues::default();
    for d in 0..100u64 {
        let destination = Destination::new(format!("d{d}.example"));
        let status = Status::Deferred {
            attempts: 1,
            next_attempt_ms: 1_000 + d * 10,
        };
        queues.push(&destination, &[item(d, 0)], status, 0);
    }
    // The pushes made them dirty: one sweep indexes them, opens nothing.
    assert!(queues.plan(0).is_empty());
    assert_eq!(queues.inner.lock().unwrap().due.len(), 100);
    // Two come due: exactly their connections open.
    let actions = queues.plan(1_010);
    assert_eq!(
        actions,
        [
            open(Destination::new("d0.example")),
            open(Destination::new("d1.example"))
        ]
    );
    assert_eq!(queues.inner.lock().unwrap().due.len(), 98);
    // A suspension of an idle destination is kept until it ends, then
    // the destination is forgotten.
    queues.suspend("quiet.example", 5_000, "operator".into(), 1_010);
    queues.plan(1_011);
    assert!(queues
        .summary_at(0)
        .iter()
        .any(|s| s.destination == "quiet.example"));
    queues.plan(5_000);
    assert!(!queues
        .summary_at(0)
        .iter()
        .any(|s| s.destination == "quiet.example"));
}

#[test]
fn destinations_of_one_site_share_its_connections() {
    let queues = Queues::new(Box::new(|_| Shaping::default())).with_sites(
        Box::new(|d| match d.as_str().ends_with(".routed") {
            true => SiteOf::Known("smarthost:25".to_owned(), three()),
            false => SiteOf::Own,
        }),
        Box::new(|_| None),
    );
    let mut opened = 0;
    for i in 0..10 {
        let d = Destination::new(format!("d{i}.routed"));
        opened += queues.push(&d, &[item(i, 0)], Status::Pending, 0).len();
    }
    opened += queues.plan(0).len();
    assert_eq!(opened, 3, "one site, three connections in all");
    // A connection of the site closes: the first domain in line takes it.
    assert_eq!(
        queues.closed(&Destination::new("d0.routed"), &lane(), None, 1),
        [open(Destination::new("d3.routed"))]
    );
    assert!(queues.plan(1).is_empty());
    // A destination outside the site is not held by it.
    let other = Destination::new("mx.example");
    assert_eq!(
        queues
            .push(&other, &[item(99, 0)], Status::Pending, 1)
            .len(),
        1
    );
    assert_eq!(
        queues
            .summary_at(0)
            .iter()
            .find(|s| s.destination == "d5.routed")
            .unwrap()
            .site
            .as_deref(),
        Some("smarthost:25")
    );
}

#[test]
fn a_throttle_caps_connections_and_rate_until_it_ends() {
    let shaping = Shaping {
        connections_max: 8,
        ..Shaping::default()
    };
    let queues = Queues::new(Box::new(move |_| shaping));
    let d = destination_of(b"a@x.org");
    queues.throttle_site_of(
        &d,
        &lane(),
        Throttle {
            until_ms: 10_000,
            connections_max: Some(2),
            message_rate_max: Some(1),
            reason: "test".into(),
        },
        0,
    );
    let mut opened = 0;
    for id in 0..20 {
        opened += queues.push(&d, &[item(id, 0)], Status::Pending, 0).len();
    }
    assert_eq!(opened, 2, "capped at 2");
    queues.succeeded(&d, &lane(), 1);
    assert!(queues.plan(1).is_empty(), "the cap holds after a success");
    assert!(matches!(
        queues.take(&d, waiter(1), true, 1000),
        Take::Batch(_)
    ));
    assert!(matches!(
        queues.take(&d, waiter(1), true, 1000),
        Take::RateLimited { .. }
    ));
    // After it ends, success raises the limit past the cap again.
    queues.succeeded(&d, &lane(), 10_000);
    assert_eq!(queues.summary_at(0)[0].connections_limit, 3);
}

#[test]
fn message_rate_is_enforced() {
    let shaping = Shaping {
        message_rate_max: 2,
        ..Shaping::default()
    };
    let queues = Queues::new(Box::new(move |_| shaping));
    let d = destination_of(b"a@x.org");
    for id in 0..5 {
        queues.push(&d, &[item(id, 0)], Status::Pending, 0);
    }
    // The bucket starts full (one second's worth).
    assert!(matches!(
        queues.take(&d, waiter(1), true, 1000),
        Take::Batch(_)
    ));
    assert!(matches!(
        queues.take(&d, waiter(1), true, 1000),
        Take::Batch(_)
    ));
    assert!(matches!(
        queues.take(&d, waiter(1), true, 1000),
        Take::RateLimited { retry_ms } if retry_ms == 1500
    ));
    assert!(matches!(
        queues.take(&d, waiter(1), true, 1500),
        Take::Batch(_)
    ));
}

#[test]
fn remove_and_flush() {
    let queues = Queues::default();
    let d = destination_of(b"a@x.org");
    queues.push(&d, &[item(1, 0)], Status::Pending, 0);
    queues.schedule(&d, item(1, 1), 1_000_000);
    queues.schedule(&d, item(2, 0), 1_000_000);
    assert_eq!(queues.remove(QueueId(1), None).len(), 2);
    assert_eq!(queues.flush(None, 5), 1);
    assert_eq!(queues.summary_at(0)[0].ready, 1);
}

#[test]
fn a_connection_with_nothing_left_carries_a_domain_waiting_in_line() {
    let queues = mx_queues();
    let one = SiteShaping {
        connections_max: 1,
        message_rate_max: 0,
    };
    let a = Destination::new("a.example");
    let b = Destination::new("b.example");
    let c = Destination::new("c.example");
    queues.push(&a, &[item(1, 0)], Status::Pending, 0);
    assert!(queues.join(&a, &lane(), "site", one, 0));
    queues.join(&b, &lane(), "site", one, 0);
    queues.join(&c, &lane(), "site", one, 0);
    // b and c wait in line for the site's one connection.
    assert!(queues
        .push(&b, &[item(2, 0)], Status::Pending, 0)
        .is_empty());
    assert!(queues
        .push(&c, &[item(3, 0)], Status::Pending, 0)
        .is_empty());
    assert!(matches!(
        queues.take(&a, waiter(1), true, 0),
        Take::Batch(_)
    ));
    // b may not ride on it (say, another TLS policy); c may: the
    // connection is c's now, and b keeps its place in line.
    let mut asked = Vec::new();
    let taken = queues.take_in_site(&a, &lane(), waiter(1), true, 1, &mut |d| {
        asked.push(d.clone());
        *d == c
    });
    assert_eq!(taken, Take::Switched(c.clone()));
    assert_eq!(asked, [b.clone(), c.clone()]);
    let row = |d: &str| {
        queues
            .summary_at(0)
            .into_iter()
            .find(|s| s.destination == d)
            .unwrap()
    };
    assert_eq!(
        (row("a.example").connections, row("c.example").connections),
        (0, 1)
    );
    assert!(
        matches!(queues.take(&c, waiter(1), true, 1), Take::Batch(b) if b[0].queue_id == QueueId(3))
    );
    // Nothing may ride now: the connection leaves for b.
    assert_eq!(
        queues.take_in_site(&c, &lane(), waiter(1), true, 2, &mut |_| false),
        Take::Leave
    );
    assert_eq!(
        queues.closed(&c, &lane(), Some(waiter(1)), 3),
        [open(b.clone())]
    );
}

#[test]
fn a_domain_that_left_the_line_on_its_own_connection_gets_back_in_line() {
    let queues = mx_queues();
    let one = SiteShaping {
        connections_max: 1,
        message_rate_max: 0,
    };
    let a = Destination::new("a.example");
    let b = Destination::new("b.example");
    queues.join(&a, &lane(), "site", one, 0);
    queues.join(&b, &lane(), "site", one, 0);
    // a's one connection, and a second message that would want another:
    // a is in line for the full site.
    assert_eq!(
        opens(&queues.push(&a, &[item(1, 0)], Status::Pending, 0)),
        1
    );
    queues.push(&a, &[item(2, 0)], Status::Pending, 0);
    for _ in 0..2 {
        assert!(matches!(
            queues.take(&a, waiter(1), true, 0),
            Take::Batch(_)
        ));
    }
    // Its connection, with nothing left, finds only a itself in line.
    assert_eq!(
        queues.take_in_site(&a, &lane(), waiter(1), false, 1, &mut |_| true),
        Take::Idle
    );
    assert_eq!(queues.closed(&a, &lane(), None, 1), []);
    // b takes the site's connection; a gets mail and must wait in line...
    assert_eq!(
        opens(&queues.push(&b, &[item(3, 0)], Status::Pending, 2)),
        1
    );
    assert!(queues
        .push(&a, &[item(4, 0)], Status::Pending, 2)
        .is_empty());
    queues.plan(3);
    // ...and gets the connection b leaves.
    assert!(matches!(
        queues.take(&b, waiter(2), true, 4),
        Take::Batch(_)
    ));
    assert_eq!(
        queues.closed(&b, &lane(), Some(waiter(2)), 5),
        [open(a.clone())]
    );
}

#[test]
fn limits_and_suspensions_hold_per_site_and_source() {
    let lanes: Lanes = Arc::from([(Arc::from("ip1"), 1), (Arc::from("ip2"), 1)]);
    let two = SiteShaping {
        connections_max: 2,
        message_rate_max: 0,
    };
    let queues = Queues::new(Box::new(|_| Shaping::default()))
        .with_sites(
            Box::new(move |_| SiteOf::Known("relay:25".into(), two)),
            Box::new(|_| None),
        )
        .with_lanes(Box::new(move |_| lanes.clone()));
    let d = Destination::new("d.example");
    let mut opened: Vec<Action> = Vec::new();
    for id in 0..10 {
        opened.extend(queues.push(&d, &[item(id, 0)], Status::Pending, 0));
    }
    // Two connections from each source, in turn.
    let from = |actions: &[Action], source: &str| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Open(_, lane) if &**lane == source))
            .count()
    };
    assert_eq!(
        (from(&opened, "ip1"), from(&opened, "ip2")),
        (2, 2),
        "{opened:?}"
    );
    let site = &queues.sites_at(0)[0];
    assert_eq!(site.connections_limit, 4);
    assert_eq!(site.sources.len(), 2);
    // The receiver tells ip1 to back off: ip1's connections close and
    // open no more; ip2 goes on.
    let ip1: Arc<str> = "ip1".into();
    let ip2: Arc<str> = "ip2".into();
    assert!(queues.suspend_site_of(&d, &ip1, 10_000, "421 4.7.28".into(), 1));
    let mut actions = Vec::new();
    for lane in [&ip1, &ip1, &ip2] {
        actions.extend(queues.closed(&d, lane, None, 2));
    }
    actions.extend(queues.plan(3));
    assert_eq!(
        (from(&actions, "ip1"), from(&actions, "ip2")),
        (0, 1),
        "{actions:?}"
    );
    let site = &queues.sites_at(3)[0];
    let shown: Vec<_> = site
        .sources
        .iter()
        .map(|s| (s.source.as_str(), s.suspended.is_some()))
        .collect();
    assert_eq!(shown, [("ip1", true), ("ip2", false)]);
    // After the suspension, ip1 comes back with one connection.
    let actions = queues.plan(10_000);
    assert_eq!(
        (from(&actions, "ip1"), from(&actions, "ip2")),
        (1, 0),
        "{actions:?}"
    );
}

/// A policy that routes every destination to the next hop `hop`, whose
/// site allows `connections_max` connections.
fn routed_to(hop: &'static str, connections_max: usize) -> Policy {
    Policy {
        site_for: Box::new(move |_| {
            SiteOf::Known(
                hop.to_owned(),
                SiteShaping {
                    connections_max,
                    message_rate_max: 0,
                },
            )
        }),
        ..Policy::default()
    }
}

#[test]
fn a_reload_moves_destinations_to_their_new_site_and_takes_its_limits() {
    let queues = Queues::with_policy(routed_to("old:25", 1));
    let d = Destination::new("a.example");
    let pushed = queues.push(
        &d,
        &(0..10).map(|i| item(i, 0)).collect::<Vec<_>>(),
        Status::Pending,
        0,
    );
    assert_eq!(opens(&pushed), 1, "one connection: the old site's limit");
    // The route moves, with room for three: the open connection is
    // counted at the new site, and two more may open.
    queues.reconfigure(routed_to("new:25", 3), 1);
    let sites = queues.sites();
    assert_eq!(
        sites.len(),
        1,
        "the old site, now empty, is gone: {sites:?}"
    );
    assert_eq!(sites[0].site, "new:25");
    assert_eq!((sites[0].connections, sites[0].connections_limit), (1, 3));
    assert_eq!(opens(&queues.plan(2)), 2);
    // The same site, a lower limit: nothing new opens.
    queues.reconfigure(routed_to("new:25", 2), 3);
    assert_eq!(queues.sites()[0].connections_limit, 2);
    assert_eq!(opens(&queues.plan(4)), 0);
}

#[test]
fn a_reload_keeps_an_operators_suspension() {
    let queues = Queues::with_policy(routed_to("hop:25", 2));
    let d = Destination::new("a.example");
    queues.push(&d, &[item(1, 0)], Status::Pending, 0);
    queues.suspend("hop:25", u64::MAX / 2, "operator".into(), 0);
    queues.reconfigure(routed_to("hop:25", 5), 1);
    let sites = queues.sites();
    assert_eq!(sites[0].suspended.as_deref(), Some("operator"));
    assert_eq!(opens(&queues.plan(2)), 0, "still suspended");
}
