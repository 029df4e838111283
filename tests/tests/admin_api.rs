//! The admin API an operator scrapes and drives: /metrics counts what was
//! accepted and what delivery did, /health answers, and the POSTs that act
//! on the queue answer with a JSON reply and a status that says what
//! became of them. With `[admin] token_file`, nothing but /health answers
//! without the token, and off loopback baton will not start without one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::{baton_bin, free_port, Baton, TestConfig};

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

/// The token of the tests that use one.
const TOKEN: &str = "3f9c0e8a51d24b7e9a6c1d0f2e4b8a7c";

/// Writes `token` to a file only its owner reads, as an operator should.
fn token_file(dir: &Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("admin.token");
    std::fs::write(&path, format!("{token}\n")).expect("write the token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// Baton with an admin token, and the directory that holds its file.
fn start_with_token() -> (Baton, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = token_file(dir.path(), TOKEN);
    let baton = Baton::start_with(TestConfig {
        admin: vec![format!("token_file = \"{}\"", path.display())],
        ..TestConfig::default()
    });
    (baton, dir)
}

/// The whole response to a raw request: head and body.
fn raw_response(admin: SocketAddr, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(admin).expect("connect to the admin API");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    (head.to_string(), body.to_string())
}

/// `method path` with `authorization` as the header, if any.
fn with_authorization(
    admin: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> (String, String) {
    let header = authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
    raw_response(
        admin,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {admin}\r\n{header}\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Issue 11: an admin API anyone could reach let anyone delete or bounce
/// mail. With a token, a request without it or with another gets 401 and a
/// challenge, and a body that repeats nothing it was sent.
#[test]
fn with_a_token_requests_without_it_or_with_another_get_401() {
    let (baton, _dir) = start_with_token();
    let admin = baton.admin;
    let wrong = "Bearer 00000000000000000000000000000000";
    for (method, path) in [
        ("GET", "/queue"),
        ("GET", "/metrics"),
        ("POST", "/queue/flush"),
    ] {
        for authorization in [None, Some(wrong), Some("Basic dXNlcjpwYXNz")] {
            let (head, body) = with_authorization(admin, method, path, authorization);
            assert_eq!(
                status_of(&head),
                401,
                "{method} {path} {authorization:?}: {head}"
            );
            assert!(
                head.lines().any(|l| l
                    .to_ascii_lowercase()
                    .starts_with("www-authenticate: bearer")),
                "{method} {path}: {head}"
            );
            assert!(
                !body.contains(TOKEN) && !body.contains("0000000000"),
                "{body}"
            );
        }
    }
    // The right token, as a client such as curl sends it.
    let (head, body) = with_authorization(admin, "GET", "/queue", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(status_of(&head), 200, "{head}\n{body}");
    let (head, body) = with_authorization(
        admin,
        "POST",
        "/queue/flush",
        Some(&format!("Bearer {TOKEN}")),
    );
    assert_eq!(status_of(&head), 200, "{head}\n{body}");
    // Load balancers' health checks carry no token.
    let (head, body) = with_authorization(admin, "GET", "/health", None);
    assert_eq!((status_of(&head), body.trim()), (200, "ok"));
    assert!(
        !baton.log().contains(TOKEN),
        "the token reached the log:\n{}",
        baton.log()
    );
}

/// The same with curl, the client an operator's scripts use, where it is
/// installed.
#[test]
fn curl_with_the_token_is_served_and_without_it_is_refused() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl is not installed; skipped");
        return;
    }
    let (baton, _dir) = start_with_token();
    let url = format!("http://{}/queue", baton.admin);
    let curl = |extra: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(extra)
            .arg(&url)
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        curl(&["-H", &format!("Authorization: Bearer {TOKEN}")]),
        "200"
    );
    assert_eq!(curl(&["--oauth2-bearer", TOKEN]), "200");
    assert_eq!(curl(&[]), "401");
    assert_eq!(
        curl(&["-H", "Authorization: Bearer not-the-token-at-all"]),
        "401"
    );
}

/// `baton queue` reads the token from the configuration it is given; given
/// none, or another token, it says what is missing.
#[test]
fn baton_queue_sends_the_token_from_its_configuration() {
    let (baton, dir) = start_with_token();
    let id = baton.submit(
        "a@example.com",
        &["b@example.org"],
        "Subject: t\r\n\r\nhi\r\n",
    );
    // `queue` and `show` go through `baton queue ... --config`.
    assert_eq!(baton.queued_recipients(), 1);
    let shown = baton.show(&id);
    assert_eq!(Baton::shown_recipients(&shown), ["b@example.org"]);
    let (ok, stdout, stderr) = baton.cli(&["queue", "list"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("example.org"), "{stdout}");
    let (ok, stdout, stderr) = baton.cli(&["queue", "show", &id]);
    assert!(ok && stdout.contains("b@example.org"), "{stdout}{stderr}");
    let (ok, _, stderr) = baton.cli(&["queue", "flush"]);
    assert!(ok, "{stderr}");

    // No configuration: no token.
    let admin = baton.admin.to_string();
    for args in [
        vec!["queue", "list", "--admin", &admin],
        vec!["queue", "flush", "--admin", &admin],
    ] {
        let out = Command::new(baton_bin())
            .args(&args)
            .output()
            .expect("run baton");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains("needs the token in [admin] token_file"),
            "{args:?}: {stderr}"
        );
    }

    // A configuration with another token.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let other_token = token_file(&other, "another-token-of-enough-length");
    let config = other.join("baton.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\naddress = \"{admin}\"\ntoken_file = \"{}\"\n",
            other_token.display()
        ),
    )
    .unwrap();
    let out = Command::new(baton_bin())
        .args(["queue", "list", "--config"])
        .arg(&config)
        .output()
        .expect("run baton");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("refused the token"), "{stderr}");
}

/// Runs `baton <args>` to its end, which must come within 20 s: a server
/// that starts when it should not is killed and fails the test.
fn run_to_exit(args: &[&str], config: &Path) -> (bool, String) {
    let mut child = Command::new(baton_bin())
        .args(args)
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start baton");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("baton {args:?} still runs after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Issue 11: `[admin] address = "0.0.0.0:8025"` passed `check-config` and
/// served anyone. Off loopback, without a token, neither `check-config`
/// nor `baton run` accepts it; nor a token too short to resist guessing.
#[test]
fn an_admin_address_off_loopback_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("baton.toml");
    let smtp = free_port("127.0.0.1");
    let base = format!(
        "[[listener]]\naddress = \"127.0.0.1:{smtp}\"\n\n[spool]\npath = \"{}\"\n\
         segment_bytes = 1048576\n\n",
        dir.path().join("spool").display()
    );
    for address in [
        format!("0.0.0.0:{}", free_port("0.0.0.0")),
        format!("[::]:{}", free_port("::")),
    ] {
        std::fs::write(&config, format!("{base}[admin]\naddress = \"{address}\"\n")).unwrap();
        for args in [&["run", "--config"][..], &["check-config"][..]] {
            let (ok, output) = run_to_exit(args, &config);
            assert!(!ok, "{args:?} {address}: {output}");
            assert!(
                output.contains("admin.address") && output.contains("admin.token_file"),
                "{args:?} {address}: {output}"
            );
            assert!(!output.contains("panicked"), "{output}");
        }
    }
    // A token file whose token is too short fails the same way.
    let short = dir.path().join("short.token");
    std::fs::write(&short, "letmein\n").unwrap();
    std::fs::write(
        &config,
        format!(
            "{base}[admin]\naddress = \"0.0.0.0:{}\"\ntoken_file = \"{}\"\n",
            free_port("0.0.0.0"),
            short.display()
        ),
    )
    .unwrap();
    for args in [&["run", "--config"][..], &["check-config"][..]] {
        let (ok, output) = run_to_exit(args, &config);
        assert!(!ok, "{args:?}: {output}");
        assert!(output.contains("admin.token_file"), "{args:?}: {output}");
        assert!(output.contains("at least 16"), "{args:?}: {output}");
        assert!(!output.contains("letmein"), "{args:?}: {output}");
    }
}

/// check-config warns, at the key and its line, of an open relay and of a
/// token file others can read; the file still checks out.
#[test]
fn check_config_warns_of_an_open_relay_at_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("baton.toml");
    let token = dir.path().join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        &config,
        format!(
            "[[listener]]\naddress = \"0.0.0.0:25\"\n\n\
             [relay]\nnetworks = [\"0.0.0.0/0\"]\n\n\
             [admin]\naddress = \"0.0.0.0:8025\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    )
    .unwrap();
    let (ok, output) = run_to_exit(&["check-config"], &config);
    assert!(ok, "{output}");
    let warning = format!("warning: {}:5:", config.display());
    let line = output
        .lines()
        .find(|l| l.starts_with(&warning))
        .unwrap_or_else(|| panic!("no {warning:?} in\n{output}"));
    assert!(line.contains(" relay.networks[0]: "), "{line}");
    assert!(line.contains("open relay"), "{line}");
    assert!(
        output.lines().any(|l| l.starts_with("warning:")
            && l.contains("admin.token_file")
            && l.contains("644")),
        "{output}"
    );
    assert!(
        output.contains(&format!("{}: ok", config.display())),
        "{output}"
    );
    // Private networks on the same listener: no warning.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&config, text.replace("0.0.0.0/0", "10.0.0.0/8")).unwrap();
    let (ok, output) = run_to_exit(&["check-config"], &config);
    assert!(ok, "{output}");
    // (A descriptor warning depends on the host's limits.)
    assert!(
        !output.contains("open relay") && !output.contains("admin.token_file"),
        "{output}"
    );
}
