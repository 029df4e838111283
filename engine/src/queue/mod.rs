//! The destination table: one entry per destination, shared by every shard.
//!
//! Each destination (a recipient domain) has a *ready* queue (recipients
//! to attempt now), a *scheduled* queue (deferred recipients, ordered by
//! their next attempt), its own connections and idle connections, and the
//! *site* it belongs to: where its mail actually goes (`site.rs`). The
//! domains routed to one next hop share a site; so do the domains whose MX
//! hosts are the same (MX rollup: every Google-hosted domain is one site),
//! learned from the MX answer ([`Queues::join`]). The connection limit in
//! force, pauses, suspensions, throttles and the message rate belong to the
//! site, as receivers count them; a `[[destination]]` override still caps
//! its domain.
//!
//! Shards push accepted recipients here once their message is durable, and
//! recovery pushes what the spool returned. Every connection to a
//! destination, on whichever shard, pulls from its one ready queue, so work
//! balances itself (docs/architecture.md, "The path of one recipient out").
//! The table never does I/O: it answers with what the caller should do —
//! open a connection, wake an idle one on some shard — and the shards act.

#![forbid(unsafe_code)]

mod shared;
mod site;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

// Every take, plan and push looks destinations and sites up several times
// over: SipHash was a tenth of the queue's time. foldhash is hashbrown's
// own default, seeded per table, so domain names a sender picks cannot be
// aimed at one bucket offline.
use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;
use std::sync::Mutex;

use baton_spool::{QueueId, Status};

use crate::route::Destination;

pub use shared::{LaneLease, SiteAction, SiteRate};
use site::{Bucket, Site};
pub use site::{ClusterBound, LaneSummary, Lanes, SiteOf, SiteShaping, SiteSummary, DEFAULT_LANE};

/// How many learned domain → site answers the table keeps; past it, it
/// starts afresh (each domain then learns its site again from one
/// connection's MX answer).
pub const LEARNED_SITES_MAX: usize = 1 << 17;

/// How many domains waiting in a site's line a connection with nothing
/// left considers taking over (each asks the caller whether it may).
pub const SWITCH_CANDIDATES_MAX: usize = 8;

/// One recipient of one message, waiting for delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedRecipient {
    pub queue_id: QueueId,
    /// Index in the message's RCPT order.
    pub recipient: u32,
    /// Attempts so far.
    pub attempts: u32,
}

/// Traffic shaping for one destination; limits are global across shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shaping {
    pub connections_max: usize,
    pub messages_per_connection_max: usize,
    pub recipients_per_transaction_max: usize,
    /// Messages started per second; 0 = no limit.
    pub message_rate_max: u32,
    /// Open no connection at all (`delivery.hold`).
    pub hold: bool,
}

impl Default for Shaping {
    fn default() -> Self {
        Shaping {
            connections_max: 20,
            messages_per_connection_max: 1000,
            recipients_per_transaction_max: 100,
            message_rate_max: 0,
            hold: false,
        }
    }
}

/// An idle connection on some shard, waiting for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiter {
    pub shard: usize,
    /// The shard's own key for the connection.
    pub conn: u64,
}

/// What a caller of [`Queues::push`] or [`Queues::plan`] should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a connection to the destination, leaving from this source
    /// (its lane: [`DEFAULT_LANE`] without a pool); it is already counted.
    Open(Destination, Arc<str>),
    /// Tell this idle connection there is work (or that it should make
    /// room: its next [`Queues::take`] says [`Take::Leave`]).
    Wake(Waiter),
}

/// What a connection gets when it asks for work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Take {
    /// Recipients of one message, in queue order.
    Batch(Vec<QueuedRecipient>),
    /// Nothing ready: the connection is registered as idle and is woken
    /// (through [`Action::Wake`]) when work arrives.
    Idle,
    /// Nothing ready here, and another domain of the site waits for a
    /// connection the site has no room for: close, to make that room.
    Leave,
    /// Nothing ready here; the connection now belongs to this other
    /// domain of its site, which waited for room: ask again for it.
    Switched(Destination),
    /// The destination's message rate is used up: ask again at this time.
    RateLimited { retry_ms: u64 },
}

/// Whether a destination should get another connection now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    No,
    Yes,
    /// It should, but its site has no room: it waits its turn.
    NoRoom,
}

#[derive(Debug)]
struct DestinationQueue {
    ready: VecDeque<QueuedRecipient>,
    /// Keyed by (next attempt in Unix ms, arrival order).
    scheduled: BTreeMap<(u64, u64), QueuedRecipient>,
    scheduled_seq: u64,
    shaping: Shaping,
    /// Open or opening, on all shards.
    connections: usize,
    /// A pause of this domain alone (its DNS failed, or an operator
    /// suspended the domain rather than its site).
    paused_until_ms: u64,
    failures: u32,
    suspended: Option<String>,
    idle: Vec<Waiter>,
    /// The domain's own message rate (`[[destination]]`).
    bucket: Bucket,
    site: Arc<str>,
    /// The sources its connections may leave from.
    lanes: Lanes,
    /// Its connections per lane, in `lanes` order.
    by_lane: Vec<usize>,
    /// Its MX site is not known yet: one connection, the one that asks.
    learning: bool,
    /// On its site's `starved` list.
    starved: bool,
    /// Changed since the last sweep: on the table's `dirty` list.
    dirty: bool,
    /// Its entry in the table's `due` index, if it has one.
    due_ms: Option<u64>,
}

/// Limits below the site's shaping, until a time: what a shaping rule
/// (`crate::shaping::rules`) sets when a receiver says "slow down".
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Throttle {
    pub until_ms: u64,
    pub connections_max: Option<usize>,
    pub message_rate_max: Option<u32>,
    /// The rule and the reply that set it.
    pub reason: String,
}

