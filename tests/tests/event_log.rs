//! The delivery event log (`[log] events`) an operator tails and a tool
//! parses: one JSON object per line, a `received` line per message
//! accepted, a `deferred`, `delivered` or `failed` line per recipient and
//! attempt, a `bounce` line per notification, each with the fields
//! `engine/src/delivery/events.rs` documents for it and none of those that
//! do not apply (left out, never `null`).

use std::path::Path;

use baton_tests::delivery::{route, wait_queue_empty, wait_status, EventLog};
use baton_tests::sink::Sink;
use baton_tests::{queued_id, Baton, TestConfig};

type Object = serde_json::Map<String, serde_json::Value>;

/// Every field a line may have.
const FIELDS: [&str; 23] = [
    "local",
    "latency_ms",
    "queue_time_ms",
    "egress",
    "recipients",
    "client",
    "helo",
    "message_id",
    "tls",
    "time",
    "event",
    "queue_id",
    "recipient",
    "destination",
    "host",
    "reply",
    "attempt",
    "next_attempt",
    "size",
    "sender",
    "bounce_queue_id",
    "reason",
    "category",
];

/// The fields of a recipient's outcome line (`delivered`, `deferred`,
/// `failed`), as in the example `delivered` line of the module
/// documentation of `delivery/events.rs`.
const OUTCOME_FIELDS: [&str; 10] = [
    "queue_time_ms",
    "time",
    "event",
    "queue_id",
    "recipient",
    "destination",
    "host",
    "reply",
    "attempt",
    "size",
];

/// An outcome over a connection has these too: the local address it
/// left from and the transaction's time.
const CONNECTION_FIELDS: [&str; 2] = ["local", "latency_ms"];

/// [`OUTCOME_FIELDS`] and [`CONNECTION_FIELDS`].
fn over_a_connection() -> Vec<&'static str> {
    [&OUTCOME_FIELDS[..], &CONNECTION_FIELDS[..]].concat()
}

/// The fields of a `received` line.
const RECEIVED_FIELDS: [&str; 8] = [
    "time",
    "event",
    "queue_id",
    "sender",
    "size",
    "recipients",
    "client",
    "helo",
];

/// The fields of a `bounce` line: `sender` is "the envelope sender
/// (`received`, `bounce`)" in `delivery/events.rs`.
const BOUNCE_FIELDS: [&str; 6] = [
    "time",
    "event",
    "queue_id",
    "sender",
    "bounce_queue_id",
    "size",
];

/// Every line of the log, each parsed on its own as a JSON object.
fn read_log(path: &Path) -> Vec<Object> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a cut line: {text}"
    );
    text.lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(serde_json::Value::Object(object)) => object,
            Ok(other) => panic!("not a JSON object: {other}"),
            Err(err) => panic!("not JSON: {line:?}: {err}"),
        })
        .collect()
}

/// The lines of `kind` about message `id`.
fn of<'a>(lines: &'a [Object], kind: &str, id: &str) -> Vec<&'a Object> {
    lines
        .iter()
        .filter(|l| l["event"] == kind && l["queue_id"] == id)
        .collect()
}

/// The one `kind` line about message `id`, checked: its `recipient`, the
/// destination (the recipient's domain), its `attempt`, how its reply starts.
#[track_caller]
fn outcome<'a>(
    lines: &'a [Object],
    kind: &str,
    id: &str,
    recipient: &str,
    attempt: u64,
    reply: &str,
) -> &'a Object {
    let found = of(lines, kind, id);
    assert_eq!(found.len(), 1, "{lines:#?}");
    let line = found[0];
    let domain = recipient.rsplit('@').next().expect("a domain");
    assert_eq!(line["recipient"], recipient, "{line:?}");
    assert_eq!(line["destination"], domain, "{line:?}");
    assert_eq!(line["attempt"], attempt, "{line:?}");
    let said = line["reply"].as_str().unwrap_or_default();
    assert!(said.starts_with(reply), "{line:?}");
    line
}

/// `2026-11-22T18:00:17.123Z`: RFC 3339, UTC, with milliseconds.
fn is_time(value: &serde_json::Value) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    let pattern = "dddd-dd-ddTdd:dd:dd.dddZ";
    text.len() == pattern.len()
        && text.chars().zip(pattern.chars()).all(|(c, p)| match p {
            'd' => c.is_ascii_digit(),
            _ => c == p,
        })
}

