//! SMTP AUTH (RFC 4954): the users who may submit mail with a name and a
//! password.
//!
//! - `users`: the users file (`[auth] users`), parsed into [`Users`]: each
//!   user's password hash and [`UserPolicy`] (sender domains, messages per
//!   hour, recipients per message). Its errors name the file, line and key.
//! - `hash`: password hashes: argon2id for new ones, bcrypt and SHA-crypt
//!   verified for users moved over from Dovecot or Postfix;
//!   [`dummy_verify`] for unknown names, so timing does not tell which
//!   names exist.
//! - `verify`: checking credentials off the shards: the verification
//!   threads, the cache of successes, the brute-force guard, the per-user
//!   message rates.
//! - `edit`: the changes `baton user` makes to the users file, written
//!   atomically and keeping what else the file holds, comments included.
//!
//! What AUTH answers never says whether a user exists: an unknown name and
//! a wrong password get the same reply, after the same work.

#![forbid(unsafe_code)]

pub mod edit;
pub mod hash;
pub mod users;
pub mod verify;

pub use hash::{check_hash, dummy_verify, hash_password, verify_password};
pub use users::{User, UserPolicy, Users, UsersError};
