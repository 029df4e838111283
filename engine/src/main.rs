//! The `baton` binary: the server and its command-line tools.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use baton::admin::{self, AdminReply, AdminToken, MessageReport, QueueSummary};
use baton::auth::edit::{self, Change};
use baton::auth::{User, UserPolicy, Users};
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
    /// Print the manual page, baton(1), as roff (`baton --print-man-page | man -l -`).
    #[arg(long)]
    print_man_page: bool,
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
    /// Inspect or change the suppression list of a running server (through its admin API).
    Suppression {
        #[command(subcommand)]
        action: SuppressionAction,
        /// The server's configuration, to find its admin address and token.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The admin address, overriding the configuration.
        #[arg(long, global = true)]
        admin: Option<SocketAddr>,
        /// Print the raw JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Sites' shaping state on a running server, and suspending or resuming
    /// one (through its admin API). A site is where mail goes: a route's
    /// next hop, or the MX hosts its recipient domains share.
    Site {
        #[command(subcommand)]
        action: SiteAction,
        /// The server's configuration, to find its admin address and token.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The admin address, overriding the configuration.
        #[arg(long, global = true)]
        admin: Option<SocketAddr>,
        /// Print the raw JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Take the node out of service: it takes no more mail (421 to SMTP clients, 503 to HTTP
    /// injection) and sends every queued message to another node over SMTP, each recorded
    /// delivered only after that node's 250; then waits until the queue is empty, when the
    /// node can be stopped (through its admin API).
    Drain {
        /// The other node's SMTP listener, host:port; it must relay for this one (its
        /// [relay] networks, or AUTH with --user).
        #[arg(long)]
        to: String,
        /// Authenticate to the other node as this user (its [auth] users).
        #[arg(long)]
        user: Option<String>,
        /// A file holding --user's password (one trailing newline stripped).
        #[arg(long, requires = "user")]
        password_file: Option<PathBuf>,
        /// Send the credentials over a connection without STARTTLS too.
        #[arg(long)]
        auth_plaintext: bool,
        /// Return once the drain has started, without waiting for the queue to empty.
        #[arg(long)]
        no_wait: bool,
        /// The server's configuration, to find its admin address and token.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin address, overriding the configuration.
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// The cluster a running server belongs to ([cluster]): the live nodes, their
    /// heartbeats and versions, and the leases this node holds (through its admin API).
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
        /// The server's configuration, to find its admin address and token.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The admin address, overriding the configuration.
        #[arg(long, global = true)]
        admin: Option<SocketAddr>,
        /// Print the raw JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Have a running server reread its configuration file (AUTH users, DKIM keys, TLS
    /// certificates), as SIGHUP does, through its admin API.
    Reload {
        /// The server's configuration, to find its admin address and token.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin address, overriding the configuration.
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// DKIM: make a signing key and print the DNS record to publish.
    Dkim {
        #[command(subcommand)]
        action: DkimAction,
    },
    /// Manage the users who may AUTH, in the file `[auth] users` names.
    User {
        #[command(subcommand)]
        action: UserAction,
        /// The configuration that names the users file (`[auth] users`).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
}

/// `baton user`. The password of `add` and `passwd` is asked for twice
/// without echo on a terminal, or read as one line from standard input
/// when that is not a terminal (scripts: `printf '%s\n' "$pw" | baton user add app1`).
#[derive(Subcommand)]
enum UserAction {
    /// Add a user; creates the users file (mode 0600) if there is none.
    Add {
        name: String,
        /// A domain the user may send from (MAIL FROM and From:), ".example.com" for its
        /// subdomains; repeat for more. None: any domain.
        #[arg(long = "sender-domain", value_name = "DOMAIN")]
        sender_domains: Vec<String>,
        /// Messages the user may send per hour. None: no limit.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        messages_per_hour: Option<u32>,
        /// Recipients per message. None: [limits] recipients_per_message_max.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        recipients_per_message_max: Option<u32>,
        /// A From: domain whose DKIM key may sign the user's mail, as --sender-domain;
        /// repeat for more. None: any domain it may send from.
        #[arg(long = "dkim-domain", value_name = "DOMAIN")]
        dkim_domains: Vec<String>,
        /// One-click unsubscribe links in the user's single-recipient mail ([unsubscribe]).
        #[arg(long)]
        unsubscribe: bool,
        /// The [[pool]] the user's mail leaves from. None: [[sender_pool]], the route's, the default.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Set a user's password.
    Passwd { name: String },
    /// Remove a user.
    Remove { name: String },
    /// The users and their policy (never the password hashes).
    List,
}

#[derive(Subcommand)]
enum QueueAction {
    /// Recipients waiting, per destination (or per site with --by-site).
    List {
        /// Add the destinations of each site up (a route's next hop).
        #[arg(long)]
        by_site: bool,
    },
    /// One message: envelope and each recipient's state.
    Show { id: String },
    /// Queued messages, oldest first, a page at a time (as Postfix's mailq).
    Messages {
        /// Only messages with a recipient at this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages from this sender address, or any address of this domain.
        #[arg(long)]
        sender: Option<String>,
        /// Only messages queued longer ago than this: "10m", "2h".
        #[arg(long)]
        older_than: Option<String>,
        /// Only messages with a recipient "pending" (never tried) or "deferred".
        #[arg(long)]
        status: Option<String>,
        /// Messages per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// The page after this queue id (printed at the end of a full page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Retry scheduled recipients now: of one destination, or of all.
    Flush { domain: Option<String> },
    /// Remove a message's undelivered recipients, without notification; or
    /// every message with a recipient at --domain and/or from --sender.
    Delete {
        id: Option<String>,
        #[command(flatten)]
        matching: Matching,
    },
    /// Fail a message's undelivered recipients, with a notification to the
    /// sender; or every message --domain and/or --sender match.
    Bounce {
        id: Option<String>,
        #[command(flatten)]
        matching: Matching,
    },
    /// Deliver nothing to a domain for a while (default 30 days), keeping
    /// its mail queued; `release` ends it.
    Hold {
        domain: String,
        #[arg(long = "for", default_value = "30d")]
        duration: String,
    },
    /// End a hold (or a suspension) of a domain: its mail goes out again.
    Release { domain: String },
}

/// Which recipients a bulk `queue delete` or `queue bounce` acts on: the
/// open recipients at `domain` (of every message), of the messages from
/// `sender` (an address, or any address of a domain); both: the open
/// recipients at `domain` of the messages from `sender`.
#[derive(clap::Args)]
struct Matching {
    /// The open recipients at this domain; other recipients of the same
    /// messages stay queued.
    #[arg(long)]
    domain: Option<String>,
    /// Every open recipient of the messages from this address or domain.
    #[arg(long)]
    sender: Option<String>,
}

impl Matching {
    /// The query string; `None` when neither is given.
    fn query(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(domain) = &self.domain {
            parts.push(format!("domain={}", url_encode(domain)));
        }
        if let Some(sender) = &self.sender {
            parts.push(format!("sender={}", url_encode(sender)));
        }
        (!parts.is_empty()).then(|| parts.join("&"))
    }
}

#[derive(Subcommand)]
enum DkimAction {
    /// Write a new private key (PEM, mode 0600) and print the TXT record
    /// to publish at SELECTOR._domainkey.DOMAIN.
    Keygen {
        domain: String,
        selector: String,
        /// "rsa-sha256" (made with the openssl command) or "ed25519-sha256".
        #[arg(long, default_value = "rsa-sha256")]
        algorithm: String,
        /// RSA key size: 1024 to 4096 (RFC 8301 wants at least 1024; 2048 is usual).
        #[arg(long, default_value_t = 2048)]
        bits: u32,
        /// Where to write the key (default: DOMAIN.SELECTOR.pem here).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `baton dkim keygen`: Ed25519 keys are made here; RSA keys by the
/// `openssl` command, which every host that runs a mail server has, rather
/// than an RSA implementation of our own.
fn dkim_keygen(
    domain: &str,
    selector: &str,
    algorithm: &str,
    bits: u32,
    out: Option<&Path>,
) -> Result<(), String> {
    use base64::Engine;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let domain = domain.to_ascii_lowercase();
    let path = out.map_or_else(
        || PathBuf::from(format!("{domain}.{selector}.pem")),
        Path::to_path_buf,
    );
    if path.exists() {
        return Err(format!("{} exists; not overwritten", path.display()));
    }
    let (k, public) = match algorithm {
        "ed25519-sha256" => {
            let (der, public) = baton::sign::Ed25519Key::generate()?;
            let body = b64(&der);
            let lines: Vec<&str> = body
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
                .collect();
            let pem = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                lines.join("\n")
            );
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| f.write_all(pem.as_bytes()))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            ("ed25519", b64(&public))
        }
        "rsa-sha256" => {
            if !(1024..=4096).contains(&bits) {
                return Err(format!("--bits {bits}: 1024 to 4096"));
            }
            let made = std::process::Command::new("openssl")
                .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
                .arg(format!("rsa_keygen_bits:{bits}"))
                .arg("-out")
                .arg(&path)
                .output()
                .map_err(|e| format!("cannot run openssl (needed for RSA keys): {e}"))?;
            if !made.status.success() {
                return Err(format!(
                    "openssl genpkey: {}",
                    String::from_utf8_lossy(&made.stderr)
                ));
            }
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let public = std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-outform", "DER", "-in"])
                .arg(&path)
                .output()
                .map_err(|e| format!("cannot run openssl: {e}"))?;
            if !public.status.success() {
                return Err(format!(
                    "openssl pkey: {}",
                    String::from_utf8_lossy(&public.stderr)
                ));
            }
            ("rsa", b64(&public.stdout))
        }
        other => {
            return Err(format!(
                "--algorithm {other:?}: \"rsa-sha256\" or \"ed25519-sha256\""
            ))
        }
    };
    let record = format!("v=DKIM1; k={k}; p={public}");
    // A TXT string holds 255 octets: longer records go in several.
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    println!("wrote {} ({algorithm})", path.display());
    println!("publish this TXT record:");
    println!(
        "{selector}._domainkey.{domain}. IN TXT ( {} )",
        strings.join(" ")
    );
    println!("and add to the configuration:");
    println!("[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nalgorithm = \"{algorithm}\"\nkey = \"{}\"", path.display());
    Ok(())
}

/// `baton suppression`. A scope is `global` (every sender), `domain:<sender domain>`
/// or `user:<AUTH user>`.
#[derive(Subcommand)]
enum SiteAction {
    /// Every site: queued mail, connections and their limit, and any
    /// suspension or throttle with its reason.
    List,
    /// One site and its domains, or one recipient domain and its site.
    Show { site: String },
    /// Open no new connection to a site (by its name) or to one recipient
    /// domain for a while (default 1h).
    Suspend {
        site: String,
        /// How long: "10m", "2h".
        #[arg(long = "for", default_value = "1h")]
        duration: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a site's (or a domain's and its site's) suspension and
    /// throttle: full limits again.
    Resume { site: String },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// The nodes sharing limits through Redis, and this node's leases.
    Status,
}

#[derive(Subcommand)]
enum SuppressionAction {
    /// Put an address on the list.
    Add {
        address: String,
        #[arg(long, default_value = "global")]
        scope: String,
        #[arg(long, default_value = "added by an operator")]
        reason: String,
    },
    /// Take an address off the list: from one scope, or (without --scope) from all.
    Remove {
        address: String,
        #[arg(long)]
        scope: Option<String>,
    },
    /// The scopes an address is listed in, and why.
    Show { address: String },
    /// The list, in address order, page by page.
    List {
        /// Entries per request.
        #[arg(long, default_value_t = 1000)]
        page: usize,
        /// Stop after this many entries. None: all.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Add the rows of a CSV file: address[,scope[,reason[,time_ms[,source]]]].
    Import { file: PathBuf },
    /// Write the list as CSV, to FILE or standard output.
    Export { file: Option<PathBuf> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    if cli.print_man_page {
        return match man_page(&mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            // `| head`: the reader had enough.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("baton: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let result = match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::Run { config } => run(config.as_deref()),
        Command::CheckConfig { file } => check_config(&file),
        Command::Reload { config, admin } => reload_command(config.as_deref(), admin),
        Command::Queue {
            action,
            config,
            admin,
            json,
        } => queue(action, config.as_deref(), admin, json),
        Command::User { action, config } => user(action, config.as_deref()),
        Command::Dkim {
            action:
                DkimAction::Keygen {
                    domain,
                    selector,
                    algorithm,
                    bits,
                    out,
                },
        } => dkim_keygen(&domain, &selector, &algorithm, bits, out.as_deref()),
        Command::Suppression {
            action,
            config,
            admin,
            json,
        } => suppression(action, config.as_deref(), admin, json),
        Command::Site {
            action,
            config,
            admin,
            json,
        } => site(action, config.as_deref(), admin, json),
        Command::Drain {
            to,
            user,
            password_file,
            auth_plaintext,
            no_wait,
            config,
            admin,
        } => drain(
            DrainArgs {
                to,
                user,
                password_file,
                auth_plaintext,
                wait: !no_wait,
            },
            config.as_deref(),
            admin,
        ),
        Command::Cluster {
            action: ClusterAction::Status,
            config,
            admin,
            json,
        } => cluster_status(config.as_deref(), admin, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("baton: {err}");
            ExitCode::FAILURE
        }
    }
}

/// baton(1): the commands and options from the same definitions as
/// `--help` (so the page cannot describe a flag baton does not have), each
/// subcommand's options after, and where the rest is written down.
fn man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let command = Cli::command();
    let man = clap_mangen::Man::new(command.clone()).manual("baton");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    // Each command's own options, as `baton <command> --help` lists them.
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("baton {}", sub.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        let page = clap_mangen::Man::new(sub.clone());
        page.render_description_section(out)?;
        page.render_options_section(out)?;
        if sub.has_subcommands() {
            page.render_subcommands_section(out)?;
        }
    }
    writeln!(
        out,
        ".SH FILES\n/etc/baton/baton.toml, the configuration: every key with its default and a \
         comment is printed by \\fBbaton \\-\\-print\\-default\\-config\\fR.\n.PP\n\
         /var/spool/baton, the spool.\n.SH SEE ALSO\nREADME.md and docs/operating.md of the \
         sources."
    )?;
    man.render_version_section(out)?;
    Ok(())
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
    let (_log, log_filter) = init_logging(&config.log);
    let log_filter = std::sync::Arc::new(log_filter);
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    // SIGHUP is caught from here on: its default action would end the
    // process, and logrotate's `postrotate kill -HUP` must never do that.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| e.to_string())?;
    let running = baton::server::start(config).map_err(|e| e.to_string())?;
    // `baton reload` (POST /reload on the admin API) does what SIGHUP does.
    let weak = std::sync::Arc::downgrade(&running.server);
    let path = config_path.map(Path::to_path_buf);
    let hook_filter = log_filter.clone();
    let _ = running.server.reload_hook.set(Box::new(move || {
        let server = weak.upgrade().ok_or("the server is stopping")?;
        reload(&server, &hook_filter, path.as_deref(), "reload")
    }));
    // Accepting mail: a `Type=notify` unit is started now.
    baton::systemd::notify("READY=1\nSTATUS=accepting mail");
    for signal in signals.forever() {
        if signal == SIGHUP {
            let _ = reload(&running.server, &log_filter, config_path, "SIGHUP");
            continue;
        }
        tracing::info!(
            signal,
            "shutting down: no new connections; finishing sessions"
        );
        break;
    }
    baton::systemd::notify("STOPPING=1\nSTATUS=finishing sessions");
    running.shut_down();
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP and `baton reload`: reads the configuration file again and puts
/// it in force, all of it or nothing (`Server::reload`): routes, shaping,
/// sites, pools, DKIM keys, AUTH users, certificates, suppression
/// settings, `hold`, and here the log filter. What only a restart can
/// change is named and left as it runs. A file that fails to load or check
/// changes nothing. Returns what was done, or why not, for `baton reload`.
fn reload(
    server: &baton::server::Server,
    log_filter: &LogFilter,
    config_path: Option<&Path>,
    by: &str,
) -> Result<String, String> {
    // A rotated event log is opened again whatever becomes of the rest.
    server.events.reopen();
    let Some(path) = config_path else {
        tracing::info!("{by}: running on built-in defaults; nothing to reload");
        return Err("running on built-in defaults: there is no file to reload".into());
    };
    let refused = |why: String| {
        server
            .metrics
            .config_reload_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(generation = server.live().generation, "{by}: {why}");
        why
    };
    let config = Config::load(path)
        .map_err(|err| refused(format!("configuration refused, nothing changed: {err}")))?;
    let reloaded = server.reload(config).map_err(|err| {
        refused(format!(
            "configuration refused, nothing changed: {}: {err}",
            path.display()
        ))
    })?;
    let live = server.live();
    log_filter(&live.config.log);
    let restart = if reloaded.needs_restart.is_empty() {
        String::new()
    } else {
        format!(
            "; changed but kept until a restart: {}",
            reloaded.needs_restart.join(", ")
        )
    };
    tracing::info!(
        generation = reloaded.generation,
        users = reloaded.users,
        dkim_keys = reloaded.dkim_keys,
        certificates = reloaded.certificates,
        needs_restart = %reloaded.needs_restart.join(","),
        "{by}: configuration reloaded"
    );
    Ok(format!(
        "reloaded {} (generation {}): {} AUTH users, {} DKIM keys, {} certificates{restart}",
        path.display(),
        reloaded.generation,
        reloaded.users,
        reloaded.dkim_keys,
        reloaded.certificates,
    ))
}

/// Puts a reloaded `[log]` filter in force.
type LogFilter = Box<dyn Fn(&baton::config::LogConfig) + Send + Sync>;

/// The filter directive for `log`: RUST_LOG, when set, stands in for
/// `[log] level` (at start and at every reload); `per_message = false`
/// holds either way.
fn log_directive(log: &baton::config::LogConfig) -> String {
    let mut level = std::env::var("RUST_LOG")
        .ok()
        .filter(|l| !l.trim().is_empty())
        .unwrap_or_else(|| log.level.clone());
    if !log.per_message {
        level.push_str(&format!(",{}=warn", baton::config::PER_MESSAGE_TARGET));
    }
    level
}

/// Logs go to stderr through a writer thread: a shard formats its line and
/// moves on, and never waits on the write (one line per accepted message is
/// tens of thousands of writes a second). Lines are dropped, and counted,
/// only if the writer falls `LOG_LINES_BUFFERED_MAX` lines behind.
/// The returned [`LogFilter`] replaces the filter on reload.
fn init_logging(
    log: &baton::config::LogConfig,
) -> (tracing_appender::non_blocking::WorkerGuard, LogFilter) {
    const LOG_LINES_BUFFERED_MAX: usize = 256 * 1024;
    const LOG_BUFFER_BYTES: usize = 64 << 10;
    let filter = |log: &baton::config::LogConfig| {
        tracing_subscriber::EnvFilter::try_new(log_directive(log))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level))
    };
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
    let dropped = writer.error_counter();
    baton::metrics::count_log_lines_dropped(Box::new(move || dropped.dropped_lines() as u64));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(log))
        .with_writer(writer)
        .with_target(false)
        .with_timer(LogTime);
    // The handle's type depends on the format: each arm makes its own
    // closure. A failed swap (the subscriber is gone) changes nothing.
    let set_filter: LogFilter = match log.format {
        baton::config::LogFormat::Text => {
            let builder = builder.with_ansi(ansi).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |log| drop(handle.reload(filter(log))))
        }
        baton::config::LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |log| drop(handle.reload(filter(log))))
        }
    };
    (guard, set_filter)
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
    // And the HTTP injection token.
    baton::http::inject::load_token(&config.http)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    // And the event log's place.
    if let Some(path) = &config.log.events {
        baton::delivery::events::check_path(path)
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    // And the CA certificates webhooks check their endpoints with.
    for hook in &config.webhooks {
        if let Some(path) = &hook.tls_ca {
            baton::tls::https_client(Some(path)).map_err(|e| format!("{}: {e}", file.display()))?;
        }
    }
    // And the operator's bounce classification rules.
    if let Some(path) = &config.delivery.classify_rules {
        baton::shaping::classify::Classifier::load(Some(path))?;
    }
    // And the unsubscribe secret, when a file is named (the default one is
    // made at first start).
    if let (Some(_), Some(path)) = (config.unsubscribe.listen, &config.unsubscribe.secret_file) {
        baton::policy::unsubscribe::check_secret(path)?;
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
    let keys =
        baton::sign::Keys::load(&config.dkim, &config.dkim_defaults).map_err(|e| e.to_string())?;
    if !keys.is_empty() {
        println!("{} DKIM keys", keys.len());
    }
    if let Some(path) = &config.auth.users {
        let users = baton::auth::Users::load(path).map_err(|e| e.to_string())?;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions());
            if mode & 0o007 != 0 {
                println!(
                    "warning: {} is readable by every account (mode {:o}); its hashes are what \
                     an offline guessing attack needs: chmod o-rwx",
                    path.display(),
                    mode & 0o777
                );
            }
        }
        println!("{}: {}", path.display(), plural(users.len() as u64, "user"));
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

/// `baton reload`: POST /reload on the server's admin API.
fn reload_command(config: Option<&Path>, admin: Option<SocketAddr>) -> Result<(), String> {
    // The server would refuse a file that does not load or check: say so
    // here, where it is found, and leave the server alone.
    let api = Api::from_config(config, admin).map_err(|err| {
        format!("configuration refused, nothing changed (the running one stays): {err}")
    })?;
    api.act("/reload", false)
}

fn queue(
    action: QueueAction,
    config: Option<&Path>,
    admin: Option<SocketAddr>,
    json: bool,
) -> Result<(), String> {
    let api = Api::from_config(config, admin)?;
    let queue_id = |id: &str| {
        admin::parse_queue_id(id).ok_or_else(|| format!("{id:?} is not a queue id (16 hex digits)"))
    };
    // One message by id, or every message a filter matches.
    let by_id_or_matching =
        |verb: &str, id: Option<String>, matching: Matching| match (id, matching.query()) {
            (Some(id), None) => api.act(&format!("/queue/{}/{verb}", queue_id(&id)?), json),
            (None, Some(query)) => api.act(&format!("/queue/{verb}?{query}"), json),
            _ => Err(format!(
                "queue {verb}: a queue id, or --domain and/or --sender (not both)"
            )),
        };
    match action {
        QueueAction::List { by_site } => {
            let body = api.read("/queue")?;
            if json {
                print!("{body}");
            } else {
                let mut summary: QueueSummary =
                    serde_json::from_str(&body).map_err(|e| e.to_string())?;
                if by_site {
                    summary.destinations = by_site_rows(summary.destinations);
                }
                print_summary(&summary);
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
        QueueAction::Messages {
            domain,
            sender,
            older_than,
            status,
            limit,
            after,
        } => {
            let mut query = vec![format!("limit={limit}")];
            for (key, value) in [
                ("domain", domain),
                ("sender", sender),
                ("older_than", older_than),
                ("status", status),
                ("after", after),
            ] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", url_encode(&value)));
                }
            }
            let body = api.read(&format!("/queue/messages?{}", query.join("&")))?;
            if json {
                print!("{body}");
            } else {
                let page: baton::admin::messages::MessagePage =
                    serde_json::from_str(&body).map_err(|e| e.to_string())?;
                print_messages(&page);
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
        QueueAction::Delete { id, matching } => by_id_or_matching("delete", id, matching)?,
        QueueAction::Bounce { id, matching } => by_id_or_matching("bounce", id, matching)?,
        QueueAction::Hold { domain, duration } => suspend(
            &api,
            domain,
            duration,
            Some("held by the operator (baton queue hold)".into()),
            json,
        )?,
        QueueAction::Release { domain } => resume(&api, domain, json)?,
    }
    Ok(())
}

fn suppression(
    action: SuppressionAction,
    config: Option<&Path>,
    admin: Option<SocketAddr>,
    json: bool,
) -> Result<(), String> {
    use baton::admin::suppression::{percent_encode, AddRequest, Page, RemoveRequest};
    use baton::policy::suppression::Entry;
    let api = Api::from_config(config, admin)?;
    match action {
        SuppressionAction::Add {
            address,
            scope,
            reason,
        } => {
            let request = AddRequest {
                address,
                scope: Some(scope),
                reason: Some(reason),
            };
            api.send(
                "/suppression",
                "application/json",
                to_json(&request).as_bytes(),
                json,
            )
        }
        SuppressionAction::Remove { address, scope } => {
            let request = RemoveRequest { address, scope };
            api.send(
                "/suppression/remove",
                "application/json",
                to_json(&request).as_bytes(),
                json,
            )
        }
        SuppressionAction::Show { address } => {
            let body = api.read(&format!(
                "/suppression?address={}",
                percent_encode(&address)
            ))?;
            if json {
                print!("{body}");
            } else {
                let entries: Vec<Entry> = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                print_entries(&entries);
            }
            Ok(())
        }
        SuppressionAction::List { page, limit } => {
            let mut after: Option<String> = None;
            let mut shown = 0;
            loop {
                let want = limit.map_or(page, |limit| page.min(limit - shown));
                if want == 0 {
                    return Ok(());
                }
                let mut path = format!("/suppression?limit={want}");
                if let Some(after) = &after {
                    path.push_str(&format!("&after={}", percent_encode(after)));
                }
                let body = api.read(&path)?;
                let page: Page = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                if json {
                    for entry in &page.entries {
                        println!("{}", to_json(entry));
                    }
                } else {
                    print_entries(&page.entries);
                }
                shown += page.entries.len();
                match page.next {
                    Some(next) => after = Some(next),
                    None => return Ok(()),
                }
            }
        }
        SuppressionAction::Import { file } => {
            let csv = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            api.send("/suppression/import", "text/csv", &csv, json)
        }
        SuppressionAction::Export { file } => {
            let (status, body) = admin::call(
                api.address,
                "GET",
                "/suppression/export",
                api.token.as_ref(),
                None,
                admin::LONG_REQUEST_TIMEOUT,
            )
            .map_err(|e| api.unreachable(e))?;
            match status {
                200 => {}
                401 => return Err(api.refused()),
                _ => return Err(body.trim().to_string()),
            }
            match file {
                Some(file) => {
                    std::fs::write(&file, body).map_err(|e| format!("{}: {e}", file.display()))
                }
                None => {
                    use std::io::Write as _;
                    std::io::stdout()
                        .write_all(body.as_bytes())
                        .map_err(|e| e.to_string())
                }
            }
        }
    }
}

/// A request or an entry as one line of JSON: plain data, always
/// serialisable.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

fn print_entries(entries: &[baton::policy::suppression::Entry]) {
    for e in entries {
        let time = baton::delivery::events::rfc3339_millis(e.time_ms);
        println!(
            "{:<40} {:<28} {:<24} {:<11} {}",
            e.address, e.scope, time, e.source, e.reason
        );
    }
}

fn user(action: UserAction, config_path: Option<&Path>) -> Result<(), String> {
    let config = load(config_path)?;
    let path = config.auth.users.ok_or_else(|| {
        format!(
            "no users file: [auth] users is empty in {}; set it and pass --config FILE",
            config_path.map_or("the built-in defaults".into(), |p| p.display().to_string())
        )
    })?;
    match action {
        UserAction::Add {
            name,
            sender_domains,
            messages_per_hour,
            recipients_per_message_max,
            dkim_domains,
            unsubscribe,
            pool,
        } => {
            baton::auth::users::check_name(&name).map_err(|e| format!("user name: {e}"))?;
            let dkim_domains: Vec<String> = dkim_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect();
            for domain in &dkim_domains {
                baton::auth::users::check_sender_domain(domain)
                    .map_err(|e| format!("--dkim-domain: {e}"))?;
            }
            let sender_domains: Vec<String> = sender_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect();
            for domain in &sender_domains {
                baton::auth::users::check_sender_domain(domain)
                    .map_err(|e| format!("--sender-domain: {e}"))?;
            }
            // Refused before the password is asked for: a duplicate is
            // checked again, under the lock, when the file is written.
            if path.exists() && Users::load(&path).is_ok_and(|u| u.get(&name).is_some()) {
                return Err(format!(
                    "user {name:?} already exists in {}",
                    path.display()
                ));
            }
            let password = read_password(&name)?;
            let user = User {
                name,
                password: baton::auth::hash_password(&password),
                policy: UserPolicy {
                    sender_domains,
                    messages_per_hour,
                    recipients_per_message_max,
                    dkim_domains,
                    unsubscribe,
                    pool,
                },
            };
            let users = edit::apply(&path, Change::Add(&user))?;
            println!(
                "added {:?} to {} ({}); a running server takes it on SIGHUP",
                user.name,
                path.display(),
                plural(users.len() as u64, "user")
            );
        }
        UserAction::Passwd { name } => {
            let users = Users::load(&path).map_err(|e| e.to_string())?;
            if users.get(&name).is_none() {
                return Err(format!("no user {name:?} in {}", path.display()));
            }
            let hash = baton::auth::hash_password(&read_password(&name)?);
            edit::apply(
                &path,
                Change::Passwd {
                    name: &name,
                    password: &hash,
                },
            )?;
            println!(
                "password of {name:?} changed in {}; a running server takes it on SIGHUP",
                path.display()
            );
        }
        UserAction::Remove { name } => {
            let users = edit::apply(&path, Change::Remove(&name))?;
            println!(
                "removed {name:?} from {} ({} left); a running server takes it on SIGHUP",
                path.display(),
                plural(users.len() as u64, "user")
            );
        }
        UserAction::List => print_users(&Users::load(&path).map_err(|e| e.to_string())?),
    }
    Ok(())
}

/// A new password: twice without echo from the terminal, or one line of
/// standard input (its line ending stripped) when that is not a terminal.
fn read_password(name: &str) -> Result<Vec<u8>, String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let ask = |prompt: String| {
            rpassword::prompt_password(prompt).map_err(|e| format!("cannot read the password: {e}"))
        };
        let first = ask(format!("Password for {name}: "))?;
        if first != ask("Again: ".into())? {
            return Err("the two passwords differ; nothing changed".into());
        }
        first.into_bytes()
    } else {
        let mut line = Vec::new();
        stdin
            .lock()
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        if line.ends_with(b"\n") {
            line.pop();
            if line.ends_with(b"\r") {
                line.pop();
            }
        }
        line
    };
    if password.is_empty() {
        return Err("empty password refused; nothing changed".into());
    }
    // SASL PLAIN separates its fields with NUL: such a password could
    // never be sent.
    if password.contains(&0) {
        return Err("a password with a NUL byte cannot be sent with AUTH PLAIN; refused".into());
    }
    Ok(password)
}

fn print_users(users: &Users) {
    let width = users
        .iter()
        .map(|u| u.name.chars().count())
        .chain([4])
        .max()
        .unwrap_or(4);
    println!(
        "{:<width$}  {:<30}  {:>13}  {:>18}",
        "NAME", "SENDER DOMAINS", "MESSAGES/HOUR", "RECIPIENTS/MESSAGE"
    );
    for user in users.iter() {
        let policy = &user.policy;
        let domains = if policy.sender_domains.is_empty() {
            "any".to_owned()
        } else {
            policy.sender_domains.join(",")
        };
        let per_hour = policy
            .messages_per_hour
            .map_or("no limit".to_owned(), |n| n.to_string());
        let recipients = policy
            .recipients_per_message_max
            .map_or("[limits]".to_owned(), |n| n.to_string());
        println!(
            "{:<width$}  {domains:<30}  {per_hour:>13}  {recipients:>18}",
            user.name
        );
    }
    println!("{}", plural(users.len() as u64, "user"));
}

/// `1 user`, `2 users`.
fn plural(n: u64, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// A running server's admin API, and the token to show it.
struct Api {
    address: SocketAddr,
    token: Option<AdminToken>,
}

impl Api {
    /// The admin address (`--admin`, or the configuration's) and the token
    /// from the configuration, which gives it even when `--admin` gives the
    /// address.
    fn from_config(config: Option<&Path>, admin: Option<SocketAddr>) -> Result<Api, String> {
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
        Ok(Api { address, token })
    }

    fn unreachable(&self, err: std::io::Error) -> String {
        format!("cannot reach the admin API at {}: {err}", self.address)
    }

    /// A 401 said in the operator's terms: where the token comes from.
    fn refused(&self) -> String {
        let address = self.address;
        match &self.token {
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
            admin::get(self.address, path, self.token.as_ref()).map_err(|e| self.unreachable(e))?;
        match status {
            200 => Ok(body),
            401 => Err(self.refused()),
            _ => Err(body.trim().to_string()),
        }
    }

    /// POSTs `body` to `path` and prints the [`AdminReply`], as
    /// [`Api::act`].
    fn send(&self, path: &str, content_type: &str, body: &[u8], json: bool) -> Result<(), String> {
        let (status, answer) = admin::call(
            self.address,
            "POST",
            path,
            self.token.as_ref(),
            Some((content_type, body)),
            admin::LONG_REQUEST_TIMEOUT,
        )
        .map_err(|e| self.unreachable(e))?;
        self.replied(status, &answer, json)
    }

    /// POSTs `path` and prints the [`AdminReply`]; an error when the request
    /// was not carried out.
    fn act(&self, path: &str, json: bool) -> Result<(), String> {
        let (status, body) = admin::post(self.address, path, self.token.as_ref())
            .map_err(|e| self.unreachable(e))?;
        self.replied(status, &body, json)
    }

    /// Prints an [`AdminReply`]; an error when it says the request was not
    /// carried out.
    fn replied(&self, status: u16, body: &str, json: bool) -> Result<(), String> {
        if status == 401 {
            return Err(self.refused());
        }
        let reply: AdminReply = serde_json::from_str(body)
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

/// `baton site`.
fn site(
    action: SiteAction,
    config: Option<&Path>,
    admin: Option<SocketAddr>,
    json: bool,
) -> Result<(), String> {
    use baton::queue::SiteSummary;
    let api = Api::from_config(config, admin)?;
    let sites = |api: &Api| -> Result<(String, Vec<SiteSummary>), String> {
        let body = api.read("/sites")?;
        let sites = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok((body, sites))
    };
    match action {
        SiteAction::List => {
            let (body, sites) = sites(&api)?;
            if json {
                print!("{body}");
            } else {
                print_sites(&sites);
            }
            Ok(())
        }
        SiteAction::Show { site } => {
            let name = site.to_ascii_lowercase();
            let (_, sites) = sites(&api)?;
            let queue: QueueSummary =
                serde_json::from_str(&api.read("/queue")?).map_err(|e| e.to_string())?;
            let site_of = |d: &baton::queue::DestinationSummary| {
                d.site.clone().unwrap_or_else(|| d.destination.clone())
            };
            // A domain names its site.
            let domain = queue.destinations.iter().find(|d| d.destination == name);
            let site_name = domain.map(site_of).unwrap_or(name.clone());
            let Some(found) = sites.into_iter().find(|s| s.site == site_name) else {
                return Err(format!(
                    "no site or domain {name} (nothing queued, open or suspended)"
                ));
            };
            let members: Vec<_> = queue
                .destinations
                .iter()
                .filter(|d| site_of(d) == site_name)
                .cloned()
                .collect();
            if json {
                let both = serde_json::json!({ "site": found, "domains": members });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&both).map_err(|e| e.to_string())?
                );
            } else {
                print_sites(&[found]);
                println!();
                print_domains(&members);
            }
            Ok(())
        }
        SiteAction::Suspend {
            site,
            duration,
            reason,
        } => suspend(&api, site, duration, reason, json),
        SiteAction::Resume { site } => resume(&api, site, json),
    }
}

/// `POST /sites/suspend`: a site, or one domain (`baton queue hold`).
fn suspend(
    api: &Api,
    site: String,
    duration: String,
    reason: Option<String>,
    json: bool,
) -> Result<(), String> {
    let request = baton::admin::sites::SuspendRequest {
        site,
        duration: Some(duration),
        reason,
    };
    let body = to_json(&request);
    api.send("/sites/suspend", "application/json", body.as_bytes(), json)
}

/// `POST /sites/resume`: a site, or a domain and its site.
fn resume(api: &Api, site: String, json: bool) -> Result<(), String> {
    let body = to_json(&baton::admin::sites::ResumeRequest { site });
    api.send("/sites/resume", "application/json", body.as_bytes(), json)
}

/// A suspension's, pause's or throttle's state in words.
fn shaping_state(
    paused_until_ms: u64,
    suspended: Option<&str>,
    throttle: Option<&baton::queue::Throttle>,
) -> Vec<String> {
    let now = baton::server::unix_ms();
    let mut state = Vec::new();
    if let (Some(reason), true) = (suspended, paused_until_ms > now) {
        state.push(format!(
            "suspended {}s more: {reason}",
            (paused_until_ms - now) / 1000
        ));
    } else if paused_until_ms > now {
        state.push(format!("paused {}s more", (paused_until_ms - now) / 1000));
    }
    if let Some(t) = throttle.filter(|t| t.until_ms > now) {
        let mut caps = Vec::new();
        if let Some(n) = t.connections_max {
            caps.push(format!("{n} connections"));
        }
        if let Some(r) = t.message_rate_max {
            caps.push(format!("{r} msg/s"));
        }
        state.push(format!(
            "throttled to {} for {}s: {}",
            caps.join(", "),
            (t.until_ms - now) / 1000,
            t.reason
        ));
    }
    if state.is_empty() {
        state.push("ok".into());
    }
    state
}

/// `baton drain`'s options.
struct DrainArgs {
    to: String,
    user: Option<String>,
    password_file: Option<PathBuf>,
    auth_plaintext: bool,
    wait: bool,
}

/// How often `baton drain` looks at what is left.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// `baton drain`.
fn drain(args: DrainArgs, config: Option<&Path>, admin: Option<SocketAddr>) -> Result<(), String> {
    let api = Api::from_config(config, admin)?;
    let password = match &args.password_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(text.strip_suffix('\n').unwrap_or(&text).to_owned())
        }
        None => None,
    };
    let body = serde_json::json!({
        "to": args.to,
        "user": args.user,
        "password": password,
        "auth_plaintext": args.auth_plaintext,
    })
    .to_string();
    api.send("/drain", "application/json", body.as_bytes(), false)?;
    if !args.wait {
        return Ok(());
    }
    let mut last = u64::MAX;
    loop {
        let queue: QueueSummary =
            serde_json::from_str(&api.read("/queue")?).map_err(|e| e.to_string())?;
        if queue.recipients == 0 {
            println!("drained: the queue is empty; the node can be stopped");
            return Ok(());
        }
        if queue.recipients != last {
            println!(
                "{} recipients of {} messages left",
                queue.recipients, queue.messages
            );
            last = queue.recipients;
        }
        std::thread::sleep(DRAIN_POLL);
    }
}

/// `baton cluster status`.
fn cluster_status(
    config: Option<&Path>,
    admin: Option<SocketAddr>,
    json: bool,
) -> Result<(), String> {
    let api = Api::from_config(config, admin)?;
    let body = api.read("/cluster")?;
    if json {
        print!("{body}");
        return Ok(());
    }
    let status: baton::cluster::Status = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    println!(
        "node {} on {}: {}",
        status.node,
        status.redis,
        if status.connected {
            let nodes = if status.live_nodes == 1 {
                "node"
            } else {
                "nodes"
            };
            format!("limits shared by {} live {nodes}", status.live_nodes)
        } else {
            format!(
                "Redis out of reach, this node keeps to 1/{} of each limit ({})",
                status.live_nodes,
                status.last_error.as_deref().unwrap_or("not yet connected")
            )
        }
    );
    println!();
    println!(
        "{:<24} {:>10} {:<12} {:>7}  LIMITS",
        "NODE", "HEARTBEAT", "VERSION", "LEASES"
    );
    for n in &status.nodes {
        println!(
            "{:<24} {:>8}ms {:<12} {:>7}  {}",
            n.name,
            n.heartbeat_ms_ago,
            n.version,
            n.leases,
            if n.shared { "shared" } else { "own share" }
        );
    }
    if !status.leases.is_empty() {
        println!();
        println!("{:<32} {:<24} {:>7}", "SITE", "SOURCE", "LEASES");
        for l in &status.leases {
            let source = if l.source.is_empty() { "-" } else { &l.source };
            println!("{:<32} {:<24} {:>7}", l.site, source, l.leases);
        }
    }
    Ok(())
}

fn print_sites(sites: &[baton::queue::SiteSummary]) {
    println!(
        "{:<32} {:>7} {:>7} {:>9} {:>11} {:>7}  STATE",
        "SITE", "DOMAINS", "READY", "SCHEDULED", "CONNECTIONS", "WAITING"
    );
    for s in sites {
        let state = shaping_state(
            s.paused_until_ms,
            s.suspended.as_deref(),
            s.throttle.as_ref(),
        );
        println!(
            "{:<32} {:>7} {:>7} {:>9} {:>5} of {:<3} {:>7}  {}",
            s.site,
            s.domains,
            s.ready,
            s.scheduled,
            s.connections,
            s.connections_limit,
            s.waiting,
            state.join("; ")
        );
        // Per source, when its connections leave from a pool.
        for lane in &s.sources {
            let state = shaping_state(
                lane.paused_until_ms,
                lane.suspended.as_deref(),
                lane.throttle.as_ref(),
            );
            println!(
                "  from {:<44} {:>5} of {:<3} {:>7}  {}",
                lane.source,
                lane.connections,
                lane.connections_limit,
                "",
                state.join("; ")
            );
        }
    }
}

fn print_domains(domains: &[baton::queue::DestinationSummary]) {
    println!(
        "{:<32} {:>7} {:>9} {:>11}  STATE",
        "DOMAIN", "READY", "SCHEDULED", "CONNECTIONS"
    );
    for d in domains {
        let mut state = shaping_state(
            d.paused_until_ms,
            d.suspended.as_deref(),
            d.throttle.as_ref(),
        );
        if let Some(site) = &d.site {
            state.push(format!("site {site}"));
        }
        println!(
            "{:<32} {:>7} {:>9} {:>5} of {:<3}  {}",
            d.destination,
            d.ready,
            d.scheduled,
            d.connections,
            d.connections_limit,
            state.join("; ")
        );
    }
}

/// The rows of a queue summary added up per site (a destination without
/// a site is a row of its own), named by the site.
fn by_site_rows(
    rows: Vec<baton::queue::DestinationSummary>,
) -> Vec<baton::queue::DestinationSummary> {
    let mut sites: std::collections::BTreeMap<String, baton::queue::DestinationSummary> =
        std::collections::BTreeMap::new();
    for row in rows {
        let key = row.site.clone().unwrap_or_else(|| row.destination.clone());
        match sites.get_mut(&key) {
            Some(site) => {
                site.ready += row.ready;
                site.scheduled += row.scheduled;
                site.connections += row.connections;
            }
            None => {
                let mut site = row;
                site.destination = key.clone();
                sites.insert(key, site);
            }
        }
    }
    sites.into_values().collect()
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
    println!(
        "{}, {} queued",
        plural(summary.messages, "message"),
        plural(summary.recipients, "recipient")
    );
}

/// Percent-encodes a query value (all but unreserved characters).
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `2026-12-06 16:02:11` in local time (UTC, marked `Z`, when the local
/// offset cannot be known), and how long ago or ahead: `3 h ago`, `in 42 s`.
fn when(unix_ms: u64) -> String {
    let now = baton::server::unix_ms();
    let relative = if unix_ms <= now {
        format!("{} ago", span((now - unix_ms) / 1000))
    } else {
        format!("in {}", span((unix_ms - now).div_ceil(1000)))
    };
    let utc = time::OffsetDateTime::from_unix_timestamp((unix_ms / 1000) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let clock = match time::UtcOffset::current_local_offset() {
        Ok(offset) if !offset.is_utc() => {
            let local = utc.to_offset(offset);
            let format =
                time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
            local.format(&format).unwrap_or_default()
        }
        _ => {
            let format =
                time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
            utc.format(&format).unwrap_or_default()
        }
    };
    format!("{clock} ({relative})")
}

/// `42 s`, `5 min`, `3 h`, `2 d`.
fn span(seconds: u64) -> String {
    match seconds {
        0..120 => format!("{seconds} s"),
        120..7200 => format!("{} min", seconds / 60),
        7200..172_800 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    }
}

fn print_messages(page: &baton::admin::messages::MessagePage) {
    if page.messages.is_empty() {
        println!("no message matches");
        return;
    }
    for m in &page.messages {
        let sender = if m.sender.is_empty() {
            "<>".to_owned()
        } else {
            m.sender.clone()
        };
        println!(
            "{}  {:>9} B  {}  from {sender}",
            m.queue_id,
            m.size,
            when(m.arrival_ms)
        );
        for r in &m.recipients {
            match (r.next_attempt_ms, r.attempts) {
                (Some(next), Some(attempts)) => println!(
                    "    {:<40} {} after {attempts} attempts, next {}",
                    r.address,
                    r.status,
                    when(next)
                ),
                _ => println!("    {:<40} {}", r.address, r.status),
            }
        }
    }
    if let Some(next) = &page.next {
        println!("more: --after {next}");
    }
}

fn print_message(m: &MessageReport) {
    println!("queue id:  {}", m.queue_id);
    println!("arrival:   {}", when(m.arrival_ms));
    if m.mail_params.is_empty() {
        println!("sender:    <{}>", m.sender);
    } else {
        println!("sender:    <{}> {}", m.sender, m.mail_params);
    }
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
                when(next)
            ),
            None => println!("  <{}> {}", r.address, r.status),
        }
        if let Some(reply) = &r.last_reply {
            match &r.category {
                Some(category) => println!("      {reply}  [{category}]"),
                None => println!("      {reply}"),
            }
        }
    }
}
