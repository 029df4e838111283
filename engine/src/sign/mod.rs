//! What baton does to a message before it stores it, for clients it
//! trusts (authenticated users and `[relay] networks`): header fix-ups
//! (`Message-ID` and `Date` when missing, in the session: `fixups.rs`) and
//! DKIM signatures (`dkim.rs`), made here, off the shards.
//!
//! A message is signed once, at reception, before it is appended to the
//! spool: one with recipients at many destinations is signed once and
//! stored signed. Signing RSA-2048 costs about 250 µs, which would
//! stall a shard's ring, so the shard hands the message to
//! `[dkim_defaults] sign_threads` threads and appends it when it comes
//! back through its inbox; the client's `250` still waits for the datasync
//! that covers the signed record. An Ed25519 signature costs some 17 µs,
//! less than the two thread hand-offs it would need, so a domain whose
//! keys are all Ed25519 is signed on the shard ([`Signing::cost`]).

use std::sync::Arc;
use std::thread;

use arc_swap::ArcSwap;
use crossbeam_channel::{unbounded, Sender};

pub mod dkim;
pub mod fixups;
mod keys;

pub use keys::Ed25519Key;

use crate::inbound::ReceivedMessage;
pub use dkim::{KeyError, Keys};

type Reply = Box<dyn FnOnce(ReceivedMessage) + Send>;

struct Job {
    message: ReceivedMessage,
    domain: String,
    reply: Reply,
}

/// See [`Signing::cost`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// No key for the domain: the message goes unsigned.
    NoKey,
    /// Ed25519 only: tens of microseconds, signed on the shard.
    Cheap,
    /// An RSA key: about 250 µs, signed on a signing thread.
    Costly,
}

/// The signing keys and the threads that use them.
pub struct Signing {
    keys: Arc<ArcSwap<Keys>>,
    jobs: Sender<Job>,
}

impl Signing {
    pub fn start(keys: Keys, threads: usize) -> Signing {
        let keys = Arc::new(ArcSwap::from_pointee(keys));
        let (jobs, rx) = unbounded::<Job>();
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            let keys = keys.clone();
            thread::Builder::new()
                .name(format!("dkim-sign-{n}"))
                .spawn(move || {
                    for job in rx {
                        let message = sign(&keys.load(), job.message, &job.domain);
                        (job.reply)(message);
                    }
                })
                .expect("spawn a signing thread");
        }
        Signing { keys, jobs }
    }

    /// Replaces the keys (a reload); messages being signed finish with
    /// the old ones.
    pub fn replace_keys(&self, keys: Keys) {
        self.keys.store(Arc::new(keys));
    }

    /// What signing mail from `domain` costs, which decides where it is
    /// signed.
    pub fn cost(&self, domain: &str) -> Cost {
        let keys = self.keys.load();
        let keys = keys.for_domain(domain);
        if keys.is_empty() {
            Cost::NoKey
        } else if keys
            .iter()
            .all(|key| key.algorithm == crate::config::DkimAlgorithm::Ed25519Sha256)
        {
            Cost::Cheap
        } else {
            Cost::Costly
        }
    }

    /// Signs `message` on the calling thread: for [`Cost::Cheap`] keys.
    pub fn sign_now(&self, message: ReceivedMessage, domain: &str) -> ReceivedMessage {
        sign(&self.keys.load(), message, domain)
    }

    /// Signs `message` (its `From:` domain is `domain`) on a signing
    /// thread; `reply` gets it back, signed, with `dkim` saying how.
    pub fn sign(
        &self,
        message: ReceivedMessage,
        domain: String,
        reply: impl FnOnce(ReceivedMessage) + Send + 'static,
    ) {
        let job = Job {
            message,
            domain,
            reply: Box::new(reply),
        };
        if let Err(err) = self.jobs.send(job) {
            // The threads are gone only at exit: store it unsigned.
            let job = err.0;
            (job.reply)(job.message);
        }
    }
}

/// Prepends a `DKIM-Signature:` per key of `domain` to the message's wire
/// form, and records in `dkim` what was done.
fn sign(keys: &Keys, mut message: ReceivedMessage, domain: &str) -> ReceivedMessage {
    let keys = keys.for_domain(domain);
    if keys.is_empty() {
        message.dkim = Some(format!("none: no key for {domain}"));
        return message;
    }
    let text = dkim::unstuff(&message.body);
    let mut headers = String::new();
    let mut notes = Vec::new();
    for key in keys {
        match key.sign(&text) {
            Ok(header) => {
                headers.push_str(&header);
                notes.push(format!(
                    "d={} s={} a={}",
                    key.domain,
                    key.selector,
                    key.algorithm.as_str()
                ));
            }
            Err(err) => {
                tracing::error!(domain = %key.domain, selector = %key.selector, %err, "DKIM signing failed; the message goes unsigned by this key");
                notes.push(format!(
                    "failed: d={} s={}: {err}",
                    key.domain, key.selector
                ));
            }
        }
    }
    if !headers.is_empty() {
        let mut body = Vec::with_capacity(headers.len() + message.body.len());
        body.extend_from_slice(headers.as_bytes());
        body.extend_from_slice(&message.body);
        message.body = body;
    }
    message.dkim = Some(notes.join(", "));
    message
}
