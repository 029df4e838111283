//! The changes `baton user` makes to the users file.
//!
//! The file is edited as a TOML document (`toml_edit`), not regenerated
//! from [`Users`], so an operator's comments, order and other users stay as
//! they were. The old file must load, and so must the new one before it is
//! written: `baton user` never turns a working file into a broken one.
//!
//! The new text goes to a temporary file in the same directory, is synced,
//! and renamed over the old one, and the directory is synced: a crash
//! leaves the old file or the new one, and a server reloading on SIGHUP
//! reads one or the other whole. The new file keeps the old one's mode
//! and owner, so a server that reads it through its group still can; a new
//! file is created readable by its owner only (0600), since a hash is what
//! an offline guessing attack starts from.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

use super::users::{User, Users};

/// What a new users file starts with.
const HEADER: &str = "# baton users for SMTP AUTH, one [[user]] table each; reloaded on SIGHUP.\n\
                      # Managed with `baton user add|passwd|remove|list`, which keep hand edits.\n";

/// Mode of a users file `baton user add` creates.
const NEW_FILE_MODE: u32 = 0o600;

/// One change to the users file.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// A new user; its `password` is already a hash. Creates the file if
    /// there is none.
    Add(&'a User),
    /// A new password hash for an existing user.
    Passwd { name: &'a str, password: &'a str },
    /// An existing user, removed.
    Remove(&'a str),
}

/// Applies `change` to the users file at `path` and returns the users the
/// new file holds. Nothing is written on an error: a duplicate add, an
/// unknown user, a users file that does not load, or an I/O error.
pub fn apply(path: &Path, change: Change<'_>) -> Result<Users, String> {
    let shown = path.display();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    // Two `baton user` commands at once must not both read the old file
    // and each write back only their own change: one waits for the other,
    // from reading to rename. The directory is locked, not the file, since
    // the rename replaces the file.
    let lock = File::open(&dir).map_err(|e| format!("{}: cannot open: {e}", dir.display()))?;
    lock.lock()
        .map_err(|e| format!("{}: cannot lock: {e}", dir.display()))?;

    let (text, metadata) = match fs::read_to_string(path) {
        Ok(text) => (Some(text), fs::metadata(path).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
        Err(e) => return Err(format!("{shown}: cannot read: {e}")),
    };
    let origin = shown.to_string();
    let old = match &text {
        Some(text) => Users::parse(text, &origin)
            .map_err(|e| format!("{e}\n(the users file must load before it is changed)"))?,
        None => Users::empty(),
    };
    let mut document = match &text {
        Some(text) => text
            .parse::<DocumentMut>()
            .map_err(|e| format!("{shown}: {e}"))?,
        None => DocumentMut::new(),
    };
    let index_of = |name: &str| {
        old.iter()
            .position(|user| user.name == name)
            .ok_or_else(|| format!("no user {name:?} in {shown}"))
    };
    match change {
        Change::Add(user) => {
            if old.get(&user.name).is_some() {
                return Err(format!(
                    "user {:?} already exists in {shown}; `baton user passwd` changes its password",
                    user.name
                ));
            }
            let tables = user_tables(&mut document, &old, path)?;
            let mut table = new_table(user);
            if text.is_none() {
                // A comment on a table is the text before its header, in
                // a new file the header comment.
                table.decor_mut().set_prefix(format!("{HEADER}\n"));
            } else if !tables.is_empty() {
                // A blank line between users.
                table.decor_mut().set_prefix("\n");
            }
            tables.push(table);
        }
        Change::Passwd { name, password } => {
            let index = index_of(name)?;
            let tables = user_tables(&mut document, &old, path)?;
            let table = tables.get_mut(index).expect("one table per user");
            match table.get_mut("password").and_then(Item::as_value_mut) {
                Some(value) => {
                    // Keep the value's surrounding spaces and any comment.
                    let decor = value.decor().clone();
                    *value = Value::from(password);
                    *value.decor_mut() = decor;
                }
                None => table["password"] = toml_edit::value(password),
            }
        }
        Change::Remove(name) => {
            let index = index_of(name)?;
            let tables = user_tables(&mut document, &old, path)?;
            let removed = tables.remove(index);
            let kept = kept_comments(&removed);
            if !kept.is_empty() {
                match tables.get_mut(index) {
                    Some(next) => {
                        let prefix = next.decor().prefix().and_then(|p| p.as_str()).unwrap_or("");
                        let prefix = format!("{kept}{prefix}");
                        next.decor_mut().set_prefix(prefix);
                    }
                    None => {
                        let trailing = document.trailing().as_str().unwrap_or("");
                        document.set_trailing(format!("{kept}{trailing}"));
                    }
                }
            }
        }
    }

    let new_text = document.to_string();
    let new = Users::parse(&new_text, &origin).map_err(|e| {
        format!("the changed users file would not load, so it was not written: {e}")
    })?;
    write_atomically(path, &dir, new_text.as_bytes(), metadata.as_ref())
        .map_err(|e| format!("{shown}: cannot write: {e}"))?;
    Ok(new)
}

/// The document's `[[user]]` tables, in the order [`Users`] has them.
fn user_tables<'d>(
    document: &'d mut DocumentMut,
    old: &Users,
    path: &Path,
) -> Result<&'d mut ArrayOfTables, String> {
    if !document.contains_key("user") {
        document.insert("user", Item::ArrayOfTables(ArrayOfTables::new()));
    }
    match document
        .get_mut("user")
        .and_then(Item::as_array_of_tables_mut)
    {
        Some(tables) if tables.len() == old.len() => Ok(tables),
        _ => Err(format!(
            "{}: `baton user` edits users written as [[user]] tables; this file writes them \
             another way (an inline array?): edit it by hand",
            path.display()
        )),
    }
}

