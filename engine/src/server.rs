//! The running server: what every shard shares, and how it starts and stops.

use crate::auth::users::Users;
use crate::auth::verify::Verifier;
use crate::config::ListenerAuth;
use crate::inbound::AuthSettings;
use crate::sign::{Keys, Signing};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use std::thread;
use std::time::Duration;

use baton_spool::{BlockingWriter, QueueId, Spool, SpoolConfig};

use crate::cluster::{Cluster, Outgoing};
use crate::config::{
    BareLineEndingsSetting, Config, ListenerConfig, ListenerTls, RouteConfig, Secret,
};
use crate::delivery::events::{Event as LogEvent, EventKind, EventLog};
use crate::delivery::retry::{DeliverySettings, Timeouts};
use crate::delivery::webhook::Webhooks;
use crate::dns::{Resolver, ResolverConfig};
use crate::error::{Error, Result};
use crate::inbound::{BareLineEndings, DataBudget, SessionConfig, SessionLimits};
use crate::outbound::{ClientConfig, ClientLimits, Credentials};
use crate::policy::suppression::{Entry, Origin, SuppressionList};
use crate::policy::unsubscribe::Unsubscribe;
use crate::queue::{QueuedRecipient, Queues, Shaping, SiteOf};
use crate::route::sites::SiteTable;
use crate::route::{destination_of, Destination, NextHop, Route, Routes};
use crate::shaping::classify::Classifier;
use crate::shaping::egress::{Egress, SenderPools};
use crate::shaping::ShapingRules;
use crate::shard::{self, ShardHandle, ShardLink};
use crate::tls::mta_sts::{MtaSts, MtaStsConfig};
use crate::tls::{ClientTls, ServerTls};

/// MTA-STS policies kept across restarts, in the spool directory.
const MTA_STS_CACHE_FILE: &str = "mta-sts-cache.json";

/// Counters, exported by the admin API.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub recipients_accepted: AtomicU64,
    pub bytes_accepted: AtomicU64,
    pub store_failures: AtomicU64,
    /// SMTP AUTH exchanges that succeeded, and that failed (wrong
    /// credentials, throttled, cut off).
    pub auth_successes: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Recipients refused or dropped at `RCPT` as suppressed.
    pub recipients_suppressed: AtomicU64,
    /// One-click unsubscribes honoured.
    pub unsubscribes: AtomicU64,
    /// Deferred and failed recipients by category
    /// (`crate::shaping::classify::Category::ALL`'s order).
    pub recipients_by_category: [AtomicU64; 12],
    pub connections_opened: AtomicU64,
    pub connections_failed: AtomicU64,
    pub recipients_delivered: AtomicU64,
    pub recipients_deferred: AtomicU64,
    pub recipients_failed: AtomicU64,
    pub bounces_generated: AtomicU64,
    /// Inbound TLS handshakes completed, and failed (or timed out).
    pub tls_handshakes_in: AtomicU64,
    pub tls_handshake_failures_in: AtomicU64,
    /// Delivery connections that completed a TLS handshake, and those
    /// whose handshake failed.
    pub tls_handshakes_out: AtomicU64,
    pub tls_handshake_failures_out: AtomicU64,
    /// Reloads refused (the file did not load or check, or a key, users
    /// or certificate file did not load).
    pub config_reload_failures: AtomicU64,
    /// MX or address lookups that failed for now (SERVFAIL, timeout).
    pub dns_failures: AtomicU64,
    pub histograms: Histograms,
    pub outcomes: Outcomes,
}

/// Recipients' outcomes per site and per domain.
#[derive(Debug)]
pub struct Outcomes {
    pub by_site: crate::metrics::OutcomeCounters,
    pub by_domain: crate::metrics::OutcomeCounters,
}

impl Default for Outcomes {
    fn default() -> Outcomes {
        use crate::metrics::OutcomeCounters;
        Outcomes {
            by_site: OutcomeCounters::new("baton_site_recipients_total", "site"),
            by_domain: OutcomeCounters::new("baton_domain_recipients_total", "domain"),
        }
    }
}

/// Delivery times.
#[derive(Debug)]
pub struct Histograms {
    /// A delivery transaction, MAIL FROM to its deciding reply.
    pub latency: crate::metrics::Histogram,
    /// A delivered recipient's time in the queue.
    pub queue_time: crate::metrics::Histogram,
}

impl Default for Histograms {
    fn default() -> Histograms {
        Histograms {
            latency: crate::metrics::Histogram::new(crate::metrics::LATENCY_BOUNDS_MS),
            queue_time: crate::metrics::Histogram::new(crate::metrics::QUEUE_TIME_BOUNDS_MS),
        }
    }
}

