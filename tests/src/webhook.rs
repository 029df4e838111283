//! A webhook endpoint for tests: Python's `http.server`, started on a
//! loopback port, that writes down every POST (path, headers, body) and
//! answers `500` while a flag file exists, for a test to script failures.
//! Stopped and started again on the same port, it stands for an endpoint
//! that goes down and comes back.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the receiver may take to listen.
const RECEIVER_START_TIMEOUT: Duration = Duration::from_secs(20);

/// The receiver: one JSON line per POST in `posts`, `status` included,
/// the body in base64 (kept byte for byte, for checking signatures).
const RECEIVER_PY: &str = r#"
import base64, http.server, json, os, ssl, sys, threading

port, posts, failing = int(sys.argv[1]), sys.argv[2], sys.argv[3]
# HTTPS with a certificate and key, if given.
tls = sys.argv[4:6]
# One line at a time: requests are served by threads of their own.
writing = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status = 500 if os.path.exists(failing) else 200
        record = {
            "path": self.path,
            "status": status,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": base64.b64encode(body).decode(),
        }
        with writing, open(posts, "a") as out:
            out.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
if tls:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls[0], tls[1])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// One POST the receiver got.
#[derive(Debug)]
pub struct Post {
    pub path: String,
    pub status: u16,
    /// Header names lowercased.
    pub headers: serde_json::Map<String, serde_json::Value>,
    pub body: Vec<u8>,
}

impl Post {
    /// A header's value, by its lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.as_str())
    }

    /// The body, a JSON array of events.
    pub fn events(&self) -> Vec<serde_json::Value> {
        match serde_json::from_slice(&self.body) {
            Ok(serde_json::Value::Array(events)) => events,
            other => panic!("a body that is not a JSON array: {other:?}"),
        }
    }
}

/// A running (or stopped) receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    /// HTTPS with this certificate and key; plain HTTP without.
    tls: Option<crate::tls::CertFiles>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Receiver {
    /// Listens on a free loopback port, plain HTTP.
    pub fn start() -> Receiver {
        Receiver::start_with(None)
    }

    /// Listens on a free loopback port, HTTPS with `tls` if given.
    pub fn start_with(tls: Option<crate::tls::CertFiles>) -> Receiver {
        let port = crate::free_port("127.0.0.1");
        let dir = tempfile::tempdir().expect("receiver directory");
        std::fs::write(dir.path().join("receiver.py"), RECEIVER_PY).expect("write receiver.py");
        let mut receiver = Receiver {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tls,
            child: None,
            dir,
        };
        receiver.spawn();
        receiver
    }

    /// `http://127.0.0.1:<port><path>`, or `https://`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    fn posts_path(&self) -> PathBuf {
        self.dir.path().join("posts.jsonl")
    }

    fn failing_path(&self) -> PathBuf {
        self.dir.path().join("failing")
    }

    /// Starts the server again on the same port, and waits until it listens.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the receiver runs already");
        let child = Command::new("python3")
            .arg(self.dir.path().join("receiver.py"))
            .arg(self.addr.port().to_string())
            .arg(self.posts_path())
            .arg(self.failing_path())
            .args(self.tls.iter().flat_map(|tls| [&tls.cert, &tls.key]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3");
        self.child = Some(child);
        let deadline = Instant::now() + RECEIVER_START_TIMEOUT;
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            let child = self.child.as_mut().expect("just started");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the webhook receiver on {} exited: {status}", self.addr);
            }
            assert!(
                Instant::now() < deadline,
                "the webhook receiver on {} did not start",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server: the endpoint is down (connections refused).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// While on, every POST is answered `500` (and written down as such).
    pub fn set_failing(&self, failing: bool) {
        let path = self.failing_path();
        if failing {
            std::fs::write(&path, b"").expect("create the failing flag");
        } else if path.exists() {
            std::fs::remove_file(&path).expect("remove the failing flag");
        }
    }

    /// Every POST so far, in arrival order (complete lines only).
    pub fn posts(&self) -> Vec<Post> {
        read_posts(&self.posts_path())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_posts(path: &Path) -> Vec<Post> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| {
            let record: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|err| panic!("{line:?}: {err}"));
            Post {
                path: record["path"].as_str().unwrap_or_default().to_owned(),
                status: record["status"].as_u64().unwrap_or(0) as u16,
                headers: record["headers"].as_object().cloned().unwrap_or_default(),
                body: base64::engine::general_purpose::STANDARD
                    .decode(record["body"].as_str().unwrap_or_default())
                    .expect("base64 body"),
            }
        })
        .collect()
}
