//! The users file: who may AUTH, with which password hash, and the policy
//! each user sends under.
//!
//! ```toml
//! [[user]]
//! name = "app1"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$...$..."
//! sender_domains = ["example.com", ".example.com"]   # optional; none = any
//! messages_per_hour = 10000                          # optional; none = no limit
//! recipients_per_message_max = 100                   # optional; none = [limits]
//! dkim_domains = ["example.com"]                     # optional; none = any it may send from
//! unsubscribe = true                                 # optional; one-click links in its mail
//! pool = "transactional"                             # optional; the [[pool]] its mail leaves from
//! ```
//!
//! Unknown keys, duplicate names and unknown hash schemes are errors naming
//! the file, line and key, as in the configuration: a typo must not leave
//! a user unable to log in, or without the limit meant for it. The file
//! is read whole and replaced whole (on SIGHUP), so a reader never sees half
//! of an edit; `edit` is how `baton user` changes it.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::hash::check_hash;
use crate::config::{self, ConfigError};

/// What is wrong with a users file, and where: displayed as
/// `<file>:<line>:<column>: <key>: <message>`, e.g.
/// `users.toml:7:1: user[1].sender_domain: unknown key ...`. The users file
/// is configuration, so its errors are the configuration's.
pub type UsersError = ConfigError;

/// The longest user name accepted, in bytes; RFC 4954 puts no limit on an
/// authentication identity, but a name is logged with every message.
pub const NAME_BYTES_MAX: usize = 256;

/// All users, by name. Names are compared exactly (case matters), as the
/// client sends them.
#[derive(Clone, Debug, Default)]
pub struct Users {
    /// In file order, which `baton user list` keeps.
    users: Vec<User>,
    by_name: HashMap<String, usize>,
}

/// One `[[user]]`.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    /// The password hash (see `crate::auth::hash`); never the password.
    pub password: String,
    pub policy: UserPolicy,
}

/// What an authenticated user may send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserPolicy {
    /// Domains the user may send from (MAIL FROM and `From:`); empty = any.
    /// Entries are lowercase: `"example.com"` is that domain exactly,
    /// `".example.com"` any subdomain of it (not `example.com` itself, as in
    /// Postfix's tables: list both to allow both).
    pub sender_domains: Vec<String>,
    /// Messages accepted per hour; `None` = no limit.
    pub messages_per_hour: Option<u32>,
    /// Recipients per message; `None` = `[limits] recipients_per_message_max`.
    pub recipients_per_message_max: Option<u32>,
    /// `From:` domains baton signs the user's mail for, as
    /// `sender_domains` is written; empty = any domain it may send from.
    pub dkim_domains: Vec<String>,
    /// One-click unsubscribe links in the user's single-recipient mail,
    /// scope `user:<name>` (`[unsubscribe]` must be on).
    pub unsubscribe: bool,
    /// The `[[pool]]` the user's mail leaves from; `None`: the sender
    /// domain's (`[[sender_pool]]`), the route's or the default.
    pub pool: Option<String>,
}

impl UserPolicy {
    /// Whether the user's mail from `domain` is signed (when a key exists).
    pub fn allows_signing_for(&self, domain: &str) -> bool {
        domain_matches(&self.dkim_domains, domain)
    }

    /// Whether the user may send from `domain` (compared without regard to
    /// ASCII case, a trailing root dot ignored). An empty `domain` (the
    /// null sender `<>`) matches no entry: the caller decides about it.
    pub fn allows_sender_domain(&self, domain: &str) -> bool {
        domain_matches(&self.sender_domains, domain)
    }
}

/// Whether `domain` is in `list` (empty = any), entries as in
/// `sender_domains`.
fn domain_matches(list: &[String], domain: &str) -> bool {
    if list.is_empty() {
        return true;
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return false;
    }
    let domain = domain.to_ascii_lowercase();
    list.iter().any(|entry| match entry.strip_prefix('.') {
        // A subdomain: ends with ".example.com" and has a label before it.
        Some(_) => domain.len() > entry.len() && domain.ends_with(entry.as_str()),
        None => domain == *entry,
    })
}

/// `[[user]]` as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password: String,
    #[serde(default)]
    sender_domains: Vec<String>,
    #[serde(default)]
    messages_per_hour: Option<u32>,
    #[serde(default)]
    recipients_per_message_max: Option<u32>,
    #[serde(default)]
    dkim_domains: Vec<String>,
    #[serde(default)]
    unsubscribe: bool,
    #[serde(default)]
    pool: Option<String>,
}

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

