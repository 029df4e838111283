//! Metric kinds beyond plain counters, recorded by the shards and written
//! in Prometheus' text format by the admin API: histograms with fixed
//! buckets, and outcome counters per site and per domain with a bounded
//! set of labels.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Counts the log lines the log writer dropped for falling behind; set
/// once by whoever set up logging (`main`), read by `/metrics`.
static LOG_LINES_DROPPED: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>> = OnceLock::new();

/// Where [`log_lines_dropped`] reads its count from.
pub fn count_log_lines_dropped(count: Box<dyn Fn() -> u64 + Send + Sync>) {
    let _ = LOG_LINES_DROPPED.set(count);
}

/// Log lines dropped so far; 0 when logging counts none.
pub fn log_lines_dropped() -> u64 {
    LOG_LINES_DROPPED.get().map_or(0, |count| count())
}

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

/// What became of a recipient, for [`OutcomeCounters`].
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

/// Sites (or domains) with series of their own; outcomes at further ones
/// are counted under [`OTHER`], so a sender to a million small domains
/// cannot make the metrics a million series long.
pub const SERIES_MAX: usize = 500;
/// The label of the outcomes past [`SERIES_MAX`] sites or domains.
pub const OTHER: &str = "_other";

/// Recipients delivered, deferred and failed per site, or per domain. One
/// short lock per delivery transaction (not per recipient), as the queue
/// takes anyway.
#[derive(Debug)]
pub struct OutcomeCounters {
    name: &'static str,
    /// The label: `site` or `domain`.
    label: &'static str,
    counts: Mutex<HashMap<Arc<str>, [u64; 3]>>,
}

impl OutcomeCounters {
    pub fn new(name: &'static str, label: &'static str) -> OutcomeCounters {
        OutcomeCounters {
            name,
            label,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts `n` recipients of `key` with `outcome`. Allocates only for
    /// a key not seen before (once per site or domain, not per call).
    pub fn add(&self, key: &str, outcome: SiteOutcome, n: u64) {
        let mut counts = self.counts.lock().expect("outcome counters lock");
        let key = if counts.contains_key(key) || counts.len() < SERIES_MAX {
            key
        } else {
            OTHER
        };
        match counts.get_mut(key) {
            Some(slot) => slot[outcome as usize] += n,
            None => counts.entry(Arc::from(key)).or_default()[outcome as usize] += n,
        }
    }

    pub fn write(&self, out: &mut String) {
        let (name, label) = (self.name, self.label);
        let _ = writeln!(
            out,
            "# HELP {name} Recipients delivered, deferred (per attempt) and failed, per {label} \
             (at most {SERIES_MAX}; the rest as {label}=\"{OTHER}\").\n# TYPE {name} counter"
        );
        let counts = self.counts.lock().expect("outcome counters lock");
        let mut keys: Vec<_> = counts.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (key, counts) in keys {
            let key = key.replace('\\', "\\\\").replace('"', "\\\"");
            for outcome in SiteOutcome::ALL {
                let count = counts[outcome as usize];
                let outcome = outcome.as_str();
                let _ = writeln!(
                    out,
                    "{name}{{{label}=\"{key}\",outcome=\"{outcome}\"}} {count}"
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
        let counters = OutcomeCounters::new("baton_site_recipients_total", "site");
        for i in 0..SERIES_MAX + 2 {
            counters.add(&format!("s{i}"), SiteOutcome::Delivered, 1);
        }
        counters.add("s0", SiteOutcome::Failed, 3);
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
        assert_eq!(series, (SERIES_MAX + 1) * 3);
    }
}
