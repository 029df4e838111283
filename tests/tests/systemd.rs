//! systemd's `Type=notify`: baton says `READY=1` on `$NOTIFY_SOCKET` once it
//! accepts SMTP, and `STOPPING=1` when SIGTERM stops it, as
//! `packaging/baton.service` expects (a socket bound by the test stands for
//! systemd's).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use baton_tests::{Baton, TestConfig};

#[test]
fn baton_tells_systemd_it_is_ready_and_then_that_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut server = Baton::start_with(TestConfig {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        ..TestConfig::default()
    });
    let mut buffer = [0u8; 4096];
    let n = socket.recv(&mut buffer).expect("a notification");
    let ready = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means accepting: a client gets the greeting.
    let mut smtp = server.connect();
    assert_eq!(smtp.ehlo("client.test").code, 250);
    drop(smtp);
    let status = server.terminate();
    assert!(status.success(), "{status}");
    let n = socket.recv(&mut buffer).expect("a notification");
    let stopping = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
}
