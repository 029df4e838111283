//! The SMTP grammar, sans IO: bytes in, values out, and back.
//!
//! No sockets, no runtime, no clock: the server session ([`crate::inbound`])
//! and `loadgen`'s client and sink share these parsers and formatters, so
//! that the two check each other. Nothing here knows about the spool.
//!
//! # Layout
//!
//! - [`command`]: command lines (RFC 5321 §4.1.1) to [`command::Command`]
//!   and back; ESMTP parameters.
//! - [`address`]: paths (§4.1.2): null path, source routes, quoted local
//!   parts, address literals, length limits, SMTPUTF8 (RFC 6531).
//! - [`reply`]: replies (§4.2) with enhanced status codes (RFC 3463):
//!   formatting, and a bounded parser for multi-line replies.
//! - [`data`]: message content: the DATA reader (end of data, SMTP
//!   smuggling defences, limits) and the BDAT dot-stuffer.
//! - [`date`]: RFC 5322 date-time for `Received:`.

#![forbid(unsafe_code)]

pub mod address;
pub mod command;
pub mod data;
pub mod date;
pub mod reply;
