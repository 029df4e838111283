//! The delivery event log: one JSON object per line, for operators to
//! tail and for tools to parse.
//!
//! ```text
//! {"time":"2026-11-22T18:00:17.123Z","event":"delivered","queue_id":"…","recipient":"a@example.org","destination":"example.org","host":"mx1.example.org [192.0.2.1]:25","reply":"250 2.0.0 ok","attempt":1,"size":2048}
//! ```
//!
//! Fields that do not apply to an event are left out rather than written
//! as `null`: a `delivered` line has no `next_attempt` key. A recipient
//! still deferred after `max_age` gets an `expired` line (its last reply,
//! no new attempt) rather than `failed`. Over TLS, `received` and
//! outcome lines carry
//! `"tls":{"version":"TLSv1.3","cipher":"TLS_AES_256_GCM_SHA384","bits":256,"verified":false}`
//! (`verified`: the next hop's chain and name were checked).
//!
//! Shards must never wait on a disk: [`EventLog::record`] serialises on the
//! caller's thread and hands the line to a writer thread through a
//! bounded channel; when the channel is full the event is counted in
//! [`EventLog::dropped`] and lost, never waited for. The writer batches
//! lines through a buffer and flushes within [`FLUSH_INTERVAL`] of the
//! oldest unflushed line, on request ([`EventLog::flush`], at shutdown),
//! and everything on drop. Webhooks (`super::webhook`) read the file.
//!
//! Rotation: the writer opens the file again on SIGHUP
//! ([`EventLog::reopen`]) and, checked every [`REOPEN_CHECK`], when the
//! path no longer names the file it writes (`mv` by logrotate without a
//! `postrotate`); `copytruncate` needs nothing, the file being opened for
//! appending. Dropped events are reported at WARN, at most once per
//! check, with how many.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::tls::TlsInfo;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::{Serialize, Serializer};

use crate::smtp::date::rfc3339_seconds;
use crate::smtp::reply::Reply;

/// Lines waiting for the writer. At a few hundred bytes a line this holds
/// some 20 MiB at most, and absorbs a disk stall of about half a second
/// at 100 000 events a second; past it events are dropped and counted
/// rather than letting a slow disk stall delivery.
pub const EVENTS_QUEUED_MAX: usize = 65_536;
/// The longest a recorded line waits in the writer's buffer before it
/// reaches the file: short enough for an operator's `tail -f` to feel
/// live, long enough that a busy log costs about ten writes a second.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// How often the writer looks whether the file was moved away (or a
/// reopen asked for), and reports dropped events.
pub const REOPEN_CHECK: Duration = Duration::from_secs(1);
/// The longest [`EventLog::flush`] waits for the writer.
pub const FLUSH_WAIT_MAX: Duration = Duration::from_secs(5);
/// The writer's buffer: a flush is one `write` of up to this much.
const FILE_BUFFER_BYTES: usize = 64 * 1024;
/// A typical line fits without the vector growing.
const LINE_BYTES_INITIAL: usize = 384;
/// A reply quoted on one line, here and in bounces: a reply may have up
/// to 128 lines of 2 KiB (`smtp::reply` limits); its first 4 KiB tell
/// the story.
pub const REPLY_LINE_BYTES_MAX: usize = 4096;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A message was accepted and spooled.
    Received,
    /// A recipient was accepted by the next hop.
    Delivered,
    /// A recipient failed temporarily and will be tried again.
    Deferred,
    /// A recipient failed for good: a `5xx`, or a local failure that
    /// cannot pass.
    Failed,
    /// A recipient failed for good because it was still deferred after
    /// `delivery.max_age`: the last reply is the one that deferred it.
    Expired,
    /// A delivery status notification was queued for the sender.
    Bounce,
    /// An operator removed a recipient from the queue (`baton queue
    /// delete`): not delivered, no notification.
    Deleted,
    /// A recipient on the suppression list was accepted and dropped
    /// (`suppression.action = "drop"`): never queued, never delivered.
    Suppressed,
    /// An address was added to the suppression list (`address`, `scope`,
    /// `source`, `reason`).
    #[serde(rename = "suppression_added")]
    SuppressionAdded,
    /// An address was removed from the suppression list.
    #[serde(rename = "suppression_removed")]
    SuppressionRemoved,
    /// A recipient followed a one-click unsubscribe link (RFC 8058): the
    /// message's queue id, `recipient`, `scope`, and the client in `host`.
    Unsubscribed,
}