/// What is wrong with one line: it must have every field of `required`,
/// may have those of `optional`, and no other; none `null`, the times
/// well formed.
fn check_fields(line: &Object, required: &[&str], optional: &[&str], problems: &mut Vec<String>) {
    let kind = line["event"].as_str().unwrap_or("?");
    for name in FIELDS {
        let allowed = required.contains(&name) || optional.contains(&name);
        match line.get(name) {
            None if required.contains(&name) => {
                problems.push(format!("{kind}: no {name:?} in {line:?}"));
            }
            Some(serde_json::Value::Null) => {
                problems.push(format!("{kind}: {name:?} is null in {line:?}"));
            }
            Some(_) if !allowed => {
                problems.push(format!("{kind}: unexpected {name:?} in {line:?}"));
            }
            _ => {}
        }
    }
    for name in line.keys() {
        if !FIELDS.contains(&name.as_str()) {
            problems.push(format!("{kind}: unknown field {name:?} in {line:?}"));
        }
    }
    for name in ["time", "next_attempt"] {
        if let Some(value) = line.get(name) {
            if !is_time(value) {
                problems.push(format!("{kind}: {name:?} is not RFC 3339 UTC ms: {value}"));
            }
        }
    }
}

#[test]
fn the_event_log_has_a_json_line_with_the_documented_fields_for_each_event() {
    let tempfailing = Sink::start("127.0.0.2", &["--message-tempfail", "1"]);
    let senders = Sink::start("127.0.0.3", &[]);
    let log = EventLog::new();
    let path = log.path();
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        // Retried only when the operator says so.
        delivery: vec!["retry_schedule = [\"1h\"]".into()],
        extra_toml: route("dest.test", tempfailing.addr)
            + &route("sender.test", senders.addr)
            + &log.toml(),
        ..TestConfig::default()
    });
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    let body = "Subject: later\r\nMessage-ID: <later@sender.test>\r\n\r\nhello\r\n";
    let later = queued_id(&smtp.send_message("alice@sender.test", &["bob@dest.test"], body));
    let body = "Subject: never\r\n\r\nhello\r\n";
    let never =
        queued_id(&smtp.send_message("alice@sender.test", &["bounce-carol@dest.test"], body));
    wait_status(&mut server, &later, "bob@dest.test", "deferred");
    wait_status(&mut server, &never, "bounce-carol@dest.test", "failed");

    // The next hop takes mail again; the operator retries at once.
    let addr = tempfailing.addr;
    drop(tempfailing.stop());
    let dest = Sink::start_on(addr, &[]);
    let (ok, stdout, stderr) = server.cli(&["queue", "flush"]);
    assert!(ok, "baton queue flush: {stdout}{stderr}");
    wait_status(&mut server, &later, "bob@dest.test", "delivered");
    wait_queue_empty(&mut server);
    // The notification was delivered too: its line and the last one.
    server.wait_until("every delivered line", || {
        let lines = read_log(path);
        lines.iter().filter(|l| l["event"] == "delivered").count() == 2
    });

    let lines = read_log(path);
    let mut problems = Vec::new();
    for id in [&later, &never] {
        let received = of(&lines, "received", id);
        assert_eq!(received.len(), 1, "{id}: {lines:#?}");
        let received = received[0];
        assert_eq!(received["sender"], "alice@sender.test", "{received:?}");
        assert!(received["size"].as_u64().unwrap_or(0) > 0, "{received:?}");
        assert_eq!(received["helo"], "client.test", "{received:?}");
        assert!(
            received["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("127.0.0.1:")),
            "{received:?}"
        );
        check_fields(
            received,
            &RECEIVED_FIELDS,
            &["tls", "message_id"],
            &mut problems,
        );
    }

    let received = of(&lines, "received", &later)[0];
    assert_eq!(
        received["recipients"],
        serde_json::json!(["bob@dest.test"]),
        "{received:?}"
    );
    assert_eq!(
        received["message_id"], "<later@sender.test>",
        "{received:?}"
    );
    // A message without one gets one from the fix-ups, and the event has it.
    let added = of(&lines, "received", &never)[0]["message_id"]
        .as_str()
        .unwrap_or_default();
    assert!(added.starts_with('<') && added.ends_with('>'), "{added:?}");

    let deferred = outcome(&lines, "deferred", &later, "bob@dest.test", 1, "451 4.3.0 ");
    let host = deferred["host"].as_str().unwrap_or_default();
    // `name [address]:port`; a route's next hop is named by its address.
    let expected_host = format!("{0} [{0}]:{1}", addr.ip(), addr.port());
    assert_eq!(host, expected_host, "{deferred:?}");
    // An hour on: two times in this format compare as text.
    assert!(
        deferred["next_attempt"].as_str() > deferred["time"].as_str(),
        "{deferred:?}"
    );
    check_fields(
        deferred,
        &over_a_connection(),
        &["next_attempt", "tls", "category"],
        &mut problems,
    );
    // What kind of failure the reply is (bounce classification).
    if deferred.get("category").and_then(|c| c.as_str()) != Some("transient") {
        problems.push(format!(
            "deferred: category is not \"transient\" in {deferred:?}"
        ));
    }
    if !deferred.contains_key("next_attempt") {
        problems.push(format!("deferred: no \"next_attempt\" in {deferred:?}"));
    }

    let delivered = outcome(&lines, "delivered", &later, "bob@dest.test", 2, "250 ");
    // `tls`: the sink offers STARTTLS, so baton delivers encrypted.
    check_fields(delivered, &over_a_connection(), &["tls"], &mut problems);
    let local = delivered
        .get("local")
        .and_then(|l| l.as_str())
        .unwrap_or("");
    if local.parse::<std::net::SocketAddr>().is_err() {
        problems.push(format!(
            "delivered: \"local\" is not ip:port in {delivered:?}"
        ));
    }
    if delivered.get("tls").is_none() {
        problems.push(format!(
            "delivered: no \"tls\" over STARTTLS in {delivered:?}"
        ));
    }

    let recipient = "bounce-carol@dest.test";
    let failed = outcome(&lines, "failed", &never, recipient, 1, "550 5.1.1 ");
    // No `reason`: that is for expiry.
    check_fields(
        failed,
        &over_a_connection(),
        &["tls", "category"],
        &mut problems,
    );
    if failed.get("category").and_then(|c| c.as_str()) != Some("invalid_recipient") {
        problems.push(format!(
            "failed: category is not \"invalid_recipient\" in {failed:?}"
        ));
    }

    let bounce = of(&lines, "bounce", &never);
    assert_eq!(bounce.len(), 1, "{lines:#?}");
    let bounce = bounce[0];
    // Naming the original sender as the notification's `recipient` too
    // does no harm.
    check_fields(bounce, &BOUNCE_FIELDS, &["recipient"], &mut problems);
    for name in ["sender", "recipient"] {
        if let Some(address) = bounce.get(name) {
            assert_eq!(address, "alice@sender.test", "{bounce:?}");
        }
    }
    // The notification is a message of its own, delivered like any.
    let bounce_id = bounce["bounce_queue_id"].as_str().expect("bounce_queue_id");
    assert_ne!(bounce_id, never);
    let notification = outcome(
        &lines,
        "delivered",
        bounce_id,
        "alice@sender.test",
        1,
        "250 ",
    );
    check_fields(notification, &over_a_connection(), &["tls"], &mut problems);

    assert!(
        problems.is_empty(),
        "the event log differs from its documentation:\n{}",
        problems.join("\n")
    );
    assert_eq!(senders.count(), 1);
    drop(dest.stop());
}

