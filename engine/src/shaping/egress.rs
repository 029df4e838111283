//! Egress sources and pools: the local addresses delivery connections
//! leave from, with the EHLO name each says, grouped into weighted pools.
//!
//! A connection takes one source of its route's pool (or `[delivery]
//! pool`) when it opens, binds the socket to that address before
//! connecting, and sends that source's EHLO name. The queue chooses the
//! source (`crate::queue`: limits and rules' actions hold per site ×
//! source), in a weighted round of the sources with room, so `["a:3",
//! "b:1"]` sends three connections from `a` for each from `b`.
//!
//! At start, each source's reverse DNS is checked ([`check_reverse_dns`]):
//! its PTR must name a host that resolves back to the address (forward-
//! confirmed reverse DNS), and that name should be its EHLO name; Gmail
//! refuses mail from an address without it (`5.7.25`). A mismatch is a
//! warning naming the source, not an error: DNS may lag a new address.
//!
//! Warm-up: a source with a `warmup` schedule sends at most so many
//! messages a day, ramping up with the days since it first sent
//! ([`Warmup`]), and optionally so many an hour; a source whose allowance
//! is spent rests until the next hour, so traffic moves to the warmer
//! ones, and when no source of the pool may send, no connection opens:
//! the mail waits in its queue, deferred, never bounced. Days are UTC
//! days. The counts are kept in
//! `<spool>/egress-warmup.json`, written by the housekeeper at most once a
//! second, so a restart does not hand out a day's allowance twice.
//!
//! Not yet: pools chosen by sender domain or user.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::{Config, PoolConfig, SourceConfig};
use crate::outbound::ClientConfig;
use crate::queue::Lanes;
use crate::route::DomainTable;

/// The heaviest weight a pool entry may have: a bound on the counter's
/// cycle, and more than any real ratio needs.
pub const WEIGHT_MAX: u32 = 1000;

/// The file the warm-up counts are kept in, in the spool directory.
pub const WARMUP_FILE: &str = "egress-warmup.json";
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;

/// One local address and how to introduce it.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub address: IpAddr,
    /// The client configuration with this source's EHLO name.
    pub client: Arc<ClientConfig>,
    pub warmup: Option<Warmup>,
}

impl Source {
    /// Whether the source may send a message now (its warm-up allows).
    pub fn allows(&self, now_ms: u64) -> bool {
        self.warmup.as_ref().is_none_or(|w| w.allows(now_ms))
    }

    /// Counts one message against today's allowance; `false` (nothing
    /// counted) when it is spent.
    pub fn take_message(&self, now_ms: u64) -> bool {
        self.warmup.as_ref().is_none_or(|w| w.take(now_ms))
    }

    /// Gives back a message counted by [`Source::take_message`] that was
    /// not sent after all.
    pub fn give_back(&self) {
        if let Some(w) = &self.warmup {
            w.give_back();
        }
    }
}

/// One entry of a warm-up schedule: from `day` (1 = the first day the
/// source sent) until the next entry's, at most `per_day` messages a day
/// and, if given, `per_hour` an hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub day: u64,
    pub per_day: u64,
    pub per_hour: Option<u64>,
}

/// A warm-up schedule and today's (and this hour's) count.
#[derive(Debug)]
pub struct Warmup {
    /// Days ascending from 1; after the last entry's day the source is
    /// warm (no cap).
    steps: Vec<Step>,
    state: Mutex<WarmupState>,
    changed: AtomicBool,
    /// With a cluster (`crate::cluster`), the caps are the cluster's: this
    /// node's part of them, granted by Redis in batches. Locked after
    /// `state`, never before.
    shared: Mutex<Option<SharedAllowance>>,
    /// Without Redis, a cluster node keeps to this share of the caps (the
    /// nodes it counts); 1 alone.
    divisor: AtomicUsize,
}

/// This node's part of a source's warm-up caps in a cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedAllowance {
    /// The UTC day and hour `left` belongs to.
    pub day: u64,
    pub hour: u64,
    /// Messages granted and not yet sent.
    pub left: u64,
    /// The cluster spent this day's or hour's cap.
    pub spent: bool,
    /// The UTC day the cluster first sent from the source.
    pub first_day: Option<u64>,
}

