//! baton: an SMTP relay engine.
//!
//! # Layout
//!
//! - [`smtp`]: the sans-IO SMTP grammar: command lines, paths, replies, the
//!   DATA reader. No I/O, no runtime; `loadgen` shares it.
//! - [`inbound`]: the SMTP server session, a sans-IO state machine: bytes
//!   in, replies and complete messages out.
//! - [`outbound`]: the SMTP client, sans IO: replies in, commands out.
//! - [`shard`]: the I/O core. One thread per core, each with its own
//!   io_uring ring, listening sockets, sessions and spool writer. With the
//!   spool's mapping, the only `unsafe` in baton.
//! - [`queue`]: per-destination ready and scheduled queues, shared by all
//!   shards.
//! - [`route`]: which destination a recipient belongs to, and where its
//!   mail goes (MX or a configured next hop).
//! - [`dns`]: the resolver thread: MX and host lookups for the shards,
//!   answered by callback so that no shard ever blocks on DNS.
//! - [`delivery`]: what needs no I/O after the queue: the retry schedule,
//!   bounces (RFC 3464 notifications), the delivery event log, and the
//!   webhooks' threads that post it over HTTP. The
//!   delivery connections themselves run on the shards
//!   (`shard/outbound.rs`).
//! - [`auth`]: SMTP AUTH's users file, password hashes and per-user
//!   policy.
//! - [`policy`]: the suppression list (redb), checked at `RCPT`.
//! - [`tls`]: certificates and keys, the rustls configurations the shards
//!   share, and their replacement on SIGHUP.
//! - [`config`]: the TOML configuration, its defaults and validation.
//! - [`admin`]: the HTTP admin API (queue, metrics, health) and its client.
//! - [`metrics`]: histograms and per-site counters the admin API exports.
//! - [`http`]: the other HTTP listeners (one-click unsubscribe, HTTP
//!   injection) and the accept loop all three share.
//! - [`server`]: what the shards share; start and graceful stop.
//! - [`systemd`]: readiness and stopping, told to systemd (`sd_notify`).
//! - [`error`]: the crate's error type.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod dns;
pub mod error;
pub mod http;
pub mod inbound;
pub mod log_limit;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod queue;
pub mod route;
pub mod server;
pub mod shaping;
pub mod shard;
pub mod sign;
pub mod smtp;
pub mod systemd;
pub mod tls;
