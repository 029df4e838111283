//! A site: where mail actually goes (a route's next hop, or the set of MX
//! hosts several recipient domains share), and the shaping state that
//! belongs to it rather than to any one domain. Receivers count per
//! sending IP, so most of it is per site × egress source (a [`Lane`]):
//! the connections, the limit in force (halved by failures, raised by
//! good transactions), a rule's suspension or throttle. The site holds an
//! operator's suspension, its message rate, its members and those
//! waiting for room.

use std::collections::{BTreeSet, VecDeque};

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use crate::route::Destination;

use super::Throttle;

/// A site's own limits, from its `[[site]]` table (or `[shaping]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SiteShaping {
    /// Connections to the site, all its domains together.
    pub connections_max: usize,
    /// Messages started per second to the site; 0 = no limit.
    pub message_rate_max: u32,
}

impl Default for SiteShaping {
    fn default() -> Self {
        SiteShaping {
            connections_max: 20,
            message_rate_max: 0,
        }
    }
}

/// Which site a destination belongs to, as the routes say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteOf {
    /// Known from the configuration: a route's next hop.
    Known(String, SiteShaping),
    /// MX delivery: learned from the MX answer ([`super::Queues::join`]).
    /// Until then the domain is a site of its own with one connection,
    /// the one that asks.
    Mx,
    /// A site of its own, for good.
    Own,
}

/// The pause after `failures` in a row: `pause_ms`, doubled with each
/// failure after the first, at most `pause_ms_max`.
pub(super) fn backoff(failures: u32, pause_ms: u64, pause_ms_max: u64) -> u64 {
    let factor = 1u64 << failures.saturating_sub(1).min(20);
    pause_ms.saturating_mul(factor).min(pause_ms_max)
}

/// A token bucket of at most one second's worth.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    pub(super) fn full(rate: u32) -> Bucket {
        Bucket {
            tokens: f64::from(rate),
            at_ms: 0,
        }
    }

    /// Takes a token at `rate` per second (0: no limit); `Err(retry_ms)`
    /// when there is none.
    pub(super) fn take(&mut self, rate: u32, now_ms: u64) -> Result<(), u64> {
        let rate = f64::from(rate);
        if rate == 0.0 {
            return Ok(());
        }
        let elapsed_s = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed_s * rate).min(rate.max(1.0));
        self.at_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - self.tokens) / rate * 1000.0).ceil() as u64;
            Err(now_ms + wait_ms.max(1))
        }
    }

    /// Returns a token taken for a message that did not go.
    pub(super) fn give_back(&mut self) {
        self.tokens += 1.0;
    }
}

/// How the cluster bounds this node's connections (`crate::cluster`).
/// Alone, a lane's limit is the node's; in a cluster it is the whole
/// cluster's, so each connection holds a lease taken from Redis, and
/// without Redis each node keeps to its share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterBound {
    /// No cluster: the site's own limits.
    #[default]
    Alone,
    /// Each connection needs one of the lane's leases ([`Lane::leased`]).
    Leases,
    /// Redis is out of reach: the limit divided by the live nodes last
    /// known, rounded down, as Halon does (a site whose limit is below the
    /// number of nodes then waits for Redis: the nodes cannot tell which
    /// of them would keep to it).
    Share { nodes: usize },
}

impl ClusterBound {
    /// The connections allowed in a lane whose limit in force is
    /// `allowed` and that holds `leased` leases.
    fn bound(self, allowed: usize, leased: usize) -> usize {
        match self {
            ClusterBound::Alone => allowed,
            ClusterBound::Leases => allowed.min(leased),
            ClusterBound::Share { nodes } => allowed / nodes.max(1),
        }
    }
}

/// How long a message waits for the cluster's next batch of a site's
/// rate tokens before it asks again: about a tick of the cluster thread.
pub const CLUSTER_RATE_RETRY_MS: u64 = 50;

/// How long a message waits when a site's rate has no share for this
/// node while Redis is out of reach.
pub const CLUSTER_SHARE_NONE_RETRY_MS: u64 = 1_000;

/// The lane of connections that leave from no particular source (no
/// `[[pool]]`): the site is one lane.
pub const DEFAULT_LANE: &str = "";

/// The sources a destination's connections may leave from, with their
/// weights: its pool's, or [`DEFAULT_LANE`] alone.
pub type Lanes = Arc<[(Arc<str>, u32)]>;

