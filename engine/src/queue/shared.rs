//! What the table shares with other baton nodes (`crate::cluster`): the
//! leases its connections hold, and the shaping and operator actions it
//! announces and hears. The table still does no I/O: the cluster thread
//! reads [`Queues::lease_view`], asks Redis, writes the answer back with
//! [`Queues::set_leased`], and hands remote actions to
//! [`Queues::apply_remote`]. Shards never wait on it.

use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};

use super::site::{ClusterBound, Site};
use super::{site_mut, Queues, Throttle};

/// A shaping or operator action, as it travels between nodes: by site
/// (or domain) name, since each node maps domains to sites by the same
/// configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SiteAction {
    /// A shaping rule suspended a site × source (`4.7.28`).
    SuspendLane {
        site: String,
        lane: String,
        until_ms: u64,
        reason: String,
    },
    /// A shaping rule throttled a site × source.
    Throttle {
        site: String,
        lane: String,
        throttle: Throttle,
    },
    /// An operator suspended a site, or held a domain.
    Suspend {
        name: String,
        until_ms: u64,
        reason: String,
    },
    /// An operator resumed a site or domain.
    Resume { name: String },
}

/// One site × source as the cluster thread sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneLease {
    pub site: Arc<str>,
    pub lane: Arc<str>,
    /// The limit in force on this node (failures, throttles): what its
    /// leases are asked against.
    pub limit: usize,
    /// Open or opening on this node.
    pub connections: usize,
    /// Leases held ([`Queues::set_leased`]).
    pub leased: usize,
    /// Members of the site waiting for room.
    pub starved: usize,
    /// Suspended or paused now: no lease is worth asking for.
    pub paused: bool,
}

/// A site's message rate as the cluster thread sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteRate {
    pub site: Arc<str>,
    /// Messages per second, the whole cluster's.
    pub rate: u32,
    /// Granted and not yet spent.
    pub granted: u64,
    /// Spent since the last look.
    pub spent: u64,
    /// A message waited for a token since the last look.
    pub wanted: bool,
}

impl Queues {
    /// Announces this node's actions on `announce` from now on (the
    /// cluster thread publishes them). A full channel drops one: a shard
    /// never waits.
    pub fn announce_to(&self, announce: Sender<SiteAction>) {
        let _ = self.announce.set(announce);
    }

    pub(super) fn announce(&self, action: SiteAction) {
        if let Some(announce) = self.announce.get() {
            if let Err(TrySendError::Full(action)) = announce.try_send(action) {
                tracing::warn!(
                    ?action,
                    "cluster: the announcement channel is full; action not shared"
                );
            }
        }
    }

    /// Puts the cluster's bound on every site's lanes (leases, or the
    /// node's share while Redis is out of reach); the next sweep looks at
    /// every member again.
    pub fn set_bound(&self, bound: ClusterBound) {
        let mut table = self.lock();
        if table.bound == bound {
            return;
        }
        table.bound = bound;
        let names: Vec<Arc<str>> = table.sites.keys().cloned().collect();
        for name in &names {
            site_mut(&mut table.sites, name).bound = bound;
            table.touch_members(name);
        }
    }

    /// The bound in force.
    pub fn bound(&self) -> ClusterBound {
        self.lock().bound
    }

    /// Every lane that holds or may want leases.
    pub fn lease_view(&self, now_ms: u64) -> Vec<LaneLease> {
        let mut table = self.lock();
        let mut out = Vec::new();
        for (name, site) in table.sites.iter_mut() {
            let site_paused = site.paused_until_ms > now_ms;
            let starved = site.starved.len();
            let lanes: Vec<Arc<str>> = site.lanes.keys().cloned().collect();
            for lane in lanes {
                let limit = site.own_limit(&lane, now_ms);
                let l = site.lane(&lane);
                out.push(LaneLease {
                    site: name.clone(),
                    lane,
                    limit,
                    connections: l.connections,
                    leased: l.leased,
                    starved,
                    paused: site_paused || l.paused_until_ms > now_ms,
                });
            }
        }
        out
    }

    /// Every site with a message rate, and how its tokens went since the
    /// last look (which this resets).
    pub fn rate_view(&self) -> Vec<SiteRate> {
        let mut table = self.lock();
        let mut out = Vec::new();
        for (name, site) in table.sites.iter_mut() {
            if site.shaping.message_rate_max == 0 {
                continue;
            }
            out.push(SiteRate {
                site: name.clone(),
                rate: site.shaping.message_rate_max,
                granted: site.granted,
                spent: std::mem::take(&mut site.spent),
                wanted: std::mem::take(&mut site.rate_wanted),
            });
        }
        out
    }

    /// Tokens of a site's rate the cluster granted this node.
    pub fn grant_tokens(&self, site: &str, tokens: u64) {
        let mut table = self.lock();
        let Some((name, _)) = table.sites.get_key_value(site) else {
            return;
        };
        let name = name.clone();
        site_mut(&mut table.sites, &name).granted += tokens;
        table.touch_members(&name);
    }

    /// The leases this node holds for a site × source. More than before:
    /// the site's members are looked at again by the next sweep.
    pub fn set_leased(&self, site: &str, lane: &Arc<str>, leased: usize) {
        let mut table = self.lock();
        let Some((name, _)) = table.sites.get_key_value(site) else {
            return;
        };
        let name = name.clone();
        let l = site_mut(&mut table.sites, &name).lane(lane);
        let more = leased > l.leased;
        l.leased = leased;
        if more {
            table.touch_members(&name);
        }
    }

    /// Another node's action, applied here and not announced again.
    pub fn apply_remote(&self, action: &SiteAction, now_ms: u64) {
        match action {
            SiteAction::SuspendLane {
                site,
                lane,
                until_ms,
                reason,
            } => {
                let mut table = self.lock();
                let name = table.site_by_name(site);
                site_mut(&mut table.sites, &name).suspend_lane(
                    &Arc::from(lane.as_str()),
                    *until_ms,
                    reason.clone(),
                    now_ms,
                );
                table.touch_members(&name);
            }
            SiteAction::Throttle {
                site,
                lane,
                throttle,
            } => {
                let mut table = self.lock();
                let name = table.site_by_name(site);
                site_mut(&mut table.sites, &name).set_throttle(
                    &Arc::from(lane.as_str()),
                    throttle.clone(),
                    now_ms,
                );
                table.touch_members(&name);
            }
            SiteAction::Suspend {
                name,
                until_ms,
                reason,
            } => {
                self.suspend_here(name, *until_ms, reason.clone(), now_ms);
            }
            SiteAction::Resume { name } => {
                self.resume_here(name);
            }
        }
    }
}

impl super::Table {
    /// The site called `name`, made with its configured limits (or the
    /// default MX site's) if this node has not met it yet: an action
    /// heard from another node holds before this one's first mail there.
    fn site_by_name(&mut self, name: &str) -> Arc<str> {
        if let Some((known, _)) = self.sites.get_key_value(name) {
            return known.clone();
        }
        let shaping = (self.policy.site_named)(name).unwrap_or(self.policy.site_default);
        let name: Arc<str> = Arc::from(name);
        self.sites
            .insert(name.clone(), Site::new(shaping, self.bound));
        name
    }
}
