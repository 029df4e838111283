//! Latency histograms (HdrHistogram, microseconds) and their percentiles.
//!
//! Each kind of latency has one shared histogram; a connection records
//! into a small batch of its own and merges it under the lock when the
//! batch is full, so that a thousand connections neither contend on the
//! lock nor each hold a histogram of their own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest latency told apart from longer ones: an hour.
pub const LATENCY_MICROS_MAX: u64 = 3_600_000_000;
/// Three significant figures: 0.1 % resolution at every scale.
const SIGNIFICANT_FIGURES: u8 = 3;
/// Samples a connection holds before merging them.
const BATCH_SAMPLES_MAX: usize = 512;

/// A histogram shared by all the connections of a run.
#[derive(Clone)]
pub struct SharedHistogram(Arc<Mutex<Histogram<u64>>>);

impl Default for SharedHistogram {
    fn default() -> Self {
        SharedHistogram(Arc::new(Mutex::new(new_histogram())))
    }
}

impl SharedHistogram {
    /// A recorder for one connection.
    pub fn recorder(&self) -> LatencyRecorder {
        LatencyRecorder {
            shared: self.clone(),
            batch: Vec::with_capacity(BATCH_SAMPLES_MAX),
        }
    }

    /// Percentiles of what was merged so far.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary::of(&self.0.lock().expect("histogram lock"))
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, SIGNIFICANT_FIGURES)
        .expect("valid histogram bounds")
}

/// One connection's batch of samples for a [`SharedHistogram`]; merged
/// when full and when dropped.
pub struct LatencyRecorder {
    shared: SharedHistogram,
    batch: Vec<u64>,
}

impl LatencyRecorder {
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.batch.push(micros.clamp(1, LATENCY_MICROS_MAX));
        if self.batch.len() >= BATCH_SAMPLES_MAX {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut histogram = self.shared.0.lock().expect("histogram lock");
        for &micros in &self.batch {
            histogram.saturating_record(micros);
        }
        self.batch.clear();
    }
}

impl Drop for LatencyRecorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }

    /// One row of a text table: `name  p50  p90  p99  p99.9  max`.
    pub fn text_row(&self, name: &str) -> String {
        if self.count == 0 {
            return format!("  {name:<12} {:>9}", "-");
        }
        format!(
            "  {name:<12} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}  ({} samples)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }

    /// The header for [`text_row`](Self::text_row).
    pub fn text_header(title: &str) -> String {
        format!(
            "  {title:<12} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "p50", "p90", "p99", "p99.9", "max"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_merge_on_flush_and_drop() {
        let shared = SharedHistogram::default();
        let mut recorder = shared.recorder();
        for ms in 1..=100 {
            recorder.record(Duration::from_millis(ms));
        }
        assert_eq!(shared.summary().count, 0, "still in the batch");
        drop(recorder);
        let summary = shared.summary();
        assert_eq!(summary.count, 100);
        assert!((summary.p50_ms - 50.0).abs() < 0.1, "{summary:?}");
        assert!((summary.max_ms - 100.0).abs() < 0.1, "{summary:?}");
    }
}
