//! Which message is sent when.
//!
//! Closed loop: a connection takes the next message as soon as it is free;
//! each message is due the moment it is taken. Open loop: message `n` is
//! due at `start + n / rate`, whoever sends it and whenever that
//! connection gets free. Latency is measured from the due time, so a
//! server that stalls shows in the percentiles instead of silently slowing
//! the sender down (no coordinated omission).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A message to send: its number in the run and when it is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub seq: u64,
    pub due: Instant,
}

/// When a run ends.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

/// Hands out tickets to the connections of a run.
#[derive(Debug)]
pub struct Schedule {
    next_seq: AtomicU64,
    start: Instant,
    /// Open loop: nanoseconds between two due times.
    interval_nanos: Option<f64>,
    count: Option<u64>,
    deadline: Option<Instant>,
    stopped: AtomicBool,
}

impl Schedule {
    /// `rate`: messages per second for an open loop, None for closed.
    pub fn new(start: Instant, rate: Option<f64>, limits: Limits) -> Schedule {
        Schedule {
            next_seq: AtomicU64::new(0),
            start,
            interval_nanos: rate.map(|r| 1e9 / r),
            count: limits.count,
            deadline: limits.duration.map(|d| start + d),
            stopped: AtomicBool::new(false),
        }
    }

    /// The next message, or None once the run is over. `now` is when a
    /// closed loop takes it.
    pub fn take(&self, now: Instant) -> Option<Ticket> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            return None;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if self.count.is_some_and(|count| seq >= count) {
            return None;
        }
        let due = match self.interval_nanos {
            Some(interval) => self.start + Duration::from_nanos((seq as f64 * interval) as u64),
            None => now,
        };
        if self.deadline.is_some_and(|deadline| due >= deadline) {
            return None;
        }
        Some(Ticket { seq, due })
    }

    /// Whether tickets may still come (a hint: `take` decides).
    pub fn is_open(&self, now: Instant) -> bool {
        !self.stopped.load(Ordering::Relaxed)
            && self.deadline.is_none_or(|deadline| now < deadline)
            && self
                .count
                .is_none_or(|count| self.next_seq.load(Ordering::Relaxed) < count)
    }

    /// No more tickets (interrupt, fatal error).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn is_open_loop(&self) -> bool {
        self.interval_nanos.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_limits_closed_loop() {
        let start = Instant::now();
        let schedule = Schedule::new(
            start,
            None,
            Limits {
                count: Some(3),
                duration: None,
            },
        );
        let seqs: Vec<_> = std::iter::from_fn(|| schedule.take(start))
            .map(|t| t.seq)
            .collect();
        assert_eq!(seqs, vec![0, 1, 2]);
        assert!(!schedule.is_open(start));
    }

    #[test]
    fn open_loop_spaces_due_times_and_stops_at_the_deadline() {
        let start = Instant::now();
        let schedule = Schedule::new(
            start,
            Some(100.0),
            Limits {
                count: None,
                duration: Some(Duration::from_secs(1)),
            },
        );
        let tickets: Vec<_> = std::iter::from_fn(|| schedule.take(start)).collect();
        assert_eq!(tickets.len(), 100);
        assert_eq!(tickets[10].due - start, Duration::from_millis(100));
        assert!(schedule.is_open_loop());
    }

    #[test]
    fn stop_ends_the_run() {
        let start = Instant::now();
        let limits = Limits {
            count: None,
            duration: None,
        };
        let schedule = Schedule::new(start, None, limits);
        assert!(schedule.take(start).is_some());
        schedule.stop();
        assert!(schedule.take(start).is_none());
    }
}
