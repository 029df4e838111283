//! SMTP AUTH: users and their password hashes (`users.rs`, `hash.rs`),
//! and the verification of credentials off the shards (`verify.rs`).

pub mod hash;
pub mod users;
pub mod verify;
