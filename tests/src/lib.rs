//! Harness for black-box tests: starts the real `baton` binary on loopback
//! with a configuration written for the test, talks SMTP to it over real
//! sockets, and kills or stops it like an operator would.
//!
//! Every wait is on a condition with a deadline; nothing sleeps blindly.
//!
//! [`dns`] is a real DNS server serving a zone the test scripts, for the
//! resolver's tests. [`webhook`] is a webhook endpoint (Python's
//! `http.server`) that writes down what it is sent and fails on demand.

pub mod delivery;
pub mod dns;
pub mod redis;
pub mod sink;
pub mod tls;
pub mod webhook;

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a test waits for baton to start or stop.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test waits for one SMTP reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// The `baton` binary, built for the same profile as this test.
///
/// Cargo builds a package's binaries only for that package's own tests,
/// and these tests live in a package of their own; so the first call asks
/// cargo to build (or confirm fresh) the binary into the same target
/// directory. `BATON_BIN` overrides all of this.
pub fn baton_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    workspace_binary(&BUILT, "BATON_BIN", "baton", "baton")
}

/// `env`'s path, or else `binary` of `package` built once per process: baton and loadgen.
pub(crate) fn workspace_binary(
    built: &OnceLock<PathBuf>,
    env: &str,
    package: &str,
    binary: &str,
) -> PathBuf {
    built
        .get_or_init(|| match std::env::var_os(env) {
            Some(path) => path.into(),
            None => build_workspace_binary(package, binary),
        })
        .clone()
}

/// Builds (or confirms fresh) a binary of this workspace into the test's
/// own target directory and profile, and returns its path.
fn build_workspace_binary(package: &str, binary: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("target directory");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile name");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "-p",
            package,
            "--bin",
            binary,
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile != "debug" {
        build.args([
            "--profile",
            if profile == "release" {
                "release"
            } else {
                profile
            },
        ]);
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p {package} failed");
    let bin = profile_dir.join(binary);
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}

/// A free TCP port on `ip`.
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local address")
        .port()
}

/// `[spool] segment_bytes` unless a test sets it: 1 MiB.
pub const TEST_SEGMENT_BYTES: u64 = 1 << 20;

/// What a test wants different from the harness's base configuration.
#[derive(Clone, Debug, Default)]
pub struct TestConfig {
    /// Lines for `[limits]`, e.g. `message_bytes_max = 10000`.
    pub limits: Vec<String>,
    /// Lines for `[smtp]`.
    pub smtp: Vec<String>,
    /// Lines for `[spool]` besides `path` (and `segment_bytes`, unless set here).
    pub spool: Vec<String>,
    /// `[relay] networks`, if not the default (loopback).
    pub relay_networks: Option<Vec<String>>,
    /// Shards; default 2.
    pub shards: Option<usize>,
    /// Deliver mail. Off by default: tests of the SMTP server check what
    /// was queued, so baton holds it (`delivery.hold = true`).
    pub deliver: bool,
    /// Lines for `[delivery]` besides `hold`, e.g. `retry_schedule = ["1s"]`.
    pub delivery: Vec<String>,
    /// Appended to the configuration file as it is, e.g. `[[route]]` tables.
    pub extra_toml: String,
    /// Lines for `[admin]` besides `address`, e.g. `token_file = "..."`:
    /// `[admin]` is written once, so `extra_toml` cannot add to it.
    pub admin: Vec<String>,
    /// The spool directory, instead of `spool` in the test's directory
    /// (a small tmpfs, for the tests of a full disk).
    pub spool_path: Option<PathBuf>,
    /// Run baton with at most this many open descriptors (soft and hard
    /// `RLIMIT_NOFILE`, set by the shell's `ulimit -n`).
    pub descriptor_limit: Option<u64>,
    /// Environment variables for the baton process, besides `RUST_LOG`.
    pub env: Vec<(String, String)>,
}

/// A running (or stopped) baton process with its own directory.
pub struct Baton {
    pub dir: tempfile::TempDir,
    pub smtp: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    test: TestConfig,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// Copies the child's stderr into `log`; done once the child is gone.
    log_reader: Option<thread::JoinHandle<()>>,
}

/// Attempts at starting baton, each on freshly picked ports: a port found
/// free can be taken by another process before baton binds it.
const START_ATTEMPTS: usize = 5;
/// What baton logs once its SMTP listeners and admin API are up.
const READY_LOG: &str = "accepting SMTP";

impl Baton {
    /// Starts baton with the base configuration.
    pub fn start() -> Baton {
        Baton::start_with(TestConfig::default())
    }

