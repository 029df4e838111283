//! baton's deterministic simulator: the real spool (its writer, group
//! commit, recovery, reclamation and compaction), the real queue (sites,
//! connection limits, scheduling), baton's SMTP server session and client
//! (sans IO) and its settlement (`delivery::settle::Ledger`: the retry
//! schedule, `max_age`, outcome records, notifications and their order)
//! run in one thread under a seeded scheduler, a simulated clock and a
//! simulated disk that loses power ([`disk::Disk`]: torn or reordered
//! unsynced sectors, short writes, ENOSPC, failed datasyncs, bit flips).
//! Next hops answer 2xx, 4xx or 5xx per recipient, drip-feed replies, drop
//! connections, go down and come back. After every simulated crash and at
//! the end, the checker asserts baton's promises:
//! - every message acknowledged (its record durable: the `250`) is
//!   delivered at least once, failed, or still queued;
//! - no recipient whose delivery was recorded durably is delivered again,
//!   no durable final outcome is undone by a crash, and `delivered` is
//!   recorded only for what a next hop took;
//! - one notification per message with failures (give or take one per
//!   crash between a notification and the outcomes behind it);
//! - `max_age` holds; disk use stays bounded;
//! - no destination, and no site, has more connections open than its
//!   limit, and none gets connections in a loop.
//!
//! The shard's event loop itself is not run: the simulator drives the
//! ledger, the gate and the queue in the shard's order (append, datasync,
//! then `250`; deliver, then settle). See `docs/architecture.md`.
//! A failing seed replays exactly: `baton-sim --seed S` prints the history.

pub mod cluster;
pub mod disk;
pub mod hop;
pub mod names;
pub mod rng;
pub mod sources;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

// The checker's own maps, hashed fast (SipHash was a tenth of a seed).
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

/// The working set of messages, by id. Hashed, not a B-tree (its lookups
/// were a twentieth of a seed), with a fixed seed: checks and the choice
/// of a record to rot walk it, and a seed must replay exactly.
type Messages = std::collections::HashMap<u64, Msg, foldhash::fast::FixedState>;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use baton::auth::users::UserPolicy;
use baton::auth::verify::{Identity, Verdict as AuthVerdict};
use baton::config::{ShapingAction, ShapingRuleConfig};
use baton::delivery::retry::DeliverySettings;
use baton::delivery::settle::{Fate, Held, Ledger};
use baton::inbound::{
    AuthSettings, BareLineEndings, DataBudget, Session, SessionConfig, SessionContext,
    SessionLimits, StoreError,
};
use baton::outbound::Credentials as OutboundCredentials;
use baton::outbound::{
    Client, ClientConfig, ClientLimits, CloseReason, Envelope, Event, Outcome as ClientOutcome,
    TlsMode,
};
use baton::queue::{
    Action, Lanes, Policy, QueuedRecipient, Queues, Shaping, SiteOf, SiteShaping, Take, Waiter,
};
use baton::route::{destination_of, Destination};
use baton::shaping::classify::Classifier;
use baton::shaping::ShapingRules;
use baton::smtp::reply::Reply;
use baton_spool::{
    Appended, Clock, CompactionCopies, Gate, Io, NewMessage, QueueId, Record, Spool, SpoolConfig,
    Status, SyncOp, Writer,
};
use std::net::SocketAddr;

use baton::config::Config;
use baton::shaping::egress::{Egress, Source};
use disk::{Disk, WriteFault};
use hop::{Hop, HopAuth, Verdict};
use names::SimDirectory;
use rng::Rng;
use sources::{WarmupAccount, DAY_MS, EGRESS_TOML, HOUR_MS, WARMING};

/// What a run simulates.
#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    /// Simulated time the traffic lasts; the queue is then drained.
    pub sim_seconds: u64,
    /// Messages arriving per simulated second.
    pub messages_per_second: u64,
    /// Recipient domains, each its own next hop.
    pub destinations: usize,
    /// Each destination's connection limit.
    pub connections_max: usize,
    /// Each site's (a few destinations share one).
    pub site_connections_max: usize,
    /// Power cuts, process crashes, failed datasyncs.
    pub faults: bool,
    /// Per round, in ten thousand: a power cut (with `faults`).
    pub power_cut_per_10k: u64,
    /// Power cuts keep later unsynced writes where earlier ones were lost
    /// (a disk's cache writing back out of order); otherwise a power cut
    /// tears each file's unsynced writes at one point.
    pub reorder: bool,
}

impl Params {
    /// The scenario `cargo test` and the soak run use.
    pub fn scenario(seed: u64) -> Params {
        Params {
            seed,
            sim_seconds: 20,
            messages_per_second: 1_000,
            destinations: 8,
            connections_max: 4,
            site_connections_max: 6,
            faults: true,
            power_cut_per_10k: POWER_CUT_PER_10K,
            reorder: false,
        }
    }
}

/// What a run covered.
#[derive(Debug, Default)]
pub struct Report {
    pub sim_ms: u64,
    pub messages_acknowledged: u64,
    pub deliveries: u64,
    /// Deliveries of a recipient already delivered whose outcome a crash
    /// lost: allowed (at least once), counted.
    pub repeated_deliveries: u64,
    pub recipients_failed: u64,
    /// Notifications that became durable (and were queued).
    pub notifications: u64,
    pub power_cuts: u64,
    /// Of those, cuts in the middle of a reclamation or a recovery, among
    /// its directory operations.
    pub power_cuts_in_calls: u64,
    pub crashes: u64,
    pub sync_failures: u64,
    pub sectors_lost: u64,
    /// Changes to the spool's file names (creations, renames, removals)
    /// a power cut took back: none, while the spool syncs its directory
    /// after each.
    pub name_changes_lost: u64,
    pub short_writes: u64,
    pub writes_out_of_space: u64,
    pub bit_flips: u64,
    /// Messages refused with `452`: the spool at `size_bytes_max`.
    pub refused_full: u64,
    /// The most the spool's segments took, by its own count, sampled
    /// after reclamations. (The directory's files, which the checker
    /// bounds, include a segment the preparer thread is making: they
    /// differ from run to run.)
    pub spool_bytes_peak: u64,
    /// Connections opened to next hops, and those that carried nothing.
    pub connections: u64,
    pub connections_idle: u64,
    /// Connections opened while their destination, or their site, then
    /// had as many open as its limit allows: the limits bind.
    pub opened_at_destination_limit: u64,
    pub opened_at_site_limit: u64,
    /// Client connections whose AUTH was refused (and that then tried to
    /// send anyway).
    pub auth_refused: u64,
    /// New connections no host answered (the next hop down): each pauses
    /// its site from its source.
    pub connections_refused: u64,
    /// `421`s from next hops (to a RCPT or the end of data): each pauses
    /// its site from its source.
    pub services_closing: u64,
    /// Segments whose live mail compaction copied forward.
    pub segments_compacted: u64,
    /// Messages sent from the warming source, and the times its spent
    /// allowance made its lane rest until the next hour.
    pub warming_source_sent: u64,
    pub warm_up_rests: u64,
}

/// An invariant that did not hold, and what led to it.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub sim_ms: u64,
    pub invariant: String,
    pub history: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {:#x}: at {} ms simulated: {}",
            self.seed, self.sim_ms, self.invariant
        )?;
        writeln!(f, "the last {} events:", self.history.len())?;
        for line in &self.history {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Runs one seed.
pub fn run(params: &Params) -> Result<Report, Failure> {
    let mut world = World::new(params.clone()).map_err(|why| Failure {
        seed: params.seed,
        sim_ms: 0,
        invariant: why,
        history: Vec::new(),
    })?;
    let result = world.run();
    let report = world.report();
    result.map(|()| report).map_err(|invariant| Failure {
        seed: params.seed,
        sim_ms: world.now_ms - START_MS,
        invariant,
        history: world.history.iter().cloned().collect(),
    })
}

/// Simulated time starts here (a Unix time in ms, so retry times look
/// real): ten seconds before a UTC midnight, so that each seed's traffic
/// crosses a day and an hour (the warming source's caps roll over).
const START_MS: u64 = 1_800_057_600_000 - 10_000;
/// A step of simulated time at most; each step is one round of the loop.
const STEP_MS_MAX: u64 = 20;
/// Lines of history kept for a failure's report.
const HISTORY_MAX: usize = 400;
/// Small enough that a run fills, seals, recycles and reclaims dozens.
const SEGMENT_BYTES: u64 = 1 << 20;
/// The spool's `size_bytes_max`: small enough that a run meets it now
/// and then (new mail gets `452` while outcomes still go in).
const SPOOL_BYTES_MAX: u64 = 28 * SEGMENT_BYTES;
/// Segments left after the drain and a reclamation: the shard's writer's
/// and compaction's, each with its active segment, the one the preparer
/// made for its next roll-over, and the one it left last (sealed, and
/// deletable, once the link to it is durable). Whether a prepared file
/// is there yet depends on the preparer thread, which is outside the
/// seed: 4 failed the 454th seed of a soak (`0xc515`, `--reorder`, 5
/// segments) and passed on its replay.
const END_SEGMENTS_MAX: u64 = 6;
/// Per round, in four: the datasyncs asked for complete.
const SYNC_DONE_PER_ROUND_PER_4: u64 = 3;
/// Per step, in ten thousand: a power cut, a process crash, a failed datasync.
const POWER_CUT_PER_10K: u64 = 8;
const CRASH_PER_10K: u64 = 8;
const SYNC_FAILURE_PER_10K: u64 = 4;
/// Per write, with faults: a short write (in a thousand), ENOSPC (in ten
/// thousand).
const SHORT_WRITE_PER_1K: u64 = 10;
const NO_SPACE_PER_10K: u64 = 1;
/// Per restart, in a thousand: a bit of a durable record flipped while
/// baton was down.
const ROT_PER_1K_RESTARTS: u64 = 250;
/// Per step, in a thousand: a next hop goes down (for up to a minute).
const HOST_DOWN_PER_1K: u64 = 2;
/// Finished messages leave the checker's working set every this many
/// steps (the checks walk it).
const PRUNE_EVERY_STEPS: u64 = 256;
/// Reclamation and compaction run every this many steps, as the
/// housekeeper does.
const RECLAIM_EVERY_STEPS: u64 = 25;
/// Disk use is measured every this many steps (a second or so of
/// simulated time: a runaway takes many): a directory listing and a
/// `statx` per file, every 25 steps, were a thirtieth of a seed.
const DISK_CHECK_EVERY_STEPS: u64 = 100;
/// Segments compacted per pass, as the housekeeper's
/// `COMPACT_SEGMENTS_MAX`.
const COMPACT_SEGMENTS_MAX: usize = 4;
/// Compaction's writer id (the shard's is 0).
const COMPACTOR_ID: u16 = 1;
/// Short enough that the drain sees the first next hop's recipients
/// expire after a handful of retries: on the default schedule (1, 5, 15
/// minutes, ...) the third attempt, six minutes after the first, fails
/// them. An hour took six attempts, and the dead next hop's retries were
/// a third of a seed's transactions.
const MAX_AGE_SECS: u64 = 300;
/// How far past `max_age` and its longest retry step a recipient may
/// still be queued (a next hop down, a connection's turn).
const MAX_AGE_SLACK_MS: u64 = 3_600_000;
/// The drain after the traffic ends may take this much simulated time.
const DRAIN_MS_MAX: u64 = 7 * 24 * 3_600_000;

/// baton's name in the simulation.
const HOSTNAME: &str = "baton.sim";

/// Per thousand recipients at a next hop that defers at all: Gmail's
/// `450 4.7.28` ("slow down").
const THROTTLE_PER_1K: u64 = 2;
/// Per thousand recipients at a next hop that defers at all: `421` to the
/// RCPT, the service closing; and per thousand transactions there, `421`
/// at the end of data. (Three and ten cost an eighth of the simulator's
/// speed: each closes a connection and pauses its site × source, and the
/// drain waits out the pauses.)
const CLOSING_PER_1K: u64 = 1;
const CLOSING_AT_DOT_PER_1K: u64 = 3;
/// How long the operator's rule suspends a site on `4.7.28`.
const SUSPEND_MS: u64 = 2_000;

/// Connections in a row to one destination that carry nothing, at most.
const IDLE_CONNECTIONS_IN_A_ROW_MAX: u32 = 16;

/// The one user clients authenticate as, and its password.
const SIM_USER: &str = "app";
const SIM_PASSWORD: &str = "s3cret-sim";
/// Per thousand connections to a smart host: it refuses the password.
const HOP_AUTH_REFUSED_PER_1K: u64 = 20;
/// Per thousand new client connections: a wrong password.
const BAD_PASSWORD_PER_1K: u64 = 50;
/// The verifier's answer comes this long after the credentials at most.
const AUTH_VERDICT_MS_MAX: u64 = 30;

/// One recipient in this many goes to the first destination, a small
/// one; the rest share the others evenly. It is the next hop that dies at
/// the drain, so that what was queued for it expires at `max_age`: with an
/// eighth of the traffic, its retries were a fifth of a seed's
/// transactions, spent on one invariant.
const SMALL_DESTINATION_PER: u64 = 32;

/// A body line of the longest length.
const FILLER_LINE: &str =
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// Client connections to baton at most: arrivals wait past this.
const SENDERS_MAX: usize = 64;

/// What a server session asks of the shard, answered by the simulation.
struct SimCtx<'a> {
    now_ms: u64,
    next_id: &'a mut u64,
}

