//! `loadgen sink`: an SMTP server that accepts, counts and checks, and
//! misbehaves when asked to.
//!
//! # Layout
//!
//! - [`session`]: one connection, ESMTP with PIPELINING and STARTTLS.
//! - [`script`]: delays and failures, by probability or local part.
//! - [`record`]: ids received, duplicates, and `--verify` against `send`.
//! - [`summary`]: the final summary, as text and JSON.

pub mod record;
pub mod script;
pub mod session;
pub mod summary;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use self::record::Recorder;
use self::script::Script;
use self::summary::{SecondSample, SinkSummary};
use crate::latency::SharedHistogram;
use crate::rng::seed_from_time;
use crate::send::report::AcceptedRun;
use crate::signals::Termination;
use crate::units::{parse_bytes, parse_duration, parse_probability};

/// Reply codes counted (every code is below 600).
const REPLY_CODES: usize = 600;
/// Per-second samples kept: a day.
const SECONDS_KEPT_MAX: usize = 86_400;
/// How long connections get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// `loadgen sink` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SinkArgs {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(short = 'l', long, default_value = "127.0.0.1:2525")]
    pub listen: String,
    /// The name in the greeting and EHLO reply.
    #[arg(long, default_value = "loadgen-sink.invalid")]
    pub hostname: String,
    /// Largest message accepted, announced with SIZE.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    pub max_size: u64,
    /// Connections at once; past it the sink answers 421 and closes.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u64>,
    /// Do not offer STARTTLS.
    #[arg(long)]
    pub no_starttls: bool,
    /// Certificate chain (PEM) for STARTTLS, instead of a generated one.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Write the generated certificate here (for clients that verify).
    #[arg(long, value_name = "PEM")]
    pub tls_cert_out: Option<PathBuf>,
    /// Offer AUTH PLAIN and LOGIN (after STARTTLS unless --no-starttls),
    /// require it for MAIL (530), and accept only these credentials (535
    /// otherwise).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub auth: Option<String>,
    /// Delay before every reply but the one after the content.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub delay_reply: Option<Duration>,
    /// Delay before the reply after the content (the final `.`).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub delay_data: Option<Duration>,
    /// Delay for recipients whose local part starts with slow-.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub slow_delay: Duration,
    /// Probability of 421 at connect.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub connect_tempfail: f64,
    /// Probability of 554 at connect.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub connect_reject: f64,
    /// Probability of 451 per recipient.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub rcpt_tempfail: f64,
    /// Probability of 550 per recipient.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub rcpt_reject: f64,
    /// Probability of 451 per message (after the content).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub message_tempfail: f64,
    /// Probability of 554 per message (after the content).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub message_reject: f64,
    /// Probability, per message, of closing the connection after the
    /// content instead of replying.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability, value_name = "P")]
    pub disconnect: f64,
    /// Close each connection, without an error reply, right after the
    /// reply to its Nth message, as some mailbox providers do (Yahoo).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub close_after: Option<u64>,
    /// Seed for the scripted failures (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this long (default: at SIGINT or SIGTERM).
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// At the end, check what arrived against this `send --report` file:
    /// messages lost, duplicated, unexpected.
    #[arg(long, value_name = "REPORT")]
    pub verify: Option<PathBuf>,
    /// Write each accepted message to this directory (slow: for debugging).
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// A progress line every second on stderr.
    #[arg(long)]
    pub progress: bool,
}

/// How sessions behave.
pub struct SessionConfig {
    pub hostname: String,
    pub max_size: u64,
    pub tls: Option<Arc<ServerConfig>>,
    pub auth: Option<(String, String)>,
    pub script: Script,
    pub dump_dir: Option<PathBuf>,
}

