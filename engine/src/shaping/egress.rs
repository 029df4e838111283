//! Egress sources and pools: the local addresses delivery connections
//! leave from, with the EHLO name each says, grouped into weighted pools.
//!
//! A connection takes one source from its route's pool (or `[delivery]
//! pool`) when it opens, binds the socket to that address before
//! connecting, and sends that source's EHLO name. Pools spread
//! connections by weight with a shared counter: of every `total` opens,
//! each source gets exactly its weight, so `["a:3", "b:1"]` sends three
//! connections from `a` for each from `b`, whichever shards open them.
//!
//! At start, each source's reverse DNS is checked ([`check_reverse_dns`]):
//! its PTR must name a host that resolves back to the address (forward-
//! confirmed reverse DNS), and that name should be its EHLO name; Gmail
//! refuses mail from an address without it (`5.7.25`). A mismatch is a
//! warning naming the source, not an error: DNS may lag a new address.
//!
//! Not yet: limits per site × source (connections and rates are per
//! destination), pools chosen by sender domain or user, warm-up.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::{Config, PoolConfig, SourceConfig};
use crate::outbound::ClientConfig;

/// The heaviest weight a pool entry may have: a bound on the counter's
/// cycle, and more than any real ratio needs.
pub const WEIGHT_MAX: u32 = 1000;

/// One local address and how to introduce it.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub address: IpAddr,
    /// The client configuration with this source's EHLO name.
    pub client: Arc<ClientConfig>,
}

/// Weighted sources.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    /// Each source with the cumulative weight up to and including it.
    sources: Vec<(Arc<Source>, u64)>,
    total: u64,
    next: AtomicU64,
}

impl Pool {
    /// The source for the next connection.
    pub fn pick(&self) -> Arc<Source> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.total;
        self.sources
            .iter()
            .find(|(_, upto)| n < *upto)
            .map(|(source, _)| source.clone())
            .expect("the cumulative weights reach the total")
    }

    /// The pool's sources, for logs and checks.
    pub fn sources(&self) -> impl Iterator<Item = &Arc<Source>> {
        self.sources.iter().map(|(s, _)| s)
    }
}

/// Every pool, by name, and the default.
#[derive(Debug, Default)]
pub struct Egress {
    pools: HashMap<String, Arc<Pool>>,
    default: Option<Arc<Pool>>,
}

impl Egress {
    /// Builds the sources and pools the configuration names (validation
    /// checked the names and weights). `base`: the client configuration
    /// a source's EHLO name goes into.
    pub fn new(config: &Config, base: &ClientConfig) -> Egress {
        let sources: HashMap<&str, Arc<Source>> = config
            .sources
            .iter()
            .map(|s| (s.name.as_str(), Arc::new(source(s, base))))
            .collect();
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
        Egress { pools, default }
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

fn source(config: &SourceConfig, base: &ClientConfig) -> Source {
    let mut client = base.clone();
    if !config.ehlo.is_empty() {
        client.helo_name = config.ehlo.clone();
    }
    Source {
        name: config.name.clone(),
        address: config.address,
        client: Arc::new(client),
    }
}

fn pool(config: &PoolConfig, sources: &HashMap<&str, Arc<Source>>) -> Pool {
    let mut upto = 0;
    let mut entries = Vec::new();
    for entry in &config.sources {
        let (name, weight) = parse_entry(entry).expect("validated");
        if let Some(source) = sources.get(name) {
            upto += u64::from(weight);
            entries.push((source.clone(), upto));
        }
    }
    Pool {
        name: config.name.clone(),
        sources: entries,
        total: upto.max(1),
        next: AtomicU64::new(0),
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
        let egress = Egress::new(&config, &base);
        let pool = egress.pool(None).unwrap();
        let picks: Vec<String> = (0..8).map(|_| pool.pick().name.clone()).collect();
        assert_eq!(picks, ["a", "a", "a", "b", "a", "a", "a", "b"]);
        let a = pool.pick();
        assert_eq!(a.client.helo_name, "a.example");
        let _ = pool.pick();
        let _ = pool.pick();
        assert_eq!(
            pool.pick().client.helo_name,
            "relay.example",
            "b has no ehlo of its own"
        );
        assert!(egress.pool(Some("nope")).is_none());
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
