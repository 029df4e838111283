//! One webhook's thread: batches from the [`Tail`], posted until
//! acknowledged, the [`Cursor`] stored after each.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use ring::hmac;
use serde::Deserialize;

use super::cursor::{Cursor, CursorFile};
use super::tail::{Resumed, Tail};
use super::Stats;
use crate::config::{Secret, WebhookConfig, BATCH_HEADER, SIGNATURE_HEADER};

/// The first wait after a failed post.
pub const RETRY_DELAY_INITIAL: Duration = Duration::from_secs(1);
/// The longest wait between posts of a batch the endpoint keeps refusing:
/// an endpoint back up is found within a minute.
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(60);
/// How often an idle thread looks for new lines in the file.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The most of an endpoint's answer read (and thrown away, so that the
/// connection can be used again).
const ANSWER_BYTES_MAX: u64 = 64 * 1024;

/// The wait before the post after `failures` failed ones: 1 s, 2 s, 4 s,
/// ... up to [`RETRY_DELAY_MAX`].
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RETRY_DELAY_INITIAL * (1 << doublings)).min(RETRY_DELAY_MAX)
}

/// The events of one post, and where in the log they lie.
struct Batch {
    /// The lines as the log has them, without their `\n`.
    events: Vec<Vec<u8>>,
    /// The first line read for the batch: its id ([`BATCH_HEADER`]).
    start: Option<Cursor>,
    /// After the last line read for it: the cursor once it is sent.
    end: Option<Cursor>,
    /// When its first event was read: it is sent `batch_wait` later at
    /// the latest.
    opened: Instant,
}

impl Batch {
    fn new(start: Option<Cursor>) -> Batch {
        Batch {
            events: Vec::new(),
            start,
            end: start,
            opened: Instant::now(),
        }
    }

    /// `[line,line,...]`: the lines are JSON objects already.
    fn body(&self) -> Vec<u8> {
        let bytes = self.events.iter().map(|e| e.len() + 1).sum::<usize>() + 1;
        let mut body = Vec::with_capacity(bytes);
        body.push(b'[');
        for (i, event) in self.events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(event);
        }
        body.push(b']');
        body
    }

    /// `<webhook>-<inode>-<offset>` of its first line: the same for the
    /// same batch posted again, after a restart too, and no other
    /// webhook's.
    fn id(&self, webhook: &str) -> String {
        let (inode, offset) = self.start.map_or((0, 0), |c| (c.inode, c.offset));
        format!("{webhook}-{inode}-{offset}")
    }
}

/// The one field a line is read for.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
}

/// A webhook's thread, before it runs.
pub(super) struct Sender {
    name: String,
    url: String,
    events: Vec<String>,
    batch_size: usize,
    batch_wait: Duration,
    headers: Vec<(String, Secret)>,
    key: Option<hmac::Key>,
    agent: ureq::Agent,
    tail: Tail,
    cursor_file: CursorFile,
    stats: Arc<Stats>,
    stop: Receiver<()>,
}