impl SessionContext for SimCtx<'_> {
    fn now_unix_secs(&self) -> u64 {
        self.now_ms / 1000
    }

    fn next_queue_id(&mut self) -> QueueId {
        let id = *self.next_id;
        *self.next_id += 1;
        QueueId(id)
    }

    fn take_user_message(&mut self, _identity: &Identity) -> bool {
        true
    }
}

/// The clock the spool reads: the simulation's.
struct SimClock(Arc<AtomicU64>);

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A recipient as the checker knows it.
#[derive(Clone, Debug, Default)]
struct Rcpt {
    /// Its durable final outcome, if any: it must never come back.
    final_status: Option<Status>,
    /// A final outcome appended, durable or not: written to the page
    /// cache, it may survive a crash, and recovery may then find it final.
    final_appended: Option<Status>,
    /// Its delivery was recorded durably.
    delivered_durably: bool,
    deliveries: u32,
    /// Where its durable final outcome is.
    final_at: Option<baton_spool::RecordRef>,
    /// A bit of that outcome flipped while baton was down: recovery may
    /// find the recipient pending again, and deliver it again.
    rotted: bool,
}

impl Rcpt {
    fn failed_durably(&self) -> bool {
        matches!(self.final_status, Some(Status::Failed { .. }))
    }
}

#[derive(Debug)]
struct Msg {
    /// Where its record went.
    at: baton_spool::RecordRef,
    arrival_ms: u64,
    /// The client got its `250`: the record is durable.
    acknowledged: bool,
    rcpts: Vec<Rcpt>,
    /// A notification: the message whose failures it tells of.
    notice_of: Option<u64>,
    /// The notifications appended about this message that still exist.
    notices: Vec<u64>,
    /// Crashes that fell between a notification of this message and the
    /// outcomes after it: each may bring one more notification (the
    /// recipients are tried again and fail again).
    notices_allowed_extra: usize,
    /// A bit of its record flipped while baton was down: recovery may
    /// lose it.
    rotted: bool,
}

impl Msg {
    fn new(at: baton_spool::RecordRef, arrival_ms: u64, rcpts: usize) -> Msg {
        Msg {
            at,
            arrival_ms,
            acknowledged: false,
            rcpts: vec![Rcpt::default(); rcpts],
            notice_of: None,
            notices: Vec::new(),
            notices_allowed_extra: 0,
            rotted: false,
        }
    }
}

/// Whose datasync: the shard's writer's, or compaction's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Shard,
    Compactor,
}

/// Appended, not yet known durable.
#[derive(Debug)]
enum Awaiting {
    /// A message, and its recipients' destinations (the shard queues
    /// them from the session's message, without reading it back).
    Message(u64, Vec<Destination>),
    Outcome(u64, u32, Status, baton_spool::RecordRef),
    /// A notification, to the original's sender: queued once durable, as
    /// the shard queues it.
    Notification(u64, Destination),
}

/// A client connection's AUTH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SenderAuth {
    /// Sent; the verifier's verdict comes at `due_ms`.
    Pending {
        due_ms: u64,
        good: bool,
    },
    Ok,
}

/// A next hop's mood.
#[derive(Clone, Copy, Debug, Default)]
struct Host {
    down_until_ms: u64,
    /// Per thousand recipients: deferred, failed.
    defer_per_1k: u64,
    fail_per_1k: u64,
}

struct Conn {
    destination: Destination,
    lane: Arc<str>,
    /// The pool's source it leaves from (the lane's).
    source: Arc<Source>,
    /// baton's SMTP client, sans IO, as a shard runs it.
    client: Client,
    hop: Hop,
    /// Transactions it carried.
    transactions: u32,
    /// The next hop's `421`: the service is closing.
    service_closing: Option<Reply>,
}

/// Per thousand transactions: the next hop closes the connection without
/// a word after a transaction (as Yahoo does on purpose), or drops it
/// after the end of data, before its reply (the message delivered, baton
/// not told: it must try again, and may deliver twice).
const SILENT_CLOSE_PER_1K: u64 = 20;
const DROP_BEFORE_REPLY_PER_1K: u64 = 5;
/// Per buffer (a client's message, a next hop's replies), in a thousand:
/// it arrives in pieces of random size rather than whole (thousands of
/// buffers a seed). Every buffer split was a fifth of a seed spent
/// parsing pieces again, where a real socket mostly hands a write of a
/// few kilobytes over whole.
const SPLIT_PER_1K: u64 = 100;
/// Per thousand transactions at a next hop that defers at all: a `451`
/// at the end of data, for every recipient.
const DATA_REFUSED_PER_1K: u64 = 20;
/// baton's `[delivery] pause` and `pause_max`: a site × source whose
/// hosts do not answer rests this long, doubled with each failure in a
/// row, at most `PAUSE_MS_MAX`.
const PAUSE_MS: u64 = 1_000;
const PAUSE_MS_MAX: u64 = 300_000;
/// Per thousand reclamations (with faults), and per thousand restarts:
/// the power goes in the middle of the call, after up to
/// [`NAME_OPERATIONS_BEFORE_CUT_MAX`] of its directory operations.
const CUT_IN_RECLAMATION_PER_1K: u64 = 100;
const CUT_IN_RECOVERY_PER_1K: u64 = 300;
const NAME_OPERATIONS_BEFORE_CUT_MAX: u64 = 6;