impl DestinationQueue {
    fn new(shaping: Shaping, site: Arc<str>, lanes: Lanes) -> DestinationQueue {
        DestinationQueue {
            ready: VecDeque::new(),
            scheduled: BTreeMap::new(),
            scheduled_seq: 0,
            shaping,
            connections: 0,
            paused_until_ms: 0,
            failures: 0,
            suspended: None,
            idle: Vec::new(),
            bucket: Bucket::full(shaping.message_rate_max),
            site,
            by_lane: vec![0; lanes.len()],
            lanes,
            learning: false,
            starved: false,
            dirty: false,
            due_ms: None,
        }
    }

    /// When a sweep must look at the destination again though nothing
    /// changes it: its next scheduled recipient comes due, its (or its
    /// site's) pause or throttle ends.
    fn next_due(&self, site: &Site, now_ms: u64) -> Option<u64> {
        let scheduled = self.scheduled.first_key_value().map(|((at, _), _)| *at);
        let paused = (self.paused_until_ms > now_ms).then_some(self.paused_until_ms);
        [scheduled, paused, site.next_due(now_ms)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Nothing queued, open or in force: the table may forget it.
    fn forgettable(&self, now_ms: u64) -> bool {
        self.ready.is_empty()
            && self.scheduled.is_empty()
            && self.connections == 0
            && self.paused_until_ms <= now_ms
    }

    /// Whether another connection should open now. More are wanted when
    /// the ready recipients outnumber the connections carrying them (each
    /// carries one transaction at a time) and none is idle.
    fn wants(&self, site: &mut Site, now_ms: u64) -> Want {
        let cap = if self.learning {
            1
        } else {
            self.shaping.connections_max.max(1)
        };
        if self.shaping.hold
            || !self.idle.is_empty()
            || now_ms < self.paused_until_ms
            || site.paused(&self.lanes, now_ms)
            || self.connections >= cap
            || self.ready.len() <= self.connections
        {
            Want::No
        } else if !site.has_room(&self.lanes, now_ms) {
            Want::NoRoom
        } else {
            Want::Yes
        }
    }

    /// Takes a reload's shaping and sources. Connections open in a
    /// source the pool no longer has are counted in the total alone.
    fn reshape(&mut self, shaping: Shaping, lanes: Lanes) {
        if shaping.message_rate_max != self.shaping.message_rate_max {
            self.bucket = Bucket::full(shaping.message_rate_max);
        }
        self.shaping = shaping;
        if lanes != self.lanes {
            self.by_lane = lanes
                .iter()
                .map(|(name, _)| {
                    let old = self.lanes.iter().position(|(n, _)| n == name);
                    old.map_or(0, |i| self.by_lane[i])
                })
                .collect();
            self.lanes = lanes;
        }
    }

    fn schedule(&mut self, next_attempt_ms: u64, item: QueuedRecipient) {
        self.scheduled_seq += 1;
        self.scheduled
            .insert((next_attempt_ms, self.scheduled_seq), item);
    }

    /// Moves scheduled recipients that are due to the ready queue.
    /// Forgets `waiter` as idle; how many entries went (0 or 1), for the
    /// site's count.
    fn unidle(&mut self, waiter: Waiter) -> usize {
        let before = self.idle.len();
        self.idle.retain(|w| *w != waiter);
        before - self.idle.len()
    }

    /// Counts a connection of this domain in `lane`.
    fn count(&mut self, lane: &Arc<str>, up: bool) {
        if let Some(i) = self.lanes.iter().position(|(name, _)| name == lane) {
            if up {
                self.by_lane[i] += 1;
            } else {
                self.by_lane[i] = self.by_lane[i].saturating_sub(1);
            }
        }
        if up {
            self.connections += 1;
        } else {
            self.connections = self.connections.saturating_sub(1);
        }
    }

    fn promote(&mut self, now_ms: u64) {
        while let Some(entry) = self.scheduled.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            self.ready.push_back(entry.remove());
        }
    }
}

/// Counts for one destination.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DestinationSummary {
    pub destination: String,
    pub ready: usize,
    pub scheduled: usize,
    #[serde(default)]
    pub connections: usize,
    /// Unix ms until which no new connection is opened (the domain's
    /// pause or its site's); 0 when not paused.
    #[serde(default)]
    pub paused_until_ms: u64,
    /// Why it is paused, when a shaping rule or an operator paused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<String>,
    /// The connection limit in force for the domain (its site's, lowered
    /// after failures and by throttles, raised by good transactions).
    #[serde(default)]
    pub connections_limit: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// The site it belongs to, when that is not the domain itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// Every destination's queues.
pub struct Queues {
    inner: Mutex<Table>,
    /// Where this node's shaping and operator actions go to be shared
    /// with the cluster; unset alone.
    announce: std::sync::OnceLock<crossbeam_channel::Sender<SiteAction>>,
}

/// How destinations are shaped and grouped: the configuration's word,
/// replaced whole by a reload ([`Queues::reconfigure`]).
pub struct Policy {
    pub shaping_for: ShapingFor,
    /// The site a destination belongs to, as the routes say.
    pub site_for: SiteFor,
    /// A configured site's shaping by its name (an operator may suspend
    /// `google` before any mail for it is queued).
    pub site_named: SiteNamed,
    /// The sources a destination's connections may leave from.
    pub lanes_for: LanesFor,
    /// The limits of an MX site no `[[site]]` names.
    pub site_default: SiteShaping,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            shaping_for: Box::new(|_| Shaping::default()),
            site_for: Box::new(|_| SiteOf::Own),
            site_named: Box::new(|_| None),
            lanes_for: Box::new(|_| default_lanes()),
            site_default: SiteShaping::default(),
        }
    }
}

/// See [`Policy::shaping_for`].
pub type ShapingFor = Box<dyn Fn(&Destination) -> Shaping + Send + Sync>;

/// See [`Queues::with_sites`].
pub type SiteFor = Box<dyn Fn(&Destination) -> SiteOf + Send + Sync>;
/// See [`Queues::with_sites`].
pub type SiteNamed = Box<dyn Fn(&str) -> Option<SiteShaping> + Send + Sync>;
/// See [`Queues::with_lanes`].
pub type LanesFor = Box<dyn Fn(&Destination) -> Lanes + Send + Sync>;