impl SharedAllowance {
    /// A new day or hour: what was granted for the old one is gone.
    fn roll(&mut self, now_ms: u64) {
        let (day, hour) = (now_ms / DAY_MS, now_ms / HOUR_MS);
        if (day, hour) != (self.day, self.hour) {
            self.day = day;
            self.hour = hour;
            self.left = 0;
            self.spent = false;
        }
    }
}

/// What a node asks the cluster for, for one source: `want` messages
/// under these caps (the step of the cluster's first day as this node
/// knows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WarmupAsk {
    pub day: u64,
    pub hour: u64,
    pub per_day: u64,
    /// 0: no hourly cap.
    pub per_hour: u64,
    pub want: u64,
}

/// Messages a node takes of a source's warm-up caps at a time: a
/// twentieth of the smaller cap, at least one (caps are small: a call per
/// few messages is nothing next to the messages).
const WARMUP_BATCH_PARTS: u64 = 20;

/// What [`WARMUP_FILE`] keeps per source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmupState {
    /// The UTC day (days since 1970) it first sent; `None`: not yet.
    pub first_day: Option<u64>,
    /// The UTC day `sent` counts.
    pub day: u64,
    pub sent: u64,
    /// The hour (hours since 1970) `hour_sent` counts.
    #[serde(default)]
    pub hour: u64,
    #[serde(default)]
    pub hour_sent: u64,
}

impl Warmup {
    fn new(steps: Vec<Step>, state: WarmupState) -> Warmup {
        Warmup {
            steps,
            state: Mutex::new(state),
            changed: AtomicBool::new(false),
            shared: Mutex::new(None),
            divisor: AtomicUsize::new(1),
        }
    }

    /// Today's step, `None` when warm; day 1 is the first day it sent.
    fn step(&self, state: &WarmupState, today: u64) -> Option<Step> {
        self.step_from(state.first_day, today)
    }

    /// Today's step for a source that first sent on `first_day`.
    fn step_from(&self, first_day: Option<u64>, today: u64) -> Option<Step> {
        let day = today - first_day.unwrap_or(today).min(today) + 1;
        let last = self.steps.last()?;
        if day > last.day {
            return None;
        }
        Some(
            self.steps
                .iter()
                .take_while(|step| step.day <= day)
                .last()
                .copied()
                .unwrap_or(Step {
                    day,
                    per_day: 0,
                    per_hour: None,
                }),
        )
    }

    /// Whether today's and this hour's counts allow one more.
    fn room(&self, state: &WarmupState, now_ms: u64) -> bool {
        let (today, hour) = (now_ms / DAY_MS, now_ms / HOUR_MS);
        let sent = if state.day == today { state.sent } else { 0 };
        let hour_sent = if state.hour == hour {
            state.hour_sent
        } else {
            0
        };
        let divisor = self.divisor.load(Ordering::Relaxed).max(1) as u64;
        self.step(state, today).is_none_or(|step| {
            sent < step.per_day / divisor
                && step.per_hour.is_none_or(|cap| hour_sent < cap / divisor)
        })
    }

    fn allows(&self, now_ms: u64) -> bool {
        let state = self.state.lock().expect("warm-up lock");
        let mut shared = self.shared.lock().expect("warm-up lock");
        if let Some(shared) = shared.as_mut() {
            shared.roll(now_ms);
            let first = shared.first_day.or(state.first_day);
            return self.step_from(first, now_ms / DAY_MS).is_none() || !shared.spent;
        }
        self.room(&state, now_ms)
    }