/// What all shards share.
pub struct Server {
    pub config: Config,
    /// One per `[[listener]]`, in order: what its sessions offer.
    pub session_configs: Vec<Arc<SessionConfig>>,
    /// Message data all sessions hold, shared by every listener's sessions.
    pub data_budget: Arc<DataBudget>,
    /// The listeners' TLS, `auto` resolved, in order.
    pub listener_tls: Vec<ListenerTls>,
    /// The server's certificates; `None` without `[tls] certificate`.
    pub server_tls: Option<ServerTls>,
    /// Delivery connections' TLS configurations.
    pub client_tls: ClientTls,
    /// The MTA-STS policy thread.
    pub mta_sts: MtaSts,
    /// Next-hop addresses whose opportunistic TLS handshake failed, until
    /// when (unix ms) they get plain text.
    broken_tls: Mutex<HashMap<SocketAddr, u64>>,
    pub spool: Spool,
    pub queues: Queues,
    /// What a reload replaces; see [`Server::live`].
    live: ArcSwap<Live>,
    pub resolver: Resolver,
    /// Shared with the suppression list's writer, which logs its changes.
    pub events: Arc<EventLog>,
    /// The threads posting the event log to `[[webhook]]`s.
    pub webhooks: Webhooks,
    /// The suppression list; `None` with `suppression.enabled = false`.
    pub suppression: Option<SuppressionList>,
    /// The cluster thread's handle; `None` without `[cluster] redis`.
    pub cluster: Option<Arc<Cluster>>,
    /// One-click unsubscribe links; `None` without `[unsubscribe] listen`.
    pub unsubscribe: Option<Unsubscribe>,
    /// Every shard's inbox, by shard id.
    pub links: Vec<ShardLink>,
    pub shutting_down: AtomicBool,
    /// Every queue id issued is above this (the spool's highest at start).
    pub queue_id_floor: QueueId,
    pub metrics: Metrics,
    connections_per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// SMTP AUTH: the users and the verification threads; `None` without
    /// `[auth] users`.
    pub verifier: Option<Verifier>,
    /// DKIM keys and the threads that sign.
    pub signing: Signing,
    /// What `POST /reload` runs (SIGHUP's reload); set by whoever started
    /// the server and knows its configuration file.
    pub reload_hook: std::sync::OnceLock<ReloadHook>,
    /// Held through a reload: SIGHUP and `POST /reload` take turns.
    reloading: Mutex<()>,
    /// Where `baton drain` sends the queue; `None` unless draining.
    draining: Mutex<Option<RouteConfig>>,
}

/// `baton drain`: where this node's queue goes, and as whom.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrainTarget {
    /// The other node's SMTP listener, `host:port`.
    pub to: String,
    /// SMTP AUTH to it (an authenticated relay), with `password`.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Send the credentials without STARTTLS too (a private network).
    #[serde(default)]
    pub auth_plaintext: bool,
}

/// What a reload (SIGHUP, `baton reload`) replaces, built whole from one
/// validated configuration and swapped in at once: a shard loads it where
/// it uses it (an `arc-swap` load, a few atomic operations, no lock), so a
/// delivery in flight finishes on the snapshot it started with.
pub struct Live {
    /// 1 at start, one more for each reload that took effect.
    pub generation: u64,
    /// The configuration in force: the file as last reloaded, but with what
    /// only a restart can change (`Config::live_part`) as at start.
    pub config: Config,
    pub routes: Routes,
    /// Site names and limits by host (MX rollup, `[[site]]`).
    pub sites: Arc<SiteTable>,
    pub delivery: DeliverySettings,
    pub client_config: Arc<ClientConfig>,
    /// Bounce classification: shipped rules and the operator's.
    pub classifier: Classifier,
    /// What to do when a receiver says "slow down".
    pub shaping_rules: ShapingRules,
    /// Local addresses and pools delivery leaves from.
    pub egress: Egress,
    /// `[[sender_pool]]`: pools by MAIL FROM domain.
    pub sender_pools: SenderPools,
}

impl Live {
    /// Builds everything from `config` (validated); `Err` names what could
    /// not be loaded (the classification rules file).
    fn build(config: Config, generation: u64) -> Result<Live> {
        let sites = SiteTable::new(&config.sites, config.shaping.connections_max)
            .map_err(|(key, why)| Error::Shaping(format!("{key}: {why}")))?;
        let classifier = Classifier::load(config.delivery.classify_rules.as_deref())
            .map_err(|err| Error::Shaping(err.to_string()))?;
        let shaping_rules = ShapingRules::new(&config.shaping_rules)
            .map_err(|(name, why)| Error::Shaping(format!("{name}: {why}")))?;
        let client_config = client_config(&config);
        let warmup_file = config.spool.path.join(crate::shaping::egress::WARMUP_FILE);
        Ok(Live {
            generation,
            routes: routes(&config),
            sites: Arc::new(sites),
            delivery: delivery_settings(&config),
            classifier,
            shaping_rules,
            egress: Egress::new(&config, &client_config, Some(&warmup_file)),
            client_config: Arc::new(client_config),
            sender_pools: SenderPools::new(&config),
            config,
        })
    }

