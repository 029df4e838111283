//! Metric kinds beyond plain counters, recorded by the shards and written
//! in Prometheus' text format by the admin API: histograms with fixed
//! buckets, and outcome counters per site with a bounded set of labels.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A histogram of durations in milliseconds, exported in seconds. Each
/// observation is two atomic adds and a short scan of the bounds: no lock.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in milliseconds, rising.
    bounds_ms: &'static [u64],
    /// Observations at or under each bound (not cumulative: summed when
    /// written); the last is for those above every bound.
    counts: Box<[AtomicU64]>,
    sum_ms: AtomicU64,
}

/// A delivery transaction, MAIL FROM to the deciding reply: fast next hops
/// answer within milliseconds, slow ones (content filters) in seconds.
pub const LATENCY_BOUNDS_MS: &[u64] = &[
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// Arrival to delivery: most mail within a second, retried mail over
/// minutes, hours and days.
pub const QUEUE_TIME_BOUNDS_MS: &[u64] = &[
    100,
    1_000,
    10_000,
    60_000,
    300_000,
    900_000,
    3_600_000,
    4 * 3_600_000,
    24 * 3_600_000,
    3 * 24 * 3_600_000,
];

impl Histogram {
    pub fn new(bounds_ms: &'static [u64]) -> Histogram {
        Histogram {
            bounds_ms,
            counts: (0..=bounds_ms.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ms: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, ms: u64) {
        let bucket = self.bounds_ms.partition_point(|bound| *bound < ms);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Writes the histogram as `name` (its unit is seconds).
    pub fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds_ms.iter().zip(self.counts.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            let le = *bound as f64 / 1000.0;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds_ms.len()].load(Ordering::Relaxed);
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// What became of a recipient, for [`SiteCounters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteOutcome {
    Delivered = 0,
    Deferred = 1,
    Failed = 2,
}

impl SiteOutcome {
    const ALL: [SiteOutcome; 3] = [
        SiteOutcome::Delivered,
        SiteOutcome::Deferred,
        SiteOutcome::Failed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            SiteOutcome::Delivered => "delivered",
            SiteOutcome::Deferred => "deferred",
            SiteOutcome::Failed => "failed",
        }
    }
}

/// Sites with series of their own; outcomes at further sites are counted
/// under [`OTHER_SITES`], so a sender to a million small domains cannot
/// make the metrics a million series long.
pub const SITE_SERIES_MAX: usize = 500;
/// The label of the outcomes past [`SITE_SERIES_MAX`] sites.
pub const OTHER_SITES: &str = "_other";

/// Recipients delivered, deferred and failed per site. One short lock per
/// delivery transaction (not per recipient), as the queue takes anyway.
#[derive(Debug, Default)]
pub struct SiteCounters {
    by_site: Mutex<HashMap<Arc<str>, [u64; 3]>>,
}

impl SiteCounters {
    /// Counts `n` recipients of `site` with `outcome`.
    pub fn add(&self, site: &Arc<str>, outcome: SiteOutcome, n: u64) {
        let mut by_site = self.by_site.lock().expect("site counters lock");
        let key = if by_site.contains_key(site) || by_site.len() < SITE_SERIES_MAX {
            site.clone()
        } else {
            Arc::from(OTHER_SITES)
        };
        by_site.entry(key).or_default()[outcome as usize] += n;
    }

    pub fn write(&self, out: &mut String) {
        let name = "baton_site_recipients_total";
        let _ = writeln!(
            out,
            "# HELP {name} Recipients delivered, deferred (per attempt) and failed, per site \
             (at most {SITE_SERIES_MAX} sites; the rest as site=\"{OTHER_SITES}\").\n# TYPE {name} counter"
        );
        let by_site = self.by_site.lock().expect("site counters lock");
        let mut sites: Vec<_> = by_site.iter().collect();
        sites.sort_by(|a, b| a.0.cmp(b.0));
        for (site, counts) in sites {
            let site = site.replace('\\', "\\\\").replace('"', "\\\"");
            for outcome in SiteOutcome::ALL {
                let count = counts[outcome as usize];
                let outcome = outcome.as_str();
                let _ = writeln!(
                    out,
                    "{name}{{site=\"{site}\",outcome=\"{outcome}\"}} {count}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_in_seconds() {
        let histogram = Histogram::new(&[10, 100]);
        for ms in [1, 10, 11, 500] {
            histogram.observe(ms);
        }
        let mut out = String::new();
        histogram.write(&mut out, "t_seconds", "test");
        assert!(out.contains("t_seconds_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.1\"} 3\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("t_seconds_sum 0.522\n"), "{out}");
        assert!(out.contains("t_seconds_count 4\n"), "{out}");
    }

    #[test]
    fn sites_past_the_limit_are_counted_together() {
        let counters = SiteCounters::default();
        for i in 0..SITE_SERIES_MAX + 2 {
            counters.add(&Arc::from(format!("s{i}")), SiteOutcome::Delivered, 1);
        }
        counters.add(&Arc::from("s0"), SiteOutcome::Failed, 3);
        let mut out = String::new();
        counters.write(&mut out);
        assert!(
            out.contains("{site=\"s0\",outcome=\"failed\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("{site=\"_other\",outcome=\"delivered\"} 2\n"),
            "{out}"
        );
        let series = out.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(series, (SITE_SERIES_MAX + 1) * 3);
    }
}