    fn take(&self, now_ms: u64) -> bool {
        let (today, hour) = (now_ms / DAY_MS, now_ms / HOUR_MS);
        let mut state = self.state.lock().expect("warm-up lock");
        let mut shared = self.shared.lock().expect("warm-up lock");
        if let Some(shared) = shared.as_mut() {
            shared.roll(now_ms);
            let first = shared.first_day.or(state.first_day);
            if self.step_from(first, today).is_some() {
                // Nothing granted yet: the next batch comes within a tick
                // of the cluster thread.
                if shared.left == 0 {
                    return false;
                }
                shared.left -= 1;
            }
        } else if !self.room(&state, now_ms) {
            return false;
        }
        if state.day != today {
            state.day = today;
            state.sent = 0;
        }
        if state.hour != hour {
            state.hour = hour;
            state.hour_sent = 0;
        }
        state.first_day.get_or_insert(today);
        state.sent += 1;
        state.hour_sent += 1;
        self.changed.store(true, Ordering::Relaxed);
        true
    }

    fn give_back(&self) {
        let mut state = self.state.lock().expect("warm-up lock");
        state.sent = state.sent.saturating_sub(1);
        state.hour_sent = state.hour_sent.saturating_sub(1);
        self.changed.store(true, Ordering::Relaxed);
        if let Some(shared) = self.shared.lock().expect("warm-up lock").as_mut() {
            shared.left += 1;
        }
    }

    /// The caps are the cluster's from now on (Redis answers).
    pub fn share(&self) {
        let mut shared = self.shared.lock().expect("warm-up lock");
        if shared.is_none() {
            *shared = Some(SharedAllowance::default());
        }
        self.divisor.store(1, Ordering::Relaxed);
    }

    /// Redis is out of reach: this node keeps to its share of the caps,
    /// counted locally, until it answers again.
    pub fn unshare(&self, nodes: usize) {
        *self.shared.lock().expect("warm-up lock") = None;
        self.divisor.store(nodes.max(1), Ordering::Relaxed);
    }

    /// What to ask the cluster for now: `None` when shared limits are off,
    /// the source is warm, the cluster spent the cap, or a batch is held.
    pub fn ask(&self, now_ms: u64) -> Option<WarmupAsk> {
        let state = self.state.lock().expect("warm-up lock");
        let mut shared = self.shared.lock().expect("warm-up lock");
        let shared = shared.as_mut()?;
        shared.roll(now_ms);
        let step = self.step_from(shared.first_day.or(state.first_day), shared.day)?;
        let per_hour = step.per_hour.unwrap_or(0);
        let smaller = if per_hour == 0 {
            step.per_day
        } else {
            step.per_day.min(per_hour)
        };
        let batch = (smaller / WARMUP_BATCH_PARTS).max(1);
        if shared.spent || shared.left >= batch {
            return None;
        }
        Some(WarmupAsk {
            day: shared.day,
            hour: shared.hour,
            per_day: step.per_day,
            per_hour,
            want: batch - shared.left,
        })
    }

    /// The cluster's answer to `ask`: `granted` messages, the day it
    /// first sent from the source, and what is left of its caps.
    pub fn granted(&self, ask: &WarmupAsk, granted: u64, first_day: u64, remaining: u64) {
        let mut shared = self.shared.lock().expect("warm-up lock");
        let Some(shared) = shared.as_mut() else {
            return;
        };
        shared.first_day = Some(first_day);
        if (shared.day, shared.hour) != (ask.day, ask.hour) {
            return; // granted for an hour that has passed
        }
        shared.left += granted;
        if granted < ask.want && remaining == 0 {
            shared.spent = true;
        }
    }

    pub fn state(&self) -> WarmupState {
        *self.state.lock().expect("warm-up lock")
    }
}

