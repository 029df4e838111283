//! Sending policy that outlives a message: who must not be mailed.
//!
//! - [`suppression`]: the suppression list, addresses refused (or
//!   dropped) at `RCPT`, on disk in redb, filled by hard bounces and
//!   operators, with a Bloom filter (`filter`) in front of it in memory.
//! - [`unsubscribe`]: one-click unsubscribe (RFC 8058): which mail gets
//!   `List-Unsubscribe`, and the signed tokens its links carry. The HTTPS
//!   listener that honours them is `crate::http::unsubscribe`.

mod filter;
pub mod suppression;
pub mod unsubscribe;
