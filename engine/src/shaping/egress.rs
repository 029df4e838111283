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