/// The state of a site × egress source: what a receiver counts per
/// sending IP. Connections, the limit in force (halved by failures,
/// raised by good transactions), a rule's suspension or throttle.
#[derive(Debug)]
pub(super) struct Lane {
    pub connections: usize,
    pub limit: usize,
    pub paused_until_ms: u64,
    /// Failures in a row; the pause doubles with each.
    pub failures: u32,
    /// Why it is paused, when a shaping rule paused it.
    pub suspended: Option<String>,
    /// Until when a rule's suspension holds: its open connections leave
    /// (a pause after failures lets them finish). Kept apart from
    /// `paused_until_ms`, which a longer pause may already pass: a
    /// suspension that fell inside such a pause was lost, and the lane's
    /// open connections went on taking mail (the simulator, once
    /// connections to a site failed from a source while its other next
    /// hops answered `4.7.28`).
    pub suspended_until_ms: u64,
    pub throttle: Option<Throttle>,
    /// A throttle's message rate.
    pub bucket: Bucket,
    /// Leases this node holds in the cluster for the lane (with
    /// [`ClusterBound::Leases`]): one per connection it may have open.
    pub leased: usize,
}

impl Lane {
    fn new(connections_max: usize) -> Lane {
        Lane {
            connections: 0,
            limit: connections_max.max(1),
            paused_until_ms: 0,
            failures: 0,
            suspended: None,
            suspended_until_ms: 0,
            throttle: None,
            bucket: Bucket::default(),
            leased: 0,
        }
    }

    fn throttle(&mut self, now_ms: u64) -> Option<&Throttle> {
        if self.throttle.as_ref().is_some_and(|t| t.until_ms <= now_ms) {
            self.throttle = None;
        }
        self.throttle.as_ref()
    }

    /// The most connections allowed now: the site's, or a throttle's.
    fn cap(&mut self, connections_max: usize, now_ms: u64) -> usize {
        let max = connections_max.max(1);
        match self.throttle(now_ms).and_then(|t| t.connections_max) {
            Some(cap) => cap.clamp(1, max),
            None => max,
        }
    }

    fn in_force(&self, now_ms: u64) -> bool {
        self.paused_until_ms > now_ms || self.throttle.as_ref().is_some_and(|t| t.until_ms > now_ms)
    }
}

#[derive(Debug)]
pub(super) struct Site {
    pub shaping: SiteShaping,
    /// Open or opening, all lanes, members and shards together.
    pub connections: usize,
    /// A pause of the whole site (an operator's suspension).
    pub paused_until_ms: u64,
    pub suspended: Option<String>,
    /// The site's message rate (`[[site]] message_rate_max`).
    pub bucket: Bucket,
    /// By source name ([`DEFAULT_LANE`] without a pool).
    pub lanes: HashMap<Arc<str>, Lane>,
    /// Turns of the weighted round of lanes.
    pub round: u64,
    /// Ordered, so that what is done for each member is done in one order
    /// from run to run (the simulator replays a seed exactly).
    pub members: BTreeSet<Destination>,
    /// Members with ready mail that found no room, in the order they
    /// asked: the next connection freed goes to the first.
    pub starved: VecDeque<Destination>,
    /// Idle connections of its members.
    pub idle: usize,
    /// The cluster's word on the lanes' limits (the table's, copied).
    pub bound: ClusterBound,
    /// Tokens of the site's message rate the cluster granted this node
    /// and it has not spent (with [`ClusterBound::Leases`]).
    pub granted: u64,
    /// Spent since the cluster thread last looked.
    pub spent: u64,
    /// A message waited for a token since the cluster thread last looked.
    pub rate_wanted: bool,
}

impl Site {
    pub(super) fn new(shaping: SiteShaping, bound: ClusterBound) -> Site {
        Site {
            shaping,
            bound,
            granted: 0,
            spent: 0,
            rate_wanted: false,
            connections: 0,
            paused_until_ms: 0,
            suspended: None,
            bucket: Bucket::full(shaping.message_rate_max),
            lanes: HashMap::new(),
            round: 0,
            members: BTreeSet::new(),
            starved: VecDeque::new(),
            idle: 0,
        }
    }

    /// Takes new limits (a reload). A lane at the old limit moves to the
    /// new one; a lane cut by failures keeps its cut, under the new limit.
    /// Suspensions, throttles and pauses in force stay.
    pub(super) fn reshape(&mut self, shaping: SiteShaping) {
        let old_max = self.shaping.connections_max.max(1);
        let new_max = shaping.connections_max.max(1);
        for lane in self.lanes.values_mut() {
            lane.limit = if lane.limit >= old_max {
                new_max
            } else {
                lane.limit.min(new_max)
            };
        }
        if shaping.message_rate_max != self.shaping.message_rate_max {
            self.bucket = Bucket::full(shaping.message_rate_max);
        }
        self.shaping = shaping;
    }

