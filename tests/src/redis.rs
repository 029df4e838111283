//! A real Redis for the cluster's tests: Debian's `redis-server`, started
//! on a loopback port with nothing saved to disk, killed and restarted on
//! the same port as a test asks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long Redis may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Redis {
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// A Redis on a free loopback port; `None` (saying why) when
    /// `redis-server` is not installed: the caller's test skips.
    pub fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = crate::free_port("127.0.0.1");
        let mut redis = Redis {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
            dir: tempfile::tempdir().expect("redis directory"),
        };
        redis.spawn();
        Some(redis)
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Starts the server (again) on its port and waits for its PONG.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while self.ping().is_none() {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: gone at once, with everything it held.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One command in RESP: its reply's first line (`+PONG`, `:3`), or a
    /// bulk string's value (`GET`).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = [0u8; 512];
        let n = stream.read(&mut reply).ok()?;
        let text = String::from_utf8_lossy(&reply[..n]).into_owned();
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("");
        if first.starts_with('$') && first != "$-1" {
            return lines.next().map(str::to_owned);
        }
        Some(first.to_owned())
    }

    fn ping(&self) -> Option<()> {
        (self.command(&["PING"])? == "+PONG").then_some(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
