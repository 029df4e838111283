//! How many connection leases this node asks Redis for, lane by lane
//! (sans IO: the cluster thread runs the claims this returns, in one
//! script call, and reports what each was granted).
//!
//! A node holds one lease per connection it may have open on a site ×
//! source. It asks for more when members of the site wait for room, up to
//! the limit in force; it keeps a surplus for [`SURPLUS_LINGER_MS`], so a
//! connection that closes and reopens does not cost two round trips; it
//! renews what it holds three times per lease life, so a node that dies
//! lets go within one life. A lane whose ask was refused (the others hold
//! the limit) asks again after [`DENIED_RETRY_MS`], not every tick.

use std::collections::HashMap;
use std::sync::Arc;

use crate::queue::LaneLease;

/// How long leases beyond what a lane uses are kept before they are given
/// back.
pub const SURPLUS_LINGER_MS: u64 = 2_000;
/// How long a lane refused more leases waits before it asks again.
pub const DENIED_RETRY_MS: u64 = 200;

/// What this node holds in one lane.
#[derive(Clone, Debug, Default)]
struct Held {
    count: usize,
    renewed_ms: u64,
    /// Since when it has held more than it uses.
    surplus_since_ms: Option<u64>,
    /// No ask for more before this (the last was refused).
    denied_until_ms: u64,
    /// In the last view of the queues (false: the site is gone from it).
    seen: bool,
}

/// One lane's claim: hold `want` leases, never fewer than `keep` (the
/// connections open), under `limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub site: Arc<str>,
    pub lane: Arc<str>,
    pub want: usize,
    pub keep: usize,
    pub limit: usize,
}

/// The leases this node holds, as Redis last granted them.
#[derive(Debug, Default)]
pub struct Leases {
    held: HashMap<(Arc<str>, Arc<str>), Held>,
    ttl_ms: u64,
}

impl Leases {
    pub fn new(ttl_ms: u64) -> Leases {
        Leases {
            held: HashMap::new(),
            ttl_ms,
        }
    }

    /// The claims to make now, from the queues' view of every lane.
    pub fn claims(&mut self, view: &[LaneLease], now_ms: u64) -> Vec<Claim> {
        for held in self.held.values_mut() {
            held.seen = false;
        }
        let mut claims = Vec::new();
        for lane in view {
            let key = (lane.site.clone(), lane.lane.clone());
            let held = self.held.entry(key).or_default();
            held.seen = true;
            let demand = if lane.paused {
                0
            } else {
                lane.limit.min(lane.connections + lane.starved)
            };
            let target = demand.max(lane.connections);
            let want = if target > held.count {
                held.surplus_since_ms = None;
                if now_ms < held.denied_until_ms {
                    held.count
                } else {
                    target
                }
            } else if target < held.count {
                let since = *held.surplus_since_ms.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= SURPLUS_LINGER_MS {
                    target
                } else {
                    held.count
                }
            } else {
                held.surplus_since_ms = None;
                held.count
            };
            let renew = held.count > 0 && now_ms.saturating_sub(held.renewed_ms) >= self.ttl_ms / 3;
            if want != held.count || renew {
                claims.push(Claim {
                    site: lane.site.clone(),
                    lane: lane.lane.clone(),
                    want,
                    keep: lane.connections,
                    limit: lane.limit.max(lane.connections),
                });
            }
        }
        // A site the queues forgot has no connection left: its leases go.
        for ((site, lane), held) in &self.held {
            if !held.seen && held.count > 0 {
                claims.push(Claim {
                    site: site.clone(),
                    lane: lane.clone(),
                    want: 0,
                    keep: 0,
                    limit: 0,
                });
            }
        }
        claims
    }

    /// What Redis granted for `claim`.
    pub fn granted(&mut self, claim: &Claim, granted: usize, now_ms: u64) {
        let key = (claim.site.clone(), claim.lane.clone());
        let held = self.held.entry(key.clone()).or_default();
        if granted < claim.want {
            held.denied_until_ms = now_ms + DENIED_RETRY_MS;
        }
        if granted < held.count {
            held.surplus_since_ms = None;
        }
        held.count = granted;
        held.renewed_ms = now_ms;
        if granted == 0 && !held.seen {
            self.held.remove(&key);
        }
    }

    /// Each lane's leases held: (site, lane, count).
    pub fn held(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<str>, usize)> {
        self.held
            .iter()
            .map(|((site, lane), held)| (site, lane, held.count))
    }

    /// Leases held, all lanes.
    pub fn total(&self) -> usize {
        self.held.values().map(|h| h.count).sum()
    }

    /// Redis is gone: what it held lapses there by itself; the node starts
    /// afresh when it is back.
    pub fn forget(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(connections: usize, starved: usize, limit: usize) -> LaneLease {
        LaneLease {
            site: "sink".into(),
            lane: "".into(),
            limit,
            connections,
            leased: 0,
            starved,
            paused: false,
        }
    }

    #[test]
    fn a_starved_lane_asks_for_room_up_to_its_limit() {
        let mut leases = Leases::new(10_000);
        let claims = leases.claims(&[lane(0, 9, 6)], 0);
        assert_eq!(claims.len(), 1);
        assert_eq!((claims[0].want, claims[0].keep, claims[0].limit), (6, 0, 6));
        leases.granted(&claims[0], 2, 0);
        // Refused part of it: no new ask at once, only after a pause.
        assert!(leases.claims(&[lane(2, 9, 6)], 50).is_empty());
        let claims = leases.claims(&[lane(2, 9, 6)], DENIED_RETRY_MS);
        assert_eq!(claims[0].want, 6);
    }

    #[test]
    fn a_surplus_is_kept_a_while_then_given_back_but_never_below_what_is_open() {
        let mut leases = Leases::new(10_000);
        let claims = leases.claims(&[lane(0, 4, 6)], 0);
        leases.granted(&claims[0], 4, 0);
        assert!(leases.claims(&[lane(1, 0, 6)], 100).is_empty());
        let claims = leases.claims(&[lane(1, 0, 6)], 100 + SURPLUS_LINGER_MS);
        assert_eq!((claims[0].want, claims[0].keep), (1, 1));
    }

    #[test]
    fn held_leases_are_renewed_three_times_a_life() {
        let mut leases = Leases::new(9_000);
        let claims = leases.claims(&[lane(0, 1, 6)], 0);
        leases.granted(&claims[0], 1, 0);
        assert!(leases.claims(&[lane(1, 0, 6)], 2_999).is_empty());
        let claims = leases.claims(&[lane(1, 0, 6)], 3_000);
        assert_eq!(claims[0].want, 1);
    }

    #[test]
    fn a_paused_lane_asks_for_nothing_more_and_a_forgotten_one_gives_all_back() {
        let mut leases = Leases::new(10_000);
        let claims = leases.claims(&[lane(0, 3, 6)], 0);
        leases.granted(&claims[0], 3, 0);
        let mut paused = lane(2, 3, 6);
        paused.paused = true;
        let claims = leases.claims(&[paused], SURPLUS_LINGER_MS + 1);
        assert!(
            claims.is_empty(),
            "the surplus is only noticed now: {claims:?}"
        );
        let claims = leases.claims(&[], 2 * SURPLUS_LINGER_MS + 2);
        assert_eq!((claims[0].want, claims[0].keep), (0, 0));
        leases.granted(&claims[0], 0, 2 * SURPLUS_LINGER_MS + 2);
        assert_eq!(leases.total(), 0);
        assert_eq!(leases.held().count(), 0);
    }
}
