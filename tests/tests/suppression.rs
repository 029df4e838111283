//! The suppression list (issue 12): a hard bounce puts the address on it,
//! the next message to it is refused at `RCPT` with `550 5.7.1` (or, with
//! `action = "drop"`, accepted, never delivered, and logged), an operator
//! takes it off with `baton suppression remove`, the list survives
//! `kill -9`, and 100,000 rows go through `import` and `export` intact.

use std::collections::BTreeSet;

use baton_tests::delivery::{route, wait_queue_empty, wait_status, EventLog};
use baton_tests::sink::Sink;
use baton_tests::{Baton, TestConfig};

fn start(dest: &Sink, events: &EventLog, suppression: &str) -> Baton {
    Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route("dest.test", dest.addr)
            + &route("sender.test", dest.addr)
            + &events.toml()
            + suppression,
        ..TestConfig::default()
    })
}

/// The events of `kind` about `recipient`, once there are `count`.
fn wait_events(
    server: &mut Baton,
    events: &EventLog,
    kind: &str,
    recipient: &str,
    count: usize,
) -> Vec<serde_json::Value> {
    let matching = || -> Vec<serde_json::Value> {
        events
            .events()
            .into_iter()
            .filter(|e| {
                // Changes to the list name an `address`, a dropped
                // recipient its `recipient`.
                e["event"] == kind && (e["address"] == recipient || e["recipient"] == recipient)
            })
            .collect()
    };
    server.wait_until(&format!("{count} {kind} events for {recipient}"), || {
        matching().len() >= count
    });
    matching()
}

/// The reply to `RCPT TO:<to>` in a new transaction from `from`.
fn rcpt(server: &Baton, from: &str, to: &str) -> baton_tests::Reply {
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    assert_eq!(smtp.cmd(&format!("MAIL FROM:<{from}>")).code, 250);
    smtp.cmd(&format!("RCPT TO:<{to}>"))
}

#[test]
fn a_hard_bounce_suppresses_until_an_operator_removes_it_and_survives_kill_9() {
    let dest = Sink::start("127.0.0.2", &[]);
    let events = EventLog::new();
    let mut server = start(&dest, &events, "");
    // The sink answers `550 5.1.1` to local parts starting `bounce-`.
    let id = server.submit(
        "alice@sender.test",
        &["bounce-bob@dest.test"],
        "Subject: 1\r\n\r\nx\r\n",
    );
    wait_status(&mut server, &id, "bounce-bob@dest.test", "failed");
    let added = wait_events(
        &mut server,
        &events,
        "suppression_added",
        "bounce-bob@dest.test",
        1,
    );
    assert_eq!(added[0]["scope"], "global", "{added:?}");
    assert_eq!(added[0]["source"], "bounce", "{added:?}");
    assert!(
        added[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("550 5.1.1"),
        "{added:?}"
    );

    // Any case of the address is the same address.
    let reply = rcpt(&server, "carol@other.test", "Bounce-Bob@DEST.test");
    reply.assert_is(550, "5.7.1");
    assert!(reply.text().contains("suppressed"), "{reply:?}");

    let (ok, shown, stderr) =
        server.cli(&["suppression", "show", "bounce-bob@dest.test", "--json"]);
    assert!(ok, "{stderr}");
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown[0]["source"], "bounce", "{shown}");

    // The addition was committed before the event was written.
    server.kill9();
    server.spawn();
    rcpt(&server, "alice@sender.test", "bounce-bob@dest.test").assert_is(550, "5.7.1");

    let (ok, out, stderr) = server.cli(&["suppression", "remove", "bounce-bob@dest.test"]);
    assert!(ok, "{stderr}");
    assert!(out.contains("removed"), "{out}");
    rcpt(&server, "alice@sender.test", "bounce-bob@dest.test").assert_is(250, "2.1.5");
    let removed = wait_events(
        &mut server,
        &events,
        "suppression_removed",
        "bounce-bob@dest.test",
        1,
    );
    assert_eq!(removed[0]["scope"], "global");
    // Removing it again says it is not there.
    let (ok, _, stderr) = server.cli(&["suppression", "remove", "bounce-bob@dest.test"]);
    assert!(
        !ok && stderr.contains("not on the suppression list"),
        "{stderr}"
    );
}