/// Both logrotate styles: `mv` alone (baton notices the file moved), and
/// `mv` with a new file and SIGHUP (`create` with `postrotate`); and
/// `copytruncate`. Every message's `delivered` line is in one file or the
/// other, none twice, none lost.
#[test]
fn the_event_log_follows_logrotate() {
    let sink = Sink::start("127.0.0.2", &[]);
    let events = EventLog::new();
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route("rotate.test", sink.addr) + &events.toml(),
        ..TestConfig::default()
    });
    let send = |server: &Baton, from: usize, to: usize| {
        let mut smtp = server.connect();
        smtp.ehlo("client.test");
        for i in from..to {
            let reply = smtp.send_message(
                "alice@sender.test",
                &[&format!("r{i}@rotate.test")],
                "Subject: r\r\n\r\nhi\r\n",
            );
            assert_eq!(reply.code, 250);
        }
    };
    let path = events.path().to_owned();
    let delivered_in = |p: &Path| {
        read_log(p)
            .iter()
            .filter(|l| l["event"] == "delivered")
            .count()
    };
    send(&server, 0, 10);
    server.wait_until("10 delivered events", || delivered_in(&path) == 10);
    // mv alone.
    let first = path.with_extension("1");
    std::fs::rename(&path, &first).unwrap();
    send(&server, 10, 20);
    server.wait_until("the log written again at its path", || path.exists());
    // mv, a new file, SIGHUP.
    server.wait_until("20 delivered events", || {
        delivered_in(&first) + delivered_in(&path) == 20
    });
    let second = path.with_extension("2");
    std::fs::rename(&path, &second).unwrap();
    std::fs::File::create(&path).unwrap();
    server.signal("HUP");
    send(&server, 20, 30);
    let total = || delivered_in(&first) + delivered_in(&second) + delivered_in(&path);
    server.wait_until("30 delivered events", || total() == 30);
    // copytruncate: the file is copied, then emptied in place.
    let third = path.with_extension("3");
    std::fs::copy(&path, &third).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    send(&server, 30, 40);
    wait_queue_empty(&mut server);
    let all = || {
        [&first, &second, &third, &path]
            .iter()
            .flat_map(|p| read_log(p))
            .filter(|l| l["event"] == "delivered")
            .map(|l| l["recipient"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    server.wait_until("40 delivered events", || all().len() >= 40);
    let mut recipients = all();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), 40, "every message's line, once");
    assert_eq!(all().len(), 40, "none twice");
    let (status, metrics) = server.admin_request("GET", "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("baton_events_dropped_total 0"),
        "{metrics}"
    );
    assert!(server.is_running(), "SIGHUP must not end baton");
}