    pub(super) fn lane(&mut self, name: &Arc<str>) -> &mut Lane {
        let max = self.shaping.connections_max;
        self.lanes
            .entry(name.clone())
            .or_insert_with(|| Lane::new(max))
    }

    /// How many more connections the lane allows now.
    pub(super) fn room(&mut self, lane: &Arc<str>, now_ms: u64) -> usize {
        if self.paused_until_ms > now_ms {
            return 0;
        }
        let max = self.shaping.connections_max;
        let bound = self.bound;
        let lane = match self.lanes.get_mut(lane) {
            Some(lane) => lane,
            None if bound == ClusterBound::Alone => return max.max(1),
            // Made, so that the cluster thread sees the lane wants leases.
            None => self.lane(lane),
        };
        if lane.paused_until_ms > now_ms {
            return 0;
        }
        let cap = lane.cap(max, now_ms);
        bound
            .bound(lane.limit.min(cap), lane.leased)
            .saturating_sub(lane.connections)
    }

    /// Whether any of `lanes` has room now.
    /// A suspension in force for `lane` (a shaping rule's on the lane, an
    /// operator's on the whole site): not only new connections wait, the
    /// open ones stop too, since the receiver asked to stop (a pause after
    /// failures lets them finish).
    pub(super) fn suspended_now(&mut self, lane: &Arc<str>, now_ms: u64) -> bool {
        if self.paused_until_ms > now_ms && self.suspended.is_some() {
            return true;
        }
        self.lane(lane).suspended_until_ms > now_ms
    }

    /// Redis is out of reach and the lane has more connections open than
    /// this node's share: the extra ones leave after their transaction,
    /// so that the nodes together keep to the limit (opened under leases,
    /// they were the cluster's to have; now they are the others' share).
    pub(super) fn over_share(&mut self, lane: &Arc<str>, now_ms: u64) -> bool {
        if !matches!(self.bound, ClusterBound::Share { .. }) {
            return false;
        }
        let bound = self.bound;
        let max = self.shaping.connections_max;
        let Some(l) = self.lanes.get_mut(lane) else {
            return false;
        };
        l.connections > bound.bound(l.limit.min(l.cap(max, now_ms)), l.leased)
    }

    pub(super) fn has_room(&mut self, lanes: &Lanes, now_ms: u64) -> bool {
        lanes.iter().any(|(lane, _)| self.room(lane, now_ms) > 0)
    }

    /// The next lane with room, by the weights, in turn.
    pub(super) fn pick(&mut self, lanes: &Lanes, now_ms: u64) -> Option<Arc<str>> {
        let total: u64 = lanes.iter().map(|(_, w)| u64::from(*w).max(1)).sum();
        let turn = self.round % total.max(1);
        self.round = self.round.wrapping_add(1);
        // The lane whose share holds this turn, then the ones after it.
        let mut upto = 0;
        let first = lanes
            .iter()
            .position(|(_, w)| {
                upto += u64::from(*w).max(1);
                turn < upto
            })
            .unwrap_or(0);
        (0..lanes.len())
            .map(|i| &lanes[(first + i) % lanes.len()].0)
            .find(|lane| self.room(lane, now_ms) > 0)
            .cloned()
    }

    /// Counts a connection opened in `lane`.
    pub(super) fn open(&mut self, lane: &Arc<str>) {
        self.connections += 1;
        self.lane(lane).connections += 1;
    }

    /// Counts a connection of `lane` gone.
    pub(super) fn close(&mut self, lane: &Arc<str>) {
        self.connections = self.connections.saturating_sub(1);
        if let Some(l) = self.lanes.get_mut(lane) {
            l.connections = l.connections.saturating_sub(1);
        }
    }

    /// The connection limit in force in `lane`.
    pub(super) fn limit(&mut self, lane: &Arc<str>, now_ms: u64) -> usize {
        let max = self.shaping.connections_max;
        let bound = self.bound;
        match self.lanes.get_mut(lane) {
            Some(l) => bound.bound(l.limit.min(l.cap(max, now_ms)), l.leased),
            None => bound.bound(max.max(1), 0),
        }
    }

    /// The lane's limit in force on this node alone (failures, throttles),
    /// before the cluster's bound: what its leases are asked against.
    pub(super) fn own_limit(&mut self, lane: &Arc<str>, now_ms: u64) -> usize {
        let max = self.shaping.connections_max;
        let l = self.lane(lane);
        l.limit.min(l.cap(max, now_ms))
    }

