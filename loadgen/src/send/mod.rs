//! `loadgen send`: drives an SMTP server with N connections, closed loop
//! or open loop, and reports what it saw.
//!
//! # Layout
//!
//! - [`schedule`]: which message is due when (closed or open loop).
//! - [`client`]: one connection's replies and commands; greeting, EHLO,
//!   STARTTLS and AUTH.
//! - [`worker`]: one connection's sessions and (pipelined) transactions.
//! - [`report`]: the final report, as text and JSON.

pub mod client;
pub mod report;
pub mod schedule;
pub mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use baton::smtp::address::{parse_forward_path, parse_reverse_path, ReversePath};
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::client::{AuthMechanism, AuthPlan, ReplyTally, SessionPlan, TlsPlan};
use self::report::{ErrorCount, LatencyReport, SendReport};
use self::schedule::{Limits, Schedule};
use self::worker::{ErrorTally, LocalPattern, RecipientSpec, Worker};
use crate::clock::Clock;
use crate::ids::{parse_run_id, AcceptedSet};
use crate::latency::SharedHistogram;
use crate::message::{BodySource, MessageTemplate, SizeSpec};
use crate::rng::{parse_weighted_items, seed_from_time, Rng, Weighted};
use crate::signals::Termination;
use crate::tls::{self, ServerVerification};
use crate::units::parse_duration;

/// Connections one run may open at once.
pub const CONNECTIONS_MAX: u64 = 100_000;
/// Recipients of one message.
pub const RECIPIENTS_PER_MESSAGE_MAX: u16 = 1000;
/// Generated recipient domains.
pub const GENERATED_DOMAINS_MAX: u64 = 1_000_000;
/// Messages when neither a count nor a duration is given.
const COUNT_DEFAULT: u64 = 1000;

/// `loadgen send` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The server, as host:port (port 25 when left out).
    pub target: String,
    /// Connections kept open at once.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub connections: u64,
    /// Messages on one connection before QUIT and a new connection
    /// (default: no limit).
    #[arg(short = 'm', long, value_name = "N")]
    pub messages_per_connection: Option<u32>,
    /// Messages to send in all (default 1000, or no limit with --duration).
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
    /// How long to send: 30s, 5m.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Open loop: messages per second, on a fixed schedule. Without it, a
    /// closed loop: each connection sends as fast as the server answers.
    #[arg(short = 'r', long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// Never pipeline, even when the server offers PIPELINING.
    #[arg(long)]
    pub no_pipelining: bool,
    /// Recipients per message.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub rcpts: u16,
    /// Recipient domains, each with an optional weight: a.example:3,b.example.
    #[arg(long, value_delimiter = ',', default_value = "loadgen.test")]
    pub domains: Vec<String>,
    /// Use N generated domains (d0.loadgen.test ...) instead of --domains.
    #[arg(long, value_name = "N")]
    pub generated_domains: Option<u64>,
    /// Zipf exponent for the weights of generated domains (0: uniform).
    #[arg(long, default_value_t = 0.0, value_name = "S")]
    pub domain_skew: f64,
    /// Recipient local parts, each with an optional weight; {n} is replaced
    /// by a user number: user{n}:9,bounce-{n}:1.
    #[arg(long, value_delimiter = ',', default_value = "user{n}")]
    pub locals: Vec<String>,
    /// User numbers for {n} are drawn from 0..N.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub users: u64,
    /// The sender (MAIL FROM); "" or "<>" for the null sender.
    #[arg(long, default_value = "loadgen@loadgen.test")]
    pub from: String,
    /// Message size, headers included: 5KiB, 1KiB-100KiB (uniform) or
    /// 1KiB:80,100KiB:20 (weighted).
    #[arg(short = 's', long, default_value = "5KiB")]
    pub size: String,
    /// Send this file as the body of every message (after loadgen's
    /// headers) instead of generated text; --size is then ignored.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// An extra header, "Name: value"; repeat for more.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// The name sent with EHLO.
    #[arg(long, default_value = "loadgen.invalid")]
    pub ehlo: String,
    /// Use STARTTLS; fail if the server does not offer it.
    #[arg(long)]
    pub starttls: bool,
    /// Accept any server certificate.
    #[arg(long, requires = "starttls")]
    pub tls_no_verify: bool,
    /// Trust the CA certificates in this PEM file (instead of the system's).
    #[arg(
        long,
        value_name = "PEM",
        requires = "starttls",
        conflicts_with = "tls_no_verify"
    )]
    pub tls_ca: Option<PathBuf>,
    /// Name to verify the certificate against (default: the target's host).
    #[arg(long, value_name = "NAME", requires = "starttls")]
    pub tls_server_name: Option<String>,
    /// Authenticate once per connection, after EHLO (and after STARTTLS
    /// with --starttls): `USER:PASSWORD`, split at the first colon. A
    /// refusal (535) fails the run with the server's reply.
    #[arg(long, value_name = "USER:PASSWORD", conflicts_with = "auth_user")]
    pub auth: Option<String>,
    /// Authenticate as this user (AUTH PLAIN or LOGIN); --auth in two parts.
    #[arg(long, requires = "auth_password")]
    pub auth_user: Option<String>,
    #[arg(long, requires = "auth_user")]
    pub auth_password: Option<String>,
    /// SASL mechanism (default: PLAIN, or LOGIN when only that is offered).
    #[arg(long, visible_alias = "auth-mech", value_enum)]
    pub auth_mechanism: Option<AuthMechanism>,
    /// How long to wait for a connection or a reply.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Seed for every random choice (default: from the clock; the report
    /// prints it).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The run id in the message ids, up to 16 hex digits (default: random).
    #[arg(long, value_name = "HEX")]
    pub run_id: Option<String>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the report as JSON to this file (for `sink --verify`).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Live counts, shared by the connections and read by the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    pub messages_accepted: AtomicU64,
    pub messages_failed: AtomicU64,
    pub recipients_accepted: AtomicU64,
    pub recipients_refused: AtomicU64,
    pub bytes_accepted: AtomicU64,
    /// Messages whose MAIL is written and whose outcome is not known yet.
    pub in_flight: AtomicU64,
    /// Connections attempted.
    pub connections: AtomicU64,
    /// Sessions that reached MAIL.
    pub sessions: AtomicU64,
    pub connection_errors: AtomicU64,
}