    /// How the queue groups and shapes destinations under this snapshot.
    fn queue_policy(&self) -> crate::queue::Policy {
        let named = self.sites.clone();
        crate::queue::Policy {
            shaping_for: shaping_for(&self.config),
            site_for: route_sites(&self.config, self.sites.clone()),
            site_named: Box::new(move |name| named.named(name)),
            lanes_for: route_lanes(&self.config),
            site_default: self.sites.default_shaping(),
        }
    }
}

/// What [`Server::reload`] put in force.
#[derive(Debug)]
pub struct Reloaded {
    pub generation: u64,
    pub users: usize,
    pub dkim_keys: usize,
    pub certificates: usize,
    /// Keys that changed in the file but take effect only at a restart.
    pub needs_restart: Vec<&'static str>,
}

/// See [`Server::reload_hook`]: what was reloaded, or why not.
pub type ReloadHook = Box<dyn Fn() -> std::result::Result<String, String> + Send + Sync>;

impl Server {
    /// The configuration in force and what is built from it, as of now.
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// Remembers that `addr`'s TLS handshake failed: opportunistic
    /// delivery to it goes in plain text for `delivery.remember_broken_tls`.
    pub fn tls_broken(&self, addr: SocketAddr, now_ms: u64) {
        let remember = self.live().config.delivery.remember_broken_tls;
        let until = now_ms + remember.as_millis() as u64;
        let mut broken = self.broken_tls.lock().expect("broken-tls lock");
        // Bounded by the hosts baton delivers to; expired entries go here.
        broken.retain(|_, until| *until > now_ms);
        broken.insert(addr, until);
    }

    /// Whether `addr`'s TLS is remembered as broken.
    pub fn is_tls_broken(&self, addr: SocketAddr, now_ms: u64) -> bool {
        let broken = self.broken_tls.lock().expect("broken-tls lock");
        broken.get(&addr).is_some_and(|until| *until > now_ms)
    }

    /// Puts `new` in force, all of it or nothing (SIGHUP, `baton reload`):
    /// everything is loaded and built first, and only when all of it
    /// loads is it swapped in. What only a restart can change stays as it
    /// is and is named in the answer.
    pub fn reload(&self, new: Config) -> Result<Reloaded> {
        let _one_at_a_time = self.reloading.lock().expect("reload lock");
        let current = self.live();
        let (mut config, mut needs_restart) = current.config.live_part(new);
        // A drain outlives a reload: its route stays the only one.
        if let Some(route) = self.draining.lock().expect("drain lock").clone() {
            config.routes = vec![route];
            config.delivery.hold = false;
        }
        if self.server_tls.is_none() && config.tls.certificate.is_some() {
            // TLS was off at start: the listeners were set up without it.
            needs_restart.push("tls.certificate");
            config.tls = current.config.tls.clone();
        }
        let users = match (&self.verifier, &config.auth.users) {
            (Some(_), Some(path)) => {
                Some(Users::load(path).map_err(|err| Error::Auth(err.to_string()))?)
            }
            _ => None,
        };
        let keys = Keys::load(&config.dkim, &config.dkim_defaults)
            .map_err(|err| Error::Dkim(err.to_string()))?;
        let certificates = match &self.server_tls {
            Some(_) => Some(ServerTls::load_for_reload(&config.tls)?),
            None => None,
        };
        // The new snapshot reads the warm-up counters from the file.
        current.egress.save_warmup();
        let live = Live::build(config, current.generation + 1)?;

        // Everything loaded: from here on nothing fails.
        let reloaded = Reloaded {
            generation: live.generation,
            users: users.as_ref().map_or(0, Users::len),
            dkim_keys: keys.len(),
            certificates: certificates.as_ref().map_or(0, |(_, list)| list.len()),
            needs_restart,
        };
        if let (Some(verifier), Some(users)) = (&self.verifier, users) {
            verifier.replace_users(users);
        }
        self.signing.replace_keys(keys);
        if let (Some(tls), Some((certificates, _))) = (&self.server_tls, certificates) {
            tls.install(certificates);
        }
        self.queues.reconfigure(live.queue_policy(), unix_ms());
        self.live.store(Arc::new(live));
        Ok(reloaded)
    }

    /// Whether `baton drain` is under way: no mail is taken.
    pub fn is_draining(&self) -> bool {
        self.draining.lock().expect("drain lock").is_some()
    }

