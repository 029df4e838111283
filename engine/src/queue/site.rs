//! A site: where mail actually goes (a route's next hop, or the set of MX
//! hosts several recipient domains share), and the shaping state that
//! belongs to it rather than to any one domain: the connections open to
//! it, the connection limit in force (halved by failures, raised by good
//! transactions), a pause or an operator's or rule's suspension, a
//! throttle, a message-rate bucket, and the members waiting for room.

use std::collections::{HashSet, VecDeque};

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

#[derive(Debug)]
pub(super) struct Site {
    pub shaping: SiteShaping,
    /// Open or opening, all members and shards together.
    pub connections: usize,
    /// The limit in force: `shaping.connections_max`, halved by each
    /// failure, raised by one per good transaction.
    pub limit: usize,
    pub paused_until_ms: u64,
    /// Failures in a row; the pause doubles with each.
    pub failures: u32,
    /// Why it is paused, when a shaping rule or an operator paused it.
    pub suspended: Option<String>,
    pub throttle: Option<Throttle>,
    pub bucket: Bucket,
    pub members: HashSet<Destination>,
    /// Members with ready mail that found no room, in the order they
    /// asked: the next connection freed goes to the first.
    pub starved: VecDeque<Destination>,
    /// Idle connections of its members.
    pub idle: usize,
}

impl Site {
    pub(super) fn new(shaping: SiteShaping) -> Site {
        Site {
            shaping,
            connections: 0,
            limit: shaping.connections_max.max(1),
            paused_until_ms: 0,
            failures: 0,
            suspended: None,
            throttle: None,
            bucket: Bucket::full(shaping.message_rate_max),
            members: HashSet::new(),
            starved: VecDeque::new(),
            idle: 0,
        }
    }

    /// The throttle in force at `now_ms`, dropping an expired one.
    pub(super) fn throttle(&mut self, now_ms: u64) -> Option<&Throttle> {
        if self.throttle.as_ref().is_some_and(|t| t.until_ms <= now_ms) {
            self.throttle = None;
        }
        self.throttle.as_ref()
    }

    /// The most connections allowed now: the shaping's, or a throttle's.
    pub(super) fn connections_cap(&mut self, now_ms: u64) -> usize {
        let max = self.shaping.connections_max.max(1);
        match self.throttle(now_ms).and_then(|t| t.connections_max) {
            Some(cap) => cap.clamp(1, max),
            None => max,
        }
    }

    /// How many more connections it allows now.
    pub(super) fn room(&mut self, now_ms: u64) -> usize {
        let cap = self.connections_cap(now_ms);
        self.limit.min(cap).saturating_sub(self.connections)
    }

    /// Messages per second allowed now; 0 = no limit.
    pub(super) fn rate_cap(&mut self, now_ms: u64) -> u32 {
        let rate = self.shaping.message_rate_max;
        match self.throttle(now_ms).and_then(|t| t.message_rate_max) {
            Some(cap) if rate == 0 => cap.max(1),
            Some(cap) => cap.clamp(1, rate),
            None => rate,
        }
    }

    pub(super) fn take_token(&mut self, now_ms: u64) -> Result<(), u64> {
        let rate = self.rate_cap(now_ms);
        self.bucket.take(rate, now_ms)
    }

    /// When its pause or throttle ends, if after `now_ms`.
    pub(super) fn next_due(&self, now_ms: u64) -> Option<u64> {
        let paused = (self.paused_until_ms > now_ms).then_some(self.paused_until_ms);
        let throttle = self
            .throttle
            .as_ref()
            .map(|t| t.until_ms)
            .filter(|until| *until > now_ms);
        [paused, throttle].into_iter().flatten().min()
    }

    /// No member, no connection, nothing in force: the table may forget
    /// it.
    pub(super) fn forgettable(&self, now_ms: u64) -> bool {
        self.members.is_empty()
            && self.connections == 0
            && self.paused_until_ms <= now_ms
            && self.throttle.as_ref().is_none_or(|t| t.until_ms <= now_ms)
    }

    /// A connection failed: fewer connections and a pause that doubles
    /// with each failure in a row.
    pub(super) fn failed(&mut self, pause_ms: u64, pause_ms_max: u64, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        self.limit = (self.limit / 2).max(1);
        let factor = 1u64 << self.failures.saturating_sub(1).min(20);
        let pause = pause_ms.saturating_mul(factor).min(pause_ms_max);
        self.paused_until_ms = self.paused_until_ms.max(now_ms + pause);
    }

    /// A good transaction: one more connection allowed, failures forgotten.
    pub(super) fn succeeded(&mut self, now_ms: u64) {
        self.failures = 0;
        if self.limit < self.connections_cap(now_ms) {
            self.limit += 1;
        }
    }

    /// No connection until `until_ms`, then one, growing by one per good
    /// transaction. `true` when it was not paused at `now_ms`.
    pub(super) fn suspend(&mut self, until_ms: u64, reason: String, now_ms: u64) -> bool {
        let was_paused = self.paused_until_ms > now_ms;
        if until_ms > self.paused_until_ms {
            self.paused_until_ms = until_ms;
            self.suspended = Some(reason);
        }
        self.limit = 1;
        !was_paused
    }

    /// A later throttle replaces an earlier one. `true` when none was in
    /// force at `now_ms`.
    pub(super) fn set_throttle(&mut self, throttle: Throttle, now_ms: u64) -> bool {
        let was = self.throttle(now_ms).is_some();
        if let Some(cap) = throttle.connections_max {
            self.limit = self.limit.min(cap.max(1));
        }
        if self
            .throttle
            .as_ref()
            .is_none_or(|t| t.until_ms <= throttle.until_ms)
        {
            self.throttle = Some(throttle);
        }
        !was
    }

    /// Full limits again (an operator's resume).
    pub(super) fn resume(&mut self) {
        self.paused_until_ms = 0;
        self.suspended = None;
        self.throttle = None;
        self.failures = 0;
        self.limit = self.shaping.connections_max.max(1);
    }
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
}
