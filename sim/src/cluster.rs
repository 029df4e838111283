//! Many baton nodes under one simulated clock, sharing limits through the
//! in-process model of Redis (`baton::cluster::store::Model`, checked
//! against a real redis-server by `tests/tests/cluster.rs`). Each node
//! runs baton's own queue table (`Queues`: sites, lanes, the cluster's
//! bound) and the cluster thread's lease and rate step
//! (`cluster::store::step`, with the real `Leases` and `rates` policy);
//! what the simulator plays is the rest: mail arriving, connections that
//! take a batch, hold it for a delivery time and take the next, nodes
//! that crash (their connections die, their leases stay in Redis until
//! they lapse) and restart (their queue recovered), and Redis outages
//! (every call fails; nodes fall back to their share, then rejoin).
//!
//! The checks, every step:
//! - the site's connections across the nodes never exceed its limit,
//!   whether Redis answers (leases) or not (each node keeps to its share
//!   of the nodes it counts; for one step after a node falls back, its
//!   connections over its share are finishing their transaction);
//! - the messages started in any whole simulated second stay under the
//!   site's rate plus one burst and one batch per node (what GCRA with
//!   batches allows);
//! - at the end every recipient is delivered exactly once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use baton::cluster::leases::Leases;
use baton::cluster::nodes::KnownNodes;
use baton::cluster::rates::{self, RateAsker};
use baton::cluster::store::{self, Model};
use baton::queue::{
    Action, ClusterBound, Policy, QueuedRecipient, Queues, Shaping, SiteOf, SiteShaping, Take,
    Waiter, DEFAULT_LANE,
};
use baton::route::Destination;
use baton_spool::{QueueId, Status};

use crate::rng::Rng;

/// The simulated step: the sweep a shard runs, and the cluster thread's tick.
const STEP_MS: u64 = 50;
/// How long a connection holds a batch (a next hop's answer).
const DELIVERY_MS: u64 = 20;
/// A lease's life, as `cluster.lease_ttl`'s default.
const LEASE_TTL_MS: u64 = 10_000;
/// Per step, in ten thousand: a node crashes (with `faults`).
const CRASH_PER_10K: u64 = 10;
/// How long a crashed node stays down.
const NODE_DOWN_MS: u64 = 3_000;
/// Per step, in ten thousand: Redis goes out of reach.
const OUTAGE_PER_10K: u64 = 8;
/// How long an outage lasts, at most.
const OUTAGE_MS_MAX: u64 = 5_000;
/// Recipient domains, all on the one site.
const DOMAINS: usize = 4;
/// The site's name, as a route's next hop.
const SITE: &str = "sink:25";
/// The longest drain after the traffic, in simulated time.
const DRAIN_MS_MAX: u64 = 600_000;

/// What a cluster run simulates.
#[derive(Clone, Debug)]
pub struct ClusterParams {
    pub seed: u64,
    pub nodes: usize,
    pub sim_seconds: u64,
    /// Recipients arriving per simulated second, at each node.
    pub per_node_rate: u64,
    /// The site's connection limit, the cluster's.
    pub connections_max: usize,
    /// The site's message rate, the cluster's; 0 = none.
    pub message_rate_max: u32,
    /// Node crashes and Redis outages.
    pub faults: bool,
}

/// What a cluster run covered.
#[derive(Debug, Default)]
pub struct ClusterReport {
    pub sim_ms: u64,
    pub delivered: u64,
    /// Delivered during the traffic, per simulated second.
    pub traffic_rate: f64,
    /// The most connections open at once across the nodes, outside the
    /// step after a fallback (what the check holds to the limit).
    pub connections_peak: usize,
    pub messages_per_second_peak: u64,
    pub crashes: u64,
    pub outages: u64,
    /// Calls to the model of Redis (each one round trip).
    pub redis_calls: u64,
}

struct Conn {
    destination: Destination,
    waiter: Waiter,
    /// The batch it holds, and when its delivery completes.
    busy: Option<(Vec<QueuedRecipient>, u64)>,
    /// Rate-limited until then.
    wait_until: u64,
    idle: bool,
}

struct Node {
    name: String,
    queues: Queues,
    leases: Leases,
    asker: RateAsker,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// Recipients accepted and not delivered: what the spool would keep.
    pending: BTreeMap<u64, Destination>,
    down_until: Option<u64>,
    /// The nodes it counts (its share's divisor), kept across its restarts
    /// as the cluster thread keeps `<spool>/cluster-nodes`.
    known: KnownNodes,
    /// Falling back to its share.
    alone: bool,
}

fn policy(p: &ClusterParams) -> Policy {
    let site = SiteShaping {
        connections_max: p.connections_max,
        message_rate_max: p.message_rate_max,
    };
    Policy {
        shaping_for: Box::new(|_| Shaping {
            connections_max: usize::MAX / 2,
            ..Shaping::default()
        }),
        site_for: Box::new(move |_| SiteOf::Known(SITE.into(), site)),
        ..Policy::default()
    }
}

