//! Password hashes.
//!
//! New hashes are argon2id ([`hash_password`]). Verification also takes the
//! hashes other mail servers write, so users move over from a Dovecot or
//! Postfix (Cyrus SASL) setup without a password reset:
//!
//! - argon2id and argon2i, PHC strings (`$argon2id$v=19$m=...`);
//! - bcrypt, `$2a$`, `$2b$`, `$2y$` (Dovecot's `BLF-CRYPT`, `htpasswd -B`);
//! - SHA-512-crypt and SHA-256-crypt, `$6$` and `$5$`, with or without
//!   `rounds=` (glibc `crypt(3)`, `openssl passwd -6`, `doveadm pw`).
//!
//! Each may carry Dovecot's scheme prefix (`{ARGON2ID}`, `{ARGON2I}`,
//! `{BLF-CRYPT}`, `{SHA512-CRYPT}`, `{SHA256-CRYPT}`, `{CRYPT}`), so lines
//! from a Dovecot passwd-file can be pasted in as they are. The prefix must
//! agree with the hash after it.
//!
//! Hashes whose cost is past what one AUTH attempt may take are refused
//! ([`check_hash`] at load; [`verify_password`] says no): a typo such as
//! `rounds=50000000` would otherwise tie up a verification thread for
//! minutes on every attempt.

use std::panic::{catch_unwind, AssertUnwindSafe};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

/// argon2id memory cost, in KiB (19 MiB), with [`ARGON2_T_COST`] and
/// [`ARGON2_P_COST`]: the first of OWASP's recommended argon2id settings
/// (its Password Storage Cheat Sheet; also the `argon2` crate's default).
/// About 35 ms per hash or verify on the 2-core development machine: slow
/// enough that a stolen users file costs an attacker ~30 guesses a second
/// per core, fast enough that a verification thread checks dozens of AUTH
/// attempts a second, and 19 MiB per verification in flight keeps a small
/// thread pool's memory modest. More memory would cost every concurrent
/// verification; fewer passes would halve the attacker's work.
pub const ARGON2_M_COST_KIB: u32 = 19 * 1024;
/// argon2id passes over the memory.
pub const ARGON2_T_COST: u32 = 2;
/// argon2id lanes. 1: the `argon2` crate computes lanes one after another
/// anyway (no `parallel` feature), and the verification pool, not one
/// hash, is where baton uses its cores.
pub const ARGON2_P_COST: u32 = 1;

/// The most memory an argon2 hash in the users file may ask for (1 GiB):
/// every verification in flight allocates it.
const ARGON2_M_COST_KIB_MAX: u32 = 1 << 20;
/// The most passes (argon2) an accepted hash may ask for.
const ARGON2_T_COST_MAX: u32 = 64;
/// The most lanes (argon2) an accepted hash may ask for.
const ARGON2_P_COST_MAX: u32 = 64;
/// The highest bcrypt cost accepted: 2^16 rounds, about 4 s a verify;
/// Dovecot's default is 5, `htpasswd -B`'s 5, common advice 10-12.
const BCRYPT_COST_MAX: u32 = 16;
/// SHA-crypt rounds: glibc's range starts at 1000 (it raises smaller
/// counts to 1000, which the `sha-crypt` crate does not, so such hashes are
/// refused rather than silently never matching), and more than 1,000,000
/// rounds is about a second a verify (the default is 5000).
const SHA_CRYPT_ROUNDS_MIN: u32 = 1000;
const SHA_CRYPT_ROUNDS_MAX: u32 = 1_000_000;

/// An argon2id hash with exactly the parameters of [`hash_password`], of a
/// password nobody uses, so [`dummy_verify`] costs what a real
/// verification costs. Made with the reference implementation:
/// `echo -n 'baton: no such user' | argon2 batondummysalt16 -id -t 2 -k 19456 -p 1 -e`;
/// a test checks it against the constants above.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$YmF0b25kdW1teXNhbHQxNg$\
                          URw6ks0Ftk7XRbWZmpKLxJw4EyB5NI9qPKDzfjtk5vc";

