//! Shards: one thread per core, each with its own io_uring ring, listening
//! sockets, SMTP sessions and spool writer.
//!
//! - `ring`: the io_uring wrapper; with the spool's mapping, the only
//!   `unsafe` in baton.
//! - `token`: what a completion belongs to.
//! - `conn`: connection slots that own sockets, sessions and buffers.
//! - `listener`: `SO_REUSEPORT` sockets, one per listener per shard, so the
//!   kernel spreads connections over the shards.
//! - `event_loop`: the completion-driven loop: inbound sessions, spool.
//! - `outbound`: delivery connections, driven by the same loop.
//! - `settle`: what an attempt's outcomes become: spool records,
//!   deferrals, logs, notifications.
//! - `inject`: messages injected over HTTP (`crate::http::inject`),
//!   finished and stored as SMTP's are.
//! - `operator`: queue flush, delete and bounce for the admin API.
//! - `queue_id`: queue id generation.

mod conn;
mod event_loop;
mod inject;
mod listener;
mod operator;
mod outbound;
pub mod queue_id;
mod ring;
mod settle;
mod token;

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::admin::{AdminReply, AdminRequest};
use crate::dns::Resolution;
use crate::server::Server;

pub use ring::raise_descriptor_limit;
pub(crate) use ring::EventFd;
pub(crate) use settle::reply_text;

/// What other threads tell a shard.
pub enum ShardMsg {
    /// The resolver's answer for an outbound connection of this shard.
    Resolved { conn: u64, resolution: Resolution },
    /// The MTA-STS policy for an outbound connection of this shard.
    Policy {
        conn: u64,
        policy: Option<Arc<crate::tls::mta_sts::Policy>>,
    },
    /// An idle connection of this shard has work in its ready queue.
    Work { conn: u64 },
    /// A message of an inbound session, back from the signing threads.
    Signed {
        conn: u64,
        message: Box<crate::inbound::ReceivedMessage>,
    },
    /// The verdict on an inbound session's AUTH credentials.
    AuthVerdict {
        conn: u64,
        verdict: crate::auth::verify::Verdict,
    },
    /// Messages injected over HTTP, to finish and store; the outcome goes
    /// back on the injection's channel once they are durable.
    Inject(Box<crate::http::inject::Injection>),
    /// Message `index` of injection `batch`, back from the signing threads.
    InjectSigned {
        batch: u64,
        index: usize,
        message: Box<crate::inbound::ReceivedMessage>,
    },
    /// The cluster granted rate tokens: connections waiting for one try
    /// now rather than at the next sweep.
    RateTokens,
    /// An operator's request (delete, bounce, flush) that needs a spool
    /// writer; the answer goes back on the channel.
    Admin(AdminRequest, Sender<AdminReply>),
}

/// How to reach a shard from another thread: its inbox and its wake-up.
pub struct ShardLink {
    tx: Sender<ShardMsg>,
    waker: Arc<EventFd>,
}

impl ShardLink {
    /// A link, and the inbox the shard reads.
    pub fn new() -> io::Result<(ShardLink, Receiver<ShardMsg>)> {
        let (tx, rx) = unbounded();
        let link = ShardLink {
            tx,
            waker: Arc::new(EventFd::new()?),
        };
        Ok((link, rx))
    }

    /// Delivers a message and wakes the shard.
    pub fn send(&self, msg: ShardMsg) {
        if self.tx.send(msg).is_ok() {
            self.waker.wake();
        }
    }
}

/// A running shard.
pub struct ShardHandle {
    pub id: usize,
    waker: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl ShardHandle {
    /// Wakes the shard so it notices a change (shutdown).
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Waits for the shard's thread to end.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(shard = self.id, "shard thread panicked");
            }
        }
    }
}

/// Starts one shard per configured core. Returns once every shard listens,
/// or with the first shard's setup error.
pub fn start(
    server: &Arc<Server>,
    inboxes: Vec<Receiver<ShardMsg>>,
) -> io::Result<Vec<ShardHandle>> {
    for l in &server.config.listeners {
        listener::check_free(l.address)
            .map_err(|err| io::Error::new(err.kind(), format!("listen on {}: {err}", l.address)))?;
    }
    let count = inboxes.len();
    // All shards start at once: each waits for its first spool segment, and
    // their requests then reach the segment preparer side by side.
    let mut starting = Vec::with_capacity(count);
    for (id, inbox) in inboxes.into_iter().enumerate() {
        let waker = server.links[id].waker.clone();
        let (ready_tx, ready_rx) = bounded(1);
        let thread_server = server.clone();
        let thread_waker = waker.clone();
        let thread = thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || event_loop::run(id, thread_server, thread_waker, inbox, ready_tx))?;
        starting.push((id, waker, thread, ready_rx));
    }
    let mut handles = Vec::with_capacity(count);
    let mut failure = None;
    for (id, waker, thread, ready_rx) in starting {
        let handle = ShardHandle {
            id,
            waker,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => handles.push(handle),
            Ok(Err(err)) => {
                handle.join();
                failure.get_or_insert(err);
            }
            Err(_) => {
                handle.join();
                failure.get_or_insert(io::Error::other(format!("shard {id} failed to start")));
            }
        }
    }
    if let Some(err) = failure {
        // Stop the shards that did start before reporting the error.
        server
            .shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        for handle in &handles {
            handle.wake();
        }
        for handle in handles {
            handle.join();
        }
        return Err(err);
    }
    Ok(handles)
}
