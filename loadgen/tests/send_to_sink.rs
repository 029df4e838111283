//! `loadgen send` → `loadgen sink`: what one side counts, the other
//! counts too, id by id.

mod common;

use common::*;

#[test]
fn pipelined_run_arrives_complete_without_duplicates() {
    let sink = Sink::start(&[]);
    let run = sink.send(&[
        "-n",
        "3000",
        "-c",
        "20",
        "--rcpts",
        "3",
        "--generated-domains",
        "5",
        "--seed",
        "1",
    ]);
    assert!(run.status.success());
    let sent = &run.report;
    assert_eq!(num(sent, "/messages_accepted"), 3000);
    assert_eq!(num(sent, "/messages_failed"), 0);
    assert_eq!(num(sent, "/recipients_accepted"), 9000);
    assert_eq!(replies(sent, "DATA-END", 250), 3000);
    assert_eq!(replies(sent, "RCPT", 250), 9000);
    assert_eq!(sent["pipelining"], true);
    assert_eq!(num(sent, "/latency/message/count"), 3000);

    let got = sink.stop();
    assert_eq!(num(&got, "/messages_accepted"), 3000);
    assert_eq!(num(&got, "/recipients_accepted"), 9000);
    assert_eq!(num(&got, "/bytes_accepted"), num(sent, "/bytes_accepted"));
    assert_eq!(num(&got, "/connections"), 20);
    assert_eq!(num(&got, "/ids/distinct_ids"), 3000);
    assert_eq!(num(&got, "/ids/deliveries"), 9000);
    assert_eq!(num(&got, "/ids/duplicated_deliveries"), 0);
    assert_eq!(num(&got, "/ids/verify/expected_messages"), 3000);
    assert_eq!(num(&got, "/ids/verify/messages_lost"), 0);
    assert_eq!(num(&got, "/ids/verify/recipients_lost"), 0);
    assert_eq!(num(&got, "/ids/verify/messages_unexpected"), 0);
    assert_eq!(num(&got, "/latency_end_to_end/count"), 3000);
}

#[test]
fn lockstep_with_reconnections_and_drawn_sizes() {
    let sink = Sink::start(&[]);
    let run = sink.send(&[
        "-n",
        "500",
        "-c",
        "5",
        "--no-pipelining",
        "-m",
        "7",
        "--size",
        "1KiB-20KiB",
        "--seed",
        "2",
    ]);
    assert!(run.status.success());
    let sent = &run.report;
    assert_eq!(num(sent, "/messages_accepted"), 500);
    assert_eq!(sent["pipelining"], false);
    // 500 messages, 7 per connection at most: at least 72 sessions.
    assert!(num(sent, "/connections_opened") >= 72);
    assert_eq!(replies(sent, "QUIT", 221), num(sent, "/connections_opened"));

    let got = sink.stop();
    assert_eq!(num(&got, "/messages_accepted"), 500);
    assert_eq!(num(&got, "/connections"), num(sent, "/connections_opened"));
    // Sizes are drawn per message and include the headers: the sink
    // counts exactly the bytes send meant to send.
    assert_eq!(num(&got, "/bytes_accepted"), num(sent, "/bytes_accepted"));
    assert_eq!(num(&got, "/ids/verify/messages_lost"), 0);
}

#[test]
fn dumped_messages_carry_body_file_and_headers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dump = dir.path().join("dump");
    let sink = Sink::start(&["--dump-dir", dump.to_str().expect("utf-8 path")]);
    let body = dir.path().join("body.txt");
    std::fs::write(&body, "first line\n.leading dot\nlast line\n").expect("write body");
    let run = sink.send(&[
        "-n",
        "5",
        "-c",
        "1",
        "--body-file",
        body.to_str().expect("utf-8 path"),
        "-H",
        "X-Campaign: spring",
        "--from",
        "sender@loadgen.test",
        "--locals",
        "someone",
        "--domains",
        "example.test",
    ]);
    assert!(run.status.success());
    let got = sink.stop();
    assert_eq!(num(&got, "/messages_accepted"), 5);
    let mut files: Vec<_> = std::fs::read_dir(&dump)
        .expect("dump dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 5);
    let run_id = run.report["run_id"].as_str().expect("run id").to_string();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read dumped message");
        assert!(text.contains(&format!("X-Loadgen-Id: {run_id}-")), "{text}");
        assert!(text.contains("X-Loadgen-Sent: "), "{text}");
        assert!(text.contains("X-Campaign: spring\r\n"), "{text}");
        assert!(text.contains("To: <someone@example.test>\r\n"), "{text}");
        assert!(text.contains("From: <sender@loadgen.test>\r\n"), "{text}");
        // Dot-stuffed on the wire, unstuffed in the dump.
        assert!(
            text.ends_with("\r\n\r\nfirst line\r\n.leading dot\r\nlast line\r\n"),
            "{text:?}"
        );
    }
}