impl Sender {
    /// Reads the cursor and opens the log where it points.
    pub(super) fn new(
        name: &str,
        config: &WebhookConfig,
        log: &Path,
        cursor_dir: &Path,
        stats: Arc<Stats>,
        stop: Receiver<()>,
    ) -> std::io::Result<Sender> {
        let tls =
            crate::tls::https_client(config.tls_ca.as_deref()).map_err(std::io::Error::other)?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .into();
        let cursor_file = CursorFile::new(cursor_dir, name)?;
        let cursor = match cursor_file.load() {
            Ok(cursor) => cursor,
            Err(err) => {
                tracing::error!(webhook = name, %err, "webhook: cursor unreadable; the event log is posted from its start");
                None
            }
        };
        let (tail, resumed) = Tail::resume(log, cursor)?;
        match &resumed {
            Resumed::Start | Resumed::AtCursor => {}
            Resumed::Rotated(path) => {
                tracing::info!(webhook = name, file = %path.display(), "webhook: finishing a rotated event log first")
            }
            Resumed::FileGone => {
                tracing::warn!(webhook = name, "webhook: the event log file of the cursor is gone (rotated and removed); posting the current file from its start")
            }
            Resumed::Truncated => {
                tracing::warn!(webhook = name, "webhook: the event log is shorter than the cursor (truncated); posting it from its start")
            }
        }
        Ok(Sender {
            name: name.to_owned(),
            url: config.url.clone(),
            events: config.events.clone(),
            batch_size: config.batch_size,
            batch_wait: config.batch_wait,
            headers: config
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            key: config
                .secret
                .as_ref()
                .map(|secret| hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes())),
            agent,
            tail,
            cursor_file,
            stats,
            stop,
        })
    }

    /// Until stopped: gather, post, store the cursor.
    pub(super) fn run(mut self) {
        let mut committed = self.tail.position();
        let mut batch = Batch::new(committed);
        // Log the first of a run of read errors, not each.
        let mut read_failing = false;
        loop {
            let mut caught_up = false;
            while batch.events.len() < self.batch_size {
                match self.tail.next_line() {
                    Ok(Some(line)) => {
                        read_failing = false;
                        if batch.start.is_none() {
                            // The file appeared: the batch starts in it.
                            batch.start = Some(Cursor {
                                inode: self.tail.position().map_or(0, |c| c.inode),
                                offset: 0,
                            });
                        }
                        self.take(&mut batch, line);
                        batch.end = self.tail.position();
                    }
                    Ok(None) => {
                        caught_up = true;
                        break;
                    }
                    Err(err) => {
                        if !read_failing {
                            tracing::error!(webhook = %self.name, %err, "webhook: cannot read the event log");
                        }
                        read_failing = true;
                        caught_up = true;
                        break;
                    }
                }
            }
            self.stats
                .lag_bytes
                .store(self.tail.lag_bytes(), Ordering::Relaxed);
            let full = batch.events.len() >= self.batch_size;
            let due = !batch.events.is_empty() && batch.opened.elapsed() >= self.batch_wait;
            if full || due {
                if !self.deliver(&batch) {
                    return;
                }
                committed = batch.end;
                batch = Batch::new(committed);
                continue;
            }
            if batch.events.is_empty() && batch.end != committed && caught_up {
                // Only lines of kinds not wanted: move past them too.
                if let Some(end) = batch.end {
                    self.store(end);
                }
                committed = batch.end;
                batch = Batch::new(committed);
            }
            let wait = if batch.events.is_empty() {
                POLL_INTERVAL
            } else {
                let left = self.batch_wait.saturating_sub(batch.opened.elapsed());
                left.min(POLL_INTERVAL)
            };
            if self.stopped_within(wait) {
                return;
            }
        }
    }

    /// Adds `line` to `batch` if its kind is wanted; a line that is not a
    /// JSON object with an `event` is damage, skipped (a body must be
    /// JSON).
    fn take(&self, batch: &mut Batch, line: Vec<u8>) {
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match serde_json::from_slice::<Head<'_>>(text) {
            Ok(head) => {
                if self.events.is_empty() || self.events.iter().any(|k| *k == head.event) {
                    if batch.events.is_empty() {
                        batch.opened = Instant::now();
                    }
                    batch.events.push(text.to_vec());
                }
            }
            Err(err) => {
                tracing::warn!(webhook = %self.name, %err, "webhook: a line of the event log is not an event; skipped");
            }
        }
    }

    /// Posts `batch` until the endpoint takes it, then stores its end as
    /// the cursor; `false` if stopped first (the batch is left to the next
    /// start).
    fn deliver(&self, batch: &Batch) -> bool {
        let body = batch.body();
        let signature = self
            .key
            .as_ref()
            .map(|key| format!("sha256={}", hex(hmac::sign(key, &body).as_ref())));
        let id = batch.id(&self.name);
        let mut failures: u32 = 0;
        loop {
            match self.post(&body, signature.as_deref(), &id) {
                Ok(()) => {
                    let events = batch.events.len() as u64;
                    self.stats.sent.fetch_add(events, Ordering::Relaxed);
                    if failures > 0 {
                        tracing::info!(webhook = %self.name, failures, "webhook: the endpoint takes events again");
                    }
                    if let Some(end) = batch.end {
                        self.store(end);
                    }
                    return true;
                }
                Err(why) => {
                    failures += 1;
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    let delay = retry_delay(failures);
                    // The first failure, then fewer and fewer.
                    if failures.is_power_of_two() {
                        tracing::warn!(webhook = %self.name, url = %self.url, %why, failures, retry_in_s = delay.as_secs(), "webhook: post failed; will retry");
                    }
                    self.stats
                        .lag_bytes
                        .store(self.tail.lag_bytes(), Ordering::Relaxed);
                    if self.stopped_within(delay) {
                        return false;
                    }
                }
            }
        }
    }

    /// One post; `Err` says why it did not get a `2xx`.
    fn post(&self, body: &[u8], signature: Option<&str>, id: &str) -> Result<(), String> {
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header(BATCH_HEADER, id);
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.expose());
        }
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        let mut response = request.send(body).map_err(|err| err.to_string())?;
        let status = response.status();
        // Read to its end (bounded) so the connection can be kept.
        let _ = response
            .body_mut()
            .with_config()
            .limit(ANSWER_BYTES_MAX)
            .read_to_vec();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }

    /// Stores `cursor`; on failure the events after the stored one are
    /// posted again at the next start (at least once, never lost).
    fn store(&self, cursor: Cursor) {
        if let Err(err) = self.cursor_file.store(cursor) {
            tracing::error!(webhook = %self.name, %err, file = %self.cursor_file.path().display(), "webhook: cannot store the cursor; events since the last one will be posted again after a restart");
        }
    }

    /// Waits `wait`, or less if told to stop; `true` if told.
    fn stopped_within(&self, wait: Duration) -> bool {
        matches!(
            self.stop.recv_timeout(wait),
            Ok(()) | Err(RecvTimeoutError::Disconnected)
        )
    }
}

/// Lowercase hexadecimal.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_a_second_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(u32::MAX), RETRY_DELAY_MAX);
    }

    #[test]
    fn a_body_is_the_lines_as_one_array() {
        let mut batch = Batch::new(Some(Cursor {
            inode: 7,
            offset: 120,
        }));
        assert_eq!(batch.body(), b"[]");
        batch.events.push(br#"{"event":"received"}"#.to_vec());
        batch.events.push(br#"{"event":"delivered"}"#.to_vec());
        let body: serde_json::Value = serde_json::from_slice(&batch.body()).unwrap();
        assert_eq!(body[1]["event"], "delivered");
        assert_eq!(batch.id("crm"), "crm-7-120");
    }

    #[test]
    fn the_signature_is_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let tag = hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