/// The comments before a removed `[[user]]` that are not about that user:
/// those above the last blank line before its header, such as the file's
/// own header comment. The block right above the header is the user's and
/// goes with it.
fn kept_comments(removed: &Table) -> String {
    let prefix = removed
        .decor()
        .prefix()
        .and_then(|p| p.as_str())
        .unwrap_or("");
    match prefix.rfind("\n\n") {
        Some(blank) if !prefix[..blank].trim().is_empty() => {
            format!("{}\n", prefix[..blank].trim_end())
        }
        _ => String::new(),
    }
}

/// `[[user]]` for a new user, the optional keys only when set.
fn new_table(user: &User) -> Table {
    let mut table = Table::new();
    table["name"] = toml_edit::value(user.name.as_str());
    table["password"] = toml_edit::value(user.password.as_str());
    let policy = &user.policy;
    if !policy.sender_domains.is_empty() {
        let domains: Array = policy.sender_domains.iter().map(String::as_str).collect();
        table["sender_domains"] = toml_edit::value(domains);
    }
    if let Some(n) = policy.messages_per_hour {
        table["messages_per_hour"] = toml_edit::value(i64::from(n));
    }
    if let Some(n) = policy.recipients_per_message_max {
        table["recipients_per_message_max"] = toml_edit::value(i64::from(n));
    }
    if !policy.dkim_domains.is_empty() {
        let domains: Array = policy.dkim_domains.iter().map(String::as_str).collect();
        table["dkim_domains"] = toml_edit::value(domains);
    }
    if policy.unsubscribe {
        table["unsubscribe"] = toml_edit::value(true);
    }
    if let Some(pool) = &policy.pool {
        table["pool"] = toml_edit::value(pool.as_str());
    }
    table
}

