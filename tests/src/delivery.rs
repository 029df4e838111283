//! Helpers for the tests of delivery: `[[route]]` tables to a next hop,
//! a port free on several loopback addresses (each address stands for one
//! MX host, all on the one `delivery.mx_port`), the `[dns]` table that
//! points baton at a test [`DnsServer`], the delivery event log,
//! `loadgen send` runs with their report, what each sink received by
//! loadgen id, the admin API's JSON (a message's recipients, the queue)
//! and metrics, and delivery status notifications (RFC 3464) taken apart.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::dns::{DnsServer, Zone};
use crate::sink::{loadgen_bin, Sink};
use crate::{Baton, TestConfig};

/// Ports tried before [`shared_port`] gives up.
const SHARED_PORT_TRIES_MAX: usize = 64;

/// A port free on every address of `ips`: MX tests put each host on its own IP, all on `mx_port`.
pub fn shared_port(ips: &[&str]) -> u16 {
    let (first, others) = ips.split_first().expect("at least one address");
    for _ in 0..SHARED_PORT_TRIES_MAX {
        let port = crate::free_port(first);
        // Hold each while checking the next, so the answer is about one
        // moment; all are released before the sinks bind.
        let held: Vec<_> = others
            .iter()
            .map_while(|ip| TcpListener::bind((*ip, port)).ok())
            .collect();
        if held.len() == others.len() {
            return port;
        }
    }
    panic!("no port free on all of {ips:?} after {SHARED_PORT_TRIES_MAX} tries");
}

/// `ip:port` as a socket address: where a test starts a sink or points a route.
pub fn at(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("socket address")
}

/// The `[[route]]` sending `domain` (`*`: all) to `next_hop`: smart-host tests' `extra_toml`.
pub fn route(domain: &str, next_hop: SocketAddr) -> String {
    format!("[[route]]\ndomain = \"{domain}\"\nnext_hop = \"{next_hop}\"\n")
}

/// The delivery event log (`[log] events`) in a directory of its own: tests read what baton logged.
pub struct EventLog {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Default for EventLog {
    fn default() -> EventLog {
        EventLog::new()
    }
}

impl EventLog {
    /// A place for a log baton has not written yet, in a new temporary directory.
    pub fn new() -> EventLog {
        let dir = tempfile::tempdir().expect("event log directory");
        EventLog {
            path: dir.path().join("events.jsonl"),
            _dir: dir,
        }
    }

    /// Where baton writes it: for a test that parses the raw lines itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `[log]` table that makes baton write it, for a test's `extra_toml`.
    pub fn toml(&self) -> String {
        format!("[log]\nevents = \"{}\"\n", self.path.display())
    }

    /// Every complete line so far, parsed (a line that is not JSON fails the test): all events.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        // The writer flushes whole lines, but a test may read the file
        // while it is written: only complete lines count.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|err| panic!("event {line:?}: {err}"))
            })
            .collect()
    }

    /// The events of `kind` about message `id`: how a test counts one message's attempts.
    pub fn events_of(&self, kind: &str, id: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind && e["queue_id"] == id)
            .collect()
    }
}

/// How long baton waits for a test [`DnsServer`], which answers at once: MX tests' `[dns]`.
pub const DNS_TIMEOUT: &str = "1s";

/// `text` as an IPv4 address: the A records of a test [`Zone`].
pub fn ipv4(text: &str) -> Ipv4Addr {
    text.parse().expect("IPv4 address")
}

/// a.test with MX 10 mx1.a.test (127.0.0.2) and MX 20 mx2.a.test (127.0.0.3): next-MX tests.
pub fn backup_mx_zone() -> Zone {
    Zone::new()
        .mx("a.test", 10, "mx1.a.test")
        .mx("a.test", 20, "mx2.a.test")
        .a("mx1.a.test", ipv4("127.0.0.2"))
        .a("mx2.a.test", ipv4("127.0.0.3"))
}

/// Baton delivering by MX on `port` asking `dns`, plus `delivery` lines and `extra_toml`.
pub fn mx_baton(dns: &DnsServer, port: u16, delivery: &[&str], extra_toml: &str) -> Baton {
    mx_baton_with(&dns_toml(dns, DNS_TIMEOUT), port, delivery, extra_toml)
}

/// [`mx_baton`] with this `[dns]` table: tests of a slow or failing resolver.
pub fn mx_baton_with(dns_toml: &str, port: u16, delivery: &[&str], extra_toml: &str) -> Baton {
    let mut lines = vec![format!("mx_port = {port}")];
    lines.extend(delivery.iter().map(|line| line.to_string()));
    Baton::start_with(TestConfig {
        deliver: true,
        delivery: lines,
        extra_toml: format!("{dns_toml}\n{extra_toml}"),
        ..TestConfig::default()
    })
}

