//! One query, asked of hickory and turned into a [`Resolution`]. The only
//! part of the resolver that does I/O; the decisions it makes on the way
//! ([`classify`], [`combine`], [`super::mx::targets`]) are plain functions.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;

use super::literal::{self, Literal};
use super::mx::{self, Targets};
use super::{MxHost, Query, Resolution};

/// Why a lookup brought no records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// NXDOMAIN: the name does not exist. Permanent.
    NoSuchName,
    /// NOERROR with no records of the type asked for (NODATA).
    NoData,
    /// SERVFAIL, REFUSED, a timeout, a network error: ask again later.
    Temporary(String),
}

/// Sorts a hickory error into the three outcomes that matter for mail.
///
/// hickory reports an empty answer as `NoRecordsFound` and SERVFAIL,
/// REFUSED and the like as `ResponseCode`; only the response code inside
/// `NoRecordsFound` tells "does not exist" from "exists, but not this
/// type", and any other code found there is still "could not find out",
/// so `is_no_records_found()` alone is not enough.
pub(crate) fn classify(error: &NetError) -> Failure {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })) => {
            match *response_code {
                ResponseCode::NXDomain => Failure::NoSuchName,
                ResponseCode::NoError => Failure::NoData,
                code => Failure::Temporary(response_code_text(code)),
            }
        }
        NetError::Dns(DnsError::ResponseCode(code)) => {
            Failure::Temporary(response_code_text(*code))
        }
        NetError::Timeout => Failure::Temporary("timed out".to_string()),
        NetError::NoConnections => Failure::Temporary("no nameserver could be reached".to_string()),
        other => Failure::Temporary(other.to_string()),
    }
}

/// The mnemonic operators know from dig, e.g. "SERVFAIL".
fn response_code_text(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".to_string(),
        ResponseCode::Refused => "REFUSED".to_string(),
        ResponseCode::FormErr => "FORMERR".to_string(),
        ResponseCode::NotImp => "NOTIMP".to_string(),
        other => format!("response code {} ({other})", u16::from(other)),
    }
}

/// A host's addresses from its separate A and AAAA answers.
///
/// Any address is success, even when the other family failed: one
/// reachable address is enough to try. With none, a temporary failure of
/// either family wins over a negative answer of the other, since the
/// missing family might have had addresses.
pub(crate) fn combine(
    v4: Result<Vec<IpAddr>, Failure>,
    v6: Result<Vec<IpAddr>, Failure>,
) -> Result<Vec<IpAddr>, Failure> {
    let as_failure = |result: Result<Vec<IpAddr>, Failure>| match result {
        Ok(addresses) if addresses.is_empty() => Err(Failure::NoData),
        other => other,
    };
    match (as_failure(v4), as_failure(v6)) {
        (Ok(mut v4), Ok(v6)) => {
            v4.extend(v6);
            Ok(v4)
        }
        (Ok(addresses), Err(_)) | (Err(_), Ok(addresses)) => Ok(addresses),
        (Err(Failure::Temporary(why)), Err(_)) | (Err(_), Err(Failure::Temporary(why))) => {
            Err(Failure::Temporary(why))
        }
        (Err(Failure::NoSuchName), Err(_)) | (Err(_), Err(Failure::NoSuchName)) => {
            Err(Failure::NoSuchName)
        }
        (Err(Failure::NoData), Err(Failure::NoData)) => Err(Failure::NoData),
    }
}

/// Answers one query. Never fails: every error becomes a [`Resolution`].
/// Hosts come out by preference; the caller shuffles ties per answer.
pub(crate) async fn resolve(resolver: &Arc<TokioResolver>, query: &Query) -> Resolution {
    match query {
        Query::Mx(domain) => match literal::mail_domain(domain) {
            Literal::Ip(ip) => literal_host(domain, ip),
            Literal::Invalid => {
                Resolution::NoSuchDomain(format!("{domain}: invalid address literal"))
            }
            Literal::Name => mail_hosts(resolver, domain).await,
        },
        Query::Host(host) => match literal::host_name(host) {
            Literal::Ip(ip) => literal_host(host, ip),
            Literal::Invalid => {
                Resolution::NoSuchDomain(format!("{host}: invalid address literal"))
            }
            Literal::Name => single_host(resolver, host).await,
        },
    }
}

