//! Delivery connections, driven by the shard's ring.
//!
//! A connection is opened for one destination when the queue asks for it
//! ([`Action::Open`]): the route or the resolver gives the hosts to try,
//! the ring connects to each in turn until one greets and answers EHLO,
//! and from then on the sans-IO [`Client`] speaks SMTP while this file
//! moves bytes: commands from the client's output, the body straight from
//! the spool's mapping, replies into the client. Each finished transaction
//! is settled (outcomes appended to the spool, deferrals scheduled, bounces
//! queued) and the connection asks the destination's shared ready queue
//! for more; with nothing there it waits, idle, to be woken or to time out
//! and QUIT.
//!
//! A connection that ends is freed only once no operation of the ring
//! holds its buffers or socket address (see `ring.rs`): ending means
//! cancelling what is in flight, then waiting for those completions.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_spool::{Record, Status};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::TlsPolicy;
use crate::dns::{Query, Resolution};
use crate::outbound::{
    Awaiting, Client, CloseReason, Credentials, Envelope, Event, Outcome, TlsMode,
};
use crate::queue::{Action, QueuedRecipient, Take, Waiter};
use crate::route::{Destination, Route};
use crate::server::{unix_ms, Server};
use crate::shaping::egress::Source;
use crate::smtp::reply::Reply;
use crate::tls::mta_sts::{Mode, Policy};
use crate::tls::TlsInfo;

use super::conn::Slotted;
use super::event_loop::Shard;
use super::settle::{reply_text, Via};
use super::token::{ConnKey, Token};
use super::ShardMsg;

/// An hour in milliseconds: a source that spent its warm-up rests until
/// the next.
const HOUR_MS: u64 = 3_600_000;

mod tls;

/// Addresses tried per connection before the destination counts as down
/// (Postfix: `smtp_mx_address_limit` = 5; we allow a few more for
/// dual-stack hosts).
const HOPS_MAX: usize = 10;

/// One address to try.
#[derive(Clone, Debug)]
struct Hop {
    addr: SocketAddr,
    /// The host's name (MX exchange, route host, or the literal), for TLS
    /// verification (SNI and the certificate's names).
    name: Arc<str>,
    /// `name [ip]:port`, for logs, events and notifications; made once,
    /// not per message.
    label: Arc<str>,
}

impl Hop {
    fn new(name: &str, addr: SocketAddr) -> Hop {
        let label = format!("{name} [{}]:{}", addr.ip(), addr.port());
        Hop {
            addr,
            name: name.into(),
            label: label.into(),
        }
    }
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for the resolver.
    Resolving,
    /// A connect is in flight.
    Connecting,
    /// Connected; the client speaks.
    Smtp,
}

/// What a delivery connection's deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// The TLS handshake.
    Handshake,
    /// One reply, from when it became due.
    Reply(Awaiting),
    /// The next block of the body to be sent.
    Block,
}

/// What to do once nothing is in flight any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    /// Try the next address (connect failed, greeting refused).
    NextHop,
    /// Try the same address again, in plain text (opportunistic TLS
    /// failed in the handshake).
    SameHop,
    /// Free the connection.
    Close,
}

/// The message of the transaction under way.
struct Current {
    /// Keeps the segment mapped while its bytes are being sent.
    record: Record,
    body_start: usize,
    body_len: usize,
    /// The server said `354`: the body is to be sent.
    body_due: bool,
    body_done: usize,
    /// The recipients in the envelope, in its order.
    sent: Vec<QueuedRecipient>,
    /// Their domain (a connection may carry several domains of its site).
    destination: Destination,
    /// When MAIL FROM went out: the transaction's latency in events.
    started: Instant,
}

pub(super) struct OutConn {
    key: ConnKey,
    destination: Destination,
    /// The source it leaves from, by name: its lane in the queue's site
    /// (`crate::queue::DEFAULT_LANE` without a pool).
    lane: Arc<str>,
    stage: Stage,
    port: u16,
    fd: Option<OwnedFd>,
    hops: Vec<Hop>,
    next_hop: usize,
    hop: Option<Hop>,
    /// Borrowed by the kernel while `connect_in_flight`.
    addr: Box<SockAddr>,
    connect_in_flight: bool,
    client: Option<Client>,
    /// A receive is armed; its buffer comes from the shard's buffer ring
    /// when data arrives, so an idle pooled connection holds none.
    recv_in_flight: bool,
    /// The last receive found the buffer ring empty (`Shard::starve`).
    recv_starved: bool,
    /// Borrowed by the kernel while `send_in_flight` (unless the send is
    /// the body, which the mapping in `current` holds).
    send_buf: Vec<u8>,
    send_done: usize,
    send_in_flight: bool,
    /// For a send of body and commands together: borrowed by the kernel
    /// while `send_in_flight`.
    msg: Box<libc::msghdr>,
    iov: Box<[libc::iovec; 2]>,
    /// Keeps the segment mapped while a send of its bytes is in flight,
    /// even if the transaction ends first (a server may reply before it
    /// has read the whole body).
    body_hold: Option<Record>,
    /// Bytes of body at the start of the send in flight.
    send_body_bytes: usize,
    current: Option<Current>,
    /// The transaction sent behind `current`'s end of data (pipelining).
    next: Option<Current>,
    /// The destination's `messages_per_connection_max`.
    messages_max: usize,
    /// Transactions started on this connection.
    transactions: usize,
    /// The client got to `Ready` on this address at least once.
    ready_seen: bool,
    /// Waiting in the destination's idle list.
    idle: bool,
    /// Waiting for the destination's message rate.
    rate_wait: bool,
    /// What `deadline` is running for, while the client waits on the
    /// server.
    wait: Option<Wait>,
    deadline: Instant,
    after: Option<After>,
    cancels_sent: bool,
    /// Why the last address failed, for the deferral reply.
    last_error: String,
    /// The destination's STARTTLS policy.
    tls_policy: TlsPolicy,
    /// TLS, once the client asked for it: every byte goes through it.
    tls: Option<Box<rustls::ClientConnection>>,
    /// The certificate is being verified (`required-verified`).
    tls_verify: bool,
    /// What the handshake negotiated, once done.
    tls_info: Option<TlsInfo>,
    /// The local address, `ip:port`, once connected.
    local: Option<Arc<str>>,
    /// Its site's name, once resolved: for the per-site metrics.
    site: Option<Arc<str>>,
    /// The last address failed for want of TLS: the deferral says 4.7.5.
    tls_error: bool,
    /// The route's credentials for SMTP AUTH, if it has any.
    auth: Option<Arc<Credentials>>,
    /// The local address it leaves from and its EHLO name, when the
    /// route (or `[delivery] pool`) has a pool.
    source: Option<Arc<Source>>,
    /// The last address failed at AUTH: the deferral, said as it is.
    auth_error: Option<Reply>,
    /// Retry this address in plain text (its opportunistic handshake
    /// failed), whatever the broken-TLS memory says.
    plain_retry: bool,
    /// The destination's MTA-STS policy, when it has one in force.
    sts: Option<Arc<Policy>>,
    /// The MTA-STS policy was asked for and has not come yet.
    sts_pending: bool,
    /// The MX answer, held until the policy comes.
    resolution: Option<Resolution>,
}

