//! What an MX answer means, and the order to try its hosts in. Sans IO:
//! records and a random source in, hosts out.

use super::MxHost;

/// At most this many MX hosts of one domain are looked up and tried;
/// the rest (the least preferred) are dropped. Real domains list a handful;
/// a domain listing hundreds would only make us send hundreds of queries.
pub const MX_HOSTS_MAX: usize = 16;

/// What a domain's MX records say, before any host address is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Targets {
    /// RFC 7505 null MX: the domain accepts no mail.
    Null,
    /// Exchanges to look up, by preference ascending (ties in DNS order),
    /// each named once, at most [`MX_HOSTS_MAX`].
    Hosts(Vec<(u16, String)>),
}

/// Reads MX records, given as (preference, exchange) with the exchange
/// lowercase and without its trailing dot ("" is the root, ".").
///
/// RFC 7505 §3: a null MX is a single record with exchange "."; a domain
/// with one MUST NOT publish others. When it does anyway, the "." records
/// are unusable and dropped, and the real exchanges are tried.
pub(crate) fn targets(records: &[(u16, String)]) -> Targets {
    let mut hosts: Vec<(u16, String)> = Vec::with_capacity(records.len());
    for (preference, exchange) in records {
        if exchange.is_empty() {
            continue;
        }
        // An exchange listed twice is tried once, at its best preference.
        match hosts.iter_mut().find(|(_, name)| name == exchange) {
            Some(seen) => seen.0 = seen.0.min(*preference),
            None => hosts.push((*preference, exchange.clone())),
        }
    }
    if hosts.is_empty() && !records.is_empty() {
        return Targets::Null;
    }
    hosts.sort_by_key(|(preference, _)| *preference);
    hosts.truncate(MX_HOSTS_MAX);
    Targets::Hosts(hosts)
}

/// Orders hosts for one delivery attempt: preference ascending, and a fresh
/// random order among hosts of equal preference (RFC 5321 §5.1: "the
/// sender-SMTP MUST randomize them to spread the load"). Called once per
/// answer handed out, so each caller gets its own shuffle.
pub(crate) fn order(mut hosts: Vec<MxHost>, rng: &mut Rng) -> Vec<MxHost> {
    hosts.sort_by_key(|host| host.preference);
    let mut start = 0;
    while start < hosts.len() {
        let preference = hosts[start].preference;
        let end = hosts[start..]
            .iter()
            .position(|host| host.preference != preference)
            .map_or(hosts.len(), |offset| start + offset);
        shuffle(&mut hosts[start..end], rng);
        start = end;
    }
    hosts
}

/// Fisher–Yates.
fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for last in (1..items.len()).rev() {
        let pick = rng.below(last + 1);
        items.swap(last, pick);
    }
}

/// The resolver's one source of randomness (one seam, so runs replay): xorshift64*,
/// seeded once. Spreading load over MX hosts needs an even spread, not
/// secrecy, so no crate is worth it.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose whole sequence follows from `seed`.
    pub(crate) fn new(seed: u64) -> Rng {
        // xorshift's state must never be zero; splitmix64 spreads the
        // seed's bits so that nearby seeds give unrelated sequences.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng {
            state: if z == 0 { 0x9E37_79B9_7F4A_7C15 } else { z },
        }
    }

    /// Seeded from the clock and the process id: different in every run.
    pub(crate) fn from_time() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        Rng::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`. The modulo bias is below n / 2^64: nothing for
    /// the handful of hosts we shuffle.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0) has no answer");
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::{IpAddr, Ipv4Addr};

    fn records(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, n)| (*p, n.to_string())).collect()
    }

    fn host(name: &str, preference: u16) -> MxHost {
        MxHost {
            name: name.to_string(),
            preference,
            addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        }
    }

    #[test]
    fn null_mx_alone_means_no_mail() {
        assert_eq!(targets(&records(&[(0, "")])), Targets::Null);
        // Preference other than 0 breaks RFC 7505, but the meaning is plain.
        assert_eq!(targets(&records(&[(10, "")])), Targets::Null);
    }

    #[test]
    fn null_mx_beside_real_hosts_is_dropped() {
        assert_eq!(
            targets(&records(&[(0, ""), (10, "mx.example")])),
            Targets::Hosts(records(&[(10, "mx.example")]))
        );
    }

    #[test]
    fn no_records_are_no_hosts() {
        assert_eq!(targets(&[]), Targets::Hosts(vec![]));
    }

    #[test]
    fn targets_sorted_and_deduplicated() {
        let got = targets(&records(&[
            (20, "b.example"),
            (10, "a.example"),
            (30, "a.example"),
            (20, "c.example"),
        ]));
        assert_eq!(
            got,
            Targets::Hosts(records(&[
                (10, "a.example"),
                (20, "b.example"),
                (20, "c.example"),
            ]))
        );
    }

    #[test]
    fn targets_capped() {
        let many: Vec<(u16, String)> = (0..100u16)
            .rev()
            .map(|i| (i, format!("mx{i}.example")))
            .collect();
        let Targets::Hosts(hosts) = targets(&many) else {
            panic!("not hosts")
        };
        assert_eq!(hosts.len(), MX_HOSTS_MAX);
        // The most preferred survive.
        assert_eq!(hosts[0], (0, "mx0.example".to_string()));
        assert_eq!(hosts[MX_HOSTS_MAX - 1].0, MX_HOSTS_MAX as u16 - 1);
    }

    #[test]
    fn order_keeps_preference_and_shuffles_ties() {
        let hosts = vec![
            host("backup.example", 20),
            host("a.example", 10),
            host("b.example", 10),
            host("c.example", 10),
            host("last.example", 30),
        ];
        let mut rng = Rng::new(7);
        let mut firsts = HashSet::new();
        for _ in 0..200 {
            let ordered = order(hosts.clone(), &mut rng);
            let preferences: Vec<u16> = ordered.iter().map(|h| h.preference).collect();
            assert_eq!(preferences, [10, 10, 10, 20, 30]);
            let mut ties: Vec<&str> = ordered[..3].iter().map(|h| h.name.as_str()).collect();
            firsts.insert(ties[0].to_string());
            ties.sort_unstable();
            assert_eq!(ties, ["a.example", "b.example", "c.example"]);
        }
        assert_eq!(firsts.len(), 3, "every tied host comes first sometimes");
    }

    #[test]
    fn order_is_a_function_of_the_seed() {
        let hosts: Vec<MxHost> = (0..8).map(|i| host(&format!("h{i}"), 5)).collect();
        let a = order(hosts.clone(), &mut Rng::new(42));
        let b = order(hosts.clone(), &mut Rng::new(42));
        assert_eq!(a, b);
    }

    #[test]
    fn shuffle_is_roughly_even() {
        // 4 tied hosts, 4000 shuffles: each should lead about 1000 times.
        let hosts: Vec<MxHost> = (0..4).map(|i| host(&format!("h{i}"), 0)).collect();
        let mut rng = Rng::new(1);
        let mut leads = [0usize; 4];
        for _ in 0..4000 {
            let ordered = order(hosts.clone(), &mut rng);
            leads[ordered[0].name[1..].parse::<usize>().unwrap()] += 1;
        }
        for count in leads {
            assert!((800..1200).contains(&count), "{leads:?}");
        }
    }

    #[test]
    fn zero_seed_still_random() {
        let mut rng = Rng::new(0);
        let draws: HashSet<u64> = (0..16).map(|_| rng.next_u64()).collect();
        assert_eq!(draws.len(), 16);
    }
}