/// `"Nd:M"`: from day N (from 1), at most M messages a day; `"Nd:M:H/h"`
/// also at most H an hour (all at least 1).
pub fn parse_step(entry: &str) -> Result<Step, String> {
    let bad = || {
        format!("{entry:?}: \"<day>d:<per day>\" or \"<day>d:<per day>:<per hour>/h\", such as \"1d:200:25/h\"")
    };
    let mut parts = entry.split(':');
    let (Some(day), Some(per_day)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    let day: u64 = day
        .strip_suffix('d')
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    let per_day: u64 = per_day.parse().map_err(|_| bad())?;
    let per_hour = match parts.next() {
        None => None,
        Some(hourly) => Some(
            hourly
                .strip_suffix("/h")
                .ok_or_else(bad)?
                .parse::<u64>()
                .map_err(|_| bad())?,
        ),
    };
    if parts.next().is_some() || day == 0 || per_day == 0 || per_hour == Some(0) {
        return Err(bad());
    }
    Ok(Step {
        day,
        per_day,
        per_hour,
    })
}

/// Weighted sources.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    sources: Vec<Arc<Source>>,
    /// The sources' names and weights: the lanes of the queue
    /// (`crate::queue`), where limits hold per site × source.
    lanes: Lanes,
}

impl Pool {
    /// Its sources by name, with their weights.
    pub fn lanes(&self) -> Lanes {
        self.lanes.clone()
    }

    /// Its source called `name`.
    pub fn source_named(&self, name: &str) -> Option<&Arc<Source>> {
        self.sources.iter().find(|source| source.name == name)
    }

    /// The pool's sources, for logs and checks.
    pub fn sources(&self) -> impl Iterator<Item = &Arc<Source>> {
        self.sources.iter()
    }
}

/// `[[sender_pool]]`: the pool a MAIL FROM domain's mail leaves from.
#[derive(Debug, Default)]
pub struct SenderPools(DomainTable<Arc<str>>);

impl SenderPools {
    pub fn new(config: &Config) -> SenderPools {
        SenderPools(DomainTable::new(config.sender_pools.iter().map(|entry| {
            (entry.domain.clone(), Arc::from(entry.pool.as_str()))
        })))
    }

    /// The pool for mail from `reverse_path` (`local@domain`), if a table
    /// names its domain: exactly, else the longest `.parent`.
    pub fn for_sender(&self, reverse_path: &[u8]) -> Option<Arc<str>> {
        if self.0.is_empty() {
            return None;
        }
        let at = reverse_path.iter().rposition(|&b| b == b'@')?;
        let domain = String::from_utf8_lossy(&reverse_path[at + 1..]).to_ascii_lowercase();
        self.0.get(domain.trim_end_matches('.')).cloned()
    }
}

/// Every pool, by name, and the default.
#[derive(Debug, Default)]
pub struct Egress {
    pools: HashMap<String, Arc<Pool>>,
    default: Option<Arc<Pool>>,
    sources: Vec<Arc<Source>>,
    warmup_file: Option<PathBuf>,
}

impl Egress {
    /// Builds the sources and pools the configuration names (validation
    /// checked the names and weights). `base`: the client configuration
    /// a source's EHLO name goes into.
    pub fn new(config: &Config, base: &ClientConfig, warmup_file: Option<&Path>) -> Egress {
        let saved: BTreeMap<String, WarmupState> = warmup_file
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let sources: HashMap<&str, Arc<Source>> = config
            .sources
            .iter()
            .map(|s| {
                let state = saved.get(&s.name).copied().unwrap_or_default();
                (s.name.as_str(), Arc::new(source(s, base, state)))
            })
            .collect();
        let all: Vec<Arc<Source>> = sources.values().cloned().collect();
        let pools: HashMap<String, Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| (p.name.clone(), Arc::new(pool(p, &sources))))
            .collect();
        let default = config
            .delivery
            .pool
            .as_ref()
            .and_then(|name| pools.get(name).cloned());
        Egress {
            pools,
            default,
            sources: all,
            warmup_file: warmup_file.map(Path::to_path_buf),
        }
    }

    /// Writes the warm-up counts when any changed since the last call:
    /// atomically (temporary file, rename), from the housekeeper.
    pub fn save_warmup(&self) {
        let Some(path) = &self.warmup_file else {
            return;
        };
        let changed = self
            .sources
            .iter()
            .filter_map(|s| s.warmup.as_ref())
            .fold(false, |any, w| {
                w.changed.swap(false, Ordering::Relaxed) | any
            });
        if !changed {
            return;
        }
        let states: BTreeMap<&str, WarmupState> = self
            .sources
            .iter()
            .filter_map(|s| s.warmup.as_ref().map(|w| (s.name.as_str(), w.state())))
            .collect();
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&states)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(err) = written {
            tracing::warn!(file = %path.display(), %err, "egress: cannot save the warm-up counts");
        }
    }

    /// Every source with a warm-up schedule, by name.
    pub fn warmups(&self) -> impl Iterator<Item = (&str, &Warmup)> {
        self.sources
            .iter()
            .filter_map(|s| Some((s.name.as_str(), s.warmup.as_ref()?)))
    }

    /// The pool for a route naming `pool`, else the default; `None`: the
    /// host's own address and `delivery.helo_name`.
    pub fn pool(&self, pool: Option<&str>) -> Option<&Arc<Pool>> {
        match pool {
            Some(name) => self.pools.get(name),
            None => self.default.as_ref(),
        }
    }

    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }
}