impl EventKind {
    /// Every kind, for the configuration to check names against
    /// (`[[webhook]] events`).
    pub const ALL: [EventKind; 11] = [
        EventKind::Received,
        EventKind::Delivered,
        EventKind::Deferred,
        EventKind::Failed,
        EventKind::Expired,
        EventKind::Bounce,
        EventKind::Deleted,
        EventKind::Suppressed,
        EventKind::SuppressionAdded,
        EventKind::SuppressionRemoved,
        EventKind::Unsubscribed,
    ];

    /// The `event` field's value. (A kind added to the enum stops this
    /// match from compiling: add it to [`EventKind::ALL`] too.)
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Received => "received",
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Failed => "failed",
            EventKind::Expired => "expired",
            EventKind::Bounce => "bounce",
            EventKind::Deleted => "deleted",
            EventKind::Suppressed => "suppressed",
            EventKind::SuppressionAdded => "suppression_added",
            EventKind::SuppressionRemoved => "suppression_removed",
            EventKind::Unsubscribed => "unsubscribed",
        }
    }
}

/// The `Message-ID:` of a message in wire form, if its header has one
/// (the first, unfolded, at most [`MESSAGE_ID_BYTES_MAX`]).
pub fn message_id(wire: &[u8]) -> Option<String> {
    let header_end = memchr::memmem::find(wire, b"\r\n\r\n").unwrap_or(wire.len());
    let header = &wire[..header_end];
    let mut start = 0;
    while start < header.len() {
        let end =
            memchr::memmem::find(&header[start..], b"\r\n").map_or(header.len(), |n| start + n);
        let line = &header[start..end];
        if line.len() >= 11 && line[..11].eq_ignore_ascii_case(b"message-id:") {
            // Folded continuation lines belong to it.
            let mut value = line[11..].to_vec();
            let mut next = end + 2;
            while next < header.len() && matches!(header[next], b' ' | b'\t') {
                let e = memchr::memmem::find(&header[next..], b"\r\n")
                    .map_or(header.len(), |n| next + n);
                value.extend_from_slice(&header[next..e]);
                next = e + 2;
            }
            let text = String::from_utf8_lossy(&value).trim().to_owned();
            let text: String = text.chars().take(MESSAGE_ID_BYTES_MAX).collect();
            return (!text.is_empty()).then_some(text);
        }
        start = end + 2;
    }
    None
}

/// The most of a `Message-ID:` an event carries.
pub const MESSAGE_ID_BYTES_MAX: usize = 256;

