//! Queue ids: unique across shards and restarts, increasing, readable.
//!
//! `unix ms (44 bits) | shard (8 bits) | counter (12 bits)`, printed as 16
//! hex digits. A shard that issues more than 4096 ids in one millisecond
//! borrows from the next millisecond; a restart starts above the highest id
//! the spool has seen, whatever the clock says.

use baton_spool::QueueId;

const SHARD_BITS: u32 = 8;
const COUNTER_BITS: u32 = 12;
/// Most shards the id layout can tell apart.
pub const SHARDS_MAX: usize = 1 << SHARD_BITS;

/// The Unix time in milliseconds a queue id was issued at (its top bits).
pub fn queue_id_ms(id: QueueId) -> u64 {
    id.0 >> (SHARD_BITS + COUNTER_BITS)
}

#[derive(Debug)]
pub struct QueueIdGen {
    shard: u64,
    last_ms: u64,
    counter: u64,
}

impl QueueIdGen {
    /// A generator for `shard` whose ids are all above `floor`.
    pub fn new(shard: usize, floor: QueueId) -> QueueIdGen {
        assert!(
            shard < SHARDS_MAX,
            "shard {shard} does not fit the queue id"
        );
        QueueIdGen {
            shard: shard as u64,
            last_ms: (floor.0 >> (SHARD_BITS + COUNTER_BITS)) + 1,
            counter: 0,
        }
    }

    pub fn next(&mut self, now_ms: u64) -> QueueId {
        if now_ms > self.last_ms {
            self.last_ms = now_ms;
            self.counter = 0;
        } else {
            self.counter += 1;
            if self.counter == 1 << COUNTER_BITS {
                self.last_ms += 1;
                self.counter = 0;
            }
        }
        QueueId(
            (self.last_ms << (SHARD_BITS + COUNTER_BITS))
                | (self.shard << COUNTER_BITS)
                | self.counter,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_never_collide_across_shards() {
        let mut a = QueueIdGen::new(0, QueueId(0));
        let mut b = QueueIdGen::new(1, QueueId(0));
        let mut seen = std::collections::HashSet::new();
        let mut last = QueueId(0);
        for i in 0..10_000 {
            let id = a.next(1000 + i / 5000);
            assert!(id > last);
            last = id;
            assert!(seen.insert(id));
            assert!(seen.insert(b.next(1000)));
        }
    }

    #[test]
    fn a_restart_starts_above_the_floor_even_if_the_clock_is_behind() {
        let mut before = QueueIdGen::new(3, QueueId(0));
        let high = before.next(5_000_000);
        let mut after = QueueIdGen::new(3, high);
        assert!(after.next(1) > high);
    }
}
