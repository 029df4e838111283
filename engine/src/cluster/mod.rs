//! The cluster thread: baton nodes that keep their own spools share, through
//! Redis (or Valkey), what must hold across them:
//!
//! - connection limits per site × source, as leases with an expiry
//!   ([`leases`], the `CLAIM` script): each connection a node opens holds
//!   one, renewed while it lives, so a dead node's lapse by themselves;
//! - sites' message rates, GCRA in Redis ([`rates`], the `RATE` script),
//!   taken a tenth of a second's worth at a time, so Redis is never on the
//!   per-message path;
//! - shaping actions (a rule's suspension or throttle) and operator
//!   actions (`baton site suspend`, `resume`), on the stream
//!   `baton:actions`, applied by every node as it reads them (within a
//!   tick, [`TICK`]);
//! - the suppression list's changes, on the stream `baton:suppression`,
//!   applied to each node's own list (lookups stay local); a node that was
//!   away reads on from its cursor (`<spool>/cluster-suppression.cursor`);
//! - heartbeats: who is alive, in `baton:nodes`.
//!
//! One thread per node talks to Redis; shards never wait on it. It reads
//! the queues' view of their lanes, asks Redis, and writes the answer
//! back (`crate::queue::Queues::set_leased`); the next sweep opens the
//! connections. When Redis cannot be reached, the node keeps to its share
//! of each limit (the limit divided by the live nodes it last knew,
//! `ClusterBound::Share`), says so in the log and in `/metrics`, and
//! claims leases for its open connections when Redis is back. Mail never
//! waits on Redis beyond that: nothing is lost or sent twice for it.

pub mod leases;
pub mod nodes;
pub mod rates;
mod scripts;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{Commands, Connection, Script, Value};

use crate::config::ClusterConfig;
use crate::policy::suppression::{Entry, Origin};
use crate::queue::{ClusterBound, SiteAction};
use crate::server::{unix_ms, Server};
use crate::shard::ShardMsg;
use leases::Leases;
use nodes::KnownNodes;
use rates::RateAsker;
use store::{lease_keys, RedisStore};

/// How often the thread looks at the queues and the streams when nothing
/// wakes it sooner.
pub const TICK: Duration = Duration::from_millis(50);
/// Changes waiting for the thread (announced actions, suppression
/// changes); past it a change is dropped and said so, never waited for.
pub const OUTBOX_MAX: usize = 65_536;
/// Stream entries read per call: a node back from an outage catches up in
/// steps, ticking between them.
const STREAM_READ_COUNT: usize = 1_000;
/// Actions the shared stream keeps: suspensions last minutes to hours,
/// and a node that starts reads back through them.
const ACTIONS_KEPT: usize = 10_000;
/// Between tries to reach Redis after a failure.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

const NODES_KEY: &str = "baton:nodes";
const NODE_PREFIX: &str = "baton:node:";
const ACTIONS_STREAM: &str = "baton:actions";
const SUPPRESSION_STREAM: &str = "baton:suppression";
const CURSOR_FILE: &str = "cluster-suppression.cursor";
/// The node count fallbacks divide by, kept across restarts.
const NODES_FILE: &str = "cluster-nodes";

/// A change this node made, for the others.
#[derive(Debug)]
pub enum Outgoing {
    Suppression { entry: Entry, added: bool },
}

/// A live node, as the last heartbeat saw it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub heartbeat_ms_ago: u64,
    pub version: String,
    pub started_ms: u64,
    pub leases: u64,
    /// Its limits are the cluster's (false: its fallback share).
    pub shared: bool,
}

/// A lane's leases on this node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseStatus {
    pub site: String,
    pub source: String,
    pub leases: usize,
}

/// What `GET /cluster` and `baton cluster status` show.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub node: String,
    pub redis: String,
    /// Redis answers: limits are shared. False: this node's share.
    pub connected: bool,
    /// The live nodes last known (at least this one).
    pub live_nodes: usize,
    pub nodes: Vec<NodeStatus>,
    pub leases: Vec<LeaseStatus>,
    pub last_error: Option<String>,
}

