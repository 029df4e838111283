//! The resolver thread: where mail for a domain goes (RFC 5321 §5.1).
//!
//! The shards must never block, and DNS answers take milliseconds to
//! seconds; so one thread of its own runs hickory's resolver on a
//! current-thread tokio runtime. A shard calls [`Resolver::resolve`] with
//! a callback; the query crosses a bounded channel, runs as a task beside
//! every other lookup, and the callback gets the [`Resolution`] on the
//! resolver thread.
//!
//! - `literal`: address literals (`[192.0.2.1]`), which need no DNS.
//! - `mx`: null MX, the exchange list, and the per-answer shuffle of
//!   equal-preference hosts, with the module's one random source.
//! - `lookup`: the queries themselves and the sorting of hickory's errors
//!   into bounce (NXDOMAIN, null MX) and retry (SERVFAIL, timeout).
//!
//! # Caching
//!
//! hickory caches every record for its TTL, clamped to
//! [`POSITIVE_TTL_MAX`]; negative answers (NXDOMAIN, NODATA) for their
//! SOA's negative TTL (RFC 2308), clamped to
//! [`NEGATIVE_TTL_MIN`]..=[`NEGATIVE_TTL_MAX`]. SERVFAIL, REFUSED and
//! timeouts are never cached: the next query asks again. Identical queries
//! in flight at the same time share one lookup; each caller still gets its
//! own shuffle.

#![forbid(unsafe_code)]

mod literal;
mod lookup;
mod mx;

pub(crate) use lookup::answers;
pub use mx::MX_HOSTS_MAX;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts,
    ResolverConfig as HickoryConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::sync::{mpsc, Semaphore};

use mx::Rng;

/// Queries waiting for the resolver thread to pick them up. Past this,
/// [`Resolver::resolve`] answers `TempFail` at once instead of queueing.
pub const QUERIES_QUEUED_MAX: usize = 16_384;
/// Distinct lookups running at once. Each may send up to
/// 1 + 2 × (1 + [`MX_HOSTS_MAX`]) queries; when all are busy, queries wait
/// in the channel.
pub const LOOKUPS_IN_FLIGHT_MAX: usize = 1_024;
/// Callers waiting on one in-flight lookup (say, a burst of mail to one
/// big provider during a slow answer). Past this, `TempFail` at once.
pub const WAITERS_PER_LOOKUP_MAX: usize = 65_536;
/// Entries in hickory's record cache (one per name and type).
pub const CACHE_ENTRIES_MAX: u64 = 10_000;
/// No answer is trusted longer than a day, whatever its TTL says, so that
/// a changed MX is picked up.
pub const POSITIVE_TTL_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// NXDOMAIN and NODATA are kept at least this long, so a storm of mail to
/// a dead domain does not become a storm of queries.
pub const NEGATIVE_TTL_MIN: Duration = Duration::from_secs(5);
/// ... and at most this long (RFC 2308 §5 suggests one to three hours).
pub const NEGATIVE_TTL_MAX: Duration = Duration::from_secs(60 * 60);

/// Settings (the config module will fill them from `[dns]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Nameservers to ask (UDP, with TCP fallback on truncation); empty =
    /// the system's (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// Per-query timeout.
    pub timeout: Duration,
    /// Tries per query (1 = no retry).
    pub attempts: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// A question for the resolver.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Query {
    /// Where mail for this domain goes (RFC 5321 §5.1). The domain is
    /// lowercase ASCII; an address literal `[192.0.2.1]` or
    /// `[IPv6:2001:db8::1]` resolves to itself without DNS.
    Mx(String),
    /// The addresses of one host name (a smart host named in a route). An
    /// IP literal, bare or bracketed, resolves to itself.
    Host(String),
}

/// One host to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxHost {
    /// The exchange's name, lowercase, without the trailing dot (or the
    /// queried name itself for implicit MX, `Host` queries and literals).
    pub name: String,
    pub preference: u16,
    /// IPv4 addresses first, then IPv6, each as DNS gave them; never empty.
    pub addresses: Vec<IpAddr>,
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Hosts to try, in this order: MX preference ascending, random order
    /// within equal preference (RFC 5321 §5.1), each with its A and AAAA
    /// addresses (hosts without any address are left out). When the domain
    /// has no MX records but has A/AAAA, one host: the domain itself with
    /// preference 0 (implicit MX). A `Host` query or a literal gives one
    /// host with preference 0.
    Hosts(Vec<MxHost>),
    /// RFC 7505 null MX (a single MX with preference 0 and exchange "."):
    /// mail to the domain must bounce at once.
    NullMx,
    /// NXDOMAIN (or no MX and no A/AAAA — NODATA for everything): bounce at
    /// once. The text is for the bounce reply.
    NoSuchDomain(String),
    /// SERVFAIL, timeout, refused, or MX hosts of which none has an
    /// address: try again later. The text says why (logs, deferral replies).
    TempFail(String),
}

