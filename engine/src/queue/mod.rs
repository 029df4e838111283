//! The destination table: one entry per destination, shared by every shard.
//!
//! Each destination has a *ready* queue (recipients to attempt now), a
//! *scheduled* queue (deferred recipients, ordered by their next attempt),
//! and the state that shapes traffic to it across all shards: how many
//! connections are open or opening, the limit in force (lowered after a
//! `421` or a failed connection, raised again by each good transaction), a
//! pause, a message-rate bucket, and the idle connections waiting for work.
//!
//! Shards push accepted recipients here once their message is durable, and
//! recovery pushes what the spool returned. Every connection to a
//! destination, on whichever shard, pulls from its one ready queue, so work
//! balances itself (docs/architecture.md, "The path of one recipient out"). The table
//! never does I/O: it answers with what the caller should do — open a
//! connection, wake an idle one on some shard — and the shards act.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;

use baton_spool::{QueueId, Status};

use crate::route::Destination;

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
    /// Open a connection to the destination; it is already counted.
    Open(Destination),
    /// Tell this idle connection there is work.
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
    /// The destination's message rate is used up: ask again at this time.
    RateLimited { retry_ms: u64 },
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
    /// The connection limit in force: `shaping.connections_max`, halved
    /// by each failure, raised by one per good transaction.
    limit: usize,
    paused_until_ms: u64,
    /// Consecutive failures; the pause doubles with each.
    failures: u32,
    idle: Vec<Waiter>,
    /// Message-rate bucket: tokens and when they were last topped up.
    tokens: f64,
    tokens_ms: u64,
    /// Lower limits for a while, set by a shaping rule or an operator.
    throttle: Option<Throttle>,
    /// Why the destination is paused, when a rule or an operator paused it.
    suspended: Option<String>,
    /// The site it shares connections with (a route's next hop), if any.
    site: Option<Arc<str>>,
    /// Changed since the last sweep: on the table's `dirty` list.
    dirty: bool,
    /// Its entry in the table's `due` index, if it has one.
    due_ms: Option<u64>,
}

/// Limits below the destination's shaping, until a time: what a shaping
/// rule (`crate::shaping::rules`) sets when a receiver says "slow down".
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Throttle {
    pub until_ms: u64,
    pub connections_max: Option<usize>,
    pub message_rate_max: Option<u32>,
    /// The rule and the reply that set it.
    pub reason: String,
}

impl DestinationQueue {
    fn new(shaping: Shaping) -> DestinationQueue {
        DestinationQueue {
            ready: VecDeque::new(),
            scheduled: BTreeMap::new(),
            scheduled_seq: 0,
            shaping,
            connections: 0,
            limit: shaping.connections_max.max(1),
            paused_until_ms: 0,
            failures: 0,
            idle: Vec::new(),
            tokens: f64::from(shaping.message_rate_max),
            tokens_ms: 0,
            throttle: None,
            suspended: None,
            site: None,
            dirty: false,
            due_ms: None,
        }
    }

    /// When a sweep must look at the destination again though nothing
    /// changes it: its next scheduled recipient comes due, its pause or
    /// throttle ends.
    fn next_due(&self, now_ms: u64) -> Option<u64> {
        let scheduled = self.scheduled.first_key_value().map(|((at, _), _)| *at);
        let paused = (self.paused_until_ms > now_ms).then_some(self.paused_until_ms);
        let throttle = self
            .throttle
            .as_ref()
            .map(|t| t.until_ms)
            .filter(|until| *until > now_ms);
        [scheduled, paused, throttle].into_iter().flatten().min()
    }

    /// Nothing queued, open or in force: the table may forget it.
    fn forgettable(&self, now_ms: u64) -> bool {
        self.ready.is_empty()
            && self.scheduled.is_empty()
            && self.connections == 0
            && self.paused_until_ms <= now_ms
            && self.throttle.as_ref().is_none_or(|t| t.until_ms <= now_ms)
    }

    /// The throttle in force at `now_ms`, dropping an expired one.
    fn throttle(&mut self, now_ms: u64) -> Option<&Throttle> {
        if self.throttle.as_ref().is_some_and(|t| t.until_ms <= now_ms) {
            self.throttle = None;
        }
        self.throttle.as_ref()
    }