fn source(config: &SourceConfig, base: &ClientConfig, state: WarmupState) -> Source {
    let mut client = base.clone();
    if !config.ehlo.is_empty() {
        client.helo_name = config.ehlo.clone();
    }
    let steps: Vec<Step> = config
        .warmup
        .iter()
        .filter_map(|entry| parse_step(entry).ok())
        .collect();
    Source {
        name: config.name.clone(),
        address: config.address,
        client: Arc::new(client),
        warmup: (!steps.is_empty()).then(|| Warmup::new(steps, state)),
    }
}

fn pool(config: &PoolConfig, sources: &HashMap<&str, Arc<Source>>) -> Pool {
    let mut entries = Vec::new();
    let mut lanes = Vec::new();
    for entry in &config.sources {
        let (name, weight) = parse_entry(entry).expect("validated");
        if let Some(source) = sources.get(name) {
            entries.push(source.clone());
            lanes.push((Arc::from(name), weight));
        }
    }
    Pool {
        name: config.name.clone(),
        sources: entries,
        lanes: lanes.into(),
    }
}

/// `"name"` or `"name:weight"`.
pub fn parse_entry(entry: &str) -> Result<(&str, u32), String> {
    let (name, weight) = match entry.rsplit_once(':') {
        Some((name, weight)) => {
            let weight: u32 = weight
                .parse()
                .map_err(|_| format!("{entry:?}: the weight after ':' is a number"))?;
            (name, weight)
        }
        None => (entry, 1),
    };
    if name.is_empty() || !(1..=WEIGHT_MAX).contains(&weight) {
        return Err(format!(
            "{entry:?}: a source name, with a weight from 1 to {WEIGHT_MAX}"
        ));
    }
    Ok((name, weight))
}

/// Checks every pooled source's reverse DNS on a thread of its own (off
/// the start: DNS can be slow) and logs a warning per source whose PTR is
/// missing, does not resolve back to it, or names another host than its
/// EHLO name.
pub fn check_reverse_dns(egress: &Egress, dns: crate::dns::ResolverConfig) {
    let nameservers: Vec<std::net::SocketAddr> = dns.nameservers.clone();
    let timeout = dns.timeout;
    let mut sources: Vec<Arc<Source>> = Vec::new();
    for pool in egress.pools() {
        for source in pool.sources() {
            if !sources.iter().any(|s| s.name == source.name) {
                sources.push(source.clone());
            }
        }
    }
    if sources.is_empty() {
        return;
    }
    let started =
        crate::dns::spawn_resolver_thread("egress-ptr", dns, move |resolver| async move {
            for source in sources {
                match reverse_dns(&resolver, &nameservers, timeout, &source).await {
                    Ok(name) => tracing::info!(
                        source = %source.name,
                        address = %source.address,
                        ptr = %name,
                        "source: reverse DNS confirmed and matches its EHLO name"
                    ),
                    Err(why) => tracing::warn!(
                        source = %source.name,
                        address = %source.address,
                        ehlo = %source.client.helo_name,
                        "source {}: {why}; receivers such as Gmail refuse mail from it (5.7.25)",
                        source.name
                    ),
                }
            }
        });
    if let Err(err) = started {
        tracing::warn!(%err, "sources: the reverse DNS check could not start");
    }
}

