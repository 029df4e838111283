//! From TOML to [`Config`](super::Config): the merge of a file over the
//! built-in defaults, and the field types TOML has no spelling for.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use baton_spool::SyncMode;
use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::duration::parse_duration;
use super::NextHop;

/// Lays `over` onto `base`, key by key: tables merge, anything else
/// (including arrays such as `[[listener]]`) replaces the default whole.
/// A key `base` lacks is kept, so deserialization can name it as unknown.
pub(super) fn merge<'i>(base: &mut DeTable<'i>, over: DeTable<'i>) {
    for (key, value) in over {
        let name: &str = key.get_ref();
        let span = value.span();
        match (base.get_mut(name).map(Spanned::get_mut), value.into_inner()) {
            (Some(DeValue::Table(base_table)), DeValue::Table(over_table)) => {
                merge(base_table, over_table);
            }
            (_, value) => {
                // Remove first: `insert` keeps the old key, and with it a
                // span into the default text rather than into the file.
                base.remove(name);
                base.insert(key, Spanned::new(span, value));
            }
        }
    }
}

/// A `Visitor` for a value written as a string and parsed by `parse`; the
/// `expecting` text appears in "invalid type" errors.
struct FromText<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
    output: PhantomData<T>,
}

impl<T> Visitor<'_> for FromText<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.parse)(text).map_err(E::custom)
    }
}

fn from_text<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    deserializer.deserialize_str(FromText {
        expecting,
        parse,
        output: PhantomData,
    })
}

/// `"30s"`, `"5m"`, ...
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    from_text(
        d,
        "a duration string such as \"30s\" or \"5m\"",
        parse_duration,
    )
}

/// A duration that may be left out (`None`).
pub(super) fn optional_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

struct ListedDuration(Duration);

impl<'de> Deserialize<'de> for ListedDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ListedDuration, D::Error> {
        duration(d).map(ListedDuration)
    }
}

/// `["1m", "5m", "1h"]`.
pub(super) fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let durations = Vec::<ListedDuration>::deserialize(d)?;
    Ok(durations.into_iter().map(|d| d.0).collect())
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "{text:?} is not an IP address and port such as \"127.0.0.1:2525\" or \"[::1]:2525\""
        )
    })
}

/// `"127.0.0.1:2525"`, `"[::1]:25"`.
pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    from_text(
        d,
        "an address and port such as \"127.0.0.1:2525\"",
        parse_socket_addr,
    )
}

struct ListedSocketAddr(SocketAddr);

impl<'de> Deserialize<'de> for ListedSocketAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ListedSocketAddr, D::Error> {
        socket_addr(d).map(ListedSocketAddr)
    }
}

/// `["192.0.2.53:53", "[2001:db8::53]:53"]`.
pub(super) fn socket_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let addresses = Vec::<ListedSocketAddr>::deserialize(d)?;
    Ok(addresses.into_iter().map(|a| a.0).collect())
}

/// Like [`socket_addr`], but `""` means "off".
pub(super) fn optional_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    from_text(
        d,
        "an address and port such as \"127.0.0.1:8025\", or \"\" for none",
        |text| match text {
            "" => Ok(None),
            _ => parse_socket_addr(text).map(Some),
        },
    )
}

/// `"group"`, `"always"`, `"none"`.
pub(super) fn sync_mode<'de, D: Deserializer<'de>>(d: D) -> Result<SyncMode, D::Error> {
    from_text(d, "\"group\", \"always\" or \"none\"", |text| {
        SyncMode::parse(text).ok_or_else(|| {
            format!("unknown sync mode {text:?}; expected \"group\", \"always\" or \"none\"")
        })
    })
}

/// A path where `""` means "none".
pub(super) fn optional_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    String::deserialize(d).map(|text| (!text.is_empty()).then(|| PathBuf::from(text)))
}

/// A string where `""` means "none".
pub(super) fn optional_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(|text| (!text.is_empty()).then_some(text))
}

/// Strings compared without regard to case (domains), lowercased here.
pub(super) fn lowercase_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(d).map(|list| {
        list.into_iter()
            .map(|text| text.to_ascii_lowercase())
            .collect()
    })
}

/// A string compared without regard to case (domains), lowercased once here.
pub(super) fn lowercase<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(|text| text.to_ascii_lowercase())
}

