//! The network side of MTA-STS: the TXT record, and the policy over HTTPS
//! (hyper's HTTP/1.1 client over tokio-rustls).

use std::sync::Arc;

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::policy::{record_id, Policy, POLICY_BYTES_MAX};
use super::POLICY_FETCH_TIMEOUT;

/// The `id` of `_mta-sts.<domain>`'s STSv1 record; `None` without one
/// (or when DNS fails: §5.1, the cached policy, if any, stands).
pub(super) async fn txt_id(resolver: &TokioResolver, domain: &str) -> Option<String> {
    let name = format!("_mta-sts.{domain}.");
    let lookup = resolver.txt_lookup(name).await.ok()?;
    // §3.1: more than one STSv1 record means none.
    let ids: Vec<String> = crate::dns::answers(&lookup)
        .filter_map(|data| {
            let RData::TXT(txt) = data else {
                return None;
            };
            let text: String = txt
                .txt_data
                .iter()
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect();
            record_id(&text)
        })
        .collect();
    match ids.as_slice() {
        [id] => Some(id.clone()),
        _ => None,
    }
}

/// Fetches and parses `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
pub(super) async fn policy(
    resolver: &TokioResolver,
    domain: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Policy, String> {
    let text = tokio::time::timeout(POLICY_FETCH_TIMEOUT, get(resolver, domain, port, tls))
        .await
        .map_err(|_| format!("no answer within {POLICY_FETCH_TIMEOUT:?}"))??;
    Policy::parse(&text)
}

async fn get(
    resolver: &TokioResolver,
    domain: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    let host = format!("mta-sts.{domain}");
    let addresses = resolver
        .lookup_ip(format!("{host}."))
        .await
        .map_err(|err| format!("{host}: {err}"))?;
    let ip = addresses
        .iter()
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let tcp = TcpStream::connect((ip, port))
        .await
        .map_err(|err| format!("connect to {host} [{ip}]:{port}: {err}"))?;
    let name = ServerName::try_from(host.clone()).map_err(|err| format!("{host}: {err}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|err| format!("TLS with {host}: {err}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("HTTP with {host}: {err}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = hyper::Request::get("/.well-known/mta-sts.txt")
        .header(hyper::header::HOST, &host)
        .body(Empty::<Bytes>::new())
        .map_err(|err| err.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| format!("HTTP with {host}: {err}"))?;
    // §3.3: no redirects; only 200 is a policy.
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("{host} answered HTTP {}", response.status()));
    }
    let body = Limited::new(response.into_body(), POLICY_BYTES_MAX)
        .collect()
        .await
        .map_err(|err| format!("{host}: policy body: {err}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| format!("{host}: the policy is not UTF-8"))
}