/// The run's latency histograms.
#[derive(Default)]
pub struct Latencies {
    pub connect: SharedHistogram,
    pub transaction: SharedHistogram,
    pub message: SharedHistogram,
}

/// Everything the connections of a run share.
pub struct RunContext {
    pub session: SessionPlan,
    pub sender: ReversePath,
    pub recipients: RecipientSpec,
    pub template: MessageTemplate,
    pub schedule: Schedule,
    pub counters: Counters,
    pub latency: Latencies,
    pub clock: Clock,
    pub run_id: u64,
    pub seed: u64,
    pub pipelining: bool,
    pub messages_per_connection: Option<u32>,
    /// Set when the run must stop (interrupt or fatal error).
    pub stop: watch::Sender<bool>,
    pub fatal: Mutex<Option<String>>,
}

impl RunContext {
    /// Stops the run for a reason the report will give.
    pub fn abort(&self, why: String) {
        self.fatal.lock().expect("fatal lock").get_or_insert(why);
        self.interrupt();
    }

    /// Stops handing out messages; those in flight finish.
    pub fn interrupt(&self) {
        self.schedule.stop();
        self.stop.send_replace(true);
    }
}

/// Runs `send` to the end and returns its report.
pub async fn run(args: SendArgs) -> anyhow::Result<SendReport> {
    let mut termination = Termination::install().context("signal handlers")?;
    let ctx = Arc::new(prepare(&args).await?);
    let mut workers = JoinSet::new();
    for _ in 0..args.connections {
        workers.spawn(Worker::new(ctx.clone()).run());
    }
    let progress = (!args.quiet).then(|| tokio::spawn(progress(ctx.clone())));
    let mut tally = ReplyTally::default();
    let mut errors = ErrorTally::default();
    let mut accepted = Vec::new();
    let mut interrupted = false;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(outcome) => {
                    let outcome = outcome.context("a connection task failed")?;
                    tally.merge(outcome.tally);
                    errors.merge(outcome.errors);
                    accepted.extend(outcome.accepted);
                }
            },
            _ = termination.wait(), if !interrupted => {
                eprintln!("loadgen send: interrupted; finishing the messages in flight");
                interrupted = true;
                ctx.interrupt();
            }
        }
    }
    let elapsed = ctx.clock.started().elapsed();
    if let Some(progress) = progress {
        progress.abort();
    }
    Ok(report(&args, &ctx, elapsed, tally, errors, accepted))
}