/// One line of the log. Times are Unix milliseconds, written as RFC 3339
/// UTC with milliseconds; addresses are bytes, written as (lossy) UTF-8.
/// Start from [`Event::new`] and set what applies.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Event<'a> {
    #[serde(rename = "time", serialize_with = "serialize_time")]
    pub time_unix_ms: u64,
    pub event: EventKind,
    /// Empty, and left out, for events about no message (the suppression
    /// list's changes, a recipient dropped at `RCPT`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub queue_id: &'a str,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_address"
    )]
    pub recipient: Option<&'a [u8]>,
    /// Where the recipient is routed, e.g. its domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<&'a str>,
    /// The remote host, `name [address]:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
    /// How the connection was encrypted: `{"version", "cipher", "bits",
    /// "verified"}`; absent in plain text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'a TlsInfo>,
    /// The reply that decided the outcome, written on one line
    /// ([`reply_line`]).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_reply"
    )]
    pub reply: Option<&'a Reply>,
    /// 1 for the first attempt, in outcome events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When a deferred recipient is tried again.
    #[serde(
        rename = "next_attempt",
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_time_option"
    )]
    pub next_attempt_unix_ms: Option<u64>,
    /// The message's size in octets (wire form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The envelope sender (`received`, `bounce`); empty for the null
    /// reverse path.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_address"
    )]
    pub sender: Option<&'a [u8]>,
    /// The notification's own queue id (`bounce`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounce_queue_id: Option<&'a str>,
    /// Why, when the reply does not say it all: `expired` for a `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// `deferred`, `failed`: what kind of failure the reply is
    /// (`crate::shaping::classify`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<&'a str>,
    /// The user the sending client authenticated as (SMTP AUTH).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// Outcomes: how long the message had been queued, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_time_ms: Option<u64>,
    /// Outcomes: the local address the connection left from, `ip:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<&'a str>,
    /// Outcomes over a connection: the transaction's time, from MAIL FROM
    /// to the reply that decided it, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Outcomes: the egress source (`[[source]]` name) the attempt left
    /// from, when a pool chose one.
    #[serde(rename = "egress", skip_serializing_if = "Option::is_none")]
    pub egress: Option<&'a str>,
    /// `received`: every recipient accepted, in RCPT order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<&'a [String]>,
    /// `received`: the client's address (`ip:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<&'a str>,
    /// `received`: how the message came when not by SMTP: `http`
    /// (injection, `crate::http::inject`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'a str>,
    /// `received`: the name the client gave in EHLO or HELO.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helo: Option<&'a str>,
    /// `received`: the message's `Message-ID:` field, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<&'a str>,
    /// `received`: how DKIM signed it (`d=example.com s=s2026
    /// a=rsa-sha256`), or why not (`none: no key for example.com`); absent
    /// for clients baton does not sign for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dkim: Option<&'a str>,
    /// The address a suppression list change is about (not `recipient`:
    /// no message is involved, and tools that follow recipients should
    /// not take these lines for outcomes).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_address"
    )]
    pub address: Option<&'a [u8]>,
    /// The suppression list's scope: `global`, `domain:…`, `user:…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'a str>,
    /// Who put the address on the suppression list: `bounce`,
    /// `operator`, `unsubscribe`, `import`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'a str>,
}

impl<'a> Event<'a> {
    /// An event with only its kind, time and queue id set.
    pub fn new(event: EventKind, time_unix_ms: u64, queue_id: &'a str) -> Event<'a> {
        Event {
            time_unix_ms,
            event,
            queue_id,
            recipient: None,
            destination: None,
            host: None,
            tls: None,
            reply: None,
            attempt: None,
            next_attempt_unix_ms: None,
            size: None,
            sender: None,
            bounce_queue_id: None,
            reason: None,
            category: None,
            queue_time_ms: None,
            egress: None,
            local: None,
            latency_ms: None,
            recipients: None,
            client: None,
            protocol: None,
            helo: None,
            message_id: None,
            user: None,
            dkim: None,
            address: None,
            scope: None,
            source: None,
        }
    }
}

/// RFC 3339 UTC with milliseconds: `2026-11-22T18:00:17.123Z`.
pub fn rfc3339_millis(unix_ms: u64) -> String {
    format!("{}.{:03}Z", rfc3339_seconds(unix_ms / 1000), unix_ms % 1000)
}

/// A reply on one line: `550 5.1.1 No such user`, the lines of a
/// multi-line reply joined by spaces, runs of white space and control
/// characters made one space, cut to [`REPLY_LINE_BYTES_MAX`] with `...`.
pub fn reply_line(reply: &Reply) -> String {
    const ELLIPSIS: &str = "...";
    let mut line = format!("{:03}", reply.code);
    if let Some((class, subject, detail)) = reply.enhanced {
        let _ = write!(line, " {class}.{subject}.{detail}");
    }
    let words = reply.lines.iter().flat_map(|text| {
        text.split(|c: char| c.is_whitespace() || c.is_control())
            .filter(|word| !word.is_empty())
    });
    for word in words {
        if line.len() + 1 + word.len() > REPLY_LINE_BYTES_MAX {
            line.push(' ');
            let mut cut = REPLY_LINE_BYTES_MAX
                .saturating_sub(line.len() + ELLIPSIS.len())
                .min(word.len());
            while !word.is_char_boundary(cut) {
                cut -= 1;
            }
            line.push_str(&word[..cut]);
            line.push_str(ELLIPSIS);
            break;
        }
        line.push(' ');
        line.push_str(word);
    }
    line
}

fn serialize_time<S: Serializer>(unix_ms: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339_millis(*unix_ms))
}