/// Live counts.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub connections: AtomicU64,
    pub active: AtomicU64,
    pub peak: AtomicU64,
    pub over_limit: AtomicU64,
    pub messages: AtomicU64,
    /// Of `messages`, those that came over a connection after STARTTLS:
    /// how `bench --tls` knows a relay really encrypted its deliveries.
    pub messages_tls: AtomicU64,
    pub recipients: AtomicU64,
    pub bytes: AtomicU64,
    pub messages_refused: AtomicU64,
    pub recipients_refused: AtomicU64,
    pub disconnects: AtomicU64,
    /// Connections closed after a reply by `--close-after`.
    pub closed_after: AtomicU64,
    /// AUTH commands received (`--auth`), whatever came of them.
    pub auth_attempts: AtomicU64,
    /// Of those, answered 235.
    pub auth_successes: AtomicU64,
    /// Of those, answered 535 (wrong credentials) or 538 (before TLS).
    pub auth_failures: AtomicU64,
    /// Microseconds from the start to the first and the last accepted
    /// message: the busy span that rates are computed over.
    pub first_message_micros: AtomicU64,
    pub last_message_micros: AtomicU64,
}

impl SinkStats {
    fn new() -> SinkStats {
        SinkStats {
            first_message_micros: AtomicU64::new(u64::MAX),
            ..SinkStats::default()
        }
    }
}

/// What every session of the sink shares.
pub struct SinkContext {
    pub config: SessionConfig,
    pub stats: SinkStats,
    replies: Vec<AtomicU64>,
    pub recorder: Mutex<Recorder>,
    pub latency: SharedHistogram,
    pub shutdown: watch::Sender<bool>,
    pub seed: u64,
    /// When the sink started listening (near enough).
    pub started: Instant,
    /// Accepted messages by `client-address EHLO-name`.
    pub sources: Mutex<std::collections::BTreeMap<String, u64>>,
    seconds: Mutex<Vec<SecondSample>>,
}

impl SinkContext {
    /// Notes the time of an accepted message for the busy span.
    pub fn note_message_time(&self) {
        let micros = self.started.elapsed().as_micros() as u64;
        self.stats
            .first_message_micros
            .fetch_min(micros, Ordering::Relaxed);
        self.stats
            .last_message_micros
            .fetch_max(micros, Ordering::Relaxed);
    }

