//! Python's smtplib → `loadgen sink`: a client written by others, plain
//! and with STARTTLS and AUTH; the counts must agree.

mod common;

use std::process::Command;

use common::*;

const CLIENT: &str = r#"
import smtplib, ssl, sys
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with smtplib.SMTP(host, port, timeout=20) as smtp:
    smtp.ehlo("python.test")
    if mode == "tls":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        smtp.starttls(context=context)
        smtp.ehlo("python.test")
        smtp.login("carol", "pw")
    for n in range(40):
        message = (
            f"From: <py@python.test>\r\nTo: <a@x.test>\r\nSubject: {n}\r\n"
            f"X-Loadgen-Id: 00000000000000aa-{n}\r\n\r\n.dot line\r\nbody {n}\r\n"
        )
        refused = smtp.sendmail("py@python.test", ["a@x.test", "b@y.test", "bounce-1@x.test"], message)
        assert list(refused) == ["bounce-1@x.test"], refused
print("sent")
"#;

fn run_client(sink: &Sink, mode: &str) -> bool {
    let Some(python) = find_program("python3", "the smtplib test needs it") else {
        return false;
    };
    let output = run_with_deadline(
        Command::new(python).args([
            "-c",
            CLIENT,
            "127.0.0.1",
            &sink.addr.port().to_string(),
            mode,
        ]),
        RUN_TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "smtplib client failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "sent");
    true
}

fn check(sink: Sink) {
    let got = sink.stop();
    assert_eq!(num(&got, "/messages_accepted"), 40);
    assert_eq!(num(&got, "/recipients_accepted"), 80);
    assert_eq!(num(&got, "/recipients_refused"), 40);
    assert_eq!(num(&got, "/ids/distinct_ids"), 40);
    assert_eq!(num(&got, "/ids/duplicated_deliveries"), 0);
}

#[test]
fn smtplib_plain() {
    let sink = Sink::start(&[]);
    if run_client(&sink, "plain") {
        check(sink);
    }
}

#[test]
fn smtplib_starttls_and_login() {
    let sink = Sink::start(&["--auth", "carol:pw"]);
    if run_client(&sink, "tls") {
        check(sink);
    }
}
