//! Reloading the configuration of a running baton (SIGHUP, `baton reload`)
//! as an operator does it: routes, shaping, `hold` and the log level change
//! under load without losing a message, an event or a connection; a
//! broken file is refused whole, saying where, and the old configuration
//! keeps running; what only a restart can change is named.

use std::process::{Command, Stdio};
use std::time::Duration;

use baton_tests::delivery::{id_counts, metric, route, send_report, wait_queue_empty, EventLog};
use baton_tests::sink::{loadgen_bin, Sink};
use baton_tests::{Baton, TestConfig};

/// Every `delivered` line in the event log and the files it was rotated to.
fn delivered(paths: &[&std::path::Path]) -> usize {
    paths
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| {
            text.lines()
                .filter(|line| line.contains("\"event\":\"delivered\""))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .count()
}

/// Rewrites the running configuration file: `from` becomes `to`.
fn edit(baton: &Baton, from: &str, to: &str) {
    let text = std::fs::read_to_string(&baton.config_path).unwrap();
    assert!(text.contains(from), "{from:?} not in the configuration");
    std::fs::write(&baton.config_path, text.replace(from, to)).unwrap();
}

#[test]
fn routes_and_shaping_change_under_load_and_nothing_is_lost() {
    const MESSAGES: usize = 3000;
    let a = Sink::start("127.0.0.2", &[]);
    let b = Sink::start("127.0.0.3", &[]);
    let events = EventLog::new();
    let shaping = "[[destination]]\ndomain = \"reload.test\"\nconnections_max = 1\n";
    let mut baton = Baton::start_with(TestConfig {
        deliver: true,
        extra_toml: format!("{}{shaping}{}", route("reload.test", a.addr), events.toml()),
        ..TestConfig::default()
    });
    assert_eq!(metric(&baton, "baton_config_generation"), 1);

    // Load on persistent connections, bounded in count and time.
    let dir = tempfile::tempdir().unwrap();
    let report = send_report(dir.path());
    let mut load = Command::new(loadgen_bin())
        .arg("send")
        .arg(baton.smtp.to_string())
        .args(["--quiet", "--seed", "7", "-c", "4", "-n"])
        .arg(MESSAGES.to_string())
        .args([
            "--domains",
            "reload.test",
            "--size",
            "1KiB",
            "--timeout",
            "20s",
        ])
        .arg("--report")
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    baton.wait_until("delivery to A under way", || a.count() >= 100);

    // The route moves to B, with more connections: SIGHUP.
    edit(
        &baton,
        &route("reload.test", a.addr),
        &route("reload.test", b.addr),
    );
    edit(&baton, "connections_max = 1\n", "connections_max = 3\n");
    baton.signal("HUP");
    baton.wait_for("the reload logged", |b| {
        b.log().contains("SIGHUP: configuration reloaded")
    });
    assert_eq!(metric(&baton, "baton_config_generation"), 2);
    baton.wait_until("delivery to B under way", || b.count() >= 100);

    // The event log is rotated the `mv` way, then SIGHUP (which reloads
    // the same file again).
    let rotated = events.path().with_extension("1");
    std::fs::rename(events.path(), &rotated).unwrap();
    baton.signal("HUP");
    baton.wait_for("the third generation", |b| {
        metric(b, "baton_config_generation") == 3
    });

    // A broken file is refused whole, naming the file, line and key; the
    // running configuration stays.
    edit(
        &baton,
        "connections_max = 3\n",
        "connections_max = \"many\"\n",
    );
    let (ok, out, err) = baton.cli(&["reload"]);
    assert!(!ok, "a broken configuration must be refused: {out}");
    let config_name = baton.config_path.display().to_string();
    assert!(
        err.contains("configuration refused, nothing changed"),
        "{err}"
    );
    assert!(err.contains(&config_name), "names the file: {err}");
    assert!(
        err.contains("destination[0].connections_max"),
        "names the key: {err}"
    );
    // SIGHUP: the server refuses it the same way, logs why and counts it.
    baton.signal("HUP");
    baton.wait_for("the refusal logged", |b| {
        b.log()
            .contains("SIGHUP: configuration refused, nothing changed")
    });
    assert!(baton.log().contains("destination[0].connections_max"));
    assert_eq!(metric(&baton, "baton_config_reload_failures_total"), 1);
    assert_eq!(metric(&baton, "baton_config_generation"), 3);
    edit(
        &baton,
        "connections_max = \"many\"\n",
        "connections_max = 3\n",
    );

    baton.wait_for_within("loadgen send finished", Duration::from_secs(120), |_| {
        load.try_wait().unwrap().is_some()
    });
    let status = load.wait().unwrap();
    assert!(status.success(), "loadgen send failed");
    let sent: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(sent["messages_failed"], 0, "no connection dropped: {sent}");
    assert_eq!(sent["messages_accepted"], MESSAGES as u64, "{sent}");

    wait_queue_empty(&mut baton);
    let counts = id_counts([&a, &b]);
    assert_eq!(counts.len(), MESSAGES, "every message arrived");
    assert!(counts.values().all(|n| *n == 1), "none twice");
    assert!(b.count() >= 100, "the new route took over");
    baton.wait_until("an event for every delivery", || {
        delivered(&[events.path(), &rotated]) >= MESSAGES
    });
    assert_eq!(delivered(&[events.path(), &rotated]), MESSAGES);
    // The new limit held at B.
    let b_report = b.stop();
    assert!(
        b_report["connections_peak"].as_u64().unwrap() <= 3,
        "{b_report}"
    );
    assert!(baton.is_running(), "SIGHUP must not end baton");
}

#[test]
fn hold_and_the_log_level_change_live_and_restart_only_keys_are_named() {
    let sink = Sink::start("127.0.0.2", &[]);
    // `[log] level` is in force only without RUST_LOG, which stands in
    // for it.
    let mut baton = Baton::start_with(TestConfig {
        deliver: false,
        extra_toml: route("held.test", sink.addr),
        env: vec![("RUST_LOG".into(), String::new())],
        ..TestConfig::default()
    });
    baton.submit(
        "a@sender.test",
        &["r@held.test"],
        "Subject: held\r\n\r\nhi\r\n",
    );
    assert_eq!(baton.queued_recipients(), 1);
    assert!(
        !baton.log().contains("DEBUG"),
        "the default level logs no DEBUG lines"
    );

    // hold goes, the level goes to debug, and two keys only a restart
    // can change are changed too.
    edit(&baton, "hold = true", "hold = false");
    let text = std::fs::read_to_string(&baton.config_path).unwrap();
    let text = text.replacen("[limits]\n", "[limits]\ncommand_timeout = \"7m\"\n", 1)
        + "\n[log]\nlevel = \"debug\"\n";
    std::fs::write(&baton.config_path, text).unwrap();
    let (ok, out, err) = baton.cli(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("generation 2"), "{out}");
    assert!(
        out.contains("changed but kept until a restart: limits"),
        "{out}"
    );
    baton.wait_until("the held message delivered", || sink.count() == 1);
    wait_queue_empty(&mut baton);
    baton.wait_for("DEBUG lines", |b| b.log().contains("DEBUG"));
}
