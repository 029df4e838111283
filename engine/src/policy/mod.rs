//! Sending policy that outlives a message: who must not be mailed.
//!
//! - [`suppression`]: the suppression list, addresses refused (or
//!   dropped) at `RCPT`, on disk in redb, filled by hard bounces and
//!   operators, with a Bloom filter (`filter`) in front of it in memory.

mod filter;
pub mod suppression;