    /// `baton drain`: takes no more mail and sends every queued recipient
    /// to `target` over SMTP, as a route for every domain would (so each is
    /// recorded delivered only after the other node's `250`, and retried
    /// as usual when it defers). Scheduled recipients are due at once.
    /// Lasts until the process stops; a reload keeps it.
    pub fn drain(&self, target: &DrainTarget) -> Result<usize> {
        let next_hop = crate::config::parse_next_hop(&target.to)
            .map_err(|err| Error::Drain(format!("--to {}: {err}", target.to)))?;
        let route = RouteConfig {
            domain: "*".into(),
            next_hop,
            tls: None,
            auth_user: target.user.clone(),
            auth_password: target.password.clone().map(Secret::new),
            auth_password_file: None,
            auth_plaintext: target.auth_plaintext,
            pool: None,
        };
        let _one_at_a_time = self.reloading.lock().expect("reload lock");
        let current = self.live();
        let mut config = current.config.clone();
        config.routes = vec![route.clone()];
        config.delivery.hold = false;
        let live = Live::build(config, current.generation + 1)?;
        *self.draining.lock().expect("drain lock") = Some(route);
        let now = unix_ms();
        self.queues.reconfigure(live.queue_policy(), now);
        self.live.store(Arc::new(live));
        let flushed = self.queues.flush(None, now);
        tracing::warn!(to = %target.to, flushed, "draining: no mail is taken; the queue goes to another node");
        Ok(flushed)
    }

    /// Counts a connection from `ip`; `false` if that is one too many.
    pub fn count_connection(&self, ip: IpAddr) -> bool {
        let mut counts = self.connections_per_ip.lock().expect("per-ip lock");
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.config.limits.connections_per_ip_max {
            return false;
        }
        *count += 1;
        true
    }

    pub fn release_connection(&self, ip: IpAddr) {
        let mut counts = self.connections_per_ip.lock().expect("per-ip lock");
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// A started server: shards running, admin listening.
pub struct Running {
    pub server: Arc<Server>,
    shards: Vec<ShardHandle>,
    housekeeper: Option<thread::JoinHandle<()>>,
    cluster: Option<thread::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets sessions finish or ends them with 421, waits
    /// for the last datasync, and returns.
    pub fn shut_down(self) {
        self.server.shutting_down.store(true, Ordering::Release);
        for shard in &self.shards {
            shard.wake();
        }
        for shard in self.shards {
            shard.join();
        }
        // The last outcomes into the file before the webhooks stop (and
        // before the process exits without dropping the log).
        self.server.events.flush();
        self.server.webhooks.stop();
        if let Some(housekeeper) = self.housekeeper {
            let _ = housekeeper.join();
        }
        // Last: its leases go back once no connection is left.
        if let Some(cluster) = self.cluster {
            let _ = cluster.join();
        }
    }
}

/// How often segments whose recipients are all final are reclaimed.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(1);
/// Segments compacted per pass (old, mostly-final segments whose
/// stragglers are copied forward, and segments kept only by pinned
/// outcomes): bounds the time one pass takes.
const COMPACT_SEGMENTS_MAX: usize = 4;

/// Reclaims and compacts the spool off the shards' hot path: both block on
/// file deletion and directory syncs.
fn start_housekeeper(server: Arc<Server>) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("spool-housekeeper".into())
        .spawn(move || {
            // Created on first use: a writer takes a segment of its own.
            let mut compactor: Option<BlockingWriter> = None;
            while !server.shutting_down.load(Ordering::Acquire) {
                sleep_unless_stopping(&server, RECLAIM_INTERVAL);
                server.live().egress.save_warmup();
                match server.spool.reclaim() {
                    Ok(report) if report.segments_deleted + report.segments_recycled > 0 => {
                        tracing::debug!(
                            deleted = report.segments_deleted,
                            recycled = report.segments_recycled,
                            bytes = report.bytes_freed,
                            "spool reclaimed"
                        );
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(%err, "spool reclamation failed"),
                }
                if server.spool.compaction_candidates().is_empty() {
                    continue;
                }
                if compactor.is_none() {
                    let id = server.config.shard_count() as u16;
                    match server.spool.writer(id) {
                        Ok(writer) => compactor = Some(BlockingWriter::new(writer)),
                        Err(err) => tracing::warn!(%err, "spool: no writer for compaction"),
                    }
                }
                if let Some(writer) = compactor.as_mut() {
                    match server.spool.compact(writer, COMPACT_SEGMENTS_MAX) {
                        Ok(report) if report.segments > 0 => tracing::info!(
                            segments = report.segments,
                            messages = report.messages_copied,
                            bytes = report.bytes_copied,
                            "spool compacted"
                        ),
                        Ok(_) => {}
                        Err(err) => {
                            tracing::warn!(%err, "spool compaction failed");
                            // A writer stops at its first failed write or
                            // datasync (a full disk): the next pass takes
                            // a new one, or compaction, which frees the
                            // disk, would never run again.
                            compactor = None;
                        }
                    }
                }
            }
        })
}

fn sleep_unless_stopping(server: &Server, total: Duration) {
    let started = Instant::now();
    while started.elapsed() < total && !server.shutting_down.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(50));
    }
}