/// The `[dns]` table asking only `server`, once, waiting `timeout`: MX tests' resolver.
pub fn dns_toml(server: &DnsServer, timeout: &str) -> String {
    format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"{timeout}\"\nattempts = 1\n",
        server.addr
    )
}

/// One finished `loadgen send` run.
pub struct SendRun {
    /// Its JSON report (`run_id`, `messages_accepted`, `accepted`, ...).
    pub report: serde_json::Value,
    /// Where the report is, for a sink's `--verify`.
    pub path: PathBuf,
}

impl SendRun {
    /// The ids (`<run>-<seq>`) of every message the server accepted.
    pub fn accepted_ids(&self) -> Vec<String> {
        let run = self.report["run_id"].as_str().expect("run_id");
        let runs = self.report["accepted"].as_array().expect("accepted runs");
        let mut ids = Vec::new();
        for range in runs {
            let first = range[0].as_u64().expect("first seq");
            let end = range[1].as_u64().expect("end seq");
            ids.extend((first..end).map(|seq| format!("{run}-{seq}")));
        }
        ids
    }
}

/// Where [`send`] writes its report in `dir`: what a sink started before it will `--verify`.
pub fn send_report(dir: &Path) -> PathBuf {
    dir.join("send.json")
}

/// `loadgen send` of 1 KiB messages with `args` (`-n`, `-c`, `--domains`), all accepted: load.
pub fn send(target: SocketAddr, args: &[&str], dir: &Path) -> SendRun {
    send_sized(target, "1KiB", args, dir)
}

/// [`send`] with messages of `size`: for tests that fill the spool or keep delivery busy.
pub fn send_sized(target: SocketAddr, size: &str, args: &[&str], dir: &Path) -> SendRun {
    let path = send_report(dir);
    let output = Command::new(loadgen_bin())
        .arg("send")
        .arg(target.to_string())
        .args(["--quiet", "--seed", "7", "--size", size, "--timeout", "20s"])
        .arg("--report")
        .arg(&path)
        .args(args)
        .output()
        .expect("run loadgen send");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadgen send failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let text = std::fs::read_to_string(&path).expect("send report");
    let report: serde_json::Value = serde_json::from_str(&text).expect("send report JSON");
    assert_eq!(
        report["messages_failed"], 0,
        "baton refused some of loadgen's messages:\n{stdout}"
    );
    SendRun { report, path }
}

/// One message a sink accepted: its loadgen id and its `To:` address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub id: String,
    pub to: String,
}

/// What `sink` accepted so far, in arrival order, by loadgen id and `To:`: who got what.
pub fn arrivals(sink: &Sink) -> Vec<Arrival> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(sink.dump_dir())
        .expect("sink dump directory")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let name = path.file_stem().and_then(|n| n.to_str()).expect("name");
            let id = name.split_once('-').map_or("", |(_, id)| id).to_string();
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let to = header(&text, "To")
                .map(|to| to.trim_matches(['<', '>', ' ']).to_string())
                .unwrap_or_default();
            Arrival { id, to }
        })
        .collect()
}

/// The first header field `name` of a message as it arrived, unparsed: a quick look.
pub fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .split("\r\n")
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field.eq_ignore_ascii_case(name).then(|| value.trim())
        })
}

/// How many times each loadgen id arrived over all `sinks`: loss and duplicate checks.
pub fn id_counts<'a>(sinks: impl IntoIterator<Item = &'a Sink>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for sink in sinks {
        for arrival in arrivals(sink) {
            *counts.entry(arrival.id).or_insert(0) += 1;
        }
    }
    counts
}

/// `GET path` on the admin API as JSON, which must answer 200: the queue, one message.
pub fn get_json(baton: &Baton, path: &str) -> serde_json::Value {
    let (status, body) = baton.admin_request("GET", path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {path}: {err}: {body}"))
}

/// `GET /queue/<id>`, `None` once it is gone (404): tests that watch a message to its end.
pub fn queued_message(baton: &Baton, id: &str) -> Option<serde_json::Value> {
    let path = format!("/queue/{id}");
    let (status, body) = baton.admin_request("GET", &path);
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "GET {path}: {body}");
    let message = serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {path}: {err}"));
    Some(message)
}

/// One counter or gauge without labels from `/metrics`: what baton counted (deferrals, bounces).
pub fn metric(baton: &Baton, name: &str) -> u64 {
    let (status, body) = baton.admin_request("GET", "/metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample of {name} in\n{body}"))
}

