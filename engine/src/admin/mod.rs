//! The admin API: HTTP/1.1 on a loopback listener, on a thread of its own,
//! off the shards' hot path.
//!
//! - `GET /health`: `ok`.
//! - `GET /queue`: per destination counts of ready and scheduled
//!   recipients, as JSON.
//! - `GET /queue/<id>`: one message: envelope, size, each recipient's state.
//! - `GET /metrics`: counters in the Prometheus text format.
//!
//! `baton queue ...` is a client of this API ([`get`]).

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use baton_spool::{QueueId, Status};
use serde::{Deserialize, Serialize};

use crate::queue::DestinationSummary;
use crate::server::Server;

/// Longest request head accepted.
const REQUEST_BYTES_MAX: usize = 8 << 10;
/// A client that sends nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The queue summary.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueueSummary {
    pub destinations: Vec<DestinationSummary>,
    pub messages: u64,
    pub recipients: u64,
}

/// One message.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessageReport {
    pub queue_id: String,
    pub arrival_ms: u64,
    pub sender: String,
    pub mail_params: String,
    pub peer: String,
    pub size: usize,
    pub recipients: Vec<RecipientReport>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RecipientReport {
    pub address: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_ms: Option<u64>,
}

/// An operator's request that changes the queue. The admin thread hands it
/// to a shard, which owns a spool writer for the outcomes it records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// Retry now: scheduled recipients of one destination, or of all.
    Flush(Option<String>),
    /// Remove a message's undelivered recipients, without notification.
    Delete(QueueId),
    /// Fail a message's undelivered recipients, with a notification.
    Bounce(QueueId),
}

/// What became of an [`AdminRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    pub ok: bool,
    /// Recipients the request acted on.
    pub recipients: usize,
    pub message: String,
}

/// Starts the admin listener thread.
pub fn start(address: SocketAddr, server: Arc<Server>) -> io::Result<()> {
    let listener = TcpListener::bind(address)?;
    thread::Builder::new().name("admin".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if let Err(err) = serve(stream, &server) {
                tracing::debug!(%err, "admin request failed");
            }
        }
    })?;
    Ok(())
}

fn serve(stream: TcpStream, server: &Server) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?).take(REQUEST_BYTES_MAX as u64);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers: nothing in them matters here.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = if method != "GET" {
        (405, "text/plain", "only GET\n".to_string())
    } else {
        route(path, server)
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

fn route(path: &str, server: &Server) -> (u16, &'static str, String) {
    const JSON: &str = "application/json";
    match path {
        "/health" => (200, "text/plain", "ok\n".into()),
        "/metrics" => (200, "text/plain; version=0.0.4", metrics(server)),
        "/queue" => (200, JSON, to_json(&queue_summary(server))),
        _ => match path.strip_prefix("/queue/").and_then(parse_queue_id) {
            Some(id) => match message_report(server, id) {
                Some(report) => (200, JSON, to_json(&report)),
                None => (404, "text/plain", format!("no message {id} in the queue\n")),
            },
            None => (404, "text/plain", "not found\n".into()),
        },
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("plain data serialises") + "\n"
}

/// Queue ids print as 16 hex digits.
pub fn parse_queue_id(text: &str) -> Option<QueueId> {
    u64::from_str_radix(text.trim(), 16).ok().map(QueueId)
}

fn queue_summary(server: &Server) -> QueueSummary {
    let counts = server.spool.stats().counts;
    QueueSummary {
        destinations: server.queues.summary(),
        messages: counts.live_messages,
        recipients: counts.live_recipients,
    }
}

fn message_report(server: &Server, id: QueueId) -> Option<MessageReport> {
    let state = server.spool.message(id)?;
    let record = server.spool.read(state.body).ok()?;
    let message = record.message().ok()?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let recipients = message
        .recipients()
        .zip(&state.statuses)
        .map(|(r, status)| {
            let (name, attempts, next) = match *status {
                Status::Pending => ("pending", 0, None),
                Status::Deferred {
                    attempts,
                    next_attempt_ms,
                } => ("deferred", attempts, Some(next_attempt_ms)),
                Status::Delivered => ("delivered", 0, None),
                Status::Failed => ("failed", 0, None),
                Status::Removed => ("removed", 0, None),
            };
            RecipientReport {
                address: text(r.address),
                status: name.into(),
                attempts,
                next_attempt_ms: next,
            }
        })
        .collect();
    Some(MessageReport {
        queue_id: id.to_string(),
        arrival_ms: message.arrival_ms,
        sender: text(message.reverse_path),
        mail_params: text(message.mail_params),
        peer: text(message.peer),
        size: message.body.len(),
        recipients,
    })
}

fn metrics(server: &Server) -> String {
    let m = &server.metrics;
    let stats = server.spool.stats();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let counters = [
        (
            "baton_connections_accepted_total",
            "SMTP connections accepted.",
            load(&m.connections_accepted),
        ),
        (
            "baton_connections_refused_total",
            "SMTP connections refused by a connection limit.",
            load(&m.connections_refused),
        ),
        (
            "baton_messages_accepted_total",
            "Messages acknowledged with 250 after a durable commit.",
            load(&m.messages_accepted),
        ),
        (
            "baton_recipients_accepted_total",
            "Recipients of accepted messages.",
            load(&m.recipients_accepted),
        ),
        (
            "baton_bytes_accepted_total",
            "Bytes of accepted messages, as stored.",
            load(&m.bytes_accepted),
        ),
        (
            "baton_store_failures_total",
            "Messages refused because the spool failed or was full.",
            load(&m.store_failures),
        ),
    ];
    let gauges = [
        (
            "baton_queue_messages",
            "Messages with recipients still to deliver.",
            stats.counts.live_messages,
        ),
        (
            "baton_queue_recipients",
            "Recipients still to deliver.",
            stats.counts.live_recipients,
        ),
        (
            "baton_spool_segments",
            "Spool segment files in use.",
            stats.segments,
        ),
        (
            "baton_spool_used_bytes",
            "Bytes of spool segments in use.",
            stats.used_bytes,
        ),
    ];
    let mut out = String::new();
    let series = counters
        .iter()
        .map(|c| ("counter", c))
        .chain(gauges.iter().map(|g| ("gauge", g)));
    for (kind, (name, help, value)) in series {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}

/// A GET against a running server's admin API: `(status, body)`.
pub fn get(address: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("malformed HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("malformed HTTP status line"))?;
    Ok((status, body.to_string()))
}