/// The destinations and their sites, and what the sweep must visit: a
/// sweep looks only at destinations changed since the last one and those
/// whose time has come, never at all of them (100,000 recipients over
/// 10,000 destinations: a sweep with nothing due went from 72 µs to under
/// a microsecond, `benches/queue_plan.rs`).
#[derive(Default)]
struct Table {
    policy: Policy,
    map: HashMap<Destination, DestinationQueue>,
    sites: HashMap<Arc<str>, Site>,
    /// Domain → MX site, as the MX answers said.
    learned: HashMap<Destination, (Arc<str>, SiteShaping)>,
    /// Changed since the last sweep, each once (its `dirty` flag).
    dirty: Vec<Destination>,
    /// (when, destination): [`DestinationQueue::next_due`] of each
    /// destination that has one, as of its last visit.
    due: BTreeSet<(u64, Destination)>,
    /// The cluster's word on connection limits ([`Queues::set_bound`]).
    bound: ClusterBound,
}

/// Puts `destination` on the dirty list, once.
fn touch(dirty: &mut Vec<Destination>, destination: &Destination, queue: &mut DestinationQueue) {
    if !queue.dirty {
        queue.dirty = true;
        dirty.push(destination.clone());
    }
}

fn site_mut<'s>(sites: &'s mut HashMap<Arc<str>, Site>, name: &Arc<str>) -> &'s mut Site {
    sites
        .get_mut(name)
        .expect("a destination's site is in the table")
}

impl Table {
    /// Opens connections for `destination` and wakes its idle ones, as far
    /// as it wants and its site allows; a destination the site has no
    /// room for joins the site's line, and an idle connection of another
    /// member is asked to make room.
    fn act(&mut self, destination: &Destination, now_ms: u64, out: &mut Vec<Action>) {
        let Some(queue) = self.map.get_mut(destination) else {
            return;
        };
        if queue.ready.is_empty() {
            return;
        }
        // Wake as many idle connections as there are ready recipients.
        let wake = queue.idle.len().min(queue.ready.len());
        let site = site_mut(&mut self.sites, &queue.site);
        site.idle -= wake;
        for waiter in queue.idle.drain(..wake) {
            out.push(Action::Wake(waiter));
        }
        loop {
            match queue.wants(site, now_ms) {
                Want::No => return,
                Want::Yes => {
                    let lane = site.pick(&queue.lanes, now_ms).expect("a lane with room");
                    queue.count(&lane, true);
                    site.open(&lane);
                    out.push(Action::Open(destination.clone(), lane));
                }
                Want::NoRoom => {
                    if !queue.starved {
                        queue.starved = true;
                        site.starved.push_back(destination.clone());
                    }
                    break;
                }
            }
        }
        // An idle connection of another member holds room this one needs.
        if site.idle == 0 {
            return;
        }
        let site_name = queue.site.clone();
        let members: Vec<Destination> = site.members.iter().cloned().collect();
        for member in members {
            let Some(other) = self.map.get_mut(&member) else {
                continue;
            };
            if let Some(waiter) = other.idle.pop() {
                site_mut(&mut self.sites, &site_name).idle -= 1;
                out.push(Action::Wake(waiter));
                return;
            }
        }
    }

    /// Hands freed room to the members waiting for it, first come first.
    fn feed_starved(&mut self, site_name: &Arc<str>, now_ms: u64, out: &mut Vec<Action>) {
        loop {
            let Some(site) = self.sites.get_mut(site_name) else {
                return;
            };
            let Some(next) = site.starved.front().cloned() else {
                return;
            };
            let lanes = self.map.get(&next).map(|q| q.lanes.clone());
            if lanes.is_some_and(|lanes| !site.has_room(&lanes, now_ms)) {
                return;
            }
            site.starved.pop_front();
            let Some(queue) = self.map.get_mut(&next) else {
                continue;
            };
            if !queue.starved || queue.site != *site_name {
                continue;
            }
            queue.starved = false;
            // The sweep looks again too, should it not get a connection
            // now (a pause of its own).
            touch(&mut self.dirty, &next, queue);
            queue.promote(now_ms);
            self.act(&next, now_ms, out);
        }
    }

    /// Moves `destination` (with its connections) to the site `name`,
    /// made with `shaping` if new.
    fn move_to(
        &mut self,
        destination: &Destination,
        name: Arc<str>,
        shaping: SiteShaping,
        now_ms: u64,
    ) {
        let Some(queue) = self.map.get_mut(destination) else {
            return;
        };
        if queue.site == name {
            return;
        }
        let old_name = std::mem::replace(&mut queue.site, name.clone());
        queue.starved = false;
        if let Some(old) = self.sites.get_mut(&old_name) {
            for ((lane, _), n) in queue.lanes.iter().zip(&queue.by_lane) {
                for _ in 0..*n {
                    old.close(lane);
                }
            }
            old.idle = old.idle.saturating_sub(queue.idle.len());
            old.members.remove(destination);
            if old.forgettable(now_ms) {
                self.sites.remove(&old_name);
            }
        }
        let site = self
            .sites
            .entry(name)
            .or_insert_with(|| Site::new(shaping, self.bound));
        for ((lane, _), n) in queue.lanes.iter().zip(&queue.by_lane) {
            for _ in 0..*n {
                site.open(lane);
            }
        }
        site.idle += queue.idle.len();
        site.members.insert(destination.clone());
    }

    /// Forgets a destination with nothing left, and its site if that was
    /// its last member and nothing is in force.
    fn forget(&mut self, destination: &Destination, now_ms: u64) {
        let Some(queue) = self.map.remove(destination) else {
            return;
        };
        if let Some(site) = self.sites.get_mut(&queue.site) {
            site.members.remove(destination);
            if site.forgettable(now_ms) {
                self.sites.remove(&queue.site);
            }
        }
    }