/// Replaces `path` with `bytes`: temporary file, fsync, rename, fsync of the
/// directory. `old` is the replaced file's metadata, whose mode and owner
/// the new file keeps.
fn write_atomically(
    path: &Path,
    dir: &Path,
    bytes: &[u8],
    old: Option<&fs::Metadata>,
) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(".baton-new");
    let temp = dir.join(temp_name);
    // Left over by a command that died before its rename; we hold the lock.
    let _ = fs::remove_file(&temp);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(NEW_FILE_MODE)
            .open(&temp)?;
        if let Some(old) = old {
            let new = file.metadata()?;
            if (new.uid(), new.gid()) != (old.uid(), old.gid()) {
                std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid())).map_err(
                    |e| {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "cannot keep its owner {}:{} ({e}); run as root or as its owner",
                                old.uid(),
                                old.gid()
                            ),
                        )
                    },
                )?;
            }
            file.set_permissions(Permissions::from_mode(old.mode() & 0o7777))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserPolicy;

    const HASH: &str = "$argon2id$v=19$m=1024,t=2,p=1$YmF0b25maXh0dXJlc2FsdA$\
                        uz8RRsAaEoRsx55JuJgzjJNiUt4Xfo9DMyW+Dq7Rhwg";
    const HASH_2: &str = "$2y$05$aSP/vKQG1seBDNKlZ3SQ.e2fYZf0u0oUjMQV2BpkYQ5TX8hy6V83S";

    fn user(name: &str, policy: UserPolicy) -> User {
        User {
            name: name.into(),
            password: HASH.into(),
            policy,
        }
    }

    #[test]
    fn add_creates_a_private_file_then_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let policy = UserPolicy {
            sender_domains: vec!["example.com".into(), ".example.com".into()],
            messages_per_hour: Some(100),
            recipients_per_message_max: Some(10),
            dkim_domains: vec!["example.com".into()],
            unsubscribe: true,
            pool: Some("bulk".into()),
        };
        let users = apply(&path, Change::Add(&user("app1", policy.clone()))).unwrap();
        assert_eq!(users.get("app1").unwrap().policy, policy);
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let users = apply(&path, Change::Add(&user("app2", UserPolicy::default()))).unwrap();
        assert_eq!(users.len(), 2);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("\n\n[[user]]\nname = \"app2\""), "{text}");
        let error = apply(&path, Change::Add(&user("app1", UserPolicy::default()))).unwrap_err();
        assert!(error.contains("already exists"), "{error}");
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn passwd_and_remove_keep_comments_mode_and_other_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let text = format!(
            "# Our users.\n\n[[user]]\nname = \"app1\" # the web app\npassword = \"{HASH}\" # set 2026\n\
             messages_per_hour = 5\n\n# The newsletter.\n[[user]]\nname = \"app2\"\npassword = \"{HASH}\"\n"
        );
        fs::write(&path, &text).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();

        let users = apply(
            &path,
            Change::Passwd {
                name: "app1",
                password: HASH_2,
            },
        )
        .unwrap();
        assert_eq!(users.get("app1").unwrap().password, HASH_2);
        assert_eq!(users.get("app1").unwrap().policy.messages_per_hour, Some(5));
        assert_eq!(users.get("app2").unwrap().password, HASH);
        let changed = fs::read_to_string(&path).unwrap();
        assert_eq!(changed, text.replacen(HASH, HASH_2, 1));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);

        let users = apply(&path, Change::Remove("app1")).unwrap();
        assert_eq!(users.len(), 1);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Our users.\n"), "{text}");
        assert!(
            text.contains("# The newsletter.\n[[user]]\nname = \"app2\""),
            "{text}"
        );
        assert!(!text.contains("app1"), "{text}");

        for change in [
            Change::Remove("app1"),
            Change::Passwd {
                name: "app3",
                password: HASH,
            },
        ] {
            let error = apply(&path, change).unwrap_err();
            assert!(error.contains("no user"), "{error}");
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn a_broken_file_or_a_missing_one_is_not_edited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let error = apply(&path, Change::Remove("app1")).unwrap_err();
        assert!(error.contains("no user"), "{error}");
        assert!(!path.exists());

        let broken = "[[user]]\nname = \"app1\"\npassword = \"plain\"\n";
        fs::write(&path, broken).unwrap();
        let error = apply(&path, Change::Add(&user("app2", UserPolicy::default()))).unwrap_err();
        assert!(error.contains(":3:"), "{error}");
        assert!(error.contains("user[0].password"), "{error}");
        assert_eq!(fs::read_to_string(&path).unwrap(), broken);

        let inline = format!("user = [{{ name = \"app1\", password = \"{HASH}\" }}]\n");
        fs::write(&path, &inline).unwrap();
        let error = apply(&path, Change::Remove("app1")).unwrap_err();
        assert!(error.contains("[[user]] tables"), "{error}");
    }
}
