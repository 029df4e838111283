//! `loadgen bench`: one scenario, one table: the direct path (send → sink,
//! the machine's limit) and the same load through a relay under test
//! (send → relay → sink), for baton and, with `--postfix`, for Postfix,
//! and with `--kumomta BIN` for KumoMTA (twice: on its default durability
//! and with every message synced).
//!
//! Each path gets a fresh sink in this process ([`EmbeddedSink`]) and a
//! fresh relay. `send` runs to its end; then the bench waits for the
//! relay to deliver (until the sink has every recipient, or its count has
//! not grown for `--settle`, or `--drain-timeout` has passed), stops the
//! sink and checks what arrived against `send`'s report: lost and
//! duplicated. A relay that delivered nothing gets no figures, and a note
//! that says so.
//!
//! Without `--tls` every hop is plain text: the sink does not offer
//! STARTTLS, so that a relay that uses it opportunistically (baton, kumod)
//! still delivers in plain text. With `--tls` every hop is STARTTLS: `send`
//! requires it and checks the certificate against the bench's CA, every
//! relay offers it and requires it towards the sink, and a row whose
//! messages reached the sink without TLS says so. With `--tls both` each
//! path runs twice, plain text and then TLS (a fresh sink and relay each
//! time), as rows `baton` and `baton+tls` of one table, with each path's
//! TLS rate over its plain rate under it.
//!
//! # Layout
//!
//! - [`relay`]: starting and stopping baton, Postfix and kumod.
//! - [`config`]: what each relay is told (configuration text, arguments,
//!   environment), as pure functions.
//! - [`certs`]: the CA and server certificate of a `--tls` run.
//! - [`table`]: the rows, as a table and as JSON under `bench/results/`.

pub mod certs;
pub mod config;
pub mod relay;
pub mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser as _;

use self::certs::CertFiles;
pub use self::table::TlsMode;
use self::table::{BenchResult, Row, Scenario};
use crate::ids::unix_micros_now;
use crate::send::{self, SendArgs};
use crate::sink::{EmbeddedSink, SinkArgs};
use crate::units::parse_duration;

/// Messages when neither a count nor a duration is given.
const COUNT_DEFAULT: u64 = 10_000;
/// How often the sink's count is read while a relay delivers.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// `loadgen bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Connections kept open at once by `send`.
    #[arg(short = 'c', long, default_value_t = 50)]
    pub connections: u64,
    /// Messages to send on each path (default 10000, or no limit with
    /// --duration).
    #[arg(short = 'n', long, value_name = "N", conflicts_with = "duration")]
    pub count: Option<u64>,
    /// How long to send on each path: 30s, 5m.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Message size, headers included (as `send --size`).
    #[arg(short = 's', long, default_value = "5KiB")]
    pub size: String,
    /// Recipients per message.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub rcpts: u16,
    /// The baton binary (default: `baton` next to `loadgen`).
    #[arg(long, value_name = "BIN")]
    pub baton: Option<PathBuf>,
    /// Leave baton out.
    #[arg(long, conflicts_with = "baton")]
    pub no_baton: bool,
    /// TOML appended to the configuration the bench writes for baton (for
    /// a [cluster] table, say): the row then measures baton so configured.
    #[arg(long, value_name = "FILE", conflicts_with = "no_baton")]
    pub baton_config_append: Option<PathBuf>,
    /// Also bench Postfix (installed from Debian's packages if missing).
    #[arg(long)]
    pub postfix: bool,
    /// The script that runs Postfix (default: bench/postfix-relay.sh of
    /// this work tree).
    #[arg(long, value_name = "SCRIPT")]
    pub postfix_script: Option<PathBuf>,
    /// Also bench KumoMTA with this kumod binary: two rows, `kumomta` (its
    /// default durability) and `kumomta-sync` (every message synced before
    /// its 250).
    #[arg(long, value_name = "BIN")]
    pub kumomta: Option<PathBuf>,
    /// kumod's policy (default: bench/kumomta-relay.lua of this work tree).
    #[arg(long, value_name = "LUA", requires = "kumomta")]
    pub kumomta_policy: Option<PathBuf>,
    /// STARTTLS on every hop: send → relay and relay → sink (and send →
    /// sink on the direct path), with a certificate the bench generates.
    /// `--tls` alone is `--tls on`; `--tls both` gives each path a plain
    /// row and a TLS row (`baton`, `baton+tls`) in one table.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        num_args = 0..=1,
        default_value_t = TlsMode::Off,
        default_missing_value = "on"
    )]
    pub tls: TlsMode,
    /// After `send`, a relay is done when the sink's count has not grown
    /// for this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub settle: Duration,
    /// After `send`, wait at most this long for a relay to deliver.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Where the JSON results go (default: bench/results of this work
    /// tree).
    #[arg(long, value_name = "DIR")]
    pub results_dir: Option<PathBuf>,
    /// `send`'s progress line on stderr.
    #[arg(long)]
    pub progress: bool,
}