    /// The most connections allowed now: the shaping's, or a throttle's.
    fn connections_cap(&mut self, now_ms: u64) -> usize {
        let max = self.shaping.connections_max.max(1);
        match self.throttle(now_ms).and_then(|t| t.connections_max) {
            Some(cap) => cap.clamp(1, max),
            None => max,
        }
    }

    /// Messages per second allowed now; 0 = no limit.
    fn rate_cap(&mut self, now_ms: u64) -> u32 {
        let rate = self.shaping.message_rate_max;
        match self.throttle(now_ms).and_then(|t| t.message_rate_max) {
            Some(cap) if rate == 0 => cap.max(1),
            Some(cap) => cap.clamp(1, rate),
            None => rate,
        }
    }

    /// More connections are wanted when the ready recipients outnumber the
    /// connections carrying them (each carries one transaction at a time)
    /// and none is idle.
    fn wants_connection(&mut self, now_ms: u64) -> bool {
        let cap = self.connections_cap(now_ms);
        !self.shaping.hold
            && self.idle.is_empty()
            && now_ms >= self.paused_until_ms
            && self.connections < self.limit.min(cap)
            && self.ready.len() > self.connections
    }

    fn schedule(&mut self, next_attempt_ms: u64, item: QueuedRecipient) {
        self.scheduled_seq += 1;
        self.scheduled
            .insert((next_attempt_ms, self.scheduled_seq), item);
    }

