//! Where a node's leases and rate tokens come from: Redis (the cluster
//! thread's [`RedisStore`], running the scripts), or [`Model`], an
//! in-process model of what those scripts do, for the simulator. A test
//! (`tests/tests/cluster.rs`) runs one sequence of calls through both and
//! asserts the same answers, so the simulator's cluster is Redis' cluster.
//!
//! [`step`] is one tick of the lease and rate logic against a store: the
//! cluster thread runs it, and so does the simulator, for each node.

use std::collections::HashMap;
use std::sync::Arc;

use redis::{Connection, Script};

use super::leases::{Claim, Leases};
use super::rates::{RateAsk, RateAsker};
use super::scripts;
use crate::queue::Queues;

/// What a node asks of the shared store.
pub trait Store {
    /// Runs `claims` for `node` (leases living `ttl_ms`); what each was
    /// granted.
    fn claim(&mut self, node: &str, ttl_ms: u64, claims: &[Claim]) -> Result<Vec<usize>, String>;
    /// Takes rate tokens for `asks`; what each was granted.
    fn take_rates(&mut self, asks: &[RateAsk]) -> Result<Vec<u64>, String>;
}

/// One tick of a node's leases and rates: what its queues want, asked of
/// `store`, and the answers written back. `true` when rate tokens arrived
/// (connections waiting for one should try now).
pub fn step(
    store: &mut dyn Store,
    queues: &Queues,
    leases: &mut Leases,
    asker: &mut RateAsker,
    node: &str,
    ttl_ms: u64,
    now_ms: u64,
) -> Result<bool, String> {
    let claims = leases.claims(&queues.lease_view(now_ms), now_ms);
    if !claims.is_empty() {
        let granted = store.claim(node, ttl_ms, &claims)?;
        for (claim, granted) in claims.iter().zip(granted) {
            leases.granted(claim, granted, now_ms);
            queues.set_leased(&claim.site, &claim.lane, granted);
        }
    }
    let asks = asker.asks(&queues.rate_view(), now_ms);
    let mut tokens = false;
    if !asks.is_empty() {
        let granted = store.take_rates(&asks)?;
        for (ask, granted) in asks.iter().zip(granted) {
            asker.granted(ask, granted, now_ms);
            if granted > 0 {
                queues.grant_tokens(&ask.site, granted);
                tokens = true;
            }
        }
    }
    Ok(tokens)
}

/// Redis answers again after an outage: leases for exactly the
/// connections open (granted even over the limit: they were opened within
/// the node's share and finish), then the queues' limits are shared again.
/// One call even with nothing open: Redis must answer before.
pub fn rejoin(
    store: &mut dyn Store,
    queues: &Queues,
    leases: &mut Leases,
    node: &str,
    ttl_ms: u64,
    now_ms: u64,
) -> Result<(), String> {
    leases.forget();
    let claims: Vec<Claim> = queues
        .lease_view(now_ms)
        .into_iter()
        .map(|l| Claim {
            want: l.connections,
            keep: l.connections,
            limit: l.limit.max(l.connections),
            site: l.site,
            lane: l.lane,
        })
        .collect();
    let granted = store.claim(node, ttl_ms, &claims)?;
    for (claim, granted) in claims.iter().zip(granted) {
        leases.granted(claim, granted, now_ms);
        queues.set_leased(&claim.site, &claim.lane, granted);
    }
    queues.set_bound(crate::queue::ClusterBound::Leases);
    Ok(())
}

/// A lane's two keys: nodes by lease expiry, and lease counts by node.
pub fn lease_keys(site: &str, lane: &str) -> (String, String) {
    (
        format!("baton:lease:{site}/{lane}:nodes"),
        format!("baton:lease:{site}/{lane}:counts"),
    )
}

/// A site's rate key.
pub fn rate_key(site: &str) -> String {
    format!("baton:rate:{site}")
}

/// The scripts, run on a Redis connection.
pub struct RedisStore<'c> {
    pub con: &'c mut Connection,
    /// Calls made (each one round trip).
    pub calls: u64,
}