impl Slotted for OutConn {
    fn key(&self) -> ConnKey {
        self.key
    }

    fn in_flight(&self) -> bool {
        self.connect_in_flight || self.recv_in_flight || self.send_in_flight
    }
}

impl OutConn {
    fn waiter(&self, shard: usize) -> Waiter {
        Waiter {
            shard,
            conn: self.key.to_u64(),
        }
    }

    fn host_label(&self) -> Option<Arc<str>> {
        self.hop.as_ref().map(|hop| hop.label.clone())
    }
}

impl Shard {
    /// Carries out what the queue asked for.
    pub(super) fn act(&mut self, actions: Vec<Action>) {
        // A connection that cannot open gives its room back, and the site
        // may hand it on: a work list rather than recursion.
        let mut work = std::collections::VecDeque::from(actions);
        while let Some(action) = work.pop_front() {
            match action {
                Action::Open(destination, lane) => work.extend(self.open_out(destination, lane)),
                Action::Wake(waiter) if waiter.shard == self.id => {
                    self.out_work(ConnKey::from_u64(waiter.conn));
                }
                Action::Wake(waiter) => {
                    self.server.links[waiter.shard].send(ShardMsg::Work { conn: waiter.conn });
                }
            }
        }
    }

    /// Opens a connection for `destination`, already counted by the queue.
    /// When it cannot, returns what the queue says about the room it gave
    /// back.
    #[must_use]
    fn open_out(&mut self, destination: Destination, lane: Arc<str>) -> Vec<Action> {
        let now_ms = unix_ms();
        if self.draining.is_some() {
            return self.server.queues.closed(&destination, &lane, None, now_ms);
        }
        let Some(key) = self.outs.vacant() else {
            return self.server.queues.closed(&destination, &lane, None, now_ms);
        };
        // One snapshot for the whole connection's set-up: a reload in
        // between cannot mix two configurations.
        let live = self.server.live();
        let (query, port, auth, pool) = match live.routes.route(&destination) {
            Route::Mx { port } => (Query::Mx(destination.as_str().to_owned()), port, None, None),
            Route::NextHop(hop) => (Query::Host(hop.host.clone()), hop.port, hop.auth, hop.pool),
        };
        // The sender's choice of pool comes first.
        let pool = destination.pool().map(str::to_owned).or(pool);
        // The queue chose the source (the lane with room in the site).
        let source = match live.egress.pool(pool.as_deref()) {
            None => None,
            Some(pool) => match pool.source_named(&lane).filter(|s| s.allows(now_ms)) {
                Some(source) => Some(source.clone()),
                None => {
                    // The source has spent its warm-up allowance: its lane
                    // rests until the next hour (when an hourly or daily
                    // count may start afresh); the pool's other sources
                    // carry on, and mail no source may send waits
                    // (deferred, never bounced).
                    if let Some(times) = self.logs.warmup_spent.hit() {
                        tracing::info!(%destination, pool = %pool.name, source = %lane, times, "egress: the source may send no more now (warm-up)");
                    }
                    let next_hour = (now_ms / HOUR_MS + 1) * HOUR_MS;
                    let reason = format!("warm-up: source {lane} spent its allowance");
                    let queues = &self.server.queues;
                    queues.suspend_site_of(&destination, &lane, next_hour, reason, now_ms);
                    return queues.closed(&destination, &lane, None, now_ms);
                }
            },
        };
        // RFC 8461 applies to MX delivery only: a route is the operator's
        // own choice of next hop.
        let sts_domain = (matches!(query, Query::Mx(_))
            && live.config.shaping_for(destination.as_str()).mta_sts)
            .then(|| destination.as_str().to_owned());
        let messages_max = self
            .server
            .queues
            .shaping(&destination)
            .messages_per_connection_max;
        let tls_policy = live.config.tls_policy_for(destination.as_str());
        self.outs.insert(OutConn {
            key,
            destination,
            lane,
            messages_max,
            stage: Stage::Resolving,
            port,
            fd: None,
            hops: Vec::new(),
            next_hop: 0,
            hop: None,
            addr: Box::new(SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)))),
            connect_in_flight: false,
            client: None,
            recv_in_flight: false,
            recv_starved: false,
            send_buf: Vec::new(),
            send_done: 0,
            send_in_flight: false,
            msg: Box::new(empty_msghdr()),
            body_hold: None,
            send_body_bytes: 0,
            iov: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; 2],
            ),
            current: None,
            next: None,
            transactions: 0,
            ready_seen: false,
            idle: false,
            rate_wait: false,
            wait: None,
            deadline: Instant::now() + live.delivery.timeouts.connect,
            after: None,
            cancels_sent: false,
            last_error: String::new(),
            tls_policy,
            tls: None,
            tls_verify: false,
            tls_info: None,
            local: None,
            site: None,
            tls_error: false,
            auth,
            source,
            auth_error: None,
            plain_retry: false,
            sts: None,
            sts_pending: false,
            resolution: None,
        });
        self.server
            .metrics
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        let server = self.server.clone();
        let shard = self.id;
        let conn = key.to_u64();
        if let Some(domain) = sts_domain {
            // Asked beside the MX lookup; the hosts wait for the policy,
            // which decides which of them may be tried.
            self.outs.get_mut(key).expect("just inserted").sts_pending = true;
            self.server.mta_sts.policy(
                &domain,
                Box::new(move |policy| {
                    server.links[shard].send(ShardMsg::Policy { conn, policy });
                }),
            );
        }
        self.resolve_out(key, query);
        Vec::new()
    }

    fn resolve_out(&mut self, key: ConnKey, query: Query) {
        let server = self.server.clone();
        let shard = self.id;
        let conn = key.to_u64();
        self.server.resolver.resolve(
            query,
            Box::new(move |resolution| {
                server.links[shard].send(ShardMsg::Resolved { conn, resolution });
            }),
        );
    }

    /// The destination's MTA-STS policy (RFC 8461) is known: in `enforce`
    /// mode TLS must be verified against the MX host's name; the MX
    /// answer, if it came first, is taken now.
    pub(super) fn out_policy(&mut self, key: ConnKey, policy: Option<Arc<Policy>>) {
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        if !conn.sts_pending {
            return;
        }
        conn.sts_pending = false;
        if policy.as_ref().is_some_and(|p| p.mode == Mode::Enforce) {
            conn.tls_policy = TlsPolicy::RequiredVerified;
        }
        conn.sts = policy;
        if let Some(resolution) = conn.resolution.take() {
            self.resolved(key, resolution);
        }
    }

    pub(super) fn resolved(&mut self, key: ConnKey, resolution: Resolution) {
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        if conn.stage != Stage::Resolving || conn.after.is_some() {
            return;
        }
        if conn.sts_pending {
            conn.resolution = Some(resolution);
            return;
        }
        let domain = conn.destination.to_string();
        match resolution {
            Resolution::Hosts(mut hosts) => {
                // MX rollup: the MX hosts name the domain's site, which it
                // joins with this connection; a full (or suspended) site
                // has no room for it, and the domain waits its turn.
                let live = self.server.live();
                let rollup = !domain.starts_with('[')
                    && matches!(live.routes.route(&conn.destination), Route::Mx { .. });
                if rollup {
                    let (site, shaping) = live.sites.for_mx(hosts.iter().map(|h| h.name.as_str()));
                    if !self.server.queues.join(
                        &conn.destination,
                        &conn.lane,
                        &site,
                        shaping,
                        unix_ms(),
                    ) {
                        tracing::debug!(destination = %domain, %site, "delivery: no room in the site for this connection");
                        return self.out_free(key);
                    }
                    conn.site = Some(site.into());
                } else {
                    conn.site = Some(match live.routes.route(&conn.destination) {
                        Route::NextHop(hop) => {
                            live.sites.for_next_hop(&hop.host, hop.port).0.into()
                        }
                        Route::Mx { .. } => domain.as_str().into(),
                    });
                }
                if let Some(policy) = conn.sts.clone() {
                    let refused: Vec<String> = hosts
                        .iter()
                        .filter(|h| !policy.matches(&h.name))
                        .map(|h| h.name.clone())
                        .collect();
                    if !refused.is_empty() && policy.mode == Mode::Testing {
                        tracing::warn!(
                            destination = %domain,
                            hosts = ?refused,
                            "MTA-STS testing: these MX hosts are not in the policy; enforce would refuse them"
                        );
                    }
                    if policy.mode == Mode::Enforce {
                        hosts.retain(|h| policy.matches(&h.name));
                        if hosts.is_empty() {
                            let reply = Reply::new(
                                451,
                                Some((4, 7, 5)),
                                format!(
                                    "MTA-STS policy of {domain} (enforce) names none of its MX hosts: {}",
                                    refused.join(", ")
                                ),
                            );
                            return self.destination_down(key, Outcome::Deferred(reply), false);
                        }
                    }
                }
                let port = conn.port;
                // A next hop that is baton itself is a loop (a route or MX
                // pointing back here): the mail would circle until its
                // Received: headers ran out.
                let listeners = &self.server.config.listeners;
                let all = hosts.iter().map(|h| h.addresses.len()).sum::<usize>();
                hosts.iter_mut().for_each(|h| {
                    h.addresses
                        .retain(|ip| !is_own_listener(listeners, SocketAddr::new(*ip, port)))
                });
                hosts.retain(|h| !h.addresses.is_empty());
                if all > 0 && hosts.is_empty() {
                    let reply = Reply::new(
                        554,
                        Some((5, 4, 6)),
                        format!("mail for {domain} loops back to myself"),
                    );
                    return self.destination_down(key, Outcome::Failed(reply), false);
                }
                conn.hops = hosts
                    .iter()
                    .flat_map(|h| {
                        h.addresses
                            .iter()
                            .map(|ip| Hop::new(&h.name, SocketAddr::new(*ip, port)))
                    })
                    .take(HOPS_MAX)
                    .collect();
                conn.last_error = format!("no address for {domain}");
                self.connect_next(key);
            }
            Resolution::NullMx => {
                let reply = Reply::new(
                    556,
                    Some((5, 1, 10)),
                    format!("{domain} does not accept mail (null MX, RFC 7505)"),
                );
                self.destination_down(key, Outcome::Failed(reply), false);
            }
            Resolution::NoSuchDomain(why) => {
                let reply = Reply::new(550, Some((5, 1, 2)), about(&domain, why));
                self.destination_down(key, Outcome::Failed(reply), false);
            }
            Resolution::TempFail(why) => {
                self.server
                    .metrics
                    .dns_failures
                    .fetch_add(1, Ordering::Relaxed);
                let reply = Reply::new(451, Some((4, 4, 3)), about(&domain, why));
                self.destination_down(key, Outcome::Deferred(reply), false);
            }
        }
    }

    /// Connects to the next address, or gives up on the destination.
    fn connect_next(&mut self, key: ConnKey) {
        let timeout = self.server.live().delivery.timeouts.connect;
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        let Some(hop) = conn.hops.get(conn.next_hop).cloned() else {
            let reply = if let Some(reply) = conn.auth_error.take() {
                reply
            } else if conn.tls_error {
                // RFC 3463 X.7.5: the TLS the policy requires failed.
                Reply::new(
                    451,
                    Some((4, 7, 5)),
                    format!("TLS is required, but {}", conn.last_error),
                )
            } else {
                Reply::new(
                    451,
                    Some((4, 4, 1)),
                    format!("no host answered: {}", conn.last_error),
                )
            };
            self.server
                .metrics
                .connections_failed
                .fetch_add(1, Ordering::Relaxed);
            return self.destination_down(key, Outcome::Deferred(reply), true);
        };
        conn.next_hop += 1;
        conn.wait = None;
        conn.stage = Stage::Connecting;
        conn.client = None;
        conn.tls = None;
        conn.tls_info = None;
        conn.tls_error = false;
        conn.auth_error = None;
        conn.ready_seen = false;
        conn.after = None;
        conn.cancels_sent = false;
        conn.send_buf.clear();
        conn.send_done = 0;
        let socket = match Socket::new(Domain::for_address(hop.addr), Type::STREAM.cloexec(), None)
        {
            Ok(socket) => socket,
            Err(err) => {
                conn.last_error = format!("socket for {hop}: {err}");
                return self.connect_next(key);
            }
        };
        let _ = socket.set_tcp_nodelay(true);
        if let Some(source) = &conn.source {
            // The pool's address, or not at all: mail must not leave from
            // an address the operator did not give (its reputation, its
            // reverse DNS are the source's).
            if source.address.is_ipv4() != hop.addr.is_ipv4() {
                conn.last_error = format!(
                    "{hop}: source {} ({}) cannot reach an {} address",
                    source.name,
                    source.address,
                    if hop.addr.is_ipv4() { "IPv4" } else { "IPv6" }
                );
                return self.connect_next(key);
            }
            if let Err(err) = socket.bind(&SockAddr::from(SocketAddr::new(source.address, 0))) {
                conn.last_error =
                    format!("bind to source {} ({}): {err}", source.name, source.address);
                return self.connect_next(key);
            }
        }
        let fd: OwnedFd = socket.into();
        *conn.addr = SockAddr::from(hop.addr);
        conn.deadline = Instant::now() + timeout;
        // SAFETY: `addr` is boxed in the slot, which stays (and is not
        // touched) while `connect_in_flight`.
        let submitted = unsafe {
            self.ring.connect(
                fd.as_raw_fd(),
                conn.addr.as_ptr().cast(),
                conn.addr.len(),
                Token::Connect(key).encode(),
            )
        };
        conn.fd = Some(fd);
        conn.recv_starved = false;
        conn.hop = Some(hop);
        match submitted {
            Ok(()) => conn.connect_in_flight = true,
            Err(err) => {
                conn.last_error = format!("connect: {err}");
                conn.fd = None;
                self.connect_next(key);
            }
        }
    }

    pub(super) fn connected(&mut self, key: ConnKey, result: i32) {
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        conn.connect_in_flight = false;
        if conn.after.is_some() {
            return self.out_settle(key);
        }
        if result < 0 {
            let err = if result == -libc::ECANCELED {
                "connection timed out".to_owned()
            } else {
                std::io::Error::from_raw_os_error(-result).to_string()
            };
            let hop = conn.hop.as_ref().map(Hop::to_string).unwrap_or_default();
            conn.last_error = format!("connect to {hop}: {err}");
            tracing::debug!(destination = %conn.destination, error = %conn.last_error, "connect failed");
            conn.fd = None;
            return self.connect_next(key);
        }
        conn.stage = Stage::Smtp;
        // Once per connection, for its outcome events.
        conn.local = conn.fd.as_ref().and_then(|fd| {
            let local = socket2::SockRef::from(fd).local_addr().ok()?;
            Some(Arc::from(local.as_socket()?.to_string()))
        });
        let addr = conn.hop.as_ref().map(|hop| hop.addr);
        let broken = addr.is_some_and(|addr| self.server.is_tls_broken(addr, unix_ms()));
        let mode = match conn.tls_policy {
            TlsPolicy::Disabled => TlsMode::Off,
            TlsPolicy::Opportunistic if conn.plain_retry || broken => TlsMode::Off,
            TlsPolicy::Opportunistic => TlsMode::Opportunistic,
            TlsPolicy::Required | TlsPolicy::RequiredVerified => TlsMode::Required,
        };
        conn.plain_retry = false;
        let config = conn.source.as_ref().map_or_else(
            || self.server.live().client_config.clone(),
            |s| s.client.clone(),
        );
        conn.client = Some(Client::new(config, mode).with_auth(conn.auth.clone()));
        self.out_progress(key);
    }

    /// A receive completed, with what it brought in `data` (a buffer of
    /// the shard's ring, given back once this returns).
    pub(super) fn out_received(&mut self, key: ConnKey, result: i32, data: Option<&[u8]>) {
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        conn.recv_in_flight = false;
        if conn.after.is_some() {
            return self.out_settle(key);
        }
        if result == -libc::ENOBUFS {
            conn.recv_starved = true;
            return self.starve(Token::OutRecv(key));
        }
        let Some(client) = conn.client.as_mut() else {
            return;
        };
        let handshaking = conn.tls.as_ref().is_some_and(|tls| tls.is_handshaking());
        if result <= 0 && handshaking {
            return self.out_tls_failed(key, "the server closed the connection".into());
        }
        if result <= 0 {
            // Say what happened, not what an earlier step left here.
            conn.last_error = match client.awaiting() {
                Some(awaiting) => format!(
                    "the server closed the connection while baton waited for the {}",
                    awaiting.reply_name()
                ),
                None => "the server closed the connection".into(),
            };
            client.connection_lost();
        } else if let Some(data) = data.filter(|data| data.len() == result as usize) {
            if conn.tls.is_some() {
                return self.out_received_tls(key, data);
            }
            client.receive(data);
        } else {
            // Data without a buffer named: cannot happen with a receive
            // from the ring; treated as a lost connection, not a panic.
            conn.last_error = "a receive without its buffer".into();
            client.connection_lost();
        }
        self.out_progress(key);
    }

    /// Arms again a receive that found the buffer ring empty.
    pub(super) fn out_unstarve(&mut self, key: ConnKey) {
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        if std::mem::take(&mut conn.recv_starved) && conn.after.is_none() {
            self.out_progress(key);
        }
    }

    pub(super) fn out_sent(&mut self, key: ConnKey, result: i32) {
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        conn.send_in_flight = false;
        conn.body_hold = None;
        if conn.after.is_some() {
            return self.out_settle(key);
        }
        let Some(client) = conn.client.as_mut() else {
            return;
        };
        if result <= 0 {
            client.connection_lost();
            return self.out_progress(key);
        }
        // The body (if any was in this send) went first, then the commands.
        let mut n = result as usize;
        let body = n.min(std::mem::take(&mut conn.send_body_bytes));
        n -= body;
        if let Some(current) = conn.current.as_mut().filter(|c| c.body_due) {
            current.body_done += body;
        }
        conn.send_done += n;
        if conn.send_done >= conn.send_buf.len() {
            conn.send_buf.clear();
            conn.send_done = 0;
        }
        self.out_progress(key);
    }

    /// Work arrived for an idle connection.
    pub(super) fn out_work(&mut self, key: ConnKey) {
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        if !conn.idle || conn.after.is_some() {
            return;
        }
        conn.idle = false;
        self.out_next_transaction(key);
        self.out_progress(key);
    }

    /// Rate tokens arrived from the cluster: every connection waiting for
    /// one takes its next transaction now (those whose site got none wait
    /// again).
    pub(super) fn out_rate_tokens(&mut self) {
        for key in self.outs.keys() {
            let Some(conn) = self.outs.get_mut(key) else {
                continue;
            };
            if !conn.rate_wait || conn.after.is_some() {
                continue;
            }
            conn.rate_wait = false;
            self.out_next_transaction(key);
            self.out_progress(key);
        }
    }

    /// Steps the client: handles its events, sends what it wants sent,
    /// keeps a receive armed.
    fn out_progress(&mut self, key: ConnKey) {
        loop {
            let Some(conn) = self.outs.get_mut(key) else {
                return;
            };
            let Some(event) = conn.client.as_mut().and_then(Client::poll_event) else {
                break;
            };
            match event {
                Event::Ready => {
                    conn.ready_seen = true;
                    self.out_next_transaction(key);
                }
                Event::StartTls => self.out_start_tls(key),
                Event::RecipientResult { .. } => {}
                Event::TransactionDone { per_recipient } => {
                    self.transaction_done(key, per_recipient);
                    self.out_next_transaction(key);
                }
                Event::Closed { reason } => self.out_closed(key, reason),
            }
        }
        let timeouts = self.server.live().delivery.timeouts;
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        if conn.after.is_some() {
            return self.out_settle(key);
        }
        let Some(client) = conn.client.as_mut() else {
            return;
        };
        if !conn.send_in_flight && client.body_needed() {
            // After `354` the body goes out with the final dot in one
            // write: the client queues the dot at once, and the send
            // below takes the body from the mapping and the dot from
            // `send_buf` (RFC 5321 §4.1.1.4; the stored body ends in CRLF).
            client.body_sent();
            if let Some(current) = conn.current.as_mut() {
                current.body_due = true;
            }
            // RFC 2920 §3.1: the next envelope may follow the dot.
            self.out_next_transaction(key);
            return self.out_progress(key);
        }
        if !conn.send_in_flight && conn.tls.is_some() {
            conn.fill_tls();
            if conn.send_done < conn.send_buf.len() {
                let fd = conn.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd());
                let pending = &conn.send_buf[conn.send_done..];
                // SAFETY: `send_buf` belongs to the slot, which is not
                // freed, and is not touched, while `send_in_flight`.
                let submitted = unsafe {
                    self.ring.send(
                        fd,
                        pending.as_ptr(),
                        pending.len().min(u32::MAX as usize) as u32,
                        Token::OutSend(key).encode(),
                    )
                };
                if submitted.is_err() {
                    let client = conn.client.as_mut().expect("checked above");
                    client.connection_lost();
                    return self.out_progress(key);
                }
                conn.send_in_flight = true;
            }
        }
        let client = conn.client.as_mut().expect("checked above");
        if !conn.send_in_flight && conn.tls.is_none() {
            let output = client.output();
            if !output.is_empty() {
                conn.send_buf.extend_from_slice(output);
                let n = output.len();
                client.consume_output(n);
            }
            let body: &[u8] = match conn.current.as_ref() {
                Some(c) if c.body_due && c.body_done < c.body_len => {
                    &c.record.payload()[c.body_start + c.body_done..c.body_start + c.body_len]
                }
                _ => &[],
            };
            let commands = &conn.send_buf[conn.send_done..];
            let fd = conn.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd());
            let token = Token::OutSend(key).encode();
            let submitted = if body.is_empty() && commands.is_empty() {
                None
            } else if body.is_empty() {
                // SAFETY: `send_buf` belongs to the slot, which is not
                // freed, and is not touched, while `send_in_flight`.
                Some(unsafe {
                    self.ring.send(
                        fd,
                        commands.as_ptr(),
                        commands.len().min(u32::MAX as usize) as u32,
                        token,
                    )
                })
            } else {
                conn.iov[0] = libc::iovec {
                    iov_base: body.as_ptr() as *mut libc::c_void,
                    iov_len: body.len(),
                };
                conn.iov[1] = libc::iovec {
                    iov_base: commands.as_ptr() as *mut libc::c_void,
                    iov_len: commands.len(),
                };
                conn.msg.msg_iov = conn.iov.as_mut_ptr();
                conn.msg.msg_iovlen = 2;
                conn.send_body_bytes = body.len();
                // SAFETY: the msghdr and iovecs are boxed in the slot; the
                // body lives in the mapping `body_hold` keeps alive until
                // the completion, the commands in `send_buf`; none is freed
                // or touched while `send_in_flight`.
                let submitted = unsafe { self.ring.sendmsg(fd, &*conn.msg, token) };
                conn.body_hold = conn.current.as_ref().map(|c| c.record.clone());
                Some(submitted)
            };
            match submitted {
                Some(Ok(())) => conn.send_in_flight = true,
                Some(Err(_)) => {
                    client.connection_lost();
                    return self.out_progress(key);
                }
                None => {}
            }
        }
        if !conn.recv_in_flight && !conn.recv_starved && !client.is_closed() {
            let fd = conn.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd());
            let submitted = self.ring.recv_select(fd, Token::OutRecv(key).encode());
            if submitted.is_err() {
                client.connection_lost();
                return self.out_progress(key);
            }
            conn.recv_in_flight = true;
        }
        if !conn.idle && !conn.rate_wait {
            let handshaking = conn.tls.as_ref().is_some_and(|tls| tls.is_handshaking());
            let (wait, duration) = match client.awaiting() {
                _ if handshaking => (Wait::Handshake, self.server.config.tls.handshake_timeout),
                Some(awaiting) => (Wait::Reply(awaiting), timeouts.for_reply(awaiting)),
                None => (Wait::Block, timeouts.data_block),
            };
            // A reply's timeout runs from when it became due, not from the
            // last byte: a server dripping its greeting a byte at a time
            // must not hold the attempt for ever (issue 10). A block of
            // the body is the unit of progress while sending it.
            if conn.wait != Some(wait) || wait == Wait::Block {
                conn.wait = Some(wait);
                conn.deadline = Instant::now() + duration;
            }
        } else {
            conn.wait = None;
        }
    }

    /// The client is idle: gives it the next message, or lets it wait.
    fn out_next_transaction(&mut self, key: ConnKey) {
        let now_ms = unix_ms();
        let draining = self.draining.is_some();
        let shard = self.id;
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        let Some(client) = conn.client.as_mut() else {
            return;
        };
        // Idle, or (pipelining) with the current transaction's dot out, so
        // that the next envelope rides in the same write.
        let behind = client.takes_next();
        if !client.is_idle() && !behind {
            return;
        }
        if draining || conn.transactions >= conn.messages_max {
            if !behind {
                client.quit();
            }
            return;
        }
        let waiter = conn.waiter(shard);
        let source = conn.source.clone();
        loop {
            // A message counts against its source's warm-up allowance;
            // spent, the connection ends and the pool picks another.
            if source.as_ref().is_some_and(|s| !s.take_message(now_ms)) {
                let conn = self.outs.get_mut(key).expect("present");
                if let (false, Some(client)) = (behind, conn.client.as_mut()) {
                    client.quit();
                }
                return;
            }
            let destination = self.outs.get_mut(key).expect("present").destination.clone();
            let taken = {
                let conn = &*self.outs.get_mut(key).expect("present");
                let server = &self.server;
                let mut may_carry = |other: &Destination| may_carry(server, conn, other);
                server.queues.take_in_site(
                    &destination,
                    &conn.lane,
                    waiter,
                    !behind,
                    now_ms,
                    &mut may_carry,
                )
            };
            if !matches!(taken, Take::Batch(_)) {
                if let Some(source) = &source {
                    source.give_back();
                }
            }
            match taken {
                Take::Batch(items) => {
                    if self.start_transaction(key, items) {
                        return;
                    }
                    if let Some(source) = &source {
                        source.give_back();
                    }
                }
                // The connection now carries another domain of its site.
                Take::Switched(other) => {
                    self.outs.get_mut(key).expect("present").destination = other;
                    continue;
                }
                // Behind a transaction: nothing more to do until it ends.
                Take::Idle | Take::Leave | Take::RateLimited { .. } if behind => return,
                // Another domain of the site waits for room: make it.
                Take::Leave => {
                    let conn = self.outs.get_mut(key).expect("present");
                    if let Some(client) = conn.client.as_mut() {
                        client.quit();
                    }
                    return;
                }
                Take::Idle => {
                    let idle_timeout = self.server.live().delivery.idle_timeout;
                    let conn = self.outs.get_mut(key).expect("present");
                    conn.idle = true;
                    conn.deadline = Instant::now() + idle_timeout;
                    return;
                }
                Take::RateLimited { retry_ms } => {
                    let conn = self.outs.get_mut(key).expect("present");
                    conn.rate_wait = true;
                    conn.deadline =
                        Instant::now() + Duration::from_millis(retry_ms.saturating_sub(now_ms));
                    return;
                }
            }
        }
    }

    /// Starts a transaction for recipients of one message. `false` when
    /// none of them is still undelivered (deleted, bounced meanwhile).
    fn start_transaction(&mut self, key: ConnKey, items: Vec<QueuedRecipient>) -> bool {
        let queue_id = items[0].queue_id;
        let Some((record, statuses)) = self.load(queue_id) else {
            return false;
        };
        let Ok(view) = record.message() else {
            return false;
        };
        let addresses: Vec<&[u8]> = view.recipients().map(|r| r.address).collect();
        let mut sent = Vec::with_capacity(items.len());
        let mut recipients = Vec::with_capacity(items.len());
        for item in items {
            let index = item.recipient as usize;
            let still_open = statuses.get(index).is_some_and(|s| !s.is_final());
            if let (true, Some(address)) = (still_open, addresses.get(index)) {
                recipients.push(address.to_vec());
                sent.push(item);
            }
        }
        if sent.is_empty() {
            return false;
        }
        let envelope = Envelope {
            reverse_path: view.reverse_path.to_vec(),
            mail_params: without_size(view.mail_params),
            recipients,
            size: view.body.len() as u64,
        };
        let body_start = view.body.as_ptr() as usize - record.payload().as_ptr() as usize;
        let body_len = view.body.len();
        drop(addresses);
        let conn = self.outs.get_mut(key).expect("present");
        let client = conn.client.as_mut().expect("idle client");
        if let Err(err) = client.send_message(envelope) {
            tracing::error!(%err, %queue_id, "delivery: client refused an envelope");
            let destination = conn.destination.clone();
            let now_ms = unix_ms();
            let actions = self
                .server
                .queues
                .push(&destination, &sent, Status::Pending, now_ms);
            self.act(actions);
            return false;
        }
        conn.transactions += 1;
        let slot = if conn.current.is_none() {
            &mut conn.current
        } else {
            &mut conn.next
        };
        *slot = Some(Current {
            record,
            body_start,
            body_len,
            body_due: false,
            body_done: 0,
            sent,
            destination: conn.destination.clone(),
            started: Instant::now(),
        });
        true
    }

    fn transaction_done(&mut self, key: ConnKey, per_recipient: Vec<Outcome>) {
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        let Some(current) = conn.current.take() else {
            return;
        };
        conn.current = conn.next.take();
        let destination = current.destination.clone();
        let host = conn.host_label();
        let lane = conn.lane.clone();
        if per_recipient
            .iter()
            .any(|o| matches!(o, Outcome::Delivered(_)))
        {
            self.server.queues.succeeded(&destination, &lane, unix_ms());
        }
        let tls = conn.tls_info.clone();
        let local = conn.local.clone();
        let site = conn.site.clone();
        let results = current.sent.into_iter().zip(per_recipient).collect();
        let latency_ms = current.started.elapsed().as_millis() as u64;
        self.server.metrics.histograms.latency.observe(latency_ms);
        let via = Via {
            host: host.as_deref(),
            tls: tls.as_ref(),
            local: local.as_deref(),
            latency_ms: Some(latency_ms),
            site: site.as_ref(),
        };
        self.settle_message(&destination, Some(&lane), &current.record, results, via);
    }

    /// The connection ended, as the client saw it.
    fn out_closed(&mut self, key: ConnKey, reason: CloseReason) {
        let now_ms = unix_ms();
        let (pause, pause_max) = self.pause_ms();
        // A refusal of the whole connection (a 421 4.7.28 greeting) is the
        // receiver speaking too: the shaping rules hear it.
        if let CloseReason::GreetingRefused(reply)
        | CloseReason::HelloRefused(reply)
        | CloseReason::ServiceClosing(reply) = &reason
        {
            if let Some(conn) = self.outs.get_mut(key) {
                let (destination, lane) = (conn.destination.clone(), conn.lane.clone());
                let category = self.server.live().classifier.classify(reply);
                self.listen(&destination, Some(&lane), reply, category, now_ms);
            }
        }
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        let before_ready = !conn.ready_seen;
        let after = match &reason {
            // RFC 5321 §5.1: on to the next address when this one does not
            // take mail at all.
            CloseReason::GreetingRefused(reply) | CloseReason::HelloRefused(reply) => {
                conn.last_error = format!(
                    "{} said {}",
                    conn.host_label().unwrap_or_default(),
                    reply_text(reply)
                );
                After::NextHop
            }
            CloseReason::ConnectionLost | CloseReason::TimedOut(_) if before_ready => {
                conn.last_error = format!(
                    "{}: {}",
                    conn.host_label().unwrap_or_default(),
                    if conn.last_error.is_empty() {
                        "connection lost"
                    } else {
                        conn.last_error.as_str()
                    }
                );
                After::NextHop
            }
            // A greeting or EHLO reply that is not SMTP (garbage, a
            // megabyte of it, lines after the last): this host does not
            // take mail either. Reconnecting at once would only repeat it
            // (issue 10: 8 connections a second, 0 attempts counted).
            CloseReason::Malformed(error) if before_ready => {
                conn.last_error = format!(
                    "{}: the reply was not SMTP: {error}",
                    conn.host_label().unwrap_or_default()
                );
                After::NextHop
            }
            CloseReason::UnexpectedReply(reply) if before_ready => {
                conn.last_error = format!(
                    "{}: unexpected reply: {}",
                    conn.host_label().unwrap_or_default(),
                    reply_text(reply)
                );
                After::NextHop
            }
            CloseReason::TlsUnavailable(why) => {
                conn.last_error = format!("{} {why}", conn.host_label().unwrap_or_default());
                conn.tls_error = true;
                After::NextHop
            }
            // Withheld for want of TLS, or no mechanism: another address
            // of the hop may do better; if none does, this is the word.
            CloseReason::AuthUnavailable(why) => {
                let host = conn.host_label().unwrap_or_default();
                if let Some(times) = self.logs.auth_unavailable.hit() {
                    tracing::warn!(
                        destination = %conn.destination,
                        host = %host,
                        times,
                        "delivery: no AUTH: {why}"
                    );
                }
                conn.last_error = format!("{host}: {why}");
                conn.auth_error = Some(reason.deferral_reply_about(&host));
                After::NextHop
            }
            // Refused credentials are the route's fault, not the mail's:
            // deferred, never bounced, and loud, since every connection
            // will fail the same way until the operator fixes the route.
            CloseReason::AuthRefused(reply) => {
                let host = conn.host_label().unwrap_or_default();
                if let Some(times) = self.logs.auth_failed.hit() {
                    tracing::error!(
                        destination = %conn.destination,
                        host = %host,
                        reply = %reply_text(reply),
                        times,
                        "delivery: the next hop refused the route's credentials; mail is deferred until auth_user/auth_password are fixed"
                    );
                }
                conn.last_error = format!("{host}: AUTH refused: {}", reply_text(reply));
                conn.auth_error = Some(reason.deferral_reply_about(&host));
                if reply.class() == 5 {
                    // The other addresses of the hop would get the same
                    // credentials: trying them only adds failed logins
                    // (and the risk of a lockout).
                    conn.next_hop = conn.hops.len();
                }
                After::NextHop
            }
            // `out_tls_failed` said why, and whether to retry in plain.
            CloseReason::TlsFailed(_) if conn.plain_retry => After::SameHop,
            CloseReason::TlsFailed(_) => After::NextHop,
            CloseReason::ServiceClosing(_) => {
                // The server is overloaded or going away: slow down.
                self.server.queues.failed(
                    &conn.destination,
                    &conn.lane,
                    true,
                    pause,
                    pause_max,
                    now_ms,
                );
                After::Close
            }
            _ => After::Close,
        };
        tracing::debug!(destination = %conn.destination, ?reason, "delivery connection closed");
        conn.after = Some(after);
        self.out_settle(key);
    }

    /// Ends what is in flight, then moves on (next address, or free).
    fn out_settle(&mut self, key: ConnKey) {
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        if conn.in_flight() {
            if !conn.cancels_sent {
                conn.cancels_sent = true;
                for (busy, token) in [
                    (conn.connect_in_flight, Token::Connect(key)),
                    (conn.recv_in_flight, Token::OutRecv(key)),
                    (conn.send_in_flight, Token::OutSend(key)),
                ] {
                    if busy {
                        let _ = self.ring.cancel(token.encode(), Token::Cancel.encode());
                    }
                }
            }
            return;
        }
        for current in [conn.current.take(), conn.next.take()]
            .into_iter()
            .flatten()
        {
            // Ended mid-transaction without the client's word: later.
            let destination = current.destination.clone();
            let lane = self.outs.get_mut(key).expect("present").lane.clone();
            let host = self.outs.get_mut(key).expect("present").host_label();
            let tls = self.outs.get_mut(key).expect("present").tls_info.clone();
            let local = self.outs.get_mut(key).expect("present").local.clone();
            let site = self.outs.get_mut(key).expect("present").site.clone();
            let reply = Reply::new(421, Some((4, 4, 2)), "connection lost");
            let results = current
                .sent
                .into_iter()
                .map(|item| (item, Outcome::Deferred(reply.clone())))
                .collect();
            let via = Via {
                host: host.as_deref(),
                tls: tls.as_ref(),
                local: local.as_deref(),
                latency_ms: None,
                site: site.as_ref(),
            };
            self.settle_message(&destination, Some(&lane), &current.record, results, via);
        }
        let conn = self.outs.get_mut(key).expect("present");
        conn.fd = None;
        conn.tls = None;
        match conn.after.take() {
            Some(After::NextHop) if self.draining.is_none() => self.connect_next(key),
            Some(After::SameHop) if self.draining.is_none() => {
                conn.next_hop = conn.next_hop.saturating_sub(1);
                self.connect_next(key);
            }
            _ => self.out_free(key),
        }
    }

    fn out_free(&mut self, key: ConnKey) {
        let shard = self.id;
        if let Some(conn) = self.outs.remove(key) {
            let waiter = conn.waiter(shard);
            let actions =
                self.server
                    .queues
                    .closed(&conn.destination, &conn.lane, Some(waiter), unix_ms());
            self.act(actions);
        }
    }

    /// The destination cannot take mail now (`Deferred`) or ever
    /// (`Failed`): this connection ends, and when it was the only one, the
    /// ready recipients share its fate instead of waiting for a connection
    /// that will fail the same way. A deferral pauses the whole site when
    /// its hosts failed (`site_wide`), else the domain alone (its DNS).
    fn destination_down(&mut self, key: ConnKey, outcome: Outcome, site_wide: bool) {
        let now_ms = unix_ms();
        let (pause, pause_max) = self.pause_ms();
        let Some(conn) = self.outs.get_mut(key) else {
            return;
        };
        let destination = conn.destination.clone();
        let lane = conn.lane.clone();
        conn.fd = None;
        let permanent = matches!(outcome, Outcome::Failed(_));
        let others = if permanent {
            0
        } else {
            self.server
                .queues
                .failed(&destination, &lane, site_wide, pause, pause_max, now_ms)
        };
        tracing::warn!(
            destination = %destination,
            reply = %reply_text(outcome.reply()),
            "destination unavailable"
        );
        if others == 0 {
            let items = self.server.queues.drain_ready(&destination);
            self.settle_items(&destination, Some(&lane), items, &outcome);
        }
        self.out_free(key);
    }

    fn pause_ms(&self) -> (u64, u64) {
        let d = &self.server.live().delivery;
        (d.pause.as_millis() as u64, d.pause_max.as_millis() as u64)
    }

    /// Time: idle connections that waited long enough QUIT, rate-limited
    /// ones ask again, silent servers time out, and the queue's timer runs.
    pub(super) fn out_sweep(&mut self, now: Instant) {
        let shard = self.id;
        for key in self.outs.keys() {
            let Some(conn) = self.outs.get_mut(key) else {
                continue;
            };
            if conn.after.is_some() || now < conn.deadline {
                continue;
            }
            if conn.rate_wait {
                conn.rate_wait = false;
                self.out_next_transaction(key);
                self.out_progress(key);
                continue;
            }
            if conn.idle {
                conn.idle = false;
                let waiter = conn.waiter(shard);
                self.server.queues.unidle(&conn.destination, waiter);
                if let Some(client) = conn.client.as_mut() {
                    client.quit();
                }
                self.out_progress(key);
                continue;
            }
            match conn.stage {
                Stage::Resolving => {}
                Stage::Connecting => {
                    if conn.connect_in_flight && !conn.cancels_sent {
                        conn.cancels_sent = true;
                        let _ = self
                            .ring
                            .cancel(Token::Connect(key).encode(), Token::Cancel.encode());
                    }
                }
                Stage::Smtp if conn.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) => {
                    self.out_tls_failed(key, "the handshake timed out".into());
                }
                Stage::Smtp => {
                    conn.last_error = "timed out waiting for the server".into();
                    if let Some(client) = conn.client.as_mut() {
                        client.timed_out();
                    }
                    self.out_progress(key);
                }
            }
        }
        if self.draining.is_none() {
            let actions = self.server.queues.plan(unix_ms());
            self.act(actions);
        }
    }

    /// Shutdown: idle connections QUIT, busy ones after their transaction,
    /// those not yet connected are dropped.
    pub(super) fn out_drain(&mut self) {
        let shard = self.id;
        for key in self.outs.keys() {
            let Some(conn) = self.outs.get_mut(key) else {
                continue;
            };
            if conn.after.is_some() {
                continue;
            }
            if conn.idle {
                conn.idle = false;
                let waiter = conn.waiter(shard);
                self.server.queues.unidle(&conn.destination, waiter);
            }
            match conn.client.as_mut() {
                Some(client) if conn.stage == Stage::Smtp => {
                    client.quit();
                    self.out_progress(key);
                }
                _ => {
                    conn.after = Some(After::Close);
                    self.out_settle(key);
                }
            }
        }
    }
}

