//! Helpers for loadgen's black-box tests: start the real `loadgen` binary
//! (and peers written by others) on loopback, wait on conditions with
//! deadlines, read the JSON they write.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a process may take to start listening.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a `send` run or a stop may take, at most.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub fn loadgen() -> &'static str {
    env!("CARGO_BIN_EXE_loadgen")
}

/// A running `loadgen sink`.
pub struct Sink {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Sink {
    /// Starts a sink on a free loopback port with these extra options. It
    /// verifies, at the end, against the send report at
    /// [`send_report`](Self::send_report).
    pub fn start(args: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("temp dir");
        let report = dir.path().join("sink.json");
        let mut child = Command::new(loadgen())
            .args(["sink", "--listen", "127.0.0.1:0", "--report"])
            .arg(&report)
            .arg("--verify")
            .arg(dir.path().join("send.json"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start loadgen sink");
        let stderr = child.stderr.take().expect("stderr");
        let (lines_tx, lines_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines_tx.send(line.clone()).is_err() {
                    eprintln!("sink: {line}");
                }
            }
        });
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines_rx
                .recv_timeout(left)
                .expect("the sink says where it listens");
            if let Some(addr) = line.strip_prefix("loadgen sink: listening on ") {
                break addr.parse().expect("a socket address");
            }
            eprintln!("sink: {line}");
        };
        // Forward the rest of the sink's stderr to the test's.
        thread::spawn(move || lines_rx.iter().for_each(|line| eprintln!("sink: {line}")));
        Sink {
            child: Some(child),
            addr,
            dir,
        }
    }

    /// The sink's process id (for tools that read /proc).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where the sink expects `send`'s report for `--verify`.
    pub fn send_report(&self) -> PathBuf {
        self.path("send.json")
    }

    /// Runs `loadgen send` against this sink, its report where the sink's
    /// `--verify` reads it.
    pub fn send(&self, args: &[&str]) -> SendRun {
        send(&self.target(), &self.send_report(), args)
    }

    /// SIGTERM, wait, and read the summary the sink wrote.
    pub fn stop(mut self) -> Value {
        let mut child = self.child.take().expect("running");
        terminate(&child);
        let status = wait_with_deadline(&mut child, RUN_TIMEOUT);
        assert!(status.success(), "sink exited with {status}");
        read_json(&self.dir.path().join("sink.json"))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends SIGTERM, as an operator (or `timeout`) would.
pub fn terminate(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a pid of our own child and a valid signal has
    // no memory effects.
    let result = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(result, 0, "kill({pid}, SIGTERM)");
}

/// Waits for a child; kills it and fails past the deadline.
pub fn wait_with_deadline(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process still running after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to its end within the deadline, capturing its output.
pub fn run_with_deadline(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = thread::spawn(move || {
        let mut buffer = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buffer).ok();
        buffer
    });
    let err = thread::spawn(move || {
        let mut buffer = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buffer).ok();
        buffer
    });
    let status = wait_with_deadline(&mut child, timeout);
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// What `loadgen send` printed and reported.
pub struct SendRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The JSON report (Null when the run wrote none).
    pub report: Value,
    pub report_path: PathBuf,
}

/// Runs `loadgen send` to `target`, its report written to `report_path`.
pub fn send(target: &str, report_path: &Path, args: &[&str]) -> SendRun {
    let report_path = report_path.to_path_buf();
    let _ = std::fs::remove_file(&report_path);
    let output = run_with_deadline(
        Command::new(loadgen())
            .args(["send", target, "--quiet", "--report"])
            .arg(&report_path)
            .args(args),
        RUN_TIMEOUT,
    );
    let run = SendRun {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        report: if report_path.exists() {
            read_json(&report_path)
        } else {
            Value::Null
        },
        report_path,
    };
    eprintln!("send {args:?}:\n{}{}", run.stdout, run.stderr);
    run
}

pub fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// A number from a JSON report.
pub fn num(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {value:#}"))
}

pub fn float(value: &Value, pointer: &str) -> f64 {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {value:#}"))
}

/// The count of `code` replies to `stage` in a send report (0 if none).
pub fn replies(report: &Value, stage: &str, code: u16) -> u64 {
    report
        .pointer(&format!("/replies/{stage}/{code}"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// An executable found on PATH or in /usr/sbin, or None (with a notice:
/// the test that needs it is skipped).
pub fn find_program(name: &str, why: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        eprintln!("SKIPPED: {name} is not installed ({why})");
    }
    found
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Waits until something accepts connections on `addr`.
pub fn wait_for_listener(addr: &str) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        thread::sleep(Duration::from_millis(20));
    }
}