fn serialize_time_option<S: Serializer>(
    unix_ms: &Option<u64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match unix_ms {
        Some(unix_ms) => serialize_time(unix_ms, serializer),
        None => serializer.serialize_none(),
    }
}

fn serialize_address<S: Serializer>(
    address: &Option<&[u8]>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match address {
        Some(address) => serializer.serialize_str(&String::from_utf8_lossy(address)),
        None => serializer.serialize_none(),
    }
}

fn serialize_reply<S: Serializer>(
    reply: &Option<&Reply>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match reply {
        Some(reply) => serializer.serialize_str(&reply_line(reply)),
        None => serializer.serialize_none(),
    }
}

/// The event log, shared by all shards (`Arc<EventLog>`).
#[derive(Debug)]
pub struct EventLog {
    /// To the writer thread; `None` when disabled, taken on drop to stop
    /// the writer.
    lines: Option<Sender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    /// Events lost: channel full, or the file refused them.
    dropped: Arc<AtomicU64>,
    /// Asks the writer to open the file again (SIGHUP).
    reopen: Arc<AtomicBool>,
    /// Flushes the writer has done on request ([`EventLog::flush`]).
    flushed: Arc<Flushed>,
}

/// A count of requested flushes done, and its waiters.
#[derive(Debug, Default)]
struct Flushed {
    count: Mutex<u64>,
    done: Condvar,
}

/// Whether the event log `path` could be opened for appending: its
/// directory exists and is writable, and it is not a directory. What
/// `check-config` asks, so a bad path is found before `baton run`.
pub fn check_path(path: &Path) -> Result<(), String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(format!("log.events: {}: no such directory", dir.display()));
    }
    if path.is_dir() {
        return Err(format!("log.events: {}: a directory", path.display()));
    }
    let readonly = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.permissions().readonly());
    if readonly(path) || (!path.exists() && readonly(dir)) {
        return Err(format!("log.events: {}: not writable", path.display()));
    }
    Ok(())
}