/// Whether `addr` is where one of baton's own listeners accepts mail (a
/// wildcard listener answers on loopback too).
/// Whether `conn` may carry mail for `other`, a domain waiting in its
/// site's line: the same route (next hop, credentials, pool) or MX
/// delivery on the same port, the same TLS policy, and for MX delivery
/// nothing in `other`'s MTA-STS policy that this connection does not
/// meet (a policy in `enforce` mode needs verified TLS to a host it
/// names; a domain baton has no recent answer for gets its own
/// connection, which asks).
fn may_carry(server: &Server, conn: &OutConn, other: &Destination) -> bool {
    let live = server.live();
    let route = live.routes.route(&conn.destination);
    if route != live.routes.route(other) || conn.destination.pool() != other.pool() {
        return false;
    }
    let config = &live.config;
    if config.tls_policy_for(other.as_str()) != config.tls_policy_for(conn.destination.as_str()) {
        return false;
    }
    if matches!(route, Route::NextHop(_)) || !config.shaping_for(other.as_str()).mta_sts {
        return true;
    }
    match server.mta_sts.last_answer(other.as_str()) {
        None => false,
        Some(None) => true,
        Some(Some(policy)) if policy.mode != Mode::Enforce => true,
        Some(Some(policy)) => {
            conn.tls_verify
                && conn.tls_info.is_some()
                && conn
                    .hop
                    .as_ref()
                    .is_some_and(|hop| policy.matches(&hop.name))
        }
    }
}

