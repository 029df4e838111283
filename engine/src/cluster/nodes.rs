//! How many nodes a node counts when Redis is out of reach and each limit
//! is divided among them (sans IO). Counting too few would let the nodes
//! together exceed a limit, so the count is the most nodes seen alive
//! within the last [`NODES_WINDOW_MS`], and it is kept across restarts
//! (`<spool>/cluster-nodes`): a node that starts while Redis is down
//! divides by what it knew, not by one.

/// How long a higher node count is remembered after it was last seen: a
/// node that crashed and comes back within it is still counted.
pub const NODES_WINDOW_MS: u64 = 10 * 60 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownNodes {
    peak: usize,
    peak_at_ms: u64,
}

impl KnownNodes {
    /// Starting from a saved count (1 with none).
    pub fn new(saved: usize, now_ms: u64) -> KnownNodes {
        KnownNodes {
            peak: saved.max(1),
            peak_at_ms: now_ms,
        }
    }

    /// A heartbeat saw `live` nodes. `true` when the count changed (to be
    /// saved).
    pub fn seen(&mut self, live: usize, now_ms: u64) -> bool {
        let live = live.max(1);
        let before = self.peak;
        if live >= self.peak || now_ms.saturating_sub(self.peak_at_ms) > NODES_WINDOW_MS {
            self.peak = live;
            self.peak_at_ms = now_ms;
        }
        self.peak != before
    }

    /// What each limit is divided by.
    pub fn count(&self) -> usize {
        self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_went_away_is_counted_for_a_while_then_forgotten() {
        let mut known = KnownNodes::new(1, 0);
        assert!(known.seen(3, 1_000));
        assert!(!known.seen(2, 2_000), "one node down for a moment");
        assert_eq!(known.count(), 3);
        assert!(!known.seen(3, 3_000));
        assert!(known.seen(2, 3_000 + NODES_WINDOW_MS + 1));
        assert_eq!(known.count(), 2);
    }

    #[test]
    fn a_saved_count_holds_from_the_start() {
        let known = KnownNodes::new(4, 0);
        assert_eq!(known.count(), 4);
        assert_eq!(KnownNodes::new(0, 0).count(), 1);
    }
}
