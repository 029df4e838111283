//! `baton user` as an operator uses it: passwords on standard input (as a
//! script gives them), the users file it writes, and `check-config` on that
//! file, good and broken.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use baton::auth::{verify_password, Users};
use baton_tests::baton_bin;

/// A configuration naming `users.toml` beside it.
struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    users: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temporary directory");
    let users = dir.path().join("users.toml");
    let config = dir.path().join("baton.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nusers = {:?}\n",
            users.to_str().expect("UTF-8 path")
        ),
    )
    .expect("write the configuration");
    Setup {
        _dir: dir,
        config,
        users,
    }
}

/// Runs `baton <args>` with `stdin` as its standard input (not a terminal):
/// (success, stdout, stderr).
fn baton(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(baton_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run baton");
    // baton may refuse the arguments and exit before it reads the
    // password: a broken pipe then is no failure of the test.
    if let Err(err) = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
    {
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write the password: {err}"
        );
    }
    let out = child.wait_with_output().expect("wait for baton");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Setup {
    fn user(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        let mut all = vec!["user"];
        all.extend_from_slice(args);
        all.extend(["--config", self.config.to_str().expect("UTF-8 path")]);
        baton(&all, stdin)
    }

    fn check_config(&self) -> (bool, String, String) {
        baton(
            &["check-config", self.config.to_str().expect("UTF-8 path")],
            "",
        )
    }

    fn hash_of(&self, name: &str) -> String {
        let users = Users::load(&self.users).expect("the users file loads");
        users.get(name).expect("the user is there").password.clone()
    }
}

#[track_caller]
fn assert_refused((ok, stdout, stderr): (bool, String, String), what: &str) {
    assert!(!ok, "accepted: {stdout}");
    assert!(stderr.contains(what), "want {what:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn add_list_passwd_remove() {
    let s = setup();
    let (ok, stdout, stderr) = s.user(
        &[
            "add",
            "app1",
            "--sender-domain",
            "Example.com",
            "--sender-domain",
            ".example.com",
            "--messages-per-hour",
            "10000",
            "--recipients-per-message-max",
            "100",
        ],
        "first password\n",
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("added \"app1\""), "{stdout}");
    // Created readable by its owner only.
    let mode = std::fs::metadata(&s.users).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // No line ending: the whole of standard input is the password.
    let (ok, _, stderr) = s.user(&["add", "app2"], "second password");
    assert!(ok, "{stderr}");

    let (ok, stdout, stderr) = s.user(&["list"], "");
    assert!(ok, "{stderr}");
    let app1 = stdout
        .lines()
        .find(|l| l.starts_with("app1 "))
        .expect(&stdout);
    for shown in ["example.com,.example.com", "10000", "100"] {
        assert!(app1.contains(shown), "want {shown}: {app1}");
    }
    assert!(stdout.lines().any(|l| l.starts_with("app2 ")), "{stdout}");
    assert!(stdout.contains("2 users"), "{stdout}");
    assert!(!stdout.contains("$argon2id$"), "hashes listed: {stdout}");

    let old = s.hash_of("app1");
    assert!(old.starts_with("$argon2id$"), "{old}");
    assert!(verify_password(&old, b"first password"));
    assert!(verify_password(&s.hash_of("app2"), b"second password"));

    // A duplicate is refused and changes nothing.
    let before = std::fs::read_to_string(&s.users).unwrap();
    assert_refused(s.user(&["add", "app1"], "other\n"), "already exists");
    assert_eq!(std::fs::read_to_string(&s.users).unwrap(), before);

    let (ok, stdout, stderr) = s.user(&["passwd", "app1"], "new password\r\n");
    assert!(ok, "{stderr}");
    assert!(stdout.contains("changed"), "{stdout}");
    let new = s.hash_of("app1");
    assert_ne!(new, old);
    assert!(verify_password(&new, b"new password"));
    assert!(!verify_password(&new, b"first password"));
    // The policy and the other user are as they were.
    let users = Users::load(&s.users).unwrap();
    assert_eq!(
        users.get("app1").unwrap().policy.messages_per_hour,
        Some(10000)
    );
    assert!(verify_password(&s.hash_of("app2"), b"second password"));
    let (ok, stdout, stderr) = s.check_config();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("2 users"), "{stdout}");

    assert_refused(s.user(&["passwd", "app9"], "x\n"), "no user \"app9\"");
    assert_refused(s.user(&["remove", "app9"], ""), "no user \"app9\"");
    let (ok, _, stderr) = s.user(&["remove", "app1"], "");
    assert!(ok, "{stderr}");
    let (ok, stdout, _) = s.user(&["list"], "");
    assert!(ok);
    assert!(!stdout.contains("app1"), "{stdout}");
    assert!(stdout.contains("1 user\n"), "{stdout}");
    assert_refused(s.user(&["remove", "app1"], ""), "no user \"app1\"");
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let s = setup();
    assert_refused(s.user(&["add", "app1"], "\n"), "empty password");
    assert_refused(s.user(&["add", "app1"], ""), "empty password");
    assert_refused(s.user(&["add", "app 1"], "pw\n"), "user name");
    assert_refused(
        s.user(&["add", "app1", "--sender-domain", "a@b"], "pw\n"),
        "not a domain",
    );
    assert_refused(
        s.user(&["add", "app1", "--messages-per-hour", "0"], "pw\n"),
        "--messages-per-hour",
    );
    assert!(!s.users.exists(), "a refused add created the file");
    // Without a users file in the configuration, there is nothing to edit.
    assert_refused(baton(&["user", "list"], ""), "[auth] users is empty");
}

#[test]
fn check_config_names_the_line_of_a_broken_users_file() {
    let s = setup();
    let (ok, _, stderr) = s.user(&["add", "app1"], "pw\n");
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&s.users).unwrap();
    let line = text.lines().count() + 1;
    std::fs::write(
        &s.users,
        format!("{text}sender_domain = [\"example.com\"]\n"),
    )
    .unwrap();
    let (ok, stdout, stderr) = s.check_config();
    assert!(!ok, "accepted: {stdout}");
    let place = format!("{}:{line}:", s.users.display());
    assert!(stderr.contains(&place), "want {place}: {stderr}");
    assert!(stderr.contains("user[0].sender_domain"), "{stderr}");
    assert!(stderr.contains("unknown key"), "{stderr}");
    // `baton user` refuses to edit it, pointing at the same place.
    assert_refused(s.user(&["add", "app2"], "pw\n"), &place);

    // A plain-text password is not a hash.
    std::fs::write(
        &s.users,
        "[[user]]\nname = \"app1\"\npassword = \"secret\"\n",
    )
    .unwrap();
    assert_refused(s.check_config(), "user[0].password");

    // A missing users file is an error too, naming it.
    std::fs::remove_file(&s.users).unwrap();
    assert_refused(s.check_config(), &format!("{}", s.users.display()));
    assert!(Path::new(&s.config).exists());
}