/// Descriptors kept for what is not an inbound connection: rings, eventfds,
/// spool segments, resolver and policy sockets, delivery connections.
pub const DESCRIPTORS_RESERVE: u64 = 1024;

/// Descriptors the inbound connection limits can take at once, with
/// [`DESCRIPTORS_RESERVE`].
pub fn descriptors_wanted(config: &Config) -> u64 {
    let shards = config.shard_count() as u64;
    let per_shard = config.limits.connections_per_shard_max as u64 + config.listeners.len() as u64;
    shards * per_shard + DESCRIPTORS_RESERVE
}

/// Raises the descriptor limit to its hard limit and says whether the
/// connection limits fit in it: a shard whose accepts fail for want of
/// descriptors backs off, but clients are refused.
pub fn check_descriptors(config: &Config) -> (u64, u64) {
    let limit = shard::raise_descriptor_limit().unwrap_or(0);
    (limit, descriptors_wanted(config))
}

/// Opens the spool (recovering the queue) and starts the shards.
pub fn start(config: Config) -> Result<Running> {
    let started = Instant::now();
    // Before the spool's recovery: a bad token file fails the start at once.
    let admin_token = crate::admin::load_token(&config.admin).map_err(Error::AdminToken)?;
    if let Some(warning) = config
        .admin
        .token_file
        .as_deref()
        .and_then(crate::admin::permission_warning)
    {
        tracing::warn!("{warning}");
    }
    let (limit, wanted) = check_descriptors(&config);
    if limit < wanted {
        tracing::warn!(
            limit,
            wanted,
            "open descriptors: the hard limit is below what limits.connections_per_shard_max \
             allows across the shards (plus a reserve); raise LimitNOFILE or lower the limit"
        );
    } else {
        tracing::debug!(limit, wanted, "open descriptors");
    }
    let mut spool_config = SpoolConfig::new(&config.spool.path);
    spool_config.segment_bytes = config.spool.segment_bytes;
    spool_config.sync = config.spool.sync;
    spool_config.size_bytes_max = config.spool.size_bytes_max;
    spool_config.free_bytes_min = config.spool.free_bytes_min;
    spool_config.reserve_segments = config.spool.reserve_segments;
    // Each shard's writer takes a segment at start and one after; with
    // less, a start on a full disk cannot open every writer, and a margin
    // smaller than a segment per writer lets the disk fill before it acts.
    let writers = config.shard_count() as u64 + 1;
    if (config.spool.reserve_segments as u64) < writers {
        tracing::warn!(
            reserve_segments = config.spool.reserve_segments,
            shards = writers - 1,
            "spool.reserve_segments is below shards + 1: a start on a full disk may fail"
        );
    }
    if config.spool.free_bytes_min != 0
        && config.spool.free_bytes_min < writers * config.spool.segment_bytes
    {
        tracing::warn!(
            free_bytes_min = config.spool.free_bytes_min,
            "spool.free_bytes_min is below (shards + 1) segments: the disk can fill before new mail is held back"
        );
    }
    if config.spool.sync == baton_spool::SyncMode::None {
        tracing::warn!("spool sync = \"none\": acknowledged mail is LOST on power failure; for benchmarks only");
    }
    let verifier = match &config.auth.users {
        Some(path) => {
            let users = Users::load(path).map_err(|err| Error::Auth(err.to_string()))?;
            tracing::info!(users = users.len(), file = %path.display(), "SMTP AUTH users loaded");
            for user in users.iter() {
                if let Some(pool) = &user.policy.pool {
                    if !config.pools.iter().any(|p| p.name == *pool) {
                        tracing::warn!(user = %user.name, %pool, "users file: no [[pool]] has this name; the user's mail leaves from the route's or the default pool");
                    }
                }
            }
            Some(Verifier::start(users, &config.auth))
        }
        None => None,
    };
    let (spool, recovered) = Spool::open(spool_config).map_err(Error::Spool)?;
    let live = Live::build(config.clone(), 1)?;
    let queues = Queues::with_policy(live.queue_policy());
    for pending in &recovered.pending {
        let record = spool.read(pending.message).map_err(Error::Spool)?;
        let message = record.message().map_err(Error::Spool)?;
        let Some(rcpt) = message.recipients().nth(pending.recipient as usize) else {
            continue;
        };
        let item = QueuedRecipient {
            queue_id: pending.queue_id,
            recipient: pending.recipient,
            attempts: 0,
        };
        let pool = sender_pool(
            &live.sender_pools,
            verifier.as_ref(),
            message.identity,
            message.reverse_path,
        );
        let destination = destination_of(rcpt.address).with_pool(pool);
        queues.restore(&destination, item, pending.status);
    }
    tracing::info!(
        recipients = recovered.pending.len(),
        segments = recovered.report.segments,
        torn_tails = recovered.report.torn_tails.len(),
        damaged = recovered.report.damaged.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "queue recovered"
    );
    let server_tls = ServerTls::load(&config.tls)?;
    let client_tls = ClientTls::load(config.delivery.tls_ca.as_deref())?;
    if client_tls.roots == 0 {
        tracing::warn!("no trusted root certificates: tls = \"required-verified\" will defer every delivery (set delivery.tls_ca)");
    }
    let mta_sts = MtaSts::start(MtaStsConfig {
        dns: resolver_config(&config),
        port: config.delivery.mta_sts_port,
        tls: client_tls.verified.clone(),
        cache_path: config.spool.path.join(MTA_STS_CACHE_FILE),
    })
    .map_err(Error::Listen)?;
    let listener_tls: Vec<ListenerTls> = config
        .listeners
        .iter()
        .map(|l| l.tls_mode(&config.tls))
        .collect();
    // One budget for every listener's sessions: the memory is the server's.
    let data_budget = DataBudget::new(config.limits.data_in_flight_max);
    let keys = Keys::load(&config.dkim, &config.dkim_defaults)
        .map_err(|err| Error::Dkim(err.to_string()))?;
    if !keys.is_empty() {
        tracing::info!(keys = keys.len(), "DKIM keys loaded");
    }
    let signing = Signing::start(keys, config.dkim_defaults.sign_threads);
    let session_configs = config
        .listeners
        .iter()
        .map(|l| Arc::new(session_config(&config, l, &data_budget)))
        .collect();
    let resolver = Resolver::start(resolver_config(&config)).map_err(Error::Listen)?;
    let events = match &config.log.events {
        Some(path) => EventLog::open(path)
            .map_err(|err| Error::Events(format!("{}: {err}", path.display())))?,
        None => EventLog::disabled(),
    };
    let events = Arc::new(events);
    let webhooks = match &config.log.events {
        // Validation refuses webhooks without the event log.
        Some(path) => Webhooks::start(&config.webhooks, path, &config.spool.path)
            .map_err(|err| Error::Events(err.to_string()))?,
        None => Webhooks::none(),
    };
    let cluster = config
        .cluster
        .redis
        .is_some()
        .then(|| Arc::new(Cluster::new(&config.cluster, &config.server.hostname)));
    let suppression = if config.suppression.enabled {
        let path = config.suppression.file(&config.spool.path);
        let notify = log_suppression_changes(events.clone(), cluster.clone());
        let list = SuppressionList::open(&path, notify)
            .map_err(|err| Error::Listen(io::Error::other(err)))?;
        tracing::info!(
            file = %path.display(),
            entries = list.len().unwrap_or(0),
            action = ?config.suppression.action,
            "suppression list open"
        );
        Some(list)
    } else {
        None
    };
    let unsubscribe = Unsubscribe::load(
        &config.unsubscribe,
        &config.server.hostname,
        &config.spool.path,
    )
    .map_err(|err| Error::Listen(io::Error::other(err)))?;
    // Bound here, before the shards start: a bad address fails the start.
    let unsubscribe_listener = match config.unsubscribe.listen {
        Some(address) => Some(std::net::TcpListener::bind(address).map_err(|err| {
            Error::Listen(io::Error::new(
                err.kind(),
                format!("unsubscribe listener {address}: {err}"),
            ))
        })?),
        None => None,
    };
    let inject_token = crate::http::inject::load_token(&config.http).map_err(Error::AdminToken)?;
    let inject_listener = crate::http::inject::bind(&config).map_err(Error::Listen)?;
    let mut links = Vec::new();
    let mut inboxes = Vec::new();
    for _ in 0..config.shard_count() {
        let (link, inbox) = ShardLink::new().map_err(Error::Listen)?;
        links.push(link);
        inboxes.push(inbox);
    }
    let server = Arc::new(Server {
        session_configs,
        data_budget,
        listener_tls,
        server_tls,
        client_tls,
        mta_sts,
        broken_tls: Mutex::new(HashMap::new()),
        spool,
        queues,
        live: ArcSwap::from_pointee(live),
        resolver,
        events,
        webhooks,
        suppression,
        cluster,
        unsubscribe,
        links,
        shutting_down: AtomicBool::new(false),
        queue_id_floor: recovered.queue_id_max,
        metrics: Metrics::default(),
        connections_per_ip: Mutex::new(HashMap::new()),
        verifier,
        signing,
        reload_hook: std::sync::OnceLock::new(),
        reloading: Mutex::new(()),
        draining: Mutex::new(None),
        config,
    });
    let shards = shard::start(&server, inboxes).map_err(Error::Listen)?;
    if let Some(address) = server.config.admin.address {
        crate::admin::start(address, server.clone(), admin_token).map_err(|err| {
            Error::Listen(io::Error::new(
                err.kind(),
                format!("admin listener {address}: {err}"),
            ))
        })?;
    }
    if let Some(listener) = unsubscribe_listener {
        let address = listener.local_addr().map_err(Error::Listen)?;
        crate::http::unsubscribe::start(listener, server.clone()).map_err(|err| {
            Error::Listen(io::Error::new(
                err.kind(),
                format!("unsubscribe listener {address}: {err}"),
            ))
        })?;
        tracing::info!(%address, url = server.unsubscribe.as_ref().map_or("", |u| u.url()), "serving one-click unsubscribe links");
    }
    if let Some(listener) = inject_listener {
        let address = listener.local_addr().map_err(Error::Listen)?;
        crate::http::inject::start(listener, server.clone(), inject_token)
            .map_err(Error::Listen)?;
        tracing::info!(%address, tls = server.config.http.tls(), "serving HTTP injection");
    }
    crate::shaping::egress::check_reverse_dns(
        &server.live().egress,
        resolver_config(&server.config),
    );
    let housekeeper = start_housekeeper(server.clone()).map_err(Error::Listen)?;
    let cluster = Cluster::start(server.clone()).map_err(Error::Listen)?;
    for (l, tls) in server.config.listeners.iter().zip(&server.listener_tls) {
        tracing::info!(address = %l.address, shards = shards.len(), tls = ?tls, "accepting SMTP");
    }
    Ok(Running {
        server,
        shards,
        housekeeper: Some(housekeeper),
        cluster,
    })
}