    /// A token of the site's own rate: the local bucket alone, the
    /// cluster's tokens granted in batches with leases (none left: ask
    /// again after a tick of the cluster thread), or the node's share of
    /// the rate while Redis is out of reach.
    fn take_site_token(&mut self, now_ms: u64) -> Result<(), u64> {
        let rate = self.shaping.message_rate_max;
        match self.bound {
            ClusterBound::Leases if rate > 0 => {
                if self.granted == 0 {
                    self.rate_wanted = true;
                    return Err(now_ms + CLUSTER_RATE_RETRY_MS);
                }
                self.granted -= 1;
                self.spent += 1;
                Ok(())
            }
            ClusterBound::Share { nodes } if rate > 0 => {
                // A rate below the number of nodes waits for Redis, as a
                // limit below it does (a bucket of 0 would not limit).
                let share = rate / (nodes.max(1) as u32);
                if share == 0 {
                    return Err(now_ms + CLUSTER_SHARE_NONE_RETRY_MS);
                }
                self.bucket.take(share, now_ms)
            }
            _ => self.bucket.take(rate, now_ms),
        }
    }

    fn give_back_site_token(&mut self) {
        match self.bound {
            ClusterBound::Leases if self.shaping.message_rate_max > 0 => {
                self.granted += 1;
                self.spent = self.spent.saturating_sub(1);
            }
            _ => self.bucket.give_back(),
        }
    }

    /// A token of the site's rate and of the lane's throttle, if any.
    pub(super) fn take_token(&mut self, lane: &Arc<str>, now_ms: u64) -> Result<(), u64> {
        let rate = self.shaping.message_rate_max;
        self.take_site_token(now_ms)?;
        let throttled = self
            .lanes
            .get_mut(lane)
            .and_then(|l| l.throttle(now_ms).and_then(|t| t.message_rate_max));
        if let Some(cap) = throttled {
            let cap = if rate == 0 {
                cap.max(1)
            } else {
                cap.clamp(1, rate)
            };
            if let Err(retry) = self.lane(lane).bucket.take(cap, now_ms) {
                self.give_back_site_token();
                return Err(retry);
            }
        }
        Ok(())
    }

    /// When a pause or throttle (the site's or a lane's) ends, if after
    /// `now_ms`.
    pub(super) fn next_due(&self, now_ms: u64) -> Option<u64> {
        let site = (self.paused_until_ms > now_ms).then_some(self.paused_until_ms);
        let lanes = self.lanes.values().flat_map(|l| {
            let paused = (l.paused_until_ms > now_ms).then_some(l.paused_until_ms);
            let throttle = l
                .throttle
                .as_ref()
                .map(|t| t.until_ms)
                .filter(|until| *until > now_ms);
            [paused, throttle]
        });
        std::iter::once(site).chain(lanes).flatten().min()
    }

    /// No member, no connection, nothing in force: the table may forget
    /// it.
    pub(super) fn forgettable(&self, now_ms: u64) -> bool {
        self.members.is_empty()
            && self.connections == 0
            && self.paused_until_ms <= now_ms
            && !self.lanes.values().any(|l| l.in_force(now_ms))
    }

    /// Paused now for all lanes: the site's pause, or every lane's.
    pub(super) fn paused(&self, lanes: &Lanes, now_ms: u64) -> bool {
        self.paused_until_ms > now_ms
            || lanes.iter().all(|(name, _)| {
                self.lanes
                    .get(name)
                    .is_some_and(|l| l.paused_until_ms > now_ms)
            })
    }

    /// A connection of `lane` failed: fewer connections and a pause that
    /// doubles with each failure in a row.
    pub(super) fn failed(
        &mut self,
        lane: &Arc<str>,
        pause_ms: u64,
        pause_ms_max: u64,
        now_ms: u64,
    ) {
        let lane = self.lane(lane);
        lane.failures = lane.failures.saturating_add(1);
        lane.limit = (lane.limit / 2).max(1);
        let pause = backoff(lane.failures, pause_ms, pause_ms_max);
        if lane.paused_until_ms <= now_ms {
            // A suspension that is over: this pause is not one.
            lane.suspended = None;
        }
        lane.paused_until_ms = lane.paused_until_ms.max(now_ms + pause);
    }

    /// A good transaction in `lane`: one more connection allowed, failures
    /// forgotten.
    pub(super) fn succeeded(&mut self, lane: &Arc<str>, now_ms: u64) {
        let max = self.shaping.connections_max;
        let lane = self.lane(lane);
        lane.failures = 0;
        if lane.limit < lane.cap(max, now_ms) {
            lane.limit += 1;
        }
    }

