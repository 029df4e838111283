//! The Debian package as an operator meets it: `cargo deb` builds it,
//! `dpkg -i` installs it (user, directories, conffile, unit, manual page),
//! baton runs from it the way its unit runs it and takes a message, and
//! `dpkg --purge` removes it. It changes this machine, so it runs only as
//! root, with `cargo deb` and `dpkg`, and skips (saying why) otherwise.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::{baton_bin, Smtp};

const CONFIG: &str = "/etc/baton/baton.toml";

fn skip(why: &str) {
    eprintln!("SKIPPED the Debian package test: {why}");
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[track_caller]
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for `condition`, at most `within`.
#[track_caller]
fn wait(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_debian_package_installs_runs_and_purges() {
    if !run("id", &["-u"]).trim().eq("0") {
        return skip("not root (dpkg -i needs it)");
    }
    if !succeeds("cargo", &["deb", "--version"]) {
        return skip("cargo-deb is not installed (cargo install cargo-deb)");
    }
    if !succeeds("dpkg", &["--version"]) || !succeeds("setpriv", &["--version"]) {
        return skip("no dpkg or setpriv");
    }
    if succeeds("dpkg", &["-s", "baton"]) {
        return skip("a baton package is installed here already; leaving it alone");
    }
    // The packaged configuration listens on port 25.
    if TcpListener::bind("0.0.0.0:25").is_err() {
        return skip("port 25 is taken on this machine");
    }

    // Built from the binary the tests run (the dev profile): the package's
    // layout, not the release build, is what is tested here.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = tempfile::tempdir().unwrap();
    let bin_dir = baton_bin().parent().unwrap().to_path_buf();
    let profile = bin_dir.file_name().unwrap().to_str().unwrap().to_owned();
    let built = Command::new("cargo")
        .current_dir(&workspace)
        .args([
            "deb",
            "-p",
            "baton",
            "--no-build",
            "--no-strip",
            "--fast",
            "--profile",
        ])
        .arg(&profile)
        .arg("--output")
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = std::fs::read_dir(out_dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    let deb = deb.to_str().unwrap();

    run("dpkg", &["-i", deb]);
    let mut cleanup = Cleanup { baton: None };
    for path in [
        "/usr/bin/baton",
        CONFIG,
        "/usr/share/man/man1/baton.1.gz",
        "/usr/share/doc/baton/operating.md",
    ] {
        assert!(
            Path::new(path).exists()
                || (path.ends_with(".gz") && Path::new(path.trim_end_matches(".gz")).exists()),
            "{path} not installed"
        );
    }
    let unit = [
        "/lib/systemd/system/baton.service",
        "/usr/lib/systemd/system/baton.service",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("the unit installed");
    let unit_text = std::fs::read_to_string(unit).unwrap();
    assert!(unit_text.contains("ExecStart=/usr/bin/baton run --config /etc/baton/baton.toml"));
    assert!(run("getent", &["passwd", "baton"]).contains("/var/spool/baton"));
    let owner = run("stat", &["-c", "%U", "/var/spool/baton"]);
    assert_eq!(owner.trim(), "baton", "the spool belongs to baton");
    assert!(run("dpkg-query", &["-W", "-f", "${Conffiles}", "baton"]).contains(CONFIG));

    // As the unit runs it: its ExecStartPre, then as user baton with
    // CAP_NET_BIND_SERVICE alone.
    run("/usr/bin/baton", &["check-config", CONFIG]);
    let mut baton = Command::new("setpriv")
        .args([
            "--reuid=baton",
            "--regid=baton",
            "--init-groups",
            "--inh-caps=+net_bind_service",
            "--ambient-caps=+net_bind_service",
            "/usr/bin/baton",
            "run",
            "--config",
            CONFIG,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cleanup.baton = Some(baton.id());
    let smtp: SocketAddr = "127.0.0.1:25".parse().unwrap();
    let admin: SocketAddr = "127.0.0.1:8025".parse().unwrap();
    wait(
        "baton on port 25 and its admin API",
        Duration::from_secs(30),
        || TcpStream::connect(smtp).is_ok() && TcpStream::connect(admin).is_ok(),
    );
    // Held, so the message stays queued whatever the machine's DNS says
    // of example.test (an answer that comes fast bounces it at once).
    run(
        "/usr/bin/baton",
        &["queue", "hold", "example.test", "--config", CONFIG],
    );
    let mut client = Smtp::connect(smtp);
    assert_eq!(client.reply().code, 220);
    client.ehlo("client.test");
    let reply = client.send_message(
        "app@sender.test",
        &["someone@example.test"],
        "Subject: packaged\r\n\r\nhi\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let queue = run("/usr/bin/baton", &["queue", "list", "--config", CONFIG]);
    assert!(queue.contains("example.test"), "{queue}");
    run("kill", &["-TERM", &baton.id().to_string()]);
    let status = baton.wait().unwrap();
    cleanup.baton = None;
    assert!(status.success(), "baton stopped cleanly: {status}");

    run("dpkg", &["--purge", "baton"]);
    assert!(!Path::new("/usr/bin/baton").exists(), "the binary removed");
    assert!(!Path::new(CONFIG).exists(), "the conffile purged");
    drop(cleanup);
}

/// Whatever the test's fate, the machine is left without the package,
/// with no spool of it and no baton of it running (`baton`: the pid of
/// the one the test started, until it is reaped).
struct Cleanup {
    baton: Option<u32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = self.baton {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = Command::new("dpkg")
            .args(["--purge", "baton"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all("/var/spool/baton");
    }
}