impl Users {
    /// Reads and checks the users file at `path`.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| config::unreadable(&origin, &e))?;
        Users::parse(&text, &origin)
    }

    /// Parses and checks `text`; `origin` (the file name) starts every
    /// error message.
    pub fn parse(text: &str, origin: &str) -> Result<Users, UsersError> {
        let file: UsersFile = config::parse_toml(text, origin, check)?;
        let mut users = Users::empty();
        for entry in file.user {
            let policy = UserPolicy {
                sender_domains: entry
                    .sender_domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
                messages_per_hour: entry.messages_per_hour,
                recipients_per_message_max: entry.recipients_per_message_max,
                dkim_domains: entry
                    .dkim_domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
                unsubscribe: entry.unsubscribe,
                pool: entry.pool.filter(|p| !p.is_empty()),
            };
            users.by_name.insert(entry.name.clone(), users.users.len());
            users.users.push(User {
                name: entry.name,
                password: entry.password,
                policy,
            });
        }
        Ok(users)
    }

    /// No users: AUTH is not offered.
    pub fn empty() -> Users {
        Users::default()
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name).map(|&i| &self.users[i])
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// In file order.
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.iter()
    }
}

/// The rules beyond types, each naming the key at fault.
fn check(file: &UsersFile) -> Result<(), (String, String)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, user) in file.user.iter().enumerate() {
        let key = |name: &str| format!("user[{i}].{name}");
        check_name(&user.name).map_err(|message| (key("name"), message))?;
        if let Some(first) = seen.insert(&user.name, i) {
            return Err((
                key("name"),
                format!("{:?} is already user[{first}]", user.name),
            ));
        }
        check_hash(&user.password).map_err(|message| (key("password"), message))?;
        for (j, domain) in user.sender_domains.iter().enumerate() {
            check_sender_domain(domain)
                .map_err(|message| (format!("user[{i}].sender_domains[{j}]"), message))?;
        }
        for (j, domain) in user.dkim_domains.iter().enumerate() {
            check_sender_domain(domain)
                .map_err(|message| (format!("user[{i}].dkim_domains[{j}]"), message))?;
        }
        let positive = "must be at least 1 (leave the key out for no limit)";
        if user.messages_per_hour == Some(0) {
            return Err((key("messages_per_hour"), positive.into()));
        }
        if user.recipients_per_message_max == Some(0) {
            return Err((key("recipients_per_message_max"), positive.into()));
        }
    }
    Ok(())
}

/// A user name: what SASL PLAIN and LOGIN carry and the logs show.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(format!("longer than {NAME_BYTES_MAX} bytes"));
    }
    // Control characters (NUL separates SASL PLAIN's fields) and spaces
    // would make a name that cannot be typed, logged or listed unambiguously.
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{name:?} has spaces or control characters"));
    }
    Ok(())
}