/// A path of the bench: which relay, if any, sits between send and sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Direct,
    Baton,
    Postfix,
    /// kumod on KumoMTA's default durability: spooled, not synced, before
    /// the 250.
    Kumomta,
    /// kumod with every message synced before the 250, as baton and
    /// Postfix do.
    KumomtaSync,
}

impl PathKind {
    fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Baton => "baton",
            PathKind::Postfix => "postfix",
            PathKind::Kumomta => "kumomta",
            PathKind::KumomtaSync => "kumomta-sync",
        }
    }
}

/// Runs every path, prints the table, writes the JSON.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let bench_dir = bench_dir();
    let baton = match (&args.baton, args.no_baton) {
        (_, true) => None,
        (Some(path), false) => Some(path.clone()),
        (None, false) => Some(next_to_loadgen("baton")?),
    };
    if let Some(binary) = &baton {
        if !binary.is_file() {
            bail!(
                "no baton at {} (build it, or give --baton BIN)",
                binary.display()
            );
        }
    }
    let postfix_script = match (args.postfix, &args.postfix_script) {
        (false, _) => None,
        (true, Some(script)) => Some(script.clone()),
        (true, None) => Some(
            bench_dir
                .as_ref()
                .map(|dir| dir.join("postfix-relay.sh"))
                .context("cannot find bench/postfix-relay.sh; give --postfix-script")?,
        ),
    };
    let kumomta = match &args.kumomta {
        None => None,
        Some(binary) => {
            if !binary.is_file() {
                bail!("no kumod at {}", binary.display());
            }
            let policy = match (&args.kumomta_policy, &bench_dir) {
                (Some(policy), _) => policy.clone(),
                (None, Some(dir)) => dir.join("kumomta-relay.lua"),
                (None, None) => bail!("cannot find bench/kumomta-relay.lua; give --kumomta-policy"),
            };
            if !policy.is_file() {
                bail!("no kumod policy at {}", policy.display());
            }
            Some((binary.clone(), policy))
        }
    };
    let results_dir = match (&args.results_dir, &bench_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => dir.join("results"),
        (None, None) => PathBuf::from("bench/results"),
    };
    let work = WorkDir::create()?;
    let certs = if args.tls != TlsMode::Off {
        Some(CertFiles::create(&work.path.join("certs"))?)
    } else {
        None
    };
    let started_unix = unix_micros_now() / 1_000_000;
    let mut result = BenchResult {
        started: format!("{}Z", baton::smtp::date::rfc3339_seconds(started_unix)),
        host: hostname(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        scenario: Scenario {
            connections: args.connections,
            count: args
                .count
                .or(args.duration.is_none().then_some(COUNT_DEFAULT)),
            duration_seconds: args.duration.map(|d| d.as_secs_f64()),
            size: args.size.clone(),
            rcpts: args.rcpts,
            tls: args.tls == TlsMode::On,
            tls_mode: args.tls,
        },
        rows: Vec::new(),
    };
    let mut paths = vec![PathKind::Direct];
    if baton.is_some() {
        paths.push(PathKind::Baton);
    }
    if postfix_script.is_some() {
        paths.push(PathKind::Postfix);
    }
    if kumomta.is_some() {
        paths.extend([PathKind::Kumomta, PathKind::KumomtaSync]);
    }
    let runs = paths
        .into_iter()
        .flat_map(|path| args.tls.passes().iter().map(move |&tls| (path, tls)));
    let append = match &args.baton_config_append {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => String::new(),
    };
    for (path, tls) in runs {
        let label = path_label(path, tls);
        eprintln!("loadgen bench: {label} ...");
        let dir = work.path.join(&label);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let relay = match path {
            PathKind::Direct => RelayChoice::None,
            PathKind::Baton => RelayChoice::Baton(baton.as_deref().expect("baton chosen"), &append),
            PathKind::Postfix => {
                RelayChoice::Postfix(postfix_script.as_deref().expect("postfix chosen"))
            }
            PathKind::Kumomta | PathKind::KumomtaSync => {
                let (binary, policy) = kumomta.as_ref().expect("kumomta chosen");
                RelayChoice::Kumod(relay::Kumod {
                    binary,
                    policy,
                    force_sync: path == PathKind::KumomtaSync,
                })
            }
        };
        let files = PathFiles {
            dir: &dir,
            certs: if tls { certs.as_ref() } else { None },
        };
        let mut row = run_path(&args, &result.scenario, path, relay, files).await?;
        relate(&mut row, &result.rows);
        result.rows.push(row);
    }
    print!("{}", result.text());
    let file = write_results(&results_dir, &result, started_unix)?;
    eprintln!("loadgen bench: results in {}", file.display());
    Ok(())
}