impl EventLog {
    /// Opens `path` (created if missing, appended to) and starts the
    /// writer thread.
    pub fn open(path: &Path) -> io::Result<EventLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (sender, receiver) = crossbeam_channel::bounded(EVENTS_QUEUED_MAX);
        let dropped = Arc::new(AtomicU64::new(0));
        let reopen = Arc::new(AtomicBool::new(false));
        let flushed = Arc::new(Flushed::default());
        let writer = thread::Builder::new().name("baton-events".into()).spawn({
            let target = Target {
                path: path.to_owned(),
                dropped: Arc::clone(&dropped),
                reopen: Arc::clone(&reopen),
                flushed: Arc::clone(&flushed),
            };
            move || write_lines(&receiver, file, &target)
        })?;
        Ok(EventLog {
            lines: Some(sender),
            writer: Some(writer),
            dropped,
            reopen,
            flushed,
        })
    }

    /// Has the writer write out every line queued before this call, and
    /// waits for it (at most [`FLUSH_WAIT_MAX`]): at shutdown, where the
    /// log itself may never be dropped (the admin API's thread holds the
    /// server), so that the events of the last moments reach the file,
    /// and the webhooks that read it.
    pub fn flush(&self) {
        let Some(lines) = &self.lines else {
            return;
        };
        let count = self.flushed.count.lock().expect("flush lock");
        let asked = *count;
        // An empty line is the request: no event serialises to nothing.
        if lines.send_timeout(Vec::new(), FLUSH_WAIT_MAX).is_err() {
            return;
        }
        let _ = self
            .flushed
            .done
            .wait_timeout_while(count, FLUSH_WAIT_MAX, |count| *count == asked);
    }

    /// Has the writer open the file again, by its path, within
    /// [`REOPEN_CHECK`] (SIGHUP after a rotation).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// A log that writes nothing: the configuration asks for none.
    pub fn disabled() -> EventLog {
        EventLog {
            lines: None,
            writer: None,
            dropped: Arc::new(AtomicU64::new(0)),
            reopen: Arc::new(AtomicBool::new(false)),
            flushed: Arc::default(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.lines.is_some()
    }

    /// Queues one line for the writer. Never blocks: when the writer is
    /// [`EVENTS_QUEUED_MAX`] lines behind, the event is counted in
    /// [`EventLog::dropped`] instead.
    pub fn record(&self, event: &Event<'_>) {
        let Some(lines) = &self.lines else {
            return;
        };
        let mut line = Vec::with_capacity(LINE_BYTES_INITIAL);
        if serde_json::to_writer(&mut line, event).is_err() {
            // Our own fields always serialise; counted all the same.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        line.push(b'\n');
        match lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// As [`EventLog::record`], but waits for room rather than drop the
    /// event: for threads off the shards (the suppression list's writer,
    /// whose imports log a line per address).
    pub fn record_waiting(&self, event: &Event<'_>) {
        let Some(lines) = &self.lines else {
            return;
        };
        let mut line = Vec::with_capacity(LINE_BYTES_INITIAL);
        if serde_json::to_writer(&mut line, event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        line.push(b'\n');
        if lines.send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events lost so far, for the metrics.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for EventLog {
    /// Closes the channel, lets the writer write and flush what is queued,
    /// and waits for it.
    fn drop(&mut self) {
        self.lines = None;
        if let Some(writer) = self.writer.take() {
            // A panicking writer has nothing left to give.
            let _ = writer.join();
        }
    }
}

/// Where the writer writes, and what it watches.
struct Target {
    path: PathBuf,
    dropped: Arc<AtomicU64>,
    reopen: Arc<AtomicBool>,
    flushed: Arc<Flushed>,
}

impl Target {
    /// Whether the path no longer names `file` (renamed or deleted).
    fn moved(&self, file: &File) -> bool {
        let Ok(open) = file.metadata() else {
            return false;
        };
        match std::fs::metadata(&self.path) {
            Ok(now) => (now.dev(), now.ino()) != (open.dev(), open.ino()),
            Err(_) => true,
        }
    }
}

/// The writer thread: appends lines until the channel closes, flushing
/// within [`FLUSH_INTERVAL`] of the first line written since the last
/// flush, and once more at the end; every [`REOPEN_CHECK`] it opens the
/// file again if asked or moved, and reports dropped events.
fn write_lines(lines: &Receiver<Vec<u8>>, file: File, target: &Target) {
    let dropped = &*target.dropped;
    let mut out = BufWriter::with_capacity(FILE_BUFFER_BYTES, file);
    // When the oldest unflushed line must reach the file.
    let mut flush_deadline: Option<Instant> = None;
    let mut next_check = Instant::now() + REOPEN_CHECK;
    let mut dropped_reported = 0;
    // Log the first of a run of errors, not each.
    let mut failing = false;
    loop {
        let deadline = flush_deadline.map_or(next_check, |d| d.min(next_check));
        let received = lines.recv_deadline(deadline);
        if Instant::now() >= next_check {
            next_check = Instant::now() + REOPEN_CHECK;
            let asked = target.reopen.swap(false, Ordering::Relaxed);
            if asked || target.moved(out.get_ref()) {
                flush(&mut out, &mut failing);
                flush_deadline = None;
                match OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&target.path)
                {
                    Ok(file) => {
                        out = BufWriter::with_capacity(FILE_BUFFER_BYTES, file);
                        failing = false;
                        tracing::info!(path = %target.path.display(), "event log: opened again");
                    }
                    Err(error) => {
                        tracing::error!(%error, path = %target.path.display(), "event log: cannot open again; writing on to the old file");
                    }
                }
            }
            let now_dropped = dropped.load(Ordering::Relaxed);
            if now_dropped > dropped_reported {
                tracing::warn!(
                    dropped = now_dropped - dropped_reported,
                    total = now_dropped,
                    "event log: events dropped (the writer fell behind or the file refused them)"
                );
                dropped_reported = now_dropped;
            }
        }
        let line = match received {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                if flush_deadline.is_some_and(|d| Instant::now() >= d) {
                    flush(&mut out, &mut failing);
                    flush_deadline = None;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                flush(&mut out, &mut failing);
                return;
            }
        };
        if line.is_empty() {
            // [`EventLog::flush`] asks, and waits.
            flush(&mut out, &mut failing);
            flush_deadline = None;
            *target.flushed.count.lock().expect("flush lock") += 1;
            target.flushed.done.notify_all();
            continue;
        }
        match out.write_all(&line) {
            Ok(()) => failing = false,
            Err(error) => {
                dropped.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::error!(%error, "event log: write failed; events are being lost");
                }
                failing = true;
            }
        }
        let deadline = *flush_deadline.get_or_insert_with(|| Instant::now() + FLUSH_INTERVAL);
        if Instant::now() >= deadline {
            // Lines keep coming: flush on time all the same.
            flush(&mut out, &mut failing);
            flush_deadline = None;
        }
    }
}

fn flush(out: &mut BufWriter<File>, failing: &mut bool) {
    if let Err(error) = out.flush() {
        if !*failing {
            tracing::error!(%error, "event log: flush failed");
        }
        *failing = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(event: &Event<'_>) -> serde_json::Value {
        serde_json::to_value(event).unwrap()
    }

    #[test]
    fn is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<EventLog>();
    }

    #[test]
    fn kind_names_are_what_the_log_writes() {
        for kind in EventKind::ALL {
            assert_eq!(line_of(&Event::new(kind, 0, "q"))["event"], kind.name());
        }
    }

    #[test]
    fn time_is_rfc3339_utc_with_milliseconds() {
        assert_eq!(
            rfc3339_millis(1_795_370_417_123),
            "2026-11-22T18:00:17.123Z"
        );
        assert_eq!(rfc3339_millis(5), "1970-01-01T00:00:00.005Z");
    }

    #[test]
    fn deferred_has_next_attempt_delivered_has_none() {
        let reply = Reply::new(451, Some((4, 7, 1)), "try again\r\nlater");
        let deferred = Event {
            recipient: Some(b"a@example.org"),
            destination: Some("example.org"),
            host: Some("mx1.example.org [192.0.2.1]:25"),
            reply: Some(&reply),
            attempt: Some(2),
            next_attempt_unix_ms: Some(1_795_370_517_000),
            size: Some(2048),
            ..Event::new(EventKind::Deferred, 1_795_370_417_123, "q1")
        };
        let value = line_of(&deferred);
        assert_eq!(value["time"], "2026-11-22T18:00:17.123Z");
        assert_eq!(value["event"], "deferred");
        assert_eq!(value["queue_id"], "q1");
        assert_eq!(value["recipient"], "a@example.org");
        assert_eq!(value["destination"], "example.org");
        assert_eq!(value["host"], "mx1.example.org [192.0.2.1]:25");
        assert_eq!(value["reply"], "451 4.7.1 try again later");
        assert_eq!(value["attempt"], 2);
        assert_eq!(value["next_attempt"], "2026-11-22T18:01:57.000Z");
        assert_eq!(value["size"], 2048);

        let ok = Reply::new(250, None, "ok");
        let delivered = Event {
            next_attempt_unix_ms: None,
            reply: Some(&ok),
            ..deferred
        };
        let value = line_of(&Event {
            event: EventKind::Delivered,
            ..delivered
        });
        assert_eq!(value["event"], "delivered");
        assert_eq!(value["reply"], "250 ok");
        let object = value.as_object().unwrap();
        assert!(!object.contains_key("next_attempt"));
        assert!(!object.contains_key("sender"));
        assert!(!object.contains_key("bounce_queue_id"));
    }

    #[test]
    fn received_bounce_and_expiry_fields() {
        let received = Event {
            sender: Some(b""),
            size: Some(10),
            ..Event::new(EventKind::Received, 0, "q1")
        };
        let value = line_of(&received);
        assert_eq!(value["event"], "received");
        assert_eq!(value["sender"], "");
        assert!(!value.as_object().unwrap().contains_key("host"));

        let bounce = Event {
            sender: Some("ü@example.org".as_bytes()),
            bounce_queue_id: Some("q2"),
            ..Event::new(EventKind::Bounce, 0, "q1")
        };
        let value = line_of(&bounce);
        assert_eq!(value["event"], "bounce");
        assert_eq!(value["sender"], "ü@example.org");
        assert_eq!(value["bounce_queue_id"], "q2");

        let expired = Event::new(EventKind::Expired, 0, "q1");
        assert_eq!(line_of(&expired)["event"], "expired");

        let delivered = Event {
            local: Some("192.0.2.9:40000"),
            latency_ms: Some(12),
            ..Event::new(EventKind::Delivered, 0, "q1")
        };
        let value = line_of(&delivered);
        assert_eq!(value["local"], "192.0.2.9:40000");
        assert_eq!(value["latency_ms"], 12);
    }

    #[test]
    fn reply_line_joins_and_bounds() {
        let mut reply = Reply::new(550, Some((5, 1, 1)), "first");
        reply.lines.push("second\tline".into());
        assert_eq!(reply_line(&reply), "550 5.1.1 first second line");
        assert_eq!(reply_line(&Reply::new(421, None, "")), "421");

        let huge = Reply {
            code: 554,
            enhanced: None,
            lines: vec!["é".repeat(3000); 128],
        };
        let line = reply_line(&huge);
        assert!(line.len() <= REPLY_LINE_BYTES_MAX, "{}", line.len());
        assert!(line.ends_with("..."));
        let word = Reply::new(554, None, "x".repeat(10_000));
        assert_eq!(reply_line(&word).len(), REPLY_LINE_BYTES_MAX);
    }

    #[test]
    fn lines_from_two_threads_all_reach_the_file() {
        const EVENTS_PER_THREAD: usize = 2_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        std::fs::write(&path, b"{\"earlier\":true}\n").unwrap();
        let log = Arc::new(EventLog::open(&path).unwrap());
        assert!(log.is_enabled());
        let threads: Vec<_> = (0..2)
            .map(|thread| {
                let log = Arc::clone(&log);
                thread::spawn(move || {
                    for n in 0..EVENTS_PER_THREAD {
                        let queue_id = format!("t{thread}-{n}");
                        let reply = Reply::new(250, Some((2, 0, 0)), "ok");
                        log.record(&Event {
                            recipient: Some(b"r@example.org"),
                            reply: Some(&reply),
                            attempt: Some(1),
                            ..Event::new(EventKind::Delivered, n as u64, &queue_id)
                        });
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let log = Arc::into_inner(log).unwrap();
        assert_eq!(log.dropped(), 0);
        drop(log);

        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("{\"earlier\":true}"), "appends");
        let mut seen = std::collections::HashSet::new();
        for line in lines {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["event"], "delivered");
            assert_eq!(value["recipient"], "r@example.org");
            assert_eq!(value["reply"], "250 2.0.0 ok");
            assert_eq!(value["attempt"], 1);
            assert!(seen.insert(value["queue_id"].as_str().unwrap().to_owned()));
        }
        assert_eq!(seen.len(), 2 * EVENTS_PER_THREAD);
    }

    #[test]
    fn a_flush_asked_for_is_in_the_file_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let log = EventLog::open(&path).unwrap();
        for n in 0..3 {
            log.record(&Event::new(EventKind::Received, 0, &format!("q{n}")));
            log.flush();
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(text.lines().count(), n + 1, "{text}");
        }
        EventLog::disabled().flush();
    }

    #[test]
    fn a_quiet_log_still_reaches_the_file_soon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let log = EventLog::open(&path).unwrap();
        log.record(&Event::new(EventKind::Received, 0, "q1"));
        // Polled, not slept for a fixed time: a loaded machine may take
        // longer than the flush interval, but not this long.
        let started = Instant::now();
        while std::fs::read(&path).unwrap().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "never flushed");
            thread::sleep(FLUSH_INTERVAL / 4);
        }
        assert!(std::fs::read_to_string(&path).unwrap().ends_with('\n'));
    }

    /// Waits (polling, bounded) until `path` holds a line for `queue_id`.
    fn wait_for_line(path: &Path, queue_id: &str) {
        let started = Instant::now();
        while !std::fs::read_to_string(path).is_ok_and(|t| t.contains(queue_id)) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{queue_id} never reached {}",
                path.display()
            );
            thread::sleep(FLUSH_INTERVAL / 4);
        }
    }

    #[test]
    fn a_log_moved_away_is_opened_again_and_a_reopen_asked_for_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let log = EventLog::open(&path).unwrap();
        log.record(&Event::new(EventKind::Received, 0, "q1"));
        wait_for_line(&path, "q1");
        // logrotate without postrotate: mv, and nothing tells baton.
        let rotated = dir.path().join("events.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        let started = Instant::now();
        let mut n = 2;
        // Lines written before the writer looks go to the moved file;
        // within a check or two a new file takes them.
        while !path.exists() {
            log.record(&Event::new(EventKind::Received, 0, &format!("q{n}")));
            n += 1;
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "never opened again"
            );
            thread::sleep(FLUSH_INTERVAL);
        }
        log.record(&Event::new(EventKind::Received, 0, "after-mv"));
        wait_for_line(&path, "after-mv");
        let old = std::fs::read_to_string(&rotated).unwrap();
        assert!(old.contains("q1") && !old.contains("after-mv"));
        // logrotate's `create` and a `postrotate` SIGHUP: moved, a new
        // empty file made in its place, then the reopen.
        let rotated = dir.path().join("events.log.2");
        std::fs::rename(&path, &rotated).unwrap();
        std::fs::File::create(&path).unwrap();
        log.reopen();
        let started = Instant::now();
        while std::fs::metadata(&path).unwrap().len() == 0 {
            log.record(&Event::new(EventKind::Received, 0, &format!("q{n}")));
            n += 1;
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "never opened again"
            );
            thread::sleep(FLUSH_INTERVAL);
        }
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn message_id_is_found_in_the_header_only() {
        let wire = b"Received: from x\r\nmessage-ID:\r\n <a@b.example>\r\nSubject: s\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(message_id(wire).as_deref(), Some("<a@b.example>"));
        assert_eq!(
            message_id(b"Subject: s\r\n\r\nMessage-ID: <body@x>\r\n"),
            None
        );
        assert_eq!(message_id(b"Message-ID:   \r\n\r\n"), None);
    }

    #[test]
    fn disabled_writes_nothing() {
        let log = EventLog::disabled();
        assert!(!log.is_enabled());
        log.record(&Event::new(EventKind::Received, 0, "q1"));
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn full_channel_drops_and_counts() {
        // A writer that never reads: the second line finds the channel full.
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let log = EventLog {
            lines: Some(sender),
            writer: None,
            dropped: Arc::new(AtomicU64::new(0)),
            reopen: Arc::new(AtomicBool::new(false)),
            flushed: Arc::default(),
        };
        log.record(&Event::new(EventKind::Received, 0, "q1"));
        log.record(&Event::new(EventKind::Received, 0, "q2"));
        assert_eq!(log.dropped(), 1);
        assert!(receiver.try_recv().unwrap().ends_with(b"\"q1\"}\n"));
    }
}