/// What the thread shares with the rest of the server.
pub struct Cluster {
    pub node: String,
    config: ClusterConfig,
    /// Redis answered the last call.
    pub connected: AtomicBool,
    pub live_nodes: AtomicUsize,
    /// Calls to Redis (a script, a stream read or append): each one round
    /// trip.
    pub redis_calls: AtomicU64,
    /// Times the node fell back to its share.
    pub fallbacks: AtomicU64,
    /// Changes dropped because the outbox was full.
    pub dropped: AtomicU64,
    status: ArcSwap<Status>,
    outbox: Sender<Outgoing>,
    inbox: Mutex<Option<Receiver<Outgoing>>>,
    actions: Mutex<Option<Receiver<SiteAction>>>,
    actions_tx: Sender<SiteAction>,
    started_ms: u64,
}

impl Cluster {
    /// The node's handle, before the server exists: the suppression list
    /// sends its changes to [`Cluster::share`] from the start.
    pub fn new(config: &ClusterConfig, hostname: &str) -> Cluster {
        let (outbox, inbox) = crossbeam_channel::bounded(OUTBOX_MAX);
        let (actions_tx, actions) = crossbeam_channel::bounded(OUTBOX_MAX);
        let node = config.node_name(hostname).to_owned();
        Cluster {
            status: ArcSwap::from_pointee(Status {
                node: node.clone(),
                redis: config.redis.clone().unwrap_or_default(),
                live_nodes: 1,
                ..Status::default()
            }),
            node,
            config: config.clone(),
            connected: AtomicBool::new(false),
            live_nodes: AtomicUsize::new(1),
            redis_calls: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            outbox,
            inbox: Mutex::new(Some(inbox)),
            actions: Mutex::new(Some(actions)),
            actions_tx,
            started_ms: unix_ms(),
        }
    }

    /// Where the queues announce this node's actions.
    pub fn action_sender(&self) -> Sender<SiteAction> {
        self.actions_tx.clone()
    }

    /// A change for the other nodes; dropped (and counted) when the
    /// thread is too far behind, never waited for.
    pub fn share(&self, change: Outgoing) {
        if self.outbox.try_send(change).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn status(&self) -> Arc<Status> {
        self.status.load_full()
    }

    /// Starts the thread. It stops when the server shuts down, giving its
    /// leases back.
    pub fn start(server: Arc<Server>) -> std::io::Result<Option<thread::JoinHandle<()>>> {
        let Some(cluster) = server.cluster.as_ref() else {
            return Ok(None);
        };
        let inbox = cluster.inbox.lock().expect("cluster inbox").take();
        let actions = cluster.actions.lock().expect("cluster actions").take();
        let (Some(inbox), Some(actions)) = (inbox, actions) else {
            return Ok(None);
        };
        // Every connection needs a lease from now on: until Redis answers,
        // none is opened (the thread connects within milliseconds).
        server.queues.set_bound(ClusterBound::Leases);
        server.queues.announce_to(cluster.action_sender());
        let handle = thread::Builder::new()
            .name("cluster".into())
            .spawn(move || {
                let cursor = server.config.spool.path.join(CURSOR_FILE);
                let mut node = Node::new(&server, inbox, actions, cursor);
                node.run();
            })?;
        Ok(Some(handle))
    }
}

/// The thread's state.
struct Node<'s> {
    server: &'s Arc<Server>,
    cluster: &'s Cluster,
    inbox: Receiver<Outgoing>,
    actions: Receiver<SiteAction>,
    client: Option<redis::Client>,
    con: Option<Connection>,
    heartbeat: Script,
    leave: Script,
    warmup: Script,
    leases: Leases,
    rate_asker: RateAsker,
    /// Actions and suppression changes not yet appended to their streams
    /// (Redis out of reach, or a call failed).
    unsent_actions: VecDeque<SiteAction>,
    unsent_changes: VecDeque<Outgoing>,
    /// The last entry read from each stream.
    actions_id: String,
    suppression_id: String,
    cursor_path: PathBuf,
    known: KnownNodes,
    nodes_path: PathBuf,
    next_heartbeat: Instant,
    next_connect: Instant,
    /// The outage being logged (logged once when it starts).
    down_since: Option<Instant>,
}