/// A path's name in the table and its directory: `baton`, `baton+tls`.
fn path_label(path: PathKind, tls: bool) -> String {
    Row {
        path: path.name().to_string(),
        tls,
        ..Row::default()
    }
    .label()
}

/// Sets a new row's figures relative to the rows before it: `ratio` over
/// the first row's rate (the direct path, plain in a `--tls both` run:
/// the first row's own ratio is 1), and for a TLS row whose path has a
/// plain row, `tls_over_plain`.
fn relate(row: &mut Row, before: &[Row]) {
    let direct = before
        .first()
        .map_or(row.delivered_per_second, |r| r.delivered_per_second);
    row.ratio = row
        .delivered_per_second
        .zip(direct)
        .map(|(rate, direct)| rate / direct);
    if row.tls {
        let plain = before
            .iter()
            .find(|r| !r.tls && r.path == row.path)
            .and_then(|r| r.delivered_per_second);
        row.tls_over_plain = row
            .delivered_per_second
            .zip(plain)
            .map(|(tls, plain)| tls / plain);
    }
}

/// Which relay to start for a path.
enum RelayChoice<'a> {
    None,
    /// The binary, and TOML appended to its configuration.
    Baton(&'a Path, &'a str),
    Postfix(&'a Path),
    Kumod(relay::Kumod<'a>),
}

/// Where a path keeps its files, and the certificates when it runs TLS
/// (then every hop is STARTTLS, and the row is a TLS row).
#[derive(Clone, Copy)]
struct PathFiles<'a> {
    dir: &'a Path,
    certs: Option<&'a CertFiles>,
}

/// One path: sink, relay, send, wait for delivery, verify.
async fn run_path(
    args: &BenchArgs,
    scenario: &Scenario,
    path: PathKind,
    relay: RelayChoice<'_>,
    files: PathFiles<'_>,
) -> anyhow::Result<Row> {
    let PathFiles { dir, certs } = files;
    let tls = certs.is_some();
    let send_report_path = dir.join("send.json");
    let sink = EmbeddedSink::start(sink_args(&send_report_path, certs)).await?;
    let started = match relay {
        RelayChoice::None => None,
        RelayChoice::Baton(binary, append) => Some(tokio::task::block_in_place(|| {
            relay::Relay::start_baton(binary, dir, sink.addr, certs, append)
        })?),
        RelayChoice::Postfix(script) => Some(tokio::task::block_in_place(|| {
            relay::Relay::start_postfix(script, &dir.join("postfix"), sink.addr, certs)
        })?),
        RelayChoice::Kumod(kumod) => Some(tokio::task::block_in_place(|| {
            relay::Relay::start_kumod(&kumod, dir, sink.addr, certs)
        })?),
    };
    let target = started.as_ref().map_or(sink.addr, |s| s.addr);
    let mut notes = started
        .as_ref()
        .map(|s| s.notes.clone())
        .unwrap_or_default();
    let send_started = Instant::now();
    let sent = send::run(send_args(args, scenario, target, certs)?).await;
    let report = match sent {
        Ok(report) => report,
        Err(e) => {
            stop_relay(started.map(|s| s.relay));
            let _ = sink.stop().await;
            return Err(e.context(format!("{}: send failed", path_label(path, tls))));
        }
    };
    let encoded = serde_json::to_vec(&report).context("encode the send report")?;
    std::fs::write(&send_report_path, encoded)
        .with_context(|| format!("cannot write {}", send_report_path.display()))?;
    if path != PathKind::Direct {
        wait_for_delivery(args, &sink, report.recipients_accepted).await;
    }
    let last_delivery = sink.last_message_at();
    let summary = sink.stop().await?;
    stop_relay(started.map(|s| s.relay));
    let delivered = summary.ids.distinct_ids;
    let verify = summary.ids.verify.as_ref();
    if let Some(fatal) = &report.fatal {
        notes.push(format!("send stopped: {fatal}"));
    }
    if report.messages_accepted == 0 {
        notes.push(format!(
            "send: {}",
            report
                .why_nothing_accepted()
                .replace("the server", path.name())
        ));
    } else if delivered == 0 {
        notes.push(format!("relay delivered 0 of {}", report.messages_accepted));
    }
    if let Some(note) = tls_note(tls, summary.messages_accepted, summary.messages_tls) {
        notes.push(note);
    }
    let delivered_per_second = match last_delivery {
        Some(last) if delivered > 0 => {
            let seconds = last.saturating_duration_since(send_started).as_secs_f64();
            Some(delivered as f64 / seconds.max(1e-9))
        }
        _ => None,
    };
    Ok(Row {
        path: path.name().to_string(),
        tls,
        messages_sent: report.messages_accepted,
        sent_per_second: report.messages_per_second,
        messages_delivered: delivered,
        delivered_per_second,
        ratio: None,
        tls_over_plain: None,
        latency_end_to_end: summary.latency_end_to_end.clone(),
        messages_lost: verify.filter(|_| delivered > 0).map(|v| v.messages_lost),
        duplicated_deliveries: summary.ids.duplicated_deliveries,
        notes,
    })
}

