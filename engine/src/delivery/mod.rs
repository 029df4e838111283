//! Delivery: what happens to a recipient after the next hop answered.
//!
//! - `retry`: the retry schedule, expiry and client timeouts.

pub mod retry;
