//! The `baton` binary: the server and its command-line tools.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use baton::admin::{self, AdminReply, AdminToken, MessageReport, QueueSummary};
use baton::config::{Config, DEFAULT_CONFIG};
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// baton: an SMTP relay engine for bulk senders.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Print every configuration key with its default and a comment, then exit.
    #[arg(long)]
    print_default_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default command). Without --config: built-in defaults.
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file; errors name the key and the line.
    CheckConfig { file: PathBuf },
    /// Inspect or act on the queue of a running server (through its admin API).
    Queue {
        #[command(subcommand)]
        action: QueueAction,
        /// The server's configuration, to find its admin address.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The admin address, overriding the configuration.
        #[arg(long, global = true)]
        admin: Option<SocketAddr>,
        /// Print the raw JSON.
        #[arg(long, global = true)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Recipients waiting, per destination.
    List,
    /// One message: envelope and each recipient's state.
    Show { id: String },
    /// Retry scheduled recipients now: of one destination, or of all.
    Flush { domain: Option<String> },
    /// Remove a message's undelivered recipients, without notification.
    Delete { id: String },
    /// Fail a message's undelivered recipients, with a notification to the sender.
    Bounce { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    let result = match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::Run { config } => run(config.as_deref()),
        Command::CheckConfig { file } => check_config(&file),
        Command::Queue {
            action,
            config,
            admin,
            json,
        } => queue(action, config.as_deref(), admin, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("baton: {err}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<&Path>) -> Result<Config, String> {
    match path {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

fn run(config_path: Option<&Path>) -> Result<(), String> {
    let (config, warnings) = match config_path {
        Some(path) => Config::load_with_warnings(path).map_err(|e| e.to_string())?,
        None => (Config::default(), Vec::new()),
    };
    // Flushes the log writer when `run` returns.
    let _log = init_logging(&config.log.level);
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    // SIGHUP is caught from here on: its default action would end the
    // process, and logrotate's `postrotate kill -HUP` must never do that.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| e.to_string())?;
    let running = baton::server::start(config).map_err(|e| e.to_string())?;
    for signal in signals.forever() {
        if signal == SIGHUP {
            reload(&running, config_path);
            continue;
        }
        tracing::info!(
            signal,
            "shutting down: no new connections; finishing sessions"
        );
        break;
    }
    running.shut_down();
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: reads the configuration file again and replaces the TLS
/// certificates, so renewed ones take effect without a restart; new
/// handshakes use them. A file that fails to load or check changes
/// nothing. Other settings take effect at the next start.
fn reload(running: &baton::server::Running, config_path: Option<&Path>) {
    let Some(path) = config_path else {
        tracing::info!("SIGHUP: running on built-in defaults; nothing to reload");
        return;
    };
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(%err, "SIGHUP: configuration refused; nothing changed");
            return;
        }
    };
    match running.server.reload_users(&config.auth) {
        Ok(count) => tracing::info!(users = count, "SIGHUP: AUTH users reloaded"),
        Err(err) => tracing::error!(%err, "SIGHUP: AUTH users not reloaded; the old ones stay"),
    }
    match running.server.reload_certificates(&config.tls) {
        Ok(count) => tracing::info!(
            certificates = count,
            "SIGHUP: certificates reloaded; other changes need a restart"
        ),
        Err(err) => tracing::error!(%err, "SIGHUP: certificates not reloaded; the old ones stay"),
    }
}

/// Logs go to stderr through a writer thread: a shard formats its line and
/// moves on, and never waits on the write (one line per accepted message is
/// tens of thousands of writes a second). Lines are dropped, and counted,
/// only if the writer falls `LOG_LINES_BUFFERED_MAX` lines behind.
fn init_logging(level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    const LOG_LINES_BUFFERED_MAX: usize = 256 * 1024;
    const LOG_BUFFER_BYTES: usize = 64 << 10;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_BUFFERED_MAX)
        .thread_name("log-writer")
        // The writer thread drains every queued line, then flushes: one
        // write system call per batch instead of per line.
        .finish(std::io::BufWriter::with_capacity(
            LOG_BUFFER_BYTES,
            std::io::stderr(),
        ));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false)
        .with_timer(LogTime)
        .init();
    guard
}

/// Log timestamps, `2026-11-22T18:00:00.123Z`, with the date and time to the
/// second formatted once a second per thread: the default timer's full
/// formatting cost a fifth of the throughput at one line per message.
struct LogTime;

impl tracing_subscriber::fmt::time::FormatTime for LogTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        thread_local! {
            static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        SECOND.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.0 != now.as_secs() {
                *cache = (
                    now.as_secs(),
                    baton::smtp::date::rfc3339_seconds(now.as_secs()),
                );
            }
            write!(w, "{}.{:03}Z", cache.1, now.subsec_millis())
        })
    }
}

fn check_config(file: &Path) -> Result<(), String> {
    let (config, warnings) = Config::load_with_warnings(file).map_err(|e| e.to_string())?;
    // The files the configuration names must load too: a certificate that
    // does not match its key, or has expired, is found now, not at start.
    let certificates = baton::tls::check(&config.tls).map_err(|e| e.to_string())?;
    if let Some(ca) = &config.delivery.tls_ca {
        baton::tls::ClientTls::load(Some(ca)).map_err(|e| e.to_string())?;
    }
    // So is the admin token, which `baton run` would refuse.
    if let Some(path) = &config.admin.token_file {
        AdminToken::load(path).map_err(|e| format!("{}: {e}", file.display()))?;
        if let Some(warning) = admin::permission_warning(path) {
            println!("warning: {}: {warning}", file.display());
        }
    }
    for warning in &warnings {
        println!("warning: {warning}");
    }
    let (limit, wanted) = baton::server::check_descriptors(&config);
    if limit < wanted {
        println!(
            "warning: {wanted} open descriptors wanted (limits.connections_per_shard_max x shards, \
             and {} for the rest), {limit} allowed here (the hard RLIMIT_NOFILE)",
            baton::server::DESCRIPTORS_RESERVE
        );
    }
    for c in &certificates {
        println!(
            "{}: {} ({}), expires {} (in {} days)",
            c.path.display(),
            c.subject,
            c.names.join(", "),
            c.not_after,
            c.remaining_secs / 86_400
        );
    }
    println!("{}: ok", file.display());
    Ok(())
}

