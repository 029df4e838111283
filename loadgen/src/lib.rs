//! loadgen: an SMTP load generator and a scriptable SMTP sink, for baton
//! and any other SMTP server.
//!
//! It runs on tokio (multi-threaded) and shares only the sans-IO SMTP
//! grammar with the engine ([`baton::smtp`]: command formatting, reply
//! parsing, the DATA reader, dot-stuffing, paths), never its server
//! internals, so that the two implementations check each other.
//!
//! # Layout
//!
//! - [`send`]: `loadgen send`, the client: schedule (closed or open loop),
//!   connections, pipelined transactions, the report.
//! - [`sink`]: `loadgen sink`, the server: sessions, scripted
//!   misbehaviour, ids received, loss and duplicate checks, the summary.
//! - [`bench`]: `loadgen bench`, the comparison of the direct path with
//!   relays in between (baton, Postfix): one table, and JSON.
//! - [`message`]: the messages `send` writes; [`ids`]: the id and time
//!   stamped in them, and the set of accepted ids.
//! - [`latency`]: HdrHistogram percentiles; [`clock`] and [`rng`]: time
//!   and randomness through one seam, so a run reproduces from its seed.
//! - [`tls`], [`stream`]: rustls configurations and STARTTLS streams.
//! - [`units`], [`base64`], [`signals`]: small helpers.

#![forbid(unsafe_code)]

pub mod base64;
pub mod bench;
pub mod clock;
pub mod ids;
pub mod latency;
pub mod message;
pub mod rng;
pub mod send;
pub mod signals;
pub mod sink;
pub mod stream;
pub mod tls;
pub mod units;
