//! What waits for durability: a client's `250`, an operator's answer. The
//! writer makes its appends durable in ticket order (a prefix), so the
//! entries wait in that order and leave, oldest first, once
//! [`Writer::durable`](crate::Writer::durable) covers them. The shard and
//! the simulator hold their waiting entries here, so the rule "no answer
//! before the datasync" is one piece of code that both run.

use std::collections::VecDeque;

use crate::Ticket;

#[derive(Debug)]
pub struct Gate<T> {
    waiting: VecDeque<(Ticket, T)>,
}

impl<T> Default for Gate<T> {
    fn default() -> Self {
        Gate {
            waiting: VecDeque::new(),
        }
    }
}

impl<T> Gate<T> {
    /// `item` waits until `ticket` is durable. Tickets come in the order
    /// the writer issued them.
    pub fn push(&mut self, ticket: Ticket, item: T) {
        debug_assert!(self.waiting.back().is_none_or(|(last, _)| *last <= ticket));
        self.waiting.push_back((ticket, item));
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// The entries that may leave now, oldest first, each with whether its
    /// append is durable: those `durable` covers, and, when the writer
    /// `failed`, all the others too (to be refused). Empty, without
    /// allocating, when none may leave.
    pub fn release(&mut self, durable: Ticket, failed: bool) -> Vec<(T, bool)> {
        let covered = self
            .waiting
            .partition_point(|(ticket, _)| *ticket <= durable);
        // The planted bug: one entry more, as if its datasync were done.
        let early = usize::from(crate::plant::ack_before_sync() && covered < self.waiting.len());
        let leaving = if failed {
            self.waiting.len()
        } else {
            covered + early
        };
        if leaving == 0 {
            return Vec::new();
        }
        self.waiting
            .drain(..leaving)
            .enumerate()
            .map(|(i, (_, item))| (item, i < covered + early))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_leave_in_order_once_covered_and_all_on_failure() {
        let mut gate = Gate::default();
        for t in 1..=4 {
            gate.push(Ticket(t), t);
        }
        assert!(gate.release(Ticket(0), false).is_empty());
        assert_eq!(gate.release(Ticket(2), false), [(1, true), (2, true)]);
        assert_eq!(gate.release(Ticket(3), true), [(3, true), (4, false)]);
        assert!(gate.is_empty());
    }
}
