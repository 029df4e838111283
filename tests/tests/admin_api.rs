//! The admin API an operator scrapes and drives: /metrics counts what was
//! accepted and what delivery did, /health answers, and the POSTs that act
//! on the queue answer with a JSON reply and a status that says what
//! became of them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use baton_tests::Baton;

fn get(baton: &Baton, path: &str) -> String {
    get_at(baton.admin, path)
}

fn get_at(admin: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(admin).expect("connect to the admin API");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    assert!(response.starts_with("HTTP/1.1 200 "), "{path}: {response}");
    response
}

/// POSTs `path`; the status and the JSON reply (`ok`, `recipients`,
/// `message`).
fn post(baton: &Baton, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = baton.admin_request("POST", path);
    let reply = serde_json::from_str(&body)
        .unwrap_or_else(|err| panic!("POST {path}: {status} {body:?} is not JSON: {err}"));
    (status, reply)
}

#[test]
fn metrics_count_accepted_mail_and_health_answers() {
    let mut baton = Baton::start();
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
        "# TYPE baton_connections_opened_total counter",
        "# TYPE baton_connections_failed_total counter",
        "# TYPE baton_recipients_delivered_total counter",
        "# TYPE baton_recipients_deferred_total counter",
        "# TYPE baton_recipients_failed_total counter",
        "# TYPE baton_bounces_generated_total counter",
        "# TYPE baton_destination_ready gauge",
        "# TYPE baton_destination_scheduled gauge",
        "# TYPE baton_destination_connections gauge",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    // Every counter has a sample, zero or not.
    for name in [
        "baton_connections_opened_total",
        "baton_connections_failed_total",
        "baton_recipients_delivered_total",
        "baton_recipients_deferred_total",
        "baton_recipients_failed_total",
        "baton_bounces_generated_total",
    ] {
        let sample = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")));
        assert!(
            sample.is_some_and(|v| v.parse::<u64>().is_ok()),
            "no sample of {name} in\n{metrics}"
        );
    }
    // Each destination has its series once its recipients are queued.
    let admin = baton.admin;
    baton.wait_until("per-destination gauges for both domains", || {
        let metrics = get_at(admin, "/metrics");
        ["ready", "scheduled", "connections"].iter().all(|gauge| {
            ["example.org", "example.net"].iter().all(|destination| {
                let prefix = format!("baton_destination_{gauge}{{destination=\"{destination}\"}} ");
                metrics.lines().any(|l| l.starts_with(&prefix))
            })
        })
    });
}

#[test]
fn operator_actions_answer_with_a_reply_and_a_status() {
    let baton = Baton::start();

    // Nothing queued: a flush is done, and moves nobody.
    for path in ["/queue/flush", "/queue/flush/example.org"] {
        let (status, reply) = post(&baton, path);
        assert_eq!(status, 200, "{path}: {reply}");
        assert_eq!(reply["ok"], true, "{path}: {reply}");
        assert_eq!(reply["recipients"], 0, "{path}: {reply}");
        assert!(reply["message"].is_string(), "{path}: {reply}");
    }

    // A well-formed id that is not queued.
    for action in ["delete", "bounce"] {
        let path = format!("/queue/00000000000000FF/{action}");
        let (status, reply) = post(&baton, &path);
        assert_eq!(status, 404, "{path}: {reply}");
        assert_eq!(reply["ok"], false, "{path}: {reply}");
        assert_eq!(reply["recipients"], 0, "{path}: {reply}");
        let message = reply["message"].as_str().expect("message");
        assert!(
            message.contains("no message") && message.contains("00000000000000FF"),
            "{path}: {reply}"
        );
    }

    // Not an id, not a domain.
    for path in [
        "/queue/not-an-id/delete",
        "/queue/not-an-id/bounce",
        "/queue/1FFFFFFFFFFFFFFFF/delete",
        "/queue/flush/a%2Fb",
    ] {
        let (status, reply) = post(&baton, path);
        assert_eq!(status, 400, "{path}: {reply}");
        assert_eq!(reply["ok"], false, "{path}: {reply}");
    }

    // A known path with the other method.
    for (method, path) in [
        ("GET", "/queue/flush"),
        ("GET", "/queue/flush/example.org"),
        ("GET", "/queue/00000000000000FF/delete"),
        ("GET", "/queue/00000000000000FF/bounce"),
        ("POST", "/metrics"),
        ("POST", "/queue/00000000000000FF"),
    ] {
        let (status, body) = baton.admin_request(method, path);
        assert_eq!(status, 405, "{method} {path}: {body}");
    }
    let (status, _) = baton.admin_request("POST", "/queue/00000000000000FF/requeue");
    assert_eq!(status, 404);

    // The API still serves after all that.
    assert!(get(&baton, "/health").ends_with("ok\n"));
}

/// One raw request with the given headers: `(status, body)`.
fn raw(admin: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).expect("connect to the admin API");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// Issue 10: a browser on the host could POST to the API (a page's
/// cross-origin request, or a DNS name rebound to 127.0.0.1), and ten idle
/// connections held `/health` up for 51 s.
#[test]
fn foreign_hosts_and_origins_are_refused_and_idle_clients_block_nobody() {
    let baton = Baton::start();
    let admin = baton.admin;
    let (status, body) = raw(
        admin,
        &format!(
            "POST /queue/flush HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = raw(
        admin,
        &format!(
            "POST /queue/flush HTTP/1.1\r\nHost: rebound.example:{}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            admin.port()
        ),
    );
    assert_eq!(status, 403, "{body}");
    // Ten clients that connect and say nothing.
    let idle: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let (status, body) = raw(
        admin,
        &format!("GET /health HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!((status, body.trim()), (200, "ok"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
}
