//! SMTP AUTH in (RFC 4954): users made with `baton user add`, clients
//! written by others (Python's smtplib, swaks) over STARTTLS with a
//! certificate the test makes, relaying allowed only after AUTH, a
//! submission listener, the per-user policy, and a brute-force burst that
//! is slowed and cut off while other clients are served.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::delivery::route;
use baton_tests::sink::Sink;
use baton_tests::tls::{self_signed, tls_toml};
use baton_tests::{baton_bin, free_port, Baton, TestConfig};

const PASSWORD: &str = "s3cret-password";
/// `AUTH PLAIN` initial responses: base64 of "\0app\0s3cret-password",
/// "\0app\0wrong" and "\0limited\0s3cret-password".
const PLAIN_APP: &str = "AGFwcABzM2NyZXQtcGFzc3dvcmQ=";
const PLAIN_APP_WRONG: &str = "AGFwcAB3cm9uZw==";
const PLAIN_LIMITED: &str = "AGxpbWl0ZWQAczNjcmV0LXBhc3N3b3Jk";

/// A users file made the way an operator makes one: `baton user add`,
/// the password on standard input.
struct UsersFile {
    dir: tempfile::TempDir,
}

impl UsersFile {
    fn new() -> UsersFile {
        UsersFile {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("users.toml")
    }

    /// A configuration that names the users file, for `baton user`.
    fn config(&self) -> PathBuf {
        let config = self.dir.path().join("cli.toml");
        std::fs::write(&config, self.toml()).unwrap();
        config
    }

    fn toml(&self) -> String {
        format!("[auth]\nusers = \"{}\"\n", self.path().display())
    }

    fn add(&self, name: &str, password: &str, options: &[&str]) {
        let mut child = Command::new(baton_bin())
            .args(["user", "add", name])
            .args(options)
            .arg("--config")
            .arg(self.config())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run baton user add");
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "baton user add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn python(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PY_CONTEXT: &str = "import smtplib, ssl\n\
ctx = ssl.create_default_context()\n\
ctx.check_hostname = False\n\
ctx.verify_mode = ssl.CERT_NONE\n";

/// baton with STARTTLS, the users, and relaying allowed only for
/// 10.0.0.0/8 (so a loopback client may relay only once authenticated).
fn tls_baton(users: &UsersFile, sink: Option<&Sink>, extra: &str) -> (Baton, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let files = self_signed(certs.path(), "mx", &["mx.baton.test"], (2020, 2100));
    let mut extra_toml = format!("{}\n{}\n{extra}", tls_toml(&files), users.toml());
    if let Some(sink) = sink {
        extra_toml.push_str(&route("*", sink.addr));
    }
    let baton = Baton::start_with(TestConfig {
        deliver: sink.is_some(),
        relay_networks: Some(vec!["10.0.0.0/8".into()]),
        extra_toml,
        ..TestConfig::default()
    });
    (baton, certs)
}

fn wait_for(what: &str, baton: &Baton, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}\n{}", baton.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn smtplib_logs_in_with_plain_and_login_over_starttls_and_then_may_relay() {
    let users = UsersFile::new();
    users.add("app", PASSWORD, &[]);
    let sink = Sink::start("127.0.0.1", &["--no-starttls"]);
    let (baton, _certs) = tls_baton(&users, Some(&sink), "");
    let port = baton.smtp.port();
    let out = python(&format!(
        "{PY_CONTEXT}\
s = smtplib.SMTP('127.0.0.1', {port}, timeout=20)\n\
s.ehlo('client.test')\n\
assert not s.has_extn('auth'), 'AUTH offered before TLS'\n\
code, msg = s.docmd('AUTH', 'PLAIN {PLAIN_APP}')\n\
assert code == 538, (code, msg)\n\
s.starttls(context=ctx)\n\
s.ehlo('client.test')\n\
assert s.esmtp_features['auth'].split() == ['PLAIN', 'LOGIN'], s.esmtp_features\n\
try:\n    s.sendmail('a@example.com', ['b@example.org'], 'Subject: x\\r\\n\\r\\nx\\r\\n')\n    raise SystemExit('relayed before AUTH')\n\
except smtplib.SMTPRecipientsRefused as e:\n    print('refused before auth', e.recipients['b@example.org'][0])\n\
s.rset()\n\
try:\n    s.login('app', 'wrong')\n    raise SystemExit('a wrong password logged in')\n\
except smtplib.SMTPAuthenticationError as e:\n    print('wrong', e.smtp_code, e.smtp_error.decode())\n\
code, resp = s.login('app', '{PASSWORD}')\n\
print('plain', code)\n\
s.sendmail('a@example.com', ['b@example.org'], 'Subject: one\\r\\n\\r\\nplain\\r\\n')\n\
code, msg = s.docmd('AUTH', 'PLAIN {PLAIN_APP}')\n\
print('again', code)\n\
s.quit()\n\
s = smtplib.SMTP('127.0.0.1', {port}, timeout=20)\n\
s.starttls(context=ctx)\n\
s.ehlo('client.test')\n\
s.user, s.password = 'app', '{PASSWORD}'\n\
code, resp = s.auth('LOGIN', s.auth_login, initial_response_ok=False)\n\
print('login', code)\n\
s.mail('a@example.com')\n\
code, msg = s.docmd('AUTH', 'LOGIN')\n\
print('in transaction', code)\n\
s.rset()\n\
s.sendmail('a@example.com', ['c@example.org'], 'Subject: two\\r\\n\\r\\nlogin\\r\\n')\n\
s.quit()\n"
    ));
    assert!(out.contains("refused before auth 554"), "{out}");
    assert!(
        out.contains("wrong 535 5.7.8 Authentication credentials invalid"),
        "{out}"
    );
    assert!(out.contains("plain 235"), "{out}");
    assert!(out.contains("again 503"), "{out}");
    assert!(out.contains("login 235"), "{out}");
    assert!(out.contains("in transaction 503"), "{out}");
    wait_for("both delivered", &baton, || sink.messages().len() >= 2);
    for message in sink.messages() {
        assert!(
            message.contains("\tby baton.test (baton) with ESMTPSA id "),
            "{message}"
        );
    }
    assert!(baton.log().contains("authenticated"), "{}", baton.log());
}

#[test]
fn swaks_authenticates_over_starttls() {
    if Command::new("swaks").arg("--version").output().is_err() {
        eprintln!("skipped: swaks is not installed");
        return;
    }
    let users = UsersFile::new();
    users.add("app", PASSWORD, &[]);
    let (baton, _certs) = tls_baton(&users, None, "");
    let out = Command::new("swaks")
        .args(["--server", &baton.smtp.to_string(), "--tls"])
        .args([
            "--auth",
            "PLAIN",
            "--auth-user",
            "app",
            "--auth-password",
            PASSWORD,
        ])
        .args(["--from", "a@example.com", "--to", "b@example.org"])
        .args(["--helo", "client.test", "--timeout", "20"])
        .output()
        .expect("run swaks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("<~  235 2.7.0 Authentication successful"),
        "{text}"
    );
    assert!(text.contains("<~  250 2.0.0 Ok: queued as"), "{text}");
}

/// A plain-text listener that offers AUTH (as for a trusted network);
/// `listener` adds keys to it, `auth` to `[auth]`.
fn plaintext_baton(users: &UsersFile, listener: &str, auth: &str) -> (Baton, u16) {
    let port = free_port("127.0.0.1");
    let baton = Baton::start_with(TestConfig {
        relay_networks: Some(vec!["10.0.0.0/8".into()]),
        extra_toml: format!(
            "{}{auth}\n[[listener]]\naddress = \"127.0.0.1:{port}\"\nauth_plaintext = true\n{listener}\n",
            users.toml()
        ),
        ..TestConfig::default()
    });
    (baton, port)
}

#[test]
fn a_submission_listener_refuses_mail_before_auth() {
    let users = UsersFile::new();
    users.add("app", PASSWORD, &[]);
    let (baton, port) = plaintext_baton(&users, "auth = \"required\"", "");
    let mut smtp = baton_tests::Smtp::connect(([127, 0, 0, 1], port).into());
    smtp.reply();
    let ehlo = smtp.ehlo("client.test");
    assert!(
        ehlo.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"),
        "{ehlo:?}"
    );
    smtp.cmd("MAIL FROM:<a@example.com>")
        .assert_is(530, "5.7.0");
    // A cancelled exchange, then a LOGIN with a wrong password: still 530.
    assert_eq!(smtp.cmd("AUTH PLAIN").code, 334);
    smtp.cmd("*").assert_is(501, "5.7.0");
    assert_eq!(smtp.cmd("AUTH LOGIN").code, 334);
    assert_eq!(smtp.cmd("YXBw").code, 334);
    smtp.cmd("d3Jvbmc=").assert_is(535, "5.7.8");
    smtp.cmd("MAIL FROM:<a@example.com>")
        .assert_is(530, "5.7.0");
    smtp.cmd(&format!("AUTH PLAIN {PLAIN_APP}"))
        .assert_is(235, "2.7.0");
    smtp.cmd("MAIL FROM:<a@example.com>")
        .assert_is(250, "2.1.0");
    smtp.cmd("RCPT TO:<b@example.org>").assert_is(250, "2.1.5");
    // The harness's own listener is not a submission port, and without
    // TLS it offers no AUTH.
    let mut other = baton.connect();
    let ehlo = other.ehlo("client.test");
    assert!(
        !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
        "{ehlo:?}"
    );
    other
        .cmd("MAIL FROM:<a@example.com>")
        .assert_is(250, "2.1.0");
    other.cmd("RCPT TO:<b@example.org>").assert_is(554, "5.7.1");
}

#[test]
fn the_user_policy_limits_sender_domains_recipients_and_messages_per_hour() {
    let users = UsersFile::new();
    users.add(
        "limited",
        PASSWORD,
        &[
            "--sender-domain",
            "allowed.test",
            "--recipients-per-message-max",
            "2",
            "--messages-per-hour",
            "2",
        ],
    );
    let (_baton, port) = plaintext_baton(&users, "", "");
    let mut smtp = baton_tests::Smtp::connect(([127, 0, 0, 1], port).into());
    smtp.reply();
    smtp.ehlo("client.test");
    smtp.cmd(&format!("AUTH PLAIN {PLAIN_LIMITED}"))
        .assert_is(235, "2.7.0");
    smtp.cmd("MAIL FROM:<a@other.test>").assert_is(550, "5.7.1");
    // The envelope is right but the From: header is not: refused at the end.
    let reply = smtp.send_message(
        "a@allowed.test",
        &["b@example.org"],
        "From: \"a@allowed.test\" <ceo@other.test>\r\nSubject: x\r\n\r\nx\r\n",
    );
    reply.assert_is(550, "5.7.1");
    // Two recipients at most per message.
    smtp.cmd("MAIL FROM:<a@allowed.test>")
        .assert_is(250, "2.1.0");
    smtp.cmd("RCPT TO:<b@example.org>").assert_is(250, "2.1.5");
    smtp.cmd("RCPT TO:<c@example.org>").assert_is(250, "2.1.5");
    smtp.cmd("RCPT TO:<d@example.org>").assert_is(452, "4.5.3");
    smtp.cmd("RSET").assert_is(250, "2.0.0");
    // Two messages an hour: the two MAILs that passed the domain check
    // took them; the next one waits.
    smtp.cmd("MAIL FROM:<a@allowed.test>")
        .assert_is(450, "4.7.1");
}

#[test]
fn a_brute_force_burst_is_slowed_then_cut_off_while_other_clients_are_served() {
    let users = UsersFile::new();
    users.add("app", PASSWORD, &[]);
    let (baton, port) = plaintext_baton(
        &users,
        "",
        "failures_before_delay = 3\nfailure_delay = \"500ms\"\nfailures_max = 6\n",
    );
    let target: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    // Another client logs in again and again meanwhile, from another
    // address, and times each login.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let mut good =
                    baton_tests::Smtp::connect_from("127.0.0.6".parse().unwrap(), target);
                good.reply();
                good.ehlo("good.test");
                // The user under attack keeps logging in with its password.
                good.cmd(&format!("AUTH PLAIN {PLAIN_APP}"))
                    .assert_is(235, "2.7.0");
                latencies.push(started.elapsed());
                std::thread::sleep(Duration::from_millis(100));
            }
            latencies
        })
    };
    let attacker: IpAddr = "127.0.0.5".parse().unwrap();
    let mut smtp = baton_tests::Smtp::connect_from(attacker, target);
    smtp.reply();
    smtp.ehlo("attacker.test");
    let mut times = Vec::new();
    let mut closed_with = None;
    for _ in 0..20 {
        let started = Instant::now();
        let reply = smtp.cmd(&format!("AUTH PLAIN {PLAIN_APP_WRONG}"));
        times.push(started.elapsed());
        if reply.code == 421 {
            closed_with = Some(reply);
            break;
        }
        reply.assert_is(535, "5.7.8");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let latencies = other.join().unwrap();
    let closed_with = closed_with.expect("the attacker is cut off");
    closed_with.assert_is(421, "4.7.0");
    assert_eq!(times.len(), 6, "cut off at failures_max: {times:?}");
    assert!(smtp.closed(), "the connection closes after 421");
    // The first failures cost a hash; then each waits, twice as long as
    // the one before.
    assert!(times[0] < Duration::from_millis(500), "{times:?}");
    assert!(times[3] >= Duration::from_millis(500), "{times:?}");
    assert!(times[4] >= Duration::from_millis(1000), "{times:?}");
    assert!(times[5] >= Duration::from_millis(2000), "{times:?}");
    // Guesses at the user from elsewhere now get a temporary failure.
    let mut elsewhere = baton_tests::Smtp::connect_from("127.0.0.7".parse().unwrap(), target);
    elsewhere.reply();
    elsewhere.ehlo("elsewhere.test");
    elsewhere
        .cmd(&format!("AUTH PLAIN {PLAIN_APP_WRONG}"))
        .assert_is(454, "4.7.0");
    // The other client was served at once all along.
    assert!(latencies.len() >= 5, "{latencies:?}");
    let slowest = latencies.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_millis(1000),
        "another client waited {slowest:?}: {latencies:?}"
    );
    // A new connection from the same address is cut off at its first try,
    // before any hash.
    let mut again = baton_tests::Smtp::connect_from(attacker, target);
    again.reply();
    again.ehlo("attacker.test");
    again
        .cmd(&format!("AUTH PLAIN {PLAIN_APP}"))
        .assert_is(421, "4.7.0");
    assert!(baton.log().contains("AUTH failed"), "{}", baton.log());
}