/// The source's forward-confirmed PTR name, if it is its EHLO name.
async fn reverse_dns(
    resolver: &hickory_resolver::TokioResolver,
    nameservers: &[std::net::SocketAddr],
    timeout: std::time::Duration,
    source: &Source,
) -> Result<String, String> {
    let names = if nameservers.is_empty() {
        let lookup = resolver
            .reverse_lookup(source.address)
            .await
            .map_err(|err| format!("no reverse DNS (PTR) for {}: {err}", source.address))?;
        ptr_names(lookup.answers())
    } else {
        // Asked of the configured nameservers directly: hickory answers
        // `localhost` for every loopback address (RFC 6761) without
        // asking, and tests give sources loopback addresses.
        ptr_direct(nameservers, source.address, timeout).await?
    };
    if names.is_empty() {
        return Err(format!("no reverse DNS (PTR) for {}", source.address));
    }
    let ehlo = source.client.helo_name.to_ascii_lowercase();
    let mut confirmed = Vec::new();
    for name in &names {
        if let Ok(ips) = resolver.lookup_ip(name.as_str()).await {
            if ips.iter().any(|ip| ip == source.address) {
                confirmed.push(name.clone());
            }
        }
    }
    if confirmed.is_empty() {
        return Err(format!(
            "its reverse DNS names {}, which does not resolve back to {}",
            names.join(", "),
            source.address
        ));
    }
    if !confirmed.contains(&ehlo) {
        return Err(format!(
            "its reverse DNS names {}, not its EHLO name {ehlo}",
            confirmed.join(", ")
        ));
    }
    Ok(ehlo)
}

fn ptr_names(records: &[hickory_resolver::proto::rr::Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|record| match &record.data {
            hickory_resolver::proto::rr::RData::PTR(ptr) => Some(ptr.0.to_ascii()),
            _ => None,
        })
        .map(|name| name.trim_end_matches('.').to_ascii_lowercase())
        .collect()
}

