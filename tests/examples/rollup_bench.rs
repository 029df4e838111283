//! MX rollup under load: messages to 1,000 recipient domains whose MX
//! records name 10 hosts (10 sites), against the same messages to one
//! domain (one site), in one run, pairs alternating; 5 KiB messages, MX
//! delivery through the test DNS server to one `loadgen sink`.
//!
//! ```sh
//! cargo build --release -p baton -p baton-loadgen
//! BATON_BIN=target/release/baton LOADGEN_BIN=target/release/loadgen \
//!   cargo run --release -p baton-tests --example rollup_bench -- 50000 3
//! ```
//!
//! Prints each run's delivered rate (messages over the sink's busy time,
//! first to last message) and the median ratio rollup / single. A third
//! argument sets each site's connections in the rollup runs (default 20,
//! as the single site has: ten sites then open ten times as many); 2
//! gives both runs the same 20 connections in all. A fourth sets the
//! single site's (default 20): 200 gives both runs 200.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::delivery::{dns_toml, metric};
use baton_tests::dns::{DnsServer, Zone};
use baton_tests::sink::loadgen_bin;
use baton_tests::{free_port, Baton, TestConfig};

const DOMAINS: usize = 1_000;
const SITES: usize = 10;
/// A run that has not delivered everything by then is reported as such.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

struct Run {
    messages: u64,
    rate: f64,
    peak: u64,
}

fn run(count: u64, rollup: bool, site_connections: usize) -> Run {
    let port = free_port("127.0.0.2");
    let mut zone = Zone::new();
    for site in 0..SITES {
        zone = zone.a(
            &format!("mx{site}.sites.test"),
            "127.0.0.2".parse().unwrap(),
        );
    }
    let domains = if rollup { DOMAINS } else { 1 };
    for d in 0..domains {
        zone = zone.mx(
            &format!("d{d}.loadgen.test"),
            10,
            &format!("mx{}.sites.test", d % SITES),
        );
    }
    let dns = DnsServer::start(zone);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("sink.json");
    let mut sink: Child = Command::new(loadgen_bin())
        .args(["sink", "-l", &format!("127.0.0.2:{port}"), "--report"])
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the sink");
    let mut baton = Baton::start_with(TestConfig {
        deliver: true,
        delivery: vec![format!("mx_port = {port}")],
        spool: vec!["segment_bytes = 67108864".into()],
        extra_toml: format!(
            "{}\n[shaping]\nconnections_max = {site_connections}\n",
            dns_toml(&dns, "2s")
        ),
        env: vec![("RUST_LOG".into(), "warn,baton::server=info".into())],
        ..TestConfig::default()
    });
    let mut send = Command::new(loadgen_bin());
    send.args(["send", &baton.smtp.to_string(), "--quiet", "-c", "50"])
        .stdout(Stdio::null())
        .args(["-n", &count.to_string(), "--size", "5KiB"]);
    if rollup {
        send.args(["--generated-domains", &DOMAINS.to_string()]);
    } else {
        send.args(["--domains", "d0.loadgen.test"]);
    }
    let sent = send.status().expect("run loadgen send");
    assert!(sent.success(), "loadgen send failed");
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while metric(&baton, "baton_recipients_delivered_total") < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    baton.terminate();
    terminate(&mut sink);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("sink report")).unwrap();
    Run {
        messages: summary["messages_accepted"].as_u64().unwrap_or(0),
        rate: summary["messages_per_second"].as_f64().unwrap_or(0.0),
        peak: summary["connections_peak"].as_u64().unwrap_or(0),
    }
}

/// SIGTERM (the sink writes its report), then wait.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().map_or(50_000, |a| a.parse().expect("count"));
    let pairs: usize = args.next().map_or(3, |a| a.parse().expect("pairs"));
    let site_connections: usize = args.next().map_or(20, |a| a.parse().expect("connections"));
    let single_connections: usize = args.next().map_or(20, |a| a.parse().expect("connections"));
    let mut ratios = Vec::new();
    println!("| run | domains | sites | delivered | msg/s | sink connections peak |");
    println!("|---|---|---|---|---|---|");
    for pair in 1..=pairs {
        let single = run(count, false, single_connections);
        println!(
            "| {pair} single | 1 | 1 | {} | {:.0} | {} |",
            single.messages, single.rate, single.peak
        );
        let rollup = run(count, true, site_connections);
        println!(
            "| {pair} rollup | {DOMAINS} | {SITES} | {} | {:.0} | {} |",
            rollup.messages, rollup.rate, rollup.peak
        );
        ratios.push(rollup.rate / single.rate.max(1e-9));
    }
    ratios.sort_by(f64::total_cmp);
    let text: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "\nrollup / single: median {:.2} (each pair: {})",
        ratios[ratios.len() / 2],
        text.join(", ")
    );
}
