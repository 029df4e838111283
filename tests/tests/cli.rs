//! The command line an operator uses: the default configuration checks
//! out, a configuration error names the key and its line, and `baton queue`
//! answers cleanly, also about a message that is not there.

use std::path::Path;
use std::process::Command;

use baton_tests::{baton_bin, queued_id, Baton};

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
    assert!(
        stdout.contains(&id) && stdout.contains("<b@example.org> pending"),
        "{stdout}"
    );
    // Ids print in upper case; lower case is the same id.
    let (ok, stdout, stderr) = server.cli(&["queue", "show", &id.to_lowercase(), "--json"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&id), "{stdout}");
    let (ok, stdout, stderr) = server.cli(&["queue", "list"]);
    assert!(ok, "{stderr}");
    // DESTINATION READY SCHEDULED
    let example_org = stdout
        .lines()
        .find(|l| l.starts_with("example.org "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(example_org, Some(vec!["example.org", "1", "0"]), "{stdout}");

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