fn literal_host(name: &str, ip: IpAddr) -> Resolution {
    Resolution::Hosts(vec![MxHost {
        name: name.to_string(),
        preference: 0,
        addresses: vec![ip],
    }])
}

/// The name as an absolute DNS name: mail domains and route hosts are
/// never relative, so the trailing dot keeps resolv.conf's search list
/// from ever being applied (a domain "example.com" must not become
/// "example.com.corp.local").
fn absolute(name: &str) -> Option<Name> {
    // An internationalised domain (SMTPUTF8 mail, RFC 6531) is looked up
    // by its A-labels (IDNA, RFC 5891): "bücher.example" is asked as
    // "xn--bcher-kva.example".
    let mut name = if name.is_ascii() {
        Name::from_ascii(name).ok()?
    } else {
        Name::from_utf8(name).ok()?
    };
    name.set_fqdn(true);
    Some(name)
}

/// RFC 5321 §5.1: MX records, or the domain itself when it has none.
async fn mail_hosts(resolver: &Arc<TokioResolver>, domain: &str) -> Resolution {
    let Some(name) = absolute(domain) else {
        return Resolution::NoSuchDomain(format!("{domain}: not a valid domain name"));
    };
    let records = match resolver.mx_lookup(name.clone()).await {
        Ok(lookup) => answers(&lookup)
            .filter_map(|data| match data {
                RData::MX(mx) => Some((mx.preference, plain_name(&mx.exchange))),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Err(error) => match classify(&error) {
            Failure::NoSuchName => {
                return Resolution::NoSuchDomain(format!("{domain}: no such domain (NXDOMAIN)"))
            }
            Failure::NoData => Vec::new(),
            Failure::Temporary(why) => {
                return Resolution::TempFail(format!("{domain}: MX lookup failed: {why}"))
            }
        },
    };
    match mx::targets(&records) {
        Targets::Null => Resolution::NullMx,
        Targets::Hosts(targets) if targets.is_empty() => implicit_mx(resolver, domain, name).await,
        Targets::Hosts(targets) => exchanges(resolver, domain, targets).await,
    }
}

/// No MX records: the domain is its own mail host, preference 0
/// (RFC 5321 §5.1, "implicit MX").
async fn implicit_mx(resolver: &Arc<TokioResolver>, domain: &str, name: Name) -> Resolution {
    match addresses(resolver, name).await {
        Ok(addresses) => Resolution::Hosts(vec![MxHost {
            name: domain.to_string(),
            preference: 0,
            addresses,
        }]),
        Err(Failure::NoSuchName | Failure::NoData) => {
            Resolution::NoSuchDomain(format!("{domain}: no MX and no A/AAAA records"))
        }
        Err(Failure::Temporary(why)) => {
            Resolution::TempFail(format!("{domain}: address lookup failed: {why}"))
        }
    }
}

/// Looks up every exchange at once; keeps those with an address.
async fn exchanges(
    resolver: &Arc<TokioResolver>,
    domain: &str,
    targets: Vec<(u16, String)>,
) -> Resolution {
    // Spawned so the lookups overlap; the bound is MX_HOSTS_MAX.
    let lookups: Vec<_> = targets
        .into_iter()
        .map(|(preference, exchange)| {
            let resolver = Arc::clone(resolver);
            let name = absolute(&exchange);
            let task = tokio::spawn(async move {
                match name {
                    Some(name) => addresses(&resolver, name).await,
                    None => Err(Failure::NoSuchName),
                }
            });
            (preference, exchange, task)
        })
        .collect();
    let mut hosts = Vec::with_capacity(lookups.len());
    let mut temporary = None;
    for (preference, name, task) in lookups {
        let result = task
            .await
            .unwrap_or_else(|_| Err(Failure::Temporary("lookup task failed".to_string())));
        match result {
            Ok(addresses) => hosts.push(MxHost {
                name,
                preference,
                addresses,
            }),
            // An exchange that does not exist is a broken record, not a
            // reason to give up on the others.
            Err(Failure::NoSuchName | Failure::NoData) => {}
            Err(Failure::Temporary(why)) => temporary = Some(format!("{name}: {why}")),
        }
    }
    if !hosts.is_empty() {
        return Resolution::Hosts(hosts);
    }
    // Even when every exchange is NXDOMAIN this stays temporary: the
    // domain's owner asked for mail, and a fixed record delivers it.
    Resolution::TempFail(match temporary {
        None => format!("no address for any MX host of {domain}"),
        Some(why) => format!("no address for any MX host of {domain} ({why})"),
    })
}

/// A host name resolved on its own (a smart host): its addresses, under
/// the name as given.
async fn single_host(resolver: &Arc<TokioResolver>, host: &str) -> Resolution {
    let Some(name) = absolute(host) else {
        return Resolution::NoSuchDomain(format!("{host}: not a valid host name"));
    };
    match addresses(resolver, name).await {
        Ok(addresses) => Resolution::Hosts(vec![MxHost {
            name: host.to_string(),
            preference: 0,
            addresses,
        }]),
        Err(Failure::NoSuchName) => {
            Resolution::NoSuchDomain(format!("{host}: no such host (NXDOMAIN)"))
        }
        Err(Failure::NoData) => Resolution::NoSuchDomain(format!("{host}: no A/AAAA records")),
        Err(Failure::Temporary(why)) => {
            Resolution::TempFail(format!("{host}: address lookup failed: {why}"))
        }
    }
}

/// A and AAAA, asked at the same time and judged together by [`combine`]
/// (hickory's own dual lookup reports only the first of two errors, which
/// may be a NODATA hiding the other family's SERVFAIL).
async fn addresses(resolver: &TokioResolver, name: Name) -> Result<Vec<IpAddr>, Failure> {
    let (v4, v6) = tokio::join!(
        resolver.ipv4_lookup(name.clone()),
        resolver.ipv6_lookup(name)
    );
    let v4 = v4
        .map(|lookup| {
            answers(&lookup)
                .filter_map(|data| match data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect()
        })
        .map_err(|error| classify(&error));
    let v6 = v6
        .map(|lookup| {
            answers(&lookup)
                .filter_map(|data| match data {
                    RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                    _ => None,
                })
                .collect()
        })
        .map_err(|error| classify(&error));
    combine(v4, v6).map(|mut addresses| {
        dedup_in_order(&mut addresses);
        addresses
    })
}

/// The data of a lookup's answer records. The caller keeps the type it
/// asked for: the answer also holds the CNAMEs that led there.
pub(crate) fn answers(lookup: &Lookup) -> impl Iterator<Item = &RData> {
    lookup.answers().iter().map(|record| &record.data)
}

fn dedup_in_order(addresses: &mut Vec<IpAddr>) {
    let mut seen = std::collections::HashSet::with_capacity(addresses.len());
    addresses.retain(|ip| seen.insert(*ip));
}

/// "MX1.Example.COM." → "mx1.example.com"; the root becomes "".
fn plain_name(name: &Name) -> String {
    let text = name.to_ascii().to_ascii_lowercase();
    text.strip_suffix('.').unwrap_or(&text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::Query as DnsQuery;

    fn negative(code: ResponseCode) -> NetError {
        DnsError::NoRecordsFound(NoRecords::new(DnsQuery::new(), code)).into()
    }

    fn failed(code: ResponseCode) -> NetError {
        DnsError::ResponseCode(code).into()
    }

    fn temporary(why: &str) -> Failure {
        Failure::Temporary(why.to_string())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn nxdomain_is_no_such_name() {
        assert_eq!(
            classify(&negative(ResponseCode::NXDomain)),
            Failure::NoSuchName
        );
    }

    #[test]
    fn noerror_without_records_is_nodata() {
        assert_eq!(classify(&negative(ResponseCode::NoError)), Failure::NoData);
    }

    #[test]
    fn servfail_and_refused_are_temporary() {
        // hickory reports these as a response code; they must not bounce
        // mail.
        assert_eq!(
            classify(&failed(ResponseCode::ServFail)),
            temporary("SERVFAIL")
        );
        assert_eq!(
            classify(&failed(ResponseCode::Refused)),
            temporary("REFUSED")
        );
        // Nor when one arrives as NoRecordsFound, which hickory's own
        // server bookkeeping still looks for.
        assert!(negative(ResponseCode::ServFail).is_no_records_found());
        assert_eq!(
            classify(&negative(ResponseCode::ServFail)),
            temporary("SERVFAIL")
        );
    }

    #[test]
    fn timeouts_and_other_errors_are_temporary() {
        assert_eq!(classify(&NetError::Timeout), temporary("timed out"));
        assert_eq!(
            classify(&NetError::NoConnections),
            temporary("no nameserver could be reached")
        );
        let io = NetError::from(std::io::Error::other("connection refused"));
        assert!(matches!(classify(&io), Failure::Temporary(_)));
        assert_eq!(classify(&NetError::Message("odd")), temporary("odd"));
    }

    #[test]
    fn combine_keeps_both_families() {
        assert_eq!(
            combine(Ok(vec![ip("192.0.2.1")]), Ok(vec![ip("2001:db8::1")])),
            Ok(vec![ip("192.0.2.1"), ip("2001:db8::1")])
        );
    }

    #[test]
    fn combine_takes_one_family_when_the_other_fails() {
        assert_eq!(
            combine(Ok(vec![ip("192.0.2.1")]), Err(temporary("SERVFAIL"))),
            Ok(vec![ip("192.0.2.1")])
        );
        assert_eq!(
            combine(Err(Failure::NoData), Ok(vec![ip("2001:db8::1")])),
            Ok(vec![ip("2001:db8::1")])
        );
    }

    #[test]
    fn combine_prefers_temporary_to_negative() {
        assert_eq!(
            combine(Err(Failure::NoData), Err(temporary("timed out"))),
            Err(temporary("timed out"))
        );
        assert_eq!(
            combine(Err(temporary("SERVFAIL")), Err(Failure::NoSuchName)),
            Err(temporary("SERVFAIL"))
        );
    }

    #[test]
    fn combine_negative_answers() {
        assert_eq!(
            combine(Err(Failure::NoSuchName), Err(Failure::NoData)),
            Err(Failure::NoSuchName)
        );
        assert_eq!(
            combine(Err(Failure::NoData), Ok(vec![])),
            Err(Failure::NoData)
        );
    }

    #[test]
    fn names_are_absolute_and_plain() {
        let name = absolute("Example.COM").unwrap();
        assert!(name.is_fqdn());
        assert_eq!(plain_name(&name), "example.com");
        assert_eq!(plain_name(&absolute("mx.example.").unwrap()), "mx.example");
        assert_eq!(plain_name(&Name::root()), "");
        assert!(absolute(&"a".repeat(64)).is_none(), "label over 63 octets");
        assert_eq!(
            plain_name(&absolute("bücher.example").unwrap()),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn duplicate_addresses_dropped() {
        let mut addresses = vec![ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.1")];
        dedup_in_order(&mut addresses);
        assert_eq!(addresses, [ip("192.0.2.1"), ip("192.0.2.2")]);
    }
}