/// Every change to the suppression list, in the event log and the log.
/// Changes made here go to the other nodes of a cluster too.
fn log_suppression_changes(
    events: Arc<EventLog>,
    cluster: Option<Arc<Cluster>>,
) -> crate::policy::suppression::Notify {
    Box::new(move |entry: &Entry, added: bool, origin: Origin| {
        if let (Some(cluster), Origin::Here) = (&cluster, origin) {
            cluster.share(Outgoing::Suppression {
                entry: entry.clone(),
                added,
            });
        }
        let kind = if added {
            EventKind::SuppressionAdded
        } else {
            EventKind::SuppressionRemoved
        };
        if events.is_enabled() {
            let mut event = LogEvent::new(kind, unix_ms(), "");
            event.address = Some(entry.address.as_bytes());
            event.scope = Some(&entry.scope);
            event.source = Some(entry.source.as_str());
            event.reason = Some(&entry.reason);
            events.record_waiting(&event);
        }
        tracing::debug!(
            address = %entry.address,
            scope = %entry.scope,
            source = %entry.source,
            reason = %entry.reason,
            "{}",
            if added { "suppression added" } else { "suppression removed" }
        );
    })
}

/// The pool a message's sender chose: its user's (the users file), else
/// its MAIL FROM domain's (`[[sender_pool]]`); `None`: the route's or
/// the default. `user` is the authenticated name the spool keeps.
pub fn sender_pool(
    pools: &SenderPools,
    verifier: Option<&Verifier>,
    user: &[u8],
    reverse_path: &[u8],
) -> Option<Arc<str>> {
    let by_user = (!user.is_empty())
        .then(|| verifier?.user_pool(std::str::from_utf8(user).ok()?))
        .flatten();
    match by_user {
        Some(pool) => Some(pool.into()),
        None => pools.for_sender(reverse_path),
    }
}

