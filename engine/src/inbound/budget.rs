//! The memory of message data held in flight, across every session of the
//! server: each message being received holds its body in a buffer until
//! the spool has it, and many large messages at once could otherwise take
//! all the memory there is (four 50 MB messages once took 583 MB).
//!
//! A session's message reserves what its buffer holds (its capacity, the
//! memory really taken) from a [`DataBudget`] shared by all sessions, as
//! the buffer grows. When a reservation does not fit, the message stops
//! being stored: its data is still read to its end, so the session stays
//! in step with the client, and then refused with `452 4.3.1`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The bytes of message data all sessions hold, against a limit.
#[derive(Debug)]
pub struct DataBudget {
    held: AtomicU64,
    limit: u64,
    /// Messages dropped because their buffer did not fit.
    refused: AtomicU64,
}

impl DataBudget {
    pub fn new(limit: u64) -> Arc<DataBudget> {
        Arc::new(DataBudget {
            held: AtomicU64::new(0),
            limit,
            refused: AtomicU64::new(0),
        })
    }

    /// No limit (sessions made outside a server: tests, tools).
    pub fn unlimited() -> Arc<DataBudget> {
        DataBudget::new(u64::MAX)
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Messages refused so far because they did not fit.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit under the limit.
    fn take(&self, bytes: u64) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&after| after <= self.limit)
            })
            .is_ok()
    }

    fn put_back(&self, bytes: u64) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Two configurations are equal whatever their sessions hold now.
impl PartialEq for DataBudget {
    fn eq(&self, other: &DataBudget) -> bool {
        self.limit == other.limit
    }
}

impl Eq for DataBudget {}

/// What one message's buffer holds of a [`DataBudget`]; given back when
/// dropped, so every way a message ends (stored, refused, RSET, a closed
/// connection) releases it.
#[derive(Debug)]
pub(crate) struct Held {
    budget: Arc<DataBudget>,
    bytes: u64,
}

impl Held {
    pub fn new(budget: &Arc<DataBudget>) -> Held {
        Held {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// Makes the reservation `bytes`. False (and nothing held) when the
    /// growth does not fit: the caller drops the buffer.
    pub fn resize(&mut self, bytes: u64) -> bool {
        if bytes > self.bytes {
            if !self.budget.take(bytes - self.bytes) {
                self.release();
                self.budget.refused.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        } else {
            self.budget.put_back(self.bytes - bytes);
        }
        self.bytes = bytes;
        true
    }

    pub fn release(&mut self) {
        self.budget.put_back(std::mem::take(&mut self.bytes));
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_under_the_limit_and_come_back() {
        let budget = DataBudget::new(100);
        let mut a = Held::new(&budget);
        let mut b = Held::new(&budget);
        assert!(a.resize(60));
        assert!(!b.resize(50), "over the limit");
        assert_eq!(budget.held(), 60);
        assert_eq!(budget.refused(), 1);
        assert!(b.resize(40));
        assert!(a.resize(10));
        assert_eq!(budget.held(), 50);
        drop(a);
        assert_eq!(budget.held(), 40);
        b.release();
        assert_eq!(budget.held(), 0);
    }
}
