//! HTTP servers baton runs besides the admin API (`crate::admin`), each
//! on hyper, on a thread of its own, off the shards.
//!
//! - [`unsubscribe`]: the HTTPS listener for one-click unsubscribe links
//!   (RFC 8058).

pub mod unsubscribe;