impl Node {
    fn new(name: String, p: &ClusterParams, known: KnownNodes) -> Node {
        let queues = Queues::with_policy(policy(p));
        queues.set_bound(ClusterBound::Leases);
        Node {
            name,
            queues,
            leases: Leases::new(LEASE_TTL_MS),
            asker: RateAsker::default(),
            conns: BTreeMap::new(),
            next_conn: 0,
            pending: BTreeMap::new(),
            down_until: None,
            known,
            alone: false,
        }
    }

    fn connections(&self) -> usize {
        self.conns.len()
    }

    fn act(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Open(destination, _lane) => {
                    let key = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(
                        key,
                        Conn {
                            destination,
                            waiter: Waiter {
                                shard: 0,
                                conn: key,
                            },
                            busy: None,
                            wait_until: 0,
                            idle: false,
                        },
                    );
                }
                Action::Wake(waiter) => {
                    if let Some(conn) = self.conns.get_mut(&waiter.conn) {
                        conn.idle = false;
                    }
                }
            }
        }
    }
}

/// Runs one cluster scenario.
pub fn run_cluster(p: &ClusterParams) -> Result<ClusterReport, String> {
    let mut rng = Rng::new(p.seed);
    let mut model = Model::default();
    let mut nodes: Vec<Node> = (0..p.nodes)
        .map(|i| Node::new(format!("n{i}"), p, KnownNodes::new(1, 0)))
        .collect();
    let mut report = ClusterReport::default();
    let mut now: u64 = 1_800_000_000_000;
    let start = now;
    let traffic_end = start + p.sim_seconds * 1000;
    let mut next_id: u64 = 1;
    let mut outage_until: Option<u64> = None;
    let mut delivered: BTreeMap<u64, u32> = BTreeMap::new();
    // Messages started, per whole simulated second.
    let mut started: VecDeque<(u64, u64)> = VecDeque::new();
    let lane: Arc<str> = DEFAULT_LANE.into();
    let rate_slack = if p.message_rate_max > 0 {
        rates::burst(p.message_rate_max) + p.nodes as u64 * rates::batch(p.message_rate_max)
    } else {
        0
    };
    let mut traffic_delivered = 0;
    // Just after a node falls back, its connections over its share are
    // still finishing their transaction.
    let mut grace_until = 0;
    loop {
        now += STEP_MS;
        model.now_ms = now;
        let traffic = now <= traffic_end;
        let live = nodes.iter().filter(|n| n.down_until.is_none()).count();
        // Faults.
        if p.faults && traffic {
            if outage_until.is_none() && rng.chance(OUTAGE_PER_10K, 10_000) {
                outage_until = Some(now + rng.range(500, OUTAGE_MS_MAX));
                model.down = true;
                report.outages += 1;
            }
            if rng.chance(CRASH_PER_10K, 10_000) {
                let victim = rng.range(0, p.nodes as u64) as usize;
                let node = &mut nodes[victim];
                if node.down_until.is_none() {
                    // Connections die with the process; its leases stay in
                    // Redis until they lapse; its spool keeps the mail.
                    node.down_until = Some(now + NODE_DOWN_MS);
                    node.conns.clear();
                    report.crashes += 1;
                }
            }
        }
        if outage_until.is_some_and(|until| now >= until) {
            outage_until = None;
            model.down = false;
        }
        for node in nodes.iter_mut() {
            if node.down_until.is_some_and(|until| now >= until) {
                // Restarted: a fresh table, the spool's recipients queued again.
                let pending = std::mem::take(&mut node.pending);
                *node = Node::new(node.name.clone(), p, node.known);
                for (id, destination) in pending {
                    let item = QueuedRecipient {
                        queue_id: QueueId(id),
                        recipient: 0,
                        attempts: 0,
                    };
                    node.pending.insert(id, destination.clone());
                    node.queues.restore(&destination, item, Status::Pending);
                }
            }
        }
        // Arrivals.
        if traffic {
            for node in nodes.iter_mut().filter(|n| n.down_until.is_none()) {
                let count = p.per_node_rate * STEP_MS / 1000;
                for _ in 0..count {
                    let id = next_id;
                    next_id += 1;
                    let domain = rng.range(0, DOMAINS as u64);
                    let destination = Destination::new(format!("d{domain}.test"));
                    let item = QueuedRecipient {
                        queue_id: QueueId(id),
                        recipient: 0,
                        attempts: 0,
                    };
                    node.pending.insert(id, destination.clone());
                    let actions = node
                        .queues
                        .push(&destination, &[item], Status::Pending, now);
                    node.act(actions);
                }
            }
        }
        // Each node's cluster thread, then its sweep.
        for node in nodes.iter_mut().filter(|n| n.down_until.is_none()) {
            let stepped = if node.alone {
                rejoin(node, &mut model, now)
            } else {
                store::step(
                    &mut model,
                    &node.queues,
                    &mut node.leases,
                    &mut node.asker,
                    &node.name,
                    LEASE_TTL_MS,
                    now,
                )
                .map(|_| ())
            };
            match stepped {
                // As a heartbeat would count them.
                Ok(()) => {
                    node.known.seen(live, now);
                }
                Err(_) => {
                    if !node.alone {
                        // Its connections over its share leave after their
                        // transaction, within a step.
                        grace_until = now + 2 * STEP_MS;
                    }
                    node.alone = true;
                    node.leases.forget();
                    node.queues.set_bound(ClusterBound::Share {
                        nodes: node.known.count(),
                    });
                }
            }
            let actions = node.queues.plan(now);
            node.act(actions);
        }
        // Connections: finish a delivery, take the next batch.
        for node in nodes.iter_mut().filter(|n| n.down_until.is_none()) {
            let keys: Vec<u64> = node.conns.keys().copied().collect();
            for key in keys {
                let conn = node.conns.get_mut(&key).expect("present");
                if let Some((batch, done)) = &conn.busy {
                    if *done > now {
                        continue;
                    }
                    for item in batch {
                        *delivered.entry(item.queue_id.0).or_default() += 1;
                        node.pending.remove(&item.queue_id.0);
                        if traffic {
                            traffic_delivered += 1;
                        }
                    }
                    report.delivered += batch.len() as u64;
                    let destination = conn.destination.clone();
                    conn.busy = None;
                    node.queues.succeeded(&destination, &lane, now);
                }
                let conn = node.conns.get_mut(&key).expect("present");
                if conn.idle || conn.wait_until > now {
                    continue;
                }
                let destination = conn.destination.clone();
                let waiter = conn.waiter;
                match node.queues.take(&destination, waiter, true, now) {
                    Take::Batch(batch) => {
                        let second = (now - start) / 1000;
                        match started.back_mut() {
                            Some((s, n)) if *s == second => *n += 1,
                            _ => started.push_back((second, 1)),
                        }
                        let conn = node.conns.get_mut(&key).expect("present");
                        conn.busy = Some((batch, now + DELIVERY_MS));
                    }
                    Take::Idle => {
                        // An idle connection closes at once here (the
                        // shard keeps it `idle_timeout`).
                        node.queues.unidle(&destination, waiter);
                        node.conns.remove(&key);
                        let actions = node.queues.closed(&destination, &lane, None, now);
                        node.act(actions);
                    }
                    Take::Leave | Take::Switched(_) => {
                        node.conns.remove(&key);
                        let actions = node.queues.closed(&destination, &lane, None, now);
                        node.act(actions);
                    }
                    Take::RateLimited { retry_ms } => {
                        let conn = node.conns.get_mut(&key).expect("present");
                        conn.wait_until = retry_ms;
                    }
                }
            }
        }
        // The checks.
        let open: usize = nodes.iter().map(Node::connections).sum();
        if now > grace_until {
            report.connections_peak = report.connections_peak.max(open);
        }
        // With Redis or without: the nodes together never exceed the
        // limit (without, each keeps to its share of the nodes it counts).
        if open > p.connections_max && now > grace_until {
            let alone: Vec<bool> = nodes.iter().map(|n| n.alone).collect();
            return Err(format!(
                "seed {:#x}: {open} connections to the site across the nodes at {} ms, over its limit of {}: {:?}, falling back: {alone:?}",
                p.seed,
                now - start,
                p.connections_max,
                nodes.iter().map(Node::connections).collect::<Vec<_>>()
            ));
        }
        while started.len() > 2 {
            let (second, count) = started.pop_front().expect("two left");
            report.messages_per_second_peak = report.messages_per_second_peak.max(count);
            if p.message_rate_max > 0 && count > u64::from(p.message_rate_max) + rate_slack {
                return Err(format!(
                    "seed {:#x}: {count} messages started in second {second}, over the site's rate of {} and its slack of {rate_slack}",
                    p.seed, p.message_rate_max
                ));
            }
        }
        let pending: usize = nodes.iter().map(|n| n.pending.len()).sum();
        if !traffic && pending == 0 && nodes.iter().all(|n| n.down_until.is_none()) {
            break;
        }
        if now > traffic_end + DRAIN_MS_MAX {
            return Err(format!(
                "seed {:#x}: {pending} recipients still pending after the drain",
                p.seed
            ));
        }
    }
    if let Some((id, n)) = delivered.iter().find(|(_, n)| **n != 1) {
        return Err(format!(
            "seed {:#x}: message {id} delivered {n} times",
            p.seed
        ));
    }
    if delivered.len() as u64 != next_id - 1 {
        return Err(format!(
            "seed {:#x}: {} of {} messages delivered",
            p.seed,
            delivered.len(),
            next_id - 1
        ));
    }
    report.sim_ms = now - start;
    report.traffic_rate = traffic_delivered as f64 / p.sim_seconds.max(1) as f64;
    report.redis_calls = model.calls;
    Ok(report)
}

/// Redis answers again: leases for what is open, then shared limits (the
/// cluster thread's `rejoin`).
fn rejoin(node: &mut Node, model: &mut Model, now: u64) -> Result<(), String> {
    store::rejoin(
        model,
        &node.queues,
        &mut node.leases,
        &node.name,
        LEASE_TTL_MS,
        now,
    )?;
    node.alone = false;
    Ok(())
}
