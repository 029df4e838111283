//! How many of a site's rate tokens this node asks Redis for (sans IO).
//!
//! A node takes a tenth of a second's worth at a time ([`RATE_BATCH_MS`]),
//! and only for a site whose mail waited for a token or spent some since
//! the last look: Redis sees a call per node per batch, never one per
//! message. The cluster's rate holds within one batch per node, since a
//! batch granted and not spent is lost, never carried over.

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

/// The asks to make now: for each site in use that holds less than a
/// batch, what tops it up to one.
pub fn asks(view: &[SiteRate]) -> Vec<RateAsk> {
    view.iter()
        .filter(|s| s.rate > 0 && (s.wanted || s.spent > 0))
        .filter_map(|s| {
            let batch = batch(s.rate);
            (s.granted < batch).then(|| RateAsk {
                site: s.site.clone(),
                rate: s.rate,
                burst: burst(s.rate),
                want: batch - s.granted,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let asks = asks(&[site(500, 10, 3, false)]);
        assert_eq!(asks.len(), 1);
        assert_eq!((asks[0].burst, asks[0].want), (125, 40));
        assert!(super::asks(&[site(500, 10, 0, false)]).is_empty());
        assert!(super::asks(&[site(500, 50, 9, true)]).is_empty());
        // A slow rate still takes a token at a time.
        assert_eq!(super::asks(&[site(3, 0, 0, true)])[0].want, 1);
    }
}