/// An operator's `queue delete` leaves a `deleted` line per recipient, and
/// `queue bounce` of a message for two domains a `failed` line for each
/// under its own domain.
#[test]
fn operators_deletes_and_bounces_are_in_the_log_under_each_recipients_domain() {
    let events = EventLog::new();
    let server = Baton::start_with(TestConfig {
        extra_toml: events.toml(),
        ..TestConfig::default()
    });
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    let body = "Subject: two\r\n\r\nhi\r\n";
    let bounced =
        queued_id(&smtp.send_message("alice@sender.test", &["x@a.test", "y@b.test"], body));
    let deleted =
        queued_id(&smtp.send_message("alice@sender.test", &["z@c.test", "w@d.test"], body));
    let (ok, out, err) = server.cli(&["queue", "bounce", &bounced]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = server.cli(&["queue", "delete", &deleted]);
    assert!(ok, "{out}{err}");
    let wanted = |lines: &[Object]| {
        of(lines, "failed", &bounced).len() == 2 && of(lines, "deleted", &deleted).len() == 2
    };
    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = read_log(events.path());
        if wanted(&lines) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(wanted(&lines), "{lines:#?}");
    let by_recipient = |kind: &str, id: &str| {
        let mut pairs: Vec<(String, String)> = of(&lines, kind, id)
            .iter()
            .map(|l| {
                (
                    l["recipient"].as_str().unwrap_or_default().to_owned(),
                    l["destination"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        pairs.sort();
        pairs
    };
    let pair = |r: &str, d: &str| (r.to_owned(), d.to_owned());
    assert_eq!(
        by_recipient("failed", &bounced),
        [pair("x@a.test", "a.test"), pair("y@b.test", "b.test")]
    );
    assert_eq!(
        by_recipient("deleted", &deleted),
        [pair("w@d.test", "d.test"), pair("z@c.test", "c.test")]
    );
}

/// `[log] format = "json"`: every line on stderr is a JSON object; with
/// `per_message = false` the per-message INFO lines (accepted, delivered)
/// go, and a deferral still comes at WARN.
#[test]
fn json_logs_without_per_message_lines_keep_deferrals() {
    let ok = Sink::start("127.0.0.2", &[]);
    let busy = Sink::start("127.0.0.3", &["--message-tempfail", "1"]);
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        delivery: vec!["retry_schedule = [\"1h\"]".into()],
        extra_toml: format!(
            "{}{}[log]\nformat = \"json\"\nper_message = false\n",
            route("ok.test", ok.addr),
            route("busy.test", busy.addr)
        ),
        ..TestConfig::default()
    });
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    let delivered =
        queued_id(&smtp.send_message("a@sender.test", &["r@ok.test"], "Subject: a\r\n\r\nhi\r\n"));
    let deferred = queued_id(&smtp.send_message(
        "a@sender.test",
        &["r@busy.test"],
        "Subject: b\r\n\r\nhi\r\n",
    ));
    wait_status(&mut server, &delivered, "r@ok.test", "delivered");
    wait_status(&mut server, &deferred, "r@busy.test", "deferred");
    server.wait_for("the deferral logged", |s| s.log().contains(&deferred));
    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    let about = |id: &str| {
        lines
            .iter()
            .filter(|l| l["fields"]["queue_id"].as_str() == Some(id))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(about(&delivered).is_empty(), "{:?}", about(&delivered));
    let deferrals = about(&deferred);
    assert_eq!(deferrals.len(), 1, "{deferrals:?}");
    assert_eq!(deferrals[0]["level"], "WARN", "{deferrals:?}");
    assert_eq!(
        deferrals[0]["fields"]["message"], "deferred",
        "{deferrals:?}"
    );
}
