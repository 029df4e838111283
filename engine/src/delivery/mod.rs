//! Delivery: what happens to a message after it is queued.
//!
//! - [`dsn`]: delivery status notifications (RFC 3464): the bounce sent
//!   back to the sender when recipients fail.
//! - [`events`]: the delivery event log, one JSON line per event, for
//!   operators to tail.

pub mod dsn;
pub mod events;