impl Store for RedisStore<'_> {
    fn claim(&mut self, node: &str, ttl_ms: u64, claims: &[Claim]) -> Result<Vec<usize>, String> {
        let script = Script::new(scripts::CLAIM);
        let mut invocation = script.prepare_invoke();
        for claim in claims {
            let (nodes, counts) = lease_keys(&claim.site, &claim.lane);
            invocation.key(nodes).key(counts);
        }
        invocation.arg(node).arg(ttl_ms);
        for claim in claims {
            invocation.arg(claim.want).arg(claim.keep).arg(claim.limit);
        }
        self.calls += 1;
        let granted: Vec<(i64, i64)> = invocation.invoke(self.con).map_err(|e| e.to_string())?;
        Ok(granted
            .into_iter()
            .map(|(g, _)| g.max(0) as usize)
            .collect())
    }

    fn take_rates(&mut self, asks: &[RateAsk]) -> Result<Vec<u64>, String> {
        let script = Script::new(scripts::RATE);
        let mut invocation = script.prepare_invoke();
        for ask in asks {
            invocation.key(rate_key(&ask.site));
        }
        for ask in asks {
            invocation.arg(ask.rate).arg(ask.burst).arg(ask.want);
        }
        self.calls += 1;
        let granted: Vec<i64> = invocation.invoke(self.con).map_err(|e| e.to_string())?;
        Ok(granted.into_iter().map(|g| g.max(0) as u64).collect())
    }
}

/// Per node: its lease count, and when they lapse (ms).
type NodeLeases = HashMap<String, (usize, u64)>;

/// An in-process model of the `CLAIM` and `RATE` scripts, on a clock the
/// caller sets ([`Model::now_ms`]), that can be made unreachable
/// ([`Model::down`]): the simulator's Redis.
#[derive(Debug, Default)]
pub struct Model {
    /// Redis' clock, in ms.
    pub now_ms: u64,
    /// Every call fails, as with Redis out of reach.
    pub down: bool,
    /// Per lane (site, source): each node's leases.
    leases: HashMap<(Arc<str>, Arc<str>), NodeLeases>,
    /// Per site: the theoretical arrival time, in ms.
    tat: HashMap<Arc<str>, f64>,
    /// Calls answered.
    pub calls: u64,
}

impl Model {
    /// Leases held on a lane by every node together, as of now.
    pub fn held(&self, site: &str, lane: &str) -> usize {
        self.leases
            .iter()
            .filter(|((s, l), _)| &**s == site && &**l == lane)
            .flat_map(|(_, nodes)| nodes.values())
            .filter(|(_, until)| *until > self.now_ms)
            .map(|(count, _)| count)
            .sum()
    }

    fn check_up(&mut self) -> Result<(), String> {
        if self.down {
            return Err("connection refused (the model's Redis is down)".into());
        }
        self.calls += 1;
        Ok(())
    }
}

impl Store for Model {
    fn claim(&mut self, node: &str, ttl_ms: u64, claims: &[Claim]) -> Result<Vec<usize>, String> {
        self.check_up()?;
        let now = self.now_ms;
        let mut out = Vec::with_capacity(claims.len());
        for claim in claims {
            let nodes = self
                .leases
                .entry((claim.site.clone(), claim.lane.clone()))
                .or_default();
            // ZRANGEBYSCORE -inf now: a lease lapsed at `now` is gone.
            nodes.retain(|_, (_, until)| *until > now);
            let others: usize = nodes
                .iter()
                .filter(|(n, _)| n.as_str() != node)
                .map(|(_, (count, _))| count)
                .sum();
            let room = claim.limit as i64 - others as i64;
            let granted = (claim.keep as i64).max((claim.want as i64).min(room));
            if granted > 0 {
                nodes.insert(node.to_owned(), (granted as usize, now + ttl_ms));
                out.push(granted as usize);
            } else {
                nodes.remove(node);
                out.push(0);
            }
        }
        Ok(out)
    }

    fn take_rates(&mut self, asks: &[RateAsk]) -> Result<Vec<u64>, String> {
        self.check_up()?;
        let now = self.now_ms as f64;
        let mut out = Vec::with_capacity(asks.len());
        for ask in asks {
            let interval = 1000.0 / f64::from(ask.rate);
            let tat = self.tat.get(&ask.site).copied().unwrap_or(now).max(now);
            let room = ((now + ask.burst as f64 * interval - tat) / interval).floor();
            let granted = (ask.want as f64).min(room.max(0.0)) as u64;
            if granted > 0 {
                // The script keeps three decimals.
                let next = tat + granted as f64 * interval;
                self.tat
                    .insert(ask.site.clone(), (next * 1000.0).round() / 1000.0);
            }
            out.push(granted);
        }
        Ok(out)
    }
}