/// The password hashing schemes [`verify_password`] knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Argon2,
    Bcrypt,
    ShaCrypt,
}

fn argon2id() -> Argon2<'static> {
    let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
        .expect("the argon2 parameters are within the crate's limits (see tests)");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A new argon2id hash of `password` with a random 16-byte salt, as a PHC
/// string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
///
/// # Panics
/// If the operating system has no randomness to give (`getrandom` fails):
/// a hash with a predictable salt must not be written.
pub fn hash_password(password: &[u8]) -> String {
    argon2id()
        .hash_password(password)
        .expect("argon2id hashing with a random salt (needs the OS random source)")
        .to_string()
}

/// Whether `password` matches `hash`, in any scheme the module docs list.
/// An unknown scheme, a malformed hash or one past the cost limits gives
/// `false`; so does anything a hashing crate panics on.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    let Ok((scheme, hash)) = parse(hash) else {
        return false;
    };
    // Hash strings are checked before they get here, but a parser panic in
    // a hashing crate on a hostile string has happened before (RUSTSEC-2026-0199,
    // bcrypt): an AUTH attempt must cost a `false`, never a thread.
    catch_unwind(AssertUnwindSafe(|| match scheme {
        Scheme::Argon2 => PasswordHash::new(hash)
            .is_ok_and(|parsed| Argon2::default().verify_password(password, &parsed).is_ok()),
        Scheme::Bcrypt => bcrypt::verify(password, hash).unwrap_or(false),
        Scheme::ShaCrypt => sha_crypt::ShaCrypt::default()
            .verify_password(password, hash)
            .is_ok(),
    }))
    .unwrap_or(false)
}

/// Costs what verifying a real argon2id hash costs, and says nothing: for
/// an AUTH attempt with a user name that does not exist, so the time taken
/// does not tell an attacker which names do. (A user migrated with a bcrypt
/// or SHA-crypt hash takes that scheme's time; rehashing with
/// `baton user passwd` ends the difference.)
pub fn dummy_verify(password: &[u8]) {
    let _ = std::hint::black_box(verify_password(DUMMY_HASH, password));
}

/// Whether `hash` is one [`verify_password`] can check: a known scheme,
/// well formed, its costs within bounds. The users file is checked with
/// this at load, so a plain-text password or a typo in a hash is an error
/// naming its line, not a user who can never log in.
pub fn check_hash(hash: &str) -> Result<(), String> {
    parse(hash).map(|_| ())
}

/// The scheme of `hash` and the hash without any Dovecot `{SCHEME}` prefix,
/// after the checks [`check_hash`] describes.
fn parse(hash: &str) -> Result<(Scheme, &str), String> {
    // Every scheme here writes ASCII; anything else is not a hash, and
    // slicing it by byte offsets could split a character.
    if !hash.is_ascii() {
        return Err("not a password hash: it has non-ASCII characters".into());
    }
    let (prefix, bare) = match hash.strip_prefix('{').and_then(|rest| rest.split_once('}')) {
        Some((prefix, bare)) => (Some(prefix.to_ascii_uppercase()), bare),
        None => (None, hash),
    };
    let scheme = if bare.starts_with("$argon2id$") || bare.starts_with("$argon2i$") {
        Scheme::Argon2
    } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| bare.starts_with(p)) {
        Scheme::Bcrypt
    } else if bare.starts_with("$6$") || bare.starts_with("$5$") {
        Scheme::ShaCrypt
    } else {
        return Err(UNKNOWN.into());
    };
    if let Some(prefix) = prefix {
        let agrees = match prefix.as_str() {
            "ARGON2ID" => bare.starts_with("$argon2id$"),
            "ARGON2I" => bare.starts_with("$argon2i$"),
            "BLF-CRYPT" => scheme == Scheme::Bcrypt,
            "SHA512-CRYPT" => bare.starts_with("$6$"),
            "SHA256-CRYPT" => bare.starts_with("$5$"),
            "CRYPT" => scheme != Scheme::Argon2,
            _ => return Err(format!("unknown scheme {{{prefix}}}; {UNKNOWN}")),
        };
        if !agrees {
            return Err(format!(
                "the {{{prefix}}} prefix does not match the hash after it"
            ));
        }
    }
    match scheme {
        Scheme::Argon2 => check_argon2(bare)?,
        Scheme::Bcrypt => check_bcrypt(bare)?,
        Scheme::ShaCrypt => check_sha_crypt(bare)?,
    }
    Ok((scheme, bare))
}