#[test]
fn scopes_limit_a_suppression_to_a_sender_domain() {
    let dest = Sink::start("127.0.0.2", &[]);
    let events = EventLog::new();
    let server = start(&dest, &events, "");
    let (ok, _, stderr) = server.cli(&[
        "suppression",
        "add",
        "dan@dest.test",
        "--scope",
        "domain:shop.test",
        "--reason",
        "asked shop.test to stop",
    ]);
    assert!(ok, "{stderr}");
    rcpt(&server, "news@shop.test", "dan@dest.test").assert_is(550, "5.7.1");
    rcpt(&server, "alice@sender.test", "dan@dest.test").assert_is(250, "2.1.5");
    let (ok, _, stderr) = server.cli(&["suppression", "add", "bad scope@dest.test"]);
    assert!(!ok && stderr.contains("not an address"), "{stderr}");
}

#[test]
fn drop_mode_accepts_logs_and_delivers_nothing() {
    let dest = Sink::start("127.0.0.2", &[]);
    let events = EventLog::new();
    let mut server = start(&dest, &events, "[suppression]\naction = \"drop\"\n");
    let (ok, _, stderr) = server.cli(&["suppression", "add", "erin@dest.test"]);
    assert!(ok, "{stderr}");
    let added = wait_events(
        &mut server,
        &events,
        "suppression_added",
        "erin@dest.test",
        1,
    );
    assert_eq!(added[0]["source"], "operator");

    // Only the suppressed recipient: 250 all along, nothing stored.
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    let reply = smtp.send_message(
        "alice@sender.test",
        &["erin@dest.test"],
        "Subject: a\r\n\r\nx\r\n",
    );
    reply.assert_is(250, "2.0.0");
    // With another: that one alone is delivered.
    let id = server.submit(
        "alice@sender.test",
        &["erin@dest.test", "frank@dest.test"],
        "Subject: b\r\n\r\nx\r\n",
    );
    wait_status(&mut server, &id, "frank@dest.test", "delivered");
    let shown = server.show(&id);
    assert_eq!(
        Baton::shown_recipients(&shown),
        ["frank@dest.test"],
        "{shown}"
    );
    wait_queue_empty(&mut server);
    let dropped = wait_events(&mut server, &events, "suppressed", "erin@dest.test", 2);
    assert_eq!(dropped[0]["scope"], "global", "{dropped:?}");
    assert_eq!(dest.count(), 1, "{:?}", dest.messages());
    assert!(events
        .events()
        .iter()
        .all(|e| !(e["event"] == "delivered" && e["recipient"] == "erin@dest.test")));
}

#[test]
fn import_and_export_round_trip_100_000_rows() {
    let dest = Sink::start("127.0.0.2", &[]);
    let events = EventLog::new();
    let server = start(&dest, &events, "");
    let mut csv = String::from("address,scope,reason,time_ms,source\n");
    let mut rows = BTreeSet::new();
    for i in 0..100_000u64 {
        let scope = if i % 10 == 0 {
            "domain:shop.test"
        } else {
            "global"
        };
        let row = format!(
            "user{i}@import.test,{scope},\"list, row {i}\",{},import",
            1_700_000_000_000 + i
        );
        csv.push_str(&row);
        csv.push('\n');
        rows.insert(row);
    }
    let file = server.dir.path().join("in.csv");
    std::fs::write(&file, csv).unwrap();
    let (ok, out, stderr) = server.cli(&["suppression", "import", file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(out.contains("100000 imported"), "{out}");

    let exported = server.dir.path().join("out.csv");
    let (ok, _, stderr) = server.cli(&["suppression", "export", exported.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&exported).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("address,scope,reason,time_ms,source"));
    let back: BTreeSet<String> = lines.map(str::to_owned).collect();
    assert_eq!(back.len(), 100_000);
    assert!(back == rows, "export differs from the import");

    rcpt(&server, "alice@sender.test", "user77@import.test").assert_is(550, "5.7.1");
    let (ok, out, stderr) = server.cli(&["suppression", "list", "--limit", "3", "--json"]);
    assert!(ok, "{stderr}");
    assert_eq!(out.lines().count(), 3, "{out}");
    // Paging by the cursor walks the whole list.
    let (ok, out, stderr) = server.cli(&["suppression", "list", "--page", "7000"]);
    assert!(ok, "{stderr}");
    assert_eq!(out.lines().count(), 100_000);
}