    pub fn count_reply(&self, code: u16) {
        if let Some(counter) = self.replies.get(usize::from(code)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Decrements the count of open connections however a session ends.
struct ActiveGuard(Arc<SinkContext>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs the sink until a signal or the duration, and returns its summary.
pub async fn run(args: SinkArgs) -> anyhow::Result<SinkSummary> {
    let mut termination = Termination::install().context("signal handlers")?;
    let ctx = Arc::new(prepare(&args)?);
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // Tests and scripts wait for this line to know the port.
    eprintln!("loadgen sink: listening on {}", listener.local_addr()?);
    let duration = args.duration.unwrap_or(Duration::MAX);
    let stop = async move {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = termination.wait() => {}
        }
    };
    serve(args, ctx, listener, stop).await
}

/// A sink inside another command's process (`loadgen bench`): its counts
/// can be read while it runs, and it stops when told to.
pub struct EmbeddedSink {
    /// Where it listens.
    pub addr: SocketAddr,
    ctx: Arc<SinkContext>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<SinkSummary>>,
}

impl EmbeddedSink {
    /// Starts a sink with these options (`--listen` port 0: any free port)
    /// on the current runtime; signals and `--duration` do not stop it.
    pub async fn start(args: SinkArgs) -> anyhow::Result<EmbeddedSink> {
        let ctx = Arc::new(prepare(&args)?);
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let stopped = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(serve(args, ctx.clone(), listener, stopped));
        Ok(EmbeddedSink {
            addr,
            ctx,
            stop,
            task,
        })
    }

    /// Recipients accepted so far.
    pub fn recipients_accepted(&self) -> u64 {
        self.ctx.stats.recipients.load(Ordering::Relaxed)
    }

    /// When the last message so far was accepted.
    pub fn last_message_at(&self) -> Option<Instant> {
        let stats = &self.ctx.stats;
        let first = stats.first_message_micros.load(Ordering::Relaxed);
        let last = stats.last_message_micros.load(Ordering::Relaxed);
        (first <= last).then(|| self.ctx.started + Duration::from_micros(last))
    }

    /// Stops accepting, lets sessions finish, and returns the summary.
    pub async fn stop(self) -> anyhow::Result<SinkSummary> {
        let _ = self.stop.send(());
        self.task.await.context("the sink task failed")?
    }
}

/// Accepts connections until `stop` completes, then summarizes.
async fn serve(
    args: SinkArgs,
    ctx: Arc<SinkContext>,
    listener: TcpListener,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<SinkSummary> {
    let local = listener.local_addr()?;
    let started = ctx.started;
    let sampler = tokio::spawn(sample_seconds(ctx.clone(), started, args.progress));
    tokio::pin!(stop);
    let mut index: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of descriptors, most likely: let some close.
                        eprintln!("loadgen sink: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                index += 1;
                admit(&ctx, tcp, index, args.max_connections);
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    ctx.shutdown.send_replace(true);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while ctx.stats.active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    sampler.abort();
    Ok(summarize(&args, &ctx, local.to_string(), elapsed))
}

/// Starts a session, or turns the connection away past the limit.
fn admit(ctx: &Arc<SinkContext>, tcp: TcpStream, index: u64, max: Option<u64>) {
    let _ = tcp.set_nodelay(true);
    let stats = &ctx.stats;
    let active = stats.active.fetch_add(1, Ordering::Relaxed) + 1;
    let guard = ActiveGuard(ctx.clone());
    if max.is_some_and(|max| active > max) {
        stats.over_limit.fetch_add(1, Ordering::Relaxed);
        ctx.count_reply(421);
        tokio::spawn(async move {
            let mut tcp = tcp;
            let _ = tcp
                .write_all(b"421 4.7.0 too many connections, try again later\r\n")
                .await;
            let _ = tcp.shutdown().await;
            drop(guard);
        });
        return;
    }
    stats.connections.fetch_add(1, Ordering::Relaxed);
    stats.peak.fetch_max(active, Ordering::Relaxed);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        session::serve(tcp, ctx, index).await;
        drop(guard);
    });
}

fn prepare(args: &SinkArgs) -> anyhow::Result<SinkContext> {
    let tls = if args.no_starttls {
        None
    } else {
        let files = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
        let (config, pem) = crate::tls::server_config(files)?;
        if let (Some(path), Some(pem)) = (&args.tls_cert_out, pem) {
            std::fs::write(path, pem)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Some(config)
    };
    let auth = match &args.auth {
        None => None,
        Some(pair) => match pair.split_once(':') {
            Some((user, password)) => Some((user.to_string(), password.to_string())),
            None => bail!("--auth takes USER:PASSWORD"),
        },
    };
    if let Some(dir) = &args.dump_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(SinkContext {
        config: SessionConfig {
            hostname: args.hostname.clone(),
            max_size: args.max_size,
            tls,
            auth,
            script: Script {
                reply_delay: args.delay_reply,
                data_delay: args.delay_data,
                slow_delay: args.slow_delay,
                connect_tempfail: args.connect_tempfail,
                connect_reject: args.connect_reject,
                rcpt_tempfail: args.rcpt_tempfail,
                rcpt_reject: args.rcpt_reject,
                message_tempfail: args.message_tempfail,
                message_reject: args.message_reject,
                disconnect: args.disconnect,
                close_after: args.close_after,
            },
            dump_dir: args.dump_dir.clone(),
        },
        stats: SinkStats::new(),
        started: Instant::now(),
        sources: Mutex::new(std::collections::BTreeMap::new()),
        replies: (0..REPLY_CODES).map(|_| AtomicU64::new(0)).collect(),
        recorder: Mutex::new(Recorder::default()),
        latency: SharedHistogram::default(),
        shutdown: watch::Sender::new(false),
        seed: args.seed.unwrap_or_else(seed_from_time),
        seconds: Mutex::new(Vec::new()),
    })
}

/// Once a second: what came in during that second (and a progress line).
async fn sample_seconds(ctx: Arc<SinkContext>, started: Instant, progress: bool) {
    let mut ticker = tokio::time::interval_at(
        (started + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let stats = &ctx.stats;
    let mut last = [0u64; 3];
    for second in 1.. {
        ticker.tick().await;
        let now = [
            stats.messages.load(Ordering::Relaxed),
            stats.recipients.load(Ordering::Relaxed),
            stats.bytes.load(Ordering::Relaxed),
        ];
        let sample = SecondSample {
            second,
            messages: now[0] - last[0],
            recipients: now[1] - last[1],
            bytes: now[2] - last[2],
            connections: stats.active.load(Ordering::Relaxed),
        };
        last = now;
        if progress {
            eprintln!(
                "[{second:>5}s] accepted {} ({}/s)  connections {}  refused {}",
                now[0],
                sample.messages,
                sample.connections,
                stats.messages_refused.load(Ordering::Relaxed),
            );
        }
        let mut seconds = ctx.seconds.lock().expect("seconds lock");
        if seconds.len() < SECONDS_KEPT_MAX {
            seconds.push(sample);
        }
    }
}

fn summarize(args: &SinkArgs, ctx: &SinkContext, listen: String, elapsed: Duration) -> SinkSummary {
    let (expected, verify_error) = match &args.verify {
        None => (None, None),
        Some(path) => match read_report(path) {
            Ok(run) => (Some(run), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        },
    };
    let recorder = std::mem::take(&mut *ctx.recorder.lock().expect("recorder lock"));
    let ids = recorder.summarize(expected.as_ref());
    let stats = &ctx.stats;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    // From the first accepted message to the last: the time the sender
    // was at work (a sink is often started well before, stopped after).
    let first = load(&stats.first_message_micros);
    let last = load(&stats.last_message_micros);
    let busy_seconds = if first <= last {
        (last - first) as f64 / 1e6
    } else {
        0.0
    };
    let per_second = std::mem::take(&mut *ctx.seconds.lock().expect("seconds lock"));
    let replies = ctx
        .replies
        .iter()
        .enumerate()
        .filter_map(|(code, count)| {
            let count = count.load(Ordering::Relaxed);
            (count > 0).then_some((code as u16, count))
        })
        .collect();
    SinkSummary {
        listen,
        duration_seconds: elapsed.as_secs_f64(),
        connections: load(&stats.connections),
        connections_peak: load(&stats.peak),
        connections_over_limit: load(&stats.over_limit),
        messages_accepted: load(&stats.messages),
        messages_tls: load(&stats.messages_tls),
        recipients_accepted: load(&stats.recipients),
        bytes_accepted: load(&stats.bytes),
        messages_refused: load(&stats.messages_refused),
        recipients_refused: load(&stats.recipients_refused),
        disconnects: load(&stats.disconnects),
        closed_after: load(&stats.closed_after),
        sources: ctx.sources.lock().map(|s| s.clone()).unwrap_or_default(),
        auth_attempts: load(&stats.auth_attempts),
        auth_successes: load(&stats.auth_successes),
        auth_failures: load(&stats.auth_failures),
        busy_seconds,
        messages_per_second: load(&stats.messages) as f64 / busy_seconds.max(1e-9),
        messages_per_second_peak: per_second.iter().map(|s| s.messages).max().unwrap_or(0),
        replies,
        ids,
        latency_end_to_end: ctx.latency.summary(),
        verify_error,
        per_second,
    }
}

fn read_report(path: &std::path::Path) -> anyhow::Result<AcceptedRun> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a send report", path.display()))
}
