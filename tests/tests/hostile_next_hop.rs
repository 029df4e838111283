//! Next hops that do not speak SMTP (issue 10): a greeting of garbage, or
//! an EHLO reply of 100,000 lines. Each connection that fails counts as an
//! attempt for the recipients it was for: they are deferred with a reply
//! that says what happened, and baton does not reconnect in a loop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_tests::delivery::{recipient_named, route, wait_status};
use baton_tests::{Baton, TestConfig};

/// A server on loopback that answers every connection with `script`'s
/// bytes, and counts connections.
fn hostile(script: fn(&mut std::net::TcpStream)) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::AcqRel);
            std::thread::spawn(move || script(&mut stream));
        }
    });
    (addr, connections)
}

fn garbage_greeting(stream: &mut std::net::TcpStream) {
    let junk = vec![b'#'; 1 << 20];
    let _ = stream.write_all(&junk);
    let _ = stream.write_all(b"\r\n");
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

fn endless_ehlo(stream: &mut std::net::TcpStream) {
    let _ = stream.write_all(b"220 hostile.test ESMTP\r\n");
    let mut buf = [0u8; 1024];
    let _ = stream.read(&mut buf);
    let lines = "250-EXTENSION\r\n".repeat(100_000);
    let _ = stream.write_all(lines.as_bytes());
    let _ = stream.write_all(b"250 END\r\n");
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

/// A greeting that never ends, one byte every half second: each byte is
/// progress on the socket, none on the reply.
fn dripping_greeting(stream: &mut std::net::TcpStream) {
    for byte in b"220-slow.test\r\n".iter().cycle().take(10_000) {
        if stream.write_all(&[*byte]).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn check(script: fn(&mut std::net::TcpStream), expected: &str) {
    let (addr, connections) = hostile(script);
    let mut baton = Baton::start_with(TestConfig {
        deliver: true,
        delivery: vec![
            "retry_schedule = [\"1h\"]".into(),
            "pause = \"1s\"".into(),
            "greeting_timeout = \"3s\"".into(),
        ],
        extra_toml: route("*", addr),
        ..TestConfig::default()
    });
    let id = baton.submit(
        "a@example.com",
        &["b@example.org"],
        "Subject: x\r\n\r\nx\r\n",
    );
    wait_status(&mut baton, &id, "b@example.org", "deferred");
    let shown = recipient_named(&baton, &id, "b@example.org");
    assert_eq!(shown["attempts"], 1, "{shown}");
    let reply = shown["last_reply"].as_str().unwrap_or_default();
    assert!(reply.starts_with("451 4.4.1 no host answered: "), "{shown}");
    assert!(reply.contains(expected), "{shown}");
    // No reconnect storm: two seconds on, still about one connection.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let count = connections.load(Ordering::Acquire);
    assert!(
        count <= 2,
        "{count} connections to a host that does not speak SMTP"
    );
}

#[test]
fn a_greeting_dripped_a_byte_at_a_time_times_out_as_a_whole() {
    // greeting_timeout is 3 s; the old deadline, renewed by every byte,
    // never came.
    check(dripping_greeting, "timed out waiting for the server");
}

#[test]
fn a_garbage_greeting_is_an_attempt_not_a_reconnect_loop() {
    check(garbage_greeting, "the reply was not SMTP");
}

#[test]
fn an_ehlo_reply_of_100000_lines_is_an_attempt_not_a_reconnect_loop() {
    check(endless_ehlo, "the reply was not SMTP");
}
