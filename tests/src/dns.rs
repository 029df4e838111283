//! A real DNS server for tests: UDP and TCP on one ephemeral loopback
//! port, serving a zone the test describes. Any client (dig, hickory,
//! baton's resolver) can query it.
//!
//! ```no_run
//! use baton_tests::dns::{DnsServer, Zone};
//! let server = DnsServer::start(
//!     Zone::new()
//!         .mx("example.test", 10, "mx.example.test")
//!         .a("mx.example.test", "127.0.0.1".parse().unwrap()),
//! );
//! // point the resolver at server.addr
//! ```
//!
//! Names not in the zone get NXDOMAIN; a name in the zone asked for a type
//! it lacks gets NOERROR with no answers (NODATA). Both carry an SOA in
//! the authority section, as real servers do, so that resolvers cache
//! them (RFC 2308). Answers too big for the client's UDP size come back
//! truncated, and the client asks again over TCP.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, PTR, SOA};
use hickory_proto::rr::{Name, RData, Record};

/// TTL of records added before any [`Zone::ttl`] call.
pub const TTL_DEFAULT: u32 = 300;
/// The largest query we read; real queries are a few dozen bytes.
const QUERY_BYTES_MAX: usize = 4096;
/// The UDP answer size we offer EDNS clients (the DNS flag day 2020 value).
const EDNS_PAYLOAD_BYTES: u16 = 1232;
/// A TCP client that sends nothing for this long is dropped.
const TCP_IDLE_MAX: Duration = Duration::from_secs(10);
/// Tries to find a port free for both UDP and TCP.
const BIND_TRIES_MAX: usize = 64;

/// How the server treats queries for one name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Behaviour {
    #[default]
    Answer,
    ServFail,
    Silent,
}

#[derive(Clone, Debug, Default)]
struct Node {
    records: Vec<(u32, RData)>,
    behaviour: Behaviour,
}

/// The records a [`DnsServer`] serves, built up by the test.
#[derive(Clone, Debug)]
pub struct Zone {
    names: HashMap<String, Node>,
    ttl: u32,
}

impl Default for Zone {
    fn default() -> Self {
        Zone::new()
    }
}

impl Zone {
    /// An empty zone: every name is NXDOMAIN.
    pub fn new() -> Zone {
        Zone {
            names: HashMap::new(),
            ttl: TTL_DEFAULT,
        }
    }

    /// An MX record; exchange "." makes a null MX (RFC 7505).
    pub fn mx(self, domain: &str, preference: u16, exchange: &str) -> Zone {
        let exchange = if exchange == "." {
            Name::root()
        } else {
            absolute(exchange)
        };
        self.record(domain, RData::MX(MX::new(preference, exchange)))
    }

    pub fn a(self, name: &str, ip: Ipv4Addr) -> Zone {
        self.record(name, RData::A(A(ip)))
    }

    pub fn aaaa(self, name: &str, ip: Ipv6Addr) -> Zone {
        self.record(name, RData::AAAA(AAAA(ip)))
    }

    /// A PTR record for an IPv4 address (reverse DNS): `4.0.0.127.in-addr.arpa`.
    pub fn ptr(self, ip: Ipv4Addr, name: &str) -> Zone {
        let [a, b, c, d] = ip.octets();
        let reverse = format!("{d}.{c}.{b}.{a}.in-addr.arpa");
        self.record(&reverse, RData::PTR(PTR(absolute(name))))
    }

    /// A TXT record of one string (`v=STSv1; id=1;` for MTA-STS).
    pub fn txt(self, name: &str, text: &str) -> Zone {
        self.record(
            name,
            RData::TXT(hickory_proto::rr::rdata::TXT::new(vec![text.to_owned()])),
        )
    }

    /// A TXT record of several strings: a DKIM RSA key is longer than the
    /// 255 octets one string holds.
    pub fn txt_strings(self, name: &str, strings: &[&str]) -> Zone {
        self.record(
            name,
            RData::TXT(hickory_proto::rr::rdata::TXT::new(
                strings.iter().map(|s| (*s).to_owned()).collect(),
            )),
        )
    }

    /// Every query for the name gets SERVFAIL.
    pub fn servfail(mut self, name: &str) -> Zone {
        self.node(name).behaviour = Behaviour::ServFail;
        self
    }