const UNKNOWN: &str = "not a password hash baton knows: \
                       $argon2id$ (from `baton user`), $2y$/$2b$/$2a$ (bcrypt), $6$/$5$ (SHA-crypt)";

fn check_argon2(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| format!("malformed argon2 hash: {e}"))?;
    let params =
        Params::try_from(&parsed).map_err(|e| format!("malformed argon2 parameters: {e}"))?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("malformed argon2 hash: no salt or no hash".into());
    }
    if params.m_cost() > ARGON2_M_COST_KIB_MAX
        || params.t_cost() > ARGON2_T_COST_MAX
        || params.p_cost() > ARGON2_P_COST_MAX
    {
        return Err(format!(
            "argon2 costs too high to verify on every AUTH (m={}, t={}, p={}; at most \
             m={ARGON2_M_COST_KIB_MAX}, t={ARGON2_T_COST_MAX}, p={ARGON2_P_COST_MAX})",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(())
}

fn check_bcrypt(hash: &str) -> Result<(), String> {
    let parts: bcrypt::HashParts = hash
        .parse()
        .map_err(|e| format!("malformed bcrypt hash: {e}"))?;
    if parts.get_cost() > BCRYPT_COST_MAX {
        return Err(format!(
            "bcrypt cost {} too high to verify on every AUTH (at most {BCRYPT_COST_MAX})",
            parts.get_cost()
        ));
    }
    Ok(())
}

/// `$6$[rounds=N$]salt$hash`: the salt is up to 16 characters, the hash 86
/// (`$6$`) or 43 (`$5$`) characters of crypt's base 64.
fn check_sha_crypt(hash: &str) -> Result<(), String> {
    let malformed = |what: &str| format!("malformed SHA-crypt hash: {what}");
    let mut fields: Vec<&str> = hash.split('$').skip(2).collect();
    let hash_len = if hash.starts_with("$6$") { 86 } else { 43 };
    if let Some(rounds) = fields.first().and_then(|f| f.strip_prefix("rounds=")) {
        let rounds: u32 = rounds.parse().map_err(|_| malformed("rounds="))?;
        if !(SHA_CRYPT_ROUNDS_MIN..=SHA_CRYPT_ROUNDS_MAX).contains(&rounds) {
            return Err(format!(
                "SHA-crypt rounds={rounds} outside {SHA_CRYPT_ROUNDS_MIN}..={SHA_CRYPT_ROUNDS_MAX}"
            ));
        }
        fields.remove(0);
    }
    let [salt, digest] = fields[..] else {
        return Err(malformed("want $6$[rounds=N$]salt$hash"));
    };
    let crypt64 = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
    if salt.len() > 16 || salt.contains(|c: char| c.is_ascii_control() || c == ' ') {
        return Err(malformed("salt"));
    }
    if digest.len() != hash_len || !digest.chars().all(crypt64) {
        return Err(malformed("hash"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &[u8] = b"correct horse";

    /// Fixtures made with the reference tools, all of the password
    /// "correct horse".
    const FIXTURES: [(&str, &str); 9] = [
        // echo -n 'correct horse' | argon2 batonfixturesalt -id -t 2 -m 10 -p 1 -e
        (
            "argon2id",
            "$argon2id$v=19$m=1024,t=2,p=1$YmF0b25maXh0dXJlc2FsdA$\
             uz8RRsAaEoRsx55JuJgzjJNiUt4Xfo9DMyW+Dq7Rhwg",
        ),
        // echo -n 'correct horse' | argon2 batonfixturesalt -i -t 2 -m 10 -p 1 -e
        (
            "argon2i",
            "$argon2i$v=19$m=1024,t=2,p=1$YmF0b25maXh0dXJlc2FsdA$\
             4qrQY5VUOau+DfsrMXGpTqLhNg8TcNwn0nbw3w2rLPY",
        ),
        // htpasswd -nbB -C 5 app1 'correct horse' (apache2-utils)
        (
            "bcrypt $2y$",
            "$2y$05$aSP/vKQG1seBDNKlZ3SQ.e2fYZf0u0oUjMQV2BpkYQ5TX8hy6V83S",
        ),
        // perl -e 'print crypt("correct horse", q($2b$05$abcdefghijklmnopqrstuu))' (libxcrypt)
        (
            "bcrypt $2b$",
            "$2b$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2",
        ),
        // openssl passwd -6 -salt batonfixture1234 'correct horse'
        (
            "sha512-crypt",
            "$6$batonfixture1234$bTZ7fvV.EWnIYKKPP1fHDsC7P5hPqvzC8PqCET5yOgt0vDIMket.\
             xgoMMJYGM4UHrnbcsQOdvZV0q.6A4Ep0j.",
        ),
        // perl -e 'print crypt("correct horse", q($6$rounds=10000$batonfixture$))' (libxcrypt)
        (
            "sha512-crypt rounds=",
            "$6$rounds=10000$batonfixture$0YMacR2uU6ao6CHOJhu8KtA.8wRNCgaXBxUGDTIqAuRkGU1LxGAica\
             mLlW3daQtC2rLXCa6dlZMVsy61Ok0YM1",
        ),
        // perl -e 'print crypt("correct horse", q($5$batonfixture$))' (libxcrypt)
        (
            "sha256-crypt",
            "$5$batonfixture$XIWYWHosNLekVHidL7gIAuzfxUfC7QPNrUW/HI08lj0",
        ),
        // The Dovecot passwd-file spelling of the two above.
        (
            "{SHA512-CRYPT}",
            "{SHA512-CRYPT}$6$batonfixture1234$bTZ7fvV.EWnIYKKPP1fHDsC7P5hPqvzC8PqCET5yOgt0vDI\
             Mket.xgoMMJYGM4UHrnbcsQOdvZV0q.6A4Ep0j.",
        ),
        (
            "{BLF-CRYPT}",
            "{BLF-CRYPT}$2y$05$aSP/vKQG1seBDNKlZ3SQ.e2fYZf0u0oUjMQV2BpkYQ5TX8hy6V83S",
        ),
    ];

    #[test]
    fn every_scheme_verifies_its_fixture_and_rejects_a_wrong_password() {
        for (scheme, hash) in FIXTURES {
            assert_eq!(check_hash(hash), Ok(()), "{scheme}");
            assert!(verify_password(hash, PASSWORD), "{scheme}");
            assert!(!verify_password(hash, b"correct horsf"), "{scheme}");
            assert!(!verify_password(hash, b""), "{scheme}");
        }
    }

    #[test]
    fn dovecot_argon2_prefixes() {
        let hash = FIXTURES[0].1;
        assert!(verify_password(&format!("{{ARGON2ID}}{hash}"), PASSWORD));
        assert!(verify_password(&format!("{{argon2id}}{hash}"), PASSWORD));
        assert!(!verify_password(&format!("{{ARGON2I}}{hash}"), PASSWORD));
        assert!(verify_password(
            &format!("{{ARGON2I}}{}", FIXTURES[1].1),
            PASSWORD
        ));
        // {CRYPT} is any crypt(3) scheme, but argon2 is not one.
        assert!(verify_password(
            &format!("{{CRYPT}}{}", FIXTURES[2].1),
            PASSWORD
        ));
        assert!(!verify_password(&format!("{{CRYPT}}{hash}"), PASSWORD));
    }

    #[test]
    fn new_hashes_are_argon2id_with_the_documented_costs() {
        let hash = hash_password(PASSWORD);
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password(&hash, PASSWORD));
        assert!(!verify_password(&hash, b"Correct horse"));
        // Salted: the same password hashes differently each time.
        assert_ne!(hash_password(PASSWORD), hash);
    }

    #[test]
    fn dummy_hash_costs_what_a_new_hash_costs() {
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let params = Params::try_from(&dummy).unwrap();
        assert_eq!(dummy.algorithm.as_str(), "argon2id");
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST)
        );
        // The dummy hash is a valid one, so its verification runs in full.
        assert!(verify_password(DUMMY_HASH, b"baton: no such user"));
        dummy_verify(PASSWORD);
    }

    #[test]
    fn malformed_and_unknown_hashes_are_false_not_panics() {
        let bad = [
            "",
            "correct horse",
            "$1$saltsalt$Pu8FVdXbVE0n6bUgUaRDy.", // MD5-crypt: not accepted
            "{PLAIN}correct horse",
            "{SHA512-CRYPT}$2y$05$aSP/vKQG1seBDNKlZ3SQ.e2fYZf0u0oUjMQV2BpkYQ5TX8hy6V83S",
            "{ARGON2ID",
            "$argon2id$",
            "$argon2id$v=19$m=1024,t=2,p=1$YmF0b25maXh0dXJlc2FsdA",
            "$argon2id$v=19$m=1024,t=2,p=1$!!!$uz8RRsAaEoRsx55JuJgzjJNiUt4Xfo9DMyW+Dq7Rhwg",
            "$argon2d$v=19$m=1024,t=2,p=1$YmF0b25maXh0dXJlc2FsdA$uz8RRsAaEoRsx55JuJgzjJNiUt4Xfo9DMyW+Dq7Rhwg",
            // Too costly: 4 GiB of memory per attempt.
            "$argon2id$v=19$m=4194304,t=2,p=1$YmF0b25maXh0dXJlc2FsdA$uz8RRsAaEoRsx55JuJgzjJNiUt4Xfo9DMyW+Dq7Rhwg",
            "$2y$05$",
            "$2y$05$aSP/vKQG1seBDNKlZ3SQ.e2fYZf0u0oUjMQV2BpkYQ5TX8hy6V83",
            "$2y$31$aSP/vKQG1seBDNKlZ3SQ.e2fYZf0u0oUjMQV2BpkYQ5TX8hy6V83S",
            "$2y$05$aSP/vKQG1seBDNKlZ3SQ.e2fYZf0u0oUjMQV2BpkYQ5TX8hy6V8£",
            "$6$",
            "$6$salt",
            "$6$rounds=999$batonfixture$0YMacR2uU6ao6CHOJhu8KtA.8wRNCgaXBxUGDTIqAuRkGU1LxGAicamLlW3daQtC2rLXCa6dlZMVsy61Ok0YM1",
            "$6$rounds=4000000000$batonfixture$0YMacR2uU6ao6CHOJhu8KtA.8wRNCgaXBxUGDTIqAuRkGU1LxGAicamLlW3daQtC2rLXCa6dlZMVsy61Ok0YM1",
            "$6$batonfixture1234$short",
            "$6$a$b$c$d",
            "$argon2id$v=19$m=1024,t=2,p=1$YmF0b25maXh0dXJlc2FsdA$uz8RRsAaEoRsx55JuJgzjJNiUt4Xfo9DMyW+Dq7Rhw€",
        ];
        for hash in bad {
            assert!(check_hash(hash).is_err(), "{hash:?} accepted");
            assert!(!verify_password(hash, PASSWORD), "{hash:?} verified");
        }
        // Every prefix of a good hash is refused without a panic.
        for (_, hash) in FIXTURES {
            for end in 0..hash.len() {
                assert!(!verify_password(&hash[..end], PASSWORD), "{}", &hash[..end]);
            }
        }
    }
}
