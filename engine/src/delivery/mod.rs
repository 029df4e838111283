//! Delivery: what happens to a message after it is queued.
//!
//! - [`retry`]: the retry schedule, expiry, and the client's timeouts.
//! - [`dsn`]: delivery status notifications (RFC 3464): the bounce sent
//!   back to the sender when recipients fail.
//! - [`events`]: the delivery event log, one JSON line per event, for
//!   operators to tail.
//! - [`settle`]: what an attempt makes of each recipient, and the order
//!   its outcomes and the notification reach the spool (shared with the
//!   simulator).
//! - [`webhook`]: the event log posted to HTTP(S) endpoints in batches,
//!   from the file, each endpoint with a durable cursor.
//!
//! The connections themselves are driven by the shards
//! (`shard/outbound.rs`); this module holds what needs no I/O.

#![forbid(unsafe_code)]

pub mod dsn;
pub mod events;
pub mod retry;
pub mod settle;
pub mod webhook;