/// What a caller hands over to hear the answer.
type Done = Box<dyn FnOnce(Resolution) + Send>;

/// The resolver thread's handle. `Send + Sync`: share it in an `Arc`.
/// Dropping it stops the thread; lookups still running are abandoned and
/// their callers told `TempFail`.
pub struct Resolver {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

struct Request {
    query: Query,
    reply: Reply,
}

impl Resolver {
    /// Starts the resolver thread (a current-thread tokio runtime running
    /// hickory's `TokioResolver`); returns once it is ready to take queries,
    /// or with the error that kept it from starting (an unreadable
    /// /etc/resolv.conf, a zero timeout or attempt count).
    pub fn start(config: ResolverConfig) -> io::Result<Resolver> {
        Resolver::start_seeded(config, Rng::from_time().next_u64())
    }

    /// [`Resolver::start`] with the seed of the one random source (the
    /// order of equal-preference MX hosts) fixed, so a test's sequence of
    /// answers repeats exactly (time and randomness through one seam).
    pub fn start_seeded(config: ResolverConfig, seed: u64) -> io::Result<Resolver> {
        if config.attempts == 0 || config.timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "dns: timeout and attempts must be above zero",
            ));
        }
        let (requests, receiver) = mpsc::channel(QUERIES_QUEUED_MAX);
        let thread = spawn_resolver_thread("baton-dns", config, move |resolver| {
            // Dropping the runtime drops the lookups still running; their
            // `InFlight` guards answer their callers.
            serve(resolver, receiver, Rng::new(seed))
        })?;
        Ok(Resolver {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Asks; never blocks the caller. `done` runs exactly once, with the
    /// answer: on the resolver thread, literals and cache hits included,
    /// so it must be quick and must not block (hand the answer to the
    /// shard and return). The one exception: when the resolver cannot take
    /// the query (more than [`QUERIES_QUEUED_MAX`] waiting, or its thread
    /// gone), `done` runs on the caller's thread, before `resolve`
    /// returns, with `TempFail`.
    pub fn resolve(&self, query: Query, done: Box<dyn FnOnce(Resolution) + Send>) {
        let request = Request {
            query,
            reply: Reply(Some(done)),
        };
        let Some(requests) = &self.requests else {
            // Unreachable: `requests` is taken only by drop. Were it not,
            // the reply's guard would still answer.
            return;
        };
        if let Err(error) = requests.try_send(request) {
            let (request, why) = match error {
                mpsc::error::TrySendError::Full(request) => (request, "dns: resolver overloaded"),
                mpsc::error::TrySendError::Closed(request) => (request, "dns: resolver stopped"),
            };
            request.reply.send(Resolution::TempFail(why.to_string()));
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        // The thread's loop ends when its channel closes.
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            // A callback that drops the last handle runs on the resolver
            // thread itself, which cannot wait for its own end; it ends
            // right after that callback returns.
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// Starts a thread running a current-thread tokio runtime with a hickory
/// resolver built from `config`, and `serve` on it; returns once the
/// resolver is built, or with the error that kept it from starting. The
/// resolver thread and the MTA-STS policy thread both start this way.
pub(crate) fn spawn_resolver_thread<F, Fut>(
    name: &str,
    config: ResolverConfig,
    serve: F,
) -> io::Result<JoinHandle<()>>
where
    F: FnOnce(Arc<TokioResolver>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (ready, started) = std::sync::mpsc::sync_channel(1);
    let thread = thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            };
            let resolver = {
                let _context = runtime.enter();
                match build_resolver(&config) {
                    Ok(resolver) => Arc::new(resolver),
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                }
            };
            let _ = ready.send(Ok(()));
            runtime.block_on(serve(resolver));
        })?;
    match started.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other(format!(
                "{name}: the thread died starting"
            )))
        }
    }
}