fn queue(
    action: QueueAction,
    config: Option<&Path>,
    admin: Option<SocketAddr>,
    json: bool,
) -> Result<(), String> {
    // The configuration gives the token even when --admin gives the address.
    let settings = load(config)?.admin;
    let address = match admin {
        Some(address) => address,
        None => settings
            .address
            .ok_or("the admin API is disabled in the configuration")?,
    };
    let token = match &settings.token_file {
        Some(path) => Some(AdminToken::load(path)?),
        None => None,
    };
    let api = Api {
        address,
        token: token.as_ref(),
    };
    let queue_id = |id: &str| {
        admin::parse_queue_id(id).ok_or_else(|| format!("{id:?} is not a queue id (16 hex digits)"))
    };
    match action {
        QueueAction::List => {
            let body = api.read("/queue")?;
            if json {
                print!("{body}");
            } else {
                print_summary(&serde_json::from_str(&body).map_err(|e| e.to_string())?);
            }
        }
        QueueAction::Show { id } => {
            let body = api.read(&format!("/queue/{}", queue_id(&id)?))?;
            if json {
                print!("{body}");
            } else {
                print_message(&serde_json::from_str(&body).map_err(|e| e.to_string())?);
            }
        }
        QueueAction::Flush { domain: None } => api.act("/queue/flush", json)?,
        QueueAction::Flush {
            domain: Some(domain),
        } => {
            if !admin::is_destination(&domain) {
                return Err(format!("{domain:?} is not a domain"));
            }
            api.act(&format!("/queue/flush/{domain}"), json)?;
        }
        QueueAction::Delete { id } => {
            api.act(&format!("/queue/{}/delete", queue_id(&id)?), json)?
        }
        QueueAction::Bounce { id } => {
            api.act(&format!("/queue/{}/bounce", queue_id(&id)?), json)?
        }
    }
    Ok(())
}

/// A running server's admin API, and the token to show it.
struct Api<'t> {
    address: SocketAddr,
    token: Option<&'t AdminToken>,
}

impl Api<'_> {
    fn unreachable(&self, err: std::io::Error) -> String {
        format!("cannot reach the admin API at {}: {err}", self.address)
    }

    /// A 401 said in the operator's terms: where the token comes from.
    fn refused(&self) -> String {
        let address = self.address;
        match self.token {
            None => format!(
                "the admin API at {address} needs the token in [admin] token_file: \
                 give baton queue the server's configuration with --config"
            ),
            Some(_) => format!(
                "the admin API at {address} refused the token in [admin] token_file: \
                 is it the server's?"
            ),
        }
    }

    /// GETs `path`; the body of a 200, or the server's answer as the error.
    fn read(&self, path: &str) -> Result<String, String> {
        let (status, body) =
            admin::get(self.address, path, self.token).map_err(|e| self.unreachable(e))?;
        match status {
            200 => Ok(body),
            401 => Err(self.refused()),
            _ => Err(body.trim().to_string()),
        }
    }

    /// POSTs `path` and prints the [`AdminReply`]; an error when the request
    /// was not carried out.
    fn act(&self, path: &str, json: bool) -> Result<(), String> {
        let (status, body) =
            admin::post(self.address, path, self.token).map_err(|e| self.unreachable(e))?;
        if status == 401 {
            return Err(self.refused());
        }
        let reply: AdminReply = serde_json::from_str(&body)
            .map_err(|_| format!("the admin API answered {status}: {}", body.trim()))?;
        if json {
            print!("{body}");
        } else if reply.ok {
            println!("{}", reply.message);
        }
        if !reply.ok {
            return Err(reply.message);
        }
        Ok(())
    }
}

fn print_summary(summary: &QueueSummary) {
    println!(
        "{:<40} {:>10} {:>10} {:>12}",
        "DESTINATION", "READY", "SCHEDULED", "CONNECTIONS"
    );
    for d in &summary.destinations {
        println!(
            "{:<40} {:>10} {:>10} {:>12}",
            d.destination, d.ready, d.scheduled, d.connections
        );
    }
    let plural = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    println!(
        "{}, {} queued",
        plural(summary.messages, "message"),
        plural(summary.recipients, "recipient")
    );
}

fn print_message(m: &MessageReport) {
    println!("queue id:  {}", m.queue_id);
    println!("arrival:   {} (unix ms)", m.arrival_ms);
    println!("sender:    <{}> {}", m.sender, m.mail_params);
    println!("client:    {}", m.peer);
    if let Some(tls) = &m.tls {
        println!("tls:       {tls}");
    }
    println!("size:      {} bytes", m.size);
    for r in &m.recipients {
        match r.next_attempt_ms {
            Some(next) => println!(
                "  <{}> {} (attempts {}, next {})",
                r.address,
                r.status,
                r.attempts.unwrap_or(0),
                next
            ),
            None => println!("  <{}> {}", r.address, r.status),
        }
        if let Some(reply) = &r.last_reply {
            println!("      {reply}");
        }
    }
}
