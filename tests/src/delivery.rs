//! Helpers for the tests of delivery to MX hosts: a port free on several
//! loopback addresses (each address stands for one MX host, all on the
//! one `delivery.mx_port`), the `[dns]` table that points baton at a test
//! [`DnsServer`], `loadgen send` runs with their report, what each sink
//! received by loadgen id, and the admin API's JSON and metrics.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::dns::DnsServer;
use crate::sink::{loadgen_bin, Sink};
use crate::Baton;

/// Ports tried before [`shared_port`] gives up.
const SHARED_PORT_TRIES_MAX: usize = 64;

/// A TCP port that is free on every address of `ips` (e.g. 127.0.0.2 and
/// 127.0.0.3): MX hosts are all contacted on the same port.
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

/// `ip:port` as a socket address.
pub fn at(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("socket address")
}

/// The `[dns]` table that makes baton ask `server` only, once per query,
/// waiting `timeout` (e.g. `"1s"`) for each answer.
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

/// Runs `loadgen send` against `target` with `args` (`-n`, `-c`,
/// `--domains`, ...), a fixed seed and small messages, and returns its
/// report, written into `dir`. Fails the test unless every message was
/// accepted.
pub fn send(target: SocketAddr, args: &[&str], dir: &Path) -> SendRun {
    let path = dir.join("send.json");
    let output = Command::new(loadgen_bin())
        .arg("send")
        .arg(target.to_string())
        .args([
            "--quiet",
            "--seed",
            "7",
            "--size",
            "1KiB",
            "--timeout",
            "20s",
        ])
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

/// What `sink` accepted so far, from its dump directory (file names
/// `<number>-<run>-<seq>.eml`), in arrival order.
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

/// The value of the first header field `name` in a message's header section.
pub fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .split("\r\n")
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field.eq_ignore_ascii_case(name).then(|| value.trim())
        })
}

/// How many times each id arrived, over all `sinks`.
pub fn id_counts<'a>(sinks: impl IntoIterator<Item = &'a Sink>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for sink in sinks {
        for arrival in arrivals(sink) {
            *counts.entry(arrival.id).or_insert(0) += 1;
        }
    }
    counts
}

/// `GET path` on the admin API, as JSON; fails the test unless 200.
pub fn get_json(baton: &Baton, path: &str) -> serde_json::Value {
    let (status, body) = baton.admin_request("GET", path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {path}: {err}: {body}"))
}

/// One counter or gauge without labels from `/metrics`.
pub fn metric(baton: &Baton, name: &str) -> u64 {
    let (status, body) = baton.admin_request("GET", "/metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample of {name} in\n{body}"))
}

/// Whether the spool has no recipient left to deliver.
pub fn queue_empty(baton: &Baton) -> bool {
    get_json(baton, "/queue")["recipients"] == 0
}

/// The status of recipient `index` of message `id` (`GET /queue/<id>`).
pub fn recipient(baton: &Baton, id: &str, index: usize) -> serde_json::Value {
    get_json(baton, &format!("/queue/{id}"))["recipients"][index].clone()
}

/// Now, in Unix milliseconds: the unit of the admin API's times.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}