    pub fn start_with(test: TestConfig) -> Baton {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("baton.toml");
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut baton = Baton {
            dir,
            smtp: unbound,
            admin: unbound,
            config_path,
            test,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            log_reader: None,
        };
        baton.pick_ports();
        baton.spawn();
        baton
    }

    /// Picks free ports and writes the configuration with them.
    fn pick_ports(&mut self) {
        self.smtp = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
        self.admin = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
        let text = config_text(&self.test, self.dir.path(), self.smtp, self.admin);
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// Starts the process again on the same directory and configuration,
    /// and waits until it serves. Should another process have taken one of
    /// its ports, it moves to new ones.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "baton is already running");
        for attempt in 1..=START_ATTEMPTS {
            let log_start = self.log.lock().unwrap().len();
            self.launch();
            let Err(status) = self.wait_ready(log_start) else {
                return;
            };
            let log = self.log();
            let port_taken = log[log_start..].contains("Address already in use");
            assert!(
                port_taken && attempt < START_ATTEMPTS,
                "baton exited ({status}) before serving\n{log}"
            );
            self.pick_ports();
        }
    }

    fn launch(&mut self) {
        let mut command = match self.test.descriptor_limit {
            None => Command::new(baton_bin()),
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(baton_bin());
                sh
            }
        };
        let mut child = command
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .envs(self.test.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start baton");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = self.log.clone();
        self.log_reader = Some(thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        }));
        self.child = Some(child);
    }

    /// Waits until this run (its log from `log_start`) says baton serves:
    /// a connection alone could reach another process on a reused port.
    /// `Err` with the exit status if the process ends first.
    fn wait_ready(&mut self, log_start: usize) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if self.log.lock().unwrap()[log_start..].contains(READY_LOG) {
                return Ok(());
            }
            let child = self.child.as_mut().expect("just launched");
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                // All of its log, for the caller to read.
                if let Some(reader) = self.log_reader.take() {
                    let _ = reader.join();
                }
                return Err(status);
            }
            assert!(
                Instant::now() < deadline,
                "baton did not log {READY_LOG:?} within {STARTUP_TIMEOUT:?}\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `condition`, failing the test with the log after the
    /// startup timeout or if baton exits.
    pub fn wait_until(&mut self, what: &str, mut condition: impl FnMut() -> bool) {
        self.wait_for(what, |_| condition());
    }

    /// [`wait_until`](Self::wait_until), for a condition that asks this
    /// server (its admin API, its CLI).
    pub fn wait_for(&mut self, what: &str, condition: impl FnMut(&Baton) -> bool) {
        self.wait_for_within(what, STARTUP_TIMEOUT, condition);
    }

    /// [`wait_for`](Self::wait_for) at most `within`: where lateness is the failure (a timeout).
    pub fn wait_for_within(
        &mut self,
        what: &str,
        within: Duration,
        mut condition: impl FnMut(&Baton) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !condition(self) {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "baton exited ({status}) while waiting for: {what}\n{}",
                        self.log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for: {what}\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything baton logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: no shutdown, no final sync.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("baton runs");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Sends `signal` (`"HUP"`, ...) to the running process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("baton runs");
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// The process id of the running baton.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("baton runs").id()
    }

    /// Its resident memory (`VmRSS` of `/proc/<pid>/status`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().expect("wait").is_none())
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("baton runs");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "baton did not stop within {STARTUP_TIMEOUT:?} of SIGTERM\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Opens an SMTP connection and reads the greeting.
    pub fn connect(&self) -> Smtp {
        let mut smtp = Smtp::connect(self.smtp);
        let greeting = smtp.reply();
        assert_eq!(greeting.code, 220, "greeting: {greeting:?}");
        smtp
    }

    /// Opens an SMTP connection from `source` (any 127.0.0.0/8 address
    /// works on loopback) and reads the greeting, whatever it is: a
    /// connection limit answers 421 instead of 220.
    pub fn connect_from(&self, source: IpAddr) -> (Smtp, Reply) {
        let mut smtp = Smtp::connect_from(source, self.smtp);
        let greeting = smtp.reply();
        (smtp, greeting)
    }

    /// Connects from `source` until the greeting is 220. For tests that
    /// limit connections per address: the server releases a closed
    /// connection's place asynchronously.
    pub fn admitted_from(&self, source: IpAddr) -> Smtp {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let (smtp, greeting) = self.connect_from(source);
            if greeting.code == 220 {
                return smtp;
            }
            assert_eq!(greeting.code, 421, "greeting: {greeting:?}");
            assert!(
                Instant::now() < deadline,
                "{source} still refused after {STARTUP_TIMEOUT:?}: {greeting:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `baton <args>` against this server's configuration.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(baton_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run baton");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `baton queue list --json`.
    pub fn queue(&self) -> serde_json::Value {
        let (ok, stdout, stderr) = self.cli(&["queue", "list", "--json"]);
        assert!(ok, "baton queue list failed: {stderr}");
        serde_json::from_str(&stdout).expect("queue list JSON")
    }

    /// Recipients queued for delivery, over all destinations.
    pub fn queued_recipients(&self) -> u64 {
        self.queue()["recipients"]
            .as_u64()
            .expect("recipients count")
    }

    /// Messages queued, with at least one recipient still to deliver.
    pub fn queued_messages(&self) -> u64 {
        self.queue()["messages"].as_u64().expect("messages count")
    }

    /// `baton queue show <id> --json`: one message with the state of each
    /// recipient.
    pub fn show(&self, id: &str) -> serde_json::Value {
        let (ok, stdout, stderr) = self.cli(&["queue", "show", id, "--json"]);
        assert!(ok, "baton queue show {id} failed: {stderr}");
        serde_json::from_str(&stdout).expect("queue show JSON")
    }

    /// One request to the admin API, without a body: `(status, body)`.
    pub fn admin_request(&self, method: &str, path: &str) -> (u16, String) {
        self.admin_request_with_body(method, path, "")
    }

    /// One request to the admin API with `body` (JSON): `(status, body)`.
    pub fn admin_request_with_body(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.admin).unwrap_or_else(|err| {
            panic!(
                "{method} {path}: connect to the admin API: {err}\n{}",
                self.log()
            )
        });
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.admin,
            body.len()
        )
        .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{method} {path}: malformed response {response:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: malformed status line {head:?}"));
        (status, body.to_string())
    }

    /// Sends one message on a new connection, returns its queue id: tests that follow it.
    pub fn submit(&self, from: &str, to: &[&str], body: &str) -> String {
        let mut smtp = self.connect();
        smtp.ehlo("client.test");
        queued_id(&smtp.send_message(from, to, body))
    }

    /// The recipients' addresses in a [`show`](Self::show) answer.
    pub fn shown_recipients(message: &serde_json::Value) -> Vec<String> {
        message["recipients"]
            .as_array()
            .expect("recipients array")
            .iter()
            .map(|r| r["address"].as_str().expect("address").to_string())
            .collect()
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn config_text(test: &TestConfig, dir: &Path, smtp: SocketAddr, admin: SocketAddr) -> String {
    let mut text = String::new();
    let shards = test.shards.unwrap_or(2);
    let _ = writeln!(
        text,
        "[server]\nhostname = \"baton.test\"\nshards = {shards}\n"
    );
    let _ = writeln!(text, "[[listener]]\naddress = \"{smtp}\"\n");
    let spool = test.spool_path.clone().unwrap_or_else(|| dir.join("spool"));
    let _ = writeln!(text, "[spool]\npath = \"{}\"", spool.display());
    if !test
        .spool
        .iter()
        .any(|line| line.trim_start().starts_with("segment_bytes"))
    {
        // Small segments start in a fraction of the time of the 64 MiB
        // default, and tests that send a lot cross segment boundaries.
        let _ = writeln!(text, "segment_bytes = {TEST_SEGMENT_BYTES}");
    }
    for line in &test.spool {
        let _ = writeln!(text, "{line}");
    }
    let _ = writeln!(text, "\n[admin]\naddress = \"{admin}\"");
    for line in &test.admin {
        let _ = writeln!(text, "{line}");
    }
    let _ = writeln!(text);
    let _ = writeln!(text, "[limits]");
    for line in &test.limits {
        let _ = writeln!(text, "{line}");
    }
    let _ = writeln!(text, "\n[smtp]");
    for line in &test.smtp {
        let _ = writeln!(text, "{line}");
    }
    if let Some(networks) = &test.relay_networks {
        let quoted: Vec<_> = networks.iter().map(|n| format!("\"{n}\"")).collect();
        let _ = writeln!(text, "\n[relay]\nnetworks = [{}]", quoted.join(", "));
    }
    let _ = writeln!(text, "\n[delivery]\nhold = {}", !test.deliver);
    for line in &test.delivery {
        let _ = writeln!(text, "{line}");
    }
    let _ = writeln!(text, "\n{}", test.extra_toml);
    text
}

/// One SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Text of each line, after the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The enhanced status code (RFC 3463) that starts the first line, if
    /// there is one: `5.5.2` in `500 5.5.2 Error: ...`.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?.split(' ').next()?;
        let parts: Vec<&str> = first.split('.').collect();
        let numeric = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        numeric.then_some(first)
    }

    /// Panics unless this reply has `code` and the enhanced code `enhanced`.
    #[track_caller]
    pub fn assert_is(&self, code: u16, enhanced: &str) {
        assert!(
            self.code == code && self.enhanced() == Some(enhanced),
            "expected {code} {enhanced}, got {self:?}"
        );
    }
}

/// A raw SMTP client over a real socket.
pub struct Smtp {
    stream: BufReader<TcpStream>,
}

impl Smtp {
    pub fn connect(address: SocketAddr) -> Smtp {
        let stream = TcpStream::connect(address).expect("connect");
        Smtp::from_stream(stream)
    }

    /// Connects from the local address `source`, e.g. 127.0.0.2.
    pub fn connect_from(source: IpAddr, address: SocketAddr) -> Smtp {
        Smtp::from_stream(bound_socket(source, address, |_| {}))
    }

    pub fn from_stream(stream: TcpStream) -> Smtp {
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("timeout");
        Smtp {
            stream: BufReader::new(stream),
        }
    }

    /// Writes bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("send");
    }

    /// Writes bytes as they are, for tests where the server may be gone.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.get_mut().write_all(bytes)
    }

    /// The socket, e.g. to close it abruptly.
    pub fn stream(&self) -> &TcpStream {
        self.stream.get_ref()
    }

    /// Reads one (possibly multi-line) reply. Panics on timeout or EOF.
    pub fn reply(&mut self) -> Reply {
        self.try_reply()
            .expect("a reply before the connection closed")
    }

    /// Reads one reply; `None` if the server closed (or reset) the
    /// connection first. Panics on timeout.
    pub fn try_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = match self.stream.read_line(&mut line) {
                Ok(n) => n,
                Err(err) if is_reset(&err) => 0,
                Err(err) => panic!("read a reply line: {err}"),
            };
            if n == 0 || !line.ends_with('\n') {
                // Closed, possibly in the middle of a line.
                return None;
            }
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").trim_end().to_string());
            if last {
                return Some(Reply { code, lines });
            }
        }
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Whether the server has closed the connection (reads EOF, or a reset,
    /// in time) without sending anything more.
    pub fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(n) => n == 0,
            Err(err) => is_reset(&err),
        }
    }

    /// Sends EHLO and reads its reply, which must be 250.
    pub fn ehlo(&mut self, name: &str) -> Reply {
        let reply = self.cmd(&format!("EHLO {name}"));
        assert_eq!(reply.code, 250, "EHLO: {reply:?}");
        reply
    }

    /// Reads one reply and checks its code and enhanced code.
    #[track_caller]
    pub fn expect(&mut self, code: u16, enhanced: &str) -> Reply {
        let reply = self.reply();
        reply.assert_is(code, enhanced);
        reply
    }

    /// EHLO, MAIL, RCPTs, DATA, body, `.`: returns the final reply.
    pub fn send_message(&mut self, from: &str, to: &[&str], body: &str) -> Reply {
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).code, 250);
        for rcpt in to {
            let reply = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            assert_eq!(reply.code, 250, "RCPT {rcpt}: {reply:?}");
        }
        assert_eq!(self.cmd("DATA").code, 354);
        self.send(body.as_bytes());
        self.send(b".\r\n");
        self.reply()
    }
}

/// A TCP connection to `address` from the local address `source`;
/// `configure` may set socket options before the connection is made.
pub fn bound_socket(
    source: IpAddr,
    address: SocketAddr,
    configure: impl FnOnce(&socket2::Socket),
) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .expect("socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|err| panic!("bind {source}: {err}"));
    configure(&socket);
    socket
        .connect_timeout(&address.into(), REPLY_TIMEOUT)
        .unwrap_or_else(|err| panic!("connect from {source} to {address}: {err}"));
    socket.into()
}

/// The peer closed with unread data, or aborted: as good as closed.
fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// The queue id in a `250 2.0.0 Ok: queued as <id>` reply.
pub fn queued_id(reply: &Reply) -> String {
    assert_eq!(reply.code, 250, "not accepted: {reply:?}");
    reply
        .text()
        .rsplit(' ')
        .next()
        .expect("queue id")
        .trim()
        .to_string()
}

/// The status and body of a `curl -w "\n%{http_code}"` run, which must
/// have succeeded: what the HTTP tests check.
#[track_caller]
pub fn curl_answer(out: &std::process::Output) -> (u16, String) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').expect("curl's status line");
    (code.trim().parse().expect("a status code"), body.to_owned())
}