/// An entry of `sender_domains`: `example.com` or `.example.com`.
pub fn check_sender_domain(entry: &str) -> Result<(), String> {
    let domain = entry.strip_prefix('.').unwrap_or(entry);
    let labels_ok = !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !labels_ok || domain.len() > 253 {
        return Err(format!(
            "{entry:?} is not a domain (\"example.com\", or \".example.com\" for its subdomains)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=1024,t=2,p=1$YmF0b25maXh0dXJlc2FsdA$\
                        uz8RRsAaEoRsx55JuJgzjJNiUt4Xfo9DMyW+Dq7Rhwg";

    fn parse(text: &str) -> Result<Users, UsersError> {
        Users::parse(&text.replace("HASH", HASH), "users.toml")
    }

    #[test]
    fn users_load_in_order_with_their_policy() {
        let users = parse(
            "# users\n\n[[user]]\nname = \"app1\"\npassword = \"HASH\"\n\
             sender_domains = [\"Example.COM\", \".example.com\"]\n\
             messages_per_hour = 10000\nrecipients_per_message_max = 100\n\
             dkim_domains = [\"Example.com\"]\nunsubscribe = true\npool = \"bulk\"\n\n\
             [[user]]\nname = \"app2@example.org\"\npassword = \"HASH\"\n",
        )
        .unwrap();
        assert_eq!(users.len(), 2);
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["app1", "app2@example.org"]);
        let app1 = users.get("app1").unwrap();
        assert_eq!(app1.password, HASH);
        assert_eq!(
            app1.policy,
            UserPolicy {
                sender_domains: vec!["example.com".into(), ".example.com".into()],
                messages_per_hour: Some(10000),
                recipients_per_message_max: Some(100),
                dkim_domains: vec!["example.com".into()],
                unsubscribe: true,
                pool: Some("bulk".into()),
            }
        );
        assert_eq!(
            users.get("app2@example.org").unwrap().policy,
            UserPolicy::default()
        );
        assert!(users.get("APP1").is_none());
        assert!(users.get("app3").is_none());
        assert!(parse("").unwrap().is_empty());
        assert!(Users::empty().get("app1").is_none());
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let cases = [
            (
                "[[user]]\nname = \"a\"\npassword = \"HASH\"\nsender_domain = [\"x.org\"]\n",
                "user[0].sender_domain",
                4,
                "unknown key",
            ),
            (
                "[[user]]\nname = \"a\"\npassword = \"HASH\"\n\n[[user]]\nname = \"a\"\npassword = \"HASH\"\n",
                "user[1].name",
                6,
                "already user[0]",
            ),
            (
                "[[user]]\nname = \"a\"\npassword = \"secret\"\n",
                "user[0].password",
                3,
                "not a password hash",
            ),
            (
                "[[user]]\nname = \"a b\"\npassword = \"HASH\"\n",
                "user[0].name",
                2,
                "spaces",
            ),
            (
                "[[user]]\nname = \"a\"\npassword = \"HASH\"\nsender_domains = [\"ok.org\",\n \"a@b.org\"]\n",
                "user[0].sender_domains[1]",
                5,
                "not a domain",
            ),
            (
                "[[user]]\nname = \"a\"\npassword = \"HASH\"\nmessages_per_hour = 0\n",
                "user[0].messages_per_hour",
                4,
                "at least 1",
            ),
            (
                "[[user]]\nname = \"a\"\npassword = \"HASH\"\nrecipients_per_message_max = -1\n",
                "user[0].recipients_per_message_max",
                4,
                "",
            ),
            ("[[user]]\nname = \"a\"\n", "user[0]", 1, "missing key `password`"),
            ("[user]\nname = \"a\"\n", "user", 1, "invalid type"),
            ("[[users]]\nname = \"a\"\n", "users[0]", 1, "unknown key"),
        ];
        for (text, key, line, needle) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!((error.key(), error.line()), (key, Some(line)), "{error}");
            assert!(error.message().contains(needle), "{error}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("users.toml:{line}:")),
                "{error}"
            );
        }
        let error = parse("[[user]]\nname = = \"a\"\n").unwrap_err();
        assert_eq!(error.line(), Some(2), "{error}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let error = Users::load(&path).unwrap_err();
        assert!(error.to_string().contains("cannot read"), "{error}");
        std::fs::write(
            &path,
            format!("[[user]]\nname = \"a\"\npassword = \"{HASH}\"\nx = 1\n"),
        )
        .unwrap();
        let error = Users::load(&path).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("{}:4:1: user[0].x: unknown key", path.display())),
            "{error}"
        );
    }

    #[test]
    fn sender_domains_match_exactly_or_as_subdomains() {
        let policy = UserPolicy {
            sender_domains: vec!["example.com".into(), ".mail.example.org".into()],
            ..UserPolicy::default()
        };
        for allowed in [
            "example.com",
            "EXAMPLE.com",
            "example.com.",
            "a.mail.example.org",
            "b.a.mail.example.org",
        ] {
            assert!(policy.allows_sender_domain(allowed), "{allowed}");
        }
        for refused in [
            "",
            ".",
            "sub.example.com",
            "example.co",
            "notexample.com",
            "mail.example.org",
            "xmail.example.org",
            "example.org",
        ] {
            assert!(!policy.allows_sender_domain(refused), "{refused}");
        }
        let any = UserPolicy::default();
        assert!(any.allows_sender_domain("anything.example"));
        assert!(any.allows_sender_domain(""));
    }

    #[test]
    fn names_and_domains_checked() {
        assert!(check_name("app1").is_ok());
        assert!(check_name("app1@example.com").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a\0b").is_err());
        assert!(check_name(&"a".repeat(NAME_BYTES_MAX + 1)).is_err());
        for ok in [
            "example.com",
            ".example.com",
            "localhost",
            "xn--bcher-kva.example",
        ] {
            assert!(check_sender_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..example.com",
            "example..com",
            "a b.com",
            "*.example.com",
            "x@y",
        ] {
            assert!(check_sender_domain(bad).is_err(), "{bad}");
        }
    }
}