fn stop_relay(relay: Option<relay::Relay>) {
    if let Some(relay) = relay {
        tokio::task::block_in_place(|| relay.stop());
    }
}

/// Waits until the sink has `expected` recipients, or its count has not
/// grown for `--settle`, or `--drain-timeout` has passed.
async fn wait_for_delivery(args: &BenchArgs, sink: &EmbeddedSink, expected: u64) {
    let begun = Instant::now();
    let mut count = sink.recipients_accepted();
    let mut grew = begun;
    while count < expected {
        let now = Instant::now();
        if now - grew >= args.settle || now - begun >= args.drain_timeout {
            break;
        }
        tokio::time::sleep(DRAIN_POLL).await;
        let latest = sink.recipients_accepted();
        if latest > count {
            (count, grew) = (latest, Instant::now());
        }
    }
}

/// What a TLS row must say when messages reached the sink in plain text:
/// the relay fell back, and its figures are not those of TLS.
fn tls_note(tls: bool, messages: u64, messages_tls: u64) -> Option<String> {
    (tls && messages_tls < messages).then(|| {
        format!(
            "{} of {messages} messages reached the sink without TLS",
            messages - messages_tls
        )
    })
}

/// The sink's options, parsed as `loadgen sink` would parse them: STARTTLS
/// with the bench's certificate, or not offered at all.
fn sink_args(send_report: &Path, certs: Option<&CertFiles>) -> SinkArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: SinkArgs,
    }
    let mut argv: Vec<std::ffi::OsString> = vec![
        "sink".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--verify".into(),
        send_report.into(),
    ];
    match certs {
        None => argv.push("--no-starttls".into()),
        Some(files) => argv.extend([
            "--tls-cert".into(),
            files.chain.clone().into(),
            "--tls-key".into(),
            files.key.clone().into(),
        ]),
    }
    Cli::parse_from(argv).args
}

/// `send`'s options for one path, parsed as `loadgen send` would.
fn send_args(
    args: &BenchArgs,
    scenario: &Scenario,
    target: SocketAddr,
    certs: Option<&CertFiles>,
) -> anyhow::Result<SendArgs> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: SendArgs,
    }
    let mut argv = vec![
        "send".to_string(),
        target.to_string(),
        "--connections".into(),
        args.connections.to_string(),
        "--size".into(),
        args.size.clone(),
        "--rcpts".into(),
        args.rcpts.to_string(),
    ];
    match (scenario.count, args.duration) {
        (Some(count), _) => argv.extend(["--count".into(), count.to_string()]),
        (None, Some(duration)) => {
            argv.extend(["--duration".into(), format!("{}ms", duration.as_millis())])
        }
        (None, None) => {}
    }
    if let Some(files) = certs {
        argv.extend(["--starttls".into(), "--tls-ca".into()]);
        argv.push(files.ca.to_string_lossy().into_owned());
    }
    if !args.progress {
        argv.push("--quiet".into());
    }
    Ok(Cli::try_parse_from(argv)?.args)
}

/// Writes `bench-<timestamp>.json` (`bench-tls-<timestamp>.json` for a
/// `--tls` run, `bench-tls-both-<timestamp>.json` for `--tls both`, so
/// that runs of each kind started in the same second keep their files);
/// returns its path.
fn write_results(dir: &Path, result: &BenchResult, unix: u64) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stamp: String = baton::smtp::date::rfc3339_seconds(unix)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let kind = match result.scenario.tls_mode {
        TlsMode::Off => "",
        TlsMode::On => "tls-",
        TlsMode::Both => "tls-both-",
    };
    let file = dir.join(format!("bench-{kind}{stamp}Z.json"));
    let encoded = serde_json::to_string_pretty(result).context("encode the results")?;
    std::fs::write(&file, format!("{encoded}\n"))
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}

