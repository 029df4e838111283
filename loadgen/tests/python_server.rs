//! `loadgen send` → a Python SMTP server (aiosmtpd when installed, else
//! the standard library's smtpd of Python ≤ 3.11): the server counts the
//! loadgen ids it received and they must match `send`'s report.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SERVER: &str = r#"
import sys, signal, time
port, out_path = int(sys.argv[1]), sys.argv[2]
ids = []
def record(data):
    # aiosmtpd keeps the CRLFs; smtpd joins the lines with LF.
    for line in data.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break
        if line.lower().startswith(b"x-loadgen-id:"):
            ids.append(line.split(b":", 1)[1].strip().decode())
def finish(*_):
    with open(out_path, "w") as f:
        f.write("\n".join(ids))
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
try:
    from aiosmtpd.controller import Controller
    class Handler:
        async def handle_DATA(self, server, session, envelope):
            record(envelope.original_content or envelope.content)
            return "250 OK"
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready aiosmtpd", flush=True)
    while True:
        time.sleep(1)
except ImportError:
    import warnings
    warnings.simplefilter("ignore")
    import asyncore, smtpd
    class Server(smtpd.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            record(data if isinstance(data, bytes) else data.encode())
    Server(("127.0.0.1", port), None, decode_data=False)
    print("ready smtpd", flush=True)
    asyncore.loop()
"#;

#[test]
fn loadgen_send_to_a_python_server() {
    let Some(python) = find_program("python3", "the Python server test needs it") else {
        return;
    };
    let available = Command::new(&python)
        .args(["-c", "import importlib.util as u; print(bool(u.find_spec('aiosmtpd') or u.find_spec('smtpd')))"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "True")
        .unwrap_or(false);
    if !available {
        eprintln!("SKIPPED: neither aiosmtpd nor smtpd is importable (pip install aiosmtpd)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ids_path = dir.path().join("ids.txt");
    let port = free_port();
    let mut server = Command::new(&python)
        .args(["-c", SERVER, &port.to_string()])
        .arg(&ids_path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Python server");
    let mut ready = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("the server says it is ready");
    eprintln!("python server: {}", ready.trim());
    let target = format!("127.0.0.1:{port}");
    wait_for_listener(&target);
    let run = send(
        &target,
        &dir.path().join("send.json"),
        &["-n", "300", "-c", "4", "--rcpts", "2"],
    );
    terminate(&server);
    let status = wait_with_deadline(&mut server, RUN_TIMEOUT);
    assert!(status.success(), "Python server exited with {status}");
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(num(&run.report, "/messages_accepted"), 300);

    let deadline = Instant::now() + Duration::from_secs(5);
    while !ids_path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&ids_path).expect("ids written by the server");
    let mut ids: Vec<&str> = text.lines().collect();
    assert_eq!(ids.len(), 300);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 300, "no duplicates");
    let run_id = run.report["run_id"].as_str().expect("run id");
    assert!(ids.iter().all(|id| id.starts_with(run_id)));
}
