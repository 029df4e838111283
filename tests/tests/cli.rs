//! The command line an operator uses: the default configuration checks
//! out, a configuration error names the key and its line, and `baton queue`
//! answers cleanly, also about a message that is not there; its flush,
//! delete and bounce act on deferred recipients.

use std::path::Path;
use std::process::Command;

use baton_tests::delivery::{at, queued_message, route};
use baton_tests::{baton_bin, free_port, queued_id, Baton, TestConfig};

/// Runs `baton <args>`: (success, stdout, stderr).
fn baton(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(baton_bin())
        .args(args)
        .output()
        .expect("run baton");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_config(path: &Path) -> (bool, String, String) {
    baton(&["check-config", path.to_str().expect("UTF-8 path")])
}

fn default_config() -> String {
    let (ok, stdout, stderr) = baton(&["--print-default-config"]);
    assert!(ok, "{stderr}");
    stdout
}

/// The default configuration with `from` replaced by `to` (once), and the
/// line, counted from 1, where that is.
fn edited_default(from: &str, to: &str) -> (String, usize) {
    let text = default_config();
    let at = text
        .find(from)
        .unwrap_or_else(|| panic!("{from:?} in the defaults"));
    let line = text[..at].lines().count() + 1;
    (text.replacen(from, to, 1), line)
}

/// Fails with `<file>:<line>:<column>: <key>: <what>`, and no panic.
#[track_caller]
fn assert_refused(path: &Path, line: usize, key: &str, what: &str) {
    let (ok, stdout, stderr) = check_config(path);
    assert!(!ok, "accepted: {stdout}");
    let place = format!("{}:{line}:", path.display());
    assert!(stderr.contains(&place), "want {place}: {stderr}");
    assert!(
        stderr.contains(&format!(" {key}: ")),
        "want {key}: {stderr}"
    );
    assert!(stderr.contains(what), "want {what:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_printed_default_configuration_passes_check_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("default.toml");
    let text = default_config();
    assert!(text.contains("[limits]") && text.contains("recipients_per_message_max"));
    std::fs::write(&path, &text).expect("write");
    let (ok, stdout, stderr) = check_config(&path);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("{}: ok", path.display())),
        "{stdout}"
    );
}