    /// Hands the connection of `destination` (nothing ready) to the first
    /// domain in its site's line that `may_carry` allows, if any.
    fn switch(
        &mut self,
        destination: &Destination,
        lane: &Arc<str>,
        waiter: Waiter,
        may_carry: &mut dyn FnMut(&Destination) -> bool,
    ) -> Option<Destination> {
        let site_name = self.map.get(destination)?.site.clone();
        let mut passed = Vec::new();
        let mut chosen = None;
        while passed.len() < SWITCH_CANDIDATES_MAX {
            let Some(next) = self.sites.get_mut(&site_name)?.starved.pop_front() else {
                break;
            };
            let Some(other) = self.map.get_mut(&next) else {
                continue;
            };
            // A stale entry: the domain's place (if any) is another entry,
            // here or in the line of the site it moved to.
            if !other.starved || other.site != site_name {
                continue;
            }
            // Its own place in line, or a domain whose connections carry
            // its mail already: out of line (the sweep looks again).
            if next == *destination || other.ready.len() <= other.connections {
                other.starved = false;
                touch(&mut self.dirty, &next, other);
                continue;
            }
            let in_lane = other.lanes.iter().any(|(name, _)| name == lane);
            if in_lane && may_carry(&next) {
                other.starved = false;
                chosen = Some(next);
                break;
            }
            passed.push(next);
        }
        let site = site_mut(&mut self.sites, &site_name);
        for skipped in passed.into_iter().rev() {
            site.starved.push_front(skipped);
        }
        let chosen = chosen?;
        let queue = self.map.get_mut(destination).expect("present");
        queue.count(lane, false);
        let unidled = queue.unidle(waiter);
        touch(&mut self.dirty, destination, queue);
        site_mut(&mut self.sites, &site_name).idle -= unidled;
        let other = self.map.get_mut(&chosen).expect("present");
        other.count(lane, true);
        touch(&mut self.dirty, &chosen, other);
        Some(chosen)
    }

    /// Marks every member of a site for the next sweep (its pause or
    /// throttle changed their due times).
    fn touch_members(&mut self, site_name: &Arc<str>) {
        let Some(site) = self.sites.get(site_name) else {
            return;
        };
        for member in &site.members {
            if let Some(queue) = self.map.get_mut(member) {
                touch(&mut self.dirty, member, queue);
            }
        }
    }
}

/// [`DEFAULT_LANE`] alone.
pub fn default_lanes() -> Lanes {
    static LANES: std::sync::OnceLock<Lanes> = std::sync::OnceLock::new();
    LANES
        .get_or_init(|| Arc::from([(Arc::from(DEFAULT_LANE), 1)]))
        .clone()
}

impl Default for Queues {
    fn default() -> Self {
        Queues::new(Box::new(|_| Shaping::default()))
    }
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues").finish_non_exhaustive()
    }
}

impl Queues {
    /// A table whose destinations take their shaping from `shaping_for`,
    /// each a site of its own.
    pub fn new(shaping_for: ShapingFor) -> Queues {
        Queues::with_policy(Policy {
            shaping_for,
            ..Policy::default()
        })
    }

    /// A table that shapes and groups destinations as `policy` says.
    pub fn with_policy(policy: Policy) -> Queues {
        Queues {
            inner: Mutex::new(Table {
                policy,
                ..Table::default()
            }),
            announce: std::sync::OnceLock::new(),
        }
    }

    /// Says which sources (by name, with weights) each destination's
    /// connections may leave from: limits and rules' actions then hold
    /// per site × source.
    pub fn with_lanes(mut self, lanes_for: LanesFor) -> Queues {
        self.inner.get_mut().expect("queues lock").policy.lanes_for = lanes_for;
        self
    }

    /// Groups destinations into sites: `site_for` says a destination's
    /// site (a route's next hop, or MX: learned from the answer), and
    /// `site_named` a configured site's shaping by name.
    pub fn with_sites(mut self, site_for: SiteFor, site_named: SiteNamed) -> Queues {
        let policy = &mut self.inner.get_mut().expect("queues lock").policy;
        policy.site_for = site_for;
        policy.site_named = site_named;
        self
    }

