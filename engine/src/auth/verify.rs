//! Verifying credentials off the shards.
//!
//! A password hash is slow on purpose (argon2id: tens of milliseconds), so
//! it never runs on a shard thread: a session hands its credentials over,
//! waits in its own state without blocking the ring, and the verdict comes
//! back through the shard's inbox. Three things sit in front of the hash:
//!
//! - the guard: failures are counted per client address and per user name
//!   over `failure_window`; past `failures_before_delay` each failure is
//!   answered after a delay that doubles; past `failures_max` the client is
//!   cut off, and wrong guesses at a user name past it get `454` (the right
//!   password still logs in: an attacker cannot lock an account out). The delays are kept by one timer thread, so a client being
//!   slowed holds no verification thread and others are served at once.
//! - the cache: a successful verification is remembered for `cache_ttl`
//!   as a keyed digest of the password (never the password), tied to the
//!   user's current hash, so an injector that reconnects for every message
//!   costs one hash per `cache_ttl`, not one per connection.
//! - an unknown user costs a dummy verification like a known one, and
//!   gets the same reply: no reply, and no timing, says whether a user
//!   exists.
//!
//! The users come from an [`ArcSwap`], replaced whole on reload.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use super::hash;
use super::users::{UserPolicy, Users};
use crate::config::AuthConfig;

/// Client addresses and user names the guard tracks at most; past it,
/// expired entries are purged, and if none has expired the oldest goes
/// (a flood of addresses must not grow memory without end).
const GUARD_ENTRIES_MAX: usize = 100_000;
/// Successful verifications remembered at most.
const CACHE_ENTRIES_MAX: usize = 100_000;
/// The longest a failure reply is delayed: `failure_delay` doubles up to
/// this many times itself.
const DELAY_DOUBLINGS_MAX: u32 = 5;
/// Users whose message rate is tracked at most.
const RATE_ENTRIES_MAX: usize = 100_000;
/// The window of `messages_per_hour`.
const RATE_WINDOW: Duration = Duration::from_secs(3600);

/// Who a session authenticated as: what flows with its messages.
#[derive(Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub policy: UserPolicy,
}

/// What became of an AUTH exchange.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// `235 2.7.0`.
    Accepted(Arc<Identity>),
    /// `535 5.7.8`, after the guard's delay.
    Refused,
    /// `454 4.7.0`: a wrong password for a user name with too many
    /// recent failures (from anywhere): a guess at an account under attack.
    Throttled,
    /// Too many failures from this client: `421 4.7.0`, and the
    /// connection closes.
    CutOff,
}

/// Credentials to check, as the client sent them.
pub struct Credentials {
    pub user: String,
    pub password: Vec<u8>,
    pub client: IpAddr,
}

impl Drop for Credentials {
    /// The password does not outlive the check in memory that is reused.
    fn drop(&mut self) {
        self.password.iter_mut().for_each(|b| *b = 0);
    }
}

type Reply = Box<dyn FnOnce(Verdict) + Send>;

struct Job {
    credentials: Credentials,
    reply: Reply,
}

/// The verification pool, the cache, the guard and the per-user message
/// rates; shared by every shard.
pub struct Verifier {
    jobs: Sender<Job>,
    shared: Arc<Shared>,
}

struct Shared {
    users: ArcSwap<Users>,
    limits: Limits,
    cache: Mutex<HashMap<String, CacheEntry>>,
    guard: Mutex<Guard>,
    rates: Mutex<HashMap<String, RateWindow>>,
    delays: Sender<Delayed>,
    /// Keys the cache's digests, so a dump of memory does not give a
    /// fast-to-test hash of a password.
    cache_key: [u8; 32],
}

#[derive(Clone, Copy, Debug)]
struct Limits {
    cache_ttl: Duration,
    failures_before_delay: u32,
    failure_delay: Duration,
    failures_max: u32,
    failure_window: Duration,
}

struct CacheEntry {
    digest: [u8; 32],
    /// The hash it was verified against: a changed password ends it.
    hash: String,
    expires: Instant,
}

