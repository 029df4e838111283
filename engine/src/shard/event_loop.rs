//! The shard's completion-driven loop.
//!
//! Submit a batch, wait (at most until the next timeout sweep), drain the
//! completions, step the state machines they belong to, submit again.
//! Spool writes and datasyncs go through the same ring: a session whose
//! message was appended waits, without blocking anything, until the
//! datasync that covers it completes; only then does it answer `250`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_spool::{Gate, Io, NewMessage, QueueId, Status, SyncOp, Ticket, WriteOp, Writer};
use crossbeam_channel::{Receiver, Sender};

use crate::admin::AdminReply;
use crate::auth::verify::{Identity, Verdict};
use crate::config::ListenerTls;
use crate::config::SuppressionAction;
use crate::delivery::events::{Event as LogEvent, EventKind};
use crate::delivery::settle::Held;
use crate::inbound::{
    Phase, ReceivedMessage, Session, SessionContext, StoreError, Suppression,
    IDLE_BUFFER_KEEP_BYTES,
};
use crate::log_limit::LogLimit;
use crate::policy::suppression::Reader as SuppressionReader;
use crate::queue::QueuedRecipient;
use crate::route::{destination_of, Destination};
use crate::server::{unix_ms, Server};
use crate::sign::Cost as SignCost;
use crate::tls::{TlsInfo, TLS_BUFFER_BYTES_MAX};

use super::conn::{Conn, Slots, TlsStep};
use super::listener;
use super::outbound::OutConn;
use super::queue_id::QueueIdGen;
use super::ring::{pin_to_cpu, BufRing, Completion, EventFd, LentBuf, Ring};
use super::token::{ConnKey, Token};
use super::ShardMsg;

/// How often timeouts are checked; also the longest wait for completions.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Rounds of reaping and submitting between two waits; bounds the time
/// before timeouts and shutdown are looked at.
const ROUNDS_PER_WAIT_MAX: usize = 64;
/// Message data is judged against `limits.data_rate_min` once the message
/// has taken this long: a slow start (a client's first packets, a
/// congested link for a moment) is not a slow client.
const DATA_RATE_GRACE: Duration = Duration::from_secs(10);
/// How long a listener stops accepting after running out of descriptors.
/// The sweep resumes it, so the pause lasts up to one sweep longer.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line per this interval about failed accepts.
/// How long a shutting-down shard waits for sessions to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn run(
    id: usize,
    server: Arc<Server>,
    waker: Arc<EventFd>,
    inbox: Receiver<ShardMsg>,
    ready: Sender<io::Result<()>>,
) {
    let mut shard = match Shard::new(id, server, waker, inbox) {
        Ok(shard) => {
            let _ = ready.send(Ok(()));
            shard
        }
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    if let Err(err) = shard.run() {
        tracing::error!(shard = id, %err, "shard stopped on an I/O error");
    }
}

enum SpoolOp {
    Write(WriteOp),
    Sync(SyncOp),
}

/// A message appended to the spool, waiting for the datasync that covers it.
pub(super) struct PendingStore {
    /// Who waits for the datasync.
    pub waiter: Waiter,
    pub queue_id: QueueId,
    pub recipients: Vec<(Destination, u32)>,
    pub size: usize,
    pub sender: String,
    /// The client's address as text (made once per connection).
    pub peer: Option<Arc<str>>,
    /// How the message arrived over TLS, if it did.
    pub tls: Option<TlsInfo>,
    /// The user the client authenticated as; empty if it did not.
    pub user: String,
    /// What DKIM signing did, for mail from trusted clients.
    pub dkim: Option<String>,
    /// For the `received` event, when there is an event log.
    pub about: Option<Box<Received>>,
}

/// Who waits for a message's datasync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Waiter {
    /// A notification baton wrote itself: nobody.
    Nobody,
    /// The session waiting for its `250`.
    Session(ConnKey),
    /// Message `index` of HTTP injection `batch` (`inject.rs`).
    Injection { batch: u64, index: usize },
}

/// What the `received` event says beside the store's own fields.
pub(super) struct Received {
    pub recipients: Vec<String>,
    pub helo: String,
    pub message_id: Option<String>,
    /// `http` for injected mail; `None` for SMTP.
    pub protocol: Option<&'static str>,
}

#[derive(Clone, Copy)]
enum Direction {
    Recv,
    Send,
}

struct Listener {
    fd: Option<OwnedFd>,
    address: SocketAddr,
    armed: bool,
    /// Accepting paused (descriptors or memory ran out) until then.
    paused_until: Option<Instant>,
}

/// The shard's repeated log lines, each limited to one per interval.
#[derive(Debug, Default)]
pub(super) struct ShardLogs {
    pub accept: LogLimit,
    pub store_full: LogLimit,
    pub store_failed: LogLimit,
    pub outcome_failed: LogLimit,
    pub bounce_failed: LogLimit,
    pub read_failed: LogLimit,
    /// A next hop refused the route's credentials (a wrong password
    /// repeats on every connection until the operator fixes it).
    pub auth_failed: LogLimit,
    /// Credentials withheld (no TLS) or no mechanism offered.
    pub auth_unavailable: LogLimit,
    /// Clients whose AUTH failed (SMTP AUTH in).
    pub auth_in_failed: LogLimit,
    /// Destinations no pool source may send to now (warm-up).
    pub warmup_spent: LogLimit,
}

