//! STARTTLS (verified and not) and AUTH PLAIN/LOGIN, and the clear errors
//! `send` gives when they cannot be had.

mod common;

use common::*;

#[test]
fn starttls_verified_against_the_sinks_certificate_with_auth_plain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("sink.pem");
    let cert = cert.to_str().expect("utf-8 path");
    let sink = Sink::start(&["--tls-cert-out", cert, "--auth", "alice:s3cret"]);
    let run = sink.send(&[
        "-n",
        "200",
        "-c",
        "4",
        "--starttls",
        "--tls-ca",
        cert,
        "--tls-server-name",
        "localhost",
        "--auth-user",
        "alice",
        "--auth-password",
        "s3cret",
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    let sent = &run.report;
    assert_eq!(num(sent, "/messages_accepted"), 200);
    assert_eq!(replies(sent, "STARTTLS", 220), 4);
    assert_eq!(replies(sent, "AUTH", 235), 4);
    // EHLO twice per session: before and after TLS.
    assert_eq!(replies(sent, "EHLO", 250), 8);
    let got = sink.stop();
    assert_eq!(num(&got, "/messages_accepted"), 200);
    assert_eq!(num(&got, "/ids/verify/messages_lost"), 0);
}

#[test]
fn starttls_unverified_with_auth_login() {
    let sink = Sink::start(&["--auth", "bob:pw"]);
    let run = sink.send(&[
        "-n",
        "50",
        "-c",
        "2",
        "--starttls",
        "--tls-no-verify",
        "--auth-user",
        "bob",
        "--auth-password",
        "pw",
        "--auth-mechanism",
        "login",
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(replies(&run.report, "AUTH", 334), 4);
    assert_eq!(replies(&run.report, "AUTH", 235), 2);
    assert_eq!(num(&sink.stop(), "/messages_accepted"), 50);
}

/// A run that cannot work says why in one line, and exits 1, without a
/// panic or a backtrace.
fn assert_clear_failure(run: &SendRun, expected: &str) {
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(expected),
        "wanted {expected:?} in {}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn verification_failure_is_a_clear_tls_error() {
    let sink = Sink::start(&[]);
    // The sink's certificate is self-signed: not trusted by the system.
    let run = sink.send(&["-n", "5", "--starttls", "--tls-server-name", "localhost"]);
    // No roots on a minimal system is also a clear error.
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("TLS failed") || run.stderr.contains("no trusted root"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"));
}

#[test]
fn wrong_password_and_missing_extensions_are_clear_errors() {
    let sink = Sink::start(&["--auth", "alice:right", "--no-starttls"]);
    let target = sink.target();
    let report = sink.send_report();
    let run = send(
        &target,
        &report,
        &[
            "-n",
            "5",
            "--auth-user",
            "alice",
            "--auth-password",
            "wrong",
        ],
    );
    assert_clear_failure(&run, "authentication failed: 535 5.7.8");
    let run = send(
        &target,
        &report,
        &["-n", "5", "--starttls", "--tls-no-verify"],
    );
    assert_clear_failure(&run, "server does not offer STARTTLS");
    // MAIL without AUTH: refused, every time.
    let run = send(&target, &report, &["-n", "5"]);
    assert_clear_failure(
        &run,
        "the server refused the sender: 530 5.7.0 authentication required",
    );
}

#[test]
fn nothing_listening_is_a_clear_error() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let run = send(
        &format!("127.0.0.1:{port}"),
        &dir.path().join("r.json"),
        &["-n", "5"],
    );
    assert_clear_failure(&run, "cannot connect: 127.0.0.1:");
    assert_eq!(
        run.report["fatal"].as_str().map(|s| s.contains("refused")),
        Some(true)
    );
}

#[test]
fn auth_in_one_argument_and_the_sinks_counts() {
    let sink = Sink::start(&["--auth", "dave:p:w"]);
    let run = sink.send(&[
        "-n",
        "6",
        "-c",
        "2",
        "--starttls",
        "--tls-no-verify",
        "--auth",
        "dave:p:w",
        "--auth-mech",
        "login",
    ]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(replies(&run.report, "AUTH", 235), 2);
    let got = sink.stop();
    assert_eq!(num(&got, "/messages_accepted"), 6);
    assert_eq!(num(&got, "/auth_attempts"), 2);
    assert_eq!(num(&got, "/auth_successes"), 2);
    assert_eq!(num(&got, "/auth_failures"), 0);
}

#[test]
fn a_sink_with_tls_takes_credentials_only_after_starttls() {
    let sink = Sink::start(&["--auth", "erin:pw"]);
    let target = sink.target();
    let report = sink.send_report();
    // Not offered in plain text, so send says it cannot authenticate.
    let run = send(&target, &report, &["-n", "1", "--auth", "erin:pw"]);
    assert_clear_failure(&run, "server offers neither AUTH PLAIN nor AUTH LOGIN");
    // Forced: refused with 538 (RFC 4954 §4), never checked.
    let run = send(
        &target,
        &report,
        &["-n", "1", "--auth", "erin:pw", "--auth-mech", "plain"],
    );
    assert_clear_failure(&run, "authentication failed: 538 5.7.11");
    let run = send(
        &target,
        &report,
        &[
            "-n",
            "1",
            "--auth",
            "erin:wrong",
            "--starttls",
            "--tls-no-verify",
        ],
    );
    assert_clear_failure(&run, "authentication failed: 535 5.7.8");
    let got = sink.stop();
    assert_eq!(num(&got, "/messages_accepted"), 0);
    // Each of send's connections tried before the run stopped.
    assert!(num(&got, "/auth_attempts") >= 2, "{got}");
    assert_eq!(num(&got, "/auth_successes"), 0);
    assert_eq!(num(&got, "/auth_failures"), num(&got, "/auth_attempts"));
}