/// Whether the spool has no recipient left to deliver: a condition to wait for.
pub fn queue_empty(baton: &Baton) -> bool {
    get_json(baton, "/queue")["recipients"] == 0
}

/// Waits until no recipient is left to deliver: how delivery tests know baton is done.
pub fn wait_queue_empty(baton: &mut Baton) {
    baton.wait_for("an empty queue", queue_empty);
}

/// Recipient `index` of message `id` (`GET /queue/<id>`): its status, attempts, next attempt.
pub fn recipient(baton: &Baton, id: &str, index: usize) -> serde_json::Value {
    get_json(baton, &format!("/queue/{id}"))["recipients"][index].clone()
}

/// Recipient `address` of message `id` (`GET /queue/<id>`), which must be one: as [`recipient`].
pub fn recipient_named(baton: &Baton, id: &str, address: &str) -> serde_json::Value {
    let message = get_json(baton, &format!("/queue/{id}"));
    message["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .find(|r| r["address"] == address)
        .unwrap_or_else(|| panic!("{address} is not a recipient of {id}: {message}"))
        .clone()
}

/// Waits until recipient `address` of `id` has `status` (`deferred`...): an attempt's outcome.
pub fn wait_status(baton: &mut Baton, id: &str, address: &str, status: &str) {
    baton.wait_for(&format!("{address} of {id} {status}"), |b| {
        recipient_named(b, id, address)["status"] == status
    });
}

/// Now in Unix milliseconds, the unit of the admin API's times: next-attempt checks.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// Header or delivery-status fields as (name, value) pairs, from [`header_fields`].
pub type Fields = Vec<(String, String)>;

/// A header section or field group unfolded (RFC 5322 §2.2.3): the fields of a notification.
pub fn header_fields(section: &str) -> Fields {
    section
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ")
        .split("\r\n")
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("not a header field: {line:?}"));
            (name.to_string(), value.trim().to_string())
        })
        .collect()
}

/// The value of `name` among `fields`, which must be there: one field of a notification.
#[track_caller]
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
}

/// One body part of a MIME multipart: a part of a [`Notification`].
pub struct Part {
    pub headers: Fields,
    pub content: String,
}

/// A delivery status notification (RFC 3464) taken apart as a mail reader would: bounce tests.
pub struct Notification {
    pub headers: Fields,
    pub parts: Vec<Part>,
}

impl Notification {
    /// Splits a notification as it arrived at its boundary (RFC 2046 §5.1.1).
    pub fn parse(text: &str) -> Notification {
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no header section:\n{text}"));
        let headers = header_fields(head);
        let content_type = field(&headers, "Content-Type").to_string();
        let boundary = content_type
            .split(';')
            .find_map(|param| param.trim().strip_prefix("boundary="))
            .unwrap_or_else(|| panic!("no boundary in {content_type:?}"))
            .trim_matches('"')
            .to_string();
        let delimiter = format!("\r\n--{boundary}");
        let close = format!("\r\n--{boundary}--\r\n");
        // The preamble's line break counts as the first delimiter's.
        let body = format!("\r\n{body}");
        let end = body
            .find(&close)
            .unwrap_or_else(|| panic!("no closing delimiter {close:?}:\n{text}"));
        let parts = body[..end]
            .split(&delimiter)
            .skip(1)
            .map(|part| {
                let part = part.strip_prefix("\r\n").expect("delimiter line ends");
                let (head, content) = part.split_once("\r\n\r\n").unwrap_or((part, ""));
                Part {
                    headers: header_fields(head),
                    content: content.to_string(),
                }
            })
            .collect();
        Notification { headers, parts }
    }

    /// The part whose Content-Type starts with `content_type`: the human or headers part.
    pub fn part(&self, content_type: &str) -> &Part {
        self.parts
            .iter()
            .find(|p| field(&p.headers, "Content-Type").starts_with(content_type))
            .unwrap_or_else(|| panic!("no {content_type} part"))
    }

    /// The delivery-status groups, per message then per recipient (RFC 3464 §2.1): who failed how.
    pub fn status_groups(&self) -> Vec<Fields> {
        let content = &self.part("message/delivery-status").content;
        // One blank line between groups, none after the last: an empty
        // group is a malformed report, not something to skip.
        let groups: Vec<Fields> = content.split("\r\n\r\n").map(header_fields).collect();
        assert!(
            groups.iter().all(|group| !group.is_empty()),
            "an empty group of delivery-status fields: {content:?}"
        );
        groups
    }
}
