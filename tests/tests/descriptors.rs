//! Running out of file descriptors (issue 10): baton backs off accepting
//! instead of spinning, says so in one log line per interval instead of
//! one per failed accept, and serves again once descriptors are free.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use baton_tests::{Baton, TestConfig};

#[test]
fn exhausted_descriptors_pause_accepting_and_service_resumes() {
    let mut baton = Baton::start_with(TestConfig {
        descriptor_limit: Some(96),
        shards: Some(1),
        ..TestConfig::default()
    });
    // Far more connections than descriptors left: the rest wait in the
    // listen backlog while baton cannot accept them.
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(stream) = TcpStream::connect(baton.smtp) {
            held.push(stream);
        }
    }
    baton.wait_for("accepts to fail", |b| b.log().contains("accept failed"));
    // Two seconds of exhaustion: a spinning accept loop would log
    // thousands of lines; the pause and the rate limit allow a few.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = baton.log().matches("accept failed").count();
    assert!(
        lines <= 6,
        "{lines} log lines about failed accepts\n{}",
        baton.log()
    );
    assert!(baton.is_running());

    // Descriptors free again: a new client is greeted and served.
    drop(held);
    let mut smtp = baton.connect();
    assert_eq!(smtp.ehlo("client.test").code, 250);
}
