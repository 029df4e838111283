//! `loadgen sink` as the next hop of the delivery tests: a real SMTP server
//! written independently of baton's client, on any loopback address
//! (127.0.0.2, 127.0.0.3 ... stand for different MX hosts), scripted by
//! the recipient's local part (`tempfail-`, `bounce-`, `slow-`, `drop-`,
//! `datafail-`, `databounce-`), counting what it accepted by loadgen id.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a sink may take to start listening.
const SINK_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `loadgen` binary, built into the same target directory as the
/// tests (as [`crate::baton_bin`] does for baton). `LOADGEN_BIN` overrides.
pub fn loadgen_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    crate::workspace_binary(&BUILT, "LOADGEN_BIN", "baton-loadgen", "loadgen")
}

/// Connections a sink counts before baton's: [`Sink::start_on`]'s probe that it listens.
pub const PROBE_CONNECTIONS: u64 = 1;

/// States of a TCP socket (`st` in `/proc/net/tcp`) that the sink has
/// not closed yet: ESTABLISHED and CLOSE_WAIT.
const OPEN_STATES: [&str; 2] = ["01", "08"];

/// How often a sink (its stopped `report`) answered `code`: what it said to baton (451, 221).
pub fn replies(report: &serde_json::Value, code: u16) -> u64 {
    report["replies"][code.to_string()].as_u64().unwrap_or(0)
}

/// A running `loadgen sink`.
pub struct Sink {
    pub addr: SocketAddr,
    child: Option<Child>,
    report: PathBuf,
    dump: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sink {
    /// A sink on `ip` (e.g. "127.0.0.2") and a free port, with extra
    /// `loadgen sink` arguments (e.g. `["--max-connections", "3"]`).
    /// Every accepted message is also written to [`Sink::messages`].
    pub fn start(ip: &str, args: &[&str]) -> Sink {
        let port = crate::free_port(ip);
        Sink::start_on(format!("{ip}:{port}").parse().expect("address"), args)
    }

    /// A sink on this exact address.
    pub fn start_on(addr: SocketAddr, args: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("sink directory");
        let report = dir.path().join("report.json");
        let dump = dir.path().join("messages");
        std::fs::create_dir_all(&dump).expect("dump directory");
        let child = Command::new(loadgen_bin())
            .arg("sink")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--threads")
            .arg("1")
            .arg("--seed")
            .arg("1")
            .arg("--report")
            .arg(&report)
            .arg("--dump-dir")
            .arg(&dump)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start loadgen sink");
        let mut sink = Sink {
            addr,
            child: Some(child),
            report,
            dump,
            _dir: dir,
        };
        let deadline = Instant::now() + SINK_START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(child) = sink.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("loadgen sink on {addr} exited at start: {status}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "loadgen sink on {addr} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sink
    }

    /// The messages accepted so far, as the sink wrote them (one file per
    /// message, in arrival order).
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(&self.dump)
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|path| std::fs::read(path).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect()
    }

    /// The one message the sink accepted, which must be the only one: single-message tests.
    #[track_caller]
    pub fn only_message(&self) -> String {
        let mut messages = self.messages();
        assert_eq!(messages.len(), 1, "{messages:?}");
        messages.remove(0)
    }

    /// Connections the sink holds open now (Linux's `/proc/net/tcp`): waiting for baton to hang up.
    pub fn open_connections(&self) -> usize {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let columns: Vec<&str> = line.split_whitespace().collect();
                matches!(
                    columns.get(1..4),
                    Some([local, _, state])
                        if OPEN_STATES.contains(state) && proc_address(local) == Some(self.addr)
                )
            })
            .count()
    }

    /// How many messages the sink accepted so far.
    pub fn count(&self) -> usize {
        std::fs::read_dir(&self.dump).map_or(0, |entries| entries.count())
    }

    /// Stops the sink (SIGTERM) and returns its summary: the JSON
    /// `loadgen sink --report` writes (`messages_accepted`,
    /// `connections_peak`, `ids.duplicated_deliveries`, `replies`, ...).
    pub fn stop(mut self) -> serde_json::Value {
        self.terminate();
        let text = std::fs::read_to_string(&self.report).expect("sink report");
        serde_json::from_str(&text).expect("sink report JSON")
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY-free: `kill -TERM` through the command, as the
            // harness does for baton.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// Where the sink writes accepted messages.
    pub fn dump_dir(&self) -> &Path {
        &self.dump
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

/// An address as `/proc/net/tcp` writes it, `0200007F:1F90`: the IPv4
/// address in network order printed as a native-endian number, the port.
fn proc_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::from((ip.to_ne_bytes(), port)))
}
