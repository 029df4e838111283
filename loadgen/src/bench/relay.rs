//! The relays under test, started and stopped around one path of a bench:
//! baton (`baton run` with a generated configuration), a private Postfix
//! instance (`bench/postfix-relay.sh`) and KumoMTA's kumod
//! (`bench/kumomta-relay.lua`). What each is told is in [`super::config`].

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::certs::CertFiles;
use super::config::{self, KumodSettings};

/// How long a relay may take to listen.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a relay's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 10;
/// What kumod logs once its spool is open and its listeners run: before
/// that it may accept connections and still answer 4xx.
const KUMOD_READY_LINE: &str = "initialization complete";

/// A relay running for one path.
pub enum Relay {
    Baton { child: Child },
    Postfix { script: PathBuf, dir: PathBuf },
    Kumod { child: Child },
}

/// How `loadgen bench` runs kumod.
pub struct Kumod<'a> {
    pub binary: &'a Path,
    /// `bench/kumomta-relay.lua`, or the user's own.
    pub policy: &'a Path,
    /// Every message synced before its `250` (the `kumomta-sync` row).
    pub force_sync: bool,
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
    /// `dir`, on its defaults plus a route of every domain to the sink
    /// (and STARTTLS on both hops with `tls`), then `append`.
    pub fn start_baton(
        binary: &Path,
        dir: &Path,
        sink: SocketAddr,
        tls: Option<&CertFiles>,
        append: &str,
    ) -> anyhow::Result<Started> {
        let [port] = free_ports()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let text = config::baton_config(addr, &dir.join("spool"), sink, tls) + "\n" + append;
        let config = dir.join("baton.toml");
        check_config(binary, &config, &text).map_err(|e| match tls {
            Some(_) => e.context(
                "with --tls, baton needs STARTTLS support (listener tls, [tls], \
                 [shaping] tls); give --no-baton to leave it out",
            ),
            None => e,
        })?;
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
            notes: Vec::new(),
        })
    }

    /// Starts a private Postfix instance in `dir` with the script (which
    /// installs Postfix if it is missing).
    pub fn start_postfix(
        script: &Path,
        dir: &Path,
        sink: SocketAddr,
        tls: Option<&CertFiles>,
    ) -> anyhow::Result<Started> {
        let [port] = free_ports()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let output = Command::new(script)
            .args(config::postfix_start_args(port, sink, dir, tls))
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

    /// Starts kumod with the policy, its spool and logs under `dir`;
    /// ready when it says so and its SMTP port answers.
    pub fn start_kumod(
        kumod: &Kumod,
        dir: &Path,
        sink: SocketAddr,
        tls: Option<&CertFiles>,
    ) -> anyhow::Result<Started> {
        let [smtp, http] = free_ports()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], smtp));
        let base = dir.join("kumo");
        std::fs::create_dir_all(&base)
            .with_context(|| format!("cannot create {}", base.display()))?;
        let settings = KumodSettings {
            listen: addr,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            sink,
            base: &base,
            force_sync: kumod.force_sync,
            tls,
        };
        let log_path = dir.join("kumod.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut command = Command::new(kumod.binary);
        command.arg("--policy").arg(kumod.policy);
        // kumod refuses to run as root without a user to run as; the bench
        // does not switch users (its files belong to whoever runs it).
        if running_as_root() {
            command.args(["--user", "root"]);
        }
        let mut child = command
            .envs(config::kumod_env(&settings))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", kumod.binary.display()))?;
        let ready = wait_for_log_line(&log_path, KUMOD_READY_LINE, || {
            child.try_wait().ok().flatten().is_some()
        })
        .and_then(|()| wait_for_listener(addr, || child.try_wait().ok().flatten().is_some()));
        if let Err(e) = ready {
            let _ = child.kill();
            let _ = child.wait();
            bail!("kumod: {e}\n{}", log_tail(&log_path));
        }
        Ok(Started {
            relay: Relay::Kumod { child },
            addr,
            notes: Vec::new(),
        })
    }

    /// Stops the relay (baton and kumod are killed: their spools are
    /// thrown away).
    pub fn stop(self) {
        match self {
            Relay::Baton { mut child } | Relay::Kumod { mut child } => {
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

/// `N` distinct free loopback ports (bound together, then released).
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("bind a loopback port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
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

/// Waits until the log at `path` has a line containing `needle`, or
/// `exited` says the process is gone, or the startup timeout passes.
fn wait_for_log_line(
    path: &Path,
    needle: &str,
    mut exited: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if exited() {
            bail!("exited before logging {needle:?}");
        }
        if Instant::now() >= deadline {
            bail!(
                "no {needle:?} in {} after {STARTUP_TIMEOUT:?}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