pub(super) struct Shard {
    pub(super) id: usize,
    pub(super) server: Arc<Server>,
    pub(super) ring: Ring,
    /// Receive buffers, lent per completion (`ring.rs`).
    pub(super) bufs: BufRing,
    /// Receives that found `bufs` empty, to arm again once buffers are
    /// back: `Token::Recv` and `Token::OutRecv`.
    pub(super) starved: Vec<Token>,
    /// A buffer went back to `bufs` since `starved` was last retried.
    bufs_returned: bool,
    pub(super) writer: Writer,
    listeners: Vec<Listener>,
    waker: Arc<EventFd>,
    inbox: Receiver<ShardMsg>,
    /// Borrowed by the kernel while `wake_armed`.
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    conns: Slots<Conn>,
    /// Delivery connections (`outbound.rs`).
    pub(super) outs: Slots<OutConn>,
    spool_ops: HashMap<u64, SpoolOp>,
    spool_seq: u64,
    /// Messages appended, waiting for the datasync before their `250`.
    pub(super) stores: Gate<PendingStore>,
    /// Outcomes that wait for their message's notification to be durable
    /// (`delivery::settle`).
    pub(super) held: Gate<Held>,
    pub(super) queue_ids: QueueIdGen,
    /// The latest ticket of an outcome or notification this shard wrote.
    pub(super) last_ticket: Ticket,
    /// Operator requests answered once this ticket is durable.
    admin_waits: VecDeque<(Ticket, Sender<AdminReply>, AdminReply)>,
    pub(super) draining: Option<Instant>,
    completions: Vec<Completion>,
    /// Accepts that failed since the last log line about them.
    /// Repeated log lines, one per interval each.
    pub(super) logs: ShardLogs,
    /// This shard's snapshot of the suppression list, for `RCPT`.
    pub(super) suppression: Option<SuppressionReader>,
    /// HTTP injections waiting for their messages' datasync (`inject.rs`).
    pub(super) injections: super::inject::Injections,
}

/// What the session sees of the shard: the clock, queue ids, and the
/// users' message rates.
pub(super) struct Ctx<'a> {
    pub queue_ids: &'a mut QueueIdGen,
    pub server: &'a Server,
    pub suppression: &'a mut Option<SuppressionReader>,
}

impl SessionContext for Ctx<'_> {
    fn now_unix_secs(&self) -> u64 {
        unix_ms() / 1000
    }

    fn next_queue_id(&mut self) -> QueueId {
        self.queue_ids.next(unix_ms())
    }

    fn take_user_message(&mut self, identity: &Identity) -> bool {
        self.server
            .verifier
            .as_ref()
            .is_none_or(|verifier| verifier.take_message(identity))
    }

    fn suppressed(
        &mut self,
        recipient: &[u8],
        sender_domain: &[u8],
        user: Option<&str>,
    ) -> Option<Suppression> {
        let hit = self
            .suppression
            .as_mut()?
            .lookup(recipient, sender_domain, user)?;
        self.server
            .metrics
            .recipients_suppressed
            .fetch_add(1, Ordering::Relaxed);
        match self.server.live().config.suppression.action {
            SuppressionAction::Reject => Some(Suppression::Reject),
            SuppressionAction::Drop => {
                let events = &self.server.events;
                if events.is_enabled() {
                    let mut event = LogEvent::new(EventKind::Suppressed, unix_ms(), "");
                    event.recipient = Some(recipient);
                    event.scope = Some(hit.scope());
                    event.source = Some(hit.source().as_str());
                    event.reason = Some(hit.reason());
                    event.user = user;
                    events.record(&event);
                }
                tracing::info!(
                    to = %String::from_utf8_lossy(recipient),
                    scope = hit.scope(),
                    user = user.unwrap_or(""),
                    "suppressed recipient dropped"
                );
                Some(Suppression::Drop)
            }
        }
    }

    fn unsubscribe_fields(
        &mut self,
        recipient: &[u8],
        sender_domain: &[u8],
        identity: Option<&Identity>,
        queue_id: QueueId,
    ) -> Option<String> {
        let links = self.server.unsubscribe.as_ref()?;
        let sender_domain = std::str::from_utf8(sender_domain).ok()?;
        let scope = links.scope_for(sender_domain, identity)?;
        let recipient = std::str::from_utf8(recipient).ok()?;
        Some(links.fields(recipient, &scope, queue_id, unix_ms() / 1000))
    }
}