/// hickory's resolver, set up for mail (see the module doc on caching).
fn build_resolver(config: &ResolverConfig) -> io::Result<TokioResolver> {
    let mut builder = if config.nameservers.is_empty() {
        match TokioResolver::builder_tokio() {
            Ok(builder) => builder,
            Err(error) => {
                // Still start: routes to IP next hops and address literals
                // need no DNS; every other lookup fails temporarily, so
                // mail waits in the queue for a fixed configuration.
                tracing::warn!(
                    %error,
                    "dns: cannot read the system configuration (/etc/resolv.conf); \
                     set [dns] nameservers; MX lookups will fail until then"
                );
                TokioResolver::builder_with_config(
                    HickoryConfig::from_name_servers(Vec::new()),
                    TokioRuntimeProvider::default(),
                )
            }
        }
    } else {
        let servers = config.nameservers.iter().map(name_server).collect();
        TokioResolver::builder_with_config(
            HickoryConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.timeout = config.timeout;
    // hickory counts retries after the first try.
    options.attempts = config.attempts - 1;
    // Names are made absolute before asking (lookup.rs); ndots 0 says the
    // same to anyone reading the options.
    options.ndots = 0;
    // Large MX sets fit in one UDP answer instead of falling back to TCP.
    options.edns0 = true;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.cache_size = CACHE_ENTRIES_MAX;
    options.positive_max_ttl = Some(POSITIVE_TTL_MAX);
    options.negative_min_ttl = Some(NEGATIVE_TTL_MIN);
    options.negative_max_ttl = Some(NEGATIVE_TTL_MAX);
    // Nameservers named in the config are the whole truth; /etc/hosts
    // only speaks with the system's own configuration.
    options.use_hosts_file = if config.nameservers.is_empty() {
        ResolveHosts::Auto
    } else {
        ResolveHosts::Never
    };
    builder
        .build()
        .map_err(|error| io::Error::other(format!("dns: {error}")))
}

/// One configured nameserver: UDP first, TCP when an answer comes back
/// truncated, both on the configured port (a test server or a local
/// forwarder need not listen on 53).
fn name_server(address: &SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = address.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = address.port();
    // Negative answers are trusted: an NXDOMAIN is final, not a reason to
    // ask the next server.
    NameServerConfig::new(address.ip(), true, vec![udp, tcp])
}

/// Lookups in flight, by query, with everyone waiting on each.
type Waiting = Arc<Mutex<HashMap<Query, Vec<Reply>>>>;

/// The resolver thread's loop: one task per distinct query.
async fn serve(resolver: Arc<TokioResolver>, mut requests: mpsc::Receiver<Request>, mut rng: Rng) {
    let waiting: Waiting = Arc::default();
    let permits = Arc::new(Semaphore::new(LOOKUPS_IN_FLIGHT_MAX));
    while let Some(Request { query, reply }) = requests.recv().await {
        if let Some(waiters) = lock(&waiting).get_mut(&query) {
            if waiters.len() < WAITERS_PER_LOOKUP_MAX {
                waiters.push(reply);
            } else {
                reply.send(Resolution::TempFail("dns: resolver overloaded".to_string()));
            }
            continue;
        }
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            unreachable!("the semaphore is never closed");
        };
        lock(&waiting).insert(query.clone(), vec![reply]);
        let lookup = InFlight {
            waiting: Arc::clone(&waiting),
            query,
            rng: Rng::new(rng.next_u64()),
            finished: false,
        };
        let resolver = Arc::clone(&resolver);
        tokio::spawn(async move {
            let _permit = permit;
            let answer = lookup::resolve(&resolver, &lookup.query).await;
            lookup.finish(&answer);
        });
    }
}

fn lock(waiting: &Waiting) -> std::sync::MutexGuard<'_, HashMap<Query, Vec<Reply>>> {
    // A panicking callback cannot leave the map half-updated: every
    // change is one insert, push or remove.
    waiting.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One lookup's claim on its waiters. Whatever ends the lookup (an
/// answer, a panic, the runtime dropping the task at shutdown), its
/// waiters hear exactly once.
struct InFlight {
    waiting: Waiting,
    query: Query,
    rng: Rng,
    finished: bool,
}

impl InFlight {
    fn finish(mut self, answer: &Resolution) {
        self.answer(answer);
    }

    fn answer(&mut self, answer: &Resolution) {
        self.finished = true;
        let waiters = lock(&self.waiting).remove(&self.query).unwrap_or_default();
        for reply in waiters {
            reply.send(shuffled(answer, &mut self.rng));
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.finished {
            self.answer(&Resolution::TempFail(
                "dns: lookup abandoned (resolver stopping)".to_string(),
            ));
        }
    }
}

/// The answer as one caller gets it: equal-preference hosts in a fresh
/// random order, so that callers sharing one lookup (or one cache entry)
/// still spread over the hosts.
fn shuffled(answer: &Resolution, rng: &mut Rng) -> Resolution {
    match answer {
        Resolution::Hosts(hosts) => Resolution::Hosts(mx::order(hosts.clone(), rng)),
        other => other.clone(),
    }
}

/// A caller's callback that runs exactly once: with the answer, or, if
/// dropped unanswered, with `TempFail`.
struct Reply(Option<Done>);

impl Reply {
    fn send(mut self, answer: Resolution) {
        if let Some(done) = self.0.take() {
            done(answer);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done(Resolution::TempFail("dns: resolver stopped".to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc as std_mpsc;

    /// Answers that need no network: literals, through the real thread.
    fn ask(resolver: &Resolver, query: Query) -> Resolution {
        let (tx, rx) = std_mpsc::channel();
        resolver.resolve(
            query,
            Box::new(move |answer| {
                let _ = tx.send(answer);
            }),
        );
        rx.recv_timeout(Duration::from_secs(10))
            .expect("an answer in time")
    }

    /// A nameserver that never answers: a bound UDP socket nobody reads.
    /// Nothing leaves the machine.
    fn silent_nameserver() -> std::net::UdpSocket {
        std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket")
    }

    fn resolver_asking(server: &std::net::UdpSocket, timeout: Duration) -> Resolver {
        Resolver::start(ResolverConfig {
            nameservers: vec![server.local_addr().unwrap()],
            timeout,
            attempts: 1,
        })
        .expect("resolver starts")
    }

    #[test]
    fn dns_resolver_answers_literals_on_its_thread() {
        let server = silent_nameserver();
        let resolver = resolver_asking(&server, Duration::from_millis(200));
        assert_eq!(
            ask(&resolver, Query::Mx("[192.0.2.1]".to_string())),
            Resolution::Hosts(vec![MxHost {
                name: "[192.0.2.1]".to_string(),
                preference: 0,
                addresses: vec!["192.0.2.1".parse().unwrap()],
            }])
        );
        assert_eq!(
            ask(&resolver, Query::Host("2001:db8::5".to_string())),
            Resolution::Hosts(vec![MxHost {
                name: "2001:db8::5".to_string(),
                preference: 0,
                addresses: vec!["2001:db8::5".parse().unwrap()],
            }])
        );
        assert!(matches!(
            ask(&resolver, Query::Mx("[bogus]".to_string())),
            Resolution::NoSuchDomain(_)
        ));
    }

    #[test]
    fn dns_rejects_zero_limits() {
        let zero_attempts = ResolverConfig {
            attempts: 0,
            ..ResolverConfig::default()
        };
        assert_eq!(
            Resolver::start(zero_attempts).err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidInput)
        );
        let zero_timeout = ResolverConfig {
            timeout: Duration::ZERO,
            ..ResolverConfig::default()
        };
        assert!(Resolver::start(zero_timeout).is_err());
    }

    #[test]
    fn dns_reply_answers_once_even_when_dropped() {
        let (tx, rx) = std_mpsc::channel();
        let reply = Reply(Some(Box::new(move |answer| {
            let _ = tx.send(answer);
        })));
        drop(reply);
        assert!(matches!(rx.try_recv(), Ok(Resolution::TempFail(_))));
        assert!(rx.try_recv().is_err(), "exactly once");
    }

    #[test]
    fn dns_drop_answers_lookups_in_flight() {
        // The nameserver never answers, so the lookup is still running
        // when the resolver goes away.
        let server = silent_nameserver();
        let resolver = resolver_asking(&server, Duration::from_secs(30));
        let (tx, rx) = std_mpsc::channel();
        resolver.resolve(
            Query::Mx("example.com".to_string()),
            Box::new(move |answer| {
                let _ = tx.send(answer);
            }),
        );
        drop(resolver);
        let answer = rx.recv_timeout(Duration::from_secs(10)).expect("answered");
        assert!(matches!(answer, Resolution::TempFail(_)), "{answer:?}");
    }

    #[test]
    fn dns_handle_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Resolver>();
    }
}
