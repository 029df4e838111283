//! The engine's one error type.

use std::io;

/// What can stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("spool: {0}")]
    Spool(baton_spool::Error),
    #[error("cannot listen: {0}")]
    Listen(io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("admin request failed: {0}")]
    Admin(String),
    #[error("auth: {0}")]
    Auth(String),
    #[error("dkim: {0}")]
    Dkim(String),
    /// Sites, bounce classification or shaping rules cannot be built.
    #[error("shaping: {0}")]
    Shaping(String),
    /// `[log] events` cannot be opened for appending.
    #[error("event log: {0}")]
    Events(String),
    /// `[admin] token_file` or `[http] token_file` cannot be used, or the
    /// admin one is missing off loopback.
    #[error("{0}")]
    AdminToken(String),
    /// `baton drain` cannot start: a bad target.
    #[error("drain: {0}")]
    Drain(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