/// Checks the options and builds the run's shared context.
async fn prepare(args: &SendArgs) -> anyhow::Result<RunContext> {
    if args.connections == 0 || args.connections > CONNECTIONS_MAX {
        bail!("--connections must be between 1 and {CONNECTIONS_MAX}");
    }
    if args.rcpts == 0 || args.rcpts > RECIPIENTS_PER_MESSAGE_MAX {
        bail!("--rcpts must be between 1 and {RECIPIENTS_PER_MESSAGE_MAX}");
    }
    if args.messages_per_connection == Some(0) {
        bail!("--messages-per-connection must be at least 1");
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a number of messages per second above 0");
        }
    }
    let (host, addrs) = resolve(&args.target).await?;
    let seed = args.seed.unwrap_or_else(seed_from_time);
    let run_id = match &args.run_id {
        Some(text) => parse_run_id(text).context("--run-id takes up to 16 hex digits")?,
        None => Rng::new(seed).next_u64(),
    };
    let sender = parse_sender(&args.from)?;
    let recipients = recipient_spec(args)?;
    let body = match &args.body_file {
        Some(path) => MessageTemplate::body_file(path)?,
        None => BodySource::Generated(SizeSpec::parse(&args.size).context("--size")?),
    };
    let template = MessageTemplate::new(&sender.address(), &args.headers, body)?;
    let tls = match args.starttls {
        false => None,
        true => {
            let verification = match (&args.tls_ca, args.tls_no_verify) {
                (Some(path), _) => ServerVerification::CaFile(path.clone()),
                (None, true) => ServerVerification::None,
                (None, false) => ServerVerification::SystemRoots,
            };
            let name = args.tls_server_name.as_deref().unwrap_or(&host);
            Some(TlsPlan {
                config: tls::client_config(&verification)?,
                server_name: tls::server_name(name)?,
            })
        }
    };
    let credentials = match (&args.auth, &args.auth_user) {
        (Some(pair), _) => match pair.split_once(':') {
            Some((user, password)) => Some((user.to_owned(), password.to_owned())),
            None => bail!("--auth takes USER:PASSWORD"),
        },
        (None, Some(user)) => Some((user.clone(), args.auth_password.clone().unwrap_or_default())),
        (None, None) => None,
    };
    if credentials.is_none() && args.auth_mechanism.is_some() {
        bail!("--auth-mechanism needs --auth (or --auth-user and --auth-password)");
    }
    let auth = credentials.map(|(user, password)| AuthPlan {
        user,
        password,
        mechanism: args.auth_mechanism,
    });
    let limits = Limits {
        count: args
            .count
            .or((args.duration.is_none()).then_some(COUNT_DEFAULT)),
        duration: args.duration,
    };
    let clock = Clock::start();
    Ok(RunContext {
        session: SessionPlan {
            addrs,
            ehlo: args.ehlo.clone(),
            timeout: args.timeout,
            tls,
            auth,
        },
        sender,
        recipients,
        template,
        schedule: Schedule::new(clock.started(), args.rate, limits),
        counters: Counters::default(),
        latency: Latencies::default(),
        clock,
        run_id,
        seed,
        pipelining: !args.no_pipelining,
        messages_per_connection: args.messages_per_connection,
        stop: watch::Sender::new(false),
        fatal: Mutex::new(None),
    })
}