struct World {
    params: Params,
    _dir: tempfile::TempDir,
    config: SpoolConfig,
    clock: Arc<AtomicU64>,
    now_ms: u64,
    rng: Rng,
    disk: Disk,
    /// The spool's directories, as the simulated disk is its files'
    /// bytes.
    names: Arc<SimDirectory>,
    spool: Option<Spool>,
    writer: Option<Writer>,
    /// Datasyncs asked for, and whose: the shard's writer or compaction's.
    syncs: VecDeque<(Which, SyncOp)>,
    /// Compaction's own writer, as the housekeeper keeps one, and the
    /// copies it made that wait for their datasync before the index moves
    /// to them.
    compactor: Option<Writer>,
    compacting: Vec<CompactionCopies>,
    /// What waits for the datasync: the shard's own gate.
    awaiting: Gate<Awaiting>,
    /// Outcomes that wait for their notification's datasync, as the
    /// shard holds them.
    held: Gate<Held>,
    queues: Queues,
    delivery: DeliverySettings,
    client_config: Arc<ClientConfig>,
    /// The clients' connections to baton, each a server session, and the
    /// message each waits to hear about.
    session_config: Arc<SessionConfig>,
    senders: Vec<Session>,
    waiting: Vec<Option<u64>>,
    /// Where each connection's AUTH stands.
    auth: Vec<SenderAuth>,
    next_id: u64,
    /// Messages with a recipient not durably final.
    messages: Messages,
    /// Message ids in arrival order (ids are handed out in it), some
    /// long gone from `messages`: the `max_age` check walks from the
    /// oldest.
    arrivals: VecDeque<u64>,
    /// Messages whose every recipient is durably final: none may come
    /// back, none may be delivered again.
    finished: HashSet<u64>,
    hosts: Vec<Host>,
    conns: BTreeMap<u64, Conn>,
    open: HashMap<Destination, usize>,
    /// Per destination, connections in a row that carried nothing.
    idle_streak: HashMap<Destination, u32>,
    /// The shipped reply classifier and shaping rules, with the
    /// operator's rule that suspends a site on `4.7.28` for [`SUSPEND_MS`].
    classifier: Arc<Classifier>,
    shaping_rules: ShapingRules,
    /// Per site, until when a `4.7.28` suspended it (the checker's own
    /// account).
    suspended: HashMap<(&'static str, Arc<str>), u64>,
    /// Per site × source, until when a failed connection paused it (the
    /// checker's own account: the pause's first step, which doubles with
    /// failures in a row).
    paused: HashMap<(&'static str, Arc<str>), u64>,
    /// Per site × source (lane): the limits hold per lane.
    site_open: HashMap<(&'static str, Arc<str>), usize>,
    /// The sources and pool, as baton builds them from its configuration
    /// (rebuilt at each restart from the warm-up counts it saved).
    egress_config: Config,
    egress: Egress,
    warmup_file: std::path::PathBuf,
    /// The checker's account of the warming source's caps.
    warmup: WarmupAccount,
    next_conn: u64,
    /// Messages whose recipients became final, or that were acknowledged,
    /// since the last prune.
    touched: Vec<u64>,
    /// A restart: the next prune looks at every message.
    prune_all: bool,
    steps: u64,
    history: VecDeque<String>,
    report: Report,
}

impl World {
    fn new(params: Params) -> Result<World, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let clock = Arc::new(AtomicU64::new(START_MS));
        let mut config = SpoolConfig::new(dir.path().join("spool"));
        config.segment_bytes = SEGMENT_BYTES;
        config.size_bytes_max = Some(SPOOL_BYTES_MAX);
        config.clock = Arc::new(SimClock(clock.clone()));
        let names = Arc::new(
            SimDirectory::new(dir.path().join("attic")).map_err(|e| format!("attic: {e}"))?,
        );
        config.directory = names.clone();
        let egress_config = Config::parse(EGRESS_TOML, "baton-sim").map_err(|e| e.to_string())?;
        // Beside the spool, as baton keeps it in the spool's directory:
        // written by the housekeeper with plain files (not simulated).
        let warmup_file = dir.path().join(baton::shaping::egress::WARMUP_FILE);
        let client_config = ClientConfig {
            helo_name: "baton.sim".into(),
            limits: ClientLimits::default(),
        };
        let egress = Egress::new(&egress_config, &client_config, Some(&warmup_file));
        let mut rng = Rng::new(params.seed);
        let hosts = (0..params.destinations)
            .map(|_| Host {
                down_until_ms: 0,
                defer_per_1k: rng.range(0, 200),
                fail_per_1k: rng.range(0, 30),
            })
            .collect();
        let mut world = World {
            queues: queues(
                params.connections_max,
                params.site_connections_max,
                pool_of(&egress).lanes(),
            ),
            params,
            _dir: dir,
            config,
            clock,
            now_ms: START_MS,
            rng,
            disk: Disk::default(),
            names,
            spool: None,
            writer: None,
            syncs: VecDeque::new(),
            compactor: None,
            compacting: Vec::new(),
            awaiting: Gate::default(),
            held: Gate::default(),
            delivery: DeliverySettings {
                max_age: Duration::from_secs(MAX_AGE_SECS),
                ..DeliverySettings::default()
            },
            client_config: Arc::new(client_config),
            session_config: Arc::new(SessionConfig {
                hostname: "baton.sim".into(),
                limits: SessionLimits::default(),
                bare_line_endings: BareLineEndings::Reject,
                chunking: false,
                starttls: false,
                tls_required: false,
                data_budget: DataBudget::new(u64::MAX / 2),
                // A submission port: AUTH before MAIL, offered in plain
                // text here (TLS is not simulated).
                auth: AuthSettings {
                    available: true,
                    required: true,
                    plaintext: true,
                },
            }),
            senders: Vec::new(),
            waiting: Vec::new(),
            auth: Vec::new(),
            next_id: 1,
            messages: Messages::default(),
            arrivals: VecDeque::new(),
            finished: HashSet::new(),
            hosts,
            conns: BTreeMap::new(),
            open: HashMap::new(),
            idle_streak: HashMap::new(),
            classifier: shipped_classifier(),
            shaping_rules: ShapingRules::new(&[ShapingRuleConfig {
                category: None,
                code: None,
                enhanced: Some("4.7.28".into()),
                text: None,
                destination: None,
                action: ShapingAction::Suspend,
                duration: Duration::from_millis(SUSPEND_MS),
                connections_max: None,
                message_rate_max: None,
            }])
            .map_err(|(rule, why)| format!("{rule}: {why}"))?,
            suspended: HashMap::new(),
            paused: HashMap::new(),
            site_open: HashMap::new(),
            egress,
            egress_config,
            warmup_file,
            warmup: WarmupAccount::default(),
            next_conn: 0,
            touched: Vec::new(),
            prune_all: false,
            steps: 0,
            history: VecDeque::new(),
            report: Report::default(),
        };
        world.start()?;
        Ok(world)
    }

    fn log(&mut self, line: String) {
        if self.history.len() == HISTORY_MAX {
            self.history.pop_front();
        }
        self.history
            .push_back(format!("{:>10} ms  {line}", self.now_ms - START_MS));
    }

    fn report(&self) -> Report {
        let counts = &self.report;
        Report {
            sim_ms: self.now_ms - START_MS,
            messages_acknowledged: counts.messages_acknowledged,
            deliveries: counts.deliveries,
            repeated_deliveries: counts.repeated_deliveries,
            recipients_failed: counts.recipients_failed,
            notifications: counts.notifications,
            power_cuts: counts.power_cuts,
            power_cuts_in_calls: counts.power_cuts_in_calls,
            crashes: counts.crashes,
            sync_failures: self.disk.sync_failures,
            sectors_lost: self.disk.sectors_lost,
            name_changes_lost: self.names.counts().1,
            short_writes: self.disk.short_writes,
            bit_flips: self.disk.bit_flips,
            refused_full: counts.refused_full,
            spool_bytes_peak: counts.spool_bytes_peak,
            connections: counts.connections,
            connections_idle: counts.connections_idle,
            opened_at_destination_limit: counts.opened_at_destination_limit,
            opened_at_site_limit: counts.opened_at_site_limit,
            auth_refused: counts.auth_refused,
            connections_refused: counts.connections_refused,
            services_closing: counts.services_closing,
            segments_compacted: counts.segments_compacted,
            warming_source_sent: self.warmup.sent,
            warm_up_rests: counts.warm_up_rests,
            writes_out_of_space: self.disk.no_space,
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let traffic_end = START_MS + self.params.sim_seconds * 1000;
        let mut owed = 0u64; // arrivals, in thousandths
        while self.now_ms < traffic_end {
            let step = self.rng.range(1, STEP_MS_MAX + 1);
            self.advance(step);
            owed += self.params.messages_per_second * step;
            let arrivals = owed / 1000;
            owed %= 1000;
            for _ in 0..arrivals {
                self.arrive()?;
            }
            self.round(true)?;
        }
        // Drain: every next hop well, no more faults, deferrals due now.
        self.log("traffic ends; draining".into());
        for host in &mut self.hosts {
            *host = Host {
                down_until_ms: 0,
                defer_per_1k: 0,
                fail_per_1k: 0,
            };
        }
        // But the first next hop, a small one, never takes mail again:
        // what is queued for it must expire at `max_age`, and its senders
        // be told.
        self.hosts[0].defer_per_1k = 1000;
        self.flush_all();
        let drain_end = self.now_ms + DRAIN_MS_MAX;
        // The working set is walked (pruned, counted) only when nothing
        // moves: while a connection or a datasync is under way, some
        // recipient is not final yet. (Every 64 rounds was a twentieth of
        // a seed.)
        while !(self.conns.is_empty() && self.syncs.is_empty()) || {
            self.prune()?;
            self.any_unfinished()
        } {
            if self.now_ms > drain_end {
                return Err(format!(
                    "{} acknowledged recipients neither delivered nor failed after the drain",
                    self.unfinished()
                ));
            }
            self.advance(STEP_MS_MAX);
            self.round(false)?;
            if self.conns.is_empty() && self.syncs.is_empty() {
                // Nothing moving: what is left is scheduled; go to it, on
                // its retry schedule (`max_age` is checked on the way).
                let next = self.queues.next_due_ms(self.now_ms);
                let wait = next.map_or(60_000, |at| at.saturating_sub(self.now_ms));
                self.advance(wait.max(1));
            }
        }
        self.check_final()
    }

    /// Deferred recipients due now, destination by destination in one
    /// order (`flush(None)` goes in the queue's hash order).
    /// A flush lifts pauses and suspensions too, as `baton queue flush`
    /// does.
    fn flush_all(&mut self) {
        self.suspended.clear();
        self.paused.clear();
        for d in 0..self.params.destinations {
            let destination = Destination::new(format!("d{d}.test"));
            self.queues.flush(Some(&destination), self.now_ms);
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        self.clock.store(self.now_ms, Ordering::Relaxed);
    }

    /// One round: the disk, the queue's plan, one transaction per
    /// connection, reclamation, and maybe a fault.
    fn round(&mut self, faults: bool) -> Result<(), String> {
        self.steps += 1;
        self.pump(faults)?;
        // Group commit: the datasyncs asked for complete in this round, or
        // take longer (a disk's fsync is milliseconds; a round is 1-20).
        let syncing = !self.syncs.is_empty() && self.rng.chance(SYNC_DONE_PER_ROUND_PER_4, 4);
        while let Some((which, op)) = syncing.then(|| self.syncs.pop_front()).flatten() {
            let fail =
                faults && self.params.faults && self.rng.chance(SYNC_FAILURE_PER_10K, 10_000);
            let result = self.disk.sync(&op, fail);
            if which == Which::Compactor {
                if let Some(compactor) = self.compactor.as_mut() {
                    compactor.complete_sync(op.id, result);
                }
                continue; // a failure: the compaction is dropped, below
            }
            self.writer_mut().complete_sync(op.id, result);
            if fail {
                self.log(format!(
                    "datasync of segment {} fails (EIO)",
                    op.segment.id().0
                ));
                // The engine's writer stops at a failed datasync; baton
                // is restarted, and what the datasync should have covered
                // may be gone.
                return self.restart(true);
            }
        }
        self.pump(faults)?;
        self.confirm()?;
        self.verdicts()?;
        let actions = self.queues.plan(self.now_ms);
        self.act(actions)?;
        let keys: Vec<u64> = self.conns.keys().copied().collect();
        for key in keys {
            self.transaction(key)?;
        }
        self.pump(faults)?;
        if self.steps.is_multiple_of(RECLAIM_EVERY_STEPS) {
            // The housekeeper's pass: the warm-up counts saved, then
            // compaction and reclamation.
            self.egress.save_warmup();
            self.compact(faults)?;
            let armed =
                faults && self.params.faults && self.rng.chance(CUT_IN_RECLAMATION_PER_1K, 1000);
            if armed {
                self.names
                    .arm(self.rng.range(0, NAME_OPERATIONS_BEFORE_CUT_MAX));
            }
            let reclaimed = self.spool().reclaim();
            if self.names.disarm() {
                self.log("the power goes during reclamation".into());
                self.report.power_cuts_in_calls += 1;
                return self.restart(true);
            }
            let report = reclaimed.map_err(|e| format!("reclamation failed: {e}"))?;
            if report.segments_deleted > 0 {
                self.check_kept()?;
            }
        }
        if self.steps.is_multiple_of(DISK_CHECK_EVERY_STEPS) {
            self.check_disk_use()?;
        }
        if self.steps.is_multiple_of(PRUNE_EVERY_STEPS) {
            self.prune()?;
        }
        if faults && self.params.faults {
            if self.rng.chance(HOST_DOWN_PER_1K, 1000) {
                let host = self.rng.range(0, self.hosts.len() as u64) as usize;
                let until = self.now_ms + self.rng.range(1_000, 60_000);
                self.hosts[host].down_until_ms = until;
                self.log(format!(
                    "next hop d{host} goes down until {} ms",
                    until - START_MS
                ));
            }
            if self.rng.chance(self.params.power_cut_per_10k, 10_000) {
                return self.restart(true);
            }
            if self.rng.chance(CRASH_PER_10K, 10_000) {
                return self.restart(false);
            }
        }
        Ok(())
    }

    fn spool(&self) -> &Spool {
        self.spool.as_ref().expect("open")
    }

    fn writer_mut(&mut self) -> &mut Writer {
        self.writer.as_mut().expect("open")
    }

    /// Does the writes the writer asks for; keeps its datasyncs for the
    /// round's group commit.
    ///
    /// With `faults`, a write may be short (the writer must write the
    /// rest) or fail with ENOSPC: the writer then stops, what waited for
    /// it is refused (`452`), and baton is restarted.
    fn pump(&mut self, faults: bool) -> Result<(), String> {
        self.pump_compactor(faults);
        let faults = faults && self.params.faults;
        while let Some(io) = self.writer_mut().next_io() {
            match io {
                Io::Write(op) => {
                    let fault = self.write_fault(faults, op.buf.len());
                    let result = self.disk.write(&op, fault);
                    self.writer_mut().complete_write(op.id, result, op.buf);
                }
                Io::Sync(op) => self.syncs.push_back((Which::Shard, op)),
            }
        }
        match self.writer_mut().failure() {
            Some(err) if faults && err.is_out_of_space() => self.out_of_space(),
            Some(err) => Err(format!("the spool's writer failed: {err}")),
            None => Ok(()),
        }
    }

    /// A write fault for the next write (with `faults`): short, ENOSPC,
    /// or none.
    fn write_fault(&mut self, faults: bool, len: usize) -> WriteFault {
        if !faults {
            WriteFault::None
        } else if self.rng.chance(NO_SPACE_PER_10K, 10_000) {
            WriteFault::NoSpace
        } else if self.rng.chance(SHORT_WRITE_PER_1K, 1000) {
            WriteFault::Short(self.rng.range(1, len as u64 + 1) as usize)
        } else {
            WriteFault::None
        }
    }

    /// Compaction's writes, through the same disk and its faults. A
    /// failed write or datasync stops its writer: the copies it made are
    /// dropped unapplied (the old segments keep their mail), and the next
    /// pass takes a new writer, as the housekeeper does.
    fn pump_compactor(&mut self, faults: bool) {
        let faults = faults && self.params.faults;
        while let Some(io) = self.compactor.as_mut().and_then(Writer::next_io) {
            match io {
                Io::Write(op) => {
                    let fault = self.write_fault(faults, op.buf.len());
                    let result = self.disk.write(&op, fault);
                    let compactor = self.compactor.as_mut().expect("writing");
                    compactor.complete_write(op.id, result, op.buf);
                }
                Io::Sync(op) => self.syncs.push_back((Which::Compactor, op)),
            }
        }
        if let Some(err) = self.compactor.as_ref().and_then(Writer::failure) {
            self.log(format!("compaction's writer fails: {err}"));
            self.compactor = None;
            self.compacting.clear();
            self.syncs.retain(|(which, _)| *which == Which::Shard);
        }
    }

    /// Compaction, as the housekeeper runs it before each reclamation:
    /// copies made durable move the index to them; then, if none wait,
    /// the next candidates are copied.
    fn compact(&mut self, faults: bool) -> Result<(), String> {
        self.pump_compactor(faults);
        if !self.compacting.is_empty() {
            let durable = self.compactor.as_ref().map(Writer::durable);
            if !self.compacting.iter().all(|c| Some(c.ticket) <= durable) {
                return Ok(()); // their datasync is still to come
            }
            for copies in std::mem::take(&mut self.compacting) {
                let segment = copies.segment();
                let report = self.spool().compact_apply(copies);
                self.report.segments_compacted += report.segments;
                self.log(format!(
                    "segment {} compacted: {} messages and {} outcomes copied",
                    segment.0, report.messages_copied, report.outcomes_copied
                ));
            }
            return Ok(());
        }
        let candidates = self.spool().compaction_candidates();
        if candidates.is_empty() {
            return Ok(());
        }
        if self.compactor.is_none() {
            let writer = self
                .spool()
                .writer(COMPACTOR_ID)
                .map_err(|e| format!("compaction's writer: {e}"))?;
            self.compactor = Some(writer);
        }
        let spool = self.spool.as_ref().expect("open");
        let compactor = self.compactor.as_mut().expect("made above");
        for id in candidates.into_iter().take(COMPACT_SEGMENTS_MAX) {
            match spool.compact_copy(compactor, id) {
                Ok(copies) => self.compacting.push(copies),
                // Its writer failed mid-copy: dropped at the next pump.
                Err(_) => break,
            }
        }
        self.pump_compactor(faults);
        Ok(())
    }

    /// The writer stopped at ENOSPC: every client that waits for its
    /// message to be durable hears `452` (and may send it again); then
    /// baton is restarted, the page cache intact.
    fn out_of_space(&mut self) -> Result<(), String> {
        self.log("a write fails with ENOSPC".into());
        // What was durable before the failure is answered as usual.
        self.confirm()?;
        let durable = self.writer_mut().durable();
        for (what, _) in self.awaiting.release(durable, true) {
            let Awaiting::Message(id, _) = what else {
                continue; // the restart's recovery decides what was recorded
            };
            let reply = self.answer_store(id, Err(StoreError::Full))?;
            if !reply.starts_with("452 ") {
                return Err(format!(
                    "{id} not stored (ENOSPC), but the session answered {reply:?}"
                ));
            }
        }
        self.restart(false)
    }

    /// A client's message: the client speaks SMTP to baton's own server
    /// session (`inbound::Session`, sans IO) on one of its connections;
    /// the message the session hands over is appended, and the session's
    /// `250` goes out once the append is durable ([`World::confirm`]).
    fn arrive(&mut self) -> Result<(), String> {
        let Some(index) = self.free_sender()? else {
            return Ok(()); // every connection waits for its 250: the client waits too
        };
        let tag = self.next_id;
        let count = self.rng.range(1, 4) as usize;
        // The sender's domain is one of the next hops: notifications to
        // it are delivered (or fail, and get none of their own).
        let from = self.rng.range(0, self.params.destinations as u64);
        // Written into one buffer (a `format!` per line was a sixtieth of
        // a seed).
        let mut text = String::with_capacity(2_300);
        let _ = write!(text, "MAIL FROM:<sender{tag}@d{from}.test>\r\n");
        for i in 0..count {
            // The first destination is a small one, as the tail of real
            // traffic is: it is the next hop that dies at the drain.
            let d = if self.rng.chance(1, SMALL_DESTINATION_PER) {
                0
            } else {
                self.rng.range(1, self.params.destinations as u64)
            };
            let _ = write!(text, "RCPT TO:<r{i}.{tag}@d{d}.test>\r\n");
        }
        let _ = write!(text, "DATA\r\nSubject: m{tag}\r\n\r\n");
        // Lines of 76 characters: a longer one is refused (RFC 5321 §4.5.3.1.6).
        let mut left = self.rng.range(10, 2000) as usize;
        while left > 0 {
            let line = left.min(76);
            text.push_str(&FILLER_LINE[..line]);
            text.push_str("\r\n");
            left -= line;
        }
        text.push_str(".\r\n");
        let mut ctx = SimCtx {
            now_ms: self.now_ms,
            next_id: &mut self.next_id,
        };
        let mut bytes = text.as_bytes();
        let session = &mut self.senders[index];
        let split = self.rng.chance(SPLIT_PER_1K, 1000);
        while !bytes.is_empty() {
            let n = piece(&mut self.rng, split, bytes.len());
            session.receive(&bytes[..n], &mut ctx);
            bytes = &bytes[n..];
        }
        let replies = take_output(session);
        let Some(message) = session.take_message() else {
            return Err(format!("baton's session took no message: {replies:?}"));
        };
        if replies
            .lines()
            .any(|l| !l.starts_with("250") && !l.starts_with("354"))
        {
            return Err(format!(
                "baton's session refused a good transaction: {replies:?}"
            ));
        }
        let id = message.queue_id.0;
        let recipients = message.spool_recipients();
        let destinations: Vec<Destination> = message
            .recipients
            .iter()
            .map(|r| destination_of(&r.address))
            .collect();
        let record = NewMessage {
            queue_id: message.queue_id,
            arrival_ms: self.now_ms,
            reverse_path: &message.reverse_path,
            mail_params: &message.mail_params,
            identity: b"",
            peer: b"127.0.0.1:1",
            transport: b"",
            recipients: &recipients,
            body: &message.body,
        };
        let appended = match self.writer_mut().append_message(&record) {
            Ok(appended) => appended,
            // A full spool: the session answers 452, nothing is acknowledged.
            Err(baton_spool::Error::Full { .. }) | Err(baton_spool::Error::LowDisk { .. }) => {
                let mut ctx = SimCtx {
                    now_ms: self.now_ms,
                    next_id: &mut self.next_id,
                };
                self.senders[index].stored(Err(StoreError::Full), &mut ctx);
                let reply = take_output(&mut self.senders[index]);
                if !reply.starts_with("452 ") {
                    return Err(format!("a full spool, but the session answered {reply:?}"));
                }
                self.report.refused_full += 1;
                return Ok(());
            }
            Err(err) => return Err(format!("append: {err}")),
        };
        self.waiting[index] = Some(id);
        self.messages
            .insert(id, Msg::new(appended.at, self.now_ms, count));
        self.arrivals.push_back(id);
        self.awaiting
            .push(appended.ticket, Awaiting::Message(id, destinations));
        Ok(())
    }

    /// A client connection whose session waits for nothing and has
    /// authenticated: one open before, or none yet. A new connection (up
    /// to [`SENDERS_MAX`]) is opened instead: greeted, EHLO said, AUTH
    /// PLAIN sent, its verdict due a few milliseconds later.
    fn free_sender(&mut self) -> Result<Option<usize>, String> {
        if let Some(index) = (0..self.senders.len())
            .find(|&i| self.waiting[i].is_none() && self.auth[i] == SenderAuth::Ok)
        {
            return Ok(Some(index));
        }
        if self.senders.len() < SENDERS_MAX {
            let index = self.senders.len();
            let peer = SocketAddr::from(([127, 0, 0, 1], 40_000 + index as u16));
            let local = SocketAddr::from(([127, 0, 0, 1], 25));
            self.senders
                .push(Session::new(self.session_config.clone(), peer, local, true));
            self.waiting.push(None);
            self.auth.push(SenderAuth::Ok);
            self.authenticate(index)?;
        }
        Ok(None)
    }

    /// Connection `index` (new) says EHLO and AUTH PLAIN, with the right
    /// password or, now and then, a wrong one; the session hands the
    /// credentials over, and the verdict comes back later, as from the
    /// shard's verifier thread.
    fn authenticate(&mut self, index: usize) -> Result<(), String> {
        let good = !self.rng.chance(BAD_PASSWORD_PER_1K, 1000);
        let password = if good { SIM_PASSWORD } else { "guess" };
        let plain =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{SIM_USER}\0{password}"));
        let mut ctx = SimCtx {
            now_ms: self.now_ms,
            next_id: &mut self.next_id,
        };
        let session = &mut self.senders[index];
        session.receive(b"EHLO client.sim\r\n", &mut ctx);
        session.receive(format!("AUTH PLAIN {plain}\r\n").as_bytes(), &mut ctx);
        let replies = take_output(session);
        if !replies.contains("AUTH PLAIN") {
            return Err(format!(
                "baton's session did not offer AUTH PLAIN: {replies:?}"
            ));
        }
        let Some(credentials) = session.take_credentials() else {
            return Err(format!(
                "AUTH PLAIN gave no credentials to check: {replies:?}"
            ));
        };
        let right = credentials.user == SIM_USER && credentials.password == SIM_PASSWORD.as_bytes();
        if right != good {
            return Err(format!(
                "the session read the credentials wrong: {:?}",
                credentials.user
            ));
        }
        let due_ms = self.now_ms + self.rng.range(0, AUTH_VERDICT_MS_MAX + 1);
        self.auth[index] = SenderAuth::Pending { due_ms, good };
        Ok(())
    }

    /// Verdicts that are due go back to their sessions. A refused client
    /// then tries to send anyway: the session must refuse the message (no
    /// open relay), and the connection is replaced.
    fn verdicts(&mut self) -> Result<(), String> {
        for index in 0..self.senders.len() {
            let SenderAuth::Pending { due_ms, good } = self.auth[index] else {
                continue;
            };
            if due_ms > self.now_ms {
                continue;
            }
            let verdict = if good {
                AuthVerdict::Accepted(Arc::new(Identity {
                    name: SIM_USER.into(),
                    policy: UserPolicy::default(),
                }))
            } else {
                AuthVerdict::Refused
            };
            let mut ctx = SimCtx {
                now_ms: self.now_ms,
                next_id: &mut self.next_id,
            };
            let session = &mut self.senders[index];
            session.auth_verdict(verdict, &mut ctx);
            let reply = take_output(session);
            let expected = if good { "235 " } else { "535 " };
            if !reply.starts_with(expected) {
                return Err(format!(
                    "AUTH verdict {good}: the session answered {reply:?}"
                ));
            }
            if good {
                self.auth[index] = SenderAuth::Ok;
                continue;
            }
            self.report.auth_refused += 1;
            session.receive(
                b"MAIL FROM:<x@d0.test>\r\nRCPT TO:<y@d1.test>\r\nDATA\r\nSubject: relay?\r\n\r\nhi\r\n.\r\n",
                &mut ctx,
            );
            let replies = String::from_utf8_lossy(session.output()).into_owned();
            if session.take_message().is_some() || replies.starts_with("250") {
                return Err(format!(
                    "a client whose AUTH was refused had mail taken (an open relay): {replies:?}"
                ));
            }
            // The client gives up; a new connection takes its place.
            let (peer, local) = (session.peer(), session.local());
            self.senders[index] = Session::new(self.session_config.clone(), peer, local, true);
            self.authenticate(index)?;
        }
        Ok(())
    }

    /// What the datasyncs made durable: messages acknowledged (and
    /// queued, as the shard does after the `250`), outcomes recorded.
    fn confirm(&mut self) -> Result<(), String> {
        let durable = self.writer_mut().durable();
        for (held, _) in self.held.release(durable, false) {
            if self.writer_mut().failure().is_some() {
                continue; // tried again after the restart, as the shard does
            }
            let recorded = Ledger {
                spool: self.spool.as_ref().expect("open"),
                writer: self.writer.as_mut().expect("open"),
                delivery: &self.delivery,
                hostname: HOSTNAME,
            }
            .record_held(&held);
            for (item, status, appended) in recorded {
                let appended = appended.map_err(|e| format!("append a held outcome: {e}"))?;
                self.appended(item, status, appended)?;
            }
        }
        for (what, _) in self.awaiting.release(durable, false) {
            match what {
                Awaiting::Message(id, destinations) => {
                    // Durable: the session answers, and the client has
                    // its 250 (checked: that, and nothing else).
                    let reply = self.answer_store(id, Ok(QueueId(id)))?;
                    if !reply.starts_with("250 ") {
                        return Err(format!("{id} durable, but the session answered {reply:?}"));
                    }
                    self.report.messages_acknowledged += 1;
                    self.queue_message(id, destinations)?;
                }
                Awaiting::Notification(id, destination) => {
                    self.report.notifications += 1;
                    self.queue_message(id, vec![destination])?;
                }
                Awaiting::Outcome(id, r, status, at) => {
                    let Some(rcpt) = self
                        .messages
                        .get_mut(&id)
                        .and_then(|m| m.rcpts.get_mut(r as usize))
                    else {
                        continue;
                    };
                    if status.is_final() {
                        rcpt.final_at = Some(at);
                        rcpt.final_status = Some(status);
                        rcpt.delivered_durably |= matches!(status, Status::Delivered { .. });
                        self.touched.push(id);
                    }
                }
            }
        }
        Ok(())
    }

    /// The client waiting for message `id` hears how its store went;
    /// returns what the session answered.
    fn answer_store(
        &mut self,
        id: u64,
        result: Result<QueueId, StoreError>,
    ) -> Result<String, String> {
        let index = self
            .waiting
            .iter()
            .position(|w| *w == Some(id))
            .ok_or_else(|| format!("no client waits for {id}"))?;
        self.waiting[index] = None;
        let mut ctx = SimCtx {
            now_ms: self.now_ms,
            next_id: &mut self.next_id,
        };
        let session = &mut self.senders[index];
        session.stored(result, &mut ctx);
        let reply = take_output(session);
        Ok(reply)
    }

    /// A durable message: acknowledged, and its recipients queued (as
    /// the shard does after the `250`).
    fn queue_message(&mut self, id: u64, destinations: Vec<Destination>) -> Result<(), String> {
        let Some(msg) = self.messages.get_mut(&id) else {
            return Ok(());
        };
        msg.acknowledged = true;
        self.touched.push(id);
        let count = msg.rcpts.len();
        if self.spool().message_at(QueueId(id)).is_none() {
            return Err(format!(
                "message {id} acknowledged but not in the spool's index"
            ));
        }
        let mut groups: Vec<(Destination, Vec<QueuedRecipient>)> = Vec::new();
        for (r, destination) in destinations.into_iter().enumerate().take(count) {
            let item = QueuedRecipient {
                queue_id: QueueId(id),
                recipient: r as u32,
                attempts: 0,
            };
            match groups.iter_mut().find(|(d, _)| *d == destination) {
                Some((_, items)) => items.push(item),
                None => groups.push((destination, vec![item])),
            }
        }
        for (destination, items) in groups {
            let actions = self
                .queues
                .push(&destination, &items, Status::Pending, self.now_ms);
            self.act(actions)?;
        }
        Ok(())
    }

    fn act(&mut self, mut actions: Vec<Action>) -> Result<(), String> {
        // The queue lists them in its tables' hash order, which differs
        // from run to run; a seed must replay exactly.
        actions.sort_by(|a, b| match (a, b) {
            (Action::Open(d, l), Action::Open(e, m)) => (d.as_str(), l).cmp(&(e.as_str(), m)),
            (Action::Open(..), Action::Wake(_)) => std::cmp::Ordering::Less,
            (Action::Wake(_), Action::Open(..)) => std::cmp::Ordering::Greater,
            (Action::Wake(w), Action::Wake(x)) => w.conn.cmp(&x.conn),
        });
        let mut work: VecDeque<Action> = actions.into();
        while let Some(action) = work.pop_front() {
            let Action::Open(destination, lane) = action else {
                continue; // no idle connections here: every one asks each round
            };
            // The queue chose the source (the lane with room in the
            // site); one whose warm-up allowance is spent rests until the
            // next hour, and the pool's other source carries on, as the
            // shard does.
            let source = pool_of(&self.egress)
                .source_named(&lane)
                .filter(|s| s.allows(self.now_ms))
                .cloned();
            let Some(source) = source else {
                let next_hour = (self.now_ms / HOUR_MS + 1) * HOUR_MS;
                let reason = format!("warm-up: source {lane} spent its allowance");
                self.report.warm_up_rests += 1;
                self.queues
                    .suspend_site_of(&destination, &lane, next_hour, reason, self.now_ms);
                work.extend(self.queues.closed(&destination, &lane, None, self.now_ms));
                continue;
            };
            let site = site_of(&destination);
            if let Some(&until) = self
                .paused
                .get(&(site, lane.clone()))
                .filter(|&&u| u > self.now_ms)
            {
                return Err(format!(
                    "a connection opened to {destination} at site {site} from source {lane}, paused after a failed connection until {} ms",
                    until - START_MS
                ));
            }
            let open = self.open.entry(destination.clone()).or_insert(0);
            *open += 1;
            if *open > self.params.connections_max {
                return Err(format!(
                    "{destination} has {open} connections open, its limit is {}",
                    self.params.connections_max
                ));
            }
            if *open == self.params.connections_max {
                self.report.opened_at_destination_limit += 1;
            }
            let at_site = self.site_open.entry((site, lane.clone())).or_insert(0);
            *at_site += 1;
            if *at_site > self.params.site_connections_max {
                return Err(format!(
                    "site {site} has {at_site} connections open from source {lane}, its limit is {}",
                    self.params.site_connections_max
                ));
            }
            if *at_site == self.params.site_connections_max {
                self.report.opened_at_site_limit += 1;
            }
            let key = self.next_conn;
            self.next_conn += 1;
            self.report.connections += 1;
            // Every fourth next hop is a smart host that wants AUTH (and
            // now and then refuses the right password).
            let smart_host = host_index(&destination) % 4 == 2;
            let credentials = smart_host
                .then(|| Arc::new(OutboundCredentials::new(SIM_USER, SIM_PASSWORD, true)));
            let mut hop = Hop::default();
            hop.auth = smart_host.then(|| HopAuth {
                expected: format!(
                    "AUTH PLAIN {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("\0{SIM_USER}\0{SIM_PASSWORD}"))
                ),
                refuse: self.rng.chance(HOP_AUTH_REFUSED_PER_1K, 1000),
                done: false,
            });
            let mut conn = Conn {
                destination,
                lane,
                client: Client::new(source.client.clone(), TlsMode::Off).with_auth(credentials),
                source,
                hop,
                transactions: 0,
                service_closing: None,
            };
            // The greeting, EHLO: the client is ready, or the connection over.
            self.drip(&mut conn.client, hop::GREETING);
            self.converse(&mut conn, &Host::default());
            self.conns.insert(key, conn);
        }
        Ok(())
    }

    /// A connection is over: its room goes back to the queue.
    fn closed(&mut self, conn: Conn) -> Result<(), String> {
        if let Some(open) = self
            .site_open
            .get_mut(&(site_of(&conn.destination), conn.lane.clone()))
        {
            *open -= 1;
        }
        if let Some(open) = self.open.get_mut(&conn.destination) {
            *open -= 1;
        }
        let actions = self
            .queues
            .closed(&conn.destination, &conn.lane, None, self.now_ms);
        self.act(actions)
    }

    /// One transaction on connection `key`, or its end: baton's client
    /// speaks SMTP with the scripted next hop, and what it reports decides
    /// each recipient's outcome, appended after the answer.
    fn transaction(&mut self, key: u64) -> Result<(), String> {
        let mut conn = self.conns.remove(&key).expect("open");
        let destination = conn.destination.clone();
        let waiter = Waiter {
            shard: 0,
            conn: key,
        };
        let ready = conn.client.is_idle() && !conn.client.is_closed();
        if conn.transactions == 0 && self.host_down(&destination) {
            return self.connect_failed(conn);
        }
        // A message counts against its source's warm-up allowance; spent,
        // the connection ends and the pool picks another (the shard's
        // order: counted first, given back when nothing is taken).
        if ready && !conn.source.take_message(self.now_ms) {
            conn.client.quit();
            self.converse(&mut conn, &Host::default());
            return self.closed(conn);
        }
        // No other domain may take the connection over: each has a next
        // hop of its own here (the shard's `may_carry`).
        let taken = ready.then(|| {
            self.queues.take_in_site(
                &destination,
                &conn.lane,
                waiter,
                false,
                self.now_ms,
                &mut |_| false,
            )
        });
        if ready && !matches!(taken, Some(Take::Batch(_))) {
            conn.source.give_back();
        }
        let items = match taken {
            Some(Take::Batch(items)) => items,
            _ => {
                if conn.transactions == 0 && ready {
                    // Opened for nothing: the queue asked for a connection
                    // and another took the work first. Now and then is
                    // fine; again and again is a loop.
                    self.report.connections_idle += 1;
                    let streak = self.idle_streak.entry(destination.clone()).or_insert(0);
                    *streak += 1;
                    let streak = *streak;
                    self.log(format!(
                        "{destination}: a connection from {} found nothing to take ({streak} in a row)",
                        conn.lane
                    ));
                    if streak > IDLE_CONNECTIONS_IN_A_ROW_MAX {
                        return Err(format!(
                            "{destination}: {streak} connections in a row opened for nothing (a connection loop)"
                        ));
                    }
                }
                conn.client.quit();
                self.converse(&mut conn, &Host::default());
                return self.closed(conn);
            }
        };
        conn.transactions += 1;
        self.idle_streak.remove(&destination);
        let site = site_of(&destination);
        if let Some(&until) = self
            .suspended
            .get(&(site, conn.lane.clone()))
            .filter(|&&u| u > self.now_ms)
        {
            return Err(format!(
                "a transaction for {destination} at site {site} from source {}, suspended by a 4.7.28 until {} ms",
                conn.lane,
                until - START_MS
            ));
        }
        if &*conn.lane == WARMING {
            self.warmup.sent(self.now_ms)?;
        }
        let host = self
            .hosts
            .get(host_index(&destination))
            .copied()
            .ok_or_else(|| format!("no next hop for {destination}"))?;
        // Read once, as the shard does: the envelope, the body and the
        // settlement all come from this record.
        let record = self.record(items[0].queue_id)?;
        let envelope = envelope(&record, &items)?;
        let per_recipient = if host.down_until_ms > self.now_ms {
            // Gone: the connection is lost before any reply.
            conn.client.connection_lost();
            None
        } else {
            conn.client
                .send_message(envelope)
                .map_err(|e| format!("the client refused an envelope: {e:?}"))?;
            self.converse(&mut conn, &host)
        };
        if conn.hop.unauthenticated_mail {
            return Err(format!(
                "baton's client sent MAIL to {destination} before AUTH succeeded"
            ));
        }
        // What the next hop took, whatever baton was told.
        if let Some((true, verdicts)) = conn.hop.done.take() {
            for (item, verdict) in items.iter().zip(verdicts) {
                if verdict == Verdict::Accept {
                    self.deliver(item.queue_id.0, item.recipient)?;
                }
            }
        }
        let per_recipient = per_recipient.unwrap_or_else(|| {
            let lost = Reply::new(421, Some((4, 4, 2)), "connection lost");
            vec![ClientOutcome::Deferred(lost); items.len()]
        });
        if per_recipient.len() != items.len() {
            return Err(format!(
                "the client reported {} outcomes for {} recipients",
                per_recipient.len(),
                items.len()
            ));
        }
        let results: Vec<_> = items.into_iter().zip(per_recipient).collect();
        if results
            .iter()
            .any(|(_, o)| matches!(o, ClientOutcome::Delivered(_)))
        {
            // As the shard does: a good transaction grows a lane that a
            // suspension cut to one connection.
            self.queues.succeeded(&destination, &conn.lane, self.now_ms);
        }
        self.settle(&destination, &conn.lane, &record, &results)?;
        if let Some(reply) = conn.service_closing.take() {
            self.service_closing(&destination, &conn.lane, &reply);
        }
        if conn.client.is_closed() {
            return self.closed(conn);
        }
        self.conns.insert(key, conn);
        Ok(())
    }

    /// The next hop said `421` (its service closing), as the shard's
    /// `out_closed` hears it: the shaping rules hear the reply, and the
    /// site pauses from this source.
    fn service_closing(&mut self, destination: &Destination, lane: &Arc<str>, reply: &Reply) {
        self.report.services_closing += 1;
        self.hear(destination, lane, reply);
        self.queues
            .failed(destination, lane, true, PAUSE_MS, PAUSE_MS_MAX, self.now_ms);
        let until = self
            .paused
            .entry((site_of(destination), lane.clone()))
            .or_insert(0);
        *until = (*until).max(self.now_ms + PAUSE_MS);
    }

    /// The shard's `listen`: the shipped classifier and the rules act on
    /// the reply's site; the checker keeps its own account of a `4.7.28`
    /// suspension.
    fn hear(&mut self, destination: &Destination, lane: &Arc<str>, reply: &Reply) {
        let category = self.classifier.classify(reply);
        self.shaping_rules.apply(
            &self.queues,
            destination,
            lane,
            reply,
            category,
            self.now_ms,
        );
        if reply.enhanced == Some((4, 7, 28)) {
            // No transaction at this site from this source until the
            // rule's suspension is over.
            let until = self
                .suspended
                .entry((site_of(destination), lane.clone()))
                .or_insert(0);
            *until = (*until).max(self.now_ms + SUSPEND_MS);
        }
    }

    /// Whether `destination`'s next hop is down now.
    fn host_down(&self, destination: &Destination) -> bool {
        self.hosts
            .get(host_index(destination))
            .is_some_and(|h| h.down_until_ms > self.now_ms)
    }

    /// No host answered a new connection: as the shard's
    /// `destination_down`, the site pauses from this source (the pause
    /// doubling with failures in a row), and when no other connection of
    /// the domain is open, its ready recipients are deferred rather than
    /// left to wait for one that would fail the same way.
    fn connect_failed(&mut self, conn: Conn) -> Result<(), String> {
        let destination = conn.destination.clone();
        let lane = conn.lane.clone();
        let others = self.queues.failed(
            &destination,
            &lane,
            true,
            PAUSE_MS,
            PAUSE_MS_MAX,
            self.now_ms,
        );
        let until = self
            .paused
            .entry((site_of(&destination), lane.clone()))
            .or_insert(0);
        *until = (*until).max(self.now_ms + PAUSE_MS);
        self.report.connections_refused += 1;
        self.log(format!(
            "{destination}: no host answered (from source {lane}); {others} other connections"
        ));
        if others == 0 {
            let items = self.queues.drain_ready(&destination);
            let refused = Reply::new(421, Some((4, 4, 1)), "no host answered");
            let mut start = 0;
            while start < items.len() {
                let id = items[start].queue_id;
                let end = items[start..]
                    .iter()
                    .position(|i| i.queue_id != id)
                    .map_or(items.len(), |n| start + n);
                let record = self.record(id)?;
                let results: Vec<_> = items[start..end]
                    .iter()
                    .map(|i| (*i, ClientOutcome::Deferred(refused.clone())))
                    .collect();
                self.settle(&destination, &lane, &record, &results)?;
                start = end;
            }
        }
        self.closed(conn)
    }

    /// Writes what the client has to the next hop and its replies back,
    /// drip-fed in pieces, until the client has nothing more to say;
    /// returns the outcomes of a transaction that ended.
    fn converse(&mut self, conn: &mut Conn, host: &Host) -> Option<Vec<ClientOutcome>> {
        let mut done = None;
        loop {
            if conn.client.body_needed() {
                // The shard writes the body from the spool here.
                conn.client.body_sent();
            }
            if conn.client.output().is_empty() {
                break;
            }
            let output = conn.client.output().to_vec();
            conn.client.consume_output(output.len());
            let (defer, fail) = (host.defer_per_1k, host.fail_per_1k);
            // Rolled ahead: the end of data refused for the whole message.
            let data_refused = defer > 0 && self.rng.chance(DATA_REFUSED_PER_1K, 1000);
            conn.hop.close_at_dot = defer > 0 && self.rng.chance(CLOSING_AT_DOT_PER_1K, 1000);
            let rng = &mut self.rng;
            let mut rcpt = || match rng.range(0, 1000) {
                roll if defer > 0 && roll < THROTTLE_PER_1K => Verdict::Throttle,
                roll if defer > 0 && roll < THROTTLE_PER_1K + CLOSING_PER_1K => Verdict::Closing,
                roll if roll < defer => Verdict::Defer,
                roll if roll < defer + fail => Verdict::Refuse,
                _ => Verdict::Accept,
            };
            let replies = conn.hop.input(&output, &mut rcpt, &mut || !data_refused);
            let drop_now =
                conn.hop.done.is_some() && self.rng.chance(DROP_BEFORE_REPLY_PER_1K, 1000);
            if drop_now {
                conn.client.connection_lost();
            } else {
                self.drip(&mut conn.client, &replies);
            }
            while let Some(event) = conn.client.poll_event() {
                match event {
                    Event::TransactionDone { per_recipient } => done = Some(per_recipient),
                    Event::Closed {
                        reason: CloseReason::ServiceClosing(reply),
                    } => conn.service_closing = Some(reply),
                    _ => {}
                }
            }
            if conn.client.is_closed() {
                break;
            }
        }
        if done.is_some() && !conn.client.is_closed() && self.rng.chance(SILENT_CLOSE_PER_1K, 1000)
        {
            conn.client.connection_lost();
            while conn.client.poll_event().is_some() {}
        }
        done
    }

    /// Hands `bytes` to the client whole, or now and then in pieces of
    /// random size, as a socket may deliver them.
    fn drip(&mut self, client: &mut Client, mut bytes: &[u8]) {
        let split = self.rng.chance(SPLIT_PER_1K, 1000);
        while !bytes.is_empty() {
            let n = piece(&mut self.rng, split, bytes.len());
            client.receive(&bytes[..n]);
            bytes = &bytes[n..];
        }
    }

    /// Message `id`'s record, read from the spool as the shard reads it.
    fn record(&self, id: QueueId) -> Result<Record, String> {
        let at = self
            .spool()
            .message_at(id)
            .ok_or_else(|| format!("{} queued but not in the spool", id.0))?;
        self.spool()
            .read(at)
            .map_err(|e| format!("read {}: {e}", id.0))
    }

    /// What the client reported for one message's batch, settled by the
    /// shard's own ledger (`baton::delivery::settle`): the fates, the
    /// outcome records and the message's one notification, in the
    /// shard's order. Deferred recipients go back to the queue.
    fn settle(
        &mut self,
        destination: &Destination,
        lane: &Arc<str>,
        record: &Record,
        results: &[(QueuedRecipient, ClientOutcome)],
    ) -> Result<(), String> {
        let Some((first, _)) = results.first() else {
            return Ok(());
        };
        let id = first.queue_id.0;
        let view = record.message().map_err(|e| format!("decode {id}: {e}"))?;
        let (now_ms, next_id) = (self.now_ms, &mut self.next_id);
        let settled = Ledger {
            spool: self.spool.as_ref().expect("open"),
            writer: self.writer.as_mut().expect("open"),
            delivery: &self.delivery,
            hostname: HOSTNAME,
        }
        .settle(&view, results, (None, None), now_ms, || {
            *next_id += 1;
            QueueId(*next_id - 1)
        });
        if let Some((queue_id, err)) = settled.unrecorded.first() {
            return Err(format!("append the outcome of {}: {err}", queue_id.0));
        }
        let max_age_ms = self.delivery.max_age.as_millis() as u64;
        let arrival_ms = view.arrival_ms;
        for decided in &settled.decided {
            let item = decided.item;
            let r = item.recipient;
            // Shaping that listens, as the shard's `listen` runs it: the
            // shipped classifier and the rules act on the queue's site.
            let reply = match &decided.fate {
                Fate::Deferred { reply, .. } => Some(*reply),
                Fate::Failed { reply, expired } => (!expired).then_some(&**reply),
                Fate::Delivered(_) => None,
            };
            if let Some(reply) = reply {
                self.hear(destination, lane, reply);
            }
            match decided.fate {
                Fate::Deferred {
                    next_attempt_ms, ..
                } => {
                    if now_ms.saturating_sub(arrival_ms) >= max_age_ms {
                        return Err(format!(
                            "{id}#{r} deferred again past max_age ({} ms old)",
                            now_ms - arrival_ms
                        ));
                    }
                    self.queues.schedule(destination, item, next_attempt_ms);
                }
                Fate::Failed { .. } => self.report.recipients_failed += 1,
                Fate::Delivered(_) => {}
            }
            if let Some(appended) = decided.appended {
                self.appended(item, decided.status, appended)?;
            }
        }
        if let Some(held) = settled.held {
            self.held.push(held.after, held);
        }
        match settled.notification {
            None => {}
            Some(Err(err)) => return Err(format!("append a notification about {id}: {err}")),
            Some(Ok(notification)) => {
                let notice = notification.queue_id.0;
                let msg = self
                    .messages
                    .get_mut(&id)
                    .ok_or_else(|| format!("a notification about {id}, a message not known"))?;
                if msg.notice_of.is_some() {
                    return Err(format!("{notice}: a notification about {id}, itself one"));
                }
                msg.notices.push(notice);
                let mut notice_msg = Msg::new(notification.at, now_ms, 1);
                notice_msg.notice_of = Some(id);
                self.messages.insert(notice, notice_msg);
                self.arrivals.push_back(notice);
                self.awaiting.push(
                    notification.ticket,
                    Awaiting::Notification(notice, destination_of(view.reverse_path)),
                );
                self.log(format!("notification {notice} about {id}"));
            }
        }
        Ok(())
    }

    /// A recipient's outcome appended: it may now survive a crash.
    fn appended(
        &mut self,
        item: QueuedRecipient,
        status: Status,
        appended: Appended,
    ) -> Result<(), String> {
        let (id, r) = (item.queue_id.0, item.recipient);
        if let Some(rcpt) = self
            .messages
            .get_mut(&id)
            .and_then(|m| m.rcpts.get_mut(r as usize))
        {
            if matches!(status, Status::Delivered { .. }) && rcpt.deliveries == 0 {
                return Err(format!(
                    "{id}#{r}: recorded delivered, but the next hop never took it"
                ));
            }
            if status.is_final() {
                rcpt.final_appended = Some(status);
            }
        }
        self.awaiting.push(
            appended.ticket,
            Awaiting::Outcome(id, r, status, appended.at),
        );
        Ok(())
    }

    /// The next hop took recipient `r` of message `id`.
    fn deliver(&mut self, id: u64, r: u32) -> Result<(), String> {
        self.report.deliveries += 1;
        if self.finished.contains(&id) {
            return Err(format!(
                "{id}#{r} delivered again: every recipient of {id} was durably final"
            ));
        }
        let Some(rcpt) = self
            .messages
            .get_mut(&id)
            .and_then(|m| m.rcpts.get_mut(r as usize))
        else {
            return Err(format!(
                "delivered {id}#{r}, a message the spool never acknowledged"
            ));
        };
        if rcpt.delivered_durably {
            return Err(format!(
                "{id}#{r} delivered again after its delivery was recorded durably"
            ));
        }
        rcpt.deliveries += 1;
        if rcpt.deliveries > 1 {
            self.report.repeated_deliveries += 1;
        }
        Ok(())
    }

    /// Moves the messages whose every recipient is durably final out of
    /// the working set, once they pass the checks on notifications; and
    /// checks that no recipient outlives `max_age` by more than a retry.
    fn prune(&mut self) -> Result<(), String> {
        let max_age_ms = self.delivery.max_age.as_millis() as u64;
        let slack_ms = self
            .delivery
            .retry_schedule
            .iter()
            .max()
            .map_or(0, |d| d.as_millis() as u64)
            + MAX_AGE_SLACK_MS;
        // The oldest first; the walk stops at the first young one.
        while self
            .arrivals
            .front()
            .is_some_and(|id| !self.messages.contains_key(id))
        {
            self.arrivals.pop_front();
        }
        for id in &self.arrivals {
            let Some(msg) = self.messages.get(id) else {
                continue;
            };
            let age_ms = self.now_ms.saturating_sub(msg.arrival_ms);
            if age_ms <= max_age_ms + slack_ms {
                break;
            }
            if !msg.acknowledged {
                continue;
            }
            if let Some(r) = msg.rcpts.iter().position(|r| r.final_appended.is_none()) {
                return Err(format!(
                    "{id}#{r} still queued {age_ms} ms after it arrived, past max_age ({max_age_ms} ms) and a retry"
                ));
            }
        }
        // Only a message something happened to can have become final (a
        // walk of the whole working set, every time, was a thirtieth of
        // a seed); after a restart, every one may have.
        let ids = if std::mem::take(&mut self.prune_all) {
            self.touched.clear();
            self.messages.keys().copied().collect()
        } else {
            std::mem::take(&mut self.touched)
        };
        for id in ids {
            let Some(msg) = self.messages.get(&id) else {
                continue;
            };
            if msg.acknowledged && msg.rcpts.iter().all(|r| r.final_status.is_some()) {
                check_notices(id, msg)?;
                self.messages.remove(&id);
                self.finished.insert(id);
            }
        }
        Ok(())
    }

    /// Acknowledged recipients with no durable final outcome yet.
    fn unfinished(&self) -> usize {
        self.messages
            .values()
            .filter(|m| m.acknowledged)
            .flat_map(|m| &m.rcpts)
            .filter(|r| r.final_status.is_none())
            .count()
    }

    /// Whether any acknowledged recipient has no durable final outcome.
    fn any_unfinished(&self) -> bool {
        self.messages
            .values()
            .any(|m| m.acknowledged && m.rcpts.iter().any(|r| r.final_status.is_none()))
    }

    /// Opens the spool and its writer, and queues what it recovered.
    fn start(&mut self) -> Result<(), String> {
        let (spool, recovered) =
            Spool::open(self.config.clone()).map_err(|e| format!("recovery failed: {e}"))?;
        self.next_id = self.next_id.max(recovered.queue_id_max.0 + 1);
        let writer = spool.writer(0).map_err(|e| format!("writer: {e}"))?;
        self.spool = Some(spool);
        self.writer = Some(writer);
        self.check_recovered(&recovered)?;
        // The warm-up counts as the housekeeper last saved them: what
        // came after is forgotten, and may be sent again.
        self.egress = Egress::new(
            &self.egress_config,
            &self.client_config,
            Some(&self.warmup_file),
        );
        let kept = self
            .egress
            .warmups()
            .find(|(name, _)| *name == WARMING)
            .map(|(_, w)| w.state())
            .unwrap_or_default();
        let (today, hour) = (self.now_ms / DAY_MS, self.now_ms / HOUR_MS);
        self.warmup.restarted(
            self.now_ms,
            if kept.day == today { kept.sent } else { 0 },
            if kept.hour == hour { kept.hour_sent } else { 0 },
        );
        self.queues = queues(
            self.params.connections_max,
            self.params.site_connections_max,
            pool_of(&self.egress).lanes(),
        );
        // Recovery returns them in no particular order; the queue takes
        // them in one, so that a seed replays exactly.
        let mut recovered_pending: Vec<_> = recovered.pending.iter().collect();
        recovered_pending.sort_by_key(|p| (p.queue_id, p.recipient));
        // A message's recipients come one after another: its record is
        // read once for all of them.
        let mut last: Option<(baton_spool::RecordRef, Record)> = None;
        for pending in recovered_pending {
            let record = match last.take() {
                Some((at, record)) if at == pending.message => record,
                _ => self
                    .spool()
                    .read(pending.message)
                    .map_err(|e| format!("read a recovered message: {e}"))?,
            };
            let record = &last.insert((pending.message, record)).1;
            let view = record.message().map_err(|e| format!("decode: {e}"))?;
            let Some(rcpt) = view.recipients().nth(pending.recipient as usize) else {
                return Err(format!(
                    "{} has no recipient {}",
                    pending.queue_id.0, pending.recipient
                ));
            };
            let item = QueuedRecipient {
                queue_id: pending.queue_id,
                recipient: pending.recipient,
                attempts: 0,
            };
            let status = match pending.status {
                Status::Deferred {
                    attempts,
                    next_attempt_ms,
                } => Status::Deferred {
                    attempts,
                    next_attempt_ms,
                },
                _ => Status::Pending,
            };
            self.queues
                .restore(&destination_of(rcpt.address), item, status);
        }
        Ok(())
    }

    /// After a crash: what recovery found against what was promised.
    fn check_recovered(&mut self, recovered: &baton_spool::Recovered) -> Result<(), String> {
        self.prune_all = true;
        let mut pending: HashMap<u64, Vec<u32>> = HashMap::new();
        for p in &recovered.pending {
            if self.finished.contains(&p.queue_id.0) {
                return Err(format!(
                    "{}#{}: every recipient of its message was durably final, yet recovery queues it again",
                    p.queue_id.0, p.recipient
                ));
            }
            pending.entry(p.queue_id.0).or_default().push(p.recipient);
        }
        for (&id, msg) in &self.messages {
            let here = pending.get(&id);
            for (r, rcpt) in msg.rcpts.iter().enumerate() {
                let is_pending = here.is_some_and(|p| p.contains(&(r as u32)));
                match (&rcpt.final_status, is_pending) {
                    (Some(_), true) if rcpt.rotted => {}
                    (Some(status), true) => {
                        return Err(format!(
                            "{id}#{r}: its final outcome ({status:?}) was durable, yet recovery queues it again"
                        ))
                    }
                    (None, false) if msg.rotted => {}
                    (None, false) if msg.acknowledged && rcpt.final_appended.is_none() => {
                        return Err(format!(
                            "{id}#{r}: acknowledged with 250, neither final nor recovered: lost (its record at {:?})",
                            msg.at
                        ))
                    }
                    _ => {}
                }
            }
        }
        // Messages that were not acknowledged: kept if their record
        // survived (baton delivers them; the client may send again), else
        // forgotten. A recipient recovery does not return is final: by an
        // outcome that survived (or the message's, lost unacknowledged).
        self.messages
            .retain(|id, msg| msg.acknowledged || pending.contains_key(id));
        for (id, msg) in self.messages.iter_mut() {
            msg.acknowledged = true;
            let here = pending.get(id);
            let mut rotted_away = 0;
            for (r, rcpt) in msg.rcpts.iter_mut().enumerate() {
                let is_pending = here.is_some_and(|p| p.contains(&(r as u32)));
                if is_pending {
                    // A final outcome that did not survive: tried again.
                    rcpt.final_appended = None;
                    if rcpt.rotted {
                        // Its durable outcome rotted away: as if never
                        // made (it may fail again, and be told of again).
                        rcpt.final_status = None;
                        rcpt.final_at = None;
                        rcpt.delivered_durably = false;
                        rotted_away += 1;
                    }
                } else if rcpt.final_status.is_none() {
                    rcpt.final_status = Some(rcpt.final_appended.unwrap_or(Status::Removed));
                    rcpt.delivered_durably |=
                        matches!(rcpt.final_status, Some(Status::Delivered { .. }));
                }
                rcpt.rotted = false;
            }
            msg.notices_allowed_extra += rotted_away;
        }
        // Notifications the crash took are no longer counted.
        let alive: HashSet<u64> = self.messages.keys().copied().collect();
        for msg in self.messages.values_mut() {
            msg.notices
                .retain(|n| alive.contains(n) || self.finished.contains(n));
        }
        Ok(())
    }

    /// A crash: `power` cut (unsynced writes lost, torn or reordered) or
    /// the process killed (the page cache survives); then a restart, in
    /// which the power may go again, in the middle of recovery.
    fn restart(&mut self, power: bool) -> Result<(), String> {
        // A crash between a notification and the outcomes behind it (held
        // for its datasync, or not yet durable): the recipients are tried
        // again, and may fail and be told of again, or be delivered after
        // all, the notification already on its way.
        for msg in self.messages.values_mut() {
            if !msg.notices.is_empty() && msg.rcpts.iter().any(|r| r.final_status.is_none()) {
                msg.notices_allowed_extra += 1;
            }
        }
        self.go_down(power)?;
        loop {
            let armed = self.params.faults && self.rng.chance(CUT_IN_RECOVERY_PER_1K, 1000);
            if armed {
                self.names
                    .arm(self.rng.range(0, NAME_OPERATIONS_BEFORE_CUT_MAX));
            }
            let started = self.start();
            if self.names.disarm() {
                // What recovery found or checked no longer stands: the
                // next recovery is checked instead.
                self.log("the power goes during recovery".into());
                self.report.power_cuts_in_calls += 1;
                self.go_down(true)?;
                continue;
            }
            started?;
            break;
        }
        self.log(format!(
            "restarted: {} recipients unfinished",
            self.unfinished()
        ));
        Ok(())
    }

    /// The process goes: everything in its memory with it, and with
    /// `power`, what the disk and the directory had not synced.
    fn go_down(&mut self, power: bool) -> Result<(), String> {
        self.log(if power {
            "power cut".into()
        } else {
            "process killed".to_string()
        });
        self.conns.clear();
        self.open.clear();
        self.site_open.clear();
        // A suspension lives in the queue's memory: a restart forgets it.
        self.suspended.clear();
        self.paused.clear();
        // The clients' connections die with the process.
        self.senders.clear();
        self.waiting.clear();
        self.auth.clear();
        self.syncs.clear();
        self.compactor = None;
        self.compacting.clear();
        self.awaiting = Gate::default();
        self.held = Gate::default();
        self.writer = None;
        self.spool = None;
        if power {
            self.report.power_cuts += 1;
            self.disk
                .power_cut(&mut self.rng, self.params.reorder)
                .map_err(|e| format!("power cut: {e}"))?;
            self.names
                .power_cut(&mut self.rng)
                .map_err(|e| format!("power cut: {e}"))?;
        } else {
            self.report.crashes += 1;
            self.disk.crash();
            self.names.crash();
        }
        if self.rng.chance(ROT_PER_1K_RESTARTS, 1000) {
            self.rot()?;
        }
        Ok(())
    }

    /// Bit rot while baton is down: one bit of one durable record (an
    /// acknowledged message, or a recipient's final outcome) flips. The
    /// record is lost to recovery's CRC, the rest of its segment is not:
    /// the message may be lost, the recipient may come back pending and
    /// be delivered again; the checker expects that much and no more.
    fn rot(&mut self) -> Result<(), String> {
        let mut candidates = Vec::new();
        for (&id, msg) in &self.messages {
            if msg.acknowledged {
                candidates.push((msg.at, id, None));
            }
            for (r, rcpt) in msg.rcpts.iter().enumerate() {
                if let (Some(at), Some(_)) = (rcpt.final_at, rcpt.final_status) {
                    candidates.push((at, id, Some(r)));
                }
            }
        }
        if candidates.is_empty() {
            return Ok(());
        }
        let (at, id, rcpt) = candidates[self.rng.range(0, candidates.len() as u64) as usize];
        let flipped = self
            .disk
            .flip_bit(&self.config.path, at, QueueId(id), &mut self.rng)
            .map_err(|e| format!("bit flip: {e}"))?;
        if !flipped {
            return Ok(());
        }
        let msg = self.messages.get_mut(&id).expect("a candidate");
        match rcpt {
            None => {
                msg.rotted = true;
                self.log(format!("a bit of message {id}'s record flips (at {at:?})"));
            }
            Some(r) => {
                msg.rcpts[r].rotted = true;
                self.log(format!("a bit of {id}#{r}'s outcome flips (at {at:?})"));
            }
        }
        Ok(())
    }

    /// The spool stays within `size_bytes_max`, as `du` would count it:
    /// its segment files, less the reserve of spare segments kept for a
    /// full disk and the files quarantined for the operator.
    fn check_disk_use(&mut self) -> Result<(), String> {
        // Outcomes, notifications and compaction's copies are never
        // refused (they settle or move mail already accepted, and free the
        // spool), so they may take it past its limit while new mail waits:
        // by up to a quarter in these runs. Half is a runaway (new mail
        // filled the segments outcomes took past the limit, and the spool
        // reached twice its limit, until the simulator found it).
        self.check_disk_use_within(SPOOL_BYTES_MAX + SPOOL_BYTES_MAX / 2)?;
        let used = self.spool().used_bytes();
        self.report.spool_bytes_peak = self.report.spool_bytes_peak.max(used);
        Ok(())
    }

    fn check_disk_use_within(&self, bound: u64) -> Result<u64, String> {
        let counted = |name: &str| name.ends_with(".seg") && !name.starts_with("spare-");
        let mut bytes = 0;
        let dir = std::fs::read_dir(&self.config.path).map_err(|e| e.to_string())?;
        for entry in dir {
            let entry = entry.map_err(|e| e.to_string())?;
            if counted(&entry.file_name().to_string_lossy()) {
                // The preparer thread may rename or remove a file meanwhile.
                bytes += entry.metadata().map_or(0, |m| m.len());
            }
        }
        if bytes > bound {
            let mut files: Vec<String> = std::fs::read_dir(&self.config.path)
                .map_err(|e| e.to_string())?
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| counted(name))
                .collect();
            files.sort();
            return Err(format!(
                "the spool's segments take {bytes} bytes, over its bound of {bound} ({:?}; {files:?})",
                self.spool().stats()
            ));
        }
        Ok(bytes)
    }

    /// After reclamation: every acknowledged message with a recipient not
    /// final is still readable in the spool.
    fn check_kept(&self) -> Result<(), String> {
        // Segments go whole: one record read back per segment proves the
        // rest of that segment's are still there (reading every pending
        // message's was a fortieth of a seed).
        let mut readable: HashMap<baton_spool::SegmentId, bool> = HashMap::new();
        for (&id, msg) in &self.messages {
            // A recipient with no final outcome, appended or durable (a
            // message whose record rotted away is final: `Removed`).
            let pending = |r: &Rcpt| r.final_appended.is_none() && r.final_status.is_none();
            if msg.acknowledged && msg.rcpts.iter().any(pending) {
                let kept = self.spool().message_at(QueueId(id)).is_some_and(|at| {
                    *readable
                        .entry(at.segment)
                        .or_insert_with(|| self.spool().read(at).is_ok())
                });
                if !kept {
                    return Err(format!(
                        "reclamation took message {id} (record at {:?}) while a recipient of it is pending",
                        msg.at
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_final(&self) -> Result<(), String> {
        self.spool()
            .reclaim()
            .map_err(|e| format!("reclamation failed: {e}"))?;
        self.check_disk_use_within(END_SEGMENTS_MAX * SEGMENT_BYTES)?;
        for (&id, msg) in &self.messages {
            check_notices(id, msg)?;
            for (r, rcpt) in msg.rcpts.iter().enumerate() {
                match rcpt.final_status {
                    Some(Status::Delivered { .. }) if rcpt.deliveries == 0 => {
                        return Err(format!("{id}#{r} recorded delivered but never delivered"))
                    }
                    None => return Err(format!("{id}#{r} never finished")),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// The queue as the engine builds it for routes: each destination with
/// `connections_max` connections of its own, and the destinations grouped
/// into [`SITES`] sites (`d<n>.test` in `s<n % SITES>`, as a route's next
/// hop groups its domains), each with `site_connections_max`.
/// The pool every destination's connections leave from.
fn pool_of(egress: &Egress) -> &Arc<baton::shaping::egress::Pool> {
    egress.pool(None).expect("the configuration's default pool")
}

fn queues(connections_max: usize, site_connections_max: usize, lanes: Lanes) -> Queues {
    Queues::with_policy(Policy {
        lanes_for: Box::new(move |_| lanes.clone()),
        shaping_for: Box::new(move |_| Shaping {
            connections_max,
            ..Shaping::default()
        }),
        site_for: Box::new(move |destination| {
            SiteOf::Known(
                site_of(destination).to_owned(),
                SiteShaping {
                    connections_max: site_connections_max,
                    message_rate_max: 0,
                },
            )
        }),
        ..Policy::default()
    })
}

/// `d<n>.test`'s next hop, `n` (the digits only: this runs for every
/// transaction).
fn host_index(destination: &Destination) -> usize {
    destination
        .as_str()
        .bytes()
        .skip(1)
        .take_while(u8::is_ascii_digit)
        .fold(0, |n, digit| n * 10 + usize::from(digit - b'0'))
}

/// The envelope of a batch: one message's recipients, from its record.
fn envelope(record: &Record, items: &[QueuedRecipient]) -> Result<Envelope, String> {
    let id = items[0].queue_id;
    let view = record
        .message()
        .map_err(|e| format!("decode {}: {e}", id.0))?;
    let addresses: Vec<&[u8]> = view.recipients().map(|r| r.address).collect();
    Ok(Envelope {
        reverse_path: view.reverse_path.to_vec(),
        mail_params: Vec::new(),
        recipients: items
            .iter()
            .map(|item| addresses[item.recipient as usize].to_vec())
            .collect(),
        size: view.body.len() as u64,
    })
}

/// The next piece of `len` bytes to hand over: all of them, or (`split`)
/// a random part.
fn piece(rng: &mut Rng, split: bool, len: usize) -> usize {
    if split {
        rng.range(1, len as u64 + 1) as usize
    } else {
        len
    }
}

/// Sites the destinations share.
const SITES: usize = 3;

/// The shipped classifier, compiled once for every seed: its hundreds of
/// patterns took a tenth of a short seed.
fn shipped_classifier() -> Arc<Classifier> {
    static SHIPPED: std::sync::OnceLock<Arc<Classifier>> = std::sync::OnceLock::new();
    SHIPPED
        .get_or_init(|| Arc::new(Classifier::shipped()))
        .clone()
}

/// `d<n>.test`'s site.
fn site_of(destination: &Destination) -> &'static str {
    const NAMES: [&str; SITES] = ["s0", "s1", "s2"];
    NAMES[host_index(destination) % SITES]
}

/// A message whose recipients are all final: one notification when any
/// failed, none otherwise, and never one about a notification; give or
/// take one for each crash that fell between a notification and the
/// outcomes behind it (the recipients are tried again: they may fail
/// again, or be delivered, the sender told already).
fn check_notices(id: u64, msg: &Msg) -> Result<(), String> {
    let failed = msg.rcpts.iter().any(Rcpt::failed_durably);
    let notices = msg.notices.len();
    if msg.notice_of.is_some() {
        return Ok(()); // checked when appended: never one about a notification
    }
    if msg.rotted {
        return Ok(()); // its record may be gone, and its recipients with it
    }
    if failed && notices == 0 {
        return Err(format!(
            "{id}: a recipient failed and every one is final, but the sender got no notification"
        ));
    }
    if !failed && notices > msg.notices_allowed_extra {
        return Err(format!(
            "{id}: notified ({:?}) though no recipient failed",
            msg.notices
        ));
    }
    if notices > 1 + msg.notices_allowed_extra {
        return Err(format!(
            "{id}: {notices} notifications ({:?}), {} crashes between one and its outcomes",
            msg.notices, msg.notices_allowed_extra
        ));
    }
    Ok(())
}

/// What a server session has written, taken: the client has read it.
fn take_output(session: &mut Session) -> String {
    let reply = String::from_utf8_lossy(session.output()).into_owned();
    let len = session.output().len();
    session.consume_output(len);
    reply
}
