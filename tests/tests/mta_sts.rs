//! MTA-STS (RFC 8461) against the test DNS server and a local HTTPS
//! policy host (Python's http.server over ssl, with a certificate from
//! the test CA): enforce (an MX the policy names gets the mail over
//! verified TLS; one it does not name gets none), testing (logged,
//! delivered), the policy cached across a restart, no policy, and the
//! per-domain opt-out.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use baton_tests::delivery::{
    at, ipv4, mx_baton, recipient_named, shared_port, wait_status, EventLog,
};
use baton_tests::dns::{DnsServer, Zone};
use baton_tests::sink::Sink;
use baton_tests::tls::{CertFiles, TestCa};
use baton_tests::{free_port, Baton};

const DOMAIN: &str = "sts.test";

/// `https://mta-sts.sts.test:PORT/.well-known/mta-sts.txt`, served by
/// Python from a directory the test writes.
struct PolicyHost {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PolicyHost {
    fn start(files: &CertFiles, policy: &str) -> PolicyHost {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".well-known")).unwrap();
        std::fs::write(dir.path().join(".well-known/mta-sts.txt"), policy).unwrap();
        let port = free_port("127.0.0.1");
        let script = format!(
            r#"
import http.server, ssl, functools, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.HTTPServer(("127.0.0.1", {port}), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("{cert}", "{key}")
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#,
            cert = files.cert.display(),
            key = files.key.display(),
        );
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        PolicyHost {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for PolicyHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// DNS for sts.test (MX mx.sts.test on 127.0.0.2, the policy host on
/// 127.0.0.1, a TXT record when `txt`), a CA, the MX sink with a
/// certificate for its name, and a policy host serving `policy`.
struct World {
    dns: DnsServer,
    ca: TestCa,
    sink: Sink,
    port: u16,
    host: Option<PolicyHost>,
    _dir: tempfile::TempDir,
}

fn world(txt: bool, policy: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let mut zone = Zone::new()
        .mx(DOMAIN, 10, "mx.sts.test")
        .a("mx.sts.test", ipv4("127.0.0.2"))
        .a("mta-sts.sts.test", ipv4("127.0.0.1"));
    if txt {
        zone = zone.txt("_mta-sts.sts.test", "v=STSv1; id=20261206;");
    }
    let dns = DnsServer::start(zone);
    let port = shared_port(&["127.0.0.2"]);
    let mx = ca.leaf("mx", &["mx.sts.test"]);
    let sink = Sink::start_on(
        at("127.0.0.2", port),
        &[
            "--tls-cert",
            mx.cert.to_str().unwrap(),
            "--tls-key",
            mx.key.to_str().unwrap(),
        ],
    );
    let host = PolicyHost::start(&ca.leaf("policy", &["mta-sts.sts.test"]), policy);
    World {
        dns,
        ca,
        sink,
        port,
        host: Some(host),
        _dir: dir,
    }
}

fn relay(w: &World, events: &EventLog, extra: &str) -> Baton {
    let host_port = w.host.as_ref().map_or(443, |h| h.port);
    let ca = format!("tls_ca = \"{}\"", w.ca.cert.display());
    let sts_port = format!("mta_sts_port = {host_port}");
    mx_baton(
        &w.dns,
        w.port,
        &[
            &ca,
            &sts_port,
            "retry_schedule = [\"1h\"]",
            "pause = \"0s\"",
            "pause_max = \"0s\"",
        ],
        &format!("{}{extra}", events.toml()),
    )
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

fn delivered(baton: &mut Baton, events: &EventLog, id: &str) -> serde_json::Value {
    baton.wait_for("delivered", |_| {
        !events.events_of("delivered", id).is_empty()
    });
    events.events_of("delivered", id).remove(0)
}

fn deferred_reply(baton: &mut Baton, id: &str) -> String {
    wait_status(baton, id, "rcpt@sts.test", "deferred");
    recipient_named(baton, id, "rcpt@sts.test")["last_reply"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

const BODY: &str = "Subject: sts\r\n\r\nx\r\n";

#[test]
fn enforce_delivers_to_a_named_mx_over_verified_tls() {
    let w = world(true, &policy("enforce", "mx.sts.test"));
    let events = EventLog::new();
    let mut baton = relay(&w, &events, "");
    let id = baton.submit("a@example.com", &["rcpt@sts.test"], BODY);
    let event = delivered(&mut baton, &events, &id);
    assert_eq!(event["tls"]["verified"], true, "{event}");
    assert!(
        baton.log().contains("mta-sts: policy fetched"),
        "{}",
        baton.log()
    );
}

#[test]
fn enforce_refuses_an_mx_the_policy_does_not_name_and_the_policy_survives_a_restart() {
    let mut w = world(true, &policy("enforce", "*.elsewhere.test"));
    let events = EventLog::new();
    let mut baton = relay(&w, &events, "");
    let id = baton.submit("a@example.com", &["rcpt@sts.test"], BODY);
    let reply = deferred_reply(&mut baton, &id);
    assert_eq!(
        reply,
        "451 4.7.5 MTA-STS policy of sts.test (enforce) names none of its MX hosts: mx.sts.test"
    );
    assert!(w.sink.messages().is_empty());
    assert!(baton.dir.path().join("spool/mta-sts-cache.json").exists());

    // The policy host goes away; the cached policy still holds after a
    // restart (RFC 8461 §5.1).
    w.host = None;
    baton.terminate();
    baton.spawn();
    let id = baton.submit("a@example.com", &["rcpt@sts.test"], BODY);
    let reply = deferred_reply(&mut baton, &id);
    assert!(
        reply.starts_with("451 4.7.5 MTA-STS policy of sts.test"),
        "{reply}"
    );
    assert!(w.sink.messages().is_empty());
}

#[test]
fn testing_mode_logs_what_enforce_would_refuse_and_delivers() {
    let w = world(true, &policy("testing", "*.elsewhere.test"));
    let events = EventLog::new();
    let mut baton = relay(&w, &events, "");
    let id = baton.submit("a@example.com", &["rcpt@sts.test"], BODY);
    delivered(&mut baton, &events, &id);
    assert!(baton.log().contains("MTA-STS testing"), "{}", baton.log());
    assert_eq!(w.sink.messages().len(), 1);
}

#[test]
fn no_policy_and_the_per_domain_opt_out_deliver_as_before() {
    // No TXT record: no policy, opportunistic TLS as usual.
    let w = world(false, &policy("enforce", "*.elsewhere.test"));
    let events = EventLog::new();
    let mut baton = relay(&w, &events, "");
    let id = baton.submit("a@example.com", &["rcpt@sts.test"], BODY);
    let event = delivered(&mut baton, &events, &id);
    assert_eq!(event["tls"]["verified"], false, "{event}");
    drop(baton);

    // A policy that would refuse, but the domain is opted out.
    let w = world(true, &policy("enforce", "*.elsewhere.test"));
    let events = EventLog::new();
    let mut baton = relay(
        &w,
        &events,
        "\n[[destination]]\ndomain = \"sts.test\"\nmta_sts = false\n",
    );
    let id = baton.submit("a@example.com", &["rcpt@sts.test"], BODY);
    delivered(&mut baton, &events, &id);
    assert_eq!(w.sink.messages().len(), 1);
}
