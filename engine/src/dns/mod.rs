//! TEMPORARY STUB until the resolver lands (replaced by the h-dns branch).
#![forbid(unsafe_code)]
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Mx(String),
    Host(String),
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxHost {
    pub name: String,
    pub preference: u16,
    pub addresses: Vec<IpAddr>,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Hosts(Vec<MxHost>),
    NullMx,
    NoSuchDomain(String),
    TempFail(String),
}
pub struct Resolver;
impl Resolver {
    pub fn start(_config: ResolverConfig) -> std::io::Result<Resolver> {
        Ok(Resolver)
    }
    pub fn resolve(&self, query: Query, done: Box<dyn FnOnce(Resolution) + Send>) {
        let name = match &query {
            Query::Mx(n) | Query::Host(n) => {
                n.trim_start_matches('[').trim_end_matches(']').to_string()
            }
        };
        match name.parse::<IpAddr>() {
            Ok(ip) => done(Resolution::Hosts(vec![MxHost {
                name,
                preference: 0,
                addresses: vec![ip],
            }])),
            Err(_) => done(Resolution::TempFail("stub".into())),
        }
    }
}