/// One PTR query over UDP to each nameserver in turn, until one answers.
async fn ptr_direct(
    nameservers: &[std::net::SocketAddr],
    ip: IpAddr,
    timeout: std::time::Duration,
) -> Result<Vec<String>, String> {
    use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query};
    use hickory_resolver::proto::rr::{Name, RecordType};
    use hickory_resolver::proto::serialize::binary::{BinDecodable, BinEncodable};
    let id = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        & 0xffff) as u16;
    let mut request = Message::new(id, MessageType::Query, OpCode::Query);
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(Name::from(ip), RecordType::PTR));
    let bytes = request.to_bytes().map_err(|e| e.to_string())?;
    let mut last = String::from("no nameserver answered");
    for server in nameservers {
        let bind: std::net::SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let exchange = async {
            let socket = tokio::net::UdpSocket::bind(bind).await?;
            socket.send_to(&bytes, server).await?;
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, from) = socket.recv_from(&mut buf).await?;
                if from == *server {
                    return Ok::<_, std::io::Error>(buf[..n].to_vec());
                }
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => match Message::from_bytes(&answer) {
                Ok(response) if response.metadata.id == id => {
                    let names = ptr_names(&response.answers);
                    if names.is_empty() {
                        return Err(format!("no reverse DNS (PTR) for {ip}"));
                    }
                    return Ok(names);
                }
                Ok(_) => last = format!("{server}: an answer to another query"),
                Err(err) => last = format!("{server}: {err}"),
            },
            Ok(Err(err)) => last = format!("{server}: {err}"),
            Err(_) => last = format!("{server}: no answer in {}s", timeout.as_secs()),
        }
    }
    Err(format!("no reverse DNS (PTR) for {ip}: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_spreads_connections_by_weight() {
        let config = Config::parse(
            "[[source]]\nname = \"a\"\naddress = \"127.0.0.4\"\nehlo = \"a.example\"\n\
             [[source]]\nname = \"b\"\naddress = \"127.0.0.5\"\n\
             [[pool]]\nname = \"p\"\nsources = [\"a:3\", \"b\"]\n\
             [delivery]\npool = \"p\"\nhelo_name = \"relay.example\"\n",
            "test",
        )
        .unwrap();
        let base = ClientConfig {
            helo_name: "relay.example".into(),
            limits: Default::default(),
        };
        let egress = Egress::new(&config, &base, None);
        let pool = egress.pool(None).unwrap();
        let lanes: Vec<(String, u32)> = pool
            .lanes()
            .iter()
            .map(|(n, w)| (n.to_string(), *w))
            .collect();
        assert_eq!(lanes, [("a".to_owned(), 3), ("b".to_owned(), 1)]);
        assert_eq!(
            pool.source_named("a").unwrap().client.helo_name,
            "a.example"
        );
        assert_eq!(
            pool.source_named("b").unwrap().client.helo_name,
            "relay.example",
            "b has no ehlo of its own"
        );
        assert!(pool.source_named("c").is_none());
        assert!(egress.pool(Some("nope")).is_none());
    }

    #[test]
    fn warm_up_caps_each_day_and_ramps_with_the_days_of_use() {
        let day = |d: u64| d * DAY_MS + 1;
        let step = |day, per_day| Step {
            day,
            per_day,
            per_hour: None,
        };
        let warmup = Warmup::new(vec![step(1, 2), step(3, 4)], WarmupState::default());
        // Day 1 (first use): 2.
        assert!(warmup.take(day(100)) && warmup.take(day(100)));
        assert!(!warmup.take(day(100)) && !warmup.allows(day(100)));
        // Day 2 holds day 1's cap; day 3 raises it to 4.
        assert!(warmup.take(day(101)) && warmup.take(day(101)) && !warmup.take(day(101)));
        for _ in 0..4 {
            assert!(warmup.take(day(102)));
        }
        assert!(!warmup.take(day(102)));
        // After the last entry's day: warm, no cap.
        for _ in 0..100 {
            assert!(warmup.take(day(103)));
        }
        assert_eq!(warmup.state().first_day, Some(100));
        assert_eq!(parse_step("2d:500"), Ok(step(2, 500)));
        assert!(
            parse_step("0d:5").is_err()
                && parse_step("2:5").is_err()
                && parse_step("2d:0").is_err()
        );
    }

    #[test]
    fn an_hourly_cap_spreads_the_days_allowance_over_the_hours() {
        let at = |day: u64, hour: u64| day * DAY_MS + hour * HOUR_MS + 1;
        let step = parse_step("1d:5:2/h").unwrap();
        assert_eq!(
            step,
            Step {
                day: 1,
                per_day: 5,
                per_hour: Some(2)
            }
        );
        let warmup = Warmup::new(vec![step], WarmupState::default());
        assert!(warmup.take(at(100, 0)) && warmup.take(at(100, 0)));
        assert!(!warmup.take(at(100, 0)), "two an hour");
        assert!(!warmup.allows(at(100, 0)));
        assert!(warmup.allows(at(100, 1)), "the next hour");
        assert!(warmup.take(at(100, 1)) && warmup.take(at(100, 1)));
        assert!(warmup.take(at(100, 2)));
        assert!(
            !warmup.take(at(100, 2)) && !warmup.take(at(100, 3)),
            "five a day"
        );
        // The next day, past the last entry: warm.
        assert!(warmup.take(at(101, 0)) && warmup.take(at(101, 0)));
        for bad in ["1d:5:0/h", "1d:5:2", "1d:5:2/m", "1d:5:2/h:1"] {
            assert!(parse_step(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entries_parse_with_and_without_weights() {
        assert_eq!(parse_entry("ip1"), Ok(("ip1", 1)));
        assert_eq!(parse_entry("ip1:30"), Ok(("ip1", 30)));
        assert!(parse_entry("ip1:0").is_err());
        assert!(parse_entry("ip1:x").is_err());
        assert!(parse_entry(":3").is_err());
    }
}