    /// Moves scheduled recipients that are due to the ready queue.
    fn promote(&mut self, now_ms: u64) {
        while let Some(entry) = self.scheduled.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            self.ready.push_back(entry.remove());
        }
    }

    /// Takes a rate token; `Err(retry_ms)` when there is none.
    fn take_token(&mut self, now_ms: u64) -> Result<(), u64> {
        let rate = f64::from(self.rate_cap(now_ms));
        if rate == 0.0 {
            return Ok(());
        }
        let elapsed_s = now_ms.saturating_sub(self.tokens_ms) as f64 / 1000.0;
        // A burst of at most one second's worth.
        self.tokens = (self.tokens + elapsed_s * rate).min(rate.max(1.0));
        self.tokens_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = ((1.0 - self.tokens) / rate * 1000.0).ceil() as u64;
            Err(now_ms + wait_ms.max(1))
        }
    }

    /// Wakes idle connections and opens new ones, at most `room` (what its
    /// site has left); returns how many it opened.
    fn actions(
        &mut self,
        destination: &Destination,
        now_ms: u64,
        out: &mut Vec<Action>,
        room: usize,
    ) -> usize {
        if self.ready.is_empty() {
            return 0;
        }
        // Wake as many idle connections as there are ready recipients.
        let wake = self.idle.len().min(self.ready.len());
        for waiter in self.idle.drain(..wake) {
            out.push(Action::Wake(waiter));
        }
        let mut opened = 0;
        while opened < room && self.wants_connection(now_ms) {
            self.connections += 1;
            opened += 1;
            out.push(Action::Open(destination.clone()));
        }
        opened
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
    /// Unix ms until which no new connection is opened; 0 when not paused.
    #[serde(default)]
    pub paused_until_ms: u64,
    /// Why it is paused, when a shaping rule or an operator paused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<String>,
    /// The connection limit in force (lowered after failures and by
    /// throttles, raised by good transactions).
    #[serde(default)]
    pub connections_limit: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// The site whose connections it shares (a route's next hop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// Every destination's queues.
pub struct Queues {
    inner: Mutex<Table>,
    shaping_for: Box<dyn Fn(&Destination) -> Shaping + Send + Sync>,
    /// The site a destination belongs to and the site's connection limit:
    /// every destination routed to one next hop shares its connections.
    site_for: SiteFor,
}

/// See [`Queues::with_sites`].
pub type SiteFor = Box<dyn Fn(&Destination) -> Option<(String, usize)> + Send + Sync>;

/// Connections shared by the destinations of one site.
#[derive(Debug)]
struct Site {
    connections: usize,
    limit: usize,
    members: HashSet<Destination>,
}

/// The destinations, and what the sweep must visit: a sweep looks only at
/// destinations changed since the last one and those whose time has come,
/// never at all of them (100,000 recipients over 10,000 destinations: a
/// sweep with nothing due went from 72 µs to under a microsecond,
/// `benches/queue_plan.rs`).
#[derive(Default)]
struct Table {
    map: HashMap<Destination, DestinationQueue>,
    /// Changed since the last sweep, each once (its `dirty` flag).
    dirty: Vec<Destination>,
    /// (when, destination): [`DestinationQueue::next_due`] of each
    /// destination that has one, as of its last visit.
    due: BTreeSet<(u64, Destination)>,
    sites: HashMap<Arc<str>, Site>,
}

/// How many more connections the site allows (no site: no bound).
fn site_room(sites: &HashMap<Arc<str>, Site>, site: Option<&Arc<str>>) -> usize {
    site.and_then(|name| sites.get(name))
        .map_or(usize::MAX, |s| s.limit.saturating_sub(s.connections))
}

impl Table {
    /// Puts `destination` on the dirty list, once.
    fn touch(
        dirty: &mut Vec<Destination>,
        destination: &Destination,
        queue: &mut DestinationQueue,
    ) {
        if !queue.dirty {
            queue.dirty = true;
            dirty.push(destination.clone());
        }
    }
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
    /// A table whose destinations take their shaping from `shaping_for`.
    pub fn new(shaping_for: Box<dyn Fn(&Destination) -> Shaping + Send + Sync>) -> Queues {
        Queues {
            inner: Mutex::new(Table::default()),
            shaping_for,
            site_for: Box::new(|_| None),
        }
    }

    /// Groups destinations into sites: `site_for` names a destination's
    /// site and gives the site's connection limit, which all its
    /// destinations share (a smart host routed to by many domains opens
    /// at most that many connections, not that many per domain).
    pub fn with_sites(mut self, site_for: SiteFor) -> Queues {
        self.site_for = site_for;
        self
    }

    /// The destination's queue, made (and joined to its site) if new.
    fn queue<'t>(
        &self,
        map: &'t mut HashMap<Destination, DestinationQueue>,
        sites: &mut HashMap<Arc<str>, Site>,
        destination: &Destination,
    ) -> &'t mut DestinationQueue {
        if !map.contains_key(destination) {
            let mut queue = DestinationQueue::new((self.shaping_for)(destination));
            if let Some((name, limit)) = (self.site_for)(destination) {
                let name: Arc<str> = name.into();
                let site = sites.entry(name.clone()).or_insert_with(|| Site {
                    connections: 0,
                    limit: limit.max(1),
                    members: HashSet::new(),
                });
                site.members.insert(destination.clone());
                queue.site = Some(name);
            }
            map.insert(destination.clone(), queue);
        }
        map.get_mut(destination).expect("just made")
    }

    /// Runs `f` on the destination's queue (made if new) and marks it for
    /// the next sweep.
    fn with<R>(&self, destination: &Destination, f: impl FnOnce(&mut DestinationQueue) -> R) -> R {
        let mut table = self.inner.lock().expect("queues lock");
        let Table {
            map, dirty, sites, ..
        } = &mut *table;
        let queue = self.queue(map, sites, destination);
        let result = f(queue);
        Table::touch(dirty, destination, queue);
        result
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
        let mut table = self.inner.lock().expect("queues lock");
        let Table {
            map, dirty, sites, ..
        } = &mut *table;
        let queue = self.queue(map, sites, destination);
        Table::touch(dirty, destination, queue);
        {
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
            if let Some(waiter) = queue.idle.pop() {
                actions.push(Action::Wake(waiter));
            } else if site_room(sites, queue.site.as_ref()) > 0 && queue.wants_connection(now_ms) {
                queue.connections += 1;
                if let Some(site) = queue.site.as_ref().and_then(|name| sites.get_mut(name)) {
                    site.connections += 1;
                }
                actions.push(Action::Open(destination.clone()));
            }
            actions
        }
    }

    /// Queues a recovered recipient without asking for connections: the
    /// shards' first sweep opens them ([`Queues::plan`]).
    pub fn restore(&self, destination: &Destination, item: QueuedRecipient, status: Status) {
        self.with(destination, |queue| match status {
            Status::Deferred {
                attempts,
                next_attempt_ms,
            } => queue.schedule(next_attempt_ms, QueuedRecipient { attempts, ..item }),
            _ => queue.ready.push_back(item),
        });
    }

    /// Queues a deferred recipient for its next attempt.
    pub fn schedule(&self, destination: &Destination, item: QueuedRecipient, next_attempt_ms: u64) {
        self.with(destination, |queue| queue.schedule(next_attempt_ms, item));
    }

    /// The timer: moves due recipients to their ready queues and says which
    /// connections to open or wake. Every shard calls it on its sweep; the
    /// connections it asks for are counted already.
    pub fn plan(&self, now_ms: u64) -> Vec<Action> {
        let mut table = self.inner.lock().expect("queues lock");
        let Table {
            map,
            dirty,
            due,
            sites,
        } = &mut *table;
        let mut visit = std::mem::take(dirty);
        while let Some((at, _)) = due.first() {
            if *at > now_ms {
                break;
            }
            let (_, destination) = due.pop_first().expect("just seen");
            if let Some(queue) = map.get_mut(&destination) {
                queue.due_ms = None;
            }
            visit.push(destination);
        }
        let mut actions = Vec::new();
        for destination in visit {
            let Some(queue) = map.get_mut(&destination) else {
                continue;
            };
            queue.dirty = false;
            if let Some(at) = queue.due_ms.take() {
                due.remove(&(at, destination.clone()));
            }
            queue.promote(now_ms);
            let room = site_room(sites, queue.site.as_ref());
            let opened = queue.actions(&destination, now_ms, &mut actions, room);
            if let Some(site) = queue.site.as_ref().and_then(|name| sites.get_mut(name)) {
                site.connections += opened;
            }
            // Forget destinations with nothing left, so the table stays
            // small; but not a suspension or a throttle, which must
            // outlive a lull.
            if queue.forgettable(now_ms) {
                if let Some(name) = &queue.site {
                    if let Some(site) = sites.get_mut(name) {
                        site.members.remove(&destination);
                        if site.members.is_empty() && site.connections == 0 {
                            sites.remove(name);
                        }
                    }
                }
                map.remove(&destination);
                continue;
            }
            if let Some(at) = queue.next_due(now_ms) {
                queue.due_ms = Some(at);
                due.insert((at, destination));
            }
        }
        actions
    }

    /// Work for a connection that is ready for its next transaction:
    /// recipients of one message (at most the destination's recipients per
    /// transaction). With nothing ready the connection is registered idle
    /// when it asks to `wait`.
    pub fn take(&self, destination: &Destination, waiter: Waiter, wait: bool, now_ms: u64) -> Take {
        self.with(destination, |queue| {
            let Some(first) = queue.ready.front().copied() else {
                if wait && !queue.idle.contains(&waiter) {
                    queue.idle.push(waiter);
                }
                return Take::Idle;
            };
            if let Err(retry_ms) = queue.take_token(now_ms) {
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
        })
    }

    /// The destination's shaping.
    pub fn shaping(&self, destination: &Destination) -> Shaping {
        self.with(destination, |queue| queue.shaping)
    }

    /// The connection no longer waits for work (it is closing).
    pub fn unidle(&self, destination: &Destination, waiter: Waiter) {
        self.with(destination, |queue| queue.idle.retain(|w| *w != waiter));
    }

    /// A connection ended (or was never opened).
    pub fn closed(&self, destination: &Destination, waiter: Option<Waiter>) {
        let mut table = self.inner.lock().expect("queues lock");
        let Table {
            map, dirty, sites, ..
        } = &mut *table;
        let queue = self.queue(map, sites, destination);
        queue.connections = queue.connections.saturating_sub(1);
        if let Some(waiter) = waiter {
            queue.idle.retain(|w| *w != waiter);
        }
        Table::touch(dirty, destination, queue);
        // A connection of the site is free: its other destinations with
        // mail waiting may take it at the next sweep.
        let Some(name) = queue.site.clone() else {
            return;
        };
        let Some(site) = sites.get_mut(&name) else {
            return;
        };
        site.connections = site.connections.saturating_sub(1);
        for member in &site.members {
            if let Some(other) = map.get_mut(member) {
                if !other.ready.is_empty() {
                    Table::touch(dirty, member, other);
                }
            }
        }
    }

    /// The destination failed us (no host answered, a `421`): fewer
    /// connections and a pause that doubles with each failure in a row.
    /// Returns the connections still open besides the failed one's.
    pub fn failed(
        &self,
        destination: &Destination,
        pause_ms: u64,
        pause_ms_max: u64,
        now_ms: u64,
    ) -> usize {
        self.with(destination, |queue| {
            queue.failures = queue.failures.saturating_add(1);
            queue.limit = (queue.limit / 2).max(1);
            let factor = 1u64 << queue.failures.saturating_sub(1).min(20);
            let pause = pause_ms.saturating_mul(factor).min(pause_ms_max);
            queue.paused_until_ms = queue.paused_until_ms.max(now_ms + pause);
            queue.connections.saturating_sub(1)
        })
    }

    /// A transaction went through: the destination recovers one connection
    /// of its limit and its failure count.
    pub fn succeeded(&self, destination: &Destination, now_ms: u64) {
        self.with(destination, |queue| {
            queue.failures = 0;
            if queue.limit < queue.connections_cap(now_ms) {
                queue.limit += 1;
            }
        });
    }

    /// Opens no connection to the destination until `until_ms`; then it
    /// starts again from one connection and grows by one per good
    /// transaction (what Gmail asks after `421 4.7.28`). Connections
    /// already open finish what they carry. `true` when it was not
    /// paused at `now_ms`: a change worth telling.
    pub fn suspend(
        &self,
        destination: &Destination,
        until_ms: u64,
        reason: String,
        now_ms: u64,
    ) -> bool {
        self.with(destination, |queue| {
            let was_paused = queue.paused_until_ms > now_ms;
            if until_ms > queue.paused_until_ms {
                queue.paused_until_ms = until_ms;
                queue.suspended = Some(reason);
            }
            queue.limit = 1;
            !was_paused
        })
    }

    /// Lowers the destination's connection or rate limit until
    /// `throttle.until_ms`; a later throttle replaces an earlier one.
    /// `true` when none was in force at `now_ms`.
    pub fn throttle(&self, destination: &Destination, throttle: Throttle, now_ms: u64) -> bool {
        self.with(destination, |queue| {
            let was = queue.throttle(now_ms).is_some();
            if let Some(cap) = throttle.connections_max {
                queue.limit = queue.limit.min(cap.max(1));
            }
            if queue
                .throttle
                .as_ref()
                .is_none_or(|t| t.until_ms <= throttle.until_ms)
            {
                queue.throttle = Some(throttle);
            }
            !was
        })
    }

    /// Lifts a pause and a throttle at once (an operator's `baton site
    /// resume`): full limits again. `false` if baton knows no such
    /// destination.
    pub fn resume(&self, destination: &Destination) -> bool {
        let mut table = self.inner.lock().expect("queues lock");
        let Table { map, dirty, .. } = &mut *table;
        let Some(queue) = map.get_mut(destination) else {
            return false;
        };
        Table::touch(dirty, destination, queue);
        queue.paused_until_ms = 0;
        queue.suspended = None;
        queue.throttle = None;
        queue.failures = 0;
        queue.limit = queue.shaping.connections_max.max(1);
        true
    }

    /// Takes every ready recipient (a destination that failed as a whole:
    /// null MX, no such domain, every host down).
    pub fn drain_ready(&self, destination: &Destination) -> Vec<QueuedRecipient> {
        self.with(destination, |queue| queue.ready.drain(..).collect())
    }

    /// Makes scheduled recipients due now, for one destination or all.
    /// Returns how many were moved.
    pub fn flush(&self, destination: Option<&Destination>, now_ms: u64) -> usize {
        let mut table = self.inner.lock().expect("queues lock");
        let Table { map, dirty, .. } = &mut *table;
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
            Table::touch(dirty, d, queue);
        }
        moved
    }

    /// Takes every queued recipient of one message, wherever it waits.
    pub fn remove(&self, queue_id: QueueId) -> Vec<(Destination, QueuedRecipient)> {
        let mut table = self.inner.lock().expect("queues lock");
        let Table { map, dirty, .. } = &mut *table;
        let mut out = Vec::new();
        for (d, queue) in map.iter_mut() {
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
                Table::touch(dirty, d, queue);
            }
        }
        out
    }

    /// Per destination counts, sorted by destination.
    pub fn summary(&self) -> Vec<DestinationSummary> {
        let table = self.inner.lock().expect("queues lock");
        let mut out: Vec<_> = table
            .map
            .iter()
            .map(|(d, q)| DestinationSummary {
                destination: d.to_string(),
                ready: q.ready.len(),
                scheduled: q.scheduled.len(),
                connections: q.connections,
                paused_until_ms: q.paused_until_ms,
                suspended: q.suspended.clone(),
                connections_limit: q.limit,
                throttle: q.throttle.clone(),
                site: q.site.as_deref().map(str::to_owned),
            })
            .collect();
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::route::destination_of;

    fn item(id: u64, recipient: u32) -> QueuedRecipient {
        QueuedRecipient {
            queue_id: QueueId(id),
            recipient,
            attempts: 0,
        }
    }

    fn waiter(conn: u64) -> Waiter {
        Waiter { shard: 0, conn }
    }

    #[test]
    fn pending_is_ready_and_deferred_is_scheduled() {
        let queues = Queues::default();
        let x = destination_of(b"a@x.org");
        queues.push(&x, &[item(1, 0)], Status::Pending, 0);
        queues.push(
            &destination_of(b"b@X.org"),
            &[item(2, 0)],
            Status::Pending,
            0,
        );
        let deferred = Status::Deferred {
            attempts: 1,
            next_attempt_ms: 5,
        };
        queues.push(&destination_of(b"c@y.org"), &[item(3, 0)], deferred, 0);
        let summary = queues.summary();
        assert_eq!(summary.len(), 2);
        assert_eq!((summary[0].ready, summary[0].scheduled), (2, 0));
        assert_eq!((summary[1].ready, summary[1].scheduled), (0, 1));
    }

    #[test]
    fn pushes_open_connections_up_to_the_limit() {
        let shaping = Shaping {
            connections_max: 2,
            ..Shaping::default()
        };
        let queues = Queues::new(Box::new(move |_| shaping));
        let d = destination_of(b"a@x.org");
        let mut opened = 0;
        for id in 0..10 {
            for action in queues.push(&d, &[item(id, 0)], Status::Pending, 0) {
                assert_eq!(action, Action::Open(d.clone()));
                opened += 1;
            }
        }
        assert_eq!(opened, 2);
        assert_eq!(queues.summary()[0].connections, 2);
    }

    #[test]
    fn take_groups_one_message_and_idles_when_empty() {
        let queues = Queues::default();
        let d = destination_of(b"a@x.org");
        let one_message = [item(7, 0), item(7, 1), item(7, 2)];
        let actions = queues.push(&d, &one_message, Status::Pending, 0);
        assert_eq!(
            actions,
            [Action::Open(d.clone())],
            "one connection per message"
        );
        queues.push(&d, &[item(8, 0)], Status::Pending, 0);
        let Take::Batch(batch) = queues.take(&d, waiter(1), true, 0) else {
            panic!("expected a batch");
        };
        assert_eq!(
            batch.iter().map(|i| i.recipient).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(matches!(queues.take(&d, waiter(1), true, 0), Take::Batch(b) if b.len() == 1));
        assert_eq!(queues.take(&d, waiter(1), true, 0), Take::Idle);
        // The next push wakes the idle connection instead of opening one.
        let actions = queues.push(&d, &[item(9, 0)], Status::Pending, 0);
        assert_eq!(actions, [Action::Wake(waiter(1))]);
    }

    #[test]
    fn plan_promotes_due_recipients() {
        let queues = Queues::default();
        let d = destination_of(b"a@x.org");
        queues.schedule(&d, item(1, 0), 100);
        assert!(queues.plan(99).is_empty());
        assert_eq!(queues.plan(100), [Action::Open(d.clone())]);
        assert_eq!(queues.summary()[0].ready, 1);
    }

    #[test]
    fn failures_pause_and_halve_then_recover() {
        let shaping = Shaping {
            connections_max: 8,
            ..Shaping::default()
        };
        let queues = Queues::new(Box::new(move |_| shaping));
        let d = destination_of(b"a@x.org");
        queues.push(&d, &[item(1, 0)], Status::Pending, 0);
        queues.failed(&d, 1000, 60_000, 0);
        queues.closed(&d, None);
        for id in 2..20 {
            queues.push(&d, &[item(id, 0)], Status::Pending, 10);
        }
        assert!(queues.plan(500).is_empty(), "paused");
        let opened = queues.plan(1000).len();
        assert_eq!(opened, 4, "limit halved from 8");
        // A second failure doubles the pause.
        queues.failed(&d, 1000, 60_000, 1000);
        assert!(queues.summary()[0].paused_until_ms >= 3000);
        queues.succeeded(&d, 1000);
    }

    #[test]
    fn a_suspension_pauses_then_restarts_from_one_connection() {
        let shaping = Shaping {
            connections_max: 8,
            ..Shaping::default()
        };
        let queues = Queues::new(Box::new(move |_| shaping));
        let d = destination_of(b"a@x.org");
        // Twenty ready, and the connections they opened gone again.
        let mut opened = 0;
        for id in 0..20 {
            opened += queues.push(&d, &[item(id, 0)], Status::Pending, 0).len();
        }
        assert_eq!(opened, 8);
        for _ in 0..opened {
            queues.closed(&d, None);
        }
        assert!(queues.suspend(&d, 600_000, "421 4.7.28".into(), 0));
        assert!(
            !queues.suspend(&d, 600_000, "421 4.7.28".into(), 1),
            "already"
        );
        assert!(queues.plan(599_999).is_empty(), "suspended");
        assert_eq!(queues.summary()[0].suspended.as_deref(), Some("421 4.7.28"));
        assert_eq!(queues.plan(600_000).len(), 1, "one connection after");
        // Each good transaction allows one more.
        queues.succeeded(&d, 600_001);
        assert_eq!(queues.plan(600_001).len(), 1);
        // An operator lifts it all.
        queues.suspend(&d, 900_000, "again".into(), 600_001);
        assert!(queues.resume(&d));
        assert!(queues.summary()[0].suspended.is_none());
        assert_eq!(queues.summary()[0].connections_limit, 8);
        assert!(!queues.resume(&destination_of(b"a@unknown.org")));
        // A suspension outlives an empty queue: an operator may suspend a
        // site before mail for it arrives.
        let quiet = destination_of(b"a@quiet.org");
        queues.suspend(&quiet, 900_000, "operator".into(), 600_001);
        queues.plan(600_002);
        assert!(queues
            .summary()
            .iter()
            .any(|s| s.destination == "quiet.org"));
    }

    #[test]
    fn a_sweep_visits_what_changed_and_what_came_due_and_nothing_else() {
        let queues = Queues::default();
        for d in 0..100u64 {
            let destination = Destination::new(format!("d{d}.example"));
            let status = Status::Deferred {
                attempts: 1,
                next_attempt_ms: 1_000 + d * 10,
            };
            queues.push(&destination, &[item(d, 0)], status, 0);
        }
        // The pushes made them dirty: one sweep indexes them, opens nothing.
        assert!(queues.plan(0).is_empty());
        assert_eq!(queues.inner.lock().unwrap().due.len(), 100);
        // Two come due: exactly their connections open.
        let actions = queues.plan(1_010);
        assert_eq!(
            actions,
            [
                Action::Open(Destination::new("d0.example")),
                Action::Open(Destination::new("d1.example"))
            ]
        );
        assert_eq!(queues.inner.lock().unwrap().due.len(), 98);
        // A suspension of an idle destination is kept until it ends, then
        // the destination is forgotten.
        let quiet = Destination::new("quiet.example");
        queues.suspend(&quiet, 5_000, "operator".into(), 1_010);
        queues.plan(1_011);
        assert!(queues
            .summary()
            .iter()
            .any(|s| s.destination == "quiet.example"));
        queues.plan(5_000);
        assert!(!queues
            .summary()
            .iter()
            .any(|s| s.destination == "quiet.example"));
    }

    #[test]
    fn destinations_of_one_site_share_its_connections() {
        let queues = Queues::new(Box::new(|_| Shaping::default())).with_sites(Box::new(|d| {
            d.as_str()
                .ends_with(".routed")
                .then(|| ("smarthost:25".to_owned(), 3))
        }));
        let mut opened = 0;
        for i in 0..10 {
            let d = Destination::new(format!("d{i}.routed"));
            opened += queues.push(&d, &[item(i, 0)], Status::Pending, 0).len();
        }
        opened += queues.plan(0).len();
        assert_eq!(opened, 3, "one site, three connections in all");
        // A connection of the site closes: another destination takes it.
        queues.closed(&Destination::new("d0.routed"), None);
        assert_eq!(queues.plan(1).len(), 1);
        // A destination outside the site is not held by it.
        let other = Destination::new("mx.example");
        assert_eq!(
            queues
                .push(&other, &[item(99, 0)], Status::Pending, 1)
                .len(),
            1
        );
        assert_eq!(
            queues
                .summary()
                .iter()
                .find(|s| s.destination == "d5.routed")
                .unwrap()
                .site
                .as_deref(),
            Some("smarthost:25")
        );
    }

    #[test]
    fn a_throttle_caps_connections_and_rate_until_it_ends() {
        let shaping = Shaping {
            connections_max: 8,
            ..Shaping::default()
        };
        let queues = Queues::new(Box::new(move |_| shaping));
        let d = destination_of(b"a@x.org");
        queues.throttle(
            &d,
            Throttle {
                until_ms: 10_000,
                connections_max: Some(2),
                message_rate_max: Some(1),
                reason: "test".into(),
            },
            0,
        );
        let mut opened = 0;
        for id in 0..20 {
            opened += queues.push(&d, &[item(id, 0)], Status::Pending, 0).len();
        }
        assert_eq!(opened, 2, "capped at 2");
        queues.succeeded(&d, 1);
        assert!(queues.plan(1).is_empty(), "the cap holds after a success");
        assert!(matches!(
            queues.take(&d, waiter(1), true, 1000),
            Take::Batch(_)
        ));
        assert!(matches!(
            queues.take(&d, waiter(1), true, 1000),
            Take::RateLimited { .. }
        ));
        // After it ends, success raises the limit past the cap again.
        queues.succeeded(&d, 10_000);
        assert_eq!(queues.summary()[0].connections_limit, 3);
    }

    #[test]
    fn message_rate_is_enforced() {
        let shaping = Shaping {
            message_rate_max: 2,
            ..Shaping::default()
        };
        let queues = Queues::new(Box::new(move |_| shaping));
        let d = destination_of(b"a@x.org");
        for id in 0..5 {
            queues.push(&d, &[item(id, 0)], Status::Pending, 0);
        }
        // The bucket starts full (one second's worth).
        assert!(matches!(
            queues.take(&d, waiter(1), true, 1000),
            Take::Batch(_)
        ));
        assert!(matches!(
            queues.take(&d, waiter(1), true, 1000),
            Take::Batch(_)
        ));
        assert!(matches!(
            queues.take(&d, waiter(1), true, 1000),
            Take::RateLimited { retry_ms } if retry_ms == 1500
        ));
        assert!(matches!(
            queues.take(&d, waiter(1), true, 1500),
            Take::Batch(_)
        ));
    }

    #[test]
    fn remove_and_flush() {
        let queues = Queues::default();
        let d = destination_of(b"a@x.org");
        queues.push(&d, &[item(1, 0)], Status::Pending, 0);
        queues.schedule(&d, item(1, 1), 1_000_000);
        queues.schedule(&d, item(2, 0), 1_000_000);
        assert_eq!(queues.remove(QueueId(1)).len(), 2);
        assert_eq!(queues.flush(None, 5), 1);
        assert_eq!(queues.summary()[0].ready, 1);
    }
}
