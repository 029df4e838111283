//! Rate-limited log lines: a condition that repeats (descriptors
//! exhausted, a full disk, a next hop that keeps failing) writes its first
//! line at once and then at most one line per interval, carrying the
//! count of occurrences it stands for. Without it, one condition wrote 26
//! million `accept failed` lines (2.37 GB) in a minute (issue 10).

use std::time::{Duration, Instant};

/// One line per this much time per repeated condition.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Counts occurrences of one condition between the lines that report it.
/// Not shared between threads: each shard keeps its own.
#[derive(Debug, Default)]
pub struct LogLimit {
    last: Option<Instant>,
    /// Occurrences since the last line, this one included once counted.
    count: u64,
}

impl LogLimit {
    /// Counts an occurrence; returns how many occurrences the line to
    /// write now stands for, or `None` when no line is due yet.
    pub fn hit(&mut self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        let due = self
            .last
            .is_none_or(|at| now.duration_since(at) >= LOG_INTERVAL);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_at_once_then_one_per_interval_with_the_count() {
        let mut limit = LogLimit::default();
        let start = Instant::now();
        assert_eq!(limit.hit_at(start), Some(1));
        for _ in 0..999 {
            assert_eq!(limit.hit_at(start + Duration::from_millis(10)), None);
        }
        assert_eq!(limit.hit_at(start + LOG_INTERVAL), Some(1000));
        assert_eq!(limit.hit_at(start + LOG_INTERVAL * 3), Some(1));
    }
}