impl Shard {
    fn new(
        id: usize,
        server: Arc<Server>,
        waker: Arc<EventFd>,
        inbox: Receiver<ShardMsg>,
    ) -> io::Result<Shard> {
        if server.config.server.pin_cores {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if let Err(err) = pin_to_cpu(id % cores) {
                tracing::warn!(shard = id, %err, "could not pin the shard to a core");
            }
        }
        let ring = Ring::new(
            server.config.server.ring_entries,
            server.config.server.sqpoll,
        )?;
        let bufs = BufRing::new(&ring).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("provided buffer ring (Linux 5.19 or later): {err}"),
            )
        })?;
        let mut listeners = Vec::new();
        for l in &server.config.listeners {
            let fd = listener::bind(l.address).map_err(|err| {
                io::Error::new(err.kind(), format!("listen on {}: {err}", l.address))
            })?;
            listeners.push(Listener {
                fd: Some(fd),
                address: l.address,
                armed: false,
                paused_until: None,
            });
        }
        let writer = server
            .spool
            .writer(id as u16)
            .map_err(|err| io::Error::other(format!("spool writer {id}: {err}")))?;
        let queue_ids = QueueIdGen::new(id, server.queue_id_floor);
        let suppression = server.suppression.as_ref().map(|list| list.reader());
        let mut shard = Shard {
            id,
            server,
            ring,
            bufs,
            starved: Vec::new(),
            bufs_returned: false,
            writer,
            listeners,
            waker,
            inbox,
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
            conns: Slots::default(),
            outs: Slots::default(),
            spool_ops: HashMap::new(),
            spool_seq: 0,
            stores: Gate::default(),
            held: Gate::default(),
            queue_ids,
            last_ticket: Ticket(0),
            admin_waits: VecDeque::new(),
            draining: None,
            completions: Vec::with_capacity(1024),
            logs: ShardLogs::default(),
            suppression,
            injections: Default::default(),
        };
        for index in 0..shard.listeners.len() {
            shard.arm_accept(index)?;
        }
        shard.arm_wake()?;
        for l in &shard.listeners {
            tracing::debug!(shard = id, address = %l.address, "listening");
        }
        Ok(shard)
    }

    fn run(&mut self) -> io::Result<()> {
        let mut last_sweep = Instant::now();
        loop {
            self.read_inbox();
            self.drive_spool()?;
            let wait = SWEEP_INTERVAL.saturating_sub(last_sweep.elapsed());
            self.ring
                .submit_and_wait(wait.max(Duration::from_millis(1)))?;
            // Keep stepping while completions keep coming, submitting what
            // each round produced at once: a write's completion starts the
            // datasync, a datasync's completion sends the replies, without
            // a trip through the wait.
            for _ in 0..ROUNDS_PER_WAIT_MAX {
                let mut completions = std::mem::take(&mut self.completions);
                self.ring.reap(&mut completions);
                let reaped = !completions.is_empty();
                for c in completions.drain(..) {
                    self.complete(c)?;
                }
                self.completions = completions;
                if self.bufs_returned {
                    self.retry_starved();
                }
                if !reaped {
                    break;
                }
                self.read_inbox();
                self.drive_spool()?;
                self.ring.submit()?;
            }
            if last_sweep.elapsed() >= SWEEP_INTERVAL {
                last_sweep = Instant::now();
                self.sweep()?;
            }
            if self.draining.is_none() && self.server.shutting_down.load(Ordering::Acquire) {
                self.begin_drain()?;
            }
            if let Some(started) = self.draining {
                if self.idle() {
                    break;
                }
                if started.elapsed() > DRAIN_TIMEOUT {
                    tracing::warn!(
                        shard = self.id,
                        conns = self.conns.len(),
                        "shutdown: sessions still open after the drain timeout"
                    );
                    break;
                }
            }
        }
        self.finish()
    }

    fn idle(&self) -> bool {
        self.conns.len() == 0
            && self.outs.len() == 0
            && self.spool_ops.is_empty()
            && self.stores.is_empty()
            && self.held.is_empty()
            && self.injections.is_empty()
            && self.listeners.iter().all(|l| !l.armed)
    }

    /// Leaves the ring with nothing that borrows shard memory in flight.
    fn finish(&mut self) -> io::Result<()> {
        if self.wake_armed {
            // The kernel may still write the 8 bytes after the ring is gone:
            // leave them allocated.
            let buf = std::mem::replace(&mut self.wake_buf, Box::new([0; 8]));
            Box::leak(buf);
        }
        tracing::info!(
            shard = self.id,
            durable = self.writer.durable().0,
            "shard stopped"
        );
        Ok(())
    }

    fn complete(&mut self, c: Completion) -> io::Result<()> {
        match Token::decode(c.token) {
            Some(Token::Accept(index)) => self.accepted(index, c),
            Some(Token::Wake) => {
                self.wake_armed = false;
                if self.draining.is_none() {
                    self.arm_wake()?;
                }
                Ok(())
            }
            Some(Token::Recv(key)) => {
                let buf = self.lend(&c);
                let result = self.received(key, c.result, buf.as_deref());
                self.give_back(buf);
                result
            }
            Some(Token::Send(key)) => self.sent(key, c.result),
            Some(Token::Cancel) | None => Ok(()),
            Some(Token::Spool(seq)) => self.spool_done(seq, c.result),
            Some(Token::Connect(key)) => {
                self.connected(key, c.result);
                Ok(())
            }
            Some(Token::OutRecv(key)) => {
                let buf = self.lend(&c);
                self.out_received(key, c.result, buf.as_deref());
                self.give_back(buf);
                Ok(())
            }
            Some(Token::OutSend(key)) => {
                self.out_sent(key, c.result);
                Ok(())
            }
        }
    }

    /// The receive buffer a completion filled, if it names one. It goes
    /// back to the ring with [`Shard::give_back`] once the completion has
    /// been handled: what a session keeps of it, it copies.
    fn lend(&self, c: &Completion) -> Option<LentBuf> {
        let bid = c.buffer()?;
        Some(self.bufs.lend(bid, c.result.max(0) as usize))
    }

    fn give_back(&mut self, buf: Option<LentBuf>) {
        if let Some(buf) = buf {
            self.bufs.give_back(buf);
            self.bufs_returned = true;
        }
    }

    /// A receive failed with `ENOBUFS`: the buffer ring was empty. Armed
    /// again once buffers are back ([`Shard::retry_starved`]), not at
    /// once, which would fail again at once.
    pub(super) fn starve(&mut self, token: Token) {
        self.starved.push(token);
    }

    /// Arms again the receives that found the buffer ring empty.
    fn retry_starved(&mut self) {
        self.bufs_returned = false;
        for token in std::mem::take(&mut self.starved) {
            match token {
                Token::Recv(key) => {
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.recv_starved = false;
                        self.progress(key);
                    }
                }
                Token::OutRecv(key) => self.out_unstarve(key),
                _ => {}
            }
        }
    }

    /// Handles what other threads sent: resolver answers, wake-ups of idle
    /// delivery connections, operator requests.
    fn read_inbox(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                ShardMsg::Resolved { conn, resolution } => {
                    self.resolved(ConnKey::from_u64(conn), resolution);
                }
                ShardMsg::Work { conn } => self.out_work(ConnKey::from_u64(conn)),
                ShardMsg::RateTokens => self.out_rate_tokens(),
                ShardMsg::Signed { conn, message } => {
                    self.signed(ConnKey::from_u64(conn), *message);
                }
                ShardMsg::AuthVerdict { conn, verdict } => {
                    self.auth_verdict(ConnKey::from_u64(conn), verdict);
                }
                ShardMsg::Policy { conn, policy } => {
                    self.out_policy(ConnKey::from_u64(conn), policy);
                }
                ShardMsg::Inject(injection) => self.inject(*injection),
                ShardMsg::InjectSigned {
                    batch,
                    index,
                    message,
                } => self.inject_store(batch, index, *message),
                ShardMsg::Admin(request, reply) => {
                    // Answered once what it recorded is durable: "deleted"
                    // must survive a crash.
                    let answer = self.admin(request);
                    self.admin_waits
                        .push_back((self.last_ticket, reply, answer));
                    self.finish_stores();
                }
            }
        }
    }

    // --- accepting -------------------------------------------------------

    fn arm_accept(&mut self, index: usize) -> io::Result<()> {
        let listener = &mut self.listeners[index];
        let Some(fd) = &listener.fd else {
            return Ok(());
        };
        self.ring
            .accept_multi(fd.as_raw_fd(), Token::Accept(index).encode())?;
        listener.armed = true;
        Ok(())
    }

    fn accepted(&mut self, index: usize, c: Completion) -> io::Result<()> {
        // Out of descriptors or memory: accepting again at once would fail
        // again at once (a spin, and a log line each time); pause, and let
        // the sweep start accepting again.
        let exhausted =
            [-libc::EMFILE, -libc::ENFILE, -libc::ENOBUFS, -libc::ENOMEM].contains(&c.result);
        if exhausted {
            let listener = &mut self.listeners[index];
            listener.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
            if c.more() && listener.armed {
                self.ring
                    .cancel(Token::Accept(index).encode(), Token::Cancel.encode())?;
            }
        }
        if !c.more() {
            let listener = &mut self.listeners[index];
            listener.armed = false;
            if self.draining.is_some() {
                listener.fd = None;
            } else if listener.paused_until.is_none() {
                self.arm_accept(index)?;
            }
        }
        if c.result < 0 {
            if c.result != -libc::ECANCELED {
                self.accept_failed(io::Error::from_raw_os_error(-c.result));
            }
            return Ok(());
        }
        // SAFETY: a successful accept returns a new descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(c.result) };
        self.open(fd, index);
        Ok(())
    }

    /// Logs a failed accept: the first at once, the rest as one line with
    /// their count per [`crate::log_limit::LOG_INTERVAL`].
    fn accept_failed(&mut self, err: io::Error) {
        if let Some(failures) = self.logs.accept.hit() {
            tracing::warn!(
                shard = self.id,
                %err,
                failures,
                "accept failed; accepting paused for {ACCEPT_PAUSE:?} when out of descriptors"
            );
        }
    }

    /// Starts accepting again on listeners whose pause is over.
    fn resume_accepts(&mut self, now: Instant) -> io::Result<()> {
        for index in 0..self.listeners.len() {
            let listener = &mut self.listeners[index];
            let over = listener.paused_until.is_some_and(|until| now >= until);
            if over {
                listener.paused_until = None;
                if !listener.armed && self.draining.is_none() {
                    self.arm_accept(index)?;
                }
            }
        }
        Ok(())
    }

    fn open(&mut self, fd: OwnedFd, listener: usize) {
        let socket = socket2::SockRef::from(&fd);
        let (Some(peer), Some(local)) = (
            socket.peer_addr().ok().and_then(|a| a.as_socket()),
            socket.local_addr().ok().and_then(|a| a.as_socket()),
        ) else {
            return; // the client is already gone
        };
        let _ = socket.set_tcp_nodelay(true);
        if self.draining.is_some() {
            return;
        }
        let Some(key) = self.conns.vacant() else {
            return;
        };
        let server = self.server.clone();
        let limits = &server.config.limits;
        let config = server.session_configs[listener].clone();
        let implicit_tls = server.listener_tls[listener] == ListenerTls::Implicit;
        let mut counted_ip = None;
        let session = if server.is_draining() {
            server
                .metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            Session::refused(config, "Service not available: draining to another node")
        } else if self.conns.len() >= limits.connections_per_shard_max {
            server
                .metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            Session::refused(config, "Error: too many connections")
        } else if !server.count_connection(peer.ip()) {
            server
                .metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            Session::refused(config, "Error: too many connections from your address")
        } else {
            counted_ip = Some(peer.ip());
            server
                .metrics
                .connections_accepted
                .fetch_add(1, Ordering::Relaxed);
            Session::new(config, peer, local, server.config.relay.allows(peer.ip()))
        };
        let deadline = Instant::now() + limits.command_timeout;
        let mut conn = Conn::new(key, fd, peer, session, deadline);
        if implicit_tls && counted_ip.is_some() {
            // RFC 8314 §3.3: the handshake first; the greeting waits in
            // rustls until it is done.
            let Some(tls) = new_tls(&server) else {
                return;
            };
            conn.tls = Some(tls);
            conn.session.tls_started();
            conn.deadline = Instant::now() + server.config.tls.handshake_timeout;
        }
        conn.counted_ip = counted_ip;
        self.conns.insert(conn);
        self.progress(key);
    }

    // --- one connection --------------------------------------------------

    fn received(&mut self, key: ConnKey, result: i32, data: Option<&[u8]>) -> io::Result<()> {
        if result == -libc::ENOBUFS {
            if let Some(conn) = self.conns.get_mut(key).filter(|conn| !conn.dead) {
                conn.recv_in_flight = false;
                conn.recv_starved = true;
                self.starve(Token::Recv(key));
                return Ok(());
            }
        }
        let Some(n) = self.settle(key, result, Direction::Recv) else {
            return Ok(());
        };
        // A receive with data always names its buffer.
        let Some(data) = data.filter(|data| data.len() == n) else {
            self.kill(key);
            return Ok(());
        };
        let conn = self.conns.get_mut(key).expect("settled connections live");
        let mut ctx = Ctx {
            queue_ids: &mut self.queue_ids,
            server: &self.server,
            suppression: &mut self.suppression,
        };
        let output_before = conn.session.output().len();
        let phase_before = conn.session.phase();
        let mut established = false;
        if conn.tls.is_none() {
            conn.session.receive(data, &mut ctx);
        } else {
            let metrics = &self.server.metrics;
            match conn.receive_tls(data, &mut ctx) {
                TlsStep::Continue => {}
                TlsStep::Established => {
                    metrics.tls_handshakes_in.fetch_add(1, Ordering::Relaxed);
                    established = true;
                }
                TlsStep::Failed(err) => {
                    if !conn.tls_reported {
                        metrics
                            .tls_handshake_failures_in
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(client = %conn.peer_text, %err, "TLS failed");
                }
                TlsStep::Closed => {
                    self.kill(key);
                    return Ok(());
                }
            }
        }
        let conn = self.conns.get_mut(key).expect("settled connections live");
        // The command timeout runs for a whole command, from the last
        // reply: a client dribbling a command a byte at a time must not
        // outlive it (issue 10). Message data restarts it with each read
        // (RFC 5321 §4.5.3.2.5: per block); a TLS handshake has its own,
        // set when it began.
        let phase = conn.session.phase();
        match (phase_before, phase) {
            (Phase::Data, Phase::Data) => conn.data_bytes += n as u64,
            (_, Phase::Data) => {
                conn.data_since = Some(Instant::now());
                conn.data_bytes = 0;
            }
            _ => conn.data_since = None,
        }
        let replied = conn.session.output().len() > output_before;
        let restart = !conn.handshaking()
            && (established || replied || phase != phase_before || phase == Phase::Data);
        if restart {
            conn.deadline = Instant::now() + timeout_of(&self.server, phase);
        }
        self.progress(key);
        Ok(())
    }

    fn sent(&mut self, key: ConnKey, result: i32) -> io::Result<()> {
        let Some(n) = self.settle(key, result, Direction::Send) else {
            return Ok(());
        };
        let conn = self.conns.get_mut(key).expect("settled connections live");
        conn.send_done += n;
        if conn.send_done == conn.send_buf.len() {
            conn.send_buf.clear();
            conn.send_done = 0;
            // A TLS handshake flight or a burst of replies is not kept
            // by a connection that may now sit idle.
            if conn.send_buf.capacity() > IDLE_BUFFER_KEEP_BYTES {
                conn.send_buf = Vec::new();
            }
        }
        self.progress(key);
        Ok(())
    }

    /// Takes in a receive's or send's completion: the operation no longer
    /// holds the slot's buffer. Returns the byte count if the connection
    /// lives on; a dead connection is freed once nothing is in flight, and
    /// an end of stream or an error (0: the client closed; < 0: reset, or
    /// cancelled) tears it down. A message in DATA is then simply not
    /// accepted; one already appended stays.
    fn settle(&mut self, key: ConnKey, result: i32, direction: Direction) -> Option<usize> {
        let conn = self.conns.get_mut(key)?;
        match direction {
            Direction::Recv => conn.recv_in_flight = false,
            Direction::Send => conn.send_in_flight = false,
        }
        if conn.dead {
            self.reap_if_done(key);
            return None;
        }
        if result <= 0 {
            self.kill(key);
            return None;
        }
        Some(result as usize)
    }

    /// Steps a connection after anything happened to it: stores what the
    /// session completed, sends its replies, reads more, or closes.
    fn progress(&mut self, key: ConnKey) {
        self.take_messages(key);
        self.take_credentials(key);
        let draining = self.draining.is_some();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.dead {
            return;
        }
        if draining && !conn.session.is_closing() && conn.session.phase() != Phase::AwaitingStore {
            conn.session.shut_down();
        }
        if !conn.send_in_flight {
            conn.fill_send_buf();
            if conn.tls.is_none()
                && conn.session.starttls_requested()
                && conn.session.output().is_empty()
            {
                // The `220 Ready to start TLS` is in `send_buf`, in plain
                // text; every byte after it goes through TLS.
                let Some(tls) = new_tls(&self.server) else {
                    return self.kill(key);
                };
                conn.tls = Some(tls);
                conn.deadline = Instant::now() + self.server.config.tls.handshake_timeout;
            }
            if conn.send_done < conn.send_buf.len() {
                let pending = &conn.send_buf[conn.send_done..];
                // SAFETY: `send_buf` belongs to the slot, which is not freed
                // while `send_in_flight`; nothing touches it until then.
                let submitted = unsafe {
                    self.ring.send(
                        conn.fd(),
                        pending.as_ptr(),
                        pending.len().min(u32::MAX as usize) as u32,
                        Token::Send(key).encode(),
                    )
                };
                if submitted.is_err() {
                    return self.kill(key);
                }
                conn.send_in_flight = true;
            }
        }
        if conn.closing() {
            if !conn.send_in_flight {
                self.kill(key);
            }
            return;
        }
        if conn.wants_input() && !conn.recv_in_flight && !conn.recv_starved {
            let submitted = self.ring.recv_select(conn.fd(), Token::Recv(key).encode());
            if submitted.is_err() {
                return self.kill(key);
            }
            conn.recv_in_flight = true;
        }
    }

    /// Tears a connection down: cancels what is in flight, frees the slot
    /// once the completions are in.
    fn kill(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.dead = true;
        if !conn.cancels_sent {
            conn.cancels_sent = true;
            if conn.recv_in_flight {
                let _ = self
                    .ring
                    .cancel(Token::Recv(key).encode(), Token::Cancel.encode());
            }
            if conn.send_in_flight {
                let _ = self
                    .ring
                    .cancel(Token::Send(key).encode(), Token::Cancel.encode());
            }
        }
        self.reap_if_done(key);
    }

    fn reap_if_done(&mut self, key: ConnKey) {
        let done = self
            .conns
            .get_mut(key)
            .is_some_and(|c| c.dead && !c.in_flight());
        if done {
            let conn = self.conns.remove(key).expect("just seen");
            if let Some(ip) = conn.counted_ip {
                self.server.release_connection(ip);
            }
            // Dropping the slot closes the socket.
        }
    }

    // --- AUTH --------------------------------------------------------------

    /// Sends a session's credentials to the verifier; the verdict comes
    /// back through the inbox.
    fn take_credentials(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(credentials) = conn.session.take_credentials() else {
            return;
        };
        let Some(verifier) = &self.server.verifier else {
            // Sessions offer AUTH only when there are users.
            return self.auth_verdict(key, Verdict::Refused);
        };
        let server = self.server.clone();
        let (shard, conn) = (self.id, key.to_u64());
        verifier.verify(credentials, move |verdict| {
            server.links[shard].send(ShardMsg::AuthVerdict { conn, verdict });
        });
    }

    fn auth_verdict(&mut self, key: ConnKey, verdict: Verdict) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // the client left meanwhile
        };
        let metrics = &self.server.metrics;
        match &verdict {
            Verdict::Accepted(identity) => {
                metrics.auth_successes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(client = %conn.peer_text, user = %identity.name, "authenticated");
            }
            Verdict::Refused | Verdict::Throttled | Verdict::CutOff => {
                metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
                if let Some(failures) = self.logs.auth_in_failed.hit() {
                    tracing::warn!(client = %conn.peer_text, verdict = ?verdict, failures, "AUTH failed");
                }
            }
        }
        let mut ctx = Ctx {
            queue_ids: &mut self.queue_ids,
            server: &self.server,
            suppression: &mut self.suppression,
        };
        conn.session.auth_verdict(verdict, &mut ctx);
        self.progress(key);
    }

    // --- storing ---------------------------------------------------------

    fn take_messages(&mut self, key: ConnKey) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Some(mut message) = conn.session.take_message() else {
                return;
            };
            if let Some(domain) = message.sign_domain.clone() {
                match self.server.signing.cost(&domain) {
                    SignCost::NoKey => message.dkim = Some(format!("none: no key for {domain}")),
                    SignCost::Cheap => message = self.server.signing.sign_now(message, &domain),
                    SignCost::Costly => {
                        // Signed off the shard; appended when it comes back.
                        let server = self.server.clone();
                        let (shard, conn) = (self.id, key.to_u64());
                        self.server.signing.sign(message, domain, move |message| {
                            server.links[shard].send(ShardMsg::Signed {
                                conn,
                                message: Box::new(message),
                            });
                        });
                        return;
                    }
                }
            }
            let peer = conn.peer_text.clone();
            if self.store(key, peer, message) {
                return; // the session waits for the datasync
            }
            // Refused at once: the session went on; it may have another.
        }
    }

    /// Appends a message: `true` when the session now waits for the
    /// datasync; `false` when it was refused, which the session is told.
    fn store(&mut self, key: ConnKey, peer: Arc<str>, message: ReceivedMessage) -> bool {
        let Err(err) = self.append(Waiter::Session(key), peer, message) else {
            return true;
        };
        if let Some(conn) = self.conns.get_mut(key) {
            let mut ctx = Ctx {
                queue_ids: &mut self.queue_ids,
                server: &self.server,
                suppression: &mut self.suppression,
            };
            conn.session.stored(Err(err), &mut ctx);
        }
        false
    }

    /// A message back from the signing threads.
    fn signed(&mut self, key: ConnKey, message: ReceivedMessage) {
        let Some(conn) = self.conns.get_mut(key) else {
            // The client left before its 250: nothing was promised.
            return;
        };
        let peer = conn.peer_text.clone();
        if !self.store(key, peer, message) {
            self.progress(key);
        }
    }

    pub(super) fn append(
        &mut self,
        waiter: Waiter,
        peer: Arc<str>,
        message: ReceivedMessage,
    ) -> Result<(), StoreError> {
        let recipients = message.spool_recipients();
        let transport = message.tls.as_ref().map(|tls| tls.label().clone());
        let record = NewMessage {
            queue_id: message.queue_id,
            arrival_ms: unix_ms(),
            reverse_path: &message.reverse_path,
            mail_params: &message.mail_params,
            identity: message
                .identity
                .as_ref()
                .map_or(&b""[..], |identity| identity.name.as_bytes()),
            peer: peer.as_bytes(),
            transport: transport.as_deref().map_or(b"", str::as_bytes),
            recipients: &recipients,
            body: &message.body,
        };
        let about = self.server.events.is_enabled().then(|| {
            Box::new(Received {
                recipients: message
                    .recipients
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.address).into_owned())
                    .collect(),
                helo: message.helo.clone(),
                message_id: crate::delivery::events::message_id(&message.body),
                protocol: matches!(waiter, Waiter::Injection { .. }).then_some("http"),
            })
        });
        // The pool its sender chose, if any: its recipients queue apart.
        let pool = crate::server::sender_pool(
            &self.server.live().sender_pools,
            self.server.verifier.as_ref(),
            record.identity,
            &message.reverse_path,
        );
        match self.writer.append_message(&record) {
            Ok(appended) => {
                self.stores.push(
                    appended.ticket,
                    PendingStore {
                        waiter,
                        queue_id: message.queue_id,
                        recipients: message
                            .recipients
                            .iter()
                            .enumerate()
                            .map(|(i, r)| {
                                (destination_of(&r.address).with_pool(pool.clone()), i as u32)
                            })
                            .collect(),
                        size: message.body.len(),
                        sender: String::from_utf8_lossy(&message.reverse_path).into_owned(),
                        peer: Some(peer),
                        tls: message.tls,
                        user: message
                            .identity
                            .as_ref()
                            .map(|identity| identity.name.clone())
                            .unwrap_or_default(),
                        dkim: message.dkim,
                        about,
                    },
                );
                Ok(())
            }
            Err(baton_spool::Error::Full {
                used_bytes,
                limit_bytes,
            }) => {
                if let Some(refused) = self.logs.store_full.hit() {
                    tracing::warn!(
                        shard = self.id,
                        used_bytes,
                        limit_bytes,
                        refused,
                        "spool full: refusing messages with 452"
                    );
                }
                self.server
                    .metrics
                    .store_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Full)
            }
            Err(err) if err.is_out_of_space() => {
                if let Some(refused) = self.logs.store_full.hit() {
                    tracing::warn!(shard = self.id, %err, refused, "spool out of space: refusing messages with 452");
                }
                self.server
                    .metrics
                    .store_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Full)
            }
            Err(err) => {
                if let Some(refused) = self.logs.store_failed.hit() {
                    tracing::error!(shard = self.id, %err, refused, "spool append failed: refusing messages with 451");
                }
                self.server
                    .metrics
                    .store_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Failed)
            }
        }
    }

    /// Submits the spool's writes and datasyncs on this ring.
    fn drive_spool(&mut self) -> io::Result<()> {
        while let Some(io) = self.writer.next_io() {
            self.spool_seq += 1;
            let token = Token::Spool(self.spool_seq).encode();
            match io {
                Io::Write(op) => {
                    // SAFETY: the op (and its buffer and segment) lives in
                    // `spool_ops` until its completion is reaped.
                    unsafe {
                        self.ring.write_at(
                            op.fd(),
                            op.buf.as_ptr(),
                            op.buf.len() as u32,
                            op.offset,
                            token,
                        )?
                    };
                    self.spool_ops.insert(self.spool_seq, SpoolOp::Write(op));
                }
                Io::Sync(op) => {
                    self.ring.datasync(op.fd(), token)?;
                    self.spool_ops.insert(self.spool_seq, SpoolOp::Sync(op));
                }
            }
        }
        Ok(())
    }

    fn spool_done(&mut self, seq: u64, result: i32) -> io::Result<()> {
        let Some(op) = self.spool_ops.remove(&seq) else {
            return Ok(());
        };
        match op {
            SpoolOp::Write(op) => {
                let result = if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    Ok(result as usize)
                };
                self.writer.complete_write(op.id, result, op.buf);
            }
            SpoolOp::Sync(op) => {
                let result = if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    Ok(())
                };
                self.writer.complete_sync(op.id, result);
            }
        }
        self.finish_stores();
        Ok(())
    }

    /// Answers the sessions whose messages are now durable, and queues
    /// their recipients.
    fn finish_stores(&mut self) {
        let durable = self.writer.durable();
        let failure = self.writer.failure();
        let failed = failure.is_some();
        // ENOSPC on a write: 452 4.3.1, the condition of a full disk.
        let failed_as = if failure.is_some_and(|err| err.is_out_of_space()) {
            StoreError::Full
        } else {
            StoreError::Failed
        };
        // Outcomes held for a notification go in first: an operator's
        // answer that waited for the notification (its `queue bounce`)
        // waits for them too. After a failed write the writer is done; the
        // held recipients are tried again after the restart.
        for (held, durable) in self.held.release(durable, failed) {
            let after = held.after;
            if let Some(last) = durable.then(|| self.record_held(held)).flatten() {
                for wait in self.admin_waits.iter_mut().filter(|w| w.0 >= after) {
                    wait.0 = wait.0.max(last);
                }
            }
        }
        while let Some((ticket, _, _)) = self.admin_waits.front() {
            if *ticket > durable && !failed {
                break;
            }
            let (_, reply, mut answer) = self.admin_waits.pop_front().expect("front exists");
            if failed {
                answer.ok = false;
                answer.message = format!("spool write failed: {}", answer.message);
            }
            let _ = reply.send(answer);
        }
        for (store, durable) in self.stores.release(durable, failed) {
            let result = if durable {
                self.queue(&store);
                Ok(store.queue_id)
            } else {
                Err(failed_as)
            };
            let key = match store.waiter {
                Waiter::Session(key) => key,
                Waiter::Injection { batch, index } => {
                    self.injected(batch, index, result);
                    continue;
                }
                Waiter::Nobody => continue,
            };
            if let Some(conn) = self.conns.get_mut(key) {
                let mut ctx = Ctx {
                    queue_ids: &mut self.queue_ids,
                    server: &self.server,
                    suppression: &mut self.suppression,
                };
                conn.session.stored(result, &mut ctx);
                let key = conn.key;
                self.progress(key);
            }
        }
    }

    fn queue(&mut self, store: &PendingStore) {
        let now_ms = unix_ms();
        // Recipients are pushed per destination, in RCPT order, so that a
        // message's recipients of one domain make one transaction.
        let mut groups: Vec<(&Destination, Vec<QueuedRecipient>)> = Vec::new();
        for (destination, recipient) in &store.recipients {
            let item = QueuedRecipient {
                queue_id: store.queue_id,
                recipient: *recipient,
                attempts: 0,
            };
            match groups.iter_mut().find(|(d, _)| *d == destination) {
                Some((_, items)) => items.push(item),
                None => groups.push((destination, vec![item])),
            }
        }
        // A notification is logged when generated; a message from a client,
        // here, before its recipients are queued: another shard may
        // deliver one at once, and its `delivered` line must come after
        // the `received` one (webhooks post the log in its order).
        if store.waiter != Waiter::Nobody {
            self.log_received(store, now_ms);
        }
        for (destination, items) in groups {
            let actions = self
                .server
                .queues
                .push(destination, &items, Status::Pending, now_ms);
            self.act(actions);
        }
        if store.waiter == Waiter::Nobody {
            return;
        }
        let metrics = &self.server.metrics;
        metrics.messages_accepted.fetch_add(1, Ordering::Relaxed);
        metrics
            .recipients_accepted
            .fetch_add(store.recipients.len() as u64, Ordering::Relaxed);
        metrics
            .bytes_accepted
            .fetch_add(store.size as u64, Ordering::Relaxed);
        tracing::info!(
            target: crate::config::PER_MESSAGE_TARGET,
            queue_id = %store.queue_id,
            size = store.size,
            from = %store.sender,
            recipients = store.recipients.len(),
            client = store.peer.as_deref().unwrap_or(""),
            user = store.user.as_str(),
            "accepted"
        );
    }

    /// The `received` line of a message a client sent.
    fn log_received(&self, store: &PendingStore, now_ms: u64) {
        let events = &self.server.events;
        if events.is_enabled() {
            let queue_id = store.queue_id.to_string();
            let mut event = LogEvent::new(EventKind::Received, now_ms, &queue_id);
            event.sender = Some(store.sender.as_bytes());
            event.size = Some(store.size as u64);
            event.tls = store.tls.as_ref();
            event.user = (!store.user.is_empty()).then_some(store.user.as_str());
            event.dkim = store.dkim.as_deref();
            event.client = store.peer.as_deref();
            if let Some(about) = &store.about {
                event.recipients = Some(&about.recipients);
                event.helo = (!about.helo.is_empty()).then_some(about.helo.as_str());
                event.protocol = about.protocol;
                event.message_id = about.message_id.as_deref();
            }
            events.record(&event);
        }
    }

    // --- time and shutdown -----------------------------------------------

    fn sweep(&mut self) -> io::Result<()> {
        let now = Instant::now();
        // A shard without RCPTs for a while would otherwise keep an old
        // snapshot of the list open, and redb could not reuse its pages.
        if let Some(reader) = self.suppression.as_mut() {
            let _ = reader.refresh();
        }
        self.resume_accepts(now)?;
        // Buffers come back with every receive handled; this is for a
        // shard whose starved receives saw none come back.
        if !self.starved.is_empty() {
            self.retry_starved();
        }
        for key in self.conns.keys() {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let rate_min = self.server.config.limits.data_rate_min;
            let too_slow = rate_min > 0
                && !conn.dead
                && conn.session.phase() == Phase::Data
                && conn.data_since.is_some_and(|since| {
                    let took = now.duration_since(since);
                    took >= DATA_RATE_GRACE
                        && (conn.data_bytes as f64) < rate_min as f64 * took.as_secs_f64()
                });
            if too_slow && !conn.timed_out {
                // A client trickling message data (issue 10): each read
                // restarts data_timeout, so the rate is what ends it.
                tracing::info!(client = %conn.peer_text, bytes = conn.data_bytes, "message data below limits.data_rate_min");
                conn.data_since = None;
                conn.timed_out = true;
                conn.session.timed_out();
                conn.deadline = now + timeout_of(&self.server, Phase::Command);
                self.progress(key);
                continue;
            }
            let waiting = matches!(
                conn.session.phase(),
                Phase::AwaitingStore | Phase::AwaitingAuth
            );
            if conn.dead || now < conn.deadline || waiting {
                continue;
            }
            if conn.handshaking() {
                // No reply can be sent in the middle of a handshake.
                self.server
                    .metrics
                    .tls_handshake_failures_in
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = %conn.peer_text, "TLS handshake timed out");
                self.kill(key);
                continue;
            }
            if conn.timed_out {
                // Told once; the client does not even read: end it.
                self.kill(key);
                continue;
            }
            conn.timed_out = true;
            conn.session.timed_out();
            conn.deadline = now + timeout_of(&self.server, Phase::Command);
            self.progress(key);
        }
        self.out_sweep(now);
        Ok(())
    }

    fn begin_drain(&mut self) -> io::Result<()> {
        self.draining = Some(Instant::now());
        for index in 0..self.listeners.len() {
            if self.listeners[index].armed {
                self.ring
                    .cancel(Token::Accept(index).encode(), Token::Cancel.encode())?;
            } else {
                self.listeners[index].fd = None;
            }
        }
        for key in self.conns.keys() {
            self.progress(key);
        }
        self.out_drain();
        Ok(())
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        // SAFETY: `wake_buf` is owned by the shard and leaked in `finish` if
        // the read is still armed then.
        unsafe {
            self.ring.read(
                self.waker.raw(),
                self.wake_buf.as_mut_ptr(),
                8,
                Token::Wake.encode(),
            )?
        };
        self.wake_armed = true;
        Ok(())
    }
}

/// A server-side TLS connection from the certificates in force.
fn new_tls(server: &Server) -> Option<Box<rustls::ServerConnection>> {
    let config = server.server_tls.as_ref()?.config();
    match rustls::ServerConnection::new(config) {
        Ok(mut tls) => {
            tls.set_buffer_limit(Some(TLS_BUFFER_BYTES_MAX));
            Some(Box::new(tls))
        }
        Err(err) => {
            tracing::error!(%err, "cannot start TLS");
            None
        }
    }
}

fn timeout_of(server: &Server, phase: Phase) -> Duration {
    match phase {
        Phase::Data => server.config.limits.data_timeout,
        Phase::StartTls => server.config.tls.handshake_timeout,
        _ => server.config.limits.command_timeout,
    }
}