fn is_own_listener(listeners: &[crate::config::ListenerConfig], addr: SocketAddr) -> bool {
    listeners.iter().any(|l| {
        let ip = l.address.ip();
        l.address.port() == addr.port()
            && (ip == addr.ip() || (ip.is_unspecified() && addr.ip().is_loopback()))
    })
}

/// The resolver's text, prefixed with the domain unless it names it.
fn about(domain: &str, why: String) -> String {
    if why.contains(domain) {
        why
    } else {
        format!("{domain}: {why}")
    }
}

/// A `msghdr` with no name, no control data and no iovecs yet.
fn empty_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain data (pointers and integers, some of its
    // fields private to libc); all-zero is its documented empty value.
    unsafe { std::mem::zeroed() }
}

/// MAIL parameters as stored, without `SIZE=`: the client adds its own.
fn without_size(params: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(params.len());
    for param in params.split(|&b| b == b' ').filter(|p| !p.is_empty()) {
        if param.len() >= 5 && param[..5].eq_ignore_ascii_case(b"SIZE=") {
            continue;
        }
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(param);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_dropped_and_the_rest_kept() {
        assert_eq!(without_size(b"SIZE=123 BODY=8BITMIME"), b"BODY=8BITMIME");
        assert_eq!(
            without_size(b"body=8bitmime size=9 SMTPUTF8"),
            b"body=8bitmime SMTPUTF8"
        );
        assert_eq!(without_size(b""), b"");
    }
}
