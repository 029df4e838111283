//! Time, through one seam (so runs can be replayed): monotonic instants for measuring,
//! and the wall-clock time that goes into messages, tied together once at
//! the start of a run so that every stamp is consistent with the
//! measurements (an `Instant` due time always maps to the same stamp).

use std::time::Instant;

use crate::ids::unix_micros_now;

/// A run's anchor between `Instant` and Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    start_unix_micros: u64,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
            start_unix_micros: unix_micros_now(),
        }
    }

    /// The instant the run started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Microseconds since the Unix epoch at `at`.
    pub fn unix_micros(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start).as_micros() as u64;
        self.start_unix_micros + since
    }
}