#[test]
fn configuration_errors_name_the_key_and_the_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baton.toml");

    let (text, line) = edited_default(
        "recipients_per_message_max = ",
        "recipients_per_mesage_max = ",
    );
    std::fs::write(&path, text).expect("write");
    assert_refused(
        &path,
        line,
        "limits.recipients_per_mesage_max",
        "unknown key",
    );

    let (text, line) = edited_default(
        "recipients_per_message_max = 1000",
        "recipients_per_message_max = 50",
    );
    std::fs::write(&path, text).expect("write");
    assert_refused(
        &path,
        line,
        "limits.recipients_per_message_max",
        "at least 100",
    );

    let (text, line) = edited_default("shards = 0", "shards = \"two\"");
    std::fs::write(&path, text).expect("write");
    assert_refused(&path, line, "server.shards", "invalid type");

    let missing = dir.path().join("missing.toml");
    let (ok, _, stderr) = check_config(&missing);
    assert!(!ok);
    assert!(stderr.contains("missing.toml"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn queue_show_answers_about_present_and_unknown_messages() {
    let mut server = Baton::start();
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    let id = queued_id(&smtp.send_message("a@example.com", &["b@example.org"], "hi\r\n"));

    let (ok, stdout, stderr) = server.cli(&["queue", "show", &id]);
    assert!(ok, "{stderr}");
    // Pending, or deferred already: delivery starts at once, and the
    // domain does not resolve here.
    assert!(
        stdout.contains(&id)
            && (stdout.contains("<b@example.org> pending")
                || stdout.contains("<b@example.org> deferred")),
        "{stdout}"
    );
    // Ids print in upper case; lower case is the same id.
    let (ok, stdout, stderr) = server.cli(&["queue", "show", &id.to_lowercase(), "--json"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&id), "{stdout}");
    let (ok, stdout, stderr) = server.cli(&["queue", "list"]);
    assert!(ok, "{stderr}");
    let header: Vec<_> = stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["DESTINATION", "READY", "SCHEDULED", "CONNECTIONS"],
        "{stdout}"
    );
    // The one recipient is ready or scheduled, depending on how far its
    // first attempt got.
    let example_org: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("example.org "))
        .unwrap_or_else(|| panic!("no example.org row in\n{stdout}"))
        .split_whitespace()
        .map(|n| n.parse().expect("a count"))
        .collect();
    assert!(
        example_org.len() == 3 && example_org[0] + example_org[1] == 1,
        "{stdout}"
    );

    // A well-formed id that is not queued.
    let unknown = if id == "00000000000000FF" {
        "00000000000000FE"
    } else {
        "00000000000000FF"
    };
    for args in [
        vec!["queue", "show", unknown, "--json"],
        vec!["queue", "show", unknown],
    ] {
        let (ok, stdout, stderr) = server.cli(&args);
        assert!(!ok, "{stdout}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            stderr.contains("no message") && stderr.contains(unknown),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Not an id at all.
    let (ok, _, stderr) = server.cli(&["queue", "show", "not-an-id"]);
    assert!(!ok);
    assert!(stderr.contains("not a queue id"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The server is down: a clean error, not a hang or a panic.
    server.kill9();
    let (ok, _, stderr) = server.cli(&["queue", "list"]);
    assert!(!ok);
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `baton queue flush example.org --json`: the reply's `ok` and
/// `recipients`.
fn flush_example_org(server: &Baton) -> (serde_json::Value, serde_json::Value) {
    let (ok, stdout, stderr) = server.cli(&["queue", "flush", "example.org", "--json"]);
    assert!(ok, "{stderr}");
    let reply: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON reply");
    (reply["ok"].clone(), reply["recipients"].clone())
}

#[test]
fn queue_actions_answer_cleanly_without_a_queue() {
    let mut server = Baton::start();

    let (ok, stdout, stderr) = server.cli(&["queue", "flush"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("0 "), "{stdout}");
    assert_eq!(flush_example_org(&server), (true.into(), 0.into()));

    // A well-formed id that is not queued: non-zero, and says so.
    for action in ["delete", "bounce"] {
        let (ok, stdout, stderr) = server.cli(&["queue", action, "0000000000000000"]);
        assert!(!ok, "{action}: {stdout}");
        assert!(stdout.is_empty(), "{action}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{action}: {stderr}");
        assert!(
            stderr.contains("no message 0000000000000000"),
            "{action}: {stderr}"
        );
    }

    // Refused before asking the server.
    let (ok, _, stderr) = server.cli(&["queue", "bounce", "not-an-id"]);
    assert!(!ok);
    assert!(stderr.contains("not a queue id"), "{stderr}");
    let (ok, _, stderr) = server.cli(&["queue", "flush", "a/b"]);
    assert!(!ok);
    assert!(stderr.contains("not a domain"), "{stderr}");

    server.kill9();
    for args in [
        &["queue", "flush"][..],
        &["queue", "delete", "0000000000000001"],
    ] {
        let (ok, _, stderr) = server.cli(args);
        assert!(!ok);
        assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A server whose every delivery attempt fails temporarily: every domain
/// routes to a loopback port where nothing listens, and the next retry is
/// an hour away, so deferred recipients wait for the operator.
fn undeliverable() -> Baton {
    let port = free_port("127.0.0.1");
    Baton::start_with(TestConfig {
        deliver: true,
        delivery: vec!["retry_schedule = [\"1h\"]".into()],
        extra_toml: route("*", at("127.0.0.1", port)),
        ..TestConfig::default()
    })
}

/// `GET /queue/<id>`: the status and attempts of each recipient; `None`
/// once the message has left the queue.
fn recipient_states(server: &Baton, id: &str) -> Option<Vec<(String, u64)>> {
    let message = queued_message(server, id)?;
    let states = message["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .map(|r| {
            let status = r["status"].as_str().expect("status").to_string();
            (status, r["attempts"].as_u64().unwrap_or(0))
        })
        .collect();
    Some(states)
}

/// Recipients scheduled for a retry to example.org.
fn scheduled(server: &Baton) -> u64 {
    server.queue()["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .find(|d| d["destination"] == "example.org")
        .map_or(0, |d| d["scheduled"].as_u64().expect("scheduled"))
}

/// Waits until both recipients of `id` are deferred after `attempts`
/// attempts and back in the scheduled queue, where the operator finds them.
fn wait_deferred(server: &mut Baton, id: &str, attempts: u64) {
    let deferred = Some(vec![("deferred".to_string(), attempts); 2]);
    server.wait_for(
        &format!("both recipients of {id} deferred after {attempts} attempts"),
        |s| recipient_states(s, id) == deferred && scheduled(s) == 2,
    );
}

/// Every recipient of `id` has `status`, or the message has left the
/// queue.
fn settled(server: &Baton, id: &str, status: &str) -> bool {
    recipient_states(server, id).is_none_or(|states| states.iter().all(|(s, _)| s == status))
}

#[test]
fn flush_delete_and_bounce_act_on_deferred_recipients() {
    let mut server = undeliverable();
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    let to = ["b@example.org", "c@example.org"];
    let deleted = queued_id(&smtp.send_message("a@example.com", &to, "delete me\r\n"));
    wait_deferred(&mut server, &deleted, 1);

    // Flush: both are due now, and their second attempt fails like the first.
    assert_eq!(flush_example_org(&server), (true.into(), 2.into()));
    wait_deferred(&mut server, &deleted, 2);

    let (ok, stdout, stderr) = server.cli(&["queue", "delete", &deleted]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("deleted 2 "), "{stdout}");
    // The reply waits for the outcomes to be durable: they show at once.
    assert!(settled(&server, &deleted, "removed"));
    assert_eq!(scheduled(&server), 0);
    // Nothing is left to delete a second time.
    let (ok, _, stderr) = server.cli(&["queue", "delete", &deleted]);
    assert!(!ok && stderr.contains("no recipient left"), "{stderr}");

    let bounced = queued_id(&smtp.send_message("a@example.com", &to, "bounce me\r\n"));
    wait_deferred(&mut server, &bounced, 1);
    let (ok, stdout, stderr) = server.cli(&["queue", "bounce", &bounced]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("bounced 2 "), "{stdout}");
    assert!(settled(&server, &bounced, "failed"));
    let (_, metrics) = server.admin_request("GET", "/metrics");
    for line in [
        "baton_recipients_failed_total 2",
        // One notification listing both recipients.
        "baton_bounces_generated_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
}

/// A log filter that would log nothing, and an event log that cannot be
/// written, are found by `check-config`, not at start.
#[test]
fn check_config_refuses_a_bad_log_filter_and_event_log_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("baton.toml");
    std::fs::write(&path, "[log]\nlevel = \"verbose!!\"\n").unwrap();
    assert_refused(&path, 2, "log.level", "a level");
    std::fs::write(
        &path,
        "[log]\nevents = \"/nonexistent/baton/events.jsonl\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = check_config(&path);
    assert!(
        !ok && stderr.contains("log.events") && stderr.contains("no such directory"),
        "{stderr}"
    );
    std::fs::write(
        &path,
        format!(
            "[log]\nevents = \"{}/events.jsonl\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let (ok, _, stderr) = check_config(&path);
    assert!(ok, "{stderr}");
}

/// `baton queue messages`: the queued messages, filtered by a recipient's
/// domain, the sender (address or domain) and status, a page at a time,
/// with times a person reads ("ago").
#[test]
fn queue_messages_lists_and_filters_like_mailq() {
    let server = Baton::start_with(TestConfig::default());
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    let a =
        queued_id(&smtp.send_message("news@shop.test", &["x@a.test"], "Subject: a\r\n\r\nhi\r\n"));
    let b = queued_id(&smtp.send_message(
        "bob@other.test",
        &["y@b.test", "z@a.test"],
        "Subject: b\r\n\r\nhi\r\n",
    ));
    let c =
        queued_id(&smtp.send_message("news@shop.test", &["w@c.test"], "Subject: c\r\n\r\nhi\r\n"));
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["queue", "messages", "--json"];
        all.extend_from_slice(args);
        let (ok, stdout, stderr) = server.cli(&all);
        assert!(ok, "{stderr}");
        let page: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["queue_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&[]), [a.clone(), b.clone(), c.clone()]);
    assert_eq!(ids(&["--domain", "a.test"]), [a.clone(), b.clone()]);
    assert_eq!(ids(&["--sender", "shop.test"]), [a.clone(), c.clone()]);
    assert_eq!(
        ids(&["--sender", "bob@other.test"]),
        std::slice::from_ref(&b)
    );
    assert_eq!(ids(&["--status", "deferred"]), Vec::<String>::new());
    assert_eq!(ids(&["--older-than", "1h"]), Vec::<String>::new());
    // Pages.
    assert_eq!(ids(&["--limit", "2"]), [a.clone(), b.clone()]);
    assert_eq!(
        ids(&["--limit", "2", "--after", &b]),
        std::slice::from_ref(&c)
    );
    // The text: each message with its recipients, times as a person reads them.
    let (ok, stdout, stderr) = server.cli(&["queue", "messages", "--domain", "a.test"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&a) && stdout.contains("s ago") && stdout.contains("from news@shop.test"),
        "{stdout}"
    );
    assert!(
        stdout.contains("z@a.test") && stdout.contains("pending"),
        "{stdout}"
    );
    let (ok, _, stderr) = server.cli(&["queue", "messages", "--status", "lost"]);
    assert!(!ok && stderr.contains("status"), "{stderr}");
    // queue show: the arrival in words, no trailing space after a plain sender.
    let (ok, stdout, _) = server.cli(&["queue", "show", &a]);
    assert!(ok);
    assert!(
        stdout.lines().any(|l| l == "sender:    <news@shop.test>"),
        "{stdout:?}"
    );
    assert!(stdout.contains(" ago)"), "{stdout}");
}

/// Bulk actions: `queue delete --domain`, `queue bounce --sender` act on
/// every message they match and on nothing else (`--domain`: on the
/// recipients at that domain, not their messages' others); `queue hold DOMAIN` keeps
/// a domain's mail queued and `queue release` lets it go.
#[test]
fn queue_actions_in_bulk_and_a_held_domain() {
    let sink = baton_tests::sink::Sink::start("127.0.0.2", &[]);
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: route("*", sink.addr),
        ..TestConfig::default()
    });
    // The domain is held before mail for it comes: nothing is delivered.
    for domain in ["a.test", "b.test", "c.test"] {
        let (ok, out, err) = server.cli(&["queue", "hold", domain]);
        assert!(ok, "{out}{err}");
    }
    let mut smtp = server.connect();
    smtp.ehlo("client.test");
    let body = "Subject: x\r\n\r\nhi\r\n";
    let a1 = queued_id(&smtp.send_message("news@shop.test", &["x@a.test"], body));
    let a2 = queued_id(&smtp.send_message("bob@other.test", &["y@a.test", "v@c.test"], body));
    let b = queued_id(&smtp.send_message("news@shop.test", &["z@b.test"], body));
    let c = queued_id(&smtp.send_message("bob@other.test", &["w@c.test"], body));
    let (ok, _, err) = server.cli(&["queue", "delete"]);
    assert!(!ok && err.contains("--domain"), "{err}");
    let (ok, out, err) = server.cli(&["queue", "delete", "--domain", "a.test"]);
    assert!(
        ok && out.contains("deleted 2 recipients of 2 messages"),
        "{out}{err}"
    );
    let (ok, out, err) = server.cli(&["queue", "bounce", "--sender", "shop.test"]);
    assert!(ok && out.contains("1 messages"), "{out}{err}");
    for gone in [&a1, &a2, &b] {
        assert!(
            queued_message(&server, gone).is_none_or(|m| m["recipients"][0]["status"] != "pending"),
            "{gone} still pending"
        );
    }
    // The bounce's notification goes to shop.test, which is not held.
    server.wait_until("the notification delivered", || sink.count() == 1);
    let held = queued_message(&server, &c).expect("c is still queued");
    assert_eq!(held["recipients"][0]["status"], "pending", "{held}");
    // a2's recipient at c.test was not a.test's to delete.
    let other = queued_message(&server, &a2).expect("a2 keeps its c.test recipient");
    assert_eq!(other["recipients"][1]["status"], "pending", "{other}");
    let (ok, out, err) = server.cli(&["queue", "release", "c.test"]);
    assert!(ok, "{out}{err}");
    server.wait_until("both c.test recipients delivered after the release", || {
        sink.count() == 3
    });
}

/// The manual page comes from the same definitions as `--help`: every
/// command, with its own options.
#[test]
fn the_man_page_has_every_command() {
    let (ok, page, stderr) = baton(&["--print-man-page"]);
    assert!(ok, "{stderr}");
    assert!(
        page.starts_with(".ie") || page.starts_with(".TH"),
        "{}",
        &page[..page.len().min(200)]
    );
    assert!(page.contains(".TH baton 1"), "no title");
    for command in [
        "RUN",
        "CHECK-CONFIG",
        "QUEUE",
        "SITE",
        "SUPPRESSION",
        "USER",
        "DKIM",
        "RELOAD",
    ] {
        assert!(
            page.contains(&format!(".SH \"BATON {command}\"")),
            "no section for {command}"
        );
    }
    assert!(
        page.contains("queue\\-messages") || page.contains("queue-messages"),
        "queue messages"
    );
    assert!(
        page.contains("print\\-default\\-config"),
        "FILES points at the default config"
    );
    // The Debian package ships the page as committed: it must be this one.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/baton.1");
    let shipped = std::fs::read_to_string(&shipped).expect("packaging/baton.1");
    assert!(
        shipped == page,
        "packaging/baton.1 is out of date: baton --print-man-page > packaging/baton.1"
    );
}