/// A program next to the running `loadgen` (target/release/baton).
fn next_to_loadgen(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("where is loadgen")?;
    Ok(exe.with_file_name(name))
}

/// The work tree's `bench/`: under the current directory, two levels
/// above `loadgen` (target/release/loadgen), or in the source tree
/// `loadgen` was built from (when the target directory is elsewhere).
fn bench_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok();
    let from_exe = exe.as_ref().and_then(|e| {
        e.parent()?
            .parent()?
            .parent()
            .map(|root| root.join("bench"))
    });
    let from_source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench");
    [Some(PathBuf::from("bench")), from_exe, Some(from_source)]
        .into_iter()
        .flatten()
        .find(|dir| dir.join("postfix-relay.sh").is_file())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A temporary directory for spools, configurations and reports, removed
/// at the end.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        let path = std::env::temp_dir().join(format!(
            "loadgen-bench-{}-{}",
            std::process::id(),
            unix_micros_now()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_row_says_how_many_messages_came_without_tls() {
        assert_eq!(tls_note(true, 100, 100), None);
        assert_eq!(
            tls_note(true, 100, 40).as_deref(),
            Some("60 of 100 messages reached the sink without TLS")
        );
        assert_eq!(tls_note(false, 100, 0), None, "plain rows are plain");
    }

    fn parse(argv: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: BenchArgs,
        }
        let argv = std::iter::once("bench").chain(argv.iter().copied());
        Cli::try_parse_from(argv).expect("bench arguments").args
    }

    #[test]
    fn tls_alone_means_every_row_over_tls_and_both_means_plain_and_tls() {
        assert_eq!(parse(&[]).tls, TlsMode::Off);
        assert_eq!(parse(&["--tls"]).tls, TlsMode::On);
        assert_eq!(parse(&["--tls", "-n", "5"]).tls, TlsMode::On);
        assert_eq!(parse(&["-n", "5", "--tls"]).count, Some(5));
        assert_eq!(parse(&["--tls", "both", "-n", "5"]).tls, TlsMode::Both);
        assert_eq!(parse(&["--tls=both"]).tls, TlsMode::Both);
        assert_eq!(parse(&["--tls", "on"]).tls, TlsMode::On);
        assert_eq!(parse(&["--tls", "off"]).tls, TlsMode::Off);
        assert_eq!(TlsMode::Both.passes(), [false, true]);
        assert_eq!(path_label(PathKind::KumomtaSync, true), "kumomta-sync+tls");
        assert_eq!(path_label(PathKind::Baton, false), "baton");
    }

    fn rated(path: PathKind, tls: bool, rate: Option<f64>) -> Row {
        Row {
            path: path.name().to_string(),
            tls,
            delivered_per_second: rate,
            ..Row::default()
        }
    }

    #[test]
    fn ratios_are_over_the_plain_direct_row_and_tls_rows_over_their_own_plain_row() {
        let mut rows: Vec<Row> = Vec::new();
        for (path, tls, rate) in [
            (PathKind::Direct, false, Some(100.0)),
            (PathKind::Direct, true, Some(80.0)),
            (PathKind::Baton, false, Some(20.0)),
            (PathKind::Baton, true, Some(15.0)),
            (PathKind::Postfix, false, None),
            (PathKind::Postfix, true, Some(1.0)),
        ] {
            let mut row = rated(path, tls, rate);
            relate(&mut row, &rows);
            rows.push(row);
        }
        let ratios: Vec<Option<f64>> = rows.iter().map(|r| r.ratio).collect();
        assert_eq!(
            ratios,
            [
                Some(1.0),
                Some(0.8),
                Some(0.2),
                Some(0.15),
                None,
                Some(0.01)
            ]
        );
        let fractions: Vec<Option<f64>> = rows.iter().map(|r| r.tls_over_plain).collect();
        assert_eq!(fractions, [None, Some(0.8), None, Some(0.75), None, None]);
    }

    #[test]
    fn a_tls_only_run_has_no_fractions() {
        let mut direct = rated(PathKind::Direct, true, Some(80.0));
        relate(&mut direct, &[]);
        let mut baton = rated(PathKind::Baton, true, Some(16.0));
        relate(&mut baton, std::slice::from_ref(&direct));
        assert_eq!((direct.ratio, baton.ratio), (Some(1.0), Some(0.2)));
        assert_eq!((direct.tls_over_plain, baton.tls_over_plain), (None, None));
    }
}
