//! MTA-STS (RFC 8461): whether a domain asks senders for verified TLS to
//! named MX hosts, found off the shards like DNS.
//!
//! One thread of its own runs a current-thread tokio runtime with its own
//! hickory resolver (the `[dns]` settings) and serves requests from the
//! shards by callback, as the resolver thread does: for each domain it
//! reads the `_mta-sts.<domain>` TXT record; when its `id` is not the one
//! of the cached policy, it fetches
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` (certificate
//! verified, no redirects, at most [`POLICY_BYTES_MAX`]) with hyper over
//! tokio-rustls, and caches the policy for its `max_age`, in memory and in
//! a JSON file beside the spool, so that it survives restarts (§5.1:
//! a cached policy stands when the TXT record or the fetch fails).
//!
//! What the shard does with a policy (`shard/outbound.rs`): in `enforce`
//! mode only MX hosts the policy names get the mail, over TLS verified
//! against their name; `testing` logs the hosts that would have been
//! refused and delivers as without a policy.

mod fetch;
mod policy;

pub use policy::{record_id, Mode, Policy, POLICY_BYTES_MAX};

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_resolver::TokioResolver;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

use crate::dns::ResolverConfig;

/// Requests waiting for the thread; past this a request is answered "no
/// policy" at once (delivery then goes as without MTA-STS).
pub const POLICY_REQUESTS_QUEUED_MAX: usize = 16_384;
/// Lookups (TXT, and fetches when needed) running at once.
pub const POLICY_LOOKUPS_IN_FLIGHT_MAX: usize = 256;
/// How long a lookup's answer is taken for the truth without asking
/// again (a domain's own connections ask each time).
const ANSWER_TRUSTED_SECS: u64 = 3600;
/// Last answers kept; past it they are forgotten all at once.
const ANSWERS_MAX: usize = 1 << 17;

/// Domains whose policy is cached; past this the ones expiring soonest go.
pub const POLICY_CACHE_ENTRIES_MAX: usize = 100_000;
/// The whole fetch: connect, TLS, request, response.
pub const POLICY_FETCH_TIMEOUT: Duration = Duration::from_secs(20);

type Done = Box<dyn FnOnce(Option<Arc<Policy>>) + Send>;

/// What the policy thread needs.
pub struct MtaStsConfig {
    pub dns: ResolverConfig,
    /// The HTTPS port of `mta-sts.<domain>`: 443 (RFC 8461 §3.3); tests
    /// and proxies may say otherwise.
    pub port: u16,
    /// Verifies the policy host's certificate (system roots or `tls_ca`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Where policies are kept across restarts.
    pub cache_path: PathBuf,
}

struct Request {
    domain: String,
    done: Done,
}

/// A cached policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Cached {
    id: String,
    policy: Arc<Policy>,
    expires_unix: u64,
}

/// A lookup's answer and until when (unix seconds) it is trusted.
type Answer = (Option<Arc<Policy>>, u64);

/// The cache and where it is saved.
struct State {
    cached: Mutex<HashMap<String, Cached>>,
    /// Each domain's last answer (policy or none) and until when it may
    /// be taken for the truth without asking: what lets a connection of a
    /// site carry another domain's mail (`MtaSts::last_answer`).
    answers: Mutex<HashMap<String, Answer>>,
    path: PathBuf,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

/// The policy thread's handle.
pub struct MtaSts {
    state: Arc<State>,
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl MtaSts {
    /// Loads the saved cache and starts the thread.
    pub fn start(config: MtaStsConfig) -> io::Result<MtaSts> {
        let cached = load_cache(&config.cache_path);
        let state = Arc::new(State {
            cached: Mutex::new(cached),
            answers: Mutex::new(HashMap::new()),
            path: config.cache_path,
            port: config.port,
            tls: config.tls,
        });
        let (requests, receiver) = mpsc::channel(POLICY_REQUESTS_QUEUED_MAX);
        let served = state.clone();
        let thread = crate::dns::spawn_resolver_thread("baton-mta-sts", config.dns, |resolver| {
            serve(resolver, receiver, served)
        })?;
        Ok(MtaSts {
            state,
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// The policy of `domain` (`None`: no policy, or `mode: none`). `done`
    /// runs once, on the policy thread (or on the caller's when the
    /// thread cannot take the request): it must be quick.
    pub fn policy(&self, domain: &str, done: Done) {
        let request = Request {
            domain: domain.to_ascii_lowercase(),
            done,
        };
        let Some(requests) = &self.requests else {
            return (request.done)(None);
        };
        if let Err(error) = requests.try_send(request) {
            let request = match error {
                mpsc::error::TrySendError::Full(request)
                | mpsc::error::TrySendError::Closed(request) => request,
            };
            tracing::warn!(domain = %request.domain, "mta-sts: too many lookups queued; going without a policy");
            (request.done)(None);
        }
    }
}

impl MtaSts {
    /// The policy the last lookup of `domain` found (`Some(None)`: none),
    /// if that was within `ANSWER_TRUSTED_SECS`; `None` when baton does
    /// not know.
    pub fn last_answer(&self, domain: &str) -> Option<Option<Arc<Policy>>> {
        let answers = self.state.answers.lock().expect("mta-sts answers");
        let (policy, until) = answers.get(domain)?;
        (*until > unix_secs()).then(|| policy.clone())
    }
}

impl Drop for MtaSts {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

async fn serve(
    resolver: Arc<TokioResolver>,
    mut requests: mpsc::Receiver<Request>,
    state: Arc<State>,
) {
    let permits = Arc::new(Semaphore::new(POLICY_LOOKUPS_IN_FLIGHT_MAX));
    while let Some(Request { domain, done }) = requests.recv().await {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            done(None);
            continue;
        };
        let (resolver, state) = (resolver.clone(), state.clone());
        tokio::spawn(async move {
            let policy = lookup(&resolver, &state, &domain).await;
            drop(permit);
            {
                let mut answers = state.answers.lock().expect("mta-sts answers");
                if answers.len() >= ANSWERS_MAX {
                    answers.clear();
                }
                let until = unix_secs() + ANSWER_TRUSTED_SECS;
                answers.insert(domain.clone(), (policy.clone(), until));
            }
            done(policy);
        });
    }
}

/// The policy in force for `domain` (RFC 8461 §5.1).
async fn lookup(resolver: &TokioResolver, state: &State, domain: &str) -> Option<Arc<Policy>> {
    let now = unix_secs();
    let cached = state
        .cached
        .lock()
        .expect("mta-sts cache")
        .get(domain)
        .filter(|c| c.expires_unix > now)
        .cloned();
    let in_force = |cached: Option<Cached>| {
        cached
            .map(|c| c.policy)
            .filter(|policy| policy.mode != Mode::None)
    };
    let Some(id) = fetch::txt_id(resolver, domain).await else {
        return in_force(cached);
    };
    if cached.as_ref().is_some_and(|c| c.id == id) {
        return in_force(cached);
    }
    match fetch::policy(resolver, domain, state.port, state.tls.clone()).await {
        Ok(policy) => {
            tracing::info!(domain, id, mode = ?policy.mode, mx = ?policy.mx, max_age = policy.max_age_secs, "mta-sts: policy fetched");
            let fresh = Cached {
                id,
                expires_unix: now + policy.max_age_secs,
                policy: Arc::new(policy),
            };
            store(state, domain, fresh.clone());
            in_force(Some(fresh))
        }
        Err(why) => {
            tracing::warn!(domain, error = %why, "mta-sts: policy fetch failed; the cached policy (if any) stands");
            in_force(cached)
        }
    }
}

fn store(state: &State, domain: &str, fresh: Cached) {
    let snapshot = {
        let mut cached = state.cached.lock().expect("mta-sts cache");
        if cached.len() >= POLICY_CACHE_ENTRIES_MAX && !cached.contains_key(domain) {
            if let Some(oldest) = cached
                .iter()
                .min_by_key(|(_, c)| c.expires_unix)
                .map(|(d, _)| d.clone())
            {
                cached.remove(&oldest);
            }
        }
        cached.insert(domain.to_owned(), fresh);
        serde_json::to_vec(&*cached)
    };
    // Written whole, then renamed over the old file: a crash leaves one
    // or the other.
    let result = snapshot.map_err(io::Error::other).and_then(|bytes| {
        let tmp = state.path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &state.path)
    });
    if let Err(err) = result {
        tracing::warn!(path = %state.path.display(), %err, "mta-sts: cannot save the policy cache");
    }
}

fn load_cache(path: &PathBuf) -> HashMap<String, Cached> {
    let Ok(bytes) = std::fs::read(path) else {
        return HashMap::new();
    };
    match serde_json::from_slice::<HashMap<String, Cached>>(&bytes) {
        Ok(cached) => {
            let now = unix_secs();
            cached
                .into_iter()
                .filter(|(_, c)| c.expires_unix > now)
                .collect()
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "mta-sts: the saved policy cache is unreadable; starting empty");
            HashMap::new()
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