/// `"host:port"`, `"192.0.2.1:25"`, `"[2001:db8::1]:25"`. The host is kept
/// as text, lowercased if a name and in canonical form if an address; a
/// name's syntax and port 0 are left to `validate`.
pub fn parse_next_hop(text: &str) -> Result<NextHop, String> {
    let expected = "expected host:port, such as \"smtp.example.net:587\" or \"[2001:db8::1]:25\"";
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let (v6, port) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("{text:?} has no closing ']'; {expected}"))?;
        let v6: Ipv6Addr = v6
            .parse()
            .map_err(|_| format!("{v6:?} in {text:?} is not an IPv6 address; {expected}"))?;
        let port = port
            .strip_prefix(':')
            .ok_or_else(|| format!("{text:?} has no port; {expected}"))?;
        (v6.to_string(), port)
    } else {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} has no port; {expected}"))?;
        if host.contains(':') {
            return Err(format!(
                "{text:?}: an IPv6 address needs brackets, as in \"[2001:db8::1]:25\""
            ));
        }
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => host.to_ascii_lowercase(),
        };
        (host, port)
    };
    if host.is_empty() {
        return Err(format!("{text:?} has no host; {expected}"));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} has no port; {expected}"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("port {port} in {text:?} is over 65535"))?;
    Ok(NextHop { host, port })
}

/// A `[[route]]`'s `next_hop`.
pub(super) fn next_hop<'de, D: Deserializer<'de>>(d: D) -> Result<NextHop, D::Error> {
    from_text(
        d,
        "a host and port such as \"smtp.example.net:587\"",
        parse_next_hop,
    )
}

/// A size where `0` means "no limit".
pub(super) fn zero_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    u64::deserialize(d).map(|n| (n != 0).then_some(n))
}

/// One network in CIDR notation; a bare address is a network of one.
fn parse_network(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        // Host bits set ("10.1.2.3/8") still name the network they are in.
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not a network such as \"10.0.0.0/8\" or \"::1/128\""))
}

struct Network(IpNet);

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
        from_text(d, "a network such as \"10.0.0.0/8\"", parse_network).map(Network)
    }
}

/// `["127.0.0.0/8", "::1/128"]`.
pub(super) fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let networks = Vec::<Network>::deserialize(d)?;
    Ok(networks.into_iter().map(|n| n.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_cidr_and_bare_addresses() {
        assert_eq!(
            parse_network("10.0.0.0/8"),
            Ok("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            parse_network("10.1.2.3/8"),
            Ok("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            parse_network("192.0.2.7"),
            Ok("192.0.2.7/32".parse().unwrap())
        );
        assert_eq!(parse_network("::1"), Ok("::1/128".parse().unwrap()));
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("localhost").is_err());
    }

    #[test]
    fn next_hops_parse_names_v4_and_bracketed_v6() {
        let hop = |host: &str, port| NextHop {
            host: host.to_owned(),
            port,
        };
        assert_eq!(
            parse_next_hop("SMTP.Example.net:587"),
            Ok(hop("smtp.example.net", 587))
        );
        assert_eq!(parse_next_hop("192.0.2.1:25"), Ok(hop("192.0.2.1", 25)));
        assert_eq!(
            parse_next_hop("[2001:DB8:0::1]:2525"),
            Ok(hop("2001:db8::1", 2525))
        );
        // Port 0 parses; `validate` refuses it with the key's name.
        assert_eq!(parse_next_hop("relay:0"), Ok(hop("relay", 0)));
        for (bad, why) in [
            ("smtp.example.net", "no port"),
            ("smtp.example.net:", "no port"),
            ("[::1]", "no port"),
            ("[::1]25", "no port"),
            ("[::1:25", "closing"),
            ("[example.net]:25", "not an IPv6"),
            ("2001:db8::1:25", "brackets"),
            (":25", "no host"),
            ("relay:65536", "over 65535"),
            ("relay:+25", "no port"),
        ] {
            let error = parse_next_hop(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn next_hop_displays_as_written() {
        for text in ["smtp.example.net:587", "192.0.2.1:25", "[2001:db8::1]:25"] {
            assert_eq!(parse_next_hop(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn merge_replaces_arrays_and_merges_tables() {
        let mut base = DeTable::parse("[a]\nx = 1\ny = 2\n[[l]]\nv = 1\n[[l]]\nv = 2\n")
            .unwrap()
            .into_inner();
        let over = DeTable::parse("[a]\ny = 3\nz = 4\n[[l]]\nv = 9\n")
            .unwrap()
            .into_inner();
        merge(&mut base, over);
        let merged: toml::Table =
            toml::Table::deserialize(toml::de::Deserializer::from(Spanned::new(0..0, base)))
                .unwrap();
        let expected: toml::Table = "[a]\nx = 1\ny = 3\nz = 4\n[[l]]\nv = 9\n".parse().unwrap();
        assert_eq!(merged, expected);
    }
}
