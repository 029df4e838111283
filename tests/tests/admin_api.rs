//! The admin API an operator scrapes: /metrics counts what was accepted,
//! /health answers.

use std::io::{Read, Write};
use std::net::TcpStream;

use baton_tests::Baton;

fn get(baton: &Baton, path: &str) -> String {
    let mut stream = TcpStream::connect(baton.admin).expect("connect to the admin API");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    assert!(response.starts_with("HTTP/1.1 200 "), "{path}: {response}");
    response
}

#[test]
fn metrics_count_accepted_mail_and_health_answers() {
    let baton = Baton::start();
    assert!(get(&baton, "/health").ends_with("ok\n"));
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    let body = "Subject: count me\r\n\r\nhello\r\n";
    let reply = smtp.send_message("a@example.com", &["b@example.org", "c@example.net"], body);
    assert_eq!(reply.code, 250, "{reply:?}");
    let metrics = get(&baton, "/metrics");
    for line in [
        "# TYPE baton_messages_accepted_total counter",
        "baton_messages_accepted_total 1",
        "baton_recipients_accepted_total 2",
        "baton_queue_recipients 2",
        "# TYPE baton_queue_recipients gauge",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
}