/// The sources a destination's connections leave from: the pool its
/// sender chose, else its route's, else `[delivery] pool`, by name and
/// weight; none: the default lane.
fn route_lanes(config: &Config) -> crate::queue::LanesFor {
    let routes = routes(config);
    let pools: HashMap<String, crate::queue::Lanes> = config
        .pools
        .iter()
        .map(|pool| {
            let lanes: Vec<(Arc<str>, u32)> = pool
                .sources
                .iter()
                .filter_map(|entry| crate::shaping::egress::parse_entry(entry).ok())
                .map(|(name, weight)| (Arc::from(name), weight))
                .collect();
            (pool.name.clone(), lanes.into())
        })
        .collect();
    let default_pool = config.delivery.pool.clone();
    Box::new(move |destination| {
        let chosen = destination.pool().map(str::to_owned);
        let pool = chosen
            .or_else(|| match routes.route(destination) {
                Route::NextHop(hop) => hop.pool,
                Route::Mx { .. } => None,
            })
            .or_else(|| default_pool.clone());
        pool.and_then(|name| pools.get(&name).cloned())
            .filter(|lanes| !lanes.is_empty())
            .unwrap_or_else(crate::queue::default_lanes)
    })
}

/// A destination's site: a route's next hop, or (MX delivery) the MX
/// hosts, learned from the answer (`shard::outbound`).
fn route_sites(config: &Config, sites: Arc<SiteTable>) -> crate::queue::SiteFor {
    let routes = routes(config);
    Box::new(move |destination| match routes.route(destination) {
        Route::NextHop(hop) => {
            let (name, shaping) = sites.for_next_hop(&hop.host, hop.port);
            SiteOf::Known(name, shaping)
        }
        // An address literal is its own site: it has no MX hosts.
        Route::Mx { .. } if destination.as_str().starts_with('[') => SiteOf::Own,
        Route::Mx { .. } => SiteOf::Mx,
    })
}