#[test]
fn users_added_while_running_can_log_in_after_sighup_and_baton_reload() {
    let users = UsersFile::new();
    users.add("app", PASSWORD, &[]);
    let (baton, port) = plaintext_baton(&users, "", "");
    let target = ([127, 0, 0, 1], port).into();
    let login = |plain: &str| {
        let mut smtp = baton_tests::Smtp::connect(target);
        smtp.reply();
        smtp.ehlo("client.test");
        smtp.cmd(&format!("AUTH PLAIN {plain}")).code
    };
    assert_eq!(login(PLAIN_LIMITED), 535);
    users.add("limited", PASSWORD, &[]);
    baton.signal("HUP");
    wait_for("the new user logs in after SIGHUP", &baton, || {
        login(PLAIN_LIMITED) == 235
    });
    assert_eq!(login(PLAIN_APP), 235);

    // `baton reload` does the same through the admin API, and says what
    // it did; a broken users file is refused and the users stay.
    std::fs::write(users.path(), "[[user]]\nname = \"x\"\n").unwrap();
    let (ok, out, err) = baton.cli(&["reload"]);
    assert!(!ok, "a broken users file is refused: {out}{err}");
    assert!(
        err.contains("configuration refused, nothing changed"),
        "{err}"
    );
    assert!(err.contains("auth:"), "says what failed: {err}");
    assert_eq!(login(PLAIN_APP), 235, "the old users stay");
    std::fs::remove_file(users.path()).unwrap();
    users.add("app", PASSWORD, &[]);
    let (ok, out, err) = baton.cli(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("1 AUTH users"), "{out}");
    assert_eq!(login(PLAIN_LIMITED), 535, "removed with the file");
}
