//! The relays under test, started and stopped around one path of a bench:
//! baton (`baton run` with a generated configuration) and a private
//! Postfix instance (`bench/postfix-relay.sh`).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How long a relay may take to listen.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a relay's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 10;

/// A relay running for one path.
pub enum Relay {
    Baton { child: Child },
    Postfix { script: PathBuf, dir: PathBuf },
}

/// What a started relay listens on, and what the table should know.
pub struct Started {
    pub relay: Relay,
    pub addr: SocketAddr,
    /// Said about the relay in the results (e.g. no route configured).
    pub notes: Vec<String>,
}

impl Relay {
    /// Starts `baton run` on a free loopback port, its spool and log in
    /// `dir`, on its defaults plus a route of every domain to the sink.
    pub fn start_baton(binary: &Path, dir: &Path, sink: SocketAddr) -> anyhow::Result<Started> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let text = format!(
            "[server]\nhostname = \"bench.invalid\"\n\
             [[listener]]\naddress = \"{addr}\"\n\
             [spool]\npath = \"{}\"\n\
             [admin]\naddress = \"\"\n\
             [[route]]\ndomain = \"*\"\nnext_hop = \"{sink}\"\n",
            dir.join("spool").display()
        );
        let config = dir.join("baton.toml");
        check_config(binary, &config, &text)?;
        let notes = Vec::new();
        let log_path = dir.join("baton.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        if let Err(e) = wait_for_listener(addr, || child.try_wait().ok().flatten().is_some()) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("baton: {e}\n{}", log_tail(&log_path));
        }
        Ok(Started {
            relay: Relay::Baton { child },
            addr,
            notes,
        })
    }

    /// Starts a private Postfix instance in `dir` with the script (which
    /// installs Postfix if it is missing).
    pub fn start_postfix(script: &Path, dir: &Path, sink: SocketAddr) -> anyhow::Result<Started> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let output = Command::new(script)
            .arg("start")
            .arg(port.to_string())
            .arg(sink.port().to_string())
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", script.display()))?;
        let relay = Relay::Postfix {
            script: script.to_path_buf(),
            dir: dir.to_path_buf(),
        };
        if !output.status.success() {
            relay.stop();
            bail!(
                "{} start failed: {}{}",
                script.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        wait_for_listener(addr, || false)?;
        Ok(Started {
            relay,
            addr,
            notes: Vec::new(),
        })
    }

    /// Stops the relay (baton is killed: its spool is thrown away).
    pub fn stop(self) {
        match self {
            Relay::Baton { mut child } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Relay::Postfix { script, dir } => {
                let stopped = Command::new(&script)
                    .arg("stop")
                    .arg(&dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status();
                if !stopped.is_ok_and(|s| s.success()) {
                    eprintln!("loadgen bench: could not stop Postfix in {}", dir.display());
                }
            }
        }
    }
}

/// Writes the configuration without a route; fails if even that is
/// refused.
/// Writes the bench's configuration and has baton check it.
fn check_config(binary: &Path, config: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(config, text).with_context(|| format!("cannot write {}", config.display()))?;
    let check = Command::new(binary)
        .arg("check-config")
        .arg(config)
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !check.status.success() {
        bail!(
            "baton check-config refuses the bench configuration: {}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
    }
    Ok(())
}

/// A free loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `addr` accepts connections, or `exited` says the process
/// is gone, or the startup timeout passes.
fn wait_for_listener(addr: SocketAddr, mut exited: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        if exited() {
            bail!("exited before listening on {addr}");
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on {addr} after {STARTUP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