    /// Queries for the name get no answer at all: the client times out.
    pub fn silent(mut self, name: &str) -> Zone {
        self.node(name).behaviour = Behaviour::Silent;
        self
    }

    /// TTL for records added after this call; the last value set is also
    /// the negative TTL of NXDOMAIN and NODATA answers.
    pub fn ttl(mut self, seconds: u32) -> Zone {
        self.ttl = seconds;
        self
    }

    fn record(mut self, name: &str, rdata: RData) -> Zone {
        let ttl = self.ttl;
        self.node(name).records.push((ttl, rdata));
        self
    }

    fn node(&mut self, name: &str) -> &mut Node {
        self.names.entry(key(name)).or_default()
    }

    /// The response to one query message, or `None` to stay silent.
    fn answer(&self, request: &Message) -> Option<Message> {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = true;
        let mut response = Message::new(metadata.id, metadata.message_type, metadata.op_code);
        response.metadata = metadata;
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD_BYTES);
            response.set_edns(edns);
        }
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return Some(response);
        };
        response.add_query(query.clone());
        if request.metadata.message_type != MessageType::Query {
            response.metadata.response_code = ResponseCode::FormErr;
            return Some(response);
        }
        let name = query.name();
        match self.names.get(&key(&name.to_ascii())) {
            None => {
                response.metadata.response_code = ResponseCode::NXDomain;
                response.add_authority(self.soa());
            }
            Some(node) => match node.behaviour {
                Behaviour::Silent => return None,
                Behaviour::ServFail => {
                    response.metadata.response_code = ResponseCode::ServFail;
                }
                Behaviour::Answer => {
                    let matching = node
                        .records
                        .iter()
                        .filter(|(_, rdata)| rdata.record_type() == query.query_type())
                        .map(|(ttl, rdata)| Record::from_rdata(name.clone(), *ttl, rdata.clone()));
                    response.add_answers(matching);
                    if response.answers.is_empty() {
                        response.add_authority(self.soa());
                    }
                }
            },
        }
        Some(response)
    }

    /// The SOA that makes negative answers cacheable (RFC 2308 §3); its
    /// minimum is the negative TTL.
    fn soa(&self) -> Record {
        let soa = SOA::new(
            absolute("ns.test"),
            absolute("hostmaster.test"),
            1,
            3600,
            600,
            86400,
            self.ttl,
        );
        Record::from_rdata(Name::root(), self.ttl, RData::SOA(soa))
    }
}

/// Names compare case-insensitively, with or without the trailing dot.
fn key(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    name.strip_suffix('.').unwrap_or(&name).to_string()
}

fn absolute(name: &str) -> Name {
    let mut parsed = Name::from_ascii(name)
        .unwrap_or_else(|e| panic!("bad DNS name {name:?} in test zone: {e}"));
    parsed.set_fqdn(true);
    parsed
}

/// A running DNS server. Stops when dropped.
pub struct DnsServer {
    /// UDP and TCP, 127.0.0.1, same port.
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    zone: Zone,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Shared {
    /// Decodes a query and encodes the reply, truncated to `size_max`.
    fn reply(&self, request: &[u8], size_max: Option<usize>) -> Option<Vec<u8>> {
        // Garbage gets no answer, like a real server under attack.
        let request = Message::from_vec(request).ok()?;
        self.queries.fetch_add(1, Ordering::SeqCst);
        let response = self.zone.answer(&request)?;
        let bytes = response.to_vec().expect("encode DNS response");
        match size_max {
            Some(size_max) if bytes.len() > size_max => Some(
                response
                    .truncate()
                    .to_vec()
                    .expect("encode truncated DNS response"),
            ),
            _ => Some(bytes),
        }
    }
}

impl DnsServer {
    /// Binds 127.0.0.1 on a port free for UDP and TCP and starts serving
    /// `zone`. Panics with a clear message on failure (a test helper).
    pub fn start(zone: Zone) -> DnsServer {
        let (udp, tcp) = bind_pair().unwrap_or_else(|e| panic!("test DNS server cannot bind: {e}"));
        let addr = udp.local_addr().expect("UDP local address");
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            zone,
            queries: Arc::clone(&queries),
            stop: Arc::clone(&stop),
        });
        let udp_thread = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("test-dns-udp".to_string())
                .spawn(move || serve_udp(&udp, &shared))
                .expect("spawn the test DNS UDP thread")
        };
        let tcp_thread = thread::Builder::new()
            .name("test-dns-tcp".to_string())
            .spawn(move || serve_tcp(&tcp, &shared))
            .expect("spawn the test DNS TCP thread");
        DnsServer {
            addr,
            queries,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    /// How many queries it has received so far, over UDP and TCP: every
    /// one answered, except those for `silent` names. Lets a test check
    /// caching.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake both blocking loops so they see the flag.
        if let Ok(socket) = UdpSocket::bind("127.0.0.1:0") {
            let _ = socket.send_to(&[0], self.addr);
        }
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn bind_pair() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..BIND_TRIES_MAX {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        match TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, tcp)),
            // Someone holds that port for TCP; try another.
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no port free for UDP and TCP")))
}