/// `host:port` (25 by default) to addresses; returns the host too.
async fn resolve(target: &str) -> anyhow::Result<(String, Vec<std::net::SocketAddr>)> {
    let has_port = match target.rsplit_once(':') {
        // An IPv6 address is bracketed when it has a port: [::1]:25.
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    let with_port = if has_port {
        target.to_string()
    } else {
        format!("{target}:25")
    };
    let host = with_port
        .rsplit_once(':')
        .map(|(host, _)| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
        .unwrap_or_default();
    let addrs: Vec<_> = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("cannot resolve {with_port}"))?
        .collect();
    if addrs.is_empty() {
        bail!("{with_port} resolves to no address");
    }
    Ok((host, addrs))
}

fn parse_sender(from: &str) -> anyhow::Result<ReversePath> {
    let from = from.trim();
    if from.is_empty() || from == "<>" {
        return Ok(ReversePath::Null);
    }
    let bracketed = format!("<{}>", from.trim_start_matches('<').trim_end_matches('>'));
    match parse_reverse_path(bracketed.as_bytes(), false) {
        Ok((path, used)) if used == bracketed.len() => Ok(path),
        Ok(_) => bail!("bad sender {from:?}: trailing characters"),
        Err(e) => bail!("bad sender {from:?}: {e}"),
    }
}

fn recipient_spec(args: &SendArgs) -> anyhow::Result<RecipientSpec> {
    let domains = match args.generated_domains {
        Some(count) => {
            if count == 0 || count > GENERATED_DOMAINS_MAX {
                bail!("--generated-domains must be between 1 and {GENERATED_DOMAINS_MAX}");
            }
            if !(args.domain_skew.is_finite() && args.domain_skew >= 0.0) {
                bail!("--domain-skew must be 0 or more");
            }
            // Zipf: the i-th domain weighs 1/(i+1)^s (on a scale that keeps
            // the smallest weight above 0).
            Weighted::new((0..count).map(|i| {
                let weight = 1e9 / ((i + 1) as f64).powf(args.domain_skew);
                (format!("d{i}.loadgen.test"), weight.max(1.0) as u64)
            }))?
        }
        None => parse_weighted_items(&args.domains, |d| Ok(d.to_string())).context("--domains")?,
    };
    let locals =
        parse_weighted_items(&args.locals, |l| Ok(LocalPattern::new(l))).context("--locals")?;
    // Every pattern and every domain must make valid addresses.
    let check = |local: &LocalPattern, domain: &str| {
        let path = format!("<{}@{domain}>", local.render(0));
        match parse_forward_path(path.as_bytes(), false) {
            Ok((_, used)) if used == path.len() => Ok(()),
            _ => Err(anyhow::anyhow!("{path} is not a valid recipient address")),
        }
    };
    for local in locals.items() {
        check(local, &domains.items()[0])?;
    }
    for domain in domains.items() {
        check(&locals.items()[0], domain)?;
    }
    Ok(RecipientSpec {
        locals,
        users: args.users.max(1),
        domains,
        per_message: args.rcpts,
    })
}

/// One line a second on stderr.
async fn progress(ctx: Arc<RunContext>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut previous = 0;
    let mut previous_at = Instant::now();
    loop {
        ticker.tick().await;
        let counters = &ctx.counters;
        let accepted = counters.messages_accepted.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (accepted - previous) as f64 / (now - previous_at).as_secs_f64();
        (previous, previous_at) = (accepted, now);
        eprintln!(
            "[{:>5.0}s] accepted {accepted} ({rate:.0}/s)  failed {}  in flight {}  connection errors {}",
            ctx.clock.started().elapsed().as_secs_f64(),
            counters.messages_failed.load(Ordering::Relaxed),
            counters.in_flight.load(Ordering::Relaxed),
            counters.connection_errors.load(Ordering::Relaxed),
        );
    }
}

fn report(
    args: &SendArgs,
    ctx: &RunContext,
    elapsed: Duration,
    tally: ReplyTally,
    errors: ErrorTally,
    accepted: Vec<(u64, u16)>,
) -> SendReport {
    let counters = &ctx.counters;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let mut replies: BTreeMap<String, BTreeMap<u16, u64>> = BTreeMap::new();
    for ((stage, code), count) in tally.counts {
        *replies
            .entry(stage.to_string())
            .or_default()
            .entry(code)
            .or_default() += count;
    }
    let reply_samples = tally
        .samples
        .into_iter()
        .map(|((stage, code), text)| (format!("{stage} {code}"), text))
        .collect();
    let connection_errors = errors
        .0
        .into_iter()
        .map(|(kind, (count, first))| (kind.to_string(), ErrorCount { count, first }))
        .collect();
    SendReport {
        target: args.target.clone(),
        run_id: format!("{:016x}", ctx.run_id),
        seed: ctx.seed,
        mode: if ctx.schedule.is_open_loop() {
            "open"
        } else {
            "closed"
        }
        .into(),
        rate_target: args.rate,
        connections: args.connections,
        pipelining: ctx.pipelining,
        duration_seconds: seconds,
        messages_accepted: load(&counters.messages_accepted),
        messages_failed: load(&counters.messages_failed),
        recipients_accepted: load(&counters.recipients_accepted),
        recipients_refused: load(&counters.recipients_refused),
        bytes_accepted: load(&counters.bytes_accepted),
        messages_per_second: load(&counters.messages_accepted) as f64 / seconds,
        recipients_per_second: load(&counters.recipients_accepted) as f64 / seconds,
        bytes_per_second: load(&counters.bytes_accepted) as f64 / seconds,
        connections_opened: load(&counters.sessions),
        connection_errors,
        replies,
        reply_samples,
        latency: LatencyReport {
            connect: ctx.latency.connect.summary(),
            transaction: ctx.latency.transaction.summary(),
            message: ctx.latency.message.summary(),
        },
        fatal: ctx.fatal.lock().expect("fatal lock").clone(),
        accepted: AcceptedSet::from_pairs(accepted),
    }
}