    /// No connection in `lane` until `until_ms`, then one, growing by one
    /// per good transaction. `true` when it was not paused at `now_ms`.
    pub(super) fn suspend_lane(
        &mut self,
        lane: &Arc<str>,
        until_ms: u64,
        reason: String,
        now_ms: u64,
    ) -> bool {
        let lane = self.lane(lane);
        let was_paused = lane.paused_until_ms > now_ms;
        lane.paused_until_ms = lane.paused_until_ms.max(until_ms);
        if until_ms > lane.suspended_until_ms {
            lane.suspended_until_ms = until_ms;
            lane.suspended = Some(reason);
        }
        lane.limit = 1;
        !was_paused
    }

    /// An operator's suspension of the whole site, every lane.
    pub(super) fn suspend(&mut self, until_ms: u64, reason: String, now_ms: u64) -> bool {
        let was_paused = self.paused_until_ms > now_ms;
        if until_ms > self.paused_until_ms {
            self.paused_until_ms = until_ms;
            self.suspended = Some(reason);
        }
        for lane in self.lanes.values_mut() {
            lane.limit = 1;
        }
        !was_paused
    }

    /// A later throttle replaces an earlier one. `true` when none was in
    /// force at `now_ms`.
    pub(super) fn set_throttle(
        &mut self,
        lane: &Arc<str>,
        throttle: Throttle,
        now_ms: u64,
    ) -> bool {
        let lane = self.lane(lane);
        let was = lane.throttle(now_ms).is_some();
        if let Some(cap) = throttle.connections_max {
            lane.limit = lane.limit.min(cap.max(1));
        }
        if lane
            .throttle
            .as_ref()
            .is_none_or(|t| t.until_ms <= throttle.until_ms)
        {
            lane.throttle = Some(throttle);
        }
        !was
    }

    /// Full limits again, every lane (an operator's resume).
    pub(super) fn resume(&mut self) {
        self.paused_until_ms = 0;
        self.suspended = None;
        let max = self.shaping.connections_max.max(1);
        for lane in self.lanes.values_mut() {
            lane.paused_until_ms = 0;
            lane.suspended = None;
            lane.suspended_until_ms = 0;
            lane.throttle = None;
            lane.failures = 0;
            lane.limit = max;
        }
    }

    /// The suspension (site's, else a lane's) and throttle to show.
    pub(super) fn shown(&self, now_ms: u64) -> (u64, Option<String>, Option<Throttle>) {
        if self.paused_until_ms > now_ms {
            return (self.paused_until_ms, self.suspended.clone(), None);
        }
        let paused = self
            .lanes
            .values()
            .filter(|l| l.paused_until_ms > now_ms)
            .max_by_key(|l| l.paused_until_ms);
        let throttle = self
            .lanes
            .values()
            .filter_map(|l| l.throttle.clone())
            .find(|t| t.until_ms > now_ms);
        match paused {
            Some(l) => (
                l.paused_until_ms,
                l.suspended
                    .clone()
                    .filter(|_| l.suspended_until_ms > now_ms),
                throttle,
            ),
            None => (0, None, throttle),
        }
    }

    /// Each named lane's state, for `baton site show`.
    pub(super) fn lane_summaries(&mut self, now_ms: u64) -> Vec<LaneSummary> {
        let max = self.shaping.connections_max;
        let mut out: Vec<LaneSummary> = self
            .lanes
            .iter_mut()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, l)| LaneSummary {
                source: name.to_string(),
                connections: l.connections,
                connections_limit: l.limit.min(l.cap(max, now_ms)),
                paused_until_ms: if l.paused_until_ms > now_ms {
                    l.paused_until_ms
                } else {
                    0
                },
                suspended: l
                    .suspended
                    .clone()
                    .filter(|_| l.suspended_until_ms > now_ms),
                throttle: l.throttle.clone().filter(|t| t.until_ms > now_ms),
            })
            .collect();
        out.sort_by(|a, b| a.source.cmp(&b.source));
        out
    }
}

/// One site × source, as `GET /sites` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LaneSummary {
    pub source: String,
    pub connections: usize,
    pub connections_limit: usize,
    #[serde(default)]
    pub paused_until_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
}

/// One site's state, as `GET /sites` and `baton site list` show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SiteSummary {
    pub site: String,
    /// Its recipient domains that baton knows now.
    pub domains: usize,
    pub ready: usize,
    pub scheduled: usize,
    pub connections: usize,
    /// The connection limit in force.
    pub connections_limit: usize,
    /// Members waiting for a free connection.
    #[serde(default)]
    pub waiting: usize,
    /// Unix ms until which no new connection is opened; 0 when not paused.
    #[serde(default)]
    pub paused_until_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// Per source, when its connections leave from a pool's sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<LaneSummary>,
}
