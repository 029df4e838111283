//! The sink's loss and duplicate checks, fed runs with a known loss and
//! known duplicates.

mod common;

use common::*;
use serde_json::json;

#[test]
fn a_known_loss_is_found() {
    let sink = Sink::start(&[]);
    let run = sink.send(&["-n", "200", "-c", "4", "--rcpts", "2"]);
    assert!(run.status.success());
    let mut report = run.report.clone();
    assert_eq!(report["accepted"], json!([[0, 200, 2]]));
    // Pretend the server under test had also accepted messages 200..210
    // (never sent, so never delivered), and not accepted 0..5 (which were).
    report["accepted"] = json!([[5, 210, 2]]);
    std::fs::write(sink.send_report(), report.to_string()).expect("rewrite the report");
    let got = sink.stop();
    assert_eq!(num(&got, "/ids/verify/expected_messages"), 205);
    assert_eq!(num(&got, "/ids/verify/messages_lost"), 10);
    assert_eq!(num(&got, "/ids/verify/recipients_lost"), 20);
    assert_eq!(num(&got, "/ids/verify/messages_unexpected"), 5);
    assert_eq!(num(&got, "/ids/duplicated_deliveries"), 0);
}

#[test]
fn a_run_sent_twice_is_all_duplicates() {
    let sink = Sink::start(&[]);
    let args = [
        "-n", "150", "-c", "3", "--rcpts", "2", "--run-id", "feed", "--seed", "9",
    ];
    assert!(sink.send(&args).status.success());
    assert!(sink.send(&args).status.success());
    let got = sink.stop();
    assert_eq!(num(&got, "/ids/distinct_ids"), 150);
    assert_eq!(num(&got, "/ids/deliveries"), 600);
    assert_eq!(num(&got, "/ids/duplicated_deliveries"), 300);
    assert_eq!(num(&got, "/ids/duplicated_messages"), 150);
    assert_eq!(num(&got, "/ids/verify/messages_lost"), 0);
}

#[test]
fn a_missing_report_is_said_not_hidden() {
    let sink = Sink::start(&[]);
    let got = sink.stop();
    let error = got["verify_error"].as_str().expect("a verify error");
    assert!(error.contains("cannot read"), "{error}");
}