impl<'s> Node<'s> {
    fn new(
        server: &'s Arc<Server>,
        inbox: Receiver<Outgoing>,
        actions: Receiver<SiteAction>,
        cursor_path: PathBuf,
    ) -> Node<'s> {
        let cluster = server.cluster.as_ref().expect("a cluster");
        let client =
            cluster
                .config
                .redis
                .as_deref()
                .and_then(|url| match redis::Client::open(url) {
                    Ok(client) => Some(client),
                    Err(err) => {
                        tracing::error!(%err, url, "cluster: bad Redis URL");
                        None
                    }
                });
        let suppression_id = std::fs::read_to_string(&cursor_path)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "0".to_owned());
        let nodes_path = server.config.spool.path.join(NODES_FILE);
        let saved = std::fs::read_to_string(&nodes_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1);
        let known = KnownNodes::new(saved, unix_ms());
        cluster.live_nodes.store(known.count(), Ordering::Relaxed);
        Node {
            known,
            nodes_path,
            server,
            cluster,
            inbox,
            actions,
            client,
            con: None,
            heartbeat: Script::new(scripts::HEARTBEAT),
            leave: Script::new(scripts::LEAVE),
            warmup: Script::new(scripts::WARMUP),
            leases: Leases::new(cluster.config.lease_ttl.as_millis() as u64),
            rate_asker: RateAsker::default(),
            unsent_actions: VecDeque::new(),
            unsent_changes: VecDeque::new(),
            actions_id: "0".to_owned(),
            suppression_id,
            cursor_path,
            next_heartbeat: Instant::now(),
            next_connect: Instant::now(),
            down_since: None,
        }
    }

    fn run(&mut self) {
        while !self.server.shutting_down.load(Ordering::Acquire) {
            if self.con.is_none() && Instant::now() >= self.next_connect {
                self.connect();
            }
            if self.con.is_some() {
                if let Err(err) = self.tick() {
                    self.lost(&err.to_string());
                }
            } else {
                // Kept for when Redis answers again (up to a bound).
                let changes: Vec<Outgoing> = self.inbox.try_iter().collect();
                for change in changes {
                    self.keep_change(change);
                }
            }
            // Woken early by an action to share: a suspension reaches the
            // others at once.
            crossbeam_channel::select! {
                recv(self.actions) -> action => {
                    if let Ok(action) = action {
                        self.keep_action(action);
                        if self.con.is_some() {
                            self.publish_actions();
                        }
                    }
                }
                default(TICK) => {}
            }
        }
        self.leave_cluster();
    }

    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let con = self
            .con
            .as_mut()
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "not connected")))?;
        self.cluster.redis_calls.fetch_add(1, Ordering::Relaxed);
        f(con)
    }

    fn connect(&mut self) {
        self.next_connect = Instant::now() + RECONNECT_EVERY;
        let Some(client) = &self.client else {
            self.fall_back("no Redis client (bad URL)");
            return;
        };
        let timeout = self.cluster.config.timeout;
        let con = client.get_connection_with_timeout(timeout).and_then(|con| {
            con.set_read_timeout(Some(timeout))?;
            con.set_write_timeout(Some(timeout))?;
            Ok(con)
        });
        match con {
            Ok(con) => {
                self.con = Some(con);
                if let Err(err) = self.rejoin() {
                    self.lost(&err.to_string());
                }
            }
            Err(err) => self.fall_back(&err.to_string()),
        }
    }

    /// Connected (again): leases for what is open now, then shared limits.
    fn rejoin(&mut self) -> redis::RedisResult<()> {
        self.beat()?;
        let ttl_ms = self.cluster.config.lease_ttl.as_millis() as u64;
        let con = self.con.as_mut().expect("connected");
        let mut store = RedisStore { con, calls: 0 };
        let rejoined = store::rejoin(
            &mut store,
            &self.server.queues,
            &mut self.leases,
            &self.cluster.node,
            ttl_ms,
            unix_ms(),
        );
        self.cluster
            .redis_calls
            .fetch_add(store.calls, Ordering::Relaxed);
        rejoined.map_err(redis_error)?;
        self.cluster.connected.store(true, Ordering::Release);
        if let Some(since) = self.down_since.take() {
            tracing::warn!(
                down_s = since.elapsed().as_secs(),
                node = %self.cluster.node,
                "cluster: Redis is back; limits are shared again"
            );
        } else {
            tracing::info!(node = %self.cluster.node, "cluster: joined; limits are shared through Redis");
        }
        Ok(())
    }

    /// Redis failed mid-call.
    fn lost(&mut self, err: &str) {
        self.con = None;
        self.leases.forget();
        self.fall_back(err);
    }

    /// This node's share of each limit until Redis answers again.
    fn fall_back(&mut self, err: &str) {
        let nodes = self.known.count();
        self.server.queues.set_bound(ClusterBound::Share { nodes });
        for (_, warmup) in self.server.live().egress.warmups() {
            warmup.unshare(nodes);
        }
        self.cluster.connected.store(false, Ordering::Release);
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            self.cluster.fallbacks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %err,
                nodes,
                node = %self.cluster.node,
                "cluster: Redis out of reach; each limit is now this node's share of it"
            );
        }
        let mut status = (*self.cluster.status.load_full()).clone();
        status.connected = false;
        status.last_error = Some(err.to_owned());
        status.leases.clear();
        self.cluster.status.store(Arc::new(status));
    }

    fn tick(&mut self) -> redis::RedisResult<()> {
        if Instant::now() >= self.next_heartbeat {
            self.beat()?;
        }
        let actions: Vec<SiteAction> = self.actions.try_iter().collect();
        for action in actions {
            self.keep_action(action);
        }
        self.publish_actions();
        if self.con.is_none() {
            return Ok(());
        }
        self.publish_suppression()?;
        self.read_streams()?;
        let now = unix_ms();
        let ttl_ms = self.cluster.config.lease_ttl.as_millis() as u64;
        let con = self.con.as_mut().expect("connected");
        let mut store = RedisStore { con, calls: 0 };
        let stepped = store::step(
            &mut store,
            &self.server.queues,
            &mut self.leases,
            &mut self.rate_asker,
            &self.cluster.node,
            ttl_ms,
            now,
        );
        self.cluster
            .redis_calls
            .fetch_add(store.calls, Ordering::Relaxed);
        // Connections waiting for a token go now, not at their shard's
        // next sweep (a quarter second of the rate would be lost).
        if stepped.map_err(redis_error)? {
            for link in &self.server.links {
                link.send(ShardMsg::RateTokens);
            }
        }
        self.share_warmups(now)
    }

    /// Sources' warm-up caps are the cluster's: each node takes a batch of
    /// a cap at a time (`WARMUP`), and sends no more than it was granted.
    fn share_warmups(&mut self, now: u64) -> redis::RedisResult<()> {
        let live = self.server.live();
        let mut asks = Vec::new();
        for (name, warmup) in live.egress.warmups() {
            warmup.share();
            if let Some(ask) = warmup.ask(now) {
                asks.push((name, warmup, ask));
            }
        }
        if asks.is_empty() {
            return Ok(());
        }
        let script = self.warmup.clone();
        let granted: Vec<(i64, i64, i64)> = self.call(|con| {
            let mut invocation = script.prepare_invoke();
            for (name, _, ask) in &asks {
                invocation
                    .key(format!("baton:warmup:{name}:first"))
                    .key(format!("baton:warmup:{name}:day:{}", ask.day))
                    .key(format!("baton:warmup:{name}:hour:{}", ask.hour));
            }
            for (_, _, ask) in &asks {
                invocation
                    .arg(ask.day)
                    .arg(ask.per_day)
                    .arg(ask.per_hour)
                    .arg(ask.want);
            }
            invocation.invoke(con)
        })?;
        for ((_, warmup, ask), (granted, first, left)) in asks.iter().zip(granted) {
            warmup.granted(
                ask,
                granted.max(0) as u64,
                first.max(0) as u64,
                left.max(0) as u64,
            );
        }
        Ok(())
    }

    fn beat(&mut self) -> redis::RedisResult<()> {
        let config = &self.cluster.config;
        self.next_heartbeat = Instant::now() + config.heartbeat;
        let dead_after = (config.heartbeat * 3).as_millis() as u64;
        let node = self.cluster.node.clone();
        let script = self.heartbeat.clone();
        let leases = self.leases.total();
        let shared = self.cluster.connected.load(Ordering::Acquire);
        let started_ms = self.cluster.started_ms;
        let rows: Vec<Vec<String>> = self.call(|con| {
            script
                .key(NODES_KEY)
                .key(format!("{NODE_PREFIX}{node}"))
                .key(NODE_PREFIX)
                .arg(&node)
                .arg(dead_after)
                .arg(env!("CARGO_PKG_VERSION"))
                .arg(started_ms)
                .arg(leases)
                .arg(u8::from(shared))
                .invoke(con)
        })?;
        let nodes: Vec<NodeStatus> = rows
            .into_iter()
            .filter(|row| row.len() == 6)
            .map(|row| NodeStatus {
                name: row[0].clone(),
                heartbeat_ms_ago: row[1].parse().unwrap_or(0),
                version: row[2].clone(),
                started_ms: row[3].parse().unwrap_or(0),
                leases: row[4].parse().unwrap_or(0),
                shared: row[5] == "1",
            })
            .collect();
        let live = nodes.len().max(1);
        self.cluster.live_nodes.store(live, Ordering::Relaxed);
        if self.known.seen(live, unix_ms()) {
            let saved = std::fs::write(&self.nodes_path, self.known.count().to_string());
            if let Err(err) = saved {
                tracing::warn!(%err, path = %self.nodes_path.display(), "cluster: node count not saved");
            }
        }
        let mut lanes: Vec<LeaseStatus> = self
            .leases
            .held()
            .filter(|(_, _, n)| *n > 0)
            .map(|(site, lane, leases)| LeaseStatus {
                site: site.to_string(),
                source: lane.to_string(),
                leases,
            })
            .collect();
        lanes.sort_by(|a, b| (&a.site, &a.source).cmp(&(&b.site, &b.source)));
        self.cluster.status.store(Arc::new(Status {
            node: self.cluster.node.clone(),
            redis: config.redis.clone().unwrap_or_default(),
            connected: self.con.is_some(),
            live_nodes: live,
            nodes,
            leases: lanes,
            last_error: None,
        }));
        Ok(())
    }

    /// An action to share, kept until Redis takes it; past
    /// [`OUTBOX_MAX`] the oldest is dropped, and counted.
    fn keep_action(&mut self, action: SiteAction) {
        if self.unsent_actions.len() >= OUTBOX_MAX {
            self.unsent_actions.pop_front();
            self.cluster.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.unsent_actions.push_back(action);
    }

    /// A suppression change to share, kept as [`Node::keep_action`].
    fn keep_change(&mut self, change: Outgoing) {
        if self.unsent_changes.len() >= OUTBOX_MAX {
            self.unsent_changes.pop_front();
            self.cluster.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.unsent_changes.push_back(change);
    }

    /// Appends the actions kept, oldest first; one that fails stays, with
    /// those after it, for the next connection.
    fn publish_actions(&mut self) {
        let node = self.cluster.node.clone();
        while let Some(action) = self.unsent_actions.front() {
            let json = serde_json::to_string(action).unwrap_or_default();
            let result: redis::RedisResult<String> = self.call(|con| {
                con.xadd_maxlen(
                    ACTIONS_STREAM,
                    redis::streams::StreamMaxlen::Approx(ACTIONS_KEPT),
                    "*",
                    &[("node", node.as_str()), ("action", json.as_str())],
                )
            });
            match result {
                Ok(_) => {
                    let action = self.unsent_actions.pop_front();
                    tracing::debug!(?action, "cluster: action shared");
                }
                Err(err) => {
                    self.lost(&err.to_string());
                    return;
                }
            }
        }
    }

    /// Appends the suppression changes kept, in one pipeline; on a failure
    /// they stay for the next connection (a change appended twice is
    /// applied twice, which changes nothing).
    fn publish_suppression(&mut self) -> redis::RedisResult<()> {
        let changes: Vec<Outgoing> = self.inbox.try_iter().collect();
        for change in changes {
            self.keep_change(change);
        }
        if self.unsent_changes.is_empty() {
            return Ok(());
        }
        let node = self.cluster.node.clone();
        let kept = self.cluster.config.stream_entries_max as usize;
        let mut pipe = redis::pipe();
        for change in &self.unsent_changes {
            let Outgoing::Suppression { entry, added } = change;
            let json = serde_json::to_string(entry).unwrap_or_default();
            let op = if *added { "add" } else { "remove" };
            pipe.xadd_maxlen(
                SUPPRESSION_STREAM,
                redis::streams::StreamMaxlen::Approx(kept),
                "*",
                &[
                    ("node", node.as_str()),
                    ("op", op),
                    ("entry", json.as_str()),
                ],
            )
            .ignore();
        }
        self.call(|con| pipe.query::<()>(con))?;
        self.unsent_changes.clear();
        Ok(())
    }

    fn read_streams(&mut self) -> redis::RedisResult<()> {
        let options = StreamReadOptions::default().count(STREAM_READ_COUNT);
        let keys = [ACTIONS_STREAM, SUPPRESSION_STREAM];
        let ids = [self.actions_id.clone(), self.suppression_id.clone()];
        let reply: StreamReadReply = self.call(|con| con.xread_options(&keys, &ids, &options))?;
        let now = unix_ms();
        for stream in reply.keys {
            let Some(last) = stream.ids.last().map(|e| e.id.clone()) else {
                continue;
            };
            if stream.key == ACTIONS_STREAM {
                for entry in &stream.ids {
                    if field(&entry.map, "node").as_deref() == Some(self.cluster.node.as_str()) {
                        continue;
                    }
                    let Some(json) = field(&entry.map, "action") else {
                        continue;
                    };
                    match serde_json::from_str::<SiteAction>(&json) {
                        Ok(action) if still_in_force(&action, now) => {
                            tracing::info!(?action, from = ?field(&entry.map, "node"), "cluster: action applied");
                            self.server.queues.apply_remote(&action, now);
                        }
                        Ok(_) => {}
                        Err(err) => tracing::warn!(%err, "cluster: an action not understood"),
                    }
                }
                self.actions_id = last;
            } else {
                let changes: Vec<(bool, Entry)> = stream
                    .ids
                    .iter()
                    .filter(|e| {
                        field(&e.map, "node").as_deref() != Some(self.cluster.node.as_str())
                    })
                    .filter_map(|e| suppression_change(&e.map))
                    .collect();
                self.apply_suppression(changes);
                self.suppression_id = last;
                self.save_cursor();
            }
        }
        Ok(())
    }

    /// Other nodes' changes, in order: a run of additions in one commit
    /// (a node catching up reads a thousand at a time, and its leases
    /// must still be renewed on time), removals one by one.
    fn apply_suppression(&self, changes: Vec<(bool, Entry)>) {
        let Some(list) = self.server.suppression.as_ref() else {
            return;
        };
        let mut adds = Vec::new();
        let flush = |adds: &mut Vec<Entry>| {
            if adds.is_empty() {
                return;
            }
            if let Err(err) = list.add_from(std::mem::take(adds), Origin::Replicated) {
                tracing::warn!(%err, "cluster: suppression additions from another node failed");
            }
        };
        for (added, entry) in changes {
            if added {
                adds.push(entry);
                continue;
            }
            flush(&mut adds);
            if let Err(err) =
                list.remove_from(&entry.address, Some(&entry.scope), Origin::Replicated)
            {
                tracing::warn!(%err, "cluster: a suppression removal from another node failed");
            }
        }
        flush(&mut adds);
    }

    /// The suppression stream's position, kept across restarts so a node
    /// reads on from where it was (written whole, then renamed).
    fn save_cursor(&self) {
        let tmp = self.cursor_path.with_extension("tmp");
        let saved = std::fs::write(&tmp, &self.suppression_id)
            .and_then(|()| std::fs::rename(&tmp, &self.cursor_path));
        if let Err(err) = saved {
            tracing::warn!(%err, path = %self.cursor_path.display(), "cluster: cursor not saved");
        }
    }

    /// Shutting down: leases and the node's entry go now, so the others
    /// need not wait for them to lapse.
    fn leave_cluster(&mut self) {
        if self.con.is_none() {
            return;
        }
        let node = self.cluster.node.clone();
        let script = self.leave.clone();
        let lanes: Vec<(String, String)> = self
            .leases
            .held()
            .map(|(site, lane, _)| lease_keys(site, lane))
            .collect();
        let result: redis::RedisResult<i64> = self.call(|con| {
            let mut invocation = script.prepare_invoke();
            invocation
                .key(NODES_KEY)
                .key(format!("{NODE_PREFIX}{node}"));
            for (nodes, counts) in &lanes {
                invocation.key(nodes).key(counts);
            }
            invocation.arg(&node).invoke(con)
        });
        if let Err(err) = result {
            tracing::warn!(%err, "cluster: could not leave cleanly; its leases will lapse");
        }
    }
}

/// A store's error as the thread's: the connection is lost.
fn redis_error(err: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "cluster store", err))
}

/// A suppression stream entry: added (or removed), and the entry.
fn suppression_change(map: &HashMap<String, Value>) -> Option<(bool, Entry)> {
    let op = field(map, "op")?;
    let json = field(map, "entry")?;
    match serde_json::from_str(&json) {
        Ok(entry) => Some((op == "add", entry)),
        Err(err) => {
            tracing::warn!(%err, "cluster: a suppression change not understood");
            None
        }
    }
}

fn field(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    redis::from_redis_value_ref(map.get(name)?).ok()
}

/// An action read back from the stream still matters: a suspension or
/// throttle not yet over, or an operator's resume (applied in order).
fn still_in_force(action: &SiteAction, now_ms: u64) -> bool {
    match action {
        SiteAction::SuspendLane { until_ms, .. } | SiteAction::Suspend { until_ms, .. } => {
            *until_ms > now_ms
        }
        SiteAction::Throttle { throttle, .. } => throttle.until_ms > now_ms,
        SiteAction::Resume { .. } => true,
    }
}
