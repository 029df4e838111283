//! The relay files of `bench/` that `loadgen bench` drives, checked without
//! the relays: kumod's policy reads exactly the variables loadgen sets, and
//! `bench/idle-rss.py` measures plain and TLS connections (against a
//! `loadgen sink`, which offers STARTTLS, instead of a TLS-capable baton).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use baton_loadgen::bench::config::KUMOD_ENV_NAMES;
use common::{find_program, run_with_deadline, Sink};
use serde_json::Value;

/// Idle connections per phase of the idle-rss run: enough to open both
/// kinds, few enough for a test.
const IDLE_CONNECTIONS: u32 = 20;

fn bench_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bench")
        .join(name)
}

/// The names the policy reads with `required 'NAME'` or `optional 'NAME'`.
fn policy_settings(policy: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for reader in ["required '", "optional '"] {
        for (at, _) in policy.match_indices(reader) {
            let rest = &policy[at + reader.len()..];
            let name = rest.split('\'').next().expect("a quoted name");
            names.insert(name.to_string());
        }
    }
    names
}

#[test]
fn the_kumod_policy_reads_exactly_the_variables_loadgen_sets() {
    let path = bench_file("kumomta-relay.lua");
    let policy =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let read = policy_settings(&policy);
    let set: BTreeSet<String> = KUMOD_ENV_NAMES.iter().map(|n| n.to_string()).collect();
    assert_eq!(read, set, "policy and loadgen disagree on kumod's settings");
}

#[test]
fn idle_rss_measures_plain_and_tls_connections_to_a_sink() {
    let Some(python) = find_program("python3", "bench/idle-rss.py needs it") else {
        return;
    };
    let sink = Sink::start(&[]);
    let output = run_with_deadline(
        Command::new(python)
            .arg(bench_file("idle-rss.py"))
            .arg(sink.target())
            .arg(sink.pid().to_string())
            .args(["-n", &IDLE_CONNECTIONS.to_string()])
            .args(["--settle", "0.2", "--timeout", "60", "--json"]),
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "idle-rss.py failed");
    let result: Value = serde_json::from_str(&stdout).expect("JSON");
    for phase in ["plain", "tls"] {
        assert_eq!(result[phase]["connections"], IDLE_CONNECTIONS, "{result:#}");
        let before = result[phase]["rss_before_kib"].as_u64().expect("before");
        assert!(before > 0, "{result:#}");
        assert!(result[phase]["rss_per_connection_kib"].is_number());
    }
    let summary = sink.stop();
    // Both phases said EHLO on every connection, the TLS one twice; the
    // sink answered each STARTTLS with 220, after the greetings' 220s.
    let ehlo_replies = IDLE_CONNECTIONS * 3;
    assert_eq!(summary["replies"]["250"], ehlo_replies, "{summary:#}");
    assert_eq!(
        summary["replies"]["220"],
        IDLE_CONNECTIONS * 3,
        "{summary:#}"
    );
}

#[test]
fn idle_rss_refuses_addresses_off_loopback() {
    let Some(python) = find_program("python3", "bench/idle-rss.py needs it") else {
        return;
    };
    let output = run_with_deadline(
        Command::new(python)
            .arg(bench_file("idle-rss.py"))
            .args(["192.0.2.1:25", "1"]),
        Duration::from_secs(30),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}