fn shaping_for(config: &Config) -> Box<dyn Fn(&Destination) -> Shaping + Send + Sync> {
    let config = config.clone();
    Box::new(move |destination| {
        let s = config.shaping_for(destination.as_str());
        Shaping {
            connections_max: s.connections_max,
            messages_per_connection_max: s.messages_per_connection_max,
            recipients_per_transaction_max: s.recipients_per_transaction_max,
            message_rate_max: s.message_rate_max,
            hold: config.delivery.hold,
        }
    })
}

fn routes(config: &Config) -> Routes {
    let routes = config.routes.iter().map(|r| {
        // The configuration checked that a user comes with a password
        // (and read it from its file).
        let auth = r
            .auth_user
            .as_ref()
            .zip(r.auth_password.as_ref())
            .map(|(user, password)| {
                Arc::new(Credentials::new(
                    user.clone(),
                    password.expose(),
                    r.auth_plaintext,
                ))
            });
        let hop = NextHop {
            host: r.next_hop.host.clone(),
            port: r.next_hop.port,
            auth,
            pool: r.pool.clone(),
        };
        (r.domain.clone(), hop)
    });
    Routes::new(routes, config.delivery.mx_port)
}

fn resolver_config(config: &Config) -> ResolverConfig {
    ResolverConfig {
        nameservers: config.dns.nameservers.clone(),
        timeout: config.dns.timeout,
        attempts: config.dns.attempts,
    }
}

fn delivery_settings(config: &Config) -> DeliverySettings {
    let d = &config.delivery;
    DeliverySettings {
        retry_schedule: d.retry_schedule.clone(),
        max_age: d.max_age,
        soft_bounce: d.soft_bounce,
        timeouts: Timeouts {
            connect: d.connect_timeout,
            greeting: d.greeting_timeout,
            helo: d.helo_timeout,
            mail: d.mail_timeout,
            rcpt: d.rcpt_timeout,
            data: d.data_timeout,
            data_block: d.data_block_timeout,
            dot: d.dot_timeout,
        },
        idle_timeout: d.idle_timeout,
        pause: d.pause,
        pause_max: d.pause_max,
    }
}

fn client_config(config: &Config) -> ClientConfig {
    // The client must take every envelope the queue builds.
    let recipients_max = std::iter::once(config.shaping.recipients_per_transaction_max)
        .chain(
            config
                .destinations
                .iter()
                .filter_map(|d| d.recipients_per_transaction_max),
        )
        .max()
        .unwrap_or(1);
    ClientConfig {
        helo_name: config.delivery.helo_name.clone(),
        limits: ClientLimits {
            recipients_per_transaction_max: recipients_max,
            ..ClientLimits::default()
        },
    }
}

fn session_config(
    config: &Config,
    listener: &ListenerConfig,
    data_budget: &Arc<DataBudget>,
) -> SessionConfig {
    let l = &config.limits;
    SessionConfig {
        hostname: config.server.hostname.clone(),
        limits: SessionLimits {
            command_line_bytes_max: l.command_line_bytes_max,
            text_line_bytes_max: l.text_line_bytes_max,
            message_bytes_max: l.message_bytes_max,
            recipients_per_message_max: l.recipients_per_message_max,
            commands_per_session_max: l.commands_per_session_max,
            errors_per_session_max: l.errors_per_session_max,
            received_headers_max: l.received_headers_max,
        },
        bare_line_endings: match config.smtp.bare_line_endings {
            BareLineEndingsSetting::Reject => BareLineEndings::Reject,
            BareLineEndingsSetting::Normalize => BareLineEndings::Normalize,
        },
        chunking: config.smtp.chunking,
        starttls: listener.tls_mode(&config.tls) == ListenerTls::StartTls,
        tls_required: listener.tls_required,
        auth: AuthSettings {
            available: config.auth.users.is_some() && listener.auth != ListenerAuth::Off,
            required: listener.auth == ListenerAuth::Required,
            plaintext: listener.auth_plaintext,
        },
        data_budget: data_budget.clone(),
    }
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