fn serve_udp(socket: &UdpSocket, shared: &Shared) {
    let mut buffer = vec![0u8; QUERY_BYTES_MAX];
    loop {
        let received = socket.recv_from(&mut buffer);
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((length, peer)) = received else {
            // ICMP errors from earlier sends surface here; keep serving.
            continue;
        };
        // RFC 6891 §6.2.5: the client's advertised size, at least 512.
        let size_max = Message::from_vec(&buffer[..length])
            .map(|request| usize::from(request.max_payload()))
            .unwrap_or(512);
        if let Some(reply) = shared.reply(&buffer[..length], Some(size_max)) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(shared);
        // One thread per connection: clients keep connections open, and
        // one idle client must not hold up the next. Each ends when its
        // client closes or idles past TCP_IDLE_MAX.
        let _ = thread::Builder::new()
            .name("test-dns-conn".to_string())
            .spawn(move || {
                let _ = serve_tcp_connection(stream, &shared);
            });
    }
}

/// RFC 1035 §4.2.2: each message preceded by its two-byte length.
fn serve_tcp_connection(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(TCP_IDLE_MAX))?;
    let mut buffer = vec![0u8; QUERY_BYTES_MAX];
    loop {
        let mut length = [0u8; 2];
        stream.read_exact(&mut length)?;
        let length = usize::from(u16::from_be_bytes(length));
        if length > QUERY_BYTES_MAX || shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        stream.read_exact(&mut buffer[..length])?;
        if let Some(reply) = shared.reply(&buffer[..length], None) {
            let length = u16::try_from(reply.len()).expect("DNS message under 64 KiB");
            stream.write_all(&length.to_be_bytes())?;
            stream.write_all(&reply)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::RecordType;

    fn ask(server: &DnsServer, name: &str, kind: RecordType) -> Message {
        let mut request = Message::new(0x1234, MessageType::Query, OpCode::Query);
        request.metadata.recursion_desired = true;
        request.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
            .send_to(&request.to_vec().unwrap(), server.addr)
            .unwrap();
        let mut buffer = [0u8; 4096];
        let (length, _) = socket.recv_from(&mut buffer).expect("an answer");
        Message::from_vec(&buffer[..length]).unwrap()
    }

    #[test]
    fn answers_nxdomain_nodata_and_records() {
        let server = DnsServer::start(
            Zone::new()
                .mx("Example.Test", 10, "mx.example.test")
                .a("mx.example.test.", Ipv4Addr::new(192, 0, 2, 1)),
        );
        let mx = ask(&server, "EXAMPLE.test.", RecordType::MX);
        assert_eq!(mx.metadata.id, 0x1234);
        assert_eq!(mx.metadata.response_code, ResponseCode::NoError);
        assert_eq!(mx.answers.len(), 1);

        let nodata = ask(&server, "example.test", RecordType::A);
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.authorities.len(), 1, "SOA for caching");

        let nx = ask(&server, "nowhere.test", RecordType::A);
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(server.queries(), 3);
    }

    #[test]
    fn truncates_big_udp_answers() {
        let mut zone = Zone::new();
        for i in 0..100u8 {
            zone = zone.a("big.test", Ipv4Addr::new(192, 0, 2, i));
        }
        let server = DnsServer::start(zone);
        let answer = ask(&server, "big.test", RecordType::A);
        assert!(answer.metadata.truncation);
        assert!(answer.answers.is_empty());
    }
}
