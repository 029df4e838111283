//! How many of a site's rate tokens this node asks Redis for (sans IO).
//!
//! A node takes a tenth of a second's worth at a time ([`RATE_BATCH_MS`]),
//! and only for a site whose mail waited for a token or spent some since
//! the last look: Redis sees a call per node per batch, never one per
//! message. The cluster's rate holds within one batch per node, since a
//! batch granted and not spent is lost, never carried over.

use std::collections::HashMap;
use std::sync::Arc;

use crate::queue::SiteRate;

/// A batch of a site's tokens: this much of a second's rate.
pub const RATE_BATCH_MS: u64 = 100;
/// What Redis lets accrue for a site no node asked for lately: a shard
/// looks at connections waiting for a token every 250 ms, so a quarter
/// second's tokens are kept for them (the local bucket keeps a second's).
pub const RATE_BURST_MS: u64 = 250;

/// One site's ask: `want` tokens of `rate` per second, taken at most
/// `burst` at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateAsk {
    pub site: Arc<str>,
    pub rate: u32,
    pub burst: u64,
    pub want: u64,
}

/// A batch at `rate`: at least one token.
pub fn batch(rate: u32) -> u64 {
    (u64::from(rate) * RATE_BATCH_MS / 1000).max(1)
}

/// The burst at `rate`: at least a batch.
pub fn burst(rate: u32) -> u64 {
    (u64::from(rate) * RATE_BURST_MS / 1000).max(batch(rate))
}

/// The asks to make now: for each site in use whose messages waited for
/// a token, or that has spent half its batch, what tops it up to one;
/// none for a site `resting` says is resting.
fn asks_but(view: &[SiteRate], resting: impl Fn(&SiteRate) -> bool) -> Vec<RateAsk> {
    view.iter()
        .filter(|s| s.rate > 0 && (s.wanted || s.spent > 0) && !resting(s))
        .filter_map(|s| {
            let batch = batch(s.rate);
            // A message waited: top up now. Tokens being spent: top up
            // once half the batch is gone, not after every message.
            let low = s.granted < batch && (s.wanted || s.granted <= batch / 2);
            low.then(|| RateAsk {
                site: s.site.clone(),
                rate: s.rate,
                burst: burst(s.rate),
                want: batch - s.granted,
            })
        })
        .collect()
}

/// A node's asks over time: a site whose last ask got nothing (the other
/// nodes took the rate) rests a batch's time more for each refusal in a
/// row, at most a burst's, before it asks again. Where the rate binds,
/// every node asking every tick would cost Redis a call per node per
/// tick; no token is lost meanwhile, since Redis keeps a burst.
#[derive(Debug, Default)]
pub struct RateAsker {
    /// Per site: refusals in a row, and no ask before then.
    refused: HashMap<Arc<str>, (u64, u64)>,
}

impl RateAsker {
    /// The asks to make now.
    pub fn asks(&mut self, view: &[SiteRate], now_ms: u64) -> Vec<RateAsk> {
        asks_but(view, |s| {
            self.refused
                .get(&s.site)
                .is_some_and(|(_, until)| *until > now_ms)
        })
    }

    /// What Redis granted for `ask`.
    pub fn granted(&mut self, ask: &RateAsk, granted: u64, now_ms: u64) {
        if granted > 0 {
            self.refused.remove(&ask.site);
            return;
        }
        let (count, until) = self.refused.entry(ask.site.clone()).or_default();
        *count += 1;
        *until = now_ms + (RATE_BATCH_MS * *count).min(RATE_BURST_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The asks of a node that was never refused.
    fn asks(view: &[SiteRate]) -> Vec<RateAsk> {
        RateAsker::default().asks(view, 0)
    }

    fn site(rate: u32, granted: u64, spent: u64, wanted: bool) -> SiteRate {
        SiteRate {
            site: "sink".into(),
            rate,
            granted,
            spent,
            wanted,
        }
    }

    #[test]
    fn a_site_in_use_is_topped_up_to_a_batch_and_an_idle_one_asks_nothing() {
        let first = asks(&[site(500, 10, 3, false)]);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].burst, first[0].want), (125, 40));
        assert!(asks(&[site(500, 10, 0, false)]).is_empty());
        // Half a batch left and no message waiting: not yet.
        assert!(asks(&[site(500, 30, 3, false)]).is_empty());
        assert_eq!(asks(&[site(500, 30, 3, true)])[0].want, 20);
        assert!(asks(&[site(500, 50, 9, true)]).is_empty());
        // A slow rate still takes a token at a time.
        assert_eq!(asks(&[site(3, 0, 0, true)])[0].want, 1);
    }

    #[test]
    fn a_refused_site_rests_longer_with_each_refusal_up_to_a_burst() {
        let mut asker = RateAsker::default();
        let view = [site(500, 0, 0, true)];
        let ask = asker.asks(&view, 0).remove(0);
        asker.granted(&ask, 0, 0);
        assert!(asker.asks(&view, RATE_BATCH_MS - 1).is_empty());
        let ask = asker.asks(&view, RATE_BATCH_MS).remove(0);
        asker.granted(&ask, 0, RATE_BATCH_MS);
        assert!(asker.asks(&view, 3 * RATE_BATCH_MS - 1).is_empty());
        for _ in 0..10 {
            asker.granted(&ask, 0, 1_000);
        }
        assert!(!asker.asks(&view, 1_000 + RATE_BURST_MS).is_empty());
        // A grant ends the rest.
        asker.granted(&ask, 5, 2_000);
        assert!(!asker.asks(&view, 2_000).is_empty());
    }
}
