//! `loadgen bench` with a tiny load: the direct path, baton (when built
//! next to loadgen) and Postfix (when installed and we are root). The JSON
//! must be written, the direct path must have delivered everything, and a
//! relay that delivered nothing must say so rather than show figures.

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{find_program, loadgen, read_json, run_with_deadline};
use serde_json::Value;

const MESSAGES: u64 = 200;

#[test]
fn bench_writes_a_table_and_json_with_a_sane_direct_row() {
    let results = tempfile::tempdir().expect("temp dir");
    let baton = PathBuf::from(loadgen()).with_file_name("baton");
    let mut command = Command::new(loadgen());
    command
        .args(["bench", "-n", &MESSAGES.to_string(), "-c", "5"])
        .args(["--settle", "1s", "--drain-timeout", "10s", "--results-dir"])
        .arg(results.path());
    if baton.is_file() {
        command.arg("--baton").arg(&baton);
    } else {
        eprintln!(
            "SKIPPED baton: no {} (cargo build -p baton)",
            baton.display()
        );
        command.arg("--no-baton");
    }
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let postfix = root && find_program("postfix", "the Postfix row of loadgen bench").is_some();
    if postfix {
        command.arg("--postfix");
    }
    let begun = Instant::now();
    let output = run_with_deadline(&mut command, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    eprintln!("bench took {:?}", begun.elapsed());
    assert!(output.status.success(), "loadgen bench failed");
    assert!(stdout.contains("| direct |"), "no direct row in the table");

    let files: Vec<_> = std::fs::read_dir(results.path())
        .expect("results dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "one JSON file: {files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("bench-") && name.ends_with("Z.json"),
        "{name}"
    );
    let result = read_json(&files[0]);
    let rows = result["rows"].as_array().expect("rows");
    let direct = &rows[0];
    assert_eq!(direct["path"], "direct");
    assert_eq!(direct["messages_sent"], MESSAGES);
    assert_eq!(direct["messages_delivered"], MESSAGES);
    assert_eq!(direct["messages_lost"], 0);
    assert_eq!(direct["duplicated_deliveries"], 0);
    assert_eq!(direct["ratio"], 1.0);
    assert!(direct["delivered_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(direct["latency_end_to_end"]["count"], MESSAGES);

    let expected_paths = 1 + usize::from(baton.is_file()) + usize::from(postfix);
    assert_eq!(rows.len(), expected_paths, "{result:#}");
    for row in &rows[1..] {
        check_relay_row(row);
    }
    // baton relays: everything it accepted reaches the sink, once.
    if let Some(row) = rows.iter().find(|row| row["path"] == "baton") {
        assert_eq!(row["messages_delivered"], MESSAGES, "{row:#}");
    }
}

/// A relay row either delivered (and then has a rate and a ratio), or
/// delivered nothing and says so.
fn check_relay_row(row: &Value) {
    let delivered = row["messages_delivered"].as_u64().expect("delivered");
    if delivered == 0 {
        assert!(row["delivered_per_second"].is_null(), "{row:#}");
        assert!(row["ratio"].is_null(), "{row:#}");
        let notes = row["notes"].to_string();
        assert!(notes.contains("relay delivered 0 of"), "{row:#}");
    } else {
        assert!(row["ratio"].as_f64().is_some_and(|r| r > 0.0), "{row:#}");
        assert_eq!(row["messages_lost"], 0, "{row:#}");
        assert_eq!(row["duplicated_deliveries"], 0, "{row:#}");
    }
}

/// `--tls` (alone: every row over TLS) on the direct path: send verifies the sink's certificate against
/// the bench's CA, every message arrives over TLS (no note says otherwise),
/// and the results say the run was TLS.
#[test]
fn bench_tls_runs_the_direct_path_over_starttls() {
    let results = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(loadgen());
    command
        .args(["bench", "--tls", "--no-baton", "-n", &MESSAGES.to_string()])
        .args(["-c", "5", "--results-dir"])
        .arg(results.path());
    let output = run_with_deadline(&mut command, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "loadgen bench --tls failed");
    assert!(stdout.contains("tls: true"), "the header says TLS");

    let files: Vec<_> = std::fs::read_dir(results.path())
        .expect("results dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "one JSON file: {files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("bench-tls-"), "{name}");
    let result = read_json(&files[0]);
    assert_eq!(result["scenario"]["tls"], true, "{result:#}");
    assert_eq!(result["scenario"]["tls_mode"], "on", "{result:#}");
    let direct = &result["rows"][0];
    assert_eq!(direct["path"], "direct");
    assert_eq!(direct["tls"], true, "{direct:#}");
    assert_eq!(direct["messages_delivered"], MESSAGES, "{direct:#}");
    assert_eq!(direct["messages_lost"], 0, "{direct:#}");
    assert_eq!(direct["notes"], Value::Array(Vec::new()), "{direct:#}");
}

/// `--tls both` on the direct path: one run, one table, the path plain and
/// then over STARTTLS; the JSON says the mode and which row is which, the
/// TLS row's rate is also given over the plain row's, and every message of
/// the TLS row arrived over TLS.
#[test]
fn bench_tls_both_puts_plain_and_tls_rows_in_one_table() {
    const BOTH_MESSAGES: u64 = 300;
    let results = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(loadgen());
    command
        .args(["bench", "--tls", "both", "--no-baton"])
        .args(["-n", &BOTH_MESSAGES.to_string(), "-c", "5", "--results-dir"])
        .arg(results.path());
    let output = run_with_deadline(&mut command, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "loadgen bench --tls both failed");
    assert!(stdout.contains("tls: both"), "the header says both");
    assert!(stdout.contains("| direct |"), "a plain row");
    assert!(stdout.contains("| direct+tls |"), "a TLS row");
    assert!(
        stdout.contains(
            "TLS / plain (delivered msg/s, each path against its own plain row): direct "
        ),
        "the fraction under the table"
    );

    let files: Vec<_> = std::fs::read_dir(results.path())
        .expect("results dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "one JSON file: {files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("bench-tls-both-"), "{name}");
    let result = read_json(&files[0]);
    assert_eq!(result["scenario"]["tls_mode"], "both", "{result:#}");
    assert_eq!(result["scenario"]["tls"], false, "{result:#}");
    let rows = result["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{result:#}");
    for (row, tls) in rows.iter().zip([false, true]) {
        assert_eq!(row["path"], "direct", "{row:#}");
        assert_eq!(row["tls"], tls, "{row:#}");
        assert_eq!(row["messages_delivered"], BOTH_MESSAGES, "{row:#}");
        assert_eq!(row["messages_lost"], 0, "{row:#}");
        assert_eq!(row["duplicated_deliveries"], 0, "{row:#}");
        assert_eq!(row["notes"], Value::Array(Vec::new()), "{row:#}");
    }
    assert_eq!(rows[0]["ratio"], 1.0, "the plain direct row is the base");
    assert!(rows[0]["tls_over_plain"].is_null(), "{result:#}");
    let fraction = rows[1]["tls_over_plain"].as_f64().expect("a fraction");
    let ratio = rows[1]["ratio"].as_f64().expect("a ratio");
    assert!(fraction > 0.0, "{result:#}");
    assert!(
        (fraction - ratio).abs() < 1e-9,
        "direct+tls: its own plain row is the base row: {result:#}"
    );
}
