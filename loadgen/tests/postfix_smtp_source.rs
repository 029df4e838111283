//! Postfix's `smtp-source` → `loadgen sink`: a client written by others
//! (no pipelining); the sink's counts must be what it sent. Skipped, with
//! a notice, where Postfix's test tools are not installed.

mod common;

use std::process::Command;

use common::*;

#[test]
fn postfix_smtp_source_to_loadgen_sink() {
    let Some(smtp_source) = find_program("smtp-source", "apt-get install postfix") else {
        return;
    };
    let sink = Sink::start(&[]);
    let output = run_with_deadline(
        Command::new(&smtp_source)
            .args([
                "-s",
                "5",
                "-m",
                "300",
                "-r",
                "2",
                "-l",
                "2000",
                "-f",
                "src@source.test",
                "-t",
                "dst@sink.test",
                "-M",
                "source.test",
            ])
            .arg(sink.target()),
        RUN_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // And the same with -d: many messages per connection.
    let output = run_with_deadline(
        Command::new(&smtp_source)
            .args([
                "-d",
                "-s",
                "5",
                "-m",
                "200",
                "-l",
                "5120",
                "-M",
                "source.test",
            ])
            .arg(sink.target()),
        RUN_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "smtp-source -d: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got = sink.stop();
    assert_eq!(num(&got, "/messages_accepted"), 500);
    assert_eq!(num(&got, "/recipients_accepted"), 800);
    assert_eq!(num(&got, "/ids/messages_without_id"), 500);
    // Without -d, one connection per message.
    assert!(num(&got, "/connections") >= 300);
}
