//! Webhooks: the event log posted to HTTP(S) endpoints, in batches of
//! JSON, from the file itself.
//!
//! The event log file is the durable queue. Each `[[webhook]]` has a
//! thread of its own, off the shards, that follows the file like
//! `tail -F` ([`tail`]), gathers up to `batch_size` events of the kinds
//! it wants (waiting at most `batch_wait` for a batch to fill), and posts
//! them as one JSON array, the lines as the log has them. Only a `2xx`
//! answer moves the webhook's [`cursor`] (inode and offset, in
//! `<spool>/webhooks/<name>.cursor`); any other answer, or none, is
//! tried again, the same batch, after [`retry_delay`]: 1 s doubling to a
//! minute, for as long as it takes. An endpoint down for an hour, or
//! baton stopped meanwhile, loses nothing: the events wait in the file.
//!
//! Delivery is at least once: a batch the endpoint took but whose cursor
//! was not stored (a crash in between, or an answer lost) is posted
//! again, with the same [`BATCH_HEADER`] value so that the receiver can
//! drop the repeat. The body is signed with HMAC-SHA256 when a secret is
//! configured: `X-Baton-Signature: sha256=<hex>`, over the exact bytes.
//!
//! The shards never wait on a webhook; a slow endpoint only lets the
//! file get ahead of its cursor ([`Stats::lag_bytes`]).
//!
//! [`BATCH_HEADER`]: crate::config::BATCH_HEADER

#![forbid(unsafe_code)]

pub mod cursor;
mod sender;
pub mod tail;

use std::io;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crossbeam_channel::Sender as StopSender;

use crate::config::WebhookConfig;

pub use sender::{retry_delay, RETRY_DELAY_INITIAL, RETRY_DELAY_MAX};

/// Where the cursors live, under the spool directory.
pub const CURSOR_DIR: &str = "webhooks";

/// One webhook's counters, for the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events the endpoint acknowledged (`2xx`).
    pub sent: AtomicU64,
    /// Posts that failed: no answer, or not `2xx`.
    pub failed: AtomicU64,
    /// Bytes of the event log not yet acknowledged, as last measured.
    pub lag_bytes: AtomicU64,
}

/// The webhooks' threads, and their counters by name.
#[derive(Debug, Default)]
pub struct Webhooks {
    stats: Vec<(String, Arc<Stats>)>,
    /// Dropped to stop the threads: their waits end at once.
    stop: Mutex<Option<StopSender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Webhooks {
    /// None: no `[[webhook]]`.
    pub fn none() -> Webhooks {
        Webhooks::default()
    }

    /// Starts one thread per webhook, following the event log at
    /// `events`, each resuming from its cursor in `spool/webhooks/`.
    pub fn start(hooks: &[WebhookConfig], events: &Path, spool: &Path) -> io::Result<Webhooks> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let mut webhooks = Webhooks::none();
        let dir = spool.join(CURSOR_DIR);
        for (i, config) in hooks.iter().enumerate() {
            let name = config.label(i);
            let stats = Arc::new(Stats::default());
            let sender = sender::Sender::new(
                &name,
                config,
                events,
                &dir,
                Arc::clone(&stats),
                stopped.clone(),
            )
            .map_err(|err| io::Error::new(err.kind(), format!("webhook {name}: {err}")))?;
            let thread = thread::Builder::new()
                .name(format!("webhook-{name}"))
                .spawn(move || sender.run())?;
            webhooks
                .threads
                .get_mut()
                .expect("not shared yet")
                .push(thread);
            webhooks.stats.push((name, stats));
        }
        *webhooks.stop.get_mut().expect("not shared yet") = Some(stop);
        Ok(webhooks)
    }

    /// Each webhook's name and counters, in configuration order.
    pub fn stats(&self) -> impl Iterator<Item = (&str, &Stats)> {
        self.stats
            .iter()
            .map(|(name, stats)| (name.as_str(), &**stats))
    }

    /// Stops the threads and waits for them: a post under way finishes
    /// (within its `timeout`); a batch waiting to be retried is left to
    /// the next start, its events still after the cursor.
    pub fn stop(&self) {
        self.stop.lock().expect("webhook stop lock").take();
        let threads = std::mem::take(&mut *self.threads.lock().expect("webhook threads lock"));
        for thread in threads {
            // A panicking thread has nothing more to send.
            let _ = thread.join();
        }
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.stop();
    }
}