#[derive(Default)]
struct Guard {
    clients: HashMap<IpAddr, Failures>,
    users: HashMap<String, Failures>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

struct RateWindow {
    count: u32,
    since: Instant,
}

struct Delayed {
    at: Instant,
    seq: u64,
    verdict: Verdict,
    reply: Reply,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl Verifier {
    /// Starts `config.verify_threads` verification threads and the delay
    /// timer.
    pub fn start(users: Users, config: &AuthConfig) -> Verifier {
        let (jobs, job_rx) = unbounded::<Job>();
        let (delays, delay_rx) = unbounded::<Delayed>();
        let mut cache_key = [0u8; 32];
        // Only a key for in-memory digests: any source of unpredictable
        // bytes will do, and the standard library's hasher seeds are one.
        for (i, chunk) in cache_key.chunks_mut(8).enumerate() {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        let shared = Arc::new(Shared {
            users: ArcSwap::from_pointee(users),
            limits: Limits {
                cache_ttl: config.cache_ttl,
                failures_before_delay: config.failures_before_delay,
                failure_delay: config.failure_delay,
                failures_max: config.failures_max,
                failure_window: config.failure_window,
            },
            cache: Mutex::new(HashMap::new()),
            guard: Mutex::new(Guard::default()),
            rates: Mutex::new(HashMap::new()),
            delays,
            cache_key,
        });
        for n in 0..config.verify_threads.max(1) {
            let shared = shared.clone();
            let jobs = job_rx.clone();
            thread::Builder::new()
                .name(format!("auth-verify-{n}"))
                .spawn(move || {
                    for job in jobs {
                        shared.run(job);
                    }
                })
                .expect("spawn an auth verification thread");
        }
        thread::Builder::new()
            .name("auth-delay".into())
            .spawn(move || run_delays(delay_rx))
            .expect("spawn the auth delay thread");
        Verifier { jobs, shared }
    }

    /// Replaces the users (a reload). Cached verifications of a user whose
    /// hash changed no longer match.
    /// The `[[pool]]` the user's mail leaves from, if the users file
    /// names one.
    pub fn user_pool(&self, name: &str) -> Option<String> {
        let users = self.shared.users.load();
        users.get(name).and_then(|user| user.policy.pool.clone())
    }

    pub fn replace_users(&self, users: Users) {
        self.shared.users.store(Arc::new(users));
    }

    /// Checks `credentials`; `reply` gets the verdict, on another thread,
    /// maybe later (the guard's delay).
    pub fn verify(&self, credentials: Credentials, reply: impl FnOnce(Verdict) + Send + 'static) {
        let reply: Reply = Box::new(reply);
        if let Some(verdict) = self.shared.before_hash(&credentials) {
            return self.shared.answer(verdict, Duration::ZERO, reply);
        }
        if let Err(err) = self.jobs.send(Job { credentials, reply }) {
            // The pool is gone only at exit; the session is told no.
            (err.0.reply)(Verdict::Refused);
        }
    }

    /// Counts one message for `identity` against its `messages_per_hour`;
    /// `false` when the hour's allowance is spent.
    pub fn take_message(&self, identity: &Identity) -> bool {
        let Some(limit) = identity.policy.messages_per_hour else {
            return true;
        };
        let now = Instant::now();
        let mut rates = self.shared.rates.lock().expect("rates lock");
        if rates.len() >= RATE_ENTRIES_MAX && !rates.contains_key(&identity.name) {
            rates.retain(|_, w| now.duration_since(w.since) < RATE_WINDOW);
        }
        let window = rates.entry(identity.name.clone()).or_insert(RateWindow {
            count: 0,
            since: now,
        });
        if now.duration_since(window.since) >= RATE_WINDOW {
            *window = RateWindow {
                count: 0,
                since: now,
            };
        }
        if window.count >= limit {
            return false;
        }
        window.count += 1;
        true
    }
}

impl Shared {
    /// What can be answered without a hash: a client or user past the
    /// guard's limits, or a cached success.
    fn before_hash(&self, credentials: &Credentials) -> Option<Verdict> {
        let now = Instant::now();
        {
            let guard = self.guard.lock().expect("guard lock");
            let window = self.limits.failure_window;
            // A user name under attack is not locked: its owner, with the
            // right password, still gets in; wrong guesses at it are
            // slowed and told 454 (see `run`).
            if current(guard.clients.get(&credentials.client), now, window)
                >= self.limits.failures_max
            {
                return Some(Verdict::CutOff);
            }
        }
        if self.limits.cache_ttl.is_zero() {
            return None;
        }
        let users = self.users.load();
        let user = users.get(&credentials.user)?;
        let digest = self.digest(&credentials.user, &credentials.password);
        let cache = self.cache.lock().expect("cache lock");
        let entry = cache.get(&credentials.user)?;
        let hit = entry.expires > now && entry.hash == user.password && entry.digest == digest;
        hit.then(|| {
            Verdict::Accepted(Arc::new(Identity {
                name: user.name.clone(),
                policy: user.policy.clone(),
            }))
        })
    }

    /// On a verification thread: the hash, then the bookkeeping.
    fn run(&self, job: Job) {
        let Job { credentials, reply } = job;
        let users = self.users.load();
        let user = users.get(&credentials.user);
        let ok = match user {
            Some(user) => hash::verify_password(&user.password, &credentials.password),
            None => {
                hash::dummy_verify(&credentials.password);
                false
            }
        };
        let now = Instant::now();
        if let (true, Some(user)) = (ok, user) {
            if !self.limits.cache_ttl.is_zero() {
                let digest = self.digest(&credentials.user, &credentials.password);
                let mut cache = self.cache.lock().expect("cache lock");
                if cache.len() >= CACHE_ENTRIES_MAX {
                    cache.retain(|_, e| e.expires > now);
                    if cache.len() >= CACHE_ENTRIES_MAX {
                        cache.clear();
                    }
                }
                cache.insert(
                    credentials.user.clone(),
                    CacheEntry {
                        digest,
                        hash: user.password.clone(),
                        expires: now + self.limits.cache_ttl,
                    },
                );
            }
            let identity = Identity {
                name: user.name.clone(),
                policy: user.policy.clone(),
            };
            return self.answer(Verdict::Accepted(Arc::new(identity)), Duration::ZERO, reply);
        }
        let (by_client, by_user) = {
            let mut guard = self.guard.lock().expect("guard lock");
            let window = self.limits.failure_window;
            (
                fail(&mut guard.clients, credentials.client, now, window),
                fail(&mut guard.users, credentials.user.clone(), now, window),
            )
        };
        let delay = self.delay_after(by_client.max(by_user));
        let verdict = if by_client >= self.limits.failures_max {
            Verdict::CutOff
        } else if by_user >= self.limits.failures_max {
            Verdict::Throttled
        } else {
            Verdict::Refused
        };
        self.answer(verdict, delay, reply);
    }

    /// The wait before the reply to the `failures`th failure.
    fn delay_after(&self, failures: u32) -> Duration {
        let over = failures.saturating_sub(self.limits.failures_before_delay);
        if over == 0 {
            return Duration::ZERO;
        }
        self.limits.failure_delay * (1u32 << (over - 1).min(DELAY_DOUBLINGS_MAX))
    }

    fn answer(&self, verdict: Verdict, delay: Duration, reply: Reply) {
        if delay.is_zero() {
            return reply(verdict);
        }
        let delayed = Delayed {
            at: Instant::now() + delay,
            seq: 0,
            verdict,
            reply,
        };
        if let Err(err) = self.delays.send(delayed) {
            let Delayed { verdict, reply, .. } = err.0;
            reply(verdict);
        }
    }

    /// A keyed digest of a user's password for the cache.
    fn digest(&self, user: &str, password: &[u8]) -> [u8; 32] {
        use blake2::digest::{KeyInit, Mac};
        let mut mac =
            blake2::Blake2bMac::<blake2::digest::consts::U32>::new_from_slice(&self.cache_key)
                .expect("a 32-byte key fits Blake2b");
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(password);
        mac.finalize().into_bytes().into()
    }
}

/// Failures within the window, from one entry of the guard.
fn current(failures: Option<&Failures>, now: Instant, window: Duration) -> u32 {
    match failures {
        Some(f) if now.duration_since(f.since) < window => f.count,
        _ => 0,
    }
}

/// Counts a failure of `key`; returns its failures within the window.
fn fail<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Failures>,
    key: K,
    now: Instant,
    window: Duration,
) -> u32 {
    if map.len() >= GUARD_ENTRIES_MAX && !map.contains_key(&key) {
        map.retain(|_, f| now.duration_since(f.since) < window);
        if map.len() >= GUARD_ENTRIES_MAX {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, f)| f.since)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
    }
    let entry = map.entry(key).or_insert(Failures {
        count: 0,
        since: now,
    });
    if now.duration_since(entry.since) >= window {
        *entry = Failures {
            count: 0,
            since: now,
        };
    }
    entry.count += 1;
    entry.count
}

/// The timer thread: answers each delayed verdict when its time comes.
fn run_delays(rx: Receiver<Delayed>) {
    let mut heap: BinaryHeap<Reverse<Delayed>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(d)| d.at <= now) {
            let Reverse(d) = heap.pop().expect("peeked");
            (d.reply)(d.verdict);
        }
        let wait = heap.peek().map_or(Duration::from_secs(3600), |Reverse(d)| {
            d.at.saturating_duration_since(now)
        });
        match rx.recv_timeout(wait) {
            Ok(mut delayed) => {
                seq += 1;
                delayed.seq = seq;
                heap.push(Reverse(delayed));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // Exit: answer what waits, now.
                for Reverse(d) in heap.drain() {
                    (d.reply)(d.verdict);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash::hash_password;

    fn config(cache_ttl: Duration) -> AuthConfig {
        AuthConfig {
            users: None,
            verify_threads: 1,
            cache_ttl,
            failures_before_delay: 3,
            failure_delay: Duration::from_millis(10),
            failures_max: 5,
            failure_window: Duration::from_secs(60),
        }
    }

    fn users(password: &str) -> Users {
        let text = format!(
            "[[user]]\nname = \"app\"\npassword = \"{}\"\n",
            hash_password(password.as_bytes())
        );
        Users::parse(&text, "users.toml").unwrap()
    }

    fn check(verifier: &Verifier, user: &str, password: &str) -> Verdict {
        let (tx, rx) = std::sync::mpsc::channel();
        verifier.verify(
            Credentials {
                user: user.into(),
                password: password.as_bytes().to_vec(),
                client: IpAddr::from([192, 0, 2, 1]),
            },
            move |v| {
                let _ = tx.send(v);
            },
        );
        rx.recv_timeout(Duration::from_secs(30)).expect("a verdict")
    }

    #[test]
    fn a_success_is_cached_until_the_password_changes() {
        let verifier = Verifier::start(users("one"), &config(Duration::from_secs(60)));
        assert!(matches!(
            check(&verifier, "app", "one"),
            Verdict::Accepted(_)
        ));
        assert!(verifier.shared.cache.lock().unwrap().contains_key("app"));
        // Answered from the cache: no job reaches the pool.
        let (tx, rx) = std::sync::mpsc::channel();
        verifier.verify(
            Credentials {
                user: "app".into(),
                password: b"one".to_vec(),
                client: IpAddr::from([192, 0, 2, 1]),
            },
            move |v| {
                let _ = tx.send(v);
            },
        );
        assert!(matches!(rx.try_recv(), Ok(Verdict::Accepted(_))));
        assert!(matches!(check(&verifier, "app", "two"), Verdict::Refused));
        verifier.replace_users(users("two"));
        assert!(matches!(check(&verifier, "app", "one"), Verdict::Refused));
        assert!(matches!(
            check(&verifier, "app", "two"),
            Verdict::Accepted(_)
        ));
    }

    #[test]
    fn a_users_pool_comes_before_its_sender_domains_and_others_have_none() {
        let hash = hash_password(b"x");
        let text = format!(
            "[[user]]\nname = \"bulk\"\npassword = \"{hash}\"\npool = \"marketing\"\n\n\
             [[user]]\nname = \"plain\"\npassword = \"{hash}\"\n"
        );
        let verifier = Verifier::start(
            Users::parse(&text, "users.toml").unwrap(),
            &config(Duration::ZERO),
        );
        let config = crate::config::Config::parse(
            "[[source]]\nname = \"s\"\naddress = \"127.0.0.4\"\n\
             [[pool]]\nname = \"marketing\"\nsources = [\"s\"]\n\
             [[pool]]\nname = \"news\"\nsources = [\"s\"]\n\
             [[sender_pool]]\ndomain = \"news.example\"\npool = \"news\"\n",
            "test",
        )
        .unwrap();
        let pools = crate::shaping::egress::SenderPools::new(&config);
        let pool = |user: &str, from: &str| {
            crate::server::sender_pool(&pools, Some(&verifier), user.as_bytes(), from.as_bytes())
                .map(|p| p.to_string())
        };
        assert_eq!(pool("bulk", "a@news.example").as_deref(), Some("marketing"));
        assert_eq!(pool("plain", "a@news.example").as_deref(), Some("news"));
        assert_eq!(pool("", "a@NEWS.example").as_deref(), Some("news"));
        assert_eq!(pool("", "a@other.example"), None);
        assert_eq!(pool("", ""), None);
    }

    #[test]
    fn an_unknown_user_and_a_wrong_password_get_the_same_verdict() {
        let verifier = Verifier::start(users("one"), &config(Duration::ZERO));
        assert!(matches!(
            check(&verifier, "nobody", "one"),
            Verdict::Refused
        ));
        assert!(matches!(check(&verifier, "app", "wrong"), Verdict::Refused));
        assert!(verifier.shared.cache.lock().unwrap().is_empty());
    }

    #[test]
    fn the_message_rate_of_a_user_is_counted_per_hour() {
        let verifier = Verifier::start(Users::empty(), &config(Duration::ZERO));
        let identity = Identity {
            name: "app".into(),
            policy: UserPolicy {
                messages_per_hour: Some(2),
                ..UserPolicy::default()
            },
        };
        assert!(verifier.take_message(&identity));
        assert!(verifier.take_message(&identity));
        assert!(!verifier.take_message(&identity));
    }
}