    /// Puts a reloaded configuration's policy in force: every destination
    /// takes its new shaping and sources and, where its route changed, its
    /// new site; every site takes its new limits. What is in force stays:
    /// pauses, suspensions, throttles, and open connections, which finish
    /// on the source they left from. A domain on an MX site keeps it until
    /// its next MX answer names the site anew. The next sweep looks at
    /// every destination.
    pub fn reconfigure(&self, policy: Policy, now_ms: u64) {
        let mut table = self.lock();
        table.policy = policy;
        let mut site_shapes: HashMap<Arc<str>, SiteShaping> = HashMap::new();
        let destinations: Vec<Destination> = table.map.keys().cloned().collect();
        for destination in &destinations {
            let shaping = (table.policy.shaping_for)(destination);
            let lanes = (table.policy.lanes_for)(destination);
            let site_of = (table.policy.site_for)(destination);
            let learned = table.learned.contains_key(destination);
            let own = SiteShaping {
                connections_max: shaping.connections_max,
                message_rate_max: 0,
            };
            let current = {
                let Table { map, dirty, .. } = &mut *table;
                let queue = map.get_mut(destination).expect("listed");
                queue.reshape(shaping, lanes);
                touch(dirty, destination, queue);
                queue.site.clone()
            };
            let (site, site_shaping): (Arc<str>, SiteShaping) = match site_of {
                SiteOf::Known(name, site_shaping) => (name.into(), site_shaping),
                SiteOf::Mx if learned => continue,
                // Off a route's site: its MX answer names its site again.
                SiteOf::Mx => {
                    if *current != *destination.as_str() {
                        table.map.get_mut(destination).expect("listed").learning = true;
                    }
                    (destination.as_str().into(), own)
                }
                SiteOf::Own => (destination.as_str().into(), own),
            };
            site_shapes.insert(site.clone(), site_shaping);
            if current != site {
                table.move_to(destination, site, site_shaping, now_ms);
            }
        }
        let default = table.policy.site_default;
        let Table {
            sites,
            learned,
            policy,
            ..
        } = &mut *table;
        for (name, site) in sites.iter_mut() {
            let shaping = site_shapes
                .get(name)
                .copied()
                .or_else(|| (policy.site_named)(name))
                .unwrap_or(default);
            site.reshape(shaping);
        }
        for (name, shaping) in learned.values_mut() {
            *shaping = (policy.site_named)(name).unwrap_or(default);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().expect("queues lock")
    }

    /// Makes the destination's queue (and joins it to its site) if new.
    fn ensure(&self, table: &mut Table, destination: &Destination) {
        if table.map.contains_key(destination) {
            return;
        }
        let shaping = (table.policy.shaping_for)(destination);
        let own = SiteShaping {
            connections_max: shaping.connections_max,
            message_rate_max: 0,
        };
        let (name, site_shaping, learning) = match (table.policy.site_for)(destination) {
            SiteOf::Known(name, site_shaping) => (Arc::from(name), site_shaping, false),
            SiteOf::Mx => match table.learned.get(destination) {
                Some((name, site_shaping)) => (name.clone(), *site_shaping, false),
                None => (Arc::from(destination.as_str()), own, true),
            },
            SiteOf::Own => (Arc::from(destination.as_str()), own, false),
        };
        let lanes = (table.policy.lanes_for)(destination);
        let mut queue = DestinationQueue::new(shaping, name.clone(), lanes);
        queue.learning = learning;
        table
            .sites
            .entry(name)
            .or_insert_with(|| Site::new(site_shaping, table.bound))
            .members
            .insert(destination.clone());
        table.map.insert(destination.clone(), queue);
    }

    /// Runs `f` on the destination's queue and its site (made if new)
    /// and marks the destination for the next sweep.
    fn with<R>(
        &self,
        destination: &Destination,
        f: impl FnOnce(&mut DestinationQueue, &mut Site) -> R,
    ) -> R {
        let mut table = self.lock();
        self.ensure(&mut table, destination);
        let Table {
            map, dirty, sites, ..
        } = &mut *table;
        let queue = map.get_mut(destination).expect("ensured");
        touch(dirty, destination, queue);
        let site = site_mut(sites, &queue.site);
        f(queue, site)
    }

    /// Queues recipients of one message according to their status: pending
    /// ones are ready, deferred ones wait for their next attempt. Returns
    /// what the caller should do about it: wake one idle connection, or
    /// open one (one per call: the recipients of one message make one
    /// transaction).
    pub fn push(
        &self,
        destination: &Destination,
        items: &[QueuedRecipient],
        status: Status,
        now_ms: u64,
    ) -> Vec<Action> {
        let mut table = self.lock();
        self.ensure(&mut table, destination);
        let Table {
            map, dirty, sites, ..
        } = &mut *table;
        let queue = map.get_mut(destination).expect("ensured");
        touch(dirty, destination, queue);
        let mut ready = false;
        for &item in items {
            match status {
                Status::Deferred {
                    attempts,
                    next_attempt_ms,
                } if next_attempt_ms > now_ms => {
                    queue.schedule(next_attempt_ms, QueuedRecipient { attempts, ..item });
                }
                Status::Deferred { attempts, .. } => {
                    queue.ready.push_back(QueuedRecipient { attempts, ..item });
                    ready = true;
                }
                _ => {
                    queue.ready.push_back(item);
                    ready = true;
                }
            }
        }
        let mut actions = Vec::new();
        if !ready {
            return actions;
        }
        let site = site_mut(sites, &queue.site);
        if let Some(waiter) = queue.idle.pop() {
            site.idle -= 1;
            actions.push(Action::Wake(waiter));
            return actions;
        }
        match queue.wants(site, now_ms) {
            Want::Yes => {
                let lane = site.pick(&queue.lanes, now_ms).expect("a lane with room");
                queue.count(&lane, true);
                site.open(&lane);
                actions.push(Action::Open(destination.clone(), lane));
            }
            // In line for the site's next free connection (an idle one of
            // another domain is asked to make room at the sweep).
            Want::NoRoom if !queue.starved => {
                queue.starved = true;
                site.starved.push_back(destination.clone());
            }
            _ => {}
        }
        actions
    }

    /// Queues a recovered recipient without asking for connections: the
    /// shards' first sweep opens them ([`Queues::plan`]).
    pub fn restore(&self, destination: &Destination, item: QueuedRecipient, status: Status) {
        self.with(destination, |queue, _| match status {
            Status::Deferred {
                attempts,
                next_attempt_ms,
            } => queue.schedule(next_attempt_ms, QueuedRecipient { attempts, ..item }),
            _ => queue.ready.push_back(item),
        });
    }

    /// Queues a deferred recipient for its next attempt.
    pub fn schedule(&self, destination: &Destination, item: QueuedRecipient, next_attempt_ms: u64) {
        self.with(destination, |queue, _| {
            queue.schedule(next_attempt_ms, item)
        });
    }

    /// When [`Queues::plan`] next has work: now, when a destination
    /// changed since the last sweep; else the first due time, if any.
    pub fn next_due_ms(&self, now_ms: u64) -> Option<u64> {
        let table = self.lock();
        if !table.dirty.is_empty() {
            return Some(now_ms);
        }
        table.due.first().map(|(at, _)| *at)
    }

    /// The timer: moves due recipients to their ready queues and says which
    /// connections to open or wake. Every shard calls it on its sweep; the
    /// connections it asks for are counted already.
    pub fn plan(&self, now_ms: u64) -> Vec<Action> {
        let mut guard = self.lock();
        let table = &mut *guard;
        let mut visit = std::mem::take(&mut table.dirty);
        while let Some((at, _)) = table.due.first() {
            if *at > now_ms {
                break;
            }
            let (_, destination) = table.due.pop_first().expect("just seen");
            if let Some(queue) = table.map.get_mut(&destination) {
                queue.due_ms = None;
            }
            visit.push(destination);
        }
        let mut actions = Vec::new();
        for destination in visit {
            let Some(queue) = table.map.get_mut(&destination) else {
                continue;
            };
            queue.dirty = false;
            if let Some(at) = queue.due_ms.take() {
                table.due.remove(&(at, destination.clone()));
            }
            queue.promote(now_ms);
            table.act(&destination, now_ms, &mut actions);
            let queue = table.map.get_mut(&destination).expect("still there");
            // Forget destinations with nothing left, so the table stays
            // small; a site's suspension or throttle outlives its members.
            if queue.forgettable(now_ms) {
                table.forget(&destination, now_ms);
                continue;
            }
            let site = table.sites.get(&queue.site).expect("its site");
            if let Some(at) = queue.next_due(site, now_ms) {
                queue.due_ms = Some(at);
                table.due.insert((at, destination));
            }
        }
        actions
    }

    /// Work for a connection that is ready for its next transaction:
    /// recipients of one message (at most the destination's recipients per
    /// transaction). With nothing ready the connection is registered idle
    /// when it asks to `wait`, or told to leave when its site has no room
    /// for a member that waits. A suspended site (or lane) tells its open
    /// connections to leave.
    pub fn take(&self, destination: &Destination, waiter: Waiter, wait: bool, now_ms: u64) -> Take {
        let lane: Arc<str> = DEFAULT_LANE.into();
        self.take_in_site(destination, &lane, waiter, wait, now_ms, &mut |_| false)
    }

    /// [`Queues::take`], and with nothing ready for `destination`, a
    /// domain waiting in its site's line that `may_carry` allows on this
    /// connection (same next hop, same TLS requirements) takes the
    /// connection over: a site's connections carry all its domains' mail
    /// instead of closing and opening one per domain.
    pub fn take_in_site(
        &self,
        destination: &Destination,
        lane: &Arc<str>,
        waiter: Waiter,
        wait: bool,
        now_ms: u64,
        may_carry: &mut dyn FnMut(&Destination) -> bool,
    ) -> Take {
        // One lock for the whole take: this runs once per transaction.
        let mut guard = self.lock();
        let table = &mut *guard;
        self.ensure(table, destination);
        let site = table.map[destination].site.clone();
        let site = site_mut(&mut table.sites, &site);
        if site.suspended_now(lane, now_ms) || site.over_share(lane, now_ms) {
            return Take::Leave;
        }
        if table.map[destination].ready.is_empty() {
            if let Some(other) = table.switch(destination, lane, waiter, may_carry) {
                return Take::Switched(other);
            }
        }
        let Table {
            map, dirty, sites, ..
        } = table;
        let queue = map.get_mut(destination).expect("ensured");
        touch(dirty, destination, queue);
        let site = site_mut(sites, &queue.site);
        {
            let Some(first) = queue.ready.front().copied() else {
                if !site.starved.is_empty() && site.room(lane, now_ms) == 0 {
                    return Take::Leave;
                }
                if wait && !queue.idle.contains(&waiter) {
                    queue.idle.push(waiter);
                    site.idle += 1;
                }
                return Take::Idle;
            };
            if let Err(retry_ms) = queue.bucket.take(queue.shaping.message_rate_max, now_ms) {
                return Take::RateLimited { retry_ms };
            }
            if let Err(retry_ms) = site.take_token(lane, now_ms) {
                queue.bucket.give_back();
                return Take::RateLimited { retry_ms };
            }
            queue.ready.pop_front();
            let mut batch = vec![first];
            let rcpts_max = queue.shaping.recipients_per_transaction_max.max(1);
            // Recipients of one message are queued side by side.
            while batch.len() < rcpts_max {
                match queue.ready.front() {
                    Some(next) if next.queue_id == first.queue_id => {
                        batch.push(*next);
                        queue.ready.pop_front();
                    }
                    _ => break,
                }
            }
            Take::Batch(batch)
        }
    }

    /// The destination's shaping.
    pub fn shaping(&self, destination: &Destination) -> Shaping {
        self.with(destination, |queue, _| queue.shaping)
    }

    /// The site the destination belongs to now.
    pub fn site_of(&self, destination: &Destination) -> Arc<str> {
        self.with(destination, |queue, _| queue.site.clone())
    }

    /// The connection no longer waits for work (it is closing).
    pub fn unidle(&self, destination: &Destination, waiter: Waiter) {
        self.with(destination, |queue, site| site.idle -= queue.unidle(waiter));
    }

    /// The MX answer for `destination` names its site: the destination
    /// joins it (with its connections) and the table remembers the answer
    /// for the next time the domain is queued. `false` when the site has
    /// no room for the connection that asked: it should close unused (the
    /// domain waits in the site's line).
    pub fn join(
        &self,
        destination: &Destination,
        lane: &Arc<str>,
        name: &str,
        shaping: SiteShaping,
        now_ms: u64,
    ) -> bool {
        let mut table = self.lock();
        let name: Arc<str> = match table.sites.get_key_value(name) {
            Some((known, _)) => known.clone(),
            None => name.into(),
        };
        if table.learned.len() >= LEARNED_SITES_MAX {
            table.learned.clear();
        }
        table
            .learned
            .insert(destination.clone(), (name.clone(), shaping));
        let Some(queue) = table.map.get_mut(destination) else {
            return true;
        };
        queue.learning = false;
        let joined = queue.site == name;
        if !joined {
            table.move_to(destination, name.clone(), shaping, now_ms);
        }
        let site = site_mut(&mut table.sites, &name);
        let limit = site.limit(lane, now_ms);
        let open = site.lanes.get(lane).map_or(0, |l| l.connections);
        let paused = site.paused_until_ms > now_ms
            || site
                .lanes
                .get(lane)
                .is_some_and(|l| l.paused_until_ms > now_ms);
        // Joined before: this connection was counted in the site's room.
        (joined || open <= limit) && !paused
    }

    /// A connection ended (or was never opened). Returns what to do with
    /// the room it left: a waiting member of its site may take it.
    pub fn closed(
        &self,
        destination: &Destination,
        lane: &Arc<str>,
        waiter: Option<Waiter>,
        now_ms: u64,
    ) -> Vec<Action> {
        let mut table = self.lock();
        self.ensure(&mut table, destination);
        let Table {
            map, dirty, sites, ..
        } = &mut *table;
        let queue = map.get_mut(destination).expect("ensured");
        queue.count(lane, false);
        let site = site_mut(sites, &queue.site);
        site.close(lane);
        if let Some(waiter) = waiter {
            site.idle -= queue.unidle(waiter);
        }
        touch(dirty, destination, queue);
        let name = queue.site.clone();
        let mut actions = Vec::new();
        table.feed_starved(&name, now_ms, &mut actions);
        actions
    }

    /// The destination failed us: fewer connections and a pause that
    /// doubles with each failure in a row, for its site from this source
    /// (no host answered, a `421`) or, `site_wide` false, for the domain
    /// alone (its DNS failed). Returns the domain's connections still
    /// open besides the failed one's.
    pub fn failed(
        &self,
        destination: &Destination,
        lane: &Arc<str>,
        site_wide: bool,
        pause_ms: u64,
        pause_ms_max: u64,
        now_ms: u64,
    ) -> usize {
        self.with(destination, |queue, site| {
            if site_wide {
                site.failed(lane, pause_ms, pause_ms_max, now_ms);
            } else {
                queue.failures = queue.failures.saturating_add(1);
                let pause = site::backoff(queue.failures, pause_ms, pause_ms_max);
                queue.paused_until_ms = queue.paused_until_ms.max(now_ms + pause);
            }
            queue.connections.saturating_sub(1)
        })
    }

    /// A transaction went through: the site × source recovers one
    /// connection of its limit, and both forget their failures.
    pub fn succeeded(&self, destination: &Destination, lane: &Arc<str>, now_ms: u64) {
        self.with(destination, |queue, site| {
            queue.failures = 0;
            site.succeeded(lane, now_ms);
        });
    }

    /// A shaping rule's suspension of the destination's site from the
    /// source `lane` (the receiver spoke about that IP): no connection
    /// until `until_ms`; then it starts again from one connection and
    /// grows by one per good transaction (what Gmail asks after `421
    /// 4.7.28`). Connections already open finish what they carry. `true`
    /// when it was not paused at `now_ms`: a change worth telling.
    pub fn suspend_site_of(
        &self,
        destination: &Destination,
        lane: &Arc<str>,
        until_ms: u64,
        reason: String,
        now_ms: u64,
    ) -> bool {
        let mut table = self.lock();
        self.ensure(&mut table, destination);
        let name = table.map[destination].site.clone();
        let changed =
            site_mut(&mut table.sites, &name).suspend_lane(lane, until_ms, reason.clone(), now_ms);
        table.touch_members(&name);
        drop(table);
        self.announce(SiteAction::SuspendLane {
            site: name.to_string(),
            lane: lane.to_string(),
            until_ms,
            reason,
        });
        changed
    }

    /// A shaping rule's throttle of the destination's site: lower
    /// connection or rate limits until `throttle.until_ms`; a later
    /// throttle replaces an earlier one. `true` when none was in force.
    pub fn throttle_site_of(
        &self,
        destination: &Destination,
        lane: &Arc<str>,
        throttle: Throttle,
        now_ms: u64,
    ) -> bool {
        let mut table = self.lock();
        self.ensure(&mut table, destination);
        let name = table.map[destination].site.clone();
        let changed =
            site_mut(&mut table.sites, &name).set_throttle(lane, throttle.clone(), now_ms);
        table.touch_members(&name);
        drop(table);
        self.announce(SiteAction::Throttle {
            site: name.to_string(),
            lane: lane.to_string(),
            throttle,
        });
        changed
    }

    /// An operator's suspension of `name`: a site (by its name, known or
    /// configured), else a recipient domain alone.
    pub fn suspend(&self, name: &str, until_ms: u64, reason: String, now_ms: u64) -> bool {
        let changed = self.suspend_here(name, until_ms, reason.clone(), now_ms);
        self.announce(SiteAction::Suspend {
            name: name.to_owned(),
            until_ms,
            reason,
        });
        changed
    }

    fn suspend_here(&self, name: &str, until_ms: u64, reason: String, now_ms: u64) -> bool {
        let mut table = self.lock();
        let site_name: Option<Arc<str>> = match table.sites.get_key_value(name) {
            Some((known, _)) => Some(known.clone()),
            None => (table.policy.site_named)(name).map(|shaping| {
                let name: Arc<str> = name.into();
                let site = Site::new(shaping, table.bound);
                table.sites.insert(name.clone(), site);
                name
            }),
        };
        if let Some(site_name) = site_name {
            let changed = site_mut(&mut table.sites, &site_name).suspend(until_ms, reason, now_ms);
            table.touch_members(&site_name);
            return changed;
        }
        let destination = Destination::new(name);
        self.ensure(&mut table, &destination);
        let Table { map, dirty, .. } = &mut *table;
        let queue = map.get_mut(&destination).expect("ensured");
        touch(dirty, &destination, queue);
        let was_paused = queue.paused_until_ms > now_ms;
        if until_ms > queue.paused_until_ms {
            queue.paused_until_ms = until_ms;
            queue.suspended = Some(reason);
        }
        !was_paused
    }

    /// Lifts pauses and throttles of a site (by name) or of a domain and
    /// its site: full limits again (an operator's `baton site resume`).
    /// `false` if baton knows no such site or domain.
    pub fn resume(&self, name: &str) -> bool {
        let known = self.resume_here(name);
        if known {
            self.announce(SiteAction::Resume {
                name: name.to_owned(),
            });
        }
        known
    }

    fn resume_here(&self, name: &str) -> bool {
        let mut guard = self.lock();
        let table = &mut *guard;
        let destination = Destination::new(name);
        let site_name = match table.map.get_mut(&destination) {
            Some(queue) => {
                queue.paused_until_ms = 0;
                queue.suspended = None;
                queue.failures = 0;
                touch(&mut table.dirty, &destination, queue);
                queue.site.clone()
            }
            None => match table.sites.get_key_value(name) {
                Some((known, _)) => known.clone(),
                None => return false,
            },
        };
        if let Some(site) = table.sites.get_mut(&site_name) {
            site.resume();
        }
        table.touch_members(&site_name);
        true
    }

    /// Takes every ready recipient (a destination that failed as a whole:
    /// null MX, no such domain, every host down).
    pub fn drain_ready(&self, destination: &Destination) -> Vec<QueuedRecipient> {
        self.with(destination, |queue, _| queue.ready.drain(..).collect())
    }

    /// Makes scheduled recipients due now, for one destination or all.
    /// Returns how many were moved.
    pub fn flush(&self, destination: Option<&Destination>, now_ms: u64) -> usize {
        let mut table = self.lock();
        let Table {
            map, dirty, sites, ..
        } = &mut *table;
        let mut moved = 0;
        for (d, queue) in map.iter_mut() {
            if destination.is_some_and(|wanted| wanted != d) {
                continue;
            }
            moved += queue.scheduled.len();
            while let Some((_, item)) = queue.scheduled.pop_first() {
                queue.ready.push_back(item);
            }
            queue.paused_until_ms = queue.paused_until_ms.min(now_ms);
            if let Some(site) = sites.get_mut(&queue.site) {
                site.paused_until_ms = site.paused_until_ms.min(now_ms);
                for lane in site.lanes.values_mut() {
                    lane.paused_until_ms = lane.paused_until_ms.min(now_ms);
                    lane.suspended_until_ms = lane.suspended_until_ms.min(now_ms);
                }
            }
            touch(dirty, d, queue);
        }
        moved
    }

    /// Takes every queued recipient of one message (at `domain`, if one is
    /// named), wherever it waits.
    pub fn remove(
        &self,
        queue_id: QueueId,
        domain: Option<&str>,
    ) -> Vec<(Destination, QueuedRecipient)> {
        let mut table = self.lock();
        let Table { map, dirty, .. } = &mut *table;
        let mut out = Vec::new();
        for (d, queue) in map.iter_mut() {
            if domain.is_some_and(|domain| d.as_str() != domain) {
                continue;
            }
            let before = out.len();
            queue.ready.retain(|item| {
                let keep = item.queue_id != queue_id;
                if !keep {
                    out.push((d.clone(), *item));
                }
                keep
            });
            queue.scheduled.retain(|_, item| {
                let keep = item.queue_id != queue_id;
                if !keep {
                    out.push((d.clone(), *item));
                }
                keep
            });
            if out.len() > before {
                touch(dirty, d, queue);
            }
        }
        out
    }

    /// Per destination counts, sorted by destination, now.
    pub fn summary(&self) -> Vec<DestinationSummary> {
        self.summary_at(crate::server::unix_ms())
    }

    /// [`Queues::summary`] as of `now_ms` (what is in force then).
    pub fn summary_at(&self, now_ms: u64) -> Vec<DestinationSummary> {
        let mut table = self.lock();
        let Table { map, sites, .. } = &mut *table;
        let mut out: Vec<_> = map
            .iter()
            .map(|(d, q)| {
                let site = site_mut(sites, &q.site);
                let cap: usize = q
                    .lanes
                    .iter()
                    .map(|(lane, _)| site.limit(lane, now_ms))
                    .sum();
                let (site_paused, site_reason, throttle) = site.shown(now_ms);
                let (paused_until_ms, suspended) = if q.paused_until_ms > site_paused {
                    (q.paused_until_ms, q.suspended.clone())
                } else {
                    (site_paused, site_reason)
                };
                DestinationSummary {
                    destination: d.to_string(),
                    ready: q.ready.len(),
                    scheduled: q.scheduled.len(),
                    connections: q.connections,
                    paused_until_ms,
                    suspended,
                    connections_limit: cap.min(q.shaping.connections_max.max(1)),
                    throttle,
                    site: (*q.site != *d.as_str()).then(|| q.site.to_string()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }

    /// Per site counts and state, sorted by site, now.
    pub fn sites(&self) -> Vec<SiteSummary> {
        self.sites_at(crate::server::unix_ms())
    }

    /// [`Queues::sites`] as of `now_ms` (what is in force then).
    pub fn sites_at(&self, now_ms: u64) -> Vec<SiteSummary> {
        let mut table = self.lock();
        let Table { map, sites, .. } = &mut *table;
        // A suspension that outlived its members has ended: forget it.
        sites.retain(|_, site| !site.forgettable(now_ms));
        let mut out: Vec<_> = sites
            .iter_mut()
            .map(|(name, site)| {
                let (mut ready, mut scheduled) = (0, 0);
                for member in &site.members {
                    if let Some(q) = map.get(member) {
                        ready += q.ready.len();
                        scheduled += q.scheduled.len();
                    }
                }
                let waiting = site
                    .starved
                    .iter()
                    .filter(|d| map.get(*d).is_some_and(|q| q.starved))
                    .count();
                let (paused_until_ms, suspended, throttle) = site.shown(now_ms);
                let sources = site.lane_summaries(now_ms);
                let connections_limit = if site.lanes.is_empty() {
                    site.shaping.connections_max.max(1)
                } else {
                    let lanes: Vec<Arc<str>> = site.lanes.keys().cloned().collect();
                    lanes.iter().map(|lane| site.limit(lane, now_ms)).sum()
                };
                SiteSummary {
                    site: name.to_string(),
                    domains: site.members.len(),
                    ready,
                    scheduled,
                    connections: site.connections,
                    connections_limit,
                    waiting,
                    paused_until_ms,
                    suspended,
                    throttle,
                    sources,
                }
            })
            .collect();
        out.sort_by(|a, b| a.site.cmp(&b.site));
        out
    }
}
